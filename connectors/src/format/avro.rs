//! AVRO values in Confluent's wire format: a magic byte 0, the 4-byte big-endian id of the writer
//! schema in the schema registry, then the Avro binary body. arrow-avro decodes and encodes the
//! bodies a batch at a time.
//!
//! Writing: the sink's columns become a ksqlDB-style schema (record `KsqlDataSourceSchema`, every
//! field an optional union), registered under the topic's subject; its id prefixes each record.
//!
//! Reading: each record names its writer schema, which may differ from the source's columns in
//! field spelling, order and types (a producer's schema, or an older version). Records are decoded
//! with their writer schema (runs of records with the same id at once) and brought to the source's
//! columns through the JSON decoder's rules: names match case-insensitively, numbers and strings
//! coerce as ksqlDB's do, missing fields are null. When the writer schema already has the
//! source's columns (Rill's own sinks), the decoded columns are used as they are.
//!
//! A schema that is not a record (an unwrapped single value, or a key) is read and written as a
//! record of one field: Avro's binary encoding of such a record is the value's encoding.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, RecordBatchOptions};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use arrow_avro::reader::{Decoder as AvroBodyDecoder, ReaderBuilder};
use arrow_avro::schema::{
    AvroSchema, Fingerprint, FingerprintAlgorithm, FingerprintStrategy, SchemaStore, SCHEMA_METADATA_KEY,
};
use arrow_avro::writer::format::AvroSoeFormat;
use arrow_avro::writer::WriterBuilder;
use bytes::Bytes;
use serde_json::{json, Value};

use super::{Decoded, Decoder, Encoder};
use crate::registry::SchemaRegistry;
use crate::{ConnectorError, Result};

/// The field name of the record that wraps a non-record schema.
const WRAPPED: &str = "VALUE";
const NAMESPACE: &str = "io.confluent.ksql.avro_schemas";
const RECORD: &str = "KsqlDataSourceSchema";

/// The Avro schema ksqlDB registers for rows of `schema`: a record of optional fields, or, for an
/// unwrapped single column, that column's optional type.
pub fn schema_for(schema: &Schema, unwrapped: bool) -> Result<Value> {
    if unwrapped && schema.fields().len() == 1 {
        return optional(schema.field(0).data_type(), RECORD);
    }
    record(RECORD, Some(NAMESPACE), schema.fields())
}

fn record(name: &str, namespace: Option<&str>, fields: &Fields) -> Result<Value> {
    let mut out = Vec::with_capacity(fields.len());
    for f in fields {
        avro_name(f.name())?;
        let nested = format!("{name}_{}", f.name());
        out.push(json!({"name": f.name(), "type": optional(f.data_type(), &nested)?, "default": null}));
    }
    let mut r = json!({"type": "record", "name": name, "fields": out});
    if let Some(ns) = namespace {
        r["namespace"] = json!(ns);
        r["connect.name"] = json!(format!("{ns}.{name}"));
    }
    Ok(r)
}

/// Avro names start with a letter or `_` and go on with letters, digits and `_`.
fn avro_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let problem = match chars.next() {
        Some(c) if !(c.is_ascii_alphabetic() || c == '_') => "Illegal initial character",
        None => "Empty name",
        Some(_) if !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') => "Illegal character in",
        Some(_) => return Ok(()),
    };
    Err(ConnectorError::Unsupported(format!("Schema is not compatible with Avro: {problem}: {name}")))
}

/// `["null", T]`: ksqlDB's columns, elements and map values are all optional.
fn optional(dt: &DataType, name: &str) -> Result<Value> {
    Ok(json!(["null", avro_type(dt, name)?]))
}

fn avro_type(dt: &DataType, name: &str) -> Result<Value> {
    Ok(match dt {
        DataType::Boolean => json!("boolean"),
        DataType::Int8 | DataType::Int16 | DataType::Int32 => json!("int"),
        DataType::Int64 => json!("long"),
        DataType::Float32 | DataType::Float64 => json!("double"),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => json!("string"),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => json!("bytes"),
        DataType::Decimal128(p, s) => json!({"type": "bytes", "logicalType": "decimal", "precision": p, "scale": s}),
        DataType::Timestamp(_, _) => json!({"type": "long", "logicalType": "timestamp-millis"}),
        DataType::Date32 => json!({"type": "int", "logicalType": "date"}),
        DataType::Time32(_) | DataType::Time64(_) => json!({"type": "int", "logicalType": "time-millis"}),
        DataType::List(f) => json!({"type": "array", "items": optional(f.data_type(), name)?}),
        DataType::Map(entries, _) => match entries.data_type() {
            DataType::Struct(kv) if kv.len() == 2 && matches!(kv[0].data_type(), DataType::Utf8) => {
                json!({"type": "map", "values": optional(kv[1].data_type(), name)?})
            }
            _ => return Err(ConnectorError::Unsupported("Avro only supports MAPs with STRING keys".into())),
        },
        DataType::Struct(fields) => record(name, None, fields)?,
        other => return Err(ConnectorError::Unsupported(format!("AVRO cannot carry values of type {other}"))),
    })
}

/// The Arrow type of an Avro schema (as ksqlDB maps Avro to SQL types); `None` for a type SQL
/// has no column type for. Unions of null and one type are that type, optional.
pub fn arrow_type(avro: &Value) -> Option<DataType> {
    Some(match avro {
        Value::String(name) => primitive(name)?,
        Value::Array(branches) => {
            let mut non_null = branches.iter().filter(|b| b.as_str() != Some("null"));
            let t = non_null.next()?;
            if non_null.next().is_some() {
                return None;
            }
            arrow_type(t)?
        }
        Value::Object(o) => {
            let logical = o.get("logicalType").and_then(Value::as_str);
            match (o.get("type")?.as_str()?, logical) {
                ("bytes" | "fixed", Some("decimal")) => {
                    let p = o.get("precision")?.as_u64()? as u8;
                    let s = o.get("scale").and_then(Value::as_u64).unwrap_or(0) as i8;
                    DataType::Decimal128(p, s)
                }
                ("long", Some("timestamp-millis" | "timestamp-micros" | "local-timestamp-millis")) => {
                    DataType::Timestamp(TimeUnit::Millisecond, None)
                }
                ("int", Some("date")) => DataType::Date32,
                ("int", Some("time-millis")) | ("long", Some("time-micros")) => DataType::Time32(TimeUnit::Millisecond),
                ("array", _) => DataType::List(Arc::new(Field::new("item", arrow_type(o.get("items")?)?, true))),
                ("map", _) => DataType::Map(
                    Arc::new(Field::new(
                        "entries",
                        DataType::Struct(Fields::from(vec![
                            Field::new("key", DataType::Utf8, false),
                            Field::new("value", arrow_type(o.get("values")?)?, true),
                        ])),
                        false,
                    )),
                    false,
                ),
                ("record", _) => DataType::Struct(record_fields(o.get("fields")?)?),
                ("enum", _) => DataType::Utf8,
                ("fixed", _) => DataType::Binary,
                (name, _) => primitive(name)?,
            }
        }
        _ => return None,
    })
}

fn record_fields(fields: &Value) -> Option<Fields> {
    let fields = fields.as_array()?;
    let mut out = Vec::with_capacity(fields.len());
    for f in fields {
        out.push(Field::new(f.get("name")?.as_str()?, arrow_type(f.get("type")?)?, true));
    }
    Some(Fields::from(out))
}

fn primitive(name: &str) -> Option<DataType> {
    Some(match name {
        "boolean" => DataType::Boolean,
        "int" => DataType::Int32,
        "long" => DataType::Int64,
        "float" | "double" => DataType::Float64,
        "string" => DataType::Utf8,
        "bytes" => DataType::Binary,
        _ => return None,
    })
}

/// The columns of a registered schema: a record's fields, or one column named `single` for any
/// other schema. `None` when a field's type has no SQL type.
pub fn columns_of(avro: &Value, single: &str) -> Option<Fields> {
    if is_record(avro) {
        record_fields(avro.get("fields")?)
    } else {
        Some(Fields::from(vec![Field::new(single, arrow_type(avro)?, true)]))
    }
}

/// Whether a schema is a record at the top (an optional record is one value, which arrow-avro
/// reads wrapped, like any other non-record schema).
fn is_record(avro: &Value) -> bool {
    matches!(avro, Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("record"))
}

/// `avro` as a top-level record: itself if it is one, else a record of one field holding it.
fn as_record(avro: &Value) -> Value {
    match avro {
        _ if is_record(avro) => avro.clone(),
        other => json!({"type": "record", "name": "RillWrapped", "fields": [{"name": WRAPPED, "type": other}]}),
    }
}

/// arrow-avro's decoder of records framed with schema `id`, whose schema is `avro` (read as a
/// record, see [`as_record`]).
fn body_decoder(
    id: u32,
    avro: &Value,
    batch_size: usize,
) -> std::result::Result<AvroBodyDecoder, arrow::error::ArrowError> {
    let mut store = SchemaStore::new_with_type(FingerprintAlgorithm::Id);
    store.set(Fingerprint::Id(id), AvroSchema::new(as_record(avro).to_string()))?;
    ReaderBuilder::new()
        .with_writer_schema_store(store)
        .with_active_fingerprint(Fingerprint::Id(id))
        .with_batch_size(batch_size)
        .build_decoder()
}

/// arrow-avro's encoder of rows of `schema` (the Avro schema in its metadata), framed with `id`.
fn body_encoder(schema: &Schema, id: u32) -> Result<arrow_avro::writer::Encoder> {
    WriterBuilder::new(schema.clone())
        .with_fingerprint_strategy(FingerprintStrategy::Id(id))
        .build_encoder::<AvroSoeFormat>()
        .map_err(|e| ConnectorError::Encode(format!("AVRO: {e}")))
}

/// `columns` cast to the types of `fields` where they differ.
fn cast_to(columns: &[ArrayRef], fields: &Fields) -> std::result::Result<Vec<ArrayRef>, arrow::error::ArrowError> {
    columns
        .iter()
        .zip(fields)
        .map(|(c, f)| if c.data_type() == f.data_type() { Ok(c.clone()) } else { cast(c, f.data_type()) })
        .collect()
}

/// Splits an AVRO value into its schema id and body.
fn split_frame(value: &[u8]) -> std::result::Result<(u32, &[u8]), String> {
    super::split_frame("AVRO", value)
}

/// How records written with one schema id are read.
struct ById {
    /// arrow-avro's decoder for that writer schema (framed records in, writer-typed rows out).
    body: AvroBodyDecoder,
    /// Whether the writer schema is a record (else one wrapped value).
    record: bool,
    /// Whether the decoded columns are the target's already (names and types).
    direct: bool,
}

/// Decodes AVRO values written with any registered schema into rows of the target schema.
pub(crate) struct AvroDecoder {
    schema: SchemaRef,
    unwrapped: bool,
    registry: Arc<dyn SchemaRegistry>,
    by_id: HashMap<u32, ById>,
    /// Reads the JSON text of rows written with another schema.
    json: Box<dyn Decoder>,
}

impl AvroDecoder {
    pub(crate) fn try_new(
        schema: SchemaRef,
        wrap_single_value: bool,
        registry: Arc<dyn SchemaRegistry>,
    ) -> Result<Self> {
        let unwrapped = !wrap_single_value && schema.fields().len() == 1;
        let mut format = super::Format::new(super::FormatKind::Json);
        format.wrap_single_value = !unwrapped;
        let json = super::decoder(&format, schema.clone(), None)?;
        Ok(Self { schema, unwrapped, registry, by_id: HashMap::new(), json })
    }

    fn reader(&mut self, id: u32) -> std::result::Result<&mut ById, String> {
        if !self.by_id.contains_key(&id) {
            let text = self
                .registry
                .schema(id)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("Schema id {id} is not in the schema registry"))?;
            let writer: Value = serde_json::from_str(&text).map_err(|e| format!("schema {id}: {e}"))?;
            let record = is_record(&writer);
            let body = body_decoder(id, &writer, usize::MAX / 2).map_err(|e| format!("schema {id}: {e}"))?;
            let direct = record != self.unwrapped && same_columns(&body.schema(), &self.schema);
            self.by_id.insert(id, ById { body, record, direct });
        }
        Ok(self.by_id.get_mut(&id).expect("inserted above"))
    }

    /// Decodes a run of records that share a schema id: Err(message) when any is bad.
    fn decode_run(&mut self, id: u32, values: &[&[u8]]) -> std::result::Result<Vec<RecordBatch>, String> {
        let schema = self.schema.clone();
        let reader = self.reader(id)?;
        let mut batches = Vec::new();
        for v in values {
            let consumed = reader.body.decode(v).map_err(|e| e.to_string())?;
            if consumed != v.len() {
                // A partial body (truncated record) would be glued to the next record's bytes.
                reader.body.flush().ok();
                return Err("AVRO value has bytes the schema does not account for, or is truncated".into());
            }
        }
        if let Some(b) = reader.body.flush().map_err(|e| e.to_string())? {
            batches.push(b);
        }
        if reader.direct {
            return batches
                .into_iter()
                .map(|b| {
                    let columns = cast_to(b.columns(), schema.fields()).map_err(|e| e.to_string())?;
                    RecordBatch::try_new_with_options(
                        schema.clone(),
                        columns,
                        &RecordBatchOptions::new().with_row_count(Some(b.num_rows())),
                    )
                    .map_err(|e| e.to_string())
                })
                .collect();
        }
        // Through JSON: the writer's rows as JSON text, read with the target's rules.
        let record = reader.record;
        let mut out = Vec::new();
        for b in batches {
            let mut format = super::Format::new(super::FormatKind::Json);
            format.wrap_single_value = record;
            let mut encoder = super::encoder(&format, b.schema(), None).map_err(|e| e.to_string())?;
            let mut texts = Vec::with_capacity(b.num_rows());
            encoder.encode(&b, &mut texts).map_err(|e| e.to_string())?;
            let slices: Vec<&[u8]> = texts.iter().map(|t| t.as_deref().unwrap_or(b"null")).collect();
            let decoded = self.json.decode(&slices).map_err(|e| e.to_string())?;
            if let Some((_, e)) = decoded.errors.first() {
                return Err(e.clone());
            }
            out.push(decoded.batch);
        }
        Ok(out)
    }
}

/// Whether decoded columns are the target's: same names (any case) and types.
fn same_columns(decoded: &Schema, target: &Schema) -> bool {
    decoded.fields().len() == target.fields().len()
        && decoded
            .fields()
            .iter()
            .zip(target.fields())
            .all(|(d, t)| d.name().eq_ignore_ascii_case(t.name()) && same_type(d.data_type(), t.data_type()))
}

fn same_type(decoded: &DataType, target: &DataType) -> bool {
    match (decoded, target) {
        (DataType::List(a), DataType::List(b)) => same_type(a.data_type(), b.data_type()),
        (DataType::Struct(a), DataType::Struct(b)) => {
            a.len() == b.len()
                && a.iter().zip(b).all(|(x, y)| x.name() == y.name() && same_type(x.data_type(), y.data_type()))
        }
        (DataType::Timestamp(_, _), DataType::Timestamp(_, _)) => true,
        (a, b) => a == b,
    }
}

impl Decoder for AvroDecoder {
    fn decode(&mut self, values: &[&[u8]]) -> Result<Decoded> {
        let mut parts: Vec<RecordBatch> = Vec::new();
        let mut good: Vec<u32> = Vec::with_capacity(values.len());
        let mut errors = Vec::new();
        let mut i = 0;
        while i < values.len() {
            let id = match split_frame(values[i]) {
                Ok((id, _)) => id,
                Err(e) => {
                    errors.push((i, e));
                    i += 1;
                    continue;
                }
            };
            let mut j = i + 1;
            while j < values.len() && matches!(split_frame(values[j]), Ok((other, _)) if other == id) {
                j += 1;
            }
            match self.decode_run(id, &values[i..j]) {
                Ok(batches) => {
                    parts.extend(batches);
                    good.extend(i as u32..j as u32);
                }
                Err(_) if j - i > 1 => {
                    // Find the bad records one by one.
                    for k in i..j {
                        match self.decode_run(id, &values[k..k + 1]) {
                            Ok(batches) => {
                                parts.extend(batches);
                                good.push(k as u32);
                            }
                            Err(e) => errors.push((k, e)),
                        }
                    }
                }
                Err(e) => errors.push((i, e)),
            }
            i = j;
        }
        let batch = match parts.len() {
            0 => RecordBatch::new_empty(self.schema.clone()),
            1 => parts.swap_remove(0),
            _ => arrow::compute::concat_batches(&self.schema, &parts)?,
        };
        let good = (!errors.is_empty()).then_some(good);
        Ok(Decoded { batch, good, errors })
    }
}

/// Encodes rows as AVRO records of the schema registered for them.
pub(crate) struct AvroEncoder {
    /// The rows' schema as arrow-avro writes it (Avro types, the Avro schema in its metadata).
    schema: SchemaRef,
    body: arrow_avro::writer::Encoder,
    /// With a given registered schema: per field of it, the row column it takes (by name, in
    /// any case), or its default (a one-row array) when the rows have no such column.
    fill: Option<Vec<Fill>>,
}

/// Where a field of a given schema comes from.
enum Fill {
    Column(usize),
    Default(ArrayRef),
}

impl AvroEncoder {
    /// Registers the schema of `schema`'s rows under `subject` and encodes with its id.
    pub(crate) fn try_new(
        schema: SchemaRef,
        wrap_single_value: bool,
        registry: &dyn SchemaRegistry,
        subject: &str,
    ) -> Result<Self> {
        let unwrapped = !wrap_single_value && schema.fields().len() == 1;
        let avro = schema_for(&schema, unwrapped)?;
        let id = registry.register(subject, &avro.to_string())?;
        let fields: Vec<Field> = if unwrapped {
            vec![Field::new(WRAPPED, writable(schema.field(0).data_type()), true)]
        } else {
            schema.fields().iter().map(|f| Field::new(f.name(), writable(f.data_type()), true)).collect()
        };
        let metadata = HashMap::from([(SCHEMA_METADATA_KEY.to_string(), as_record(&avro).to_string())]);
        let schema = Arc::new(Schema::new_with_metadata(fields, metadata));
        let body = body_encoder(&schema, id)?;
        Ok(Self { schema, body, fill: None })
    }

    /// Encodes rows of `rows` with the schema registered as `id` (a sink's `VALUE_SCHEMA_ID`):
    /// its fields take the row columns of their names; the others their default, else null.
    pub(crate) fn with_schema_id(rows: &Schema, registry: &dyn SchemaRegistry, id: u32) -> Result<Self> {
        let text = super::registered_schema(registry, id)?;
        let avro: Value = serde_json::from_str(&text)
            .map_err(|e| ConnectorError::Unsupported(format!("Invalid Avro schema ({e}): {text}")))?;
        let record = as_record(&avro);
        let fields = body_decoder(id, &avro, 1)?.schema().fields().clone();
        let declared = record.get("fields").and_then(Value::as_array).cloned().unwrap_or_default();
        let mut fill = Vec::with_capacity(fields.len());
        // A schema of one value (not a record) takes a single column whatever its name.
        let single = !is_record(&avro) && rows.fields().len() == 1;
        for (f, d) in fields.iter().zip(&declared) {
            let found = match single {
                true => Some(0),
                false => rows.fields().iter().position(|r| r.name().eq_ignore_ascii_case(f.name())),
            };
            match found {
                Some(i) => fill.push(Fill::Column(i)),
                None => {
                    // The default, read as a JSON value of the field's type.
                    let default = d.get("default").cloned().unwrap_or(Value::Null);
                    if default.is_null() && !f.is_nullable() {
                        return Err(ConnectorError::Unsupported(format!(
                            "Schema id {id} has a field '{}' that no column fills and that has no default",
                            f.name()
                        )));
                    }
                    let plain =
                        Arc::new(Schema::new(vec![f.as_ref().clone().with_data_type(json_friendly(f.data_type()))]));
                    let mut json = super::decoder(&super::Format::new(super::FormatKind::Json), plain, None)?;
                    let text = json!({ f.name(): default }).to_string();
                    let decoded = json.decode(&[text.as_bytes()])?;
                    let column = match decoded.errors.first() {
                        Some((_, e)) => {
                            return Err(ConnectorError::Unsupported(format!("the default of field {}: {e}", f.name())))
                        }
                        None => cast(decoded.batch.column(0), f.data_type())?,
                    };
                    fill.push(Fill::Default(column));
                }
            }
        }
        let metadata = HashMap::from([(SCHEMA_METADATA_KEY.to_string(), record.to_string())]);
        let schema = Arc::new(Schema::new_with_metadata(fields, metadata));
        let body = body_encoder(&schema, id)?;
        Ok(Self { schema, body, fill: Some(fill) })
    }
}

/// The Arrow type arrow-avro writes for the Avro type [`avro_type`] gives `dt`.
fn writable(dt: &DataType) -> DataType {
    match dt {
        DataType::Int8 | DataType::Int16 => DataType::Int32,
        DataType::Float32 => DataType::Float64,
        DataType::LargeUtf8 | DataType::Utf8View => DataType::Utf8,
        DataType::LargeBinary | DataType::BinaryView => DataType::Binary,
        DataType::Timestamp(_, _) => DataType::Timestamp(TimeUnit::Millisecond, Some("+00:00".into())),
        DataType::Time32(_) | DataType::Time64(_) => DataType::Time32(TimeUnit::Millisecond),
        DataType::List(f) => DataType::List(Arc::new(Field::new(f.name(), writable(f.data_type()), true))),
        DataType::Map(entries, sorted) => match entries.data_type() {
            DataType::Struct(kv) => DataType::Map(
                Arc::new(Field::new(
                    entries.name(),
                    DataType::Struct(Fields::from(vec![
                        Field::new(kv[0].name(), writable(kv[0].data_type()), false),
                        Field::new(kv[1].name(), writable(kv[1].data_type()), true),
                    ])),
                    false,
                )),
                *sorted,
            ),
            other => other.clone(),
        },
        DataType::Struct(fields) => DataType::Struct(
            fields.iter().map(|f| Field::new(f.name(), writable(f.data_type()), true)).collect::<Vec<_>>().into(),
        ),
        other => other.clone(),
    }
}

impl Encoder for AvroEncoder {
    fn encode(&mut self, batch: &RecordBatch, out: &mut Vec<Option<Bytes>>) -> Result<()> {
        let columns = match &self.fill {
            None => batch.columns().to_vec(),
            Some(fill) => {
                let zeros = arrow::array::UInt32Array::from(vec![0; batch.num_rows()]);
                fill.iter()
                    .map(|f| match f {
                        Fill::Column(i) => Ok(batch.column(*i).clone()),
                        Fill::Default(one) => Ok(arrow::compute::take(one.as_ref(), &zeros, None)?),
                    })
                    .collect::<Result<Vec<_>>>()?
            }
        };
        let columns = cast_to(&columns, self.schema.fields())?;
        let rows = RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
        )?;
        self.body.encode(&rows).map_err(|e| ConnectorError::Encode(format!("AVRO: {e}")))?;
        let encoded = self.body.flush();
        out.extend(encoded.iter().map(Some));
        Ok(())
    }
}

/// Writes JSON values as AVRO records of a given registered schema (a producer's schema, as
/// `kafka-avro-console-producer` takes one): field names match case-insensitively and scalars
/// coerce as in the JSON format. One record per value; `None` for a JSON null.
pub fn encode_json(schema_text: &str, id: u32, values: &[Value]) -> Result<Vec<Option<Bytes>>> {
    let avro: Value = serde_json::from_str(schema_text)
        .map_err(|e| ConnectorError::Unsupported(format!("Invalid Avro schema ({e}): {schema_text}")))?;
    let wrapped = as_record(&avro).to_string();
    // The Arrow schema arrow-avro itself reads and writes this Avro schema as.
    let arrow_schema = body_decoder(id, &avro, 1024)?.schema();
    // JSON is read into plain types (enums' dictionaries as strings), then cast to arrow-avro's.
    let plain = Schema::new(
        arrow_schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_data_type(json_friendly(f.data_type())))
            .collect::<Vec<_>>(),
    );
    let mut format = super::Format::new(super::FormatKind::Json);
    format.wrap_single_value = is_record(&avro);
    let mut json = super::decoder(&format, Arc::new(plain), None)?;
    let texts: Vec<Vec<u8>> = values.iter().filter(|v| !v.is_null()).map(|v| v.to_string().into_bytes()).collect();
    let slices: Vec<&[u8]> = texts.iter().map(Vec::as_slice).collect();
    let decoded = json.decode(&slices)?;
    if let Some((i, e)) = decoded.errors.first() {
        return Err(ConnectorError::Encode(format!("cannot write {} as {schema_text}: {e}", texts[*i].escape_ascii())));
    }
    let metadata = HashMap::from([(SCHEMA_METADATA_KEY.to_string(), wrapped)]);
    let schema = Schema::new_with_metadata(arrow_schema.fields().clone(), metadata);
    let mut body = body_encoder(&schema, id)?;
    let columns = cast_to(decoded.batch.columns(), schema.fields())?;
    let batch = RecordBatch::try_new_with_options(
        Arc::new(schema),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(decoded.batch.num_rows())),
    )?;
    body.encode(&batch).map_err(|e| ConnectorError::Encode(format!("AVRO: {e}")))?;
    let mut rows = body.flush().iter().collect::<Vec<_>>().into_iter();
    Ok(values.iter().map(|v| if v.is_null() { None } else { rows.next() }).collect())
}

/// The type JSON is read as before it is cast to `dt`: enums' dictionaries as strings, temporal
/// values as the numbers Avro encodes them with (so that text like "10" reads as a number).
fn json_friendly(dt: &DataType) -> DataType {
    let field = |f: &Field| f.clone().with_data_type(json_friendly(f.data_type()));
    match dt {
        DataType::Dictionary(_, v) => json_friendly(v),
        DataType::Timestamp(_, _) | DataType::Time64(_) => DataType::Int64,
        DataType::Date32 | DataType::Time32(_) => DataType::Int32,
        DataType::List(f) => DataType::List(Arc::new(field(f))),
        DataType::Struct(fields) => DataType::Struct(fields.iter().map(|f| field(f)).collect::<Vec<_>>().into()),
        DataType::Map(entries, sorted) => DataType::Map(Arc::new(field(entries)), *sorted),
        other => other.clone(),
    }
}

/// Reads an AVRO record as JSON with the schema it was written with (as
/// `kafka-avro-console-consumer` shows it): temporal values as numbers, bytes as base64.
pub fn decode_json(registry: &dyn SchemaRegistry, value: &[u8]) -> Result<Value> {
    let (id, _) = split_frame(value).map_err(ConnectorError::Decode)?;
    let text =
        registry.schema(id)?.ok_or_else(|| ConnectorError::Decode(format!("Schema id {id} is not registered")))?;
    let avro: Value = serde_json::from_str(&text).map_err(|e| ConnectorError::Decode(format!("schema {id}: {e}")))?;
    let mut decoder = body_decoder(id, &avro, 1024)?;
    if decoder.decode(value).map_err(|e| ConnectorError::Decode(e.to_string()))? != value.len() {
        return Err(ConnectorError::Decode("AVRO value longer or shorter than its schema says".into()));
    }
    let batch = decoder
        .flush()
        .map_err(|e| ConnectorError::Decode(e.to_string()))?
        .ok_or_else(|| ConnectorError::Decode("no row decoded".into()))?;
    let mut format = super::Format::new(super::FormatKind::Json);
    format.wrap_single_value = is_record(&avro);
    let mut encoder = super::encoder(&format, batch.schema(), None)?;
    let mut out = Vec::new();
    encoder.encode(&batch, &mut out)?;
    match out.first() {
        Some(Some(text)) => serde_json::from_slice(text).map_err(|e| ConnectorError::Decode(e.to_string())),
        _ => Ok(Value::Null),
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{AsArray, Int32Array, Int64Array, StringArray};

    use super::*;
    use crate::registry::FileRegistry;

    fn rows() -> (SchemaRef, RecordBatch) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("ID", DataType::Int64, true),
            Field::new("NAME", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int64Array::from(vec![Some(1), None])), Arc::new(StringArray::from(vec![Some("a"), None]))],
        )
        .unwrap();
        (schema, batch)
    }

    #[test]
    fn round_trips_through_the_registry() {
        let registry: Arc<dyn SchemaRegistry> = Arc::new(FileRegistry::in_memory());
        let (schema, batch) = rows();
        let mut enc = AvroEncoder::try_new(schema.clone(), true, registry.as_ref(), "t-value").unwrap();
        let mut out = Vec::new();
        enc.encode(&batch, &mut out).unwrap();
        assert_eq!(out.len(), 2);
        let first = out[0].clone().unwrap();
        assert_eq!(split_frame(&first).unwrap().0, 1);
        let (id, text) = registry.latest("t-value").unwrap().unwrap();
        assert_eq!(id, 1);
        assert!(text.contains("KsqlDataSourceSchema"), "{text}");
        let mut dec = AvroDecoder::try_new(schema, true, registry).unwrap();
        let values: Vec<&[u8]> = out.iter().map(|v| v.as_deref().unwrap()).collect();
        let d = dec.decode(&values).unwrap();
        assert!(d.errors.is_empty());
        assert_eq!(d.batch, batch);
    }

    #[test]
    fn reads_a_producer_schema_with_coercion_and_reports_bad_records() {
        let registry: Arc<dyn SchemaRegistry> = Arc::new(FileRegistry::in_memory());
        // A producer writes {"name": string, "id": int} (other order, spelling and width).
        let producer = Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, true),
            Field::new("id", DataType::Int32, true),
        ]));
        let batch = RecordBatch::try_new(
            producer.clone(),
            vec![Arc::new(StringArray::from(vec!["x"])), Arc::new(Int32Array::from(vec![7]))],
        )
        .unwrap();
        let mut enc = AvroEncoder::try_new(producer, true, registry.as_ref(), "t-value").unwrap();
        let mut out = Vec::new();
        enc.encode(&batch, &mut out).unwrap();
        let (schema, _) = rows();
        let mut dec = AvroDecoder::try_new(schema, true, registry).unwrap();
        let good = out[0].clone().unwrap();
        let d = dec.decode(&[&good, b"\x00\x00\x00\x00\x09", b"plain", &good]).unwrap();
        assert_eq!(d.batch.num_rows(), 2);
        assert_eq!(d.good, Some(vec![0, 3]));
        assert_eq!(d.errors.len(), 2);
        assert!(d.errors[0].1.contains("Schema id 9"), "{:?}", d.errors);
        assert!(d.errors[1].1.contains("magic byte"), "{:?}", d.errors);
        assert_eq!(d.batch.column(0).as_primitive::<arrow::datatypes::Int64Type>().value(0), 7);
        assert_eq!(d.batch.column(1).as_string::<i32>().value(1), "x");
    }

    #[test]
    fn unwrapped_values_are_bare_avro() {
        let registry: Arc<dyn SchemaRegistry> = Arc::new(FileRegistry::in_memory());
        let schema = Arc::new(Schema::new(vec![Field::new("FOO", DataType::Int32, true)]));
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int32Array::from(vec![10]))]).unwrap();
        let mut enc = AvroEncoder::try_new(schema.clone(), false, registry.as_ref(), "t-value").unwrap();
        let mut out = Vec::new();
        enc.encode(&batch, &mut out).unwrap();
        // ["null","int"] branch 1 (zig-zag 2), then 10 (zig-zag 20).
        assert_eq!(&out[0].as_deref().unwrap()[5..], &[2, 20]);
        assert_eq!(registry.latest("t-value").unwrap().unwrap().1, r#"["null","int"]"#);
        let mut dec = AvroDecoder::try_new(schema, false, registry).unwrap();
        let d = dec.decode(&[out[0].as_deref().unwrap()]).unwrap();
        assert_eq!(d.batch, batch);
    }

    #[test]
    fn json_round_trips_through_a_producer_schema() {
        let registry = FileRegistry::in_memory();
        let text = r#"{"type": "record", "name": "r", "fields": [{"name": "c1", "type": "int"},
            {"name": "c2", "type": {"type": "array", "items": ["null", "string"]}},
            {"name": "t", "type": {"type": "long", "logicalType": "timestamp-millis"}}]}"#;
        let id = registry.register("t-value", text).unwrap();
        let values = [json!({"C1": 5, "c2": [1, "a", null], "t": "1000"}), Value::Null];
        let out = encode_json(text, id, &values).unwrap();
        assert!(out[1].is_none());
        let back = decode_json(&registry, out[0].as_deref().unwrap()).unwrap();
        assert_eq!(back, json!({"c1": 5, "c2": ["1", "a", null], "t": 1000}));
        let id = registry.register("u-value", r#""long""#).unwrap();
        let out = encode_json(r#""long""#, id, &[json!(7)]).unwrap();
        assert_eq!(decode_json(&registry, out[0].as_deref().unwrap()).unwrap(), json!(7));
        assert!(encode_json(text, 1, &[json!({"c1": "x"})]).is_err());
    }

    /// A sink given a registered schema (`VALUE_SCHEMA_ID`) writes its columns into the fields
    /// of their names (any case); other fields get their default, or null; a schema with a
    /// required field that has neither is refused.
    #[test]
    fn rows_are_written_with_a_given_registered_schema() {
        let registry = FileRegistry::in_memory();
        let text = r#"{"type": "record", "name": "blah", "fields": [{"name": "c1", "type": "int"},
            {"name": "c2", "type": "int", "default": 100}, {"name": "c3", "type": ["null", "string"], "default": null}]}"#;
        let id = registry.register("other-value", text).unwrap();
        let rows = Arc::new(Schema::new(vec![Field::new("C1", DataType::Int32, true)]));
        let batch = RecordBatch::try_new(rows.clone(), vec![Arc::new(Int32Array::from(vec![4, 5]))]).unwrap();
        let mut enc = AvroEncoder::with_schema_id(&rows, &registry, id).unwrap();
        let mut out = Vec::new();
        enc.encode(&batch, &mut out).unwrap();
        assert_eq!(super::super::split_frame("AVRO", out[0].as_deref().unwrap()).unwrap().0, id);
        assert_eq!(
            decode_json(&registry, out[1].as_deref().unwrap()).unwrap(),
            json!({"c1": 5, "c2": 100, "c3": null})
        );
        assert_eq!(registry.subjects(), vec!["other-value".to_string()], "nothing registered");
        // A schema of one value takes the one column.
        let long = registry.register("l-value", r#""long""#).unwrap();
        let mut out = Vec::new();
        AvroEncoder::with_schema_id(&rows, &registry, long).unwrap().encode(&batch, &mut out).unwrap();
        assert_eq!(decode_json(&registry, out[0].as_deref().unwrap()).unwrap(), json!(4));
        let required = registry
            .register("r-value", r#"{"type": "record", "name": "r", "fields": [{"name": "c1", "type": "int"}, {"name": "c2", "type": "double"}]}"#)
            .unwrap();
        let err = AvroEncoder::with_schema_id(&rows, &registry, required).err().unwrap();
        assert!(err.to_string().contains("field 'c2' that no column fills"), "{err}");
    }

    #[test]
    fn schemas_map_to_arrow_types() {
        let t = |v: Value| arrow_type(&v);
        assert_eq!(t(json!(["null", "long"])), Some(DataType::Int64));
        assert_eq!(t(json!({"type": "int", "logicalType": "date"})), Some(DataType::Date32));
        assert_eq!(
            t(json!({"type": "bytes", "logicalType": "decimal", "precision": 4, "scale": 2})),
            Some(DataType::Decimal128(4, 2))
        );
        assert_eq!(t(json!(["int", "string"])), None);
        let cols = columns_of(&json!({"type": "record", "name": "r", "fields": [{"name": "a", "type": "int"}]}), "X");
        assert_eq!(cols.unwrap()[0].name(), "a");
        assert_eq!(columns_of(&json!("string"), "ROWVAL").unwrap()[0].name(), "ROWVAL");
    }
}
