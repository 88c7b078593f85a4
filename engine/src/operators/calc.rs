//! `CalcOperator`: a filter and a projection, evaluated by DataFusion on whole batches.
//!
//! Stateless. The planner fuses every `WHERE` and `SELECT` expression of a stream-to-stream
//! query into one of these; DataFusion's `PhysicalExpr`s do the vectorised evaluation.
//!
//! An expression that fails on a batch (a division by zero, a cast of bad text) is evaluated again
//! row by row: as in ksqlDB, the rows it fails on get a null there (a failing filter drops the
//! row), the other rows and columns are unaffected, and the failures are logged.

use std::sync::Arc;

use crate::state::HashSet;

use arrow::array::{new_null_array, Array, ArrayRef, AsArray, BooleanArray, RecordBatch, RecordBatchOptions};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, SchemaRef};
use arrow::row::{OwnedRow, RowConverter, SortField};
use datafusion::physical_expr::PhysicalExpr;

use crate::message::Message;
use crate::operator::Operator;
use crate::{EngineError, Result};

/// Filters rows with an optional predicate, then computes the output columns.
///
/// On a table changelog (`with_table_deletes`), a row that fails the filter is not dropped: it
/// becomes a delete of its key, because an earlier version of the row may have passed.
pub struct CalcOperator {
    filter: Option<Arc<dyn PhysicalExpr>>,
    projection: Vec<Arc<dyn PhysicalExpr>>,
    schema: SchemaRef,
    /// (delete column of the input, delete column of the output) for table changelogs.
    table_deletes: Option<(usize, usize)>,
    /// Keys emitted and not deleted since, when deletes of never-emitted keys are suppressed.
    emitted: Option<EmittedKeys>,
}

/// The keys a table-mode calc has emitted rows for: a delete is only meaningful for them.
struct EmittedKeys {
    columns: Vec<usize>,
    converter: RowConverter,
    keys: HashSet<OwnedRow>,
}

impl CalcOperator {
    /// `projection[i]` computes column `i` of `schema`.
    pub fn try_new(
        filter: Option<Arc<dyn PhysicalExpr>>,
        projection: Vec<Arc<dyn PhysicalExpr>>,
        schema: SchemaRef,
    ) -> Result<Self> {
        if projection.len() != schema.fields().len() {
            return Err(EngineError::Internal(format!(
                "calc has {} expressions for {} columns",
                projection.len(),
                schema.fields().len()
            )));
        }
        Ok(Self { filter, projection, schema, table_deletes: None, emitted: None })
    }

    /// Table mode: rows failing the filter become deletes (see the type docs).
    pub fn with_table_deletes(mut self, input_delete: usize, output_delete: usize) -> Self {
        self.table_deletes = Some((input_delete, output_delete));
        self
    }

    /// Table mode: also suppress deletes of keys (these output columns) that were never
    /// emitted, as a KTable filter does. Keeps one entry per live key. Without key columns (a
    /// projection that leaves the key out) there is nothing to track and every change passes.
    pub fn with_emitted_keys(mut self, key_columns: Vec<usize>) -> Result<Self> {
        if key_columns.is_empty() {
            return Ok(self);
        }
        let fields = key_columns.iter().map(|i| SortField::new(self.schema.field(*i).data_type().clone())).collect();
        self.emitted =
            Some(EmittedKeys { columns: key_columns, converter: RowConverter::new(fields)?, keys: HashSet::default() });
        Ok(self)
    }

    fn apply(&mut self, batch: RecordBatch) -> Result<RecordBatch> {
        if let Some((input_delete, output_delete)) = self.table_deletes {
            let deleted = batch.column(input_delete).as_boolean().clone();
            let delete = match &self.filter {
                Some(f) => {
                    let mask = evaluate(f, &batch, &DataType::Boolean)?;
                    // A null predicate does not keep the row. (arrow's prep_null_mask_filter
                    // requires a null buffer, so only call it when there are nulls.)
                    let mask = mask.as_boolean();
                    let keep =
                        if mask.null_count() > 0 { arrow::compute::prep_null_mask_filter(mask) } else { mask.clone() };
                    arrow::compute::or(&deleted, &arrow::compute::not(&keep)?)?
                }
                None => deleted,
            };
            let mut out = self.project(&batch)?.columns().to_vec();
            let rows = batch.num_rows();
            let result = RecordBatch::try_new_with_options(
                self.schema.clone(),
                {
                    out[output_delete] = Arc::new(delete.clone());
                    out
                },
                &RecordBatchOptions::new().with_row_count(Some(rows)),
            )?;
            let Some(emitted) = &mut self.emitted else { return Ok(result) };
            let key_arrays: Vec<_> = emitted.columns.iter().map(|i| result.column(*i).clone()).collect();
            let keys = emitted.converter.convert_columns(&key_arrays)?;
            let keep: BooleanArray = (0..rows)
                .map(|i| {
                    let key = keys.row(i).owned();
                    Some(if delete.value(i) {
                        emitted.keys.remove(&key)
                    } else {
                        emitted.keys.insert(key);
                        true
                    })
                })
                .collect();
            return Ok(filter_record_batch(&result, &keep)?);
        }
        let batch = match &self.filter {
            Some(f) => {
                let mask = evaluate(f, &batch, &DataType::Boolean)?;
                if mask.data_type() != &DataType::Boolean {
                    return Err(EngineError::Internal(format!("filter returned {}", mask.data_type())));
                }
                filter_record_batch(&batch, mask.as_boolean())?
            }
            None => batch,
        };
        self.project(&batch)
    }

    fn project(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let rows = batch.num_rows();
        let columns = self
            .projection
            .iter()
            .zip(self.schema.fields())
            .map(|(e, field)| evaluate(e, batch, field.data_type()))
            .collect::<Result<Vec<_>>>()?;
        Ok(RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )?)
    }
}

/// Evaluates `e` over `batch` as `dt`; if it fails, row by row, with a null for each row it fails
/// on (the failures are logged, as ksqlDB's processing log records them).
fn evaluate(e: &Arc<dyn PhysicalExpr>, batch: &RecordBatch, dt: &DataType) -> Result<ArrayRef> {
    let whole = |b: &RecordBatch| -> Result<ArrayRef> {
        let a = e.evaluate(b)?.into_array(b.num_rows())?;
        Ok(if a.data_type() == dt { a } else { arrow::compute::cast(&a, dt)? })
    };
    let error = match whole(batch) {
        Ok(a) => return Ok(a),
        Err(error) => error,
    };
    let mut parts = Vec::with_capacity(batch.num_rows());
    let mut failed = 0;
    for i in 0..batch.num_rows() {
        match whole(&batch.slice(i, 1)) {
            Ok(a) => parts.push(a),
            Err(_) => {
                failed += 1;
                parts.push(new_null_array(dt, 1));
            }
        }
    }
    tracing::warn!(expression = %e, rows = failed, "expression failed, null on those rows: {error}");
    let parts: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
    if parts.is_empty() {
        return Ok(new_null_array(dt, 0));
    }
    Ok(arrow::compute::concat(&parts)?)
}

impl Operator for CalcOperator {
    fn name(&self) -> &str {
        "calc"
    }

    fn output_schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        match &self.emitted {
            Some(e) => Ok(vec![crate::state::set_snapshot(&e.converter, &e.keys)?]),
            None => Ok(Vec::new()),
        }
    }

    fn restore(&mut self, state: Vec<RecordBatch>) -> Result<()> {
        match (&mut self.emitted, state.as_slice()) {
            (Some(e), [keys]) => crate::state::set_restore(&e.converter, keys, &mut e.keys),
            (None, []) => Ok(()),
            _ => Err(crate::state::bad_state("calc state does not match its table mode")),
        }
    }

    fn state_info(&self) -> crate::operator::StateInfo {
        match &self.emitted {
            Some(e) => crate::operator::StateInfo {
                bounded: true,
                bytes: e.keys.iter().map(|k| k.as_ref().len()).sum(),
                description: "the keys of the table rows it passed (bounded by the table)".into(),
            },
            None => crate::operator::StateInfo::stateless(),
        }
    }

    fn process_batch(&mut self, batch: RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        let result = self.apply(batch)?;
        if result.num_rows() > 0 {
            out.push(Message::Data(result));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};
    use datafusion::common::DFSchema;
    use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
    use datafusion::logical_expr::{ident, lit};
    use datafusion::physical_expr::{create_physical_expr, execution_props::ExecutionProps};

    use super::*;
    use crate::Watermark;

    #[test]
    fn a_failing_expression_is_null_on_the_rows_it_fails_on() {
        let input = Arc::new(Schema::new(vec![Field::new("ID", DataType::Int64, true)]));
        let df = DFSchema::try_from(input.as_ref().clone()).unwrap();
        let props = ExecutionProps::new();
        let ctx = PhysicalPlanningContext::default();
        // 100 / ID fails where ID is 0; 100 / ID > 10 then fails there too (a filter).
        let div = ident("ID");
        let quotient = lit(100i64) / div;
        let filter = create_physical_expr(&quotient.clone().gt(lit(10i64)), &df, &props, &ctx).unwrap();
        let proj = vec![
            create_physical_expr(&ident("ID"), &df, &props, &ctx).unwrap(),
            create_physical_expr(&quotient, &df, &props, &ctx).unwrap(),
        ];
        let out_schema = Arc::new(Schema::new(vec![
            Field::new("ID", DataType::Int64, true),
            Field::new("Q", DataType::Int64, true),
        ]));
        let batch = RecordBatch::try_new(input, vec![Arc::new(Int64Array::from(vec![5, 0, 2, 50]))]).unwrap();
        let mut op = CalcOperator::try_new(None, proj.clone(), out_schema.clone()).unwrap();
        let mut out = Vec::new();
        op.process_batch(batch.clone(), &mut out).unwrap();
        let Message::Data(b) = &out[0] else { panic!("expected data") };
        let q: Vec<Option<i64>> = b.column(1).as_primitive::<arrow::datatypes::Int64Type>().iter().collect();
        assert_eq!(q, vec![Some(20), None, Some(50), Some(2)]);
        let mut op = CalcOperator::try_new(Some(filter), proj, out_schema).unwrap();
        let mut out = Vec::new();
        op.process_batch(batch, &mut out).unwrap();
        let Message::Data(b) = &out[0] else { panic!("expected data") };
        assert_eq!(b.column(0).as_primitive::<arrow::datatypes::Int64Type>().values(), &[5, 2]);
    }

    #[test]
    fn filters_projects_and_forwards_watermarks() {
        let input = Arc::new(Schema::new(vec![
            Field::new("ID", DataType::Int64, true),
            Field::new("NAME", DataType::Utf8, true),
        ]));
        let df = DFSchema::try_from(input.as_ref().clone()).unwrap();
        let props = ExecutionProps::new();
        let ctx = PhysicalPlanningContext::default();
        let filter = create_physical_expr(&ident("ID").gt(lit(1i64)), &df, &props, &ctx).unwrap();
        let proj = create_physical_expr(&(ident("ID") * lit(10i64)), &df, &props, &ctx).unwrap();
        let out_schema = Arc::new(Schema::new(vec![Field::new("X", DataType::Int64, true)]));
        let mut op = CalcOperator::try_new(Some(filter), vec![proj], out_schema).unwrap();
        let batch = RecordBatch::try_new(
            input,
            vec![Arc::new(Int64Array::from(vec![1, 2, 3])), Arc::new(StringArray::from(vec!["a", "b", "c"]))],
        )
        .unwrap();
        let mut out = Vec::new();
        op.process_batch(batch, &mut out).unwrap();
        op.handle_watermark(Watermark::EventTime(5), &mut out).unwrap();
        let Message::Data(b) = &out[0] else { panic!("expected data, got {:?}", out[0]) };
        assert_eq!(b.column(0).as_primitive::<arrow::datatypes::Int64Type>().values(), &[20, 30]);
        assert!(matches!(out[1], Message::Watermark(Watermark::EventTime(5))));
    }

    #[test]
    fn a_table_projection_without_its_key_passes_every_change() {
        let input = Arc::new(Schema::new(vec![
            Field::new("K", DataType::Int64, true),
            Field::new("V", DataType::Int64, true),
            Field::new("DEL", DataType::Boolean, true),
        ]));
        let df = DFSchema::try_from(input.as_ref().clone()).unwrap();
        let (props, ctx) = (ExecutionProps::new(), PhysicalPlanningContext::default());
        let v = create_physical_expr(&ident("V"), &df, &props, &ctx).unwrap();
        let del = create_physical_expr(&ident("DEL"), &df, &props, &ctx).unwrap();
        let out_schema = Arc::new(Schema::new(vec![
            Field::new("V", DataType::Int64, true),
            Field::new("DEL", DataType::Boolean, true),
        ]));
        let mut op = CalcOperator::try_new(None, vec![v, del], out_schema)
            .unwrap()
            .with_table_deletes(2, 1)
            .with_emitted_keys(vec![])
            .unwrap();
        let batch = RecordBatch::try_new(
            input,
            vec![
                Arc::new(Int64Array::from(vec![10, 10])),
                Arc::new(Int64Array::from(vec![Some(110), None])),
                Arc::new(BooleanArray::from(vec![false, true])),
            ],
        )
        .unwrap();
        let mut out = Vec::new();
        op.process_batch(batch, &mut out).unwrap();
        let Message::Data(b) = &out[0] else { panic!("expected data, got {:?}", out[0]) };
        assert_eq!(b.num_rows(), 2, "the row and its delete");
        assert_eq!(b.column(1).as_boolean(), &BooleanArray::from(vec![false, true]));
    }
}
