//! The engine seam: [`ChatBackend`] generates one choice, for a
//! [`ChatTarget`] (which base, which adapter), or fails with a [`ChatError`].
//!
//! Why one blocking `generate` call: inference is CPU work that must never
//! run on the async executor, and a fake backend in tests then needs no
//! model at all. The handler runs it on the blocking pool and turns the
//! text callback into SSE chunks.

use std::ops::ControlFlow;
use std::path::PathBuf;

use hone_model::generate::{Generation, GenerationParams};
use hone_text::ChatMessage;

use crate::api::ErrorCode;
use crate::error::ApiError;

/// What a request generates with: the model id the client named, the base
/// model, and the adapter directory of an `ft:` or checkpoint model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatTarget {
    pub model: String,
    pub base: String,
    pub adapter: Option<PathBuf>,
}

/// Why a generation failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ChatError {
    /// The messages cannot be rendered by the model's chat template.
    #[error("the messages cannot be rendered by the chat template: {0}")]
    InvalidPrompt(String),
    /// The prompt does not leave room for a single generated token.
    #[error("the prompt needs {needed} positions but the model's context length is {max}; shorten the messages")]
    ContextOverflow { needed: usize, max: usize },
    /// The base model or the adapter cannot be loaded. Permanent until an
    /// operator fixes the files, so the client must not retry.
    #[error("model '{model}' cannot be loaded: {reason}")]
    ModelUnavailable { model: String, reason: String },
    /// `response_format` asks for a grammar this model cannot be held to
    /// (its tokenizer's vocabulary cannot be read as bytes).
    #[error("{0}")]
    Grammar(String),
    /// Anything else that went wrong while generating.
    #[error("generation failed: {0}")]
    Generation(String),
}

impl From<ChatError> for ApiError {
    fn from(e: ChatError) -> Self {
        match &e {
            ChatError::InvalidPrompt(_) => ApiError::invalid("messages", e.to_string()),
            ChatError::ContextOverflow { .. } => ApiError::invalid_with_code(
                "messages",
                ErrorCode::ContextLengthExceeded,
                e.to_string(),
            ),
            ChatError::ModelUnavailable { .. } => {
                ApiError::conflict(ErrorCode::ModelUnavailable, e.to_string())
            }
            ChatError::Grammar(_) => ApiError::invalid("response_format", e.to_string()),
            ChatError::Generation(_) => ApiError::internal(e.to_string()),
        }
    }
}

/// Generates one assistant reply. Blocking (called on the blocking pool).
/// `tools` (the request's checked `tools` list) is rendered into the prompt
/// by the chat template, or by hone's fallback when the template cannot
/// render tools (see `hone_text::tool_calls`). `on_text` receives each safe-to-show piece of text as it is decoded;
/// `Break` stops generation (the client went away).
pub trait ChatBackend: Send + Sync + 'static {
    fn generate(
        &self,
        target: &ChatTarget,
        messages: &[ChatMessage],
        tools: Option<&serde_json::Value>,
        params: &GenerationParams,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Generation, ChatError>;
}
