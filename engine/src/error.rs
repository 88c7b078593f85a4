//! The engine's error type.

/// Errors raised while running dataflows.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The topic store or a record format failed.
    #[error(transparent)]
    Connector(#[from] rill_connectors::ConnectorError),
    /// DataFusion failed to evaluate an expression.
    #[error("{0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    /// Arrow failed on a batch.
    #[error("{0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// Writing or reading a checkpoint failed.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// The query was stopped.
    #[error("query stopped")]
    Stopped,
    /// An invariant of the engine did not hold: this is a bug.
    #[error("internal error: {0} (this is a bug in Rill)")]
    Internal(String),
}

impl From<rill_log::LogError> for EngineError {
    fn from(e: rill_log::LogError) -> Self {
        EngineError::Connector(e.into())
    }
}

/// Result alias for this crate.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;
