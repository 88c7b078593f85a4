//! `TableTableJoinOperator`: joins two tables on their primary keys into a table.
//!
//! Input 0 is the left table's changelog, input 1 (`process_side_batch`) the right one's. Both
//! are materialised (latest row per key). Every change to a key recomputes that key's joined
//! row: both sides present gives the joined row; one side present gives the row with the other
//! side null for the outer kinds that keep it, and otherwise a delete of the key if a joined row
//! had been emitted for it. Output: left columns, right columns, then `__RILL_DELETE`.

use crate::state::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::row::{OwnedRow, RowConverter, SortField};

use crate::message::Message;
use crate::operator::{Operator, StateInfo};
use crate::operators::aggregate::DELETE_COLUMN;
use crate::operators::stream_stream_join::{joined_batch, Side};
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
}

/// See the module docs.
pub struct TableTableJoinOperator {
    cfg: TableTableJoinConfig,
    schema: SchemaRef,
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
        let fields = |s: &SchemaRef| s.fields().iter().map(|f| SortField::new(f.data_type().clone())).collect();
        let left_rows = RowConverter::new(fields(&cfg.left_schema))?;
        let right_rows = RowConverter::new(fields(&cfg.right_schema))?;
        let mut out: Vec<Field> =
            cfg.join_schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect();
        out.push(Field::new(DELETE_COLUMN, DataType::Boolean, false));
        Ok(Self {
            schema: Arc::new(Schema::new(out)),
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
        let rows = if from_left {
            self.left_rows.convert_columns(batch.columns())?
        } else {
            self.right_rows.convert_columns(batch.columns())?
        };
        let deletes =
            batch.column(if from_left { self.cfg.left_delete } else { self.cfg.right_delete }).as_boolean().clone();
        let (keep_left, keep_right) = match self.cfg.kind {
            JoinKind::Inner => (false, false),
            JoinKind::Left => (true, false),
            JoinKind::Right => (false, true),
            JoinKind::Full => (true, true),
        };
        // (left row, right row, delete) per output row.
        let mut outputs: Vec<(Option<OwnedRow>, Option<OwnedRow>, bool)> = Vec::new();
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
            } else if self.emitted.remove(&key) {
                // The key had a joined row: delete it. Its key comes from whichever side
                // still (or last) has it; the input row carries it for this side.
                let row = rows.row(i).owned();
                outputs.push(if from_left { (Some(row), None, true) } else { (None, Some(row), true) });
            }
        }
        if outputs.is_empty() {
            return Ok(());
        }
        let count = outputs.len();
        let deletes: ArrayRef = Arc::new(BooleanArray::from(outputs.iter().map(|o| o.2).collect::<Vec<_>>()));
        out.push(Message::Data(joined_batch(
            Side {
                rows: &self.left_rows,
                schema: &self.cfg.left_schema,
                picked: outputs.iter().map(|o| o.0.as_ref().map(|r| r.row())),
            },
            Side {
                rows: &self.right_rows,
                schema: &self.cfg.right_schema,
                picked: outputs.iter().map(|o| o.1.as_ref().map(|r| r.row())),
            },
            count,
            &self.schema,
            vec![deletes],
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
