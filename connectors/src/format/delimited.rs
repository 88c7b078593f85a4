//! DELIMITED values, one record per value, no header: arrow-csv's decoder; written with arrow's
//! value formatters and the quoting of ksqlDB's writer (Apache Commons CSV, minimal quoting).

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use arrow_csv::reader::{Decoder as CsvDecoder, ReaderBuilder};
use bytes::Bytes;

use super::{decode_one_by_one, temporal_to_numbers, Decoded, Decoder, Encoder};
use crate::{ConnectorError, Result};

pub(crate) struct DelimitedDecoder {
    schema: SchemaRef,
    /// The schema the CSV decoder reads: times as the numbers ksqlDB writes them (epoch
    /// milliseconds, days), cast to `schema`'s types after.
    numbers: SchemaRef,
    delimiter: u8,
    buf: Vec<u8>,
}

impl DelimitedDecoder {
    pub(crate) fn new(schema: SchemaRef, delimiter: u8) -> Self {
        let numbers = super::numbers_schema(&schema);
        Self { schema, numbers, delimiter, buf: Vec::new() }
    }

    /// A batch read with `numbers` in `schema`'s types.
    fn typed(&self, batch: RecordBatch) -> std::result::Result<RecordBatch, arrow::error::ArrowError> {
        if self.numbers == self.schema {
            return Ok(batch);
        }
        let columns = batch
            .columns()
            .iter()
            .zip(self.schema.fields())
            .map(|(c, f)| arrow::compute::cast(c, f.data_type()))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        RecordBatch::try_new(self.schema.clone(), columns)
    }

    fn build(&self, rows: usize) -> std::result::Result<CsvDecoder, arrow::error::ArrowError> {
        Ok(ReaderBuilder::new(self.numbers.clone())
            .with_header(false)
            .with_delimiter(self.delimiter)
            .with_batch_size(rows.max(1))
            .build_decoder())
    }

    fn run(&self, buf: &[u8], rows: usize) -> std::result::Result<Option<RecordBatch>, arrow::error::ArrowError> {
        let mut d = self.build(rows)?;
        let mut off = 0;
        while off < buf.len() {
            let n = d.decode(&buf[off..])?;
            if n == 0 {
                break;
            }
            off += n;
        }
        d.decode(&[])?;
        d.flush()?.map(|b| self.typed(b)).transpose()
    }
}

impl Decoder for DelimitedDecoder {
    fn decode(&mut self, values: &[&[u8]]) -> Result<Decoded> {
        if self.schema.fields().is_empty() {
            return Err(ConnectorError::Unsupported("DELIMITED needs at least one column".into()));
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        for v in values {
            buf.extend_from_slice(v);
            buf.push(b'\n');
        }
        let fast = values.iter().all(|v| !v.contains(&b'\n') && !v.is_empty());
        let result = match fast.then(|| self.run(&buf, values.len())) {
            Some(Ok(Some(batch))) if batch.num_rows() == values.len() => {
                Ok(Decoded { batch, good: None, errors: vec![] })
            }
            _ => decode_one_by_one(values, &self.schema.clone(), |v| {
                if v.is_empty() && self.schema.fields().len() > 1 {
                    return Err(format!(
                        "Unexpected field count, csvFields:1 schemaFields:{}",
                        self.schema.fields().len()
                    ));
                }
                let mut one = v.to_vec();
                one.push(b'\n');
                match self.run(&one, 1) {
                    Ok(Some(b)) => Ok(b),
                    Ok(None) => Err("empty record".to_string()),
                    Err(e) => Err(format!("Failed to deserialize DELIMITED value: {e}")),
                }
            }),
        };
        self.buf = buf;
        result
    }
}

pub(crate) struct DelimitedEncoder {
    delimiter: u8,
}

impl DelimitedEncoder {
    pub(crate) fn new(delimiter: u8) -> Self {
        Self { delimiter }
    }
}

impl Encoder for DelimitedEncoder {
    fn encode(&mut self, batch: &RecordBatch, out: &mut Vec<Option<Bytes>>) -> Result<()> {
        let batch = temporal_to_numbers(batch)?;
        let options = FormatOptions::default();
        let formatters = batch
            .columns()
            .iter()
            .map(|a| ArrayFormatter::try_new(a.as_ref(), &options))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| ConnectorError::Encode(e.to_string()))?;
        let mut field = String::new();
        for row in 0..batch.num_rows() {
            let mut record = Vec::new();
            for (i, (f, column)) in formatters.iter().zip(batch.columns()).enumerate() {
                if i > 0 {
                    record.push(self.delimiter);
                }
                // A null is an empty field, never quoted.
                if column.is_null(row) {
                    continue;
                }
                field.clear();
                f.value(row).write(&mut field).map_err(|e| ConnectorError::Encode(e.to_string()))?;
                self.push_field(&mut record, &field, i == 0);
            }
            out.push(Some(Bytes::from(record)));
        }
        Ok(())
    }
}

impl DelimitedEncoder {
    /// Appends `field`, quoted where ksqlDB's writer (Apache Commons CSV, minimal quoting)
    /// quotes it: an empty first field; a first field not starting with a letter or digit;
    /// any field starting with a character up to `#`, holding a delimiter, quote or line
    /// break, or ending in a space or control character. Quotes inside are doubled.
    fn push_field(&self, record: &mut Vec<u8>, field: &str, first: bool) {
        let bytes = field.as_bytes();
        let quote = match bytes.first() {
            None => first,
            Some(&c) => {
                (first && !c.is_ascii_alphanumeric())
                    || c <= b'#'
                    || bytes.iter().any(|&b| b == b'\n' || b == b'\r' || b == b'"' || b == self.delimiter)
                    || bytes.last().is_some_and(|&b| b <= b' ')
            }
        };
        if !quote {
            record.extend_from_slice(bytes);
            return;
        }
        record.push(b'"');
        for &b in bytes {
            if b == b'"' {
                record.push(b'"');
            }
            record.push(b);
        }
        record.push(b'"');
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Float64Array, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    #[test]
    fn round_trip_with_quotes_and_bad_rows() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("ID", DataType::Int64, true),
            Field::new("NAME", DataType::Utf8, true),
            Field::new("V", DataType::Float64, true),
        ]));
        let mut d = DelimitedDecoder::new(schema.clone(), b',');
        let out = d.decode(&[b"1,a,0.5", b"x,b,1.0", b"3,\"c,d\",2.0"]).unwrap();
        assert_eq!(out.good, Some(vec![0, 2]));
        assert_eq!(out.errors[0].0, 1);
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![1, 2])),
                Arc::new(StringArray::from(vec!["a\"b", "x"])),
                Arc::new(Float64Array::from(vec![0.0, 1.5])),
            ],
        )
        .unwrap();
        let mut enc = Vec::new();
        DelimitedEncoder::new(b',').encode(&batch, &mut enc).unwrap();
        assert_eq!(enc[0].as_deref(), Some(&b"1,\"a\"\"b\",0.0"[..]));
        assert_eq!(enc[1].as_deref(), Some(&b"2,x,1.5"[..]));
    }

    /// The fields ksqlDB quotes: a first field not starting with a letter or digit (or empty),
    /// any field starting with `#` or below, or ending in white space; nulls are empty.
    #[test]
    fn fields_are_quoted_as_ksqldb_quotes_them() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("A", DataType::Utf8, true),
            Field::new("B", DataType::Utf8, true),
            Field::new("C", DataType::Int64, true),
        ]));
        let rows = [
            (Some("-1"), Some("-1"), Some(-1)),
            (Some("!"), Some("!"), None),
            (Some(""), Some(""), Some(7)),
            (None, Some("a b "), Some(7)),
            (Some("x"), Some("#"), Some(7)),
        ];
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(rows.iter().map(|r| r.0).collect::<Vec<_>>())),
                Arc::new(StringArray::from(rows.iter().map(|r| r.1).collect::<Vec<_>>())),
                Arc::new(Int64Array::from(rows.iter().map(|r| r.2).collect::<Vec<_>>())),
            ],
        )
        .unwrap();
        let mut enc = Vec::new();
        DelimitedEncoder::new(b',').encode(&batch, &mut enc).unwrap();
        let text: Vec<String> =
            enc.iter().map(|v| String::from_utf8_lossy(v.as_deref().unwrap()).into_owned()).collect();
        assert_eq!(text, ["\"-1\",-1,-1", "\"!\",\"!\",", "\"\",,7", ",\"a b \",7", "x,\"#\",7"]);
    }
}
