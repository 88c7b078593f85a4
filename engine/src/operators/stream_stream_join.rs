//! `StreamStreamJoinOperator`: joins two streams on a key within a time window.
//!
//! Input 0 is the left stream, input 1 (`process_side_batch`) the right one. A left row at
//! time `l` matches right rows of the same key at times `r` with `l - before <= r <= l + after`
//! (`WITHIN (before, after)`); matches are emitted as soon as the second row arrives, from
//! either side. Both sides are buffered, as the Arrow batches they arrived in with an index from
//! key to rows (output rows are gathered column by column from them), until the watermark
//! shows no more matches can come:
//! a left row expires when `l + after + grace < watermark`, a right row when
//! `r + before + grace < watermark`. For LEFT, RIGHT and FULL joins an expiring row that never
//! matched is emitted then, with the other side null: no early null rows, as the issue asks
//! (and as ksqlDB does with a GRACE PERIOD). A row arriving after its whole window and grace
//! closed joins the rows still buffered; if none matches, an outer side's row is emitted at
//! once with nulls (Kafka Streams does the same), an inner side's row is handed to the runtime
//! as late. State is bounded by the window, grace and the input rate.

use crate::state::HashMap;
use std::collections::VecDeque;
use std::sync::Arc;

use arrow::array::{
    new_null_array, Array, ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch, RecordBatchOptions, UInt32Array,
};
use arrow::compute::{cast, interleave, take};
use arrow::datatypes::{DataType, Int64Type, SchemaRef};
use arrow::row::{RowConverter, Rows, SortField};
use datafusion::physical_expr::PhysicalExpr;

use crate::message::{Message, Watermark};
use crate::operator::{LateRow, Operator, StateInfo};
use crate::{EngineError, Result};

/// The kind of join.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinKind {
    /// Matches only.
    Inner,
    /// Plus unmatched left rows.
    Left,
    /// Plus unmatched right rows.
    Right,
    /// Plus unmatched rows of both sides.
    Full,
}

/// What the join needs, planned by `rill-sql`.
pub struct StreamStreamJoinConfig {
    /// Join key over left rows.
    pub left_key: Vec<Arc<dyn PhysicalExpr>>,
    /// Join key over right rows.
    pub right_key: Vec<Arc<dyn PhysicalExpr>>,
    /// Schema of left rows.
    pub left_schema: SchemaRef,
    /// Schema of right rows.
    pub right_schema: SchemaRef,
    /// Event-time column of left rows.
    pub left_time: usize,
    /// Event-time column of right rows.
    pub right_time: usize,
    /// How far a right row may be before the left one (ms).
    pub before: i64,
    /// How far a right row may be after the left one (ms).
    pub after: i64,
    /// Grace period (ms).
    pub grace: i64,
    /// Join kind.
    pub kind: JoinKind,
    /// Emit an outer row with nulls as soon as a row arrives without a match (ksqlDB's
    /// semantics when no GRACE PERIOD is given); otherwise only once its window has closed.
    pub eager_outer: bool,
    /// Left columns then right columns (then the record headers, with `headers`).
    pub output_schema: SchemaRef,
    /// Rows of both sides end with their record headers (a column after the side's columns of
    /// the join): each output row carries the headers of the row that produced it (the row
    /// being processed; for an outer row with nulls, its one row) as its last column, as Kafka
    /// Streams writes the triggering record's headers on the join's output.
    pub headers: bool,
}

/// A buffered row: where it is stored, and its time.
#[derive(Clone, Copy)]
struct Pos {
    id: u64,
    row: u32,
    time: i64,
}

/// One buffered input batch of a side (Arrow columns as they arrived, never copied row by row).
struct Stored {
    batch: RecordBatch,
    keys: Rows,
    times: Vec<i64>,
    matched: Vec<bool>,
    /// The rows kept (a null key or a late row is not), by time; `next` is the first of them
    /// not yet expired.
    order: Vec<u32>,
    next: usize,
}

/// The rows buffered for one side: batches by id, and an index from key to rows.
#[derive(Default)]
struct Buffer {
    stored: VecDeque<Stored>,
    /// Id of `stored[0]`.
    first_id: u64,
    index: HashMap<Box<[u8]>, Vec<Pos>>,
}

impl Buffer {
    fn get(&self, id: u64) -> &Stored {
        &self.stored[(id - self.first_id) as usize]
    }

    /// Keeps `rows` of `batch` (each with its key, time and whether it matched).
    fn keep(&mut self, batch: RecordBatch, keys: Rows, times: Vec<i64>, matched: Vec<bool>, mut rows: Vec<u32>) {
        if rows.is_empty() {
            return;
        }
        let id = self.first_id + self.stored.len() as u64;
        for &r in &rows {
            let pos = Pos { id, row: r, time: times[r as usize] };
            let key = keys.row(r as usize).data();
            match self.index.get_mut(key) {
                Some(v) => v.push(pos),
                None => {
                    self.index.insert(key.into(), vec![pos]);
                }
            }
        }
        rows.sort_by_key(|r| times[*r as usize]);
        self.stored.push_back(Stored { batch, keys, times, matched, order: rows, next: 0 });
    }

    /// Drops rows with `time + reach + grace < watermark`; returns those that never matched
    /// (when `outer`), with their times.
    fn expire(&mut self, watermark: i64, reach: i64, grace: i64, outer: bool) -> Vec<(i64, Src)> {
        let alive = |t: i64| (t + reach).saturating_add(grace) >= watermark;
        let mut unmatched = Vec::new();
        let mut gone: Vec<(usize, u32)> = Vec::new();
        for (slot, s) in self.stored.iter_mut().enumerate() {
            while let Some(&r) = s.order.get(s.next) {
                if alive(s.times[r as usize]) {
                    break;
                }
                if outer && !s.matched[r as usize] {
                    unmatched.push((s.times[r as usize], Src::Kept(self.first_id + slot as u64, r)));
                }
                gone.push((slot, r));
                s.next += 1;
            }
        }
        if !gone.is_empty() {
            let stored = &self.stored;
            let mut keys: Vec<&[u8]> =
                gone.iter().map(|(slot, r)| stored[*slot].keys.row(*r as usize).data()).collect();
            keys.sort_unstable();
            keys.dedup();
            for key in keys {
                if let Some(v) = self.index.get_mut(key) {
                    v.retain(|p| alive(p.time));
                    if v.is_empty() {
                        self.index.remove(key);
                    }
                }
            }
        }
        // Batches stay until `drop_expired`: the rows returned are still to be emitted.
        unmatched
    }

    /// Drops batches whose rows have all expired, oldest first.
    fn drop_expired(&mut self) {
        while self.stored.front().is_some_and(|s| s.next == s.order.len()) {
            self.stored.pop_front();
            self.first_id += 1;
        }
    }

    /// The rows still kept, in `stored` order: (batch slot, row).
    fn live(&self) -> Vec<(usize, usize)> {
        self.stored
            .iter()
            .enumerate()
            .flat_map(|(slot, s)| s.order[s.next..].iter().map(move |r| (slot, *r as usize)))
            .collect()
    }

    fn bytes(&self) -> usize {
        self.stored.iter().map(|s| s.batch.get_array_memory_size() + s.keys.size() + s.times.len() * 9).sum::<usize>()
            + self.index.iter().map(|(k, v)| k.len() + v.len() * 24 + 48).sum::<usize>()
    }
}

/// See the module docs.
pub struct StreamStreamJoinOperator {
    cfg: StreamStreamJoinConfig,
    key_types: Vec<DataType>,
    keys: RowConverter,
    left: Buffer,
    right: Buffer,
    watermark: i64,
    late: Vec<LateRow>,
}

/// Where an output row's side comes from: row `i` of the batch being processed, or a
/// buffered row (batch id, row).
#[derive(Clone, Copy)]
enum Src {
    Batch(u32),
    Kept(u64, u32),
}

/// One output row: a left row and/or a right row.
type Pair = (Option<Src>, Option<Src>);

impl StreamStreamJoinOperator {
    /// A join per `cfg`; key types are the left key's.
    pub fn try_new(cfg: StreamStreamJoinConfig) -> Result<Self> {
        let key_types = cfg.left_key.iter().map(|e| Ok(e.data_type(&cfg.left_schema)?)).collect::<Result<Vec<_>>>()?;
        let keys = RowConverter::new(key_types.iter().map(|t| SortField::new(t.clone())).collect())?;
        Ok(Self {
            cfg,
            key_types,
            keys,
            left: Buffer::default(),
            right: Buffer::default(),
            watermark: i64::MIN,
            late: Vec::new(),
        })
    }

    /// The key rows of `batch` (one side's rows), and which keys have a null.
    fn key_rows(&self, batch: &RecordBatch, from_left: bool) -> Result<(Rows, Vec<bool>)> {
        let exprs = if from_left { &self.cfg.left_key } else { &self.cfg.right_key };
        let n = batch.num_rows();
        let arrays = crate::state::key_arrays(exprs, &self.key_types, batch)?;
        let nulls = (0..n).map(|i| arrays.iter().any(|a| a.is_null(i))).collect();
        Ok((self.keys.convert_columns(&arrays)?, nulls))
    }

    fn times(&self, batch: &RecordBatch, from_left: bool) -> Result<Vec<i64>> {
        let col = if from_left { self.cfg.left_time } else { self.cfg.right_time };
        let times = cast(batch.column(col), &DataType::Int64)?;
        let times = times.as_primitive::<Int64Type>();
        Ok((0..times.len()).map(|i| if times.is_null(i) { 0 } else { times.value(i) }).collect())
    }

    /// Processes rows of one side against the other side's buffer.
    fn process(&mut self, batch: RecordBatch, from_left: bool, out: &mut Vec<Message>) -> Result<()> {
        let (keys, null_keys) = self.key_rows(&batch, from_left)?;
        let times = self.times(&batch, from_left)?;
        let (before, after, grace) = (self.cfg.before, self.cfg.after, self.cfg.grace);
        let outer = self.emits_unmatched(from_left);
        let eager_outer = self.cfg.eager_outer;
        let watermark = self.watermark;
        let other = if from_left { &mut self.right } else { &mut self.left };
        let mut pairs: Vec<Pair> = Vec::new();
        let pair = |me: Src, partner: Option<Src>| if from_left { (Some(me), partner) } else { (partner, Some(me)) };
        let mut matched_flags = vec![false; batch.num_rows()];
        let mut kept: Vec<u32> = Vec::with_capacity(batch.num_rows());
        for (i, &null_key) in null_keys.iter().enumerate() {
            let t = times[i];
            // The latest partner time that could still match this row, plus grace.
            let reach = if from_left { t + after } else { t + before };
            let late = watermark != i64::MIN && reach.saturating_add(grace) < watermark;
            if late && !outer {
                let (start, end) = if from_left { (t - before, t + after) } else { (t - after, t + before) };
                self.late.push(LateRow {
                    partition: 0,
                    offset: -1,
                    timestamp: t,
                    window_start: start,
                    window_end: end,
                    watermark,
                    reason: format!(
                        "{} row at {t} is later than its join window [{start}, {end}] plus grace: the watermark was already {watermark}",
                        if from_left { "left" } else { "right" },
                    ),
                });
                continue;
            }
            let me = Src::Batch(i as u32);
            if null_key {
                // A null key never matches: it is final right away.
                if outer {
                    pairs.push(pair(me, None));
                }
                continue;
            }
            let (lo, hi) = if from_left { (t - before, t + after) } else { (t - after, t + before) };
            let mut matched = false;
            if let Some(partners) = other.index.get(keys.row(i).data()) {
                for p in partners.iter().filter(|p| p.time >= lo && p.time <= hi) {
                    matched = true;
                    other.stored[(p.id - other.first_id) as usize].matched[p.row as usize] = true;
                    pairs.push(pair(me, Some(Src::Kept(p.id, p.row))));
                }
            }
            // A late row of an outer side joins what is still buffered, else comes out with
            // nulls right away (as in Kafka Streams); it is not buffered.
            if !matched && (late || eager_outer) && outer {
                pairs.push(pair(me, None));
            }
            if late {
                continue;
            }
            // With eager outer rows, the row's null row is already out: never emit it again.
            matched_flags[i] = matched || eager_outer;
            kept.push(i as u32);
        }
        let result = self.emit(&pairs, Some((&batch, from_left)));
        let own = if from_left { &mut self.left } else { &mut self.right };
        own.keep(batch, keys, times, matched_flags, kept);
        result.map(|b| out.extend(b.map(Message::Data)))
    }

    fn emits_unmatched(&self, left_side: bool) -> bool {
        matches!(
            (self.cfg.kind, left_side),
            (JoinKind::Left | JoinKind::Full, true) | (JoinKind::Right | JoinKind::Full, false)
        )
    }

    /// Drops rows the watermark has passed; emits outer rows that never matched.
    fn expire(&mut self, out: &mut Vec<Message>) -> Result<()> {
        let wm = self.watermark;
        let (before, after, grace) = (self.cfg.before, self.cfg.after, self.cfg.grace);
        let left = self.left.expire(wm, after, grace, self.emits_unmatched(true));
        let right = self.right.expire(wm, before, grace, self.emits_unmatched(false));
        let mut expired: Vec<(i64, Pair)> = left.into_iter().map(|(t, s)| (t, (Some(s), None))).collect();
        expired.extend(right.into_iter().map(|(t, s)| (t, (None, Some(s)))));
        expired.sort_by_key(|(t, _)| *t);
        let pairs: Vec<Pair> = expired.into_iter().map(|(_, p)| p).collect();
        let result = self.emit(&pairs, None);
        self.left.drop_expired();
        self.right.drop_expired();
        if let Some(b) = result? {
            out.push(Message::Data(b));
        }
        Ok(())
    }

    /// Builds the output batch of `pairs`; `current` is the batch being processed (and its
    /// side), which `Src::Batch` refers to.
    fn emit(&self, pairs: &[Pair], current: Option<(&RecordBatch, bool)>) -> Result<Option<RecordBatch>> {
        if pairs.is_empty() {
            return Ok(None);
        }
        let cur = |left: bool| current.filter(|c| c.1 == left).map(|c| c.0);
        // With headers, each side's last column is its rows' headers: gathered apart.
        let data = |schema: &SchemaRef| schema.fields().len() - usize::from(self.cfg.headers);
        let (left_n, right_n) = (data(&self.cfg.left_schema), data(&self.cfg.right_schema));
        let mut columns = gather(&self.cfg.left_schema, left_n, cur(true), &self.left, pairs.iter().map(|p| p.0))?;
        columns.extend(gather(&self.cfg.right_schema, right_n, cur(false), &self.right, pairs.iter().map(|p| p.1))?);
        if self.cfg.headers {
            columns.push(self.producing_headers(pairs, current, left_n, right_n)?);
        }
        let schema = &self.cfg.output_schema;
        for (c, f) in columns.iter_mut().zip(schema.fields()) {
            if c.data_type() != f.data_type() {
                *c = cast(c, f.data_type())?;
            }
        }
        let options = RecordBatchOptions::new().with_row_count(Some(pairs.len()));
        Ok(Some(RecordBatch::try_new_with_options(schema.clone(), columns, &options)?))
    }
}

impl StreamStreamJoinOperator {
    /// The headers column of output rows: per pair, the headers of the row that produced it
    /// (the row of the batch being processed; at expiry, the one row present). When none of
    /// the rows involved has headers, empty lists without gathering.
    fn producing_headers(
        &self,
        pairs: &[Pair],
        current: Option<(&RecordBatch, bool)>,
        left_n: usize,
        right_n: usize,
    ) -> Result<ArrayRef> {
        let mut arrays: Vec<&dyn Array> = Vec::new();
        let mut slot_of: HashMap<(bool, u64), usize> = HashMap::default();
        let mut idx: Vec<(usize, usize)> = Vec::with_capacity(pairs.len());
        if let Some((batch, from_left)) = current {
            arrays.push(batch.column(if from_left { left_n } else { right_n }).as_ref());
        }
        for p in pairs {
            let (from_left, src) = match (current, p) {
                (Some((_, from_left)), _) => (from_left, if from_left { p.0 } else { p.1 }),
                (None, (Some(l), _)) => (true, Some(*l)),
                (None, (None, r)) => (false, *r),
            };
            idx.push(match src {
                Some(Src::Batch(i)) => (0, i as usize),
                Some(Src::Kept(id, row)) => {
                    let next = arrays.len();
                    let slot = *slot_of.entry((from_left, id)).or_insert(next);
                    if slot == next {
                        let (buffer, n) = if from_left { (&self.left, left_n) } else { (&self.right, right_n) };
                        arrays.push(buffer.get(id).batch.column(n).as_ref());
                    }
                    (slot, row as usize)
                }
                None => return Err(EngineError::Internal("a join output row without its producing row".into())),
            });
        }
        let no_headers =
            |a: &&dyn Array| a.as_list_opt::<i32>().is_some_and(|l| l.values().is_empty() && l.null_count() == 0);
        if arrays.iter().all(no_headers) {
            return crate::source::no_headers(pairs.len());
        }
        Ok(interleave(&arrays, &idx)?)
    }
}

/// One side's first `columns` columns for output rows picked from the batch being processed,
/// the side's buffer, or nulls (`None`).
fn gather(
    schema: &SchemaRef,
    columns: usize,
    current: Option<&RecordBatch>,
    buffer: &Buffer,
    picks: impl Iterator<Item = Option<Src>>,
) -> Result<Vec<ArrayRef>> {
    // Sources: the batch being processed, then each buffered batch used, then nulls.
    let mut sources: Vec<&RecordBatch> = current.into_iter().collect();
    let mut slot_of: HashMap<u64, usize> = HashMap::default();
    let mut nulls = false;
    let mut idx: Vec<(usize, usize)> = Vec::new();
    for p in picks {
        idx.push(match p {
            Some(Src::Batch(i)) => (0, i as usize),
            Some(Src::Kept(id, row)) => {
                let next = sources.len();
                let s = *slot_of.entry(id).or_insert(next);
                if s == next {
                    sources.push(&buffer.get(id).batch);
                }
                (s, row as usize)
            }
            None => {
                nulls = true;
                (usize::MAX, 0)
            }
        });
    }
    if sources.is_empty() {
        return Ok(schema.fields()[..columns].iter().map(|f| new_null_array(f.data_type(), idx.len())).collect());
    }
    let null_slot = sources.len();
    if nulls {
        for i in idx.iter_mut().filter(|i| i.0 == usize::MAX) {
            i.0 = null_slot;
        }
    }
    (0..columns)
        .map(|c| {
            let null = nulls.then(|| new_null_array(schema.field(c).data_type(), 1));
            let mut arrays: Vec<&dyn Array> = sources.iter().map(|b| b.column(c).as_ref()).collect();
            if let Some(n) = &null {
                arrays.push(n.as_ref());
            }
            Ok(interleave(&arrays, &idx)?)
        })
        .collect()
}

/// A join side's columns of the join: its rows' schema without the record-headers column they
/// end with when `headers`.
pub(crate) fn join_columns(rows: &SchemaRef, headers: bool) -> SchemaRef {
    let n = rows.fields().len() - usize::from(headers);
    Arc::new(arrow::datatypes::Schema::new(rows.fields()[..n].to_vec()))
}

/// One side of a join's output rows: its row converter and schema, and per output row its row
/// (in the converter's format) or `None` where the side is absent.
pub(crate) struct Side<'a, I: Iterator<Item = Option<arrow::row::Row<'a>>>> {
    pub rows: &'a RowConverter,
    pub schema: &'a SchemaRef,
    pub picked: I,
}

/// A join's output batch of `n` rows: the left side's columns, the right side's (null where a
/// side is absent), typed as `schema`, then the `extra` columns (delete marker, time, ...).
pub(crate) fn joined_batch<'a>(
    left: Side<'a, impl Iterator<Item = Option<arrow::row::Row<'a>>>>,
    right: Side<'a, impl Iterator<Item = Option<arrow::row::Row<'a>>>>,
    n: usize,
    schema: &SchemaRef,
    extra: Vec<ArrayRef>,
) -> Result<RecordBatch> {
    let mut columns = side_columns(left.rows, left.schema, left.picked, n)?;
    columns.extend(side_columns(right.rows, right.schema, right.picked, n)?);
    for (c, f) in columns.iter_mut().zip(schema.fields()) {
        if c.data_type() != f.data_type() {
            *c = cast(c, f.data_type())?;
        }
    }
    columns.extend(extra);
    Ok(RecordBatch::try_new_with_options(schema.clone(), columns, &RecordBatchOptions::new().with_row_count(Some(n)))?)
}

/// The columns of one side for `n` output rows, null where the side is absent.
pub(crate) fn side_columns<'a>(
    converter: &RowConverter,
    schema: &SchemaRef,
    rows: impl Iterator<Item = Option<arrow::row::Row<'a>>>,
    n: usize,
) -> Result<Vec<ArrayRef>> {
    let mut present = Vec::new();
    let mut idx: Vec<Option<u32>> = Vec::with_capacity(n);
    for r in rows {
        match r {
            Some(r) => {
                idx.push(Some(present.len() as u32));
                present.push(r);
            }
            None => idx.push(None),
        }
    }
    if present.is_empty() {
        return Ok(schema.fields().iter().map(|f| new_null_array(f.data_type(), n)).collect());
    }
    let columns = converter.convert_rows(present)?;
    let idx = UInt32Array::from(idx);
    columns.iter().map(|c| Ok(take(c.as_ref(), &idx, None)?)).collect()
}

impl Operator for StreamStreamJoinOperator {
    fn name(&self) -> &str {
        "stream-stream-join"
    }

    fn output_schema(&self) -> SchemaRef {
        self.cfg.output_schema.clone()
    }

    /// Per side, the rows still buffered and their (time, matched); then the watermark.
    fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        let side = |buffer: &Buffer, schema: &SchemaRef| -> Result<[RecordBatch; 2]> {
            let live = buffer.live();
            let values = if live.is_empty() {
                RecordBatch::new_empty(schema.clone())
            } else {
                let batches: Vec<&RecordBatch> = buffer.stored.iter().map(|s| &s.batch).collect();
                let columns = (0..schema.fields().len())
                    .map(|c| {
                        let arrays: Vec<&dyn Array> = batches.iter().map(|b| b.column(c).as_ref()).collect();
                        Ok(interleave(&arrays, &live)?)
                    })
                    .collect::<Result<Vec<_>>>()?;
                RecordBatch::try_new(schema.clone(), columns)?
            };
            let times = Int64Array::from_iter_values(live.iter().map(|(s, r)| buffer.stored[*s].times[*r]));
            let matched = BooleanArray::from_iter(live.iter().map(|(s, r)| Some(buffer.stored[*s].matched[*r])));
            let meta = crate::state::batch(vec![Arc::new(times), Arc::new(matched)], live.len())?;
            Ok([values, meta])
        };
        let [lv, lm] = side(&self.left, &self.cfg.left_schema)?;
        let [rv, rm] = side(&self.right, &self.cfg.right_schema)?;
        let wm = crate::state::batch(vec![Arc::new(Int64Array::from(vec![self.watermark]))], 1)?;
        Ok(vec![lv, lm, rv, rm, wm])
    }

    fn state_signature(&mut self) -> Result<String> {
        let c = &self.cfg;
        Ok(format!(
            "stream-stream-join[{:?} on {:?} = {:?}; within -{} +{} grace {}; left {:?}; right {:?}]",
            c.kind,
            c.left_key.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
            c.right_key.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
            c.before,
            c.after,
            c.grace,
            c.left_schema.fields().iter().map(|f| f.data_type().to_string()).collect::<Vec<_>>(),
            c.right_schema.fields().iter().map(|f| f.data_type().to_string()).collect::<Vec<_>>(),
        ))
    }

    fn restore(&mut self, state: Vec<RecordBatch>) -> Result<()> {
        let [lv, lm, rv, rm, wm] = state.as_slice() else {
            return Err(crate::state::bad_state("a stream-stream join has five state batches"));
        };
        for (values, meta, from_left) in [(lv, lm, true), (rv, rm, false)] {
            let schema = if from_left { &self.cfg.left_schema } else { &self.cfg.right_schema };
            if values.schema().fields().len() != schema.fields().len()
                || meta.num_columns() != 2
                || meta.num_rows() != values.num_rows()
            {
                return Err(crate::state::bad_state("the join's buffered rows have another shape"));
            }
            let values = RecordBatch::try_new(schema.clone(), values.columns().to_vec())?;
            let (keys, _) = self.key_rows(&values, from_left)?;
            let times = meta.column(0).as_primitive::<Int64Type>().values().to_vec();
            let matched = meta.column(1).as_boolean().iter().map(|m| m.unwrap_or(false)).collect();
            let rows = (0..values.num_rows() as u32).collect();
            let buffer = if from_left { &mut self.left } else { &mut self.right };
            *buffer = Buffer::default();
            buffer.keep(values, keys, times, matched, rows);
        }
        self.watermark = wm.column(0).as_primitive::<Int64Type>().value(0);
        Ok(())
    }

    fn process_batch(&mut self, batch: RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        self.process(batch, true, out)
    }

    fn process_side_batch(&mut self, input: usize, batch: RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        if input != 1 {
            return Err(EngineError::Internal(format!("stream-stream join has no input {input}")));
        }
        self.process(batch, false, out)
    }

    fn handle_watermark(&mut self, watermark: Watermark, out: &mut Vec<Message>) -> Result<()> {
        if let Watermark::EventTime(t) = watermark {
            if t > self.watermark {
                self.watermark = t;
                self.expire(out)?;
            }
        }
        out.push(Message::Watermark(watermark));
        Ok(())
    }

    fn on_close(&mut self, out: &mut Vec<Message>) -> Result<()> {
        self.watermark = i64::MAX;
        self.expire(out)?;
        out.push(Message::End);
        Ok(())
    }

    fn drain_late(&mut self, out: &mut Vec<LateRow>) {
        out.append(&mut self.late);
    }

    fn state_info(&self) -> StateInfo {
        StateInfo {
            bounded: true,
            bytes: self.left.bytes() + self.right.bytes(),
            description: "rows of both sides until their join window plus grace has passed".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::StringArray;
    use arrow::datatypes::{Field, Schema};
    use arrow::util::pretty::pretty_format_batches;
    use datafusion::physical_expr::expressions::col;

    use super::*;

    fn side_schema(prefix: &str) -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new(format!("{prefix}_K"), DataType::Utf8, true),
            Field::new(format!("{prefix}_T"), DataType::Int64, true),
        ]))
    }

    fn operator() -> StreamStreamJoinOperator {
        operator_of(JoinKind::Full)
    }

    fn operator_of(kind: JoinKind) -> StreamStreamJoinOperator {
        let (l, r) = (side_schema("L"), side_schema("R"));
        let mut fields: Vec<Field> = l.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.extend(r.fields().iter().map(|f| f.as_ref().clone()));
        StreamStreamJoinOperator::try_new(StreamStreamJoinConfig {
            left_key: vec![col("L_K", &l).unwrap()],
            right_key: vec![col("R_K", &r).unwrap()],
            left_schema: l,
            right_schema: r,
            left_time: 1,
            right_time: 1,
            before: 100,
            after: 100,
            grace: 50,
            kind,
            eager_outer: false,
            output_schema: Arc::new(Schema::new(fields)),
            headers: false,
        })
        .unwrap()
    }

    fn rows(prefix: &str, rows: &[(&str, i64)]) -> RecordBatch {
        RecordBatch::try_new(
            side_schema(prefix),
            vec![
                Arc::new(StringArray::from(rows.iter().map(|r| r.0).collect::<Vec<_>>())),
                Arc::new(Int64Array::from(rows.iter().map(|r| r.1).collect::<Vec<_>>())),
            ],
        )
        .unwrap()
    }

    fn run(op: &mut StreamStreamJoinOperator, left: &[(&str, i64)], right: &[(&str, i64)], wm: i64) -> String {
        let mut out = Vec::new();
        op.process_batch(rows("L", left), &mut out).unwrap();
        op.process_side_batch(1, rows("R", right), &mut out).unwrap();
        op.handle_watermark(Watermark::EventTime(wm), &mut out).unwrap();
        let batches: Vec<RecordBatch> =
            out.into_iter().filter_map(|m| if let Message::Data(b) = m { Some(b) } else { None }).collect();
        pretty_format_batches(&batches).unwrap().to_string()
    }

    #[test]
    fn late_rows_of_an_outer_side_come_out_with_nulls_and_inner_ones_go_to_late() {
        let mut left = operator_of(JoinKind::Left);
        run(&mut left, &[], &[("k", 900)], 1000);
        // Left row 700: its window [600, 800] plus grace 50 closed before 1000. The right row
        // at 900 is out of its window: the left row comes out alone, at once, and is not late.
        let out = run(&mut left, &[("a", 700), ("k", 850)], &[("b", 700)], 1000);
        assert!(out.contains("| a   | 700 |     |     |"), "{out}");
        assert!(out.contains("| k   | 850 | k   | 900 |"), "{out}");
        let mut late = Vec::new();
        left.drain_late(&mut late);
        // The right side of a LEFT join is inner: its late row is reported.
        assert_eq!(late.len(), 1, "{late:?}");
        assert!(late[0].reason.starts_with("right row at 700"), "{}", late[0].reason);
        assert!(!out.contains("| b "), "{out}");
    }

    #[test]
    fn state_roundtrips_through_snapshot() {
        let mut original = operator();
        run(&mut original, &[("a", 100), ("b", 150)], &[("a", 120), ("c", 160)], 110);
        let mut restored = operator();
        restored.restore(original.snapshot().unwrap()).unwrap();
        let left = [("c", 200), ("b", 220)];
        let right = [("a", 210), ("d", 230)];
        let expected = run(&mut original, &left, &right, 1000);
        assert!(expected.contains('a') && expected.contains('d'), "{expected}");
        assert_eq!(run(&mut restored, &left, &right, 1000), expected);
    }

    /// With headers, each side's last column stands for its records' headers: an output row
    /// carries the producing row's (the one being processed; an outer row's own at expiry).
    #[test]
    fn output_rows_carry_the_producing_rows_headers() {
        let side = |p: &str| {
            let mut fields: Vec<Field> = side_schema(p).fields().iter().map(|f| f.as_ref().clone()).collect();
            fields.push(Field::new(format!("{p}_H"), DataType::Utf8, true));
            Arc::new(Schema::new(fields))
        };
        let (l, r) = (side("L"), side("R"));
        let mut fields: Vec<Field> = l.fields()[..2].iter().map(|f| f.as_ref().clone()).collect();
        fields.extend(r.fields()[..2].iter().map(|f| f.as_ref().clone()));
        fields.push(Field::new("H", DataType::Utf8, true));
        let mut op = StreamStreamJoinOperator::try_new(StreamStreamJoinConfig {
            left_key: vec![col("L_K", &l).unwrap()],
            right_key: vec![col("R_K", &r).unwrap()],
            left_schema: l.clone(),
            right_schema: r.clone(),
            left_time: 1,
            right_time: 1,
            before: 100,
            after: 100,
            grace: 50,
            kind: JoinKind::Full,
            eager_outer: false,
            output_schema: Arc::new(Schema::new(fields)),
            headers: true,
        })
        .unwrap();
        let batch = |schema: &SchemaRef, rows: &[(&str, i64, &str)]| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from(rows.iter().map(|r| r.0).collect::<Vec<_>>())),
                    Arc::new(Int64Array::from(rows.iter().map(|r| r.1).collect::<Vec<_>>())),
                    Arc::new(StringArray::from(rows.iter().map(|r| r.2).collect::<Vec<_>>())),
                ],
            )
            .unwrap()
        };
        let mut out = Vec::new();
        op.process_batch(batch(&l, &[("k", 100, "left k"), ("a", 100, "left a")]), &mut out).unwrap();
        op.process_side_batch(1, batch(&r, &[("k", 120, "right k"), ("b", 130, "right b")]), &mut out).unwrap();
        op.handle_watermark(Watermark::EventTime(1000), &mut out).unwrap();
        let batches: Vec<RecordBatch> =
            out.into_iter().filter_map(|m| if let Message::Data(b) = m { Some(b) } else { None }).collect();
        let text = pretty_format_batches(&batches).unwrap().to_string();
        assert_eq!(batches.iter().map(|b| b.num_columns()).max(), Some(5), "{text}");
        assert!(text.contains("| k   | 100 | k   | 120 | right k |"), "{text}");
        assert!(text.contains("| a   | 100 |     |     | left a  |"), "{text}");
        assert!(text.contains("|     |     | b   | 130 | right b |"), "{text}");
    }
}
