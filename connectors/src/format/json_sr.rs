//! JSON_SR: JSON values in Confluent's wire format (a magic byte 0 and the 4-byte id of a JSON
//! Schema in the schema registry, then the JSON text). The text is read and written by the JSON
//! format; this layer adds and checks the header, and registers the JSON Schema of written rows.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{json, Value};

use super::{Decoded, Decoder, Encoder};
use crate::registry::SchemaRegistry;
use crate::{ConnectorError, Result};

/// The JSON Schema ksqlDB registers for rows of `schema`: an object of optional properties, or,
/// for an unwrapped single column, that column's optional type.
pub fn schema_for(schema: &Schema, unwrapped: bool) -> Result<Value> {
    if unwrapped && schema.fields().len() == 1 {
        return optional(schema.field(0).data_type());
    }
    object(schema.fields())
}

fn object(fields: &Fields) -> Result<Value> {
    let mut properties = serde_json::Map::new();
    for (i, f) in fields.iter().enumerate() {
        let mut p = optional(f.data_type())?;
        p["connect.index"] = json!(i);
        properties.insert(f.name().clone(), p);
    }
    Ok(json!({"type": "object", "properties": properties}))
}

fn optional(dt: &DataType) -> Result<Value> {
    Ok(json!({"oneOf": [{"type": "null"}, json_type(dt)?]}))
}

fn json_type(dt: &DataType) -> Result<Value> {
    Ok(match dt {
        DataType::Boolean => json!({"type": "boolean"}),
        DataType::Int8 | DataType::Int16 | DataType::Int32 => json!({"type": "integer", "connect.type": "int32"}),
        DataType::Int64 => json!({"type": "integer", "connect.type": "int64"}),
        DataType::Float32 | DataType::Float64 => json!({"type": "number", "connect.type": "float64"}),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => json!({"type": "string"}),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => {
            json!({"type": "string", "connect.type": "bytes"})
        }
        DataType::Decimal128(p, s) => json!({
            "type": "number",
            "connect.type": "bytes",
            "connect.version": 1,
            "connect.parameters": {"scale": s.to_string(), "connect.decimal.precision": p.to_string()},
            "title": "org.apache.kafka.connect.data.Decimal"
        }),
        DataType::Timestamp(_, _) => {
            json!({"type": "integer", "connect.type": "int64", "title": "org.apache.kafka.connect.data.Timestamp"})
        }
        DataType::Date32 => {
            json!({"type": "integer", "connect.type": "int32", "title": "org.apache.kafka.connect.data.Date"})
        }
        DataType::Time32(_) | DataType::Time64(_) => {
            json!({"type": "integer", "connect.type": "int32", "title": "org.apache.kafka.connect.data.Time"})
        }
        DataType::List(f) => json!({"type": "array", "items": optional(f.data_type())?}),
        DataType::Map(entries, _) => match entries.data_type() {
            DataType::Struct(kv) if kv.len() == 2 && matches!(kv[0].data_type(), DataType::Utf8) => {
                json!({"type": "object", "additionalProperties": optional(kv[1].data_type())?})
            }
            _ => return Err(ConnectorError::Unsupported("JSON only supports MAP types with STRING keys".into())),
        },
        DataType::Struct(fields) => object(fields)?,
        other => return Err(ConnectorError::Unsupported(format!("JSON_SR cannot carry values of type {other}"))),
    })
}

/// The Arrow type of a JSON Schema, as ksqlDB maps JSON Schema to SQL types (`connect.type` and
/// `title` hints first; a plain integer is a BIGINT, a number a DOUBLE); `None` when SQL has no
/// type for it. `oneOf`/`anyOf` of null and one type are that type.
pub fn arrow_type(schema: &Value) -> Option<DataType> {
    let o = schema.as_object()?;
    if let Some(branches) = o.get("oneOf").or(o.get("anyOf")).and_then(Value::as_array) {
        let mut non_null = branches.iter().filter(|b| b.get("type").and_then(Value::as_str) != Some("null"));
        let t = non_null.next()?;
        return if non_null.next().is_some() { None } else { arrow_type(t) };
    }
    let title = o.get("title").and_then(Value::as_str).unwrap_or_default();
    let connect = o.get("connect.type").and_then(Value::as_str).unwrap_or_default();
    let kind = match o.get("type")? {
        Value::String(t) => t.as_str(),
        // ["null", "integer"] and the like.
        Value::Array(ts) => {
            let mut non_null = ts.iter().filter_map(Value::as_str).filter(|t| *t != "null");
            let t = non_null.next()?;
            if non_null.next().is_some() {
                return None;
            }
            t
        }
        _ => return None,
    };
    Some(match (kind, connect, title) {
        (_, _, "org.apache.kafka.connect.data.Decimal") => {
            let params = o.get("connect.parameters");
            let num = |k: &str| params.and_then(|p| p.get(k)).and_then(Value::as_str).and_then(|v| v.parse().ok());
            DataType::Decimal128(num("connect.decimal.precision").unwrap_or(38), num("scale").unwrap_or(0) as i8)
        }
        (_, _, "org.apache.kafka.connect.data.Timestamp") => DataType::Timestamp(TimeUnit::Millisecond, None),
        (_, _, "org.apache.kafka.connect.data.Date") => DataType::Date32,
        (_, _, "org.apache.kafka.connect.data.Time") => DataType::Time32(TimeUnit::Millisecond),
        ("boolean", _, _) => DataType::Boolean,
        ("integer", "int8" | "int16" | "int32", _) => DataType::Int32,
        ("integer", _, _) => DataType::Int64,
        ("number", _, _) => DataType::Float64,
        ("string", "bytes", _) => DataType::Binary,
        ("string", _, _) => DataType::Utf8,
        ("array", _, _) => DataType::List(Arc::new(Field::new("item", arrow_type(o.get("items")?)?, true))),
        ("object", _, _) => match (o.get("properties"), o.get("additionalProperties")) {
            (Some(props), _) => DataType::Struct(properties(props)?),
            (None, Some(values)) if values.is_object() => DataType::Map(
                Arc::new(Field::new(
                    "entries",
                    DataType::Struct(Fields::from(vec![
                        Field::new("key", DataType::Utf8, false),
                        Field::new("value", arrow_type(values)?, true),
                    ])),
                    false,
                )),
                false,
            ),
            _ => return None,
        },
        _ => return None,
    })
}

/// An object's properties as fields, in `connect.index` order where given.
fn properties(props: &Value) -> Option<Fields> {
    let mut out: Vec<(i64, Field)> = Vec::new();
    for (i, (name, p)) in props.as_object()?.iter().enumerate() {
        let index = p.get("connect.index").and_then(Value::as_i64).unwrap_or(i as i64);
        out.push((index, Field::new(name, arrow_type(p)?, true)));
    }
    out.sort_by_key(|(i, _)| *i);
    Some(out.into_iter().map(|(_, f)| f).collect())
}

/// The columns of a registered JSON Schema: an object's properties, or one column named
/// `single` for any other schema.
pub fn columns_of(schema: &Value, single: &str) -> Option<Fields> {
    let is_object = schema.get("type").and_then(Value::as_str) == Some("object") && schema.get("properties").is_some();
    if is_object {
        properties(schema.get("properties")?)
    } else {
        Some(Fields::from(vec![Field::new(single, arrow_type(schema)?, true)]))
    }
}

/// Reads JSON_SR values: the header off, the text through the JSON decoder.
pub(crate) struct JsonSrDecoder {
    pub(crate) inner: Box<dyn Decoder>,
    pub(crate) schema: SchemaRef,
}

impl Decoder for JsonSrDecoder {
    fn decode(&mut self, values: &[&[u8]]) -> Result<Decoded> {
        let mut texts = Vec::with_capacity(values.len());
        let mut at = Vec::with_capacity(values.len());
        let mut errors = Vec::new();
        for (i, v) in values.iter().enumerate() {
            match super::split_frame("JSON_SR", v) {
                Ok((_, t)) => {
                    texts.push(t);
                    at.push(i);
                }
                Err(e) => errors.push((i, e)),
            }
        }
        super::decode_passed(self.inner.as_mut(), &self.schema, &texts, &at, errors)
    }
}

/// Writes JSON_SR values: the JSON encoder's text after the header of the registered schema.
pub(crate) struct JsonSrEncoder {
    pub(crate) inner: Box<dyn Encoder>,
    header: [u8; 5],
}

impl JsonSrEncoder {
    /// Registers the JSON Schema of `schema`'s rows under `subject`; encodes with its id.
    pub(crate) fn try_new(
        inner: Box<dyn Encoder>,
        schema: &Schema,
        unwrapped: bool,
        registry: &dyn SchemaRegistry,
        subject: &str,
    ) -> Result<Self> {
        let id = registry.register(subject, &schema_for(schema, unwrapped)?.to_string())?;
        Ok(Self { inner, header: super::frame_header(id) })
    }

    /// Encodes with the schema registered as `id` (a sink's `*_SCHEMA_ID`), registering none.
    pub(crate) fn with_schema_id(inner: Box<dyn Encoder>, id: u32) -> Self {
        Self { inner, header: super::frame_header(id) }
    }
}

impl Encoder for JsonSrEncoder {
    fn encode(&mut self, batch: &RecordBatch, out: &mut Vec<Option<Bytes>>) -> Result<()> {
        let first = out.len();
        self.inner.encode(batch, out)?;
        for v in out[first..].iter_mut() {
            if let Some(text) = v {
                let mut framed = BytesMut::with_capacity(5 + text.len());
                framed.put_slice(&self.header);
                framed.put_slice(text);
                *v = Some(framed.freeze());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{AsArray, Int64Array, StringArray};

    use super::*;
    use crate::format::{decoder, encoder, Format, FormatKind, Registered};
    use crate::registry::FileRegistry;

    #[test]
    fn round_trips_with_the_header_and_reports_headerless_values() {
        let registry: Arc<dyn SchemaRegistry> = Arc::new(FileRegistry::in_memory());
        let on = Registered { registry: registry.clone(), subject: "t-value".into() };
        let schema = Arc::new(Schema::new(vec![
            Field::new("ID", DataType::Int64, true),
            Field::new("NAME", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int64Array::from(vec![1, 2])), Arc::new(StringArray::from(vec!["a", "b"]))],
        )
        .unwrap();
        let format = Format::new(FormatKind::JsonSr);
        let mut out = Vec::new();
        encoder(&format, schema.clone(), Some(&on)).unwrap().encode(&batch, &mut out).unwrap();
        let first = out[0].clone().unwrap();
        assert_eq!(&first[..5], &[0, 0, 0, 0, 1]);
        assert_eq!(&first[5..], br#"{"ID":1,"NAME":"a"}"#);
        let registered: Value = serde_json::from_str(&registry.latest("t-value").unwrap().unwrap().1).unwrap();
        assert_eq!(columns_of(&registered, "X").unwrap(), *schema.fields());
        let second = out[1].clone().unwrap();
        let d = decoder(&format, schema, Some(&on)).unwrap().decode(&[&first, br#"{"ID":3}"#, &second]).unwrap();
        assert_eq!(d.good, Some(vec![0, 2]));
        assert_eq!(d.errors.len(), 1);
        assert_eq!(d.errors[0].0, 1);
        assert_eq!(d.batch.column(1).as_string::<i32>().value(1), "b");
    }

    #[test]
    fn json_schemas_map_to_arrow_types() {
        assert_eq!(arrow_type(&json!({"type": "integer"})), Some(DataType::Int64));
        assert_eq!(arrow_type(&json!({"type": "integer", "connect.type": "int32"})), Some(DataType::Int32));
        assert_eq!(arrow_type(&json!({"oneOf": [{"type": "null"}, {"type": "number"}]})), Some(DataType::Float64));
        assert_eq!(arrow_type(&json!({"type": ["null", "string"]})), Some(DataType::Utf8));
        assert!(matches!(
            arrow_type(&json!({"type": "object", "additionalProperties": {"type": "boolean"}})),
            Some(DataType::Map(_, _))
        ));
        assert_eq!(arrow_type(&json!({"oneOf": [{"type": "string"}, {"type": "number"}]})), None);
    }
}
