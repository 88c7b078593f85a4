//! What the server knows: streams, tables and the queries that feed them.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::datatypes::{Field, Schema, SchemaRef};
use rill_connectors::format::Format;
use rill_engine::operators::WindowKind;
use rill_engine::runtime::RunningQuery;
use rill_engine::source::{EventTime, HeaderColumn, SourceSpec, SourceWindow};

use crate::ast::SourceKind;
use crate::types::SqlType;

/// A column of a stream or table.
#[derive(Clone, Debug, PartialEq)]
pub struct Column {
    /// Name.
    pub name: String,
    /// Type.
    pub sql_type: SqlType,
    /// Whether it is (part of) the key.
    pub key: bool,
    /// Read from the record's headers: `Some(None)` every header (`HEADERS`), `Some(Some(k))`
    /// the header named `k` (`HEADER('k')`). Header columns come after the value columns.
    pub header: Option<Option<String>>,
}

/// A stream or table.
#[derive(Clone, Debug)]
pub struct SourceDef {
    /// Name.
    pub name: String,
    /// STREAM or TABLE.
    pub kind: SourceKind,
    /// Created with CREATE SOURCE: no INSERTs.
    pub read_only: bool,
    /// Key columns first, then value columns, in declaration order within each.
    pub columns: Vec<Column>,
    /// Topic.
    pub topic: String,
    /// Key format.
    pub key_format: Format,
    /// Value format.
    pub value_format: Format,
    /// TIMESTAMP column, if event time comes from a column.
    pub timestamp: Option<String>,
    /// TIMESTAMP_FORMAT.
    pub timestamp_format: Option<String>,
    /// Partitions of the topic.
    pub partitions: u32,
    /// The statement that created it.
    pub statement: String,
    /// The persistent query writing into it, if any.
    pub written_by: Vec<String>,
    /// The window of windowed sources (their keys carry window bounds).
    pub window: Option<rill_engine::operators::WindowKind>,
}

impl SourceDef {
    /// Key columns.
    pub fn key_columns(&self) -> impl Iterator<Item = &Column> {
        self.columns.iter().filter(|c| c.key)
    }

    /// Value columns.
    pub fn value_columns(&self) -> impl Iterator<Item = &Column> {
        self.columns.iter().filter(|c| !c.key)
    }

    fn schema_of<'a>(cols: impl Iterator<Item = &'a Column>) -> SchemaRef {
        Arc::new(Schema::new(cols.map(|c| Field::new(&c.name, c.sql_type.to_arrow(), true)).collect::<Vec<_>>()))
    }

    /// Arrow schema of the key.
    pub fn key_schema(&self) -> SchemaRef {
        Self::schema_of(self.key_columns())
    }

    /// Arrow schema of the value (the columns in the record's value: not the header columns).
    pub fn value_schema(&self) -> SchemaRef {
        Self::schema_of(self.value_columns().filter(|c| c.header.is_none()))
    }

    /// Whether some column is read from the record headers.
    pub fn has_header_columns(&self) -> bool {
        self.columns.iter().any(|c| c.header.is_some())
    }

    /// How the engine reads it.
    pub fn source_spec(&self) -> SourceSpec {
        let event_time = match &self.timestamp {
            Some(ts) => {
                // An index among the decoded columns (header columns come after them).
                let mut decoded = self.key_columns().chain(self.value_columns().filter(|c| c.header.is_none()));
                let idx = decoded.position(|c| &c.name == ts);
                let format = self.timestamp_format.as_ref().and_then(|f| crate::timefmt::java_to_chrono_parse(f).ok());
                match (idx, format) {
                    (Some(column), Some(format)) => EventTime::Formatted { column, format },
                    (Some(column), None) => EventTime::Column(column),
                    (None, _) => EventTime::RecordTimestamp,
                }
            }
            None => EventTime::RecordTimestamp,
        };
        SourceSpec {
            topic: self.topic.clone(),
            key_format: self.key_format.clone(),
            value_format: self.value_format.clone(),
            key_schema: self.key_schema(),
            value_schema: self.value_schema(),
            event_time,
            // Streams pass null values through too (a projection of a null value is null).
            keep_tombstones: true,
            skip_null_keys: self.kind == SourceKind::Table,
            headers: self
                .columns
                .iter()
                .filter_map(|c| {
                    let key = c.header.clone()?;
                    Some(HeaderColumn { name: c.name.clone(), key, data_type: c.sql_type.to_arrow() })
                })
                .collect(),
            carry_headers: false,
            read_values: None,
            window: self.window.map(|w| match w {
                WindowKind::Tumbling { size } | WindowKind::Hopping { size, .. } => SourceWindow::Time { size },
                WindowKind::Session { .. } => SourceWindow::Session,
            }),
        }
    }

    /// TUMBLING, HOPPING or SESSION for windowed sources.
    pub fn window_type(&self) -> Option<&'static str> {
        self.window.map(|w| match w {
            WindowKind::Tumbling { .. } => "TUMBLING",
            WindowKind::Hopping { .. } => "HOPPING",
            WindowKind::Session { .. } => "SESSION",
        })
    }

    /// The row schema SQL sees (key, value, pseudo columns).
    pub fn row_schema(&self) -> SchemaRef {
        self.source_spec().row_schema()
    }
}

/// A persistent query.
pub struct QueryDef {
    /// Id, e.g. `CSAS_S1_3`.
    pub id: String,
    /// The statement.
    pub statement: String,
    /// Sink source name.
    pub sink: String,
    /// Sink topic.
    pub sink_topic: String,
    /// Sources read.
    pub sources: Vec<String>,
    /// The running dataflow.
    pub running: Arc<RunningQuery>,
    /// EXPLAIN text of its operator graph.
    pub plan: String,
    /// Its stateful operators' state signatures (CREATE OR REPLACE must keep them).
    pub signature: Vec<String>,
}

/// Streams, tables and persistent queries, by name.
#[derive(Default)]
pub struct Catalog {
    /// Sources by upper-case name.
    pub sources: BTreeMap<String, SourceDef>,
    /// Persistent queries by id.
    pub queries: BTreeMap<String, QueryDef>,
    /// Types registered by `CREATE TYPE`, by name.
    pub types: crate::parser::CustomTypes,
}
