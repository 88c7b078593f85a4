//! A partition: its segments, its high watermark, its readers' wake-ups and its single writer.
//!
//! Visibility rule: the high watermark (HW) is the offset after the last *acknowledged* record.
//! For [`Durability::Fsync`](crate::Durability::Fsync) topics it advances only after the bytes
//! are fsynced, so a reader never sees a record that a crash could take away. Readers are woken
//! through a `tokio::sync::watch` channel when the HW moves (no polling).
//!
//! Transactions (see [`crate::txn`]): reads stop at the *last stable offset* (`stable`), the
//! first offset of the oldest open transaction or the HW when none is open, and skip the batches
//! of aborted transactions. `stable` is recomputed under the `txn` lock whenever the HW moves or
//! a transaction opens or ends, so it never moves backwards.

use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::{Condvar, Mutex, RwLock};
use tokio::sync::watch;

use crate::compaction::{self, MaintState};
use crate::error::{LogError, Result};
use crate::fetch::Fetch;
use crate::fsutil;
use crate::segment::{self, Segment};
use crate::topic::{CleanupPolicy, TopicConfig};
use crate::txn::{OpenTxn, TxnEnd, TxnState};
use crate::writer::{Queue, WriterCtx};

/// Segments and high watermark, read by every reader and changed by the writer (roll) and by
/// maintenance (retention, compaction).
#[derive(Debug)]
pub(crate) struct PartState {
    /// Ordered by base offset; the last one is the active segment. Never empty.
    pub segments: Vec<Arc<Segment>>,
    /// High watermark: offset after the last acknowledged record.
    pub hw: u64,
    /// Last stable offset: reads stop here (`<= hw`).
    pub stable: u64,
}

impl PartState {
    /// Log start offset: base of the first segment.
    pub fn start(&self) -> u64 {
        self.segments.first().map_or(self.hw, |s| s.base())
    }

    /// Index of the segment that would hold `offset` (largest base `<= offset`).
    fn segment_index(&self, offset: u64) -> usize {
        self.segments.partition_point(|s| s.base() <= offset).saturating_sub(1)
    }
}

/// What readers watch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Signal {
    /// The last stable offset: what readers may read up to.
    pub stable: u64,
    pub closed: bool,
}

/// One partition of a topic.
pub(crate) struct Partition {
    pub topic: String,
    pub id: u32,
    pub dir: PathBuf,
    pub config: TopicConfig,
    pub(crate) state: RwLock<PartState>,
    pub(crate) signal: watch::Sender<Signal>,
    /// Pending appends and writer status; see [`crate::writer`].
    pub(crate) queue: Mutex<Queue>,
    /// Signalled when the writer goes idle.
    pub(crate) idle: Condvar,
    /// Owned by the active writer for the duration of a drain.
    pub(crate) writer: Mutex<WriterCtx>,
    /// Open and aborted transactions; its lock also orders every change of `stable`.
    pub(crate) txn: Mutex<TxnState>,
    /// Serializes retention and compaction, and holds compaction's progress.
    pub(crate) maint: Mutex<MaintState>,
    /// When set, the writer records the size of every write it makes durable (benchmark).
    pub(crate) trace: Mutex<Option<Vec<u64>>>,
    /// Test-only fault injection for the writer.
    #[cfg(test)]
    pub(crate) fault: Mutex<Option<crate::writer::Fault>>,
}

impl std::fmt::Debug for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partition").field("topic", &self.topic).field("id", &self.id).finish()
    }
}

impl Partition {
    /// Opens (or creates) the partition directory and recovers it: finishes or discards an
    /// interrupted compaction, removes leftovers, then checks every segment (the last one
    /// fully; see [`Segment::recover`]).
    pub fn open(topic: &str, id: u32, dir: PathBuf, config: TopicConfig) -> Result<Arc<Partition>> {
        fsutil::create_dir_all(&dir)?;
        compaction::recover_swaps(&dir)?;
        let mut bases = Vec::new();
        let mut index_files = Vec::new();
        for (name, path) in fsutil::list_dir(&dir)? {
            if let Some(base) = segment::parse_file_name(&name, segment::LOG_EXT) {
                bases.push(base);
            } else if let Some(base) = segment::parse_file_name(&name, segment::INDEX_EXT)
                .or_else(|| segment::parse_file_name(&name, segment::TIME_INDEX_EXT))
            {
                index_files.push((base, path));
            } else if name.ends_with(fsutil::TMP_SUFFIX) || name.ends_with(compaction::CLEANED_SUFFIX) {
                fsutil::remove_file_if_exists(&path)?;
            }
        }
        bases.sort_unstable();
        for (base, path) in index_files {
            if bases.binary_search(&base).is_err() {
                fsutil::remove_file_if_exists(&path)?;
            }
        }
        let mut segments = Vec::with_capacity(bases.len().max(1));
        let mut tail = None;
        for (i, &base) in bases.iter().enumerate() {
            let last = i + 1 == bases.len();
            let limit = bases.get(i + 1).copied().unwrap_or(u64::MAX);
            let contiguous = config.cleanup_policy == CleanupPolicy::Delete;
            let (seg, state) = Segment::recover(&dir, base, last, limit, contiguous)?;
            segments.push(Arc::new(seg));
            if last {
                tail = Some(state);
            }
        }
        if segments.is_empty() {
            segments.push(Arc::new(Segment::create(&dir, 0)?));
        }
        fsutil::fsync_dir(&dir)?;
        let active = segments.last().cloned().ok_or_else(|| LogError::Internal("no active segment".into()))?;
        let hw = active.next_offset();
        let writer = WriterCtx::new(active, tail.map(|t| t.builder).unwrap_or_default());
        let txn = TxnState::load(&dir)?;
        let stable = txn.first_open().map_or(hw, |f| f.min(hw));
        let (signal, _) = watch::channel(Signal { stable, closed: false });
        Ok(Arc::new(Partition {
            topic: topic.to_string(),
            id,
            dir,
            config,
            state: RwLock::new(PartState { segments, hw, stable }),
            txn: Mutex::new(txn),
            signal,
            queue: Mutex::new(Queue::default()),
            idle: Condvar::new(),
            writer: Mutex::new(writer),
            maint: Mutex::new(MaintState::default()),
            trace: Mutex::new(None),
            #[cfg(test)]
            fault: Mutex::new(None),
        }))
    }

    /// Log start offset.
    pub fn start_offset(&self) -> u64 {
        self.state.read().start()
    }

    /// Last stable offset: the end of what readers see (the HW unless a transaction is open).
    pub fn end_offset(&self) -> u64 {
        self.state.read().stable
    }

    /// High watermark (next offset to be acknowledged), including open transactions.
    pub fn high_watermark(&self) -> u64 {
        self.state.read().hw
    }

    /// Makes every record appended so far durable: for topics whose appends are acknowledged
    /// before their fsync ([`Durability::None`](crate::Durability)), an `fdatasync` of the active
    /// segment (closed segments were synced when they were closed); nothing for the others.
    pub fn sync(&self) -> Result<()> {
        if self.config.durability == crate::topic::Durability::Fsync {
            return Ok(());
        }
        let active = self.state.read().segments.last().cloned();
        match active {
            Some(segment) => segment.sync(),
            None => Ok(()),
        }
    }

    /// Total committed bytes.
    pub fn size_bytes(&self) -> u64 {
        self.state.read().segments.iter().map(|s| s.size()).sum()
    }

    /// Number of segments.
    #[cfg(test)]
    pub fn segment_count(&self) -> usize {
        self.state.read().segments.len()
    }

    /// Whole committed batches from `offset`, about `max_bytes`, never blocking on new data:
    /// nothing at or after the last stable offset, nothing of an aborted transaction.
    pub fn read(&self, offset: u64, max_bytes: usize) -> Result<Fetch> {
        let aborted = {
            let t = self.txn.lock();
            t.aborted().iter().filter(|a| a.last > offset).copied().collect::<Vec<_>>()
        };
        let (hw, start, mut seg) = {
            let st = self.state.read();
            let (hw, start) = (st.stable, st.start());
            if offset < start || offset > st.hw {
                return Err(LogError::OffsetOutOfRange {
                    topic: self.topic.clone(),
                    partition: self.id,
                    offset,
                    start,
                    end: hw,
                });
            }
            if offset >= hw {
                return Ok(Fetch::empty(offset, hw, start));
            }
            let seg = st.segments.get(st.segment_index(offset)).cloned();
            let seg = seg.ok_or_else(|| LogError::Internal("partition has no segments".into()))?;
            (hw, start, seg)
        };
        let contiguous = self.contiguous();
        loop {
            if let Some((bytes, position)) = seg.fetch(offset, max_bytes, contiguous)? {
                let f = Fetch::new(bytes, offset, hw, start, seg.log_path(), position, contiguous)?;
                return Ok(f.with_aborted(aborted));
            }
            // Nothing at or after `offset` in this segment (a compacted gap): try the next one.
            let next = {
                let st = self.state.read();
                let i = st.segments.partition_point(|s| s.base() <= seg.base());
                st.segments.get(i).cloned()
            };
            match next {
                Some(n) => seg = n,
                // Every offset from `offset` to the HW was compacted away.
                None => return Ok(Fetch::empty(hw, hw, start)),
            }
        }
    }

    /// Resolves once the HW is past `offset`; fails when the partition is closed (topic deleted).
    /// Cancel-safe: dropping the future leaves nothing behind.
    pub async fn wait_for(&self, offset: u64) -> Result<()> {
        let mut rx = self.signal.subscribe();
        loop {
            {
                let s = *rx.borrow_and_update();
                if s.closed {
                    return Err(LogError::TopicDeleted(self.topic.clone()));
                }
                if s.stable > offset {
                    return Ok(());
                }
            }
            if rx.changed().await.is_err() {
                return Err(LogError::TopicDeleted(self.topic.clone()));
            }
        }
    }

    /// First offset with a timestamp `>= ts` (Kafka ListOffsets), `None` if there is none.
    pub fn offset_for_timestamp(&self, ts: i64) -> Result<Option<u64>> {
        let segments = self.state.read().segments.clone();
        for seg in segments {
            if seg.max_timestamp() < ts {
                continue;
            }
            if let Some(o) = seg.offset_for_timestamp(ts, self.contiguous())? {
                return Ok(Some(o));
            }
        }
        Ok(None)
    }

    /// True for topics whose offsets have no gaps (never compacted): lets reads and recovery
    /// check every batch's base offset, which the CRC does not cover.
    pub(crate) fn contiguous(&self) -> bool {
        self.config.cleanup_policy == CleanupPolicy::Delete
    }

    /// Publishes a new HW (and the stable offset that follows) to readers.
    pub(crate) fn advance_hw(&self, hw: u64) {
        let txn = self.txn.lock();
        self.set_stable(&txn, Some(hw));
    }

    /// Recomputes the stable offset (with a new HW if given) and wakes readers. The caller
    /// holds the `txn` lock.
    fn set_stable(&self, txn: &TxnState, hw: Option<u64>) {
        let stable = {
            let mut st = self.state.write();
            if let Some(hw) = hw {
                st.hw = hw;
            }
            st.stable = txn.first_open().map_or(st.hw, |f| f.min(st.hw)).max(st.stable.min(st.hw));
            st.stable
        };
        self.signal.send_modify(|s| s.stable = stable);
    }

    /// Opens `producer`'s transaction for `epoch` here, durably, unless it is already open.
    pub fn begin_transaction(&self, producer: i64, epoch: u64) -> Result<()> {
        let mut txn = self.txn.lock();
        if txn.open_of(producer).is_some_and(|t| t.epoch == epoch) {
            return Ok(());
        }
        let first = self.state.read().hw;
        txn.begin(&self.dir, producer, epoch, first)?;
        self.set_stable(&txn, None);
        Ok(())
    }

    /// Commits or aborts `producer`'s open transaction if its epoch is `<= epoch`.
    pub fn end_transaction(&self, producer: i64, epoch: u64, how: TxnEnd) -> Result<bool> {
        let mut txn = self.txn.lock();
        let hw = self.state.read().hw;
        let ended = txn.end(&self.dir, producer, epoch, how, hw)?;
        if ended {
            self.set_stable(&txn, None);
        }
        Ok(ended)
    }

    /// Open transactions.
    pub fn open_transactions(&self) -> Vec<OpenTxn> {
        self.txn.lock().open()
    }

    /// Stops the partition for good (topic deletion): fails queued appends, waits for the
    /// writer and maintenance to finish, wakes every waiting reader with an error.
    pub fn close(&self) {
        {
            let mut q = self.queue.lock();
            q.closed = true;
            for r in q.pending.drain(..) {
                let _ = r.ack.send(Err(LogError::TopicDeleted(self.topic.clone())));
            }
            while q.writer_active {
                self.idle.wait(&mut q);
            }
        }
        // Wait out a running retention or compaction pass; later passes see `closed`.
        self.maint.lock().closed = true;
        self.signal.send_modify(|s| s.closed = true);
    }

    /// Blocks until no writer is running (used when the log is dropped).
    pub fn wait_idle(&self) {
        let mut q = self.queue.lock();
        while q.writer_active {
            self.idle.wait(&mut q);
        }
    }
}
