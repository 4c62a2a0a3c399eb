//! Errors of the training building blocks.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("safetensors: {0}")]
    SafeTensors(#[from] safetensors::SafeTensorError),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// A trainable parameter got no gradient: something upstream dropped it (architecture.md,
    /// "Pitfalls": stock fused ops do this silently).
    #[error("no gradient for trainable parameter `{0}`; an op upstream dropped it")]
    MissingGradient(String),
    #[error("the gradient norm is not finite ({0}); the step was not applied")]
    NonFiniteGradient(f64),
    #[error("optimizer: {0}")]
    Optimizer(String),
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    #[error("invalid schedule: {0}")]
    Schedule(String),
    #[error(transparent)]
    Model(#[from] hone_model::ModelError),
    #[error("tokenizing example {index}: {message}")]
    Tokenize { index: usize, message: String },
    /// The run was stopped from outside; `checkpoint` is where it can resume from.
    #[error("training cancelled after step {step}{}", checkpoint.as_ref().map(|p| format!("; checkpoint {}", p.display())).unwrap_or_default())]
    Cancelled {
        step: u64,
        checkpoint: Option<PathBuf>,
    },
    /// A training setting is out of range or inconsistent with the data.
    #[error("training configuration: {0}")]
    Config(String),
}

pub type Result<T> = std::result::Result<T, TrainError>;

/// Attaches the operation and path to an I/O error.
pub(crate) fn io_err(
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> TrainError {
    let path = path.into();
    move |source| TrainError::Io { op, path, source }
}
