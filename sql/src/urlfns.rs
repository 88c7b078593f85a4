//! ksqlDB's URL functions: `URL_ENCODE_PARAM`, `URL_DECODE_PARAM` (form encoding: a space is `+`)
//! and `URL_EXTRACT_FRAGMENT | HOST | PARAMETER | PATH | PORT | PROTOCOL | QUERY`, which read the
//! URL with the `url` crate and answer null for what it lacks (or for a string that is no URL).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int32Array, StringArray};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use datafusion::common::Result;
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility};
use url::Url;

#[derive(Debug, PartialEq, Eq, Hash, Clone, Copy)]
enum Kind {
    EncodeParam,
    DecodeParam,
    Fragment,
    Host,
    Parameter,
    Path,
    Port,
    Protocol,
    Query,
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct UrlFn {
    kind: Kind,
    signature: Signature,
}

/// The nine functions.
pub fn all() -> Vec<ScalarUDF> {
    use Kind::*;
    [EncodeParam, DecodeParam, Fragment, Host, Parameter, Path, Port, Protocol, Query]
        .into_iter()
        .map(|kind| {
            let arity = if kind == Parameter { 2 } else { 1 };
            ScalarUDF::from(UrlFn { kind, signature: Signature::any(arity, Volatility::Immutable) })
        })
        .collect()
}

/// The path as written: `url` gives URLs of special schemes a `/` path when they have none.
fn written_path(text: &str, url: &Url) -> String {
    let after_scheme = text.split_once("://").map_or(text, |(_, rest)| rest);
    let authority_end = after_scheme.find(['/', '?', '#']).unwrap_or(after_scheme.len());
    if after_scheme[authority_end..].starts_with('/') {
        url.path().to_string()
    } else {
        String::new()
    }
}

fn extract(kind: Kind, text: &str, name: Option<&str>) -> Option<String> {
    match kind {
        Kind::EncodeParam => return Some(url::form_urlencoded::byte_serialize(text.as_bytes()).collect()),
        Kind::DecodeParam => {
            let spaced = text.replace('+', " ");
            return percent_encoding::percent_decode_str(&spaced).decode_utf8().ok().map(|s| s.into_owned());
        }
        _ => {}
    }
    let url = Url::parse(text).ok()?;
    match kind {
        Kind::Fragment => url.fragment().map(str::to_string),
        Kind::Host => url.host_str().map(str::to_string),
        Kind::Parameter => url.query_pairs().find(|(k, _)| Some(k.as_ref()) == name).map(|(_, v)| v.into_owned()),
        Kind::Path => Some(written_path(text, &url)),
        Kind::Port => url.port().map(|p| p.to_string()),
        Kind::Protocol => Some(url.scheme().to_string()),
        Kind::Query => url.query().map(str::to_string),
        Kind::EncodeParam | Kind::DecodeParam => None,
    }
}

impl ScalarUDFImpl for UrlFn {
    fn name(&self) -> &str {
        match self.kind {
            Kind::EncodeParam => "url_encode_param",
            Kind::DecodeParam => "url_decode_param",
            Kind::Fragment => "url_extract_fragment",
            Kind::Host => "url_extract_host",
            Kind::Parameter => "url_extract_parameter",
            Kind::Path => "url_extract_path",
            Kind::Port => "url_extract_port",
            Kind::Protocol => "url_extract_protocol",
            Kind::Query => "url_extract_query",
        }
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(if self.kind == Kind::Port { DataType::Int32 } else { DataType::Utf8 })
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let texts = cast(&arrays[0], &DataType::Utf8)?;
        let texts = texts.as_string::<i32>();
        let names = arrays.get(1).map(|a| cast(a, &DataType::Utf8)).transpose()?;
        let name = |i: usize| {
            names.as_ref().and_then(|n| n.as_string::<i32>().is_valid(i).then(|| n.as_string::<i32>().value(i)))
        };
        let values =
            (0..texts.len()).map(|i| texts.is_valid(i).then(|| extract(self.kind, texts.value(i), name(i))).flatten());
        let out: ArrayRef = match self.kind {
            Kind::Port => Arc::new(values.map(|v| v.and_then(|p| p.parse::<i32>().ok())).collect::<Int32Array>()),
            _ => Arc::new(values.collect::<StringArray>()),
        };
        Ok(ColumnarValue::Array(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_read_as_ksqldb_reads_them() {
        let x = |k, t: &str| extract(k, t, None);
        assert_eq!(x(Kind::EncodeParam, "?foo $bar").as_deref(), Some("%3Ffoo+%24bar"));
        assert_eq!(x(Kind::DecodeParam, "%3Ffoo+%24bar").as_deref(), Some("?foo $bar"));
        assert_eq!(x(Kind::Path, "http://www.test.com?query#fragment").as_deref(), Some(""));
        assert_eq!(x(Kind::Path, "http://test@confluent.io:8080/nested/path?q").as_deref(), Some("/nested/path"));
        assert_eq!(x(Kind::Host, "http://test@confluent.io:8080").as_deref(), Some("confluent.io"));
        assert_eq!(x(Kind::Port, "http://test@confluent.io"), None);
        assert_eq!(x(Kind::Protocol, "www.confluent.io"), None);
        assert_eq!(
            extract(Kind::Parameter, "http://t.com/?one=a&two=url%20encoded", Some("two")).as_deref(),
            Some("url encoded")
        );
    }
}
