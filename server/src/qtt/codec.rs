//! Test records  <->  record bytes, the way upstream's test serdes do it.
//!
//! Upstream serializes a test record with the formats of the source declared on its topic and
//! deserializes outputs with the sink's formats, but *generically*: a JSON value is parsed as
//! plain JSON (not through the sink's schema), DELIMITED is a plain string, KAFKA is read by the
//! single column's type, NONE is always null. Comparison then happens on those JSON values.
//!
//! Windowed keys use Kafka Streams' layouts: a time window appends the start (8 bytes,
//! big-endian) to the inner key; a session window appends the end, then the start.

use base64::Engine as _;
use rill_connectors::format::{self, Format, FormatKind};
use rill_connectors::SchemaRegistry;
use rill_sql::types::SqlType;
use serde_json::Value;

use super::load::WindowNode;

/// How one side (key or value) of a topic's records is laid out.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    /// The format and its options (PROTOBUF's nullable representation and message name).
    pub format: Format,
    /// The column types on this side, in order.
    pub types: Vec<SqlType>,
    /// The column names on this side, in order.
    pub names: Vec<String>,
    /// The schema-registry subject of this side (`<topic>-key` or `<topic>-value`).
    pub subject: String,
}

/// Serializes a test value. `None` layout: the topic has no source; strings are written as-is
/// and anything else as JSON text. AVRO values are written with the latest schema registered for
/// the side's subject (the case's own, or the one its `CREATE` registered). Returns `None` for a
/// null (tombstone) value.
pub fn encode(layout: Option<&Layout>, v: &Value, registry: &dyn SchemaRegistry) -> Result<Option<Vec<u8>>, String> {
    if v.is_null() {
        return Ok(None);
    }
    let Some(layout) = layout else { return Ok(Some(plain(v))) };
    match layout.format.kind {
        FormatKind::Json => serde_json::to_vec(v).map(Some).map_err(|e| e.to_string()),
        FormatKind::Delimited => Ok(Some(plain(v))),
        FormatKind::None => Ok(None),
        FormatKind::Protobuf => {
            let (id, schema) = registry
                .latest(&layout.subject)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("no schema registered for subject {}", layout.subject))?;
            let mut out = format::protobuf_encode_json(
                registry,
                (&schema, layout.format.schema_full_name.as_deref()),
                Some(id),
                std::slice::from_ref(v),
            )
            .map_err(|e| e.to_string())?;
            Ok(out.pop().flatten().map(|b| b.to_vec()))
        }
        FormatKind::ProtobufNosr => {
            let schema = columns_proto(layout)?;
            let mut out = format::protobuf_encode_json(registry, (&schema, None), None, std::slice::from_ref(v))
                .map_err(|e| e.to_string())?;
            Ok(out.pop().flatten().map(|b| b.to_vec()))
        }
        FormatKind::JsonSr => {
            let (id, _) = registry
                .latest(&layout.subject)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("no schema registered for subject {}", layout.subject))?;
            let mut out = format::frame_header(id).to_vec();
            serde_json::to_writer(&mut out, v).map_err(|e| e.to_string())?;
            Ok(Some(out))
        }
        FormatKind::Avro => {
            let (id, schema) = registry
                .latest(&layout.subject)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("no schema registered for subject {}", layout.subject))?;
            let mut out = format::avro_encode_json(&schema, id, std::slice::from_ref(v)).map_err(|e| e.to_string())?;
            Ok(out.pop().flatten().map(|b| b.to_vec()))
        }
        FormatKind::Kafka => match layout.types.as_slice() {
            [] => Ok(Some(plain(v))),
            [t] => encode_kafka(t, v).map(Some),
            many => Err(format!("the KAFKA format carries one column, the schema has {}", many.len())),
        },
    }
}

/// The `.proto` schema of a side's columns (PROTOBUF_NOSR has no registry).
fn columns_proto(layout: &Layout) -> Result<String, String> {
    let fields: Vec<arrow::datatypes::Field> = layout
        .names
        .iter()
        .zip(&layout.types)
        .map(|(n, t)| arrow::datatypes::Field::new(n, t.to_arrow(), true))
        .collect();
    format::protobuf_schema_for(&arrow::datatypes::Schema::new(fields), layout.format.protobuf_nullable)
        .map_err(|e| e.to_string())
}

fn plain(v: &Value) -> Vec<u8> {
    match v {
        Value::String(s) => s.as_bytes().to_vec(),
        other => other.to_string().into_bytes(),
    }
}

fn encode_kafka(t: &SqlType, v: &Value) -> Result<Vec<u8>, String> {
    let bad = || format!("cannot write {v} as KAFKA {t}");
    match t {
        SqlType::Int => {
            let n = v.as_i64().and_then(|n| i32::try_from(n).ok()).ok_or_else(bad)?;
            Ok(n.to_be_bytes().to_vec())
        }
        SqlType::Bigint => Ok(v.as_i64().ok_or_else(bad)?.to_be_bytes().to_vec()),
        SqlType::Double => Ok(v.as_f64().ok_or_else(bad)?.to_be_bytes().to_vec()),
        SqlType::String => Ok(plain(v)),
        SqlType::Bytes => {
            let s = v.as_str().ok_or_else(bad)?;
            base64::engine::general_purpose::STANDARD.decode(s).map_err(|e| format!("{}: {e}", bad()))
        }
        other => Err(format!("the KAFKA format cannot carry {other}")),
    }
}

/// Deserializes record bytes into the JSON value upstream's test serdes would produce (AVRO: with
/// the schema the record names).
pub fn decode(layout: Option<&Layout>, bytes: Option<&[u8]>, registry: &dyn SchemaRegistry) -> Result<Value, String> {
    let Some(bytes) = bytes else { return Ok(Value::Null) };
    let Some(layout) = layout else {
        return Ok(serde_json::from_slice(bytes).unwrap_or_else(|_| Value::String(lossy(bytes))));
    };
    match layout.format.kind {
        FormatKind::Json => serde_json::from_slice(bytes).map_err(|e| format!("not JSON ({e}): {}", lossy(bytes))),
        FormatKind::Delimited => Ok(Value::String(lossy(bytes))),
        FormatKind::None => Ok(Value::Null),
        FormatKind::Avro => format::avro_decode_json(registry, bytes).map_err(|e| e.to_string()),
        FormatKind::Protobuf => format::protobuf_decode_json(registry, None, bytes).map_err(|e| e.to_string()),
        FormatKind::ProtobufNosr => {
            let schema = columns_proto(layout)?;
            format::protobuf_decode_json(registry, Some(&schema), bytes).map_err(|e| e.to_string())
        }
        FormatKind::JsonSr => {
            let (_, text) = format::split_frame("JSON_SR", bytes)?;
            serde_json::from_slice(text).map_err(|e| format!("not JSON ({e}): {}", lossy(text)))
        }
        FormatKind::Kafka => match layout.types.as_slice() {
            [] => Ok(Value::String(lossy(bytes))),
            [t] => decode_kafka(t, bytes),
            many => Err(format!("the KAFKA format carries one column, the schema has {}", many.len())),
        },
    }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn decode_kafka(t: &SqlType, bytes: &[u8]) -> Result<Value, String> {
    let width = |n: usize| format!("KAFKA {t} needs {n} bytes, got {}", bytes.len());
    Ok(match t {
        SqlType::Int => Value::from(i32::from_be_bytes(bytes.try_into().map_err(|_| width(4))?)),
        SqlType::Bigint => Value::from(i64::from_be_bytes(bytes.try_into().map_err(|_| width(8))?)),
        SqlType::Double => {
            let d = f64::from_be_bytes(bytes.try_into().map_err(|_| width(8))?);
            // JSON has no NaN or infinities: name them, as Java's Double.toString would.
            serde_json::Number::from_f64(d).map(Value::Number).unwrap_or_else(|| Value::String(java_double_name(d)))
        }
        SqlType::String => Value::String(
            std::str::from_utf8(bytes).map_err(|e| format!("KAFKA STRING is not UTF-8: {e}"))?.to_string(),
        ),
        SqlType::Bytes => Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
        other => return Err(format!("the KAFKA format cannot carry {other}")),
    })
}

fn java_double_name(d: f64) -> String {
    if d.is_nan() {
        "NaN".into()
    } else if d > 0.0 {
        "Infinity".into()
    } else {
        "-Infinity".into()
    }
}

/// Whether a window type names a session window (`session`), else a time window.
pub fn is_session(kind: &str) -> bool {
    kind.eq_ignore_ascii_case("session")
}

/// Appends a window to a serialized key.
pub fn append_window(key: Option<Vec<u8>>, w: &WindowNode) -> Vec<u8> {
    let mut out = key.unwrap_or_default();
    if is_session(&w.kind) {
        out.extend_from_slice(&w.end.to_be_bytes());
    }
    out.extend_from_slice(&w.start.to_be_bytes());
    out
}

/// A windowed key taken apart: the inner key bytes, the start and (if known) the end.
#[derive(Debug, PartialEq, Eq)]
pub struct SplitKey<'a> {
    /// The inner key.
    pub inner: &'a [u8],
    /// Window start.
    pub start: i64,
    /// Window end; `None` for a time window of unknown size.
    pub end: Option<i64>,
}

/// Takes the window off a windowed key. `size`: the time window's size, if known.
pub fn split_window<'a>(key: &'a [u8], session: bool, size: Option<i64>) -> Result<SplitKey<'a>, String> {
    let n = if session { 16 } else { 8 };
    if key.len() < n {
        return Err(format!("windowed key needs at least {n} bytes, got {}", key.len()));
    }
    let (inner, suffix) = key.split_at(key.len() - n);
    let long = |b: &[u8]| -> i64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        i64::from_be_bytes(a)
    };
    Ok(if session {
        SplitKey { inner, start: long(&suffix[8..]), end: Some(long(&suffix[..8])) }
    } else {
        let start = long(suffix);
        SplitKey { inner, start, end: size.map(|s| start + s) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kafka(t: SqlType) -> Layout {
        Layout {
            format: Format::new(FormatKind::Kafka),
            types: vec![t],
            names: vec!["V".into()],
            subject: "t-value".into(),
        }
    }

    fn no_registry() -> rill_connectors::FileRegistry {
        rill_connectors::FileRegistry::in_memory()
    }

    #[test]
    fn avro_uses_the_latest_registered_schema() {
        let r = no_registry();
        let l =
            Layout { format: Format::new(FormatKind::Avro), types: vec![], names: vec![], subject: "t-value".into() };
        assert!(encode(Some(&l), &serde_json::json!(1), &r).unwrap_err().contains("no schema registered"));
        r.register("t-value", r#"{"type": "record", "name": "x", "fields": [{"name": "A", "type": "long"}]}"#).unwrap();
        let v = serde_json::json!({"A": 7});
        let bytes = encode(Some(&l), &v, &r).unwrap().unwrap();
        assert_eq!(bytes[..5], [0, 0, 0, 0, 1]);
        assert_eq!(decode(Some(&l), Some(&bytes), &r).unwrap(), v);
    }

    #[test]
    fn kafka_round_trips_by_type() {
        for (t, v) in [
            (SqlType::Int, serde_json::json!(-7)),
            (SqlType::Bigint, serde_json::json!(1234567890123i64)),
            (SqlType::Double, serde_json::json!(1.5)),
            (SqlType::String, serde_json::json!("héllo")),
        ] {
            let l = kafka(t);
            let bytes = encode(Some(&l), &v, &no_registry()).unwrap().unwrap();
            assert_eq!(decode(Some(&l), Some(&bytes), &no_registry()).unwrap(), v);
        }
        let r = no_registry();
        assert_eq!(encode(Some(&kafka(SqlType::Int)), &serde_json::json!(1), &r).unwrap().unwrap(), vec![0, 0, 0, 1]);
        assert!(decode(Some(&kafka(SqlType::Int)), Some(&[1, 2]), &r).is_err());
        assert!(encode(Some(&kafka(SqlType::Boolean)), &serde_json::json!(true), &r).is_err());
    }

    #[test]
    fn json_delimited_none_and_nulls() {
        let r = no_registry();
        let layout =
            |kind| Layout { format: Format::new(kind), types: vec![], names: vec![], subject: "t-value".into() };
        let json = layout(FormatKind::Json);
        let v = serde_json::json!({"B": 1, "A": [1.0, "x"]});
        let bytes = encode(Some(&json), &v, &r).unwrap().unwrap();
        assert_eq!(String::from_utf8(bytes.clone()).unwrap(), r#"{"B":1,"A":[1.0,"x"]}"#);
        assert_eq!(decode(Some(&json), Some(&bytes), &r).unwrap(), v);
        let delimited = layout(FormatKind::Delimited);
        assert_eq!(encode(Some(&delimited), &serde_json::json!("1,a"), &r).unwrap().unwrap(), b"1,a");
        assert_eq!(decode(Some(&delimited), Some(b"1,a"), &r).unwrap(), serde_json::json!("1,a"));
        assert_eq!(encode(Some(&json), &Value::Null, &r).unwrap(), None);
        assert_eq!(decode(Some(&json), None, &r).unwrap(), Value::Null);
        let none = layout(FormatKind::None);
        assert_eq!(decode(Some(&none), Some(b"x"), &r).unwrap(), Value::Null);
    }

    #[test]
    fn windows_round_trip() {
        let time = WindowNode { start: 1000, end: 2000, kind: "time".into() };
        let key = append_window(Some(b"k".to_vec()), &time);
        assert_eq!(
            split_window(&key, false, Some(1000)).unwrap(),
            SplitKey { inner: b"k", start: 1000, end: Some(2000) }
        );
        let session = WindowNode { start: 5, end: 9, kind: "SESSION".into() };
        let key = append_window(None, &session);
        assert_eq!(split_window(&key, true, None).unwrap(), SplitKey { inner: b"", start: 5, end: Some(9) });
        assert!(split_window(b"short", true, None).is_err());
    }
}
