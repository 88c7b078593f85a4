//! The connectors crate's error type.

/// Errors raised by topic stores and record formats.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// An error from the embedded log (unknown topic, offset out of range, disk full, ...).
    #[error(transparent)]
    Log(#[from] rill_log::LogError),
    /// A record's bytes could not be decoded with the declared format.
    #[error("{0}")]
    Decode(String),
    /// Rows could not be encoded in the requested format.
    #[error("{0}")]
    Encode(String),
    /// The format cannot represent the requested schema (for example KAFKA with two columns).
    #[error("{0}")]
    Unsupported(String),
    /// The schema registry could not be read or written.
    #[error("schema registry: {0}")]
    Registry(String),
    /// Arrow failed on data that the format layer produced; this is a bug.
    #[error("internal error in record format: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
}

/// Result alias for this crate.
pub type Result<T, E = ConnectorError> = std::result::Result<T, E>;
