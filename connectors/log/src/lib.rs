//! Rill's embedded log: durable, partitioned topics on local disk, so that `rill server` needs
//! nothing else installed.
//!
//! The model is Kafka's. A topic has N partitions; a partition is an append-only sequence of
//! records, each with an offset, a timestamp, a key (bytes or null), a value (bytes or null = a
//! tombstone) and headers. Keyed records are placed by Kafka's default partitioner (murmur2), so
//! a key lands in the partition Kafka would choose.
//!
//! # Layout on disk
//!
//! ```text
//! <dir>/.lock                                   flock: one Log per directory
//! <dir>/topics/<topic>/topic.json               name + TopicConfig (written atomically)
//! <dir>/topics/<topic>/<partition>/<base>.log   Kafka RecordBatch v2 batches, back to back
//! <dir>/topics/<topic>/<partition>/<base>.index      sparse: relative offset -> byte position
//! <dir>/topics/<topic>/<partition>/<base>.timeindex  sparse: max timestamp -> relative offset
//! <dir>/topics/<topic>/<partition>/txn.json     open and aborted transactions (see [`txn`])
//! <dir>/groups/<group>.json                     committed offsets of a consumer group
//! <dir>/trash/                                  deleted topics, emptied at open
//! ```
//!
//! `<base>` is the segment's first offset, zero-padded to 20 digits. A segment is rolled when it
//! would exceed `segment.bytes` or its first append is older than `segment.ms`. Batches are
//! stored in Kafka's v2 layout (see [`batch`]), uncompressed, each with its CRC32C, so a later
//! Kafka-wire listener can serve [`Fetch::batches`] without re-encoding.
//!
//! # Guarantees
//!
//! * **Durability.** [`Log::append`] returns only when the records are durable under the
//!   topic's [`Durability`]: by default after `fdatasync`, shared by all concurrent producers of
//!   the partition (group commit, see [`writer`]). An acknowledged record
//!   survives kill -9 and power loss. Closed segments are always fsynced, whatever the policy.
//! * **Visibility.** Readers see a record only once it is acknowledged (the high watermark moves
//!   after the fsync), so nothing a reader saw can vanish in a crash.
//! * **Recovery.** [`Log::open`] finishes interrupted topic deletions and compactions, scans the
//!   last segment of every partition batch by batch (length, CRC32C, record layout, offsets),
//!   truncates a torn or corrupt tail, and rebuilds missing or damaged indexes. Opening never
//!   fails because of a torn write.
//! * **Integrity.** Every batch is CRC-checked before it is served; corrupt data yields
//!   [`LogError::Corrupt`], never records.
//! * **Transactions.** [`Log::append_transactional`] writes records that readers see only once
//!   [`Log::end_transaction`] commits them (read-committed; aborted ones are never served),
//!   which is how queries write exactly-once output (see [`txn`]).
//! * **Errors.** Every failure is a typed [`LogError`] with a message for a person, and leaves
//!   the log consistent: a failed append (e.g. [`LogError::DiskFull`]) is cut back off the
//!   file before the error is returned.
//!
//! # Readers
//!
//! Any number of readers per partition, each at its own offset: [`Log::read`] returns a
//! [`Fetch`] of whole batches that iterates records zero-copy; [`Log::wait_for`] resolves when a
//! record at an offset exists (woken by the append, no polling). Consumer groups commit offsets
//! durably with [`Log::commit_offsets`].
//!
//! # Maintenance
//!
//! [`Log::enforce_retention`] deletes whole old segments of `cleanup.policy=delete` topics;
//! [`Log::compact`] keeps the newest value per key of `cleanup.policy=compact` topics (see
//! [`compaction`]). [`Log::spawn_maintenance`] runs both periodically.
//!
//! # Example
//!
//! ```
//! # async fn demo() -> rill_log::Result<()> {
//! use rill_log::{Log, Record, TopicConfig};
//! let dir = std::env::temp_dir().join(format!("rill-log-doc-{}", std::process::id()));
//! let log = Log::open(&dir)?;
//! log.create_topic("payments", TopicConfig { partitions: 3, ..TopicConfig::default() })?;
//! let p = log.partition_for_key("payments", Some(b"alice"))?;
//! let ack = log.append("payments", p, &[Record::new(1_700_000_000_000, Some("alice"), Some("12.50"))]).await?;
//! let fetch = log.read("payments", p, ack.base_offset, 1 << 20)?;
//! for r in fetch.records() {
//!     assert_eq!(r.value, Some(&b"12.50"[..]));
//! }
//! # drop(log); let _ = std::fs::remove_dir_all(&dir);
//! # Ok(())
//! # }
//! # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
//! ```

#![warn(missing_docs)]

pub mod batch;
pub mod bench;
pub mod compaction;
mod error;
mod fetch;
mod fsutil;
pub mod groups;
pub mod index;
mod log;
pub mod murmur2;
mod partition;
mod record;
pub mod retention;
mod segment;
mod topic;
pub mod txn;
pub mod writer;

pub use batch::{BatchHeader, ProducerMeta};
pub use compaction::CompactStats;
pub use error::{LogError, Result};
pub use fetch::{BatchRef, Batches, Fetch, Records};
pub use log::{Log, MAX_APPEND_BYTES};
pub use record::{HeaderIter, Record, RecordRef};
pub use topic::{validate_topic_name, CleanupPolicy, Durability, TopicConfig};
pub use txn::{Aborted, OpenTxn, TxnEnd};
pub use writer::AppendInfo;

#[cfg(test)]
mod tests;
