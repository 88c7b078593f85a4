//! The one message type that flows between operators: data and control in the same channel,
//! so that a watermark or barrier is always ordered after the data that precedes it.

use arrow::array::RecordBatch;

/// Event-time progress: no later message on this input will carry an event time before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Watermark {
    /// Event time in epoch milliseconds.
    EventTime(i64),
    /// The input is idle: it must not hold back the minimum over inputs.
    Idle,
}

/// A checkpoint barrier: operators snapshot their state when it passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Barrier {
    /// Monotonic checkpoint id.
    pub epoch: u64,
}

/// What flows between operators.
#[derive(Clone, Debug)]
pub enum Message {
    /// A batch of rows.
    Data(RecordBatch),
    /// Event time advanced.
    Watermark(Watermark),
    /// A checkpoint barrier.
    Barrier(Barrier),
    /// The input ended (bounded inputs, tests, benchmarks): flush everything.
    End,
}
