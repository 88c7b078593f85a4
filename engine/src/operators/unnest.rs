//! `UnnestOperator`: one output row per element of list columns (ksqlDB's `EXPLODE`).
//!
//! Several exploded columns of a row are zipped: the row yields as many rows as its longest
//! list, shorter lists padded with nulls. A null or empty list yields no row, as in ksqlDB.
//! Every other column is repeated. Stateless; vectorised with `take`.

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, RecordBatchOptions, UInt32Array};
use arrow::compute::{cast, take};
use arrow::datatypes::SchemaRef;

use crate::message::Message;
use crate::operator::Operator;
use crate::{EngineError, Result};

/// See the module docs.
pub struct UnnestOperator {
    /// Output column i comes from input column `sources[i]`; `exploded[i]` says whether it is
    /// that list column's elements rather than the column repeated.
    sources: Vec<usize>,
    exploded: Vec<bool>,
    schema: SchemaRef,
}

impl UnnestOperator {
    /// An unnest producing `schema` from `sources`/`exploded` (see the fields).
    pub fn try_new(sources: Vec<usize>, exploded: Vec<bool>, schema: SchemaRef) -> Result<Self> {
        if sources.len() != exploded.len() || sources.len() != schema.fields().len() {
            return Err(EngineError::Internal("unnest columns do not match its schema".into()));
        }
        Ok(Self { sources, exploded, schema })
    }
}

impl Operator for UnnestOperator {
    fn name(&self) -> &str {
        "unnest"
    }

    fn output_schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn process_batch(&mut self, batch: RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        let lists: Vec<usize> = self.sources.iter().zip(&self.exploded).filter(|(_, e)| **e).map(|(s, _)| *s).collect();
        let n = batch.num_rows();
        // Rows per input row: the longest list.
        let mut counts = vec![0usize; n];
        for &c in &lists {
            let list = batch.column(c).as_list::<i32>();
            for (r, count) in counts.iter_mut().enumerate() {
                if list.is_valid(r) {
                    *count = (*count).max(list.value_length(r) as usize);
                }
            }
        }
        let total: usize = counts.iter().sum();
        if total == 0 {
            return Ok(());
        }
        let mut repeat = Vec::with_capacity(total);
        for (r, count) in counts.iter().enumerate() {
            repeat.extend(std::iter::repeat_n(r as u32, *count));
        }
        let repeat = UInt32Array::from(repeat);
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.sources.len());
        for ((&source, &exploded), field) in self.sources.iter().zip(&self.exploded).zip(self.schema.fields()) {
            let column = if exploded {
                let list = batch.column(source).as_list::<i32>();
                let offsets = list.value_offsets();
                let mut idx: Vec<Option<u32>> = Vec::with_capacity(total);
                for (r, count) in counts.iter().enumerate() {
                    let len = if list.is_valid(r) { list.value_length(r) as usize } else { 0 };
                    for k in 0..*count {
                        idx.push((k < len).then(|| offsets[r] as u32 + k as u32));
                    }
                }
                take(list.values().as_ref(), &UInt32Array::from(idx), None)?
            } else {
                take(batch.column(source).as_ref(), &repeat, None)?
            };
            columns.push(if column.data_type() == field.data_type() {
                column
            } else {
                cast(&column, field.data_type())?
            });
        }
        out.push(Message::Data(RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(total)),
        )?));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int32Array, ListArray, StringArray};
    use arrow::datatypes::{DataType, Field, Int32Type, Schema};

    use super::*;

    #[test]
    fn zips_lists_and_repeats_other_columns() {
        let a = ListArray::from_iter_primitive::<Int32Type, _, _>(vec![
            Some(vec![Some(1), Some(2)]),
            Some(vec![]),
            None,
            Some(vec![Some(3)]),
        ]);
        let b = ListArray::from_iter_primitive::<Int32Type, _, _>(vec![
            Some(vec![Some(10)]),
            Some(vec![Some(20)]),
            None,
            None,
        ]);
        let k = StringArray::from(vec!["x", "y", "z", "w"]);
        let input = RecordBatch::try_from_iter(vec![
            ("K", Arc::new(k) as ArrayRef),
            ("A", Arc::new(a) as ArrayRef),
            ("B", Arc::new(b) as ArrayRef),
        ])
        .unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new("K", DataType::Utf8, true),
            Field::new("A", DataType::Int32, true),
            Field::new("B", DataType::Int32, true),
        ]));
        let mut op = UnnestOperator::try_new(vec![0, 1, 2], vec![false, true, true], schema).unwrap();
        let mut out = Vec::new();
        op.process_batch(input, &mut out).unwrap();
        let Message::Data(b) = &out[0] else { panic!("no data") };
        let k: Vec<_> = b.column(0).as_string::<i32>().iter().map(|v| v.unwrap_or("-")).collect();
        assert_eq!(k, vec!["x", "x", "y", "w"], "empty/null lists give no row only when every list is empty");
        assert_eq!(b.column(1).as_primitive::<Int32Type>(), &Int32Array::from(vec![Some(1), Some(2), None, Some(3)]));
        assert_eq!(b.column(2).as_primitive::<Int32Type>(), &Int32Array::from(vec![Some(10), None, Some(20), None]));
    }
}
