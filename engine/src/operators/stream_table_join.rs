//! `StreamTableJoinOperator`: enriches each stream row with the table's row for its key.
//!
//! Input 0 is the stream; input 1 (`process_side_batch`) is the table's changelog, which the
//! operator materialises as the latest row per key (deletes remove it). A stream row joins the
//! table as it stands when the row is processed, as in ksqlDB: table updates that arrive later
//! do not change earlier results. INNER drops stream rows without a match; LEFT keeps them with
//! the table columns null. Output rows are the stream row's columns followed by the table row's
//! columns (DataFusion's join schema). State: one row per live table key (bounded by the table).

use crate::state::HashMap;
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch, RecordBatchOptions, UInt32Array};
use arrow::compute::{cast, take};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use arrow::row::{OwnedRow, RowConverter, SortField};
use datafusion::physical_expr::PhysicalExpr;

use crate::message::Message;
use crate::operator::{Operator, StateInfo};
use crate::{EngineError, Result};

/// What the join needs, planned by `rill-sql`.
pub struct StreamTableJoinConfig {
    /// Join key expressions over stream rows (one per table key column).
    pub stream_key: Vec<Arc<dyn PhysicalExpr>>,
    /// Schema of table rows (input 1); its first `table_key_columns` columns are the key.
    pub table_schema: SchemaRef,
    /// How many leading table columns form the key.
    pub table_key_columns: usize,
    /// The table's delete-marker column.
    pub table_delete: usize,
    /// LEFT join (keep unmatched stream rows).
    pub left_outer: bool,
    /// Stream columns then table columns (then the record headers, with `stream_headers`).
    pub output_schema: SchemaRef,
    /// Stream rows end with their record headers (a column after the stream's columns of the
    /// join): each output row carries its stream row's as its last column, as Kafka Streams
    /// writes the triggering record's headers on the join's output.
    pub stream_headers: bool,
}

/// See the module docs.
pub struct StreamTableJoinOperator {
    cfg: StreamTableJoinConfig,
    keys: RowConverter,
    rows: RowConverter,
    key_types: Vec<DataType>,
    table: HashMap<OwnedRow, OwnedRow>,
}

impl StreamTableJoinOperator {
    /// A join per `cfg`.
    pub fn try_new(cfg: StreamTableJoinConfig) -> Result<Self> {
        let key_types: Vec<DataType> =
            cfg.table_schema.fields().iter().take(cfg.table_key_columns).map(|f| f.data_type().clone()).collect();
        if key_types.len() != cfg.stream_key.len() {
            return Err(EngineError::Internal("join key arity differs from the table key".into()));
        }
        let keys = RowConverter::new(key_types.iter().map(|t| SortField::new(t.clone())).collect())?;
        let rows = RowConverter::new(
            cfg.table_schema.fields().iter().map(|f| SortField::new(f.data_type().clone())).collect(),
        )?;
        Ok(Self { cfg, keys, rows, key_types, table: HashMap::default() })
    }
}

impl Operator for StreamTableJoinOperator {
    fn name(&self) -> &str {
        "stream-table-join"
    }

    fn output_schema(&self) -> SchemaRef {
        self.cfg.output_schema.clone()
    }

    fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        Ok(crate::state::map_snapshot(&self.keys, &self.rows, &self.table)?.to_vec())
    }

    fn restore(&mut self, state: Vec<RecordBatch>) -> Result<()> {
        crate::state::map_restore(&self.keys, &self.rows, &state, &mut self.table)
    }

    fn state_signature(&mut self) -> Result<String> {
        let keys: Vec<String> = self.cfg.stream_key.iter().map(|e| e.to_string()).collect();
        let table: Vec<String> = self.cfg.table_schema.fields().iter().map(|f| f.data_type().to_string()).collect();
        Ok(format!("stream-table-join[on {keys:?}; table {table:?}]"))
    }

    fn process_side_batch(&mut self, _input: usize, batch: RecordBatch, _out: &mut Vec<Message>) -> Result<()> {
        let keys = self.keys.convert_columns(&batch.columns()[..self.cfg.table_key_columns])?;
        let rows = self.rows.convert_columns(batch.columns())?;
        let deletes = batch.column(self.cfg.table_delete).as_boolean().clone();
        for i in 0..batch.num_rows() {
            let key = keys.row(i).owned();
            if deletes.is_valid(i) && deletes.value(i) {
                self.table.remove(&key);
            } else {
                self.table.insert(key, rows.row(i).owned());
            }
        }
        Ok(())
    }

    fn process_batch(&mut self, batch: RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        let n = batch.num_rows();
        let key_arrays = crate::state::key_arrays(&self.cfg.stream_key, &self.key_types, &batch)?;
        let keys = self.keys.convert_columns(&key_arrays)?;
        let mut stream_rows = Vec::with_capacity(n);
        let mut matched: Vec<Option<u32>> = Vec::with_capacity(n);
        let mut table_rows: Vec<&OwnedRow> = Vec::new();
        for i in 0..n {
            let null_key = key_arrays.iter().any(|k| k.is_null(i));
            let found = if null_key { None } else { self.table.get(&keys.row(i).owned()) };
            match found {
                Some(row) => {
                    stream_rows.push(i as u32);
                    matched.push(Some(table_rows.len() as u32));
                    table_rows.push(row);
                }
                None if self.cfg.left_outer => {
                    stream_rows.push(i as u32);
                    matched.push(None);
                }
                None => {}
            }
        }
        if stream_rows.is_empty() {
            return Ok(());
        }
        let stream_idx = UInt32Array::from(stream_rows);
        let mut columns =
            batch.columns().iter().map(|c| Ok(take(c.as_ref(), &stream_idx, None)?)).collect::<Result<Vec<_>>>()?;
        let headers = if self.cfg.stream_headers { columns.pop() } else { None };
        let right = if table_rows.is_empty() {
            self.cfg.table_schema.fields().iter().map(|f| arrow::array::new_null_array(f.data_type(), 0)).collect()
        } else {
            self.rows.convert_rows(table_rows.iter().map(|r| r.row()))?
        };
        let right_idx = UInt32Array::from(matched);
        for c in right {
            columns.push(take(c.as_ref(), &right_idx, None)?);
        }
        columns.extend(headers);
        let schema: &Schema = &self.cfg.output_schema;
        for (c, f) in columns.iter_mut().zip(schema.fields()) {
            if c.data_type() != f.data_type() {
                *c = cast(c, f.data_type())?;
            }
        }
        let rows = stream_idx.len();
        out.push(Message::Data(RecordBatch::try_new_with_options(
            self.cfg.output_schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )?));
        Ok(())
    }

    fn state_info(&self) -> StateInfo {
        StateInfo {
            bounded: true,
            bytes: self.table.iter().map(|(k, v)| k.as_ref().len() + v.as_ref().len()).sum(),
            description: "the latest row per key of the joined table".into(),
        }
    }
}
