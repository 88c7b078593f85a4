//! The topic-store trait: the one seam between the dataflow and where topics live.
//!
//! [`EmbeddedStore`] implements it over Rill's own log (`rill-log`). An external Kafka store will
//! implement the same trait; the engine never names the concrete store.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
pub use rill_log::{AppendInfo, CleanupPolicy, Durability, Fetch, Log, OpenTxn, Record, TopicConfig, TxnEnd};

use crate::registry::{FileRegistry, SchemaRegistry};
use crate::Result;

/// What the engine needs from a home for topics.
#[async_trait]
pub trait TopicStore: Send + Sync + 'static {
    /// Creates `name` unless it exists; returns whether it was created.
    fn create_topic(&self, name: &str, config: TopicConfig) -> Result<bool>;
    /// Deletes a topic and its data.
    fn delete_topic(&self, name: &str) -> Result<()>;
    /// Names of all topics, sorted.
    fn topic_names(&self) -> Vec<String>;
    /// The configuration of a topic (partition count among it).
    fn topic_config(&self, name: &str) -> Result<TopicConfig>;
    /// The partition a record with this key goes to (Kafka's default partitioner).
    fn partition_for_key(&self, topic: &str, key: Option<&[u8]>) -> Result<u32>;
    /// [`TopicStore::partition_for_key`] for many keys at once.
    fn partitions_for_keys(&self, topic: &str, keys: &[Option<&[u8]>]) -> Result<Vec<u32>> {
        keys.iter().map(|k| self.partition_for_key(topic, *k)).collect()
    }
    /// Appends records to one partition; returns once they are durable under the topic's policy.
    async fn append(&self, topic: &str, partition: u32, records: &[Record]) -> Result<AppendInfo>;
    /// Reads whole batches starting at `offset`, up to about `max_bytes`; never blocks.
    fn read(&self, topic: &str, partition: u32, offset: u64, max_bytes: usize) -> Result<Fetch>;
    /// Resolves once the partition holds a record at `offset` (its end offset is past it).
    async fn wait_for(&self, topic: &str, partition: u32, offset: u64) -> Result<()>;
    /// The first offset still stored.
    fn start_offset(&self, topic: &str, partition: u32) -> Result<u64>;
    /// The end of what readers see: the offset after the last committed record (read-committed;
    /// records of open transactions are beyond it).
    fn end_offset(&self, topic: &str, partition: u32) -> Result<u64>;
    /// Appends records in `producer`'s transaction for `epoch`: invisible to readers until
    /// [`TopicStore::end_transaction`] commits them (Kafka: a transactional producer).
    async fn append_transactional(
        &self,
        topic: &str,
        partition: u32,
        records: &[Record],
        producer: i64,
        epoch: u64,
    ) -> Result<AppendInfo>;
    /// Commits or aborts `producer`'s open transaction on a partition if its epoch is `<= epoch`;
    /// returns whether one was ended.
    fn end_transaction(&self, topic: &str, partition: u32, producer: i64, epoch: u64, how: TxnEnd) -> Result<bool>;
    /// Transactions still open on a partition.
    fn open_transactions(&self, topic: &str, partition: u32) -> Result<Vec<OpenTxn>>;
    /// Durably records a consumer group's next offsets.
    fn commit_offsets(&self, group: &str, offsets: &[(String, u32, u64)]) -> Result<()>;
    /// A consumer group's committed next offset for a partition.
    fn committed_offset(&self, group: &str, topic: &str, partition: u32) -> Result<Option<u64>>;
    /// Makes everything appended to a partition so far durable (a no-op where appends are
    /// durable when acknowledged): a task calls it before a checkpoint names what it wrote.
    fn sync(&self, topic: &str, partition: u32) -> Result<()>;
    /// Frees records before `offset` that nobody will read again (Kafka's DeleteRecords; a store
    /// may keep some, e.g. whole segments): the readers of an internal topic call it once their
    /// position is committed.
    fn delete_records(&self, topic: &str, partition: u32, offset: u64) -> Result<()>;
    /// The schema registry of this store's topics (for AVRO records).
    fn schema_registry(&self) -> Arc<dyn SchemaRegistry>;
}

/// The default store: topics in Rill's embedded log under the data directory.
#[derive(Clone)]
pub struct EmbeddedStore {
    log: Arc<Log>,
    registry: Arc<FileRegistry>,
}

impl EmbeddedStore {
    /// Opens (and recovers) the log under `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let log = Log::open(dir)?;
        let registry = Arc::new(FileRegistry::open(&dir.join("schema-registry.json"))?);
        Ok(Self { log, registry })
    }

    /// The underlying log, for maintenance and benchmarks.
    pub fn log(&self) -> &Arc<Log> {
        &self.log
    }

    /// Starts periodic retention and compaction on the tokio runtime.
    pub fn spawn_maintenance(&self, every: Duration) {
        // The task runs for the life of the runtime; its handle is not needed.
        drop(self.log.spawn_maintenance(every));
    }
}

#[async_trait]
impl TopicStore for EmbeddedStore {
    fn create_topic(&self, name: &str, config: TopicConfig) -> Result<bool> {
        Ok(self.log.create_topic_if_not_exists(name, config)?)
    }
    fn delete_topic(&self, name: &str) -> Result<()> {
        Ok(self.log.delete_topic(name)?)
    }
    fn topic_names(&self) -> Vec<String> {
        let mut names = self.log.topic_names();
        names.sort();
        names
    }
    fn topic_config(&self, name: &str) -> Result<TopicConfig> {
        Ok(self.log.topic_config(name)?)
    }
    fn partition_for_key(&self, topic: &str, key: Option<&[u8]>) -> Result<u32> {
        Ok(self.log.partition_for_key(topic, key)?)
    }
    fn partitions_for_keys(&self, topic: &str, keys: &[Option<&[u8]>]) -> Result<Vec<u32>> {
        Ok(self.log.partitions_for_keys(topic, keys)?)
    }
    async fn append(&self, topic: &str, partition: u32, records: &[Record]) -> Result<AppendInfo> {
        Ok(self.log.append(topic, partition, records).await?)
    }
    fn read(&self, topic: &str, partition: u32, offset: u64, max_bytes: usize) -> Result<Fetch> {
        Ok(self.log.read(topic, partition, offset, max_bytes)?)
    }
    async fn wait_for(&self, topic: &str, partition: u32, offset: u64) -> Result<()> {
        Ok(self.log.wait_for(topic, partition, offset).await?)
    }
    fn start_offset(&self, topic: &str, partition: u32) -> Result<u64> {
        Ok(self.log.start_offset(topic, partition)?)
    }
    fn end_offset(&self, topic: &str, partition: u32) -> Result<u64> {
        Ok(self.log.end_offset(topic, partition)?)
    }
    async fn append_transactional(
        &self,
        topic: &str,
        partition: u32,
        records: &[Record],
        producer: i64,
        epoch: u64,
    ) -> Result<AppendInfo> {
        Ok(self.log.append_transactional(topic, partition, records, producer, epoch).await?)
    }

    fn end_transaction(&self, topic: &str, partition: u32, producer: i64, epoch: u64, how: TxnEnd) -> Result<bool> {
        Ok(self.log.end_transaction(topic, partition, producer, epoch, how)?)
    }

    fn open_transactions(&self, topic: &str, partition: u32) -> Result<Vec<OpenTxn>> {
        Ok(self.log.open_transactions(topic, partition)?)
    }

    fn commit_offsets(&self, group: &str, offsets: &[(String, u32, u64)]) -> Result<()> {
        Ok(self.log.commit_offsets(group, offsets)?)
    }

    fn sync(&self, topic: &str, partition: u32) -> Result<()> {
        Ok(self.log.sync(topic, partition)?)
    }

    fn delete_records(&self, topic: &str, partition: u32, offset: u64) -> Result<()> {
        self.log.delete_records(topic, partition, offset)?;
        Ok(())
    }
    fn schema_registry(&self) -> Arc<dyn SchemaRegistry> {
        self.registry.clone()
    }

    fn committed_offset(&self, group: &str, topic: &str, partition: u32) -> Result<Option<u64>> {
        Ok(self.log.committed_offset(group, topic, partition)?)
    }
}
