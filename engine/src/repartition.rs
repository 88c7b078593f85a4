//! Repartition topics: how rows reach the stage shard that owns their key when their source is
//! not partitioned by that key.
//!
//! A stage whose state is keyed (a stream `GROUP BY`, a stream-stream join) runs as shards, one
//! per key range (see [`crate::shard`]). When an input's key is not its source's key (a `GROUP BY`
//! of a value column, a join on one), Kafka Streams writes the rows to an internal topic
//! partitioned by the new key and reads each partition of it in the task that owns those keys;
//! Rill does the same, so that the shards of a query can later run on different servers:
//!
//! ```text
//!  source partition u ──► chain ──► split by key hash ──► repartition topic, partition r ──► shard r
//! ```
//!
//! * The topic has one partition per shard; a row goes to partition `hash(key) % partitions`,
//!   the hash [`ShardKeys::split`] routes by, so a side input that is not repartitioned (the
//!   table of a join) is routed to the same shards in process.
//! * Per key, order is kept: one source partition's rows of one key go to one topic partition,
//!   in order.
//! * Exactly-once: the source-partition tasks append inside their transactions, committed with
//!   their checkpoints (source positions); the stage reads committed records only and
//!   checkpoints its positions in the topic. Records before a position the stage has committed
//!   are deleted ([`TopicStore::delete_records`](rill_connectors::store::TopicStore)).
//! * Event time: the stage tracks each source partition's event time per shard, as it does
//!   without a topic, so rows are judged against the same watermark either way. Every record
//!   names the source partition it came from; watermarks and idleness travel as marker records
//!   sent to every partition. When the stage judges rows at their arrival, each row carries the
//!   event time its source partition had reached before it within its fetch (a last column
//!   [`REACHED`]), computed before the split.
//!
//! A record holds either rows (its value an Arrow IPC stream of one batch) or a marker (no
//! value); header `rill-from` is the source partition, `rill-wm` a watermark, `rill-idle` idleness.

use std::sync::Arc;

use arrow::array::{AsArray, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use bytes::Bytes;
use rill_connectors::store::{Record, TopicConfig};

use crate::message::{Message, Watermark};
use crate::operator::ArrivalBound;
use crate::shard::ShardKeys;
use crate::{EngineError, Result};

/// The column of per-row arrival times in a repartitioned batch (see the module docs).
pub const REACHED: &str = "__rill_reached";
const FROM: &str = "rill-from";
const WATERMARK: &str = "rill-wm";
const IDLE: &str = "rill-idle";

/// Whether a keyed stage whose inputs have these partition counts reads re-keyed rows through
/// repartition topics: not when every input has one partition, which one task reads whole, so
/// its rows go to the shards in process (a topic would only copy them through the log).
pub fn through_topics(partitions: &[u32]) -> bool {
    partitions.iter().any(|p| *p > 1)
}

/// The repartition topic of `step` (e.g. `Aggregate-GroupBy`) of query `query`, named as
/// ksqlDB names its own (`_confluent-ksql-<service>query_<id>-<step>-repartition`).
pub fn topic_name(query: &str, step: &str) -> String {
    format!("{}{step}-repartition", internal_prefix(query))
}

/// The prefix of every internal topic of query `query` (deleted with the query).
pub fn internal_prefix(query: &str) -> String {
    format!("_rill-query_{query}-")
}

/// The configuration of a repartition topic: `partitions` partitions, 16 MiB segments (records
/// are deleted segment by segment once read), no retention by time or size (only reading
/// deletes), appends acknowledged before their fsync: the writing task syncs the partitions it
/// wrote once per checkpoint, before the checkpoint names them (see [`crate::commit`]).
pub fn topic_config(partitions: u32) -> TopicConfig {
    TopicConfig {
        partitions,
        retention_ms: None,
        retention_bytes: None,
        segment_bytes: 16 << 20,
        durability: rill_log::Durability::None,
        ..TopicConfig::default()
    }
}

/// What one record of a repartition topic holds.
#[derive(Debug)]
pub enum Shuffled {
    /// Rows from source partition `from`; `reached`: per row, the event time that partition
    /// had reached before it (when the stage judges rows at arrival).
    Rows { from: u32, batch: RecordBatch, reached: Option<Vec<i64>> },
    /// Source partition `from`'s watermark advanced, or it became idle.
    Mark { from: u32, watermark: Watermark },
}

/// Writes one source partition's output to a repartition topic.
pub struct RepartitionWriter {
    keys: Arc<ShardKeys>,
    /// The stage input this is (its key expressions in `keys`).
    input: usize,
    /// The source partition written from.
    from: u32,
    partitions: u32,
}

impl RepartitionWriter {
    /// A writer for source partition `from` of stage input `input`, into `partitions` partitions.
    pub fn new(keys: Arc<ShardKeys>, input: usize, from: u32, partitions: u32) -> Self {
        Self { keys, input, from, partitions }
    }

    /// The records for one fetch's output `messages`, per topic partition in order.
    pub fn records(&self, messages: &[Message]) -> Result<Vec<Vec<Record>>> {
        let mut out: Vec<Vec<Record>> = vec![Vec::new(); self.partitions as usize];
        for m in messages {
            match m {
                Message::Data(batch) if batch.num_rows() > 0 => {
                    let reached = match self.keys.time.filter(|_| self.input == 0) {
                        Some(t) => {
                            let times = arrow::compute::cast(batch.column(t), &DataType::Int64)?;
                            Some(ArrivalBound::per_row(times.as_primitive::<Int64Type>(), i64::MAX))
                        }
                        None => None,
                    };
                    let parts = self.keys.split(self.input, batch, self.partitions as usize)?;
                    for (r, part) in parts.into_iter().enumerate() {
                        let Some((rows, picked)) = part else { continue };
                        let rows = match &reached {
                            Some(all) => {
                                let mine: Vec<i64> = match picked {
                                    Some(p) => p.values().iter().map(|i| all[*i as usize]).collect(),
                                    None => all.clone(),
                                };
                                with_reached(&rows, mine)?
                            }
                            None => rows,
                        };
                        out[r].push(self.record(Some(encode(&rows)?), None));
                    }
                }
                Message::Watermark(w) => {
                    for records in out.iter_mut() {
                        records.push(self.record(None, Some(*w)));
                    }
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// The marker records saying this source partition is idle, one per topic partition.
    pub fn idle(&self) -> Vec<Vec<Record>> {
        (0..self.partitions).map(|_| vec![self.record(None, Some(Watermark::Idle))]).collect()
    }

    fn record(&self, value: Option<Bytes>, mark: Option<Watermark>) -> Record {
        let mut headers = vec![(FROM.to_string(), Some(Bytes::from(self.from.to_string())))];
        match mark {
            Some(Watermark::EventTime(t)) => headers.push((WATERMARK.to_string(), Some(Bytes::from(t.to_string())))),
            Some(Watermark::Idle) => headers.push((IDLE.to_string(), None)),
            None => {}
        }
        Record { timestamp: 0, key: None, value, headers }
    }
}

/// `rows` with the per-row arrival times appended as column [`REACHED`].
fn with_reached(rows: &RecordBatch, reached: Vec<i64>) -> Result<RecordBatch> {
    let mut fields: Vec<_> = rows.schema().fields().iter().cloned().collect();
    fields.push(Arc::new(Field::new(REACHED, DataType::Int64, false)));
    let mut columns = rows.columns().to_vec();
    columns.push(Arc::new(Int64Array::from(reached)));
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?)
}

fn encode(batch: &RecordBatch) -> Result<Bytes> {
    let mut ipc = Vec::with_capacity(batch.get_array_memory_size() + 1024);
    {
        let mut w = StreamWriter::try_new(&mut ipc, &batch.schema())?;
        w.write(batch)?;
        w.finish()?;
    }
    Ok(ipc.into())
}

fn corrupt(offset: u64, what: &str) -> EngineError {
    EngineError::Internal(format!("repartition record at offset {offset}: {what} (this is a bug in Rill)"))
}

/// Decodes one repartition record (see the module docs).
pub fn decode(record: &rill_log::RecordRef<'_>) -> Result<Shuffled> {
    let mut from = None;
    let mut mark = None;
    for (name, value) in record.headers() {
        let number = || value.and_then(|v| std::str::from_utf8(v).ok()).map(str::to_string).unwrap_or_default();
        match name {
            FROM => from = number().parse::<u32>().ok(),
            WATERMARK => {
                let t = number().parse::<i64>().map_err(|_| corrupt(record.offset, "a bad watermark"))?;
                mark = Some(Watermark::EventTime(t));
            }
            IDLE => mark = Some(Watermark::Idle),
            _ => {}
        }
    }
    let from = from.ok_or_else(|| corrupt(record.offset, "no source partition"))?;
    match (record.value, mark) {
        (None, Some(watermark)) => Ok(Shuffled::Mark { from, watermark }),
        (Some(value), None) => {
            let mut reader = StreamReader::try_new(std::io::Cursor::new(value), None)?;
            let batch = reader.next().ok_or_else(|| corrupt(record.offset, "no rows"))??;
            let (batch, reached) = match batch.schema().index_of(REACHED) {
                Ok(i) => {
                    let reached = batch.column(i).as_primitive::<Int64Type>().values().to_vec();
                    let mut batch = batch;
                    batch.remove_column(i);
                    (batch, Some(reached))
                }
                Err(_) => (batch, None),
            };
            Ok(Shuffled::Rows { from, batch, reached })
        }
        _ => Err(corrupt(record.offset, "neither rows nor a marker")),
    }
}

/// Decodes every record of `fetch`, except idle markers before offset `stale_before`: those
/// were written before the query (re)started, and their source partitions may have new data
/// now (each partition task says it is idle again once it has caught up in this run; until
/// then it holds the watermark back, as after any restart).
pub fn decode_fetch(fetch: &rill_log::Fetch, stale_before: u64) -> Result<Vec<Shuffled>> {
    let mut items = Vec::new();
    for r in fetch.records() {
        let item = decode(&r)?;
        if !(r.offset < stale_before && matches!(item, Shuffled::Mark { watermark: Watermark::Idle, .. })) {
            items.push(item);
        }
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use arrow::array::StringArray;
    use datafusion::physical_expr::expressions::col;
    use rill_connectors::store::TopicStore;
    use rill_connectors::EmbeddedStore;

    use super::*;

    fn keys(schema: &Arc<Schema>) -> Arc<ShardKeys> {
        Arc::new(ShardKeys {
            inputs: vec![vec![col("K", schema).unwrap()]],
            types: vec![DataType::Utf8],
            time: Some(1),
            repartition: vec![Some("Aggregate-GroupBy")],
        })
    }

    #[tokio::test]
    async fn rows_and_markers_round_trip_through_a_topic_split_by_key_in_order() {
        let schema =
            Arc::new(Schema::new(vec![Field::new("K", DataType::Utf8, true), Field::new("T", DataType::Int64, true)]));
        let keys = keys(&schema);
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec!["a", "b", "a", "c", "b", "a"])),
                Arc::new(Int64Array::from(vec![10, 30, 20, 50, 40, 60])),
            ],
        )
        .unwrap();
        let writer = RepartitionWriter::new(keys.clone(), 0, 7, 3);
        let messages = vec![Message::Data(batch), Message::Watermark(Watermark::EventTime(60))];
        let per_partition = writer.records(&messages).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store.create_topic("r", topic_config(3)).unwrap();
        let mut rows_of: std::collections::BTreeMap<String, (usize, Vec<i64>, Vec<i64>)> = Default::default();
        for (r, records) in per_partition.into_iter().enumerate() {
            store.append("r", r as u32, &records).await.unwrap();
            store.append("r", r as u32, &writer.idle()[r]).await.unwrap();
            let fetch = store.read("r", r as u32, 0, 1 << 20).unwrap();
            let decoded = decode_fetch(&fetch, 0).unwrap();
            // Rows (if any), then the watermark, then idleness: every partition hears of both.
            let marks: Vec<_> = decoded
                .iter()
                .filter_map(|s| match s {
                    Shuffled::Mark { from: 7, watermark } => Some(*watermark),
                    _ => None,
                })
                .collect();
            assert_eq!(marks, vec![Watermark::EventTime(60), Watermark::Idle]);
            for s in decoded {
                if let Shuffled::Rows { from, batch, reached } = s {
                    assert_eq!(from, 7);
                    assert_eq!(batch.schema(), schema, "the arrival column is taken off again");
                    let ks = batch.column(0).as_string::<i32>();
                    let ts = batch.column(1).as_primitive::<Int64Type>().values().to_vec();
                    for k in ks.iter().flatten() {
                        let e = rows_of.entry(k.to_string()).or_insert((r, vec![], vec![]));
                        assert_eq!(e.0, r, "key {k} in one partition only");
                    }
                    for (i, k) in ks.iter().flatten().enumerate() {
                        let e = rows_of.get_mut(k).unwrap();
                        e.1.push(ts[i]);
                        e.2.push(reached.as_ref().unwrap()[i]);
                    }
                }
            }
        }
        // Per key, rows keep their order; each carries the time reached before it in the
        // whole fetch (not only in its partition).
        assert_eq!(rows_of["a"].1, vec![10, 20, 60]);
        assert_eq!(rows_of["a"].2, vec![i64::MIN, 30, 50]);
        assert_eq!(rows_of["b"].1, vec![30, 40]);
        assert_eq!(rows_of["b"].2, vec![10, 50]);
        assert_eq!(rows_of["c"].2, vec![30]);
    }
}
