//! Token counting, behind a trait so that hone-data needs no tokenizer.
//!
//! The CLI and the server implement [`TokenCounter`] with the model's real
//! tokenizer and chat template (hone-text: `ChatTokenizer::count_chat` /
//! `count_preference`, or the ready `hone_text::ChatTokenCounter`). Those
//! give exactly the lengths and trained-token counts of the `encode_chat` /
//! `encode_preference` calls training makes, without building the encodings,
//! so the counts here are the counts training will see at a fraction of the
//! cost. Format checks never need a counter.

use serde::{Deserialize, Serialize};

use crate::types::{ChatMessage, PreferenceExample, SftExample};

/// Token counts for one example.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenCount {
    /// Every token the model processes for the example. For DPO: both
    /// sequences (prompt + preferred, prompt + non-preferred).
    pub total: usize,
    /// Tokens in the loss: assistant messages with weight 1 (SFT), or the
    /// two answers (DPO).
    pub trained: usize,
    /// The longest single sequence, checked against the length limit. Equal
    /// to `total` for SFT.
    pub longest: usize,
}

impl TokenCount {
    /// The count for one sequence (SFT): `longest == total`.
    pub fn sequence(total: usize, trained: usize) -> Self {
        TokenCount {
            total,
            trained,
            longest: total,
        }
    }
}

/// Counts tokens the way training will. `Sync` so validation can count in
/// parallel.
pub trait TokenCounter: Sync {
    /// Counts a chat example rendered through the model's chat template.
    fn count_sft(&self, ex: &SftExample) -> Result<TokenCount, String>;
    /// Counts a preference pair (prompt with each answer).
    fn count_preference(&self, ex: &PreferenceExample) -> Result<TokenCount, String>;
    /// The model's context length in tokens.
    fn context_length(&self) -> usize;
}

/// A crude counter for tests and examples: one token per whitespace-separated
/// word, plus 4 per message for the template's headers. Not for real use:
/// real counts come from the model's tokenizer.
#[derive(Debug, Clone, Copy)]
pub struct WordCounter {
    pub context_length: usize,
}

impl WordCounter {
    const PER_MESSAGE: usize = 4;

    fn message(m: &ChatMessage) -> usize {
        m.content.split_whitespace().count() + Self::PER_MESSAGE
    }
}

impl TokenCounter for WordCounter {
    fn count_sft(&self, ex: &SftExample) -> Result<TokenCount, String> {
        let total = ex.messages.iter().map(Self::message).sum();
        let trained = ex
            .messages
            .iter()
            .filter(|m| m.is_trained())
            .map(Self::message)
            .sum();
        Ok(TokenCount::sequence(total, trained))
    }

    fn count_preference(&self, ex: &PreferenceExample) -> Result<TokenCount, String> {
        let prompt: usize = ex.input.iter().map(Self::message).sum();
        let (p, n) = (
            Self::message(&ex.preferred),
            Self::message(&ex.non_preferred),
        );
        Ok(TokenCount {
            total: 2 * prompt + p + n,
            trained: p + n,
            longest: prompt + p.max(n),
        })
    }

    fn context_length(&self) -> usize {
        self.context_length
    }
}
