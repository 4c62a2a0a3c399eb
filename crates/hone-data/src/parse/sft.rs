//! SFT lines: `{"messages": [...], "tools": [...]}`, a conversation that
//! ends with the assistant's answer.

use serde_json::Value;

use super::message::parse_messages;
use super::{
    check_tools, detect_method_value, line_object, type_name, warn_unknown_keys, LineIssues,
};
use crate::issue::Code;
use crate::types::{ChatMessage, Method, Role, SftExample};

const SFT_KEYS: &[&str] = &["messages", "tools", "parallel_tool_calls", "functions"];

/// Checks one SFT line.
pub(crate) fn parse_sft(value: &Value, out: &mut LineIssues) -> Option<SftExample> {
    let obj = line_object(value, out)?;
    warn_unknown_keys(obj, SFT_KEYS, out);
    let tools = check_tools(obj, out);
    let messages = match obj.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => m,
        other => {
            let hint = if detect_method_value(value) == Some(Method::Dpo) {
                "; this line looks like DPO data (use --method dpo)"
            } else {
                ""
            };
            let found = other.map_or("nothing".to_string(), |v| match v {
                Value::Array(_) => "an empty array".into(),
                v => type_name(v).into(),
            });
            out.push(
                None,
                Code::MissingMessagesList,
                format!("expected a non-empty \"messages\" array, found {found}{hint}"),
            );
            return None;
        }
    };
    let parsed = parse_messages(messages, out);
    check_conversation(&parsed, out);
    if out.has_errors() {
        return None;
    }
    Some(SftExample {
        messages: parsed.into_iter().flatten().collect(),
        tools,
        parallel_tool_calls: obj.get("parallel_tool_calls").and_then(Value::as_bool),
    })
}

/// Conversation-level rules, checked on the roles that could be read.
fn check_conversation(parsed: &[Option<ChatMessage>], out: &mut LineIssues) {
    let has_assistant = parsed.iter().flatten().any(|m| m.role == Role::Assistant);
    if !has_assistant {
        if parsed.iter().all(Option::is_some) {
            out.push(
                None,
                Code::ExampleMissingAssistantMessage,
                "the conversation has no assistant message to learn from",
            );
        }
        return;
    }
    if let Some(Some(last)) = parsed.last() {
        if last.role != Role::Assistant {
            out.push(Some(parsed.len()), Code::LastMessageNotAssistant, format!("the last message has role {}; a training example must end with the assistant's answer", last.role.as_str()));
        }
    }
}
