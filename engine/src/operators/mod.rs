//! Dataflow operators, one per file. Each implements [`crate::Operator`].

pub mod calc;

pub use calc::CalcOperator;
