//! Running queries: one task per source partition, each reading its partition, pushing batches
//! through its operator chain and writing to the output, then committing its source offset.
//!
//! Each partition task has a prefetcher (its own tokio task) that reads and decodes ahead of it
//! (up to two decoded fetches wait in a channel), so decoding overlaps processing. Backpressure is
//! natural: the task takes the next fetch only after the previous one's output was appended
//! (topic output) or accepted by a bounded channel (push-query output).
//!
//! A stateful query has one stage task besides, fed by the partition tasks over a channel; when
//! a persistent query's keyed stage reads an input not partitioned by its key, that input's
//! partition tasks write to a repartition topic instead, and one feeder per topic partition
//! reads it for the stage (see [`crate::repartition`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::Int64Type;
use parking_lot::Mutex;
use rill_connectors::store::{Record, TopicConfig, TopicStore};
use rill_connectors::ConnectorError;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;

use crate::commit::{CheckpointSpec, Committer};
use crate::message::{Message, Watermark};
use crate::operator::{ArrivalBound, Chain, LateRow};
use crate::repartition::{RepartitionWriter, Shuffled};
use crate::shard::ShardKeys;
use crate::sink::{Sink, SinkSpec};
use crate::source::{dead_letter_value, DeadLetter, SourceReader, SourceSpec, ROWOFFSET};
use crate::watermark::WatermarkTracker;
use crate::{EngineError, Result};

/// Topic that receives records no query could read, with the reason.
pub const DEAD_LETTER_TOPIC: &str = "rill_dead_letters";
/// Topic that receives rows that arrived after their window closed, with the window they missed.
pub const LATE_TOPIC: &str = "rill_late_records";

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
    Topic(Box<SinkSpec>),
    /// Sent to a client (push queries). The channel is bounded: a slow client slows the query.
    Channel(mpsc::Sender<RecordBatch>),
}

/// Everything needed to run a query.
pub struct QuerySpec {
    /// Query id (e.g. `CSAS_S1_1`).
    pub id: String,
    /// The source.
    pub source: SourceSpec,
    /// Builds each source-partition task's (stateless) operator chain.
    pub chain: ChainFactory,
    /// Builds the stateful stage: one task fed by every partition task, whose watermark is the
    /// minimum over the partitions (idle partitions excluded). `None` for stateless queries.
    pub stage: Option<ChainFactory>,
    /// The stage's key per input when its state is keyed (see [`crate::shard`]): the stage
    /// then runs as several shards side by side. `None`: one chain.
    pub shard_keys: Option<Arc<ShardKeys>>,
    /// Shards of a keyed stage on a fresh start (`num.stream.threads`; a restart keeps its
    /// checkpoint's number). By default one per core (at most 8); when inputs go through
    /// repartition topics, one per partition of the most partitioned input (as Kafka Streams'
    /// tasks follow partitions), raised by a number set here (see [`plan_repartition`]).
    pub parallelism: Option<usize>,
    /// Further inputs of the stage (the table of a stream-table join): their batches reach the
    /// stage's first operator through `Operator::process_side_batch(1.., ..)`; their event time
    /// does not drive the watermark.
    pub side_inputs: Vec<SideInput>,
    /// Output.
    pub output: Output,
    /// Start position when nothing is committed.
    pub start: StartFrom,
    /// Consumer group whose committed offsets the query resumes from (persistent queries).
    pub commit_group: Option<String>,
    /// Checkpoints (persistent queries): state and positions survive restarts and crashes,
    /// and with exactly-once the output is committed with each checkpoint. `None`: no state
    /// is kept across restarts (push queries).
    pub checkpoint: Option<CheckpointSpec>,
}

/// A further input of a query's stateful stage.
pub struct SideInput {
    /// The source.
    pub source: SourceSpec,
    /// Its per-partition (stateless) chain.
    pub chain: ChainFactory,
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
    /// Rows written to the late-data topic.
    pub late_records: AtomicU64,
    /// Approximate bytes of operator state (stateful stage).
    pub state_bytes: AtomicU64,
    /// The last error, if the query failed or dead-lettered records.
    pub last_error: Mutex<Option<String>>,
    /// Set when a task stopped on an error.
    pub failed: AtomicBool,
    /// Next offset to read, per input (0 = the main source) and partition.
    pub positions: Mutex<Vec<Vec<u64>>>,
    /// Signalled after every processed fetch.
    pub progress: Notify,
}

impl QueryStats {
    /// Marks the query failed with `message` and wakes whoever waits on its progress.
    fn fail(&self, message: String) {
        *self.last_error.lock() = Some(message);
        self.failed.store(true, Ordering::SeqCst);
        self.progress.notify_waiters();
    }
}

/// A query that is running.
pub struct RunningQuery {
    /// The query id.
    pub id: String,
    /// Topics read, per input (0 = the main source).
    pub topics: Vec<String>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Live counters.
    pub stats: Arc<QueryStats>,
}

impl RunningQuery {
    /// A query that is defined but not running yet (created while the command log replays).
    pub fn not_started(id: &str, topics: Vec<String>) -> Self {
        let stats = QueryStats::default();
        *stats.positions.lock() = topics.iter().map(|_| Vec::new()).collect();
        RunningQuery {
            id: id.to_string(),
            topics,
            stop: watch::channel(false).0,
            tasks: Mutex::new(Vec::new()),
            stats: Arc::new(stats),
        }
    }

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
        positions.iter().zip(&self.topics).all(|(parts, topic)| {
            parts
                .iter()
                .enumerate()
                .all(|(p, pos)| store.end_offset(topic, p as u32).map(|end| *pos >= end).unwrap_or(true))
        })
    }

    /// Records of its sources not yet processed and committed (consumer lag).
    pub fn lag(&self, store: &dyn TopicStore) -> u64 {
        let positions = self.stats.positions.lock().clone();
        positions
            .iter()
            .zip(&self.topics)
            .flat_map(|(parts, topic)| {
                parts.iter().enumerate().map(move |(p, pos)| {
                    store.end_offset(topic, p as u32).map(|end| end.saturating_sub(*pos)).unwrap_or(0)
                })
            })
            .sum()
    }

    /// Whether a task stopped on an error.
    pub fn failed(&self) -> bool {
        self.stats.failed.load(Ordering::SeqCst)
    }
}

/// Starts `spec` on `store`: one task per source partition (and one stage task if stateful).
/// With checkpoints, each committing task first recovers: transactions a crash left open are
/// resolved, operator state is restored and reading resumes at the checkpoint's positions.
pub fn start(store: Arc<dyn TopicStore>, spec: QuerySpec) -> Result<RunningQuery> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let stats = Arc::new(QueryStats::default());
    let shared = Arc::new(Shared { id: spec.id.clone(), commit_group: spec.commit_group.clone() });
    store.create_topic(DEAD_LETTER_TOPIC, TopicConfig::default())?;
    let mut inputs: Vec<(SourceSpec, ChainFactory)> = vec![(spec.source.clone(), spec.chain.clone())];
    inputs.extend(spec.side_inputs.iter().map(|s| (s.source.clone(), s.chain.clone())));
    let partitions: Vec<u32> =
        inputs.iter().map(|(s, _)| Ok(store.topic_config(&s.topic)?.partitions)).collect::<Result<_>>()?;
    let make_output = || -> Result<TaskOutput> {
        Ok(match &spec.output {
            Output::Topic(s) => TaskOutput::Sink(Box::new(Sink::try_new(s.as_ref().clone(), store.clone())?)),
            Output::Channel(tx) => TaskOutput::Channel(tx.clone()),
        })
    };
    let sink_topic = match &spec.output {
        Output::Topic(s) => Some(s.topic.clone()),
        Output::Channel(_) => None,
    };
    let committer = |task: &str, extra: &[&str]| -> Option<Committer> {
        let ck = spec.checkpoint.clone()?;
        let outputs = sink_topic.iter().cloned().chain(extra.iter().map(|t| t.to_string())).collect();
        Some(Committer::new(store.clone(), ck, &spec.id, task, outputs))
    };
    // The stage's checkpoint first: it says whether its inputs come through repartition topics.
    let mut stage_committer = match &spec.stage {
        Some(_) => committer("stage", &[LATE_TOPIC, DEAD_LETTER_TOPIC]),
        None => None,
    };
    let recovered = match &mut stage_committer {
        Some(c) => c.recover_checkpoint()?,
        None => None,
    };
    let shuffle = plan_repartition(&store, &spec, &partitions, recovered.as_ref().map(|c| &c.meta.task))?;
    let per_shard = shuffle.topics.iter().any(Option::is_some);
    // Per stage input, the topic it reads: its repartition topic, else its source.
    let stage_topics: Vec<String> =
        inputs.iter().zip(&shuffle.topics).map(|((s, _), r)| r.clone().unwrap_or_else(|| s.topic.clone())).collect();
    // Progress is reported per topic read: the stage's inputs, then the sources of the
    // repartitioned ones (read by the partition tasks).
    let mut report_topics = stage_topics.clone();
    let mut slots: Vec<usize> = (0..inputs.len()).collect();
    for (i, t) in shuffle.topics.iter().enumerate() {
        if t.is_some() {
            slots[i] = report_topics.len();
            report_topics.push(inputs[i].0.topic.clone());
        }
    }
    // Positions restored from the stage's checkpoint.
    let mut restored: Option<Vec<Vec<u64>>> = None;
    let mut tasks = Vec::new();
    let mut stage = match &spec.stage {
        Some(factory) => {
            store.create_topic(LATE_TOPIC, TopicConfig::default())?;
            let sources = partitions.iter().sum::<u32>() as usize;
            let mut shards = match (per_shard, &spec.shard_keys) {
                (true, _) => shuffle.partitions as usize,
                (false, Some(_)) => spec.parallelism.unwrap_or_else(default_parallelism).max(1),
                (false, None) => 1,
            };
            let mut trackers = vec![WatermarkTracker::new(sources); if per_shard { shards } else { 1 }];
            let mut chains = None;
            if let Some(ckpt) = recovered {
                let meta = ckpt.meta;
                let checkpointed = checkpointed_shards(&meta.task, spec.shard_keys.is_some())?;
                if per_shard && checkpointed != shards {
                    return Err(crate::state::bad_state(&format!(
                        "the checkpoint has {checkpointed} key shards but the repartition topic {} partitions",
                        shuffle.partitions
                    )));
                }
                shards = checkpointed;
                let mut built = (0..shards).map(|_| factory()).collect::<Result<Vec<_>>>()?;
                restore_shards(&mut built, ckpt.state)?;
                chains = Some(built);
                let saved: Option<Vec<WatermarkTracker>> = match per_shard {
                    true => meta.task.get("trackers").and_then(|t| serde_json::from_value(t.clone()).ok()),
                    false => {
                        meta.task.get("tracker").and_then(|t| serde_json::from_value(t.clone()).ok()).map(|t| vec![t])
                    }
                };
                if let Some(saved) = saved.filter(|s| s.len() == trackers.len()) {
                    trackers = saved;
                    trackers.iter_mut().for_each(WatermarkTracker::resume);
                }
                restored = Some(meta.positions);
            }
            let chains = match chains {
                Some(c) => c,
                None => (0..shards).map(|_| factory()).collect::<Result<Vec<_>>>()?,
            };
            let shards = chains
                .into_iter()
                .map(|chain| {
                    Ok(Shard {
                        chain,
                        steps: Vec::new(),
                        out: Vec::new(),
                        late: Vec::new(),
                        sink: match &spec.output {
                            Output::Topic(s) => Some(Sink::try_new(s.as_ref().clone(), store.clone())?),
                            Output::Channel(_) => None,
                        },
                        encoded: Vec::new(),
                        refused: Vec::new(),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            Some(StageTask {
                store: store.clone(),
                shared: shared.clone(),
                topics: stage_topics.clone(),
                source_topic: spec.source.topic.clone(),
                repartitioned: shuffle.topics.clone(),
                shards,
                keys: spec.shard_keys.clone(),
                sink_topic: sink_topic.clone(),
                push: match &spec.output {
                    Output::Channel(tx) => Some(tx.clone()),
                    Output::Topic(_) => None,
                },
                stats: stats.clone(),
                trackers,
                tracker_base: partitions
                    .iter()
                    .scan(0usize, |acc, n| {
                        let base = *acc;
                        *acc += *n as usize;
                        Some(base)
                    })
                    .collect(),
                state_measured: None,
                committer: stage_committer,
                processed: Vec::new(),
                commits: shared.commit_group.clone().map(|g| OffsetCommits::new(store.clone(), g)),
            })
        }
        None if inputs.len() > 1 => return Err(EngineError::Internal("side inputs need a stateful stage".into())),
        None => None,
    };
    // Partition tasks that write their own output (stateless queries, repartitioned inputs)
    // commit on their own.
    let mut partition_chains: Vec<Vec<TaskParts>> = Vec::new();
    for (input, (_, chain)) in inputs.iter().enumerate() {
        let mut per = Vec::new();
        for p in 0..partitions[input] {
            let mut c = chain()?;
            let mut own = None;
            let mut resume = None;
            let own_output = match &shuffle.topics[input] {
                Some(topic) => Some(vec![DEAD_LETTER_TOPIC, topic.as_str()]),
                None => stage.is_none().then(|| vec![DEAD_LETTER_TOPIC]),
            };
            if let Some(outputs) = own_output {
                own = committer(&format!("p{input}-{p}"), &outputs);
                if shuffle.topics[input].is_some() {
                    // The stage reads what these tasks commit: commit often (as Kafka Streams
                    // does under exactly-once) so that the stage works alongside.
                    own = own.map(|c| c.at_most(REPARTITION_COMMIT_INTERVAL));
                }
                if let Some(committer) = &mut own {
                    resume = committer.recover(&mut c)?.and_then(|m| m.positions.first()?.first().copied());
                }
            }
            per.push((c, own, resume));
        }
        partition_chains.push(per);
    }
    // Where each stage input's partition starts: the checkpoint's position, else the committed
    // offset, else per `spec.start` (side inputs, i.e. tables, and repartition topics always
    // from the beginning: the table's current state is needed, and a repartition topic holds
    // only what this query's partition tasks wrote for it).
    let position = |topic: &str, p: u32, checkpointed: Option<u64>, from_start: bool| -> Result<u64> {
        let committed = match (&shared.commit_group, checkpointed) {
            (_, Some(o)) => Some(o),
            (Some(g), None) => store.committed_offset(g, topic, p)?,
            (None, None) => None,
        };
        Ok(match committed {
            Some(o) => o.max(store.start_offset(topic, p)?),
            None if from_start || spec.start == StartFrom::Earliest => store.start_offset(topic, p)?,
            None => store.end_offset(topic, p)?,
        })
    };
    let mut starts: Vec<Vec<u64>> = Vec::new();
    for (input, topic) in stage_topics.iter().enumerate() {
        let count = if shuffle.topics[input].is_some() { shuffle.partitions } else { partitions[input] };
        let mut offsets = Vec::new();
        for p in 0..count {
            let mut checkpointed = restored.as_ref().and_then(|r| r.get(input)?.get(p as usize).copied());
            if shuffle.topics[input].is_none() {
                // A stateless query's partition task resumes at its own checkpoint.
                checkpointed = checkpointed.or(partition_chains[input][p as usize].2);
            }
            offsets.push(position(topic, p, checkpointed, input > 0 || shuffle.topics[input].is_some())?);
        }
        starts.push(offsets);
    }
    // Partition tasks of repartitioned inputs resume at their own checkpoints.
    let mut task_starts = starts.clone();
    for (input, (source, _)) in inputs.iter().enumerate() {
        if shuffle.topics[input].is_some() {
            task_starts[input] = (0..partitions[input])
                .map(|p| position(&source.topic, p, partition_chains[input][p as usize].2, input > 0))
                .collect::<Result<_>>()?;
        }
    }
    let mut reported = starts.clone();
    reported.extend(slots.iter().enumerate().filter(|(i, slot)| **slot != *i).map(|(i, _)| task_starts[i].clone()));
    *stats.positions.lock() = reported;
    // The main input waits until every side input (a joined table) has been read up to where it
    // ended when the query started: a stream row must not miss table rows that already existed.
    let mut targets = Vec::new();
    for (input, topic) in stage_topics.iter().enumerate().skip(1) {
        if shuffle.topics[input].is_some() {
            continue;
        }
        for p in 0..partitions[input] {
            let end = store.end_offset(topic, p)?;
            if starts[input][p as usize] < end {
                targets.push((input, p, end));
            }
        }
    }
    let (loaded_tx, loaded_rx) = watch::channel(targets.is_empty());
    let stage_tx = match stage.take() {
        Some(mut stage) => {
            stage.processed = starts.clone();
            let (tx, rx) = mpsc::channel(STAGE_INPUTS_AT_ONCE);
            // Hand the targets to the stage, which reports when they are reached.
            if tx.try_send(StageInput::Bootstrap(targets, loaded_tx)).is_err() {
                return Err(EngineError::Internal("stage channel full at start".into()));
            }
            tasks.push(spawn_guarded(stage.run(rx), stats.clone(), shared.id.clone()));
            Some(tx)
        }
        None => None,
    };
    // Repartition topics: one reader per partition feeds the stage.
    if let Some(tx) = &stage_tx {
        for (input, topic) in shuffle.topics.iter().enumerate() {
            let Some(topic) = topic else { continue };
            for r in 0..shuffle.partitions {
                let feeder = Feeder {
                    store: store.clone(),
                    topic: topic.clone(),
                    input,
                    partition: r,
                    offset: starts[input][r as usize],
                    stale_before: store.end_offset(topic, r)?,
                    tx: tx.clone(),
                };
                tasks.push(spawn_guarded(feeder.run(stop_rx.clone()), stats.clone(), shared.id.clone()));
            }
        }
    }
    for (input, ((source, _), chains)) in inputs.iter().zip(partition_chains).enumerate() {
        for (p, (chain, committer)) in chains.into_iter().map(|(c, k, _)| (c, k)).enumerate() {
            let start_offset = task_starts[input][p];
            let p = p as u32;
            let out = match (&shuffle.topics[input], &stage_tx, &spec.shard_keys) {
                (Some(topic), _, Some(keys)) => TaskOutput::Repartition(Box::new(Repartitioned {
                    topic: topic.clone(),
                    writer: RepartitionWriter::new(keys.clone(), input, p, shuffle.partitions),
                })),
                (_, Some(tx), _) => TaskOutput::Stage(tx.clone()),
                _ => make_output()?,
            };
            let task = PartitionTask {
                store: store.clone(),
                shared: shared.clone(),
                input,
                slot: slots[input],
                topic: source.topic.clone(),
                partition: p,
                offset: start_offset,
                reader: Some(SourceReader::try_new(source.clone(), p, store.schema_registry())?),
                chain,
                out,
                stats: stats.clone(),
                stream_time: i64::MIN,
                idle: false,
                wait_for_tables: (input == 0).then(|| loaded_rx.clone()),
                committer,
                commits: shared.commit_group.clone().map(|g| OffsetCommits::new(store.clone(), g)),
            };
            tasks.push(spawn_guarded(task.run(stop_rx.clone()), stats.clone(), shared.id.clone()));
        }
    }
    Ok(RunningQuery { id: spec.id, topics: report_topics, stop: stop_tx, tasks: Mutex::new(tasks), stats })
}

/// The longest time between checkpoints of a task writing to a repartition topic.
const REPARTITION_COMMIT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// Which stage inputs go through repartition topics, and how many partitions those have.
struct Shuffle {
    /// Per stage input, its repartition topic.
    topics: Vec<Option<String>>,
    /// Partitions of every repartition topic of the query (one per stage shard).
    partitions: u32,
}

/// One shard per core, at most 8.
fn default_parallelism() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(8))
}

/// Decides (and creates) a query's repartition topics: persistent queries whose keyed stage has
/// inputs not partitioned by the key (see [`crate::repartition`]), unless every input has one
/// partition ([`crate::repartition::through_topics`]). A stage checkpoint says what its
/// positions refer to: a query checkpointed without repartition topics goes on without. Topics
/// get one partition per shard: the most partitions of any input, and at least `parallelism`
/// when set; an existing topic keeps its count.
fn plan_repartition(
    store: &Arc<dyn TopicStore>,
    spec: &QuerySpec,
    partitions: &[u32],
    checkpoint: Option<&serde_json::Value>,
) -> Result<Shuffle> {
    let none = Shuffle { topics: vec![None; partitions.len()], partitions: 0 };
    let (Some(keys), Output::Topic(_)) = (&spec.shard_keys, &spec.output) else { return Ok(none) };
    let topics: Vec<Option<String>> = match checkpoint {
        Some(task) => match task.get("repartition").and_then(|r| r.as_array()) {
            Some(saved) => {
                (0..partitions.len()).map(|i| saved.get(i).and_then(|t| t.as_str()).map(str::to_string)).collect()
            }
            None => return Ok(none),
        },
        None if !crate::repartition::through_topics(partitions) => return Ok(none),
        None => (0..partitions.len())
            .map(|i| keys.repartition.get(i).copied().flatten().map(|s| crate::repartition::topic_name(&spec.id, s)))
            .collect(),
    };
    // An existing topic (a restart) keeps its count; new ones get one partition per shard.
    let count = match topics.iter().flatten().find_map(|t| store.topic_config(t).ok()) {
        Some(existing) => existing.partitions,
        None => partitions.iter().copied().max().unwrap_or(1).max(spec.parallelism.unwrap_or(1) as u32).max(1),
    };
    for t in topics.iter().flatten() {
        store.create_topic(t, crate::repartition::topic_config(count))?;
        if store.topic_config(t)?.partitions != count {
            return Err(EngineError::Internal(format!("repartition topic {t} does not have {count} partitions")));
        }
    }
    Ok(Shuffle { topics, partitions: count })
}

/// How far event time may advance within rows: per row, the time their source partition had
/// reached before each (when known), capped by `bound`, the other partitions' watermark;
/// otherwise up to `bound` by the rows' own times.
fn arrival(reached: Option<impl Iterator<Item = i64>>, bound: i64) -> ArrivalBound {
    match reached {
        Some(r) => ArrivalBound::PerRow(r.map(|t| t.min(bound)).collect()),
        None => ArrivalBound::UpTo(bound),
    }
}

/// A partition task's chain, its committer (stateless queries) and the offset its checkpoint
/// resumes from.
type TaskParts = (Chain, Option<Committer>, Option<u64>);

/// The number of shards a stage checkpoint was taken with, checked against this build's key
/// routing (see [`crate::shard`]).
fn checkpointed_shards(task: &serde_json::Value, keyed: bool) -> Result<usize> {
    let shards = task.get("shards").and_then(|v| v.as_u64()).unwrap_or(1) as usize;
    if shards > 1 {
        if !keyed {
            return Err(crate::state::bad_state(&format!(
                "the checkpoint has {shards} key shards but this query's stage cannot be split by key"
            )));
        }
        let routing = task.get("routing").and_then(|v| v.as_str()).unwrap_or_default();
        if routing != crate::shard::fingerprint() {
            return Err(crate::state::bad_state(
                "the checkpoint's keys were routed to shards by a different hash than this build's",
            ));
        }
    }
    Ok(shards.max(1))
}

/// Restores each shard's chain from its slice of a stage checkpoint (shards' operator states
/// one after another).
fn restore_shards(chains: &mut [Chain], mut state: Vec<Vec<RecordBatch>>) -> Result<()> {
    let ops = chains.first().map_or(0, |c| c.operators().len());
    if state.len() != ops * chains.len() {
        return Err(crate::state::bad_state(&format!(
            "{} operator states in the checkpoint, {} shards of {ops} operators in the query",
            state.len(),
            chains.len()
        )));
    }
    for chain in chains.iter_mut() {
        let rest = state.split_off(ops);
        chain.restore(std::mem::replace(&mut state, rest))?;
    }
    Ok(())
}

/// Deletes the checkpoints of a dropped query.
pub fn remove_checkpoints(dir: &std::path::Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(EngineError::Checkpoint(format!("removing {}: {e}", dir.display()))),
    }
}

/// Spawns a task of a query; if it panics (a bug), the query is marked failed with the panic
/// message instead of silently stopping, so callers waiting on progress are released.
fn spawn_guarded(
    task: impl std::future::Future<Output = ()> + Send + 'static,
    stats: Arc<QueryStats>,
    query: String,
) -> JoinHandle<()> {
    use futures::FutureExt;
    tokio::spawn(async move {
        if let Err(panic) = std::panic::AssertUnwindSafe(task).catch_unwind().await {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            tracing::error!(query = %query, "query task panicked (a bug in Rill): {message}");
            stats.fail(format!("internal error: {message} (this is a bug in Rill)"));
        }
    })
}

struct Shared {
    id: String,
    commit_group: Option<String>,
}

/// Side-input positions (input, partition, offset) still to reach, and whom to tell.
type Bootstrap = (Vec<(usize, u32, u64)>, watch::Sender<bool>);

/// What partition tasks send to the stateful stage.
enum StageInput {
    /// Input `.0`, partition `.1` is caught up: its watermark must not hold the others back.
    Idle(usize, u32),
    /// Everything one fetch of input `input`, partition `partition` produced, handed over as
    /// one unit so that the stage never sees half a fetch: a checkpoint between two inputs
    /// always has state and positions that agree.
    Fetch {
        input: usize,
        partition: u32,
        /// Batches and watermarks from the partition's chain.
        messages: Vec<Message>,
        /// Records for the dead-letter topic (written by the stage, inside its checkpoints).
        dead: Vec<Record>,
        /// Everything before this offset is in `messages` or `dead`.
        next_offset: u64,
    },
    /// Side-input positions (input, partition, offset) to reach before the main input may start;
    /// `true` is sent once they are reached.
    Bootstrap(Vec<(usize, u32, u64)>, watch::Sender<bool>),
    /// What one fetch of partition `partition` of input `input`'s repartition topic held: rows
    /// and markers for shard `partition` (see [`crate::repartition`]).
    Shuffled { input: usize, partition: u32, items: Vec<Shuffled>, next_offset: u64 },
    /// Reading a repartition topic failed.
    Failed(String),
}

enum TaskOutput {
    Sink(Box<Sink>),
    Channel(mpsc::Sender<RecordBatch>),
    Stage(mpsc::Sender<StageInput>),
    Repartition(Box<Repartitioned>),
}

/// A partition task's rows going to a repartition topic.
struct Repartitioned {
    topic: String,
    writer: RepartitionWriter,
}

impl TaskOutput {
    /// Writes a result batch; returns false when a push-query client has gone.
    async fn write(
        &mut self,
        batch: RecordBatch,
        stats: &QueryStats,
        committer: Option<&mut Committer>,
    ) -> Result<bool> {
        match self {
            TaskOutput::Sink(sink) => {
                let n = match committer {
                    Some(c) => {
                        let mut n = 0;
                        for (p, records) in sink.encode(&batch)? {
                            c.append(sink.topic(), p, &records).await?;
                            n += records.len();
                        }
                        n
                    }
                    None => sink.write(&batch).await?,
                };
                stats.records_out.fetch_add(n as u64, Ordering::Relaxed);
                Ok(true)
            }
            TaskOutput::Channel(tx) => {
                let n = batch.num_rows();
                if tx.send(batch).await.is_err() {
                    return Ok(false);
                }
                stats.records_out.fetch_add(n as u64, Ordering::Relaxed);
                Ok(true)
            }
            TaskOutput::Stage(_) | TaskOutput::Repartition(_) => {
                Err(EngineError::Internal("stage output used as a sink".into()))
            }
        }
    }
}

/// Appends records as a task's output: in its transaction when it has a committer (persistent
/// queries), directly otherwise.
async fn append_output(
    committer: Option<&mut Committer>,
    store: &dyn TopicStore,
    topic: &str,
    partition: u32,
    records: &[Record],
) -> Result<()> {
    match committer {
        Some(c) => c.append(topic, partition, records).await,
        None => {
            store.append(topic, partition, records).await?;
            Ok(())
        }
    }
}

/// Counts and writes dead letters (see [`append_output`]).
/// The dead-letter record of query `query` for `d` (keyed by the query).
fn dead_letter(query: &str, d: &DeadLetter) -> Record {
    Record {
        timestamp: 0,
        key: Some(bytes::Bytes::from(query.to_string())),
        value: Some(dead_letter_value(query, d)),
        headers: vec![],
    }
}

async fn write_dead_letters(
    stats: &QueryStats,
    committer: Option<&mut Committer>,
    store: &dyn TopicStore,
    dead: &[Record],
) -> Result<()> {
    if dead.is_empty() {
        return Ok(());
    }
    stats.dead_letters.fetch_add(dead.len() as u64, Ordering::Relaxed);
    append_output(committer, store, DEAD_LETTER_TOPIC, 0, dead).await
}

/// The stateful part of a query: one task, fed by every partition task. A keyed stage runs as
/// several shards (copies of its chain, see [`crate::shard`]), each a task of its own while it
/// has work, side by side on the runtime's workers; this task routes rows to them, collects
/// their output and writes it.
struct StageTask {
    store: Arc<dyn TopicStore>,
    shared: Arc<Shared>,
    /// Per input, the topic read: its repartition topic, else its source.
    topics: Vec<String>,
    /// The main input's source topic (named in late-data records).
    source_topic: String,
    /// Per input, its repartition topic, if its rows come through one. With any, shard `r`
    /// reads partition `r` of each and keeps its own watermark trackers.
    repartitioned: Vec<Option<String>>,
    shards: Vec<Shard>,
    /// How rows are routed to shards (keyed stages).
    keys: Option<Arc<ShardKeys>>,
    /// Topic output: the topic (the shards encode the records).
    sink_topic: Option<String>,
    /// Push-query output.
    push: Option<mpsc::Sender<RecordBatch>>,
    stats: Arc<QueryStats>,
    /// Watermark over every source partition of every input (idle ones excluded): one for
    /// all shards, or one per shard when inputs are repartitioned (each shard hears of the
    /// source partitions through its partition of the topics).
    trackers: Vec<WatermarkTracker>,
    /// Index of each input's first partition in `tracker`.
    tracker_base: Vec<usize>,
    state_measured: Option<Instant>,
    /// Checkpoints and transactional output (persistent queries).
    committer: Option<Committer>,
    /// Per input and partition: everything before this offset has been processed.
    processed: Vec<Vec<u64>>,
    /// Consumer-group offset commits.
    commits: Option<OffsetCommits>,
}

/// Inputs a stage takes from its channel before running its shards.
const STAGE_INPUTS_AT_ONCE: usize = 16;
/// Repartition fetches a stage holds before it stops taking input (each up to about 1 MiB).
const STAGE_QUEUED_FETCHES: usize = 32;
/// A repartition partition's fetches a stage has taken but not run: items and next offset.
type QueuedFetches = std::collections::VecDeque<(Vec<Shuffled>, u64)>;

/// Repartition fetches of each partition a stage runs at most in one round.
const STAGE_FETCHES_PER_PARTITION: usize = 2;

/// One copy of a stage's chain: what it is to do next, and what it did.
struct Shard {
    chain: Chain,
    steps: Vec<Step>,
    out: Vec<Message>,
    late: Vec<LateRow>,
    /// Topic output: the shard encodes its own output records.
    sink: Option<Sink>,
    /// Encoded output records by output partition.
    encoded: Vec<(u32, Vec<Record>)>,
    /// Output rows the sink refused (for the dead-letter topic).
    refused: Vec<DeadLetter>,
}

/// Input for a shard, in order.
enum Step {
    /// Rows of the main input, with how far event time may advance within them.
    Main(RecordBatch, ArrivalBound),
    /// Rows of a side input.
    Side(usize, RecordBatch),
    /// A control message (watermarks) for the whole chain.
    Control(Message),
}

impl Shard {
    /// An empty shard holding a place while the real one runs in a task.
    fn placeholder() -> Self {
        Shard {
            chain: Chain::new(vec![]),
            steps: vec![],
            out: vec![],
            late: vec![],
            sink: None,
            encoded: vec![],
            refused: vec![],
        }
    }

    /// Runs the pending steps through the chain, then encodes the output (topic output).
    fn run(&mut self) -> Result<()> {
        for step in std::mem::take(&mut self.steps) {
            match step {
                Step::Main(b, bound) => {
                    self.chain.set_watermark_bound(bound);
                    self.chain.push(Message::Data(b), &mut self.out)?;
                }
                Step::Side(input, b) => self.chain.push_side(input, b, &mut self.out)?,
                Step::Control(m) => self.chain.push(m, &mut self.out)?,
            }
        }
        self.chain.drain_late(&mut self.late);
        if let Some(sink) = &mut self.sink {
            for m in self.out.drain(..) {
                if let Message::Data(b) = m {
                    self.encoded.extend(sink.encode(&b)?);
                    self.refused.extend(sink.take_refused());
                }
            }
        }
        Ok(())
    }
}

impl StageTask {
    async fn run(mut self, mut rx: mpsc::Receiver<StageInput>) {
        let mut result = self.run_loop(&mut rx).await;
        if result.is_ok() {
            // Stopped (or every input ended): checkpoint what was processed.
            result = self.checkpoint().await;
        }
        if result.is_ok() && self.committer.is_none() {
            // At-least-once: the last positions, committed at once.
            if let Some(c) = &mut self.commits {
                result = c.commit(|| offsets_of(&self.processed, &self.topics), true);
            }
        }
        if let (Ok(()), Some(c)) = (&result, &mut self.commits) {
            result = c.landed().await;
        }
        if let Err(e) = result {
            tracing::error!(query = %self.shared.id, "query failed: {e}");
            self.stats.fail(e.to_string());
        }
    }

    async fn run_loop(&mut self, rx: &mut mpsc::Receiver<StageInput>) -> Result<()> {
        let mut bootstrap: Option<Bootstrap> = None;
        // Repartition fetches not run yet, per (input, partition): each round runs a fair share
        // of every partition's, so that the shards they feed work side by side (one feeder
        // often fills the channel while another waits its turn).
        let mut queued: std::collections::BTreeMap<(usize, u32), QueuedFetches> = Default::default();
        let mut queued_len = 0usize;
        loop {
            let input = if queued_len > 0 {
                // Work is waiting: take what has arrived, without waiting for more.
                rx.try_recv().ok()
            } else {
                // With output waiting for its checkpoint, wait for input only until one is due.
                let deadline = self.committer.as_ref().filter(|c| c.dirty()).map(|c| c.idle_deadline());
                let input = match deadline {
                    Some(deadline) => tokio::select! {
                        m = rx.recv() => m,
                        _ = tokio::time::sleep_until(deadline) => {
                            self.checkpoint().await?;
                            continue;
                        }
                    },
                    None => rx.recv().await,
                };
                let Some(input) = input else { return Ok(()) };
                Some(input)
            };
            // Take what else is waiting (up to a limit) before running the shards. Each shard
            // still sees its steps in arrival order.
            // (input, partition, next offset, read from the source topic).
            let mut done: Vec<(usize, u32, u64, bool)> = Vec::new();
            let mut next = input;
            let mut taken = 0;
            while let Some(input) = next.take() {
                match input {
                    StageInput::Bootstrap(targets, tx) => bootstrap = Some((targets, tx)),
                    StageInput::Idle(i, p) => self.watermark(i, p, Watermark::Idle),
                    StageInput::Fetch { input: i, partition: p, messages: fetched, dead, next_offset } => {
                        for m in fetched {
                            match (i, m) {
                                (_, Message::Watermark(w)) => self.watermark(i, p, w),
                                (0, Message::Data(b)) => self.route_main(b, p)?,
                                (0, m) => self.broadcast(m),
                                (side, Message::Data(b)) => self.route_side(side, b)?,
                                (_, _) => {}
                            }
                        }
                        write_dead_letters(&self.stats, self.committer.as_mut(), self.store.as_ref(), &dead).await?;
                        done.push((i, p, next_offset, true));
                    }
                    StageInput::Shuffled { input, partition, items, next_offset } => {
                        queued.entry((input, partition)).or_default().push_back((items, next_offset));
                        queued_len += 1;
                    }
                    StageInput::Failed(e) => return Err(EngineError::Internal(e)),
                }
                taken += 1;
                if taken < STAGE_INPUTS_AT_ONCE && queued_len < STAGE_QUEUED_FETCHES {
                    next = rx.try_recv().ok();
                }
            }
            for _ in 0..STAGE_FETCHES_PER_PARTITION {
                for (&(input, partition), fetches) in queued.iter_mut() {
                    if let Some((items, next_offset)) = fetches.pop_front() {
                        self.shuffled(input, partition as usize, items)?;
                        done.push((input, partition, next_offset, false));
                        queued_len -= 1;
                    }
                }
            }
            queued.retain(|_, fetches| !fetches.is_empty());
            self.flush().await?;
            for (i, p, next_offset, source) in done {
                self.processed_up_to(i, p, next_offset, rx.is_empty() && queued_len == 0).await?;
                if let (true, Some((targets, tx))) = (source, &mut bootstrap) {
                    targets.retain(|(ti, tp, end)| !(*ti == i && *tp == p && next_offset >= *end));
                    if targets.is_empty() {
                        let _ = tx.send(true);
                        bootstrap = None;
                    }
                }
            }
            if let Some(c) = &mut self.committer {
                c.worked();
                if c.due(rx.is_empty() && queued_len == 0) {
                    self.checkpoint().await?;
                }
            }
        }
    }

    /// Everything of input `i`, partition `p` before `next_offset` has been processed: makes
    /// its output durable, then records the position (committed now, or with the next
    /// checkpoint).
    async fn processed_up_to(&mut self, i: usize, p: u32, next_offset: u64, idle: bool) -> Result<()> {
        self.flush().await?;
        if let Some(pos) = self.processed.get_mut(i).and_then(|v| v.get_mut(p as usize)) {
            *pos = next_offset;
        }
        match &mut self.committer {
            Some(c) => c.mark_dirty(),
            None => {
                if let Some(c) = &mut self.commits {
                    c.commit(|| offsets_of(&self.processed, &self.topics), idle)?;
                }
                self.publish_positions();
            }
        }
        Ok(())
    }

    /// Reports the stage's positions (its inputs come first in the query's progress).
    fn publish_positions(&self) {
        let mut positions = self.stats.positions.lock();
        for (slot, p) in positions.iter_mut().zip(&self.processed) {
            slot.clone_from(p);
        }
        drop(positions);
        self.stats.progress.notify_waiters();
    }

    /// The tracker of shard `shard`.
    fn tracker(&self, shard: usize) -> &WatermarkTracker {
        &self.trackers[shard.min(self.trackers.len() - 1)]
    }

    /// Hands what a fetch of partition `shard` of input `input`'s repartition topic held to
    /// shard `shard`: rows with how far event time may advance within them (as far as their
    /// source partition had reached before each, capped by the other source partitions as
    /// this shard knows them), markers to its tracker.
    fn shuffled(&mut self, input: usize, shard: usize, items: Vec<Shuffled>) -> Result<()> {
        let base = self.tracker_base.get(input).copied().unwrap_or(0);
        if shard >= self.shards.len() || shard >= self.trackers.len() {
            return Err(EngineError::Internal(format!("repartition partition {shard} has no shard")));
        }
        for item in items {
            match item {
                Shuffled::Rows { from, batch, reached } => {
                    let bound = self.trackers[shard].bound_for(base + from as usize);
                    let step = match input {
                        0 => Step::Main(batch, arrival(reached.map(Vec::into_iter), bound)),
                        side => Step::Side(side, batch),
                    };
                    self.shards[shard].steps.push(step);
                }
                Shuffled::Mark { from, watermark } => {
                    if let Some(w) = self.trackers[shard].update(base + from as usize, watermark) {
                        self.shards[shard].steps.push(Step::Control(Message::Watermark(w)));
                    }
                }
            }
        }
        Ok(())
    }

    /// Rows of `batch` (input `input`) per shard: split by key when the stage has several
    /// shards, else all of them for the one.
    fn split(&self, input: usize, batch: RecordBatch) -> Result<Vec<Option<crate::shard::Part>>> {
        match self.keys.as_ref().filter(|_| self.shards.len() > 1) {
            Some(keys) => keys.split(input, &batch, self.shards.len()),
            None => Ok(vec![Some((batch, None))]),
        }
    }

    /// Hands rows of the main input (from partition `p`) to the shards their keys belong to,
    /// with how far event time may advance within them: computed per row over the whole batch
    /// when it is split and the stage judges rows at their arrival (its shards see only some
    /// of the rows).
    fn route_main(&mut self, batch: RecordBatch, p: u32) -> Result<()> {
        let slot = self.tracker_base.first().copied().unwrap_or(0) + p as usize;
        let reached = match self.keys.as_ref().and_then(|k| k.time).filter(|_| self.shards.len() > 1) {
            Some(t) => {
                let times = arrow::compute::cast(batch.column(t), &arrow::datatypes::DataType::Int64)?;
                Some(ArrivalBound::per_row(times.as_primitive::<Int64Type>(), i64::MAX))
            }
            None => None,
        };
        let parts = self.split(0, batch)?;
        for (k, part) in parts.into_iter().enumerate() {
            let Some((rows, picked)) = part else { continue };
            let bound = self.tracker(k).bound_for(slot);
            let arrival = match (&reached, &picked) {
                (Some(r), Some(picked)) => arrival(Some(picked.values().iter().map(|i| r[*i as usize])), bound),
                (Some(r), None) => arrival(Some(r.iter().copied()), bound),
                (None, _) => ArrivalBound::UpTo(bound),
            };
            self.shards[k].steps.push(Step::Main(rows, arrival));
        }
        Ok(())
    }

    /// Hands rows of side input `input` to the shards their keys belong to.
    fn route_side(&mut self, input: usize, batch: RecordBatch) -> Result<()> {
        let parts = self.split(input, batch)?;
        for (shard, part) in self.shards.iter_mut().zip(parts) {
            if let Some((rows, _)) = part {
                shard.steps.push(Step::Side(input, rows));
            }
        }
        Ok(())
    }

    /// Hands a control message to every shard.
    fn broadcast(&mut self, m: Message) {
        for shard in &mut self.shards {
            shard.steps.push(Step::Control(m.clone()));
        }
    }

    /// Feeds input `i`, partition `p`'s watermark to the tracker, and the combined watermark,
    /// if it advanced, to the shards.
    fn watermark(&mut self, i: usize, p: u32, w: Watermark) {
        let slot = self.tracker_base.get(i).copied().unwrap_or(0) + p as usize;
        if self.trackers.len() == 1 {
            if let Some(combined) = self.trackers[0].update(slot, w) {
                self.broadcast(Message::Watermark(combined));
            }
            return;
        }
        for (tracker, shard) in self.trackers.iter_mut().zip(&mut self.shards) {
            if let Some(combined) = tracker.update(slot, w) {
                shard.steps.push(Step::Control(Message::Watermark(combined)));
            }
        }
    }

    /// Checkpoints state and positions and commits the output written since the last one;
    /// then the positions count as done (offsets committed, progress reported).
    async fn checkpoint(&mut self) -> Result<()> {
        let Some(c) = &mut self.committer else { return Ok(()) };
        if !c.dirty() {
            return Ok(());
        }
        let mut task = match self.trackers.as_slice() {
            [one] => serde_json::json!({ "tracker": one }),
            all => serde_json::json!({ "trackers": all }),
        };
        if self.keys.is_some() && self.sink_topic.is_some() {
            // What the positions refer to (see `plan_repartition`).
            task["repartition"] = serde_json::json!(self.repartitioned);
        }
        if self.shards.len() > 1 {
            task["shards"] = self.shards.len().into();
            task["routing"] = crate::shard::fingerprint().into();
        }
        let shards = &mut self.shards;
        let snapshot = || {
            let mut state = Vec::new();
            let Some((first, rest)) = shards.split_first_mut() else { return Ok(state) };
            // Each shard's state is its own: the others snapshot side by side with the first,
            // a thread each (tens of microseconds; a checkpoint's fsyncs take milliseconds), and
            // the parts are kept in shard order.
            std::thread::scope(|scope| -> Result<()> {
                let others: Vec<_> = rest.iter_mut().map(|s| scope.spawn(move || s.chain.snapshot())).collect();
                state.extend(first.chain.snapshot()?);
                for other in others {
                    let snapshot = other.join().map_err(|_| {
                        EngineError::Internal("a shard's snapshot panicked (this is a bug in Rill)".into())
                    })?;
                    state.extend(snapshot?);
                }
                Ok(())
            })?;
            Ok(state)
        };
        c.checkpoint(snapshot, self.processed.clone(), task)?;
        if let Some(c) = &mut self.commits {
            c.commit(|| offsets_of(&self.processed, &self.topics), true)?;
        }
        self.publish_positions();
        self.purge()
    }

    /// Deletes the records of the repartition topics before the positions just checkpointed
    /// (never read again).
    fn purge(&self) -> Result<()> {
        for (topic, offsets) in self.repartitioned.iter().zip(&self.processed) {
            let Some(topic) = topic else { continue };
            for (p, offset) in offsets.iter().enumerate() {
                self.store.delete_records(topic, p as u32, *offset)?;
            }
        }
        Ok(())
    }

    /// Runs the shards' pending steps: inline when one shard has some, else each busy shard
    /// as a task of its own (the runtime's workers take them side by side).
    async fn run_shards(&mut self) -> Result<()> {
        let busy = self.shards.iter().filter(|s| !s.steps.is_empty()).count();
        tracing::trace!(query = %self.shared.id, steps = ?self.shards.iter().map(|s| s.steps.len()).collect::<Vec<_>>(), "running shards");
        if busy <= 1 {
            return self.shards.iter_mut().filter(|s| !s.steps.is_empty()).try_for_each(Shard::run);
        }
        let mut running = Vec::with_capacity(busy);
        for (i, slot) in self.shards.iter_mut().enumerate() {
            if slot.steps.is_empty() {
                continue;
            }
            let mut shard = std::mem::replace(slot, Shard::placeholder());
            running.push((
                i,
                tokio::spawn(async move {
                    let result = shard.run();
                    (shard, result)
                }),
            ));
        }
        let mut result = Ok(());
        for (i, task) in running {
            match task.await {
                Ok((shard, r)) => {
                    self.shards[i] = shard;
                    if result.is_ok() {
                        result = r;
                    }
                }
                Err(e) => {
                    result = Err(EngineError::Internal(format!("a stage shard failed: {e} (this is a bug in Rill)")))
                }
            }
        }
        result
    }

    /// Runs the shards' pending steps, then writes late rows and output.
    async fn flush(&mut self) -> Result<()> {
        self.run_shards().await?;
        // Measuring state walks it: at most once a second.
        if self.state_measured.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(1)) {
            let state: usize = self.shards.iter().flat_map(|s| s.chain.operators()).map(|o| o.state_info().bytes).sum();
            self.stats.state_bytes.store(state as u64, Ordering::Relaxed);
            self.state_measured = Some(Instant::now());
        }
        let late: Vec<LateRow> = self.shards.iter_mut().flat_map(|s| s.late.drain(..)).collect();
        if !late.is_empty() {
            let records: Vec<Record> = late
                .into_iter()
                .map(|l| {
                    let mut v = serde_json::to_value(&l).unwrap_or(serde_json::Value::Null);
                    if let serde_json::Value::Object(m) = &mut v {
                        m.insert("query".into(), serde_json::Value::String(self.shared.id.clone()));
                        m.insert("topic".into(), serde_json::Value::String(self.source_topic.clone()));
                    }
                    Record {
                        timestamp: l.timestamp,
                        key: Some(bytes::Bytes::from(self.shared.id.clone())),
                        value: Some(v.to_string().into()),
                        headers: vec![],
                    }
                })
                .collect();
            self.stats.late_records.fetch_add(records.len() as u64, Ordering::Relaxed);
            append_output(self.committer.as_mut(), self.store.as_ref(), LATE_TOPIC, 0, &records).await?;
        }
        let refused: Vec<Record> = self
            .shards
            .iter_mut()
            .flat_map(|s| s.refused.drain(..))
            .map(|d| dead_letter(&self.shared.id, &d))
            .collect();
        write_dead_letters(&self.stats, self.committer.as_mut(), self.store.as_ref(), &refused).await?;
        if let Some(topic) = &self.sink_topic {
            // One append per output partition (each is made durable before it returns).
            let mut by_partition: std::collections::BTreeMap<u32, Vec<Record>> = Default::default();
            for shard in &mut self.shards {
                for (p, mut records) in shard.encoded.drain(..) {
                    by_partition.entry(p).or_default().append(&mut records);
                }
            }
            for (p, records) in by_partition {
                append_output(self.committer.as_mut(), self.store.as_ref(), topic, p, &records).await?;
                self.stats.records_out.fetch_add(records.len() as u64, Ordering::Relaxed);
            }
        }
        for shard in &mut self.shards {
            for m in shard.out.drain(..) {
                let (Some(tx), Message::Data(b)) = (&self.push, m) else { continue };
                let n = b.num_rows();
                if tx.send(b).await.is_err() {
                    return Err(EngineError::Stopped);
                }
                self.stats.records_out.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

struct PartitionTask {
    store: Arc<dyn TopicStore>,
    shared: Arc<Shared>,
    input: usize,
    /// Where the query's progress reports this task's position.
    slot: usize,
    topic: String,
    partition: u32,
    offset: u64,
    /// Moves to the task's prefetcher when it starts.
    reader: Option<SourceReader>,
    chain: Chain,
    out: TaskOutput,
    stats: Arc<QueryStats>,
    stream_time: i64,
    idle: bool,
    /// Main-input tasks of joins: wait until the joined tables are loaded.
    wait_for_tables: Option<watch::Receiver<bool>>,
    /// Checkpoints and transactional output (stateless persistent queries).
    committer: Option<Committer>,
    /// Consumer-group offset commits (at-least-once output).
    commits: Option<OffsetCommits>,
}

/// How often an at-least-once task commits its consumer-group offsets while busy.
const OFFSET_COMMIT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// A task's consumer-group offset commits, off its hot path: a commit is a synced file write
/// (under a heavy write load its fsync can take a hundred milliseconds), so it runs on a
/// blocking thread while the task goes on; each waits for the one before, so commits land in
/// order. An error surfaces at a later commit or at [`OffsetCommits::landed`].
struct OffsetCommits {
    store: Arc<dyn TopicStore>,
    group: String,
    in_flight: Option<tokio::task::JoinHandle<Result<()>>>,
    /// The offsets last committed, and when.
    last: Option<(Offsets, std::time::Instant)>,
}

/// Consumer-group offsets: (topic, partition, next offset).
type Offsets = Vec<(String, u32, u64)>;

/// Per input and partition processed positions as consumer-group offsets of `topics`.
fn offsets_of(processed: &[Vec<u64>], topics: &[String]) -> Offsets {
    processed
        .iter()
        .zip(topics)
        .flat_map(|(parts, t)| parts.iter().enumerate().map(move |(p, o)| (t.clone(), p as u32, *o)))
        .collect()
}

impl OffsetCommits {
    fn new(store: Arc<dyn TopicStore>, group: String) -> Self {
        Self { store, group, in_flight: None, last: None }
    }

    /// Commits the `offsets` when `now`, else when [`OFFSET_COMMIT_INTERVAL`] has passed since
    /// the last commit (and only if they changed); they are only built then.
    fn commit(&mut self, offsets: impl FnOnce() -> Offsets, now: bool) -> Result<()> {
        if self.in_flight.as_ref().is_some_and(|h| h.is_finished()) {
            if let Some(Some(done)) = self.in_flight.take().map(futures::FutureExt::now_or_never) {
                commit_result(done)?;
            }
        }
        let due = self.last.as_ref().is_none_or(|(_, at)| at.elapsed() >= OFFSET_COMMIT_INTERVAL);
        if !(now || due) {
            return Ok(());
        }
        let offsets = offsets();
        if self.last.as_ref().is_some_and(|(o, _)| *o == offsets) {
            return Ok(());
        }
        let (store, group, previous) = (self.store.clone(), self.group.clone(), self.in_flight.take());
        let committing = offsets.clone();
        self.in_flight = Some(tokio::spawn(async move {
            if let Some(p) = previous {
                commit_result(p.await)?;
            }
            let joined = tokio::task::spawn_blocking(move || store.commit_offsets(&group, &committing)).await;
            commit_result(joined.map(|r| r.map_err(EngineError::from)))
        }));
        self.last = Some((offsets, std::time::Instant::now()));
        Ok(())
    }

    /// Waits until every commit has landed.
    async fn landed(&mut self) -> Result<()> {
        match self.in_flight.take() {
            Some(h) => commit_result(h.await),
            None => Ok(()),
        }
    }
}

/// The outcome of a commit task. One cancelled because the runtime is shutting down is not an
/// error: its offsets were not committed, so at-least-once reading resumes before them.
fn commit_result(joined: std::result::Result<Result<()>, tokio::task::JoinError>) -> Result<()> {
    match joined {
        Ok(r) => r,
        Err(e) if e.is_cancelled() => Ok(()),
        Err(e) => Err(EngineError::Internal(format!("offset commit: {e}"))),
    }
}

/// The wall clock in milliseconds since the epoch (event times' unit), for the latency traces
/// (`RUST_LOG=rill_engine::latency=trace`: each fetch's newest event's age when decoded, received
/// by its task and written).
fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// What a partition's prefetcher hands its task.
enum Fetched {
    /// The next fetch, decoded.
    Read(crate::source::ReadBatch),
    /// Everything stored has been handed over; more follows when it is appended.
    CaughtUp,
    /// Reading failed; the prefetcher has ended.
    Failed(EngineError),
}

/// Reads and decodes one partition ahead of its task: reads fetches in order and decodes up to
/// [`DECODERS`] of them side by side (each decode a task of its own), handing them over in
/// order.
struct Prefetch {
    store: Arc<dyn TopicStore>,
    topic: String,
    partition: u32,
    offset: u64,
    /// Readers not decoding now.
    readers: Vec<SourceReader>,
    /// Decodes running, oldest first.
    decoding: std::collections::VecDeque<JoinHandle<(SourceReader, Result<crate::source::ReadBatch>)>>,
    /// CaughtUp was sent and nothing read since.
    caught_up: bool,
}

/// Fetches of one partition decoded at once.
const DECODERS: usize = 2;

impl Prefetch {
    async fn run(mut self, tx: mpsc::Sender<Fetched>) {
        let item = loop {
            match self.next().await {
                Ok(item) => {
                    if tx.send(item).await.is_err() {
                        return;
                    }
                }
                Err(e) => break Fetched::Failed(e),
            }
        };
        let _ = tx.send(item).await;
    }

    /// The next fetch, or CaughtUp once after reaching the end (then waits for more).
    async fn next(&mut self) -> Result<Fetched> {
        loop {
            // Start decoding what is there, as far as readers are free.
            while !self.readers.is_empty() {
                let Some(fetch) = self.read()? else { break };
                self.offset = fetch.next_offset();
                let mut reader = self.readers.pop().expect("a free reader");
                self.decoding.push_back(tokio::spawn(async move {
                    let read = reader.read(&fetch);
                    (reader, read)
                }));
            }
            if let Some(decode) = self.decoding.pop_front() {
                let (reader, read) = decode.await.map_err(|e| {
                    EngineError::Internal(format!("decoding a fetch failed: {e} (this is a bug in Rill)"))
                })?;
                self.readers.push(reader);
                self.caught_up = false;
                let read = read?;
                if let Some(t) = read.max_event_time {
                    tracing::trace!(target: "rill_engine::latency", stage = "decoded", lag_ms = now_ms() - t, partition = self.partition);
                }
                return Ok(Fetched::Read(read));
            }
            if !self.caught_up {
                // Tell the task before waiting (it may have a checkpoint to write meanwhile).
                self.caught_up = true;
                return Ok(Fetched::CaughtUp);
            }
            self.store.wait_for(&self.topic, self.partition, self.offset).await?;
        }
    }

    /// The fetch at the current offset, if there is anything to read.
    fn read(&mut self) -> Result<Option<rill_log::Fetch>> {
        loop {
            let fetch = match self.store.read(&self.topic, self.partition, self.offset, 1 << 20) {
                Ok(f) => f,
                Err(ConnectorError::Log(rill_log::LogError::OffsetOutOfRange { .. })) => {
                    // Retention removed what we had not read yet: continue at the log start.
                    let start = self.store.start_offset(&self.topic, self.partition)?;
                    let end = self.store.end_offset(&self.topic, self.partition)?;
                    self.offset = if self.offset < start { start } else { end };
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            return Ok((fetch.next_offset() > self.offset).then_some(fetch));
        }
    }
}

/// Reads one partition of a repartition topic (committed records only) for the stage.
struct Feeder {
    store: Arc<dyn TopicStore>,
    topic: String,
    input: usize,
    partition: u32,
    offset: u64,
    /// Idle markers before this offset were written before the query started (see
    /// [`crate::repartition::decode_fetch`]).
    stale_before: u64,
    tx: mpsc::Sender<StageInput>,
}

impl Feeder {
    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        if let Err(e) = self.run_loop(&mut stop).await {
            // The stage cannot go on without this partition: it ends and reports the error.
            tracing::error!(topic = %self.topic, partition = self.partition, "reading a repartition topic: {e}");
            let _ = self.tx.send(StageInput::Failed(e.to_string())).await;
        }
    }

    async fn run_loop(&mut self, stop: &mut watch::Receiver<bool>) -> Result<()> {
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            let fetch = self.store.read(&self.topic, self.partition, self.offset, 1 << 20)?;
            if fetch.next_offset() <= self.offset {
                tokio::select! {
                    r = self.store.wait_for(&self.topic, self.partition, self.offset) => r?,
                    _ = stop.changed() => return Ok(()),
                }
                continue;
            }
            let items = crate::repartition::decode_fetch(&fetch, self.stale_before)?;
            tracing::debug!(topic = %self.topic, partition = self.partition, from = self.offset, to = fetch.next_offset(), "repartition fetch");
            self.offset = fetch.next_offset();
            let shuffled =
                StageInput::Shuffled { input: self.input, partition: self.partition, items, next_offset: self.offset };
            tokio::select! {
                r = self.tx.send(shuffled) => if r.is_err() { return Ok(()) },
                _ = stop.changed() => return Ok(()),
            }
        }
    }
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Why a task ended.
enum Ended {
    Stopped,
    ClientGone,
}

impl PartitionTask {
    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let topic = self.topic.clone();
        let mut result = self.run_loop(&topic, &mut stop).await;
        if matches!(result, Ok(Ended::Stopped)) {
            result = self.checkpoint().map(|_| Ended::Stopped);
            if self.at_least_once_output() {
                result = result.and_then(|e| self.publish_position(true).map(|_| e));
            }
        }
        if let (Ok(_), Some(c)) = (&result, &mut self.commits) {
            if let Err(e) = c.landed().await {
                result = Err(e);
            }
        }
        if let Err(e) = result {
            tracing::error!(query = %self.shared.id, partition = self.partition, "query failed: {e}");
            self.stats.fail(e.to_string());
        }
    }

    /// Stateless persistent queries: checkpoints this task's position (and chain state) and
    /// commits its output.
    fn checkpoint(&mut self) -> Result<()> {
        let Some(c) = &mut self.committer else { return Ok(()) };
        if !c.dirty() {
            return Ok(());
        }
        c.checkpoint(|| self.chain.snapshot(), vec![vec![self.offset]], serde_json::Value::Null)?;
        self.publish_position(true)
    }

    /// Whether this task writes its own output without checkpoints (at-least-once), so that it
    /// commits its group offset itself (a stage or a committer does otherwise).
    fn at_least_once_output(&self) -> bool {
        self.committer.is_none() && !matches!(self.out, TaskOutput::Stage(_))
    }

    /// Reports progress and commits the consumer-group offset: at once when `now`, else at most
    /// every [`OFFSET_COMMIT_INTERVAL`] (at-least-once output: a crash replays what followed the
    /// last commit; a commit is a synced file write, too slow for every fetch).
    fn publish_position(&mut self, now: bool) -> Result<()> {
        if let Some(c) = &mut self.commits {
            c.commit(|| vec![(self.topic.clone(), self.partition, self.offset)], now)?;
        }
        if let Some(pos) =
            self.stats.positions.lock().get_mut(self.slot).and_then(|v| v.get_mut(self.partition as usize))
        {
            *pos = self.offset;
        }
        self.stats.progress.notify_waiters();
        Ok(())
    }

    async fn run_loop(&mut self, topic: &str, stop: &mut watch::Receiver<bool>) -> Result<Ended> {
        // Reading and decoding run ahead, on tasks of their own (other cores), while this task
        // runs the chain and writes the output.
        let reader = self.reader.take().ok_or_else(|| EngineError::Internal("partition task restarted".into()))?;
        let (tx, mut fetched) = mpsc::channel(2);
        let mut readers = vec![reader];
        while readers.len() < DECODERS {
            readers.push(readers[0].fork()?);
        }
        let prefetch = Prefetch {
            store: self.store.clone(),
            topic: topic.to_string(),
            partition: self.partition,
            offset: self.offset,
            readers,
            decoding: Default::default(),
            caught_up: false,
        };
        let mut prefetch = AbortOnDrop(tokio::spawn(prefetch.run(tx)));
        if let Some(mut loaded) = self.wait_for_tables.take() {
            tokio::select! {
                r = loaded.wait_for(|l| *l) => { if r.is_err() { return Ok(Ended::Stopped) } }
                _ = stop.changed() => return Ok(Ended::Stopped),
            }
        }
        loop {
            if *stop.borrow() {
                return Ok(Ended::Stopped);
            }
            let deadline = self.committer.as_ref().filter(|c| self.idle && c.dirty()).map(|c| c.idle_deadline());
            let next = match deadline {
                Some(deadline) => tokio::select! {
                    n = fetched.recv() => n,
                    _ = tokio::time::sleep_until(deadline) => {
                        self.checkpoint()?;
                        continue;
                    }
                    _ = stop.changed() => return Ok(Ended::Stopped),
                },
                None => tokio::select! {
                    n = fetched.recv() => n,
                    _ = stop.changed() => return Ok(Ended::Stopped),
                },
            };
            let read = match next {
                Some(Fetched::Read(read)) => read,
                Some(Fetched::Failed(e)) => return Err(e),
                None => {
                    // The reader runs until this task drops it: it was cancelled (the runtime
                    // is shutting down) or it panicked.
                    return match (&mut prefetch.0).await {
                        Err(e) if e.is_cancelled() => Ok(Ended::Stopped),
                        Err(e) => Err(EngineError::Internal(format!("the partition reader failed: {e}"))),
                        Ok(()) => Err(EngineError::Internal("the partition reader ended".into())),
                    };
                }
                Some(Fetched::CaughtUp) => {
                    if self.at_least_once_output() {
                        self.publish_position(true)?;
                    }
                    // An idle partition must not hold back the stage's watermark.
                    if !self.idle {
                        self.idle = true;
                        let markers = match &self.out {
                            TaskOutput::Stage(tx) => {
                                let tx = tx.clone();
                                if tx.send(StageInput::Idle(self.input, self.partition)).await.is_err() {
                                    return Ok(Ended::Stopped);
                                }
                                None
                            }
                            TaskOutput::Repartition(r) => Some(r.writer.idle()),
                            _ => None,
                        };
                        if let Some(markers) = markers {
                            self.repartition(markers).await?;
                            self.after_output()?;
                        }
                    }
                    continue;
                }
            };
            self.idle = false;
            let traced = read
                .max_event_time
                .filter(|_| tracing::enabled!(target: "rill_engine::latency", tracing::Level::TRACE));
            if let Some(t) = traced {
                tracing::trace!(target: "rill_engine::latency", stage = "received", lag_ms = now_ms() - t, partition = self.partition);
            }
            let mut messages = Vec::new();
            let mut dead = read.dead;
            if let Some(batch) = read.batch {
                self.stats.records_in.fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
                if let Err(e) = self.chain.push(Message::Data(batch.clone()), &mut messages) {
                    dead.extend(self.dead_letter_batch(&batch, &e.to_string()));
                }
            }
            if let Some(t) = read.max_event_time {
                if t > self.stream_time {
                    self.stream_time = t;
                    self.chain.push(Message::Watermark(Watermark::EventTime(t)), &mut messages)?;
                }
            }
            let dead = self.dead_letter_records(dead);
            self.offset = read.next_offset;
            if let TaskOutput::Stage(tx) = &self.out {
                // The stage commits the offset once it has written what these rows produced.
                let fetch = StageInput::Fetch {
                    input: self.input,
                    partition: self.partition,
                    messages,
                    dead,
                    next_offset: self.offset,
                };
                if tx.send(fetch).await.is_err() {
                    return Ok(Ended::Stopped);
                }
                continue;
            }
            write_dead_letters(&self.stats, self.committer.as_mut(), self.store.as_ref(), &dead).await?;
            if let TaskOutput::Repartition(r) = &self.out {
                let records = r.writer.records(&messages)?;
                self.repartition(records).await?;
                self.after_output()?;
                continue;
            }
            for m in messages {
                if let Message::Data(b) = m {
                    if !self.out.write(b, &self.stats, self.committer.as_mut()).await? {
                        return Ok(Ended::ClientGone);
                    }
                }
            }
            if let TaskOutput::Sink(sink) = &mut self.out {
                let refused = sink.take_refused();
                let refused = self.dead_letter_records(refused);
                write_dead_letters(&self.stats, self.committer.as_mut(), self.store.as_ref(), &refused).await?;
            }
            if let Some(t) = traced {
                tracing::trace!(target: "rill_engine::latency", stage = "written", lag_ms = now_ms() - t, partition = self.partition);
            }
            self.after_output()?;
        }
    }

    /// After a fetch's output was written: checkpoints when one is due (exactly-once), else
    /// reports the position.
    fn after_output(&mut self) -> Result<()> {
        match &mut self.committer {
            Some(c) => {
                c.mark_dirty();
                c.worked();
                if c.due(false) {
                    self.checkpoint()?;
                }
                Ok(())
            }
            None => self.publish_position(false),
        }
    }

    /// Appends records for a repartition topic, per partition (all partitions at once), in the
    /// task's transaction: only persistent queries, which always checkpoint, have repartition
    /// topics.
    async fn repartition(&mut self, per_partition: Vec<Vec<Record>>) -> Result<()> {
        let TaskOutput::Repartition(r) = &self.out else { return Ok(()) };
        let parts: Vec<(u32, &[Record])> = per_partition
            .iter()
            .enumerate()
            .filter(|(_, v)| !v.is_empty())
            .map(|(p, v)| (p as u32, v.as_slice()))
            .collect();
        match &mut self.committer {
            Some(c) if !parts.is_empty() => c.append_all(&r.topic, &parts).await,
            Some(_) => Ok(()),
            None => Err(EngineError::Internal("a repartition topic written without checkpoints".into())),
        }
    }

    /// Dead letters for every row of a batch the chain failed on.
    fn dead_letter_batch(&self, batch: &RecordBatch, error: &str) -> Vec<DeadLetter> {
        let offsets = match batch.schema().index_of(ROWOFFSET) {
            Ok(i) => batch.column(i).as_primitive::<Int64Type>().values().to_vec(),
            Err(_) => vec![],
        };
        offsets
            .into_iter()
            .map(|o| DeadLetter {
                topic: self.topic.clone(),
                partition: self.partition,
                offset: o as u64,
                error: error.to_string(),
                key: None,
                value: None,
            })
            .collect()
    }

    /// Dead letters as records for the dead-letter topic (and the last error for DESCRIBE).
    fn dead_letter_records(&self, dead: Vec<DeadLetter>) -> Vec<Record> {
        if let Some(last) = dead.last() {
            *self.stats.last_error.lock() = Some(last.error.clone());
        }
        dead.iter().map(|d| dead_letter(&self.shared.id, d)).collect()
    }
}

#[cfg(test)]
mod tests {
    use rill_connectors::EmbeddedStore;
    use rill_log::TopicConfig;

    use super::*;

    #[tokio::test]
    async fn offset_commits_land_in_order_and_report_failures() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn TopicStore> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        store.create_topic("t", TopicConfig::default()).unwrap();
        let mut commits = OffsetCommits::new(store.clone(), "g".into());
        for offset in 1..=20u64 {
            commits.commit(|| vec![("t".into(), 0, offset)], true).unwrap();
        }
        // Not due yet (the interval has not passed) and not forced: skipped.
        commits.commit(|| vec![("t".into(), 0, 21)], false).unwrap();
        commits.landed().await.unwrap();
        assert_eq!(store.committed_offset("g", "t", 0).unwrap(), Some(20));

        commits.commit(|| vec![("missing".into(), 0, 1)], true).unwrap();
        assert!(commits.landed().await.is_err(), "a commit to an unknown topic fails");
    }
}
