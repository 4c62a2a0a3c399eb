//! DPO lines: a one-turn prompt in `input` and a preferred and a
//! non-preferred assistant answer.

use serde_json::{Map, Value};

use super::message::{parse_message, parse_messages};
use super::{check_tools, line_object, type_name, warn_unknown_keys, LineIssues, DPO_KEYS};
use crate::issue::Code;
use crate::types::{ChatMessage, PreferenceExample, Role};

const DPO_INPUT_KEYS: &[&str] = &["messages", "tools", "parallel_tool_calls"];

/// Checks one DPO line.
pub(crate) fn parse_preference(value: &Value, out: &mut LineIssues) -> Option<PreferenceExample> {
    let obj = line_object(value, out)?;
    warn_unknown_keys(obj, DPO_KEYS, out);
    let (input, tools) = parse_dpo_input(obj, out);
    let preferred = parse_dpo_output(obj, "preferred_output", "preferred_completion", out);
    let non_preferred =
        parse_dpo_output(obj, "non_preferred_output", "non_preferred_completion", out);
    if let (Some(p), Some(n)) = (&preferred, &non_preferred) {
        if p.content == n.content && p.tool_calls == n.tool_calls {
            out.push(None, Code::DpoIdenticalOutputs, "preferred and non-preferred outputs are identical; DPO learns nothing from this pair");
        }
    }
    if out.has_errors() {
        return None;
    }
    Some(PreferenceExample {
        input: input?,
        preferred: preferred?,
        non_preferred: non_preferred?,
        tools,
    })
}

type DpoInput = (Option<Vec<ChatMessage>>, Option<Value>);

fn parse_dpo_input(obj: &Map<String, Value>, out: &mut LineIssues) -> DpoInput {
    let input = match obj.get("input") {
        Some(Value::Object(i)) => i,
        Some(v) => {
            out.push(
                None,
                Code::DpoMissingInput,
                format!(
                    "\"input\" must be an object with \"messages\", found {}",
                    type_name(v)
                ),
            );
            return (None, None);
        }
        None => {
            let hint = if obj.contains_key("messages") {
                "; this line looks like SFT data (use --method sft)"
            } else {
                ""
            };
            out.push(
                None,
                Code::DpoMissingInput,
                format!("missing \"input\" object{hint}"),
            );
            return (None, None);
        }
    };
    warn_unknown_keys(input, DPO_INPUT_KEYS, out);
    let tools = check_tools(input, out);
    let messages = match input.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => m,
        _ => {
            out.push(
                None,
                Code::MissingMessagesList,
                "expected a non-empty \"input.messages\" array",
            );
            return (None, tools);
        }
    };
    let parsed = parse_messages(messages, out);
    for (i, m) in parsed.iter().enumerate() {
        if let Some(m) = m {
            if matches!(m.role, Role::Assistant | Role::Tool) {
                out.push(Some(i + 1), Code::DpoMultiTurn, format!("input message has role {}; DPO takes a one-turn prompt (system and user messages only)", m.role.as_str()));
            }
        }
    }
    match parsed.last() {
        Some(Some(m)) if m.role == Role::User => {}
        Some(Some(m)) if m.role == Role::System => {
            out.push(
                Some(parsed.len()),
                Code::DpoMultiTurn,
                "the prompt must end with a user message",
            );
        }
        _ => {}
    }
    if parsed.iter().any(Option::is_none) {
        return (None, tools);
    }
    (Some(parsed.into_iter().flatten().collect()), tools)
}

fn parse_dpo_output(
    obj: &Map<String, Value>,
    field: &str,
    alias: &str,
    out: &mut LineIssues,
) -> Option<ChatMessage> {
    let (name, value) = match (obj.get(field), obj.get(alias)) {
        (Some(_), Some(_)) => {
            out.push(
                None,
                Code::DpoInvalidOutput,
                format!("both \"{field}\" and its alias \"{alias}\" are given; keep one"),
            );
            return None;
        }
        (Some(v), None) => (field, v),
        (None, Some(v)) => (alias, v),
        (None, None) => {
            out.push(
                None,
                Code::DpoMissingOutput,
                format!("missing \"{field}\" (or \"{alias}\")"),
            );
            return None;
        }
    };
    let item = match value {
        Value::Array(a) if a.len() == 1 => &a[0],
        Value::Array(a) => {
            out.push(
                None,
                Code::DpoInvalidOutput,
                format!(
                    "\"{name}\" must hold exactly one assistant message, found {}",
                    a.len()
                ),
            );
            return None;
        }
        v => {
            out.push(
                None,
                Code::DpoInvalidOutput,
                format!(
                    "\"{name}\" must be an array with one assistant message, found {}",
                    type_name(v)
                ),
            );
            return None;
        }
    };
    let mut inner = LineIssues::new(out.line);
    let message = parse_message(item, 1, &mut inner);
    for mut issue in inner.issues {
        issue.message = None;
        issue.text = format!("{name}: {}", issue.text);
        out.issues.push(issue);
    }
    let message = message?;
    if message.role != Role::Assistant {
        out.push(
            None,
            Code::DpoInvalidOutput,
            format!(
                "\"{name}\" message has role {}, expected assistant",
                message.role.as_str()
            ),
        );
        return None;
    }
    if message.content.trim().is_empty() && message.tool_calls.is_none() {
        out.push(
            None,
            Code::MissingContent,
            format!("{name}: the answer is empty"),
        );
        return None;
    }
    Some(message)
}
