//! ksqlDB's functions that read times from text with a Java date pattern:
//! `STRINGTOTIMESTAMP(text, pattern)` (epoch milliseconds, BIGINT), `PARSE_TIMESTAMP(text,
//! pattern)` (a TIMESTAMP), `STRINGTODATE(text, pattern)` (days since the epoch, INTEGER),
//! `PARSE_DATE(text, pattern)` (a DATE) and `PARSE_TIME(text, pattern)` (a TIME).
//! Texts without a zone are UTC; zone names (`z`) are refused rather than misread. The pattern may
//! differ from row to row; each is translated
//! once per batch (`crate::timefmt`), and the parsing is the one `TIMESTAMP_FORMAT` uses.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int32Builder, Int64Builder, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::{exec_err, Result};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature, Volatility,
};

/// What a function returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Out {
    Millis,
    Timestamp,
    Days,
    /// A DATE (`PARSE_DATE`).
    Date,
    /// A TIME (`PARSE_TIME`): the time of day alone.
    Time,
}

/// Texts that did not parse: as in ksqlDB, the function is null on those rows (and says so in
/// the log) rather than failing the whole expression.
#[derive(Default)]
struct Failures {
    rows: usize,
    first: Option<String>,
}

impl Failures {
    fn note(&mut self, text: &str, pattern: &str, error: &str) {
        self.rows += 1;
        self.first.get_or_insert_with(|| format!("'{text}' with pattern '{pattern}': {error}"));
    }

    fn report(&self, function: &str) {
        if let Some(first) = &self.first {
            tracing::warn!(function, rows = self.rows, first = %first, "texts that do not parse: null on those rows");
        }
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct ParseTime {
    name: &'static str,
    out: Out,
    signature: Signature,
}

impl ScalarUDFImpl for ParseTime {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(match self.out {
            Out::Millis => DataType::Int64,
            Out::Timestamp => DataType::Timestamp(TimeUnit::Millisecond, None),
            Out::Days => DataType::Int32,
            Out::Date => DataType::Date32,
            Out::Time => DataType::Time32(TimeUnit::Millisecond),
        })
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let texts = arrow::compute::cast(&arrays[0], &DataType::Utf8)?;
        let patterns = arrow::compute::cast(&arrays[1], &DataType::Utf8)?;
        let (texts, patterns) = (texts.as_string::<i32>(), patterns.as_string::<i32>());
        let mut formats: HashMap<&str, String> = HashMap::new();
        let mut millis = Int64Builder::with_capacity(texts.len());
        let mut failed = Failures::default();
        for i in 0..texts.len() {
            if texts.is_null(i) || patterns.is_null(i) {
                millis.append_null();
                continue;
            }
            let pattern = patterns.value(i);
            if !formats.contains_key(pattern) {
                match crate::timefmt::java_to_chrono_parse(pattern) {
                    // chrono skips a zone name when parsing: the time would be read as UTC.
                    Ok(f) if f.contains("%Z") => {
                        return exec_err!(
                        "{}: zone names (pattern letter z) cannot be parsed yet; use X or Z for an offset: '{pattern}'",
                        self.name
                    )
                    }
                    Ok(f) => formats.insert(pattern, f),
                    Err(e) => return exec_err!("{}: {e}", self.name),
                };
            }
            let text = texts.value(i);
            if self.out == Out::Time {
                match chrono::NaiveTime::parse_from_str(text, &formats[pattern]) {
                    Ok(t) => millis.append_value(t.signed_duration_since(chrono::NaiveTime::MIN).num_milliseconds()),
                    Err(e) => {
                        millis.append_null();
                        failed.note(text, pattern, &e.to_string());
                    }
                }
                continue;
            }
            if matches!(self.out, Out::Days | Out::Date) {
                // A date alone (a pattern without a time of day).
                match parse_date(text, &formats[pattern]) {
                    Ok(d) => millis.append_value(d.and_time(chrono::NaiveTime::MIN).and_utc().timestamp_millis()),
                    Err(e) => {
                        millis.append_null();
                        failed.note(text, pattern, &e.to_string());
                    }
                }
                continue;
            }
            let one = StringArray::from(vec![text]);
            let (ms, errors) = rill_engine::source::parse_timestamps(&one, &formats[pattern]);
            if let Some((_, e)) = errors.first() {
                millis.append_null();
                failed.note(text, pattern, &e.to_string());
                continue;
            }
            millis.append_option((!ms.is_null(0)).then(|| ms.value(0)));
        }
        failed.report(self.name);
        let millis = millis.finish();
        let out: ArrayRef = match self.out {
            Out::Millis => Arc::new(millis),
            Out::Timestamp => Arc::new(TimestampMillisecondArray::from(millis.iter().collect::<Vec<_>>())),
            Out::Date | Out::Time => {
                let days_or_ms = millis.unary::<_, arrow::datatypes::Int64Type>(|ms| match self.out {
                    Out::Date => ms.div_euclid(86_400_000),
                    _ => ms,
                });
                let t = self.return_type(&[])?;
                arrow::compute::cast(&arrow::compute::cast(&days_or_ms, &DataType::Int32)?, &t)?
            }
            Out::Days => {
                let mut days = Int32Builder::with_capacity(millis.len());
                for v in millis.iter() {
                    days.append_option(v.map(|ms| ms.div_euclid(86_400_000) as i32));
                }
                Arc::new(days.finish())
            }
        };
        Ok(ColumnarValue::Array(out))
    }
}

/// A date read with a chrono format; a pattern without the day (or month) reads the first
/// (as Java's formatters default them for ksqlDB).
fn parse_date(text: &str, format: &str) -> chrono::ParseResult<chrono::NaiveDate> {
    let mut parsed = chrono::format::Parsed::new();
    // Text after the date is ignored, as Java's parser does (`'2003-12-24-01-01'` is read as
    // 2003-12-24 with `yyyy-MM-dd`).
    chrono::format::parse_and_remainder(&mut parsed, text, chrono::format::StrftimeItems::new(format))?;
    if parsed.day().is_none() && parsed.ordinal().is_none() {
        parsed.set_day(1)?;
        if parsed.month().is_none() {
            parsed.set_month(1)?;
        }
    }
    parsed.to_naive_date()
}

/// The functions, for registration.
pub fn all() -> Vec<ScalarUDF> {
    let signature = || {
        Signature::one_of(
            vec![TypeSignature::Exact(vec![DataType::Utf8, DataType::Utf8]), TypeSignature::String(2)],
            Volatility::Immutable,
        )
    };
    [
        ("stringtotimestamp", Out::Millis),
        ("parse_timestamp", Out::Timestamp),
        ("stringtodate", Out::Days),
        ("parse_date", Out::Date),
        ("parse_time", Out::Time),
    ]
    .into_iter()
    .map(|(name, out)| ScalarUDF::new_from_impl(ParseTime { name, out, signature: signature() }))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(name: &str, texts: Vec<&str>, pattern: &str) -> Result<ArrayRef> {
        let udf = all().into_iter().find(|u| u.name() == name).unwrap();
        let n = texts.len();
        let args = vec![
            ColumnarValue::Array(Arc::new(StringArray::from(texts))),
            ColumnarValue::Array(Arc::new(StringArray::from(vec![pattern; n]))),
        ];
        let text_field = Arc::new(arrow::datatypes::Field::new("a", DataType::Utf8, true));
        let arg_fields = vec![text_field.clone(), text_field];
        let return_field = Arc::new(arrow::datatypes::Field::new("r", udf.return_type(&[])?, true));
        let out = udf.invoke_with_args(ScalarFunctionArgs {
            args,
            arg_fields,
            number_rows: n,
            return_field,
            config_options: Arc::default(),
        })?;
        out.into_array(n)
    }

    #[test]
    fn texts_parse_with_java_patterns() {
        let ms =
            call("stringtotimestamp", vec!["2018-05-11T21:58:33Z", "2020-05-11T21:58:33z"], "yyyy-MM-dd'T'HH:mm:ssX")
                .unwrap();
        let ms = ms.as_primitive::<arrow::datatypes::Int64Type>();
        assert_eq!(ms.values(), &[1_526_075_913_000, 1_589_234_313_000]);
        let days = call("stringtodate", vec!["11/05/2019"], "dd/MM/yyyy").unwrap();
        assert_eq!(days.as_primitive::<arrow::datatypes::Int32Type>().value(0), 18_027);
        let e = call("parse_timestamp", vec!["2018-05-11T21:58:33 PST"], "yyyy-MM-dd'T'HH:mm:ss zzz").unwrap_err();
        assert!(e.to_string().contains("zone names"), "{e}");
    }
}
