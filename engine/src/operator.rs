//! The push trait every dataflow operator implements.

use std::sync::Arc;

use arrow::array::{Array, RecordBatch};
use arrow::datatypes::SchemaRef;

use crate::message::{Barrier, Message, Watermark};
use crate::Result;

/// What an operator keeps between batches, for `EXPLAIN` and `DESCRIBE EXTENDED`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct StateInfo {
    /// Whether the state stays bounded on unbounded input (by windows, retention or TTL).
    pub bounded: bool,
    /// Approximate bytes held now.
    pub bytes: usize,
    /// A short description ("none", "windows until watermark + grace", ...).
    pub description: String,
}

impl StateInfo {
    /// The state of an operator that keeps none.
    pub fn stateless() -> Self {
        Self { bounded: true, bytes: 0, description: "none".into() }
    }
}

/// A row that arrived after the window it belongs to had closed. Operators hand these to the
/// runtime, which writes them to the late-data topic: late data is counted and visible, never
/// dropped silently.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LateRow {
    /// Source partition.
    pub partition: u32,
    /// Source offset (-1 if unknown).
    pub offset: i64,
    /// The row's event time.
    pub timestamp: i64,
    /// Start of the window it missed.
    pub window_start: i64,
    /// End of the window it missed.
    pub window_end: i64,
    /// The watermark when it arrived.
    pub watermark: i64,
    /// A sentence saying why it is late.
    pub reason: String,
}

/// How far event time may advance within the next main-input batch, row by row (see
/// [`Operator::set_watermark_bound`]).
#[derive(Clone, Debug)]
pub enum ArrivalBound {
    /// By the batch's own rows' times, up to this bound.
    UpTo(i64),
    /// Per row, the event time the rows before it had reached, capped by the bound: computed
    /// over the batch this one was split from (a stage's key shards each see some of its rows).
    PerRow(Arc<[i64]>),
}

impl ArrivalBound {
    /// Per row of `times`, the event time reached before it (see [`ArrivalBound::PerRow`]).
    pub fn per_row(times: &arrow::array::Int64Array, bound: i64) -> Vec<i64> {
        let mut running = i64::MIN;
        (0..times.len())
            .map(|i| {
                let reached = running.min(bound);
                if !times.is_null(i) {
                    running = running.max(times.value(i));
                }
                reached
            })
            .collect()
    }
}

/// A dataflow operator. The runtime calls it from one task, in message order:
///
/// * [`process_batch`](Operator::process_batch) for every data batch (rows in `input_schema`
///   of the plan that built it); it may emit any number of messages to `out`.
/// * [`handle_watermark`](Operator::handle_watermark) when event time advances; operators with
///   time-based state emit what the watermark completes, then forward the watermark.
/// * [`snapshot`](Operator::snapshot) at a checkpoint, which the runtime takes between two
///   inputs of the task (so everything before it has been processed; see `crate::commit`);
///   after a restart a freshly built operator gets it back through
///   [`restore`](Operator::restore) before any input. (The runtime does not inject
///   [`Message::Barrier`]s into chains: a query's only stateful task sees its inputs one whole
///   fetch at a time, which aligns checkpoints without them. `handle_checkpoint` handles a
///   barrier pushed by a caller, e.g. a future multi-stage dataflow.)
/// * [`on_close`](Operator::on_close) at the end of a bounded input: flush everything.
///
/// Defaults forward control messages unchanged, which is right for stateless operators.
/// Errors are for failures of the whole operator; a bad row is the source's business (it is
/// dead-lettered before it reaches operators).
pub trait Operator: Send {
    /// Name for `EXPLAIN` and errors.
    fn name(&self) -> &str;

    /// The schema of the batches this operator emits.
    fn output_schema(&self) -> SchemaRef;

    /// Processes one batch.
    fn process_batch(&mut self, batch: RecordBatch, out: &mut Vec<Message>) -> Result<()>;

    /// A batch from a further input (`input` >= 1): the table side of a join. Only the first
    /// operator of a stage receives these; the default refuses them.
    fn process_side_batch(&mut self, input: usize, _batch: RecordBatch, _out: &mut Vec<Message>) -> Result<()> {
        Err(crate::EngineError::Internal(format!("{} has no input {input}", self.name())))
    }

    /// Event time advanced to `watermark`.
    fn handle_watermark(&mut self, watermark: Watermark, out: &mut Vec<Message>) -> Result<()> {
        out.push(Message::Watermark(watermark));
        Ok(())
    }

    /// The next data batch comes from one partition of the main input, its rows in arrival
    /// order: as they arrive, event time may advance row by row, up to a bound (the minimum
    /// over the other inputs that are not idle; `i64::MAX` when none holds it back). Operators
    /// that route late rows use it to judge each row against the watermark as it stood when
    /// that row arrived, rather than as it stood before the whole batch. The default ignores it.
    fn set_watermark_bound(&mut self, _bound: ArrivalBound) {}

    /// A checkpoint barrier arrived.
    fn handle_checkpoint(&mut self, barrier: Barrier, out: &mut Vec<Message>) -> Result<()> {
        out.push(Message::Barrier(barrier));
        Ok(())
    }

    /// The operator's state for a checkpoint, as Arrow batches of any schemas, such that
    /// [`restore`](Operator::restore) on a fresh operator rebuilds the same state. Stateless
    /// operators return nothing.
    fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        Ok(Vec::new())
    }

    /// Restores state written by [`snapshot`](Operator::snapshot).
    fn restore(&mut self, state: Vec<RecordBatch>) -> Result<()> {
        if state.is_empty() {
            Ok(())
        } else {
            Err(crate::state::bad_state(&format!("{} keeps no state but the checkpoint has some", self.name())))
        }
    }

    /// What this operator's state means, for deciding whether a changed query may keep it
    /// (`CREATE OR REPLACE`): two operators with equal signatures can restore each other's
    /// snapshots and interpret them the same way. Empty for stateless operators. The default
    /// names the operator and the column types of its (empty) snapshot; operators whose state
    /// depends on expressions (keys, aggregates, windows) add them.
    fn state_signature(&mut self) -> Result<String> {
        let parts = self.snapshot()?;
        if parts.is_empty() {
            return Ok(String::new());
        }
        let types: Vec<String> = parts
            .iter()
            .map(|b| b.schema().fields().iter().map(|f| f.data_type().to_string()).collect::<Vec<_>>().join(", "))
            .collect();
        Ok(format!("{}[{}]", self.name(), types.join(" | ")))
    }

    /// The input ended.
    fn on_close(&mut self, out: &mut Vec<Message>) -> Result<()> {
        out.push(Message::End);
        Ok(())
    }

    /// Moves rows that arrived too late for their window into `out` (default: none).
    fn drain_late(&mut self, _out: &mut Vec<LateRow>) {}

    /// The operator's state, for `EXPLAIN`.
    fn state_info(&self) -> StateInfo {
        StateInfo::stateless()
    }
}

/// Feeds `input` through `ops` in order, appending what the last one emits to `out`.
fn run_through(
    ops: &mut [Box<dyn Operator>],
    scratch: &mut Vec<Message>,
    mut input: Vec<Message>,
    out: &mut Vec<Message>,
) -> Result<()> {
    for op in ops.iter_mut() {
        let mut next = std::mem::take(scratch);
        for m in input.drain(..) {
            match m {
                Message::Data(b) => op.process_batch(b, &mut next)?,
                Message::Watermark(w) => op.handle_watermark(w, &mut next)?,
                Message::Barrier(b) => op.handle_checkpoint(b, &mut next)?,
                Message::End => op.on_close(&mut next)?,
            }
        }
        *scratch = input;
        input = next;
    }
    out.append(&mut input);
    *scratch = input;
    Ok(())
}

/// Operators run one after another inside one task.
pub struct Chain {
    ops: Vec<Box<dyn Operator>>,
    scratch: Vec<Message>,
    /// Per further input (1, 2, ...), the operator receiving it (default: the first).
    side_routes: Vec<usize>,
}

impl Chain {
    /// A chain of operators, first to last.
    pub fn new(ops: Vec<Box<dyn Operator>>) -> Self {
        Self { ops, scratch: Vec::new(), side_routes: Vec::new() }
    }

    /// Sends further input `i` (1, 2, ...) to operator `routes[i - 1]` instead of the first
    /// (joins of several sources: each later join has its own further input).
    pub fn with_side_routes(mut self, routes: Vec<usize>) -> Self {
        self.side_routes = routes;
        self
    }

    /// The operator receiving further input `input` (1, 2, ...).
    pub fn side_route(&self, input: usize) -> usize {
        self.side_routes.get(input.wrapping_sub(1)).copied().unwrap_or(0)
    }

    /// Pushes `msg` through every operator; returns what the last one emitted.
    pub fn push(&mut self, msg: Message, out: &mut Vec<Message>) -> Result<()> {
        run_through(&mut self.ops, &mut self.scratch, vec![msg], out)
    }

    /// Pushes a batch of a further input into its operator (see [`Chain::with_side_routes`];
    /// which sees it as its input 1), and what that emits through the rest of the chain.
    pub fn push_side(&mut self, input: usize, batch: RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        let at = self.side_route(input);
        if at >= self.ops.len() {
            return Ok(());
        }
        let (head, rest) = self.ops.split_at_mut(at + 1);
        let mut emitted = Vec::new();
        let local = if self.side_routes.is_empty() { input } else { 1 };
        head[at].process_side_batch(local, batch, &mut emitted)?;
        run_through(rest, &mut self.scratch, emitted, out)
    }

    /// Tells the first operator how far event time may advance within the next main-input
    /// batch (see [`Operator::set_watermark_bound`]).
    pub fn set_watermark_bound(&mut self, bound: ArrivalBound) {
        if let Some(first) = self.ops.first_mut() {
            first.set_watermark_bound(bound);
        }
    }

    /// Collects late rows from every operator.
    pub fn drain_late(&mut self, out: &mut Vec<LateRow>) {
        for op in &mut self.ops {
            op.drain_late(out);
        }
    }

    /// Every operator's state (see [`Operator::snapshot`]), in chain order.
    pub fn snapshot(&mut self) -> Result<Vec<Vec<RecordBatch>>> {
        self.ops.iter_mut().map(|op| op.snapshot()).collect()
    }

    /// The signatures of the stateful operators (see [`Operator::state_signature`]).
    pub fn state_signature(&mut self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for op in &mut self.ops {
            let s = op.state_signature()?;
            if !s.is_empty() {
                out.push(s);
            }
        }
        Ok(out)
    }

    /// Restores state written by [`Chain::snapshot`] into a freshly built chain.
    pub fn restore(&mut self, state: Vec<Vec<RecordBatch>>) -> Result<()> {
        if state.len() != self.ops.len() {
            return Err(crate::state::bad_state(&format!(
                "{} operators in the checkpoint, {} in the query",
                state.len(),
                self.ops.len()
            )));
        }
        for (op, s) in self.ops.iter_mut().zip(state) {
            op.restore(s)?;
        }
        Ok(())
    }

    /// The operators, to build a longer chain from this one.
    pub fn into_operators(self) -> Vec<Box<dyn Operator>> {
        self.ops
    }

    /// The operators, for `EXPLAIN`.
    pub fn operators(&self) -> &[Box<dyn Operator>] {
        &self.ops
    }
}
