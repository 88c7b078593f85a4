//! `rill bench ...`: benchmarks whose figures go into the issue notes and the README.

pub mod checkpoint;
pub mod file;
pub mod nexmark;
pub mod pipeline;
pub mod pull;
