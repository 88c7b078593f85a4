//! Dataflow operators, one per file. Each implements [`crate::Operator`].

pub mod aggregate;
pub mod calc;

pub use aggregate::{AggregateConfig, AggregateOperator, WindowConfig, WindowKind};
pub use calc::CalcOperator;
