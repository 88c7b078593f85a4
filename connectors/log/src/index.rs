//! Sparse per-segment indexes, as in Kafka.
//!
//! * The offset index maps a batch's base offset (relative to the segment base, `u32`) to its
//!   byte position (`u32`); one entry about every [`INDEX_INTERVAL_BYTES`] of log. File entries
//!   are 8 bytes, big-endian.
//! * The time index maps a timestamp `T` to the relative base offset of the batch where the
//!   segment's running maximum timestamp first reached `T`. Every record in earlier batches has a
//!   timestamp below `T`, so "first offset with timestamp >= t" can start scanning at the entry
//!   with the largest `T <= t`. File entries are 12 bytes (i64 timestamp, u32 offset).
//!
//! Both live in memory for every segment and are written to disk when a segment is closed (the
//! active segment's indexes are rebuilt from its log at recovery), so an index file is always
//! complete or absent; a damaged one is detected by `OffsetIndex::decode` and rebuilt.

/// Log bytes between offset index entries (Kafka's `index.interval.bytes`).
pub const INDEX_INTERVAL_BYTES: usize = 4096;

/// Sparse map from relative offset to file position.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct OffsetIndex {
    entries: Vec<(u32, u32)>,
}

impl OffsetIndex {
    /// Adds an entry; offsets and positions must increase.
    pub fn push(&mut self, rel_offset: u32, position: u32) {
        debug_assert!(self.entries.last().is_none_or(|&(o, p)| o < rel_offset && p < position));
        self.entries.push((rel_offset, position));
    }

    /// The entry with the largest offset `<= rel_offset` whose position is below `max_position`,
    /// or `(0, 0)` (the segment start).
    pub fn lookup(&self, rel_offset: u32, max_position: u64) -> (u32, u32) {
        let n = self.entries.partition_point(|&(o, _)| o <= rel_offset);
        self.entries[..n].iter().rev().find(|&&(_, p)| u64::from(p) < max_position).copied().unwrap_or((0, 0))
    }

    /// The last entry.
    pub fn last(&self) -> Option<(u32, u32)> {
        self.entries.last().copied()
    }

    /// Number of entries.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// File bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * 8);
        for &(o, p) in &self.entries {
            out.extend_from_slice(&o.to_be_bytes());
            out.extend_from_slice(&p.to_be_bytes());
        }
        out
    }

    /// Parses and validates a file: whole entries, strictly increasing, inside `log_size`.
    pub fn decode(bytes: &[u8], log_size: u64) -> Result<Self, String> {
        if !bytes.chunks_exact(8).remainder().is_empty() {
            return Err(format!("size {} is not a multiple of 8", bytes.len()));
        }
        let mut idx = OffsetIndex::default();
        for chunk in bytes.chunks_exact(8) {
            let o = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            let p = u32::from_be_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]);
            if let Some((lo, lp)) = idx.last() {
                if o <= lo || p <= lp {
                    return Err("entries are not increasing".into());
                }
            }
            if u64::from(p) >= log_size {
                return Err(format!("entry points at byte {p}, past the end of the log ({log_size})"));
            }
            idx.entries.push((o, p));
        }
        Ok(idx)
    }
}

/// Sparse map from timestamp to relative offset.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct TimeIndex {
    entries: Vec<(i64, u32)>,
}

impl TimeIndex {
    /// Adds an entry if `timestamp` is above the last one.
    pub fn maybe_push(&mut self, timestamp: i64, rel_offset: u32) {
        if self.entries.last().is_none_or(|&(t, _)| timestamp > t) {
            self.entries.push((timestamp, rel_offset));
        }
    }

    /// The relative offset to start scanning at for the first record with timestamp `>= ts`:
    /// the entry with the largest timestamp `<= ts`, or `None` for the segment start.
    pub fn lookup(&self, ts: i64) -> Option<u32> {
        let n = self.entries.partition_point(|&(t, _)| t <= ts);
        n.checked_sub(1).map(|i| self.entries[i].1)
    }

    /// The last entry.
    pub fn last(&self) -> Option<(i64, u32)> {
        self.entries.last().copied()
    }

    /// Entries, in order.
    #[cfg(test)]
    pub fn entries(&self) -> &[(i64, u32)] {
        &self.entries
    }

    /// File bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * 12);
        for &(t, o) in &self.entries {
            out.extend_from_slice(&t.to_be_bytes());
            out.extend_from_slice(&o.to_be_bytes());
        }
        out
    }

    /// Parses and validates a file: whole entries, timestamps increasing, offsets non-decreasing
    /// and below `offset_span` (the segment's next offset minus its base).
    pub fn decode(bytes: &[u8], offset_span: u64) -> Result<Self, String> {
        if !bytes.chunks_exact(12).remainder().is_empty() {
            return Err(format!("size {} is not a multiple of 12", bytes.len()));
        }
        let mut idx = TimeIndex::default();
        for chunk in bytes.chunks_exact(12) {
            let mut t = [0u8; 8];
            t.copy_from_slice(&chunk[..8]);
            let t = i64::from_be_bytes(t);
            let o = u32::from_be_bytes([chunk[8], chunk[9], chunk[10], chunk[11]]);
            if let Some((lt, lo)) = idx.last() {
                if t <= lt || o < lo {
                    return Err("entries are not increasing".into());
                }
            }
            if u64::from(o) >= offset_span {
                return Err(format!("entry points at relative offset {o}, past the segment end"));
            }
            idx.entries.push((t, o));
        }
        Ok(idx)
    }
}

/// Decides index entries while batches are appended (by the writer, recovery and compaction
/// alike, so a rebuilt index equals the one written live).
#[derive(Clone, Debug)]
pub(crate) struct IndexBuilder {
    bytes_since_entry: usize,
    max_ts: i64,
    rel_of_max: u32,
}

impl Default for IndexBuilder {
    fn default() -> Self {
        IndexBuilder { bytes_since_entry: 0, max_ts: i64::MIN, rel_of_max: 0 }
    }
}

/// Index entries produced by one batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct NewEntries {
    pub offset: Option<(u32, u32)>,
    pub time: Option<(i64, u32)>,
}

impl IndexBuilder {
    /// Accounts for a batch at `position` with relative base offset `rel`.
    pub fn on_batch(&mut self, rel: u32, position: u32, len: usize, max_ts: i64) -> NewEntries {
        let mut out = NewEntries::default();
        if max_ts > self.max_ts {
            self.max_ts = max_ts;
            self.rel_of_max = rel;
        }
        if self.bytes_since_entry >= INDEX_INTERVAL_BYTES {
            out.offset = Some((rel, position));
            out.time = Some((self.max_ts, self.rel_of_max));
            self.bytes_since_entry = 0;
        }
        self.bytes_since_entry += len;
        out
    }

    /// The final time index entry written when a segment closes.
    pub fn final_time_entry(&self) -> Option<(i64, u32)> {
        (self.max_ts != i64::MIN).then_some((self.max_ts, self.rel_of_max))
    }

    /// Largest timestamp seen.
    pub fn max_ts(&self) -> i64 {
        self.max_ts
    }
}

/// Applies builder output to a pair of indexes.
pub(crate) fn apply(entries: NewEntries, index: &mut OffsetIndex, time_index: &mut TimeIndex) {
    if let Some((o, p)) = entries.offset {
        index.push(o, p);
    }
    if let Some((t, o)) = entries.time {
        time_index.maybe_push(t, o);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn offset_index_lookup_and_file_roundtrip() {
        let mut idx = OffsetIndex::default();
        idx.push(10, 4100);
        idx.push(20, 8300);
        idx.push(35, 12_500);
        assert_eq!(idx.lookup(0, u64::MAX), (0, 0));
        assert_eq!(idx.lookup(9, u64::MAX), (0, 0));
        assert_eq!(idx.lookup(10, u64::MAX), (10, 4100));
        assert_eq!(idx.lookup(34, u64::MAX), (20, 8300));
        assert_eq!(idx.lookup(1000, u64::MAX), (35, 12_500));
        // Entries at or past the visible size are skipped.
        assert_eq!(idx.lookup(1000, 12_500), (20, 8300));
        let back = OffsetIndex::decode(&idx.encode(), 20_000).expect("valid");
        assert_eq!(back, idx);
    }

    #[test]
    fn damaged_index_files_are_rejected() {
        let mut idx = OffsetIndex::default();
        idx.push(10, 4100);
        idx.push(20, 8300);
        let bytes = idx.encode();
        assert!(OffsetIndex::decode(&bytes[..11], 20_000).is_err(), "torn entry");
        assert!(OffsetIndex::decode(&bytes, 8000).is_err(), "points past the log");
        let mut swapped = bytes[8..].to_vec();
        swapped.extend_from_slice(&bytes[..8]);
        assert!(OffsetIndex::decode(&swapped, 20_000).is_err(), "not increasing");
        assert!(OffsetIndex::decode(&[0u8; 16], 20_000).is_err(), "zero-filled");
        let mut t = TimeIndex::default();
        t.maybe_push(5, 0);
        t.maybe_push(9, 3);
        assert_eq!(TimeIndex::decode(&t.encode(), 4).expect("valid"), t);
        assert!(TimeIndex::decode(&t.encode(), 3).is_err(), "offset past the segment");
        assert!(TimeIndex::decode(&t.encode()[..13], 4).is_err());
    }

    #[test]
    fn time_index_lookup() {
        let mut t = TimeIndex::default();
        t.maybe_push(100, 0);
        t.maybe_push(90, 5); // not increasing: ignored
        t.maybe_push(200, 10);
        assert_eq!(t.entries(), &[(100, 0), (200, 10)]);
        assert_eq!(t.lookup(50), None);
        assert_eq!(t.lookup(100), Some(0));
        assert_eq!(t.lookup(199), Some(0));
        assert_eq!(t.lookup(500), Some(10));
    }

    /// Batches of a segment: (record count, timestamps, byte length).
    fn segment_model() -> impl Strategy<Value = Vec<(Vec<i64>, usize)>> {
        prop::collection::vec((prop::collection::vec(0i64..1000, 1..5), 100usize..3000), 1..120)
    }

    proptest! {
        /// Index lookups agree with a linear scan over every batch.
        #[test]
        fn lookups_match_a_linear_scan(batches in segment_model(), probes in prop::collection::vec(0i64..1100, 20)) {
            let mut b = IndexBuilder::default();
            let mut idx = OffsetIndex::default();
            let mut tidx = TimeIndex::default();
            // (rel base, position, timestamps)
            let mut layout = Vec::new();
            let (mut rel, mut pos) = (0u32, 0u32);
            for (ts, len) in &batches {
                let max = *ts.iter().max().unwrap_or(&0);
                apply(b.on_batch(rel, pos, *len, max), &mut idx, &mut tidx);
                layout.push((rel, pos, ts.clone()));
                rel += ts.len() as u32;
                pos += *len as u32;
            }
            if let Some((t, o)) = b.final_time_entry() {
                tidx.maybe_push(t, o);
            }
            // Offset lookups: the entry is at or before the batch holding the offset.
            for target in 0..rel {
                let (o, p) = idx.lookup(target, u64::MAX);
                let holder = layout.iter().rev().find(|(r, _, _)| *r <= target).map(|l| l.1).unwrap_or(0);
                prop_assert!(o <= target);
                prop_assert!(p <= holder);
                prop_assert!(layout.iter().any(|(r, q, _)| *r == o && *q == p) || (o, p) == (0, 0));
            }
            // Time lookups: scanning from the entry finds the same first offset as a full scan.
            for ts in probes {
                let expect = layout.iter()
                    .flat_map(|(r, _, t)| t.iter().enumerate().map(move |(i, x)| (r + i as u32, *x)))
                    .find(|&(_, x)| x >= ts).map(|(o, _)| o);
                let start = tidx.lookup(ts).unwrap_or(0);
                let got = layout.iter()
                    .flat_map(|(r, _, t)| t.iter().enumerate().map(move |(i, x)| (r + i as u32, *x)))
                    .filter(|&(o, _)| o >= start)
                    .find(|&(_, x)| x >= ts).map(|(o, _)| o);
                prop_assert_eq!(got, expect);
            }
            // Files round-trip.
            prop_assert_eq!(OffsetIndex::decode(&idx.encode(), u64::from(pos) + 1).ok(), Some(idx.clone()));
            prop_assert_eq!(TimeIndex::decode(&tidx.encode(), u64::from(rel)).ok(), Some(tidx.clone()));
        }
    }
}
