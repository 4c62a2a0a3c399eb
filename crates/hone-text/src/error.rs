//! The one error type of this crate. Messages name the thing that is wrong
//! (the metadata key, the file, the message index) so a user can fix it.

use std::path::PathBuf;

/// Everything that can go wrong while loading a tokenizer or template,
/// rendering a conversation or encoding it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A GGUF file could not be parsed.
    #[error("cannot parse GGUF {path}: {message}")]
    Gguf { path: PathBuf, message: String },
    /// A required GGUF metadata key is absent.
    #[error("GGUF metadata has no `{0}`")]
    MissingMetadata(String),
    /// A GGUF metadata key has the wrong type or an invalid value.
    #[error("GGUF metadata `{key}` is invalid: {message}")]
    BadMetadata { key: String, message: String },
    /// A JSON file (tokenizer.json, tokenizer_config.json) is malformed.
    #[error("invalid JSON in {path}: {message}")]
    Json { path: PathBuf, message: String },
    /// The tokenizer kind is not one this crate can build.
    #[error("unsupported tokenizer: {0}")]
    Unsupported(String),
    /// The `tokenizers` library reported an error.
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    /// A token id is outside the vocabulary.
    #[error("token id {id} is outside the vocabulary (size {vocab_size})")]
    UnknownTokenId { id: u32, vocab_size: usize },
    /// The chat template failed to compile or render; the message is the
    /// template's own (including `raise_exception` texts).
    #[error("chat template error: {0}")]
    Template(String),
    /// A template file given to override the model's (`--chat-template`)
    /// does not compile.
    #[error("chat template {path}: {message}")]
    TemplateFile { path: PathBuf, message: String },
    /// Rendering a longer conversation changed the text of an earlier part,
    /// so per-message spans (and loss masks) cannot be derived safely.
    #[error("chat template is not prefix-stable at message {message_index}: {detail}")]
    NotPrefixStable {
        message_index: usize,
        detail: String,
    },
    /// The conversation is not usable for the requested encoding.
    #[error("invalid conversation: {0}")]
    InvalidConversation(String),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn tokenizer(e: impl std::fmt::Display) -> Self {
        Error::Tokenizer(e.to_string())
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

impl From<minijinja::Error> for Error {
    fn from(e: minijinja::Error) -> Self {
        // The alternate form carries the template source location, which is
        // what a user needs to find the failing line of a long template.
        let mut msg = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            source = s.source();
        }
        Error::Template(msg)
    }
}
