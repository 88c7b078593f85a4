//! PROTOBUF (Confluent's wire format: magic byte 0, the 4-byte schema id, the message indexes,
//! then the message) and PROTOBUF_NOSR (the message alone, its schema the source's columns).
//!
//! Schemas are `.proto` text, compiled by protox; messages are read and written as prost-reflect
//! dynamic messages and cross to Arrow through their canonical JSON form and the JSON format
//! (names match case-insensitively, ksqlDB's coercions). As in ksqlDB, proto3 fields have no
//! null: a null scalar is written as its default and read back as it (0, false, "", empty
//! lists and maps); only messages (STRUCT columns) stay null.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Schema, SchemaRef};
use bytes::Bytes;
use prost::Message as _;
use prost_reflect::{DeserializeOptions, DynamicMessage, Kind, MessageDescriptor, ReflectMessage, SerializeOptions};
use serde_json::Value;

use super::{Decoded, Decoder, Encoder, Format, FormatKind};
use crate::registry::SchemaRegistry;
use crate::{ConnectorError, Result};

const FILE: &str = "rill_schema.proto";

/// The `.proto` schema ksqlDB registers for rows of `schema`: message `ConnectDefault1` with a
/// field per column, STRUCTs as nested messages `ConnectDefault2`, ...
pub fn schema_for(schema: &Schema) -> Result<String> {
    let mut counter = 1;
    let mut body = String::new();
    message(&mut body, schema.fields(), &mut counter, 0)?;
    let mut out = String::from("syntax = \"proto3\";\n\n");
    for (ty, file) in [
        ("google.protobuf.Timestamp", "google/protobuf/timestamp.proto"),
        ("google.type.Date", "google/type/date.proto"),
        ("google.type.TimeOfDay", "google/type/timeofday.proto"),
    ] {
        if body.contains(ty) {
            out.push_str(&format!("import \"{file}\";\n"));
        }
    }
    if out.contains("import") {
        out.push('\n');
    }
    out.push_str(&body);
    Ok(out)
}

fn message(out: &mut String, fields: &arrow::datatypes::Fields, counter: &mut usize, depth: usize) -> Result<()> {
    let pad = "  ".repeat(depth);
    out.push_str(&format!("{pad}message ConnectDefault{counter} {{\n"));
    *counter += 1;
    let mut nested = String::new();
    for (i, f) in fields.iter().enumerate() {
        let t = field_type(f.data_type(), &mut nested, counter, depth + 1)?;
        out.push_str(&format!("{pad}  {t} {} = {};\n", f.name(), i + 1));
    }
    out.push_str(&nested);
    out.push_str(&format!("{pad}}}\n"));
    Ok(())
}

fn field_type(dt: &DataType, nested: &mut String, counter: &mut usize, depth: usize) -> Result<String> {
    Ok(match dt {
        DataType::List(f) => {
            if matches!(f.data_type(), DataType::List(_) | DataType::Map(..)) {
                return Err(ConnectorError::Unsupported("PROTOBUF cannot carry arrays of arrays or of maps".into()));
            }
            format!("repeated {}", field_type(f.data_type(), nested, counter, depth)?)
        }
        DataType::Map(entries, _) => match entries.data_type() {
            DataType::Struct(kv) if kv.len() == 2 => {
                let key = scalar(kv[0].data_type())
                    .filter(|k| !matches!(*k, "double" | "bytes"))
                    .ok_or_else(|| ConnectorError::Unsupported("PROTOBUF map keys must be scalars".into()))?;
                if matches!(kv[1].data_type(), DataType::List(_) | DataType::Map(..)) {
                    return Err(ConnectorError::Unsupported("PROTOBUF cannot carry maps of arrays or of maps".into()));
                }
                format!("map<{key}, {}>", field_type(kv[1].data_type(), nested, counter, depth)?)
            }
            other => return Err(ConnectorError::Unsupported(format!("PROTOBUF cannot carry {other}"))),
        },
        DataType::Struct(fields) => {
            let name = format!("ConnectDefault{counter}");
            message(nested, fields, counter, depth)?;
            name
        }
        DataType::Timestamp(_, _) => "google.protobuf.Timestamp".into(),
        DataType::Date32 => "google.type.Date".into(),
        DataType::Time32(_) | DataType::Time64(_) => "google.type.TimeOfDay".into(),
        other => scalar(other)
            .ok_or_else(|| ConnectorError::Unsupported(format!("PROTOBUF cannot carry values of type {other} yet")))?
            .to_string(),
    })
}

fn scalar(dt: &DataType) -> Option<&'static str> {
    Some(match dt {
        DataType::Boolean => "bool",
        DataType::Int8 | DataType::Int16 | DataType::Int32 => "int32",
        DataType::Int64 => "int64",
        DataType::Float32 | DataType::Float64 => "double",
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "string",
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "bytes",
        _ => return None,
    })
}

/// Serves the one schema file (and protobuf's well-known types) to protox.
struct OneFile(String);

impl protox::file::FileResolver for OneFile {
    fn open_file(&self, name: &str) -> std::result::Result<protox::file::File, protox::Error> {
        match name {
            FILE => protox::file::File::from_source(name, &self.0),
            "google/type/date.proto" => protox::file::File::from_source(
                name,
                "syntax = \"proto3\"; package google.type;\nmessage Date { int32 year = 1; int32 month = 2; int32 day = 3; }\n",
            ),
            "google/type/timeofday.proto" => protox::file::File::from_source(
                name,
                "syntax = \"proto3\"; package google.type;\nmessage TimeOfDay { int32 hours = 1; int32 minutes = 2; int32 seconds = 3; int32 nanos = 4; }\n",
            ),
            _ => protox::file::GoogleFileResolver::new().open_file(name),
        }
    }
}

/// The first message of a `.proto` schema (the one ksqlDB reads and writes).
pub fn first_message(proto: &str) -> Result<MessageDescriptor> {
    let bad = |e: String| ConnectorError::Unsupported(format!("Invalid PROTOBUF schema ({e}): {proto}"));
    let mut compiler = protox::Compiler::with_file_resolver(OneFile(proto.to_string()));
    compiler.open_file(FILE).map_err(|e| bad(e.to_string()))?;
    let pool = compiler.descriptor_pool();
    let file = pool.get_file_by_name(FILE).ok_or_else(|| bad("no file".into()))?;
    let first = file.messages().next();
    first.ok_or_else(|| bad("it has no message".into()))
}

/// The columns of a registered `.proto` schema: its first message's fields (as ksqlDB maps
/// protobuf types to SQL types); `None` when a field has no SQL type.
pub fn columns_of(proto: &str) -> Result<Option<arrow::datatypes::Fields>> {
    let desc = first_message(proto)?;
    Ok(message_fields(&desc))
}

fn message_fields(desc: &MessageDescriptor) -> Option<arrow::datatypes::Fields> {
    desc.fields()
        .map(|f| {
            let t = kind_type(&f.kind())?;
            let t =
                if f.is_list() { DataType::List(Arc::new(arrow::datatypes::Field::new("item", t, true))) } else { t };
            Some(arrow::datatypes::Field::new(f.name(), t, true))
        })
        .collect()
}

fn kind_type(kind: &Kind) -> Option<DataType> {
    Some(match kind {
        Kind::Bool => DataType::Boolean,
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => DataType::Int32,
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 | Kind::Uint32 | Kind::Fixed32 => DataType::Int64,
        Kind::Uint64 | Kind::Fixed64 => DataType::Decimal128(20, 0),
        Kind::Double | Kind::Float => DataType::Float64,
        Kind::String | Kind::Enum(_) => DataType::Utf8,
        Kind::Bytes => DataType::Binary,
        Kind::Message(m) if m.is_map_entry() => DataType::Map(
            Arc::new(arrow::datatypes::Field::new(
                "entries",
                DataType::Struct(arrow::datatypes::Fields::from(vec![
                    arrow::datatypes::Field::new("key", kind_type(&m.map_entry_key_field().kind())?, false),
                    arrow::datatypes::Field::new("value", kind_type(&m.map_entry_value_field().kind())?, true),
                ])),
                false,
            )),
            false,
        ),
        Kind::Message(m) if m.full_name() == "google.protobuf.Timestamp" => {
            DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, None)
        }
        Kind::Message(m) if m.full_name() == "google.type.Date" => DataType::Date32,
        Kind::Message(m) if m.full_name() == "google.type.TimeOfDay" => {
            DataType::Time32(arrow::datatypes::TimeUnit::Millisecond)
        }
        Kind::Message(m) => DataType::Struct(message_fields(m)?),
    })
}

/// Strips the registry header and message indexes: the schema id and the message.
fn split_frame(value: &[u8]) -> std::result::Result<(u32, &[u8]), String> {
    let (id, rest) = super::split_frame("PROTOBUF", value)?;
    // Message indexes: a zig-zag varint count, then that many indexes; a lone 0 means [0].
    let mut buf = rest;
    let count = prost::encoding::decode_varint(&mut buf).map_err(|e| e.to_string())?;
    for _ in 0..(count / 2) {
        prost::encoding::decode_varint(&mut buf).map_err(|e| e.to_string())?;
    }
    Ok((id, buf))
}

/// The JSON of a message, every field present (defaults included), names as declared.
fn to_json(m: &DynamicMessage) -> Result<Vec<u8>> {
    let options =
        SerializeOptions::new().skip_default_fields(false).stringify_64_bit_integers(false).use_proto_field_name(true);
    let mut v = m
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| ConnectorError::Decode(e.to_string()))?;
    unset_messages_are_null(&m.descriptor(), &mut v);
    temporal(&m.descriptor(), &mut v, false);
    serde_json::to_vec(&v).map_err(|e| ConnectorError::Decode(e.to_string()))
}

/// Message fields that are not set are null (proto3 JSON leaves them out).
fn unset_messages_are_null(desc: &MessageDescriptor, v: &mut Value) {
    let Value::Object(o) = v else { return };
    for f in desc.fields() {
        let Kind::Message(m) = f.kind() else { continue };
        if f.is_list() || f.is_map() {
            continue;
        }
        match o.get_mut(f.name()) {
            Some(inner) => unset_messages_are_null(&m, inner),
            None => {
                o.insert(f.name().to_string(), Value::Null);
            }
        }
    }
}

/// A message from JSON whose object keys name fields in any case.
fn from_json(desc: &MessageDescriptor, mut v: Value) -> Result<DynamicMessage> {
    respell(desc, &mut v);
    temporal(desc, &mut v, true);
    let options = DeserializeOptions::new().deny_unknown_fields(false);
    DynamicMessage::deserialize_with_options(desc.clone(), v, &options)
        .map_err(|e| ConnectorError::Encode(format!("PROTOBUF: {e}")))
}

/// Temporal values between ksqlDB's numbers (TIMESTAMP epoch millis, DATE epoch days, TIME
/// millis of the day) and the JSON of protobuf's messages for them (`to_messages`), or back.
fn temporal(desc: &MessageDescriptor, v: &mut Value, to_messages: bool) {
    let Value::Object(o) = v else { return };
    for f in desc.fields() {
        let Kind::Message(m) = f.kind() else { continue };
        let Some(x) = o.get_mut(f.name()) else { continue };
        if f.is_map() {
            if let (Value::Object(entries), Kind::Message(vm)) = (x, m.map_entry_value_field().kind()) {
                entries.values_mut().for_each(|e| temporal_value(&vm, e, to_messages));
            }
        } else if f.is_list() {
            if let Value::Array(items) = x {
                items.iter_mut().for_each(|e| temporal_value(&m, e, to_messages));
            }
        } else {
            temporal_value(&m, x, to_messages);
        }
    }
}

fn temporal_value(m: &MessageDescriptor, x: &mut Value, to_messages: bool) {
    use chrono::{DateTime, Datelike, NaiveDate, SecondsFormat, Timelike};
    if x.is_null() {
        return;
    }
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date");
    let converted = match (m.full_name(), to_messages) {
        ("google.protobuf.Timestamp", true) => x
            .as_i64()
            .and_then(DateTime::from_timestamp_millis)
            .map(|t| Value::String(t.to_rfc3339_opts(SecondsFormat::AutoSi, true))),
        ("google.protobuf.Timestamp", false) => {
            x.as_str().and_then(|t| DateTime::parse_from_rfc3339(t).ok()).map(|t| t.timestamp_millis().into())
        }
        ("google.type.Date", true) => x
            .as_i64()
            .and_then(|d| epoch.checked_add_signed(chrono::Duration::days(d)))
            .map(|d| serde_json::json!({"year": d.year(), "month": d.month(), "day": d.day()})),
        ("google.type.Date", false) => {
            let part = |k: &str| x.get(k).and_then(Value::as_i64).unwrap_or(0);
            NaiveDate::from_ymd_opt(part("year") as i32, part("month") as u32, part("day") as u32)
                .map(|d| (d - epoch).num_days().into())
        }
        ("google.type.TimeOfDay", true) => x.as_i64().and_then(|ms| {
            let t = chrono::NaiveTime::from_num_seconds_from_midnight_opt((ms / 1000) as u32, ((ms % 1000) * 1_000_000) as u32)?;
            Some(serde_json::json!({"hours": t.hour(), "minutes": t.minute(), "seconds": t.second(), "nanos": t.nanosecond()}))
        }),
        ("google.type.TimeOfDay", false) => {
            let part = |k: &str| x.get(k).and_then(Value::as_i64).unwrap_or(0);
            Some((((part("hours") * 60 + part("minutes")) * 60 + part("seconds")) * 1000 + part("nanos") / 1_000_000).into())
        }
        _ => {
            temporal(m, x, to_messages);
            None
        }
    };
    if let Some(c) = converted {
        *x = c;
    }
}

/// Renames object keys to the fields they name case-insensitively (also in nested messages).
fn respell(desc: &MessageDescriptor, v: &mut Value) {
    let Value::Object(o) = v else { return };
    let keys: Vec<String> = o.keys().cloned().collect();
    for k in keys {
        let field = desc.get_field_by_name(&k).or_else(|| desc.fields().find(|f| f.name().eq_ignore_ascii_case(&k)));
        let Some(field) = field else { continue };
        let mut value = o.remove(&k).unwrap_or(Value::Null);
        if let Kind::Message(m) = field.kind() {
            if field.is_map() {
                if let (Value::Object(entries), Kind::Message(vm)) = (&mut value, m.map_entry_value_field().kind()) {
                    entries.values_mut().for_each(|x| respell(&vm, x));
                }
            } else if let Value::Array(items) = &mut value {
                items.iter_mut().for_each(|x| respell(&m, x));
            } else {
                respell(&m, &mut value);
            }
        }
        o.insert(field.name().to_string(), value);
    }
}

/// Writes JSON values as PROTOBUF records of a given registered schema (a producer's schema).
pub fn encode_json(proto: &str, id: Option<u32>, values: &[Value]) -> Result<Vec<Option<Bytes>>> {
    let desc = first_message(proto)?;
    values
        .iter()
        .map(|v| if v.is_null() { Ok(None) } else { frame(&from_json(&desc, v.clone())?, id).map(Some) })
        .collect()
}

/// Reads a PROTOBUF record as JSON: with the registered schema it names, or (`proto` given,
/// PROTOBUF_NOSR) with that schema.
pub fn decode_json(registry: &dyn SchemaRegistry, proto: Option<&str>, value: &[u8]) -> Result<Value> {
    let (desc, body) = match proto {
        Some(p) => (first_message(p)?, value),
        None => {
            let (id, body) = split_frame(value).map_err(ConnectorError::Decode)?;
            let text = registry
                .schema(id)?
                .ok_or_else(|| ConnectorError::Decode(format!("Schema id {id} is not registered")))?;
            (first_message(&text)?, body)
        }
    };
    let m = DynamicMessage::decode(desc, body).map_err(|e| ConnectorError::Decode(e.to_string()))?;
    serde_json::from_slice(&to_json(&m)?).map_err(|e| ConnectorError::Decode(e.to_string()))
}

fn frame(m: &DynamicMessage, id: Option<u32>) -> Result<Bytes> {
    let mut out = Vec::with_capacity(m.encoded_len() + 6);
    if let Some(id) = id {
        out.extend_from_slice(&super::frame_header(id));
        out.push(0); // message indexes: the first message
    }
    m.encode(&mut out).map_err(|e| ConnectorError::Encode(e.to_string()))?;
    Ok(Bytes::from(out))
}

/// Reads PROTOBUF values into rows of the target schema.
pub(crate) struct ProtobufDecoder {
    /// PROTOBUF_NOSR: the message of the target's columns; PROTOBUF: looked up by schema id.
    fixed: Option<MessageDescriptor>,
    registry: Option<Arc<dyn SchemaRegistry>>,
    by_id: std::collections::HashMap<u32, MessageDescriptor>,
    json: Box<dyn Decoder>,
    schema: SchemaRef,
}

impl ProtobufDecoder {
    pub(crate) fn try_new(schema: SchemaRef, registry: Option<Arc<dyn SchemaRegistry>>) -> Result<Self> {
        let fixed = match registry {
            None => Some(first_message(&schema_for(&schema)?)?),
            Some(_) => None,
        };
        let json = super::decoder(&Format::new(FormatKind::Json), schema.clone(), None)?;
        Ok(Self { fixed, registry, by_id: Default::default(), json, schema })
    }

    fn message(&mut self, value: &[u8]) -> std::result::Result<Vec<u8>, String> {
        let (desc, body) = match (&self.fixed, &self.registry) {
            (Some(d), _) => (d.clone(), value),
            (None, Some(registry)) => {
                let (id, body) = split_frame(value)?;
                let desc = match self.by_id.entry(id) {
                    std::collections::hash_map::Entry::Occupied(e) => e.get().clone(),
                    std::collections::hash_map::Entry::Vacant(e) => {
                        let text = registry
                            .schema(id)
                            .map_err(|e| e.to_string())?
                            .ok_or_else(|| format!("Schema id {id} is not in the schema registry"))?;
                        e.insert(first_message(&text).map_err(|e| e.to_string())?).clone()
                    }
                };
                (desc, body)
            }
            (None, None) => return Err("PROTOBUF needs a schema registry".into()),
        };
        let m = DynamicMessage::decode(desc, body).map_err(|e| format!("Invalid PROTOBUF message: {e}"))?;
        to_json(&m).map_err(|e| e.to_string())
    }
}

impl Decoder for ProtobufDecoder {
    fn decode(&mut self, values: &[&[u8]]) -> Result<Decoded> {
        let mut texts = Vec::with_capacity(values.len());
        let mut at = Vec::with_capacity(values.len());
        let mut errors = Vec::new();
        for (i, v) in values.iter().enumerate() {
            match self.message(v) {
                Ok(t) => {
                    texts.push(t);
                    at.push(i);
                }
                Err(e) => errors.push((i, e)),
            }
        }
        let slices: Vec<&[u8]> = texts.iter().map(Vec::as_slice).collect();
        super::decode_passed(self.json.as_mut(), &self.schema, &slices, &at, errors)
    }
}

/// Writes rows as PROTOBUF messages of their columns' schema (registered for PROTOBUF).
pub(crate) struct ProtobufEncoder {
    desc: MessageDescriptor,
    id: Option<u32>,
    json: Box<dyn Encoder>,
}

impl ProtobufEncoder {
    pub(crate) fn try_new(schema: SchemaRef, registered: Option<(&dyn SchemaRegistry, &str)>) -> Result<Self> {
        let proto = schema_for(&schema)?;
        let desc = first_message(&proto)?;
        let id = match registered {
            Some((registry, subject)) => Some(registry.register(subject, &proto)?),
            None => None,
        };
        let json = super::encoder(&Format::new(FormatKind::Json), schema, None)?;
        Ok(Self { desc, id, json })
    }
}

impl Encoder for ProtobufEncoder {
    fn encode(&mut self, batch: &RecordBatch, out: &mut Vec<Option<Bytes>>) -> Result<()> {
        let mut texts = Vec::with_capacity(batch.num_rows());
        self.json.encode(batch, &mut texts)?;
        for t in texts {
            let Some(t) = t else {
                out.push(None);
                continue;
            };
            let v: Value = serde_json::from_slice(&t).map_err(|e| ConnectorError::Encode(e.to_string()))?;
            out.push(Some(frame(&from_json(&self.desc, v)?, self.id)?));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{AsArray, Int32Array, StringArray, StructArray};
    use arrow::datatypes::Field;

    use super::*;
    use crate::registry::FileRegistry;

    fn rows() -> (SchemaRef, RecordBatch) {
        let inner = arrow::datatypes::Fields::from(vec![Field::new("F0", DataType::Int32, true)]);
        let schema = Arc::new(Schema::new(vec![
            Field::new("NAME", DataType::Utf8, true),
            Field::new("S", DataType::Struct(inner.clone()), true),
        ]));
        let s = StructArray::new(
            inner,
            vec![Arc::new(Int32Array::from(vec![Some(7), None]))],
            Some(vec![true, false].into()),
        );
        let batch =
            RecordBatch::try_new(schema.clone(), vec![Arc::new(StringArray::from(vec![Some("a"), None])), Arc::new(s)])
                .unwrap();
        (schema, batch)
    }

    #[test]
    fn schemas_are_ksqldb_messages() {
        let (schema, _) = rows();
        assert_eq!(
            schema_for(&schema).unwrap(),
            "syntax = \"proto3\";\n\nmessage ConnectDefault1 {\n  string NAME = 1;\n  ConnectDefault2 S = 2;\n  message ConnectDefault2 {\n    int32 F0 = 1;\n  }\n}\n"
        );
        assert!(first_message("syntax = \"proto3\"; message X { int32 a = 1; }").is_ok());
        assert!(first_message("not proto").is_err());
    }

    #[test]
    fn temporal_values_are_well_known_messages() {
        let schema = Schema::new(vec![
            Field::new("T", DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, None), true),
            Field::new("D", DataType::Date32, true),
            Field::new("TM", DataType::Time32(arrow::datatypes::TimeUnit::Millisecond), true),
        ]);
        let proto = schema_for(&schema).unwrap();
        assert!(proto.contains("import \"google/type/date.proto\";"), "{proto}");
        assert_eq!(columns_of(&proto).unwrap().unwrap(), *schema.fields());
        let v = serde_json::json!({"t": 1010, "D": 19000, "tm": 3_723_004});
        let bytes = encode_json(&proto, None, &[v]).unwrap();
        let registry = FileRegistry::in_memory();
        let back = decode_json(&registry, Some(&proto), bytes[0].as_deref().unwrap()).unwrap();
        assert_eq!(back, serde_json::json!({"T": 1010, "D": 19000, "TM": 3_723_004}));
    }

    #[test]
    fn round_trip_with_and_without_the_registry() {
        let (schema, batch) = rows();
        let registry: Arc<dyn SchemaRegistry> = Arc::new(FileRegistry::in_memory());
        for sr in [true, false] {
            let mut enc =
                ProtobufEncoder::try_new(schema.clone(), sr.then_some((registry.as_ref(), "t-value"))).unwrap();
            let mut out = Vec::new();
            enc.encode(&batch, &mut out).unwrap();
            let values: Vec<&[u8]> = out.iter().map(|v| v.as_deref().unwrap()).collect();
            assert_eq!(values[0][0..1] == [0], sr);
            let mut dec = ProtobufDecoder::try_new(schema.clone(), sr.then(|| registry.clone())).unwrap();
            let d = dec.decode(&values).unwrap();
            assert!(d.errors.is_empty(), "{:?}", d.errors);
            // A null string is read back as "", a null message stays null.
            assert_eq!(d.batch.column(0).as_string::<i32>().value(1), "");
            assert!(d.batch.column(1).is_null(1));
            assert_eq!(
                d.batch.column(1).as_struct().column(0).as_primitive::<arrow::datatypes::Int32Type>().value(0),
                7
            );
        }
        let json = decode_json(registry.as_ref(), None, &{
            let mut out = Vec::new();
            ProtobufEncoder::try_new(schema.clone(), Some((registry.as_ref(), "t-value")))
                .unwrap()
                .encode(&batch, &mut out)
                .unwrap();
            out[0].clone().unwrap()
        })
        .unwrap();
        assert_eq!(json, serde_json::json!({"NAME": "a", "S": {"F0": 7}}));
        let proto = registry.latest("t-value").unwrap().unwrap().1;
        let encoded = encode_json(&proto, Some(1), &[serde_json::json!({"name": "b", "s": {"f0": 3}})]).unwrap();
        let back = decode_json(registry.as_ref(), None, encoded[0].as_deref().unwrap()).unwrap();
        assert_eq!(back, serde_json::json!({"NAME": "b", "S": {"F0": 3}}));
    }
}
