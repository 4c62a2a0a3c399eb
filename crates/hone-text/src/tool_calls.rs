//! The Hermes tool-call format, both ways: reading a model's answer into
//! content plus calls ([`parse_tool_calls`], [`ToolCallStream`] for a
//! streamed answer), and writing tools, calls and tool results as text for
//! a chat template that cannot render them itself ([`fallback_messages`]).
//! Streaming (calls sent as they are written) is in `tool_calls_stream.rs`.
//!
//! Why one format: Qwen2.5 and Qwen3 templates render tools this way and
//! their models answer with it, and hone's fallback for other templates
//! (SmolLM2's ChatML, Gemma 3) uses the very same text, so one parser and
//! one call grammar serve every model. A call is
//!
//! ```text
//! <tool_call>
//! {"name": "get_weather", "arguments": {"city": "Paris"}}
//! </tool_call>
//! ```
//!
//! and parallel calls follow each other, separated by a newline.

use hone_data::types::{ChatMessage, Role};
use serde_json::{Map, Value};

#[path = "tool_calls_formats.rs"]
mod formats;
#[path = "tool_calls_stream.rs"]
mod stream;
pub use formats::{MISTRAL_TOOL_CALLS, PYTHON_TAG};
pub use stream::{CallEvent, ToolCallStream};

/// Opens a call in an answer.
pub const TOOL_CALL_OPEN: &str = "<tool_call>";
/// Closes a call in an answer.
pub const TOOL_CALL_CLOSE: &str = "</tool_call>";

/// One function call read from an answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedToolCall {
    pub name: String,
    /// Always a JSON object.
    pub arguments: Value,
    /// `arguments` as the JSON string OpenAI's wire format carries: the
    /// model's own text with the whitespace outside strings dropped (what a
    /// stream sends piece by piece), or the object re-encoded when the
    /// model wrote the call in another shape.
    pub arguments_text: String,
}

impl ParsedToolCall {
    /// `arguments` as the JSON string OpenAI's wire format carries.
    pub fn arguments_json(&self) -> String {
        self.arguments_text.clone()
    }
}

/// An answer split into its text and its calls.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ParsedAnswer {
    /// The text before the first call (trailing whitespace dropped), or the
    /// whole answer when it has no well-formed calls; `None` when empty.
    pub content: Option<String>,
    /// The calls, in order; empty when the answer has none or when any
    /// call is malformed (then the whole answer is `content`).
    pub calls: Vec<ParsedToolCall>,
    /// The answer opened a call that did not parse, so it is all content
    /// (what eval counts as a malformed call).
    pub malformed: bool,
}

/// Splits a model's answer into content and tool calls.
///
/// Everything from the first `<tool_call>` on must be calls separated by
/// whitespace; the last may lack its `</tool_call>` (a model that stopped
/// right after the JSON). If any part of that is malformed (not JSON, no
/// `name`, arguments not an object, stray text between calls), the answer
/// is returned whole as content with no calls: a broken call is never
/// reported as a call. Answers without `<tool_call>` are also read for
/// Llama 3.1's and Mistral's call syntaxes (`tool_calls_formats.rs`).
pub fn parse_tool_calls(text: &str) -> ParsedAnswer {
    let Some(start) = text.find(TOOL_CALL_OPEN) else {
        return match formats::parse_other(text) {
            None => as_content(text),
            Some((content, Some(calls))) => ParsedAnswer {
                content: non_empty(&content),
                calls,
                malformed: false,
            },
            Some((_, None)) => ParsedAnswer {
                malformed: true,
                ..as_content(text)
            },
        };
    };
    match parse_call_block(&text[start..]) {
        Some(calls) => ParsedAnswer {
            content: non_empty(text[..start].trim_end()),
            calls,
            malformed: false,
        },
        None => ParsedAnswer {
            malformed: true,
            ..as_content(text)
        },
    }
}

fn as_content(text: &str) -> ParsedAnswer {
    ParsedAnswer {
        content: non_empty(text),
        calls: Vec::new(),
        malformed: false,
    }
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// `<tool_call>…</tool_call>` blocks separated by whitespace, and nothing
/// else; `None` if anything is malformed.
fn parse_call_block(mut rest: &str) -> Option<Vec<ParsedToolCall>> {
    let mut calls = Vec::new();
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            return (!calls.is_empty()).then_some(calls);
        }
        rest = rest.strip_prefix(TOOL_CALL_OPEN)?;
        let (body, after) = match rest.find(TOOL_CALL_CLOSE) {
            Some(end) => (&rest[..end], &rest[end + TOOL_CALL_CLOSE.len()..]),
            None => (rest, ""),
        };
        calls.push(parse_call_json(body.trim())?);
        rest = after;
    }
}

/// `{"name": "...", "arguments": {...}}`. `arguments` may also be a JSON
/// string holding an object (some models write it so); absent is `{}`.
fn parse_call_json(body: &str) -> Option<ParsedToolCall> {
    let Value::Object(mut obj) = serde_json::from_str::<Value>(body).ok()? else {
        return None;
    };
    let name = match obj.remove("name")? {
        Value::String(n) if !n.trim().is_empty() => n,
        _ => return None,
    };
    let arguments = match obj.remove("arguments") {
        None => Value::Object(Map::new()),
        Some(Value::Object(o)) => Value::Object(o),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(&s).ok()? {
            Value::Object(o) => Value::Object(o),
            _ => return None,
        },
        Some(_) => return None,
    };
    let arguments_text = stream::streamed_arguments(body)
        .filter(|t| serde_json::from_str::<Value>(t).ok().as_ref() == Some(&arguments))
        .unwrap_or_else(|| arguments.to_string());
    Some(ParsedToolCall {
        name,
        arguments,
        arguments_text,
    })
}

/// The system-prompt text that lists `tools` (OpenAI's
/// `[{"type": "function", "function": {...}}]`) and says how to call them,
/// the same words Qwen2.5's template writes.
pub fn tools_system_text(tools: &[Value]) -> String {
    let mut s = String::from(
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n\
         You are provided with function signatures within <tools></tools> XML tags:\n<tools>",
    );
    for t in tools {
        s.push('\n');
        s.push_str(&python_dumps(t));
    }
    s.push_str(
        "\n</tools>\n\nFor each function call, return a json object with function name and \
         arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n\
         {\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>",
    );
    s
}

/// An assistant message's calls (OpenAI's `tool_calls`, arguments as a
/// JSON string or an object) as answer text, after its content if any.
pub fn calls_text(content: &str, tool_calls: &Value) -> String {
    let mut parts: Vec<String> = Vec::new();
    if !content.is_empty() {
        parts.push(content.to_string());
    }
    for call in tool_calls.as_array().into_iter().flatten() {
        let f = call.get("function").unwrap_or(call);
        let name = f.get("name").cloned().unwrap_or(Value::Null);
        let arguments = f
            .get("arguments")
            .map(decoded_arguments)
            .unwrap_or_else(|| Value::Object(Map::new()));
        parts.push(format!(
            "{TOOL_CALL_OPEN}\n{{\"name\": {}, \"arguments\": {}}}\n{TOOL_CALL_CLOSE}",
            python_dumps(&name),
            python_dumps(&arguments)
        ));
    }
    parts.join("\n")
}

/// `arguments` as an object: OpenAI sends a JSON string, templates want
/// the object. A string that is not JSON stays a string.
pub fn decoded_arguments(arguments: &Value) -> Value {
    match arguments {
        Value::String(s) => serde_json::from_str(s).unwrap_or_else(|_| arguments.clone()),
        other => other.clone(),
    }
}

/// The conversation as a template without tool support must see it: the
/// tool list appended to the system message (one is added first if there
/// is none), assistant calls written as `<tool_call>` text, and each run of
/// `tool` messages joined into one user message of `<tool_response>`
/// blocks (so templates that insist on alternating roles accept it).
pub fn fallback_messages(messages: &[ChatMessage], tools: Option<&[Value]>) -> Vec<ChatMessage> {
    let mut out: Vec<ChatMessage> = Vec::with_capacity(messages.len() + 1);
    let mut rest = messages;
    if let Some(tools) = tools.filter(|t| !t.is_empty()) {
        let block = tools_system_text(tools);
        match messages.first() {
            Some(m) if m.role == Role::System => {
                let mut sys = m.clone();
                sys.content = format!("{}\n\n{block}", sys.content);
                out.push(sys);
                rest = &messages[1..];
            }
            _ => out.push(ChatMessage::new(Role::System, block)),
        }
    }
    let mut after_tool = false;
    for m in rest {
        match (m.role, &m.tool_calls) {
            (Role::Tool, _) => {
                let block = format!("<tool_response>\n{}\n</tool_response>", m.content);
                match out.last_mut() {
                    Some(prev) if after_tool => prev.content = format!("{}\n{block}", prev.content),
                    _ => out.push(ChatMessage::new(Role::User, block)),
                }
            }
            (Role::Assistant, Some(calls)) => {
                let mut a = m.clone();
                a.content = calls_text(&m.content, calls);
                a.tool_calls = None;
                out.push(a);
            }
            _ => out.push(m.clone()),
        }
        after_tool = m.role == Role::Tool;
    }
    out
}

/// `json.dumps(v)` with Python's default separators (`, ` and `: `), as
/// templates' `tojson` writes it, so fallback text matches what a
/// tool-aware template would render.
fn python_dumps(v: &Value) -> String {
    match v {
        Value::Array(a) => {
            let items: Vec<String> = a.iter().map(python_dumps).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Object(o) => {
            let items: Vec<String> = o
                .iter()
                .map(|(k, v)| format!("{}: {}", Value::String(k.clone()), python_dumps(v)))
                .collect();
            format!("{{{}}}", items.join(", "))
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
#[path = "tool_calls_tests.rs"]
mod tests;
