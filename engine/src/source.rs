//! Reading a source: fetched records → Arrow batches with key, value and pseudo columns.
//!
//! The row schema of a source, as SQL sees it, is
//! `key columns…, value columns…, header columns…, ROWTIME, ROWPARTITION, ROWOFFSET`.
//! Records that fail to decode become [`DeadLetter`]s and never reach operators.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BooleanArray, Int32Array, Int64Array, ListArray, RecordBatch, StringArray,
    StructArray, UInt32Array,
};
use arrow::buffer::OffsetBuffer;
use arrow::compute::{cast, take};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use bytes::Bytes;
use rill_connectors::format::{self, Decoder, Format, FormatKind, Registered};
use rill_connectors::registry::{subject, SchemaRegistry};
use rill_connectors::store::Fetch;

use crate::{EngineError, Result};

/// Name of the record-timestamp pseudo column.
pub const ROWTIME: &str = "ROWTIME";
/// Name of the partition pseudo column.
pub const ROWPARTITION: &str = "ROWPARTITION";
/// Name of the offset pseudo column.
pub const ROWOFFSET: &str = "ROWOFFSET";
/// Hidden column of table sources: the record is a tombstone (its key was deleted).
pub const DELETE: &str = "__RILL_DELETE";
/// Hidden last column when [`SourceSpec::carry_headers`]: each record's headers, for its output
/// record (ksqlDB forwards an input record's headers to what it produces).
pub const HEADERS: &str = "__RILL_HEADERS";

/// The type of a record's headers as a column: `ARRAY<STRUCT<KEY STRING, VALUE BYTES>>`.
pub fn headers_type() -> DataType {
    let entry = DataType::Struct(
        vec![Field::new("KEY", DataType::Utf8, true), Field::new("VALUE", DataType::Binary, true)].into(),
    );
    DataType::List(Arc::new(Field::new("item", entry, true)))
}

/// A headers column of `n` records without headers (empty lists).
pub fn no_headers(n: usize) -> Result<ArrayRef> {
    let DataType::List(item) = headers_type() else {
        return Err(EngineError::Internal("the headers type is not a list".into()));
    };
    let empty = arrow::array::new_empty_array(item.data_type());
    let offsets = OffsetBuffer::new_zeroed(n);
    ListArray::try_new(item, offsets, empty, None)
        .map(|a| Arc::new(a) as ArrayRef)
        .map_err(|e| EngineError::Internal(format!("an empty headers column: {e}")))
}

/// Window start column of windowed sources (a key column).
pub const WINDOWSTART: &str = "WINDOWSTART";
/// Window end column of windowed sources (a key column).
pub const WINDOWEND: &str = "WINDOWEND";

/// How a windowed source's record keys carry their window, as Kafka Streams' windowed serdes
/// write them: time windows append the 8-byte big-endian start (the end is start + size);
/// session windows append the end, then the start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceWindow {
    /// Tumbling or hopping windows of this size (ms).
    Time {
        /// Window size in ms.
        size: i64,
    },
    /// Session windows.
    Session,
}

impl SourceWindow {
    fn suffix(self) -> usize {
        match self {
            SourceWindow::Time { .. } => 8,
            SourceWindow::Session => 16,
        }
    }

    /// Splits a windowed key into the inner key and the window's (start, end).
    pub fn split(self, key: &[u8]) -> std::result::Result<(&[u8], i64, i64), String> {
        let n = self.suffix();
        if key.len() < n {
            return Err(format!("a windowed key needs at least {n} bytes, got {}", key.len()));
        }
        let (inner, bounds) = key.split_at(key.len() - n);
        let word = |b: &[u8]| i64::from_be_bytes(b.try_into().unwrap_or([0; 8]));
        Ok(match self {
            SourceWindow::Time { size } => {
                let start = word(bounds);
                (inner, start, start.saturating_add(size))
            }
            SourceWindow::Session => (inner, word(&bounds[8..]), word(&bounds[..8])),
        })
    }
}

/// Where a source's event time comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum EventTime {
    /// The record's timestamp.
    RecordTimestamp,
    /// A column (index into the decoded key+value columns) of type BIGINT or TIMESTAMP.
    Column(usize),
    /// A string column parsed with a format (chrono `strftime` syntax, UTC unless the format
    /// has a zone): ksqlDB's `TIMESTAMP_FORMAT`. A value that does not parse sends its record
    /// to the dead-letter topic.
    Formatted {
        /// Index into the decoded key+value columns.
        column: usize,
        /// The chrono format.
        format: String,
    },
}

/// The most common TIMESTAMP_FORMAT, `yyyy-MM-dd HH:mm:ss.SSS`, in chrono's syntax.
const ISO_MILLIS: &str = "%Y-%m-%d %H:%M:%S.%3f";

/// `yyyy-MM-dd HH:mm:ss.SSS` (UTC) to epoch ms without a general parser; `None` if the text is
/// not exactly that shape (the caller then uses chrono, which also explains the error).
fn iso_millis(v: &[u8]) -> Option<i64> {
    if v.len() != 23 || v[4] != b'-' || v[7] != b'-' || v[10] != b' ' || v[13] != b':' || v[16] != b':' || v[19] != b'.'
    {
        return None;
    }
    let num = |a: usize, b: usize| -> Option<i64> {
        v[a..b].iter().try_fold(0i64, |acc, c| c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0')))
    };
    let (y, m, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (h, mi, s, ms) = (num(11, 13)?, num(14, 16)?, num(17, 19)?, num(20, 23)?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let month_days = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if !(1..=12).contains(&m) || d < 1 || d > month_days[(m - 1) as usize] || h > 23 || mi > 59 || s > 59 {
        return None;
    }
    // Days from 1970-01-01 of a proleptic Gregorian date (the era-based civil-to-days method).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + h) * 60 + mi) * 60_000 + s * 1000 + ms)
}

/// Parses `values` with `format` into epoch milliseconds; the failures by row.
pub fn parse_timestamps(values: &StringArray, format: &str) -> (Int64Array, Vec<(usize, String)>) {
    use chrono::format::{parse, Parsed, StrftimeItems};
    let fast = format == ISO_MILLIS;
    let items: Vec<_> = StrftimeItems::new(format).collect();
    let mut errors = Vec::new();
    let mut out = arrow::array::Int64Builder::with_capacity(values.len());
    for (i, v) in values.iter().enumerate() {
        let Some(v) = v else {
            out.append_null();
            continue;
        };
        if fast {
            if let Some(ms) = iso_millis(v.as_bytes()) {
                out.append_value(ms);
                continue;
            }
        }
        let attempt = |text: &str| {
            let mut parsed = Parsed::new();
            parse(&mut parsed, text, items.iter()).map_err(|e| e.to_string())?;
            match parsed.to_datetime() {
                Ok(dt) => Ok(dt.timestamp_millis()),
                Err(_) => parsed
                    .to_naive_datetime_with_offset(0)
                    .map(|dt| dt.and_utc().timestamp_millis())
                    .map_err(|e| e.to_string()),
            }
        };
        // Java's zone patterns accept `Z` for UTC (ksqlDB parses case-insensitively), chrono's
        // offsets do not.
        let ms = attempt(v).or_else(|e| match v.strip_suffix(['Z', 'z']) {
            Some(rest) => attempt(&format!("{rest}+0000")),
            None => Err(e),
        });
        match ms {
            Ok(ms) => out.append_value(ms),
            Err(e) => {
                out.append_null();
                errors.push((i, format!("timestamp '{v}' does not match the TIMESTAMP_FORMAT ({e})")));
            }
        }
    }
    (out.finish(), errors)
}

/// A source as the engine reads it.
#[derive(Clone, Debug)]
pub struct SourceSpec {
    /// The topic.
    pub topic: String,
    /// Format of record keys.
    pub key_format: Format,
    /// Format of record values.
    pub value_format: Format,
    /// Key columns.
    pub key_schema: SchemaRef,
    /// Value columns.
    pub value_schema: SchemaRef,
    /// Event time.
    pub event_time: EventTime,
    /// Tables keep tombstones (null values); streams skip them.
    pub keep_tombstones: bool,
    /// Records without a key are skipped (a table cannot hold one; Kafka Streams drops them).
    pub skip_null_keys: bool,
    /// Windowed keys: the rows get [`WINDOWSTART`] and [`WINDOWEND`] after the key columns.
    pub window: Option<SourceWindow>,
    /// Columns read from the record headers, after the value columns.
    pub headers: Vec<HeaderColumn>,
    /// Rows end with a hidden [`HEADERS`] column (after every other column), which a
    /// stateless query carries to its output records.
    pub carry_headers: bool,
    /// The value columns the query reads (indices into `value_schema`), when it reads only
    /// some: JSON values then decode only those, and the others come out null. `None`: all.
    pub read_values: Option<Vec<usize>>,
}

/// A column read from a record's headers (ksqlDB's `HEADERS` and `HEADER('key')` columns).
#[derive(Clone, Debug)]
pub struct HeaderColumn {
    /// Column name.
    pub name: String,
    /// `None`: every header, as a list of `(KEY, VALUE)` structs; `Some(k)`: the value of the
    /// last header named `k`, as bytes.
    pub key: Option<String>,
    /// The column's type: `List<Struct<KEY Utf8, VALUE Binary>>` or `Binary`.
    pub data_type: DataType,
}

impl HeaderColumn {
    /// The column for `records` (each record's headers, in order).
    fn array(&self, records: &[Headers<'_>]) -> Result<ArrayRef> {
        let Some(key) = &self.key else {
            let DataType::List(item) = &self.data_type else {
                return Err(EngineError::Internal(format!("HEADERS column {} is not a list", self.name)));
            };
            let DataType::Struct(fields) = item.data_type() else {
                return Err(EngineError::Internal(format!("HEADERS column {} is not a list of structs", self.name)));
            };
            let all = records.iter().flatten();
            let keys: StringArray = all.clone().map(|(k, _)| Some(*k)).collect();
            let values: BinaryArray = all.map(|(_, v)| *v).collect();
            let entries = StructArray::try_new(fields.clone(), vec![Arc::new(keys), Arc::new(values)], None)
                .map_err(|e| EngineError::Internal(format!("HEADERS column {}: {e}", self.name)))?;
            let offsets = OffsetBuffer::from_lengths(records.iter().map(Vec::len));
            let list = ListArray::try_new(item.clone(), offsets, Arc::new(entries), None)
                .map_err(|e| EngineError::Internal(format!("HEADERS column {}: {e}", self.name)))?;
            return Ok(Arc::new(list));
        };
        let values: BinaryArray =
            records.iter().map(|h| h.iter().rev().find(|(k, _)| k == key).and_then(|(_, v)| *v)).collect();
        Ok(Arc::new(values))
    }
}

impl SourceSpec {
    /// The value columns to decode when not all (see [`SourceSpec::read_values`]): JSON objects
    /// only (fields found by name), of at least one column, and every column the reader itself
    /// needs (a formatted event time).
    fn projected_values(&self) -> Option<Vec<usize>> {
        let mut read = self.read_values.clone()?;
        let values = self.value_schema.fields().len();
        if self.value_format.kind != FormatKind::Json || !self.value_format.wrap_single_value || values < 2 {
            return None;
        }
        let keys = self.key_schema.fields().len();
        if let EventTime::Formatted { column, .. } | EventTime::Column(column) = &self.event_time {
            if *column >= keys && !read.contains(&(column - keys)) {
                read.push(column - keys);
            }
        }
        read.sort_unstable();
        read.dedup();
        read.retain(|i| *i < values);
        (!read.is_empty() && read.len() < values).then_some(read)
    }

    /// The schema of the batches the reader produces.
    pub fn row_schema(&self) -> SchemaRef {
        let mut fields: Vec<Field> = Vec::new();
        for f in self.key_schema.fields().iter() {
            fields.push(f.as_ref().clone().with_nullable(true));
        }
        if self.window.is_some() {
            fields.push(Field::new(WINDOWSTART, DataType::Int64, true));
            fields.push(Field::new(WINDOWEND, DataType::Int64, true));
        }
        for f in self.value_schema.fields().iter() {
            fields.push(f.as_ref().clone().with_nullable(true));
        }
        for h in &self.headers {
            fields.push(Field::new(&h.name, h.data_type.clone(), true));
        }
        fields.push(Field::new(ROWTIME, DataType::Int64, true));
        fields.push(Field::new(ROWPARTITION, DataType::Int32, true));
        fields.push(Field::new(ROWOFFSET, DataType::Int64, true));
        if self.keep_tombstones {
            fields.push(Field::new(DELETE, DataType::Boolean, true));
        }
        if self.carry_headers {
            fields.push(Field::new(HEADERS, headers_type(), true));
        }
        Arc::new(Schema::new(fields))
    }
}

/// A record that could not be read, with why.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DeadLetter {
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: u32,
    /// Source offset.
    pub offset: u64,
    /// What went wrong.
    pub error: String,
    /// The record key, as (lossy) UTF-8.
    pub key: Option<String>,
    /// The record value, as (lossy) UTF-8.
    pub value: Option<String>,
}

/// What one fetch turned into.
pub struct ReadBatch {
    /// The decoded rows (absent when no record survived).
    pub batch: Option<RecordBatch>,
    /// Records that failed.
    pub dead: Vec<DeadLetter>,
    /// The largest event time seen in this fetch.
    pub max_event_time: Option<i64>,
    /// Offset after the last record of the fetch.
    pub next_offset: u64,
}

/// One record's headers, in order: (key, value).
type Headers<'a> = Vec<(&'a str, Option<&'a [u8]>)>;

/// Decoded columns (one row per input record) and the records that failed, by input index.
type ColumnsAndErrors = (Vec<ArrayRef>, Vec<(usize, String)>);

/// Decodes fetched records for one partition.
pub struct SourceReader {
    spec: SourceSpec,
    partition: u32,
    schema: SchemaRef,
    key_decoder: Box<dyn Decoder>,
    value_decoder: Box<dyn Decoder>,
    registry: Arc<dyn SchemaRegistry>,
    /// The value columns decoded, when not all are (see [`SourceSpec::read_values`]).
    read_values: Option<Vec<usize>>,
}

impl SourceReader {
    /// A reader for one partition of `spec`; AVRO records find their schemas in `registry`.
    pub fn try_new(spec: SourceSpec, partition: u32, registry: Arc<dyn SchemaRegistry>) -> Result<Self> {
        let on = |key: bool| Registered { registry: registry.clone(), subject: subject(&spec.topic, key) };
        let key_decoder = format::decoder(&spec.key_format, spec.key_schema.clone(), Some(&on(true)))?;
        let read_values = spec.projected_values();
        let value_schema = match &read_values {
            Some(read) => Arc::new(spec.value_schema.project(read)?),
            None => spec.value_schema.clone(),
        };
        let value_decoder = format::decoder(&spec.value_format, value_schema, Some(&on(false)))?;
        let schema = spec.row_schema();
        Ok(Self { spec, partition, schema, key_decoder, value_decoder, registry, read_values })
    }

    /// Another reader of the same partition (to decode fetches side by side).
    pub fn fork(&self) -> Result<Self> {
        Self::try_new(self.spec.clone(), self.partition, self.registry.clone())
    }

    /// The schema of produced batches.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Decodes every record of `fetch`. Streams skip tombstones (null values); tables keep
    /// them as rows with null value columns and `__RILL_DELETE` set.
    pub fn read(&mut self, fetch: &Fetch) -> Result<ReadBatch> {
        let mut offsets = Vec::new();
        let mut timestamps = Vec::new();
        let mut keys: Vec<Option<&[u8]>> = Vec::new();
        let mut values: Vec<Option<&[u8]>> = Vec::new();
        let mut headers: Vec<Headers<'_>> = Vec::new();
        for r in fetch.records() {
            if (r.value.is_none() && !self.spec.keep_tombstones) || (r.key.is_none() && self.spec.skip_null_keys) {
                continue;
            }
            offsets.push(r.offset as i64);
            timestamps.push(r.timestamp);
            keys.push(r.key);
            values.push(r.value);
            if !self.spec.headers.is_empty() || self.spec.carry_headers {
                headers.push(r.headers().collect());
            }
        }
        let next_offset = fetch.next_offset();
        let n = offsets.len();
        let mut dead = Vec::new();
        if n == 0 {
            return Ok(ReadBatch { batch: None, dead, max_event_time: None, next_offset });
        }
        // Windowed keys: the window bounds come off the end of the key bytes.
        let mut window_errors = Vec::new();
        let mut bounds: Vec<(Option<i64>, Option<i64>)> = Vec::new();
        if let Some(w) = self.spec.window {
            for (i, k) in keys.iter_mut().enumerate() {
                match k.map(|b| w.split(b)) {
                    Some(Ok((inner, start, end))) => {
                        *k = Some(inner);
                        bounds.push((Some(start), Some(end)));
                    }
                    Some(Err(e)) => {
                        window_errors.push((i, e));
                        bounds.push((None, None));
                    }
                    None => bounds.push((None, None)),
                }
            }
        }
        let (key_cols, mut key_errors) = self.decode_keys(&keys)?;
        key_errors.extend(window_errors);
        let (value_cols, value_errors) = self.decode_values(&values)?;
        // String event times: parsed here, so that a bad one dead-letters its record.
        let mut parsed_times = None;
        let mut time_errors = Vec::new();
        if let EventTime::Formatted { column, format } = &self.spec.event_time {
            let col = key_cols.iter().chain(value_cols.iter()).nth(*column).ok_or_else(|| {
                EngineError::Internal(format!("event-time column {column} is not among the decoded columns"))
            })?;
            let strings = cast(col, &DataType::Utf8)?;
            let (times, errors) = parse_timestamps(strings.as_string::<i32>(), format);
            parsed_times = Some(times);
            time_errors = errors;
        }
        // A record's time is 0 or later (Kafka's rule; Kafka Streams skips the others).
        let column_times = match &self.spec.event_time {
            EventTime::Column(column) => {
                let col = key_cols.iter().chain(value_cols.iter()).nth(*column).ok_or_else(|| {
                    EngineError::Internal(format!("event-time column {column} is not among the decoded columns"))
                })?;
                Some(cast(col, &DataType::Int64)?.as_primitive::<arrow::datatypes::Int64Type>().clone())
            }
            _ => parsed_times.clone(),
        };
        if let Some(times) = &column_times {
            for (i, t) in times.iter().enumerate() {
                if let Some(t) = t.filter(|t| *t < 0) {
                    time_errors.push((i, format!("the record's time ({t}) is negative: it must be 0 or later")));
                }
            }
        }
        let mut bad = vec![false; n];
        for (i, e) in key_errors.iter().chain(value_errors.iter()).chain(time_errors.iter()) {
            if !bad[*i] {
                bad[*i] = true;
                dead.push(DeadLetter {
                    topic: self.spec.topic.clone(),
                    partition: self.partition,
                    offset: offsets[*i] as u64,
                    error: e.clone(),
                    key: keys[*i].map(|k| String::from_utf8_lossy(k).into_owned()),
                    value: values[*i].map(|v| String::from_utf8_lossy(v).into_owned()),
                });
            }
        }
        let keep: Vec<u32> = (0..n as u32).filter(|i| !bad[*i as usize]).collect();
        if keep.is_empty() {
            return Ok(ReadBatch { batch: None, dead, max_event_time: None, next_offset });
        }
        let all = keep.len() == n;
        let keep_idx = UInt32Array::from(keep.clone());
        let select = |c: &ArrayRef| -> Result<ArrayRef> {
            if all {
                Ok(c.clone())
            } else {
                Ok(take(c.as_ref(), &keep_idx, None)?)
            }
        };
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len());
        for c in key_cols.iter().chain(value_cols.iter()) {
            columns.push(select(c)?);
        }
        let pick = |v: &[i64]| -> Int64Array { keep.iter().map(|i| v[*i as usize]).collect() };
        let offs = pick(&offsets);
        let mut rowtime = pick(&timestamps);
        match &self.spec.event_time {
            EventTime::Column(c) => {
                let col = &columns[*c];
                let t = match col.data_type() {
                    DataType::Int64 => col.clone(),
                    _ => cast(col, &DataType::Int64)?,
                };
                rowtime = t.as_primitive::<arrow::datatypes::Int64Type>().clone();
            }
            EventTime::Formatted { .. } => {
                if let Some(t) = &parsed_times {
                    rowtime = select(&(Arc::new(t.clone()) as ArrayRef))?
                        .as_primitive::<arrow::datatypes::Int64Type>()
                        .clone();
                }
            }
            EventTime::RecordTimestamp => {}
        }
        if self.spec.window.is_some() {
            let starts: Int64Array = keep.iter().map(|i| bounds[*i as usize].0).collect();
            let ends: Int64Array = keep.iter().map(|i| bounds[*i as usize].1).collect();
            let at = key_cols.len();
            columns.insert(at, Arc::new(ends));
            columns.insert(at, Arc::new(starts));
        }
        let kept: Vec<Headers<'_>> = match headers.is_empty() {
            true => Vec::new(),
            false => keep.iter().map(|i| std::mem::take(&mut headers[*i as usize])).collect(),
        };
        for h in &self.spec.headers {
            columns.push(h.array(&kept)?);
        }
        let max_event_time = arrow::compute::max(&rowtime);
        columns.push(Arc::new(rowtime));
        columns.push(Arc::new(Int32Array::from(vec![self.partition as i32; keep.len()])));
        columns.push(Arc::new(offs));
        if self.spec.keep_tombstones {
            columns.push(Arc::new(BooleanArray::from(
                keep.iter().map(|i| values[*i as usize].is_none()).collect::<Vec<_>>(),
            )));
        }
        if self.spec.carry_headers {
            let all = HeaderColumn { name: HEADERS.into(), key: None, data_type: headers_type() };
            columns.push(all.array(&kept)?);
        }
        let batch = RecordBatch::try_new(self.schema.clone(), columns)
            .map_err(|e| EngineError::Internal(format!("source batch: {e}")))?;
        Ok(ReadBatch { batch: Some(batch), dead, max_event_time, next_offset })
    }

    /// Decodes values; tombstones become rows of nulls. One array per value column, one row
    /// per input, and the failures.
    fn decode_values(&mut self, values: &[Option<&[u8]>]) -> Result<ColumnsAndErrors> {
        let (mut cols, errors) = self.decode_read_values(values)?;
        // Columns the query does not read: null.
        if let Some(read) = &self.read_values {
            let mut decoded = std::mem::take(&mut cols).into_iter();
            for (i, f) in self.spec.value_schema.fields().iter().enumerate() {
                match read.contains(&i) {
                    true => {
                        cols.push(decoded.next().ok_or_else(|| {
                            EngineError::Internal("the value decoder returned too few columns".into())
                        })?)
                    }
                    false => cols.push(arrow::array::new_null_array(f.data_type(), values.len())),
                }
            }
        }
        Ok((cols, errors))
    }

    fn decode_read_values(&mut self, values: &[Option<&[u8]>]) -> Result<ColumnsAndErrors> {
        let present: Vec<usize> = (0..values.len()).filter(|i| values[*i].is_some()).collect();
        let bytes: Vec<&[u8]> = present.iter().filter_map(|i| values[*i]).collect();
        let decoded = self.value_decoder.decode(&bytes)?;
        let errors = decoded.errors.iter().map(|(j, e)| (present[*j], e.clone())).collect();
        if present.len() == values.len() && decoded.good.is_none() {
            return Ok((decoded.batch.columns().to_vec(), errors));
        }
        let rows: Vec<u32> = decoded.good.clone().unwrap_or_else(|| (0..bytes.len() as u32).collect());
        let mut idx: Vec<Option<u32>> = vec![None; values.len()];
        for (pos, j) in rows.iter().enumerate() {
            idx[present[*j as usize]] = Some(pos as u32);
        }
        let take_idx = UInt32Array::from(idx);
        let cols = decoded
            .batch
            .columns()
            .iter()
            .map(|c| Ok(take(c.as_ref(), &take_idx, None)?))
            .collect::<Result<Vec<_>>>()?;
        Ok((cols, errors))
    }

    /// Decodes keys; returns one array per key column with one row per input, the decoded
    /// inputs (None = all) and the failures.
    fn decode_keys(&mut self, keys: &[Option<&[u8]>]) -> Result<ColumnsAndErrors> {
        let n = keys.len();
        if self.spec.key_schema.fields().is_empty() {
            return Ok((vec![], vec![]));
        }
        let present: Vec<usize> = (0..n).filter(|i| keys[*i].is_some()).collect();
        let bytes: Vec<&[u8]> = present.iter().filter_map(|i| keys[*i]).collect();
        let decoded = self.key_decoder.decode(&bytes)?;
        let errors: Vec<(usize, String)> = decoded.errors.iter().map(|(j, e)| (present[*j], e.clone())).collect();
        // Map decoded rows back to inputs; inputs without a key (or with a bad one) get null.
        let rows: Vec<u32> = decoded.good.clone().unwrap_or_else(|| (0..bytes.len() as u32).collect());
        let mut idx: Vec<Option<u32>> = vec![None; n];
        for (pos, j) in rows.iter().enumerate() {
            idx[present[*j as usize]] = Some(pos as u32);
        }
        let take_idx = UInt32Array::from(idx);
        let mut cols = Vec::new();
        for c in decoded.batch.columns() {
            cols.push(take(c.as_ref(), &take_idx, None)?);
        }
        Ok((cols, errors))
    }
}

/// Serializes a dead letter as the JSON value written to the dead-letter topic.
pub fn dead_letter_value(query: &str, d: &DeadLetter) -> Bytes {
    let mut v = serde_json::to_value(d).unwrap_or(serde_json::Value::Null);
    if let serde_json::Value::Object(m) = &mut v {
        m.insert("query".into(), serde_json::Value::String(query.to_string()));
    }
    Bytes::from(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    use chrono::Datelike;

    /// `HEADERS` gives every header of a record in order; `HEADER('k')` the last one named `k`
    /// (null when absent); the value decoder never sees the header columns.
    #[tokio::test]
    async fn header_columns_come_from_the_record_headers() {
        use rill_connectors::store::{Record, TopicConfig, TopicStore};
        let dir = tempfile::tempdir().unwrap();
        let store = rill_connectors::EmbeddedStore::open(dir.path()).unwrap();
        store.create_topic("t", TopicConfig { partitions: 1, ..Default::default() }).unwrap();
        let record = |headers: Vec<(&str, Option<&'static [u8]>)>| Record {
            timestamp: 5,
            key: None,
            value: Some(Bytes::from_static(br#"{"V": 7}"#)),
            headers: headers.into_iter().map(|(k, v)| (k.to_string(), v.map(Bytes::from_static))).collect(),
        };
        let records = [record(vec![]), record(vec![("abc", Some(b"!")), ("def", None), ("abc", Some(b"#"))])];
        store.append("t", 0, &records).await.unwrap();
        let spec = SourceSpec {
            topic: "t".into(),
            key_format: Format::new(FormatKind::None),
            value_format: Format::new(FormatKind::Json),
            key_schema: Arc::new(Schema::empty()),
            value_schema: Arc::new(Schema::new(vec![Field::new("V", DataType::Int64, true)])),
            event_time: EventTime::RecordTimestamp,
            keep_tombstones: false,
            skip_null_keys: false,
            window: None,
            headers: vec![
                HeaderColumn { name: "H".into(), key: None, data_type: headers_type() },
                HeaderColumn { name: "ABC".into(), key: Some("abc".into()), data_type: DataType::Binary },
            ],
            carry_headers: false,
            read_values: None,
        };
        let mut reader = SourceReader::try_new(spec, 0, Arc::new(rill_connectors::FileRegistry::in_memory())).unwrap();
        let fetch = store.read("t", 0, 0, 1 << 20).unwrap();
        let batch = reader.read(&fetch).unwrap().batch.unwrap();
        let schema = batch.schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["V", "H", "ABC", ROWTIME, ROWPARTITION, ROWOFFSET]);
        let all = batch.column(1).as_list::<i32>();
        assert_eq!(all.value_length(0), 0);
        let second = all.value(1);
        let entries = second.as_struct();
        let keys: Vec<Option<&str>> = entries.column(0).as_string::<i32>().iter().collect();
        assert_eq!(keys, [Some("abc"), Some("def"), Some("abc")]);
        let values: Vec<Option<&[u8]>> = entries.column(1).as_binary::<i32>().iter().collect();
        assert_eq!(values, [Some(&b"!"[..]), None, Some(&b"#"[..])]);
        let abc: Vec<Option<&[u8]>> = batch.column(2).as_binary::<i32>().iter().collect();
        assert_eq!(abc, [None, Some(&b"#"[..])]);
    }

    /// A query reading some value columns of JSON records decodes only those: the others come
    /// out null, and a record is not refused for a column the query does not read.
    #[tokio::test]
    async fn unread_json_columns_are_not_decoded() {
        use rill_connectors::store::{Record, TopicConfig, TopicStore};
        let dir = tempfile::tempdir().unwrap();
        let store = rill_connectors::EmbeddedStore::open(dir.path()).unwrap();
        store.create_topic("t", TopicConfig { partitions: 1, ..Default::default() }).unwrap();
        let record = |v: &'static str| Record {
            timestamp: 5,
            key: None,
            value: Some(Bytes::from_static(v.as_bytes())),
            headers: vec![],
        };
        let records = [record(r#"{"A": 1, "B": "x", "C": 2}"#), record(r#"{"A": 3, "B": "y", "C": "not a number"}"#)];
        store.append("t", 0, &records).await.unwrap();
        let value_schema = Schema::new(vec![
            Field::new("A", DataType::Int64, true),
            Field::new("B", DataType::Utf8, true),
            Field::new("C", DataType::Int64, true),
        ]);
        let mut spec = SourceSpec {
            topic: "t".into(),
            key_format: Format::new(FormatKind::None),
            value_format: Format::new(FormatKind::Json),
            key_schema: Arc::new(Schema::empty()),
            value_schema: Arc::new(value_schema),
            event_time: EventTime::RecordTimestamp,
            keep_tombstones: false,
            skip_null_keys: false,
            window: None,
            headers: vec![],
            carry_headers: false,
            read_values: Some(vec![0, 1]),
        };
        let registry = Arc::new(rill_connectors::FileRegistry::in_memory());
        let fetch = store.read("t", 0, 0, 1 << 20).unwrap();
        let mut reader = SourceReader::try_new(spec.clone(), 0, registry.clone()).unwrap();
        let read = reader.read(&fetch).unwrap();
        let batch = read.batch.unwrap();
        assert!(read.dead.is_empty());
        let a: Vec<Option<i64>> = batch.column(0).as_primitive::<arrow::datatypes::Int64Type>().iter().collect();
        assert_eq!(a, [Some(1), Some(3)]);
        let b: Vec<Option<&str>> = batch.column(1).as_string::<i32>().iter().collect();
        assert_eq!(b, [Some("x"), Some("y")]);
        assert_eq!(batch.column(2).null_count(), 2);
        // Reading every column, the second record is bad.
        spec.read_values = None;
        let mut reader = SourceReader::try_new(spec, 0, registry).unwrap();
        let read = reader.read(&fetch).unwrap();
        assert_eq!(read.batch.unwrap().num_rows(), 1);
        assert_eq!(read.dead.len(), 1);
    }

    #[test]
    fn windowed_keys_give_their_window() {
        let mut time = b"k1".to_vec();
        time.extend(12_000i64.to_be_bytes());
        assert_eq!(SourceWindow::Time { size: 1_000 }.split(&time), Ok((&b"k1"[..], 12_000, 13_000)));
        let mut session = b"k".to_vec();
        session.extend(765i64.to_be_bytes());
        session.extend(234i64.to_be_bytes());
        assert_eq!(SourceWindow::Session.split(&session), Ok((&b"k"[..], 234, 765)));
        assert!(SourceWindow::Session.split(b"short").is_err());
    }

    #[test]
    fn formatted_timestamps_parse_or_say_why() {
        let values = StringArray::from(vec![Some("2024-01-01 00:00:01.250"), Some("nope"), None]);
        let (ms, errors) = parse_timestamps(&values, "%Y-%m-%d %H:%M:%S%.3f");
        assert_eq!(ms.value(0), 1_704_067_201_250);
        assert!(ms.is_null(1) && ms.is_null(2));
        assert_eq!(errors.len(), 1);
        assert!(errors[0].1.contains("'nope' does not match the TIMESTAMP_FORMAT"), "{errors:?}");
        // The fast path agrees with chrono, day by day over centuries and at the edges.
        let mut day = chrono::NaiveDate::from_ymd_opt(1600, 1, 1).unwrap();
        while day.year() < 2500 {
            let text = format!("{} 23:59:58.999", day.format("%Y-%m-%d"));
            let (ms, errors) = parse_timestamps(&StringArray::from(vec![text.as_str()]), "%Y-%m-%d %H:%M:%S.%3f");
            assert!(errors.is_empty());
            let expected = day.and_hms_milli_opt(23, 59, 58, 999).unwrap().and_utc().timestamp_millis();
            assert_eq!(ms.value(0), expected, "{text}");
            day += chrono::Duration::days(37);
        }
        assert_eq!(iso_millis(b"2024-13-01 00:00:00.000"), None);
        assert_eq!(iso_millis(b"2023-02-29 00:00:00.000"), None, "not a leap year: chrono reports it");
        let zoned = StringArray::from(vec!["10-04-19 12:00:17Z", "10-04-19 14:00:17+0200"]);
        let (ms, errors) = parse_timestamps(&zoned, "%y-%m-%d %H:%M:%S%z");
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!((ms.value(0), ms.value(1)), (1_271_678_417_000, 1_271_678_417_000));
    }
}
