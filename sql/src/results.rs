//! What executing a statement returns; the REST layer renders these as ksqlDB's entities.

use std::sync::Arc;

use arrow::array::RecordBatch;
use rill_engine::runtime::RunningQuery;
use tokio::sync::mpsc;

use crate::catalog::Column;
use crate::planner::OutputColumn;
use crate::types::SqlType;

/// A stream or table, as SHOW and DESCRIBE list it.
#[derive(Clone, Debug)]
pub struct SourceInfo {
    /// Name.
    pub name: String,
    /// "STREAM" or "TABLE".
    pub kind: &'static str,
    /// Topic.
    pub topic: String,
    /// Key format.
    pub key_format: String,
    /// Value format.
    pub value_format: String,
    /// Windowed?
    pub windowed: bool,
    /// Window type.
    pub window_type: Option<String>,
    /// Columns.
    pub columns: Vec<Column>,
    /// TIMESTAMP column.
    pub timestamp: Option<String>,
    /// Partitions.
    pub partitions: u32,
    /// Creating statement.
    pub statement: String,
    /// Queries reading it.
    pub read_queries: Vec<QueryInfo>,
    /// Queries writing it.
    pub write_queries: Vec<QueryInfo>,
    /// Runtime statistics text (DESCRIBE EXTENDED).
    pub statistics: String,
    /// Error statistics text (DESCRIBE EXTENDED).
    pub error_stats: String,
}

/// A persistent query, as SHOW QUERIES lists it.
#[derive(Clone, Debug)]
pub struct QueryInfo {
    /// Id.
    pub id: String,
    /// Statement.
    pub statement: String,
    /// Sink names.
    pub sinks: Vec<String>,
    /// Sink topics.
    pub sink_topics: Vec<String>,
    /// RUNNING or ERROR.
    pub state: &'static str,
}

/// A topic, as SHOW TOPICS lists it.
#[derive(Clone, Debug)]
pub struct TopicInfo {
    /// Name.
    pub name: String,
    /// Partition count.
    pub partitions: u32,
}

/// A running push query whose rows the caller streams to a client.
pub struct PushQuery {
    /// Transient query id.
    pub id: String,
    /// Output columns.
    pub columns: Vec<OutputColumn>,
    /// Rows (the last column of each batch is the hidden record timestamp).
    pub rows: mpsc::Receiver<RecordBatch>,
    /// LIMIT, if any.
    pub limit: Option<u64>,
    /// The dataflow; stop it when the client leaves.
    pub handle: Arc<RunningQuery>,
    /// Hidden column marking tombstone rows (aggregations).
    pub delete_column: Option<usize>,
}

/// The result of one statement.
pub enum StatementResult {
    /// A statement that changed the catalog (CREATE, DROP, TERMINATE, INSERT ... SELECT).
    CommandStatus {
        /// The statement.
        statement: String,
        /// Message ("Stream created", ...).
        message: String,
        /// The query started, if any.
        query_id: Option<String>,
        /// Position in the command topic.
        sequence: u64,
    },
    /// SHOW STREAMS / SHOW TABLES.
    Sources {
        /// The statement.
        statement: String,
        /// STREAM or TABLE.
        kind: &'static str,
        /// The sources.
        sources: Vec<SourceInfo>,
    },
    /// SHOW TOPICS.
    Topics {
        /// The statement.
        statement: String,
        /// The topics.
        topics: Vec<TopicInfo>,
    },
    /// SHOW QUERIES.
    Queries {
        /// The statement.
        statement: String,
        /// The queries.
        queries: Vec<QueryInfo>,
    },
    /// SHOW PROPERTIES.
    Properties {
        /// The statement.
        statement: String,
        /// Name/value pairs.
        properties: Vec<(String, String)>,
    },
    /// SHOW TYPES.
    Types {
        /// The statement.
        statement: String,
        /// Custom types by name.
        types: Vec<(String, SqlType)>,
    },
    /// DESCRIBE.
    Description {
        /// The statement.
        statement: String,
        /// The source.
        source: Box<SourceInfo>,
        /// EXTENDED.
        extended: bool,
    },
    /// EXPLAIN.
    QueryDescription {
        /// The statement.
        statement: String,
        /// Query id, when explaining a running query.
        id: Option<String>,
        /// The query's statement.
        query_text: String,
        /// Operator graph, one line per operator.
        plan: String,
        /// Sources read.
        sources: Vec<String>,
        /// Sinks written.
        sinks: Vec<String>,
        /// RUNNING, ERROR, or NOT RUNNING.
        state: &'static str,
    },
    /// A push query.
    Push(PushQuery),
    /// A pull query's complete result.
    Pull {
        /// Query id.
        id: String,
        /// Output columns.
        columns: Vec<OutputColumn>,
        /// Result rows.
        rows: Vec<RecordBatch>,
        /// Queried a table (key columns are marked in the header).
        is_table: bool,
        /// A LIMIT cut the result (or it was `LIMIT 0`).
        limit_reached: bool,
    },
    /// PRINT: records of a topic, rendered as text lines.
    Print {
        /// The topic.
        topic: String,
        /// Rendered records.
        rows: mpsc::Receiver<String>,
    },
    /// Statements with nothing to show (SET, UNSET, INSERT VALUES).
    Nothing,
}
