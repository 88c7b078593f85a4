//! JSON values: arrow-json's tape decoder for reading, its row encoders for writing.

use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch, StructArray};
use arrow::datatypes::{DataType, Field, FieldRef, SchemaRef};
use arrow_json::reader::{Decoder as ArrowJsonDecoder, ReaderBuilder};
use arrow_json::writer::{make_encoder, EncoderOptions};
use bytes::Bytes;

use super::json_keys::{normalize, Shape};
use super::{decode_one_by_one, temporal_to_numbers, Decoded, Decoder, Encoder};
use crate::{ConnectorError, Result};

/// Decodes JSON objects (or, unwrapped, bare JSON values) into rows.
pub(crate) struct JsonDecoder {
    schema: SchemaRef,
    unwrapped: bool,
    shape: Shape,
    buf: Vec<u8>,
    decoder: ArrowJsonDecoder,
}

impl JsonDecoder {
    pub(crate) fn try_new(schema: SchemaRef, wrap_single_value: bool) -> Result<Self> {
        let unwrapped = !wrap_single_value && schema.fields().len() == 1;
        let shape = if unwrapped {
            Shape::of(schema.field(0).data_type())
        } else {
            Shape::of(&DataType::Struct(schema.fields().clone()))
        };
        let decoder = Self::build(&schema, unwrapped)?;
        Ok(Self { schema, unwrapped, shape, buf: Vec::new(), decoder })
    }

    fn build(schema: &SchemaRef, unwrapped: bool) -> Result<ArrowJsonDecoder> {
        let builder = if unwrapped {
            ReaderBuilder::new_with_field(schema.field(0).clone())
        } else {
            ReaderBuilder::new(schema.clone())
        };
        Ok(builder.with_coerce_primitive(true).with_batch_size(8192).build_decoder()?)
    }

    fn decode_buffer(&mut self) -> std::result::Result<Vec<RecordBatch>, arrow::error::ArrowError> {
        let mut batches = Vec::new();
        let mut off = 0;
        while off < self.buf.len() {
            let n = self.decoder.decode(&self.buf[off..])?;
            off += n;
            if n == 0 || off < self.buf.len() {
                if let Some(b) = self.decoder.flush()? {
                    batches.push(b);
                } else if n == 0 {
                    break;
                }
            }
        }
        if let Some(b) = self.decoder.flush()? {
            batches.push(b);
        }
        Ok(batches)
    }

    fn push_value(&mut self, v: &[u8]) {
        if !self.shape.has_structs() || !normalize(v, &self.shape, &mut self.buf) {
            self.buf.extend_from_slice(v);
        }
        self.buf.push(b'\n');
    }
}

impl Decoder for JsonDecoder {
    fn decode(&mut self, values: &[&[u8]]) -> Result<Decoded> {
        self.buf.clear();
        for v in values {
            self.push_value(v);
        }
        let all_ok = values.iter().all(|v| v.iter().any(|c| !c.is_ascii_whitespace()));
        if all_ok {
            if let Ok(batches) = self.decode_buffer() {
                let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
                if rows == values.len() {
                    let batch = match batches.len() {
                        0 => RecordBatch::new_empty(self.schema.clone()),
                        1 => batches.into_iter().next().unwrap_or_else(|| RecordBatch::new_empty(self.schema.clone())),
                        _ => arrow::compute::concat_batches(&self.schema, &batches)?,
                    };
                    return Ok(Decoded { batch, good: None, errors: vec![] });
                }
            }
        }
        // Some record is bad: find which, keep the others.
        let schema = self.schema.clone();
        let unwrapped = self.unwrapped;
        let result = decode_one_by_one(values, &schema, |v| {
            self.decoder = Self::build(&schema, unwrapped).map_err(|e| e.to_string())?;
            self.buf.clear();
            if v.iter().all(|c| c.is_ascii_whitespace()) {
                return Err("empty JSON value".to_string());
            }
            self.push_value(v);
            let batches = self.decode_buffer().map_err(|e| format!("Failed to deserialize JSON: {e}"))?;
            arrow::compute::concat_batches(&schema, &batches).map_err(|e| e.to_string())
        });
        self.decoder = Self::build(&schema, unwrapped)?;
        result
    }
}

/// Encodes rows as JSON objects with explicit nulls (or bare values when unwrapped).
pub(crate) struct JsonEncoder {
    unwrapped: bool,
    options: EncoderOptions,
    buf: Vec<u8>,
}

impl JsonEncoder {
    pub(crate) fn new(schema: SchemaRef, wrap_single_value: bool) -> Self {
        Self {
            unwrapped: !wrap_single_value && schema.fields().len() == 1,
            options: EncoderOptions::default().with_explicit_nulls(true),
            buf: Vec::new(),
        }
    }
}

/// Non-finite floats of top-level FLOAT/DOUBLE columns: (row, column, spelling). JSON has no
/// NaN or infinities; ksqlDB (Jackson) writes them as the strings "NaN", "Infinity", "-Infinity".
fn non_finite(batch: &RecordBatch) -> Vec<(usize, usize, &'static str)> {
    let spell = |v: f64| {
        if v.is_nan() {
            "NaN"
        } else if v > 0.0 {
            "Infinity"
        } else {
            "-Infinity"
        }
    };
    let mut found = Vec::new();
    for (c, col) in batch.columns().iter().enumerate() {
        match col.data_type() {
            DataType::Float64 => {
                let a = col.as_primitive::<arrow::datatypes::Float64Type>();
                for (r, v) in a.iter().enumerate() {
                    if let Some(v) = v.filter(|v| !v.is_finite()) {
                        found.push((r, c, spell(v)));
                    }
                }
            }
            DataType::Float32 => {
                let a = col.as_primitive::<arrow::datatypes::Float32Type>();
                for (r, v) in a.iter().enumerate() {
                    if let Some(v) = v.filter(|v| !v.is_finite()) {
                        found.push((r, c, spell(f64::from(v))));
                    }
                }
            }
            _ => {}
        }
    }
    found
}

impl Encoder for JsonEncoder {
    fn encode(&mut self, batch: &RecordBatch, out: &mut Vec<Option<Bytes>>) -> Result<()> {
        let first = out.len();
        let special = non_finite(batch);
        self.encode_rows(batch, out)?;
        // Rare rows with NaN or infinities: patch the named fields (arrow-json writes null).
        for (row, col, text) in special {
            let Some(Some(bytes)) = out.get(first + row) else { continue };
            let patched = if self.unwrapped {
                serde_json::Value::String(text.to_string())
            } else {
                let mut v: serde_json::Value =
                    serde_json::from_slice(bytes).map_err(|e| ConnectorError::Encode(e.to_string()))?;
                if let Some(o) = v.as_object_mut() {
                    o.insert(batch.schema().field(col).name().clone(), serde_json::Value::String(text.to_string()));
                }
                v
            };
            out[first + row] = Some(Bytes::from(patched.to_string()));
        }
        Ok(())
    }
}

impl JsonEncoder {
    fn encode_rows(&mut self, batch: &RecordBatch, out: &mut Vec<Option<Bytes>>) -> Result<()> {
        let batch = temporal_to_numbers(batch)?;
        let (field, array): (FieldRef, Arc<dyn Array>) = if self.unwrapped {
            (batch.schema().field(0).clone().into(), batch.column(0).clone())
        } else {
            let st = StructArray::from(batch.clone());
            (Arc::new(Field::new("", st.data_type().clone(), true)), Arc::new(st))
        };
        let mut enc =
            make_encoder(&field, array.as_ref(), &self.options).map_err(|e| ConnectorError::Encode(e.to_string()))?;
        self.buf.clear();
        let mut ends = Vec::with_capacity(batch.num_rows());
        for i in 0..batch.num_rows() {
            if self.unwrapped && enc.is_null(i) {
                ends.push(None);
                continue;
            }
            enc.encode(i, &mut self.buf);
            ends.push(Some(self.buf.len()));
        }
        let all = Bytes::copy_from_slice(&self.buf);
        let mut start = 0;
        for end in ends {
            match end {
                Some(e) => {
                    out.push(Some(all.slice(start..e)));
                    start = e;
                }
                None => out.push(None),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::Schema;

    use super::*;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new("ID", DataType::Int64, true), Field::new("NAME", DataType::Utf8, true)]))
    }

    #[test]
    fn non_finite_doubles_are_written_as_ksqldb_strings() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("ID", DataType::Int64, true),
            Field::new("D", DataType::Float64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![1, 2, 3, 4])),
                Arc::new(arrow::array::Float64Array::from(vec![
                    Some(f64::NAN),
                    Some(f64::INFINITY),
                    Some(1.5),
                    Some(f64::NEG_INFINITY),
                ])),
            ],
        )
        .unwrap();
        let mut out = Vec::new();
        JsonEncoder::new(schema, true).encode(&batch, &mut out).unwrap();
        let text: Vec<String> = out.iter().map(|b| String::from_utf8(b.clone().unwrap().to_vec()).unwrap()).collect();
        assert_eq!(
            text,
            vec![
                r#"{"ID":1,"D":"NaN"}"#,
                r#"{"ID":2,"D":"Infinity"}"#,
                r#"{"ID":3,"D":1.5}"#,
                r#"{"ID":4,"D":"-Infinity"}"#
            ]
        );
    }

    #[test]
    fn decodes_case_insensitively_and_reports_bad_records() {
        let mut d = JsonDecoder::try_new(schema(), true).unwrap();
        let values: Vec<&[u8]> = vec![br#"{"id": 1, "name": "a"}"#, b"{not json", br#"{"ID": 3, "NAME": 7}"#];
        let out = d.decode(&values).unwrap();
        assert_eq!(out.batch.num_rows(), 2);
        assert_eq!(out.good, Some(vec![0, 2]));
        assert_eq!(out.errors.len(), 1);
        assert_eq!(out.errors[0].0, 1);
        let names = out.batch.column(1).as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(names.value(1), "7");
        // the decoder is still usable after a bad batch
        let out = d.decode(&[br#"{"id": 9}"#]).unwrap();
        assert!(out.good.is_none());
        assert!(out.batch.column(1).is_null(0));
    }

    #[test]
    fn encodes_with_explicit_nulls() {
        let batch = RecordBatch::try_new(
            schema(),
            vec![Arc::new(Int64Array::from(vec![Some(1), None])), Arc::new(StringArray::from(vec![None, Some("x")]))],
        )
        .unwrap();
        let mut out = Vec::new();
        JsonEncoder::new(schema(), true).encode(&batch, &mut out).unwrap();
        assert_eq!(out[0].as_deref(), Some(&br#"{"ID":1,"NAME":null}"#[..]));
        assert_eq!(out[1].as_deref(), Some(&br#"{"ID":null,"NAME":"x"}"#[..]));
    }

    #[test]
    fn unwrapped_single_values() {
        let s = Arc::new(Schema::new(vec![Field::new("V", DataType::Int64, true)]));
        let mut d = JsonDecoder::try_new(s.clone(), false).unwrap();
        let out = d.decode(&[b"5", b"null"]).unwrap();
        assert_eq!(out.batch.num_rows(), 2);
        let mut enc = Vec::new();
        JsonEncoder::new(s, false).encode(&out.batch, &mut enc).unwrap();
        assert_eq!(enc, vec![Some(Bytes::from_static(b"5")), None]);
    }
}
