//! The grammar an eval case is decoded with ([`case_grammar`]): its
//! `response_format`, else the call grammar of its `tool_choice` as
//! `POST /v1/chat/completions` builds it (hone-serve's `chat/tools.rs`):
//! under `auto` when one of its tools is `strict` (text or calls), under
//! `required` always (one or more calls), for a named function exactly one
//! call to it; else its `expected_schema` under `--json-schema-from-case`.

use hone_model::constraint::{CallRules, CallableTool, Grammar};
use serde_json::Value;

use crate::case::{EvalCase, ToolChoice};

/// The grammar `case` is decoded with (see the module doc); `Err` names
/// what the engine cannot honour.
pub fn case_grammar(case: &EvalCase, schema_from_case: bool) -> Result<Option<Grammar>, String> {
    if let Some(format) = &case.response_format {
        return response_format_grammar(format);
    }
    if let Some(g) = tools_grammar(case.tools.as_ref(), &case.tool_choice)? {
        return Ok(Some(g));
    }
    match (&case.expected_schema, schema_from_case) {
        (Some(s), true) => Grammar::json_schema(s.schema.clone())
            .map(Some)
            .map_err(|e| e.to_string()),
        _ => Ok(None),
    }
}

/// `response_format` as the API takes it: `{"type": "text"}`,
/// `{"type": "json_object"}` or `{"type": "json_schema", "json_schema":
/// {"name", "schema", "strict"?}}`.
pub fn response_format_grammar(format: &Value) -> Result<Option<Grammar>, String> {
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(Grammar::json_object())),
        Some("json_schema") => {
            let schema = format
                .get("json_schema")
                .and_then(|j| j.get("schema"))
                .ok_or("`response_format.json_schema.schema` is required")?;
            Grammar::json_schema(schema.clone())
                .map(Some)
                .map_err(|e| format!("`response_format`: {e}"))
        }
        _ => Err(format!(
            "`response_format` must have `type` \"text\", \"json_object\" or \"json_schema\", got {format}"
        )),
    }
}

/// The call grammar of `choice` over `tools` (see the module doc), calls
/// held to the tools' parameter schemas.
fn tools_grammar(tools: Option<&Value>, choice: &ToolChoice) -> Result<Option<Grammar>, String> {
    let tools = tools
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let function = |t: &Value| t.get("function").cloned().unwrap_or(Value::Null);
    let strict = tools
        .iter()
        .any(|t| function(t).get("strict").and_then(Value::as_bool) == Some(true));
    let named = |t: &&Value, n: &str| function(t).get("name").and_then(Value::as_str) == Some(n);
    let (chosen, rules): (Vec<&Value>, CallRules) = match choice {
        ToolChoice::None => return Ok(None),
        ToolChoice::Auto if !strict => return Ok(None),
        ToolChoice::Auto | ToolChoice::Required => (
            tools.iter().collect(),
            CallRules {
                parallel: true,
                allow_text: *choice == ToolChoice::Auto,
            },
        ),
        ToolChoice::Named(n) => (
            tools.iter().filter(|t| named(t, n)).collect(),
            CallRules {
                parallel: false,
                allow_text: false,
            },
        ),
    };
    let callable = chosen
        .into_iter()
        .map(|t| {
            let f = function(t);
            let name = f
                .get("name")
                .and_then(Value::as_str)
                .ok_or("a tool has no function name")?;
            Ok(CallableTool {
                name: name.to_string(),
                parameters: f.get("parameters").filter(|p| p.is_object()).cloned(),
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Grammar::tool_calls(&callable, rules)
        .map(Some)
        .map_err(|e| format!("`tools`: {e}"))
}
