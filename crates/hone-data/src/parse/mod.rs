//! Format checks: one JSON value (one line) to a typed example, collecting
//! every problem rather than stopping at the first.
//!
//! These checks need no model. Each function pushes issues for its line into
//! a [`LineIssues`] and returns the typed example only when the line had no
//! error.
//!
//! `sft` and `preference` check the two line formats; `message` checks the
//! chat messages both are made of. The helpers here are shared by all three.

use serde_json::{Map, Value};

use crate::issue::{Code, Issue, Severity};
use crate::types::Method;

mod message;
mod preference;
mod sft;

pub(crate) use preference::parse_preference;
pub(crate) use sft::parse_sft;

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

const DPO_KEYS: &[&str] = &[
    "input",
    "preferred_output",
    "non_preferred_output",
    "preferred_completion",
    "non_preferred_completion",
];

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

/// The line's JSON object, or `None` with the error that a line must be one
/// (both formats start here).
fn line_object<'a>(value: &'a Value, out: &mut LineIssues) -> Option<&'a Map<String, Value>> {
    let obj = value.as_object();
    if obj.is_none() {
        out.push(
            None,
            Code::DataType,
            format!(
                "each line must be a JSON object, found {}",
                type_name(value)
            ),
        );
    }
    obj
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
                if let Err(why) = check_tool(t) {
                    out.push(None, Code::InvalidFieldType, format!("tools[{i}] {why}"));
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

/// One tool definition, as chat templates and the server read it:
/// `{"type": "function", "function": {"name": "…", "parameters": {…}}}`.
fn check_tool(t: &Value) -> Result<(), String> {
    let obj = t
        .as_object()
        .ok_or_else(|| format!("must be an object, found {}", type_name(t)))?;
    if obj.get("type").and_then(Value::as_str) != Some("function") {
        return Err("needs \"type\": \"function\"".into());
    }
    let f = obj
        .get("function")
        .and_then(Value::as_object)
        .ok_or("needs a \"function\" object")?;
    match f.get("name") {
        Some(Value::String(n)) if !n.is_empty() => {}
        _ => return Err("needs a non-empty string \"function.name\"".into()),
    }
    match f.get("parameters") {
        None | Some(Value::Null) | Some(Value::Object(_)) => Ok(()),
        Some(p) => Err(format!(
            "\"function.parameters\" must be a JSON Schema object, found {}",
            type_name(p)
        )),
    }
}

/// At most `max` characters of `s`, for quoting user data in messages.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn tools_must_be_named_functions() {
        let f = |v: Value| json!({"type": "function", "function": v});
        for (tools, ok) in [
            (
                json!([f(json!({"name": "a", "parameters": {"type": "object"}}))]),
                true,
            ),
            (json!([f(json!({"name": "a"}))]), true),
            (json!([f(json!({"description": "no name"}))]), false),
            (json!([f(json!({"name": ""}))]), false),
            (json!([f(json!({"name": "a", "parameters": "x"}))]), false),
            (json!([{"type": "retrieval"}]), false),
            (json!([7]), false),
        ] {
            let mut out = LineIssues::new(1);
            let line = json!({ "tools": tools });
            check_tools(line.as_object().unwrap(), &mut out);
            assert_eq!(out.has_errors(), !ok, "{tools}: {:?}", out.issues);
        }
    }

    #[test]
    fn call_arguments_must_encode_an_object() {
        let call = |args: Value| {
            json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": args}}]})
        };
        for (args, ok) in [
            (json!("{\"a\": 1}"), true),
            (json!("{}"), true),
            (json!("[1]"), false),
            (json!("not json"), false),
            (json!({"a": 1}), false),
        ] {
            let mut out = LineIssues::new(1);
            let m = message::parse_message(&call(args.clone()), 1, &mut out);
            assert_eq!(m.is_some(), ok, "{args}: {:?}", out.issues);
        }
    }
}
