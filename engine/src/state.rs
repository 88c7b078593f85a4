//! Operator state as Arrow batches, for checkpoints.
//!
//! Operators keep keys and rows in arrow's row format (`OwnedRow`), which is fast to hash and
//! compare but not a stable storage format. Snapshots therefore turn rows back into ordinary
//! Arrow columns (`RowConverter::convert_rows`) and restores convert the columns into rows
//! again, so a checkpoint is plain Arrow IPC that a later Rill can still read.

/// The hash map operators keep state in: arrow rows hashed with aHash (SipHash, std's default,
/// is several times slower on these short keys and DoS resistance is not needed here).
pub type HashMap<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;
/// The hash set operators keep state in (see [`HashMap`]).
pub type HashSet<K> = std::collections::HashSet<K, ahash::RandomState>;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions};
use arrow::datatypes::{Field, Schema};
use arrow::row::{OwnedRow, RowConverter, Rows};

use crate::{EngineError, Result};

/// The key columns of `batch`: each of `exprs` evaluated and cast to its key type (the keys of
/// two join inputs, or of a join input and its shard routing, must compare and hash alike).
pub fn key_arrays(
    exprs: &[Arc<dyn datafusion::physical_expr::PhysicalExpr>],
    types: &[arrow::datatypes::DataType],
    batch: &RecordBatch,
) -> Result<Vec<ArrayRef>> {
    let n = batch.num_rows();
    exprs
        .iter()
        .zip(types)
        .map(|(e, t)| {
            let a = e.evaluate(batch)?.into_array(n)?;
            Ok(if a.data_type() == t { a } else { arrow::compute::cast(&a, t)? })
        })
        .collect()
}

/// A batch of `columns` named `c0`, `c1`, ... (all nullable), with `rows` rows.
pub fn batch(columns: Vec<ArrayRef>, rows: usize) -> Result<RecordBatch> {
    let fields: Vec<Field> =
        columns.iter().enumerate().map(|(i, c)| Field::new(format!("c{i}"), c.data_type().clone(), true)).collect();
    Ok(RecordBatch::try_new_with_options(
        Arc::new(Schema::new(fields)),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(rows)),
    )?)
}

/// Rows as columns.
pub fn rows_to_columns<'a>(
    converter: &RowConverter,
    rows: impl IntoIterator<Item = &'a OwnedRow>,
) -> Result<Vec<ArrayRef>> {
    Ok(converter.convert_rows(rows.into_iter().map(|r| r.row()))?)
}

/// Columns (written by [`rows_to_columns`]) as rows.
pub fn columns_to_rows(converter: &RowConverter, columns: &[ArrayRef]) -> Result<Rows> {
    Ok(converter.convert_columns(columns)?)
}

/// A key → row map as two batches (keys, rows) in the same order.
pub fn map_snapshot(
    keys: &RowConverter,
    rows: &RowConverter,
    map: &HashMap<OwnedRow, OwnedRow>,
) -> Result<[RecordBatch; 2]> {
    let n = map.len();
    Ok([batch(rows_to_columns(keys, map.keys())?, n)?, batch(rows_to_columns(rows, map.values())?, n)?])
}

/// Restores a map written by [`map_snapshot`] from `parts[0]` (keys) and `parts[1]` (rows).
pub fn map_restore(
    keys: &RowConverter,
    rows: &RowConverter,
    parts: &[RecordBatch],
    map: &mut HashMap<OwnedRow, OwnedRow>,
) -> Result<()> {
    let [k, v] = parts else { return Err(bad_state("a key/row map needs two batches")) };
    let (k, v) = (columns_to_rows(keys, k.columns())?, columns_to_rows(rows, v.columns())?);
    map.clear();
    for i in 0..k.num_rows() {
        map.insert(k.row(i).owned(), v.row(i).owned());
    }
    Ok(())
}

/// A set of rows as one batch.
pub fn set_snapshot(converter: &RowConverter, set: &HashSet<OwnedRow>) -> Result<RecordBatch> {
    batch(rows_to_columns(converter, set.iter())?, set.len())
}

/// Restores a set written by [`set_snapshot`].
pub fn set_restore(converter: &RowConverter, part: &RecordBatch, set: &mut HashSet<OwnedRow>) -> Result<()> {
    let rows = columns_to_rows(converter, part.columns())?;
    set.clear();
    set.extend((0..rows.num_rows()).map(|i| rows.row(i).owned()));
    Ok(())
}

/// The error for a snapshot that does not fit the operator restoring it.
pub fn bad_state(what: &str) -> EngineError {
    EngineError::Checkpoint(format!("the checkpoint does not fit this query's operators: {what}"))
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::DataType;
    use arrow::row::SortField;

    use super::*;

    #[test]
    fn maps_and_sets_of_rows_roundtrip_through_columns() {
        let keys = RowConverter::new(vec![SortField::new(DataType::Utf8)]).unwrap();
        let rows = RowConverter::new(vec![SortField::new(DataType::Int64), SortField::new(DataType::Utf8)]).unwrap();
        let k = keys.convert_columns(&[Arc::new(StringArray::from(vec![Some("a"), None, Some("c")]))]).unwrap();
        let v = rows
            .convert_columns(&[
                Arc::new(Int64Array::from(vec![Some(1), Some(2), None])),
                Arc::new(StringArray::from(vec![Some("x"), None, Some("z")])),
            ])
            .unwrap();
        let map: HashMap<OwnedRow, OwnedRow> = (0..3).map(|i| (k.row(i).owned(), v.row(i).owned())).collect();
        let mut back = HashMap::default();
        map_restore(&keys, &rows, &map_snapshot(&keys, &rows, &map).unwrap(), &mut back).unwrap();
        assert_eq!(back, map);
        let set: HashSet<OwnedRow> = map.keys().cloned().collect();
        let mut back = HashSet::default();
        set_restore(&keys, &set_snapshot(&keys, &set).unwrap(), &mut back).unwrap();
        assert_eq!(back, set);
        assert!(map_restore(&keys, &rows, &[], &mut HashMap::default()).is_err(), "a map needs two batches");
    }
}
