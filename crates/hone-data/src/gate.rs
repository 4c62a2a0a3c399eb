//! A gate for writers of training files (`hone data generate`,
//! `hone data export-completions`): each line is checked as it would be in
//! a file — the same parser and rules as [`crate::validate_reader`] — and
//! refused if it has an error or repeats an accepted line exactly or as a
//! near-duplicate (the validator's rule: same prompt and answer once case,
//! punctuation and spacing are ignored). So a file the gate built validates
//! without errors or duplicate warnings.
//!
//! To resume a file, feed its existing lines through [`LineGate::admit`]
//! first: they are remembered for the duplicate rule.

use crate::issue::{Code, Issue};
use crate::quality::DuplicateTracker;
use crate::types::Method;
use crate::validate::{check_one, Example};

/// Why a line was refused: the first error, or the duplicate warning.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    pub code: Code,
    pub text: String,
}

impl Rejected {
    fn of(issue: Issue) -> Self {
        Rejected {
            code: issue.code,
            text: issue.text,
        }
    }

    /// The issue code, the key writers count refusals by.
    pub fn reason(&self) -> &'static str {
        self.code.as_str()
    }
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.text)
    }
}

/// Lines accepted so far, for the duplicate rule.
#[derive(Debug)]
pub struct LineGate {
    method: Method,
    dups: DuplicateTracker,
    seen: usize,
}

impl LineGate {
    /// A gate for lines of `method` (chat SFT for generated data).
    pub fn new(method: Method) -> Self {
        LineGate {
            method,
            dups: DuplicateTracker::default(),
            seen: 0,
        }
    }

    /// How many lines were accepted.
    pub fn accepted(&self) -> usize {
        self.seen
    }

    /// Checks `line` (one JSON object, no newline); on success it is
    /// remembered and its typed example returned.
    pub fn admit(&mut self, line: &str) -> Result<Example, Rejected> {
        let number = self.seen + 1;
        let (issues, ok) = check_one(line, number, self.method);
        let Some((example, keys)) = ok else {
            let first = issues
                .into_iter()
                .find(|i| i.code.severity() == crate::Severity::Error);
            return Err(first.map(Rejected::of).unwrap_or(Rejected {
                code: Code::InvalidJson,
                text: "the line is not an example".into(),
            }));
        };
        // What the tracker remembers of a refused duplicate (its exact
        // bytes) would refuse only lines that are its duplicates anyway.
        if let Some(issue) = self.dups.check(number, keys) {
            if matches!(issue.code, Code::DuplicateExample | Code::NearDuplicate) {
                return Err(Rejected::of(issue));
            }
        }
        self.seen = number;
        Ok(example)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(q: &str, a: &str) -> String {
        serde_json::json!({"messages": [
            {"role": "user", "content": q},
            {"role": "assistant", "content": a}
        ]})
        .to_string()
    }

    #[test]
    fn accepts_valid_lines_and_refuses_errors_and_near_duplicates() {
        let mut g = LineGate::new(Method::Sft);
        assert!(g.admit(&line("What is 2+2?", "It is four.")).is_ok());
        let near = g.admit(&line("what is 2 + 2", "it is FOUR")).unwrap_err();
        assert_eq!(near.reason(), "near_duplicate");
        let exact = g.admit(&line("What is 2+2?", "It is four.")).unwrap_err();
        assert_eq!(exact.reason(), "duplicate_example");
        assert_eq!(g.admit("{not json").unwrap_err().reason(), "invalid_json");
        let no_answer = serde_json::json!({"messages": [{"role": "user", "content": "hi"}]});
        assert!(g.admit(&no_answer.to_string()).is_err());
        // The same prompt with another answer is not a duplicate.
        assert!(g.admit(&line("What is 2+2?", "Four, of course.")).is_ok());
        assert_eq!(g.accepted(), 2);
    }

    #[test]
    fn a_refused_line_does_not_block_a_later_valid_one() {
        let mut g = LineGate::new(Method::Sft);
        let bad = serde_json::json!({"messages": [
            {"role": "user", "content": "q"},
            {"role": "robot", "content": "a"}
        ]});
        assert!(g.admit(&bad.to_string()).is_err());
        assert!(g.admit(&line("q", "a fine answer")).is_ok());
    }
}
