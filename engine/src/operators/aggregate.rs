//! `AggregateOperator`: `GROUP BY` over a stream, optionally in event-time windows.
//!
//! State is one set of DataFusion `Accumulator`s per group (per key and window), or, for EMIT
//! FINAL time windows, vectorised window panes (`crate::panes`). For each input batch the rows
//! are bucketed by group with arrow's row format, and then:
//!
//! * `EMIT CHANGES`: the group's value after each input record, one row per record in input
//!   order (ksqlDB with its record cache off; a table update's retraction and addition are one
//!   record): each touched group is updated record by record;
//! * `EMIT FINAL`: nothing until the watermark passes window end + grace, then one row per window.
//!
//! `HAVING` is evaluated on the emitted rows: a group that stops matching after it was emitted
//! produces a tombstone (delete) row, as ksqlDB's table changelog does.
//!
//! Windows: TUMBLING and HOPPING assign each row to its windows; a row is late for a window when
//! the watermark (before the row's batch) has passed window end + grace. Late rows are not
//! dropped silently: they are handed to the runtime through [`Operator::drain_late`] and written
//! to the late-data topic with the window they missed. SESSION windows merge per key: a row
//! joins every session within `gap` of it, merged sessions' accumulator states are merged, and
//! the sessions it replaced are retracted with tombstones.
//!
//! Output rows: group columns (with WINDOWSTART, WINDOWEND last among them when windowed), then
//! aggregate values, then the hidden `__RILL_DELETE` and `__RILL_ROWTIME` columns.
//! State is bounded for windowed aggregations (closed windows are dropped); an unwindowed
//! aggregation keeps one entry per key, which `state_info` reports as unbounded.

use crate::state::HashMap;
use std::sync::Arc;

use arrow::array::{
    new_null_array, Array, ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch, RecordBatchOptions, UInt32Array,
};
use arrow::compute::{cast, filter as filter_array, take};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use arrow::row::{OwnedRow, RowConverter, SortField};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::Accumulator;
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::PhysicalExpr;

use crate::message::{Message, Watermark};
use crate::operator::{ArrivalBound, LateRow, Operator, StateInfo};
use crate::panes::Panes;
use crate::{EngineError, Result};

/// Name of the hidden column marking delete (tombstone) rows.
/// Aggregate functions whose accumulators' `state()` copies the state and leaves the
/// accumulator as it was (DataFusion 55's `count`, `sum`, `min`, `max`, `avg`, `first_value`,
/// `last_value`, read in its source, but not their DISTINCT forms: `COUNT(DISTINCT s)` takes
/// its set out; Rill's own UDAFs): a checkpoint reads them in place. Others are rebuilt from
/// their state after a checkpoint reads it.
const STATE_LEAVES_ACCUMULATOR: &[&str] = &[
    "count",
    "sum",
    "min",
    "max",
    "avg",
    "first_value",
    "last_value",
    "topk",
    "topkdistinct",
    "histogram",
    "latest_by_offset_n",
    "earliest_by_offset_n",
    "collect_set",
    "sum_list",
    "attr",
];

pub const DELETE_COLUMN: &str = "__RILL_DELETE";
/// Name of the hidden column carrying each row's record timestamp.
pub const ROWTIME_COLUMN: &str = "__RILL_ROWTIME";

/// The kind of event-time window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowKind {
    /// Fixed, non-overlapping windows.
    Tumbling {
        /// Size in ms.
        size: i64,
    },
    /// Fixed windows starting every `advance`.
    Hopping {
        /// Size in ms.
        size: i64,
        /// Advance in ms.
        advance: i64,
    },
    /// Activity sessions closed by `gap` of inactivity.
    Session {
        /// Gap in ms.
        gap: i64,
    },
}

/// Windowing of an aggregation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowConfig {
    /// Which windows.
    pub kind: WindowKind,
    /// How long after its end a window still accepts records (ms).
    pub grace: i64,
    /// How long after its end a window's state is kept (ms, at least `grace`).
    pub retention: i64,
}

/// Everything the operator needs, planned by `rill-sql`.
pub struct AggregateConfig {
    /// Windowing, if any.
    pub window: Option<WindowConfig>,
    /// Emit only final results when windows close.
    pub emit_final: bool,
    /// Group key expressions over the input batch (window bounds excluded).
    pub group_exprs: Vec<Arc<dyn PhysicalExpr>>,
    /// The aggregates.
    pub aggregates: Vec<Arc<AggregateFunctionExpr>>,
    /// Per-aggregate FILTER clauses.
    pub aggregate_filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
    /// HAVING, over `output_schema`'s visible part.
    pub having: Option<Arc<dyn PhysicalExpr>>,
    /// Group columns (+ WINDOWSTART, WINDOWEND) then aggregate columns.
    pub output_schema: SchemaRef,
    /// Index of the event-time (BIGINT ms) column in the input.
    pub rowtime_index: usize,
    /// Offset and partition columns of the input, to describe late rows.
    pub offset_index: Option<usize>,
    /// Partition column of the input.
    pub partition_index: Option<usize>,
    /// A BOOLEAN input column marking rows to retract (aggregations over tables, fed by
    /// `TableDiffOperator`); accumulators are then created in their retractable form.
    pub retract_index: Option<usize>,
    /// The input's record-headers column: each output row carries the headers of the input row
    /// that produced it (a last column, after the row time), as Kafka Streams writes the
    /// triggering record's headers; rows that time produces (final results) carry none.
    pub headers_index: Option<usize>,
}

/// Rows of a batch per group (key, window start): window end, rows to add, rows to retract.
type Buckets = HashMap<(OwnedRow, i64), (i64, Vec<u32>, Vec<u32>)>;

/// What `evaluate_batch` computes once per batch.
struct Evaluated {
    keys: arrow::row::Rows,
    ts: Int64Array,
    args: Vec<(Vec<ArrayRef>, Option<BooleanArray>)>,
    null_key: Vec<bool>,
}

struct Group {
    key: OwnedRow,
    window: (i64, i64),
    accs: Vec<Box<dyn Accumulator>>,
    max_ts: i64,
    emitted: bool,
}

/// One group's row to emit.
struct Emit {
    key: OwnedRow,
    window: (i64, i64),
    values: Vec<ScalarValue>,
    ts: i64,
    delete: bool,
    was_emitted: bool,
    /// The input row that produced it (none for rows that time produces).
    row: Option<u32>,
}

/// `GROUP BY` with optional windows; see the module docs.
pub struct AggregateOperator {
    cfg: AggregateConfig,
    schema: SchemaRef,
    converter: RowConverter,
    /// Non-session groups by (key, window start).
    groups: HashMap<(OwnedRow, i64), Group>,
    /// Session groups by key.
    sessions: HashMap<OwnedRow, Vec<Group>>,
    /// Keys by the end of a session they have (some entries are stale: sessions that grew or
    /// merged have a later entry as well), so that closing visits only keys that may close.
    session_ends: std::collections::BTreeMap<i64, Vec<OwnedRow>>,
    watermark: i64,
    /// How far event time may advance within the next batch (see `set_watermark_bound`).
    bound: ArrivalBound,
    late: Vec<LateRow>,
    /// EMIT FINAL tumbling/hopping windows whose aggregates all have groups accumulators:
    /// vectorised window panes instead of `groups`.
    panes: Option<Panes>,
}

impl AggregateOperator {
    /// An aggregation per `cfg`.
    pub fn try_new(cfg: AggregateConfig, input_schema: &Schema) -> Result<Self> {
        let key_fields = cfg
            .group_exprs
            .iter()
            .map(|e| Ok(SortField::new(e.data_type(input_schema)?)))
            .collect::<Result<Vec<_>>>()?;
        let converter = RowConverter::new(key_fields)?;
        // Every output column can be null (tombstones, null aggregates).
        let mut cfg = cfg;
        cfg.output_schema = Arc::new(Schema::new(
            cfg.output_schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect::<Vec<_>>(),
        ));
        let mut fields: Vec<Field> = cfg.output_schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(Field::new(DELETE_COLUMN, DataType::Boolean, false));
        fields.push(Field::new(ROWTIME_COLUMN, DataType::Int64, true));
        if let Some(h) = cfg.headers_index {
            fields.push(input_schema.field(h).clone().with_nullable(true));
        }
        let time_windows =
            matches!(cfg.window.map(|w| w.kind), Some(WindowKind::Tumbling { .. } | WindowKind::Hopping { .. }));
        let panes =
            (time_windows && cfg.emit_final && cfg.retract_index.is_none() && Panes::supported(&cfg.aggregates)).then(
                || {
                    let hopping = match cfg.window.map(|w| w.kind) {
                        Some(WindowKind::Hopping { size, advance }) => Some((size, advance)),
                        _ => None,
                    };
                    Panes::new(cfg.aggregates.clone(), hopping)
                },
            );
        Ok(Self {
            panes,
            schema: Arc::new(Schema::new(fields)),
            cfg,
            converter,
            groups: HashMap::default(),
            sessions: HashMap::default(),
            session_ends: Default::default(),
            watermark: i64::MIN,
            bound: ArrivalBound::UpTo(i64::MIN),
            late: Vec::new(),
        })
    }

    fn new_accumulators(&self) -> Result<Vec<Box<dyn Accumulator>>> {
        self.cfg
            .aggregates
            .iter()
            .map(|a| {
                Ok(if self.cfg.retract_index.is_some() {
                    a.create_sliding_accumulator()?
                } else {
                    a.create_accumulator()?
                })
            })
            .collect()
    }

    fn windows_of(&self, ts: i64) -> Vec<(i64, i64)> {
        match self.cfg.window.map(|w| w.kind) {
            None => vec![(0, 0)],
            Some(WindowKind::Tumbling { size }) => {
                let start = ts - ts.rem_euclid(size);
                vec![(start, start + size)]
            }
            Some(WindowKind::Hopping { size, advance }) => {
                let last = ts - ts.rem_euclid(advance);
                let mut out = Vec::new();
                let mut start = last;
                while start > ts - size && starts_in_time(start, ts) {
                    out.push((start, start + size));
                    start -= advance;
                }
                out.reverse();
                out
            }
            Some(WindowKind::Session { .. }) => vec![],
        }
    }

    /// Whether a window is closed under watermark `wm`: a time window once `end + grace` is
    /// reached, a session once `end + gap + grace` is passed (Kafka Streams' rules: a session
    /// ending exactly there can still take a record).
    fn is_late(&self, window_end: i64, wm: i64) -> bool {
        match self.cfg.window {
            Some(w) => wm != i64::MIN && closes(&w, window_end, close_delay(&w), wm),
            None => false,
        }
    }

    /// The watermark each row of a batch meets: the watermark before the batch, advanced by
    /// the rows before it in the batch as far as the other inputs allow (the bound set by
    /// `set_watermark_bound`), as if watermarks followed every record.
    fn row_watermarks(&mut self, ts: &Int64Array) -> Vec<i64> {
        let reached = match std::mem::replace(&mut self.bound, ArrivalBound::UpTo(i64::MIN)) {
            ArrivalBound::UpTo(bound) => ArrivalBound::per_row(ts, bound),
            ArrivalBound::PerRow(reached) if reached.len() == ts.len() => reached.to_vec(),
            // Not for this batch (cannot happen: the runtime splits both alike): no advance.
            ArrivalBound::PerRow(_) => ArrivalBound::per_row(ts, i64::MIN),
        };
        reached.into_iter().map(|r| self.watermark.max(r)).collect()
    }

    fn late_row(&self, batch: &RecordBatch, row: usize, window: (i64, i64), watermark: i64) -> LateRow {
        let int = |idx: Option<usize>| {
            idx.and_then(|i| {
                let c = batch.column(i);
                cast(c, &DataType::Int64).ok().map(|a| a.as_primitive::<Int64Type>().value(row))
            })
        };
        LateRow {
            partition: int(self.cfg.partition_index).unwrap_or(0) as u32,
            offset: int(self.cfg.offset_index).unwrap_or(-1),
            timestamp: int(Some(self.cfg.rowtime_index)).unwrap_or(0),
            window_start: window.0,
            window_end: window.1,
            watermark,
            reason: format!(
                "record at {} is later than window [{}, {}) plus grace: the watermark was already {}",
                int(Some(self.cfg.rowtime_index)).unwrap_or(0),
                window.0,
                window.1,
                watermark
            ),
        }
    }

    /// Group keys (and which are null), event times and aggregate arguments of a batch.
    fn evaluate_batch(&self, batch: &RecordBatch) -> Result<Evaluated> {
        let n = batch.num_rows();
        let key_arrays =
            self.cfg.group_exprs.iter().map(|e| Ok(e.evaluate(batch)?.into_array(n)?)).collect::<Result<Vec<_>>>()?;
        let keys = self.converter.convert_columns(&key_arrays)?;
        let ts = cast(batch.column(self.cfg.rowtime_index), &DataType::Int64)?.as_primitive::<Int64Type>().clone();
        Ok(Evaluated { keys, ts, args: self.arguments(batch)?, null_key: null_keys(&key_arrays, n) })
    }

    /// Evaluates every aggregate's arguments (and FILTER) on the batch.
    fn arguments(&self, batch: &RecordBatch) -> Result<Vec<(Vec<ArrayRef>, Option<BooleanArray>)>> {
        let n = batch.num_rows();
        self.cfg
            .aggregates
            .iter()
            .zip(&self.cfg.aggregate_filters)
            .map(|(a, f)| {
                let args = a
                    .expressions()
                    .iter()
                    .map(|e| Ok(e.evaluate(batch)?.into_array(n)?))
                    .collect::<Result<Vec<_>>>()?;
                let filter = match f {
                    Some(f) => Some(f.evaluate(batch)?.into_array(n)?.as_boolean().clone()),
                    None => None,
                };
                Ok((args, filter))
            })
            .collect()
    }

    fn update(
        accs: &mut [Box<dyn Accumulator>],
        args: &[(Vec<ArrayRef>, Option<BooleanArray>)],
        rows: &UInt32Array,
        retract: bool,
    ) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        for (acc, (cols, filter)) in accs.iter_mut().zip(args) {
            let mut taken = cols.iter().map(|c| Ok(take(c.as_ref(), rows, None)?)).collect::<Result<Vec<_>>>()?;
            if let Some(f) = filter {
                let fl = take(f, rows, None)?;
                let fl = fl.as_boolean();
                taken = taken.iter().map(|c| Ok(filter_array(c.as_ref(), fl)?)).collect::<Result<Vec<_>>>()?;
            }
            if retract {
                acc.retract_batch(&taken)?;
            } else {
                acc.update_batch(&taken)?;
            }
        }
        Ok(())
    }

    /// [`Self::update`] with one row: zero-copy slices instead of a `take` per argument.
    fn update_row(
        accs: &mut [Box<dyn Accumulator>],
        args: &[(Vec<ArrayRef>, Option<BooleanArray>)],
        row: usize,
        retract: bool,
    ) -> Result<()> {
        for (acc, (cols, filter)) in accs.iter_mut().zip(args) {
            if filter.as_ref().is_some_and(|f| !(f.is_valid(row) && f.value(row))) {
                continue;
            }
            let one: Vec<ArrayRef> = cols.iter().map(|c| c.slice(row, 1)).collect();
            if retract {
                acc.retract_batch(&one)?;
            } else {
                acc.update_batch(&one)?;
            }
        }
        Ok(())
    }

    fn evaluate(group: &mut Group) -> Result<Vec<ScalarValue>> {
        group.accs.iter_mut().map(|a| Ok(a.evaluate()?)).collect()
    }

    /// EMIT FINAL time windows on panes: rows bucketed by window, one vectorised update per
    /// window and aggregate.
    fn process_panes(&mut self, batch: &RecordBatch) -> Result<()> {
        let Evaluated { keys, ts, args, null_key } = self.evaluate_batch(batch)?;
        let row_wm = self.row_watermarks(&ts);
        let Some(w) = self.cfg.window else { return Ok(()) };
        let (size, advance) = match w.kind {
            WindowKind::Tumbling { size } => (size, size),
            WindowKind::Hopping { size, advance } => (size, advance),
            WindowKind::Session { .. } => return Err(EngineError::Internal("sessions have no panes".into())),
        };
        // Rows by pane (window, or slice), panes in first-touched order. A row goes to its slice
        // when it is late for none of its windows, else to each window it is not late for.
        let slice = self.panes.as_ref().and_then(Panes::slice_width);
        let mut windows: Vec<(i64, i64, Vec<u32>)> = Vec::new();
        // By (start, end): a slice and a window may start together.
        let mut slot: HashMap<(i64, i64), usize> = HashMap::default();
        let mut open = Vec::new();
        for (i, &null) in null_key.iter().enumerate() {
            if null {
                continue;
            }
            let t = if ts.is_null(i) { 0 } else { ts.value(i) };
            let last = t - t.rem_euclid(advance);
            let mut start = last - ((size - 1) / advance) * advance;
            open.clear();
            let mut late = false;
            while start <= last {
                if start > t - size && starts_in_time(start, t) {
                    let end = start + size;
                    if self.is_late(end, row_wm[i]) {
                        let row = self.late_row(batch, i, (start, end), row_wm[i]);
                        self.late.push(row);
                        late = true;
                    } else {
                        open.push((start, end));
                    }
                }
                start += advance;
            }
            let mut add = |(start, end): (i64, i64)| {
                let at = *slot.entry((start, end)).or_insert_with(|| {
                    windows.push((start, end, Vec::new()));
                    windows.len() - 1
                });
                windows[at].2.push(i as u32);
            };
            match slice {
                Some(width) if !late && !open.is_empty() => {
                    let a = t - t.rem_euclid(width);
                    add((a, a + width));
                }
                _ => open.iter().for_each(|w| add(*w)),
            }
        }
        let n = batch.num_rows();
        let panes = self.panes.as_mut().ok_or_else(|| EngineError::Internal("no panes".into()))?;
        for (start, end, rows) in &windows {
            panes.update((*start, *end), rows, n, &keys, &ts, &args)?;
        }
        Ok(())
    }

    /// Emits closed panes: one batch per window, rows in (time, key) order.
    fn close_panes(&mut self, out: &mut Vec<Message>) -> Result<()> {
        let (Some(w), Some(panes)) = (self.cfg.window, self.panes.as_mut()) else { return Ok(()) };
        let wm = self.watermark;
        let delay = close_delay(&w);
        let mut closed = Vec::new();
        for (start, pane) in panes.close(|end| end.saturating_add(delay) <= wm)? {
            let end = pane.end;
            let (keys, max_ts, values) = pane.finish()?;
            let n = keys.len();
            if n == 0 {
                continue;
            }
            // Key order within a window, as Kafka Streams emits a closing window's results.
            let mut order: Vec<u32> = (0..n as u32).collect();
            order.sort_unstable_by(|a, b| keys[*a as usize].cmp(&keys[*b as usize]));
            let parser = self.converter.parser();
            let mut columns = self.converter.convert_rows(keys.iter().map(|k| parser.parse(k)))?;
            columns.push(Arc::new(Int64Array::from(vec![start; n])));
            columns.push(Arc::new(Int64Array::from(vec![end; n])));
            columns.extend(values);
            let order = UInt32Array::from(order);
            let ts = Int64Array::from_iter_values(order.values().iter().map(|i| max_ts[*i as usize]));
            let columns = columns.iter().map(|c| Ok(take(c.as_ref(), &order, None)?)).collect::<Result<Vec<_>>>()?;
            closed.push((columns, ts));
        }
        // One batch for every window that closed.
        match closed.len() {
            0 => Ok(()),
            1 => {
                let (columns, ts) = closed.pop().expect("one");
                self.emit_final_columns(columns, ts, out)
            }
            _ => {
                let width = closed[0].0.len();
                let columns = (0..width)
                    .map(|c| {
                        let parts: Vec<&dyn Array> = closed.iter().map(|(cols, _)| cols[c].as_ref()).collect();
                        Ok(arrow::compute::concat(&parts)?)
                    })
                    .collect::<Result<Vec<_>>>()?;
                let ts: Int64Array = closed.iter().flat_map(|(_, t)| t.values().iter().copied()).collect();
                self.emit_final_columns(columns, ts, out)
            }
        }
    }

    /// Final rows given as columns (groups, window bounds, aggregate values) with their times:
    /// typed as planned, HAVING applied.
    fn emit_final_columns(&self, mut columns: Vec<ArrayRef>, ts: Int64Array, out: &mut Vec<Message>) -> Result<()> {
        let n = ts.len();
        for (c, f) in columns.iter_mut().zip(self.cfg.output_schema.fields()) {
            if c.data_type() != f.data_type() {
                *c = cast(c, f.data_type())?;
            }
        }
        let mut ts: ArrayRef = Arc::new(ts);
        if let Some(h) = &self.cfg.having {
            let visible = RecordBatch::try_new_with_options(
                self.cfg.output_schema.clone(),
                columns.clone(),
                &RecordBatchOptions::new().with_row_count(Some(n)),
            )?;
            let m = h.evaluate(&visible)?.into_array(n)?;
            let m = match m.as_boolean() {
                m if m.null_count() > 0 => arrow::compute::prep_null_mask_filter(m),
                m => m.clone(),
            };
            columns = columns.iter().map(|c| Ok(filter_array(c.as_ref(), &m)?)).collect::<Result<Vec<_>>>()?;
            ts = filter_array(ts.as_ref(), &m)?;
        }
        let kept = ts.len();
        if kept == 0 {
            return Ok(());
        }
        columns.push(Arc::new(BooleanArray::from(vec![false; kept])));
        columns.push(ts);
        if self.cfg.headers_index.is_some() {
            columns.push(crate::source::no_headers(kept)?);
        }
        out.push(Message::Data(RecordBatch::try_new(self.schema.clone(), columns)?));
        Ok(())
    }

    fn process_windows(&mut self, batch: &RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        if self.panes.is_some() {
            return self.process_panes(batch);
        }
        let Evaluated { keys, ts, args, null_key } = self.evaluate_batch(batch)?;
        let ts = &ts;
        let row_wm = self.row_watermarks(ts);
        // Bucket rows by group, in first-touched order.
        let mut order: Vec<(OwnedRow, i64)> = Vec::new();
        // Per group: window end, rows to add, rows to retract.
        let mut rows_of: Buckets = HashMap::default();
        let retract = self.cfg.retract_index.map(|r| batch.column(r).as_boolean().clone());
        for (i, &null) in null_key.iter().enumerate() {
            if null {
                continue;
            }
            let t = if ts.is_null(i) { 0 } else { ts.value(i) };
            for window in self.windows_of(t) {
                if self.is_late(window.1, row_wm[i]) {
                    let late = self.late_row(batch, i, window, row_wm[i]);
                    self.late.push(late);
                    continue;
                }
                let k = (keys.row(i).owned(), window.0);
                let entry = rows_of.entry(k.clone()).or_insert_with(|| {
                    order.push(k);
                    (window.1, Vec::new(), Vec::new())
                });
                if retract.as_ref().is_some_and(|r| r.value(i)) {
                    entry.2.push(i as u32);
                } else {
                    entry.1.push(i as u32);
                }
            }
        }
        // EMIT CHANGES: one output row per input record (ksqlDB with its record cache off), in
        // input order; (row index, row).
        let mut emits: Vec<(u32, Emit)> = Vec::with_capacity(order.len());
        for k in order {
            let Some((end, rows, retracted)) = rows_of.remove(&k) else { continue };
            if !self.groups.contains_key(&k) {
                let accs = self.new_accumulators()?;
                self.groups.insert(
                    k.clone(),
                    Group { key: k.0.clone(), window: (k.1, end), accs, max_ts: i64::MIN, emitted: false },
                );
            }
            let group = self.groups.get_mut(&k).ok_or_else(|| EngineError::Internal("group vanished".into()))?;
            let note_time = |g: &mut Group, r: u32| {
                if !ts.is_null(r as usize) {
                    g.max_ts = g.max_ts.max(ts.value(r as usize));
                }
            };
            if self.cfg.emit_final {
                Self::update(&mut group.accs, &args, &UInt32Array::from(retracted), true)?;
                Self::update(&mut group.accs, &args, &UInt32Array::from(rows.clone()), false)?;
                rows.iter().for_each(|r| note_time(group, *r));
                continue;
            }
            // (row, is a retraction), in input order.
            let mut steps: Vec<(u32, bool)> =
                retracted.iter().map(|r| (*r, true)).chain(rows.iter().map(|r| (*r, false))).collect();
            steps.sort_unstable();
            for (j, &(r, retract)) in steps.iter().enumerate() {
                Self::update_row(&mut group.accs, &args, r as usize, retract)?;
                // A retraction is a change at its own time too (Kafka Streams' table aggregates
                // stamp a result with the latest time of the records that made it).
                note_time(group, r);
                // A table update is a retraction followed by an addition: one output row.
                if retract && steps.get(j + 1).is_some_and(|&(next, add)| !add && next == r + 1) {
                    continue;
                }
                let values = Self::evaluate(group)?;
                emits.push((
                    r,
                    Emit {
                        key: group.key.clone(),
                        window: group.window,
                        values,
                        ts: group.max_ts,
                        delete: false,
                        was_emitted: group.emitted,
                        row: Some(r),
                    },
                ));
            }
        }
        emits.sort_by_key(|(r, _)| *r);
        self.emit(emits.into_iter().map(|(_, e)| e).collect(), Some(batch), out)
    }

    fn process_sessions(&mut self, batch: &RecordBatch, gap: i64, out: &mut Vec<Message>) -> Result<()> {
        let Evaluated { keys, ts, args, null_key } = self.evaluate_batch(batch)?;
        let ts = &ts;
        let row_wm = self.row_watermarks(ts);
        let mut emits = Vec::new();
        for (i, &null) in null_key.iter().enumerate() {
            if null {
                continue;
            }
            let t = if ts.is_null(i) { 0 } else { ts.value(i) };
            let key = keys.row(i).owned();
            let existing = self.sessions.remove(&key).unwrap_or_default();
            let (mut merged, mut kept): (Vec<Group>, Vec<Group>) =
                existing.into_iter().partition(|s| s.window.1 >= t - gap && s.window.0 <= t + gap);
            let start = merged.iter().map(|s| s.window.0).min().unwrap_or(t).min(t);
            let end = merged.iter().map(|s| s.window.1).max().unwrap_or(t).max(t);
            if self.is_late(end, row_wm[i]) {
                let late = self.late_row(batch, i, (start, end), row_wm[i]);
                self.late.push(late);
                kept.append(&mut merged);
                if !kept.is_empty() {
                    self.sessions.insert(key, kept);
                }
                continue;
            }
            let mut accs = self.new_accumulators()?;
            let mut max_ts = t;
            for old in &mut merged {
                for (acc, old_acc) in accs.iter_mut().zip(old.accs.iter_mut()) {
                    let state = old_acc.state()?;
                    let arrays = state.iter().map(|s| Ok(s.to_array()?)).collect::<Result<Vec<_>>>()?;
                    acc.merge_batch(&arrays)?;
                }
                max_ts = max_ts.max(old.max_ts);
                if old.emitted && !self.cfg.emit_final {
                    let mut values = Self::evaluate(old)?;
                    values
                        .iter_mut()
                        .for_each(|v| *v = ScalarValue::try_from(v.data_type()).unwrap_or(ScalarValue::Null));
                    emits.push(Emit {
                        key: old.key.clone(),
                        window: old.window,
                        values,
                        ts: old.max_ts,
                        delete: true,
                        was_emitted: true,
                        row: Some(i as u32),
                    });
                }
            }
            Self::update(&mut accs, &args, &UInt32Array::from(vec![i as u32]), false)?;
            let mut group = Group { key: key.clone(), window: (start, end), accs, max_ts, emitted: false };
            if !self.cfg.emit_final {
                let values = Self::evaluate(&mut group)?;
                emits.push(Emit {
                    key: key.clone(),
                    window: (start, end),
                    values,
                    ts: max_ts,
                    delete: false,
                    was_emitted: false,
                    row: Some(i as u32),
                });
                group.emitted = true;
            }
            kept.push(group);
            self.session_ends.entry(end).or_default().push(key.clone());
            self.sessions.insert(key, kept);
        }
        self.emit(emits, Some(batch), out)
    }

    /// The headers column of output rows produced by these rows of `input` (none: no headers).
    fn headers_of(&self, input: Option<&RecordBatch>, rows: &[Option<u32>]) -> Result<ArrayRef> {
        match (input, self.cfg.headers_index) {
            (Some(batch), Some(h)) if rows.iter().any(Option::is_some) => {
                Ok(take(batch.column(h).as_ref(), &UInt32Array::from(rows.to_vec()), None)?)
            }
            _ => crate::source::no_headers(rows.len()),
        }
    }

    /// Builds output rows, applies HAVING (turning rows that stop matching into tombstones);
    /// `input`: the batch whose rows produced them, if any.
    fn emit(&mut self, emits: Vec<Emit>, input: Option<&RecordBatch>, out: &mut Vec<Message>) -> Result<()> {
        if emits.is_empty() {
            return Ok(());
        }
        let n = emits.len();
        let mut columns: Vec<ArrayRef> = self.converter.convert_rows(emits.iter().map(|e| e.key.row()))?;
        let windowed = self.cfg.window.is_some();
        if windowed {
            columns.push(Arc::new(Int64Array::from_iter_values(emits.iter().map(|e| e.window.0))));
            columns.push(Arc::new(Int64Array::from_iter_values(emits.iter().map(|e| e.window.1))));
        }
        let first_agg = columns.len();
        for (j, field) in self.cfg.output_schema.fields().iter().enumerate().skip(first_agg) {
            let agg = j - first_agg;
            let values: Vec<ScalarValue> = emits.iter().map(|e| e.values[agg].clone()).collect();
            let array = if values.iter().all(|v| v.is_null()) {
                new_null_array(field.data_type(), n)
            } else {
                ScalarValue::iter_to_array(values)?
            };
            columns.push(if array.data_type() == field.data_type() { array } else { cast(&array, field.data_type())? });
        }
        // Align types with the planned schema (e.g. window bounds, key types).
        for (c, f) in columns.iter_mut().zip(self.cfg.output_schema.fields()) {
            if c.data_type() != f.data_type() {
                *c = cast(c, f.data_type())?;
            }
        }
        let visible = RecordBatch::try_new_with_options(
            self.cfg.output_schema.clone(),
            columns.clone(),
            &RecordBatchOptions::new().with_row_count(Some(n)),
        )?;
        let matches: Vec<bool> = match &self.cfg.having {
            Some(h) => {
                let m = h.evaluate(&visible)?.into_array(n)?;
                let m = m.as_boolean();
                (0..n).map(|i| m.is_valid(i) && m.value(i)).collect()
            }
            None => vec![true; n],
        };
        let mut keep = Vec::with_capacity(n);
        let mut delete = Vec::with_capacity(n);
        // Whether a group's row is out, as of the rows before in this batch (a group may have
        // several rows in one batch).
        // (Only HAVING can turn a row into a delete that depends on it.)
        let mut out_now: HashMap<(OwnedRow, i64), bool> = HashMap::default();
        let track = self.cfg.having.is_some();
        for (i, e) in emits.iter().enumerate() {
            let is_delete = e.delete || !matches[i];
            let mut was_emitted = e.was_emitted;
            if track {
                was_emitted = out_now.get(&(e.key.clone(), e.window.0)).copied().unwrap_or(was_emitted);
                out_now.insert((e.key.clone(), e.window.0), !is_delete);
            }
            // A row that does not match HAVING only matters if an earlier version was emitted.
            if is_delete && !e.delete && !was_emitted {
                continue;
            }
            keep.push(i as u32);
            delete.push(is_delete);
            if !e.delete {
                let now_emitted = matches[i];
                if let Some(g) = self.group_mut(&e.key, e.window) {
                    g.emitted = now_emitted;
                }
            }
        }
        if keep.is_empty() {
            return Ok(());
        }
        let idx = UInt32Array::from(keep.clone());
        let mut cols = columns.iter().map(|c| Ok(take(c.as_ref(), &idx, None)?)).collect::<Result<Vec<_>>>()?;
        cols.push(Arc::new(BooleanArray::from(delete)));
        cols.push(Arc::new(Int64Array::from_iter_values(keep.iter().map(|i| emits[*i as usize].ts))));
        if self.cfg.headers_index.is_some() {
            let rows: Vec<Option<u32>> = keep.iter().map(|i| emits[*i as usize].row).collect();
            cols.push(self.headers_of(input, &rows)?);
        }
        out.push(Message::Data(RecordBatch::try_new(self.schema.clone(), cols)?));
        Ok(())
    }

    fn group_mut(&mut self, key: &OwnedRow, window: (i64, i64)) -> Option<&mut Group> {
        match self.cfg.window.map(|w| w.kind) {
            Some(WindowKind::Session { .. }) => self.sessions.get_mut(key)?.iter_mut().find(|g| g.window == window),
            _ => self.groups.get_mut(&(key.clone(), window.0)),
        }
    }

    /// Closes windows the watermark has passed: final results (EMIT FINAL), dropped state.
    fn close_windows(&mut self, out: &mut Vec<Message>) -> Result<()> {
        if self.panes.is_some() {
            return self.close_panes(out);
        }
        let Some(w) = self.cfg.window else { return Ok(()) };
        let wm = self.watermark;
        let closed = |end: i64, extra: i64| end.saturating_add(extra) <= wm;
        let mut finals = Vec::new();
        if self.cfg.emit_final {
            let done: Vec<(OwnedRow, i64)> = self
                .groups
                .iter()
                .filter(|(_, g)| closed(g.window.1, close_delay(&w)))
                .map(|(k, _)| k.clone())
                .collect();
            let mut closing: Vec<Group> = done.into_iter().filter_map(|k| self.groups.remove(&k)).collect();
            closing.extend(self.close_sessions(&w, close_delay(&w)));
            for mut g in closing {
                let values = Self::evaluate(&mut g)?;
                finals.push(Emit {
                    key: g.key,
                    window: g.window,
                    values,
                    ts: g.max_ts,
                    delete: false,
                    was_emitted: false,
                    row: None,
                });
            }
            // A total order (window start, key), Kafka Streams' order of final results: the
            // same windows close in the same order whatever the batching, so recovery replays
            // produce identical output.
            finals.sort_by(|a, b| a.window.0.cmp(&b.window.0).then_with(|| a.key.row().cmp(&b.key.row())));
        } else {
            let retention = w.retention.max(close_delay(&w));
            self.groups.retain(|_, g| !closed(g.window.1, retention));
            self.close_sessions(&w, retention);
        }
        self.emit(finals, None, out)
    }

    /// Removes and returns the sessions that close `delay` after their end, visiting only the
    /// keys that have a session ending early enough.
    fn close_sessions(&mut self, w: &WindowConfig, delay: i64) -> Vec<Group> {
        let wm = self.watermark;
        // Sessions ending before the cut close (`closes`: end + delay < watermark).
        let cut = wm.saturating_sub(delay);
        let later = self.session_ends.split_off(&cut);
        let due = std::mem::replace(&mut self.session_ends, later);
        let mut closed = Vec::new();
        for key in due.into_values().flatten() {
            let Some(sessions) = self.sessions.get_mut(&key) else { continue };
            let (done, keep): (Vec<Group>, Vec<Group>) =
                std::mem::take(sessions).into_iter().partition(|g| closes(w, g.window.1, delay, wm));
            closed.extend(done);
            if keep.is_empty() {
                self.sessions.remove(&key);
            } else {
                *sessions = keep;
            }
        }
        closed
    }
}

impl AggregateOperator {
    /// State as one batch of groups (key columns, window start and end, max time, emitted, then
    /// every accumulator's `state()` fields) and one of the watermark. Restoring merges each
    /// saved state into a fresh accumulator, DataFusion's way of combining partial aggregates.
    fn snapshot_state(&mut self) -> Result<Vec<RecordBatch>> {
        let watermark = crate::state::batch(vec![Arc::new(Int64Array::from(vec![self.watermark]))], 1)?;
        if let Some(panes) = self.panes.as_mut() {
            // The same layout as below, from the panes.
            let (groups, states) = panes.snapshot()?;
            let n = groups.len();
            let parser = self.converter.parser();
            let mut columns = self.converter.convert_rows(groups.iter().map(|g| parser.parse(g.0)))?;
            columns.push(Arc::new(Int64Array::from_iter_values(groups.iter().map(|g| g.1))));
            columns.push(Arc::new(Int64Array::from_iter_values(groups.iter().map(|g| g.2))));
            columns.push(Arc::new(Int64Array::from_iter_values(groups.iter().map(|g| g.3))));
            columns.push(Arc::new(BooleanArray::from(vec![false; n])));
            columns.extend(states.into_iter().flatten());
            return Ok(vec![crate::state::batch(columns, n)?, watermark]);
        }
        let aggregates = self.cfg.aggregates.clone();
        let sliding = self.cfg.retract_index.is_some();
        let mut groups: Vec<&mut Group> =
            self.groups.values_mut().chain(self.sessions.values_mut().flatten()).collect();
        let n = groups.len();
        let mut columns = crate::state::rows_to_columns(&self.converter, groups.iter().map(|g| &g.key))?;
        columns.push(Arc::new(Int64Array::from_iter_values(groups.iter().map(|g| g.window.0))));
        columns.push(Arc::new(Int64Array::from_iter_values(groups.iter().map(|g| g.window.1))));
        columns.push(Arc::new(Int64Array::from_iter_values(groups.iter().map(|g| g.max_ts))));
        columns.push(Arc::new(BooleanArray::from_iter(groups.iter().map(|g| Some(g.emitted)))));
        let fields = aggregates.iter().map(|a| Ok(a.state_fields()?)).collect::<Result<Vec<_>>>()?;
        let intact: Vec<bool> =
            aggregates.iter().map(|a| STATE_LEAVES_ACCUMULATOR.contains(&a.fun().name()) && !a.is_distinct()).collect();
        // Per aggregate, per state field, the groups' values. Group by group (each group's
        // accumulators are visited once: the walk is bound by memory, not by `state()`).
        let mut states: Vec<Vec<Vec<ScalarValue>>> =
            fields.iter().map(|f| vec![Vec::with_capacity(n); f.len()]).collect();
        for g in groups.iter_mut() {
            for (a, agg) in aggregates.iter().enumerate() {
                let state = g.accs[a].state()?;
                if !intact[a] {
                    // DataFusion may move values out of an accumulator in `state()` (it is
                    // meant for the end of an aggregation): go on with a fresh one merged from it.
                    let arrays = state.iter().map(|v| Ok(v.to_array()?)).collect::<Result<Vec<ArrayRef>>>()?;
                    let mut fresh = if sliding { agg.create_sliding_accumulator()? } else { agg.create_accumulator()? };
                    fresh.merge_batch(&arrays)?;
                    g.accs[a] = fresh;
                }
                for (col, v) in states[a].iter_mut().zip(state) {
                    col.push(v);
                }
            }
        }
        for (fields, values) in fields.iter().zip(states) {
            for (field, values) in fields.iter().zip(values) {
                columns.push(match values.is_empty() {
                    true => arrow::array::new_empty_array(field.data_type()),
                    false => ScalarValue::iter_to_array(values)?,
                });
            }
        }
        Ok(vec![crate::state::batch(columns, n)?, watermark])
    }

    fn restore_state(&mut self, state: Vec<RecordBatch>) -> Result<()> {
        let [groups, watermark] = state.as_slice() else {
            return Err(crate::state::bad_state("an aggregation has two state batches"));
        };
        let nk = self.cfg.group_exprs.len();
        let widths = self.cfg.aggregates.iter().map(|a| Ok(a.state_fields()?.len())).collect::<Result<Vec<_>>>()?;
        if groups.num_columns() != nk + 4 + widths.iter().sum::<usize>() {
            return Err(crate::state::bad_state("the aggregates or group keys changed"));
        }
        let keys = crate::state::columns_to_rows(&self.converter, &groups.columns()[..nk])?;
        let int = |i: usize| groups.column(i).as_primitive::<Int64Type>().clone();
        let (starts, ends, max_ts) = (int(nk), int(nk + 1), int(nk + 2));
        let emitted = groups.column(nk + 3).as_boolean().clone();
        self.watermark = watermark.column(0).as_primitive::<Int64Type>().value(0);
        if let Some(panes) = self.panes.as_mut() {
            let mut states = Vec::new();
            let mut col = nk + 4;
            for width in &widths {
                states.push((col..col + width).map(|c| groups.column(c).clone()).collect::<Vec<_>>());
                col += width;
            }
            panes.restore(&keys, (&starts, &ends, &max_ts), &states)?;
            let (wm, delay) = (self.watermark, self.cfg.window.map_or(0, |w| close_delay(&w)));
            panes.skip_closed(|end| end.saturating_add(delay) <= wm);
            return Ok(());
        }
        let session = matches!(self.cfg.window.map(|w| w.kind), Some(WindowKind::Session { .. }));
        self.groups.clear();
        self.sessions.clear();
        self.session_ends.clear();
        for i in 0..groups.num_rows() {
            let mut accs = self.new_accumulators()?;
            let mut col = nk + 4;
            for (acc, width) in accs.iter_mut().zip(&widths) {
                let arrays: Vec<ArrayRef> = (col..col + width).map(|c| groups.column(c).slice(i, 1)).collect();
                acc.merge_batch(&arrays)?;
                col += width;
            }
            let group = Group {
                key: keys.row(i).owned(),
                window: (starts.value(i), ends.value(i)),
                accs,
                max_ts: max_ts.value(i),
                emitted: emitted.value(i),
            };
            if session {
                self.session_ends.entry(group.window.1).or_default().push(group.key.clone());
                self.sessions.entry(group.key.clone()).or_default().push(group);
            } else {
                self.groups.insert((group.key.clone(), group.window.0), group);
            }
        }
        Ok(())
    }
}

/// Whether a hopping window starting at `start` takes a record of time `ts`: as in Kafka Streams,
/// windows start at time 0 or later (a record at time 3 with a 5-unit window is in `[0, 5)` but
/// not in `[-2, 3)`); a record before time 0 (Kafka refuses those) keeps every window.
fn starts_in_time(start: i64, ts: i64) -> bool {
    start >= 0 || ts < 0
}

/// How long after its end a window stays open: the grace period, plus the gap for sessions (a
/// session can still grow until no record within `gap` of its end can arrive, as in Kafka
/// Streams, whose session windows close at end + gap + grace).
fn close_delay(w: &WindowConfig) -> i64 {
    match w.kind {
        WindowKind::Session { gap } => w.grace.saturating_add(gap),
        _ => w.grace,
    }
}

/// Whether a window ending at `end` is closed `delay` after its end under watermark `wm`.
fn closes(w: &WindowConfig, end: i64, delay: i64, wm: i64) -> bool {
    match w.kind {
        WindowKind::Session { .. } => end.saturating_add(delay) < wm,
        _ => end.saturating_add(delay) <= wm,
    }
}

/// Rows whose group key has a null part: ksqlDB does not aggregate them (a table cannot have a
/// null key), and neither does Rill.
fn null_keys(keys: &[ArrayRef], n: usize) -> Vec<bool> {
    (0..n).map(|i| keys.iter().any(|k| k.is_null(i))).collect()
}

impl Operator for AggregateOperator {
    fn name(&self) -> &str {
        "aggregate"
    }

    fn output_schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn process_batch(&mut self, batch: RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        match self.cfg.window.map(|w| w.kind) {
            Some(WindowKind::Session { gap }) => self.process_sessions(&batch, gap, out),
            _ => self.process_windows(&batch, out),
        }
    }

    fn handle_watermark(&mut self, watermark: Watermark, out: &mut Vec<Message>) -> Result<()> {
        if let Watermark::EventTime(t) = watermark {
            if t > self.watermark {
                self.watermark = t;
                self.close_windows(out)?;
            }
        }
        out.push(Message::Watermark(watermark));
        Ok(())
    }

    fn on_close(&mut self, out: &mut Vec<Message>) -> Result<()> {
        // End of a bounded input: every window closes.
        self.watermark = i64::MAX;
        self.close_windows(out)?;
        out.push(Message::End);
        Ok(())
    }

    fn drain_late(&mut self, out: &mut Vec<LateRow>) {
        out.append(&mut self.late);
    }

    fn set_watermark_bound(&mut self, bound: ArrivalBound) {
        self.bound = bound;
    }

    fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        self.snapshot_state()
    }

    fn state_signature(&mut self) -> Result<String> {
        let keys: Vec<String> = self.cfg.group_exprs.iter().map(|e| e.to_string()).collect();
        let aggs: Vec<String> = self.cfg.aggregates.iter().map(|a| format!("{:?}", a.expressions())).collect();
        let names: Vec<&str> = self.cfg.aggregates.iter().map(|a| a.fun().name()).collect();
        Ok(format!(
            "aggregate[keys {keys:?}; aggregates {names:?} of {aggs:?}; window {:?}; final {}; retract {}]",
            self.cfg.window,
            self.cfg.emit_final,
            self.cfg.retract_index.is_some()
        ))
    }

    fn restore(&mut self, state: Vec<RecordBatch>) -> Result<()> {
        self.restore_state(state)
    }

    fn state_info(&self) -> StateInfo {
        // Accumulator sizes plus the key rows: DataFusion's own estimates (walks every group).
        let bytes = self
            .groups
            .values()
            .chain(self.sessions.values().flatten())
            .map(|g| g.key.as_ref().len() + g.accs.iter().map(|a| a.size()).sum::<usize>())
            .sum::<usize>()
            + self.panes.as_ref().map_or(0, |p| p.size());
        StateInfo {
            bounded: self.cfg.window.is_some(),
            bytes,
            description: match self.cfg.window {
                Some(_) => "accumulators per key and window, dropped when the window closes".into(),
                None => "accumulators per key, kept forever (unbounded on unbounded keys)".into(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int64Array, StringArray};
    use arrow::util::pretty::pretty_format_batches;
    use datafusion::functions_aggregate::count::count_udaf;
    use datafusion::functions_aggregate::sum::sum_udaf;
    use datafusion::logical_expr::Operator as Op;
    use datafusion::physical_expr::aggregate::AggregateExprBuilder;
    use datafusion::physical_expr::expressions::{col, lit, BinaryExpr};

    use super::*;

    fn input_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("K", DataType::Utf8, true),
            Field::new("V", DataType::Int64, true),
            Field::new("ROWTIME", DataType::Int64, true),
        ]))
    }

    fn batch(rows: &[(&str, i64, i64)]) -> RecordBatch {
        RecordBatch::try_new(
            input_schema(),
            vec![
                Arc::new(StringArray::from(rows.iter().map(|r| r.0).collect::<Vec<_>>())),
                Arc::new(Int64Array::from(rows.iter().map(|r| r.1).collect::<Vec<_>>())),
                Arc::new(Int64Array::from(rows.iter().map(|r| r.2).collect::<Vec<_>>())),
            ],
        )
        .unwrap()
    }

    /// `SELECT K, COUNT(V) AS C, SUM(V) AS S ... GROUP BY K [HAVING C < 2]`.
    fn operator(window: Option<WindowConfig>, emit_final: bool, having_lt_2: bool) -> AggregateOperator {
        let schema = input_schema();
        let v = col("V", &schema).unwrap();
        let count =
            AggregateExprBuilder::new(count_udaf(), vec![v.clone()]).schema(schema.clone()).alias("C").build().unwrap();
        let sum = AggregateExprBuilder::new(sum_udaf(), vec![v]).schema(schema.clone()).alias("S").build().unwrap();
        let mut fields = vec![Field::new("K", DataType::Utf8, true)];
        if window.is_some() {
            fields.push(Field::new("WINDOWSTART", DataType::Int64, true));
            fields.push(Field::new("WINDOWEND", DataType::Int64, true));
        }
        fields.push(Field::new("C", DataType::Int64, true));
        fields.push(Field::new("S", DataType::Int64, true));
        let output_schema = Arc::new(Schema::new(fields));
        let having = having_lt_2.then(|| {
            let c = col("C", &output_schema).unwrap();
            Arc::new(BinaryExpr::new(c, Op::Lt, lit(2i64))) as Arc<dyn PhysicalExpr>
        });
        let cfg = AggregateConfig {
            window,
            emit_final,
            group_exprs: vec![col("K", &schema).unwrap()],
            aggregates: vec![Arc::new(count), Arc::new(sum)],
            aggregate_filters: vec![None, None],
            having,
            output_schema,
            rowtime_index: 2,
            offset_index: None,
            partition_index: None,
            retract_index: None,
            headers_index: None,
        };
        AggregateOperator::try_new(cfg, &schema).unwrap()
    }

    /// With a headers column (here V stands in for it), each EMIT CHANGES row carries the one of
    /// the input row that produced it, in input order within a batch.
    #[test]
    fn changes_carry_their_input_rows_headers() {
        let schema = input_schema();
        let v = col("V", &schema).unwrap();
        let count = AggregateExprBuilder::new(count_udaf(), vec![v]).schema(schema.clone()).alias("C").build().unwrap();
        let output_schema =
            Arc::new(Schema::new(vec![Field::new("K", DataType::Utf8, true), Field::new("C", DataType::Int64, true)]));
        let cfg = AggregateConfig {
            window: None,
            emit_final: false,
            group_exprs: vec![col("K", &schema).unwrap()],
            aggregates: vec![Arc::new(count)],
            aggregate_filters: vec![None],
            having: None,
            output_schema,
            rowtime_index: 2,
            offset_index: None,
            partition_index: None,
            retract_index: None,
            headers_index: Some(1),
        };
        let mut op = AggregateOperator::try_new(cfg, &schema).unwrap();
        assert_eq!(op.output_schema().fields().last().map(|f| f.name().as_str()), Some("V"));
        let out = run(&mut op, &[In::Rows(&[("a", 7, 10), ("b", 8, 11), ("a", 9, 12)])]);
        let rows: Vec<&str> = out.lines().filter(|l| l.starts_with("| a") || l.starts_with("| b")).collect();
        assert_eq!(
            rows,
            [
                "| a | 1 | false         | 10             | 7 |",
                "| b | 1 | false         | 11             | 8 |",
                "| a | 2 | false         | 12             | 9 |"
            ],
            "{out}"
        );
    }

    enum In<'a> {
        Rows(&'a [(&'a str, i64, i64)]),
        Watermark(i64),
        End,
    }

    /// Feeds the inputs and renders every emitted message (and late row) as text.
    fn run(op: &mut AggregateOperator, inputs: &[In]) -> String {
        let mut text = String::new();
        for input in inputs {
            let mut out = Vec::new();
            match input {
                In::Rows(rows) => op.process_batch(batch(rows), &mut out).unwrap(),
                In::Watermark(t) => op.handle_watermark(Watermark::EventTime(*t), &mut out).unwrap(),
                In::End => op.on_close(&mut out).unwrap(),
            }
            for m in out {
                match m {
                    Message::Data(b) => text.push_str(&format!("{}\n", pretty_format_batches(&[b]).unwrap())),
                    other => text.push_str(&format!("{other:?}\n")),
                }
            }
            let mut late = Vec::new();
            op.drain_late(&mut late);
            for l in late {
                text.push_str(&format!("LATE {}\n", l.reason));
            }
        }
        text
    }

    #[test]
    fn unwindowed_emit_changes_with_having_tombstones() {
        let mut op = operator(None, false, true);
        let text = run(
            &mut op,
            &[In::Rows(&[("a", 1, 10), ("b", 5, 20)]), In::Rows(&[("a", 2, 30)]), In::Rows(&[("a", 3, 40)])],
        );
        assert!(!op.state_info().bounded);
        insta::assert_snapshot!(text);
    }

    #[test]
    fn tumbling_windows_route_late_rows() {
        let window = WindowConfig { kind: WindowKind::Tumbling { size: 1000 }, grace: 0, retention: 0 };
        let mut op = operator(Some(window), false, false);
        let text = run(
            &mut op,
            &[
                In::Rows(&[("a", 1, 100), ("a", 2, 900), ("b", 3, 1500)]),
                In::Watermark(1500),
                In::Rows(&[("a", 4, 999), ("a", 5, 1999)]),
            ],
        );
        assert!(op.state_info().bounded);
        insta::assert_snapshot!(text);
    }

    #[test]
    fn hopping_windows_emit_final_when_closed() {
        let window = WindowConfig { kind: WindowKind::Hopping { size: 1000, advance: 500 }, grace: 100, retention: 0 };
        let mut op = operator(Some(window), true, false);
        let text = run(
            &mut op,
            &[In::Rows(&[("a", 1, 700), ("a", 2, 1200)]), In::Watermark(1099), In::Watermark(1100), In::End],
        );
        insta::assert_snapshot!(text);
    }

    /// As in Kafka Streams, hopping windows start at time 0 or later: a row at 300 is in
    /// [0, 1000) only (not in [-500, 500)), on both the changes and the final-results paths.
    #[test]
    fn hopping_windows_start_at_time_zero() {
        let window = WindowConfig { kind: WindowKind::Hopping { size: 1000, advance: 500 }, grace: 0, retention: 0 };
        for emit_final in [false, true] {
            let mut op = operator(Some(window), emit_final, false);
            let text = run(&mut op, &[In::Rows(&[("a", 1, 300)]), In::End]);
            assert!(text.contains("| a | 0           | 1000      |"), "{text}");
            assert!(!text.contains("-500"), "a window before time 0:\n{text}");
        }
    }

    #[test]
    fn session_windows_merge_and_retract() {
        let window = WindowConfig { kind: WindowKind::Session { gap: 200 }, grace: 1000, retention: 0 };
        let mut op = operator(Some(window), false, false);
        let text = run(
            &mut op,
            &[
                In::Rows(&[("a", 1, 0)]),
                In::Rows(&[("a", 2, 300)]),
                In::Rows(&[("a", 3, 150)]),
                In::Rows(&[("b", 4, 160)]),
            ],
        );
        insta::assert_snapshot!(text);
    }

    /// Runs `first`, checkpoints through a real checkpoint file, restores into a fresh
    /// operator, runs `second` on both: the restored operator must behave exactly the same.
    fn assert_roundtrip(make: impl Fn() -> AggregateOperator, first: &[In], second: &[In]) {
        let mut original = make();
        run(&mut original, first);
        let dir = tempfile::tempdir().unwrap();
        let file = crate::checkpoint::CheckpointFile::new(dir.path(), "stage");
        let state = vec![original.snapshot().unwrap()];
        file.write(&crate::checkpoint::Checkpoint { state, ..Default::default() }).unwrap();
        let mut restored = make();
        restored.restore(file.read().unwrap().unwrap().state.remove(0)).unwrap();
        assert_eq!(restored.groups.len(), original.groups.len());
        assert_eq!(restored.sessions.len(), original.sessions.len());
        let expected = run(&mut original, second);
        assert!(!expected.is_empty());
        assert_eq!(run(&mut restored, second), expected);
    }

    #[test]
    fn state_roundtrips_through_a_checkpoint() {
        let first = [In::Rows(&[("a", 1, 100), ("b", 5, 200), ("a", 2, 900)]), In::Watermark(150)];
        let second = [In::Rows(&[("a", 3, 950), ("b", 1, 1100), ("a", 4, 120)]), In::Watermark(5000), In::End];
        assert_roundtrip(|| operator(None, false, true), &first, &second);
        let tumbling = WindowConfig { kind: WindowKind::Tumbling { size: 1000 }, grace: 0, retention: 0 };
        assert_roundtrip(|| operator(Some(tumbling), false, false), &first, &second);
        let hopping = WindowConfig { kind: WindowKind::Hopping { size: 1000, advance: 500 }, grace: 100, retention: 0 };
        assert_roundtrip(|| operator(Some(hopping), true, false), &first, &second);
        let session = WindowConfig { kind: WindowKind::Session { gap: 200 }, grace: 1000, retention: 0 };
        assert_roundtrip(|| operator(Some(session), false, false), &first, &second);
    }

    /// The vectorised panes and the per-group accumulators give the same output (rows, order,
    /// late rows) on the same out-of-order input, and read each other's checkpoints.
    #[test]
    fn panes_equal_per_group_accumulators() {
        let keys = ["a", "b", "c", "d", "e", "f", "g"];
        let mut seed = 42u64;
        let mut next = move |m: u64| {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % m
        };
        let rows: Vec<(&str, i64, i64)> = (0..3000)
            .map(|i| {
                // Out of order by up to 400 ms, one row in 20 by 1000 ms more (late for every
                // window) and one in 10 by 600 ms more (late for some of its hopping windows).
                let behind = match next(20) {
                    0 => 1000,
                    1 | 2 => 600,
                    _ => 0,
                };
                let t = i as i64 * 7 + next(400) as i64 - behind;
                (keys[next(7) as usize], next(100) as i64, t)
            })
            .collect();
        let mut inputs = Vec::new();
        for (b, chunk) in rows.chunks(60).enumerate() {
            inputs.push(In::Rows(chunk));
            inputs.push(In::Watermark(b as i64 * 420 + 300));
        }
        inputs.push(In::End);
        let (first, second) = inputs.split_at(inputs.len() / 2);
        for (window, having) in [
            (WindowConfig { kind: WindowKind::Hopping { size: 1000, advance: 250 }, grace: 100, retention: 0 }, false),
            // Slices of 100 (gcd of 1000 and 300): windows and slices do not line up.
            (WindowConfig { kind: WindowKind::Hopping { size: 1000, advance: 300 }, grace: 0, retention: 0 }, false),
            (WindowConfig { kind: WindowKind::Hopping { size: 600, advance: 200 }, grace: 0, retention: 0 }, false),
            (WindowConfig { kind: WindowKind::Hopping { size: 1000, advance: 500 }, grace: 50, retention: 0 }, false),
            (WindowConfig { kind: WindowKind::Tumbling { size: 700 }, grace: 0, retention: 0 }, true),
        ] {
            let panes = || operator(Some(window), true, having);
            let per_group = || {
                let mut op = operator(Some(window), true, having);
                op.panes = None;
                op
            };
            assert!(panes().panes.is_some());
            let (mut a, mut b) = (panes(), per_group());
            // As the runtime feeds a single input: rows meet the watermark as they arrive.
            let run = |op: &mut AggregateOperator, inputs: &[In]| {
                inputs
                    .iter()
                    .map(|i| {
                        op.set_watermark_bound(ArrivalBound::UpTo(i64::MAX));
                        run(op, std::slice::from_ref(i))
                    })
                    .collect::<String>()
            };
            let (ta, tb) = (run(&mut a, first), run(&mut b, first));
            assert_eq!(ta, tb);
            assert!(ta.contains("LATE"), "the input has late rows");
            // Cross-restore: each continues from the other's checkpoint.
            // Panes read per-group windows; per-group accumulators read tumbling panes (hopping
            // panes keep slices, which only panes read).
            let (mut a2, mut a3, mut b2) = (panes(), panes(), per_group());
            a2.restore(b.snapshot().unwrap()).unwrap();
            let from_panes = a.snapshot().unwrap();
            a3.restore(from_panes.clone()).unwrap();
            let hopping = matches!(window.kind, WindowKind::Hopping { .. });
            b2.restore(if hopping { b.snapshot().unwrap() } else { from_panes }).unwrap();
            let expected = run(&mut b, second);
            // (HAVING C < 2 keeps few windows; without it there are hundreds.)
            assert!(having || expected.matches("| false ").count() > 100, "{expected}");
            assert_eq!(run(&mut a, second), expected);
            assert_eq!(run(&mut a2, second), expected);
            assert_eq!(run(&mut a3, second), expected);
            assert_eq!(run(&mut b2, second), expected);
        }
    }

    #[test]
    fn rows_meet_the_watermark_as_of_their_arrival() {
        let window = WindowConfig { kind: WindowKind::Tumbling { size: 1000 }, grace: 0, retention: 0 };
        // One partition alone: the 900 after the 1500 is late, as if a watermark followed each row.
        let mut op = operator(Some(window), true, false);
        op.set_watermark_bound(ArrivalBound::UpTo(i64::MAX));
        let text = run(&mut op, &[In::Rows(&[("a", 1, 500), ("a", 2, 1500), ("a", 3, 900)])]);
        assert_eq!(text.matches("LATE").count(), 1, "{text}");
        assert!(text
            .contains("LATE record at 900 is later than window [0, 1000) plus grace: the watermark was already 1500"));
        // Another input still at 800 holds the watermark back: nothing is late.
        let mut op = operator(Some(window), true, false);
        op.set_watermark_bound(ArrivalBound::UpTo(800));
        let text = run(&mut op, &[In::Rows(&[("a", 1, 500), ("a", 2, 1500), ("a", 3, 900)])]);
        assert!(!text.contains("LATE"), "{text}");
    }

    #[test]
    fn restore_refuses_state_of_another_shape() {
        let mut a = operator(None, false, false);
        run(&mut a, &[In::Rows(&[("a", 1, 100)])]);
        let mut state = a.snapshot().unwrap();
        state.pop();
        let err = operator(None, false, false).restore(state).unwrap_err();
        assert!(err.to_string().contains("does not fit"), "{err}");
    }
}
