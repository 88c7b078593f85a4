//! Window panes: the state of an `EMIT FINAL` tumbling or hopping aggregation, vectorised.
//!
//! Per window (by start) a pane keeps its groups' aggregate states in DataFusion
//! `GroupsAccumulator`s, one per aggregate, with a group index per key. A batch is applied with
//! one `update_batch` call per window and aggregate (all its rows, their group indices) instead
//! of one `Accumulator` call per group; a closing window is evaluated in one call per
//! aggregate. Used by `AggregateOperator` when every aggregate has a groups accumulator
//! (COUNT, SUM, MIN, MAX, AVG, ...); other aggregates keep the per-group accumulators.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, Int64Array, UInt32Array};
use arrow::compute::take;
use arrow::row::Rows;
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;

use crate::state::HashMap;
use crate::Result;

/// A closed pane: group keys (row format), latest times, aggregate values.
pub type Finished = (Vec<Box<[u8]>>, Vec<i64>, Vec<ArrayRef>);

/// A pane's groups with their aggregate states (`state_fields` arrays, by group index).
struct Frozen {
    keys: Vec<Box<[u8]>>,
    max_ts: Vec<i64>,
    states: Vec<Vec<ArrayRef>>,
}

impl Frozen {
    fn size(&self) -> usize {
        self.keys.iter().map(|k| k.len() + 16).sum::<usize>()
            + self.states.iter().flatten().map(|a| a.get_array_memory_size()).sum::<usize>()
    }
}

/// Hopping windows kept as slices (see the module docs).
#[derive(Clone, Copy)]
struct Hop {
    size: i64,
    advance: i64,
    /// Slice width: `gcd(size, advance)`, less than `size`.
    slice: i64,
}

impl Hop {
    /// Starts of the windows over the slice starting at `a` (newest first): multiples of
    /// `advance` after `a - size`; windows before time 0 only over slices before it (records
    /// at time 0 or later are in no window starting before 0, as in Kafka Streams).
    fn windows_over(&self, a: i64) -> impl Iterator<Item = i64> + '_ {
        let last = a - a.rem_euclid(self.advance);
        (0..)
            .map(move |k| last - k * self.advance)
            .take_while(move |s| *s > a - self.size)
            .filter(move |s| *s >= 0 || a < 0)
    }
}

/// The groups of one window.
pub struct Pane {
    /// Window end.
    pub end: i64,
    index: HashMap<Box<[u8]>, usize>,
    /// Group keys (arrow row format), by group index.
    pub keys: Vec<Box<[u8]>>,
    /// Latest event time per group.
    pub max_ts: Vec<i64>,
    accs: Vec<Box<dyn GroupsAccumulator>>,
}

impl Pane {
    /// The group index of `key`, a new group if needed.
    fn group(&mut self, key: &[u8]) -> usize {
        if let Some(g) = self.index.get(key) {
            return *g;
        }
        let g = self.keys.len();
        let owned: Box<[u8]> = key.into();
        self.index.insert(owned.clone(), g);
        self.keys.push(owned);
        self.max_ts.push(i64::MIN);
        g
    }

    /// Every group's key, latest time and aggregate values (one array per aggregate, by group
    /// index); ends the pane.
    pub fn finish(mut self) -> Result<Finished> {
        let values = self.accs.iter_mut().map(|a| Ok(a.evaluate(EmitTo::All)?)).collect::<Result<Vec<_>>>()?;
        Ok((self.keys, self.max_ts, values))
    }

    /// Every group's key, latest time and aggregate states; ends the pane.
    fn freeze(mut self) -> Result<Frozen> {
        let states = self.accs.iter_mut().map(|a| Ok(a.state(EmitTo::All)?)).collect::<Result<Vec<_>>>()?;
        Ok(Frozen { keys: self.keys, max_ts: self.max_ts, states })
    }

    /// Merges `part`'s groups into this pane's.
    fn merge(&mut self, part: &Frozen) -> Result<()> {
        let mut groups = Vec::with_capacity(part.keys.len());
        for (key, t) in part.keys.iter().zip(&part.max_ts) {
            let g = self.group(key);
            self.max_ts[g] = self.max_ts[g].max(*t);
            groups.push(g);
        }
        let total = self.keys.len();
        for (acc, state) in self.accs.iter_mut().zip(&part.states) {
            acc.merge_batch(state, &groups, total)?;
        }
        Ok(())
    }
}

/// Open windows by start (hopping windows: open slices, see the module docs).
pub struct Panes {
    aggregates: Vec<Arc<AggregateFunctionExpr>>,
    /// Windows, or with `hop` the slices still changing, by start.
    panes: BTreeMap<i64, Pane>,
    hop: Option<Hop>,
    /// Slices read for a closed window, kept for the later windows over them.
    frozen: BTreeMap<i64, Vec<Frozen>>,
    /// Per-window panes (with `hop`): rows in some of their windows but not all.
    partial: BTreeMap<i64, Pane>,
    /// The start of the last window closed (with `hop`; windows close in order of start).
    done: i64,
}

/// One aggregate's evaluated arguments and FILTER over a batch.
pub type Arguments = (Vec<ArrayRef>, Option<BooleanArray>);

impl Panes {
    /// Whether every aggregate can use a groups accumulator.
    pub fn supported(aggregates: &[Arc<AggregateFunctionExpr>]) -> bool {
        aggregates.iter().all(|a| a.groups_accumulator_supported())
    }

    /// No windows yet. Hopping windows (`hopping`: size and advance) whose slices are narrower
    /// than a window are kept as slices.
    pub fn new(aggregates: Vec<Arc<AggregateFunctionExpr>>, hopping: Option<(i64, i64)>) -> Self {
        let hop = hopping.and_then(|(size, advance)| {
            let slice = gcd(size, advance);
            (slice > 0 && slice < size).then_some(Hop { size, advance, slice })
        });
        Self {
            aggregates,
            panes: BTreeMap::new(),
            hop,
            frozen: BTreeMap::new(),
            partial: BTreeMap::new(),
            done: i64::MIN,
        }
    }

    /// The width of a slice when rows go to slices (hopping windows), else `None`.
    pub fn slice_width(&self) -> Option<i64> {
        self.hop.map(|h| h.slice)
    }

    /// The pane of `(start, end)`: a window's, or with slices a slice's (or, a window's width,
    /// the window's partial pane).
    fn pane(&mut self, start: i64, end: i64) -> Result<&mut Pane> {
        let partial = self.hop.is_some_and(|h| end - start == h.size);
        let panes = if partial { &mut self.partial } else { &mut self.panes };
        Ok(match panes.entry(start) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => e.insert(new_pane(&self.aggregates, end)?),
        })
    }

    /// Applies rows `rows` (indices into a batch of `n` rows, ascending) to window
    /// `(start, end)`: `keys` are the batch's group keys, `ts` its event times, `args` each
    /// aggregate's arguments over the batch.
    pub fn update(
        &mut self,
        (start, end): (i64, i64),
        rows: &[u32],
        n: usize,
        keys: &Rows,
        ts: &Int64Array,
        args: &[Arguments],
    ) -> Result<()> {
        let pane = self.pane(start, end)?;
        let mut groups = Vec::with_capacity(rows.len());
        for &r in rows {
            let g = pane.group(keys.row(r as usize).as_ref());
            if ts.is_valid(r as usize) {
                pane.max_ts[g] = pane.max_ts[g].max(ts.value(r as usize));
            }
            groups.push(g);
        }
        let total = pane.keys.len();
        // Rows 0..n in order: the batch's arrays as they are.
        let whole = rows.len() == n;
        let index = (!whole).then(|| UInt32Array::from(rows.to_vec()));
        let pick = |a: &dyn Array| -> Result<ArrayRef> {
            Ok(match &index {
                Some(i) => take(a, i, None)?,
                None => arrow::array::make_array(a.to_data()),
            })
        };
        for (acc, (cols, filter)) in pane.accs.iter_mut().zip(args) {
            let values = cols.iter().map(|c| pick(c.as_ref())).collect::<Result<Vec<_>>>()?;
            let filter = match filter {
                Some(f) => Some(arrow::array::AsArray::as_boolean(pick(f)?.as_ref()).clone()),
                None => None,
            };
            acc.update_batch(&values, &groups, filter.as_ref(), total)?;
        }
        Ok(())
    }

    /// Removes and returns the windows whose end satisfies `closed`, in order of their start.
    pub fn close(&mut self, closed: impl Fn(i64) -> bool) -> Result<Vec<(i64, Pane)>> {
        let Some(hop) = self.hop else {
            let starts: Vec<i64> = self.panes.iter().filter(|(_, p)| closed(p.end)).map(|(s, _)| *s).collect();
            return Ok(starts.into_iter().filter_map(|s| self.panes.remove(&s).map(|p| (s, p))).collect());
        };
        let starts = self.closing(hop, &closed);
        let mut windows = Vec::with_capacity(starts.len());
        for s in starts {
            let end = s.saturating_add(hop.size);
            // The slices in the window (only those before time 0 for a window starting before it).
            let range = s..end.min(if s < 0 { 0 } else { i64::MAX });
            let changing: Vec<i64> = self.panes.range(range.clone()).map(|(a, _)| *a).collect();
            for a in changing {
                if let Some(pane) = self.panes.remove(&a) {
                    self.frozen.entry(a).or_default().push(pane.freeze()?);
                }
            }
            let mut window = new_pane(&self.aggregates, end)?;
            for part in self.frozen.range(range).flat_map(|(_, parts)| parts) {
                window.merge(part)?;
            }
            if let Some(partial) = self.partial.remove(&s) {
                window.merge(&partial.freeze()?)?;
            }
            windows.push((s, window));
            self.done = s;
        }
        // A slice goes once the last window over it has closed.
        self.frozen.retain(|a, _| !closed(hop.windows_over(*a).next().unwrap_or(*a).saturating_add(hop.size)));
        Ok(windows)
    }

    /// Every group as (key, start, end, max time) and each aggregate's state arrays (the
    /// aggregate's `state_fields`, one row per group, in the same order): windows' (or slices'
    /// and partial windows') groups. The panes keep going.
    #[allow(clippy::type_complexity)]
    pub fn snapshot(&mut self) -> Result<(Vec<(&[u8], i64, i64, i64)>, Vec<Vec<ArrayRef>>)> {
        let mut states: Vec<Vec<Vec<ArrayRef>>> = vec![Vec::new(); self.aggregates.len()];
        for pane in self.panes.values_mut().chain(self.partial.values_mut()) {
            let n = pane.keys.len();
            let all: Vec<usize> = (0..n).collect();
            for (a, acc) in pane.accs.iter_mut().enumerate() {
                // `state` consumes: continue with a fresh accumulator merged from it.
                let state = acc.state(EmitTo::All)?;
                let mut fresh = self.aggregates[a].create_groups_accumulator()?;
                fresh.merge_batch(&state, &all, n)?;
                *acc = fresh;
                states[a].push(state);
            }
        }
        for part in self.frozen.values().flatten() {
            for (a, state) in part.states.iter().enumerate() {
                states[a].push(state.clone());
            }
        }
        let mut columns = Vec::new();
        for (a, per_pane) in states.into_iter().enumerate() {
            let fields = self.aggregates[a].state_fields()?;
            let mut cols = Vec::with_capacity(fields.len());
            for (f, field) in fields.iter().enumerate() {
                let parts: Vec<&dyn Array> = per_pane.iter().map(|s| s[f].as_ref()).collect();
                cols.push(if parts.is_empty() {
                    arrow::array::new_empty_array(field.data_type())
                } else {
                    arrow::compute::concat(&parts)?
                });
            }
            columns.push(cols);
        }
        let slice = self.hop.map_or(0, |h| h.slice);
        let frozen = self.frozen.iter().flat_map(|(a, parts)| {
            parts
                .iter()
                .flat_map(move |p| p.keys.iter().zip(&p.max_ts).map(move |(k, t)| (k.as_ref(), *a, a + slice, *t)))
        });
        let groups = self
            .panes
            .iter()
            .chain(self.partial.iter())
            .flat_map(|(s, p)| p.keys.iter().zip(&p.max_ts).map(move |(k, t)| (k.as_ref(), *s, p.end, *t)))
            .chain(frozen)
            .collect();
        Ok((groups, columns))
    }

    /// The starts of the windows over any slice (or with a partial pane) that `closed` says
    /// have closed and that were not closed before, oldest first.
    fn closing(&self, hop: Hop, closed: &impl Fn(i64) -> bool) -> Vec<i64> {
        let mut starts: Vec<i64> = self
            .panes
            .keys()
            .chain(self.frozen.keys())
            .flat_map(|a| hop.windows_over(*a).collect::<Vec<_>>())
            .chain(self.partial.keys().copied())
            .filter(|s| *s > self.done && closed(s.saturating_add(hop.size)))
            .collect();
        starts.sort_unstable();
        starts.dedup();
        starts
    }

    /// After [`Panes::restore`]: the windows that `closed` says were closed before the checkpoint
    /// (their results were emitted then) are not closed again. (Slices stay as restored; the
    /// next close reads and drops them as usual.)
    pub fn skip_closed(&mut self, closed: impl Fn(i64) -> bool) {
        if let Some(hop) = self.hop {
            if let Some(last) = self.closing(hop, &closed).last() {
                self.done = *last;
            }
        }
    }

    /// Replaces the panes with groups `keys` (row format) in windows
    /// `starts`/`ends`, with latest times `max_ts` and each aggregate's state arrays.
    pub fn restore(
        &mut self,
        keys: &Rows,
        (starts, ends, max_ts): (&Int64Array, &Int64Array, &Int64Array),
        states: &[Vec<ArrayRef>],
    ) -> Result<()> {
        self.panes.clear();
        self.partial.clear();
        self.frozen.clear();
        self.done = i64::MIN;
        let mut by_window: BTreeMap<(i64, i64), Vec<u32>> = BTreeMap::new();
        for i in 0..keys.num_rows() {
            by_window.entry((starts.value(i), ends.value(i))).or_default().push(i as u32);
        }
        for ((start, end), rows) in by_window {
            let pane = self.pane(start, end)?;
            let groups: Vec<usize> = rows
                .iter()
                .map(|r| {
                    let g = pane.group(keys.row(*r as usize).as_ref());
                    pane.max_ts[g] = max_ts.value(*r as usize);
                    g
                })
                .collect();
            let total = pane.keys.len();
            let index = UInt32Array::from(rows);
            for (acc, state) in pane.accs.iter_mut().zip(states) {
                let values = state.iter().map(|c| Ok(take(c.as_ref(), &index, None)?)).collect::<Result<Vec<_>>>()?;
                acc.merge_batch(&values, &groups, total)?;
            }
        }
        Ok(())
    }

    /// Approximate bytes of state.
    pub fn size(&self) -> usize {
        self.panes
            .values()
            .chain(self.partial.values())
            .map(|p| {
                p.keys.iter().map(|k| k.len() * 2 + 16).sum::<usize>() + p.accs.iter().map(|a| a.size()).sum::<usize>()
            })
            .sum::<usize>()
            + self.frozen.values().flatten().map(Frozen::size).sum::<usize>()
    }
}

/// An empty pane of `aggregates` for a window (or slice) ending at `end`.
fn new_pane(aggregates: &[Arc<AggregateFunctionExpr>], end: i64) -> Result<Pane> {
    let accs = aggregates.iter().map(|a| Ok(a.create_groups_accumulator()?)).collect::<Result<Vec<_>>>()?;
    Ok(Pane { end, index: HashMap::default(), keys: Vec::new(), max_ts: Vec::new(), accs })
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 {
        a.abs()
    } else {
        gcd(b, a % b)
    }
}
