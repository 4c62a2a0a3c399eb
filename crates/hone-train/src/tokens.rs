//! Which token rows a run trains beside LoRA (`--trainable-tokens`), and the "auto"
//! rule that picks them.
//!
//! Why "auto" picks the tool-call tags: a model whose template wraps calls in tags that
//! are single added tokens (Qwen's `<tool_call>`, `</tool_call>`) may never have trained
//! those tokens' rows (Qwen2.5-Coder-0.5B-Instruct did not: docs/tools.md section 2),
//! and LoRA on the linear layers cannot raise the logit of a row nobody trained. So when
//! the training data has assistant tool calls, rendered by the template with those tags
//! inside the loss mask, their rows are trained too (a few rows of `hidden` floats).
//! Everything else trains no rows: plain chat is unchanged.

use hone_data::hparams::{Reason, Source};
use hone_text::tool_calls::{TOOL_CALL_CLOSE, TOOL_CALL_OPEN};
use hone_text::ChatTokenizer;

use crate::data::TokenizedData;

/// A run's choice of token rows, as the user gave it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TrainableTokens {
    /// The tool-call tags when the data trains them (see the module docs).
    #[default]
    Auto,
    /// No rows.
    None,
    /// These tokens: ids, or token texts that are single tokens of the vocabulary.
    List(Vec<TokenSpec>),
}

/// One token of a [`TrainableTokens::List`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSpec {
    Id(u32),
    Text(String),
}

impl TrainableTokens {
    /// Parses `auto`, `none`, or a comma-separated list of token ids and token texts
    /// (`<tool_call>,</tool_call>` or `151657,151658`).
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("auto") {
            return Ok(Self::Auto);
        }
        if s.eq_ignore_ascii_case("none") || s.is_empty() {
            return Ok(Self::None);
        }
        let list: Vec<TokenSpec> = s
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| match t.parse::<u32>() {
                Ok(id) => TokenSpec::Id(id),
                Err(_) => TokenSpec::Text(t.to_string()),
            })
            .collect();
        if list.is_empty() {
            return Err(format!("no token in `{s}`"));
        }
        Ok(Self::List(list))
    }

    /// The ids to train on a model with `vocab` embedding rows, with the reason printed
    /// among the resolved hyperparameters. An id outside the vocabulary, or a text that
    /// is not one token, is an error (its message).
    pub fn resolve(
        &self,
        tokenizer: &ChatTokenizer,
        vocab: usize,
        data: &TokenizedData,
    ) -> Result<(Vec<u32>, Reason), String> {
        let (ids, source, why) = match self {
            Self::None => (
                Vec::new(),
                Source::User,
                "turned off by the user".to_string(),
            ),
            Self::List(list) => (
                ids_of(list, tokenizer, vocab)?,
                Source::User,
                "set by the user".into(),
            ),
            Self::Auto => {
                let (ids, why) = auto_ids(tokenizer, data);
                (ids, Source::Auto, why)
            }
        };
        let value = if ids.is_empty() {
            "none".to_string()
        } else {
            ids.iter()
                .map(|&id| match tokenizer.tokenizer.id_to_token(id) {
                    Some(t) => format!("{t} ({id})"),
                    None => id.to_string(),
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let reason = Reason {
            param: "trainable_tokens".into(),
            value,
            source,
            why,
        };
        Ok((ids, reason))
    }
}

fn ids_of(list: &[TokenSpec], tokenizer: &ChatTokenizer, vocab: usize) -> Result<Vec<u32>, String> {
    let bad = |m: String| format!("trainable_tokens: {m}");
    let mut ids = Vec::with_capacity(list.len());
    for t in list {
        let id = match t {
            TokenSpec::Id(id) if (*id as usize) < vocab => *id,
            TokenSpec::Id(id) => {
                return Err(bad(format!(
                    "token id {id} is outside the model's vocabulary of {vocab}"
                )))
            }
            TokenSpec::Text(s) => tokenizer.tokenizer.token_to_id(s).ok_or_else(|| {
                bad(format!(
                    "`{s}` is not one token of this model's vocabulary (give its id, or a token text)"
                ))
            })?,
        };
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    Ok(ids)
}

/// The "auto" rule: the tool-call tags that are single added tokens and sit inside the
/// loss mask of the training data (for DPO, of the chosen answers).
fn auto_ids(tokenizer: &ChatTokenizer, data: &TokenizedData) -> (Vec<u32>, String) {
    let tok = &tokenizer.tokenizer;
    let tags: Vec<u32> = [TOOL_CALL_OPEN, TOOL_CALL_CLOSE]
        .iter()
        .filter_map(|t| tok.token_to_id(t).filter(|&id| tok.is_added(id)))
        .collect();
    if tags.is_empty() {
        return (
            Vec::new(),
            format!("this model has no {TOOL_CALL_OPEN} / {TOOL_CALL_CLOSE} tag tokens"),
        );
    }
    let trained =
        |ids: &[u32], mask: &[bool], tag: u32| ids.iter().zip(mask).any(|(&id, &m)| m && id == tag);
    let in_data = |tag: u32| match data {
        TokenizedData::Sft { train, .. } => {
            train.iter().any(|e| trained(&e.ids, &e.loss_mask, tag))
        }
        TokenizedData::Dpo { train, .. } => train
            .iter()
            .any(|p| trained(&p.chosen.ids, &p.chosen.loss_mask, tag)),
    };
    let ids: Vec<u32> = tags.into_iter().filter(|&t| in_data(t)).collect();
    if ids.is_empty() {
        return (
            Vec::new(),
            "no assistant tool call in the training data".into(),
        );
    }
    (
        ids,
        "the data trains tool calls whose tags are single added tokens, whose rows LoRA \
         cannot move: their embedding and LM-head rows are trained too"
            .into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use hone_data::{ChatMessage, Role, SftExample};
    use serde_json::json;

    #[test]
    fn parses_auto_none_ids_and_texts() {
        assert_eq!(
            TrainableTokens::parse("auto").unwrap(),
            TrainableTokens::Auto
        );
        assert_eq!(
            TrainableTokens::parse("None").unwrap(),
            TrainableTokens::None
        );
        assert_eq!(
            TrainableTokens::parse("151657, </tool_call>").unwrap(),
            TrainableTokens::List(vec![
                TokenSpec::Id(151657),
                TokenSpec::Text("</tool_call>".into())
            ])
        );
        assert!(TrainableTokens::parse(" , ").is_err());
    }

    fn sft(tok: &ChatTokenizer, examples: &[SftExample]) -> TokenizedData {
        // Byte-level tiny vocabulary: Qwen's tool prompt is about a token per character.
        let train = crate::sft::tokenize_sft(tok, examples, 4096)
            .unwrap()
            .examples;
        TokenizedData::Sft {
            train,
            valid: Vec::new(),
        }
    }

    fn call_example() -> SftExample {
        let mut answer = ChatMessage::new(Role::Assistant, "");
        answer.tool_calls = Some(json!([{
            "id": "c1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}
        }]));
        SftExample {
            messages: vec![ChatMessage::new(Role::User, "Weather in Paris?"), answer],
            tools: Some(json!([{"type": "function", "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}
            }}])),
            parallel_tool_calls: None,
        }
    }

    fn plain_example() -> SftExample {
        SftExample {
            messages: vec![
                ChatMessage::new(Role::User, "Hello"),
                ChatMessage::new(Role::Assistant, "Hi"),
            ],
            tools: None,
            parallel_tool_calls: None,
        }
    }

    /// On a Qwen-template tokenizer whose tags are added tokens, "auto" picks both tags
    /// for data with assistant tool calls, and nothing for plain chat; a SmolLM-style
    /// tokenizer (no tag tokens) picks nothing even with calls.
    #[test]
    fn auto_picks_the_tool_call_tags_only_when_the_data_trains_them() {
        let qwen = hone_text::testing::tiny_qwen_tool_tokenizer().unwrap();
        let open = qwen.tokenizer.token_to_id("<tool_call>").unwrap();
        let close = qwen.tokenizer.token_to_id("</tool_call>").unwrap();
        let vocab = qwen.tokenizer.vocab_size();
        let data = sft(&qwen, &[plain_example(), call_example()]);
        let (ids, why) = TrainableTokens::Auto.resolve(&qwen, vocab, &data).unwrap();
        assert_eq!(ids, vec![open, close]);
        assert_eq!(why.source, Source::Auto);
        assert!(why.value.contains("<tool_call>"), "{}", why.value);
        let (ids, why) = TrainableTokens::Auto
            .resolve(&qwen, vocab, &sft(&qwen, &[plain_example()]))
            .unwrap();
        assert!(ids.is_empty());
        assert_eq!(why.value, "none");
        assert!(why.why.contains("no assistant tool call"), "{}", why.why);

        let smol = hone_text::testing::tiny_chat_tokenizer().unwrap();
        let (ids, _) = TrainableTokens::Auto
            .resolve(&smol, 259, &sft(&smol, &[plain_example()]))
            .unwrap();
        assert!(ids.is_empty());
    }

    #[test]
    fn listed_tokens_are_checked_against_the_vocabulary() {
        let qwen = hone_text::testing::tiny_qwen_tool_tokenizer().unwrap();
        let vocab = qwen.tokenizer.vocab_size();
        let data = sft(&qwen, &[plain_example()]);
        let open = qwen.tokenizer.token_to_id("<tool_call>").unwrap();
        let list = TrainableTokens::parse(&format!("<tool_call>,{open},7")).unwrap();
        let (ids, why) = list.resolve(&qwen, vocab, &data).unwrap();
        assert_eq!(ids, vec![open, 7]);
        assert_eq!(why.source, Source::User);
        let far = TrainableTokens::parse(&format!("{vocab}")).unwrap();
        let e = far.resolve(&qwen, vocab, &data).unwrap_err().to_string();
        assert!(e.contains("outside the model's vocabulary"), "{e}");
        let text = TrainableTokens::parse("not one token").unwrap();
        let e = text.resolve(&qwen, vocab, &data).unwrap_err().to_string();
        assert!(e.contains("is not one token"), "{e}");
    }
}
