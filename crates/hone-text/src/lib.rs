//! hone-text: tokenizer and chat-template layer.
//!
//! - [`Tokenizer`]: byte-level BPE built from GGUF metadata (correct for
//!   SmolLM2, unlike candle's converter) or loaded from `tokenizer.json`;
//!   special ids, stop tokens, and a streaming decoder
//!   ([`IncrementalDecoder`], [`DecodeStream`]).
//! - [`ChatTemplate`]: the model's Jinja template rendered the way
//!   transformers renders it, with a ChatML fallback.
//! - [`ChatTokenizer`]: both together; `encode_chat` (training ids and loss
//!   mask), `encode_prompt` (inference), `encode_preference` (DPO), and
//!   `count_chat` / `count_preference`: the same lengths and trained-token
//!   counts without encoding ([`count`], used by data validation).
//!
//! - [`testing`]: a tiny SmolLM-shaped vocabulary (as GGUF bytes, a file or
//!   a ready `ChatTokenizer`) for fast tests in any crate.
//!
//! Training and serving share one render path, so the inference prompt is
//! always a byte prefix of the trained text.

mod chat;
pub mod count;
mod counter;
mod error;
mod gguf;
mod hf;
mod json;
mod spans;
mod template;
pub mod testing;
mod time;
mod tokenizer;
pub mod tool_calls;

pub use chat::{ChatCount, ChatTokenizer, EncodedChat};
pub use count::SpanCount;
pub use counter::ChatTokenCounter;
pub use error::{Error, Result};
pub use gguf::read_gguf_content;
pub use spans::{MessageSpan, RenderedChat};
pub use template::{ChatTemplate, TemplateOrigin, CHATML_TEMPLATE};
pub use tokenizer::{DecodeStream, EncodedText, IncrementalDecoder, Tokenizer, END_OF_TURN_TOKENS};
pub use tool_calls::{parse_tool_calls, CallEvent, ParsedAnswer, ParsedToolCall, ToolCallStream};

/// Re-exported message types, so callers need not depend on hone-data just
/// to build a conversation.
pub use hone_data::types::{ChatMessage, Role};
