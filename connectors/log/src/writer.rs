//! The partition writer and group commit.
//!
//! Producers encode their batches (CRC included) on their own task and queue them on the
//! partition. If no writer is running, the producer starts one on Tokio's blocking pool (or a
//! plain thread outside a runtime). The writer drains *everything* queued, assigns offsets,
//! writes the group with one `pwritev` (the producers' buffers as they are: large ones are not
//! copied again; small ones are gathered into one), makes it durable with one `fdatasync` (for
//! [`Durability::Fsync`]), publishes the new high watermark and acknowledges every request of
//! the group; then it drains again, and exits when the queue is empty. Producers that arrive
//! while an fsync is in flight therefore share the next one: that is the group commit.
//!
//! Topics written without fsync ([`Durability::None`]) have their data handed to the disk as it
//! accumulates ([`WRITEBACK_BYTES`] at a time, without waiting): otherwise a segment's dirty
//! pages pile up until it closes, and its closing fsync (closed segments are always durable)
//! would stall every other fsync on the file system (ext4 commits them in one journal) for as
//! long as writing a whole segment takes.
//!
//! Failure handling: if a write or fsync fails, the file is cut back to the last acknowledged
//! position and offsets are rolled back, so the log stays exactly as it was before the group. A
//! failed fsync additionally takes the partition offline for writes (after such a failure the
//! kernel may have dropped dirty pages, so only a restart with recovery is trustworthy).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;

use crate::batch::{self, Encoded};
use crate::error::{LogError, Result};
use crate::fsutil;
use crate::index::{IndexBuilder, NewEntries};
use crate::partition::Partition;
use crate::segment::Segment;
use crate::topic::Durability;

/// Where an append landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendInfo {
    /// Partition written.
    pub partition: u32,
    /// Offset of the first record.
    pub base_offset: u64,
    /// Offset of the last record.
    pub last_offset: u64,
}

/// Failures the tests inject into the next write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) enum Fault {
    /// Half the bytes reach the file, then ENOSPC.
    DiskFullMidWrite,
    /// The write succeeds, the fsync fails with EIO.
    FsyncFails,
    /// The write succeeds, the fsync fails with ENOSPC.
    FsyncNoSpace,
}

/// One queued append.
pub(crate) struct Request {
    pub enc: Encoded,
    pub ack: oneshot::Sender<Result<AppendInfo>>,
}

/// The partition's append queue.
#[derive(Default)]
pub(crate) struct Queue {
    pub pending: Vec<Request>,
    pub writer_active: bool,
    pub closed: bool,
    /// Set after an fsync failure: appends are refused until a restart.
    pub offline: Option<String>,
}

/// State only the running writer touches.
pub(crate) struct WriterCtx {
    active: Arc<Segment>,
    /// Bytes written to the active segment (all acknowledged).
    write_pos: u64,
    next_offset: u64,
    builder: IndexBuilder,
    /// Wall-clock time of the first append into the active segment (for `segment.ms`).
    first_append_ms: Option<i64>,
    /// Position up to which writeback was started (no-fsync topics).
    writeback_pos: u64,
}

impl WriterCtx {
    /// Pretends the active segment got its first append at `ms` (tests of `segment.ms`).
    #[cfg(test)]
    pub(crate) fn backdate_first_append(&mut self, ms: i64) {
        self.first_append_ms = Some(ms);
    }

    pub fn new(active: Arc<Segment>, builder: IndexBuilder) -> WriterCtx {
        let non_empty = active.size() > 0;
        WriterCtx {
            write_pos: active.size(),
            next_offset: active.next_offset(),
            active,
            builder,
            first_append_ms: non_empty.then(now_ms),
            writeback_pos: 0,
        }
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Written bytes of a topic without fsync after which the writer starts their writeback.
pub(crate) const WRITEBACK_BYTES: u64 = 8 << 20;

/// Requests smaller than this are copied into one buffer rather than written as their own.
const SMALL_REQUEST: usize = 64 << 10;

/// The buffers of a unit, in file order.
#[derive(Default)]
struct Parts {
    bufs: Vec<Vec<u8>>,
    /// Total bytes.
    len: u64,
    /// The last buffer gathers small requests.
    gathering: bool,
}

impl Parts {
    fn push(&mut self, buf: Vec<u8>) {
        self.len += buf.len() as u64;
        let small = buf.len() < SMALL_REQUEST;
        match self.bufs.last_mut() {
            Some(last) if small && self.gathering && last.len() < crate::segment::RECENT_BYTES / 4 => {
                last.extend_from_slice(&buf)
            }
            _ => {
                self.gathering = small;
                self.bufs.push(buf);
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Requests written in one `pwritev` (all into the same segment).
struct Unit {
    start_pos: u64,
    start_offset: u64,
    saved_builder: IndexBuilder,
    entries: Vec<NewEntries>,
    max_ts: i64,
    acks: Vec<(oneshot::Sender<Result<AppendInfo>>, AppendInfo)>,
}

impl Unit {
    fn begin(ctx: &WriterCtx) -> Unit {
        Unit {
            start_pos: ctx.write_pos,
            start_offset: ctx.next_offset,
            saved_builder: ctx.builder.clone(),
            entries: Vec::new(),
            max_ts: i64::MIN,
            acks: Vec::new(),
        }
    }
}

impl Partition {
    /// Queues an encoded append; the receiver resolves once it is durable (or failed).
    pub(crate) fn submit(self: &Arc<Self>, enc: Encoded) -> Result<oneshot::Receiver<Result<AppendInfo>>> {
        let (ack, rx) = oneshot::channel();
        let start_writer = {
            let mut q = self.queue.lock();
            if q.closed {
                return Err(LogError::TopicDeleted(self.topic.clone()));
            }
            if let Some(reason) = &q.offline {
                return Err(self.offline_error(reason));
            }
            q.pending.push(Request { enc, ack });
            !std::mem::replace(&mut q.writer_active, true)
        };
        if start_writer {
            spawn_writer(self.clone());
        }
        Ok(rx)
    }

    fn offline_error(&self, reason: &str) -> LogError {
        LogError::PartitionOffline { topic: self.topic.clone(), partition: self.id, reason: reason.to_string() }
    }

    /// Drains the queue until it is empty.
    fn writer_loop(&self) {
        let mut ctx = self.writer.lock();
        loop {
            let group = {
                let mut q = self.queue.lock();
                if q.pending.is_empty() {
                    q.writer_active = false;
                    self.idle.notify_all();
                    return;
                }
                std::mem::take(&mut q.pending)
            };
            self.write_group(&mut ctx, group);
        }
    }

    /// Writes one group: rolls segments as needed, one write + one fsync per segment touched.
    fn write_group(&self, ctx: &mut WriterCtx, group: Vec<Request>) {
        let now = now_ms();
        let mut unit = Unit::begin(ctx);
        let mut parts = Parts::default();
        let mut failed: Option<LogError> = None;
        for mut req in group {
            if let Some(e) = &failed {
                let _ = req.ack.send(Err(duplicate(e)));
                continue;
            }
            let len = req.enc.buf.len() as u64;
            if self.needs_roll(ctx, parts.len, len, req.enc.offsets(), now) {
                let step = if parts.is_empty() { Ok(()) } else { self.flush(ctx, &mut unit, &mut parts) }
                    .and_then(|()| self.roll(ctx));
                unit = Unit::begin(ctx);
                if let Err(e) = step {
                    let _ = req.ack.send(Err(duplicate(&e)));
                    failed = Some(e);
                    continue;
                }
            }
            let base_offset = ctx.next_offset;
            let mut pos = ctx.write_pos + parts.len;
            for span in &req.enc.spans {
                let bytes = &mut req.enc.buf[span.start..span.start + span.len];
                batch::set_base_offset(bytes, ctx.next_offset);
                let rel = (ctx.next_offset - ctx.active.base()) as u32;
                let entries = ctx.builder.on_batch(rel, pos as u32, span.len, span.max_timestamp);
                if entries != NewEntries::default() {
                    unit.entries.push(entries);
                }
                unit.max_ts = unit.max_ts.max(span.max_timestamp);
                ctx.next_offset += u64::from(span.offsets);
                pos += span.len as u64;
            }
            parts.push(std::mem::take(&mut req.enc.buf));
            let info = AppendInfo { partition: self.id, base_offset, last_offset: ctx.next_offset - 1 };
            unit.acks.push((req.ack, info));
        }
        if failed.is_none() && !parts.is_empty() {
            // Errors were sent to the unit's producers.
            let _ = self.flush(ctx, &mut unit, &mut parts);
        }
    }

    /// Whether the next request must go to a new segment.
    fn needs_roll(&self, ctx: &WriterCtx, buffered: u64, len: u64, offsets: u64, now: i64) -> bool {
        let used = ctx.write_pos + buffered;
        if used == 0 {
            return false; // an empty segment takes any batch
        }
        let end = used + len;
        let rel_end = ctx.next_offset + offsets - ctx.active.base();
        end > self.config.segment_bytes
            || end > u64::from(u32::MAX)
            || rel_end > u64::from(u32::MAX)
            || matches!((self.config.segment_ms, ctx.first_append_ms), (Some(ms), Some(t)) if now.saturating_sub(t) >= ms)
    }

    /// Writes and (per policy) fsyncs the unit, then publishes and acknowledges it, and hands
    /// its buffers to the segment for readers at the tail. On failure the file and offsets are
    /// rolled back and every producer of the unit gets the error.
    fn flush(&self, ctx: &mut WriterCtx, unit: &mut Unit, parts: &mut Parts) -> Result<()> {
        let result = self.write_durably(ctx, unit, &parts.bufs);
        if let Err(e) = &result {
            ctx.next_offset = unit.start_offset;
            ctx.builder = unit.saved_builder.clone();
            for (ack, _) in unit.acks.drain(..) {
                let _ = ack.send(Err(duplicate(e)));
            }
        } else {
            ctx.write_pos += parts.len;
            if self.config.durability == Durability::None && ctx.write_pos - ctx.writeback_pos >= WRITEBACK_BYTES {
                ctx.active.start_writeback(ctx.writeback_pos, ctx.write_pos - ctx.writeback_pos);
                ctx.writeback_pos = ctx.write_pos;
            }
            if ctx.first_append_ms.is_none() {
                ctx.first_append_ms = Some(now_ms());
            }
            ctx.active.publish(ctx.write_pos, ctx.next_offset, unit.max_ts, &unit.entries);
            let mut pos = unit.start_pos;
            for buf in parts.bufs.drain(..) {
                let len = buf.len() as u64;
                ctx.active.remember(pos, bytes::Bytes::from(buf));
                pos += len;
            }
            self.advance_hw(ctx.next_offset);
            if let Some(trace) = self.trace.lock().as_mut() {
                trace.push(parts.len);
            }
            for (ack, info) in unit.acks.drain(..) {
                let _ = ack.send(Ok(info));
            }
        }
        *parts = Parts::default();
        *unit = Unit::begin(ctx);
        result
    }

    fn write_durably(&self, ctx: &WriterCtx, unit: &Unit, parts: &[Vec<u8>]) -> Result<()> {
        #[cfg(test)]
        let fault = self.fault.lock().take();
        #[cfg(not(test))]
        let fault: Option<Fault> = None;
        let written = match fault {
            Some(Fault::DiskFullMidWrite) => {
                let all = parts.concat();
                ctx.active.write_at(unit.start_pos, &all[..all.len() / 2]).and_then(|()| {
                    Err(LogError::io("appending (injected)", std::io::Error::from_raw_os_error(libc::ENOSPC)))
                })
            }
            _ => ctx.active.write_parts_at(unit.start_pos, parts),
        };
        if let Err(e) = written {
            if let Err(t) = ctx.active.truncate(unit.start_pos) {
                self.go_offline(&format!("{e}; then {t}"));
            }
            return Err(e);
        }
        if self.config.durability == Durability::Fsync {
            let synced = match fault {
                Some(Fault::FsyncFails) => {
                    Err(LogError::io("fsyncing (injected)", std::io::Error::from_raw_os_error(libc::EIO)))
                }
                Some(Fault::FsyncNoSpace) => {
                    Err(LogError::io("fsyncing (injected)", std::io::Error::from_raw_os_error(libc::ENOSPC)))
                }
                _ => ctx.active.sync(),
            };
            if let Err(e) = synced {
                // Cut the unacknowledged bytes back off. Earlier data was fsynced before, so it
                // is durable. No space: the file is consistent again, stay online. Any other
                // error: the kernel may have dropped dirty pages or the disk is failing, so
                // refuse writes until a restart runs recovery.
                let cut = ctx.active.truncate(unit.start_pos);
                if !e.is_disk_full() || cut.is_err() {
                    self.go_offline(&e.to_string());
                }
                return Err(e);
            }
        }
        Ok(())
    }

    fn go_offline(&self, reason: &str) {
        tracing::error!(topic = %self.topic, partition = self.id, "partition offline for writes: {reason}");
        self.queue.lock().offline = Some(reason.to_string());
    }

    /// Closes the active segment (fsync, index files) and starts a new one at the next offset.
    fn roll(&self, ctx: &mut WriterCtx) -> Result<()> {
        let old = ctx.active.clone();
        // Closed segments are always durable, whatever the topic's policy: recovery only scans
        // the last segment.
        old.sync()?;
        old.write_index_files(Some(&ctx.builder))?;
        let new = Arc::new(Segment::create(&self.dir, ctx.next_offset)?);
        if let Err(e) = fsutil::fsync_dir(&self.dir) {
            let _ = new.delete_files();
            return Err(e);
        }
        self.state.write().segments.push(new.clone());
        old.forget_recent();
        ctx.active = new;
        ctx.write_pos = 0;
        ctx.writeback_pos = 0;
        ctx.builder = IndexBuilder::default();
        ctx.first_append_ms = None;
        Ok(())
    }
}

/// A copy of an error for each producer of a failed group.
fn duplicate(e: &LogError) -> LogError {
    match e {
        LogError::DiskFull { context } => LogError::DiskFull { context: context.clone() },
        LogError::Io { context, source } => LogError::Io {
            context: context.clone(),
            source: match source.raw_os_error() {
                Some(code) => std::io::Error::from_raw_os_error(code),
                None => std::io::Error::new(source.kind(), source.to_string()),
            },
        },
        LogError::PartitionOffline { topic, partition, reason } => {
            LogError::PartitionOffline { topic: topic.clone(), partition: *partition, reason: reason.clone() }
        }
        LogError::TopicDeleted(t) => LogError::TopicDeleted(t.clone()),
        other => LogError::Internal(other.to_string()),
    }
}

/// Runs the writer loop; if it never runs (runtime shutting down) or dies, its `Drop` releases
/// the queue so producers get an error instead of hanging.
struct WriterJob {
    partition: Arc<Partition>,
    finished: bool,
}

impl WriterJob {
    fn run(mut self) {
        self.partition.writer_loop();
        self.finished = true;
    }
}

impl Drop for WriterJob {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut q = self.partition.queue.lock();
        q.writer_active = false;
        for r in q.pending.drain(..) {
            let _ = r.ack.send(Err(LogError::Internal(
                "the partition writer could not run (is the runtime shutting down?)".into(),
            )));
        }
        self.partition.idle.notify_all();
    }
}

fn spawn_writer(partition: Arc<Partition>) {
    let job = WriterJob { partition, finished: false };
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            drop(handle.spawn_blocking(move || job.run()));
        }
        Err(_) => {
            // Outside a runtime (plain threads, other executors): a short-lived thread. If it
            // cannot be spawned the closure, and with it the job, is dropped (see `Drop`).
            if let Err(e) = std::thread::Builder::new().name("rill-log-writer".into()).spawn(move || job.run()) {
                tracing::error!("cannot start a log writer thread: {e}");
            }
        }
    }
}
