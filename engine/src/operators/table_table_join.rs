//! `TableTableJoinOperator`: joins two tables on their primary keys into a table.
//!
//! Input 0 is the left table's changelog, input 1 (`process_side_batch`) the right one's. Both
//! are materialised (latest row per key). Every change to a key recomputes that key's joined
//! row: both sides present gives the joined row; one side present gives the row with the other
//! side null for the outer kinds that keep it, and otherwise a delete of the key if a joined row
//! had been emitted for it. Output: left columns, right columns, then `__RILL_DELETE`.

use crate::state::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch, UInt32Array};
use arrow::compute::{cast, take};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::row::{OwnedRow, RowConverter, SortField};

use crate::message::Message;
use crate::operator::{Operator, StateInfo};
use crate::operators::aggregate::DELETE_COLUMN;
use crate::operators::stream_stream_join::{join_columns, joined_batch, Side};
use crate::operators::JoinKind;
use crate::Result;

/// What the join needs, planned by `rill-sql`.
pub struct TableTableJoinConfig {
    /// Left table rows; the first `key_columns` columns are the key.
    pub left_schema: SchemaRef,
    /// Right table rows; the first `key_columns` columns are the key.
    pub right_schema: SchemaRef,
    /// Number of key columns (same types on both sides).
    pub key_columns: usize,
    /// Delete-marker column of left rows.
    pub left_delete: usize,
    /// Delete-marker column of right rows.
    pub right_delete: usize,
    /// Join kind.
    pub kind: JoinKind,
    /// Left columns then right columns (the delete column is appended by the operator).
    pub join_schema: SchemaRef,
    /// Rows of both sides end with their record headers (a column after the side's columns of
    /// the join, not kept in the state): each output row carries the headers of the change that
    /// produced it, as a last column after the delete column.
    pub headers: bool,
}

/// See the module docs.
pub struct TableTableJoinOperator {
    cfg: TableTableJoinConfig,
    schema: SchemaRef,
    /// Each side's columns of the join (its rows without the headers column).
    left_data: SchemaRef,
    right_data: SchemaRef,
    keys: RowConverter,
    key_types: Vec<DataType>,
    left_rows: RowConverter,
    right_rows: RowConverter,
    left: HashMap<OwnedRow, OwnedRow>,
    right: HashMap<OwnedRow, OwnedRow>,
    emitted: HashSet<OwnedRow>,
}

impl TableTableJoinOperator {
    /// A join per `cfg`; keys are compared in the left key's types.
    pub fn try_new(cfg: TableTableJoinConfig) -> Result<Self> {
        let key_types: Vec<DataType> =
            cfg.left_schema.fields().iter().take(cfg.key_columns).map(|f| f.data_type().clone()).collect();
        let keys = RowConverter::new(key_types.iter().map(|t| SortField::new(t.clone())).collect())?;
        let (left_data, right_data) =
            (join_columns(&cfg.left_schema, cfg.headers), join_columns(&cfg.right_schema, cfg.headers));
        let fields = |s: &SchemaRef| s.fields().iter().map(|f| SortField::new(f.data_type().clone())).collect();
        let left_rows = RowConverter::new(fields(&left_data))?;
        let right_rows = RowConverter::new(fields(&right_data))?;
        let mut out: Vec<Field> =
            cfg.join_schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect();
        out.push(Field::new(DELETE_COLUMN, DataType::Boolean, false));
        if cfg.headers {
            out.push(Field::new(crate::source::HEADERS, crate::source::headers_type(), true));
        }
        Ok(Self {
            schema: Arc::new(Schema::new(out)),
            left_data,
            right_data,
            cfg,
            keys,
            key_types,
            left_rows,
            right_rows,
            left: HashMap::default(),
            right: HashMap::default(),
            emitted: HashSet::default(),
        })
    }

    fn process(&mut self, batch: RecordBatch, from_left: bool, out: &mut Vec<Message>) -> Result<()> {
        let n = batch.num_rows();
        let key_arrays = batch.columns()[..self.cfg.key_columns]
            .iter()
            .zip(&self.key_types)
            .map(|(a, t)| Ok(if a.data_type() == t { a.clone() } else { cast(a, t)? }))
            .collect::<Result<Vec<ArrayRef>>>()?;
        let keys = self.keys.convert_columns(&key_arrays)?;
        let data = batch.num_columns() - usize::from(self.cfg.headers);
        let rows = if from_left {
            self.left_rows.convert_columns(&batch.columns()[..data])?
        } else {
            self.right_rows.convert_columns(&batch.columns()[..data])?
        };
        let deletes =
            batch.column(if from_left { self.cfg.left_delete } else { self.cfg.right_delete }).as_boolean().clone();
        let (keep_left, keep_right) = match self.cfg.kind {
            JoinKind::Inner => (false, false),
            JoinKind::Left => (true, false),
            JoinKind::Right => (false, true),
            JoinKind::Full => (true, true),
        };
        // (left row, right row, delete) per output row, and the input row producing it.
        let mut outputs: Vec<(Option<OwnedRow>, Option<OwnedRow>, bool)> = Vec::new();
        let mut producers: Vec<u32> = Vec::new();
        for i in 0..n {
            let key = keys.row(i).owned();
            let side = if from_left { &mut self.left } else { &mut self.right };
            if deletes.is_valid(i) && deletes.value(i) {
                side.remove(&key);
            } else {
                side.insert(key.clone(), rows.row(i).owned());
            }
            let l = self.left.get(&key).cloned();
            let r = self.right.get(&key).cloned();
            let keep = match (&l, &r) {
                (Some(_), Some(_)) => true,
                (Some(_), None) => keep_left,
                (None, Some(_)) => keep_right,
                (None, None) => false,
            };
            if keep {
                self.emitted.insert(key);
                outputs.push((l, r, false));
                producers.push(i as u32);
            } else if self.emitted.remove(&key) {
                // The key had a joined row: delete it. Its key comes from whichever side
                // still (or last) has it; the input row carries it for this side.
                let row = rows.row(i).owned();
                outputs.push(if from_left { (Some(row), None, true) } else { (None, Some(row), true) });
                producers.push(i as u32);
            }
        }
        if outputs.is_empty() {
            return Ok(());
        }
        let count = outputs.len();
        let deletes: ArrayRef = Arc::new(BooleanArray::from(outputs.iter().map(|o| o.2).collect::<Vec<_>>()));
        let mut extra = vec![deletes];
        if self.cfg.headers {
            extra.push(take(batch.column(data).as_ref(), &UInt32Array::from(producers), None)?);
        }
        out.push(Message::Data(joined_batch(
            Side {
                rows: &self.left_rows,
                schema: &self.left_data,
                picked: outputs.iter().map(|o| o.0.as_ref().map(|r| r.row())),
            },
            Side {
                rows: &self.right_rows,
                schema: &self.right_data,
                picked: outputs.iter().map(|o| o.1.as_ref().map(|r| r.row())),
            },
            count,
            &self.schema,
            extra,
        )?));
        Ok(())
    }
}

impl Operator for TableTableJoinOperator {
    fn name(&self) -> &str {
        "table-table-join"
    }

    fn output_schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        let [lk, lv] = crate::state::map_snapshot(&self.keys, &self.left_rows, &self.left)?;
        let [rk, rv] = crate::state::map_snapshot(&self.keys, &self.right_rows, &self.right)?;
        Ok(vec![lk, lv, rk, rv, crate::state::set_snapshot(&self.keys, &self.emitted)?])
    }

    fn restore(&mut self, state: Vec<RecordBatch>) -> Result<()> {
        if state.len() != 5 {
            return Err(crate::state::bad_state("a table-table join has five state batches"));
        }
        crate::state::map_restore(&self.keys, &self.left_rows, &state[0..2], &mut self.left)?;
        crate::state::map_restore(&self.keys, &self.right_rows, &state[2..4], &mut self.right)?;
        crate::state::set_restore(&self.keys, &state[4], &mut self.emitted)
    }

    fn process_batch(&mut self, batch: RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        self.process(batch, true, out)
    }

    fn process_side_batch(&mut self, _input: usize, batch: RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        self.process(batch, false, out)
    }

    fn state_info(&self) -> StateInfo {
        StateInfo {
            bounded: true,
            bytes: self.left.iter().chain(self.right.iter()).map(|(k, v)| k.as_ref().len() + v.as_ref().len()).sum(),
            description: "the latest row per key of both tables".into(),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use arrow::array::{BinaryArray, Int64Array, ListArray, StringArray, StructArray};
    use arrow::buffer::OffsetBuffer;
    use arrow::util::pretty::pretty_format_batches;

    use super::*;

    /// A headers column: per row, one header `h` with the given value.
    pub(crate) fn headers(values: &[&str]) -> ArrayRef {
        let DataType::List(item) = crate::source::headers_type() else { panic!("headers are a list") };
        let DataType::Struct(fields) = item.data_type() else { panic!("header entries are structs") };
        let keys: ArrayRef = Arc::new(StringArray::from(vec!["h"; values.len()]));
        let bytes: ArrayRef = Arc::new(BinaryArray::from_iter_values(values.iter().map(|v| v.as_bytes())));
        let entries = StructArray::try_new(fields.clone(), vec![keys, bytes], None).unwrap();
        Arc::new(ListArray::new(item, OffsetBuffer::from_lengths(vec![1; values.len()]), Arc::new(entries), None))
    }

    fn side(prefix: &str) -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new(format!("{prefix}_K"), DataType::Utf8, true),
            Field::new(format!("{prefix}_V"), DataType::Int64, true),
            Field::new(format!("{prefix}_DELETE"), DataType::Boolean, true),
            Field::new(crate::source::HEADERS, crate::source::headers_type(), true),
        ]))
    }

    fn rows(schema: &SchemaRef, rows: &[(&str, Option<i64>, &str)]) -> RecordBatch {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(rows.iter().map(|r| r.0).collect::<Vec<_>>())),
            Arc::new(Int64Array::from(rows.iter().map(|r| r.1).collect::<Vec<_>>())),
            Arc::new(BooleanArray::from(rows.iter().map(|r| r.1.is_none()).collect::<Vec<_>>())),
            headers(&rows.iter().map(|r| r.2).collect::<Vec<_>>()),
        ];
        RecordBatch::try_new(schema.clone(), columns).unwrap()
    }

    /// With headers, each output row (joined, or the delete of a joined row) carries the
    /// headers of the change that produced it; the state keeps only the join's columns.
    #[test]
    fn changes_carry_their_records_headers() {
        let (l, r) = (side("L"), side("R"));
        let join_fields: Vec<Field> =
            l.fields()[..3].iter().chain(r.fields()[..3].iter()).map(|f| f.as_ref().clone()).collect();
        let mut op = TableTableJoinOperator::try_new(TableTableJoinConfig {
            left_schema: l.clone(),
            right_schema: r.clone(),
            key_columns: 1,
            left_delete: 2,
            right_delete: 2,
            kind: JoinKind::Inner,
            join_schema: Arc::new(Schema::new(join_fields)),
            headers: true,
        })
        .unwrap();
        let mut out = Vec::new();
        op.process_batch(rows(&l, &[("a", Some(1), "left a")]), &mut out).unwrap();
        op.process_side_batch(1, rows(&r, &[("a", Some(2), "right a")]), &mut out).unwrap();
        op.process_batch(rows(&l, &[("a", None, "left delete")]), &mut out).unwrap();
        let batches: Vec<RecordBatch> =
            out.into_iter().filter_map(|m| if let Message::Data(b) = m { Some(b) } else { None }).collect();
        let text = pretty_format_batches(&batches).unwrap().to_string();
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("| a")).collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].contains("| 2 ")
                && lines[0].contains("false")
                && lines[0].contains("{KEY: h, VALUE: 72696768742061}"),
            "{text}"
        );
        assert!(lines[1].contains("true") && lines[1].contains("{KEY: h, VALUE: 6c6566742064656c657465}"), "{text}");
    }
}
