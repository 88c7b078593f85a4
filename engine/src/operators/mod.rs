//! Dataflow operators, one per file. Each implements [`crate::Operator`].

pub mod aggregate;
pub mod calc;
pub mod table_diff;

pub use aggregate::{AggregateConfig, AggregateOperator, WindowConfig, WindowKind};
pub use calc::CalcOperator;
pub use table_diff::TableDiffOperator;
