//! ksqlDB aggregate functions DataFusion does not have: `TOPK`, `TOPKDISTINCT`, `HISTOGRAM`,
//! `SUM_LIST`, and the multi-value `EARLIEST_BY_OFFSET`/`LATEST_BY_OFFSET`.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int64Builder, MapBuilder, StringBuilder};
use arrow::datatypes::{DataType, Field, FieldRef, Fields};
use datafusion::common::{exec_err, Result, ScalarValue};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{Accumulator, AggregateUDF, AggregateUDFImpl, Signature, TypeSignature, Volatility};

/// A list of the first argument's type: what the list-valued aggregates return.
fn list_of(arg_types: &[DataType], name: &str) -> Result<DataType> {
    match arg_types.first() {
        Some(t) => Ok(DataType::List(Arc::new(Field::new("item", t.clone(), true)))),
        None => exec_err!("{} needs a column", name.to_uppercase()),
    }
}

/// The type of an aggregate's first argument.
fn item_type(args: &AccumulatorArgs) -> Result<DataType> {
    Ok(args.exprs.first().map(|e| e.data_type(args.schema)).transpose()?.unwrap_or(DataType::Null))
}

/// Calls `f` with every item of every (non-null) list in `lists`, in order: merging list states.
fn for_each_item(lists: &ArrayRef, mut f: impl FnMut(ScalarValue)) -> Result<()> {
    let lists = lists.as_list::<i32>();
    for i in 0..lists.len() {
        if lists.is_valid(i) {
            let items = lists.value(i);
            for j in 0..items.len() {
                f(ScalarValue::try_from_array(&items, j)?);
            }
        }
    }
    Ok(())
}

/// The integer count argument (`k` of TOPK, `n` of EARLIEST_BY_OFFSET) from its first row, if
/// there is one; negative counts are 0.
fn count_arg(array: &ArrayRef, what: &str) -> Result<Option<usize>> {
    if array.is_empty() || !array.is_valid(0) {
        return Ok(None);
    }
    Ok(Some(match ScalarValue::try_from_array(array, 0)? {
        ScalarValue::Int64(Some(n)) => n.max(0) as usize,
        ScalarValue::Int32(Some(n)) => n.max(0) as usize,
        other => return exec_err!("{what} must be an integer, got {other}"),
    }))
}

/// The element type of `TOPK(sort_col, other..., k)` with other columns: a struct of the sort
/// column (`sort_col`) and the others (`col0`, `col1`, ...), as ksqlDB returns.
fn topk_struct(arg_types: &[DataType]) -> Option<DataType> {
    let (sort, others) = arg_types[..arg_types.len().checked_sub(1)?].split_first()?;
    if others.is_empty() {
        return None;
    }
    let mut fields = vec![Field::new("sort_col", sort.clone(), true)];
    fields.extend(others.iter().enumerate().map(|(i, t)| Field::new(format!("col{i}"), t.clone(), true)));
    Some(DataType::Struct(Fields::from(fields)))
}

/// `TOPK(col, k)` and `TOPKDISTINCT(col, k)`: the k largest values, largest first;
/// `TOPK(col, other..., k)`: the rows of the k largest values of `col`, as structs.
#[derive(Debug, PartialEq, Eq, Hash)]
struct TopK {
    name: &'static str,
    distinct: bool,
    signature: Signature,
}

impl AggregateUDFImpl for TopK {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        if arg_types.len() < 2 {
            return exec_err!("{} takes a column and a count", self.name.to_uppercase());
        }
        match topk_struct(arg_types) {
            Some(_) if self.distinct => exec_err!("TOPKDISTINCT takes a column and a count"),
            Some(item) => list_of(&[item], self.name()),
            None => list_of(arg_types, self.name()),
        }
    }
    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        let types = args.exprs.iter().map(|e| e.data_type(args.schema)).collect::<Result<Vec<_>>>()?;
        let item = match topk_struct(&types) {
            Some(s) => s,
            None => item_type(&args)?,
        };
        Ok(Box::new(TopKAccumulator { distinct: self.distinct, k: None, values: Vec::new(), item }))
    }
    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![
            Arc::new(args.return_field.as_ref().clone().with_name(format!("{}_values", args.name))),
            Arc::new(Field::new(format!("{}_k", args.name), DataType::Int64, true)),
        ])
    }
}

#[derive(Debug)]
struct TopKAccumulator {
    distinct: bool,
    k: Option<usize>,
    values: Vec<ScalarValue>,
    item: DataType,
}

impl TopKAccumulator {
    /// What a value is ranked by: itself, or a struct's sort column.
    fn rank(v: &ScalarValue) -> ScalarValue {
        match v {
            ScalarValue::Struct(s) if s.num_columns() > 0 => {
                ScalarValue::try_from_array(s.column(0), 0).unwrap_or(ScalarValue::Null)
            }
            other => other.clone(),
        }
    }

    fn add(&mut self, v: ScalarValue) {
        if Self::rank(&v).is_null() || (self.distinct && self.values.contains(&v)) {
            return;
        }
        self.values.push(v);
        // Stable: among equal values the earlier stays first.
        self.values.sort_by(|a, b| Self::rank(b).partial_cmp(&Self::rank(a)).unwrap_or(std::cmp::Ordering::Equal));
        if let Some(k) = self.k {
            self.values.truncate(k);
        }
    }

    fn set_k(&mut self, k: &ArrayRef) -> Result<()> {
        if self.k.is_none() {
            self.k = count_arg(k, "TOPK's count")?;
        }
        Ok(())
    }

    fn list(&self) -> Result<ScalarValue> {
        Ok(ScalarValue::List(ScalarValue::new_list_nullable(&self.values, &self.item)))
    }
}

impl Accumulator for TopKAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let Some((k, columns)) = values.split_last() else { return Ok(()) };
        if columns.is_empty() {
            return Ok(());
        }
        self.set_k(k)?;
        let items: ArrayRef = match &self.item {
            DataType::Struct(fields) if columns.len() > 1 => {
                Arc::new(arrow::array::StructArray::try_new(fields.clone(), columns.to_vec(), None)?)
            }
            _ => columns[0].clone(),
        };
        for i in 0..items.len() {
            self.add(ScalarValue::try_from_array(&items, i)?);
        }
        Ok(())
    }
    fn evaluate(&mut self) -> Result<ScalarValue> {
        self.list()
    }
    fn size(&self) -> usize {
        size_of_val(self) + self.values.iter().map(|v| v.size()).sum::<usize>()
    }
    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![self.list()?, ScalarValue::Int64(self.k.map(|k| k as i64))])
    }
    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        if let Some(k) = states.get(1) {
            self.set_k(k)?;
        }
        for_each_item(&states[0], |v| self.add(v))
    }
}

/// `HISTOGRAM(col)`: a map from each distinct (string) value to how often it occurred.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Histogram {
    signature: Signature,
}

fn histogram_type() -> DataType {
    DataType::Map(
        Arc::new(Field::new(
            "entries",
            DataType::Struct(Fields::from(vec![
                Field::new("keys", DataType::Utf8, false),
                Field::new("values", DataType::Int64, true),
            ])),
            false,
        )),
        false,
    )
}

impl AggregateUDFImpl for Histogram {
    fn name(&self) -> &str {
        "histogram"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(histogram_type())
    }
    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(HistogramAccumulator::default()))
    }
    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new(format!("{}_map", args.name), histogram_type(), true))])
    }
}

#[derive(Debug, Default)]
struct HistogramAccumulator {
    counts: BTreeMap<String, i64>,
}

impl HistogramAccumulator {
    fn map(&self) -> Result<ScalarValue> {
        let mut b = MapBuilder::new(None, StringBuilder::new(), Int64Builder::new());
        for (k, v) in &self.counts {
            b.keys().append_value(k);
            b.values().append_value(*v);
        }
        b.append(true)?;
        let map = b.finish();
        ScalarValue::try_from_array(&map, 0)
    }
}

impl Accumulator for HistogramAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let strings = arrow::compute::cast(&values[0], &DataType::Utf8)?;
        for v in strings.as_string::<i32>().iter().flatten() {
            *self.counts.entry(v.to_string()).or_default() += 1;
        }
        Ok(())
    }
    fn evaluate(&mut self) -> Result<ScalarValue> {
        self.map()
    }
    fn size(&self) -> usize {
        size_of_val(self) + self.counts.keys().map(|k| k.len() + 24).sum::<usize>()
    }
    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![self.map()?])
    }
    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let maps = states[0].as_map();
        for i in 0..maps.len() {
            if maps.is_valid(i) {
                let entries = maps.value(i);
                let keys = entries.column(0).as_string::<i32>();
                let counts = entries.column(1).as_primitive::<arrow::datatypes::Int64Type>();
                for j in 0..keys.len() {
                    *self.counts.entry(keys.value(j).to_string()).or_default() += counts.value(j);
                }
            }
        }
        Ok(())
    }
    fn supports_retract_batch(&self) -> bool {
        true
    }
    fn retract_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let strings = arrow::compute::cast(&values[0], &DataType::Utf8)?;
        for v in strings.as_string::<i32>().iter().flatten() {
            if let Some(c) = self.counts.get_mut(v) {
                *c -= 1;
                if *c <= 0 {
                    self.counts.remove(v);
                }
            }
        }
        Ok(())
    }
}

/// `EARLIEST_BY_OFFSET(col, n [, ignoreNulls])` and `LATEST_BY_OFFSET(col, n [, ignoreNulls])`:
/// the first or last `n` values in offset order, as an array (nulls skipped unless
/// `ignoreNulls` is false). The planner rewrites the multi-value forms to these.
#[derive(Debug, PartialEq, Eq, Hash)]
struct ByOffsetN {
    name: &'static str,
    latest: bool,
    signature: Signature,
}

impl AggregateUDFImpl for ByOffsetN {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        list_of(arg_types, self.name())
    }
    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        let item = item_type(&args)?;
        Ok(Box::new(ByOffsetNAccumulator {
            latest: self.latest,
            n: None,
            ignore_nulls: true,
            values: Vec::new(),
            item,
        }))
    }
    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![
            Arc::new(args.return_field.as_ref().clone().with_name(format!("{}_values", args.name))),
            Arc::new(Field::new(format!("{}_n", args.name), DataType::Int64, true)),
            Arc::new(Field::new(format!("{}_ignore_nulls", args.name), DataType::Boolean, true)),
        ])
    }
}

#[derive(Debug)]
struct ByOffsetNAccumulator {
    latest: bool,
    n: Option<usize>,
    ignore_nulls: bool,
    values: Vec<ScalarValue>,
    item: DataType,
}

impl ByOffsetNAccumulator {
    fn settings(&mut self, n: Option<&ArrayRef>, ignore: Option<&ArrayRef>) -> Result<()> {
        if let Some(n) = n.filter(|_| self.n.is_none()) {
            self.n = count_arg(n, "the count")?;
        }
        if let Some(ignore) = ignore.filter(|i| !i.is_empty() && i.is_valid(0)) {
            if let ScalarValue::Boolean(Some(b)) = ScalarValue::try_from_array(ignore, 0)? {
                self.ignore_nulls = b;
            }
        }
        Ok(())
    }

    fn add(&mut self, v: ScalarValue) {
        if v.is_null() && self.ignore_nulls {
            return;
        }
        let n = self.n.unwrap_or(1);
        if self.latest {
            self.values.push(v);
            if self.values.len() > n {
                self.values.remove(0);
            }
        } else if self.values.len() < n {
            self.values.push(v);
        }
    }

    fn list(&self) -> ScalarValue {
        ScalarValue::List(ScalarValue::new_list_nullable(&self.values, &self.item))
    }
}

impl Accumulator for ByOffsetNAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.settings(values.get(1), values.get(2))?;
        for i in 0..values[0].len() {
            self.add(ScalarValue::try_from_array(&values[0], i)?);
        }
        Ok(())
    }
    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(self.list())
    }
    fn size(&self) -> usize {
        size_of_val(self) + self.values.iter().map(|v| v.size()).sum::<usize>()
    }
    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![
            self.list(),
            ScalarValue::Int64(self.n.map(|n| n as i64)),
            ScalarValue::Boolean(Some(self.ignore_nulls)),
        ])
    }
    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        self.settings(states.get(1), states.get(2))?;
        for_each_item(&states[0], |v| self.add(v))
    }
}

/// `COLLECT_SET(col[, limit])`: the distinct values in the order they first arrived (ksqlDB keeps
/// insertion order; DataFusion's `array_agg(DISTINCT)` does not), at most `limit` of them when
/// given (see [`collection_limits`]).
#[derive(Debug, PartialEq, Eq, Hash)]
struct CollectSet {
    signature: Signature,
}

impl AggregateUDFImpl for CollectSet {
    fn name(&self) -> &str {
        "collect_set"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        list_of(arg_types, self.name())
    }
    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        let item = item_type(&args)?;
        Ok(Box::new(CollectSetAccumulator { values: Vec::new(), item, limit: None }))
    }
    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(args.return_field.as_ref().clone().with_name(format!("{}_values", args.name)))])
    }
}

#[derive(Debug)]
struct CollectSetAccumulator {
    values: Vec<ScalarValue>,
    item: DataType,
    /// The limit argument, once read.
    limit: Option<usize>,
}

impl CollectSetAccumulator {
    fn add(&mut self, v: ScalarValue) {
        // ksqlDB's set keeps one null too; maps with the same entries are one value, whatever
        // the order of their entries.
        let key = map_entries(&v);
        let seen = match &key {
            Some(entries) => self.values.iter().any(|x| map_entries(x).as_ref() == Some(entries)),
            None => self.values.contains(&v),
        };
        if !seen && self.values.len() < self.limit.unwrap_or(usize::MAX) {
            self.values.push(v);
        }
    }
    fn list(&self) -> ScalarValue {
        ScalarValue::List(ScalarValue::new_list_nullable(&self.values, &self.item))
    }
}

impl Accumulator for CollectSetAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        if let Some(limit) = values.get(1).filter(|_| self.limit.is_none()) {
            self.limit = count_arg(limit, "the limit")?;
        }
        for i in 0..values[0].len() {
            self.add(ScalarValue::try_from_array(&values[0], i)?);
        }
        Ok(())
    }
    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(self.list())
    }
    fn size(&self) -> usize {
        size_of_val(self) + self.values.iter().map(|v| v.size()).sum::<usize>()
    }
    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![self.list()])
    }
    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        for_each_item(&states[0], |v| self.add(v))
    }
}

/// A map value's entries sorted by key (`None` for other values and null maps).
fn map_entries(v: &ScalarValue) -> Option<Vec<(ScalarValue, ScalarValue)>> {
    let ScalarValue::Map(m) = v else { return None };
    if m.is_empty() || m.is_null(0) {
        return None;
    }
    let entries = m.value(0);
    let mut pairs: Vec<(ScalarValue, ScalarValue)> = (0..entries.len())
        .map(|i| {
            Some((
                ScalarValue::try_from_array(entries.column(0), i).ok()?,
                ScalarValue::try_from_array(entries.column(1), i).ok()?,
            ))
        })
        .collect::<Option<_>>()?;
    pairs.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    Some(pairs)
}

/// `SUM_LIST(list)`: the sum of every element of every list, typed as the elements (INT, BIGINT
/// or DOUBLE). It retracts, so tables can use it.
#[derive(Debug, PartialEq, Eq, Hash)]
struct SumList {
    signature: Signature,
}

impl AggregateUDFImpl for SumList {
    fn name(&self) -> &str {
        "sum_list"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match arg_types.first() {
            Some(DataType::List(f))
                if matches!(f.data_type(), DataType::Int32 | DataType::Int64 | DataType::Float64) =>
            {
                Ok(f.data_type().clone())
            }
            other => exec_err!("SUM_LIST sums an ARRAY of INT, BIGINT or DOUBLE, not {other:?}"),
        }
    }
    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(SumListAccumulator { item: args.return_field.data_type().clone(), int: 0, float: 0.0 }))
    }
    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new(format!("{}_sum", args.name), args.return_field.data_type().clone(), true))])
    }
}

#[derive(Debug)]
struct SumListAccumulator {
    item: DataType,
    int: i64,
    float: f64,
}

impl SumListAccumulator {
    /// Adds (with `sign` -1: removes) the non-null values of `elements`.
    fn add_elements(&mut self, elements: &ArrayRef, sign: i64) -> Result<()> {
        if self.item == DataType::Float64 {
            let e = arrow::compute::cast(elements, &DataType::Float64)?;
            self.float += e.as_primitive::<arrow::datatypes::Float64Type>().iter().flatten().sum::<f64>() * sign as f64;
        } else {
            let e = arrow::compute::cast(elements, &DataType::Int64)?;
            let sum = e.as_primitive::<arrow::datatypes::Int64Type>().iter().flatten().fold(0i64, i64::wrapping_add);
            self.int = self.int.wrapping_add(sum.wrapping_mul(sign));
        }
        Ok(())
    }

    /// Adds (or removes) the elements of every non-null list.
    fn add_lists(&mut self, lists: &ArrayRef, sign: i64) -> Result<()> {
        let lists = lists.as_list::<i32>();
        for i in (0..lists.len()).filter(|i| lists.is_valid(*i)) {
            self.add_elements(&lists.value(i), sign)?;
        }
        Ok(())
    }
}

impl Accumulator for SumListAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.add_lists(&values[0], 1)
    }
    fn retract_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.add_lists(&values[0], -1)
    }
    fn supports_retract_batch(&self) -> bool {
        true
    }
    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(match self.item {
            DataType::Int32 => ScalarValue::Int32(Some(self.int as i32)),
            DataType::Int64 => ScalarValue::Int64(Some(self.int)),
            _ => ScalarValue::Float64(Some(self.float)),
        })
    }
    fn size(&self) -> usize {
        size_of_val(self)
    }
    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![self.evaluate()?])
    }
    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        self.add_elements(&states[0], 1)
    }
}

/// `ATTR(col)`: the value when every row of the group has the same one (NULL counts as a
/// value), else NULL. It retracts, so tables can use it: it keeps each distinct value's count.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Attr {
    signature: Signature,
}

impl AggregateUDFImpl for Attr {
    fn name(&self) -> &str {
        "attr"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        arg_types.first().cloned().map_or_else(|| exec_err!("ATTR needs a column"), Ok)
    }
    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(AttrAccumulator { item: item_type(&args)?, counts: Vec::new() }))
    }
    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        let values = DataType::List(Arc::new(Field::new("item", args.return_field.data_type().clone(), true)));
        let counts = DataType::List(Arc::new(Field::new("item", DataType::UInt64, true)));
        Ok(vec![
            Arc::new(Field::new(format!("{}_values", args.name), values, true)),
            Arc::new(Field::new(format!("{}_counts", args.name), counts, true)),
        ])
    }
}

#[derive(Debug)]
struct AttrAccumulator {
    item: DataType,
    /// Each distinct value (NULL too) and how many rows hold it.
    counts: Vec<(ScalarValue, u64)>,
}

impl AttrAccumulator {
    fn add(&mut self, v: ScalarValue, n: u64) {
        match self.counts.iter_mut().find(|(x, _)| *x == v) {
            Some((_, c)) => *c += n,
            None => self.counts.push((v, n)),
        }
    }
    fn remove(&mut self, v: &ScalarValue) {
        if let Some(i) = self.counts.iter().position(|(x, _)| x == v) {
            self.counts[i].1 -= 1;
            if self.counts[i].1 == 0 {
                self.counts.remove(i);
            }
        }
    }
}

impl Accumulator for AttrAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        for i in 0..values[0].len() {
            self.add(ScalarValue::try_from_array(&values[0], i)?, 1);
        }
        Ok(())
    }
    fn retract_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        for i in 0..values[0].len() {
            self.remove(&ScalarValue::try_from_array(&values[0], i)?);
        }
        Ok(())
    }
    fn supports_retract_batch(&self) -> bool {
        true
    }
    fn evaluate(&mut self) -> Result<ScalarValue> {
        match &self.counts[..] {
            [(v, _)] => Ok(v.clone()),
            _ => ScalarValue::try_from(&self.item),
        }
    }
    fn size(&self) -> usize {
        size_of_val(self) + self.counts.iter().map(|(v, _)| v.size()).sum::<usize>()
    }
    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let values: Vec<ScalarValue> = self.counts.iter().map(|(v, _)| v.clone()).collect();
        let counts: Vec<ScalarValue> = self.counts.iter().map(|(_, n)| ScalarValue::UInt64(Some(*n))).collect();
        Ok(vec![
            ScalarValue::List(ScalarValue::new_list_nullable(&values, &self.item)),
            ScalarValue::List(ScalarValue::new_list_nullable(&counts, &DataType::UInt64)),
        ])
    }
    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let mut values = Vec::new();
        for_each_item(&states[0], |v| values.push(v))?;
        let mut counts = Vec::new();
        for_each_item(&states[1], |n| counts.push(n))?;
        for (v, n) in values.into_iter().zip(counts) {
            let ScalarValue::UInt64(Some(n)) = n else { continue };
            self.add(v, n);
        }
        Ok(())
    }
}

/// The aggregate functions of this module.
pub fn all() -> Vec<AggregateUDF> {
    vec![
        AggregateUDF::from(Attr { signature: Signature::any(1, Volatility::Immutable) }),
        AggregateUDF::from(SumList { signature: Signature::any(1, Volatility::Immutable) }),
        AggregateUDF::from(CollectSet {
            signature: Signature::one_of(vec![TypeSignature::Any(1), TypeSignature::Any(2)], Volatility::Immutable),
        }),
        AggregateUDF::from(ByOffsetN {
            name: "earliest_by_offset_n",
            latest: false,
            signature: Signature::any(3, Volatility::Immutable),
        }),
        AggregateUDF::from(ByOffsetN {
            name: "latest_by_offset_n",
            latest: true,
            signature: Signature::any(3, Volatility::Immutable),
        }),
        AggregateUDF::from(TopK {
            name: "topk",
            distinct: false,
            signature: Signature::variadic_any(Volatility::Immutable),
        }),
        AggregateUDF::from(TopK {
            name: "topkdistinct",
            distinct: true,
            signature: Signature::any(2, Volatility::Immutable),
        }),
        AggregateUDF::from(Histogram { signature: Signature::any(1, Volatility::Immutable) }),
    ]
}

/// ksqlDB's `ksql.functions.collect_list.limit` and `ksql.functions.collect_set.limit`: when a
/// statement's properties set them, `COLLECT_LIST(x)` keeps its first N values
/// (`EARLIEST_BY_OFFSET(x, N, false)`, nulls included) and `COLLECT_SET(x)` its first N distinct
/// ones (`COLLECT_SET(x, N)`). Unset, the lists are unbounded (ksqlDB's default of 1000 would
/// drop values silently).
pub fn collection_limits(query: &mut sqlparser::ast::Query, props: &crate::engine::Properties) {
    use sqlparser::ast as sp;
    let limit = |name: &str| props.get(&format!("ksql.functions.{name}.limit"))?.trim().parse::<u32>().ok();
    let (list, set) = (limit("collect_list"), limit("collect_set"));
    if list.is_none() && set.is_none() {
        return;
    }
    let number = |n: u32| {
        sp::FunctionArg::Unnamed(sp::FunctionArgExpr::Expr(sp::Expr::value(sp::Value::Number(n.to_string(), false))))
    };
    let _ = sp::visit_expressions_mut(query, |e| {
        if let sp::Expr::Function(f) = e {
            let name = crate::planner::function_name(f).map(|n| n.to_lowercase());
            if let sp::FunctionArguments::List(args) = &mut f.args {
                match (name.as_deref(), list, set) {
                    (Some("collect_list"), Some(n), _) if args.args.len() == 1 => {
                        f.name = sp::ObjectName::from(vec![sp::Ident::new("earliest_by_offset_n")]);
                        args.args.push(number(n));
                        args.args.push(sp::FunctionArg::Unnamed(sp::FunctionArgExpr::Expr(sp::Expr::value(
                            sp::Value::Boolean(false),
                        ))));
                    }
                    (Some("collect_set"), _, Some(n)) if args.args.len() == 1 => args.args.push(number(n)),
                    _ => {}
                }
            }
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int32Array, ListArray};
    use arrow::datatypes::Int32Type;

    use super::*;

    #[test]
    fn attr_is_the_one_value_and_retracts() {
        let mut acc = AttrAccumulator { item: DataType::Utf8, counts: Vec::new() };
        let rows = |v: Vec<Option<&str>>| -> Vec<ArrayRef> { vec![Arc::new(arrow::array::StringArray::from(v))] };
        acc.update_batch(&rows(vec![Some("a"), Some("a")])).unwrap();
        assert_eq!(acc.evaluate().unwrap(), ScalarValue::Utf8(Some("a".into())));
        acc.update_batch(&rows(vec![None])).unwrap();
        assert_eq!(acc.evaluate().unwrap(), ScalarValue::Utf8(None), "NULL is another value");
        acc.retract_batch(&rows(vec![None])).unwrap();
        assert_eq!(acc.evaluate().unwrap(), ScalarValue::Utf8(Some("a".into())));
        // State survives a merge into a fresh accumulator.
        let state: Vec<ArrayRef> = acc.state().unwrap().iter().map(|v| v.to_array().unwrap()).collect();
        let mut restored = AttrAccumulator { item: DataType::Utf8, counts: Vec::new() };
        restored.merge_batch(&state).unwrap();
        restored.retract_batch(&rows(vec![Some("a")])).unwrap();
        assert_eq!(restored.evaluate().unwrap(), ScalarValue::Utf8(Some("a".into())), "one of two rows left");
    }

    #[test]
    fn sum_list_adds_and_retracts_lists() {
        let lists: ArrayRef = Arc::new(ListArray::from_iter_primitive::<Int32Type, _, _>(vec![
            Some(vec![Some(1), Some(2)]),
            None,
            Some(vec![Some(10), None]),
        ]));
        let mut acc = SumListAccumulator { item: DataType::Int32, int: 0, float: 0.0 };
        acc.update_batch(std::slice::from_ref(&lists)).unwrap();
        assert_eq!(acc.evaluate().unwrap(), ScalarValue::Int32(Some(13)));
        acc.retract_batch(&[lists.slice(0, 1)]).unwrap();
        assert_eq!(acc.evaluate().unwrap(), ScalarValue::Int32(Some(10)));
        let state: ArrayRef = Arc::new(Int32Array::from(vec![5]));
        acc.merge_batch(&[state]).unwrap();
        assert_eq!(acc.evaluate().unwrap(), ScalarValue::Int32(Some(15)));
    }
}
