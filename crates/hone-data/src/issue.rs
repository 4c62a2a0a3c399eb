//! Problems found in a training file, and the report that collects them.
//!
//! Every problem has a stable snake_case [`Code`] (the server puts reports in
//! a job's `status_details`, so clients may match on codes), a 1-based line
//! number, and a 1-based message number where one applies. Codes are either
//! errors (the file cannot be trained on) or warnings (it can, but the user
//! should look).

use serde::{Deserialize, Serialize};

use crate::summary::Distribution;
use crate::types::Method;

/// Whether a problem stops training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

macro_rules! codes {
    ($( $(#[$doc:meta])* $variant:ident => $name:literal, $sev:ident; )*) => {
        /// A stable problem code. The string form (`as_str`, serde) never
        /// changes once released; docs/data.md lists every code.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum Code {
            $( $(#[$doc])* $variant, )*
        }

        impl Code {
            /// Every code, errors first, in documentation order.
            pub const ALL: &'static [Code] = &[$(Code::$variant),*];

            /// The stable snake_case name.
            pub fn as_str(self) -> &'static str {
                match self { $(Code::$variant => $name,)* }
            }

            /// Whether this code fails the file.
            pub fn severity(self) -> Severity {
                match self { $(Code::$variant => Severity::$sev,)* }
            }
        }
    };
}

codes! {
    // ---- errors: the OpenAI cookbook's keys ----
    /// The line (or a message) is JSON but not an object.
    DataType => "data_type", Error;
    /// No `messages` array (SFT) or `input.messages` array (DPO).
    MissingMessagesList => "missing_messages_list", Error;
    /// A message lacks `role` or `content` (or a tool message lacks `tool_call_id`).
    MessageMissingKey => "message_missing_key", Error;
    /// A message has a key we do not know.
    MessageUnrecognizedKey => "message_unrecognized_key", Error;
    /// A role other than system, developer, user, assistant or tool.
    UnrecognizedRole => "unrecognized_role", Error;
    /// Content is null, empty, or of the wrong type.
    MissingContent => "missing_content", Error;
    /// No assistant message to learn from.
    ExampleMissingAssistantMessage => "example_missing_assistant_message", Error;
    // ---- errors: ours ----
    /// The line is not valid JSON (includes nesting beyond 128 levels and NUL bytes).
    InvalidJson => "invalid_json", Error;
    /// The line is not valid UTF-8.
    InvalidUtf8 => "invalid_utf8", Error;
    /// `weight` is not 0 or 1, or is set on a non-assistant message.
    InvalidWeight => "invalid_weight", Error;
    /// The conversation does not end with an assistant message.
    LastMessageNotAssistant => "last_message_not_assistant", Error;
    /// `tool_calls` malformed, or a tool reply without a matching call.
    ToolCallMismatch => "tool_call_mismatch", Error;
    /// `tools`, `parallel_tool_calls`, `name` or `tool_call_id` has the wrong type.
    InvalidFieldType => "invalid_field_type", Error;
    /// Fewer than 10 examples.
    InvalidNExamples => "invalid_n_examples", Error;
    /// No examples at all.
    EmptyFile => "empty_file", Error;
    /// A line longer than the configured maximum; it is skipped, not parsed.
    LineTooLong => "line_too_long", Error;
    /// The model's chat template could not render the example.
    TemplateError => "template_error", Error;
    /// Reading the input failed (an I/O error, not bad content).
    ReadError => "read_error", Error;
    /// DPO: no `input` object.
    DpoMissingInput => "dpo_missing_input", Error;
    /// DPO: no `preferred_output` / `non_preferred_output` (or aliases).
    DpoMissingOutput => "dpo_missing_output", Error;
    /// DPO: an output is not a list of exactly one assistant message with text.
    DpoInvalidOutput => "dpo_invalid_output", Error;
    /// DPO: the prompt has assistant or tool turns, or does not end with a user message.
    DpoMultiTurn => "dpo_multi_turn", Error;
    /// DPO: the preferred and non-preferred answers are the same.
    DpoIdenticalOutputs => "dpo_identical_outputs", Error;
    // ---- warnings ----
    /// A message shorter than 10 characters (seed 001).
    ShortMessage => "short_message", Warning;
    /// An assistant answer that starts like a refusal (seed 001).
    RefusalAnswer => "refusal_answer", Warning;
    /// An assistant answer shorter than 50 characters (seed 001).
    BriefAssistantAnswer => "brief_assistant_answer", Warning;
    /// No system message.
    MissingSystemMessage => "missing_system_message", Warning;
    /// No user message.
    MissingUserMessage => "missing_user_message", Warning;
    /// Every assistant message has `weight: 0`: nothing to learn.
    NoTrainedMessages => "no_trained_messages", Warning;
    /// The same example as an earlier line.
    DuplicateExample => "duplicate_example", Warning;
    /// Same prompt and answer as an earlier line after normalising text.
    NearDuplicate => "near_duplicate", Warning;
    /// Same (normalised) prompt as an earlier line with a different answer (seed 003).
    ConflictingAnswers => "conflicting_answers", Warning;
    /// Longer than the model context or `--max-seq-len`: it would be truncated.
    ExampleTooLong => "example_too_long", Warning;
    /// Fewer examples than the seeds recommend for the goal.
    FewExamplesForGoal => "few_examples_for_goal", Warning;
    /// A top-level key we do not use; it is ignored.
    UnrecognizedKey => "unrecognized_key", Warning;
    /// A blank line; it is skipped.
    BlankLine => "blank_line", Warning;
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One problem, where it is and what it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issue {
    /// 1-based line number; `None` for whole-file problems.
    pub line: Option<usize>,
    /// 1-based message number within the line, where one applies. For DPO,
    /// messages of `input.messages` are numbered from 1; output problems
    /// name the field in `text` and leave this empty.
    pub message: Option<usize>,
    pub code: Code,
    /// A human explanation, specific to this occurrence.
    pub text: String,
}

impl Issue {
    pub fn new(
        line: Option<usize>,
        message: Option<usize>,
        code: Code,
        text: impl Into<String>,
    ) -> Self {
        Issue {
            line,
            message,
            code,
            text: text.into(),
        }
    }
}

/// Token statistics, present when a tokenizer was available.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenStats {
    /// The model whose tokenizer and chat template counted the tokens.
    pub model: String,
    /// The length limit examples were checked against:
    /// `min(context_length, max_seq_len)`.
    pub length_limit: usize,
    pub context_length: usize,
    /// Tokens the model sees per example (for DPO: both sequences).
    pub total_tokens_per_example: Distribution,
    /// Tokens in the loss per example (assistant messages with weight 1; for
    /// DPO the two answers).
    pub trained_tokens_per_example: Distribution,
    pub total_tokens: u64,
    pub total_trained_tokens: u64,
    pub n_over_length_limit: usize,
}

/// Dataset statistics gathered while validating.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Lines read, including blank and invalid ones.
    pub n_lines: usize,
    pub n_blank_lines: usize,
    /// Lines that failed a format check.
    pub n_invalid: usize,
    pub messages_per_example: Distribution,
    pub n_missing_system: usize,
    pub n_missing_user: usize,
    pub n_duplicates: usize,
    pub n_near_duplicates: usize,
    pub n_conflicting: usize,
    /// `None` when token checks were skipped (no model, or `--no-tokens`).
    pub tokens: Option<TokenStats>,
}

/// Everything validation found. Serialises to
/// `{"ok", "method", "n_examples", "errors", "warnings", "stats", "notes"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// True when there are no errors (warnings do not fail a file).
    pub ok: bool,
    pub method: Method,
    /// Examples that passed every format check.
    pub n_examples: usize,
    pub errors: Vec<Issue>,
    pub warnings: Vec<Issue>,
    pub stats: Stats,
    /// Remarks that are not problems with the data (e.g. "token checks skipped").
    pub notes: Vec<String>,
}

impl Report {
    /// Issues with this code, errors and warnings alike.
    pub fn with_code(&self, code: Code) -> impl Iterator<Item = &Issue> {
        self.errors
            .iter()
            .chain(&self.warnings)
            .filter(move |i| i.code == code)
    }

    /// Counts per code, in [`Code::ALL`] order, codes with no issue left out.
    pub fn counts(&self) -> Vec<(Code, usize)> {
        let mut counts = std::collections::BTreeMap::new();
        for i in self.errors.iter().chain(&self.warnings) {
            *counts.entry(i.code).or_insert(0usize) += 1;
        }
        counts.into_iter().collect()
    }
}
