//! PROTOBUF (Confluent's wire format: magic byte 0, the 4-byte schema id, the message indexes,
//! then the message) and PROTOBUF_NOSR (the message alone, its schema the source's columns).
//!
//! Schemas are `.proto` text, compiled by protox; messages are read and written as prost-reflect
//! dynamic messages and cross to Arrow through their canonical JSON form and the JSON format
//! (names match case-insensitively, ksqlDB's coercions). As in ksqlDB, proto3 fields have no
//! null: a null scalar is written as its default and read back as it (0, false, "", empty
//! lists and maps); only messages (STRUCT columns) stay null. With `OPTIONAL` or `WRAPPER`
//! nullable representation, scalar columns are `optional` fields or `google.protobuf.*Value`
//! wrappers, and a null is a field not set. Fields a registered schema declares `optional` or as
//! wrappers read as null when not set.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::compute::kernels::cast_utils::parse_decimal;
use arrow::datatypes::{DataType, Decimal128Type, DecimalType, Schema, SchemaRef};
use bytes::Bytes;
use prost::Message as _;
use prost_reflect::{DeserializeOptions, DynamicMessage, Kind, MessageDescriptor, ReflectMessage, SerializeOptions};
use serde_json::Value;

use super::{Decoded, Decoder, Encoder, Format, FormatKind, ProtobufNullable};
use crate::registry::SchemaRegistry;
use crate::{ConnectorError, Result};

const FILE: &str = "rill_schema.proto";

/// The `.proto` schema ksqlDB registers for rows of `schema`: message `ConnectDefault1` with a
/// field per column, STRUCTs as nested messages `ConnectDefault2`, ...; scalar columns as
/// `nullable` says.
pub fn schema_for(schema: &Schema, nullable: ProtobufNullable) -> Result<String> {
    let mut counter = 1;
    let mut body = String::new();
    message(&mut body, schema.fields(), &mut counter, 0, nullable)?;
    let mut out = String::from("syntax = \"proto3\";\n\n");
    for (ty, file) in [
        ("google.protobuf.Timestamp", "google/protobuf/timestamp.proto"),
        ("google.type.Date", "google/type/date.proto"),
        ("google.type.TimeOfDay", "google/type/timeofday.proto"),
        ("confluent.type.Decimal", "confluent/meta.proto"),
        ("confluent.type.Decimal", "confluent/type/decimal.proto"),
    ] {
        if body.contains(ty) {
            out.push_str(&format!("import \"{file}\";\n"));
        }
    }
    let wrappers = ["bool", "int32", "int64", "double", "bytes", "string"];
    if wrappers.iter().any(|s| body.contains(&format!("google.protobuf.{} ", wrapper(s)))) {
        out.push_str("import \"google/protobuf/wrappers.proto\";\n");
    }
    if out.contains("import") {
        out.push('\n');
    }
    out.push_str(&body);
    Ok(out)
}

fn message(
    out: &mut String,
    fields: &arrow::datatypes::Fields,
    counter: &mut usize,
    depth: usize,
    nullable: ProtobufNullable,
) -> Result<()> {
    let pad = "  ".repeat(depth);
    out.push_str(&format!("{pad}message ConnectDefault{counter} {{\n"));
    *counter += 1;
    let mut nested = String::new();
    for (i, f) in fields.iter().enumerate() {
        let t = match (scalar(f.data_type()), nullable) {
            (Some(s), ProtobufNullable::Optional) => format!("optional {s}"),
            (Some(s), ProtobufNullable::Wrapper) => format!("google.protobuf.{}", wrapper(s)),
            _ => field_type(f.data_type(), &mut nested, counter, depth + 1, nullable)?,
        };
        let options = match f.data_type() {
            DataType::Decimal128(p, s) => decimal_options(*p, *s),
            DataType::List(item) => match item.data_type() {
                DataType::Decimal128(p, s) => decimal_options(*p, *s),
                _ => String::new(),
            },
            _ => String::new(),
        };
        out.push_str(&format!("{pad}  {t} {} = {}{options};\n", f.name(), i + 1));
    }
    out.push_str(&nested);
    out.push_str(&format!("{pad}}}\n"));
    Ok(())
}

/// The field options by which ksqlDB gives a DECIMAL field its precision and scale.
fn decimal_options(precision: u8, scale: i8) -> String {
    format!(
        " [(confluent.field_meta) = {{ params: [{{ key: \"precision\", value: \"{precision}\" }}, {{ key: \"scale\", value: \"{scale}\" }}] }}]"
    )
}

/// The well-known wrapper message of a scalar protobuf type.
fn wrapper(scalar: &str) -> &'static str {
    match scalar {
        "bool" => "BoolValue",
        "int32" => "Int32Value",
        "int64" => "Int64Value",
        "double" => "DoubleValue",
        "bytes" => "BytesValue",
        _ => "StringValue",
    }
}

fn field_type(
    dt: &DataType,
    nested: &mut String,
    counter: &mut usize,
    depth: usize,
    nullable: ProtobufNullable,
) -> Result<String> {
    Ok(match dt {
        DataType::List(f) => {
            if matches!(f.data_type(), DataType::List(_) | DataType::Map(..)) {
                return Err(ConnectorError::Unsupported("PROTOBUF cannot carry arrays of arrays or of maps".into()));
            }
            format!("repeated {}", field_type(f.data_type(), nested, counter, depth, nullable)?)
        }
        DataType::Map(entries, _) => match entries.data_type() {
            DataType::Struct(kv) if kv.len() == 2 => {
                let key = scalar(kv[0].data_type())
                    .filter(|k| !matches!(*k, "double" | "bytes"))
                    .ok_or_else(|| ConnectorError::Unsupported("PROTOBUF map keys must be scalars".into()))?;
                if matches!(kv[1].data_type(), DataType::List(_) | DataType::Map(..)) {
                    return Err(ConnectorError::Unsupported("PROTOBUF cannot carry maps of arrays or of maps".into()));
                }
                format!("map<{key}, {}>", field_type(kv[1].data_type(), nested, counter, depth, nullable)?)
            }
            other => return Err(ConnectorError::Unsupported(format!("PROTOBUF cannot carry {other}"))),
        },
        DataType::Struct(fields) => {
            let name = format!("ConnectDefault{counter}");
            message(nested, fields, counter, depth, nullable)?;
            name
        }
        DataType::Timestamp(_, _) => "google.protobuf.Timestamp".into(),
        DataType::Decimal128(..) => "confluent.type.Decimal".into(),
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

/// Serves the schema file, the schemas it imports from the registry (schema references, by
/// subject: Confluent names a reference's subject as its import), and the well-known types.
struct OneFile(String, std::collections::HashMap<String, String>);

impl protox::file::FileResolver for OneFile {
    fn open_file(&self, name: &str) -> std::result::Result<protox::file::File, protox::Error> {
        match name {
            FILE => protox::file::File::from_source(name, &self.0),
            _ if self.1.contains_key(name) => protox::file::File::from_source(name, &self.1[name]),
            "google/type/date.proto" => protox::file::File::from_source(
                name,
                "syntax = \"proto3\"; package google.type;\nmessage Date { int32 year = 1; int32 month = 2; int32 day = 3; }\n",
            ),
            "google/type/timeofday.proto" => protox::file::File::from_source(
                name,
                "syntax = \"proto3\"; package google.type;\nmessage TimeOfDay { int32 hours = 1; int32 minutes = 2; int32 seconds = 3; int32 nanos = 4; }\n",
            ),
            // Confluent's types for DECIMAL: the unscaled value (big-endian two's complement)
            // with its precision and scale; fields give theirs in `confluent.field_meta`
            // (public here, as registered schemas use it without importing it).
            "confluent/type/decimal.proto" => protox::file::File::from_source(
                name,
                "syntax = \"proto3\"; package confluent.type; import public \"confluent/meta.proto\";\nmessage Decimal { bytes value = 1; uint32 precision = 2; int32 scale = 3; }\n",
            ),
            "confluent/meta.proto" => protox::file::File::from_source(
                name,
                "syntax = \"proto3\"; package confluent; import \"google/protobuf/descriptor.proto\";\n\
                 message Meta { string doc = 1; map<string, string> params = 2; repeated string tags = 3; }\n\
                 extend google.protobuf.FileOptions { Meta file_meta = 1088; }\n\
                 extend google.protobuf.MessageOptions { Meta message_meta = 1088; }\n\
                 extend google.protobuf.FieldOptions { Meta field_meta = 1088; }\n\
                 extend google.protobuf.EnumOptions { Meta enum_meta = 1088; }\n\
                 extend google.protobuf.EnumValueOptions { Meta enum_value_meta = 1088; }\n",
            ),
            _ => protox::file::GoogleFileResolver::new().open_file(name),
        }
    }
}

/// The files `proto` imports (`import "x";`, `import public 'x';`).
fn imports(proto: &str) -> Vec<String> {
    let mut out = Vec::new();
    for part in proto.split("import").skip(1) {
        let rest = part.trim_start();
        let rest = rest.strip_prefix("public").or_else(|| rest.strip_prefix("weak")).unwrap_or(rest).trim_start();
        let Some(quote) = rest.chars().next().filter(|c| *c == '"' || *c == '\'') else { continue };
        if let Some(end) = rest[1..].find(quote) {
            out.push(rest[1..1 + end].to_string());
        }
    }
    out
}

/// The schemas `proto` imports (and they import) that are registered under their import name.
fn references(proto: &str, registry: Option<&dyn SchemaRegistry>) -> Result<std::collections::HashMap<String, String>> {
    let mut found = std::collections::HashMap::new();
    let Some(registry) = registry else { return Ok(found) };
    let mut pending = imports(proto);
    while let Some(name) = pending.pop() {
        if found.contains_key(&name) || name.starts_with("google/") || name.starts_with("confluent/") {
            continue;
        }
        if let Some((_, text)) = registry.latest(&name)? {
            pending.extend(imports(&text));
            found.insert(name, text);
        }
    }
    Ok(found)
}

/// The first message of a `.proto` schema (the one ksqlDB reads and writes); imports that are
/// not protobuf's or Confluent's own types are read from `registry` (schema references).
pub fn first_message(proto: &str, registry: Option<&dyn SchemaRegistry>) -> Result<MessageDescriptor> {
    named_message(proto, registry, None)
}

/// The message named `name` (full or simple name; `SCHEMA_FULL_NAME`) of a `.proto` schema,
/// the first one without a name.
pub fn named_message(
    proto: &str,
    registry: Option<&dyn SchemaRegistry>,
    name: Option<&str>,
) -> Result<MessageDescriptor> {
    let bad = |e: String| ConnectorError::Unsupported(format!("Invalid PROTOBUF schema ({e}): {proto}"));
    let mut compiler = protox::Compiler::with_file_resolver(OneFile(proto.to_string(), references(proto, registry)?));
    compiler.open_file(FILE).map_err(|e| bad(e.to_string()))?;
    let pool = compiler.descriptor_pool();
    let file = pool.get_file_by_name(FILE).ok_or_else(|| bad("no file".into()))?;
    match name {
        None => file.messages().next().ok_or_else(|| bad("it has no message".into())),
        Some(name) => pool
            .get_message_by_name(name)
            .or_else(|| file.messages().find(|m| m.name() == name))
            .ok_or_else(|| ConnectorError::Unsupported(format!("Schema with name '{name}' not found in: {proto}"))),
    }
}

/// The message at `indexes` (Confluent's message indexes: the top-level message, then nested
/// ones) of the schema file `any` is in.
fn message_at(any: &MessageDescriptor, indexes: &[usize]) -> Option<MessageDescriptor> {
    let (first, rest) = indexes.split_first().unwrap_or((&0, &[]));
    let mut m = any.parent_file().messages().nth(*first)?;
    for i in rest {
        let child = m.child_messages().nth(*i)?;
        m = child;
    }
    Some(m)
}

/// Confluent's message indexes of `m` in its file.
fn index_path(m: &MessageDescriptor) -> Vec<usize> {
    match m.parent_message() {
        Some(parent) => {
            let mut path = index_path(&parent);
            path.push(parent.child_messages().position(|c| c.full_name() == m.full_name()).unwrap_or(0));
            path
        }
        None => vec![m.parent_file().messages().position(|c| c.full_name() == m.full_name()).unwrap_or(0)],
    }
}

/// The columns of a registered `.proto` schema: its first message's fields (as ksqlDB maps
/// protobuf types to SQL types); `None` when a field has no SQL type.
pub fn columns_of(
    proto: &str,
    registry: &dyn SchemaRegistry,
    name: Option<&str>,
) -> Result<Option<arrow::datatypes::Fields>> {
    let desc = named_message(proto, Some(registry), name)?;
    Ok(message_fields(&desc))
}

fn message_fields(desc: &MessageDescriptor) -> Option<arrow::datatypes::Fields> {
    desc.fields()
        .map(|f| {
            let t = match f.kind() {
                Kind::Message(m) if m.full_name() == DECIMAL => {
                    let param = |k: &str| decimal_param(&f, k);
                    DataType::Decimal128(param("precision")?, param("scale")? as i8)
                }
                kind => kind_type(&kind)?,
            };
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
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 | Kind::Uint32 | Kind::Fixed32 | Kind::Uint64 | Kind::Fixed64 => {
            DataType::Int64
        }
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
        Kind::Message(m) if is_wrapper(m) => kind_type(&m.get_field(1)?.kind())?,
        Kind::Message(m) if m.full_name() == "google.type.TimeOfDay" => {
            DataType::Time32(arrow::datatypes::TimeUnit::Millisecond)
        }
        Kind::Message(m) => DataType::Struct(message_fields(m)?),
    })
}

const DECIMAL: &str = "confluent.type.Decimal";

/// A parameter (`precision`, `scale`) of a DECIMAL field's `confluent.field_meta` option.
fn decimal_param(f: &prost_reflect::FieldDescriptor, key: &str) -> Option<u8> {
    let ext = f.parent_pool().get_extension_by_name("confluent.field_meta")?;
    let options = f.options();
    if !options.has_extension(&ext) {
        return None;
    }
    let meta = options.get_extension(&ext);
    let params = meta.as_message()?.get_field_by_name("params")?;
    let value = params.as_map()?.get(&prost_reflect::MapKey::String(key.to_string()))?.as_str()?.parse().ok()?;
    Some(value)
}

/// Whether `m` is one of protobuf's wrappers of a scalar (`google.protobuf.Int32Value`, ...):
/// the scalar, or null when not set.
fn is_wrapper(m: &MessageDescriptor) -> bool {
    m.package_name() == "google.protobuf" && m.name().ends_with("Value") && m.fields().len() == 1
}

/// Splits the registry header and message indexes off: the schema id, the indexes, the message.
fn split_frame(value: &[u8]) -> std::result::Result<(u32, Vec<usize>, &[u8]), String> {
    let (id, rest) = super::split_frame("PROTOBUF", value)?;
    // Message indexes: a zig-zag varint count, then that many zig-zag indexes; a lone 0 is [0].
    let mut buf = rest;
    let count = prost::encoding::decode_varint(&mut buf).map_err(|e| e.to_string())? / 2;
    let mut indexes = Vec::with_capacity(count as usize);
    for _ in 0..count {
        indexes.push((prost::encoding::decode_varint(&mut buf).map_err(|e| e.to_string())? / 2) as usize);
    }
    Ok((id, indexes, buf))
}

/// The JSON of a message, every field present (defaults included), names as declared; DECIMAL
/// values as exact text (for the JSON decoder).
fn to_json(m: &DynamicMessage) -> Result<Vec<u8>> {
    let v = to_value(m, Way::Read { exact: true })?;
    serde_json::to_vec(&v).map_err(|e| ConnectorError::Decode(e.to_string()))
}

fn to_value(m: &DynamicMessage, way: Way) -> Result<Value> {
    let options =
        SerializeOptions::new().skip_default_fields(false).stringify_64_bit_integers(false).use_proto_field_name(true);
    let mut v = m
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| ConnectorError::Decode(e.to_string()))?;
    unset_fields_are_null(m, &mut v);
    temporal(&m.descriptor(), &mut v, way);
    Ok(v)
}

/// Which way [`temporal`] converts.
#[derive(Clone, Copy)]
enum Way {
    /// ksqlDB's values to the JSON of protobuf's messages.
    Write,
    /// Back; DECIMALs as exact text (`exact`) or as JSON numbers.
    Read { exact: bool },
}

/// Fields with presence (messages, `optional` scalars) that are not set are null (proto3 JSON
/// leaves unset messages out and writes unset `optional` scalars as their default).
fn unset_fields_are_null(m: &DynamicMessage, v: &mut Value) {
    let Value::Object(o) = v else { return };
    for f in m.descriptor().fields() {
        if f.is_list() || f.is_map() || !f.supports_presence() {
            continue;
        }
        if !m.has_field(&f) {
            o.insert(f.name().to_string(), Value::Null);
        } else if let (Some(inner), Some(value)) = (o.get_mut(f.name()), m.get_field(&f).as_message()) {
            unset_fields_are_null(value, inner);
        }
    }
}

/// A message from JSON whose object keys name fields in any case.
fn from_json(desc: &MessageDescriptor, mut v: Value) -> Result<DynamicMessage> {
    respell(desc, &mut v);
    temporal(desc, &mut v, Way::Write);
    let options = DeserializeOptions::new().deny_unknown_fields(false);
    DynamicMessage::deserialize_with_options(desc.clone(), v, &options)
        .map_err(|e| ConnectorError::Encode(format!("PROTOBUF: {e}")))
}

/// Temporal values between ksqlDB's numbers (TIMESTAMP epoch millis, DATE epoch days, TIME
/// millis of the day) and DECIMALs, and the JSON of protobuf's messages for them, either `way`.
fn temporal(desc: &MessageDescriptor, v: &mut Value, way: Way) {
    let Value::Object(o) = v else { return };
    for f in desc.fields() {
        let Kind::Message(m) = f.kind() else { continue };
        let Some(x) = o.get_mut(f.name()) else { continue };
        if f.is_map() {
            if let (Value::Object(entries), Kind::Message(vm)) = (x, m.map_entry_value_field().kind()) {
                entries.values_mut().for_each(|e| temporal_value(&vm, e, way));
            }
        } else if f.is_list() {
            if let Value::Array(items) = x {
                items.iter_mut().for_each(|e| temporal_value(&m, e, way));
            }
        } else {
            temporal_value(&m, x, way);
        }
    }
}

fn temporal_value(m: &MessageDescriptor, x: &mut Value, way: Way) {
    use chrono::{DateTime, Datelike, NaiveDate, SecondsFormat, Timelike};
    if x.is_null() {
        return;
    }
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date");
    let to_messages = matches!(way, Way::Write);
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
        (DECIMAL, true) => to_decimal_message(x),
        (DECIMAL, false) => from_decimal_message(x).map(|text| match way {
            Way::Read { exact: false } => text.parse::<f64>().ok().and_then(serde_json::Number::from_f64).map_or(Value::String(text), Value::Number),
            _ => Value::String(text),
        }),
        ("google.type.TimeOfDay", false) => {
            let part = |k: &str| x.get(k).and_then(Value::as_i64).unwrap_or(0);
            Some((((part("hours") * 60 + part("minutes")) * 60 + part("seconds")) * 1000 + part("nanos") / 1_000_000).into())
        }
        _ => {
            temporal(m, x, way);
            None
        }
    };
    if let Some(c) = converted {
        *x = c;
    }
}

/// A decimal (a JSON number, or text when exact) as the JSON of a `confluent.type.Decimal`.
fn to_decimal_message(x: &Value) -> Option<Value> {
    use base64::Engine as _;
    let text = match x {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.as_f64().map(|f| f.to_string()).unwrap_or_else(|| n.to_string()),
        _ => return None,
    };
    // arrow reads the text (at the scale it is written with) and writes it back below.
    let text = text.trim();
    let scale = i8::try_from(text.split_once('.').map_or(0, |(_, f)| f.len())).ok()?;
    let unscaled = parse_decimal::<Decimal128Type>(text, 38, scale).ok()?;
    let bytes = unscaled.to_be_bytes();
    // Minimal two's complement: drop leading bytes that only repeat the sign.
    let mut start = 0;
    while start < 15
        && ((bytes[start] == 0 && bytes[start + 1] & 0x80 == 0)
            || (bytes[start] == 0xff && bytes[start + 1] & 0x80 != 0))
    {
        start += 1;
    }
    let precision = unscaled.unsigned_abs().to_string().len().max(scale as usize);
    Some(serde_json::json!({
        "value": base64::engine::general_purpose::STANDARD.encode(&bytes[start..]),
        "precision": precision,
        "scale": scale,
    }))
}

/// The JSON of a `confluent.type.Decimal` as the decimal's exact text.
fn from_decimal_message(x: &Value) -> Option<String> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD.decode(x.get("value")?.as_str().unwrap_or_default()).ok()?;
    if bytes.len() > 16 {
        return None;
    }
    let fill = if bytes.first().is_some_and(|b| b & 0x80 != 0) { 0xff } else { 0 };
    let mut full = [fill; 16];
    full[16 - bytes.len()..].copy_from_slice(&bytes);
    let unscaled = i128::from_be_bytes(full);
    let scale = i8::try_from(x.get("scale").and_then(Value::as_u64).unwrap_or(0)).ok()?;
    Some(Decimal128Type::format_decimal(unscaled, 38, scale))
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
pub fn encode_json(
    registry: &dyn SchemaRegistry,
    (proto, name): (&str, Option<&str>),
    id: Option<u32>,
    values: &[Value],
) -> Result<Vec<Option<Bytes>>> {
    let desc = named_message(proto, Some(registry), name)?;
    values
        .iter()
        .map(|v| if v.is_null() { Ok(None) } else { frame(&from_json(&desc, v.clone())?, id).map(Some) })
        .collect()
}

/// Reads a PROTOBUF record as JSON: with the registered schema it names, or (`proto` given,
/// PROTOBUF_NOSR) with that schema.
pub fn decode_json(registry: &dyn SchemaRegistry, proto: Option<&str>, value: &[u8]) -> Result<Value> {
    let (desc, body) = match proto {
        Some(p) => (first_message(p, None)?, value),
        None => {
            let (id, indexes, body) = split_frame(value).map_err(ConnectorError::Decode)?;
            (registered_message(registry, id, &indexes)?, body)
        }
    };
    let m = DynamicMessage::decode(desc, body).map_err(|e| ConnectorError::Decode(e.to_string()))?;
    to_value(&m, Way::Read { exact: false })
}

/// The message a record names by its schema `id` and message `indexes`.
fn registered_message(registry: &dyn SchemaRegistry, id: u32, indexes: &[usize]) -> Result<MessageDescriptor> {
    let first = first_message(&super::registered_schema(registry, id)?, Some(registry))?;
    message_at(&first, indexes)
        .ok_or_else(|| ConnectorError::Decode(format!("Schema id {id} has no message at {indexes:?}")))
}

fn frame(m: &DynamicMessage, id: Option<u32>) -> Result<Bytes> {
    let mut out = Vec::with_capacity(m.encoded_len() + 6);
    if let Some(id) = id {
        out.extend_from_slice(&super::frame_header(id));
        match index_path(&m.descriptor()).as_slice() {
            [0] => out.push(0), // the first message: a lone 0
            path => {
                prost::encoding::encode_varint(path.len() as u64 * 2, &mut out);
                path.iter().for_each(|i| prost::encoding::encode_varint(*i as u64 * 2, &mut out));
            }
        }
    }
    m.encode(&mut out).map_err(|e| ConnectorError::Encode(e.to_string()))?;
    Ok(Bytes::from(out))
}

/// Reads PROTOBUF values into rows of the target schema.
pub(crate) struct ProtobufDecoder {
    /// PROTOBUF_NOSR: the message of the target's columns; PROTOBUF: looked up by schema id.
    fixed: Option<MessageDescriptor>,
    registry: Option<Arc<dyn SchemaRegistry>>,
    by_id: std::collections::HashMap<(u32, Vec<usize>), MessageDescriptor>,
    json: Box<dyn Decoder>,
    schema: SchemaRef,
}

impl ProtobufDecoder {
    pub(crate) fn try_new(
        schema: SchemaRef,
        nullable: ProtobufNullable,
        registry: Option<Arc<dyn SchemaRegistry>>,
    ) -> Result<Self> {
        let fixed = match registry {
            None => Some(first_message(&schema_for(&schema, nullable)?, None)?),
            Some(_) => None,
        };
        let json = super::decoder(&Format::new(FormatKind::Json), schema.clone(), None)?;
        Ok(Self { fixed, registry, by_id: Default::default(), json, schema })
    }

    fn message(&mut self, value: &[u8]) -> std::result::Result<Vec<u8>, String> {
        let (desc, body) = match (&self.fixed, &self.registry) {
            (Some(d), _) => (d.clone(), value),
            (None, Some(registry)) => {
                let (id, indexes, body) = split_frame(value)?;
                let desc = match self.by_id.entry((id, indexes)) {
                    std::collections::hash_map::Entry::Occupied(e) => e.get().clone(),
                    std::collections::hash_map::Entry::Vacant(e) => {
                        let desc = registered_message(registry.as_ref(), id, &e.key().1).map_err(|e| e.to_string())?;
                        e.insert(desc).clone()
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
    /// The rows' schema with DECIMAL columns as text.
    schema: SchemaRef,
    id: Option<u32>,
    json: Box<dyn Encoder>,
}

impl ProtobufEncoder {
    pub(crate) fn try_new(
        schema: SchemaRef,
        nullable: ProtobufNullable,
        registered: Option<(&dyn SchemaRegistry, &str)>,
    ) -> Result<Self> {
        let proto = schema_for(&schema, nullable)?;
        let desc = first_message(&proto, None)?;
        let id = match registered {
            Some((registry, subject)) => Some(registry.register(subject, &proto)?),
            None => None,
        };
        Self::with_message(schema, desc, id)
    }

    /// Writes rows as messages of the schema registered as `id` (a sink's `*_SCHEMA_ID`; its
    /// message `name`, else the first): fields take the row columns of their names, in any case;
    /// the others keep their defaults.
    pub(crate) fn with_schema_id(
        schema: SchemaRef,
        registry: &dyn SchemaRegistry,
        id: u32,
        name: Option<&str>,
    ) -> Result<Self> {
        let proto = super::registered_schema(registry, id)?;
        Self::with_message(schema, named_message(&proto, Some(registry), name)?, Some(id))
    }

    fn with_message(schema: SchemaRef, desc: MessageDescriptor, id: Option<u32>) -> Result<Self> {
        // DECIMAL columns go to JSON as text, read exactly into their messages.
        let schema = Arc::new(Schema::new(
            schema
                .fields()
                .iter()
                .map(|f| match f.data_type() {
                    DataType::Decimal128(..) => f.as_ref().clone().with_data_type(DataType::Utf8),
                    _ => f.as_ref().clone(),
                })
                .collect::<Vec<_>>(),
        ));
        let json = super::encoder(&Format::new(FormatKind::Json), schema.clone(), None)?;
        Ok(Self { desc, id, json, schema })
    }
}

impl Encoder for ProtobufEncoder {
    fn encode(&mut self, batch: &RecordBatch, out: &mut Vec<Option<Bytes>>) -> Result<()> {
        let mut texts = Vec::with_capacity(batch.num_rows());
        let columns = batch
            .columns()
            .iter()
            .map(|c| match c.data_type() {
                DataType::Decimal128(..) => arrow::compute::cast(c, &DataType::Utf8),
                _ => Ok(c.clone()),
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| ConnectorError::Encode(e.to_string()))?;
        let batch =
            RecordBatch::try_new(self.schema.clone(), columns).map_err(|e| ConnectorError::Encode(e.to_string()))?;
        self.json.encode(&batch, &mut texts)?;
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
            schema_for(&schema, ProtobufNullable::Default).unwrap(),
            "syntax = \"proto3\";\n\nmessage ConnectDefault1 {\n  string NAME = 1;\n  ConnectDefault2 S = 2;\n  message ConnectDefault2 {\n    int32 F0 = 1;\n  }\n}\n"
        );
        assert!(first_message("syntax = \"proto3\"; message X { int32 a = 1; }", None).is_ok());
        assert!(first_message("not proto", None).is_err());
    }

    #[test]
    fn temporal_values_are_well_known_messages() {
        let schema = Schema::new(vec![
            Field::new("T", DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, None), true),
            Field::new("D", DataType::Date32, true),
            Field::new("TM", DataType::Time32(arrow::datatypes::TimeUnit::Millisecond), true),
        ]);
        let proto = schema_for(&schema, ProtobufNullable::Default).unwrap();
        assert!(proto.contains("import \"google/type/date.proto\";"), "{proto}");
        let registry = FileRegistry::in_memory();
        assert_eq!(columns_of(&proto, &registry, None).unwrap().unwrap(), *schema.fields());
        let v = serde_json::json!({"t": 1010, "D": 19000, "tm": 3_723_004});
        let bytes = encode_json(&registry, (&proto, None), None, &[v]).unwrap();
        let back = decode_json(&registry, Some(&proto), bytes[0].as_deref().unwrap()).unwrap();
        assert_eq!(back, serde_json::json!({"T": 1010, "D": 19000, "TM": 3_723_004}));
    }

    #[test]
    fn round_trip_with_and_without_the_registry() {
        let (schema, batch) = rows();
        let registry: Arc<dyn SchemaRegistry> = Arc::new(FileRegistry::in_memory());
        for sr in [true, false] {
            let mut enc = ProtobufEncoder::try_new(
                schema.clone(),
                ProtobufNullable::Default,
                sr.then_some((registry.as_ref(), "t-value")),
            )
            .unwrap();
            let mut out = Vec::new();
            enc.encode(&batch, &mut out).unwrap();
            let values: Vec<&[u8]> = out.iter().map(|v| v.as_deref().unwrap()).collect();
            assert_eq!(values[0][0..1] == [0], sr);
            let mut dec =
                ProtobufDecoder::try_new(schema.clone(), ProtobufNullable::Default, sr.then(|| registry.clone()))
                    .unwrap();
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
            ProtobufEncoder::try_new(schema.clone(), ProtobufNullable::Default, Some((registry.as_ref(), "t-value")))
                .unwrap()
                .encode(&batch, &mut out)
                .unwrap();
            out[0].clone().unwrap()
        })
        .unwrap();
        assert_eq!(json, serde_json::json!({"NAME": "a", "S": {"F0": 7}}));
        let proto = registry.latest("t-value").unwrap().unwrap().1;
        let encoded = encode_json(
            registry.as_ref(),
            (&proto, None),
            Some(1),
            &[serde_json::json!({"name": "b", "s": {"f0": 3}})],
        )
        .unwrap();
        let back = decode_json(registry.as_ref(), None, encoded[0].as_deref().unwrap()).unwrap();
        assert_eq!(back, serde_json::json!({"NAME": "b", "S": {"F0": 3}}));
    }

    /// Encodes `batch` and decodes it back (PROTOBUF with a registry, else PROTOBUF_NOSR).
    fn round_trip(
        batch: &RecordBatch,
        nullable: ProtobufNullable,
        registry: Option<Arc<dyn SchemaRegistry>>,
    ) -> RecordBatch {
        let schema = batch.schema();
        let registered = registry.as_ref().map(|r| (r.as_ref(), "t-value"));
        let mut out = Vec::new();
        ProtobufEncoder::try_new(schema.clone(), nullable, registered).unwrap().encode(batch, &mut out).unwrap();
        let values: Vec<&[u8]> = out.iter().map(|v| v.as_deref().unwrap()).collect();
        let decoded = ProtobufDecoder::try_new(schema, nullable, registry).unwrap().decode(&values).unwrap();
        assert!(decoded.errors.is_empty(), "{:?}", decoded.errors);
        decoded.batch
    }

    #[test]
    fn nulls_are_unset_optional_fields_or_wrappers() {
        let schema =
            Arc::new(Schema::new(vec![Field::new("I", DataType::Int32, true), Field::new("S", DataType::Utf8, true)]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int32Array::from(vec![None, Some(0)])), Arc::new(StringArray::from(vec![Some(""), None]))],
        )
        .unwrap();
        let optional = schema_for(&schema, ProtobufNullable::Optional).unwrap();
        assert!(optional.contains("  optional int32 I = 1;\n  optional string S = 2;"), "{optional}");
        let wrapper = schema_for(&schema, ProtobufNullable::Wrapper).unwrap();
        assert!(
            wrapper.starts_with("syntax = \"proto3\";\n\nimport \"google/protobuf/wrappers.proto\";\n"),
            "{wrapper}"
        );
        assert!(wrapper.contains("  google.protobuf.Int32Value I = 1;"), "{wrapper}");
        // Wrapped scalars are read as their scalar type.
        let registry = FileRegistry::in_memory();
        assert_eq!(columns_of(&wrapper, &registry, None).unwrap().unwrap(), *schema.fields());
        for nullable in [ProtobufNullable::Optional, ProtobufNullable::Wrapper] {
            let registry: Arc<dyn SchemaRegistry> = Arc::new(FileRegistry::in_memory());
            for r in [None, Some(registry)] {
                let back = round_trip(&batch, nullable, r);
                assert_eq!(back.columns(), batch.columns(), "{nullable:?}: nulls and zero values both kept");
            }
        }
        // Without either, a null scalar is its default.
        let back = round_trip(&batch, ProtobufNullable::Default, None);
        assert_eq!(back.column(0).null_count(), 0);
    }

    #[test]
    fn decimals_are_confluent_decimal_messages() {
        let schema = Arc::new(Schema::new(vec![Field::new("DEC", DataType::Decimal128(21, 19), true)]));
        let values = arrow::array::Decimal128Array::from(vec![
            Some(101_234_512_345_123_450_000_i128),
            Some(-1),
            Some(0),
            None,
            Some(-999_999_999_999_999_999_999_i128),
        ])
        .with_precision_and_scale(21, 19)
        .unwrap();
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(values)]).unwrap();
        let proto = schema_for(&schema, ProtobufNullable::Default).unwrap();
        assert!(proto.contains("import \"confluent/type/decimal.proto\";"), "{proto}");
        let registry: Arc<dyn SchemaRegistry> = Arc::new(FileRegistry::in_memory());
        assert_eq!(columns_of(&proto, registry.as_ref(), None).unwrap().unwrap(), *schema.fields());
        let back = round_trip(&batch, ProtobufNullable::Default, Some(registry.clone()));
        let expected: Vec<Option<i128>> =
            batch.column(0).as_primitive::<arrow::datatypes::Decimal128Type>().iter().collect();
        let got: Vec<Option<i128>> = back.column(0).as_primitive::<arrow::datatypes::Decimal128Type>().iter().collect();
        // Exact to the last digit; a null message is null.
        assert_eq!(got, expected);
        let encoded =
            encode_json(registry.as_ref(), (&proto, None), Some(1), &[serde_json::json!({"DEC": 10.5})]).unwrap();
        let json = decode_json(registry.as_ref(), None, encoded[0].as_deref().unwrap()).unwrap();
        assert_eq!(json, serde_json::json!({"DEC": 10.5}));
    }

    #[test]
    fn messages_are_found_by_name_index_and_reference() {
        let registry = FileRegistry::in_memory();
        let proto = "syntax = \"proto3\"; message A { int32 x = 1; } message B { string y = 1; }";
        let id = registry.register("t-value", proto).unwrap();
        let encoded = encode_json(&registry, (proto, Some("B")), Some(id), &[serde_json::json!({"y": "v"})]).unwrap();
        let bytes = encoded[0].as_deref().unwrap();
        // Message indexes [1]: a count of one, then index 1 (both zig-zag).
        assert_eq!(bytes[5..7], [2, 2]);
        assert_eq!(decode_json(&registry, None, bytes).unwrap(), serde_json::json!({"y": "v"}));
        assert_eq!(columns_of(proto, &registry, Some("B")).unwrap().unwrap()[0].name(), "y");
        assert!(named_message(proto, None, Some("C")).is_err());
        // An import is read from the subject of its name.
        let with_import = "syntax = \"proto3\"; import \"event.proto\"; message L { Event event = 1; }";
        assert!(first_message(with_import, Some(&registry)).is_err());
        registry.register("event.proto", "syntax = \"proto3\"; message Event { int64 ts = 1; }").unwrap();
        let fields = columns_of(with_import, &registry, None).unwrap().unwrap();
        assert_eq!(fields[0].data_type(), &DataType::Struct(vec![Field::new("ts", DataType::Int64, true)].into()));
    }
}
