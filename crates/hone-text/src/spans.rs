//! Which bytes of a rendered conversation belong to which message, and which
//! of them a model is trained on. Derived by rendering successive prefixes of
//! the conversation, so it works for any prefix-stable template without
//! knowing its format.

use std::ops::Range;

use hone_data::types::{ChatMessage, Role};

use crate::error::{Error, Result};
use crate::template::ChatTemplate;

/// One message's place in a rendered conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageSpan {
    /// Index into the messages that were rendered.
    pub message_index: usize,
    pub role: Role,
    /// Bytes of the whole message segment (headers and separators included).
    pub range: Range<usize>,
    /// Bytes counted in the loss: the assistant's content and its
    /// end-of-turn token (not the newline after it). `None` for messages that
    /// are not trained.
    pub trained_range: Option<Range<usize>>,
}

/// A rendered conversation with per-message spans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedChat {
    pub text: String,
    pub spans: Vec<MessageSpan>,
}

impl RenderedChat {
    /// The trained byte ranges, in order.
    pub fn trained_ranges(&self) -> impl Iterator<Item = &Range<usize>> {
        self.spans.iter().filter_map(|s| s.trained_range.as_ref())
    }
}

impl ChatTemplate {
    /// Renders a full conversation (no generation prompt) with spans; the
    /// trained ranges cover assistant messages whose `is_trained()` is true.
    pub fn render_with_spans(
        &self,
        messages: &[ChatMessage],
        tools: Option<&serde_json::Value>,
    ) -> Result<RenderedChat> {
        self.render_spans_where(messages, tools, |_, m| m.is_trained())
    }

    /// Like [`Self::render_with_spans`], with the trained messages chosen by
    /// `is_target(index, message)` (which must pick assistant messages).
    pub fn render_spans_where(
        &self,
        messages: &[ChatMessage],
        tools: Option<&serde_json::Value>,
        is_target: impl Fn(usize, &ChatMessage) -> bool,
    ) -> Result<RenderedChat> {
        let mut prev = String::new();
        let mut spans: Vec<MessageSpan> = Vec::with_capacity(messages.len());
        for (i, message) in messages.iter().enumerate() {
            let text = self.render(&messages[..=i], false, tools)?;
            let mut start = prev.len();
            if !text.starts_with(&prev) {
                start = common_prefix(&prev, &text);
                match spans.last_mut() {
                    // A template may close a tool result differently when
                    // another follows (Qwen's joins a run of them into one
                    // turn): the earlier one's span ends where the two
                    // renderings part. Nothing trained lies there.
                    Some(last) if last.role == Role::Tool && message.role == Role::Tool => {
                        last.range.end = start.max(last.range.start);
                    }
                    _ => ensure_prefix(&prev, &text, i, "the conversation before it")?,
                }
            }
            let trained_range = if is_target(i, message) {
                Some(self.trained_range(messages, i, &prev, &text, tools)?)
            } else {
                None
            };
            spans.push(MessageSpan {
                message_index: i,
                role: message.role,
                range: start..text.len(),
                trained_range,
            });
            prev = text;
        }
        Ok(RenderedChat { text: prev, spans })
    }

    /// The trained bytes of assistant message `i`: from the end of the
    /// generation prompt to the end of the first end-of-turn string after
    /// the content. Without an end-of-turn string (a template that writes
    /// none), the segment up to its trailing whitespace.
    fn trained_range(
        &self,
        messages: &[ChatMessage],
        i: usize,
        before: &str,
        with: &str,
        tools: Option<&serde_json::Value>,
    ) -> Result<Range<usize>> {
        let message = &messages[i];
        if message.role != Role::Assistant {
            return Err(Error::InvalidConversation(format!(
                "message {i} is a {} message; only assistant messages can be trained",
                message.role.as_str()
            )));
        }
        let prompt = self.render(&messages[..i], true, tools)?;
        ensure_prefix(
            before,
            &prompt,
            i,
            "the conversation before it (generation prompt)",
        )?;
        ensure_prefix(&prompt, with, i, "its generation prompt")?;
        let start = prompt.len();
        let segment = &with[start..];
        // Search after the content when it is rendered verbatim, so an
        // end-of-turn string quoted inside the content is not mistaken.
        let answer = self.answer_text(message);
        let search_from = if segment.starts_with(answer.as_str()) {
            answer.len()
        } else {
            0
        };
        let end = self
            .end_of_turn()
            .iter()
            .filter(|t| !t.is_empty())
            .filter_map(|t| {
                segment[search_from..]
                    .find(t.as_str())
                    .map(|p| search_from + p + t.len())
            })
            .min()
            .unwrap_or_else(|| segment.trim_end().len());
        Ok(start..start + end)
    }
}

/// How many leading bytes `a` and `b` share (on a char boundary).
fn common_prefix(a: &str, b: &str) -> usize {
    let n = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
    a.floor_char_boundary_compat(n)
}

fn ensure_prefix(prefix: &str, text: &str, index: usize, what: &str) -> Result<()> {
    if text.starts_with(prefix) {
        return Ok(());
    }
    let at = prefix
        .bytes()
        .zip(text.bytes())
        .position(|(a, b)| a != b)
        .unwrap_or(prefix.len().min(text.len()));
    let ctx = |s: &str| {
        let lo = s.floor_char_boundary_compat(at.saturating_sub(20));
        let hi = s.floor_char_boundary_compat((at + 40).min(s.len()));
        s[lo..hi].to_string()
    };
    Err(Error::NotPrefixStable {
        message_index: index,
        detail: format!(
            "rendering it changes {what} at byte {at}: {:?} became {:?}",
            ctx(prefix),
            ctx(text)
        ),
    })
}

trait FloorCharBoundary {
    fn floor_char_boundary_compat(&self, i: usize) -> usize;
}

impl FloorCharBoundary for str {
    fn floor_char_boundary_compat(&self, mut i: usize) -> usize {
        i = i.min(self.len());
        while !self.is_char_boundary(i) {
            i -= 1;
        }
        i
    }
}
