//! One chat message: its role, content, weight, name and tool calls, and
//! the links between tool calls and tool replies in a conversation.

use serde_json::{Map, Value};

use super::{truncate, type_name, LineIssues};
use crate::issue::{Code, Severity};
use crate::types::{ChatMessage, Role};

/// Keys a message may carry. `function_call` is OpenAI's legacy form and is
/// accepted (and ignored) for compatibility with old files.
const MESSAGE_KEYS: &[&str] = &[
    "role",
    "content",
    "name",
    "weight",
    "tool_calls",
    "tool_call_id",
    "function_call",
];

/// Parses every message, so every broken one is reported. `None` entries
/// are messages with errors.
pub(super) fn parse_messages(messages: &[Value], out: &mut LineIssues) -> Vec<Option<ChatMessage>> {
    let mut parsed = Vec::with_capacity(messages.len());
    let mut call_ids: Vec<String> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let message = parse_message(m, i + 1, out);
        if let Some(msg) = &message {
            check_tool_links(msg, i + 1, &mut call_ids, out);
        }
        parsed.push(message);
    }
    parsed
}

/// Tool replies must answer a call made earlier in the conversation.
fn check_tool_links(msg: &ChatMessage, n: usize, call_ids: &mut Vec<String>, out: &mut LineIssues) {
    if let Some(Value::Array(calls)) = &msg.tool_calls {
        call_ids.extend(
            calls
                .iter()
                .filter_map(|c| c.get("id")?.as_str().map(String::from)),
        );
    }
    if msg.role == Role::Tool {
        if let Some(id) = &msg.tool_call_id {
            if !call_ids.contains(id) {
                out.push(Some(n), Code::ToolCallMismatch, format!("tool message answers tool_call_id \"{}\", which no earlier assistant tool call has", truncate(id, 40)));
            }
        }
    }
}

/// Checks one message (numbered `n` from 1).
pub(super) fn parse_message(m: &Value, n: usize, out: &mut LineIssues) -> Option<ChatMessage> {
    let Some(obj) = m.as_object() else {
        out.push(
            Some(n),
            Code::DataType,
            format!("a message must be a JSON object, found {}", type_name(m)),
        );
        return None;
    };
    let before = out.issues.len();
    for key in obj.keys().filter(|k| !MESSAGE_KEYS.contains(&k.as_str())) {
        out.push(
            Some(n),
            Code::MessageUnrecognizedKey,
            format!("unrecognized message key \"{}\"", truncate(key, 40)),
        );
    }
    let role = parse_role(obj, n, out);
    let tool_calls = parse_tool_calls(obj, role, n, out);
    let calls_something = ["tool_calls", "function_call"]
        .iter()
        .any(|k| obj.get(*k).is_some_and(|v| !v.is_null()));
    let content = parse_content(obj, role, calls_something, n, out);
    let weight = parse_weight(obj, role, n, out);
    let name = string_field(obj, "name", n, out);
    let tool_call_id = string_field(obj, "tool_call_id", n, out);
    if role == Some(Role::Tool) && !obj.contains_key("tool_call_id") {
        out.push(
            Some(n),
            Code::MessageMissingKey,
            "tool message is missing \"tool_call_id\"",
        );
    }
    if out.issues[before..]
        .iter()
        .any(|i| i.code.severity() == Severity::Error)
    {
        return None;
    }
    Some(ChatMessage {
        role: role?,
        content: content?,
        name,
        weight,
        tool_calls,
        tool_call_id,
    })
}

fn parse_role(obj: &Map<String, Value>, n: usize, out: &mut LineIssues) -> Option<Role> {
    match obj.get("role") {
        None => {
            out.push(
                Some(n),
                Code::MessageMissingKey,
                "message is missing \"role\"",
            );
            None
        }
        Some(Value::String(r)) => match r.as_str() {
            "system" | "developer" => Some(Role::System),
            "user" => Some(Role::User),
            "assistant" => Some(Role::Assistant),
            "tool" => Some(Role::Tool),
            other => {
                out.push(Some(n), Code::UnrecognizedRole, format!("unrecognized role \"{}\" (expected system, developer, user, assistant or tool)", truncate(other, 40)));
                None
            }
        },
        Some(v) => {
            out.push(
                Some(n),
                Code::UnrecognizedRole,
                format!("role must be a string, found {}", type_name(v)),
            );
            None
        }
    }
}

/// Content as one string: a string, or text parts joined. An assistant
/// message that makes tool calls may have no content.
fn parse_content(
    obj: &Map<String, Value>,
    role: Option<Role>,
    has_tool_calls: bool,
    n: usize,
    out: &mut LineIssues,
) -> Option<String> {
    let may_be_empty = role == Some(Role::Assistant) && has_tool_calls;
    let text = match obj.get("content") {
        None if may_be_empty => return Some(String::new()),
        None => {
            out.push(
                Some(n),
                Code::MessageMissingKey,
                "message is missing \"content\"",
            );
            return None;
        }
        Some(Value::Null) if may_be_empty => return Some(String::new()),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => join_text_parts(parts, n, out)?,
        Some(v) => {
            out.push(
                Some(n),
                Code::MissingContent,
                format!(
                    "content must be a string or a list of text parts, found {}",
                    type_name(v)
                ),
            );
            return None;
        }
    };
    if text.is_empty() && !may_be_empty {
        out.push(Some(n), Code::MissingContent, "content is empty");
        return None;
    }
    Some(text)
}

fn join_text_parts(parts: &[Value], n: usize, out: &mut LineIssues) -> Option<String> {
    let mut text = String::new();
    let mut ok = true;
    for (i, part) in parts.iter().enumerate() {
        let is_text = part.get("type").and_then(Value::as_str) == Some("text");
        match part.get("text").and_then(Value::as_str) {
            Some(t) if is_text => text.push_str(t),
            _ => {
                out.push(Some(n), Code::MissingContent, format!("content part {} is not a text part ({{\"type\":\"text\",\"text\":\"...\"}}); only text is supported", i + 1));
                ok = false;
            }
        }
    }
    ok.then_some(text)
}

fn parse_weight(
    obj: &Map<String, Value>,
    role: Option<Role>,
    n: usize,
    out: &mut LineIssues,
) -> Option<u8> {
    let w = obj.get("weight")?;
    let value = match w.as_u64() {
        Some(0) => 0,
        Some(1) => 1,
        _ => {
            out.push(
                Some(n),
                Code::InvalidWeight,
                format!(
                    "weight must be 0 or 1, found {}",
                    truncate(&w.to_string(), 40)
                ),
            );
            return None;
        }
    };
    if role.is_some_and(|r| r != Role::Assistant) {
        out.push(
            Some(n),
            Code::InvalidWeight,
            "weight is only allowed on assistant messages",
        );
        return None;
    }
    Some(value)
}

fn string_field(
    obj: &Map<String, Value>,
    key: &str,
    n: usize,
    out: &mut LineIssues,
) -> Option<String> {
    match obj.get(key)? {
        Value::String(s) => Some(s.clone()),
        v => {
            out.push(
                Some(n),
                Code::InvalidFieldType,
                format!("\"{key}\" must be a string, found {}", type_name(v)),
            );
            None
        }
    }
}

/// `tool_calls`: only on assistant messages; a list of
/// `{"id", "type": "function", "function": {"name", "arguments"}}`.
fn parse_tool_calls(
    obj: &Map<String, Value>,
    role: Option<Role>,
    n: usize,
    out: &mut LineIssues,
) -> Option<Value> {
    let calls = obj.get("tool_calls")?;
    if calls.is_null() {
        return None;
    }
    if role.is_some_and(|r| r != Role::Assistant) {
        out.push(
            Some(n),
            Code::ToolCallMismatch,
            "tool_calls are only allowed on assistant messages",
        );
        return None;
    }
    let Value::Array(list) = calls else {
        out.push(
            Some(n),
            Code::ToolCallMismatch,
            format!("tool_calls must be an array, found {}", type_name(calls)),
        );
        return None;
    };
    let mut ok = true;
    for (i, call) in list.iter().enumerate() {
        if let Err(why) = check_tool_call(call) {
            out.push(
                Some(n),
                Code::ToolCallMismatch,
                format!("tool_calls[{i}]: {why}"),
            );
            ok = false;
        }
    }
    ok.then(|| calls.clone())
}

fn check_tool_call(call: &Value) -> Result<(), &'static str> {
    let obj = call.as_object().ok_or("must be an object")?;
    obj.get("id")
        .and_then(Value::as_str)
        .ok_or("needs a string \"id\"")?;
    if let Some(t) = obj.get("type") {
        if t.as_str() != Some("function") {
            return Err("\"type\" must be \"function\"");
        }
    }
    let f = obj
        .get("function")
        .and_then(Value::as_object)
        .ok_or("needs a \"function\" object")?;
    f.get("name")
        .and_then(Value::as_str)
        .ok_or("function needs a string \"name\"")?;
    // Templates render the arguments as the object the string encodes.
    match f.get("arguments") {
        None => Ok(()),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(_)) => Ok(()),
            _ => Err("function.arguments must be a JSON string encoding an object"),
        },
        Some(_) => Err("function.arguments must be a JSON-encoded string"),
    }
}
