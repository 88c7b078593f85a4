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
}

/// Open windows by start.
pub struct Panes {
    aggregates: Vec<Arc<AggregateFunctionExpr>>,
    panes: BTreeMap<i64, Pane>,
}

/// One aggregate's evaluated arguments and FILTER over a batch.
pub type Arguments = (Vec<ArrayRef>, Option<BooleanArray>);

impl Panes {
    /// Whether every aggregate can use a groups accumulator.
    pub fn supported(aggregates: &[Arc<AggregateFunctionExpr>]) -> bool {
        aggregates.iter().all(|a| a.groups_accumulator_supported())
    }

    /// No windows yet.
    pub fn new(aggregates: Vec<Arc<AggregateFunctionExpr>>) -> Self {
        Self { aggregates, panes: BTreeMap::new() }
    }

    fn pane(&mut self, start: i64, end: i64) -> Result<&mut Pane> {
        if !self.panes.contains_key(&start) {
            let accs =
                self.aggregates.iter().map(|a| Ok(a.create_groups_accumulator()?)).collect::<Result<Vec<_>>>()?;
            self.panes
                .insert(start, Pane { end, index: HashMap::default(), keys: Vec::new(), max_ts: Vec::new(), accs });
        }
        Ok(self.panes.get_mut(&start).expect("inserted above"))
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
    pub fn close(&mut self, closed: impl Fn(i64) -> bool) -> Vec<(i64, Pane)> {
        let starts: Vec<i64> = self.panes.iter().filter(|(_, p)| closed(p.end)).map(|(s, _)| *s).collect();
        starts.into_iter().filter_map(|s| self.panes.remove(&s).map(|p| (s, p))).collect()
    }

    /// Every group as (key, start, end, max time) and each aggregate's state arrays (the
    /// aggregate's `state_fields`, one row per group, in the same order). The panes keep going.
    #[allow(clippy::type_complexity)]
    pub fn snapshot(&mut self) -> Result<(Vec<(&[u8], i64, i64, i64)>, Vec<Vec<ArrayRef>>)> {
        let mut states: Vec<Vec<Vec<ArrayRef>>> = vec![Vec::new(); self.aggregates.len()];
        for pane in self.panes.values_mut() {
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
        let mut columns = Vec::new();
        for (a, per_pane) in states.into_iter().enumerate() {
            let width = self.aggregates[a].state_fields()?.len();
            let mut cols = Vec::with_capacity(width);
            for f in 0..width {
                let parts: Vec<&dyn Array> = per_pane.iter().map(|s| s[f].as_ref()).collect();
                cols.push(if parts.is_empty() {
                    arrow::array::new_empty_array(self.aggregates[a].state_fields()?[f].data_type())
                } else {
                    arrow::compute::concat(&parts)?
                });
            }
            columns.push(cols);
        }
        let groups = self
            .panes
            .iter()
            .flat_map(|(s, p)| p.keys.iter().zip(&p.max_ts).map(move |(k, t)| (k.as_ref(), *s, p.end, *t)))
            .collect();
        Ok((groups, columns))
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
            .map(|p| {
                p.keys.iter().map(|k| k.len() * 2 + 16).sum::<usize>() + p.accs.iter().map(|a| a.size()).sum::<usize>()
            })
            .sum()
    }
}
