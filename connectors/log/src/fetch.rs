//! The result of a read: whole, CRC-checked batches, iterated record by record without copies.

use bytes::Bytes;

use crate::batch::{self, BatchHeader, BatchRecords, Check};
use crate::error::{LogError, Result};
use crate::record::RecordRef;
use crate::txn::{is_aborted, Aborted};

/// Whole record batches read from one partition.
///
/// Holds the raw Kafka v2 batch bytes (one `Bytes`, shared with nothing else) and iterates them
/// zero-copy: [`Fetch::records`] yields [`RecordRef`]s borrowing this buffer. Every batch passed
/// its CRC32C and layout check when the fetch was built, so corrupt bytes are never served.
/// Use `fetch.bytes().slice_ref(r.value.unwrap())` to keep a value as an owned `Bytes`.
#[derive(Clone, Debug)]
pub struct Fetch {
    data: Bytes,
    min_offset: u64,
    next_offset: u64,
    high_watermark: u64,
    log_start: u64,
    /// Aborted transactions that may overlap this fetch: their batches are skipped.
    aborted: Vec<Aborted>,
}

impl Fetch {
    /// A fetch with no data at `offset`.
    pub(crate) fn empty(offset: u64, high_watermark: u64, log_start: u64) -> Fetch {
        Fetch {
            data: Bytes::new(),
            min_offset: offset,
            next_offset: offset,
            high_watermark,
            log_start,
            aborted: Vec::new(),
        }
    }

    /// Validates `data` (batches read at byte `position` of `file`) and builds a fetch of the
    /// valid prefix, ending before the first batch at or after `high_watermark` (the stable
    /// offset: later batches belong to open transactions). Fails only if the first batch is
    /// corrupt. With `contiguous`, each batch must start exactly where the previous one ended.
    pub(crate) fn new(
        data: Bytes,
        min_offset: u64,
        high_watermark: u64,
        log_start: u64,
        file: &std::path::Path,
        position: u64,
        contiguous: bool,
    ) -> Result<Fetch> {
        let mut pos = 0usize;
        let mut next_offset = min_offset;
        while pos < data.len() {
            match batch::check(&data[pos..]) {
                Check::Valid(h) if h.base_offset >= high_watermark => break,
                Check::Valid(h)
                    if pos == 0 || h.base_offset == next_offset || (!contiguous && h.base_offset > next_offset) =>
                {
                    next_offset = h.next_offset().max(next_offset);
                    pos += h.total_len();
                }
                other => {
                    let reason = match other {
                        Check::Invalid(r) => r,
                        Check::Incomplete { .. } => "batch is cut off",
                        Check::Valid(_) => "batch offsets do not follow the previous batch",
                    };
                    if pos == 0 {
                        return Err(LogError::Corrupt {
                            file: file.display().to_string(),
                            position,
                            reason: reason.to_string(),
                        });
                    }
                    // Serve the valid prefix; the next read starts at the bad batch and fails.
                    tracing::error!(file = %file.display(), position = position + pos as u64, "corrupt batch: {reason}");
                    break;
                }
            }
        }
        Ok(Fetch {
            data: data.slice(..pos),
            min_offset,
            next_offset,
            // Data acknowledged after the caller sampled the HW may be included: never report
            // an HW below what was returned.
            high_watermark: high_watermark.max(next_offset),
            log_start,
            aborted: Vec::new(),
        })
    }

    /// Skips the batches of these aborted transactions.
    pub(crate) fn with_aborted(mut self, aborted: Vec<Aborted>) -> Fetch {
        self.aborted = aborted;
        self
    }

    /// Records at or after the requested offset, in offset order.
    pub fn records(&self) -> Records<'_> {
        Records { data: &self.data, pos: 0, current: None, min_offset: self.min_offset, aborted: &self.aborted }
    }

    /// The raw batches with their headers (for a Kafka-wire listener: no re-encoding needed).
    pub fn batches(&self) -> Batches<'_> {
        Batches { data: &self.data, pos: 0, aborted: &self.aborted }
    }

    /// Where the next read should start: after the last batch returned (or the requested offset
    /// if none was). Compacted logs have gaps; this skips them.
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// The partition's high watermark (end offset) when the read was made.
    pub fn high_watermark(&self) -> u64 {
        self.high_watermark
    }

    /// The partition's log start offset when the read was made.
    pub fn log_start_offset(&self) -> u64 {
        self.log_start
    }

    /// The raw batch bytes.
    pub fn bytes(&self) -> &Bytes {
        &self.data
    }

    /// True when no batch was returned.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// Iterator over the records of a [`Fetch`].
pub struct Records<'a> {
    data: &'a [u8],
    pos: usize,
    current: Option<BatchRecords<'a>>,
    min_offset: u64,
    aborted: &'a [Aborted],
}

impl<'a> Iterator for Records<'a> {
    type Item = RecordRef<'a>;

    fn next(&mut self) -> Option<RecordRef<'a>> {
        loop {
            if let Some(batch) = &mut self.current {
                for r in batch.by_ref() {
                    if r.offset >= self.min_offset {
                        return Some(r);
                    }
                }
                self.current = None;
            }
            let rest = self.data.get(self.pos..).filter(|r| !r.is_empty())?;
            let h = BatchHeader::parse(rest).ok()?;
            let len = h.total_len();
            let bytes = rest.get(..len)?;
            self.pos += len;
            if h.last_offset() >= self.min_offset && !is_aborted(self.aborted, h.producer_id, h.base_offset) {
                self.current = Some(BatchRecords::new(bytes, &h));
            }
        }
    }
}

/// One raw batch of a [`Fetch`].
#[derive(Clone, Copy, Debug)]
pub struct BatchRef<'a> {
    /// The parsed header.
    pub header: BatchHeader,
    /// The whole batch, exactly as stored (Kafka v2 layout).
    pub bytes: &'a [u8],
}

/// Iterator over the raw batches of a [`Fetch`].
pub struct Batches<'a> {
    data: &'a [u8],
    pos: usize,
    aborted: &'a [Aborted],
}

impl<'a> Iterator for Batches<'a> {
    type Item = BatchRef<'a>;

    fn next(&mut self) -> Option<BatchRef<'a>> {
        loop {
            let rest = self.data.get(self.pos..).filter(|r| !r.is_empty())?;
            let header = BatchHeader::parse(rest).ok()?;
            let bytes = rest.get(..header.total_len())?;
            self.pos += bytes.len();
            if !is_aborted(self.aborted, header.producer_id, header.base_offset) {
                return Some(BatchRef { header, bytes });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{encode, set_base_offset, ProducerMeta};
    use crate::record::Record;
    use std::path::Path;

    fn batches(spec: &[(u64, usize)]) -> Vec<u8> {
        let mut out = Vec::new();
        for &(base, n) in spec {
            let records: Vec<Record> =
                (0..n).map(|i| Record::new(base as i64 + i as i64, Some(vec![i as u8]), Some(vec![1u8; 10]))).collect();
            let mut enc = encode(&records, &ProducerMeta::default()).expect("encode");
            set_base_offset(&mut enc.buf, base);
            out.extend_from_slice(&enc.buf);
        }
        out
    }

    #[test]
    fn records_skip_below_the_requested_offset() {
        let data = Bytes::from(batches(&[(10, 3), (13, 2), (20, 2)]));
        let f = Fetch::new(data, 11, 22, 0, Path::new("x"), 0, false).expect("valid");
        let offsets: Vec<u64> = f.records().map(|r| r.offset).collect();
        assert_eq!(offsets, vec![11, 12, 13, 14, 20, 21]);
        assert_eq!(f.next_offset(), 22);
        assert_eq!(f.batches().count(), 3);
    }

    #[test]
    fn corrupt_first_batch_is_an_error_and_later_ones_are_cut() {
        let good = batches(&[(0, 2), (2, 2)]);
        let first_len = good.len() / 2;
        let mut bad_first = good.clone();
        bad_first[first_len - 1] ^= 1;
        let err = Fetch::new(Bytes::from(bad_first), 0, 4, 0, Path::new("seg.log"), 100, true).expect_err("corrupt");
        assert!(matches!(err, LogError::Corrupt { position: 100, .. }), "{err}");

        let mut bad_second = good.clone();
        let last = bad_second.len() - 1;
        bad_second[last] ^= 1;
        let f = Fetch::new(Bytes::from(bad_second), 0, 4, 0, Path::new("seg.log"), 0, true).expect("prefix");
        assert_eq!(f.records().count(), 2);
        assert_eq!(f.next_offset(), 2);
    }

    #[test]
    fn contiguous_fetches_stop_at_an_offset_jump() {
        // A gap is fine on compacted topics, a sign of a damaged baseOffset otherwise.
        let data = Bytes::from(batches(&[(10, 3), (20, 2)]));
        let f = Fetch::new(data.clone(), 10, 22, 0, Path::new("x"), 0, false).expect("valid");
        assert_eq!(f.records().count(), 5);
        let f = Fetch::new(data, 10, 22, 0, Path::new("x"), 0, true).expect("prefix");
        assert_eq!(f.records().count(), 3);
        assert_eq!(f.next_offset(), 13);
    }

    #[test]
    fn empty_fetch_stays_at_the_offset() {
        let f = Fetch::empty(7, 7, 0);
        assert!(f.is_empty());
        assert_eq!(f.next_offset(), 7);
        assert_eq!(f.records().count(), 0);
    }
}
