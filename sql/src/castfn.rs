//! `CAST(x AS ARRAY<..> | MAP<..> | STRUCT<..>)` with ksqlDB's rules. The parser rewrites such a
//! cast to `RILL_CAST(x, 'type')` (sqlparser does not read ksqlDB's `MAP<..>` and `STRUCT<..>`
//! types, and ksqlDB casts differently from arrow in places):
//!
//! * struct to struct matches fields by name: fields the source lacks are null;
//! * arrays, maps and struct fields cast element by element;
//! * BIGINT to INT wraps around as Java's narrowing does (2147483648 becomes -2147483648);
//! * a cast between a complex type and a different kind of type is refused when planned;
//! * a STRUCT or MAP cast to STRING is written as Java writes them (`Struct{F0=1,F1=3}`,
//!   `{k=1, k2=2}`): [`java_text_udf`], put in place of such casts by the planner.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int32Array, ListArray, MapArray, StructArray};
use arrow::datatypes::{DataType, Field, FieldRef, Int64Type};
use datafusion::common::{exec_err, plan_err, Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

use crate::types::SqlType;

/// The function the parser rewrites complex casts to.
pub const NAME: &str = "rill_cast";

#[derive(Debug, PartialEq, Eq, Hash)]
struct RillCast {
    signature: Signature,
}

/// The target type named by the second argument.
fn target(args: &ReturnFieldArgs) -> Result<(SqlType, DataType)> {
    let Some(Some(ScalarValue::Utf8(Some(text)))) = args.scalar_arguments.get(1) else {
        return plan_err!("{NAME} takes the target type as a string literal");
    };
    match crate::parser::parse_type(text) {
        Ok(t) => {
            let arrow = t.to_arrow();
            Ok((t, arrow))
        }
        Err(e) => plan_err!("{NAME}: {e}"),
    }
}

impl ScalarUDFImpl for RillCast {
    fn name(&self) -> &str {
        NAME
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        plan_err!("{NAME}: the type comes from the arguments")
    }
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let (sql, to) = target(&args)?;
        let from = args.arg_fields[0].data_type();
        let kind = |t: &DataType| match t {
            DataType::List(_) | DataType::LargeList(_) => 1,
            DataType::Map(_, _) => 2,
            DataType::Struct(_) => 3,
            DataType::Null => 0,
            _ => 4,
        };
        if kind(from) != 0 && kind(from) != kind(&to) {
            let from = SqlType::from_arrow(from).map_or_else(|| from.to_string(), |t| t.to_string());
            return plan_err!("Cast of {from} to {sql} is not supported");
        }
        Ok(Arc::new(Field::new(NAME, to, true)))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let to = args.return_field.data_type().clone();
        let rows = args.number_rows;
        let array = args.args[0].to_array(rows)?;
        Ok(ColumnarValue::Array(cast(&array, &to)?))
    }
}

/// Casts `array` to `to` with ksqlDB's rules (see the module docs).
fn cast(array: &ArrayRef, to: &DataType) -> Result<ArrayRef> {
    if array.data_type() == to {
        return Ok(array.clone());
    }
    if array.data_type() == &DataType::Null {
        return Ok(arrow::array::new_null_array(to, array.len()));
    }
    match (array.data_type(), to) {
        (DataType::Int64, DataType::Int32) => {
            let wrapped: Int32Array = array.as_primitive::<Int64Type>().unary(|v| v as i32);
            Ok(Arc::new(wrapped))
        }
        (DataType::List(_), DataType::List(item)) => {
            let list = array.as_list::<i32>();
            let values = cast(list.values(), item.data_type())?;
            Ok(Arc::new(ListArray::try_new(item.clone(), list.offsets().clone(), values, list.nulls().cloned())?))
        }
        (DataType::Map(_, _), DataType::Map(entries, sorted)) => {
            let map = array.as_map();
            let DataType::Struct(fields) = entries.data_type() else {
                return exec_err!("{NAME}: a map's entries are not a struct");
            };
            let keys = cast(map.keys(), fields[0].data_type())?;
            let values = cast(map.values(), fields[1].data_type())?;
            let entries_array = StructArray::try_new(fields.clone(), vec![keys, values], None)?;
            Ok(Arc::new(MapArray::try_new(
                entries.clone(),
                map.offsets().clone(),
                entries_array,
                map.nulls().cloned(),
                *sorted,
            )?))
        }
        (DataType::Struct(_), DataType::Struct(fields)) => {
            let source = array.as_struct();
            let columns = fields
                .iter()
                .map(|f| match source.column_by_name(f.name()) {
                    Some(c) => cast(c, f.data_type()),
                    None => Ok(arrow::array::new_null_array(f.data_type(), array.len())),
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(Arc::new(StructArray::try_new(fields.clone(), columns, source.nulls().cloned())?))
        }
        _ => Ok(arrow::compute::cast(array, to)?),
    }
}

/// The function a STRUCT or MAP cast to STRING becomes.
pub const JAVA_TEXT: &str = "rill_java_text";

#[derive(Debug, PartialEq, Eq, Hash)]
struct JavaText {
    signature: Signature,
}

impl ScalarUDFImpl for JavaText {
    fn name(&self) -> &str {
        JAVA_TEXT
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let array = args.args[0].to_array(args.number_rows)?;
        let mut out = arrow::array::StringBuilder::with_capacity(array.len(), array.len() * 16);
        for i in 0..array.len() {
            if array.is_null(i) {
                out.append_null();
            } else {
                out.append_value(java_text(&ScalarValue::try_from_array(&array, i)?)?);
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// A value as Java's `toString` writes it: Kafka Connect's `Struct{F=v,...}` (null fields left
/// out), maps `{k=v, ...}`, lists `[a, b]`, doubles with a decimal point, `null`.
fn java_text(v: &ScalarValue) -> Result<String> {
    if v.is_null() {
        return Ok("null".into());
    }
    let items = |array: &ArrayRef| -> Result<Vec<String>> {
        (0..array.len()).map(|i| java_text(&ScalarValue::try_from_array(array, i)?)).collect()
    };
    Ok(match v {
        ScalarValue::Struct(s) => {
            let mut fields = Vec::new();
            for (f, c) in s.fields().iter().zip(s.columns()) {
                if c.is_valid(0) {
                    fields.push(format!("{}={}", f.name(), java_text(&ScalarValue::try_from_array(c, 0)?)?));
                }
            }
            format!("Struct{{{}}}", fields.join(","))
        }
        ScalarValue::Map(m) => {
            let entries = m.value(0);
            let (keys, values) = (items(entries.column(0))?, items(entries.column(1))?);
            let pairs: Vec<String> = keys.iter().zip(&values).map(|(k, v)| format!("{k}={v}")).collect();
            format!("{{{}}}", pairs.join(", "))
        }
        ScalarValue::List(l) => format!("[{}]", items(&l.value(0))?.join(", ")),
        ScalarValue::Float64(Some(f)) if f.is_finite() && f.fract() == 0.0 => format!("{f:.1}"),
        ScalarValue::Utf8(Some(t)) | ScalarValue::Utf8View(Some(t)) | ScalarValue::LargeUtf8(Some(t)) => t.clone(),
        other => other.to_string(),
    })
}

/// The function a STRING's cast to DATE reads it through: ksqlDB takes partial dates, a year
/// (`'1970'`) or a year and month (`'1970-01'`), as their first day.
pub const PARTIAL_DATE: &str = "rill_partial_date";

#[derive(Debug, PartialEq, Eq, Hash)]
struct PartialDate {
    signature: Signature,
}

impl ScalarUDFImpl for PartialDate {
    fn name(&self) -> &str {
        PARTIAL_DATE
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let array = arrow::compute::cast(&args.args[0].to_array(args.number_rows)?, &DataType::Utf8)?;
        let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
        let out: arrow::array::StringArray = array
            .as_string::<i32>()
            .iter()
            .map(|v| {
                v.map(|t| match (t.len(), t.split_once('-')) {
                    (4, None) if digits(t) => format!("{t}-01-01"),
                    (7, Some((y, m))) if y.len() == 4 && digits(y) && digits(m) => format!("{t}-01"),
                    _ => t.to_string(),
                })
            })
            .collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// The partial-date UDF (see [`PARTIAL_DATE`]).
pub fn partial_date_udf() -> ScalarUDF {
    ScalarUDF::new_from_impl(PartialDate { signature: Signature::any(1, Volatility::Immutable) })
}

/// The Java-text UDF, for registration.
pub fn java_text_udf() -> ScalarUDF {
    ScalarUDF::new_from_impl(JavaText { signature: Signature::any(1, Volatility::Immutable) })
}

/// The UDF, for registration.
pub fn udf() -> ScalarUDF {
    ScalarUDF::new_from_impl(RillCast { signature: Signature::any(2, Volatility::Immutable) })
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::Fields;

    use super::*;

    #[test]
    fn structs_and_maps_are_written_as_java_writes_them() {
        let fields =
            Fields::from(vec![Field::new("F0", DataType::Int32, true), Field::new("f1", DataType::Utf8, true)]);
        let s = StructArray::try_new(
            fields,
            vec![
                Arc::new(Int32Array::from(vec![Some(1), None])) as ArrayRef,
                Arc::new(StringArray::from(vec![Some("a"), Some("b")])) as ArrayRef,
            ],
            None,
        )
        .unwrap();
        let array: ArrayRef = Arc::new(s);
        let text = |i| java_text(&ScalarValue::try_from_array(&array, i).unwrap()).unwrap();
        assert_eq!(text(0), "Struct{F0=1,f1=a}");
        assert_eq!(text(1), "Struct{f1=b}", "null fields are left out");
        assert_eq!(java_text(&ScalarValue::Float64(Some(2.0))).unwrap(), "2.0");
        assert_eq!(java_text(&ScalarValue::Int32(None)).unwrap(), "null");
    }

    #[test]
    fn structs_cast_by_field_name_and_numbers_wrap() {
        let source = StructArray::from(vec![
            (
                Arc::new(Field::new("F0", DataType::Int64, true)),
                Arc::new(Int64Array::from(vec![1, 2_147_483_648])) as ArrayRef,
            ),
            (Arc::new(Field::new("F1", DataType::Utf8, true)), Arc::new(StringArray::from(vec!["a", "b"])) as ArrayRef),
        ]);
        let to = DataType::Struct(Fields::from(vec![
            Field::new("F0", DataType::Int32, true),
            Field::new("F3", DataType::Utf8, true),
        ]));
        let out = cast(&(Arc::new(source) as ArrayRef), &to).unwrap();
        let out = out.as_struct();
        assert_eq!(out.column(0).as_primitive::<arrow::datatypes::Int32Type>().values(), &[1, -2_147_483_648]);
        assert_eq!(out.column(1).null_count(), 2);
    }
}
