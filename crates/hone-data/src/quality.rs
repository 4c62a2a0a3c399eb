//! Quality warnings: things that do not stop training but usually make it
//! worse. Per-example rules come from seed 001 (short messages, refusals,
//! brief answers, missing roles); dataset rules from seed 003 (duplicates,
//! near-duplicates, conflicting answers) and the example counts that seeds
//! 001 and 003 recommend.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use serde::{Deserialize, Serialize};

use crate::issue::{Code, Issue};
use crate::parse::{truncate, LineIssues};
use crate::types::{ChatMessage, PreferenceExample, Role, SftExample};

/// Messages shorter than this many characters get `short_message` (seed 001).
pub const SHORT_MESSAGE_CHARS: usize = 10;
/// Assistant answers shorter than this get `brief_assistant_answer` (seed 001).
pub const BRIEF_ANSWER_CHARS: usize = 50;
/// Openings that read as a refusal (compared lowercased, curly apostrophes
/// straightened). Seed 001 checks "i cannot"; the rest are its common kin.
pub const REFUSAL_OPENINGS: &[&str] = &[
    "i cannot",
    "i can't",
    "i can not",
    "i won't",
    "i will not",
    "i'm sorry, but",
    "i am sorry, but",
    "sorry, but i",
    "i apologize, but",
    "i'm unable",
    "i am unable",
    "i'm not able to",
    "i am not able to",
    "as an ai",
];

/// What the user wants the fine-tune to achieve; sets how many examples we
/// recommend (seed 001's "How Much Data?" table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Goal {
    /// Format adherence: minimum 50, recommended 100-200.
    Format,
    /// Style transfer: minimum 100, recommended 300-500.
    Style,
    /// Domain expertise: minimum 500, recommended 1000+.
    Domain,
    /// Complex behaviour: minimum 1000, recommended 5000+.
    Complex,
}

impl Goal {
    /// `(minimum, recommended)` example counts from seed 001.
    pub fn example_counts(self) -> (usize, usize) {
        match self {
            Goal::Format => (50, 100),
            Goal::Style => (100, 300),
            Goal::Domain => (500, 1000),
            Goal::Complex => (1000, 5000),
        }
    }
}

impl std::str::FromStr for Goal {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "format" => Ok(Goal::Format),
            "style" => Ok(Goal::Style),
            "domain" => Ok(Goal::Domain),
            "complex" => Ok(Goal::Complex),
            _ => Err(format!(
                "unknown goal '{s}': expected format, style, domain or complex"
            )),
        }
    }
}

/// Without a goal, seed 003's "Minimum: 50-100 examples" applies.
pub const DEFAULT_MIN_EXAMPLES: usize = 50;

/// The dataset-size warning, if any.
pub(crate) fn goal_warning(n_examples: usize, goal: Option<Goal>) -> Option<Issue> {
    let text = match goal {
        Some(g) => {
            let (min, rec) = g.example_counts();
            if n_examples >= rec {
                return None;
            }
            format!("{n_examples} examples; for the goal '{}' the seeds recommend at least {rec} (minimum {min})", goal_name(g))
        }
        None if n_examples < DEFAULT_MIN_EXAMPLES => {
            format!("{n_examples} examples; fine-tuning usually needs at least {DEFAULT_MIN_EXAMPLES} (pass --goal for a specific recommendation)")
        }
        None => return None,
    };
    Some(Issue::new(None, None, Code::FewExamplesForGoal, text))
}

fn goal_name(g: Goal) -> &'static str {
    match g {
        Goal::Format => "format",
        Goal::Style => "style",
        Goal::Domain => "domain",
        Goal::Complex => "complex",
    }
}

/// Per-example warnings for a valid SFT example.
pub(crate) fn sft_warnings(ex: &SftExample, out: &mut LineIssues) {
    for (i, m) in ex.messages.iter().enumerate() {
        message_warnings(m, i + 1, out);
    }
    if !ex.messages.iter().any(|m| m.role == Role::System) {
        out.push(None, Code::MissingSystemMessage, "no system message");
    }
    if !ex.messages.iter().any(|m| m.role == Role::User) {
        out.push(None, Code::MissingUserMessage, "no user message");
    }
    if !ex.messages.iter().any(ChatMessage::is_trained) {
        out.push(
            None,
            Code::NoTrainedMessages,
            "every assistant message has weight 0: this example adds nothing to the loss",
        );
    }
}

/// Per-example warnings for a valid DPO example.
pub(crate) fn preference_warnings(ex: &PreferenceExample, out: &mut LineIssues) {
    for (i, m) in ex.input.iter().enumerate() {
        message_warnings(m, i + 1, out);
    }
    answer_warnings(&ex.preferred, None, "preferred_output: ", out);
    if !ex.input.iter().any(|m| m.role == Role::System) {
        out.push(None, Code::MissingSystemMessage, "no system message");
    }
}

fn message_warnings(m: &ChatMessage, n: usize, out: &mut LineIssues) {
    if m.role == Role::Assistant {
        if m.is_trained() {
            answer_warnings(m, Some(n), "", out);
        }
        return;
    }
    let chars = m.content.chars().count();
    if chars < SHORT_MESSAGE_CHARS && m.role != Role::Tool {
        out.push(
            Some(n),
            Code::ShortMessage,
            format!(
                "very short {} message ({chars} characters): \"{}\"",
                m.role.as_str(),
                truncate(&m.content, 20)
            ),
        );
    }
}

/// Seed 001's checks on an assistant answer. Tool-call-only answers have no
/// text to check.
fn answer_warnings(m: &ChatMessage, n: Option<usize>, prefix: &str, out: &mut LineIssues) {
    if m.content.is_empty() && m.tool_calls.is_some() {
        return;
    }
    let opening = m
        .content
        .trim_start()
        .to_lowercase()
        .replace('\u{2019}', "'");
    if let Some(r) = REFUSAL_OPENINGS.iter().find(|r| opening.starts_with(**r)) {
        out.push(n, Code::RefusalAnswer, format!("{prefix}the answer starts like a refusal (\"{r}…\"); keep refusals only if you mean to teach them"));
    }
    let chars = m.content.chars().count();
    if chars < BRIEF_ANSWER_CHARS {
        out.push(n, Code::BriefAssistantAnswer, format!("{prefix}the answer is brief ({chars} characters, under {BRIEF_ANSWER_CHARS}): \"{}\"", truncate(&m.content, 30)));
    }
}

/// Hashes used to find duplicates without keeping the examples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DedupKeys {
    /// The whole example, exactly.
    exact: u64,
    /// The normalised prompt (everything before the answer, with roles);
    /// `hone data split` keeps equal prompts on one side.
    pub(crate) prompt: u64,
    /// The normalised answer.
    answer: u64,
}

/// Lowercase, letters and digits kept, every other run of characters
/// collapsed to one space: "Hello,  World!" and "hello world" are equal.
pub fn normalize_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut pending_space = false;
    for c in s.chars() {
        if c.is_alphanumeric() {
            if pending_space && !out.is_empty() {
                out.push(' ');
            }
            pending_space = false;
            out.extend(c.to_lowercase());
        } else {
            pending_space = true;
        }
    }
    out
}

/// Feeds exactly the characters [`normalize_text`] would produce into `h`,
/// without building the string (this runs on every example).
fn hash_normalized(s: &str, h: &mut DefaultHasher) {
    let mut pending_space = false;
    let mut any = false;
    for c in s.chars() {
        if c.is_alphanumeric() {
            if pending_space && any {
                h.write_u32(' ' as u32);
            }
            pending_space = false;
            any = true;
            for l in c.to_lowercase() {
                h.write_u32(l as u32);
            }
        } else {
            pending_space = true;
        }
    }
    // A terminator, so that ("ab", "c") and ("a", "bc") differ.
    h.write_u32(u32::MAX);
}

fn hash_messages(messages: &[ChatMessage], h: &mut DefaultHasher) {
    for m in messages {
        m.role.hash(h);
        hash_normalized(&m.content, h);
    }
}

/// The exact-duplicate key: the line's bytes (JSON re-ordered or re-spaced
/// is caught as a near-duplicate instead).
fn exact_hash(line: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    line.trim_ascii().hash(&mut h);
    h.finish()
}

fn answer_hash(m: &ChatMessage) -> u64 {
    let mut h = DefaultHasher::new();
    hash_normalized(&m.content, &mut h);
    m.tool_calls.as_ref().map(calls_key).hash(&mut h);
    h.finish()
}

/// What tool calls say: each call's function name and arguments (a JSON string
/// parsed, so spacing does not count), without the call ids, which every
/// line numbers its own way and which the model never learns to choose.
fn calls_key(calls: &serde_json::Value) -> String {
    let Some(calls) = calls.as_array() else {
        return calls.to_string();
    };
    let said = |c: &serde_json::Value| {
        let f = &c["function"];
        let args = &f["arguments"];
        let args = args
            .as_str()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
            .unwrap_or_else(|| args.clone());
        format!("{}({args})", f["name"])
    };
    calls.iter().map(said).collect::<Vec<_>>().join(";")
}

/// Prompt: every message before the last assistant message; answer: that
/// message.
pub(crate) fn sft_keys(ex: &SftExample, line: &[u8]) -> DedupKeys {
    let split = ex
        .messages
        .iter()
        .rposition(|m| m.role == Role::Assistant)
        .unwrap_or(0);
    let mut h = DefaultHasher::new();
    hash_messages(&ex.messages[..split], &mut h);
    DedupKeys {
        exact: exact_hash(line),
        prompt: h.finish(),
        answer: ex.messages.get(split).map_or(0, answer_hash),
    }
}

/// Prompt: `input.messages`; answer: the preferred output.
pub(crate) fn preference_keys(ex: &PreferenceExample, line: &[u8]) -> DedupKeys {
    let mut h = DefaultHasher::new();
    hash_messages(&ex.input, &mut h);
    DedupKeys {
        exact: exact_hash(line),
        prompt: h.finish(),
        answer: answer_hash(&ex.preferred),
    }
}

/// Remembers what earlier lines held, to flag later copies.
#[derive(Debug, Default)]
pub(crate) struct DuplicateTracker {
    exact: HashMap<u64, usize>,
    prompts: HashMap<u64, (usize, u64)>,
}

impl DuplicateTracker {
    /// The warning for `line`, if an earlier line holds the same example, a
    /// near-duplicate, or the same prompt with another answer.
    pub(crate) fn check(&mut self, line: usize, keys: DedupKeys) -> Option<Issue> {
        if let Some(&first) = self.exact.get(&keys.exact) {
            return Some(Issue::new(
                Some(line),
                None,
                Code::DuplicateExample,
                format!("exact duplicate of line {first}"),
            ));
        }
        self.exact.insert(keys.exact, line);
        match self.prompts.get(&keys.prompt) {
            Some(&(first, answer)) if answer == keys.answer => Some(Issue::new(
                Some(line),
                None,
                Code::NearDuplicate,
                format!("near-duplicate of line {first}: same prompt and answer once case, punctuation and spacing are ignored"),
            )),
            Some(&(first, _)) => Some(Issue::new(
                Some(line),
                None,
                Code::ConflictingAnswers,
                format!("same prompt as line {first} (ignoring case, punctuation and spacing) with a different answer"),
            )),
            None => {
                self.prompts.insert(keys.prompt, (line, keys.answer));
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_ignores_case_punctuation_and_spacing() {
        assert_eq!(normalize_text("  Hello,  WORLD!! "), "hello world");
        assert_eq!(normalize_text("What's up?"), "what s up");
        assert_eq!(normalize_text("..."), "");
    }

    #[test]
    fn streamed_hash_agrees_with_normalize_text() {
        let h = |s: &str| {
            let mut h = DefaultHasher::new();
            hash_normalized(s, &mut h);
            h.finish()
        };
        let pairs = [
            ("Hello,  WORLD!", "hello world"),
            ("  É té ", "é té"),
            ("a-b", "a b"),
            ("ab", "a b"),
        ];
        for (a, b) in pairs {
            assert_eq!(
                h(a) == h(b),
                normalize_text(a) == normalize_text(b),
                "{a:?} vs {b:?}"
            );
        }
    }

    #[test]
    fn goal_thresholds_follow_seed_001() {
        assert!(goal_warning(99, Some(Goal::Format)).is_some());
        assert!(goal_warning(100, Some(Goal::Format)).is_none());
        assert!(goal_warning(4999, Some(Goal::Complex)).is_some());
        assert!(goal_warning(49, None).is_some());
        assert!(goal_warning(50, None).is_none());
    }
}
