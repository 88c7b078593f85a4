//! KAFKA format: Kafka's primitive serializers for a single column.
//! INT is 4 bytes big-endian, BIGINT and DOUBLE 8 bytes big-endian, STRING UTF-8, BYTES raw.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryArray, BinaryBuilder, Float64Array, Float64Builder, Int32Array, Int32Builder, Int64Array,
    Int64Builder, RecordBatch, RecordBatchOptions, StringArray, StringBuilder,
};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use bytes::Bytes;

use super::{Decoded, Decoder, Encoder};
use crate::{ConnectorError, Result};

pub(crate) fn check(schema: &Schema, what: &str) -> Result<()> {
    match schema.fields().len() {
        0 => Ok(()),
        1 => match schema.field(0).data_type() {
            DataType::Int32 | DataType::Int64 | DataType::Float64 | DataType::Utf8 | DataType::Binary => Ok(()),
            other => Err(ConnectorError::Unsupported(format!(
                "The 'KAFKA' format does not support type '{}'",
                super_type_name(other)
            ))),
        },
        _ => Err(ConnectorError::Unsupported(format!(
            "The 'KAFKA' format only supports a single field. Got: {what} with {} fields",
            schema.fields().len()
        ))),
    }
}

fn super_type_name(dt: &DataType) -> String {
    match dt {
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Decimal128(_, _) => "DECIMAL".into(),
        DataType::List(_) => "ARRAY".into(),
        DataType::Map(_, _) => "MAP".into(),
        DataType::Struct(_) => "STRUCT".into(),
        DataType::Timestamp(_, _) => "TIMESTAMP".into(),
        DataType::Date32 => "DATE".into(),
        DataType::Time32(_) | DataType::Time64(_) => "TIME".into(),
        other => other.to_string(),
    }
}

pub(crate) struct KafkaDecoder {
    schema: SchemaRef,
}

impl KafkaDecoder {
    pub(crate) fn try_new(schema: SchemaRef) -> Result<Self> {
        check(&schema, "schema")?;
        Ok(Self { schema })
    }
}

fn width_error(expected: usize, got: usize) -> String {
    format!("Size of data received by Deserializer is not {expected}: got {got} bytes")
}

impl Decoder for KafkaDecoder {
    fn decode(&mut self, values: &[&[u8]]) -> Result<Decoded> {
        if self.schema.fields().is_empty() {
            let batch = RecordBatch::try_new_with_options(
                self.schema.clone(),
                vec![],
                &RecordBatchOptions::new().with_row_count(Some(values.len())),
            )?;
            return Ok(Decoded { batch, good: None, errors: vec![] });
        }
        let mut errors = Vec::new();
        let mut good = Vec::with_capacity(values.len());
        let column: ArrayRef = match self.schema.field(0).data_type() {
            DataType::Int32 => {
                let mut b = Int32Builder::with_capacity(values.len());
                for (i, v) in values.iter().enumerate() {
                    match <[u8; 4]>::try_from(*v) {
                        Ok(a) => {
                            b.append_value(i32::from_be_bytes(a));
                            good.push(i as u32);
                        }
                        Err(_) => errors.push((i, width_error(4, v.len()))),
                    }
                }
                Arc::new(b.finish())
            }
            DataType::Int64 => {
                let mut b = Int64Builder::with_capacity(values.len());
                for (i, v) in values.iter().enumerate() {
                    match <[u8; 8]>::try_from(*v) {
                        Ok(a) => {
                            b.append_value(i64::from_be_bytes(a));
                            good.push(i as u32);
                        }
                        Err(_) => errors.push((i, width_error(8, v.len()))),
                    }
                }
                Arc::new(b.finish())
            }
            DataType::Float64 => {
                let mut b = Float64Builder::with_capacity(values.len());
                for (i, v) in values.iter().enumerate() {
                    match <[u8; 8]>::try_from(*v) {
                        Ok(a) => {
                            b.append_value(f64::from_be_bytes(a));
                            good.push(i as u32);
                        }
                        Err(_) => errors.push((i, width_error(8, v.len()))),
                    }
                }
                Arc::new(b.finish())
            }
            DataType::Utf8 => {
                let mut b = StringBuilder::with_capacity(values.len(), values.iter().map(|v| v.len()).sum());
                for (i, v) in values.iter().enumerate() {
                    match std::str::from_utf8(v) {
                        Ok(s) => {
                            b.append_value(s);
                            good.push(i as u32);
                        }
                        Err(e) => errors.push((i, format!("value is not valid UTF-8: {e}"))),
                    }
                }
                Arc::new(b.finish())
            }
            _ => {
                let mut b = BinaryBuilder::with_capacity(values.len(), values.iter().map(|v| v.len()).sum());
                for (i, v) in values.iter().enumerate() {
                    b.append_value(v);
                    good.push(i as u32);
                }
                Arc::new(b.finish())
            }
        };
        let batch = RecordBatch::try_new(self.schema.clone(), vec![column])?;
        let good = if errors.is_empty() { None } else { Some(good) };
        Ok(Decoded { batch, good, errors })
    }
}

pub(crate) struct KafkaEncoder;

impl KafkaEncoder {
    pub(crate) fn try_new(schema: SchemaRef) -> Result<Self> {
        check(&schema, "schema")?;
        Ok(Self)
    }
}

impl Encoder for KafkaEncoder {
    fn encode(&mut self, batch: &RecordBatch, out: &mut Vec<Option<Bytes>>) -> Result<()> {
        if batch.num_columns() == 0 {
            out.extend(std::iter::repeat_n(None, batch.num_rows()));
            return Ok(());
        }
        let col = batch.column(0);
        macro_rules! each {
            ($ty:ty, $f:expr) => {{
                let a = col
                    .as_any()
                    .downcast_ref::<$ty>()
                    .ok_or_else(|| ConnectorError::Encode(format!("KAFKA format cannot encode {}", col.data_type())))?;
                for i in 0..a.len() {
                    out.push(if a.is_null(i) { None } else { Some($f(a.value(i))) });
                }
            }};
        }
        match col.data_type() {
            DataType::Int32 => each!(Int32Array, |v: i32| Bytes::copy_from_slice(&v.to_be_bytes())),
            DataType::Int64 => each!(Int64Array, |v: i64| Bytes::copy_from_slice(&v.to_be_bytes())),
            DataType::Float64 => each!(Float64Array, |v: f64| Bytes::copy_from_slice(&v.to_be_bytes())),
            DataType::Utf8 => each!(StringArray, |v: &str| Bytes::copy_from_slice(v.as_bytes())),
            DataType::Binary => each!(BinaryArray, |v: &[u8]| Bytes::copy_from_slice(v)),
            other => {
                return Err(ConnectorError::Unsupported(format!(
                    "The 'KAFKA' format does not support type '{}'",
                    super_type_name(other)
                )))
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use arrow::datatypes::Field;

    use super::*;

    #[test]
    fn big_endian_round_trip_and_bad_width() {
        let schema = Arc::new(Schema::new(vec![Field::new("K", DataType::Int64, true)]));
        let one = 42i64.to_be_bytes();
        let out = KafkaDecoder::try_new(schema.clone()).unwrap().decode(&[&one, b"abc"]).unwrap();
        assert_eq!(out.good, Some(vec![0]));
        let mut enc = Vec::new();
        KafkaEncoder::try_new(schema).unwrap().encode(&out.batch, &mut enc).unwrap();
        assert_eq!(enc[0].as_deref(), Some(&one[..]));
    }

    #[test]
    fn rejects_multi_column_schemas() {
        let schema = Schema::new(vec![Field::new("A", DataType::Int64, true), Field::new("B", DataType::Int64, true)]);
        assert!(check(&schema, "value").is_err());
    }
}
