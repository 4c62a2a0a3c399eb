//! Evaluation cases: one JSONL line each,
//! `{"messages": [...], "expected_patterns": [...], "forbidden_patterns": [...],
//! "expected_json": {...}, "expected_schema": {...}, "expected_tool_calls":
//! [...], "ideal": "..."}`, with optional `tools` and `response_format` for
//! generation. Every field but `messages` is optional, but a case must
//! check something.
//!
//! Everything that can be wrong with a case (bad JSON, a regex that does not
//! compile, an empty pattern) is found at load time, for every line at once,
//! so an evaluation never dies half-way through a model run.

use std::path::Path;
use std::sync::Arc;

use hone_text::{ChatMessage, Role};
use regex::Regex;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::{CaseError, EvalError, Result};
use crate::tool_check::ExpectedToolCalls;

/// Prefix that makes a pattern a regular expression.
pub const REGEX_PREFIX: &str = "re:";

/// One expected or forbidden pattern.
#[derive(Debug, Clone)]
pub enum Pattern {
    /// Case-insensitive substring (the seed's `pattern.lower() in actual.lower()`).
    Substring { raw: String, lower: String },
    /// `re:<regex>`, matched as written (add `(?i)` for case-insensitive).
    Regex { raw: String, re: Regex },
}

impl Pattern {
    /// Parses a pattern as written in a case file.
    pub fn parse(raw: &str) -> std::result::Result<Self, String> {
        if let Some(expr) = raw.strip_prefix(REGEX_PREFIX) {
            if expr.is_empty() {
                return Err("empty regex after `re:`".into());
            }
            let re = Regex::new(expr).map_err(|e| format!("invalid regex `{expr}`: {e}"))?;
            return Ok(Pattern::Regex {
                raw: raw.to_string(),
                re,
            });
        }
        if raw.trim().is_empty() {
            return Err("empty pattern (it would match everything)".into());
        }
        Ok(Pattern::Substring {
            raw: raw.to_string(),
            lower: raw.to_lowercase(),
        })
    }

    /// The pattern as written in the file.
    pub fn raw(&self) -> &str {
        match self {
            Pattern::Substring { raw, .. } | Pattern::Regex { raw, .. } => raw,
        }
    }

    /// Whether `text` contains the pattern.
    pub fn matches(&self, text: &str) -> bool {
        match self {
            Pattern::Substring { lower, .. } => text.to_lowercase().contains(lower.as_str()),
            Pattern::Regex { re, .. } => re.is_match(text),
        }
    }
}

/// One evaluation case, validated.
#[derive(Debug, Clone)]
pub struct EvalCase {
    /// 1-based line in the cases file (the case's identity in reports).
    pub line: usize,
    /// Optional `id` from the file, shown next to the line number.
    pub id: Option<String>,
    /// The prompt conversation (a trailing assistant message is moved to `ideal`).
    pub messages: Vec<ChatMessage>,
    pub tools: Option<Value>,
    pub expected_patterns: Vec<Pattern>,
    pub forbidden_patterns: Vec<Pattern>,
    /// Fields the output's JSON object must have, with these values.
    pub expected_json: Option<Map<String, Value>>,
    /// A JSON Schema the output must validate against.
    pub expected_schema: Option<CaseSchema>,
    /// The calls the answer must make (see [`crate::tool_check`]).
    pub expected_tool_calls: Option<ExpectedToolCalls>,
    /// `response_format` as the API takes it: the answer is decoded with
    /// its grammar.
    pub response_format: Option<Value>,
    /// `tool_choice` as the API takes it (`auto` when absent): `required` or a
    /// named function forces calls through the call grammar.
    pub tool_choice: ToolChoice,
    /// A reference answer, shown in reports (not checked).
    pub ideal: Option<String>,
}

impl EvalCase {
    /// The last user message: the "input" of seed 001's failure list.
    pub fn input(&self) -> &str {
        self.messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .or(self.messages.last())
            .map(|m| m.content.as_str())
            .unwrap_or("")
    }

    /// Human-readable list of what the case expects.
    pub fn expected(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .expected_patterns
            .iter()
            .map(|p| p.raw().to_string())
            .collect();
        out.extend(
            self.forbidden_patterns
                .iter()
                .map(|p| format!("not: {}", p.raw())),
        );
        if let Some(j) = &self.expected_json {
            out.push(format!("json: {}", Value::Object(j.clone())));
        }
        if let Some(s) = &self.expected_schema {
            out.push(format!("schema: {}", s.schema));
        }
        if let Some(t) = &self.expected_tool_calls {
            out.push(t.describe());
        }
        out
    }
}

/// A case's `expected_schema`, compiled once when the file is loaded, so a
/// schema the validator refuses is a load error with its line number.
#[derive(Clone)]
pub struct CaseSchema {
    /// The schema as written (also what `--json-schema-from-case` decodes with).
    pub schema: Value,
    validator: Arc<jsonschema::Validator>,
}

impl CaseSchema {
    /// Compiles `schema` (checked against its meta-schema first).
    pub fn new(schema: Value) -> std::result::Result<Self, String> {
        if !schema.is_object() {
            return Err(format!(
                "`expected_schema` must be a JSON Schema object, got {schema}"
            ));
        }
        let validator = jsonschema::validator_for(&schema)
            .map_err(|e| format!("`expected_schema` is not a valid JSON Schema: {e}"))?;
        Ok(CaseSchema {
            schema,
            validator: Arc::new(validator),
        })
    }

    /// `None` when `value` validates, else the first error with where it is.
    pub fn violation(&self, value: &Value) -> Option<String> {
        let err = self.validator.iter_errors(value).next()?;
        let at = err.instance_path.to_string();
        Some(if at.is_empty() {
            err.to_string()
        } else {
            format!("{err} (at {at})")
        })
    }
}

impl std::fmt::Debug for CaseSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaseSchema")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

/// A line as written; unknown fields are refused so a typo
/// (`expected_pattern`) cannot silently turn a case into a pass.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCase {
    messages: Vec<ChatMessage>,
    #[serde(default)]
    expected_patterns: Vec<String>,
    #[serde(default)]
    forbidden_patterns: Vec<String>,
    #[serde(default)]
    expected_json: Option<Value>,
    #[serde(default)]
    expected_schema: Option<Value>,
    #[serde(default)]
    ideal: Option<String>,
    #[serde(default)]
    expected_tool_calls: Option<Value>,
    #[serde(default)]
    tool_arguments: Option<Value>,
    #[serde(default)]
    response_format: Option<Value>,
    #[serde(default)]
    tools: Option<Value>,
    #[serde(default)]
    tool_choice: Option<Value>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    metadata: Option<Value>,
}

/// Reads and validates a cases file.
pub fn load_cases(path: &Path) -> Result<Vec<EvalCase>> {
    let text = std::fs::read_to_string(path).map_err(|source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    match parse_cases(&text) {
        Ok(c) if c.is_empty() => Err(EvalError::NoCases(path.to_path_buf())),
        Ok(c) => Ok(c),
        Err(errors) => Err(EvalError::InvalidCases {
            path: path.to_path_buf(),
            errors,
        }),
    }
}

/// Parses JSONL cases; blank lines are skipped. Returns every bad line.
pub fn parse_cases(text: &str) -> std::result::Result<Vec<EvalCase>, Vec<CaseError>> {
    let mut cases = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        match parse_line(line, line_no) {
            Ok(c) => cases.push(c),
            Err(message) => errors.push(CaseError {
                line: line_no,
                message,
            }),
        }
    }
    if errors.is_empty() {
        Ok(cases)
    } else {
        Err(errors)
    }
}

fn parse_line(line: &str, line_no: usize) -> std::result::Result<EvalCase, String> {
    let raw: RawCase = serde_json::from_str(line.trim_start_matches('\u{feff}')).map_err(|e| {
        format!(
            "{e} (a case is {{\"messages\": [...], \"expected_patterns\": [...], \
             \"forbidden_patterns\": [...], \"expected_json\": {{...}}, \"expected_schema\": {{...}}, \
             \"ideal\": \"...\"}})"
        )
    })?;
    let mut messages = raw.messages;
    let mut ideal = raw.ideal;
    if messages.last().is_some_and(|m| m.role == Role::Assistant) {
        // A held-out chat: its answer is the reference, not part of the prompt.
        let answer = messages.pop().map(|m| m.content);
        ideal = ideal.or(answer);
    }
    if !messages.iter().any(|m| m.role == Role::User) {
        return Err("`messages` needs at least one user message".into());
    }
    let expected_patterns = patterns(&raw.expected_patterns, "expected_patterns")?;
    let forbidden_patterns = patterns(&raw.forbidden_patterns, "forbidden_patterns")?;
    let expected_json = match raw.expected_json {
        None => None,
        Some(Value::Object(m)) => Some(m),
        Some(other) => {
            return Err(format!(
                "`expected_json` must be an object of expected fields, got {other}"
            ))
        }
    };
    let expected_schema = raw.expected_schema.map(CaseSchema::new).transpose()?;
    let expected_tool_calls = match raw.expected_tool_calls {
        Some(calls) => Some(ExpectedToolCalls::parse(calls, raw.tool_arguments)?),
        None if raw.tool_arguments.is_some() => {
            return Err("`tool_arguments` needs `expected_tool_calls`".into())
        }
        None => None,
    };
    if raw.response_format.as_ref().is_some_and(|f| !f.is_object()) {
        return Err(
            "`response_format` must be an object such as {\"type\": \"json_object\"}".into(),
        );
    }
    let tool_choice = ToolChoice::parse(raw.tool_choice.as_ref(), raw.tools.as_ref())?;
    if expected_patterns.is_empty()
        && forbidden_patterns.is_empty()
        && expected_json.is_none()
        && expected_schema.is_none()
        && expected_tool_calls.is_none()
    {
        return Err(
            "the case checks nothing: give expected_patterns, forbidden_patterns, \
                    expected_json, expected_schema or expected_tool_calls"
                .into(),
        );
    }
    Ok(EvalCase {
        line: line_no,
        id: raw.id,
        messages,
        tools: raw.tools,
        expected_patterns,
        forbidden_patterns,
        expected_json,
        expected_schema,
        expected_tool_calls,
        response_format: raw.response_format,
        tool_choice,
        ideal,
    })
}

/// A case's `tool_choice`, with the API's values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ToolChoice {
    /// Text or calls; calls held to the schemas when a tool is `strict`.
    #[default]
    Auto,
    /// No grammar (the answer is read as it comes).
    None,
    /// One or more calls to the tools, held to their schemas.
    Required,
    /// Exactly one call to this function.
    Named(String),
}

impl ToolChoice {
    /// `"auto"`, `"none"`, `"required"` or `{"type": "function", "function":
    /// {"name": …}}`; anything but absent needs `tools`, and a named function
    /// must be one of them.
    fn parse(v: Option<&Value>, tools: Option<&Value>) -> std::result::Result<Self, String> {
        let Some(v) = v else {
            return Ok(Self::Auto);
        };
        let names: Vec<&str> = tools
            .and_then(Value::as_array)
            .map(|ts| {
                ts.iter()
                    .filter_map(|t| t.get("function")?.get("name")?.as_str())
                    .collect()
            })
            .unwrap_or_default();
        if names.is_empty() {
            return Err("`tool_choice` needs `tools`".into());
        }
        let choice = match (v.as_str(), v.get("function").and_then(|f| f.get("name"))) {
            (Some("auto"), _) => Self::Auto,
            (Some("none"), _) => Self::None,
            (Some("required"), _) => Self::Required,
            (None, Some(Value::String(name)))
                if v.get("type") == Some(&Value::from("function")) =>
            {
                Self::Named(name.clone())
            }
            _ => {
                return Err(format!(
                    "`tool_choice` must be \"auto\", \"none\", \"required\" or \
                     {{\"type\": \"function\", \"function\": {{\"name\": …}}}}, got {v}"
                ))
            }
        };
        match &choice {
            Self::Named(n) if !names.contains(&n.as_str()) => Err(format!(
                "`tool_choice` names the function `{n}`, which is not in `tools`"
            )),
            _ => Ok(choice),
        }
    }
}

fn patterns(raw: &[String], field: &str) -> std::result::Result<Vec<Pattern>, String> {
    raw.iter()
        .enumerate()
        .map(|(i, p)| Pattern::parse(p).map_err(|e| format!("`{field}`[{i}]: {e}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"{"messages": [{"role": "user", "content": "hi"}], "expected_patterns": ["Hello", "re:^Hi\\b"]}"#;

    #[test]
    fn parses_patterns_and_line_numbers() {
        let text = format!("\n{OK}\n\n{OK}\n");
        let cases = parse_cases(&text).unwrap();
        assert_eq!(cases.len(), 2);
        assert_eq!(cases[0].line, 2);
        assert_eq!(cases[1].line, 4);
        assert!(matches!(
            cases[0].expected_patterns[1],
            Pattern::Regex { .. }
        ));
        assert_eq!(cases[0].input(), "hi");
    }

    #[test]
    fn every_bad_line_is_reported_with_its_number() {
        let text = [
            OK,
            "not json",
            r#"{"messages": [{"role": "user", "content": "x"}], "expected_patterns": ["re:(unclosed"]}"#,
            r#"{"messages": [{"role": "user", "content": "x"}]}"#,
            r#"{"messages": [{"role": "user", "content": "x"}], "expected_pattern": ["typo"]}"#,
            r#"{"messages": [{"role": "user", "content": "x"}], "expected_json": [1]}"#,
            r#"{"messages": [{"role": "user", "content": "x"}], "forbidden_patterns": [""]}"#,
            r#"{"messages": [{"role": "system", "content": "x"}], "expected_patterns": ["a"]}"#,
        ]
        .join("\n");
        let errs = parse_cases(&text).unwrap_err();
        let lines: Vec<usize> = errs.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![2, 3, 4, 5, 6, 7, 8]);
        assert!(
            errs[1].message.contains("invalid regex `(unclosed`"),
            "{}",
            errs[1].message
        );
        assert!(errs[1].message.contains("expected_patterns`[0]"));
        assert!(errs[2].message.contains("checks nothing"));
        assert!(errs[3].message.contains("expected_pattern"));
        assert!(errs[4].message.contains("must be an object"));
        assert!(errs[5].message.contains("empty pattern"));
        assert!(errs[6].message.contains("user message"));
    }

    #[test]
    fn expected_schema_is_compiled_at_load() {
        let ok = r#"{"messages": [{"role": "user", "content": "x"}], "expected_schema": {"type": "object", "required": ["a"]}}"#;
        let c = &parse_cases(ok).unwrap()[0];
        let s = c.expected_schema.as_ref().unwrap();
        assert_eq!(s.violation(&serde_json::json!({"a": 1})), None);
        let v = s.violation(&serde_json::json!({"b": 1})).unwrap();
        assert!(v.contains("\"a\" is a required property"), "{v}");
        let bad = [
            r#"{"messages": [{"role": "user", "content": "x"}], "expected_schema": {"type": "no-such-type"}}"#,
            r#"{"messages": [{"role": "user", "content": "x"}], "expected_schema": "object"}"#,
        ]
        .join("\n");
        let errs = parse_cases(&bad).unwrap_err();
        assert_eq!(errs.len(), 2);
        assert!(
            errs[0].message.contains("not a valid JSON Schema"),
            "{}",
            errs[0].message
        );
        assert!(errs[1].message.contains("must be a JSON Schema object"));
    }

    #[test]
    fn trailing_assistant_message_becomes_the_ideal() {
        let line = r#"{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "expected_patterns": ["a"]}"#;
        let c = &parse_cases(line).unwrap()[0];
        assert_eq!(c.messages.len(), 1);
        assert_eq!(c.ideal.as_deref(), Some("a"));
    }

    #[test]
    fn load_reports_path_and_all_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cases.jsonl");
        std::fs::write(&p, "x\ny\n").unwrap();
        let e = load_cases(&p).unwrap_err().to_string();
        assert!(e.contains("2 invalid case line(s)"), "{e}");
        assert!(e.contains("line 1:") && e.contains("line 2:"), "{e}");
        std::fs::write(&p, "\n").unwrap();
        assert!(matches!(load_cases(&p), Err(EvalError::NoCases(_))));
    }

    #[test]
    fn support_example_cases_load() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/support/eval.jsonl");
        let cases = load_cases(&p).unwrap();
        assert!(cases.len() >= 10);
        assert!(cases.iter().all(|c| !c.expected_patterns.is_empty()));
    }
}
