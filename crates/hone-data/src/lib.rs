//! hone-data: training data formats, validation, statistics, "auto"
//! hyperparameters, estimates and converters.
//!
//! The server calls this at upload time and the trainer before a run, so it
//! is a library with no tokenizer or model dependency: token counts come in
//! through the [`TokenCounter`] trait, which the CLI implements with the
//! model's own tokenizer and chat template.
//!
//! - [`validate_reader`] / [`validate_file`]: stream a JSONL file and report
//!   every problem, with line and message numbers ([`Report`]).
//! - [`parse_sft_file`] / [`parse_preference_file`] / [`parse_reader`]:
//!   typed examples, or the report of why not.
//! - [`detect_method`]: SFT or DPO from the file itself.
//! - [`hparams::resolve_auto`]: the one "auto" rule.
//! - [`estimate::estimate`]: steps, time and cost.
//! - [`split::split_file`], [`convert::convert`].
//! - [`gate::LineGate`]: one line at a time, for writers (`hone data
//!   generate`, `export-completions`): valid and not a near-duplicate.

pub mod atomic_file;
pub mod convert;
mod error;
pub mod estimate;
pub mod gate;
pub mod hparams;
pub mod issue;
pub mod lines;
mod parse;
pub mod quality;
pub mod render;
pub mod schedule;
pub mod split;
pub mod summary;
pub mod tokens;
pub mod types;
mod validate;

pub use error::DataError;
pub use issue::{Code, Issue, Report, Severity, Stats, TokenStats};
pub use parse::detect_method_value;
pub use tokens::{TokenCount, TokenCounter};
pub use types::{ChatMessage, Method, PreferenceExample, Role, SftExample};
pub use validate::{
    detect_method, parse_preference_file, parse_preference_validation_file, parse_reader,
    parse_sft_file, parse_sft_validation_file, validate_file, validate_reader, Example,
    ValidateOptions, DEFAULT_MAX_LINE_BYTES, MIN_EXAMPLES,
};
