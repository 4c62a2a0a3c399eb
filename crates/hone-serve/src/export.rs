//! Stored completions as a chat training file (the distillation step:
//! what a teacher answered becomes what a student learns). Used by
//! `hone data export-completions`, which reads completions over HTTP, and
//! usable by the server on its own store.
//!
//! Each completion becomes one SFT line: its request messages, then the
//! answer of choice 0 (text and tool calls). Every line goes through
//! hone-data's [`LineGate`], so the file validates: a completion whose
//! example has an error, repeats an earlier one (the validator's
//! near-duplicate rule), or whose answer was cut by the token limit is
//! dropped and counted by reason.

use std::collections::BTreeMap;
use std::io::{self, Write};

use hone_data::gate::LineGate;
use hone_data::Method;
use serde_json::{json, Map, Value};

use crate::api::{FinishReason, StoreMessage, StoredCompletion};

/// Why a completion cannot be an example before validation even runs.
pub const REASON_NO_ANSWER: &str = "no_answer";
/// The answer stopped at the token limit: a cut answer teaches cutting.
pub const REASON_TRUNCATED: &str = "truncated_answer";

/// What an export wrote and dropped.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExportSummary {
    pub written: usize,
    /// Dropped completions by reason (a hone-data issue code, or one of the
    /// `REASON_` constants).
    pub dropped: BTreeMap<String, usize>,
}

impl ExportSummary {
    pub fn n_dropped(&self) -> usize {
        self.dropped.values().sum()
    }
}

/// The training line of a completion (before validation), or why there is
/// none.
pub fn example_line(c: &StoredCompletion, messages: &[StoreMessage]) -> Result<String, String> {
    let Some(choice) = c.completion.choices.first() else {
        return Err(REASON_NO_ANSWER.into());
    };
    if choice.finish_reason == FinishReason::Length {
        return Err(REASON_TRUNCATED.into());
    }
    let answer = &choice.message;
    if answer.content.as_deref().unwrap_or("").is_empty() && answer.tool_calls.is_none() {
        return Err(REASON_NO_ANSWER.into());
    }
    let mut out: Vec<Value> = messages.iter().map(message_json).collect();
    let mut a = Map::new();
    a.insert("role".into(), json!("assistant"));
    a.insert(
        "content".into(),
        json!(answer.content.clone().unwrap_or_default()),
    );
    if let Some(calls) = &answer.tool_calls {
        a.insert("tool_calls".into(), json!(calls));
    }
    out.push(Value::Object(a));
    Ok(json!({ "messages": out }).to_string())
}

/// A request message in the training format (`developer` becomes
/// `system`, which every chat template knows).
fn message_json(m: &StoreMessage) -> Value {
    let role = if m.role == "developer" {
        "system"
    } else {
        &m.role
    };
    let mut o = Map::new();
    o.insert("role".into(), json!(role));
    o.insert(
        "content".into(),
        json!(m.content.clone().unwrap_or_default()),
    );
    if let Some(n) = &m.name {
        o.insert("name".into(), json!(n));
    }
    if let Some(t) = &m.tool_calls {
        o.insert("tool_calls".into(), t.clone());
    }
    if let Some(id) = &m.tool_call_id {
        o.insert("tool_call_id".into(), json!(id));
    }
    Value::Object(o)
}

/// Writes the completions that make valid, distinct examples to `out`, one
/// line each, in the order given.
pub fn write_examples<I>(completions: I, out: &mut dyn Write) -> io::Result<ExportSummary>
where
    I: IntoIterator<Item = (StoredCompletion, Vec<StoreMessage>)>,
{
    let mut gate = LineGate::new(Method::Sft);
    let mut summary = ExportSummary::default();
    for (c, messages) in completions {
        let checked = example_line(&c, &messages).and_then(|line| match gate.admit(&line) {
            Ok(_) => Ok(line),
            Err(r) => Err(r.reason().to_string()),
        });
        match checked {
            Ok(line) => {
                out.write_all(line.as_bytes())?;
                out.write_all(b"\n")?;
                summary.written += 1;
            }
            Err(reason) => *summary.dropped.entry(reason).or_default() += 1,
        }
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{
        AssistantMessage, AssistantTag, ChatCompletion, ChatCompletionTag, ChatRequestMessage,
        Choice, MessageContent, Usage,
    };

    fn stored(
        id: &str,
        q: &str,
        a: &str,
        finish: FinishReason,
    ) -> (StoredCompletion, Vec<StoreMessage>) {
        let c = StoredCompletion {
            completion: ChatCompletion {
                id: id.into(),
                object: ChatCompletionTag,
                created: 0,
                model: "m".into(),
                choices: vec![Choice {
                    index: 0,
                    message: AssistantMessage {
                        role: AssistantTag,
                        content: Some(a.into()),
                        refusal: None,
                        tool_calls: None,
                    },
                    logprobs: None,
                    finish_reason: finish,
                }],
                usage: Usage::default(),
                system_fingerprint: None,
            },
            metadata: Default::default(),
        };
        let ask = |role: &str, text: &str| ChatRequestMessage {
            role: role.into(),
            content: Some(MessageContent::Text(text.into())),
            name: None,
            tool_calls: None,
            tool_call_id: None,
        };
        let msgs = [ask("developer", "Be brief."), ask("user", q)]
            .iter()
            .enumerate()
            .map(|(i, m)| StoreMessage::from_request(id, i, m))
            .collect();
        (c, msgs)
    }

    #[test]
    fn writes_valid_distinct_examples_and_counts_the_rest() {
        let items = vec![
            stored(
                "a",
                "What is Rust?",
                "A systems language.",
                FinishReason::Stop,
            ),
            stored(
                "b",
                "what is rust",
                "a systems language",
                FinishReason::Stop,
            ),
            stored("c", "Long one", "cut mid", FinishReason::Length),
            stored("d", "Empty", "", FinishReason::Stop),
            stored("e", "What is Go?", "Another language.", FinishReason::Stop),
        ];
        let mut out = Vec::new();
        let s = write_examples(items, &mut out).unwrap();
        assert_eq!(s.written, 2);
        assert_eq!(
            s.dropped,
            BTreeMap::from([
                ("near_duplicate".to_string(), 1),
                (REASON_NO_ANSWER.to_string(), 1),
                (REASON_TRUNCATED.to_string(), 1),
            ])
        );
        let text = String::from_utf8(out).unwrap();
        let first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(
            first,
            json!({"messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "What is Rust?"},
                {"role": "assistant", "content": "A systems language."}
            ]})
        );
    }
}
