//! The statements of Rill's ksqlDB dialect. Expressions and queries are sqlparser's AST; this
//! adds the statement shapes and the streaming clauses standard SQL lacks.

use std::collections::BTreeMap;

use sqlparser::ast as sp;

use crate::error::Position;
use crate::types::SqlType;

/// STREAM or TABLE.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SourceKind {
    /// An append-only stream.
    Stream,
    /// A changelog table keyed by its primary key.
    Table,
}

impl SourceKind {
    /// "STREAM" or "TABLE".
    pub fn name(&self) -> &'static str {
        match self {
            SourceKind::Stream => "STREAM",
            SourceKind::Table => "TABLE",
        }
    }
}

/// A property value in `WITH (...)`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum PropValue {
    /// A quoted string.
    String(String),
    /// A number.
    Number(String),
    /// TRUE/FALSE.
    Bool(bool),
}

impl PropValue {
    /// The value as text.
    pub fn as_text(&self) -> String {
        match self {
            PropValue::String(s) | PropValue::Number(s) => s.clone(),
            PropValue::Bool(b) => b.to_string(),
        }
    }
}

/// `WITH (...)` properties, with upper-cased names.
pub type Props = BTreeMap<String, PropValue>;

/// A column in `CREATE STREAM/TABLE (...)`.
#[derive(Clone, Debug, PartialEq)]
pub struct ColumnDef {
    /// Name (upper-cased unless quoted).
    pub name: String,
    /// Type.
    pub sql_type: SqlType,
    /// KEY or PRIMARY KEY.
    pub key: bool,
    /// PRIMARY KEY (tables).
    pub primary_key: bool,
    /// HEADERS / HEADER('k'): read from record headers.
    pub header: Option<Option<String>>,
    /// Where the column is, for errors.
    pub position: Position,
}

/// `EMIT CHANGES` or `EMIT FINAL`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emit {
    /// Every change.
    Changes,
    /// One result per window, when it closes.
    Final,
}

/// A duration in milliseconds, with the text the user wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Duration {
    /// Milliseconds.
    pub millis: i64,
}

/// `WINDOW TUMBLING|HOPPING|SESSION (...)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WindowSpec {
    /// TUMBLING (SIZE s)
    Tumbling {
        /// Window size.
        size: Duration,
        /// RETENTION
        retention: Option<Duration>,
        /// GRACE PERIOD
        grace: Option<Duration>,
    },
    /// HOPPING (SIZE s, ADVANCE BY a)
    Hopping {
        /// Window size.
        size: Duration,
        /// Advance.
        advance: Duration,
        /// RETENTION
        retention: Option<Duration>,
        /// GRACE PERIOD
        grace: Option<Duration>,
    },
    /// SESSION (gap)
    Session {
        /// Inactivity gap.
        gap: Duration,
        /// RETENTION
        retention: Option<Duration>,
        /// GRACE PERIOD
        grace: Option<Duration>,
    },
}

/// `WITHIN` of a stream-stream join.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Within {
    /// How far the right side may be before the left.
    pub before: Duration,
    /// How far the right side may be after the left.
    pub after: Duration,
    /// GRACE PERIOD
    pub grace: Option<Duration>,
}

/// A SELECT with the ksqlDB clauses lifted out.
#[derive(Clone, Debug)]
pub struct Select {
    /// The standard part (FROM, WHERE, GROUP BY, HAVING), without LIMIT.
    pub query: sp::Query,
    /// WINDOW clause.
    pub window: Option<WindowSpec>,
    /// Per JOIN in order, its WITHIN clause if it has one.
    pub within: Vec<Option<Within>>,
    /// PARTITION BY expressions.
    pub partition_by: Vec<sp::Expr>,
    /// EMIT clause; `None` for a pull query.
    pub emit: Option<Emit>,
    /// LIMIT.
    pub limit: Option<u64>,
}

/// One statement.
#[derive(Clone, Debug)]
pub enum Statement {
    /// CREATE [OR REPLACE] [SOURCE] STREAM|TABLE [IF NOT EXISTS] name [(cols)] [WITH (...)] [AS SELECT ...]
    CreateSource {
        /// OR REPLACE
        or_replace: bool,
        /// STREAM or TABLE
        kind: SourceKind,
        /// CREATE SOURCE ...: read-only.
        read_only: bool,
        /// IF NOT EXISTS
        if_not_exists: bool,
        /// Name.
        name: String,
        /// Columns (empty for AS SELECT).
        columns: Vec<ColumnDef>,
        /// WITH properties.
        props: Props,
        /// AS SELECT ...
        query: Option<Box<Select>>,
    },
    /// INSERT INTO name [WITH (...)] SELECT ...
    InsertSelect {
        /// Target.
        target: String,
        /// Where the target's name is written (for messages).
        target_at: crate::error::Position,
        /// Query.
        query: Box<Select>,
    },
    /// INSERT INTO name [(cols)] VALUES (...)
    InsertValues {
        /// Target.
        target: String,
        /// Column list, if given.
        columns: Option<Vec<String>>,
        /// Values.
        values: Vec<sp::Expr>,
    },
    /// A push (EMIT) or pull query.
    Select(Box<Select>),
    /// SHOW STREAMS|TABLES|TOPICS|QUERIES|PROPERTIES [EXTENDED]
    Show {
        /// What.
        what: ShowWhat,
        /// EXTENDED
        extended: bool,
    },
    /// DESCRIBE [EXTENDED] name
    Describe {
        /// Name.
        name: String,
        /// EXTENDED
        extended: bool,
    },
    /// DESCRIBE STREAMS|TABLES [EXTENDED]
    DescribeAll {
        /// Which.
        kind: SourceKind,
        /// EXTENDED
        extended: bool,
    },
    /// CREATE TYPE [IF NOT EXISTS] name AS type: a name for a type, usable wherever a type is
    /// written in later statements.
    CreateType {
        /// IF NOT EXISTS
        if_not_exists: bool,
        /// Name (upper case unless quoted).
        name: String,
        /// The type it names.
        sql_type: SqlType,
    },
    /// DROP TYPE [IF EXISTS] name
    DropType {
        /// IF EXISTS
        if_exists: bool,
        /// Name.
        name: String,
    },
    /// DROP STREAM|TABLE [IF EXISTS] name [DELETE TOPIC]
    Drop {
        /// Which.
        kind: SourceKind,
        /// IF EXISTS
        if_exists: bool,
        /// Name.
        name: String,
        /// DELETE TOPIC
        delete_topic: bool,
    },
    /// ALTER STREAM|TABLE name ADD [COLUMN] name type [, ADD [COLUMN] name type ...]
    Alter {
        /// Which.
        kind: SourceKind,
        /// Name.
        name: String,
        /// The value columns to add, in order.
        columns: Vec<(String, SqlType)>,
    },
    /// TERMINATE id | TERMINATE ALL
    Terminate {
        /// Query id; `None` for ALL.
        id: Option<String>,
    },
    /// PRINT topic [FROM BEGINNING] [INTERVAL n] [LIMIT n]
    Print {
        /// Topic.
        topic: String,
        /// FROM BEGINNING
        from_beginning: bool,
        /// LIMIT
        limit: Option<u64>,
    },
    /// SET 'name' = 'value'
    Set {
        /// Property.
        name: String,
        /// Value.
        value: String,
    },
    /// UNSET 'name'
    Unset {
        /// Property.
        name: String,
    },
    /// EXPLAIN statement | EXPLAIN query-id
    Explain {
        /// What to explain.
        target: ExplainTarget,
    },
}

/// What EXPLAIN explains.
#[derive(Clone, Debug)]
pub enum ExplainTarget {
    /// A running query, by id.
    Query(String),
    /// A statement, planned but not run.
    Statement(Box<Statement>),
}

/// What SHOW lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShowWhat {
    /// Streams.
    Streams,
    /// Tables.
    Tables,
    /// Topics.
    Topics,
    /// Queries.
    Queries,
    /// Properties.
    Properties,
    /// Custom types (`CREATE TYPE`).
    Types,
}

/// A statement with its text.
#[derive(Clone, Debug)]
pub struct ParsedStatement {
    /// The statement.
    pub statement: Statement,
    /// The statement's text, as the user wrote it, with the trailing `;`.
    pub text: String,
    /// It names a type that is not built in, taken on trust: parse `text` again with the
    /// registered types ([`crate::parser::parse_with_types`]) before running it.
    pub custom_types: bool,
}
