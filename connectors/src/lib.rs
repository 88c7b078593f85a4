//! Rill connectors: where records live and how their bytes become Arrow columns.
//!
//! ```text
//!   TopicStore (store.rs)        bytes in partitions: the embedded log today, Kafka later
//!        │ Fetch / Record
//!   format::Decoder / Encoder    bytes  <->  Arrow RecordBatch (JSON, DELIMITED, KAFKA, NONE)
//! ```
//!
//! The engine only talks to [`TopicStore`] and the format traits, so an external Kafka store can
//! be added behind the same trait without touching the dataflow.

pub mod error;
pub mod format;
pub mod registry;
pub mod store;

pub use error::{ConnectorError, Result};
pub use registry::{FileRegistry, SchemaRegistry};
pub use store::{EmbeddedStore, TopicStore};
