//! Retention for `cleanup.policy=delete`: whole closed segments are deleted from the front, by
//! age (`retention.ms`, against the newest record timestamp in the segment, as Kafka does) and
//! by size (`retention.bytes`: delete the oldest segment while the partition stays at or above
//! the limit without it). The active segment is never deleted.

use crate::error::Result;
use crate::fsutil;
use crate::partition::Partition;
use crate::topic::CleanupPolicy;

impl Partition {
    /// Deletes expired segments; returns how many.
    pub(crate) fn enforce_retention(&self, now_ms: i64) -> Result<usize> {
        let cfg = &self.config;
        if cfg.cleanup_policy != CleanupPolicy::Delete || (cfg.retention_ms.is_none() && cfg.retention_bytes.is_none())
        {
            return Ok(0);
        }
        let m = self.maint.lock();
        if m.closed {
            return Ok(0);
        }
        let segments = self.state.read().segments.clone();
        let closed = &segments[..segments.len().saturating_sub(1)];
        let mut n = 0;
        if let Some(ms) = cfg.retention_ms {
            let cutoff = now_ms.saturating_sub(ms);
            while n < closed.len() && closed[n].max_timestamp() < cutoff {
                n += 1;
            }
        }
        if let Some(limit) = cfg.retention_bytes {
            let mut total: u64 = segments[n..].iter().map(|s| s.size()).sum();
            while n < closed.len() && total >= limit.saturating_add(closed[n].size()) {
                total -= closed[n].size();
                n += 1;
            }
        }
        self.delete_front(&closed[..n], m)
    }

    /// Deletes the closed segments that hold only records before `offset` (Kafka's
    /// DeleteRecords, at segment granularity: the log start offset moves to the first segment
    /// holding `offset` or a later one, never past the active segment); returns how many. For
    /// internal topics whose readers have committed everything before `offset`.
    pub(crate) fn delete_records(&self, offset: u64) -> Result<usize> {
        let m = self.maint.lock();
        if m.closed {
            return Ok(0);
        }
        let segments = self.state.read().segments.clone();
        let closed = &segments[..segments.len().saturating_sub(1)];
        let n = closed.iter().take_while(|s| s.next_offset() <= offset).count();
        self.delete_front(&closed[..n], m)
    }

    /// Deletes `doomed`, the first closed segments as read under `maint` (held), unless
    /// maintenance changed the front meanwhile.
    fn delete_front(
        &self,
        front: &[std::sync::Arc<crate::segment::Segment>],
        maint: parking_lot::MutexGuard<'_, crate::compaction::MaintState>,
    ) -> Result<usize> {
        let n = front.len();
        if n == 0 {
            return Ok(0);
        }
        let doomed = {
            let mut st = self.state.write();
            // Only maintenance removes segments and it holds `maint`: the front is unchanged.
            let same =
                st.segments.len() > n && st.segments[..n].iter().zip(front).all(|(a, b)| std::sync::Arc::ptr_eq(a, b));
            if !same {
                return Ok(0);
            }
            st.segments.drain(..n).collect::<Vec<_>>()
        };
        // Readers holding a segment keep reading it: its file stays open until they drop it.
        for seg in &doomed {
            seg.delete_files()?;
        }
        fsutil::fsync_dir(&self.dir)?;
        tracing::debug!(topic = %self.topic, partition = self.id, segments = n, "deleted segments from the front");
        drop(maint);
        Ok(n)
    }
}
