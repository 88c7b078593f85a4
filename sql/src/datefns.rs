//! ksqlDB's date and time arithmetic and conversions:
//! * `DATEADD` / `DATESUB` (DATE), `TIMEADD` / `TIMESUB` (TIME, wrapping at midnight),
//!   `TIMESTAMPADD` / `TIMESTAMPSUB` (TIMESTAMP): `f(unit, n, value)`, the unit a keyword
//!   (`DAYS`, `HOURS`, ... `MILLISECONDS`) that the planner passes as text;
//! * `UNIX_DATE([date])` (days, INT) and `UNIX_TIMESTAMP([ts])` (milliseconds, BIGINT), now
//!   without an argument; `FROM_DAYS(n)` (DATE) and `FROM_UNIXTIME(ms)` (TIMESTAMP);
//! * `CONVERT_TZ(ts, from, to)`: a TIMESTAMP read in zone `from` rewritten in zone `to` (IANA
//!   names or offsets such as `+0200`).

use arrow::array::{Array, ArrayRef, AsArray, Int64Array};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int64Type, TimeUnit};
use chrono::{FixedOffset, Offset, TimeZone};
use datafusion::common::{exec_err, Result, ScalarValue};
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility};

use crate::types::SqlType;

const DAY_MS: i64 = 86_400_000;

/// The unit keywords of the arithmetic functions, in milliseconds.
pub const UNITS: &[(&str, i64)] = &[
    ("MILLISECONDS", 1),
    ("MILLISECOND", 1),
    ("SECONDS", 1_000),
    ("SECOND", 1_000),
    ("MINUTES", 60_000),
    ("MINUTE", 60_000),
    ("HOURS", 3_600_000),
    ("HOUR", 3_600_000),
    ("DAYS", DAY_MS),
    ("DAY", DAY_MS),
];

/// The functions whose first argument is a unit keyword.
pub const WITH_UNIT: &[&str] = &["DATEADD", "DATESUB", "TIMEADD", "TIMESUB", "TIMESTAMPADD", "TIMESTAMPSUB"];

fn timestamp() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, None)
}

/// ksqlDB's name of a type, for messages.
fn type_name(t: &DataType) -> String {
    match t {
        DataType::Null => "NULL".into(),
        t => SqlType::from_arrow(t).map(|s| s.to_string()).unwrap_or_else(|| t.to_string()),
    }
}

/// ksqlDB's message for arguments a function has no variant for.
fn not_accepted(name: &str, arg_types: &[DataType]) -> datafusion::common::DataFusionError {
    let types: Vec<String> = arg_types.iter().map(type_name).collect();
    datafusion::common::DataFusionError::Plan(format!(
        "Function '{name}' does not accept parameters ({}).",
        types.join(", ")
    ))
}

/// Each row's value of an argument as epoch milliseconds (DATE: its midnight; TIME: since
/// midnight).
fn millis_of(a: &ArrayRef) -> Result<Int64Array> {
    let ms = match a.data_type() {
        DataType::Date32 => {
            let days = cast(a, &DataType::Int64)?;
            days.as_primitive::<Int64Type>().unary(|d: i64| d * DAY_MS)
        }
        _ => cast(a, &DataType::Int64)?.as_primitive::<Int64Type>().clone(),
    };
    Ok(ms)
}

/// The same values as a column of `t` (DATE from days; TIME and TIMESTAMP from milliseconds).
fn as_type(values: Int64Array, t: &DataType) -> Result<ArrayRef> {
    Ok(match t {
        DataType::Date32 => cast(&values, &DataType::Int32).and_then(|d| cast(&d, t))?,
        DataType::Time32(_) => cast(&values, &DataType::Int32).and_then(|d| cast(&d, t))?,
        t => cast(&values, t)?,
    })
}

/// `DATEADD`, `DATESUB`, `TIMEADD`, `TIMESUB`, `TIMESTAMPADD`, `TIMESTAMPSUB`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct TimeArith {
    name: &'static str,
    target: DataType,
    subtract: bool,
    signature: Signature,
}

impl ScalarUDFImpl for TimeArith {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        let ok = matches!(arg_types, [DataType::Utf8, n, t]
            if (n.is_integer() || n == &DataType::Null) && (t == &self.target || t == &DataType::Null));
        if !ok {
            return Err(not_accepted(self.name, arg_types));
        }
        Ok(self.target.clone())
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let unit = match &args.args[0] {
            ColumnarValue::Scalar(ScalarValue::Utf8(Some(u))) => u.to_uppercase(),
            _ => return exec_err!("{}: the unit must be a keyword such as DAYS", self.name),
        };
        let Some(&(_, unit_ms)) = UNITS.iter().find(|(u, _)| *u == unit) else {
            return exec_err!("{}: unknown time unit {unit}", self.name);
        };
        let arrays = ColumnarValue::values_to_arrays(&args.args[1..])?;
        let n = cast(&arrays[0], &DataType::Int64)?;
        let n = n.as_primitive::<Int64Type>();
        let values = millis_of(&arrays[1])?;
        let sign = if self.subtract { -1 } else { 1 };
        let sum: Int64Array = arrow::compute::binary(&values, n, |v, n| v + sign * n * unit_ms)?;
        let out = match self.target {
            DataType::Date32 => sum.unary(|ms: i64| ms.div_euclid(DAY_MS)),
            DataType::Time32(_) => sum.unary(|ms: i64| ms.rem_euclid(DAY_MS)),
            _ => sum,
        };
        Ok(ColumnarValue::Array(as_type(out, &self.target)?))
    }
}

/// `UNIX_DATE`, `UNIX_TIMESTAMP`, `FROM_DAYS`, `FROM_UNIXTIME`: one type to another, the same
/// count (of days or milliseconds); without an argument (the first two), now.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Convert {
    name: &'static str,
    input: DataType,
    output: DataType,
    signature: Signature,
}

impl ScalarUDFImpl for Convert {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        let now = arg_types.is_empty() && matches!(self.input, DataType::Date32 | DataType::Timestamp(..));
        let ok = match arg_types {
            [t] => t == &self.input || t == &DataType::Null || (self.input.is_integer() && t.is_integer()),
            _ => now,
        };
        if !ok {
            return Err(not_accepted(self.name, arg_types));
        }
        Ok(self.output.clone())
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let Some(arg) = args.args.first() else {
            let ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0);
            let count = if self.input == DataType::Date32 { ms / DAY_MS } else { ms };
            let value = Int64Array::from(vec![count; args.number_rows]);
            return Ok(ColumnarValue::Array(as_type(value, &self.output)?));
        };
        let a = arg.to_array(args.number_rows)?;
        let counts = cast(&a, &DataType::Int64)?.as_primitive::<Int64Type>().clone();
        Ok(ColumnarValue::Array(as_type(counts, &self.output)?))
    }
}

/// A zone as ksqlDB's `ZoneId.of` reads it: an IANA name, `UTC`/`GMT`/`Z`, or an offset
/// (`+02`, `+0200`, `+02:00`, optionally after `UTC` or `GMT`).
fn zone(text: &str) -> Option<Zone> {
    if let Ok(tz) = text.parse::<chrono_tz::Tz>() {
        return Some(Zone::Named(tz));
    }
    let rest = text.strip_prefix("UTC").or_else(|| text.strip_prefix("GMT")).unwrap_or(text);
    if rest.is_empty() || rest == "Z" {
        return FixedOffset::east_opt(0).map(Zone::Fixed);
    }
    let (sign, digits) = match rest.as_bytes().first()? {
        b'+' => (1, &rest[1..]),
        b'-' => (-1, &rest[1..]),
        _ => return None,
    };
    let digits = digits.replace(':', "");
    if !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let (h, m) = match digits.len() {
        1 | 2 => (digits.parse::<i32>().ok()?, 0),
        4 => (digits[..2].parse::<i32>().ok()?, digits[2..].parse::<i32>().ok()?),
        _ => return None,
    };
    FixedOffset::east_opt(sign * (h * 3600 + m * 60)).map(Zone::Fixed)
}

#[derive(Clone, Copy)]
enum Zone {
    Named(chrono_tz::Tz),
    Fixed(FixedOffset),
}

impl Zone {
    /// The zone's offset from UTC at the instant `ms`, in milliseconds.
    fn offset_ms(&self, ms: i64) -> Option<i64> {
        let t = chrono::DateTime::from_timestamp_millis(ms)?.naive_utc();
        let seconds = match self {
            Zone::Named(tz) => tz.offset_from_utc_datetime(&t).fix().local_minus_utc(),
            Zone::Fixed(f) => f.local_minus_utc(),
        };
        Some(seconds as i64 * 1000)
    }
}

/// `CONVERT_TZ(ts, from, to)`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct ConvertTz {
    signature: Signature,
}

impl ScalarUDFImpl for ConvertTz {
    fn name(&self) -> &str {
        "convert_tz"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        let text = |t: &DataType| matches!(t, DataType::Utf8 | DataType::Null);
        match arg_types {
            [t, a, b] if (t == &timestamp() || t == &DataType::Null) && text(a) && text(b) => Ok(timestamp()),
            _ => Err(not_accepted("convert_tz", arg_types)),
        }
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let ms = millis_of(&arrays[0])?;
        let (from, to) = (cast(&arrays[1], &DataType::Utf8)?, cast(&arrays[2], &DataType::Utf8)?);
        let (from, to) = (from.as_string::<i32>(), to.as_string::<i32>());
        let read = |texts: &arrow::array::StringArray, i: usize| -> Result<Option<Zone>> {
            if texts.is_null(i) {
                return Ok(None);
            }
            match zone(texts.value(i)) {
                Some(z) => Ok(Some(z)),
                None => exec_err!("Unknown time zone: '{}'", texts.value(i)),
            }
        };
        let mut out = Vec::with_capacity(ms.len());
        for i in 0..ms.len() {
            let (Some(f), Some(t)) = (read(from, i)?, read(to, i)?) else {
                out.push(None);
                continue;
            };
            out.push(ms.is_valid(i).then(|| ms.value(i)).and_then(|v| Some(v + t.offset_ms(v)? - f.offset_ms(v)?)));
        }
        Ok(ColumnarValue::Array(as_type(Int64Array::from(out), &timestamp())?))
    }
}

/// The functions, for registration.
pub fn all() -> Vec<ScalarUDF> {
    let any = |n: usize| Signature::any(n, Volatility::Immutable);
    let mut fns = Vec::new();
    for (add, sub, target) in [
        ("dateadd", "datesub", DataType::Date32),
        ("timeadd", "timesub", DataType::Time32(TimeUnit::Millisecond)),
        ("timestampadd", "timestampsub", timestamp()),
    ] {
        for (name, subtract) in [(add, false), (sub, true)] {
            fns.push(ScalarUDF::new_from_impl(TimeArith { name, target: target.clone(), subtract, signature: any(3) }));
        }
    }
    let now_or_one = || {
        Signature::one_of(
            vec![datafusion::logical_expr::TypeSignature::Nullary, datafusion::logical_expr::TypeSignature::Any(1)],
            Volatility::Volatile,
        )
    };
    for (name, input, output, signature) in [
        ("unix_date", DataType::Date32, DataType::Int32, now_or_one()),
        ("unix_timestamp", timestamp(), DataType::Int64, now_or_one()),
        ("from_days", DataType::Int32, DataType::Date32, any(1)),
        ("from_unixtime", DataType::Int64, timestamp(), any(1)),
    ] {
        fns.push(ScalarUDF::new_from_impl(Convert { name, input, output, signature }));
    }
    fns.push(ScalarUDF::new_from_impl(ConvertTz { signature: any(3) }));
    fns
}

/// Checks a unit keyword at planning time (for the planner's rewrite).
pub fn is_unit(word: &str) -> bool {
    UNITS.iter().any(|(u, _)| u.eq_ignore_ascii_case(word))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn call(name: &str, args: Vec<ColumnarValue>, rows: usize) -> Result<ArrayRef> {
        let udf = all().into_iter().find(|u| u.name() == name).unwrap();
        let arg_fields =
            args.iter().map(|a| Arc::new(arrow::datatypes::Field::new("a", a.data_type(), true))).collect();
        let types: Vec<DataType> = args.iter().map(|a| a.data_type()).collect();
        let return_field = Arc::new(arrow::datatypes::Field::new("r", udf.return_type(&types)?, true));
        udf.invoke_with_args(ScalarFunctionArgs {
            args,
            arg_fields,
            number_rows: rows,
            return_field,
            config_options: Arc::new(Default::default()),
        })?
        .to_array(rows)
    }

    fn unit(u: &str) -> ColumnarValue {
        ColumnarValue::Scalar(ScalarValue::Utf8(Some(u.into())))
    }

    fn ints(v: Vec<Option<i32>>) -> ColumnarValue {
        ColumnarValue::Array(Arc::new(arrow::array::Int32Array::from(v)))
    }

    #[test]
    fn arithmetic_keeps_each_type_in_range() {
        let dates = ColumnarValue::Array(
            cast(&arrow::array::Int32Array::from(vec![Some(5), None, Some(2)]), &DataType::Date32).unwrap(),
        );
        let out = call("dateadd", vec![unit("DAYS"), ints(vec![Some(-5), Some(1), None]), dates.clone()], 3).unwrap();
        assert_eq!(
            cast(&out, &DataType::Int32)
                .unwrap()
                .as_primitive::<arrow::datatypes::Int32Type>()
                .iter()
                .collect::<Vec<_>>(),
            [Some(0), None, None]
        );
        // Milliseconds within a day leave a date where it is.
        let out = call("datesub", vec![unit("MILLISECONDS"), ints(vec![Some(5), Some(5), Some(5)]), dates], 3).unwrap();
        assert_eq!(
            cast(&out, &DataType::Int32)
                .unwrap()
                .as_primitive::<arrow::datatypes::Int32Type>()
                .iter()
                .collect::<Vec<_>>(),
            [Some(4), None, Some(1)]
        );
        // TIME wraps at midnight.
        let times = ColumnarValue::Array(
            cast(&arrow::array::Int32Array::from(vec![86_399_995, 2]), &DataType::Time32(TimeUnit::Millisecond))
                .unwrap(),
        );
        let out = call("timeadd", vec![unit("MILLISECONDS"), ints(vec![Some(10), Some(-5)]), times], 2).unwrap();
        assert_eq!(
            cast(&out, &DataType::Int32).unwrap().as_primitive::<arrow::datatypes::Int32Type>().values(),
            &[5, 86_399_997]
        );
        // The first argument must be a unit (ksqlDB's message otherwise).
        let udf = all().into_iter().find(|u| u.name() == "dateadd").unwrap();
        let e = udf.return_type(&[DataType::Date32, DataType::Int32, DataType::Date32]).unwrap_err();
        assert!(e.to_string().contains("Function 'dateadd' does not accept parameters (DATE, INTEGER, DATE)."), "{e}");
    }

    #[test]
    fn time_zones_convert_by_name_or_offset() {
        let ts = ColumnarValue::Array(
            cast(&Int64Array::from(vec![Some(100), Some(1_589_234_313_000), None]), &timestamp()).unwrap(),
        );
        let text = |s: &str| ColumnarValue::Scalar(ScalarValue::Utf8(Some(s.into())));
        for (from, to) in [("+0200", "+0500"), ("America/Los_Angeles", "America/New_York"), ("UTC", "+03:00")] {
            let out = call("convert_tz", vec![ts.clone(), text(from), text(to)], 3).unwrap();
            let out = cast(&out, &DataType::Int64).unwrap();
            assert_eq!(
                out.as_primitive::<Int64Type>().iter().collect::<Vec<_>>(),
                [Some(10_800_100), Some(1_589_245_113_000), None],
                "{from} -> {to}"
            );
        }
        assert!(call("convert_tz", vec![ts, text("Mars/Olympus"), text("UTC")], 3).is_err());
    }

    #[test]
    fn conversions_count_days_and_milliseconds() {
        let out = call("from_days", vec![ints(vec![Some(10), Some(-10), None])], 3).unwrap();
        assert_eq!(out.data_type(), &DataType::Date32);
        let back = call("unix_date", vec![ColumnarValue::Array(out)], 3).unwrap();
        assert_eq!(
            back.as_primitive::<arrow::datatypes::Int32Type>().iter().collect::<Vec<_>>(),
            [Some(10), Some(-10), None]
        );
        // Without an argument: now (after 2020-01-01).
        let now = call("unix_timestamp", vec![], 2).unwrap();
        assert!(now.as_primitive::<Int64Type>().values().iter().all(|&ms| ms > 1_577_836_800_000));
    }
}
