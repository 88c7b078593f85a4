//! A segment: one `.log` file of batches plus its sparse `.index` and `.timeindex`.
//!
//! Readers use positioned reads (`pread`) on a shared handle and see only the *committed* prefix
//! (`size`), which the partition writer advances after the bytes are durable. Closed segments
//! are immutable until compaction replaces them with a new file.
//!
//! The writer also hands the segment the buffers it has just written (up to [`RECENT_BYTES`]):
//! a reader that keeps up with the writer (a running query) is served from them, without a
//! `pread` copying the bytes back out of the page cache.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};

use crate::batch::{self, BatchHeader, BatchRecords, Check, HEADER_LEN, LOG_OVERHEAD};
use crate::error::{IoContext, LogError, Result};
use crate::fsutil;
use crate::index::{self, IndexBuilder, NewEntries, OffsetIndex, TimeIndex, INDEX_INTERVAL_BYTES};

/// Extension of segment data files.
pub(crate) const LOG_EXT: &str = "log";
/// Extension of offset index files.
pub(crate) const INDEX_EXT: &str = "index";
/// Extension of time index files.
pub(crate) const TIME_INDEX_EXT: &str = "timeindex";

/// Read size of sequential scans.
const SCAN_CHUNK: usize = 1 << 20;

/// Bytes of recently written batches a segment keeps in memory for readers at the tail.
pub(crate) const RECENT_BYTES: usize = 4 << 20;

/// `<base as 20 digits>.<ext>`, Kafka's naming.
pub(crate) fn file_name(base: u64, ext: &str) -> String {
    format!("{base:020}.{ext}")
}

/// Parses `<20 digits>.<ext>`.
pub(crate) fn parse_file_name(name: &str, ext: &str) -> Option<u64> {
    let stem = name.strip_suffix(ext)?.strip_suffix('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// One segment of a partition.
#[derive(Debug)]
pub(crate) struct Segment {
    base: u64,
    dir: PathBuf,
    log_path: PathBuf,
    file: File,
    /// Committed bytes: readers never look past this.
    size: AtomicU64,
    /// Offset after the last committed batch.
    next_offset: AtomicU64,
    /// Largest committed record timestamp (`i64::MIN` when empty).
    max_ts: AtomicI64,
    index: RwLock<OffsetIndex>,
    time_index: RwLock<TimeIndex>,
    /// The last buffers written (see the module docs).
    recent: Mutex<Recent>,
}

/// Buffers the writer wrote last, each whole batches at its file position, oldest first, all
/// committed; `bytes` is their total length.
#[derive(Debug, Default)]
struct Recent {
    buffers: VecDeque<(u64, Bytes)>,
    bytes: usize,
}

/// The writer's view of a segment recovered as the active one.
#[derive(Debug, Clone)]
pub(crate) struct TailState {
    pub builder: IndexBuilder,
}

impl Segment {
    /// Creates a new, empty segment file (not yet fsynced in its directory: the caller does that).
    pub fn create(dir: &Path, base: u64) -> Result<Segment> {
        let log_path = dir.join(file_name(base, LOG_EXT));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&log_path)
            .ctx(|| format!("creating segment {}", log_path.display()))?;
        Ok(Segment::from_parts(dir, base, file, 0, base, i64::MIN, OffsetIndex::default(), TimeIndex::default()))
    }

    /// Assembles a segment whose contents are already known.
    #[allow(clippy::too_many_arguments)]
    pub fn from_parts(
        dir: &Path,
        base: u64,
        file: File,
        size: u64,
        next_offset: u64,
        max_ts: i64,
        index: OffsetIndex,
        time_index: TimeIndex,
    ) -> Segment {
        Segment {
            base,
            dir: dir.to_path_buf(),
            log_path: dir.join(file_name(base, LOG_EXT)),
            file,
            size: AtomicU64::new(size),
            next_offset: AtomicU64::new(next_offset),
            max_ts: AtomicI64::new(max_ts),
            index: RwLock::new(index),
            time_index: RwLock::new(time_index),
            recent: Mutex::new(Recent::default()),
        }
    }

    /// First offset slot of the segment (its file name).
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Committed size in bytes.
    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    /// Offset after the last committed batch.
    pub fn next_offset(&self) -> u64 {
        self.next_offset.load(Ordering::Acquire)
    }

    /// Largest committed timestamp, `i64::MIN` if the segment is empty.
    pub fn max_timestamp(&self) -> i64 {
        self.max_ts.load(Ordering::Acquire)
    }

    /// Path of the `.log` file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    pub(crate) fn path(&self, ext: &str) -> PathBuf {
        self.dir.join(file_name(self.base, ext))
    }

    fn corrupt(&self, position: u64, reason: impl Into<String>) -> LogError {
        LogError::Corrupt { file: self.log_path.display().to_string(), position, reason: reason.into() }
    }

    /// Up to `len` bytes at `pos` (a batch boundary). From the recently written buffers if one
    /// holds `pos`: the rest of that buffer without a copy if it is `len` or 256 KiB long,
    /// else copied together with the buffers after it; either way whole batches, possibly
    /// fewer than `len` bytes. Else exactly `len` bytes from the file.
    fn read_at(&self, pos: u64, len: usize) -> Result<Bytes> {
        {
            let recent = &self.recent.lock().buffers;
            let i = recent.partition_point(|(at, _)| *at <= pos);
            if let Some(first) = i.checked_sub(1) {
                let (at, bytes) = &recent[first];
                let from = (pos - at) as usize;
                if from < bytes.len() {
                    let rest = bytes.len() - from;
                    if rest >= len.min(256 << 10) || first + 1 == recent.len() {
                        return Ok(bytes.slice(from..bytes.len().min(from + len)));
                    }
                    // Small buffers: gather whole ones while they fit (the first one always).
                    let mut out = Vec::with_capacity(len);
                    out.extend_from_slice(&bytes[from..]);
                    for (_, b) in recent.range(first + 1..) {
                        if out.len() + b.len() > len {
                            break;
                        }
                        out.extend_from_slice(b);
                    }
                    return Ok(Bytes::from(out));
                }
            }
        }
        Ok(Bytes::from(self.read_exact_at(pos, len)?))
    }

    /// Reads exactly `len` bytes at `pos` (into a buffer it does not zero first).
    fn read_exact_at(&self, pos: u64, len: usize) -> Result<Vec<u8>> {
        use std::os::fd::AsRawFd;
        let err = |e: std::io::Error| {
            LogError::io(format!("reading {} bytes at {} of {}", len, pos, self.log_path.display()), e)
        };
        let mut buf: Vec<u8> = Vec::with_capacity(len);
        let mut done = 0usize;
        while done < len {
            // SAFETY: the kernel writes at most `len - done` bytes into the buffer's spare
            // capacity from `done`; only the bytes it reports written are counted.
            let n = unsafe {
                libc::pread(
                    self.file.as_raw_fd(),
                    buf.as_mut_ptr().add(done).cast::<libc::c_void>(),
                    len - done,
                    (pos + done as u64) as libc::off_t,
                )
            };
            match n {
                0 => return Err(err(std::io::ErrorKind::UnexpectedEof.into())),
                n if n < 0 => {
                    let e = std::io::Error::last_os_error();
                    if e.kind() != std::io::ErrorKind::Interrupted {
                        return Err(err(e));
                    }
                }
                n => done += n as usize,
            }
        }
        // SAFETY: all `len` bytes were written by pread above.
        unsafe { buf.set_len(len) };
        Ok(buf)
    }

    // -----------------------------------------------------------------------------------------
    // Writer side (only the partition's single writer calls these).

    /// Writes `buf` at `pos` (not yet committed).
    pub fn write_at(&self, pos: u64, buf: &[u8]) -> Result<()> {
        self.write_parts_at(pos, &[buf])
    }

    /// Writes `parts` one after the other from `pos` (not yet committed), with as few
    /// `pwritev` calls as the kernel allows.
    pub fn write_parts_at<B: AsRef<[u8]>>(&self, pos: u64, parts: &[B]) -> Result<()> {
        use std::os::fd::AsRawFd;
        const MAX_IOV: usize = 1024;
        let err = |e: std::io::Error| LogError::io(format!("appending to {}", self.log_path.display()), e);
        let (mut part, mut skip, mut at) = (0usize, 0usize, pos);
        while part < parts.len() {
            let iov: Vec<libc::iovec> = parts[part..]
                .iter()
                .take(MAX_IOV)
                .enumerate()
                .map(|(i, p)| {
                    let p = p.as_ref();
                    let from = if i == 0 { skip } else { 0 };
                    libc::iovec { iov_base: p[from..].as_ptr() as *mut libc::c_void, iov_len: p.len() - from }
                })
                .collect();
            // SAFETY: every iovec points into a buffer of `parts`, which outlives the call; the
            // kernel only reads from them.
            let n = unsafe { libc::pwritev(self.file.as_raw_fd(), iov.as_ptr(), iov.len() as i32, at as libc::off_t) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err(e));
            }
            if n == 0 {
                return Err(err(std::io::Error::from(std::io::ErrorKind::WriteZero)));
            }
            at += n as u64;
            // Step past what was written.
            let mut left = n as usize;
            while left > 0 {
                let rest = parts[part].as_ref().len() - skip;
                if left >= rest {
                    left -= rest;
                    part += 1;
                    skip = 0;
                } else {
                    skip += left;
                    left = 0;
                }
            }
            while part < parts.len() && parts[part].as_ref().len() == skip {
                part += 1;
                skip = 0;
            }
        }
        Ok(())
    }

    /// Cuts the file back to `len` bytes (after a failed write).
    pub fn truncate(&self, len: u64) -> Result<()> {
        let mut recent = self.recent.lock();
        while recent.buffers.back().is_some_and(|(at, b)| at + b.len() as u64 > len) {
            recent.bytes -= recent.buffers.pop_back().map_or(0, |(_, b)| b.len());
        }
        drop(recent);
        self.file.set_len(len).ctx(|| format!("truncating {} to {} bytes", self.log_path.display(), len))
    }

    /// Starts writing `len` bytes from `pos` back to disk without waiting for it (Linux
    /// `sync_file_range`), so that dirty data does not pile up until the segment's closing
    /// fsync. A hint: failures are ignored (the closing fsync reports real errors).
    pub fn start_writeback(&self, pos: u64, len: u64) {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            // SAFETY: a plain syscall on our own descriptor; it reads no memory of ours.
            unsafe {
                libc::sync_file_range(
                    self.file.as_raw_fd(),
                    pos as libc::off64_t,
                    len as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = (pos, len);
    }

    /// `fdatasync` of the data file.
    pub fn sync(&self) -> Result<()> {
        self.file.sync_data().ctx(|| format!("fsyncing {}", self.log_path.display()))
    }

    /// Keeps `written` (whole batches, published, starting at byte `pos`) for readers at the
    /// tail, dropping the oldest buffers beyond [`RECENT_BYTES`].
    pub fn remember(&self, pos: u64, written: Bytes) {
        let mut recent = self.recent.lock();
        if recent.buffers.back().is_some_and(|(at, b)| at + b.len() as u64 != pos) {
            *recent = Recent::default(); // not contiguous with what is kept: start over
        }
        recent.bytes += written.len();
        recent.buffers.push_back((pos, written));
        while recent.bytes > RECENT_BYTES && recent.buffers.len() > 1 {
            recent.bytes -= recent.buffers.pop_front().map_or(0, |(_, b)| b.len());
        }
    }

    /// Drops the buffers kept for readers (the segment is no longer written).
    pub fn forget_recent(&self) {
        *self.recent.lock() = Recent::default();
    }

    /// Makes written bytes visible to readers, with the index entries they produced.
    pub fn publish(&self, size: u64, next_offset: u64, max_ts: i64, entries: &[NewEntries]) {
        if !entries.is_empty() {
            let mut idx = self.index.write();
            let mut tidx = self.time_index.write();
            for e in entries {
                index::apply(*e, &mut idx, &mut tidx);
            }
        }
        self.max_ts.fetch_max(max_ts, Ordering::AcqRel);
        self.next_offset.store(next_offset, Ordering::Release);
        self.size.store(size, Ordering::Release);
    }

    /// Writes both index files (temp → fsync → rename), adding the final time index entry.
    /// The caller fsyncs the directory.
    pub fn write_index_files(&self, builder: Option<&IndexBuilder>) -> Result<()> {
        if let Some((t, o)) = builder.and_then(IndexBuilder::final_time_entry) {
            self.time_index.write().maybe_push(t, o);
        }
        let index_bytes = self.index.read().encode();
        let time_bytes = self.time_index.read().encode();
        write_file_synced(&self.path(INDEX_EXT), &index_bytes)?;
        write_file_synced(&self.path(TIME_INDEX_EXT), &time_bytes)
    }

    /// Deletes the segment's files (log first: an orphan index is removed at the next open).
    pub fn delete_files(&self) -> Result<()> {
        fsutil::remove_file_if_exists(&self.log_path)?;
        fsutil::remove_file_if_exists(&self.path(INDEX_EXT))?;
        fsutil::remove_file_if_exists(&self.path(TIME_INDEX_EXT))
    }

    // -----------------------------------------------------------------------------------------
    // Reader side.

    /// Whole batches starting with the one holding `offset` (or the first one after it), up to
    /// about `max_bytes` (at least one batch). `None` when the segment has nothing at or after
    /// `offset`. Batches are not CRC-checked here; [`crate::Fetch`] does that.
    ///
    /// With `contiguous` (topics that are never compacted, so offsets have no gaps), the batch
    /// found must start at or before `offset` (or at the segment base): this catches a damaged
    /// `baseOffset`, which Kafka's CRC does not cover.
    pub fn fetch(&self, offset: u64, max_bytes: usize, contiguous: bool) -> Result<Option<(Bytes, u64)>> {
        let limit = self.size();
        let rel = u32::try_from(offset.saturating_sub(self.base)).unwrap_or(u32::MAX);
        let (_, start) = self.index.read().lookup(rel, limit);
        let mut pos = u64::from(start);
        let window = max_bytes.max(HEADER_LEN) + 2 * INDEX_INTERVAL_BYTES;
        loop {
            if pos >= limit {
                return Ok(None);
            }
            let want = usize::try_from(limit - pos).unwrap_or(usize::MAX).min(window);
            if want < HEADER_LEN {
                return Err(self.corrupt(pos, "committed data ends inside a batch header"));
            }
            let buf = self.read_at(pos, want)?;
            // Skip batches that end before `offset`.
            let mut i = 0usize;
            let mut found = None;
            while i + HEADER_LEN <= buf.len() {
                let h = BatchHeader::parse(&buf[i..]).map_err(|e| self.corrupt(pos + i as u64, e))?;
                if h.last_offset() >= offset {
                    found = Some(h);
                    break;
                }
                i += h.total_len();
            }
            let Some(first) = found else {
                if i == 0 {
                    return Err(self.corrupt(pos, "committed data ends inside a batch header"));
                }
                pos += i as u64;
                continue;
            };
            let first_len = first.total_len();
            let at = pos + i as u64;
            if contiguous && first.base_offset > offset.max(self.base) {
                return Err(self.corrupt(at, "batch base offset does not match its position in the log"));
            }
            if at + first_len as u64 > limit {
                return Err(self.corrupt(at, "batch extends past the committed end of the segment"));
            }
            if i + first_len > buf.len() {
                // Larger than the window: read it whole (a fetch always makes progress).
                let data = self.read_exact_at(at, first_len)?;
                return Ok(Some((Bytes::from(data), at)));
            }
            let mut end = i + first_len;
            while end + HEADER_LEN <= buf.len() {
                let Ok(h) = BatchHeader::parse(&buf[end..]) else {
                    break;
                };
                let t = h.total_len();
                if end + t > buf.len() || end + t - i > max_bytes {
                    break;
                }
                end += t;
            }
            return Ok(Some((buf.slice(i..end), at)));
        }
    }

    /// First offset whose record timestamp is `>= ts`, among committed records.
    pub fn offset_for_timestamp(&self, ts: i64, contiguous: bool) -> Result<Option<u64>> {
        if self.max_timestamp() < ts {
            return Ok(None);
        }
        let limit = self.size();
        let start_rel = self.time_index.read().lookup(ts).unwrap_or(0);
        let (rel, pos) = self.index.read().lookup(start_rel, limit);
        let mut expected = self.base + u64::from(rel);
        let mut scanner = BatchScanner::new(&self.file, u64::from(pos), limit);
        loop {
            match scanner.next().ctx(|| format!("reading {}", self.log_path.display()))? {
                Scanned::End => return Ok(None),
                Scanned::Invalid(at, reason) => return Err(self.corrupt(at, reason)),
                Scanned::Batch(at, h) => {
                    if contiguous && h.base_offset != expected {
                        return Err(self.corrupt(at, "batch base offset does not follow the previous batch"));
                    }
                    expected = h.next_offset();
                    if h.max_timestamp < ts {
                        continue;
                    }
                    if let Some(r) = BatchRecords::new(scanner.batch(), &h).find(|r| r.timestamp >= ts) {
                        return Ok(Some(r.offset));
                    }
                }
            }
        }
    }

    /// Sequential, validating scan over the committed bytes.
    pub fn scanner(&self) -> BatchScanner<'_> {
        BatchScanner::new(&self.file, 0, self.size())
    }

    /// Turns a scan failure into an error naming this segment.
    pub fn scan_error(&self, at: u64, reason: &str) -> LogError {
        self.corrupt(at, reason)
    }

    // -----------------------------------------------------------------------------------------
    // Recovery.

    /// Opens segment `base` of `dir` and checks it.
    ///
    /// The last (active) segment is scanned whole: every batch's length, CRC32C and records are
    /// validated and the file is truncated at the first invalid byte (a torn write). A closed
    /// segment loads its index files and validates only the tail after the last index entry; a
    /// missing or damaged index (or a bad tail) triggers a full scan and an index rebuild.
    /// Batches must hold offsets in `[base, limit)`; anything else is cut off as corrupt.
    ///
    /// With `contiguous` (never-compacted topics) every batch must start where the previous one
    /// ended; the last segment is always held to that, as compaction never touches it.
    pub fn recover(dir: &Path, base: u64, last: bool, limit: u64, contiguous: bool) -> Result<(Segment, TailState)> {
        let contiguous = contiguous || last;
        let log_path = dir.join(file_name(base, LOG_EXT));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&log_path)
            .ctx(|| format!("opening segment {}", log_path.display()))?;
        let file_len = file.metadata().ctx(|| format!("reading size of {}", log_path.display()))?.len();
        if !last {
            match fast_open(dir, base, &file, file_len, limit, contiguous) {
                Ok(Some(seg)) => return Ok((seg, TailState { builder: IndexBuilder::default() })),
                Ok(None) => {}
                Err(reason) => {
                    tracing::warn!(segment = %log_path.display(), "rebuilding index: {reason}");
                }
            }
        }
        let mut idx = OffsetIndex::default();
        let mut tidx = TimeIndex::default();
        let mut builder = IndexBuilder::default();
        let mut scanner = BatchScanner::new(&file, 0, file_len);
        let mut expected = base;
        let mut end_pos = 0u64;
        let mut bad: Option<(u64, String)> = None;
        loop {
            let item = scanner.next().ctx(|| format!("scanning {}", log_path.display()))?;
            match item {
                Scanned::End => break,
                Scanned::Invalid(at, reason) => {
                    bad = Some((at, reason.to_string()));
                    break;
                }
                Scanned::Batch(at, h) => {
                    // `baseOffset` is outside the CRC: contiguity is what catches a flipped
                    // offset byte.
                    if contiguous && h.base_offset != expected {
                        bad = Some((at, "batch offset does not follow the previous batch".to_string()));
                        break;
                    }
                    if let Err(reason) = offsets_ok(&h, base, expected, limit) {
                        bad = Some((at, reason.to_string()));
                        break;
                    }
                    let len = h.total_len();
                    let Ok(pos32) = u32::try_from(at) else {
                        bad = Some((at, "segment is larger than 4 GiB".to_string()));
                        break;
                    };
                    let rel = (h.base_offset - base) as u32;
                    index::apply(builder.on_batch(rel, pos32, len, h.max_timestamp), &mut idx, &mut tidx);
                    expected = h.next_offset();
                    end_pos = at + len as u64;
                }
            }
        }
        if let Some((at, reason)) = &bad {
            tracing::warn!(
                segment = %log_path.display(),
                position = at,
                removed_bytes = file_len - end_pos,
                "truncating corrupt or torn segment tail: {reason}"
            );
        }
        if end_pos != file_len {
            file.set_len(end_pos).ctx(|| format!("truncating {} to {} bytes", log_path.display(), end_pos))?;
            file.sync_all().ctx(|| format!("fsyncing {}", log_path.display()))?;
        }
        let seg = Segment::from_parts(dir, base, file, end_pos, expected, builder.max_ts(), idx, tidx);
        if last {
            // The active segment's indexes live in memory until it is closed.
            fsutil::remove_file_if_exists(&seg.path(INDEX_EXT))?;
            fsutil::remove_file_if_exists(&seg.path(TIME_INDEX_EXT))?;
        } else {
            seg.write_index_files(Some(&builder))?;
        }
        Ok((seg, TailState { builder }))
    }
}

/// Offsets of a batch at recovery: increasing, inside the segment and below `limit`.
fn offsets_ok(h: &BatchHeader, base: u64, expected: u64, limit: u64) -> Result<(), &'static str> {
    if h.base_offset < expected {
        return Err("batch offsets go backwards");
    }
    if h.last_offset() >= limit {
        return Err("batch offsets reach into the next segment");
    }
    if h.last_offset() - base > u64::from(u32::MAX) {
        return Err("batch offset is too far from the segment base");
    }
    Ok(())
}

/// Loads a closed segment from its index files, validating only the tail after the last offset
/// index entry. `Ok(None)` (no index files) and `Err` (damaged) both mean "scan it all".
fn fast_open(
    dir: &Path,
    base: u64,
    file: &File,
    file_len: u64,
    limit: u64,
    contiguous: bool,
) -> Result<Option<Segment>, String> {
    let index_path = dir.join(file_name(base, INDEX_EXT));
    let time_path = dir.join(file_name(base, TIME_INDEX_EXT));
    let (Ok(index_bytes), Ok(time_bytes)) = (fs::read(&index_path), fs::read(&time_path)) else {
        return Ok(None);
    };
    let idx = OffsetIndex::decode(&index_bytes, file_len.max(1)).map_err(|e| format!("offset index: {e}"))?;
    let tidx = TimeIndex::decode(&time_bytes, u64::MAX).map_err(|e| format!("time index: {e}"))?;
    let (last_rel, last_pos) = idx.last().unwrap_or((0, 0));
    let mut scanner = BatchScanner::new(file, u64::from(last_pos), file_len);
    let mut expected = base + u64::from(last_rel);
    let mut max_ts = tidx.last().map_or(i64::MIN, |(t, _)| t);
    let mut first = true;
    loop {
        match scanner.next().map_err(|e| format!("reading: {e}"))? {
            Scanned::End => break,
            Scanned::Invalid(at, reason) => return Err(format!("invalid batch at byte {at}: {reason}")),
            Scanned::Batch(at, h) => {
                if (first && idx.last().is_some() || contiguous) && h.base_offset != expected {
                    return Err(format!("unexpected batch base offset at byte {at}"));
                }
                first = false;
                offsets_ok(&h, base, expected, limit).map_err(|e| format!("at byte {at}: {e}"))?;
                expected = h.next_offset();
                max_ts = max_ts.max(h.max_timestamp);
            }
        }
    }
    if let Some((_, o)) = tidx.last() {
        if u64::from(o) >= expected - base {
            return Err("time index points past the segment end".into());
        }
    }
    let file = file.try_clone().map_err(|e| format!("duplicating file handle: {e}"))?;
    Ok(Some(Segment::from_parts(dir, base, file, file_len, expected, max_ts, idx, tidx)))
}

/// Writes a file durably (no directory fsync: the caller batches those).
fn write_file_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = fsutil::tmp_path(path);
    let result = (|| {
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .ctx(|| format!("creating {}", tmp.display()))?;
        f.write_all_at(bytes, 0).ctx(|| format!("writing {}", tmp.display()))?;
        f.sync_all().ctx(|| format!("fsyncing {}", tmp.display()))?;
        fs::rename(&tmp, path).ctx(|| format!("renaming {} to {}", tmp.display(), path.display()))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// What a [`BatchScanner`] found next.
#[derive(Debug)]
pub(crate) enum Scanned {
    /// A valid batch at this file position; its bytes are [`BatchScanner::batch`].
    Batch(u64, BatchHeader),
    /// Reached the end position exactly.
    End,
    /// Bytes at this position are not a valid batch (torn, corrupt, or cut short).
    Invalid(u64, &'static str),
}

/// Reads a segment file sequentially in large chunks, validating each batch (CRC included).
pub(crate) struct BatchScanner<'f> {
    file: &'f File,
    buf: Vec<u8>,
    /// File position of `buf[0]`.
    buf_start: u64,
    cursor: usize,
    last: std::ops::Range<usize>,
    end: u64,
}

impl<'f> BatchScanner<'f> {
    pub fn new(file: &'f File, start: u64, end: u64) -> Self {
        BatchScanner { file, buf: Vec::new(), buf_start: start, cursor: 0, last: 0..0, end }
    }

    /// Bytes of the batch last returned.
    pub fn batch(&self) -> &[u8] {
        &self.buf[self.last.clone()]
    }

    pub fn next(&mut self) -> std::io::Result<Scanned> {
        loop {
            let pos = self.buf_start + self.cursor as u64;
            if pos >= self.end {
                return Ok(Scanned::End);
            }
            match batch::check(&self.buf[self.cursor..]) {
                Check::Valid(h) => {
                    let len = h.total_len();
                    self.last = self.cursor..self.cursor + len;
                    self.cursor += len;
                    return Ok(Scanned::Batch(pos, h));
                }
                Check::Invalid(reason) => return Ok(Scanned::Invalid(pos, reason)),
                Check::Incomplete { need } => {
                    let need = need.unwrap_or(LOG_OVERHEAD);
                    let remaining = self.end - pos;
                    if need as u64 > remaining {
                        return Ok(Scanned::Invalid(pos, "batch is cut off at the end of the segment"));
                    }
                    // Keep the unread part, then read at least the rest of this batch.
                    self.buf.drain(..self.cursor);
                    self.buf_start = pos;
                    self.cursor = 0;
                    self.last = 0..0;
                    let have = self.buf.len();
                    let want = need.max(SCAN_CHUNK).min(usize::try_from(remaining).unwrap_or(usize::MAX));
                    self.buf.resize(want, 0);
                    self.file.read_exact_at(&mut self.buf[have..], pos + have as u64)?;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{encode, set_base_offset, ProducerMeta};
    use crate::record::Record;

    /// Writes `n` batches of `per` records (1 KiB values) and returns the segment.
    fn write_segment(dir: &Path, base: u64, n: usize, per: usize) -> Segment {
        let seg = Segment::create(dir, base).expect("create");
        let mut pos = 0u64;
        let mut next = base;
        let mut builder = IndexBuilder::default();
        for b in 0..n {
            let records: Vec<Record> = (0..per)
                .map(|i| Record::new((b * per + i) as i64 * 10, Some(vec![b as u8]), Some(vec![7u8; 1024])))
                .collect();
            let mut enc = encode(&records, &ProducerMeta::default()).expect("encode");
            set_base_offset(&mut enc.buf, next);
            seg.write_at(pos, &enc.buf).expect("write");
            let e = builder.on_batch((next - base) as u32, pos as u32, enc.buf.len(), enc.spans[0].max_timestamp);
            pos += enc.buf.len() as u64;
            next += per as u64;
            seg.publish(pos, next, enc.spans[0].max_timestamp, &[e]);
        }
        seg
    }

    /// More buffers than one `pwritev` takes, of all sizes, land in order.
    #[test]
    fn parts_are_written_in_order_past_the_iovec_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let seg = Segment::create(dir.path(), 0).expect("create");
        let parts: Vec<Vec<u8>> = (0..2500usize).map(|i| vec![(i % 251) as u8; (i * 37) % 300]).collect();
        seg.write_at(0, b"head").expect("write");
        seg.write_parts_at(4, &parts).expect("write parts");
        let want: Vec<u8> = b"head".iter().copied().chain(parts.concat()).collect();
        assert_eq!(fs::read(seg.log_path()).expect("read"), want);
    }

    #[test]
    fn file_names_are_kafka_style() {
        assert_eq!(file_name(42, LOG_EXT), "00000000000000000042.log");
        assert_eq!(parse_file_name("00000000000000000042.log", LOG_EXT), Some(42));
        assert_eq!(parse_file_name("00000000000000000042.index", LOG_EXT), None);
        assert_eq!(parse_file_name("42.log", LOG_EXT), None);
        assert_eq!(parse_file_name("0000000000000000004x.log", LOG_EXT), None);
    }

    #[test]
    fn fetch_finds_the_batch_holding_an_offset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let seg = write_segment(dir.path(), 100, 40, 3);
        assert!(seg.index.read().len() > 3, "sparse index has entries");
        for offset in [100u64, 101, 102, 103, 150, 219] {
            let (bytes, _) = seg.fetch(offset, 1, true).expect("fetch").expect("data");
            let Check::Valid(h) = batch::check(&bytes) else { panic!("valid batch") };
            assert!(h.base_offset <= offset && offset <= h.last_offset(), "offset {offset} in {h:?}");
            assert_eq!(bytes.len(), h.total_len(), "max_bytes=1 still returns one whole batch");
        }
        assert!(seg.fetch(220, 1 << 20, true).expect("fetch").is_none());
        let (bytes, _) = seg.fetch(100, 10_000, true).expect("fetch").expect("data");
        assert!(bytes.len() <= 10_000 && bytes.len() > 6000);
    }

    #[test]
    fn timestamps_are_found_via_the_time_index() {
        let dir = tempfile::tempdir().expect("tempdir");
        let seg = write_segment(dir.path(), 0, 40, 3);
        assert_eq!(seg.offset_for_timestamp(0, true).expect("ok"), Some(0));
        assert_eq!(seg.offset_for_timestamp(15, true).expect("ok"), Some(2));
        assert_eq!(seg.offset_for_timestamp(1190, true).expect("ok"), Some(119));
        assert_eq!(seg.offset_for_timestamp(1191, true).expect("ok"), None);
    }

    #[test]
    fn closed_segment_reopens_from_its_index_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let seg = write_segment(dir.path(), 0, 30, 2);
        let mut builder = IndexBuilder::default();
        // Recompute the builder state the writer would have had.
        let mut sc = seg.scanner();
        while let Ok(Scanned::Batch(at, h)) = sc.next() {
            builder.on_batch(h.base_offset as u32, at as u32, h.total_len(), h.max_timestamp);
        }
        seg.write_index_files(Some(&builder)).expect("index files");
        let (size, next, max_ts) = (seg.size(), seg.next_offset(), seg.max_timestamp());
        let idx = seg.index.read().clone();
        drop(seg);
        let (back, _) = Segment::recover(dir.path(), 0, false, u64::MAX, true).expect("recover");
        assert_eq!((back.size(), back.next_offset(), back.max_timestamp()), (size, next, max_ts));
        assert_eq!(*back.index.read(), idx);

        // A damaged index is rebuilt to the same content.
        fs::write(back.path(INDEX_EXT), b"garbage").expect("damage index");
        drop(back);
        let (again, _) = Segment::recover(dir.path(), 0, false, u64::MAX, true).expect("recover");
        assert_eq!(*again.index.read(), idx);
        assert_eq!(again.next_offset(), next);
        assert_eq!(fs::read(again.path(INDEX_EXT)).expect("rebuilt file"), idx.encode());
    }

    #[test]
    fn torn_tail_of_last_segment_is_truncated() {
        let dir = tempfile::tempdir().expect("tempdir");
        let seg = write_segment(dir.path(), 0, 5, 2);
        let good = seg.size();
        seg.write_at(good, &[1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 90, 0]).expect("torn bytes");
        drop(seg);
        let (back, _) = Segment::recover(dir.path(), 0, true, u64::MAX, true).expect("recover");
        assert_eq!(back.size(), good);
        assert_eq!(back.next_offset(), 10);
        assert_eq!(fs::metadata(back.log_path()).expect("meta").len(), good);
    }
}
