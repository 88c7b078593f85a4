//! Kafka RecordBatch v2 (magic 2), uncompressed: the unit stored on disk and served to readers.
//!
//! ```text
//! offset  field                 type    notes
//!  0      baseOffset            int64   patched by the partition writer when offsets are assigned
//!  8      batchLength           int32   bytes after this field
//! 12      partitionLeaderEpoch  int32   0 (single node)
//! 16      magic                 int8    2
//! 17      crc                   uint32  CRC32C of bytes 21..end (attributes to the last record)
//! 21      attributes            int16   bits 0-2 compression (0 only), 3 timestamp type,
//!                                       4 transactional, 5 control, 6 delete horizon set
//! 23      lastOffsetDelta       int32
//! 27      baseTimestamp         int64   the delete horizon when bit 6 is set (KIP-534)
//! 35      maxTimestamp          int64
//! 43      producerId            int64   -1 = none
//! 51      producerEpoch         int16
//! 53      baseSequence          int32
//! 57      recordCount           int32
//! 61      records...
//! ```
//!
//! Integers are big-endian. The CRC does not cover `baseOffset`, so a batch is fully encoded (and
//! its CRC computed) by the producer's task, and the writer only patches eight bytes.

use crate::record::{self, DecodeError, Record, RecordParts, RecordRef};

/// Size of the batch header.
pub const HEADER_LEN: usize = 61;
/// Bytes before the part `batchLength` counts.
pub(crate) const LOG_OVERHEAD: usize = 12;
/// Largest batch accepted (encoded), and so the largest single record.
pub const MAX_BATCH_BYTES: usize = 64 << 20;
/// Appends are split into batches of about this size (a larger single record gets its own batch).
pub(crate) const TARGET_BATCH_BYTES: usize = 1 << 20;

const CRC_START: usize = 21;

/// Attribute bits of a batch.
pub mod attributes {
    /// Compression codec (bits 0-2); only 0 (none) is written or accepted.
    pub const COMPRESSION_MASK: i16 = 0x07;
    /// Timestamp type: 0 = CreateTime, 1 = LogAppendTime.
    pub const LOG_APPEND_TIME: i16 = 0x08;
    /// Part of a transaction. Seam for exactly-once output: see `crate::partition` on the LSO.
    pub const TRANSACTIONAL: i16 = 0x10;
    /// A control batch (commit/abort marker); not yet written by this log.
    pub const CONTROL: i16 = 0x20;
    /// `baseTimestamp` holds the tombstone delete horizon (set by compaction, KIP-534).
    pub const DELETE_HORIZON: i16 = 0x40;
}

/// Producer identity carried through to the batch header.
///
/// The log does not interpret these yet. They are the seam for idempotent and transactional
/// producers (exactly-once output committed with checkpoints): a later change can validate
/// sequences per producer id and hide transactional batches above the last stable offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProducerMeta {
    /// Producer id, -1 for none.
    pub producer_id: i64,
    /// Producer epoch, -1 for none.
    pub producer_epoch: i16,
    /// Sequence number of the first record, -1 for none.
    pub base_sequence: i32,
    /// Sets the transactional attribute bit.
    pub transactional: bool,
}

impl Default for ProducerMeta {
    fn default() -> Self {
        ProducerMeta { producer_id: -1, producer_epoch: -1, base_sequence: -1, transactional: false }
    }
}

/// A parsed batch header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    /// Offset of the first record slot of the batch.
    pub base_offset: u64,
    /// Bytes after the length field.
    pub batch_length: u32,
    /// Kafka's partition leader epoch (0 here).
    pub leader_epoch: i32,
    /// Stored CRC32C.
    pub crc: u32,
    /// Attribute bits, see [`attributes`].
    pub attributes: i16,
    /// `lastOffset - baseOffset`.
    pub last_offset_delta: u32,
    /// Timestamp deltas are relative to this.
    pub base_timestamp: i64,
    /// Largest record timestamp in the batch.
    pub max_timestamp: i64,
    /// Producer id (-1 = none).
    pub producer_id: i64,
    /// Producer epoch.
    pub producer_epoch: i16,
    /// Base sequence.
    pub base_sequence: i32,
    /// Records stored (may be fewer than the offset span after compaction).
    pub record_count: u32,
}

impl BatchHeader {
    /// Total size of the batch on disk.
    pub fn total_len(&self) -> usize {
        self.batch_length as usize + LOG_OVERHEAD
    }

    /// Offset of the last record slot.
    pub fn last_offset(&self) -> u64 {
        self.base_offset + u64::from(self.last_offset_delta)
    }

    /// The offset after this batch.
    pub fn next_offset(&self) -> u64 {
        self.last_offset() + 1
    }

    /// The tombstone delete horizon, when compaction set one.
    pub fn delete_horizon(&self) -> Option<i64> {
        (self.attributes & attributes::DELETE_HORIZON != 0).then_some(self.base_timestamp)
    }

    /// Parses the fixed header. `buf` must hold at least [`HEADER_LEN`] bytes.
    pub(crate) fn parse(buf: &[u8]) -> Result<BatchHeader, DecodeError> {
        if buf.len() < HEADER_LEN {
            return Err("batch header is truncated");
        }
        let base_offset = be_i64(buf, 0);
        if base_offset < 0 {
            return Err("negative base offset");
        }
        let batch_length = be_i32(buf, 8);
        if batch_length < (HEADER_LEN - LOG_OVERHEAD) as i32 {
            return Err("batch length is smaller than a batch header");
        }
        if batch_length as usize > MAX_BATCH_BYTES {
            return Err("batch length exceeds the maximum batch size");
        }
        if buf[16] as i8 != 2 {
            return Err("unsupported magic byte (only record batch v2 is stored)");
        }
        let last_offset_delta = be_i32(buf, 23);
        let record_count = be_i32(buf, 57);
        if last_offset_delta < 0 || record_count < 0 {
            return Err("negative record count or offset delta");
        }
        if record_count as i64 > last_offset_delta as i64 + 1 {
            return Err("more records than offsets in the batch");
        }
        Ok(BatchHeader {
            base_offset: base_offset as u64,
            batch_length: batch_length as u32,
            leader_epoch: be_i32(buf, 12),
            crc: u32::from_be_bytes([buf[17], buf[18], buf[19], buf[20]]),
            attributes: be_i16(buf, 21),
            last_offset_delta: last_offset_delta as u32,
            base_timestamp: be_i64(buf, 27),
            max_timestamp: be_i64(buf, 35),
            producer_id: be_i64(buf, 43),
            producer_epoch: be_i16(buf, 51),
            base_sequence: be_i32(buf, 53),
            record_count: record_count as u32,
        })
    }
}

fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}

fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}

/// Overwrites the base offset of the batch starting at `buf[0]`.
pub(crate) fn set_base_offset(buf: &mut [u8], base_offset: u64) {
    buf[..8].copy_from_slice(&(base_offset as i64).to_be_bytes());
}

/// Outcome of checking the bytes at the start of a buffer.
#[derive(Debug)]
pub(crate) enum Check {
    /// A complete, valid batch.
    Valid(BatchHeader),
    /// The buffer ends before the batch does; `need` is the batch's full size if known.
    Incomplete { need: Option<usize> },
    /// The bytes are not a valid batch.
    Invalid(DecodeError),
}

/// Validates the batch at the start of `buf`: header, length, CRC32C and every record.
pub(crate) fn check(buf: &[u8]) -> Check {
    if buf.len() < LOG_OVERHEAD {
        return Check::Incomplete { need: None };
    }
    let length = be_i32(buf, 8);
    if length < (HEADER_LEN - LOG_OVERHEAD) as i32 {
        return Check::Invalid("batch length is smaller than a batch header");
    }
    if length as usize > MAX_BATCH_BYTES {
        return Check::Invalid("batch length exceeds the maximum batch size");
    }
    let total = length as usize + LOG_OVERHEAD;
    if buf.len() < total {
        return Check::Incomplete { need: Some(total) };
    }
    match check_complete(&buf[..total]) {
        Ok(h) => Check::Valid(h),
        Err(e) => Check::Invalid(e),
    }
}

/// Validates one complete batch (exactly `buf`).
fn check_complete(buf: &[u8]) -> Result<BatchHeader, DecodeError> {
    let h = BatchHeader::parse(buf)?;
    if h.total_len() != buf.len() {
        return Err("batch length does not match");
    }
    if crc32c::crc32c(&buf[CRC_START..]) != h.crc {
        return Err("CRC32C mismatch");
    }
    if h.attributes & attributes::COMPRESSION_MASK != 0 {
        return Err("compressed batches are not supported");
    }
    let mut pos = HEADER_LEN;
    let mut last_delta: i64 = -1;
    for _ in 0..h.record_count {
        let (_, delta) = record::decode_record(buf, &mut pos, h.base_offset, h.base_timestamp)?;
        if i64::from(delta) <= last_delta || delta as u32 > h.last_offset_delta {
            return Err("record offsets are not increasing within the batch");
        }
        last_delta = i64::from(delta);
    }
    if pos != buf.len() {
        return Err("bytes after the last record of the batch");
    }
    Ok(h)
}

/// Iterates the records of one validated batch.
pub(crate) struct BatchRecords<'a> {
    buf: &'a [u8],
    pos: usize,
    remaining: u32,
    base_offset: u64,
    base_timestamp: i64,
}

impl<'a> BatchRecords<'a> {
    /// `buf` is one whole batch that passed [`check`].
    pub(crate) fn new(buf: &'a [u8], h: &BatchHeader) -> Self {
        BatchRecords {
            buf,
            pos: HEADER_LEN,
            remaining: h.record_count,
            base_offset: h.base_offset,
            base_timestamp: h.base_timestamp,
        }
    }
}

impl<'a> Iterator for BatchRecords<'a> {
    type Item = RecordRef<'a>;

    fn next(&mut self) -> Option<RecordRef<'a>> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        match record::decode_record(self.buf, &mut self.pos, self.base_offset, self.base_timestamp) {
            Ok((r, _)) => Some(r),
            Err(_) => {
                // Unreachable for validated batches; end the batch rather than serve garbage.
                self.remaining = 0;
                None
            }
        }
    }
}

/// Where one encoded batch sits in an [`Encoded`] buffer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BatchSpan {
    pub start: usize,
    pub len: usize,
    /// Offset slots the batch takes (`lastOffsetDelta + 1`).
    pub offsets: u32,
    pub max_timestamp: i64,
}

/// One or more encoded batches, with base offsets still to be assigned.
#[derive(Debug, Default)]
pub(crate) struct Encoded {
    pub buf: Vec<u8>,
    pub spans: Vec<BatchSpan>,
}

impl Encoded {
    /// Total offsets the batches take.
    pub fn offsets(&self) -> u64 {
        self.spans.iter().map(|s| u64::from(s.offsets)).sum()
    }
}

/// Encodes `records` into batches of about [`TARGET_BATCH_BYTES`] with base offset 0.
/// Fails (with a message for the user) if a single record exceeds [`MAX_BATCH_BYTES`].
pub(crate) fn encode(records: &[Record], meta: &ProducerMeta) -> Result<Encoded, String> {
    let mut out = Encoded::default();
    // Room for all of them at once (an upper bound per record: its bytes and its varints), so
    // that a large append is not copied as its buffer grows.
    let payload: usize = records
        .iter()
        .map(|r| {
            let headers: usize = r.headers.iter().map(|(k, v)| k.len() + v.as_ref().map_or(0, |v| v.len()) + 10).sum();
            r.key.as_ref().map_or(0, |k| k.len()) + r.value.as_ref().map_or(0, |v| v.len()) + headers + 40
        })
        .sum();
    out.buf.reserve(payload + HEADER_LEN * (payload / TARGET_BATCH_BYTES + 1));
    let mut i = 0;
    while i < records.len() {
        // Choose how many records go into this batch.
        let base_ts = records[i].timestamp;
        let mut size = HEADER_LEN;
        let mut n = 0usize;
        while i + n < records.len() {
            let r = &records[i + n];
            let rec_len = record_len_checked(r, base_ts, n)?;
            if n > 0 && size + rec_len > TARGET_BATCH_BYTES {
                break;
            }
            if size + rec_len > MAX_BATCH_BYTES {
                return Err(format!(
                    "a record of about {} bytes exceeds the maximum batch size of {} bytes",
                    rec_len, MAX_BATCH_BYTES
                ));
            }
            size += rec_len;
            n += 1;
        }
        let batch = &records[i..i + n];
        out.buf.reserve(size);
        let start = out.buf.len();
        let parts = batch.iter().enumerate().map(|(j, r)| RecordParts {
            timestamp_delta: r.timestamp.wrapping_sub(base_ts),
            offset_delta: j as i32,
            key: r.key.as_deref(),
            value: r.value.as_deref(),
            headers: r.headers.iter().map(|(k, v)| (k.as_str(), v.as_deref())),
        });
        let max_ts = batch.iter().map(|r| r.timestamp).max().unwrap_or(base_ts);
        let header = HeaderFields {
            base_offset: 0,
            attributes: if meta.transactional { attributes::TRANSACTIONAL } else { 0 },
            last_offset_delta: (n - 1) as i32,
            base_timestamp: base_ts,
            max_timestamp: max_ts,
            meta: *meta,
            record_count: n as i32,
        };
        write_batch(&mut out.buf, &header, parts);
        let len = out.buf.len() - start;
        out.spans.push(BatchSpan { start, len, offsets: n as u32, max_timestamp: max_ts });
        i += n;
    }
    Ok(out)
}

fn record_len_checked(r: &Record, base_ts: i64, n: usize) -> Result<usize, String> {
    let key = r.key.as_ref().map_or(0, |k| k.len());
    let value = r.value.as_ref().map_or(0, |v| v.len());
    let headers: usize = r.headers.iter().map(|(k, v)| k.len() + v.as_ref().map_or(0, |v| v.len())).sum();
    let raw = key.saturating_add(value).saturating_add(headers);
    if raw > MAX_BATCH_BYTES {
        return Err(format!("a record of {raw} bytes exceeds the maximum batch size of {MAX_BATCH_BYTES} bytes"));
    }
    Ok(record::encoded_len(r, r.timestamp.wrapping_sub(base_ts), n as i32))
}

/// Header values of a batch being written.
pub(crate) struct HeaderFields {
    pub base_offset: u64,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub meta: ProducerMeta,
    pub record_count: i32,
}

/// Appends a batch: header, records, then fills in length and CRC.
pub(crate) fn write_batch<'a, I, H>(out: &mut Vec<u8>, h: &HeaderFields, records: I)
where
    I: Iterator<Item = RecordParts<'a, H>>,
    H: Iterator<Item = (&'a str, Option<&'a [u8]>)> + Clone,
{
    let start = out.len();
    out.extend_from_slice(&(h.base_offset as i64).to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes()); // batchLength, patched below
    out.extend_from_slice(&0i32.to_be_bytes()); // partitionLeaderEpoch
    out.push(2); // magic
    out.extend_from_slice(&0u32.to_be_bytes()); // crc, patched below
    out.extend_from_slice(&h.attributes.to_be_bytes());
    out.extend_from_slice(&h.last_offset_delta.to_be_bytes());
    out.extend_from_slice(&h.base_timestamp.to_be_bytes());
    out.extend_from_slice(&h.max_timestamp.to_be_bytes());
    out.extend_from_slice(&h.meta.producer_id.to_be_bytes());
    out.extend_from_slice(&h.meta.producer_epoch.to_be_bytes());
    out.extend_from_slice(&h.meta.base_sequence.to_be_bytes());
    out.extend_from_slice(&h.record_count.to_be_bytes());
    for r in records {
        record::encode_record(out, &r);
    }
    let length = (out.len() - start - LOG_OVERHEAD) as i32;
    out[start + 8..start + 12].copy_from_slice(&length.to_be_bytes());
    let crc = crc32c::crc32c(&out[start + CRC_START..]);
    out[start + 17..start + 21].copy_from_slice(&crc.to_be_bytes());
}

/// Re-encodes a batch keeping only `keep` (a subset of its records, in order), as compaction
/// does: base offset, offset span and producer fields are preserved, so offsets never change.
/// With `horizon`, sets the delete-horizon attribute and uses it as the base timestamp.
pub(crate) fn write_filtered(out: &mut Vec<u8>, h: &BatchHeader, keep: &[RecordRef<'_>], horizon: Option<i64>) {
    let first_ts = keep.first().map_or(h.base_timestamp, |r| r.timestamp);
    let base_ts = horizon.unwrap_or(first_ts);
    let max_ts = keep.iter().map(|r| r.timestamp).max().unwrap_or(h.max_timestamp);
    let mut attrs = h.attributes & !attributes::DELETE_HORIZON;
    if horizon.is_some() {
        attrs |= attributes::DELETE_HORIZON;
    }
    let fields = HeaderFields {
        base_offset: h.base_offset,
        attributes: attrs,
        last_offset_delta: h.last_offset_delta as i32,
        base_timestamp: base_ts,
        max_timestamp: max_ts,
        meta: ProducerMeta {
            producer_id: h.producer_id,
            producer_epoch: h.producer_epoch,
            base_sequence: h.base_sequence,
            transactional: false, // carried by `attrs`
        },
        record_count: keep.len() as i32,
    };
    let parts = keep.iter().map(|r| RecordParts {
        timestamp_delta: r.timestamp.wrapping_sub(base_ts),
        offset_delta: (r.offset - h.base_offset) as i32,
        key: r.key,
        value: r.value,
        headers: r.headers(),
    });
    write_batch(out, &fields, parts);
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn rec(ts: i64, k: &str, v: Option<&str>) -> Record {
        Record {
            timestamp: ts,
            key: Some(Bytes::copy_from_slice(k.as_bytes())),
            value: v.map(|v| Bytes::copy_from_slice(v.as_bytes())),
            headers: vec![],
        }
    }

    fn only_batch(enc: &Encoded) -> &[u8] {
        assert_eq!(enc.spans.len(), 1);
        &enc.buf[..]
    }

    #[test]
    fn encode_then_check_and_iterate() {
        let records = vec![rec(100, "a", Some("1")), rec(90, "b", None), rec(120, "c", Some("3"))];
        let mut enc = encode(&records, &ProducerMeta::default()).expect("encodes");
        set_base_offset(&mut enc.buf, 40);
        let buf = only_batch(&enc);
        let Check::Valid(h) = check(buf) else { panic!("batch should be valid") };
        assert_eq!(h.base_offset, 40);
        assert_eq!(h.last_offset(), 42);
        assert_eq!(h.max_timestamp, 120);
        assert_eq!(h.base_timestamp, 100);
        assert_eq!(h.producer_id, -1);
        let got: Vec<Record> = BatchRecords::new(buf, &h).map(|r| r.to_record()).collect();
        assert_eq!(got, records);
        let offsets: Vec<u64> = BatchRecords::new(buf, &h).map(|r| r.offset).collect();
        assert_eq!(offsets, vec![40, 41, 42]);
    }

    /// Kafka's layout: the CRC is CRC32C over attributes..end, stored big-endian at byte 17.
    #[test]
    fn layout_matches_kafka_v2() {
        let enc = encode(&[rec(7, "k", Some("v"))], &ProducerMeta::default()).expect("encodes");
        let b = only_batch(&enc);
        assert_eq!(b[16], 2, "magic");
        assert_eq!(i32::from_be_bytes([b[8], b[9], b[10], b[11]]) as usize, b.len() - 12);
        let crc = u32::from_be_bytes([b[17], b[18], b[19], b[20]]);
        assert_eq!(crc, crc32c::crc32c(&b[21..]));
        assert_eq!(i32::from_be_bytes([b[57], b[58], b[59], b[60]]), 1, "record count");
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let enc =
            encode(&[rec(7, "key", Some("value")), rec(8, "k2", None)], &ProducerMeta::default()).expect("encodes");
        let good = only_batch(&enc).to_vec();
        // Bytes 0..8 (base offset) and 12..16 (leader epoch) are outside the CRC, as in Kafka.
        for i in (8..12).chain(16..good.len()) {
            let mut bad = good.clone();
            bad[i] ^= 0x5a;
            assert!(!matches!(check(&bad), Check::Valid(_)), "flip at {i} went unnoticed");
        }
    }

    #[test]
    fn incomplete_batches_are_reported() {
        let enc = encode(&[rec(7, "key", Some("value"))], &ProducerMeta::default()).expect("encodes");
        let b = only_batch(&enc);
        assert!(matches!(check(&b[..5]), Check::Incomplete { need: None }));
        assert!(matches!(check(&b[..b.len() - 1]), Check::Incomplete { need: Some(n) } if n == b.len()));
        let zeros = vec![0u8; 100];
        assert!(matches!(check(&zeros), Check::Invalid(_)));
    }

    #[test]
    fn large_appends_split_into_batches() {
        let big = "x".repeat(300_000);
        let records: Vec<Record> = (0..10).map(|i| rec(i, "k", Some(&big))).collect();
        let enc = encode(&records, &ProducerMeta::default()).expect("encodes");
        assert!(enc.spans.len() >= 3);
        assert_eq!(enc.offsets(), 10);
        for s in &enc.spans {
            assert!(matches!(check(&enc.buf[s.start..s.start + s.len]), Check::Valid(_)));
        }
    }

    #[test]
    fn oversized_record_is_refused() {
        let huge = Record { value: Some(Bytes::from(vec![0u8; MAX_BATCH_BYTES + 1])), ..Record::default() };
        let err = encode(&[huge], &ProducerMeta::default()).expect_err("too large");
        assert!(err.contains("exceeds the maximum batch size"));
    }

    #[test]
    fn filtered_batch_keeps_offsets_and_sets_horizon() {
        let records = vec![rec(100, "a", Some("1")), rec(110, "b", None), rec(120, "a", Some("3"))];
        let mut enc = encode(&records, &ProducerMeta::default()).expect("encodes");
        set_base_offset(&mut enc.buf, 10);
        let Check::Valid(h) = check(&enc.buf) else { panic!("valid") };
        let keep: Vec<RecordRef<'_>> = BatchRecords::new(&enc.buf, &h).skip(1).collect();
        let mut out = Vec::new();
        write_filtered(&mut out, &h, &keep, Some(5_000));
        let Check::Valid(h2) = check(&out) else { panic!("filtered batch valid") };
        assert_eq!(h2.base_offset, 10);
        assert_eq!(h2.last_offset(), 12);
        assert_eq!(h2.record_count, 2);
        assert_eq!(h2.delete_horizon(), Some(5_000));
        assert_eq!(h2.max_timestamp, 120);
        let got: Vec<(u64, i64, Option<Vec<u8>>)> =
            BatchRecords::new(&out, &h2).map(|r| (r.offset, r.timestamp, r.value.map(<[u8]>::to_vec))).collect();
        assert_eq!(got, vec![(11, 110, None), (12, 120, Some(b"3".to_vec()))]);
    }
}
