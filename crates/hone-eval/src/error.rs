//! The crate's error type.

use std::path::PathBuf;

/// One bad line of a cases file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CaseError {
    /// 1-based line number in the file.
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for CaseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Every bad line is listed, so a user fixes the file in one pass.
    #[error("{}: {} invalid case line(s):\n{}", path.display(), errors.len(), list(errors))]
    InvalidCases {
        path: PathBuf,
        errors: Vec<CaseError>,
    },
    #[error("{}: the file has no cases", .0.display())]
    NoCases(PathBuf),
    /// A `--chat-file` or `--preference-file` that failed validation.
    #[error("{}: {message}", path.display())]
    Data { path: PathBuf, message: String },
    /// An impossible combination of options.
    #[error("{0}")]
    Spec(String),
    #[error("writing the report {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Model(#[from] hone_model::ModelError),
    #[error(transparent)]
    Registry(#[from] hone_model::registry::RegistryError),
}

fn list(errors: &[CaseError]) -> String {
    errors
        .iter()
        .map(|e| format!("  {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

pub type Result<T> = std::result::Result<T, EvalError>;
