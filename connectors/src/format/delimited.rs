//! DELIMITED values: arrow-csv's decoder and writer, one record per value, no header.

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow_csv::reader::{Decoder as CsvDecoder, ReaderBuilder};
use arrow_csv::WriterBuilder;
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
        let mut buf = Vec::new();
        {
            let mut w = WriterBuilder::new().with_header(false).with_delimiter(self.delimiter).build(&mut buf);
            w.write(&batch).map_err(|e| ConnectorError::Encode(e.to_string()))?;
        }
        let all = Bytes::from(buf);
        // Split into records at newlines outside quotes.
        let mut start = 0;
        let mut quoted = false;
        for (i, c) in all.iter().enumerate() {
            match c {
                b'"' => quoted = !quoted,
                b'\n' if !quoted => {
                    let end = if i > start && all[i - 1] == b'\r' { i - 1 } else { i };
                    out.push(Some(all.slice(start..end)));
                    start = i + 1;
                }
                _ => {}
            }
        }
        Ok(())
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
}
