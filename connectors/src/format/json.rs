//! JSON values: arrow-json's tape decoder for reading, its row encoders for writing.

use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch, StructArray};
use arrow::datatypes::{DataType, Field, FieldRef, SchemaRef};
use arrow_json::reader::{Decoder as ArrowJsonDecoder, ReaderBuilder};
use arrow_json::writer::{make_encoder, EncoderOptions};
use bytes::Bytes;

use super::json_keys::{normalize, object_keys, Shape};
use super::{decode_one_by_one, temporal_to_numbers, Decoded, Decoder, Encoder};
use crate::{ConnectorError, Result};

/// Decodes JSON objects (or, unwrapped, bare JSON values) into rows.
pub(crate) struct JsonDecoder {
    schema: SchemaRef,
    unwrapped: bool,
    shape: Shape,
    /// Whether the general path copies records through [`normalize`] (struct field names to
    /// respell, or strings that may be given objects).
    rewrites: bool,
    buf: Vec<u8>,
    decoder: ArrowJsonDecoder,
    /// Flat schemas: the field names as the data spells them, learned from the records.
    spelled: Option<Spelled>,
}

/// The fast path for flat objects. Field names match case-insensitively, which arrow-json does
/// not do, so the general path first copies each record with its keys respelled. Producers spell
/// their keys the same way in every record, so a decoder whose schema uses the data's spelling
/// decodes the records as they are; a record is checked only when one of its columns comes out
/// null (a key spelled another way would read as missing). When a record is spelled otherwise,
/// the batch takes the general path and the decoder learns that record's spelling.
struct Spelled {
    names: Vec<String>,
    decoder: Option<ArrowJsonDecoder>,
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
        // Nested structs would need their own spellings: those schemas take the general path.
        let names: Vec<String> = schema.fields().iter().map(|f| f.name().to_ascii_uppercase()).collect();
        let distinct = names.iter().collect::<std::collections::HashSet<_>>().len() == names.len();
        let flat = match &shape {
            Shape::Struct(fields) => fields.iter().all(|(_, s)| !s.has_structs()),
            _ => false,
        };
        let spelled = (!unwrapped && flat && distinct)
            .then(|| Spelled { names: schema.fields().iter().map(|f| f.name().clone()).collect(), decoder: None });
        let rewrites = shape.has_structs() || shape.has_text();
        Ok(Self { schema, unwrapped, shape, rewrites, buf: Vec::new(), decoder, spelled })
    }

    /// Decodes `values` as spelled so far. Err(Some(row)) when that record is spelled otherwise,
    /// Err(None) when the batch must take the general path for another reason (nothing learned
    /// yet, or something malformed: the general path finds and reports it).
    fn decode_spelled(&mut self, values: &[&[u8]]) -> std::result::Result<RecordBatch, Option<usize>> {
        let Some(spelled) = self.spelled.as_mut() else { return Err(None) };
        let Some(decoder) = spelled.decoder.as_mut() else { return Err(None) };
        // The values go to the tokenizer as they are, one after the other (no copy): a value that
        // is not one whole JSON value shows in the row count or as a partial record.
        let parts = decode_values(decoder, values).ok().filter(|parts| {
            parts.iter().map(|b| b.num_rows()).sum::<usize>() == values.len() && !decoder.has_partial_record()
        });
        let Some(mut parts) = parts else {
            spelled.decoder = None;
            return Err(None);
        };
        let batch = match parts.len() {
            0 => return Ok(RecordBatch::new_empty(self.schema.clone())),
            1 => parts.swap_remove(0),
            _ => arrow::compute::concat_batches(&parts[0].schema(), &parts).map_err(|_| None)?,
        };
        // A null may be a key spelled otherwise: check those records' keys.
        let mut checked = vec![false; values.len()];
        for col in batch.columns().iter().filter(|c| c.null_count() > 0) {
            let Some(nulls) = col.logical_nulls() else { continue };
            for row in nulls.iter().enumerate().filter(|(_, valid)| !valid).map(|(r, _)| r) {
                if !std::mem::replace(&mut checked[row], true) && spelled_otherwise(values[row], &spelled.names) {
                    return Err(Some(row));
                }
            }
        }
        RecordBatch::try_new(self.schema.clone(), batch.columns().to_vec()).map_err(|_| None)
    }

    /// Learns the key spelling of `value` where it has the keys (unescaped ones: arrow-json
    /// matches unescaped names), and rebuilds the fast decoder.
    fn learn_spelling(&mut self, value: &[u8]) {
        let Some(spelled) = self.spelled.as_mut() else { return };
        let keys = object_keys(value).unwrap_or_default();
        for (name, field) in spelled.names.iter_mut().zip(self.schema.fields()) {
            let found = keys.iter().find(|k| k.eq_ignore_ascii_case(field.name().as_bytes()) && !k.contains(&b'\\'));
            if let Some(k) = found.and_then(|k| std::str::from_utf8(k).ok()) {
                *name = k.to_string();
            }
        }
        let fields: Vec<Field> =
            spelled.names.iter().zip(self.schema.fields()).map(|(n, f)| f.as_ref().clone().with_name(n)).collect();
        spelled.decoder = Self::build(&Arc::new(arrow::datatypes::Schema::new(fields)), false).ok();
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
        decode_all(&mut self.decoder, &self.buf)
    }

    fn push_value(&mut self, v: &[u8]) {
        if !self.rewrites || !normalize(v, &self.shape, &mut self.buf) {
            self.buf.extend_from_slice(v);
        }
        self.buf.push(b'\n');
    }
}

impl Decoder for JsonDecoder {
    fn decode(&mut self, values: &[&[u8]]) -> Result<Decoded> {
        match self.decode_spelled(values) {
            Ok(batch) => return Ok(Decoded { batch, good: None, errors: vec![] }),
            Err(row) => {
                if let Some(v) = values.get(row.unwrap_or(0)) {
                    self.learn_spelling(v);
                }
            }
        }
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

/// Decodes all of `buf` (newline-separated values), flushing whenever the decoder's batch fills.
fn decode_all(
    decoder: &mut ArrowJsonDecoder,
    buf: &[u8],
) -> std::result::Result<Vec<RecordBatch>, arrow::error::ArrowError> {
    let mut batches = Vec::new();
    let mut off = 0;
    while off < buf.len() {
        let n = decoder.decode(&buf[off..])?;
        off += n;
        if n == 0 || off < buf.len() {
            if let Some(b) = decoder.flush()? {
                batches.push(b);
            } else if n == 0 {
                break;
            }
        }
    }
    if let Some(b) = decoder.flush()? {
        batches.push(b);
    }
    Ok(batches)
}

/// Decodes each of `values` in turn (arrow-json reads values that follow each other).
fn decode_values(
    decoder: &mut ArrowJsonDecoder,
    values: &[&[u8]],
) -> std::result::Result<Vec<RecordBatch>, arrow::error::ArrowError> {
    let mut batches = Vec::new();
    for v in values {
        let mut rest: &[u8] = v;
        while !rest.is_empty() {
            let n = decoder.decode(rest)?;
            rest = &rest[n..];
            if !rest.is_empty() {
                // The batch is full: take it and go on.
                match decoder.flush()? {
                    Some(b) => batches.push(b),
                    None if n == 0 => {
                        return Err(arrow::error::ArrowError::JsonError("the decoder took no input".into()))
                    }
                    None => {}
                }
            }
        }
    }
    if let Some(b) = decoder.flush()? {
        batches.push(b);
    }
    Ok(batches)
}

/// Whether a JSON object has a key that names one of `names` spelled another way.
fn spelled_otherwise(value: &[u8], names: &[String]) -> bool {
    let Some(keys) = object_keys(value) else { return true };
    keys.iter().any(|k| names.iter().any(|n| n.as_bytes() != *k && n.as_bytes().eq_ignore_ascii_case(k)))
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
    fn learns_the_data_spelling_and_still_matches_any_spelling() {
        let mut d = JsonDecoder::try_new(schema(), true).unwrap();
        let ids = |d: &mut JsonDecoder, values: &[&[u8]]| {
            let out = d.decode(values).unwrap();
            assert!(out.errors.is_empty());
            let ids = out.batch.column(0).as_primitive::<arrow::datatypes::Int64Type>();
            let names = out.batch.column(1).as_string::<i32>();
            (0..out.batch.num_rows())
                .map(|i| (ids.is_valid(i).then(|| ids.value(i)), names.is_valid(i).then(|| names.value(i).to_string())))
                .collect::<Vec<_>>()
        };
        // First batch: the general path, which learns "id"/"Name".
        assert_eq!(ids(&mut d, &[br#"{"id": 1, "Name": "a"}"#]), vec![(Some(1), Some("a".into()))]);
        assert_eq!(d.spelled.as_ref().unwrap().names, vec!["id", "Name"]);
        // Same spelling, a missing and a null field: the fast path, nulls checked.
        assert_eq!(
            ids(&mut d, &[br#"{"id": 2}"#, br#"{"id": null, "Name": "c"}"#]),
            vec![(Some(2), None), (None, Some("c".into()))]
        );
        assert_eq!(d.spelled.as_ref().unwrap().names, vec!["id", "Name"]);
        assert!(d.spelled.as_ref().unwrap().decoder.is_some(), "values read one after the other, as they are");
        // A record spelled otherwise in the middle of a batch: still found, and learned.
        assert_eq!(
            ids(&mut d, &[br#"{"id": 3, "Name": "d"}"#, br#"{"ID": 4, "name": "e"}"#]),
            vec![(Some(3), Some("d".into())), (Some(4), Some("e".into()))]
        );
        assert_eq!(d.spelled.as_ref().unwrap().names, vec!["ID", "name"]);
        // Malformed records still come out as errors, after which decoding goes on.
        let out = d.decode(&[br#"{"ID": 5}"#, b"{oops"]).unwrap();
        assert_eq!((out.batch.num_rows(), out.errors.len()), (1, 1));
        assert_eq!(ids(&mut d, &[br#"{"ID": 6, "name": "f"}"#]), vec![(Some(6), Some("f".into()))]);
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
