//! Transactions: output that becomes visible only when its producer commits it.
//!
//! A *transactional producer* (a query writing its results with exactly-once) is a 64-bit id.
//! Its appends carry the id in the batch header (Kafka's `producerId`, with the transactional
//! attribute). The first such append to a partition *opens* a transaction there, tagged with the
//! producer's epoch (its checkpoint number); [`Log::end_transaction`](crate::Log) commits or
//! aborts it.
//!
//! Readers see committed data only (Kafka's `read_committed`):
//!
//! * the **last stable offset** (LSO) is the first offset of the oldest open transaction, or the
//!   high watermark when none is open; reads stop there and [`Log::end_offset`](crate::Log)
//!   reports it, so nothing of an open transaction is ever served;
//! * an **aborted** transaction's batches stay on disk but are skipped by every read (and
//!   dropped by compaction): the partition remembers `(producer, first, last)` for each abort.
//!
//! The open and aborted transactions of a partition are kept in `txn.json` beside its segments,
//! replaced atomically (temp file, fsync, rename, fsync directory) when a transaction opens,
//! commits or aborts, *before* the change takes effect: a transaction's data is never on disk
//! without the record that it is open, so after a crash recovery knows every open transaction
//! and they stay hidden until their producer resolves them (see
//! [`Log::open_transactions`](crate::Log)).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{IoContext, LogError, Result};
use crate::fsutil;

/// File name of a partition's transaction state.
pub(crate) const TXN_FILE: &str = "txn.json";

/// An open transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenTxn {
    /// The producer.
    pub producer: i64,
    /// The producer's epoch (checkpoint) this transaction belongs to.
    pub epoch: u64,
    /// No record of the transaction is below this offset.
    pub first: u64,
}

/// An aborted transaction: the producer's batches in `[first, last)` are never served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Aborted {
    /// The producer.
    pub producer: i64,
    /// First offset the transaction may cover.
    pub first: u64,
    /// Offset after the last one it may cover.
    pub last: u64,
}

impl Aborted {
    /// Whether a batch (by producer id and base offset) belongs to this aborted transaction.
    pub fn covers(&self, producer: i64, base_offset: u64) -> bool {
        producer == self.producer && base_offset >= self.first && base_offset < self.last
    }
}

/// Whether a batch is part of any of `aborted`.
pub(crate) fn is_aborted(aborted: &[Aborted], producer: i64, base_offset: u64) -> bool {
    producer >= 0 && aborted.iter().any(|a| a.covers(producer, base_offset))
}

/// Open and aborted transactions of one partition.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TxnState {
    open: BTreeMap<i64, OpenTxn>,
    aborted: Vec<Aborted>,
}

/// How a transaction ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxnEnd {
    /// Its records become visible.
    Commit,
    /// Its records are never served.
    Abort,
}

impl TxnState {
    /// Loads `dir/txn.json` (empty state if missing).
    pub fn load(dir: &Path) -> Result<TxnState> {
        let path = dir.join(TXN_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| LogError::Corrupt {
                file: path.display().to_string(),
                position: 0,
                reason: format!("transaction state is not valid: {e}"),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TxnState::default()),
            Err(e) => Err(e).ctx(|| format!("reading {}", path.display())),
        }
    }

    fn path(dir: &Path) -> PathBuf {
        dir.join(TXN_FILE)
    }

    fn save(&self, dir: &Path) -> Result<()> {
        let bytes = serde_json::to_vec(self).map_err(|e| LogError::Internal(e.to_string()))?;
        fsutil::write_atomic(&Self::path(dir), &bytes)
    }

    /// The open transaction of `producer`, if any.
    pub fn open_of(&self, producer: i64) -> Option<OpenTxn> {
        self.open.get(&producer).copied()
    }

    /// Every open transaction.
    pub fn open(&self) -> Vec<OpenTxn> {
        self.open.values().copied().collect()
    }

    /// Aborted transactions.
    pub fn aborted(&self) -> &[Aborted] {
        &self.aborted
    }

    /// First offset of the oldest open transaction.
    pub fn first_open(&self) -> Option<u64> {
        self.open.values().map(|t| t.first).min()
    }

    /// Opens a transaction (durably) unless `producer` already has one for `epoch`.
    /// Fails if it has one for another epoch: the caller must end that first.
    pub fn begin(&mut self, dir: &Path, producer: i64, epoch: u64, first: u64) -> Result<()> {
        match self.open.get(&producer) {
            Some(t) if t.epoch == epoch => Ok(()),
            Some(t) => Err(LogError::Internal(format!(
                "producer {producer} still has the transaction of epoch {} open; end it before epoch {epoch}",
                t.epoch
            ))),
            None => {
                let mut next = self.clone();
                next.open.insert(producer, OpenTxn { producer, epoch, first });
                next.save(dir)?;
                *self = next;
                Ok(())
            }
        }
    }

    /// Ends `producer`'s open transaction if it belongs to an epoch `<= epoch` (durably);
    /// `end` is the partition's end offset, bounding an aborted transaction.
    /// Returns whether a transaction was ended.
    pub fn end(&mut self, dir: &Path, producer: i64, epoch: u64, how: TxnEnd, end: u64) -> Result<bool> {
        let Some(t) = self.open.get(&producer).copied() else { return Ok(false) };
        if t.epoch > epoch {
            return Ok(false);
        }
        let mut next = self.clone();
        next.open.remove(&producer);
        if how == TxnEnd::Abort && end > t.first {
            next.aborted.push(Aborted { producer, first: t.first, last: end });
        }
        next.save(dir)?;
        *self = next;
        Ok(true)
    }

    /// Forgets aborted ranges below the log start (their segments are gone).
    pub fn prune(&mut self, dir: &Path, log_start: u64) -> Result<()> {
        if self.aborted.iter().all(|a| a.last > log_start) {
            return Ok(());
        }
        let mut next = self.clone();
        next.aborted.retain(|a| a.last > log_start);
        next.save(dir)?;
        *self = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn begin_end_and_reload() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = TxnState::load(dir.path()).expect("empty");
        s.begin(dir.path(), 7, 1, 10).expect("begin");
        s.begin(dir.path(), 7, 1, 99).expect("same epoch is a no-op");
        assert!(s.begin(dir.path(), 7, 2, 20).is_err(), "epoch 1 is still open");
        s.begin(dir.path(), 8, 5, 12).expect("another producer");
        assert_eq!(s.first_open(), Some(10));
        assert_eq!(TxnState::load(dir.path()).expect("reload"), s);

        assert!(!s.end(dir.path(), 7, 0, TxnEnd::Commit, 30).expect("older epoch"), "epoch 0 does not end epoch 1");
        assert!(s.end(dir.path(), 7, 1, TxnEnd::Commit, 30).expect("commit"));
        assert!(s.end(dir.path(), 8, 9, TxnEnd::Abort, 30).expect("abort"));
        assert_eq!(s.first_open(), None);
        assert_eq!(s.aborted(), &[Aborted { producer: 8, first: 12, last: 30 }]);
        assert!(is_aborted(s.aborted(), 8, 12) && !is_aborted(s.aborted(), 8, 30) && !is_aborted(s.aborted(), 7, 15));
        let reloaded = TxnState::load(dir.path()).expect("reload");
        assert_eq!(reloaded, s);

        s.prune(dir.path(), 30).expect("prune");
        assert!(s.aborted().is_empty());
    }
}
