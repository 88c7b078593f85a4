//! `TableDiffOperator`: turns a table's changelog into retractions and additions.
//!
//! Aggregating a TABLE must undo a key's previous row before counting its new one (ksqlDB's
//! KGroupedTable adder/subtractor). This operator keeps the latest row per table key and, for
//! every input row, emits the previous row of that key marked `__RILL_RETRACT = true` (if there
//! was one), then the new row marked `false` (unless the input is a delete). The aggregation
//! then retracts and adds. A retraction carries the time of the change that caused it (in the
//! `ROWTIME` column, when the input has one), as Kafka Streams' subtractor runs at that record's
//! time. State: one row per live key of the table (bounded by the table).

use crate::state::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::row::{OwnedRow, RowConverter, SortField};

use crate::message::Message;
use crate::operator::{Operator, StateInfo};
use crate::Result;

/// Name of the column marking retracted (previous) rows.
pub const RETRACT_COLUMN: &str = "__RILL_RETRACT";

/// See the module docs.
pub struct TableDiffOperator {
    key_columns: usize,
    delete_column: usize,
    keys: RowConverter,
    rows: RowConverter,
    latest: HashMap<OwnedRow, OwnedRow>,
    /// The `ROWTIME` column, if any.
    time_column: Option<usize>,
    schema: SchemaRef,
}

impl TableDiffOperator {
    /// Input rows have the table key in their first `key_columns` columns and a BOOLEAN
    /// delete marker at `delete_column`.
    pub fn try_new(input: &Schema, key_columns: usize, delete_column: usize) -> Result<Self> {
        let field = |f: &Arc<Field>| SortField::new(f.data_type().clone());
        let keys = RowConverter::new(input.fields().iter().take(key_columns).map(field).collect())?;
        let rows = RowConverter::new(input.fields().iter().map(field).collect())?;
        let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(Field::new(RETRACT_COLUMN, DataType::Boolean, false));
        Ok(Self {
            key_columns,
            delete_column,
            keys,
            rows,
            latest: HashMap::default(),
            time_column: input.index_of(crate::source::ROWTIME).ok(),
            schema: Arc::new(Schema::new(fields)),
        })
    }
}

impl Operator for TableDiffOperator {
    fn name(&self) -> &str {
        "table-diff"
    }

    fn output_schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        Ok(crate::state::map_snapshot(&self.keys, &self.rows, &self.latest)?.to_vec())
    }

    fn restore(&mut self, state: Vec<RecordBatch>) -> Result<()> {
        crate::state::map_restore(&self.keys, &self.rows, &state, &mut self.latest)
    }

    fn process_batch(&mut self, batch: RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        let key_arrays: Vec<ArrayRef> = batch.columns()[..self.key_columns].to_vec();
        let keys = self.keys.convert_columns(&key_arrays)?;
        let rows = self.rows.convert_columns(batch.columns())?;
        let deletes = batch.column(self.delete_column).as_boolean().clone();
        let mut emitted: Vec<OwnedRow> = Vec::new();
        let mut retract = Vec::new();
        // Per emitted row, the input row whose time it takes.
        let mut time_of = Vec::new();
        for i in 0..batch.num_rows() {
            let key = keys.row(i).owned();
            if let Some(previous) = self.latest.remove(&key) {
                emitted.push(previous);
                retract.push(true);
                time_of.push(i as u32);
            }
            if !(deletes.is_valid(i) && deletes.value(i)) {
                let row = rows.row(i).owned();
                self.latest.insert(key, row.clone());
                emitted.push(row);
                retract.push(false);
                time_of.push(i as u32);
            }
        }
        if emitted.is_empty() {
            return Ok(());
        }
        let mut columns = self.rows.convert_rows(emitted.iter().map(|r| r.row()))?;
        if let Some(t) = self.time_column {
            columns[t] = arrow::compute::take(batch.column(t), &arrow::array::UInt32Array::from(time_of), None)?;
        }
        columns.push(Arc::new(BooleanArray::from(retract)));
        out.push(Message::Data(RecordBatch::try_new(self.schema.clone(), columns)?));
        Ok(())
    }

    fn state_info(&self) -> StateInfo {
        StateInfo {
            bounded: true,
            bytes: self.latest.iter().map(|(k, v)| k.as_ref().len() + v.as_ref().len()).sum(),
            description: "the latest row per key of the source table".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int64Array, StringArray};
    use arrow::util::pretty::pretty_format_batches;

    use super::*;

    #[test]
    fn retracts_previous_rows() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("ID", DataType::Utf8, true),
            Field::new("NAME", DataType::Utf8, true),
            Field::new("N", DataType::Int64, true),
            Field::new("__RILL_DELETE", DataType::Boolean, true),
        ]));
        let input_schema = schema.as_ref().clone();
        let mut op = TableDiffOperator::try_new(&schema, 1, 3).unwrap();
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["0", "0", "100", "100"])),
                Arc::new(StringArray::from(vec![Some("bob"), Some("john"), Some("john"), None])),
                Arc::new(Int64Array::from(vec![Some(1), Some(2), Some(3), None])),
                Arc::new(BooleanArray::from(vec![false, false, false, true])),
            ],
        )
        .unwrap();
        let mut out = Vec::new();
        op.process_batch(batch, &mut out).unwrap();
        let Message::Data(b) = &out[0] else { panic!("no data") };
        insta::assert_snapshot!(pretty_format_batches(std::slice::from_ref(b)).unwrap().to_string());
        assert_eq!(op.latest.len(), 1);
        // The state survives a snapshot: a fresh operator restored from it retracts the same row.
        let mut restored = TableDiffOperator::try_new(&input_schema, 1, 3).unwrap();
        restored.restore(op.snapshot().unwrap()).unwrap();
        assert_eq!(restored.latest, op.latest);
    }

    #[test]
    fn a_retraction_takes_the_time_of_the_change() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("ID", DataType::Utf8, true),
            Field::new(crate::source::ROWTIME, DataType::Int64, true),
            Field::new("__RILL_DELETE", DataType::Boolean, true),
        ]));
        let mut op = TableDiffOperator::try_new(&schema, 1, 2).unwrap();
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["k", "k", "k"])),
                Arc::new(Int64Array::from(vec![1, 5, 9])),
                Arc::new(BooleanArray::from(vec![false, false, true])),
            ],
        )
        .unwrap();
        let mut out = Vec::new();
        op.process_batch(batch, &mut out).unwrap();
        let Message::Data(b) = &out[0] else { panic!("no data") };
        // add @1; retract (the row of @1) @5, add @5; retract (the row of @5) @9.
        let times = b.column(1).as_primitive::<arrow::datatypes::Int64Type>().values().to_vec();
        assert_eq!(times, vec![1, 5, 5, 9]);
        assert_eq!(b.column(3).as_boolean(), &BooleanArray::from(vec![false, true, false, true]));
    }
}
