//! [`Log`]: the whole store, rooted at one directory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use tokio::task::JoinHandle;

use crate::batch::{self, ProducerMeta};
use crate::compaction::CompactStats;
use crate::error::{IoContext, LogError, Result};
use crate::fetch::Fetch;
use crate::fsutil::{self, DirLock};
use crate::groups::Groups;
use crate::murmur2;
use crate::partition::Partition;
use crate::record::Record;
use crate::topic::{self, CleanupPolicy, TopicConfig, TopicMeta};
use crate::txn::{OpenTxn, TxnEnd};
use crate::writer::{now_ms, AppendInfo};

/// Largest total encoded size of one `append` call.
pub const MAX_APPEND_BYTES: usize = 1 << 30;

struct Topic {
    config: TopicConfig,
    dir: PathBuf,
    partitions: Vec<Arc<Partition>>,
    round_robin: AtomicU32,
}

impl Topic {
    /// The partition of a record with `key` (see [`Log::partition_for_key`]).
    fn partition_for(&self, key: Option<&[u8]>) -> u32 {
        let n = self.config.partitions.max(1);
        match key {
            Some(k) => murmur2::partition_for_key(k, n),
            None => self.round_robin.fetch_add(1, Ordering::Relaxed) % n,
        }
    }
}

/// The embedded log: durable, partitioned topics under one directory.
///
/// `Send + Sync`; share it as `Arc<Log>`. Methods that touch the disk synchronously
/// (`open`, topic admin, `commit_offsets`, maintenance) block the calling thread; call them from
/// `spawn_blocking` in latency-sensitive async code. `append` and `wait_for` are async; `read`
/// is a bounded positioned read and never waits for new data.
pub struct Log {
    dir: PathBuf,
    topics: RwLock<HashMap<String, Arc<Topic>>>,
    /// Serializes create/delete of topics.
    admin: Mutex<()>,
    groups: Groups,
    _lock: DirLock,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log").field("dir", &self.dir).field("topics", &self.topic_names()).finish()
    }
}

impl Log {
    /// Opens the log at `dir` (creating it if needed) and recovers every partition.
    ///
    /// Blocks while recovery runs: the last segment of each partition is scanned and
    /// CRC-checked (about a second per GiB of active segment), damaged indexes are rebuilt, a
    /// torn tail is truncated, interrupted compactions and topic deletions are finished. Takes an
    /// exclusive lock on the directory: a second `open` (in any process) fails with
    /// [`LogError::DirectoryLocked`] until this `Log` is dropped.
    pub fn open(dir: &Path) -> Result<Arc<Log>> {
        fsutil::create_dir_all(dir)?;
        let lock = DirLock::acquire(dir)?;
        let topics_dir = dir.join("topics");
        let trash = dir.join("trash");
        fsutil::create_dir_all(&topics_dir)?;
        fsutil::create_dir_all(&trash)?;
        for (_, path) in fsutil::list_dir(&trash)? {
            remove_all(&path)?;
        }
        let mut topics = HashMap::new();
        for (name, path) in fsutil::list_dir(&topics_dir)? {
            if !path.is_dir() {
                continue;
            }
            fsutil::remove_file_if_exists(&fsutil::tmp_path(&path.join(topic::TOPIC_META_FILE)))?;
            let Some(meta) = TopicMeta::read(&path)? else {
                tracing::warn!(topic = %name, "removing a topic whose creation did not finish");
                remove_all(&path)?;
                continue;
            };
            if meta.name != name {
                return Err(LogError::Corrupt {
                    file: path.join(topic::TOPIC_META_FILE).display().to_string(),
                    position: 0,
                    reason: format!("metadata names topic '{}' but the directory is '{name}'", meta.name),
                });
            }
            meta.config.validate(&name)?;
            let t = open_topic(&name, path, meta.config)?;
            topics.insert(name, Arc::new(t));
        }
        fsutil::fsync_dir(&topics_dir)?;
        let groups = Groups::open(&dir.join("groups"))?;
        Ok(Arc::new(Log {
            dir: dir.to_path_buf(),
            topics: RwLock::new(topics),
            admin: Mutex::new(()),
            groups,
            _lock: lock,
        }))
    }

    /// The log's root directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates a topic. Durable when it returns (metadata fsynced); a crash during creation
    /// leaves no trace after the next open.
    pub fn create_topic(&self, name: &str, cfg: TopicConfig) -> Result<()> {
        topic::validate_topic_name(name)?;
        cfg.validate(name)?;
        let _admin = self.admin.lock();
        if self.topics.read().contains_key(name) {
            return Err(LogError::TopicExists(name.to_string()));
        }
        let topics_dir = self.dir.join("topics");
        let dir = topics_dir.join(name);
        if dir.exists() {
            remove_all(&dir)?; // an unfinished creation (no metadata, not loaded)
        }
        let created = (|| {
            fsutil::create_dir_all(&dir)?;
            fsutil::fsync_dir(&topics_dir)?;
            let t = open_topic(name, dir.clone(), cfg.clone())?;
            fsutil::fsync_dir(&dir)?;
            TopicMeta { name: name.to_string(), config: cfg.clone() }.write(&dir)?;
            Ok(t)
        })();
        match created {
            Ok(t) => {
                self.topics.write().insert(name.to_string(), Arc::new(t));
                Ok(())
            }
            Err(e) => {
                if let Err(cleanup) = remove_all(&dir) {
                    tracing::warn!(topic = name, "cleaning up a failed topic creation: {cleanup}");
                }
                Err(e)
            }
        }
    }

    /// Creates the topic unless it exists; returns whether it was created. An existing topic
    /// keeps its configuration.
    pub fn create_topic_if_not_exists(&self, name: &str, cfg: TopicConfig) -> Result<bool> {
        match self.create_topic(name, cfg) {
            Ok(()) => Ok(true),
            Err(LogError::TopicExists(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Deletes a topic and its data. Appends in flight fail with [`LogError::TopicDeleted`] (or
    /// complete before the deletion), and `wait_for` calls wake with that error.
    pub fn delete_topic(&self, name: &str) -> Result<()> {
        let _admin = self.admin.lock();
        let topic = self.topics.write().remove(name).ok_or_else(|| LogError::UnknownTopic(name.to_string()))?;
        for p in &topic.partitions {
            p.close();
        }
        // The rename is the durable deletion; the trash is emptied now or at the next open.
        let trash = self.dir.join("trash").join(format!("{name}-{}", now_ms()));
        std::fs::rename(&topic.dir, &trash).ctx(|| format!("moving {} to {}", topic.dir.display(), trash.display()))?;
        fsutil::fsync_dir(&self.dir.join("topics"))?;
        fsutil::fsync_dir(&self.dir.join("trash"))?;
        if let Err(e) = remove_all(&trash) {
            tracing::warn!(topic = name, "emptying the trash: {e} (retried at the next open)");
        }
        self.groups.remove_topic(name)
    }

    /// Names of all topics, sorted.
    pub fn topic_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.topics.read().keys().cloned().collect();
        names.sort();
        names
    }

    /// A topic's configuration.
    pub fn topic_config(&self, name: &str) -> Result<TopicConfig> {
        Ok(self.topic(name)?.config.clone())
    }

    /// Kafka's default partitioner: `to_positive(murmur2(key)) % partitions`; null keys are
    /// spread round-robin.
    pub fn partition_for_key(&self, topic: &str, key: Option<&[u8]>) -> Result<u32> {
        Ok(self.topic(topic)?.partition_for(key))
    }

    /// [`Log::partition_for_key`] for each of `keys`, looking the topic up once.
    pub fn partitions_for_keys(&self, topic: &str, keys: &[Option<&[u8]>]) -> Result<Vec<u32>> {
        let t = self.topic(topic)?;
        Ok(keys.iter().map(|key| t.partition_for(*key)).collect())
    }

    /// Appends records to a partition. Returns once they are durable under the topic's
    /// [`Durability`](crate::Durability) (group-committed with concurrent appends), and readers
    /// can see them. Dropping the future does not cancel the write: the records may still be
    /// appended.
    pub async fn append(&self, topic: &str, partition: u32, records: &[Record]) -> Result<AppendInfo> {
        self.append_with(topic, partition, records, &ProducerMeta::default()).await
    }

    /// [`Log::append`] with producer metadata written into the batch headers (seam for
    /// idempotent / transactional producers; not interpreted yet).
    pub async fn append_with(
        &self,
        topic: &str,
        partition: u32,
        records: &[Record],
        meta: &ProducerMeta,
    ) -> Result<AppendInfo> {
        let p = self.partition(topic, partition)?;
        let invalid = |reason: String| LogError::InvalidRecord { topic: topic.to_string(), reason };
        if records.is_empty() {
            return Err(invalid("no records to append".into()));
        }
        if p.config.cleanup_policy == CleanupPolicy::Compact && records.iter().any(|r| r.key.is_none()) {
            return Err(invalid("the topic is compacted (cleanup.policy=compact), so every record needs a key".into()));
        }
        let enc = batch::encode(records, meta).map_err(invalid)?;
        if enc.buf.len() > MAX_APPEND_BYTES {
            return Err(invalid(format!(
                "one append may hold at most {MAX_APPEND_BYTES} bytes; split it into several appends"
            )));
        }
        let rx = p.submit(enc)?;
        rx.await.unwrap_or_else(|_| Err(LogError::Internal("the partition writer stopped without answering".into())))
    }

    /// Appends records as part of `producer`'s transaction for `epoch` (opening it on this
    /// partition first, durably, if needed). They stay invisible to readers until
    /// [`Log::end_transaction`] commits them; an abort hides them for good. See [`crate::txn`].
    pub async fn append_transactional(
        &self,
        topic: &str,
        partition: u32,
        records: &[Record],
        producer: i64,
        epoch: u64,
    ) -> Result<AppendInfo> {
        if producer < 0 {
            return Err(LogError::Internal(format!("transactional producer ids are >= 0, not {producer}")));
        }
        self.partition(topic, partition)?.begin_transaction(producer, epoch)?;
        let meta = ProducerMeta { producer_id: producer, producer_epoch: 0, base_sequence: -1, transactional: true };
        self.append_with(topic, partition, records, &meta).await
    }

    /// Commits or aborts `producer`'s open transaction on a partition if it belongs to an epoch
    /// `<= epoch`; returns whether one was ended. Idempotent: ending twice is a no-op.
    pub fn end_transaction(&self, topic: &str, partition: u32, producer: i64, epoch: u64, how: TxnEnd) -> Result<bool> {
        self.partition(topic, partition)?.end_transaction(producer, epoch, how)
    }

    /// The transactions open on a partition (after a restart: those whose producer has not yet
    /// resolved them).
    pub fn open_transactions(&self, topic: &str, partition: u32) -> Result<Vec<OpenTxn>> {
        Ok(self.partition(topic, partition)?.open_transactions())
    }

    /// The partition's high watermark, including records of open transactions
    /// ([`Log::end_offset`] stops at the last stable offset).
    pub fn high_watermark(&self, topic: &str, partition: u32) -> Result<u64> {
        Ok(self.partition(topic, partition)?.high_watermark())
    }

    /// Reads whole batches from `offset` (about `max_bytes`, at least one batch). Never blocks
    /// on new data: at the end it returns an empty fetch. Records below `offset` in the first
    /// batch are skipped by [`Fetch::records`]. Offsets outside `[start, end]` fail with
    /// [`LogError::OffsetOutOfRange`].
    pub fn read(&self, topic: &str, partition: u32, offset: u64, max_bytes: usize) -> Result<Fetch> {
        self.partition(topic, partition)?.read(offset, max_bytes)
    }

    /// Resolves once the partition's end offset is past `offset` (immediately if it already is).
    /// Cancel-safe. Fails with [`LogError::TopicDeleted`] if the topic is deleted meanwhile.
    pub async fn wait_for(&self, topic: &str, partition: u32, offset: u64) -> Result<()> {
        let p = self.partition(topic, partition)?;
        p.wait_for(offset).await
    }

    /// Log start offset: the first offset still stored.
    pub fn start_offset(&self, topic: &str, partition: u32) -> Result<u64> {
        Ok(self.partition(topic, partition)?.start_offset())
    }

    /// High watermark: the offset the next appended record gets.
    pub fn end_offset(&self, topic: &str, partition: u32) -> Result<u64> {
        Ok(self.partition(topic, partition)?.end_offset())
    }

    /// Bytes stored by a partition.
    pub fn size_bytes(&self, topic: &str, partition: u32) -> Result<u64> {
        Ok(self.partition(topic, partition)?.size_bytes())
    }

    /// First offset whose timestamp is `>= ts` (Kafka ListOffsets), or `None`.
    pub fn offset_for_timestamp(&self, topic: &str, partition: u32, ts: i64) -> Result<Option<u64>> {
        self.partition(topic, partition)?.offset_for_timestamp(ts)
    }

    /// Durably stores a consumer group's next offsets (topic, partition, offset).
    pub fn commit_offsets(&self, group: &str, offsets: &[(String, u32, u64)]) -> Result<()> {
        for (topic, partition, _) in offsets {
            self.partition(topic, *partition)?;
        }
        self.groups.commit(group, offsets)
    }

    /// A consumer group's committed offset for a partition, if it committed one.
    pub fn committed_offset(&self, group: &str, topic: &str, partition: u32) -> Result<Option<u64>> {
        self.partition(topic, partition)?;
        Ok(self.groups.committed(group, topic, partition))
    }

    /// Deletes old closed segments of `delete` topics (see [`crate::retention`]). Errors of one
    /// partition do not stop the others; the first is returned.
    pub fn enforce_retention(&self, now_ms: i64) -> Result<()> {
        let mut first = None;
        for p in self.all_partitions() {
            let result = p.enforce_retention(now_ms).and_then(|_| {
                let start = p.start_offset();
                p.txn.lock().prune(&p.dir, start)
            });
            if let Err(e) = result {
                tracing::warn!(topic = %p.topic, partition = p.id, "retention failed: {e}");
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Makes every record appended to `topic`/`partition` so far durable, also on a topic
    /// whose appends do not wait for their fsync (see [`Partition::sync`]).
    pub fn sync(&self, topic: &str, partition: u32) -> Result<()> {
        self.partition(topic, partition)?.sync()
    }

    /// Deletes the closed segments of `topic`/`partition` that hold only records before
    /// `offset` (Kafka's DeleteRecords, at segment granularity; see [`crate::retention`]):
    /// for internal topics whose readers have committed everything before `offset`. Returns the
    /// partition's start offset afterwards.
    pub fn delete_records(&self, topic: &str, partition: u32, offset: u64) -> Result<u64> {
        let p = self.partition(topic, partition)?;
        if p.delete_records(offset)? > 0 {
            let start = p.start_offset();
            p.txn.lock().prune(&p.dir, start)?;
        }
        Ok(p.start_offset())
    }

    /// Compacts closed segments of `compact` topics (see [`crate::compaction`]).
    pub fn compact(&self, now_ms: i64) -> Result<()> {
        self.compact_with_stats(now_ms).map(|_| ())
    }

    /// [`Log::compact`], returning what was done.
    pub fn compact_with_stats(&self, now_ms: i64) -> Result<CompactStats> {
        let mut total = CompactStats::default();
        let mut first = None;
        for p in self.all_partitions() {
            match p.compact(now_ms) {
                Ok(s) => {
                    total.segments_rewritten += s.segments_rewritten;
                    total.records_removed += s.records_removed;
                    total.bytes_before += s.bytes_before;
                    total.bytes_after += s.bytes_after;
                }
                Err(e) => {
                    tracing::warn!(topic = %p.topic, partition = p.id, "compaction failed: {e}");
                    first.get_or_insert(e);
                }
            }
        }
        first.map_or(Ok(total), Err)
    }

    /// Runs retention and compaction every `every` on the blocking pool, until the task is
    /// aborted or the log is dropped (the task holds only a weak reference).
    ///
    /// # Panics
    /// Like `tokio::spawn`, if called outside a Tokio runtime.
    pub fn spawn_maintenance(self: &Arc<Self>, every: Duration) -> JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await; // the first tick is immediate; start one period after opening
            loop {
                ticker.tick().await;
                let Some(log) = weak.upgrade() else { return };
                let pass = tokio::task::spawn_blocking(move || {
                    let now = now_ms();
                    let r = log.enforce_retention(now);
                    let c = log.compact(now);
                    r.and(c)
                });
                match pass.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!("log maintenance: {e}"),
                    Err(e) => tracing::error!("log maintenance task failed: {e}"),
                }
            }
        })
    }

    fn topic(&self, name: &str) -> Result<Arc<Topic>> {
        self.topics.read().get(name).cloned().ok_or_else(|| LogError::UnknownTopic(name.to_string()))
    }

    pub(crate) fn partition(&self, topic: &str, partition: u32) -> Result<Arc<Partition>> {
        let t = self.topic(topic)?;
        t.partitions.get(partition as usize).cloned().ok_or_else(|| LogError::UnknownPartition {
            topic: topic.to_string(),
            partition,
            partitions: t.config.partitions,
        })
    }

    fn all_partitions(&self) -> Vec<Arc<Partition>> {
        self.topics.read().values().flat_map(|t| t.partitions.iter().cloned()).collect()
    }
}

impl Drop for Log {
    /// Waits for running writers so the directory lock is released only when no thread of this
    /// log touches the files any more.
    fn drop(&mut self) {
        for p in self.all_partitions() {
            p.wait_idle();
        }
    }
}

fn open_topic(name: &str, dir: PathBuf, config: TopicConfig) -> Result<Topic> {
    let mut partitions = Vec::with_capacity(config.partitions as usize);
    for i in 0..config.partitions {
        partitions.push(Partition::open(name, i, dir.join(i.to_string()), config.clone())?);
    }
    Ok(Topic { config, dir, partitions, round_robin: AtomicU32::new(0) })
}

fn remove_all(path: &Path) -> Result<()> {
    let r = if path.is_dir() { std::fs::remove_dir_all(path) } else { std::fs::remove_file(path) };
    match r {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(LogError::io(format!("deleting {}", path.display()), e)),
    }
}
