//! Checkpoints and exactly-once output of one committing task.
//!
//! Every persistent query has *committing tasks*: its stateful stage, or, for a stateless query,
//! each partition task. A committing task owns a [`Committer`], which
//!
//! * tags every record the task appends with the task's producer id and the current epoch
//!   ([`Committer::append`]): with `exactly_once` these appends are transactional, so readers
//!   do not see them yet; with at-least-once they are visible at once;
//! * takes a checkpoint ([`Committer::checkpoint`]) when one is due: it makes all output so far
//!   durable (appends to most topics return after their fsync; internal topics are synced
//!   now), writes the operator state, the input positions
//!   and the epoch into the checkpoint file (the commit point), then commits the epoch's open
//!   transactions on every partition it wrote, and only then reports the positions as done;
//! * recovers at start ([`Committer::recover`]): the transactions of the epoch the last
//!   checkpoint names are committed (the crash came between the checkpoint and the commits);
//!   later ones are aborted (their checkpoint never happened); the operators get their state
//!   back, and reading resumes at the checkpoint's positions.
//!
//! Cost model: a checkpoint costs one state snapshot and two small fsynced file writes per
//! partition written. Checkpoints are taken at most every `interval` while input keeps coming,
//! and sooner when the task runs out of input: once no input came for as long as a checkpoint
//! takes (at least 5 ms: a burst has ended), or, with exactly-once, ten times that since the
//! last checkpoint (at least 5 ms: a trickle then spends at most about a tenth of the time on
//! them): quiet queries with small state publish results within milliseconds (exactly-once
//! output is visible only once committed), busy ones amortise the cost over `interval`.
//! At-least-once output is visible when appended, so a trickle of input waits for `interval`:
//! its checkpoints would only move the restart position, and their fsyncs would compete with the
//! output's. "As long as a checkpoint takes" is the median of the last few, so that one slow
//! checkpoint (a disk stall) does not hold back the next ones' results.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use rill_connectors::store::{Record, TopicStore, TxnEnd};

use crate::checkpoint::{Checkpoint, CheckpointFile, CheckpointMeta};
use crate::operator::Chain;
use crate::Result;

/// How many checkpoint durations [`Committer::cost`] takes the median of.
const COSTS_KEPT: usize = 5;

/// How a persistent query checkpoints.
#[derive(Clone, Debug)]
pub struct CheckpointSpec {
    /// Directory for the query's checkpoint files.
    pub dir: PathBuf,
    /// Longest time between checkpoints while input keeps coming.
    pub interval: Duration,
    /// Output becomes visible only when its checkpoint completes (read-committed).
    pub exactly_once: bool,
}

/// A stable 63-bit producer id for task `task` of query `query` (FNV-1a).
pub fn producer_id(query: &str, task: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in query.bytes().chain([0u8]).chain(task.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h >> 1) as i64
}

/// The checkpointing and transactional output of one committing task; see the module docs.
pub struct Committer {
    store: Arc<dyn TopicStore>,
    file: CheckpointFile,
    spec: CheckpointSpec,
    producer: i64,
    /// The task's name (for logs).
    task: String,
    /// Epoch of the output being written now (last checkpoint's epoch + 1).
    epoch: u64,
    /// Partitions written in this epoch (with exactly-once, each has an open transaction).
    touched: BTreeSet<(String, u32)>,
    /// Topics the task writes to (to resolve transactions left open by a crash).
    outputs: Vec<String>,
    last: Instant,
    /// The durations of the last few checkpoints (see [`Committer::cost`]).
    costs: std::collections::VecDeque<Duration>,
    /// When the task last finished processing input.
    last_work: Instant,
    dirty: bool,
}

impl Committer {
    /// A committer for task `task` of query `query`, writing to `outputs`.
    pub fn new(
        store: Arc<dyn TopicStore>,
        spec: CheckpointSpec,
        query: &str,
        task: &str,
        outputs: Vec<String>,
    ) -> Self {
        Self {
            file: CheckpointFile::new(&spec.dir, task),
            producer: producer_id(query, task),
            task: format!("{query}/{task}"),
            store,
            spec,
            epoch: 1,
            touched: BTreeSet::new(),
            outputs,
            last: Instant::now(),
            costs: Default::default(),
            last_work: Instant::now(),
            dirty: false,
        }
    }

    /// Checkpoints at most `interval` apart while input keeps coming, if that is sooner than
    /// the query's interval.
    pub fn at_most(mut self, interval: Duration) -> Self {
        self.spec.interval = self.spec.interval.min(interval);
        self
    }

    /// Resolves transactions a crash left open, restores `chain` from the last checkpoint and
    /// returns that checkpoint's metadata (positions, task state), if there is one.
    pub fn recover(&mut self, chain: &mut Chain) -> Result<Option<CheckpointMeta>> {
        let Some(ckpt) = self.recover_checkpoint()? else { return Ok(None) };
        chain.restore(ckpt.state)?;
        Ok(Some(ckpt.meta))
    }

    /// Resolves transactions a crash left open and returns the last checkpoint, if there is
    /// one, for the caller to restore (a sharded stage restores several chains from it).
    pub fn recover_checkpoint(&mut self) -> Result<Option<Checkpoint>> {
        let ckpt = self.file.read()?;
        let done = ckpt.as_ref().map_or(0, |c| c.meta.epoch);
        for topic in &self.outputs {
            let Ok(cfg) = self.store.topic_config(topic) else { continue };
            for p in 0..cfg.partitions {
                for t in self.store.open_transactions(topic, p)? {
                    if t.producer != self.producer {
                        continue;
                    }
                    let how = if t.epoch <= done { TxnEnd::Commit } else { TxnEnd::Abort };
                    tracing::info!(topic, partition = p, epoch = t.epoch, ?how, "resolving a transaction left open");
                    self.store.end_transaction(topic, p, self.producer, t.epoch, how)?;
                }
            }
        }
        self.epoch = done + 1;
        Ok(ckpt)
    }

    /// Appends records as this task's output (in the current epoch's transaction with
    /// exactly-once); returns once they are durable.
    pub async fn append(&mut self, topic: &str, partition: u32, records: &[Record]) -> Result<()> {
        self.append_all(topic, &[(partition, records)]).await
    }

    /// Appends records to several partitions of `topic` at once (each partition's records in
    /// order), as [`Committer::append`] does for one: the appends (and their fsyncs) overlap.
    pub async fn append_all(&mut self, topic: &str, parts: &[(u32, &[Record])]) -> Result<()> {
        self.dirty = true;
        let exactly_once = self.spec.exactly_once;
        self.touched.extend(parts.iter().map(|(p, _)| (topic.to_string(), *p)));
        let (store, producer, epoch) = (&self.store, self.producer, self.epoch);
        futures::future::try_join_all(parts.iter().map(|(p, records)| async move {
            match exactly_once {
                true => store.append_transactional(topic, *p, records, producer, epoch).await,
                false => store.append(topic, *p, records).await,
            }
        }))
        .await?;
        Ok(())
    }

    /// Notes that input was processed (a checkpoint will record the new positions).
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// Whether anything was processed since the last checkpoint.
    pub fn dirty(&self) -> bool {
        self.dirty
    }

    /// Notes that the task has just processed input (see [`Committer::idle_deadline`]).
    pub fn worked(&mut self) {
        self.last_work = Instant::now();
    }

    /// What a checkpoint costs: the median of the last [`COSTS_KEPT`] checkpoints' durations
    /// (one slow checkpoint does not stretch the waits after it).
    /// Asked after every fetch, so it sorts a copy on the stack rather than allocating one.
    fn cost(&self) -> Duration {
        let mut costs = [Duration::ZERO; COSTS_KEPT];
        let n = self.costs.len().min(COSTS_KEPT);
        for (slot, c) in costs.iter_mut().zip(&self.costs) {
            *slot = *c;
        }
        costs[..n].sort_unstable();
        costs[..n].get(n / 2).copied().unwrap_or_default()
    }

    /// The shortest time between checkpoints when the task runs out of input: with
    /// exactly-once, ten times what a checkpoint costs, and at least 5 ms (Kafka Streams commits
    /// every 100 ms under exactly-once), never more than `interval`; at-least-once output is
    /// visible already, so it waits for `interval` (or for input to stop, [`Committer::quiet`]).
    fn idle_wait(&self) -> Duration {
        match self.spec.exactly_once {
            true => (self.cost() * 10).max(Duration::from_millis(5)).min(self.spec.interval),
            false => self.spec.interval,
        }
    }

    /// The longest time between checkpoints while input keeps coming: `interval`; with
    /// exactly-once, whose output is visible only once checkpointed, sooner when checkpoints are
    /// cheap: every 100 ms (Kafka Streams' commit interval under exactly-once), or twenty times
    /// what a checkpoint costs if longer (a twentieth of the time at most).
    fn busy_wait(&self) -> Duration {
        match self.spec.exactly_once {
            true => (self.cost() * 20).max(Duration::from_millis(100)).min(self.spec.interval),
            false => self.spec.interval,
        }
    }

    /// How long input must have stopped before a checkpoint is taken sooner than
    /// [`Committer::idle_wait`]: at least 5 ms, and as long as a checkpoint costs (a burst of
    /// input has ended; a trickle with shorter gaps waits for `idle_wait`).
    fn quiet(&self) -> Duration {
        self.cost().max(Duration::from_millis(5))
    }

    /// When a checkpoint is due if no more input arrives.
    pub fn idle_deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::from_std((self.last + self.idle_wait()).min(self.last_work + self.quiet()))
    }

    /// Whether to checkpoint now; `idle` when the task has no input waiting.
    pub fn due(&self, idle: bool) -> bool {
        if !self.dirty {
            return false;
        }
        let elapsed = self.last.elapsed();
        elapsed >= self.busy_wait()
            || (idle && (elapsed >= self.idle_wait() || self.last_work.elapsed() >= self.quiet()))
    }

    /// Takes a checkpoint of the state `snapshot` returns (per operator, as [`Chain::snapshot`]
    /// gives it) with `positions` and `task` state, then commits the epoch's output. Returns the
    /// epoch checkpointed.
    pub fn checkpoint(
        &mut self,
        snapshot: impl FnOnce() -> Result<Vec<Vec<RecordBatch>>>,
        positions: Vec<Vec<u64>>,
        task: serde_json::Value,
    ) -> Result<u64> {
        let started = Instant::now();
        let state = snapshot()?;
        let snapshot_us = started.elapsed().as_micros() as u64;
        let epoch = self.epoch;
        // What the checkpoint names must be durable first (topics whose appends do not wait
        // for their fsync, such as repartition topics, are synced here, once per checkpoint).
        for (topic, p) in &self.touched {
            self.store.sync(topic, *p)?;
        }
        let synced_us = started.elapsed().as_micros() as u64;
        self.file.write(&Checkpoint { meta: CheckpointMeta { epoch, positions, task, parts: vec![] }, state })?;
        let written_us = started.elapsed().as_micros() as u64;
        for (topic, p) in std::mem::take(&mut self.touched) {
            if self.spec.exactly_once {
                self.store.end_transaction(&topic, p, self.producer, epoch, TxnEnd::Commit)?;
            }
        }
        self.epoch += 1;
        self.dirty = false;
        self.last = Instant::now();
        let cost = started.elapsed();
        if self.costs.len() == COSTS_KEPT {
            self.costs.pop_front();
        }
        self.costs.push_back(cost);
        tracing::debug!(
            task = %self.task,
            epoch,
            snapshot_us,
            synced_us,
            written_us,
            cost_us = cost.as_micros() as u64,
            "checkpoint"
        );
        Ok(epoch)
    }

    /// Removes the checkpoint (the query was dropped).
    pub fn remove(&self) -> Result<()> {
        self.file.remove()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A committer over a fresh embedded log in `dir`.
    fn committer(dir: &tempfile::TempDir, interval: Duration, exactly_once: bool) -> Committer {
        let store: Arc<dyn TopicStore> =
            Arc::new(rill_connectors::EmbeddedStore::open(&dir.path().join("log")).unwrap());
        let spec = CheckpointSpec { dir: dir.path().join("ckpt"), interval, exactly_once };
        Committer::new(store, spec, "Q", "stage", vec![])
    }

    /// Once input stops, a checkpoint comes after a quiet spell as long as the last checkpoint
    /// took (at least 5 ms), not after ten times it: the end of a burst is committed soon.
    #[test]
    fn a_burst_is_committed_after_a_short_quiet_spell() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = committer(&dir, Duration::from_secs(60), true);
        assert!(!c.due(true), "nothing to checkpoint");
        c.mark_dirty();
        c.checkpoint(|| Ok(vec![]), vec![], serde_json::Value::Null).unwrap();
        // Pretend checkpoints are expensive: the trickle rule alone would wait 10 s.
        c.costs = [Duration::from_secs(1)].into();
        c.mark_dirty();
        c.worked();
        assert!(!c.due(true), "input has just been processed");
        let deadline = c.idle_deadline();
        let now = tokio::time::Instant::now();
        assert!(deadline <= now + Duration::from_secs(1), "{:?}", deadline - now);
        assert!(deadline > now + Duration::from_millis(900), "{:?}", deadline - now);
    }

    /// Under steady input, exactly-once checkpoints come every 100 ms while they are cheap
    /// (results become visible), and no more than a twentieth of the time when they are not;
    /// at-least-once ones wait for the interval.
    #[test]
    fn exactly_once_checkpoints_often_while_they_are_cheap() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = committer(&dir, Duration::from_secs(2), true);
        c.costs = [Duration::from_millis(2)].into();
        assert_eq!(c.busy_wait(), Duration::from_millis(100));
        c.costs = [Duration::from_millis(30)].into();
        assert_eq!(c.busy_wait(), Duration::from_millis(600));
        c.costs = [Duration::from_millis(500)].into();
        assert_eq!(c.busy_wait(), Duration::from_secs(2), "never longer than the interval");
        let other = tempfile::tempdir().unwrap();
        let mut c = committer(&other, Duration::from_secs(2), false);
        c.costs = [Duration::from_millis(2)].into();
        assert_eq!(c.busy_wait(), Duration::from_secs(2));
        c.mark_dirty();
        c.last = Instant::now() - Duration::from_millis(150);
        c.last_work = Instant::now();
        assert!(!c.due(false), "at-least-once waits for the interval");
        c.spec.exactly_once = true;
        assert!(c.due(false), "exactly-once checkpoints after 100 ms of steady input");
    }

    /// One slow checkpoint among cheap ones (a disk stall) does not stretch the waits after it;
    /// checkpoints that are all slow do.
    #[test]
    fn one_slow_checkpoint_does_not_stretch_the_waits() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = committer(&dir, Duration::from_secs(2), true);
        for _ in 0..COSTS_KEPT + 2 {
            c.mark_dirty();
            c.checkpoint(|| Ok(vec![]), vec![], serde_json::Value::Null).unwrap();
        }
        assert_eq!(c.costs.len(), COSTS_KEPT, "only the last few are kept");
        c.costs = [2, 3, 900, 2, 2].map(Duration::from_millis).into();
        assert_eq!(c.busy_wait(), Duration::from_millis(100));
        assert_eq!(c.idle_wait(), Duration::from_millis(20));
        c.costs = [50, 60, 900, 70, 80].map(Duration::from_millis).into();
        assert_eq!(c.busy_wait(), Duration::from_millis(1400));
    }

    /// At-least-once output is visible when appended: a trickle of input is checkpointed at the
    /// interval, not every ten checkpoint durations; when input stops, after the quiet spell.
    #[test]
    fn at_least_once_trickles_wait_for_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = committer(&dir, Duration::from_secs(2), false);
        c.costs = [Duration::from_millis(1)].into();
        c.mark_dirty();
        c.last = Instant::now() - Duration::from_millis(50);
        c.worked();
        assert!(!c.due(true), "a trickle (input 0 ms ago) waits");
        c.last_work = Instant::now() - Duration::from_millis(6);
        assert!(c.due(true), "input stopped 6 ms ago: checkpoint now");
        c.spec.exactly_once = true;
        c.worked();
        assert!(c.due(true), "exactly-once checkpoints a trickle after ten checkpoint durations");
    }

    #[test]
    fn producer_ids_are_stable_and_distinct() {
        assert_eq!(producer_id("CTAS_T_1", "stage"), producer_id("CTAS_T_1", "stage"));
        assert_ne!(producer_id("CTAS_T_1", "stage"), producer_id("CTAS_T_2", "stage"));
        assert_ne!(producer_id("Q", "p0-0"), producer_id("Q", "p0-1"));
        assert!(producer_id("anything", "x") >= 0);
    }
}
