//! `StreamStreamJoinOperator`: joins two streams on a key within a time window.
//!
//! Input 0 is the left stream, input 1 (`process_side_batch`) the right one. A left row at
//! time `l` matches right rows of the same key at times `r` with `l - before <= r <= l + after`
//! (`WITHIN (before, after)`); matches are emitted as soon as the second row arrives, from
//! either side. Both sides are buffered until the watermark shows no more matches can come:
//! a left row expires when `l + after + grace < watermark`, a right row when
//! `r + before + grace < watermark`. For LEFT, RIGHT and FULL joins an expiring row that never
//! matched is emitted then, with the other side null: no early null rows, as the issue asks
//! (and as ksqlDB does with a GRACE PERIOD). A row arriving after its whole window and grace
//! closed joins the rows still buffered; if none matches, an outer side's row is emitted at
//! once with nulls (Kafka Streams does the same), an inner side's row is handed to the runtime
//! as late. State is bounded by the window, grace and the input rate.

use crate::state::HashMap;
use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    new_null_array, Array, ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch, RecordBatchOptions, UInt32Array,
};
use arrow::compute::{cast, take};
use arrow::datatypes::{DataType, Int64Type, SchemaRef};
use arrow::row::{OwnedRow, RowConverter, SortField};
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
    /// Left columns then right columns.
    pub output_schema: SchemaRef,
}

struct Buffered {
    time: i64,
    row: OwnedRow,
    matched: bool,
}

/// See the module docs.
pub struct StreamStreamJoinOperator {
    cfg: StreamStreamJoinConfig,
    key_types: Vec<DataType>,
    keys: RowConverter,
    left_rows: RowConverter,
    right_rows: RowConverter,
    left: HashMap<OwnedRow, Vec<Buffered>>,
    right: HashMap<OwnedRow, Vec<Buffered>>,
    /// Keys of buffered rows by row time, per side: expiry visits only what expires.
    left_expiry: BTreeMap<i64, Vec<OwnedRow>>,
    right_expiry: BTreeMap<i64, Vec<OwnedRow>>,
    watermark: i64,
    late: Vec<LateRow>,
}

/// Where an output row's side comes from: row `i` of the batch being processed, or a copy of a
/// buffered row in the output's arena (no allocation per output row).
#[derive(Clone, Copy)]
enum Src {
    Batch(u32),
    Kept(u32),
}

/// One output row: a left row and/or a right row.
type Pair = (Option<Src>, Option<Src>);

/// Output rows being assembled: the pairs, and the bytes of the buffered rows they use.
#[derive(Default)]
struct Pairs {
    pairs: Vec<Pair>,
    arena: Vec<u8>,
    spans: Vec<(usize, usize)>,
}

impl Pairs {
    fn keep(&mut self, row: &OwnedRow) -> Src {
        let start = self.arena.len();
        self.arena.extend_from_slice(row.as_ref());
        self.spans.push((start, self.arena.len()));
        Src::Kept(self.spans.len() as u32 - 1)
    }
}

impl StreamStreamJoinOperator {
    /// A join per `cfg`; key types are the left key's.
    pub fn try_new(cfg: StreamStreamJoinConfig) -> Result<Self> {
        let key_types = cfg.left_key.iter().map(|e| Ok(e.data_type(&cfg.left_schema)?)).collect::<Result<Vec<_>>>()?;
        let keys = RowConverter::new(key_types.iter().map(|t| SortField::new(t.clone())).collect())?;
        let fields = |s: &SchemaRef| s.fields().iter().map(|f| SortField::new(f.data_type().clone())).collect();
        let left_rows = RowConverter::new(fields(&cfg.left_schema))?;
        let right_rows = RowConverter::new(fields(&cfg.right_schema))?;
        Ok(Self {
            cfg,
            key_types,
            keys,
            left_rows,
            right_rows,
            left: HashMap::default(),
            right: HashMap::default(),
            left_expiry: BTreeMap::new(),
            right_expiry: BTreeMap::new(),
            watermark: i64::MIN,
            late: Vec::new(),
        })
    }

    fn key_rows(&self, batch: &RecordBatch, exprs: &[Arc<dyn PhysicalExpr>]) -> Result<(arrow::row::Rows, Vec<bool>)> {
        let n = batch.num_rows();
        let arrays = exprs
            .iter()
            .zip(&self.key_types)
            .map(|(e, t)| {
                let a = e.evaluate(batch)?.into_array(n)?;
                Ok(if a.data_type() == t { a } else { cast(&a, t)? })
            })
            .collect::<Result<Vec<ArrayRef>>>()?;
        let nulls = (0..n).map(|i| arrays.iter().any(|a| a.is_null(i))).collect();
        Ok((self.keys.convert_columns(&arrays)?, nulls))
    }

    /// Processes rows of one side against the other side's buffer.
    fn process(&mut self, batch: RecordBatch, from_left: bool, out: &mut Vec<Message>) -> Result<()> {
        let (keys, null_keys) =
            self.key_rows(&batch, if from_left { &self.cfg.left_key } else { &self.cfg.right_key })?;
        let time_col = if from_left { self.cfg.left_time } else { self.cfg.right_time };
        let times = cast(batch.column(time_col), &DataType::Int64)?;
        let times = times.as_primitive::<Int64Type>();
        let rows = if from_left {
            self.left_rows.convert_columns(batch.columns())?
        } else {
            self.right_rows.convert_columns(batch.columns())?
        };
        let (before, after, grace) = (self.cfg.before, self.cfg.after, self.cfg.grace);
        let mut out_rows = Pairs::default();
        for (i, &null_key) in null_keys.iter().enumerate() {
            let t = if times.is_null(i) { 0 } else { times.value(i) };
            // The latest partner time that could still match this row, plus grace.
            let reach = if from_left { t + after } else { t + before };
            let late = self.watermark != i64::MIN && reach.saturating_add(grace) < self.watermark;
            let outer = self.emits_unmatched(from_left);
            if late && !outer {
                let (start, end) = if from_left { (t - before, t + after) } else { (t - after, t + before) };
                self.late.push(LateRow {
                    partition: 0,
                    offset: -1,
                    timestamp: t,
                    window_start: start,
                    window_end: end,
                    watermark: self.watermark,
                    reason: format!(
                        "{} row at {t} is later than its join window [{start}, {end}] plus grace: the watermark was already {}",
                        if from_left { "left" } else { "right" },
                        self.watermark
                    ),
                });
                continue;
            }
            let me = Src::Batch(i as u32);
            let mut matched = false;
            if !null_key {
                let key = keys.row(i).owned();
                let other = if from_left { &mut self.right } else { &mut self.left };
                if let Some(partners) = other.get_mut(&key) {
                    for p in partners.iter_mut() {
                        let in_window = if from_left {
                            p.time >= t - before && p.time <= t + after
                        } else {
                            t >= p.time - before && t <= p.time + after
                        };
                        if in_window {
                            p.matched = true;
                            matched = true;
                            let partner = out_rows.keep(&p.row);
                            out_rows.pairs.push(if from_left {
                                (Some(me), Some(partner))
                            } else {
                                (Some(partner), Some(me))
                            });
                        }
                    }
                }
                // A late row of an outer side joins what is still buffered, else comes out
                // with nulls right away (as in Kafka Streams); it is not buffered.
                if !matched && (late || self.cfg.eager_outer) && outer {
                    out_rows.pairs.push(if from_left { (Some(me), None) } else { (None, Some(me)) });
                }
                if late {
                    continue;
                }
                let row = rows.row(i).owned();
                let (own, expiry) = if from_left {
                    (&mut self.left, &mut self.left_expiry)
                } else {
                    (&mut self.right, &mut self.right_expiry)
                };
                // With eager outer rows, the row's null row is already out: never emit it again.
                let matched = matched || self.cfg.eager_outer;
                expiry.entry(t).or_default().push(key.clone());
                own.entry(key).or_default().push(Buffered { time: t, row, matched });
            } else if outer {
                // A null key never matches: it is final right away.
                out_rows.pairs.push(if from_left { (Some(me), None) } else { (None, Some(me)) });
            }
        }
        let current = if from_left { (Some(&rows), None) } else { (None, Some(&rows)) };
        self.emit(out_rows, current, out)
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
        // Unmatched outer rows, copied into the output's arena as they expire: (time, pair).
        let mut out_rows = Pairs::default();
        let mut expired: Vec<(i64, Pair)> = Vec::new();
        let left_outer = self.emits_unmatched(true);
        let right_outer = self.emits_unmatched(false);
        // Rows at times below the cut expire: visit only their keys.
        let sides = [
            (&mut self.left, &mut self.left_expiry, after, left_outer, true),
            (&mut self.right, &mut self.right_expiry, before, right_outer, false),
        ];
        for (map, expiry, reach, outer, is_left) in sides {
            let cut = wm.saturating_sub(reach).saturating_sub(grace);
            let keep = expiry.split_off(&cut);
            for key in std::mem::replace(expiry, keep).into_values().flatten() {
                let Some(rows) = map.get_mut(&key) else { continue };
                rows.retain(|b| {
                    let keep = (b.time + reach).saturating_add(grace) >= wm;
                    if !keep && outer && !b.matched {
                        let kept = Some(out_rows.keep(&b.row));
                        expired.push((b.time, if is_left { (kept, None) } else { (None, kept) }));
                    }
                    keep
                });
                if rows.is_empty() {
                    map.remove(&key);
                }
            }
        }
        expired.sort_by_key(|(t, _)| *t);
        out_rows.pairs = expired.into_iter().map(|(_, p)| p).collect();
        self.emit(out_rows, (None, None), out)
    }

    /// Builds the output batch; `current` holds the rows of the batch being processed (its
    /// side), which `Src::Batch` refers to.
    fn emit(
        &self,
        out_rows: Pairs,
        current: (Option<&arrow::row::Rows>, Option<&arrow::row::Rows>),
        out: &mut Vec<Message>,
    ) -> Result<()> {
        let Pairs { pairs, arena, spans } = out_rows;
        if pairs.is_empty() {
            return Ok(());
        }
        let n = pairs.len();
        let (left_parser, right_parser) = (self.left_rows.parser(), self.right_rows.parser());
        fn resolve<'a>(
            src: Option<Src>,
            rows: Option<&'a arrow::row::Rows>,
            parser: &'a arrow::row::RowParser,
            arena: &'a [u8],
            spans: &[(usize, usize)],
        ) -> Option<arrow::row::Row<'a>> {
            src.and_then(|s| match s {
                Src::Batch(i) => rows.map(|r| r.row(i as usize)),
                Src::Kept(k) => {
                    let (a, b) = spans[k as usize];
                    Some(parser.parse(&arena[a..b]))
                }
            })
        }
        let left = pairs.iter().map(|p| resolve(p.0, current.0, &left_parser, &arena, &spans));
        let right = pairs.iter().map(|p| resolve(p.1, current.1, &right_parser, &arena, &spans));
        out.push(Message::Data(joined_batch(
            Side { rows: &self.left_rows, schema: &self.cfg.left_schema, picked: left },
            Side { rows: &self.right_rows, schema: &self.cfg.right_schema, picked: right },
            n,
            &self.cfg.output_schema,
            vec![],
        )?));
        Ok(())
    }
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

    fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        let side = |map: &HashMap<OwnedRow, Vec<Buffered>>, rows: &RowConverter| -> Result<[RecordBatch; 2]> {
            let entries: Vec<(&OwnedRow, &Buffered)> =
                map.iter().flat_map(|(k, v)| v.iter().map(move |b| (k, b))).collect();
            let n = entries.len();
            let mut keys = crate::state::rows_to_columns(&self.keys, entries.iter().map(|e| e.0))?;
            keys.push(Arc::new(Int64Array::from_iter_values(entries.iter().map(|e| e.1.time))));
            keys.push(Arc::new(BooleanArray::from_iter(entries.iter().map(|e| Some(e.1.matched)))));
            let values = crate::state::rows_to_columns(rows, entries.iter().map(|e| &e.1.row))?;
            Ok([crate::state::batch(keys, n)?, crate::state::batch(values, n)?])
        };
        let [lk, lv] = side(&self.left, &self.left_rows)?;
        let [rk, rv] = side(&self.right, &self.right_rows)?;
        let wm = crate::state::batch(vec![Arc::new(Int64Array::from(vec![self.watermark]))], 1)?;
        Ok(vec![lk, lv, rk, rv, wm])
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
        let [lk, lv, rk, rv, wm] = state.as_slice() else {
            return Err(crate::state::bad_state("a stream-stream join has five state batches"));
        };
        let nk = self.key_types.len();
        let side =
            |k: &RecordBatch, v: &RecordBatch, rows: &RowConverter| -> Result<HashMap<OwnedRow, Vec<Buffered>>> {
                if k.num_columns() != nk + 2 {
                    return Err(crate::state::bad_state("join key columns differ"));
                }
                let keys = crate::state::columns_to_rows(&self.keys, &k.columns()[..nk])?;
                let times = k.column(nk).as_primitive::<Int64Type>();
                let matched = k.column(nk + 1).as_boolean();
                let values = crate::state::columns_to_rows(rows, v.columns())?;
                let mut map: HashMap<OwnedRow, Vec<Buffered>> = HashMap::default();
                for i in 0..keys.num_rows() {
                    map.entry(keys.row(i).owned()).or_default().push(Buffered {
                        time: times.value(i),
                        row: values.row(i).owned(),
                        matched: matched.value(i),
                    });
                }
                Ok(map)
            };
        self.left = side(lk, lv, &self.left_rows)?;
        self.right = side(rk, rv, &self.right_rows)?;
        for (map, expiry) in [(&self.left, &mut self.left_expiry), (&self.right, &mut self.right_expiry)] {
            expiry.clear();
            for (key, rows) in map {
                for b in rows {
                    expiry.entry(b.time).or_default().push(key.clone());
                }
            }
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
            bytes: self.left.values().chain(self.right.values()).flatten().map(|b| b.row.as_ref().len() + 16).sum(),
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
}
