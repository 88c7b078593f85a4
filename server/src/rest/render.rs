//! Rendering rows and schemas the way ksqlDB's REST API does.

use std::sync::Arc;

use arrow::array::{Array, RecordBatch};
use arrow::datatypes::{DataType, Field, FieldRef};
use arrow_json::writer::{make_encoder, EncoderOptions};
use rill_sql::planner::OutputColumn;

/// `` `A` STRING, `B` BIGINT `` (push queries: no KEY markers).
pub fn schema_string(columns: &[OutputColumn]) -> String {
    columns.iter().map(|c| format!("`{}` {}", c.name, c.sql_type)).collect::<Vec<_>>().join(", ")
}

/// Each row of the first `n` columns of `batch` as a JSON array text.
pub fn json_rows(batch: &RecordBatch, n: usize) -> Result<Vec<String>, String> {
    let options = EncoderOptions::default().with_explicit_nulls(true);
    let mut cols: Vec<(FieldRef, Arc<dyn Array>)> = Vec::with_capacity(n);
    for i in 0..n.min(batch.num_columns()) {
        let a = batch.column(i).clone();
        // ksqlDB renders temporal values as numbers in rows (epoch millis / days).
        let a = match a.data_type() {
            DataType::Timestamp(_, _) => arrow::compute::cast(&a, &DataType::Int64).map_err(|e| e.to_string())?,
            DataType::Date32 => arrow::compute::cast(&a, &DataType::Int32).map_err(|e| e.to_string())?,
            DataType::Time32(_) => arrow::compute::cast(&a, &DataType::Int32).map_err(|e| e.to_string())?,
            // BYTES (also nested) as base64 strings.
            _ => rill_connectors::format::bytes_as_base64(&a).map_err(|e| e.to_string())?,
        };
        cols.push((Arc::new(Field::new(batch.schema().field(i).name(), a.data_type().clone(), true)), a));
    }
    let mut encoders = cols
        .iter()
        .map(|(f, a)| make_encoder(f, a.as_ref(), &options).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = Vec::with_capacity(batch.num_rows());
    let mut buf = Vec::new();
    for row in 0..batch.num_rows() {
        buf.clear();
        buf.push(b'[');
        for (i, enc) in encoders.iter_mut().enumerate() {
            if i > 0 {
                buf.push(b',');
            }
            if enc.is_null(row) {
                buf.extend_from_slice(b"null");
            } else {
                enc.encode(row, &mut buf);
            }
        }
        buf.push(b']');
        out.push(String::from_utf8_lossy(&buf).into_owned());
    }
    Ok(out)
}
