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
use arrow::datatypes::{DataType, SchemaRef};
use arrow::row::{OwnedRow, RowConverter, SortField};
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
    /// Key → (partition, offset of its latest row, the row): scans list rows in the order of
    /// their latest change, partition by partition, as ksqlDB's do.
    latest: HashMap<OwnedRow, (u32, i64, OwnedRow)>,
    offset: usize,
    windowed: bool,
}

impl TableView {
    /// An empty view of `source` (a table); [`TableView::catch_up`] fills it.
    pub fn try_new(source: &SourceDef, store: &dyn TopicStore) -> Result<Self> {
        let spec = source.source_spec();
        let schema = spec.row_schema();
        // A windowed table's rows are keyed by key and window (its bounds follow the key).
        let nkeys = source.key_columns().count() + if source.window.is_some() { 2 } else { 0 };
        let partitions = store.topic_config(&source.topic)?.partitions;
        let readers = (0..partitions).map(|p| SourceReader::try_new(spec.clone(), p)).collect::<Result<_, _>>()?;
        let positions = (0..partitions).map(|p| store.start_offset(&source.topic, p)).collect::<Result<_, _>>()?;
        let field = |f: &Arc<arrow::datatypes::Field>| SortField::new(f.data_type().clone());
        Ok(Self {
            statement: source.statement.clone(),
            topic: source.topic.clone(),
            delete: schema.index_of(DELETE).map_err(|e| SqlError::Internal(e.to_string()))?,
            offset: schema.index_of(rill_engine::source::ROWOFFSET).map_err(|e| SqlError::Internal(e.to_string()))?,
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
                let offsets = batch.column(self.offset).as_primitive::<arrow::datatypes::Int64Type>();
                for i in 0..batch.num_rows() {
                    if deletes.is_valid(i) && deletes.value(i) {
                        self.latest.remove(&keys.row(i).owned());
                    } else {
                        self.latest.insert(keys.row(i).owned(), (p as u32, offsets.value(i), rows.row(i).owned()));
                    }
                }
            }
        }
        Ok(())
    }

    /// The current rows of the given keys (one array per key column, one row per key), or of
    /// every key.
    pub fn rows(&self, keys: Option<&[ArrayRef]>) -> Result<RecordBatch> {
        if self.windowed {
            return self.windowed_rows(keys);
        }
        let mut selected: Vec<(&OwnedRow, &(u32, i64, OwnedRow))> = match keys {
            Some(keys) => {
                let wanted = self.keys.convert_columns(keys)?;
                let mut seen = std::collections::HashSet::new();
                (0..wanted.num_rows())
                    .filter(|i| seen.insert(wanted.row(*i).owned()))
                    .filter_map(|i| self.latest.get_key_value(&wanted.row(i).owned()))
                    .collect()
            }
            None => self.latest.iter().collect(),
        };
        selected.sort_unstable_by_key(|(_, (p, o, _))| (*p, *o));
        let columns = self.rows.convert_rows(selected.into_iter().map(|(_, (_, _, r))| r.row()))?;
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }

    /// Rows of a windowed table: of the given keys in the order given, or of every key in key
    /// order (partition by partition); the windows of a key in order of their start.
    fn windowed_rows(&self, keys: Option<&[ArrayRef]>) -> Result<RecordBatch> {
        let inner = self.nkeys - 2;
        let prefix = RowConverter::new(
            self.schema.fields().iter().take(inner).map(|f| SortField::new(f.data_type().clone())).collect(),
        )?;
        let entries: Vec<(&OwnedRow, &(u32, i64, OwnedRow))> = self.latest.iter().collect();
        let key_columns = self.keys.convert_rows(entries.iter().map(|(k, _)| k.row()))?;
        let prefixes = prefix.convert_columns(&key_columns[..inner])?;
        let mut order: Vec<usize> = (0..entries.len()).collect();
        order.sort_unstable_by(|a, b| {
            (entries[*a].1 .0, prefixes.row(*a), entries[*a].0).cmp(&(
                entries[*b].1 .0,
                prefixes.row(*b),
                entries[*b].0,
            ))
        });
        if let Some(keys) = keys {
            let wanted = prefix.convert_columns(keys)?;
            let mut seen = std::collections::HashSet::new();
            let mut picked = Vec::new();
            for w in 0..wanted.num_rows() {
                if seen.insert(wanted.row(w).owned()) {
                    picked.extend(order.iter().copied().filter(|i| prefixes.row(*i) == wanted.row(w)));
                }
            }
            order = picked;
        }
        let columns = self.rows.convert_rows(order.iter().map(|i| entries[*i].1 .2.row()))?;
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
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
    match e {
        sp::Expr::Identifier(id) => id.value.eq_ignore_ascii_case(key_name),
        sp::Expr::CompoundIdentifier(ids) => ids.last().is_some_and(|id| id.value.eq_ignore_ascii_case(key_name)),
        sp::Expr::Nested(inner) => is_key(inner, key_name),
        _ => false,
    }
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

    fn where_clause(sql: &str) -> sp::Expr {
        let dialect = sqlparser::dialect::GenericDialect {};
        let stmt = sqlparser::parser::Parser::parse_sql(&dialect, &format!("SELECT * FROM t WHERE {sql}")).unwrap();
        let sp::Statement::Query(q) = &stmt[0] else { panic!("not a query") };
        let sp::SetExpr::Select(s) = q.body.as_ref() else { panic!("not a select") };
        s.selection.clone().unwrap()
    }

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
