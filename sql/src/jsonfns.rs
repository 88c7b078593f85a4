//! ksqlDB's functions over JSON text (read with serde_json): `IS_JSON_STRING`,
//! `JSON_ARRAY_CONTAINS`, `JSON_ARRAY_LENGTH`, `JSON_CONCAT`, `JSON_ITEMS`, `JSON_KEYS`,
//! `JSON_RECORDS`; and `SPLIT_TO_MAP`. Text that is not JSON gives null (false for
//! `IS_JSON_STRING`), as in ksqlDB.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanBuilder, Int32Builder, ListBuilder, MapBuilder, MapFieldNames, StringArray,
    StringBuilder,
};
use arrow::datatypes::DataType;
use datafusion::common::{exec_err, Result, ScalarValue};
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility};
use serde_json::Value;

use crate::types::SqlType;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    IsJsonString,
    ArrayContains,
    ArrayLength,
    Concat,
    Items,
    Keys,
    Records,
    SplitToMap,
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct JsonFn {
    name: &'static str,
    kind: Kind,
    signature: Signature,
}

/// Each row's text of argument `i` (cast to a string).
fn texts(arrays: &[ArrayRef], i: usize) -> Result<StringArray> {
    Ok(arrow::compute::cast(&arrays[i], &DataType::Utf8)?.as_string::<i32>().clone())
}

fn text(a: &StringArray, i: usize) -> Option<&str> {
    a.is_valid(i).then(|| a.value(i))
}

fn parse(a: &StringArray, i: usize) -> Option<Value> {
    serde_json::from_str(text(a, i)?).ok()
}

/// A JSON value as `JSON_RECORDS` shows it: strings as their text, the rest as JSON.
fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn string_map_type() -> DataType {
    SqlType::Map(Box::new(SqlType::String), Box::new(SqlType::String)).to_arrow()
}

fn string_map_builder() -> MapBuilder<StringBuilder, StringBuilder> {
    let names = MapFieldNames { entry: "entries".into(), key: "key".into(), value: "value".into() };
    MapBuilder::new(Some(names), StringBuilder::new(), StringBuilder::new())
}

/// The element of `JSON_ARRAY_CONTAINS` searched for, as JSON (by the argument's type).
fn wanted(a: &ArrayRef, i: usize) -> Result<Value> {
    if a.is_null(i) {
        return Ok(Value::Null);
    }
    Ok(match ScalarValue::try_from_array(a, i)? {
        ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s)) | ScalarValue::Utf8View(Some(s)) => {
            Value::String(s)
        }
        ScalarValue::Boolean(Some(b)) => Value::Bool(b),
        ScalarValue::Float64(Some(f)) => serde_json::Number::from_f64(f).map(Value::Number).unwrap_or(Value::Null),
        other => match other.cast_to(&DataType::Int64)? {
            ScalarValue::Int64(Some(n)) => Value::from(n),
            _ => Value::Null,
        },
    })
}

/// JSON equality with numbers compared by value (`1` equals `1.0`).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

/// `JSON_CONCAT`: objects merge (later keys win); otherwise arrays are joined, other values
/// becoming elements.
fn concat(values: Vec<Value>) -> Value {
    if values.iter().all(Value::is_object) {
        let mut merged = serde_json::Map::new();
        for v in values {
            if let Value::Object(o) = v {
                merged.extend(o);
            }
        }
        return Value::Object(merged);
    }
    let mut joined = Vec::new();
    for v in values {
        match v {
            Value::Array(items) => joined.extend(items),
            other => joined.push(other),
        }
    }
    Value::Array(joined)
}

/// `SPLIT_TO_MAP`: entries split by `entry`, each split by `kv` into a key and a value (entries
/// without `kv` skipped; the last of a repeated key wins).
fn split_to_map(input: &str, entry: &str, kv: &str) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for e in input.split(entry).filter(|e| !e.is_empty()) {
        let mut parts = e.split(kv);
        if let (Some(k), Some(v)) = (parts.next(), parts.next()) {
            pairs.retain(|(key, _)| key != k);
            pairs.push((k.to_string(), v.to_string()));
        }
    }
    pairs
}

impl ScalarUDFImpl for JsonFn {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(match self.kind {
            Kind::IsJsonString | Kind::ArrayContains => DataType::Boolean,
            Kind::ArrayLength => DataType::Int32,
            Kind::Concat => DataType::Utf8,
            Kind::Items | Kind::Keys => SqlType::Array(Box::new(SqlType::String)).to_arrow(),
            Kind::Records | Kind::SplitToMap => string_map_type(),
        })
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let rows = args.number_rows;
        if arrays.is_empty() {
            return exec_err!("{} needs an argument", self.name.to_uppercase());
        }
        let first = texts(&arrays, 0)?;
        let out: ArrayRef = match self.kind {
            Kind::IsJsonString => {
                let mut b = BooleanBuilder::with_capacity(rows);
                (0..rows).for_each(|i| b.append_value(parse(&first, i).is_some()));
                Arc::new(b.finish())
            }
            Kind::ArrayContains => {
                let mut b = BooleanBuilder::with_capacity(rows);
                for i in 0..rows {
                    let found = match parse(&first, i) {
                        Some(Value::Array(items)) => {
                            let w = wanted(&arrays[1], i)?;
                            items.iter().any(|v| same(v, &w))
                        }
                        _ => false,
                    };
                    b.append_value(found);
                }
                Arc::new(b.finish())
            }
            Kind::ArrayLength => {
                let mut b = Int32Builder::with_capacity(rows);
                for i in 0..rows {
                    match parse(&first, i) {
                        Some(Value::Array(items)) => b.append_value(items.len() as i32),
                        _ => b.append_null(),
                    }
                }
                Arc::new(b.finish())
            }
            Kind::Concat => {
                let all: Vec<StringArray> = (0..arrays.len()).map(|j| texts(&arrays, j)).collect::<Result<_>>()?;
                let mut b = StringBuilder::with_capacity(rows, rows * 16);
                for i in 0..rows {
                    let values: Option<Vec<Value>> = all.iter().map(|a| parse(a, i)).collect();
                    b.append_option(values.map(|v| concat(v).to_string()));
                }
                Arc::new(b.finish())
            }
            Kind::Items | Kind::Keys => {
                let mut b = ListBuilder::new(StringBuilder::new());
                for i in 0..rows {
                    match (self.kind, parse(&first, i)) {
                        (Kind::Items, Some(Value::Array(items))) => {
                            items.iter().for_each(|v| b.values().append_value(v.to_string()));
                            b.append(true);
                        }
                        (Kind::Keys, Some(Value::Object(o))) => {
                            o.keys().for_each(|k| b.values().append_value(k));
                            b.append(true);
                        }
                        _ => b.append(false),
                    }
                }
                Arc::new(b.finish())
            }
            Kind::Records => {
                let mut b = string_map_builder();
                for i in 0..rows {
                    match parse(&first, i) {
                        Some(Value::Object(o)) => {
                            for (k, v) in &o {
                                b.keys().append_value(k);
                                b.values().append_value(shown(v));
                            }
                            b.append(true)?;
                        }
                        _ => b.append(false)?,
                    }
                }
                Arc::new(b.finish())
            }
            Kind::SplitToMap => {
                let (entry, kv) = (texts(&arrays, 1)?, texts(&arrays, 2)?);
                let mut b = string_map_builder();
                for i in 0..rows {
                    match (text(&first, i), text(&entry, i), text(&kv, i)) {
                        (Some(s), Some(e), Some(k)) if !e.is_empty() && !k.is_empty() => {
                            for (key, value) in split_to_map(s, e, k) {
                                b.keys().append_value(key);
                                b.values().append_value(value);
                            }
                            b.append(true)?;
                        }
                        _ => b.append(false)?,
                    }
                }
                Arc::new(b.finish())
            }
        };
        Ok(ColumnarValue::Array(out))
    }
}

/// The functions, for registration.
pub fn all() -> Vec<ScalarUDF> {
    let one = || Signature::any(1, Volatility::Immutable);
    [
        ("is_json_string", Kind::IsJsonString, one()),
        ("json_array_contains", Kind::ArrayContains, Signature::any(2, Volatility::Immutable)),
        ("json_array_length", Kind::ArrayLength, one()),
        ("json_concat", Kind::Concat, Signature::variadic_any(Volatility::Immutable)),
        ("json_items", Kind::Items, one()),
        ("json_keys", Kind::Keys, one()),
        ("json_records", Kind::Records, one()),
        ("split_to_map", Kind::SplitToMap, Signature::any(3, Volatility::Immutable)),
    ]
    .into_iter()
    .map(|(name, kind, signature)| ScalarUDF::new_from_impl(JsonFn { name, kind, signature }))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(texts: &[&str]) -> Vec<Value> {
        texts.iter().map(|t| serde_json::from_str(t).unwrap()).collect()
    }

    #[test]
    fn concat_merges_objects_and_joins_everything_else() {
        assert_eq!(concat(parsed(&[r#"{"a": {"5": 6}}"#, r#"{"a": {"3": 4}}"#])).to_string(), r#"{"a":{"3":4}}"#);
        assert_eq!(concat(parsed(&["[1, 2]", r#"{"a": 1}"#, "4"])).to_string(), r#"[1,2,{"a":1},4]"#);
        assert_eq!(concat(parsed(&["null", "null"])).to_string(), "[null,null]");
        assert_eq!(concat(parsed(&["[1, [2]]", "[[[3]], [[[4]]]]"])).to_string(), "[1,[2],[[3]],[[[4]]]]");
    }

    #[test]
    fn split_to_map_skips_entries_without_a_separator() {
        let pairs = |s, e, k| split_to_map(s, e, k).into_iter().map(|(a, b)| format!("{a}={b}")).collect::<Vec<_>>();
        assert_eq!(pairs("apple:green//banana:yellow/", "/", ":"), ["apple=green", "banana=yellow"]);
        assert_eq!(pairs("apple:green/banana:yellow", "&&", ":"), ["apple=green/banana"]);
        assert!(pairs("apple:green", "/", "=").is_empty());
        assert_eq!(pairs("a:1/a:2", "/", ":"), ["a=2"]);
    }

    #[test]
    fn array_contains_compares_numbers_by_value() {
        assert!(same(&Value::from(1), &serde_json::from_str::<Value>("1.0").unwrap()));
        assert!(!same(&Value::from("1"), &Value::from(1)));
    }
}
