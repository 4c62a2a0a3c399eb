//! The engine seam: [`ChatBackend`] generates the choices of a request,
//! for a [`ChatTarget`] (which base, which adapter), or fails with a
//! [`ChatError`]; [`CancelFlag`] says when the client went away.
//!
//! Why blocking calls: inference is CPU work that must never run on the
//! async executor, and a fake backend in tests then needs no model at all.
//! The handler runs them on the blocking pool and turns the callbacks into
//! SSE chunks. The real backend ([`super::local::LocalChat`]) hands the
//! choices to its model's engine loop, which batches them with every other
//! request; a fake one only implements `generate`, one choice at a time.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use hone_model::generate::{Generation, GenerationParams};
use hone_text::ChatMessage;

use crate::api::ErrorCode;
use crate::error::ApiError;

/// Seconds a 429 tells the client to wait.
pub const RETRY_AFTER_SECS: u64 = 1;

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
    /// The KV-cache budget (`--kv-cache-mb`) is taken by running requests:
    /// try again shortly (a 429 with `Retry-After`).
    #[error("the server is busy: its KV-cache budget is in use by other requests; retry shortly")]
    Busy,
    /// The request alone needs more KV cache than the whole budget.
    #[error("the request needs {needed_mb} MB of KV cache (prompt plus max_tokens, times n), more than this server's budget of {budget_mb} MB; lower max_tokens or n")]
    OverBudget { needed_mb: usize, budget_mb: usize },
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
            ChatError::Busy => ApiError::RateLimited {
                retry_after_secs: RETRY_AFTER_SECS,
            },
            ChatError::OverBudget { .. } => ApiError::invalid("max_tokens", e.to_string()),
            ChatError::Generation(_) => ApiError::internal(e.to_string()),
        }
    }
}

/// What [`ChatBackend::generate_choices`] reports about one choice.
#[derive(Debug, Clone, Copy)]
pub enum ChoiceUpdate<'a> {
    /// A safe-to-show piece of text (empty: a question, between prompt
    /// chunks, whether to go on).
    Text(&'a str),
    /// The choice is finished.
    Done(&'a Generation),
    /// Before its text: this many of the prompt's tokens were copied from a
    /// prompt read before, not computed (`usage.prompt_tokens_details`).
    Cached(usize),
}

/// The engine behind chat. Blocking (called on the blocking pool).
pub trait ChatBackend: Send + Sync + 'static {
    /// Generates one assistant reply. `tools` (the request's checked
    /// `tools` list) is rendered into the prompt by the chat template, or by
    /// hone's fallback when the template cannot render tools (see
    /// `hone_text::tool_calls`). `on_text` receives each safe-to-show piece
    /// of text as it is decoded; `Break` stops generation (the client went
    /// away).
    fn generate(
        &self,
        target: &ChatTarget,
        messages: &[ChatMessage],
        tools: Option<&serde_json::Value>,
        params: &GenerationParams,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Generation, ChatError>;

    /// Generates one choice per entry of `params` (same prompt), reporting
    /// each choice's text and end through `on(index, update)`; `Break`, or
    /// `cancel` being set, ends the run. Returns the finished choices in
    /// order (fewer than asked when the run was ended early).
    ///
    /// By default one choice after the other through
    /// [`ChatBackend::generate`]; the real backend runs them as rows of its
    /// engine's batch.
    fn generate_choices(
        &self,
        target: &ChatTarget,
        messages: &[ChatMessage],
        tools: Option<&serde_json::Value>,
        params: &[GenerationParams],
        cancel: &CancelFlag,
        on: &mut dyn FnMut(usize, ChoiceUpdate<'_>) -> ControlFlow<()>,
    ) -> Result<Vec<Generation>, ChatError> {
        let _ = cancel;
        let mut done = Vec::with_capacity(params.len());
        for (index, p) in params.iter().enumerate() {
            let mut broke = false;
            let mut on_text = |t: &str| {
                let flow = on(index, ChoiceUpdate::Text(t));
                broke |= flow.is_break();
                flow
            };
            let g = self.generate(target, messages, tools, p, &mut on_text)?;
            let stop = broke || on(index, ChoiceUpdate::Done(&g)).is_break();
            done.push(g);
            if stop {
                break;
            }
        }
        Ok(done)
    }

    /// What the engine loops are doing now, one entry per loaded base model
    /// (for metrics); empty for a backend without them.
    fn batch_stats(&self) -> Vec<BatchSnapshot> {
        Vec::new()
    }
}

/// One base model's engine loop at a moment: rows in its batch and
/// waiting, the last step's size, and its share of the KV-cache budget.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BatchSnapshot {
    /// The base model id.
    pub model: String,
    /// Rows (choices) in the running batch.
    pub running_rows: usize,
    /// Rows admitted and waiting for room in the batch.
    pub waiting_rows: usize,
    /// Tokens fed by the last step (one per decoding row, plus prompt
    /// tokens of rows reading their prompt).
    pub last_step_tokens: usize,
    /// Bytes of KV cache the running rows hold now.
    pub kv_bytes_used: usize,
    /// Bytes of the budget reserved by admitted requests (all models).
    pub kv_bytes_reserved: usize,
    /// The budget (`--kv-cache-mb`, all models).
    pub kv_bytes_budget: usize,
}

/// Set when the client is gone: generation stops at the next token (the
/// engine loop checks it before every step).
#[derive(Debug, Clone, Default)]
pub struct CancelFlag(Arc<AtomicBool>);

impl CancelFlag {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
    /// A guard that cancels when dropped: held by the handler's future or
    /// the response stream, so a disconnect (which drops them) cancels.
    pub fn guard(&self) -> CancelOnDrop {
        CancelOnDrop(self.clone())
    }
}

/// Cancels its flag when dropped.
#[derive(Debug)]
pub struct CancelOnDrop(CancelFlag);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}
