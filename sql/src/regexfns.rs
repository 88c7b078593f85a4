//! ksqlDB's `REGEXP_EXTRACT(pattern, s [, group])` (the first match, or its group),
//! `REGEXP_EXTRACT_ALL(pattern, s [, group])` (every match), `REGEXP_SPLIT_TO_ARRAY` and `SPLIT`
//! (strings or bytes), with the `regex` crate. A pattern that does not compile, or a group it
//! lacks, gives null.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, ListBuilder, StringArray, StringBuilder};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field};
use datafusion::common::Result;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature, Volatility,
};
use regex::Regex;

#[derive(Debug, PartialEq, Eq, Hash)]
struct RegexpExtract {
    all: bool,
    signature: Signature,
}

/// The two functions.
pub fn all() -> Vec<ScalarUDF> {
    [false, true]
        .into_iter()
        .map(|all| {
            let signature =
                Signature::one_of(vec![TypeSignature::Any(2), TypeSignature::Any(3)], Volatility::Immutable);
            ScalarUDF::from(RegexpExtract { all, signature })
        })
        .collect()
}

/// The text of group `group` of every match of `re` in `s` (only the first unless `all`).
fn matches(re: &Regex, s: &str, group: usize, all: bool) -> Vec<String> {
    let found = re.captures_iter(s).filter_map(|c| c.get(group).map(|m| m.as_str().to_string()));
    if all {
        found.collect()
    } else {
        found.take(1).collect()
    }
}

impl ScalarUDFImpl for RegexpExtract {
    fn name(&self) -> &str {
        if self.all {
            "regexp_extract_all"
        } else {
            "regexp_extract"
        }
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(if self.all { DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))) } else { DataType::Utf8 })
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let patterns = cast(&arrays[0], &DataType::Utf8)?;
        let texts = cast(&arrays[1], &DataType::Utf8)?;
        let groups = arrays.get(2).map(|g| cast(g, &DataType::Int64)).transpose()?;
        let (patterns, texts) = (patterns.as_string::<i32>(), texts.as_string::<i32>());
        let mut compiled: Option<(String, Option<Regex>)> = None;
        let mut rows = Vec::with_capacity(texts.len());
        for i in 0..texts.len() {
            let group = match &groups {
                Some(g) if g.is_null(i) => None,
                Some(g) => usize::try_from(g.as_primitive::<arrow::datatypes::Int64Type>().value(i)).ok(),
                None => Some(0),
            };
            if patterns.is_null(i) || texts.is_null(i) || group.is_none() {
                rows.push(None);
                continue;
            }
            let pattern = patterns.value(i);
            if compiled.as_ref().is_none_or(|(p, _)| p != pattern) {
                compiled = Some((pattern.to_string(), Regex::new(pattern).ok()));
            }
            let re = compiled.as_ref().and_then(|(_, r)| r.as_ref());
            rows.push(re.map(|re| matches(re, texts.value(i), group.unwrap_or(0), self.all)));
        }
        let out: ArrayRef = if self.all {
            let mut b = ListBuilder::new(StringBuilder::new());
            for r in rows {
                match r {
                    Some(found) => {
                        found.iter().for_each(|f| b.values().append_value(f));
                        b.append(true);
                    }
                    None => b.append(false),
                }
            }
            Arc::new(b.finish())
        } else {
            Arc::new(rows.into_iter().map(|r| r.and_then(|f| f.into_iter().next())).collect::<StringArray>())
        };
        Ok(ColumnarValue::Array(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_matches_and_groups() {
        let re = Regex::new(r"(\w+) (\w*)").unwrap();
        assert_eq!(matches(&re, "steven zhang andy coates", 2, true), vec!["zhang", "coates"]);
        assert_eq!(matches(&re, "steven zhang andy coates", 1, false), vec!["steven"]);
        assert!(matches(&Regex::new("test.").unwrap(), "anothertest", 0, false).is_empty());
    }
}

/// `SPLIT(s, delimiter)` on strings or bytes (an empty delimiter splits every character or
/// byte; empty parts are kept) and `REGEXP_SPLIT_TO_ARRAY(s, pattern)`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Split {
    regex: bool,
    signature: Signature,
}

/// `SPLIT` and `REGEXP_SPLIT_TO_ARRAY`.
pub fn splits() -> Vec<ScalarUDF> {
    [false, true]
        .into_iter()
        .map(|regex| ScalarUDF::from(Split { regex, signature: Signature::any(2, Volatility::Immutable) }))
        .collect()
}

fn split_bytes<'a>(b: &'a [u8], d: &[u8]) -> Vec<&'a [u8]> {
    if d.is_empty() {
        return if b.is_empty() { vec![b] } else { b.chunks(1).collect() };
    }
    let mut parts = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i + d.len() <= b.len() {
        if &b[i..i + d.len()] == d {
            parts.push(&b[start..i]);
            i += d.len();
            start = i;
        } else {
            i += 1;
        }
    }
    parts.push(&b[start..]);
    parts
}

impl ScalarUDFImpl for Split {
    fn name(&self) -> &str {
        if self.regex {
            "regexp_split_to_array"
        } else {
            "split"
        }
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        let item = match arg_types.first() {
            Some(DataType::Binary | DataType::LargeBinary | DataType::BinaryView) if !self.regex => DataType::Binary,
            _ => DataType::Utf8,
        };
        Ok(DataType::List(Arc::new(Field::new("item", item, true))))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let bytes = !self.regex
            && matches!(arrays[0].data_type(), DataType::Binary | DataType::LargeBinary | DataType::BinaryView);
        let out: ArrayRef = if bytes {
            let (values, delims) = (cast(&arrays[0], &DataType::Binary)?, cast(&arrays[1], &DataType::Binary)?);
            let (values, delims) = (values.as_binary::<i32>(), delims.as_binary::<i32>());
            let mut b = ListBuilder::new(arrow::array::BinaryBuilder::new());
            for i in 0..values.len() {
                if values.is_null(i) || delims.is_null(i) {
                    b.append(false);
                    continue;
                }
                split_bytes(values.value(i), delims.value(i)).into_iter().for_each(|p| b.values().append_value(p));
                b.append(true);
            }
            Arc::new(b.finish())
        } else {
            let (values, delims) = (cast(&arrays[0], &DataType::Utf8)?, cast(&arrays[1], &DataType::Utf8)?);
            let (values, delims) = (values.as_string::<i32>(), delims.as_string::<i32>());
            let mut b = ListBuilder::new(StringBuilder::new());
            let mut compiled: Option<(String, Option<Regex>)> = None;
            for i in 0..values.len() {
                if values.is_null(i) || delims.is_null(i) {
                    b.append(false);
                    continue;
                }
                let (s, d) = (values.value(i), delims.value(i));
                if self.regex {
                    if compiled.as_ref().is_none_or(|(p, _)| p != d) {
                        compiled = Some((d.to_string(), Regex::new(d).ok()));
                    }
                    match compiled.as_ref().and_then(|(_, r)| r.as_ref()) {
                        Some(re) => re.split(s).for_each(|p| b.values().append_value(p)),
                        None => {
                            b.append(false);
                            continue;
                        }
                    }
                } else if s.is_empty() {
                    b.values().append_value("");
                } else if d.is_empty() {
                    s.chars().for_each(|c| b.values().append_value(c.to_string()));
                } else {
                    s.split(d).for_each(|p| b.values().append_value(p));
                }
                b.append(true);
            }
            Arc::new(b.finish())
        };
        Ok(ColumnarValue::Array(out))
    }
}

#[cfg(test)]
mod split_tests {
    use super::*;

    #[test]
    fn splits_keep_empty_parts_and_an_empty_delimiter_splits_everything() {
        assert_eq!(split_bytes(b"..a..", b"."), vec![&b""[..], b"", b"a", b"", b""]);
        assert_eq!(split_bytes(b"abc", b""), vec![&b"a"[..], b"b", b"c"]);
        assert_eq!(split_bytes(b"", b","), vec![&b""[..]]);
        assert_eq!(split_bytes(b"a$$b.c", b"$$"), vec![&b"a"[..], b"b.c"]);
    }
}
