//! Key-parallel stages: a query's stateful stage split into shards by key.
//!
//! When every piece of a stage's state belongs to one key (the GROUP BY key of a stream
//! aggregation, the join key of a stream-stream join), the stage can run as several copies of
//! its chain, each seeing only the rows whose key hashes to it, side by side on several cores:
//! Kafka Streams' tasks per partition, Flink's key groups. Every shard sees every watermark, so
//! windows close and late rows are judged exactly as in one chain; per key, rows keep their
//! order. Only the order of output rows of different keys may differ from one chain's.
//!
//! A key goes to shard `hash(key) % shards`, with DataFusion's column hashing under fixed seeds:
//! a checkpoint records the number of shards and a fingerprint of the hashing, and a restart
//! routes keys exactly as before (a build whose hashing differs refuses the checkpoint rather
//! than mixing up state).

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::datatypes::DataType;
use datafusion::common::hash_utils::{create_hashes, RandomState};
use datafusion::physical_expr::PhysicalExpr;

use crate::{EngineError, Result};

/// The key of each input of a stage: rows with equal keys go to the same shard.
pub struct ShardKeys {
    /// Per input (0 = the main input, then side inputs), key expressions over the rows the
    /// stage receives from that input.
    pub inputs: Vec<Vec<Arc<dyn PhysicalExpr>>>,
    /// Key types all inputs' keys are cast to before hashing (equal keys of different inputs
    /// must hash alike).
    pub types: Vec<DataType>,
    /// The main input's event-time column, when the stage's first operator judges rows
    /// against the watermark as it stood at each row's arrival (aggregations): the runtime
    /// then computes that per row over the whole batch before splitting it.
    pub time: Option<usize>,
    /// Per input: the name of the step whose repartition topic its rows go through (for
    /// example `Aggregate-GroupBy`), or `None` when its source is already partitioned by the key
    /// (see [`crate::repartition`]).
    pub repartition: Vec<Option<&'static str>>,
}

/// One shard's rows of a batch, and which rows of it they are (`None`: all).
pub type Part = (RecordBatch, Option<UInt32Array>);

fn seeds() -> RandomState {
    RandomState::with_seed(0x5249_4c4c_7368_6172)
}

/// A fingerprint of the routing hash: checkpoints of sharded stages record it.
pub fn fingerprint() -> String {
    let probe: Vec<ArrayRef> = vec![
        Arc::new(arrow::array::Int64Array::from(vec![1, -7, 1 << 40])),
        Arc::new(arrow::array::StringArray::from(vec!["rill", "", "key"])),
    ];
    let mut hashes = vec![0; 3];
    match create_hashes(&probe, &seeds(), &mut hashes) {
        Ok(h) => h.iter().map(|h| format!("{h:016x}")).collect::<Vec<_>>().join("-"),
        Err(_) => String::new(),
    }
}

impl ShardKeys {
    /// Splits `batch` of input `input` into `shards` batches by key (empty ones are `None`),
    /// each with the rows it took (`None`: all of them).
    pub fn split(&self, input: usize, batch: &RecordBatch, shards: usize) -> Result<Vec<Option<Part>>> {
        let exprs =
            self.inputs.get(input).ok_or_else(|| EngineError::Internal(format!("no shard key for input {input}")))?;
        let n = batch.num_rows();
        let keys = crate::state::key_arrays(exprs, &self.types, batch)?;
        let mut hashes = vec![0u64; n];
        create_hashes(&keys, &seeds(), &mut hashes)?;
        let mut picked: Vec<Vec<u32>> = vec![Vec::with_capacity(n / shards + 16); shards];
        for (i, h) in hashes.iter().enumerate() {
            picked[(*h % shards as u64) as usize].push(i as u32);
        }
        picked
            .into_iter()
            .map(|rows| {
                Ok(match rows.len() {
                    0 => None,
                    m if m == n => Some((batch.clone(), None)),
                    _ => {
                        let rows = UInt32Array::from(rows);
                        Some((take_record_batch(batch, &rows)?, Some(rows)))
                    }
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{AsArray, Int64Array, StringArray};
    use arrow::datatypes::{Field, Int64Type, Schema};
    use datafusion::physical_expr::expressions::col;

    use super::*;

    #[test]
    fn equal_keys_of_different_inputs_go_to_the_same_shard_and_rows_keep_their_order() {
        let left =
            Arc::new(Schema::new(vec![Field::new("K", DataType::Int32, true), Field::new("V", DataType::Int64, true)]));
        let right =
            Arc::new(Schema::new(vec![Field::new("X", DataType::Utf8, true), Field::new("K2", DataType::Int64, true)]));
        let keys = ShardKeys {
            inputs: vec![vec![col("K", &left).unwrap()], vec![col("K2", &right).unwrap()]],
            types: vec![DataType::Int64],
            time: None,
            repartition: vec![None, None],
        };
        let l = RecordBatch::try_new(
            left,
            vec![
                Arc::new(arrow::array::Int32Array::from(vec![1, 2, 3, 1, 2, 3, 4, 5])),
                Arc::new(Int64Array::from((0..8).collect::<Vec<i64>>())),
            ],
        )
        .unwrap();
        let r = RecordBatch::try_new(
            right,
            vec![Arc::new(StringArray::from(vec!["a", "b", "c"])), Arc::new(Int64Array::from(vec![3, 4, 5]))],
        )
        .unwrap();
        let batches = |parts: Vec<Option<Part>>| parts.into_iter().map(|p| p.map(|p| p.0)).collect::<Vec<_>>();
        let ls = batches(keys.split(0, &l, 3).unwrap());
        let rs = batches(keys.split(1, &r, 3).unwrap());
        let shard_of = |parts: &[Option<RecordBatch>], col: usize, key: i64| {
            parts.iter().position(|p| {
                p.as_ref().is_some_and(|b| {
                    let c = arrow::compute::cast(b.column(col), &DataType::Int64).unwrap();
                    c.as_primitive::<Int64Type>().values().contains(&key)
                })
            })
        };
        for k in 3..=5 {
            assert_eq!(shard_of(&ls, 0, k), shard_of(&rs, 1, k), "key {k}");
        }
        // Every row lands once, in its original order within its shard.
        let mut seen: Vec<i64> = Vec::new();
        for p in ls.iter().flatten() {
            let v = p.column(1).as_primitive::<Int64Type>().values().to_vec();
            assert!(v.windows(2).all(|w| w[0] < w[1]), "{v:?}");
            seen.extend(v);
        }
        seen.sort();
        assert_eq!(seen, (0..8).collect::<Vec<_>>());
        assert!(ls.iter().filter(|p| p.is_some()).count() > 1, "keys 1..5 all hashed to one shard of 3");
    }

    #[test]
    fn the_routing_fingerprint_is_stable() {
        assert!(!fingerprint().is_empty());
        assert_eq!(fingerprint(), fingerprint());
    }
}
