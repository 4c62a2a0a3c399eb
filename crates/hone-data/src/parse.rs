//! Format checks: one JSON value (one line) to a typed example, collecting
//! every problem rather than stopping at the first.
//!
//! These checks need no model. Each function pushes issues for its line into
//! a [`LineIssues`] and returns the typed example only when the line had no
//! error.

use serde_json::{Map, Value};

use crate::issue::{Code, Issue, Severity};
use crate::types::{ChatMessage, Method, PreferenceExample, Role, SftExample};

/// Issues found on one line.
#[derive(Debug, Default)]
pub(crate) struct LineIssues {
    line: usize,
    pub(crate) issues: Vec<Issue>,
}

impl LineIssues {
    pub(crate) fn new(line: usize) -> Self {
        LineIssues {
            line,
            issues: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, message: Option<usize>, code: Code, text: impl Into<String>) {
        self.issues
            .push(Issue::new(Some(self.line), message, code, text));
    }

    pub(crate) fn has_errors(&self) -> bool {
        self.issues
            .iter()
            .any(|i| i.code.severity() == Severity::Error)
    }
}

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
const SFT_KEYS: &[&str] = &["messages", "tools", "parallel_tool_calls", "functions"];
const DPO_KEYS: &[&str] = &[
    "input",
    "preferred_output",
    "non_preferred_output",
    "preferred_completion",
    "non_preferred_completion",
];
const DPO_INPUT_KEYS: &[&str] = &["messages", "tools", "parallel_tool_calls"];

/// Guesses the format of one parsed line: DPO when it has any DPO key, SFT
/// when it has `messages`, `None` otherwise.
pub fn detect_method_value(value: &Value) -> Option<Method> {
    let obj = value.as_object()?;
    if DPO_KEYS.iter().any(|k| obj.contains_key(*k)) {
        Some(Method::Dpo)
    } else if obj.contains_key("messages") {
        Some(Method::Sft)
    } else {
        None
    }
}

/// A short name for a JSON value's type, for messages.
fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Checks one SFT line.
pub(crate) fn parse_sft(value: &Value, out: &mut LineIssues) -> Option<SftExample> {
    let Some(obj) = value.as_object() else {
        out.push(
            None,
            Code::DataType,
            format!(
                "each line must be a JSON object, found {}",
                type_name(value)
            ),
        );
        return None;
    };
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

/// Checks one DPO line.
pub(crate) fn parse_preference(value: &Value, out: &mut LineIssues) -> Option<PreferenceExample> {
    let Some(obj) = value.as_object() else {
        out.push(
            None,
            Code::DataType,
            format!(
                "each line must be a JSON object, found {}",
                type_name(value)
            ),
        );
        return None;
    };
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

fn warn_unknown_keys(obj: &Map<String, Value>, known: &[&str], out: &mut LineIssues) {
    for key in obj.keys().filter(|k| !known.contains(&k.as_str())) {
        out.push(
            None,
            Code::UnrecognizedKey,
            format!("unrecognized key \"{}\" is ignored", truncate(key, 40)),
        );
    }
}

/// Checks `tools` and `parallel_tool_calls`; returns `tools` when valid.
fn check_tools(obj: &Map<String, Value>, out: &mut LineIssues) -> Option<Value> {
    if let Some(p) = obj.get("parallel_tool_calls") {
        if !p.is_boolean() {
            out.push(
                None,
                Code::InvalidFieldType,
                format!(
                    "\"parallel_tool_calls\" must be a boolean, found {}",
                    type_name(p)
                ),
            );
        }
    }
    match obj.get("tools") {
        None | Some(Value::Null) => None,
        Some(Value::Array(tools)) => {
            for (i, t) in tools.iter().enumerate() {
                if !t.is_object() {
                    out.push(
                        None,
                        Code::InvalidFieldType,
                        format!("tools[{i}] must be an object, found {}", type_name(t)),
                    );
                }
            }
            Some(Value::Array(tools.clone()))
        }
        Some(v) => {
            out.push(
                None,
                Code::InvalidFieldType,
                format!("\"tools\" must be an array, found {}", type_name(v)),
            );
            None
        }
    }
}

/// Parses every message, so every broken one is reported. `None` entries
/// are messages with errors.
fn parse_messages(messages: &[Value], out: &mut LineIssues) -> Vec<Option<ChatMessage>> {
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
fn parse_message(m: &Value, n: usize, out: &mut LineIssues) -> Option<ChatMessage> {
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
    match f.get("arguments") {
        None | Some(Value::String(_)) => Ok(()),
        Some(_) => Err("function.arguments must be a JSON-encoded string"),
    }
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

/// At most `max` characters of `s`, for quoting user data in messages.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}
