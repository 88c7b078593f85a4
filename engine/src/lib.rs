//! Rill's dataflow runtime.
//!
//! A persistent or push query runs as a dataflow of operators exchanging Arrow batches:
//!
//! ```text
//!  topic partition ──► SourceReader ──► Operator ──► Operator ──► … ──► Sink ──► topic / client
//!   (TopicStore)       decode bytes      (filter, project, window, join, …)     encode bytes
//!                      into batches,     one per file in `operators/`,
//!                      emit watermarks   driven by `Message`s
//! ```
//!
//! * [`Message`] is the one enum for data and control: batches, watermarks, checkpoint barriers.
//! * [`Operator`] is the push trait every operator implements (see its docs for the contract).
//! * [`source::SourceReader`] turns fetched records into batches (bad records go to the
//!   dead-letter topic); [`sink::Sink`] encodes batches and appends them, partitioned by key.
//! * [`runtime`] runs one task per source partition, with the operator chain inside the task,
//!   commits source offsets after the sink has made the output durable, and stops on request.
//!
//! Planning (SQL → operators) lives in `rill-sql`; the engine takes ready operator chains.

pub mod checkpoint;
pub mod commit;
pub mod error;
pub mod message;
pub mod operator;
pub mod operators;
pub mod panes;
pub mod repartition;
pub mod runtime;
pub mod shard;
pub mod sink;
pub mod source;
pub mod state;
pub mod watermark;

pub use error::{EngineError, Result};
pub use message::{Barrier, Message, Watermark};
pub use operator::{ArrivalBound, LateRow, Operator, StateInfo};
