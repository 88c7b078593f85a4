//! ksqlDB's lambda functions, `TRANSFORM`, `FILTER` and `REDUCE` over arrays and maps, as
//! DataFusion higher-order functions (the parser turns `x => ...` and `(k, v) => ...` into
//! lambdas; DataFusion plans their bodies and captured columns).
//!
//! Each call evaluates a lambda body once per batch over the elements of every row at once
//! (`REDUCE`: once per element position), never row by row.
//!
//! ksqlDB's rules kept here: `REDUCE` of a null collection is its initial state, of a null
//! initial state null; the result of `REDUCE` has the initial state's type. A `TRANSFORM` of a
//! map whose new keys collide is null for that row (ksqlDB's fails on it); entries given a null
//! key are dropped. Unlike
//! ksqlDB, arithmetic on a null element inside a lambda gives null for that element (ksqlDB
//! fails the whole expression and logs a processing error).

use std::sync::Arc;

use arrow::array::{new_null_array, Array, ArrayRef, AsArray, BooleanArray, MapArray, StructArray, UInt32Array};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::compute::{cast, filter, interleave, take, take_arrays};
use arrow::datatypes::{DataType, Field, FieldRef, Fields};
use arrow::row::{RowConverter, SortField};
use datafusion::common::tree_node::TreeNode;
use datafusion::common::{exec_err, plan_err, Result};
use datafusion::logical_expr::{
    ColumnarValue, HigherOrderFunctionArgs, HigherOrderReturnFieldArgs, HigherOrderSignature, HigherOrderUDF,
    HigherOrderUDFImpl, LambdaArgument, LambdaParametersProgress, ValueOrLambda, Volatility,
};
use datafusion::physical_expr::PhysicalExpr;

/// Plans `e` over `schema` like DataFusion's `create_physical_expr`; an expression with lambdas
/// is wrapped so that it sees only the columns it was planned over. (DataFusion numbers a
/// lambda's parameters after its input's columns: the hidden columns Rill's operators append to
/// their batches would take their places.)
pub fn create_physical_expr(
    e: &datafusion::logical_expr::Expr,
    schema: &datafusion::common::DFSchema,
    props: &datafusion::execution::context::ExecutionProps,
    pctx: &datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext,
) -> Result<Arc<dyn PhysicalExpr>> {
    let inner = datafusion::physical_expr::create_physical_expr(e, schema, props, pctx)?;
    let has_lambda =
        e.exists(|x| Ok(matches!(x, datafusion::logical_expr::Expr::HigherOrderFunction(_)))).unwrap_or(true);
    Ok(match has_lambda {
        true => Arc::new(PlannedColumns { inner, width: schema.fields().len() }),
        false => inner,
    })
}

/// An expression evaluated over the first `width` columns of its batches only.
#[derive(Debug)]
struct PlannedColumns {
    inner: Arc<dyn PhysicalExpr>,
    width: usize,
}

impl PartialEq for PlannedColumns {
    fn eq(&self, other: &Self) -> bool {
        self.width == other.width && self.inner.as_ref() == other.inner.as_ref()
    }
}

impl Eq for PlannedColumns {}

impl std::hash::Hash for PlannedColumns {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.inner.as_ref().hash(state);
        self.width.hash(state);
    }
}

impl PlannedColumns {
    fn indices(&self, columns: usize) -> Option<Vec<usize>> {
        (columns > self.width).then(|| (0..self.width).collect())
    }
}

impl std::fmt::Display for PlannedColumns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

impl PhysicalExpr for PlannedColumns {
    fn return_field(&self, input_schema: &arrow::datatypes::Schema) -> Result<FieldRef> {
        match self.indices(input_schema.fields().len()) {
            Some(i) => self.inner.return_field(&input_schema.project(&i)?),
            None => self.inner.return_field(input_schema),
        }
    }
    fn evaluate(&self, batch: &arrow::array::RecordBatch) -> Result<ColumnarValue> {
        match self.indices(batch.num_columns()) {
            Some(i) => self.inner.evaluate(&batch.project(&i)?),
            None => self.inner.evaluate(batch),
        }
    }
    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        vec![&self.inner]
    }
    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn PhysicalExpr>>) -> Result<Arc<dyn PhysicalExpr>> {
        match <[_; 1]>::try_from(children) {
            Ok([inner]) => Ok(Arc::new(PlannedColumns { inner, width: self.width })),
            Err(_) => exec_err!("an expression with lambdas has one child"),
        }
    }
    fn fmt_sql(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt_sql(f)
    }
}

/// The three lambda functions, under ksqlDB's names.
pub fn all() -> Vec<Arc<HigherOrderUDF>> {
    [Kind::Transform, Kind::Filter, Kind::Reduce]
        .into_iter()
        .map(|kind| {
            Arc::new(HigherOrderUDF::new_from_impl(LambdaFn {
                kind,
                signature: HigherOrderSignature::variadic_any(Volatility::Immutable),
            }))
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    /// `TRANSFORM(array, x => y)`, `TRANSFORM(map, (k, v) => k2, (k, v) => v2)`.
    Transform,
    /// `FILTER(array, x => bool)`, `FILTER(map, (k, v) => bool)`.
    Filter,
    /// `REDUCE(array, s0, (s, x) => s2)`, `REDUCE(map, s0, (s, k, v) => s2)`.
    Reduce,
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct LambdaFn {
    kind: Kind,
    signature: HigherOrderSignature,
}

impl LambdaFn {
    fn upper_name(&self) -> &'static str {
        match self.kind {
            Kind::Transform => "TRANSFORM",
            Kind::Filter => "FILTER",
            Kind::Reduce => "REDUCE",
        }
    }

    /// How the function is called: the values before the lambdas, the lambdas' count for a
    /// map (`true`) or an array (`false`).
    fn shape(&self, map: bool) -> (usize, usize) {
        match (self.kind, map) {
            (Kind::Transform, true) => (1, 2),
            (Kind::Transform, false) | (Kind::Filter, _) => (1, 1),
            (Kind::Reduce, _) => (2, 1),
        }
    }

    fn usage(&self) -> &'static str {
        match self.kind {
            Kind::Transform => "TRANSFORM(array, x => ...) or TRANSFORM(map, (k, v) => ..., (k, v) => ...)",
            Kind::Filter => "FILTER(array, x => ...) or FILTER(map, (k, v) => ...)",
            Kind::Reduce => "REDUCE(array, initial, (s, x) => ...) or REDUCE(map, initial, (s, k, v) => ...)",
        }
    }
}

/// The element fields of a collection: `[element]` of an array, `[key, value]` of a map.
fn element_fields(t: &DataType) -> Option<Vec<FieldRef>> {
    match t {
        DataType::List(f) => Some(vec![nullable(f.data_type())]),
        DataType::Map(entries, _) => match entries.data_type() {
            DataType::Struct(kv) if kv.len() == 2 => {
                Some(vec![nullable(kv[0].data_type()), nullable(kv[1].data_type())])
            }
            _ => None,
        },
        // A null literal: no elements.
        DataType::Null => Some(vec![nullable(&DataType::Null)]),
        _ => None,
    }
}

fn nullable(t: &DataType) -> FieldRef {
    Arc::new(Field::new("", t.clone(), true))
}

impl HigherOrderUDFImpl for LambdaFn {
    fn name(&self) -> &str {
        match self.kind {
            Kind::Transform => "transform",
            Kind::Filter => "filter",
            Kind::Reduce => "reduce",
        }
    }

    fn signature(&self) -> &HigherOrderSignature {
        &self.signature
    }

    fn lambda_parameters(
        &self,
        _step: usize,
        fields: &[ValueOrLambda<FieldRef, Option<FieldRef>>],
    ) -> Result<LambdaParametersProgress> {
        let values: Vec<&FieldRef> = fields
            .iter()
            .filter_map(|f| match f {
                ValueOrLambda::Value(v) => Some(v),
                ValueOrLambda::Lambda(_) => None,
            })
            .collect();
        let lambdas = fields.len() - values.len();
        let Some(collection) = values.first() else {
            return plan_err!("{} expects {}", self.upper_name(), self.usage());
        };
        let Some(elements) = element_fields(collection.data_type()) else {
            return plan_err!(
                "{} expects an ARRAY or a MAP as its first argument, got {}",
                self.upper_name(),
                crate::types::SqlType::from_arrow(collection.data_type())
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| collection.data_type().to_string())
            );
        };
        let map = elements.len() == 2;
        let (value_count, lambda_count) = self.shape(map);
        if values.len() != value_count || lambdas != lambda_count {
            return plan_err!("{} expects {}", self.upper_name(), self.usage());
        }
        let params = match self.kind {
            Kind::Reduce => {
                let state = nullable(values[1].data_type());
                vec![std::iter::once(state).chain(elements).collect()]
            }
            _ => vec![elements; lambda_count],
        };
        Ok(LambdaParametersProgress::Complete(params))
    }

    fn return_field_from_args(&self, args: HigherOrderReturnFieldArgs) -> Result<FieldRef> {
        let (values, lambdas): (Vec<_>, Vec<_>) =
            args.arg_fields.iter().partition(|f| matches!(f, ValueOrLambda::Value(_)));
        let value = |i: usize| match values.get(i) {
            Some(ValueOrLambda::Value(f)) => Ok(f),
            _ => plan_err!("{} expects {}", self.upper_name(), self.usage()),
        };
        let lambda = |i: usize| match lambdas.get(i) {
            Some(ValueOrLambda::Lambda(f)) => Ok(f.data_type().clone()),
            _ => plan_err!("{} expects {}", self.upper_name(), self.usage()),
        };
        let collection = value(0)?.data_type().clone();
        let t = match (self.kind, &collection) {
            (Kind::Transform, DataType::List(_)) => DataType::List(Arc::new(Field::new("item", lambda(0)?, true))),
            (Kind::Transform, DataType::Map(entries, sorted)) => {
                DataType::Map(map_entries_field(entries, lambda(0)?, lambda(1)?), *sorted)
            }
            (Kind::Filter, DataType::Map(..) | DataType::List(_)) => {
                if lambda(0)? != DataType::Boolean && lambda(0)? != DataType::Null {
                    return plan_err!("The lambda of FILTER must return a BOOLEAN");
                }
                collection
            }
            (Kind::Reduce, _) => value(1)?.data_type().clone(),
            (_, other) => other.clone(),
        };
        Ok(Arc::new(Field::new("", t, true)))
    }

    fn invoke_with_args(&self, args: HigherOrderFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let mut values = Vec::new();
        let mut lambdas = Vec::new();
        for a in &args.args {
            match a {
                ValueOrLambda::Value(v) => values.push(v.to_array(rows)?),
                ValueOrLambda::Lambda(l) => lambdas.push(l),
            }
        }
        let return_type = args.return_field.data_type();
        let Some(collection) = values.first() else {
            return exec_err!("{} expects {}", self.upper_name(), self.usage());
        };
        if collection.data_type() == &DataType::Null {
            return Ok(ColumnarValue::Array(match self.kind {
                Kind::Reduce => cast(&values[1], return_type)?,
                _ => new_null_array(return_type, rows),
            }));
        }
        let elements = Elements::of(collection)?;
        let out = match (self.kind, lambdas.as_slice()) {
            (Kind::Transform, [x]) => {
                let new = elements.eval(x, &elements.all_rows())?;
                elements.rebuild(return_type, vec![new], None)?
            }
            (Kind::Transform, [k, v]) => {
                let rows_of = elements.all_rows();
                let keys = elements.eval(k, &rows_of)?;
                let vals = elements.eval(v, &rows_of)?;
                let (keep, duplicated) = last_of_each_key(&elements.offsets, &keys)?;
                let map = elements.rebuild(return_type, vec![keys, vals], Some(&keep))?;
                // Two entries with one key: ksqlDB's TRANSFORM fails on the row, which is null.
                arrow::compute::nullif(&map, &duplicated)?
            }
            (Kind::Filter, [p]) => {
                let kept = elements.eval(p, &elements.all_rows())?;
                let kept = match kept.as_boolean_opt() {
                    Some(b) => b.clone(),
                    None => BooleanArray::from(vec![false; kept.len()]),
                };
                elements.rebuild(return_type, elements.columns.clone(), Some(&kept))?
            }
            (Kind::Reduce, [f]) => reduce(&elements, &cast(&values[1], return_type)?, f)?,
            _ => return exec_err!("{} expects {}", self.upper_name(), self.usage()),
        };
        Ok(ColumnarValue::Array(out))
    }
}

/// A map's entries field with new key and value types (keys stay non-null).
fn map_entries_field(entries: &FieldRef, key: DataType, value: DataType) -> FieldRef {
    let (k, v) = match entries.data_type() {
        DataType::Struct(kv) if kv.len() == 2 => (kv[0].name().clone(), kv[1].name().clone()),
        _ => ("key".to_string(), "value".to_string()),
    };
    Arc::new(Field::new(
        entries.name(),
        DataType::Struct(Fields::from(vec![Field::new(k, key, false), Field::new(v, value, true)])),
        false,
    ))
}

/// The elements of an array or map column, flattened: one column (array) or two (keys and
/// values), with each row's range in them.
struct Elements {
    /// Each row's range in `columns`, starting at 0.
    offsets: OffsetBuffer<i32>,
    columns: Vec<ArrayRef>,
    nulls: Option<NullBuffer>,
    is_map: bool,
}

impl Elements {
    fn of(collection: &ArrayRef) -> Result<Elements> {
        let (offsets, columns, nulls, is_map) = match collection.data_type() {
            DataType::List(_) => {
                let list = collection.as_list::<i32>();
                (list.offsets().clone(), vec![list.values().clone()], list.nulls().cloned(), false)
            }
            DataType::Map(..) => {
                let map = collection.as_map();
                (map.offsets().clone(), vec![map.keys().clone(), map.values().clone()], map.nulls().cloned(), true)
            }
            other => return exec_err!("expected an ARRAY or a MAP, got {other}"),
        };
        let start = offsets[0] as usize;
        let len = offsets[offsets.len() - 1] as usize - start;
        let columns = columns.into_iter().map(|c| c.slice(start, len)).collect();
        let offsets = OffsetBuffer::new(offsets.iter().map(|o| o - start as i32).collect::<Vec<_>>().into());
        Ok(Elements { offsets, columns, nulls, is_map })
    }

    fn len(&self, row: usize) -> usize {
        (self.offsets[row + 1] - self.offsets[row]) as usize
    }

    fn is_valid(&self, row: usize) -> bool {
        self.nulls.as_ref().is_none_or(|n| n.is_valid(row))
    }

    /// The row of each element.
    fn all_rows(&self) -> UInt32Array {
        let rows = self.offsets.len() - 1;
        UInt32Array::from_iter_values((0..rows).flat_map(|r| std::iter::repeat_n(r as u32, self.len(r))))
    }

    /// Evaluates `lambda` over every element, its captured columns spread by `rows_of`.
    fn eval(&self, lambda: &LambdaArgument, rows_of: &UInt32Array) -> Result<ArrayRef> {
        let params: Vec<Box<dyn Fn() -> Result<ArrayRef> + '_>> =
            self.columns.iter().map(|c| Box::new(move || Ok(c.clone())) as Box<dyn Fn() -> Result<ArrayRef>>).collect();
        let refs: Vec<&dyn Fn() -> Result<ArrayRef>> = params.iter().map(|b| b.as_ref()).collect();
        let len = self.columns[0].len();
        lambda.evaluate(&refs, |captured| Ok(take_arrays(captured, rows_of, None)?))?.into_array(len)
    }

    /// A collection of `t` with these rows' ranges over `columns` (the elements kept by `keep`).
    fn rebuild(&self, t: &DataType, columns: Vec<ArrayRef>, keep: Option<&BooleanArray>) -> Result<ArrayRef> {
        let (offsets, columns) = match keep {
            None => (self.offsets.clone(), columns),
            Some(keep) => {
                let mut lengths = Vec::with_capacity(self.offsets.len() - 1);
                for r in 0..self.offsets.len() - 1 {
                    let (a, b) = (self.offsets[r] as usize, self.offsets[r + 1] as usize);
                    lengths.push((a..b).filter(|&i| keep.is_valid(i) && keep.value(i)).count());
                }
                let columns = columns.iter().map(|c| filter(c, keep)).collect::<std::result::Result<Vec<_>, _>>()?;
                (OffsetBuffer::from_lengths(lengths), columns)
            }
        };
        Ok(match t {
            DataType::List(item) => {
                let values = cast(&columns[0], item.data_type())?;
                Arc::new(arrow::array::ListArray::try_new(item.clone(), offsets, values, self.nulls.clone())?)
            }
            DataType::Map(entries, sorted) if self.is_map => {
                let DataType::Struct(kv) = entries.data_type() else {
                    return exec_err!("a map's entries must be a struct");
                };
                let keys = cast(&columns[0], kv[0].data_type())?;
                let values = cast(&columns[1], kv[1].data_type())?;
                let entries_array = StructArray::try_new(kv.clone(), vec![keys, values], None)?;
                Arc::new(MapArray::try_new(entries.clone(), offsets, entries_array, self.nulls.clone(), *sorted)?)
            }
            other => return exec_err!("cannot build {other} from lambda results"),
        })
    }
}

/// Keeps, per row, the entries with a key (the last of each key), and says which rows had a
/// key twice (`TRANSFORM` makes those null).
fn last_of_each_key(offsets: &OffsetBuffer<i32>, keys: &ArrayRef) -> Result<(BooleanArray, BooleanArray)> {
    let converter = RowConverter::new(vec![SortField::new(keys.data_type().clone())])?;
    let encoded = converter.convert_columns(std::slice::from_ref(keys))?;
    let mut keep = vec![true; keys.len()];
    let mut duplicated = vec![false; offsets.len() - 1];
    for r in 0..offsets.len() - 1 {
        let (a, b) = (offsets[r] as usize, offsets[r + 1] as usize);
        let mut seen = std::collections::HashSet::new();
        for i in (a..b).rev() {
            let first = seen.insert(encoded.row(i));
            duplicated[r] |= keys.is_valid(i) && !first;
            keep[i] = keys.is_valid(i) && first;
        }
    }
    Ok((BooleanArray::from(keep), BooleanArray::from(duplicated)))
}

/// `REDUCE`: the lambda applied at each element position in turn, over the rows that have an
/// element there (and a non-null state to start from).
fn reduce(elements: &Elements, initial: &ArrayRef, lambda: &LambdaArgument) -> Result<ArrayRef> {
    let rows = elements.offsets.len() - 1;
    let mut state = initial.clone();
    for pos in 0.. {
        let active: Vec<u32> = (0..rows)
            .filter(|&r| elements.is_valid(r) && initial.is_valid(r) && elements.len(r) > pos)
            .map(|r| r as u32)
            .collect();
        if active.is_empty() {
            break;
        }
        let active = UInt32Array::from(active);
        let at: UInt32Array =
            active.values().iter().map(|&r| elements.offsets[r as usize] as u32 + pos as u32).collect();
        let current = take(&state, &active, None)?;
        let mut params = vec![current];
        for c in &elements.columns {
            params.push(take(c, &at, None)?);
        }
        let closures: Vec<Box<dyn Fn() -> Result<ArrayRef> + '_>> =
            params.iter().map(|p| Box::new(move || Ok(p.clone())) as Box<dyn Fn() -> Result<ArrayRef>>).collect();
        let refs: Vec<&dyn Fn() -> Result<ArrayRef>> = closures.iter().map(|b| b.as_ref()).collect();
        let next =
            lambda.evaluate(&refs, |captured| Ok(take_arrays(captured, &active, None)?))?.into_array(active.len())?;
        let next = cast(&next, state.data_type())?;
        // Rows with an element here take the lambda's result, the others keep their state.
        let mut picks: Vec<(usize, usize)> = (0..rows).map(|r| (0, r)).collect();
        for (i, &r) in active.values().iter().enumerate() {
            picks[r as usize] = (1, i);
        }
        state = interleave(&[state.as_ref(), next.as_ref()], &picks)?;
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int32Array, ListArray, RecordBatch};
    use arrow::datatypes::{Int32Type, Schema};
    use arrow::util::display::{ArrayFormatter, FormatOptions};
    use datafusion::catalog::MemTable;
    use datafusion::prelude::{SessionConfig, SessionContext};
    use datafusion::sql::parser::Statement as DfStatement;

    use super::*;
    use crate::ast::Statement;

    /// Evaluates `expr` (ksqlDB's dialect) over the rows of `T(A ARRAY<INT>, M MAP<STRING, INT>,
    /// N INT)`, each result formatted.
    async fn eval(expr: &str) -> Vec<String> {
        let config = SessionConfig::new().set_bool("datafusion.sql_parser.enable_ident_normalization", false);
        let ctx = SessionContext::new_with_config(config);
        crate::functions::register(&ctx).unwrap();
        let a = ListArray::from_iter_primitive::<Int32Type, _, _>(vec![
            Some(vec![Some(3), Some(6)]),
            Some(vec![Some(5), None]),
            None,
            Some(vec![]),
        ]);
        let m_type = crate::parser::parse_type("MAP<STRING, INT>").unwrap().to_arrow();
        let m = arrow::json::ReaderBuilder::new(Arc::new(Schema::new(vec![Field::new("M", m_type, true)])))
            .build_decoder()
            .and_then(|mut d| {
                d.decode(br#"{"M": {"abc": 1, "de": 2}} {"M": {"x": null}} {"M": null} {"M": {}}"#)?;
                Ok(d.flush()?.unwrap())
            })
            .unwrap()
            .column(0)
            .clone();
        let n = Int32Array::from(vec![Some(10), Some(20), Some(30), None]);
        let batch =
            RecordBatch::try_from_iter(vec![("A", Arc::new(a) as ArrayRef), ("M", m), ("N", Arc::new(n))]).unwrap();
        let table = MemTable::try_new(batch.schema(), vec![vec![batch]]).unwrap();
        ctx.register_table(datafusion::common::TableReference::bare("T"), Arc::new(table)).unwrap();
        let parsed = crate::parser::parse(&format!("SELECT {expr} FROM T EMIT CHANGES;")).unwrap();
        let Statement::Select(select) = &parsed[0].statement else { panic!() };
        let mut query = select.query.clone();
        crate::planner::ksql_expressions(&mut query);
        let statement = DfStatement::Statement(Box::new(sqlparser::ast::Statement::Query(Box::new(query))));
        let plan = ctx.state().statement_to_plan(statement).await.unwrap();
        let batches = ctx.execute_logical_plan(plan).await.unwrap().collect().await.unwrap();
        let options = FormatOptions::default().with_null("null");
        let mut out = Vec::new();
        for b in batches {
            let f = ArrayFormatter::try_new(b.column(0).as_ref(), &options).unwrap();
            out.extend((0..b.num_rows()).map(|i| f.value(i).to_string()));
        }
        out
    }

    #[tokio::test]
    async fn transform_filter_and_reduce_arrays() {
        assert_eq!(eval("TRANSFORM(A, x => x + 5)").await, ["[8, 11]", "[10, null]", "null", "[]"]);
        // Captured columns are spread to each element.
        assert_eq!(eval("TRANSFORM(A, x => x * N)").await, ["[30, 60]", "[100, null]", "null", "[]"]);
        assert_eq!(
            eval("TRANSFORM(A, x => STRUCT(x := N, y := x))").await,
            ["[{X: 10, Y: 3}, {X: 10, Y: 6}]", "[{X: 20, Y: 5}, {X: 20, Y: null}]", "null", "[]"]
        );
        assert_eq!(eval("FILTER(A, x => x > 4)").await, ["[6]", "[5]", "null", "[]"]);
        // REDUCE of a null collection is its initial state; a null element makes the sum null.
        assert_eq!(eval("REDUCE(A, 2, (s, x) => s + x)").await, ["11", "null", "2", "2"]);
        assert_eq!(eval("REDUCE(A, N, (s, x) => s + x)").await, ["19", "null", "30", "null"]);
        assert_eq!(eval("REDUCE(A, '', (s, x) => CONCAT(s, CAST(x AS STRING)))").await, ["36", "5", "", ""]);
    }

    #[tokio::test]
    async fn transform_filter_and_reduce_maps() {
        assert_eq!(
            eval("TRANSFORM(M, (k, v) => UCASE(k), (k, v) => v * 10)").await,
            ["{ABC: 10, DE: 20}", "{X: null}", "null", "{}"]
        );
        // Keys made equal: the row is null (ksqlDB fails on it); a row with one entry keeps it.
        assert_eq!(eval("TRANSFORM(M, (k, v) => 'K', (k, v) => v)").await, ["null", "{K: null}", "null", "{}"]);
        assert_eq!(eval("FILTER(M, (k, v) => LEN(k) > 2)").await, ["{abc: 1}", "{}", "null", "{}"]);
        assert_eq!(eval("REDUCE(M, 0, (s, k, v) => s + LEN(k) * v)").await, ["7", "null", "0", "0"]);
        // Lambdas nest, and an inner lambda may use an outer one's parameters.
        assert_eq!(
            eval("REDUCE(TRANSFORM(A, x => TRANSFORM(A, y => x * y)), 0, (s, r) => s + REDUCE(r, 0, (t, z) => t + z))")
                .await,
            ["81", "null", "0", "0"]
        );
    }
}
