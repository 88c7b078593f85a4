//! Records: the owned form producers hand in, the borrowed form readers get, and the Kafka v2
//! record codec (zigzag varints) between them.
//!
//! A record inside a batch is laid out as Kafka's `DefaultRecord`:
//!
//! ```text
//! length: varint            (bytes after this field)
//! attributes: int8          (unused, 0)
//! timestampDelta: varlong   (timestamp - batch baseTimestamp)
//! offsetDelta: varint       (offset - batch baseOffset)
//! keyLength: varint, key    (-1 = null)
//! valueLength: varint, value (-1 = null = tombstone)
//! headerCount: varint
//! headers: [keyLength: varint, key (UTF-8), valueLength: varint (-1 = null), value]
//! ```

use bytes::Bytes;

/// A record to append.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    /// Event time in milliseconds since the Unix epoch (Kafka's CreateTime).
    pub timestamp: i64,
    /// Key bytes; `None` is a null key (spread round-robin by the partitioner).
    pub key: Option<Bytes>,
    /// Value bytes; `None` is a tombstone (deletes the key on compacted topics).
    pub value: Option<Bytes>,
    /// Headers in order; keys are strings, values may be null.
    pub headers: Vec<(String, Option<Bytes>)>,
}

impl Record {
    /// A record with a key and a value and no headers.
    pub fn new(timestamp: i64, key: Option<impl Into<Bytes>>, value: Option<impl Into<Bytes>>) -> Self {
        Record { timestamp, key: key.map(Into::into), value: value.map(Into::into), headers: Vec::new() }
    }
}

/// A record read from the log, borrowing the bytes of its [`crate::Fetch`] (no copies).
#[derive(Clone, Copy, Debug)]
pub struct RecordRef<'a> {
    /// The record's offset in its partition.
    pub offset: u64,
    /// Event time in milliseconds.
    pub timestamp: i64,
    /// Key bytes, `None` for a null key.
    pub key: Option<&'a [u8]>,
    /// Value bytes, `None` for a tombstone.
    pub value: Option<&'a [u8]>,
    headers: &'a [u8],
    header_count: usize,
}

impl<'a> RecordRef<'a> {
    /// The record's headers, in order.
    pub fn headers(&self) -> HeaderIter<'a> {
        HeaderIter { buf: self.headers, pos: 0, remaining: self.header_count }
    }

    /// Number of headers.
    pub fn header_count(&self) -> usize {
        self.header_count
    }

    /// True when the value is null.
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }

    /// Copies the record into an owned [`Record`].
    pub fn to_record(&self) -> Record {
        Record {
            timestamp: self.timestamp,
            key: self.key.map(Bytes::copy_from_slice),
            value: self.value.map(Bytes::copy_from_slice),
            headers: self.headers().map(|(k, v)| (k.to_string(), v.map(Bytes::copy_from_slice))).collect(),
        }
    }
}

/// Iterator over a record's headers: `(key, value)`.
#[derive(Clone, Debug)]
pub struct HeaderIter<'a> {
    buf: &'a [u8],
    pos: usize,
    remaining: usize,
}

impl<'a> Iterator for HeaderIter<'a> {
    type Item = (&'a str, Option<&'a [u8]>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        // Headers were validated when the fetch was built; a failure here ends the iteration.
        let key = read_bytes(self.buf, &mut self.pos).ok().flatten()?;
        let key = std::str::from_utf8(key).ok()?;
        let value = read_bytes(self.buf, &mut self.pos).ok()?;
        Some((key, value))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.remaining))
    }
}

// ---------------------------------------------------------------------------------------------
// Varints (Kafka / protobuf zigzag encoding).

/// Appends `v` as a zigzag varint (int32).
pub(crate) fn put_varint(out: &mut Vec<u8>, v: i32) {
    put_uvarint(out, ((v << 1) ^ (v >> 31)) as u32 as u64);
}

/// Appends `v` as a zigzag varlong (int64).
pub(crate) fn put_varlong(out: &mut Vec<u8>, v: i64) {
    put_uvarint(out, ((v << 1) ^ (v >> 63)) as u64);
}

fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Bytes `put_varint(v)` writes.
pub(crate) fn varint_len(v: i32) -> usize {
    uvarint_len(((v << 1) ^ (v >> 31)) as u32 as u64)
}

/// Bytes `put_varlong(v)` writes.
pub(crate) fn varlong_len(v: i64) -> usize {
    uvarint_len(((v << 1) ^ (v >> 63)) as u64)
}

fn uvarint_len(v: u64) -> usize {
    let bits = 64 - (v | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Why a record failed to decode.
pub(crate) type DecodeError = &'static str;

fn read_uvarint(buf: &[u8], pos: &mut usize, max_bytes: usize) -> Result<u64, DecodeError> {
    let mut v: u64 = 0;
    for i in 0..max_bytes {
        let b = *buf.get(*pos).ok_or("varint runs past the end of the record")?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("varint is too long")
}

/// Reads a zigzag varint (int32).
pub(crate) fn read_varint(buf: &[u8], pos: &mut usize) -> Result<i32, DecodeError> {
    let raw = read_uvarint(buf, pos, 5)?;
    let raw = u32::try_from(raw).map_err(|_| "varint does not fit 32 bits")?;
    Ok(((raw >> 1) as i32) ^ -((raw & 1) as i32))
}

/// Reads a zigzag varlong (int64).
pub(crate) fn read_varlong(buf: &[u8], pos: &mut usize) -> Result<i64, DecodeError> {
    let raw = read_uvarint(buf, pos, 10)?;
    Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64))
}

/// Reads a varint length and that many bytes; length -1 is null.
fn read_bytes<'a>(buf: &'a [u8], pos: &mut usize) -> Result<Option<&'a [u8]>, DecodeError> {
    let len = read_varint(buf, pos)?;
    if len == -1 {
        return Ok(None);
    }
    let len = usize::try_from(len).map_err(|_| "negative length")?;
    let end = pos.checked_add(len).ok_or("length overflows")?;
    let bytes = buf.get(*pos..end).ok_or("field runs past the end of the record")?;
    *pos = end;
    Ok(Some(bytes))
}

// ---------------------------------------------------------------------------------------------
// Record codec.

fn opt_len(b: Option<&[u8]>) -> usize {
    match b {
        None => varint_len(-1),
        Some(b) => varint_len(b.len() as i32) + b.len(),
    }
}

fn put_opt(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        None => put_varint(out, -1),
        Some(b) => {
            put_varint(out, b.len() as i32);
            out.extend_from_slice(b);
        }
    }
}

/// The parts of a record the encoder needs; lets owned and borrowed records share one encoder.
pub(crate) struct RecordParts<'a, H> {
    pub timestamp_delta: i64,
    pub offset_delta: i32,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: H,
}

/// Size of the record body (everything after the length varint). Lengths must be < 2^31, which
/// the batch size limit guarantees before this is called.
pub(crate) fn body_len<'a, H>(r: &RecordParts<'a, H>) -> usize
where
    H: Iterator<Item = (&'a str, Option<&'a [u8]>)> + Clone,
{
    let mut n = 1 + varlong_len(r.timestamp_delta) + varint_len(r.offset_delta);
    n += opt_len(r.key) + opt_len(r.value);
    let mut count = 0i32;
    for (k, v) in r.headers.clone() {
        n += opt_len(Some(k.as_bytes())) + opt_len(v);
        count += 1;
    }
    n + varint_len(count)
}

/// Appends one record (length-prefixed) to `out`.
pub(crate) fn encode_record<'a, H>(out: &mut Vec<u8>, r: &RecordParts<'a, H>)
where
    H: Iterator<Item = (&'a str, Option<&'a [u8]>)> + Clone,
{
    let body = body_len(r);
    put_varint(out, body as i32);
    out.push(0); // attributes
    put_varlong(out, r.timestamp_delta);
    put_varint(out, r.offset_delta);
    put_opt(out, r.key);
    put_opt(out, r.value);
    let count = r.headers.clone().count();
    put_varint(out, count as i32);
    for (k, v) in r.headers.clone() {
        put_opt(out, Some(k.as_bytes()));
        put_opt(out, v);
    }
}

/// Size in bytes of `r` once encoded (with its length prefix), at the given deltas.
pub(crate) fn encoded_len(r: &Record, timestamp_delta: i64, offset_delta: i32) -> usize {
    let parts = RecordParts {
        timestamp_delta,
        offset_delta,
        key: r.key.as_deref(),
        value: r.value.as_deref(),
        headers: r.headers.iter().map(|(k, v)| (k.as_str(), v.as_deref())),
    };
    let body = body_len(&parts);
    varint_len(body as i32) + body
}

/// Decodes the record at `*pos` of `buf` (a batch's record section) and advances `*pos`.
/// Validates every field, header keys included, so iteration over validated data cannot fail.
pub(crate) fn decode_record<'a>(
    buf: &'a [u8],
    pos: &mut usize,
    base_offset: u64,
    base_timestamp: i64,
) -> Result<(RecordRef<'a>, i32), DecodeError> {
    let len = read_varint(buf, pos)?;
    let len = usize::try_from(len).map_err(|_| "negative record length")?;
    let end = pos.checked_add(len).ok_or("record length overflows")?;
    let rec = buf.get(..end).ok_or("record runs past the end of the batch")?;
    let mut p = *pos + 1; // attributes (unused)
    if p > end {
        return Err("record too short");
    }
    let ts_delta = read_varlong(rec, &mut p)?;
    let offset_delta = read_varint(rec, &mut p)?;
    if offset_delta < 0 {
        return Err("negative offset delta");
    }
    let key = read_bytes(rec, &mut p)?;
    let value = read_bytes(rec, &mut p)?;
    let header_count = read_varint(rec, &mut p)?;
    let header_count = usize::try_from(header_count).map_err(|_| "negative header count")?;
    let headers_start = p;
    for _ in 0..header_count {
        let k = read_bytes(rec, &mut p)?.ok_or("null header key")?;
        std::str::from_utf8(k).map_err(|_| "header key is not UTF-8")?;
        read_bytes(rec, &mut p)?;
    }
    if p != end {
        return Err("record length does not match its fields");
    }
    *pos = end;
    let record = RecordRef {
        offset: base_offset.saturating_add(offset_delta as u64),
        timestamp: base_timestamp.wrapping_add(ts_delta),
        key,
        value,
        headers: &rec[headers_start..end],
        header_count,
    };
    Ok((record, offset_delta))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_roundtrip() {
        for v in [0, 1, -1, 63, -64, 64, 300, -300, i32::MAX, i32::MIN] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "len of {v}");
            let mut pos = 0;
            assert_eq!(read_varint(&out, &mut pos), Ok(v));
            assert_eq!(pos, out.len());
        }
        for v in [0i64, 1, -1, 1 << 40, -(1 << 40), i64::MAX, i64::MIN] {
            let mut out = Vec::new();
            put_varlong(&mut out, v);
            assert_eq!(out.len(), varlong_len(v));
            let mut pos = 0;
            assert_eq!(read_varlong(&out, &mut pos), Ok(v));
        }
        // Kafka's zigzag: -1 encodes as 0x01, 1 as 0x02.
        let mut out = Vec::new();
        put_varint(&mut out, -1);
        put_varint(&mut out, 1);
        assert_eq!(out, [1, 2]);
    }

    #[test]
    fn truncated_varint_is_an_error() {
        let mut pos = 0;
        assert!(read_varint(&[0x80, 0x80], &mut pos).is_err());
        let mut pos = 0;
        assert!(read_varint(&[0xff, 0xff, 0xff, 0xff, 0xff, 0x01], &mut pos).is_err());
    }

    #[test]
    fn record_roundtrip_with_headers_and_nulls() {
        let r = Record {
            timestamp: 1_000,
            key: None,
            value: Some(Bytes::from_static(b"v")),
            headers: vec![("h1".into(), None), ("h2".into(), Some(Bytes::from_static(b"x")))],
        };
        let parts = RecordParts {
            timestamp_delta: -5,
            offset_delta: 3,
            key: r.key.as_deref(),
            value: r.value.as_deref(),
            headers: r.headers.iter().map(|(k, v)| (k.as_str(), v.as_deref())),
        };
        let mut out = Vec::new();
        encode_record(&mut out, &parts);
        assert_eq!(out.len(), encoded_len(&r, -5, 3));
        let mut pos = 0;
        let (rr, delta) = decode_record(&out, &mut pos, 10, 1_005).expect("decodes");
        assert_eq!(pos, out.len());
        assert_eq!(delta, 3);
        assert_eq!(rr.offset, 13);
        assert_eq!(rr.timestamp, 1_000);
        assert_eq!(rr.key, None);
        assert_eq!(rr.value, Some(&b"v"[..]));
        let headers: Vec<_> = rr.headers().collect();
        assert_eq!(headers, vec![("h1", None), ("h2", Some(&b"x"[..]))]);
        assert_eq!(rr.to_record(), r);
    }

    #[test]
    fn corrupt_record_fails_to_decode() {
        let r = Record::new(1, Some(&b"key"[..]), Some(&b"value"[..]));
        let parts = RecordParts {
            timestamp_delta: 0,
            offset_delta: 0,
            key: r.key.as_deref(),
            value: r.value.as_deref(),
            headers: std::iter::empty(),
        };
        let mut out = Vec::new();
        encode_record(&mut out, &parts);
        // Truncation.
        for cut in 0..out.len() {
            let mut pos = 0;
            assert!(decode_record(&out[..cut], &mut pos, 0, 0).is_err(), "cut at {cut}");
        }
        // A wrong key length.
        let mut bad = out.clone();
        bad[4] = 40;
        let mut pos = 0;
        assert!(decode_record(&bad, &mut pos, 0, 0).is_err());
    }
}
