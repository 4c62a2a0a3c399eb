//! `ChatTokenizer`: tokenizer plus template, turning conversations into the
//! `(ids, loss_mask)` pairs training uses and the prompts serving uses. Both
//! go through the same render, so the serving prompt is always a prefix of
//! what was trained.

use std::ops::Range;
use std::path::Path;

use candle_core::quantized::gguf_file::Content;
use hone_data::types::{ChatMessage, Role};

use crate::error::{Error, Result};
use crate::spans::RenderedChat;
use crate::template::ChatTemplate;
use crate::tokenizer::Tokenizer;

/// Token ids of a conversation and, per token, whether it counts in the loss.
/// This is also what hone-train trains on (one tokenised SFT example, or one
/// side of a DPO pair): there is no second "tokenised example" type.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EncodedChat {
    pub ids: Vec<u32>,
    /// Same length as `ids`; true = the token is a training target.
    pub loss_mask: Vec<bool>,
}

impl EncodedChat {
    /// How many tokens count in the loss.
    pub fn trained_token_count(&self) -> usize {
        self.loss_mask.iter().filter(|&&m| m).count()
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there are no tokens.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Keeps the first `max_len` tokens (ids and mask together). Returns how
    /// many were cut. Training cuts every sequence to its `max_seq_len`.
    pub fn truncate(&mut self, max_len: usize) -> usize {
        let cut = self.ids.len().saturating_sub(max_len);
        self.ids.truncate(max_len);
        self.loss_mask.truncate(max_len);
        cut
    }

    /// Tokens that are predicted and trained after the next-token shift: the
    /// first token is never a target, so its mask does not count (unlike
    /// [`Self::trained_token_count`]).
    pub fn trained_targets(&self) -> usize {
        self.loss_mask.iter().skip(1).filter(|m| **m).count()
    }

    /// The ids whose mask is true, in order.
    pub fn trained_ids(&self) -> Vec<u32> {
        self.ids
            .iter()
            .zip(&self.loss_mask)
            .filter(|(_, &m)| m)
            .map(|(&id, _)| id)
            .collect()
    }
}

/// What [`ChatTokenizer::encode_chat`] would measure, without the encoding:
/// its `len()` and its `trained_token_count()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChatCount {
    pub total: usize,
    pub trained: usize,
}

/// A tokenizer and the chat template that goes with it.
#[derive(Debug, Clone)]
pub struct ChatTokenizer {
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
}

impl ChatTokenizer {
    /// Pairs a tokenizer with a template; the template's end-of-turn strings
    /// become the tokenizer's stop-token texts.
    pub fn new(tokenizer: Tokenizer, template: ChatTemplate) -> Self {
        let template = template.with_end_of_turn(tokenizer.stop_token_texts());
        ChatTokenizer {
            tokenizer,
            template,
        }
    }

    /// Tokenizer and template from GGUF metadata (ChatML if the file has no
    /// template).
    pub fn from_gguf_content(content: &Content) -> Result<Self> {
        let tokenizer = Tokenizer::from_gguf_content(content)?;
        let (bos, eos) = special_texts(&tokenizer);
        let template = ChatTemplate::from_gguf_content(content, &bos, &eos)?;
        Ok(Self::new(tokenizer, template))
    }

    /// Reads a GGUF file's metadata (not its tensors).
    pub fn from_gguf(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_gguf_content(&crate::gguf::read_gguf_content(path)?)
    }

    /// An HF model directory: `tokenizer.json` plus `tokenizer_config.json`
    /// (or `chat_template.jinja`).
    pub fn from_hf_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let tokenizer = Tokenizer::from_tokenizer_json(dir.join("tokenizer.json"))?;
        let (bos, eos) = special_texts(&tokenizer);
        let template = ChatTemplate::from_hf_dir(dir, &bos, &eos)?;
        Ok(Self::new(tokenizer, template))
    }

    /// The same tokenizer with the template read from a Jinja file
    /// (`--chat-template FILE`) instead of the model's: the template then
    /// renders training data, prompts and token counts alike.
    pub fn with_template_file(self, path: &Path) -> Result<Self> {
        let (bos, eos) = special_texts(&self.tokenizer);
        let template = ChatTemplate::from_file(path, &bos, &eos)?;
        Ok(Self::new(self.tokenizer, template))
    }

    /// Renders without a generation prompt, with per-message spans.
    pub fn render_with_spans(
        &self,
        messages: &[ChatMessage],
        tools: Option<&serde_json::Value>,
    ) -> Result<RenderedChat> {
        self.template.render_with_spans(messages, tools)
    }

    /// A training example: the whole conversation, with the loss on the
    /// trained assistant messages (content plus end-of-turn token).
    pub fn encode_chat(
        &self,
        messages: &[ChatMessage],
        tools: Option<&serde_json::Value>,
    ) -> Result<EncodedChat> {
        let rendered = self.template.render_with_spans(messages, tools)?;
        self.encode_rendered(&rendered)
    }

    /// An inference prompt: the conversation rendered with the generation
    /// prompt (e.g. `<|im_start|>assistant\n`).
    pub fn encode_prompt(
        &self,
        messages: &[ChatMessage],
        tools: Option<&serde_json::Value>,
    ) -> Result<Vec<u32>> {
        let text = self.template.render(messages, true, tools)?;
        self.tokenizer.encode(&text)
    }

    /// A DPO sequence: `prompt` then `answer`, with the loss mask over the
    /// answer and its end-of-turn token only (whatever the answer's weight).
    /// `tools` (the pair's `input.tools`) is rendered as in [`Self::encode_chat`].
    pub fn encode_preference(
        &self,
        prompt: &[ChatMessage],
        answer: &ChatMessage,
        tools: Option<&serde_json::Value>,
    ) -> Result<EncodedChat> {
        let rendered = self.render_preference(prompt, answer, tools)?;
        self.encode_rendered(&rendered)
    }

    /// `prompt` then `answer`, rendered with only the answer trained.
    fn render_preference(
        &self,
        prompt: &[ChatMessage],
        answer: &ChatMessage,
        tools: Option<&serde_json::Value>,
    ) -> Result<RenderedChat> {
        if answer.role != Role::Assistant {
            return Err(Error::InvalidConversation(format!(
                "a preference answer must be an assistant message, not {}",
                answer.role.as_str()
            )));
        }
        let mut messages = prompt.to_vec();
        messages.push(answer.clone());
        let last = messages.len() - 1;
        self.template
            .render_spans_where(&messages, tools, |i, _| i == last)
    }

    /// `encode_chat(messages, tools)`'s length and trained-token count,
    /// exactly, without building the ids and mask (see [`crate::count`]).
    pub fn count_chat(
        &self,
        messages: &[ChatMessage],
        tools: Option<&serde_json::Value>,
    ) -> Result<ChatCount> {
        let rendered = self.template.render_with_spans(messages, tools)?;
        self.count_rendered(&rendered)
    }

    /// `encode_preference(prompt, answer, tools)`'s length and trained-token count.
    pub fn count_preference(
        &self,
        prompt: &[ChatMessage],
        answer: &ChatMessage,
        tools: Option<&serde_json::Value>,
    ) -> Result<ChatCount> {
        let rendered = self.render_preference(prompt, answer, tools)?;
        self.count_rendered(&rendered)
    }

    /// `encode_rendered(rendered)`'s length and trained-token count.
    pub fn count_rendered(&self, rendered: &RenderedChat) -> Result<ChatCount> {
        let ranges: Vec<Range<usize>> = rendered.trained_ranges().cloned().collect();
        let c = self.tokenizer.count_tokens(&rendered.text, &ranges)?;
        Ok(ChatCount {
            total: c.total,
            trained: c.in_ranges,
        })
    }

    /// Tokenises the rendered text once and marks each token whose first
    /// byte lies in a trained range. A token that straddles the start of a
    /// trained range (possible only when the content begins with whitespace
    /// that BPE joins to the header's newline) stays untrained, so the
    /// prompt tokens are never trained.
    pub fn encode_rendered(&self, rendered: &RenderedChat) -> Result<EncodedChat> {
        let enc = self.tokenizer.encode_with_offsets(&rendered.text)?;
        let ranges: Vec<&Range<usize>> = rendered.trained_ranges().collect();
        let loss_mask = enc
            .offsets
            .iter()
            .map(|o| ranges.iter().any(|r| r.contains(&o.start)))
            .collect();
        Ok(EncodedChat {
            ids: enc.ids,
            loss_mask,
        })
    }
}

/// BOS/EOS token texts for the template's `bos_token`/`eos_token`.
fn special_texts(tokenizer: &Tokenizer) -> (String, String) {
    let text = |id: Option<u32>| {
        id.and_then(|id| tokenizer.id_to_token(id))
            .unwrap_or_default()
    };
    (text(tokenizer.bos_id()), text(Some(tokenizer.eos_id())))
}
