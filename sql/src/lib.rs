//! Rill's SQL layer: the ksqlDB dialect, planned with DataFusion, run on the engine.
//!
//! ```text
//!  text ──parser──► ast::Statement ──planner (DataFusion SqlToRel)──► LogicalPlan
//!       ──► operators (rill-engine) ──► running query
//! ```
//! [`KsqlEngine`] executes statements: it keeps the [`catalog`], records every accepted
//! statement in the command topic (replayed at start, so a restart restores everything), and
//! starts persistent and push queries.

pub mod ast;
pub mod bytefns;
pub mod castfn;
pub mod catalog;
pub mod datefns;
pub mod engine;
pub mod error;
pub mod exprtext;
pub mod functions;
pub mod jsonfns;
pub mod lambdas;
pub mod parser;
pub mod parsetime;
pub mod planner;
pub mod pull;
pub mod regexfns;
pub mod results;
pub mod roundfn;
pub mod textfns;
pub mod timefmt;
pub mod typecheck;
pub mod types;
pub mod udafs;
pub mod udfs;
pub mod urlfns;
pub mod view;

pub use engine::KsqlEngine;
pub use error::{Result, SqlError};
