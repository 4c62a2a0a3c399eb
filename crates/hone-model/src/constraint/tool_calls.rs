//! The grammar of a tool-call answer: Hermes `<tool_call>` blocks (the
//! syntax hone-text's `tool_calls` module parses and its fallback writes)
//! whose JSON names one of the given functions and whose `arguments` match
//! that function's parameter schema.
//!
//! Each function gets its own `%json` document, so a `$ref` into the
//! parameters' `$defs` keeps resolving: the `$defs` are moved to that
//! document's root. JSON is written with Python's separators (`, ` and
//! `: `), as chat templates' `tojson` writes the calls models were trained
//! on.

use serde_json::{json, Value};

use super::{Grammar, GrammarSpec};
use crate::error::Result;

/// One function a call may name: its name and the JSON Schema of its
/// arguments (`None`: any object).
#[derive(Debug, Clone, PartialEq)]
pub struct CallableTool {
    pub name: String,
    pub parameters: Option<Value>,
}

/// What a tool-call grammar allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallRules {
    /// Several calls in a row (`parallel_tool_calls`), else exactly one.
    pub parallel: bool,
    /// Plain text instead of calls is allowed too (`tool_choice: auto`
    /// with strict tools). Such text cannot begin with `<`.
    pub allow_text: bool,
}

impl Grammar {
    /// Answers made of `<tool_call>` blocks calling `tools` (see the module
    /// doc), or free text too when `rules.allow_text`. An error names what
    /// the engine cannot honour in a parameter schema.
    pub fn tool_calls(tools: &[CallableTool], rules: CallRules) -> Result<Self> {
        let mut lark = String::new();
        lark.push_str(if rules.allow_text {
            "start: calls | TEXT\nTEXT: /[^<](.|\\n)*/\n"
        } else {
            "start: calls\n"
        });
        lark.push_str(if rules.parallel {
            "calls: call (\"\\n\" call)*\n"
        } else {
            "calls: call\n"
        });
        lark.push_str("call: \"<tool_call>\\n\" body \"\\n</tool_call>\"\n");
        let names: Vec<String> = (0..tools.len()).map(|i| format!("fn_{i}")).collect();
        lark.push_str(&format!("body: {}\n", names.join(" | ")));
        for (rule, tool) in names.iter().zip(tools) {
            lark.push_str(&format!("{rule}: %json {}\n", call_schema(tool)));
        }
        Grammar::new(GrammarSpec::Lark { grammar: lark })
    }
}

/// `{"name": <const>, "arguments": <parameters>}` as one schema, with the
/// parameters' `$defs` at its root and llguidance's formatting options.
fn call_schema(tool: &CallableTool) -> Value {
    let mut params = tool
        .parameters
        .clone()
        .unwrap_or_else(|| json!({"type": "object"}));
    let defs = params.as_object_mut().and_then(|o| o.remove("$defs"));
    let mut schema = json!({
        "type": "object",
        "properties": {"name": {"const": tool.name}, "arguments": params},
        "required": ["name", "arguments"],
        "additionalProperties": false,
        "x-guidance": {
            "whitespace_flexible": false,
            "item_separator": ", ",
            "key_separator": ": ",
            "lenient": false
        }
    });
    if let Some(defs) = defs {
        schema["$defs"] = defs;
    }
    schema
}
