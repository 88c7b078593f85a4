//! Record formats: the bytes of record keys and values  <->  Arrow columns.
//!
//! Decoding is batched: a source hands a whole fetch of values to [`Decoder::decode`] and gets
//! one `RecordBatch` back, plus the records that failed (which go to the dead-letter topic).
//! Encoding is batched too: one call turns a `RecordBatch` into one byte value per row.

mod avro;
mod base64_bytes;
mod delimited;
mod json;
mod json_keys;
mod json_sr;
mod kafka;
mod protobuf;

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use bytes::Bytes;

pub use avro::{
    arrow_type as avro_arrow_type, columns_of as avro_columns, decode_json as avro_decode_json,
    encode_json as avro_encode_json, schema_for as avro_schema_for,
};
pub use json_sr::{
    arrow_type as json_schema_arrow_type, columns_of as json_schema_columns, schema_for as json_schema_for,
};
pub use protobuf::{
    columns_of as protobuf_columns, decode_json as protobuf_decode_json, encode_json as protobuf_encode_json,
    schema_for as protobuf_schema_for,
};

use crate::registry::SchemaRegistry;
use crate::{ConnectorError, Result};

/// The serialization formats Rill reads and writes (ksqlDB's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FormatKind {
    /// A JSON object per record (or a bare JSON value when unwrapped).
    Json,
    /// Comma (or other delimiter) separated values, no header.
    Delimited,
    /// Kafka's primitive serializers: big-endian INT/BIGINT/DOUBLE, UTF-8 STRING, raw BYTES.
    Kafka,
    /// No data at all (a stream without key columns).
    None,
    /// Avro in Confluent's wire format, schemas in the schema registry.
    Avro,
    /// JSON in Confluent's wire format (a JSON Schema in the schema registry).
    JsonSr,
    /// Protobuf in Confluent's wire format (a `.proto` schema in the schema registry).
    Protobuf,
    /// Protobuf messages alone, their schema the columns'.
    ProtobufNosr,
}

impl FormatKind {
    /// Parses a ksqlDB format name, case-insensitively.
    pub fn parse(name: &str) -> Result<Self> {
        match name.to_ascii_uppercase().as_str() {
            "JSON" => Ok(Self::Json),
            "DELIMITED" => Ok(Self::Delimited),
            "KAFKA" => Ok(Self::Kafka),
            "NONE" => Ok(Self::None),
            "AVRO" => Ok(Self::Avro),
            "JSON_SR" => Ok(Self::JsonSr),
            "PROTOBUF" => Ok(Self::Protobuf),
            "PROTOBUF_NOSR" => Ok(Self::ProtobufNosr),
            other => Err(ConnectorError::Unsupported(format!("Unknown format: {other}"))),
        }
    }

    /// The ksqlDB name of the format.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Json => "JSON",
            Self::Delimited => "DELIMITED",
            Self::Kafka => "KAFKA",
            Self::None => "NONE",
            Self::Avro => "AVRO",
            Self::JsonSr => "JSON_SR",
            Self::Protobuf => "PROTOBUF",
            Self::ProtobufNosr => "PROTOBUF_NOSR",
        }
    }

    /// Whether records of this format name their schema in a schema registry.
    pub fn uses_registry(&self) -> bool {
        matches!(self, Self::Avro | Self::JsonSr | Self::Protobuf)
    }
}

/// A format with its options.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Format {
    /// Which format.
    pub kind: FormatKind,
    /// For single-column schemas: whether the value is wrapped in an object (JSON) / record.
    pub wrap_single_value: bool,
    /// Field delimiter for DELIMITED.
    pub delimiter: u8,
    /// How PROTOBUF and PROTOBUF_NOSR write a null scalar.
    #[serde(default)]
    pub protobuf_nullable: ProtobufNullable,
    /// The registered schema's record or message to read and write (`*_SCHEMA_FULL_NAME`).
    #[serde(default)]
    pub schema_full_name: Option<String>,
    /// The registered schema a sink writes with (`*_SCHEMA_ID`), instead of registering its own.
    #[serde(default)]
    pub schema_id: Option<u32>,
}

impl Format {
    /// A format with default options.
    pub fn new(kind: FormatKind) -> Self {
        Self {
            kind,
            wrap_single_value: true,
            delimiter: b',',
            protobuf_nullable: ProtobufNullable::Default,
            schema_full_name: None,
            schema_id: None,
        }
    }
}

/// How PROTOBUF carries a nullable scalar column (ksqlDB's `*_PROTOBUF_NULLABLE_REPRESENTATION`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ProtobufNullable {
    /// A plain proto3 field: a null is written as the type's default and read back as it.
    #[default]
    Default,
    /// An `optional` field: a null is a field that is not set.
    Optional,
    /// A `google.protobuf.*Value` wrapper message: a null is a wrapper that is not set.
    Wrapper,
}

/// The result of decoding a set of record values.
pub struct Decoded {
    /// One row per successfully decoded record, in input order.
    pub batch: RecordBatch,
    /// Indices (into the input) of the rows in `batch`; `None` when every record decoded.
    pub good: Option<Vec<u32>>,
    /// Records that failed: input index and a message saying why.
    pub errors: Vec<(usize, String)>,
}

/// Turns record bytes into Arrow columns, a batch at a time.
pub trait Decoder: Send {
    /// Decodes one byte value per record into rows of the decoder's schema.
    fn decode(&mut self, values: &[&[u8]]) -> Result<Decoded>;
}

/// Turns Arrow rows into record bytes, a batch at a time.
pub trait Encoder: Send {
    /// Appends one value per row of `batch` to `out` (`None` for a null value).
    fn encode(&mut self, batch: &RecordBatch, out: &mut Vec<Option<Bytes>>) -> Result<()>;
}

/// `array` with every BYTES value (also nested) as a base64 string, as ksqlDB writes BYTES in text.
pub fn bytes_as_base64(array: &ArrayRef) -> Result<ArrayRef> {
    base64_bytes::to_text(array)
}

/// The 5 bytes before a registry format's body (Confluent's wire format): magic byte 0, then the
/// 4-byte big-endian schema id.
pub fn frame_header(id: u32) -> [u8; 5] {
    let b = id.to_be_bytes();
    [0, b[0], b[1], b[2], b[3]]
}

/// Splits a value of a registry format (`format` names it in errors) into its schema id and body.
pub fn split_frame<'a>(format: &str, value: &'a [u8]) -> std::result::Result<(u32, &'a [u8]), String> {
    match value {
        [0, a, b, c, d, body @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), body)),
        [] => Err(format!("empty {format} value")),
        [m, ..] if *m != 0 => Err(format!("Unknown magic byte {m}: not a {format} value from a schema registry")),
        _ => Err(format!("{format} value shorter than its 5-byte header (magic byte 0, schema id)")),
    }
}

/// Where a registry format (AVRO) finds its schemas: the registry, and the subject its rows are
/// registered under when written (`<topic>-value` or `<topic>-key`).
#[derive(Clone)]
pub struct Registered {
    /// The schema registry.
    pub registry: Arc<dyn SchemaRegistry>,
    /// The subject written rows register their schema under.
    pub subject: String,
}

fn registered<'a>(format: &Format, registered: Option<&'a Registered>) -> Result<&'a Registered> {
    registered.ok_or_else(|| {
        ConnectorError::Unsupported(format!("The {} format needs a schema registry", format.kind.name()))
    })
}

/// A decoder for `schema` in `format` (`registry`: for AVRO).
pub fn decoder(format: &Format, schema: SchemaRef, registry: Option<&Registered>) -> Result<Box<dyn Decoder>> {
    let text = matches!(format.kind, FormatKind::Json | FormatKind::Delimited);
    if text && schema.fields().iter().any(|f| base64_bytes::has_bytes(f.data_type())) {
        let inner = decoder(format, base64_bytes::text_schema(&schema), None)?;
        return Ok(Box::new(base64_bytes::Base64Decoder { inner, schema }));
    }
    match format.kind {
        FormatKind::Json => Ok(Box::new(json::JsonDecoder::try_new(schema, format.wrap_single_value)?)),
        FormatKind::Delimited => Ok(Box::new(delimited::DelimitedDecoder::new(schema, format.delimiter))),
        FormatKind::Kafka => Ok(Box::new(kafka::KafkaDecoder::try_new(schema)?)),
        FormatKind::Protobuf => {
            let r = registered(format, registry)?;
            Ok(Box::new(protobuf::ProtobufDecoder::try_new(
                schema,
                format.protobuf_nullable,
                Some(r.registry.clone()),
            )?))
        }
        FormatKind::ProtobufNosr => {
            Ok(Box::new(protobuf::ProtobufDecoder::try_new(schema, format.protobuf_nullable, None)?))
        }
        FormatKind::JsonSr => {
            // The header is checked here, the text read as JSON.
            let json = Format { kind: FormatKind::Json, ..format.clone() };
            Ok(Box::new(json_sr::JsonSrDecoder { inner: decoder(&json, schema.clone(), None)?, schema }))
        }
        FormatKind::Avro => {
            let r = registered(format, registry)?;
            Ok(Box::new(avro::AvroDecoder::try_new(schema, format.wrap_single_value, r.registry.clone())?))
        }
        FormatKind::None => {
            if !schema.fields().is_empty() {
                return Err(ConnectorError::Unsupported(
                    "The 'NONE' format can only be used when no columns are defined".into(),
                ));
            }
            Ok(Box::new(NoneCodec))
        }
    }
}

/// The schema text registered as `id` (a statement's `*_SCHEMA_ID`, a record's frame).
pub(crate) fn registered_schema(registry: &dyn SchemaRegistry, id: u32) -> Result<String> {
    registry
        .schema(id)?
        .ok_or_else(|| ConnectorError::Unsupported(format!("Schema id {id} is not in the schema registry")))
}

/// An encoder for rows of `schema` in `format` (`registry`: for AVRO, which registers the rows'
/// schema under its subject).
pub fn encoder(format: &Format, schema: SchemaRef, registry: Option<&Registered>) -> Result<Box<dyn Encoder>> {
    let text = matches!(format.kind, FormatKind::Json | FormatKind::Delimited);
    if text && schema.fields().iter().any(|f| base64_bytes::has_bytes(f.data_type())) {
        let inner = encoder(format, base64_bytes::text_schema(&schema), None)?;
        return Ok(Box::new(base64_bytes::Base64Encoder { inner }));
    }
    match format.kind {
        FormatKind::Json => Ok(Box::new(json::JsonEncoder::new(schema, format.wrap_single_value))),
        FormatKind::Delimited => Ok(Box::new(delimited::DelimitedEncoder::new(format.delimiter))),
        FormatKind::Kafka => Ok(Box::new(kafka::KafkaEncoder::try_new(schema)?)),
        FormatKind::Protobuf => {
            let r = registered(format, registry)?;
            if let Some(id) = format.schema_id {
                let name = format.schema_full_name.as_deref();
                return Ok(Box::new(protobuf::ProtobufEncoder::with_schema_id(schema, r.registry.as_ref(), id, name)?));
            }
            Ok(Box::new(protobuf::ProtobufEncoder::try_new(
                schema,
                format.protobuf_nullable,
                Some((r.registry.as_ref(), &r.subject)),
            )?))
        }
        FormatKind::ProtobufNosr => {
            Ok(Box::new(protobuf::ProtobufEncoder::try_new(schema, format.protobuf_nullable, None)?))
        }
        FormatKind::JsonSr => {
            let r = registered(format, registry)?;
            let json = Format { kind: FormatKind::Json, ..format.clone() };
            let unwrapped = !format.wrap_single_value;
            let inner = encoder(&json, schema.clone(), None)?;
            if let Some(id) = format.schema_id {
                return Ok(Box::new(json_sr::JsonSrEncoder::with_schema_id(inner, id)));
            }
            Ok(Box::new(json_sr::JsonSrEncoder::try_new(inner, &schema, unwrapped, r.registry.as_ref(), &r.subject)?))
        }
        FormatKind::Avro => {
            let r = registered(format, registry)?;
            let wrap = format.wrap_single_value;
            if let Some(id) = format.schema_id {
                return Ok(Box::new(avro::AvroEncoder::with_schema_id(&schema, r.registry.as_ref(), id)?));
            }
            Ok(Box::new(avro::AvroEncoder::try_new(schema, wrap, r.registry.as_ref(), &r.subject)?))
        }
        FormatKind::None => Ok(Box::new(NoneCodec)),
    }
}

struct NoneCodec;

impl Decoder for NoneCodec {
    fn decode(&mut self, values: &[&[u8]]) -> Result<Decoded> {
        let batch = RecordBatch::try_new_with_options(
            Arc::new(Schema::empty()),
            vec![],
            &RecordBatchOptions::new().with_row_count(Some(values.len())),
        )?;
        Ok(Decoded { batch, good: None, errors: vec![] })
    }
}

impl Encoder for NoneCodec {
    fn encode(&mut self, batch: &RecordBatch, out: &mut Vec<Option<Bytes>>) -> Result<()> {
        out.extend(std::iter::repeat_n(None, batch.num_rows()));
        Ok(())
    }
}

/// ksqlDB writes temporal values as numbers: TIMESTAMP as epoch millis, DATE as epoch days,
/// TIME as millis of the day. Casts such columns (also nested ones) to those numbers.
pub(crate) fn temporal_to_numbers(batch: &RecordBatch) -> Result<RecordBatch> {
    if !batch.schema().fields().iter().any(|f| needs_numeric(f.data_type())) {
        return Ok(batch.clone());
    }
    let mut fields = Vec::with_capacity(batch.num_columns());
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(batch.num_columns());
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        let target = numeric_type(field.data_type());
        if &target == field.data_type() {
            columns.push(column.clone());
        } else {
            columns.push(cast(column, &target)?);
        }
        fields.push(Field::new(field.name(), target, true));
    }
    Ok(RecordBatch::try_new_with_options(
        Arc::new(Schema::new(fields)),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )?)
}

/// `schema` with TIMESTAMP and DATE columns as the numbers that encode them.
pub(crate) fn numbers_schema(schema: &Schema) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Timestamp(_, _) | DataType::Date32 => {
                f.as_ref().clone().with_data_type(numeric_type(f.data_type()))
            }
            _ => f.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new(fields))
}

fn needs_numeric(dt: &DataType) -> bool {
    &numeric_type(dt) != dt
}

fn numeric_type(dt: &DataType) -> DataType {
    match dt {
        DataType::Timestamp(_, _) => DataType::Int64,
        DataType::Date32 => DataType::Int32,
        DataType::Time32(_) | DataType::Time64(_) => DataType::Int64,
        DataType::List(f) => DataType::List(Arc::new(Field::new(f.name(), numeric_type(f.data_type()), true))),
        DataType::Struct(fs) => DataType::Struct(
            fs.iter().map(|f| Arc::new(Field::new(f.name(), numeric_type(f.data_type()), true))).collect(),
        ),
        other => other.clone(),
    }
}

/// The Arrow type ksqlDB's TIMESTAMP maps to.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, None)
}

/// Decodes the records that passed a first step (their bytes `passed`, their input indices `at`)
/// with `inner`, and reports both steps' failures by input index.
pub(crate) fn decode_passed(
    inner: &mut dyn Decoder,
    schema: &SchemaRef,
    passed: &[&[u8]],
    at: &[usize],
    mut errors: Vec<(usize, String)>,
) -> Result<Decoded> {
    if errors.is_empty() {
        return inner.decode(passed);
    }
    let decoded = if passed.is_empty() {
        Decoded { batch: RecordBatch::new_empty(schema.clone()), good: Some(vec![]), errors: vec![] }
    } else {
        inner.decode(passed)?
    };
    let good = match decoded.good {
        Some(g) => g.into_iter().map(|j| at[j as usize] as u32).collect(),
        None => at.iter().map(|i| *i as u32).collect(),
    };
    errors.extend(decoded.errors.into_iter().map(|(j, e)| (at[j], e)));
    errors.sort_by_key(|(i, _)| *i);
    Ok(Decoded { batch: decoded.batch, good: Some(good), errors })
}

/// Decodes record by record after a batched decode failed, so that the bad records can be
/// reported and the good ones kept.
pub(crate) fn decode_one_by_one(
    values: &[&[u8]],
    schema: &SchemaRef,
    mut one: impl FnMut(&[u8]) -> std::result::Result<RecordBatch, String>,
) -> Result<Decoded> {
    let mut good = Vec::new();
    let mut batches = Vec::new();
    let mut errors = Vec::new();
    for (i, v) in values.iter().enumerate() {
        match one(v) {
            Ok(b) if b.num_rows() == 1 => {
                good.push(i as u32);
                batches.push(b);
            }
            Ok(b) => errors.push((i, format!("expected one row, decoded {}", b.num_rows()))),
            Err(e) => errors.push((i, e)),
        }
    }
    let batch = if batches.is_empty() {
        RecordBatch::new_empty(schema.clone())
    } else {
        arrow::compute::concat_batches(schema, &batches)?
    };
    Ok(Decoded { batch, good: Some(good), errors })
}
