//! Running queries: one task per source partition, each reading its partition, pushing batches
//! through its operator chain and writing to the output, then committing its source offset.
//!
//! Backpressure is natural: a task reads the next fetch only after the previous one's output
//! was appended (topic output) or accepted by a bounded channel (push-query output).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::Int64Type;
use parking_lot::Mutex;
use rill_connectors::store::{Record, TopicConfig, TopicStore};
use rill_connectors::ConnectorError;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;

use crate::message::{Message, Watermark};
use crate::operator::Chain;
use crate::sink::{Sink, SinkSpec};
use crate::source::{dead_letter_value, DeadLetter, SourceReader, SourceSpec, ROWOFFSET};
use crate::{EngineError, Result};

/// Topic that receives records no query could read, with the reason.
pub const DEAD_LETTER_TOPIC: &str = "rill_dead_letters";

/// Builds a fresh operator chain for one task.
pub type ChainFactory = Arc<dyn Fn() -> Result<Chain> + Send + Sync>;

/// Where a query starts reading when it has no committed offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartFrom {
    /// The first stored record.
    Earliest,
    /// Only records appended after the query starts.
    Latest,
}

/// Where a query's rows go.
pub enum Output {
    /// Appended to a topic (persistent queries).
    Topic(SinkSpec),
    /// Sent to a client (push queries). The channel is bounded: a slow client slows the query.
    Channel(mpsc::Sender<RecordBatch>),
}

/// Everything needed to run a query.
pub struct QuerySpec {
    /// Query id (e.g. `CSAS_S1_1`).
    pub id: String,
    /// The source.
    pub source: SourceSpec,
    /// Builds each task's operator chain.
    pub chain: ChainFactory,
    /// Output.
    pub output: Output,
    /// Start position when nothing is committed.
    pub start: StartFrom,
    /// Consumer group whose committed offsets the query resumes from (persistent queries).
    pub commit_group: Option<String>,
}

/// Live counters of a running query.
#[derive(Default)]
pub struct QueryStats {
    /// Records read from the source.
    pub records_in: AtomicU64,
    /// Rows written to the output.
    pub records_out: AtomicU64,
    /// Records sent to the dead-letter topic.
    pub dead_letters: AtomicU64,
    /// The last error, if the query failed or dead-lettered records.
    pub last_error: Mutex<Option<String>>,
    /// Set when a task stopped on an error.
    pub failed: AtomicBool,
    /// Next offset to read, per source partition.
    pub positions: Mutex<Vec<u64>>,
    /// Signalled after every processed fetch.
    pub progress: Notify,
}

/// A query that is running.
pub struct RunningQuery {
    /// The query id.
    pub id: String,
    /// Source topic.
    pub source_topic: String,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Live counters.
    pub stats: Arc<QueryStats>,
}

impl RunningQuery {
    /// Asks every task to stop after its current batch and waits for them.
    pub async fn stop(&self) {
        let _ = self.stop.send(true);
        let tasks: Vec<_> = std::mem::take(&mut *self.tasks.lock());
        for t in tasks {
            let _ = t.await;
        }
    }

    /// Whether every partition has been read up to the store's end offset.
    pub fn caught_up(&self, store: &dyn TopicStore) -> bool {
        if self.stats.failed.load(Ordering::SeqCst) {
            return true;
        }
        let positions = self.stats.positions.lock().clone();
        positions.iter().enumerate().all(|(p, pos)| {
            store.end_offset(&self.source_topic, p as u32).map(|end| *pos >= end).unwrap_or(true)
        })
    }

    /// Whether a task stopped on an error.
    pub fn failed(&self) -> bool {
        self.stats.failed.load(Ordering::SeqCst)
    }
}

/// Starts `spec` on `store`: one task per source partition.
pub fn start(store: Arc<dyn TopicStore>, spec: QuerySpec) -> Result<RunningQuery> {
    let partitions = store.topic_config(&spec.source.topic)?.partitions;
    let (stop_tx, stop_rx) = watch::channel(false);
    let stats = Arc::new(QueryStats::default());
    *stats.positions.lock() = vec![0; partitions as usize];
    let shared = Arc::new(Shared { id: spec.id.clone(), source: spec.source, chain: spec.chain, commit_group: spec.commit_group });
    let mut tasks = Vec::new();
    let sink_spec = match &spec.output {
        Output::Topic(s) => Some(s.clone()),
        Output::Channel(_) => None,
    };
    if sink_spec.is_some() || matches!(spec.output, Output::Channel(_)) {
        store.create_topic(DEAD_LETTER_TOPIC, TopicConfig::default())?;
    }
    for p in 0..partitions {
        let start_offset = match shared.commit_group.as_ref().map(|g| store.committed_offset(g, &shared.source.topic, p)) {
            Some(Ok(Some(o))) => o,
            Some(Err(e)) => return Err(e.into()),
            _ => match spec.start {
                StartFrom::Earliest => store.start_offset(&shared.source.topic, p)?,
                StartFrom::Latest => store.end_offset(&shared.source.topic, p)?,
            },
        };
        stats.positions.lock()[p as usize] = start_offset;
        let out = match (&spec.output, &sink_spec) {
            (_, Some(s)) => TaskOutput::Sink(Box::new(Sink::try_new(s.clone(), store.clone())?)),
            (Output::Channel(tx), None) => TaskOutput::Channel(tx.clone()),
            (Output::Topic(_), None) => return Err(EngineError::Internal("topic output without sink".into())),
        };
        let task = PartitionTask {
            store: store.clone(),
            shared: shared.clone(),
            partition: p,
            offset: start_offset,
            reader: SourceReader::try_new(shared.source.clone(), p)?,
            chain: (shared.chain)()?,
            out,
            stats: stats.clone(),
            stream_time: i64::MIN,
        };
        let stop = stop_rx.clone();
        tasks.push(tokio::spawn(task.run(stop)));
    }
    Ok(RunningQuery { id: spec.id, source_topic: shared.source.topic.clone(), stop: stop_tx, tasks: Mutex::new(tasks), stats })
}

struct Shared {
    id: String,
    source: SourceSpec,
    #[allow(dead_code)]
    chain: ChainFactory,
    commit_group: Option<String>,
}

enum TaskOutput {
    Sink(Box<Sink>),
    Channel(mpsc::Sender<RecordBatch>),
}

struct PartitionTask {
    store: Arc<dyn TopicStore>,
    shared: Arc<Shared>,
    partition: u32,
    offset: u64,
    reader: SourceReader,
    chain: Chain,
    out: TaskOutput,
    stats: Arc<QueryStats>,
    stream_time: i64,
}

/// Why a task ended.
enum Ended {
    Stopped,
    ClientGone,
}

impl PartitionTask {
    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let topic = self.shared.source.topic.clone();
        let result = self.run_loop(&topic, &mut stop).await;
        match result {
            Ok(_) => {}
            Err(e) => {
                tracing::error!(query = %self.shared.id, partition = self.partition, "query failed: {e}");
                *self.stats.last_error.lock() = Some(e.to_string());
                self.stats.failed.store(true, Ordering::SeqCst);
                self.stats.progress.notify_waiters();
            }
        }
    }

    async fn run_loop(&mut self, topic: &str, stop: &mut watch::Receiver<bool>) -> Result<Ended> {
        loop {
            if *stop.borrow() {
                return Ok(Ended::Stopped);
            }
            let fetch = match self.store.read(topic, self.partition, self.offset, 1 << 20) {
                Ok(f) => f,
                Err(ConnectorError::Log(rill_log::LogError::OffsetOutOfRange { .. })) => {
                    // Retention removed what we had not read yet: continue at the log start.
                    let start = self.store.start_offset(topic, self.partition)?;
                    let end = self.store.end_offset(topic, self.partition)?;
                    self.offset = if self.offset < start { start } else { end };
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            if fetch.next_offset() <= self.offset {
                tokio::select! {
                    r = self.store.wait_for(topic, self.partition, self.offset) => r?,
                    _ = stop.changed() => return Ok(Ended::Stopped),
                }
                continue;
            }
            let read = self.reader.read(&fetch)?;
            let mut messages = Vec::new();
            if let Some(batch) = read.batch {
                self.stats.records_in.fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
                if let Err(e) = self.chain.push(Message::Data(batch.clone()), &mut messages) {
                    self.dead_letter_batch(&batch, &e.to_string()).await?;
                }
            }
            if let Some(t) = read.max_event_time {
                if t > self.stream_time {
                    self.stream_time = t;
                    self.chain.push(Message::Watermark(Watermark::EventTime(t)), &mut messages)?;
                }
            }
            self.dead_letters(read.dead).await?;
            for m in messages {
                if let Message::Data(b) = m {
                    if let Ended::ClientGone = self.emit(b).await? {
                        return Ok(Ended::ClientGone);
                    }
                }
            }
            self.offset = read.next_offset;
            if let Some(g) = &self.shared.commit_group {
                self.store.commit_offsets(g, &[(topic.to_string(), self.partition, self.offset)])?;
            }
            self.stats.positions.lock()[self.partition as usize] = self.offset;
            self.stats.progress.notify_waiters();
        }
    }

    async fn emit(&mut self, batch: RecordBatch) -> Result<Ended> {
        match &mut self.out {
            TaskOutput::Sink(sink) => {
                let n = sink.write(&batch).await?;
                self.stats.records_out.fetch_add(n as u64, Ordering::Relaxed);
                Ok(Ended::Stopped)
            }
            TaskOutput::Channel(tx) => {
                let n = batch.num_rows();
                if tx.send(batch).await.is_err() {
                    return Ok(Ended::ClientGone);
                }
                self.stats.records_out.fetch_add(n as u64, Ordering::Relaxed);
                Ok(Ended::Stopped)
            }
        }
    }

    async fn dead_letter_batch(&mut self, batch: &RecordBatch, error: &str) -> Result<()> {
        let offsets = match batch.schema().index_of(ROWOFFSET) {
            Ok(i) => batch.column(i).as_primitive::<Int64Type>().values().to_vec(),
            Err(_) => vec![],
        };
        let dead = offsets
            .into_iter()
            .map(|o| DeadLetter {
                topic: self.shared.source.topic.clone(),
                partition: self.partition,
                offset: o as u64,
                error: error.to_string(),
                key: None,
                value: None,
            })
            .collect();
        self.dead_letters(dead).await
    }

    async fn dead_letters(&mut self, dead: Vec<DeadLetter>) -> Result<()> {
        if dead.is_empty() {
            return Ok(());
        }
        if let Some(last) = dead.last() {
            *self.stats.last_error.lock() = Some(last.error.clone());
        }
        self.stats.dead_letters.fetch_add(dead.len() as u64, Ordering::Relaxed);
        let records: Vec<Record> = dead
            .iter()
            .map(|d| Record {
                timestamp: 0,
                key: Some(bytes::Bytes::from(self.shared.id.clone())),
                value: Some(dead_letter_value(&self.shared.id, d)),
                headers: vec![],
            })
            .collect();
        self.store.append(DEAD_LETTER_TOPIC, 0, &records).await?;
        Ok(())
    }
}
