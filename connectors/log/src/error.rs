//! The one error type of the log.
//!
//! Every variant carries enough context for a person to act on it. After any error the log is
//! still consistent: a failed append wrote nothing that a reader or a restart could see, a failed
//! topic operation left the topic either fully there or fully gone.

use std::io;

/// Errors of the embedded log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A topic name breaks Kafka's naming rules.
    #[error("invalid topic name {name:?}: {reason}")]
    InvalidTopicName {
        /// The rejected name.
        name: String,
        /// Which rule it breaks.
        reason: String,
    },
    /// The topic does not exist.
    #[error("topic '{0}' does not exist")]
    UnknownTopic(String),
    /// `create_topic` on a name that is taken.
    #[error("topic '{0}' already exists")]
    TopicExists(String),
    /// The topic was deleted while the operation waited (appends in flight, `wait_for`).
    #[error("topic '{0}' was deleted")]
    TopicDeleted(String),
    /// The partition number is not below the topic's partition count.
    #[error("topic '{topic}' has no partition {partition}: it has {partitions} partition(s), numbered from 0")]
    UnknownPartition {
        /// Topic name.
        topic: String,
        /// The requested partition.
        partition: u32,
        /// How many partitions the topic has.
        partitions: u32,
    },
    /// A read below the log start or past the log end.
    #[error(
        "offset {offset} is out of range for topic '{topic}' partition {partition}: \
         the partition holds offsets {start} up to (not including) {end}"
    )]
    OffsetOutOfRange {
        /// Topic name.
        topic: String,
        /// Partition number.
        partition: u32,
        /// The requested offset.
        offset: u64,
        /// First offset still stored (log start).
        start: u64,
        /// Next offset to be written (high watermark).
        end: u64,
    },
    /// A topic configuration value is not acceptable.
    #[error("invalid configuration for topic '{topic}': {reason}")]
    InvalidConfig {
        /// Topic name (may be empty when parsing properties before naming).
        topic: String,
        /// What is wrong.
        reason: String,
    },
    /// Records that cannot be appended (empty append, too large, null key on a compacted topic).
    #[error("cannot append to topic '{topic}': {reason}")]
    InvalidRecord {
        /// Topic name.
        topic: String,
        /// What is wrong.
        reason: String,
    },
    /// A consumer group name that cannot be stored.
    #[error("invalid consumer group name {group:?}: {reason}")]
    InvalidGroup {
        /// The rejected group name.
        group: String,
        /// What is wrong.
        reason: String,
    },
    /// The disk (or quota) is full. The failed write was rolled back; nothing was acknowledged.
    #[error(
        "disk full while {context}: free some space and retry; \
         the write was rolled back and the log is unchanged"
    )]
    DiskFull {
        /// What the log was doing, with the file involved.
        context: String,
    },
    /// Stored bytes failed validation (CRC, length or layout). Corrupt data is never served.
    #[error("corrupt data in {file} at byte {position}: {reason}")]
    Corrupt {
        /// The file holding the bad bytes.
        file: String,
        /// Byte position in that file.
        position: u64,
        /// What failed.
        reason: String,
    },
    /// Any other I/O error.
    #[error("I/O error while {context}: {source}")]
    Io {
        /// What the log was doing, with the file involved.
        context: String,
        /// The operating system error.
        #[source]
        source: io::Error,
    },
    /// Another process (or another `Log` in this process) has the directory open.
    #[error("log directory {path} is in use by another process (or another open Log); only one may open it")]
    DirectoryLocked {
        /// The log directory.
        path: String,
    },
    /// A partition stopped accepting writes after an fsync failure; reads still work.
    #[error(
        "topic '{topic}' partition {partition} is offline for writes after an I/O failure ({reason}); \
         restart the server to run recovery"
    )]
    PartitionOffline {
        /// Topic name.
        topic: String,
        /// Partition number.
        partition: u32,
        /// The failure that took it offline.
        reason: String,
    },
    /// An invariant of the log did not hold: this is a bug.
    #[error("internal error in the embedded log: {0} (this is a bug)")]
    Internal(String),
}

/// Result alias of this crate.
pub type Result<T, E = LogError> = std::result::Result<T, E>;

impl LogError {
    /// Wraps an I/O error, turning "no space" and "quota exceeded" into [`LogError::DiskFull`].
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        let context = context.into();
        if is_disk_full(&source) {
            LogError::DiskFull { context }
        } else {
            LogError::Io { context, source }
        }
    }

    /// True for [`LogError::DiskFull`].
    pub fn is_disk_full(&self) -> bool {
        matches!(self, LogError::DiskFull { .. })
    }
}

/// True when `e` means the file system has no room left.
pub(crate) fn is_disk_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(code) if code == libc::ENOSPC || code == libc::EDQUOT)
}

/// Adds a context to `io::Result`s.
pub(crate) trait IoContext<T> {
    /// Maps the error with [`LogError::io`], building the context lazily.
    fn ctx<F: FnOnce() -> String>(self, f: F) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx<F: FnOnce() -> String>(self, f: F) -> Result<T> {
        self.map_err(|e| LogError::io(f(), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enospc_becomes_disk_full() {
        let e = LogError::io("appending to x.log", io::Error::from_raw_os_error(libc::ENOSPC));
        assert!(e.is_disk_full());
        assert!(e.to_string().contains("disk full while appending to x.log"));
        let e = LogError::io("reading", io::Error::from_raw_os_error(libc::EIO));
        assert!(matches!(e, LogError::Io { .. }));
    }

    #[test]
    fn messages_name_the_problem() {
        let e = LogError::OffsetOutOfRange { topic: "t".into(), partition: 1, offset: 9, start: 2, end: 5 };
        assert_eq!(
            e.to_string(),
            "offset 9 is out of range for topic 't' partition 1: the partition holds offsets 2 up to (not including) 5"
        );
        let e = LogError::UnknownPartition { topic: "t".into(), partition: 3, partitions: 2 };
        assert!(e.to_string().contains("has 2 partition(s)"));
    }
}
