//! Checking function calling: `tools`, `tool_choice` and
//! `parallel_tool_calls` become a [`ToolPlan`] (the tool list the chat
//! template renders, whether answers are read for calls) and, when calls
//! must follow the tools' schemas, the grammar that holds them to it.
//!
//! Every problem is a 400 naming the field (`tools[1].function.name`,
//! `tool_choice`), found before anything is generated: a parameter schema
//! the grammar engine cannot honour is compiled here.
//!
//! When the grammar applies: `tool_choice: "required"` (one or more calls
//! to any tool), a named function (exactly one call to it), and `auto` when
//! any tool is `strict` (text, or calls held to the schemas). Under plain
//! `auto` the model chooses freely and a malformed call is answered as text.
//!
//! [`read_answer`] reads a finished answer for calls, for the JSON response.

use hone_model::constraint::{CallRules, CallableTool, Grammar};
use hone_text::{parse_tool_calls, CallEvent, ToolCallStream};
use serde_json::{Map, Value};

use crate::api::{ChatCompletionRequest, FinishReason};
use crate::error::ApiError;

/// The checked function-calling part of a request.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolPlan {
    /// The tools, as given (a JSON array), for the chat template.
    pub tools: Value,
    /// Whether answers are read for `<tool_call>` blocks (not under
    /// `tool_choice: "none"`).
    pub parse_calls: bool,
    /// Whether a grammar holds calls to the tools' schemas (`required`, a
    /// named function, strict tools), so a call cannot turn out malformed
    /// and can be streamed as it is written.
    pub calls_held: bool,
}

/// `tool_choice`, read.
#[derive(Debug, Clone, PartialEq)]
enum Choice {
    None,
    Auto,
    Required,
    Named(String),
}

/// Checks the tool fields of `req`: `None` when it has no tools, else the
/// plan and the grammar answers must match (if any).
pub fn plan_tools(
    req: &ChatCompletionRequest,
) -> Result<(Option<ToolPlan>, Option<Grammar>), ApiError> {
    let tools = req.tools.as_deref().unwrap_or_default();
    let choice = tool_choice(req.tool_choice.as_ref())?;
    if tools.is_empty() {
        return match choice {
            None | Some(Choice::None) | Some(Choice::Auto) => Ok((None, None)),
            Some(_) => Err(ApiError::invalid(
                "tool_choice",
                "`tool_choice` other than \"none\" or \"auto\" needs `tools`.",
            )),
        };
    }
    let callable = tools
        .iter()
        .enumerate()
        .map(|(i, t)| check_tool(i, t))
        .collect::<Result<Vec<_>, _>>()?;
    for (i, t) in callable.iter().enumerate() {
        if callable[..i].iter().any(|o| o.0.name == t.0.name) {
            return Err(invalid_at(
                format!("tools[{i}].function.name"),
                format!("two tools are named `{}`.", t.0.name),
            ));
        }
    }
    let parallel = match &req.parallel_tool_calls {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(ApiError::invalid(
                "parallel_tool_calls",
                "`parallel_tool_calls` must be a boolean.",
            ))
        }
    };
    let choice = choice.unwrap_or(Choice::Auto);
    let grammar = call_grammar(&choice, &callable, parallel)?;
    let plan = ToolPlan {
        tools: Value::Array(tools.to_vec()),
        parse_calls: choice != Choice::None,
        calls_held: grammar.is_some(),
    };
    Ok((Some(plan), grammar))
}

/// The grammar of the answer for `choice` (see the module doc).
fn call_grammar(
    choice: &Choice,
    tools: &[(CallableTool, bool)],
    parallel: bool,
) -> Result<Option<Grammar>, ApiError> {
    let all = || tools.iter().map(|t| t.0.clone()).collect::<Vec<_>>();
    let (chosen, rules) = match choice {
        Choice::None => return Ok(None),
        Choice::Auto if !tools.iter().any(|t| t.1) => return Ok(None),
        Choice::Auto => (
            all(),
            CallRules {
                parallel,
                allow_text: true,
            },
        ),
        Choice::Required => (
            all(),
            CallRules {
                parallel,
                allow_text: false,
            },
        ),
        Choice::Named(name) => {
            let Some(t) = tools.iter().find(|t| &t.0.name == name) else {
                return Err(ApiError::invalid(
                    "tool_choice",
                    format!("`tool_choice` names the function `{name}`, which is not in `tools`."),
                ));
            };
            let rules = CallRules {
                parallel: false,
                allow_text: false,
            };
            (vec![t.0.clone()], rules)
        }
    };
    Grammar::tool_calls(&chosen, rules).map(Some).map_err(|e| {
        ApiError::invalid(
            "tools",
            format!("the tools' parameter schemas cannot be used: {e}"),
        )
    })
}

fn tool_choice(v: Option<&Value>) -> Result<Option<Choice>, ApiError> {
    let bad = || {
        ApiError::invalid(
            "tool_choice",
            "`tool_choice` must be \"none\", \"auto\", \"required\" or \
             {\"type\": \"function\", \"function\": {\"name\": ...}}.",
        )
    };
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => match s.as_str() {
            "none" => Ok(Some(Choice::None)),
            "auto" => Ok(Some(Choice::Auto)),
            "required" => Ok(Some(Choice::Required)),
            _ => Err(bad()),
        },
        Some(Value::Object(o)) => {
            if o.get("type").and_then(Value::as_str) != Some("function") {
                return Err(bad());
            }
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(bad)?;
            Ok(Some(Choice::Named(name.to_string())))
        }
        Some(_) => Err(bad()),
    }
}

/// One tool: `{"type": "function", "function": {"name", "description"?,
/// "parameters"?, "strict"?}}`. Returns it and whether it is strict.
fn check_tool(i: usize, tool: &Value) -> Result<(CallableTool, bool), ApiError> {
    let at = |field: &str| {
        if field.is_empty() {
            format!("tools[{i}]")
        } else {
            format!("tools[{i}].{field}")
        }
    };
    let obj = tool
        .as_object()
        .ok_or_else(|| invalid_at(at(""), "each tool must be an object.".into()))?;
    if obj.get("type").and_then(Value::as_str) != Some("function") {
        return Err(invalid_at(
            at("type"),
            "`type` must be \"function\" (the only kind of tool).".into(),
        ));
    }
    let f = obj
        .get("function")
        .and_then(Value::as_object)
        .ok_or_else(|| {
            invalid_at(
                at("function"),
                "a tool needs a `function` object with a `name`.".into(),
            )
        })?;
    let name = function_name(f).map_err(|m| invalid_at(at("function.name"), m))?;
    if f.get("description").is_some_and(|d| !d.is_string()) {
        return Err(invalid_at(
            at("function.description"),
            "`description` must be a string.".into(),
        ));
    }
    let strict = match f.get("strict") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(invalid_at(
                at("function.strict"),
                "`strict` must be a boolean.".into(),
            ))
        }
    };
    let parameters = match f.get("parameters") {
        None | Some(Value::Null) => None,
        Some(p @ Value::Object(_)) => {
            Grammar::json_schema(p.clone()).map_err(|e| {
                invalid_at(
                    at("function.parameters"),
                    format!("the parameter schema of `{name}` cannot be used: {e}"),
                )
            })?;
            Some(p.clone())
        }
        Some(_) => {
            return Err(invalid_at(
                at("function.parameters"),
                "`parameters` must be a JSON Schema object.".into(),
            ))
        }
    };
    Ok((CallableTool { name, parameters }, strict))
}

/// A function name as OpenAI allows it: 1 to 64 of `a-z A-Z 0-9 _ -`.
fn function_name(f: &Map<String, Value>) -> Result<String, String> {
    let name = match f.get("name") {
        Some(Value::String(n)) => n,
        None | Some(Value::Null) => return Err("a function needs a `name`.".into()),
        Some(_) => return Err("`name` must be a string.".into()),
    };
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !ok {
        return Err(format!(
            "a function name must be 1 to 64 letters, digits, `_` or `-`, got {name:?}."
        ));
    }
    Ok(name.clone())
}

/// A finished answer read for tool calls, as the JSON response carries it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadAnswer {
    pub content: Option<String>,
    /// Each call's function name and arguments (JSON text).
    pub calls: Vec<(String, String)>,
    pub finish: FinishReason,
}

/// Reads a finished answer's `text` for tool calls: well-formed calls
/// finish `tool_calls`, and text without them stays content (a malformed
/// call too). A grammar-held call (`held`) cut short by `max_tokens`
/// (`reason` is `length`) is answered as the stream sends it, and as OpenAI
/// answers a call cut by `max_tokens`: the call, with its name and the
/// arguments written so far (incomplete JSON), content null unless text
/// came before it, and finish `length`.
pub fn read_answer(text: &str, reason: FinishReason, held: bool) -> ReadAnswer {
    let parsed = parse_tool_calls(text);
    if held && reason == FinishReason::Length && parsed.calls.is_empty() {
        if let Some(cut) = cut_call(text) {
            return cut;
        }
    }
    let calls: Vec<(String, String)> = parsed
        .calls
        .iter()
        .map(|c| (c.name.clone(), c.arguments_json()))
        .collect();
    let finish = if calls.is_empty() {
        reason
    } else {
        FinishReason::ToolCalls
    };
    ReadAnswer {
        content: parsed.content,
        calls,
        finish,
    }
}

/// What a live [`ToolCallStream`] sends for `text`, joined: `None` when it
/// sent no call (the cut came before a call's name was complete).
fn cut_call(text: &str) -> Option<ReadAnswer> {
    let mut stream = ToolCallStream::live();
    let mut events = stream.push(text);
    events.extend(stream.finish().0);
    let mut content = String::new();
    let mut calls: Vec<(String, String)> = Vec::new();
    for e in events {
        match e {
            CallEvent::Content(t) => content.push_str(&t),
            CallEvent::Start { name, .. } => calls.push((name, String::new())),
            CallEvent::Arguments { index, fragment } => {
                if let Some(c) = calls.get_mut(index) {
                    c.1.push_str(&fragment);
                }
            }
        }
    }
    (!calls.is_empty()).then(|| ReadAnswer {
        content: (!content.is_empty()).then_some(content),
        calls,
        finish: FinishReason::Length,
    })
}

fn invalid_at(param: String, message: String) -> ApiError {
    ApiError::InvalidRequest {
        message: format!("{param}: {message}"),
        param: Some(param),
        code: None,
    }
}

#[cfg(test)]
#[path = "tools_tests.rs"]
mod tests;
