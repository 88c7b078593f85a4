//! Log compaction (`cleanup.policy=compact`): keep the newest record per key.
//!
//! A pass over a partition:
//! 1. builds a map *key → offset of its newest record* over the closed segments (the active
//!    segment is never touched, as in Kafka; a key overwritten only in the active segment is
//!    cleaned once that segment rolls);
//! 2. groups consecutive closed segments whose total size fits `segment.bytes`, and rewrites
//!    each group that changes into one new segment named after the group's first base offset.
//!    A record survives if it is the newest for its key. A surviving tombstone gets a delete
//!    horizon (`now + delete.retention.ms`, stored in its batch as Kafka's KIP-534 does) and is
//!    dropped by the first pass after that horizon. Offsets never change: batches keep their
//!    base offset and offset span, and readers skip the gaps.
//!
//! Crash safety: the new segment is written as `<base>.{log,index,timeindex}.cleaned` and
//! fsynced; then the manifest `<base>.compact.json` (listing the segments replaced) is written
//! atomically: that rename is the commit point. Applying the swap (deleting the replaced files,
//! renaming the cleaned ones into place) is idempotent, and a partition open finishes any
//! committed swap before loading segments and deletes uncommitted `.cleaned` files.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::batch::{self, BatchHeader, BatchRecords};
use crate::error::{IoContext, LogError, Result};
use crate::fsutil;
use crate::index::{self, IndexBuilder, OffsetIndex, TimeIndex};
use crate::partition::Partition;
use crate::record::RecordRef;
use crate::segment::{self, Scanned, Segment, INDEX_EXT, LOG_EXT, TIME_INDEX_EXT};
use crate::topic::CleanupPolicy;
use crate::txn::{is_aborted, Aborted};

/// Suffix of a compacted segment's files before the swap.
pub(crate) const CLEANED_SUFFIX: &str = ".cleaned";
/// Extension of swap manifests.
const MANIFEST_EXT: &str = "compact.json";

/// Compaction progress of a partition (in memory; a restart makes the next pass do full work).
#[derive(Debug, Default)]
pub(crate) struct MaintState {
    /// Set when the partition is closed: maintenance stops.
    pub closed: bool,
    /// End offset of the closed segments at the last complete pass.
    clean_end: Option<u64>,
    /// Earliest delete horizon among retained tombstones.
    next_horizon: Option<i64>,
    /// A swap failed after its commit point; the next open finishes it. No more passes until then.
    broken: Option<String>,
}

/// What a compaction pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompactStats {
    /// Segments rewritten (or removed) by the pass.
    pub segments_rewritten: usize,
    /// Records dropped (superseded values and expired tombstones).
    pub records_removed: u64,
    /// Bytes before and after, over the rewritten segments.
    pub bytes_before: u64,
    /// See `bytes_before`.
    pub bytes_after: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    /// Base offsets of the segments the cleaned segment replaces.
    replaces: Vec<u64>,
    /// False when the group compacted to nothing: the segments are only deleted.
    output: bool,
}

fn cleaned_path(dir: &Path, base: u64, ext: &str) -> std::path::PathBuf {
    dir.join(format!("{}{CLEANED_SUFFIX}", segment::file_name(base, ext)))
}

/// Finishes every committed swap in `dir` (called by a partition open before loading segments).
pub(crate) fn recover_swaps(dir: &Path) -> Result<()> {
    for (name, path) in fsutil::list_dir(dir)? {
        let Some(base) = segment::parse_file_name(&name, MANIFEST_EXT) else {
            continue;
        };
        let bytes = std::fs::read(&path).ctx(|| format!("reading {}", path.display()))?;
        let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| LogError::Corrupt {
            file: path.display().to_string(),
            position: 0,
            reason: format!("compaction manifest is not valid ({e}); restore it or remove the partition"),
        })?;
        tracing::info!(dir = %dir.display(), base, "finishing an interrupted compaction swap");
        apply_swap(dir, base, &manifest)?;
        fsutil::remove_file_if_exists(&path)?;
        fsutil::fsync_dir(dir)?;
    }
    Ok(())
}

/// Deletes the replaced segments' files and renames the cleaned files into place. Idempotent.
fn apply_swap(dir: &Path, base: u64, m: &Manifest) -> Result<()> {
    for &b in &m.replaces {
        if m.output && b == base {
            continue; // replaced by the renames below
        }
        for ext in [LOG_EXT, INDEX_EXT, TIME_INDEX_EXT] {
            fsutil::remove_file_if_exists(&dir.join(segment::file_name(b, ext)))?;
        }
    }
    if m.output {
        for ext in [LOG_EXT, INDEX_EXT, TIME_INDEX_EXT] {
            fsutil::rename_if_exists(&cleaned_path(dir, base, ext), &dir.join(segment::file_name(base, ext)))?;
        }
    }
    fsutil::fsync_dir(dir)
}

/// Newest offset per key over `segments`.
fn key_map(segments: &[Arc<Segment>], aborted: &[Aborted]) -> Result<HashMap<Vec<u8>, u64>> {
    let mut map: HashMap<Vec<u8>, u64> = HashMap::new();
    for seg in segments {
        let mut scanner = seg.scanner();
        loop {
            match scanner.next().ctx(|| format!("reading {}", seg.log_path().display()))? {
                Scanned::End => break,
                Scanned::Invalid(at, reason) => return Err(seg.scan_error(at, reason)),
                Scanned::Batch(_, h) if is_aborted(aborted, h.producer_id, h.base_offset) => {}
                Scanned::Batch(_, h) => {
                    for r in BatchRecords::new(scanner.batch(), &h) {
                        let Some(k) = r.key else { continue };
                        match map.get_mut(k) {
                            Some(o) => *o = r.offset,
                            None => {
                                map.insert(k.to_vec(), r.offset);
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(map)
}

/// What happens to one batch.
enum Decision<'a> {
    Unchanged,
    Drop,
    Rewrite { keep: Vec<RecordRef<'a>>, horizon: Option<i64> },
}

struct Rules<'m> {
    map: &'m HashMap<Vec<u8>, u64>,
    /// Aborted transactions: their batches are dropped.
    aborted: &'m [Aborted],
    now: i64,
    delete_retention_ms: i64,
}

impl Rules<'_> {
    /// Decides a batch; returns the decision, records removed and the horizon of kept tombstones.
    fn decide<'a>(&self, bytes: &'a [u8], h: &BatchHeader) -> (Decision<'a>, u64, Option<i64>) {
        if is_aborted(self.aborted, h.producer_id, h.base_offset) {
            return (Decision::Drop, u64::from(h.record_count), None);
        }
        let existing = h.delete_horizon();
        let horizon = existing.unwrap_or_else(|| self.now.saturating_add(self.delete_retention_ms));
        let mut keep = Vec::new();
        let mut removed = 0u64;
        let mut tombstones = false;
        for r in BatchRecords::new(bytes, h) {
            let newest = r.key.is_none_or(|k| self.map.get(k).is_none_or(|&o| o == r.offset));
            if !newest || (r.value.is_none() && horizon <= self.now) {
                removed += 1;
                continue;
            }
            tombstones |= r.value.is_none();
            keep.push(r);
        }
        let kept_horizon = tombstones.then_some(horizon);
        let decision = if keep.is_empty() {
            Decision::Drop
        } else if removed == 0 && tombstones == existing.is_some() {
            Decision::Unchanged
        } else {
            Decision::Rewrite { keep, horizon: kept_horizon }
        };
        (decision, removed, kept_horizon)
    }
}

/// Consecutive segments whose sizes add up to at most `max_bytes` (and whose offsets fit a
/// 32-bit relative offset) become one group.
fn groups(segments: &[Arc<Segment>], max_bytes: u64) -> Vec<Vec<Arc<Segment>>> {
    let mut out: Vec<Vec<Arc<Segment>>> = Vec::new();
    let mut size = 0u64;
    for seg in segments {
        let fits = out.last().and_then(|g| g.first()).is_some_and(|first| {
            size + seg.size() <= max_bytes && seg.next_offset() - first.base() <= u64::from(u32::MAX)
        });
        match out.last_mut() {
            Some(g) if fits => {
                g.push(seg.clone());
                size += seg.size();
            }
            _ => {
                out.push(vec![seg.clone()]);
                size = seg.size();
            }
        }
    }
    out
}

impl Partition {
    /// One compaction pass (see the module docs). A no-op for `delete` topics, for partitions
    /// without closed segments, and when nothing changed since the last pass.
    pub(crate) fn compact(&self, now_ms: i64) -> Result<CompactStats> {
        let mut stats = CompactStats::default();
        if self.config.cleanup_policy != CleanupPolicy::Compact {
            return Ok(stats);
        }
        let mut m = self.maint.lock();
        if m.closed || m.broken.is_some() {
            return Ok(stats);
        }
        let (segments, stable) = {
            let st = self.state.read();
            (st.segments.clone(), st.stable)
        };
        // Closed segments wholly below the stable offset: open transactions are not compacted.
        let mut n_closed = segments.len().saturating_sub(1);
        while n_closed > 0 && segments[n_closed - 1].next_offset() > stable {
            n_closed -= 1;
        }
        let closed = &segments[..n_closed];
        let aborted = self.txn.lock().aborted().to_vec();
        let Some(last_closed) = closed.last() else {
            return Ok(stats);
        };
        let closed_end = last_closed.next_offset();
        let horizon_due = m.next_horizon.is_some_and(|h| h <= now_ms);
        if m.clean_end == Some(closed_end) && !horizon_due {
            return Ok(stats);
        }
        let map = key_map(closed, &aborted)?;
        let rules =
            Rules { map: &map, aborted: &aborted, now: now_ms, delete_retention_ms: self.config.delete_retention_ms };
        let mut next_horizon: Option<i64> = None;
        for group in groups(closed, self.config.segment_bytes) {
            let (changed, removed, horizon) = self.plan_group(&group, &rules)?;
            next_horizon = min_opt(next_horizon, horizon);
            if !changed && group.len() == 1 {
                continue;
            }
            stats.segments_rewritten += group.len();
            stats.records_removed += removed;
            stats.bytes_before += group.iter().map(|s| s.size()).sum::<u64>();
            match self.rewrite_group(&group, &rules) {
                Ok(after) => stats.bytes_after += after,
                Err(SwapError::BeforeCommit(e)) => return Err(e),
                Err(SwapError::AfterCommit(e)) => {
                    m.broken = Some(e.to_string());
                    return Err(e);
                }
            }
        }
        m.clean_end = Some(closed_end);
        m.next_horizon = next_horizon;
        if stats.segments_rewritten > 0 {
            tracing::debug!(topic = %self.topic, partition = self.id, ?stats, "compacted");
        }
        Ok(stats)
    }

    /// Reads a group without writing: does anything change?
    fn plan_group(&self, group: &[Arc<Segment>], rules: &Rules<'_>) -> Result<(bool, u64, Option<i64>)> {
        let (mut changed, mut removed, mut horizon) = (false, 0u64, None);
        for seg in group {
            let mut scanner = seg.scanner();
            loop {
                match scanner.next().ctx(|| format!("reading {}", seg.log_path().display()))? {
                    Scanned::End => break,
                    Scanned::Invalid(at, reason) => return Err(seg.scan_error(at, reason)),
                    Scanned::Batch(_, h) => {
                        let (d, r, hz) = rules.decide(scanner.batch(), &h);
                        changed |= !matches!(d, Decision::Unchanged);
                        removed += r;
                        horizon = min_opt(horizon, hz);
                    }
                }
            }
        }
        Ok((changed, removed, horizon))
    }

    /// Writes the cleaned segment for `group`, commits the swap and installs it. Returns the
    /// new size.
    fn rewrite_group(&self, group: &[Arc<Segment>], rules: &Rules<'_>) -> Result<u64, SwapError> {
        let base = group
            .first()
            .map(|s| s.base())
            .ok_or_else(|| SwapError::BeforeCommit(LogError::Internal("empty compaction group".into())))?;
        let written = self.write_cleaned(group, base, rules);
        let cleaned = match written {
            Ok(c) => c,
            Err(e) => {
                for ext in [LOG_EXT, INDEX_EXT, TIME_INDEX_EXT] {
                    let _ = fsutil::remove_file_if_exists(&cleaned_path(&self.dir, base, ext));
                }
                return Err(SwapError::BeforeCommit(e));
            }
        };
        let manifest = Manifest { replaces: group.iter().map(|s| s.base()).collect(), output: cleaned.is_some() };
        let manifest_path = self.dir.join(segment::file_name(base, MANIFEST_EXT));
        let bytes = serde_json::to_vec(&manifest)
            .map_err(|e| SwapError::BeforeCommit(LogError::Internal(format!("serializing manifest: {e}"))))?;
        fsutil::write_atomic(&manifest_path, &bytes).map_err(SwapError::BeforeCommit)?;
        // Committed: from here on a crash finishes the swap at the next open.
        apply_swap(&self.dir, base, &manifest).map_err(SwapError::AfterCommit)?;
        fsutil::remove_file_if_exists(&manifest_path).map_err(SwapError::AfterCommit)?;
        fsutil::fsync_dir(&self.dir).map_err(SwapError::AfterCommit)?;
        let size = cleaned.as_ref().map_or(0, |s| s.size());
        let mut st = self.state.write();
        let Some(i) = st.segments.iter().position(|s| s.base() == base) else {
            return Err(SwapError::AfterCommit(LogError::Internal("compacted segment vanished".into())));
        };
        let end = i + group.len();
        let same = st.segments.get(i..end).is_some_and(|s| s.iter().zip(group).all(|(a, b)| Arc::ptr_eq(a, b)));
        if !same {
            return Err(SwapError::AfterCommit(LogError::Internal("segments changed during compaction".into())));
        }
        st.segments.splice(i..end, cleaned.map(Arc::new));
        Ok(size)
    }

    /// Writes `<base>.*.cleaned` for the group (fsynced); `None` if nothing survives.
    fn write_cleaned(&self, group: &[Arc<Segment>], base: u64, rules: &Rules<'_>) -> Result<Option<Segment>> {
        let log_path = cleaned_path(&self.dir, base, LOG_EXT);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&log_path)
            .ctx(|| format!("creating {}", log_path.display()))?;
        let (mut idx, mut tidx) = (OffsetIndex::default(), TimeIndex::default());
        let mut builder = IndexBuilder::default();
        let mut out: Vec<u8> = Vec::with_capacity(1 << 20);
        let mut flushed = 0u64;
        let mut next_offset = base;
        for seg in group {
            let mut scanner = seg.scanner();
            loop {
                let h = match scanner.next().ctx(|| format!("reading {}", seg.log_path().display()))? {
                    Scanned::End => break,
                    Scanned::Invalid(at, reason) => return Err(seg.scan_error(at, reason)),
                    Scanned::Batch(_, h) => h,
                };
                let bytes = scanner.batch();
                let start = out.len();
                match rules.decide(bytes, &h).0 {
                    Decision::Drop => continue,
                    Decision::Unchanged => out.extend_from_slice(bytes),
                    Decision::Rewrite { keep, horizon } => batch::write_filtered(&mut out, &h, &keep, horizon),
                }
                let len = out.len() - start;
                let pos = flushed + start as u64;
                let max_ts = BatchHeader::parse(&out[start..]).map_or(h.max_timestamp, |nh| nh.max_timestamp);
                let rel = (h.base_offset - base) as u32;
                index::apply(builder.on_batch(rel, pos as u32, len, max_ts), &mut idx, &mut tidx);
                next_offset = h.next_offset();
                if out.len() >= 1 << 20 {
                    file.write_all_at(&out, flushed).ctx(|| format!("writing {}", log_path.display()))?;
                    flushed += out.len() as u64;
                    out.clear();
                }
            }
        }
        file.write_all_at(&out, flushed).ctx(|| format!("writing {}", log_path.display()))?;
        let size = flushed + out.len() as u64;
        if size == 0 {
            drop(file);
            fsutil::remove_file_if_exists(&log_path)?;
            return Ok(None);
        }
        file.sync_all().ctx(|| format!("fsyncing {}", log_path.display()))?;
        if let Some((t, o)) = builder.final_time_entry() {
            tidx.maybe_push(t, o);
        }
        write_synced(&cleaned_path(&self.dir, base, INDEX_EXT), &idx.encode())?;
        write_synced(&cleaned_path(&self.dir, base, TIME_INDEX_EXT), &tidx.encode())?;
        let seg = Segment::from_parts(&self.dir, base, file, size, next_offset, builder.max_ts(), idx, tidx);
        Ok(Some(seg))
    }
}

enum SwapError {
    BeforeCommit(LogError),
    AfterCommit(LogError),
}

fn min_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .ctx(|| format!("creating {}", path.display()))?;
    f.write_all_at(bytes, 0).ctx(|| format!("writing {}", path.display()))?;
    f.sync_all().ctx(|| format!("fsyncing {}", path.display()))
}
