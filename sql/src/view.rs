//! Materialised views of tables for pull queries.
//!
//! A pull query on a table used to decode the table's whole topic each time. A [`TableView`]
//! keeps the latest row per key (in arrow's row format) and, before each pull query, reads only
//! what was appended since the previous one. A lookup by key (`WHERE K = 'x'`, `K IN (...)`) then
//! touches just those keys; other pull queries get every current row without decoding anything
//! again. Views read the topic like any reader (committed records only); they never block the
//! queries that write the table.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Schema, SchemaRef};
use arrow::row::{OwnedRow, RowConverter, SortField};
use bytes::Bytes;
use rill_connectors::format::{encoder, Encoder, Registered};
use rill_connectors::registry::subject;
use rill_connectors::TopicStore;
use rill_engine::source::{SourceReader, DELETE};
use sqlparser::ast as sp;

use crate::catalog::SourceDef;
use crate::{Result, SqlError};

/// The current rows of one table.
pub struct TableView {
    /// The statement that defined the table (a re-created table gets a new view).
    statement: String,
    topic: String,
    schema: SchemaRef,
    nkeys: usize,
    delete: usize,
    positions: Vec<u64>,
    readers: Vec<SourceReader>,
    keys: RowConverter,
    rows: RowConverter,
    /// Serialises key columns (without window bounds) as the topic's key format does.
    key_bytes: Box<dyn Encoder>,
    key_schema: SchemaRef,
    /// Key → its latest row: scans list rows partition by partition, in the order of the
    /// serialised keys within a partition, as ksqlDB's RocksDB stores do.
    latest: HashMap<OwnedRow, Latest>,
    windowed: bool,
}

/// The latest row of one key.
struct Latest {
    partition: u32,
    /// The key as the topic's key format serialises it (its order within a partition).
    serialized: Bytes,
    row: OwnedRow,
}

impl TableView {
    /// An empty view of `source` (a table); [`TableView::catch_up`] fills it.
    pub fn try_new(source: &SourceDef, store: &dyn TopicStore) -> Result<Self> {
        let spec = source.source_spec();
        let schema = spec.row_schema();
        // A windowed table's rows are keyed by key and window (its bounds follow the key).
        let inner = source.key_columns().count();
        let nkeys = inner + if source.window.is_some() { 2 } else { 0 };
        let key_schema = Arc::new(Schema::new(schema.fields()[..inner].to_vec()));
        let partitions = store.topic_config(&source.topic)?.partitions;
        let registry = store.schema_registry();
        let readers = (0..partitions)
            .map(|p| SourceReader::try_new(spec.clone(), p, registry.clone()))
            .collect::<Result<_, _>>()?;
        let key_subject = Registered { registry, subject: subject(&source.topic, true) };
        let positions = (0..partitions).map(|p| store.start_offset(&source.topic, p)).collect::<Result<_, _>>()?;
        let field = |f: &Arc<arrow::datatypes::Field>| SortField::new(f.data_type().clone());
        Ok(Self {
            statement: source.statement.clone(),
            topic: source.topic.clone(),
            delete: schema.index_of(DELETE).map_err(|e| SqlError::Internal(e.to_string()))?,
            key_bytes: encoder(&spec.key_format, key_schema.clone(), Some(&key_subject))?,
            key_schema,
            keys: RowConverter::new(schema.fields().iter().take(nkeys).map(field).collect())?,
            rows: RowConverter::new(schema.fields().iter().map(field).collect())?,
            schema,
            nkeys,
            positions,
            readers,
            latest: HashMap::new(),
            windowed: source.window.is_some(),
        })
    }

    /// Whether this view still describes `source` (the same definition, the same topic).
    pub fn describes(&self, source: &SourceDef) -> bool {
        self.statement == source.statement && self.topic == source.topic
    }

    /// Applies everything appended since the last call. Fails (so the caller rebuilds the
    /// view) if the topic no longer has what the view read (deleted and re-created).
    pub fn catch_up(&mut self, store: &dyn TopicStore) -> Result<()> {
        for (p, reader) in self.readers.iter_mut().enumerate() {
            let end = store.end_offset(&self.topic, p as u32)?;
            if self.positions[p] > end {
                return Err(SqlError::Internal("the table's topic was re-created".into()));
            }
            while self.positions[p] < end {
                let fetch = store.read(&self.topic, p as u32, self.positions[p], 4 << 20)?;
                if fetch.next_offset() <= self.positions[p] {
                    break;
                }
                let read = reader.read(&fetch)?;
                self.positions[p] = read.next_offset;
                let Some(batch) = read.batch else { continue };
                let keys = self.keys.convert_columns(&batch.columns()[..self.nkeys])?;
                let rows = self.rows.convert_columns(batch.columns())?;
                let deletes = batch.column(self.delete).as_boolean();
                let inner = self.key_schema.fields().len();
                let key_batch = RecordBatch::try_new(self.key_schema.clone(), batch.columns()[..inner].to_vec())?;
                let mut serialized = Vec::with_capacity(batch.num_rows());
                self.key_bytes.encode(&key_batch, &mut serialized)?;
                for (i, serialized) in serialized.into_iter().enumerate() {
                    if deletes.is_valid(i) && deletes.value(i) {
                        self.latest.remove(&keys.row(i).owned());
                    } else {
                        let latest = Latest {
                            partition: p as u32,
                            serialized: serialized.unwrap_or_default(),
                            row: rows.row(i).owned(),
                        };
                        self.latest.insert(keys.row(i).owned(), latest);
                    }
                }
            }
        }
        Ok(())
    }

    /// The current rows of the given keys (one array per key column, one row per key; in the
    /// order given, as ksqlDB's key lookups answer), or of every key (partition by partition,
    /// by serialised key). A windowed key's windows come in order of their start.
    pub fn rows(&self, keys: Option<&[ArrayRef]>) -> Result<RecordBatch> {
        let entries: Vec<&Latest> = match keys {
            // A lookup of whole keys: straight to them.
            Some(keys) if !self.windowed => {
                let wanted = self.keys.convert_columns(keys)?;
                let mut seen = std::collections::HashSet::new();
                (0..wanted.num_rows())
                    .map(|i| wanted.row(i).owned())
                    .filter(|k| seen.insert(k.clone()))
                    .filter_map(|k| self.latest.get(&k))
                    .collect()
            }
            Some(keys) => self.windows_of(keys)?,
            None => self.in_scan_order().into_iter().map(|(_, l)| l).collect(),
        };
        let columns = self.rows.convert_rows(entries.iter().map(|l| l.row.row()))?;
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }

    /// Every key in scan order; the full key row orders the windows of one key (their start
    /// follows the key columns).
    fn in_scan_order(&self) -> Vec<(&OwnedRow, &Latest)> {
        let mut entries: Vec<(&OwnedRow, &Latest)> = self.latest.iter().collect();
        entries.sort_unstable_by(|(ka, a), (kb, b)| {
            (a.partition, &a.serialized, ka).cmp(&(b.partition, &b.serialized, kb))
        });
        entries
    }

    /// The windows of the given keys of a windowed table, key by key in the order given.
    fn windows_of(&self, keys: &[ArrayRef]) -> Result<Vec<&Latest>> {
        let inner = self.key_schema.fields().len();
        let entries = self.in_scan_order();
        let prefix = RowConverter::new(
            self.key_schema.fields().iter().map(|f| SortField::new(f.data_type().clone())).collect(),
        )?;
        let key_columns = self.keys.convert_rows(entries.iter().map(|(k, _)| k.row()))?;
        let prefixes = prefix.convert_columns(&key_columns[..inner])?;
        let wanted = prefix.convert_columns(keys)?;
        let mut seen = std::collections::HashSet::new();
        let mut picked = Vec::new();
        for w in 0..wanted.num_rows() {
            if seen.insert(wanted.row(w).owned()) {
                picked.extend((0..entries.len()).filter(|i| prefixes.row(*i) == wanted.row(w)).map(|i| entries[i].1));
            }
        }
        Ok(picked)
    }

    /// Key arrays for a WHERE clause that pins the table's single key column to literals
    /// (`K = 'x'`, `'x' = K`, `K IN ('x', 'y')`, also inside ANDs); `None` if it does not.
    pub fn key_literals(&self, selection: Option<&sp::Expr>, key_name: &str) -> Option<Vec<ArrayRef>> {
        if self.nkeys != if self.windowed { 3 } else { 1 } {
            return None;
        }
        let mut literals = Vec::new();
        if !collect_key_literals(selection?, key_name, &mut literals) || literals.is_empty() {
            return None;
        }
        let strings: ArrayRef = Arc::new(StringArray::from(literals));
        let key_type: &DataType = self.schema.field(0).data_type();
        let array = cast(&strings, key_type).ok()?;
        // A literal that does not convert to the key type (e.g. 'x' for a BIGINT key): scan.
        (array.null_count() == 0).then(|| vec![array])
    }
}

fn is_key(e: &sp::Expr, key_name: &str) -> bool {
    crate::pull::column_name(e).is_some_and(|n| n.eq_ignore_ascii_case(key_name))
}

fn literal(e: &sp::Expr) -> Option<String> {
    match e {
        sp::Expr::Value(v) => match &v.value {
            sp::Value::SingleQuotedString(s) => Some(s.clone()),
            sp::Value::Number(n, _) => Some(n.clone()),
            _ => None,
        },
        sp::Expr::UnaryOp { op: sp::UnaryOperator::Minus, expr } => literal(expr).map(|s| format!("-{s}")),
        sp::Expr::Nested(inner) => literal(inner),
        _ => None,
    }
}

/// Finds `key = literal` conditions that every matching row must satisfy; false if the WHERE
/// clause does not restrict the key to literals.
fn collect_key_literals(e: &sp::Expr, key_name: &str, out: &mut Vec<String>) -> bool {
    match e {
        sp::Expr::BinaryOp { left, op: sp::BinaryOperator::And, right } => {
            // Either side pinning the key is enough (DataFusion applies the whole clause).
            let mut l = Vec::new();
            if collect_key_literals(left, key_name, &mut l) {
                out.extend(l);
                return true;
            }
            collect_key_literals(right, key_name, out)
        }
        sp::Expr::BinaryOp { left, op: sp::BinaryOperator::Eq, right } => {
            let value = if is_key(left, key_name) {
                literal(right)
            } else if is_key(right, key_name) {
                literal(left)
            } else {
                None
            };
            match value {
                Some(v) => {
                    out.push(v);
                    true
                }
                None => false,
            }
        }
        sp::Expr::InList { expr, list, negated: false } if is_key(expr, key_name) => {
            let values: Option<Vec<String>> = list.iter().map(literal).collect();
            match values {
                Some(v) => {
                    out.extend(v);
                    true
                }
                None => false,
            }
        }
        sp::Expr::Nested(inner) => collect_key_literals(inner, key_name, out),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pull::tests::where_clause;

    fn keys(sql: &str) -> Option<Vec<String>> {
        let mut out = Vec::new();
        collect_key_literals(&where_clause(sql), "ID", &mut out).then_some(out)
    }

    #[test]
    fn key_lookups_are_recognised_and_scans_are_not() {
        assert_eq!(keys("ID = 'a'"), Some(vec!["a".into()]));
        assert_eq!(keys("'a' = t.id"), Some(vec!["a".into()]));
        assert_eq!(keys("ID IN (1, -2) AND V > 3"), Some(vec!["1".into(), "-2".into()]));
        assert_eq!(keys("V > 3 AND (ID = 'b')"), Some(vec!["b".into()]));
        assert_eq!(keys("ID = 'a' OR ID = 'b'"), None, "OR needs both sides: scan");
        assert_eq!(keys("ID > 'a'"), None);
        assert_eq!(keys("ID NOT IN ('a')"), None);
        assert_eq!(keys("NAME = 'a'"), None);
    }
}
