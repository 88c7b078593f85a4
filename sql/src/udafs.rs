//! ksqlDB aggregate functions DataFusion does not have: `TOPK`, `TOPKDISTINCT`, `HISTOGRAM`.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int64Builder, MapBuilder, StringBuilder};
use arrow::datatypes::{DataType, Field, FieldRef, Fields};
use datafusion::common::{exec_err, Result, ScalarValue};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{Accumulator, AggregateUDF, AggregateUDFImpl, Signature, Volatility};

/// `TOPK(col, k)` and `TOPKDISTINCT(col, k)`: the k largest values, largest first.
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
        match arg_types.first() {
            Some(t) => Ok(DataType::List(Arc::new(Field::new("item", t.clone(), true)))),
            None => exec_err!("{} needs a column and a count", self.name),
        }
    }
    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        let item = args.exprs.first().map(|e| e.data_type(args.schema)).transpose()?.unwrap_or(DataType::Null);
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
    fn add(&mut self, v: ScalarValue) {
        if v.is_null() || (self.distinct && self.values.contains(&v)) {
            return;
        }
        self.values.push(v);
        self.values.sort_by(|a, b| b.partial_cmp(a).unwrap_or(std::cmp::Ordering::Equal));
        if let Some(k) = self.k {
            self.values.truncate(k);
        }
    }

    fn set_k(&mut self, k: &ArrayRef) -> Result<()> {
        if self.k.is_none() && !k.is_empty() && k.is_valid(0) {
            let k = ScalarValue::try_from_array(k, 0)?;
            self.k = Some(match k {
                ScalarValue::Int64(Some(n)) => n.max(0) as usize,
                ScalarValue::Int32(Some(n)) => n.max(0) as usize,
                other => return exec_err!("TOPK's count must be an integer, got {other}"),
            });
        }
        Ok(())
    }

    fn list(&self) -> Result<ScalarValue> {
        Ok(ScalarValue::List(ScalarValue::new_list_nullable(&self.values, &self.item)))
    }
}

impl Accumulator for TopKAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        if let Some(k) = values.get(1) {
            self.set_k(k)?;
        }
        for i in 0..values[0].len() {
            self.add(ScalarValue::try_from_array(&values[0], i)?);
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
        let lists = states[0].as_list::<i32>();
        for i in 0..lists.len() {
            if lists.is_valid(i) {
                let items = lists.value(i);
                for j in 0..items.len() {
                    self.add(ScalarValue::try_from_array(&items, j)?);
                }
            }
        }
        Ok(())
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

/// The aggregate functions of this module.
pub fn all() -> Vec<AggregateUDF> {
    vec![
        AggregateUDF::from(TopK { name: "topk", distinct: false, signature: Signature::any(2, Volatility::Immutable) }),
        AggregateUDF::from(TopK {
            name: "topkdistinct",
            distinct: true,
            signature: Signature::any(2, Volatility::Immutable),
        }),
        AggregateUDF::from(Histogram { signature: Signature::any(1, Volatility::Immutable) }),
    ]
}
