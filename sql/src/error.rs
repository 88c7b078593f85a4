//! The SQL crate's error type: user errors carry where in the statement they are.

use std::fmt;

/// A position in the user's SQL text (1-based).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Position {
    /// Line, from 1.
    pub line: u64,
    /// Column, from 1.
    pub column: u64,
}

impl Position {
    /// Where a token starts.
    pub fn of(location: sqlparser::tokenizer::Location) -> Self {
        Self { line: location.line, column: location.column }
    }

    /// ksqlDB's prefix for a message about this place (`Line: 3, Col: 84: `); empty for an
    /// unknown place (line 0).
    pub fn prefix(&self) -> String {
        match self.line {
            0 => String::new(),
            line => format!("Line: {line}, Col: {}: ", self.column),
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}:{}", self.line, self.column)
    }
}

/// Errors from parsing, planning and executing statements.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// The statement does not parse.
    #[error("{}", render_parse(position, message))]
    Parse {
        /// Where.
        position: Position,
        /// What.
        message: String,
    },
    /// The statement parses but cannot be run as written (unknown column, type mismatch, ...).
    #[error("{0}")]
    Plan(String),
    /// A source or query the statement names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The statement would create something that exists.
    #[error("{0}")]
    AlreadyExists(String),
    /// Rill does not support this yet.
    #[error("{0}")]
    Unsupported(String),
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] rill_engine::EngineError),
    /// The store or a format failed.
    #[error(transparent)]
    Connector(#[from] rill_connectors::ConnectorError),
    /// An invariant did not hold: this is a bug.
    #[error("internal error: {0} (this is a bug in Rill)")]
    Internal(String),
}

/// ksqlDB's form: `line L:C: Syntax Error` then the detail on the next line.
fn render_parse(position: &Position, message: &str) -> String {
    let detail = if message.starts_with("Syntax error at or near") && !message.contains(" at line ") {
        match message.split_once(':') {
            Some((head, tail)) => format!("{head} at {position}:{tail}"),
            None => format!("{message} at {position}"),
        }
    } else {
        message.to_string()
    };
    format!("{position}: Syntax Error\n{detail}")
}

impl SqlError {
    /// A planning error.
    pub fn plan(msg: impl Into<String>) -> Self {
        SqlError::Plan(msg.into())
    }
}

impl From<datafusion::error::DataFusionError> for SqlError {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        use datafusion::error::DataFusionError as D;
        match e {
            D::Diagnostic(d, inner) => {
                let message = unknown_function(&d.message).unwrap_or(d.message.clone());
                let msg = match d.span {
                    Some(span) => format!("line {}:{}: {message}", span.start.line, span.start.column),
                    None => message,
                };
                let _ = inner;
                SqlError::Plan(msg)
            }
            D::Context(ctx, inner) => match SqlError::from(*inner) {
                SqlError::Plan(m) => SqlError::Plan(format!("{ctx}: {m}")),
                other => other,
            },
            D::Plan(m) => match m.split_once("' must appear in GROUP BY clause") {
                // DataFusion: "'S.D1' must appear in GROUP BY clause because ..."; ksqlDB names it so:
                Some((column, _)) => {
                    let column = column.trim_start_matches('\'');
                    let column = column.rsplit('.').next().unwrap_or(column);
                    SqlError::Plan(format!("Non-aggregate SELECT expression(s) not part of GROUP BY: {column}"))
                }
                None => SqlError::Plan(unknown_function(&m).unwrap_or(m)),
            },
            D::NotImplemented(m) => SqlError::Unsupported(m),
            D::SchemaError(e, _) if matches!(*e, datafusion::common::SchemaError::FieldNotFound { .. }) => match *e {
                datafusion::common::SchemaError::FieldNotFound { field, .. } => {
                    SqlError::Plan(format!("SELECT column '{}' cannot be resolved.", field.name))
                }
                other => SqlError::Plan(other.to_string()),
            },
            D::SQL(e, _) => SqlError::Plan(e.to_string()),
            other => SqlError::Plan(other.strip_backtrace()),
        }
    }
}

/// DataFusion's "Invalid function 'x'" in ksqlDB's words.
fn unknown_function(message: &str) -> Option<String> {
    let name = message.strip_prefix("Invalid function '")?.split('\'').next()?;
    Some(format!("Can't find any functions with the name '{}'", name.to_uppercase()))
}

impl From<rill_log::LogError> for SqlError {
    fn from(e: rill_log::LogError) -> Self {
        SqlError::Connector(e.into())
    }
}

impl From<arrow::error::ArrowError> for SqlError {
    fn from(e: arrow::error::ArrowError) -> Self {
        SqlError::Internal(e.to_string())
    }
}

/// Result alias for this crate.
pub type Result<T, E = SqlError> = std::result::Result<T, E>;
