//! Dataflow operators, one per file. Each implements [`crate::Operator`].

pub mod aggregate;
pub mod calc;
pub mod fk_join;
pub mod stream_stream_join;
pub mod stream_table_join;
pub mod table_diff;
pub mod table_table_join;
pub mod unnest;

pub use aggregate::{AggregateConfig, AggregateOperator, WindowConfig, WindowKind};
pub use calc::CalcOperator;
pub use fk_join::{ForeignKeyJoinConfig, ForeignKeyJoinOperator, JOIN_TIME_COLUMN};
pub use stream_stream_join::{JoinKind, StreamStreamJoinConfig, StreamStreamJoinOperator};
pub use stream_table_join::{StreamTableJoinConfig, StreamTableJoinOperator};
pub use table_diff::TableDiffOperator;
pub use table_table_join::{TableTableJoinConfig, TableTableJoinOperator};
pub use unnest::UnnestOperator;
