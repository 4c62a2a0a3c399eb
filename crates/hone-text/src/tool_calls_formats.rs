//! The call syntaxes of model families whose own chat templates render
//! tools in a way other than Hermes `<tool_call>` blocks, read by
//! [`super::parse_tool_calls`] so that such a model's calls under
//! `tool_choice: auto` come back as `tool_calls`:
//!
//! - **Llama 3.1 / 3.2** (custom tools): the answer is one JSON object
//!   `{"name": "get_weather", "parameters": {"city": "Paris"}}`, alone or
//!   after `<|python_tag|>`; several may follow each other separated by `;`
//!   or newlines (Llama 3.2 does this for parallel calls).
//! - **Mistral** (v3 tokenizers, Mistral 7B v0.3, Nemo, Small): text, then
//!   `[TOOL_CALLS]` and a JSON array of `{"name", "arguments"}` objects.
//!
//! Both must be the whole answer from their opener on, as Hermes calls
//! must; anything malformed after an opener makes the answer text. Calls
//! that a grammar holds (`required`, a named function, strict tools) are
//! always written in the Hermes syntax, whatever the model.

use serde_json::{Map, Value};

use super::ParsedToolCall;

/// Llama 3.1's opener of a tool call (a special token in its vocabulary).
pub const PYTHON_TAG: &str = "<|python_tag|>";
/// Mistral's opener of a list of calls (a control token in v3 tokenizers).
pub const MISTRAL_TOOL_CALLS: &str = "[TOOL_CALLS]";

/// What another syntax made of `text`: `None` when the answer uses none of
/// them (no opener, and not a bare Llama call); else the content before the
/// opener and the calls (`None` when they are malformed).
pub(super) fn parse_other(text: &str) -> Option<(String, Option<Vec<ParsedToolCall>>)> {
    if let Some(at) = text.find(MISTRAL_TOOL_CALLS) {
        let calls = mistral_calls(&text[at + MISTRAL_TOOL_CALLS.len()..]);
        return Some((text[..at].trim_end().to_string(), calls));
    }
    let trimmed = text.trim_start();
    if let Some(rest) = trimmed.strip_prefix(PYTHON_TAG) {
        return Some((String::new(), llama_calls(rest)));
    }
    // A bare JSON answer is a call only when it is Llama's shape exactly.
    if trimmed.starts_with('{') {
        return llama_calls(trimmed).map(|calls| (String::new(), Some(calls)));
    }
    None
}

/// Whether `text` (the start of an answer) may still turn out to be a call
/// in one of these syntaxes, so a stream must hold it: it begins (after
/// whitespace) with `{` or `<|python_tag|>`, or a prefix of either.
pub(super) fn may_open_at_start(text: &str) -> bool {
    let t = text.trim_start();
    t.starts_with('{') || t.starts_with(PYTHON_TAG) || (!t.is_empty() && PYTHON_TAG.starts_with(t))
}

/// `[{"name": ..., "arguments": {...}}, ...]`, at least one call.
fn mistral_calls(rest: &str) -> Option<Vec<ParsedToolCall>> {
    let Value::Array(items) = serde_json::from_str::<Value>(rest.trim()).ok()? else {
        return None;
    };
    let calls = items
        .into_iter()
        .map(|item| call(item, "arguments"))
        .collect::<Option<Vec<_>>>()?;
    (!calls.is_empty()).then_some(calls)
}

/// One or more `{"name": ..., "parameters": {...}}` objects separated by
/// whitespace or `;`.
fn llama_calls(rest: &str) -> Option<Vec<ParsedToolCall>> {
    let mut calls = Vec::new();
    let mut tail = rest;
    loop {
        tail = tail.trim_start_matches(|c: char| c.is_whitespace() || c == ';');
        if tail.is_empty() {
            return (!calls.is_empty()).then_some(calls);
        }
        let mut values = serde_json::Deserializer::from_str(tail).into_iter::<Value>();
        let value = values.next()?.ok()?;
        calls.push(call(value, "parameters")?);
        tail = &tail[values.byte_offset()..];
    }
}

/// `{"name": "...", <key>: {...}}` and nothing else (the arguments may be
/// a JSON string holding an object, or absent).
fn call(value: Value, key: &str) -> Option<ParsedToolCall> {
    let Value::Object(mut o) = value else {
        return None;
    };
    let name = match o.remove("name")? {
        Value::String(n) if !n.trim().is_empty() => n,
        _ => return None,
    };
    let arguments = match o.remove(key) {
        None => Map::new(),
        Some(Value::Object(m)) => m,
        Some(Value::String(s)) => match serde_json::from_str(&s).ok()? {
            Value::Object(m) => m,
            _ => return None,
        },
        Some(_) => return None,
    };
    if !o.is_empty() {
        return None;
    }
    let arguments = Value::Object(arguments);
    Some(ParsedToolCall {
        name,
        arguments_text: arguments.to_string(),
        arguments,
    })
}
