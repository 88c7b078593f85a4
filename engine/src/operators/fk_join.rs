//! `ForeignKeyJoinOperator`: joins a table to another table on a foreign key, into a table keyed
//! by the left table's key (ksqlDB's foreign-key table-table join, Kafka Streams' KIP-213).
//!
//! Input 0 is the left table's changelog, input 1 (`process_side_batch`) the right one's. The
//! foreign key is an expression over the left row; it must equal the right table's key. Both
//! tables are materialised, and a subscription index maps each foreign key to the left keys
//! referencing it (ordered, so one right change emits its left rows in key order).
//!
//! What each change emits, as Kafka Streams does:
//! * a left upsert: the joined row if the right table has its foreign key; otherwise, for
//!   `LEFT JOIN`, the left row with the right side null, and for `JOIN` a delete of the key if
//!   the key existed before (a new left key without a match emits nothing);
//! * a left delete of an existing key: a delete;
//! * a right upsert or delete: the same, for every left row referencing that key.
//!
//! Output: left columns, right columns, `__RILL_DELETE`, then [`JOIN_TIME_COLUMN`]: the time of
//! the record that caused the row.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch, UInt32Array};
use arrow::compute::{cast, take};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use arrow::row::{OwnedRow, RowConverter, SortField};
use datafusion::physical_expr::PhysicalExpr;

use crate::message::Message;
use crate::operator::{Operator, StateInfo};
use crate::operators::aggregate::DELETE_COLUMN;
use crate::operators::stream_stream_join::{join_columns, joined_batch, Side};
use crate::state::HashMap;
use crate::Result;

/// The time column the operator appends: the time of the change that caused each row.
pub const JOIN_TIME_COLUMN: &str = "__RILL_JOIN_TIME";

/// What the join needs, planned by `rill-sql`.
pub struct ForeignKeyJoinConfig {
    /// Left table rows; the first `left_key_columns` columns are the key.
    pub left_schema: SchemaRef,
    /// Number of key columns of the left table.
    pub left_key_columns: usize,
    /// The foreign key: an expression over left rows, of the right key's type.
    pub foreign_key: Arc<dyn PhysicalExpr>,
    /// Right table rows; the first column is the key.
    pub right_schema: SchemaRef,
    /// Delete-marker column of left rows.
    pub left_delete: usize,
    /// Delete-marker column of right rows.
    pub right_delete: usize,
    /// Time column of left rows.
    pub left_time: usize,
    /// Time column of right rows.
    pub right_time: usize,
    /// `LEFT JOIN` (keep left rows without a match) rather than `JOIN`.
    pub left_outer: bool,
    /// Left columns then right columns (the operator appends the delete and time columns).
    pub join_schema: SchemaRef,
    /// Rows of both tables end with their record headers (a column after the table's columns of
    /// the join, not kept in the state): each output row carries the headers of the change that
    /// produced it, as a last column after the time column.
    pub headers: bool,
}

/// See the module docs.
pub struct ForeignKeyJoinOperator {
    cfg: ForeignKeyJoinConfig,
    schema: SchemaRef,
    /// Each table's columns of the join (its rows without the headers column).
    left_data: SchemaRef,
    right_data: SchemaRef,
    left_keys: RowConverter,
    right_key_type: DataType,
    foreign_keys: RowConverter,
    left_rows: RowConverter,
    right_rows: RowConverter,
    /// Left key → left row.
    left: HashMap<OwnedRow, OwnedRow>,
    /// Left key → its (non-null) foreign key.
    left_fk: HashMap<OwnedRow, OwnedRow>,
    /// Right key → right row.
    right: HashMap<OwnedRow, OwnedRow>,
    /// Foreign key → the left keys referencing it.
    subscriptions: HashMap<OwnedRow, BTreeSet<OwnedRow>>,
}

/// One output row: left row, right row (absent: null), delete, time, the input row producing it.
type Out = (OwnedRow, Option<OwnedRow>, bool, i64, u32);

impl ForeignKeyJoinOperator {
    /// A join per `cfg`.
    pub fn try_new(cfg: ForeignKeyJoinConfig) -> Result<Self> {
        let sort_fields = |s: &SchemaRef, n: usize| -> Vec<SortField> {
            s.fields().iter().take(n).map(|f| SortField::new(f.data_type().clone())).collect()
        };
        let right_key_type = cfg.right_schema.field(0).data_type().clone();
        let mut out: Vec<Field> =
            cfg.join_schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect();
        out.push(Field::new(DELETE_COLUMN, DataType::Boolean, false));
        out.push(Field::new(JOIN_TIME_COLUMN, DataType::Int64, true));
        if cfg.headers {
            out.push(Field::new(crate::source::HEADERS, crate::source::headers_type(), true));
        }
        let (left_data, right_data) =
            (join_columns(&cfg.left_schema, cfg.headers), join_columns(&cfg.right_schema, cfg.headers));
        Ok(Self {
            schema: Arc::new(Schema::new(out)),
            left_keys: RowConverter::new(sort_fields(&cfg.left_schema, cfg.left_key_columns))?,
            foreign_keys: RowConverter::new(vec![SortField::new(right_key_type.clone())])?,
            right_key_type,
            left_rows: RowConverter::new(sort_fields(&left_data, usize::MAX))?,
            right_rows: RowConverter::new(sort_fields(&right_data, usize::MAX))?,
            left_data,
            right_data,
            cfg,
            left: HashMap::default(),
            left_fk: HashMap::default(),
            right: HashMap::default(),
            subscriptions: HashMap::default(),
        })
    }

    fn unsubscribe(&mut self, key: &OwnedRow) {
        if let Some(fk) = self.left_fk.remove(key) {
            if let Some(keys) = self.subscriptions.get_mut(&fk) {
                keys.remove(key);
                if keys.is_empty() {
                    self.subscriptions.remove(&fk);
                }
            }
        }
    }

    fn process_left(&mut self, batch: &RecordBatch) -> Result<Vec<Out>> {
        let keys = self.left_keys.convert_columns(&batch.columns()[..self.cfg.left_key_columns])?;
        let rows = self.left_rows.convert_columns(&batch.columns()[..self.left_data.fields().len()])?;
        let mut fk = self.cfg.foreign_key.evaluate(batch)?.into_array(batch.num_rows())?;
        if fk.data_type() != &self.right_key_type {
            fk = cast(&fk, &self.right_key_type)?;
        }
        let fks = self.foreign_keys.convert_columns(&[fk.clone()])?;
        let deletes = batch.column(self.cfg.left_delete).as_boolean();
        let times = batch.column(self.cfg.left_time).as_primitive::<Int64Type>();
        let mut outputs = Vec::new();
        for i in 0..batch.num_rows() {
            let key = keys.row(i).owned();
            let row = rows.row(i).owned();
            let time = times.value(i);
            self.unsubscribe(&key);
            if deletes.is_valid(i) && deletes.value(i) {
                if self.left.remove(&key).is_some() {
                    outputs.push((row, None, true, time, i as u32));
                }
                continue;
            }
            let existed = self.left.insert(key.clone(), row.clone()).is_some();
            let matched = if fk.is_valid(i) {
                let f = fks.row(i).owned();
                self.subscriptions.entry(f.clone()).or_default().insert(key.clone());
                let r = self.right.get(&f).cloned();
                self.left_fk.insert(key, f);
                r
            } else {
                None
            };
            let i = i as u32;
            match matched {
                Some(r) => outputs.push((row, Some(r), false, time, i)),
                None if self.cfg.left_outer => outputs.push((row, None, false, time, i)),
                None if existed => outputs.push((row, None, true, time, i)),
                None => {}
            }
        }
        Ok(outputs)
    }

    fn process_right(&mut self, batch: &RecordBatch) -> Result<Vec<Out>> {
        let mut key = batch.column(0).clone();
        if key.data_type() != &self.right_key_type {
            key = cast(&key, &self.right_key_type)?;
        }
        let keys = self.foreign_keys.convert_columns(&[key])?;
        let rows = self.right_rows.convert_columns(&batch.columns()[..self.right_data.fields().len()])?;
        let deletes = batch.column(self.cfg.right_delete).as_boolean();
        let times = batch.column(self.cfg.right_time).as_primitive::<Int64Type>();
        let mut outputs = Vec::new();
        for i in 0..batch.num_rows() {
            let key = keys.row(i).owned();
            let time = times.value(i);
            let right = if deletes.is_valid(i) && deletes.value(i) {
                self.right.remove(&key);
                None
            } else {
                let row = rows.row(i).owned();
                self.right.insert(key.clone(), row.clone());
                Some(row)
            };
            let Some(subscribers) = self.subscriptions.get(&key) else { continue };
            for left_key in subscribers {
                let Some(left) = self.left.get(left_key) else { continue };
                let i = i as u32;
                match &right {
                    Some(r) => outputs.push((left.clone(), Some(r.clone()), false, time, i)),
                    None => outputs.push((left.clone(), None, !self.cfg.left_outer, time, i)),
                }
            }
        }
        Ok(outputs)
    }

    /// Emits `outputs`, produced by rows of `input`.
    fn emit(&self, outputs: Vec<Out>, input: &RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        if outputs.is_empty() {
            return Ok(());
        }
        let count = outputs.len();
        let deletes: ArrayRef = Arc::new(BooleanArray::from(outputs.iter().map(|o| o.2).collect::<Vec<_>>()));
        let times: ArrayRef = Arc::new(Int64Array::from(outputs.iter().map(|o| o.3).collect::<Vec<_>>()));
        let mut extra = vec![deletes, times];
        if self.cfg.headers {
            let producers = UInt32Array::from(outputs.iter().map(|o| o.4).collect::<Vec<_>>());
            extra.push(take(input.column(input.num_columns() - 1).as_ref(), &producers, None)?);
        }
        out.push(Message::Data(joined_batch(
            Side { rows: &self.left_rows, schema: &self.left_data, picked: outputs.iter().map(|o| Some(o.0.row())) },
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

impl Operator for ForeignKeyJoinOperator {
    fn name(&self) -> &str {
        "foreign-key-join"
    }

    fn output_schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn process_batch(&mut self, batch: RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        let outputs = self.process_left(&batch)?;
        self.emit(outputs, &batch, out)
    }

    fn process_side_batch(&mut self, _input: usize, batch: RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        let outputs = self.process_right(&batch)?;
        self.emit(outputs, &batch, out)
    }

    fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        let [lk, lv] = crate::state::map_snapshot(&self.left_keys, &self.left_rows, &self.left)?;
        let [fk_keys, fk_values] = crate::state::map_snapshot(&self.left_keys, &self.foreign_keys, &self.left_fk)?;
        let [rk, rv] = crate::state::map_snapshot(&self.foreign_keys, &self.right_rows, &self.right)?;
        Ok(vec![lk, lv, fk_keys, fk_values, rk, rv])
    }

    fn restore(&mut self, state: Vec<RecordBatch>) -> Result<()> {
        if state.len() != 6 {
            return Err(crate::state::bad_state("a foreign-key join has six state batches"));
        }
        crate::state::map_restore(&self.left_keys, &self.left_rows, &state[0..2], &mut self.left)?;
        crate::state::map_restore(&self.left_keys, &self.foreign_keys, &state[2..4], &mut self.left_fk)?;
        crate::state::map_restore(&self.foreign_keys, &self.right_rows, &state[4..6], &mut self.right)?;
        self.subscriptions.clear();
        for (key, fk) in &self.left_fk {
            self.subscriptions.entry(fk.clone()).or_default().insert(key.clone());
        }
        Ok(())
    }

    fn state_signature(&mut self) -> Result<String> {
        let types = |s: &SchemaRef| s.fields().iter().map(|f| f.data_type().to_string()).collect::<Vec<_>>();
        Ok(format!(
            "foreign-key-join[{} on {}; left {:?}; right {:?}]",
            if self.cfg.left_outer { "left" } else { "inner" },
            self.cfg.foreign_key,
            types(&self.cfg.left_schema),
            types(&self.cfg.right_schema)
        ))
    }

    fn state_info(&self) -> StateInfo {
        StateInfo {
            bounded: true,
            bytes: self.left.iter().chain(self.right.iter()).map(|(k, v)| k.as_ref().len() + v.as_ref().len()).sum(),
            description: "the latest row per key of both tables, and which left keys reference each right key".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::StringArray;
    use datafusion::physical_expr::expressions::Column;

    use super::*;

    fn schemas() -> (SchemaRef, SchemaRef) {
        let left = Arc::new(Schema::new(vec![
            Field::new("L_ID", DataType::Int64, true),
            Field::new("FK", DataType::Int64, true),
            Field::new("ROWTIME", DataType::Int64, true),
            Field::new("DEL", DataType::Boolean, true),
        ]));
        let right = Arc::new(Schema::new(vec![
            Field::new("R_ID", DataType::Int64, true),
            Field::new("F1", DataType::Utf8, true),
            Field::new("ROWTIME", DataType::Int64, true),
            Field::new("DEL", DataType::Boolean, true),
        ]));
        (left, right)
    }

    fn join(left_outer: bool) -> ForeignKeyJoinOperator {
        let (left, right) = schemas();
        let fields: Vec<Field> = left.fields().iter().chain(right.fields()).map(|f| f.as_ref().clone()).collect();
        ForeignKeyJoinOperator::try_new(ForeignKeyJoinConfig {
            left_schema: left,
            left_key_columns: 1,
            foreign_key: Arc::new(Column::new("FK", 1)),
            right_schema: right,
            left_delete: 3,
            right_delete: 3,
            left_time: 2,
            right_time: 2,
            left_outer,
            join_schema: Arc::new(Schema::new(fields)),
            headers: false,
        })
        .unwrap()
    }

    fn left_row(id: i64, fk: Option<i64>, t: i64, del: bool) -> RecordBatch {
        RecordBatch::try_new(
            schemas().0,
            vec![
                Arc::new(Int64Array::from(vec![id])),
                Arc::new(Int64Array::from(vec![fk])),
                Arc::new(Int64Array::from(vec![t])),
                Arc::new(BooleanArray::from(vec![del])),
            ],
        )
        .unwrap()
    }

    fn right_row(id: i64, f1: &str, t: i64, del: bool) -> RecordBatch {
        RecordBatch::try_new(
            schemas().1,
            vec![
                Arc::new(Int64Array::from(vec![id])),
                Arc::new(StringArray::from(vec![(!del).then_some(f1)])),
                Arc::new(Int64Array::from(vec![t])),
                Arc::new(BooleanArray::from(vec![del])),
            ],
        )
        .unwrap()
    }

    /// Each output row as "L_ID,F1,delete@time".
    fn rows(out: &[Message]) -> Vec<String> {
        let mut v = Vec::new();
        for m in out {
            let Message::Data(b) = m else { continue };
            for i in 0..b.num_rows() {
                let f1 = b.column(5).as_string::<i32>();
                v.push(format!(
                    "{},{},{}@{}",
                    b.column(0).as_primitive::<Int64Type>().value(i),
                    if f1.is_null(i) { "-" } else { f1.value(i) },
                    b.column(8).as_boolean().value(i),
                    b.column(9).as_primitive::<Int64Type>().value(i)
                ));
            }
        }
        v
    }

    /// With headers, each output row carries the headers of the change that produced it: a left
    /// row's, or the right row's for the left rows it re-joins.
    #[test]
    fn changes_carry_their_records_headers() {
        let with_headers = |s: SchemaRef| {
            let mut fields: Vec<Field> = s.fields().iter().map(|f| f.as_ref().clone()).collect();
            fields.push(Field::new(crate::source::HEADERS, crate::source::headers_type(), true));
            Arc::new(Schema::new(fields))
        };
        let (left, right) = schemas();
        let fields: Vec<Field> = left.fields().iter().chain(right.fields()).map(|f| f.as_ref().clone()).collect();
        let (left, right) = (with_headers(left), with_headers(right));
        let mut op = ForeignKeyJoinOperator::try_new(ForeignKeyJoinConfig {
            left_schema: left.clone(),
            left_key_columns: 1,
            foreign_key: Arc::new(Column::new("FK", 1)),
            right_schema: right.clone(),
            left_delete: 3,
            right_delete: 3,
            left_time: 2,
            right_time: 2,
            left_outer: false,
            join_schema: Arc::new(Schema::new(fields)),
            headers: true,
        })
        .unwrap();
        let headed = |schema: &SchemaRef, row: RecordBatch, h: &str| {
            let mut columns = row.columns().to_vec();
            columns.push(crate::operators::table_table_join::tests::headers(&[h]));
            RecordBatch::try_new(schema.clone(), columns).unwrap()
        };
        let mut out = Vec::new();
        op.process_side_batch(1, headed(&right, right_row(0, "x", 0, false), "right 0"), &mut out).unwrap();
        op.process_batch(headed(&left, left_row(1, Some(0), 10, false), "left 1"), &mut out).unwrap();
        op.process_side_batch(1, headed(&right, right_row(0, "y", 15, false), "right 0 again"), &mut out).unwrap();
        assert_eq!(rows(&out), ["1,x,false@10", "1,y,false@15"]);
        let values: Vec<String> = out
            .iter()
            .filter_map(|m| if let Message::Data(b) = m { Some(b.clone()) } else { None })
            .map(|b| {
                let list = b.column(b.num_columns() - 1).as_list::<i32>().value(0);
                String::from_utf8(list.as_struct().column(1).as_binary::<i32>().value(0).to_vec()).unwrap()
            })
            .collect();
        assert_eq!(values, ["left 1", "right 0 again"]);
    }

    /// The sequence of ksqlDB's "inner join with left value-column expression" case.
    fn feed(op: &mut ForeignKeyJoinOperator) -> Vec<String> {
        let mut out = Vec::new();
        op.process_side_batch(1, right_row(0, "blah", 0, false), &mut out).unwrap();
        op.process_batch(left_row(1, Some(0), 10, false), &mut out).unwrap();
        op.process_batch(left_row(0, Some(100), 13, false), &mut out).unwrap();
        op.process_side_batch(1, right_row(0, "a", 15, false), &mut out).unwrap();
        op.process_batch(left_row(10, Some(0), 16, false), &mut out).unwrap();
        op.process_side_batch(1, right_row(0, "", 17, true), &mut out).unwrap();
        op.process_batch(left_row(1, None, 18, true), &mut out).unwrap();
        op.process_batch(left_row(0, Some(100), 19, false), &mut out).unwrap();
        rows(&out)
    }

    #[test]
    fn inner_join_follows_both_tables() {
        assert_eq!(
            feed(&mut join(false)),
            [
                "1,blah,false@10",
                "1,a,false@15",
                "10,a,false@16",
                "1,-,true@17",
                "10,-,true@17",
                "1,-,true@18",
                // An update of a key without a match deletes it (it may have had a row).
                "0,-,true@19"
            ]
        );
    }

    #[test]
    fn left_join_keeps_unmatched_left_rows() {
        assert_eq!(
            feed(&mut join(true)),
            [
                "1,blah,false@10",
                "0,-,false@13",
                "1,a,false@15",
                "10,a,false@16",
                "1,-,false@17",
                "10,-,false@17",
                "1,-,true@18",
                "0,-,false@19"
            ]
        );
    }

    #[test]
    fn state_survives_a_snapshot() {
        let mut op = join(false);
        let mut out = Vec::new();
        op.process_batch(left_row(1, Some(0), 10, false), &mut out).unwrap();
        op.process_batch(left_row(2, Some(0), 11, false), &mut out).unwrap();
        let state = op.snapshot().unwrap();
        let mut fresh = join(false);
        fresh.restore(state).unwrap();
        fresh.process_side_batch(1, right_row(0, "x", 20, false), &mut out).unwrap();
        assert_eq!(rows(&out), ["1,x,false@20", "2,x,false@20"]);
    }
}
