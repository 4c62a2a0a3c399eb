//! Errors of model loading, the forward pass and generation.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model file not found: {}", .0.display())]
    NotFound(PathBuf),
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a valid GGUF file (truncated or corrupt?): {msg}", path.display())]
    CorruptGguf { path: PathBuf, msg: String },
    #[error("{} is not a valid safetensors file: {msg}", path.display())]
    CorruptSafetensors { path: PathBuf, msg: String },
    #[error("invalid model config: {0}")]
    Config(String),
    #[error("missing metadata key `{0}` in the GGUF file")]
    MissingMetadata(String),
    #[error("missing tensor `{0}` in the model weights")]
    MissingTensor(String),
    #[error("tensor `{name}` has shape {found:?}, expected {expected:?}")]
    TensorShape {
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    /// A model of a family hone does not run (the message lists the
    /// supported ones, [`crate::family::supported_architectures`]).
    #[error(
        "unsupported model architecture `{found}`; supported: {}",
        crate::family::supported_architectures()
    )]
    UnsupportedArchitecture { found: String },
    /// A model whose family uses a switch this weight path or pass does not
    /// implement yet: refused rather than computed wrong.
    #[error("{0}")]
    Unsupported(String),
    #[error("LoRA adapter: {0}")]
    Adapter(String),
    #[error("sequence of {needed} positions exceeds the context length {max}")]
    ContextOverflow { needed: usize, max: usize },
    #[error("tokenizer or chat template: {0}")]
    Text(String),
    #[error("generation: {0}")]
    Generation(String),
    /// A grammar or JSON Schema that cannot constrain decoding (the message
    /// says why), or a tokenizer that cannot be constrained.
    #[error("{0}")]
    Grammar(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, ModelError>;

/// A hone-text error (tokenizer or template) as a model error.
pub(crate) fn text_err(e: hone_text::Error) -> ModelError {
    ModelError::Text(e.to_string())
}
