//! ksqlDB's `REGEXP_EXTRACT(pattern, s [, group])` (the first match, or its group) and
//! `REGEXP_EXTRACT_ALL(pattern, s [, group])` (every match), with the `regex` crate. A pattern
//! that does not compile, or a group it lacks, gives null.

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
