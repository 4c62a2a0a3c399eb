//! Checking one output against its case: expected and forbidden patterns,
//! the expected JSON fields, the case's JSON Schema and its expected tool
//! calls ([`crate::tool_check`]).

use serde::Serialize;
use serde_json::{Map, Value};

use crate::case::EvalCase;
pub use crate::tool_check::json_eq;
use crate::tool_check::{check_tool_calls, ToolCallOutcome};

/// The verdict on one output.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckOutcome {
    pub passed: bool,
    /// For cases with `expected_json`: whether the output parsed as a JSON
    /// object (`None` for other cases, so they do not count in the rate).
    pub json_valid: Option<bool>,
    /// For cases with `expected_schema`: whether the output parsed as JSON
    /// and validated against the schema (`None` for other cases).
    pub schema_valid: Option<bool>,
    /// For cases with `expected_tool_calls`: the calls against them.
    pub tool_calls: Option<ToolCallOutcome>,
    /// One line per failed check, e.g. `missing "Hi there!"`.
    pub failed_checks: Vec<String>,
}

/// Runs every check of `case` on `output`.
pub fn check_output(case: &EvalCase, output: &str) -> CheckOutcome {
    let mut failed = Vec::new();
    for p in &case.expected_patterns {
        if !p.matches(output) {
            failed.push(format!("missing {:?}", p.raw()));
        }
    }
    for p in &case.forbidden_patterns {
        if p.matches(output) {
            failed.push(format!("forbidden {:?} present", p.raw()));
        }
    }
    let json_valid =
        case.expected_json
            .as_ref()
            .map(|expected| match extract_json_object(output) {
                Some(obj) => {
                    failed.extend(field_mismatches(expected, &obj));
                    true
                }
                None => {
                    failed.push("output is not a JSON object".into());
                    false
                }
            });
    let schema_valid = case.expected_schema.as_ref().map(|schema| {
        let problem = match extract_json(output) {
            Some(value) => schema.violation(&value),
            None => Some("output is not JSON".into()),
        };
        match problem {
            None => true,
            Some(p) => {
                failed.push(format!("schema: {p}"));
                false
            }
        }
    });
    let tool_calls = case.expected_tool_calls.as_ref().map(|expected| {
        let (outcome, problems) = check_tool_calls(expected, output);
        failed.extend(problems);
        outcome
    });
    CheckOutcome {
        passed: failed.is_empty(),
        json_valid,
        schema_valid,
        tool_calls,
        failed_checks: failed,
    }
}

/// The JSON object an output holds: the whole output (surrounding whitespace
/// allowed), or the body of a single Markdown code fence (```` ```json ````
/// or plain ```` ``` ````) that is the whole output. Prose around the JSON
/// is not accepted: a format fine-tune is judged on emitting only JSON.
pub fn extract_json_object(output: &str) -> Option<Map<String, Value>> {
    match extract_json(output) {
        Some(Value::Object(m)) => Some(m),
        _ => None,
    }
}

/// The JSON document an output holds, by the same rule as
/// [`extract_json_object`] but of any type (a schema may ask for an array).
pub fn extract_json(output: &str) -> Option<Value> {
    let t = output.trim();
    let body = match t.strip_prefix("```") {
        Some(rest) => {
            let (info, after) = rest.split_once('\n')?;
            let info = info.trim();
            if !(info.is_empty() || info.eq_ignore_ascii_case("json")) {
                return None;
            }
            after.trim_end().strip_suffix("```")?
        }
        None => t,
    };
    serde_json::from_str::<Value>(body.trim()).ok()
}

fn field_mismatches(expected: &Map<String, Value>, got: &Map<String, Value>) -> Vec<String> {
    expected
        .iter()
        .filter_map(|(k, want)| match got.get(k) {
            None => Some(format!("JSON field {k:?} missing")),
            Some(v) if !json_eq(want, v) => {
                Some(format!("JSON field {k:?}: expected {want}, got {v}"))
            }
            Some(_) => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::case::parse_cases;

    fn case(extra: &str) -> EvalCase {
        let line = format!(r#"{{"messages": [{{"role": "user", "content": "q"}}], {extra}}}"#);
        parse_cases(&line).unwrap().remove(0)
    }

    #[test]
    fn substring_patterns_are_case_insensitive() {
        let c = case(r#""expected_patterns": ["Forgot Password", "techcorp.com"]"#);
        assert!(check_output(&c, "Go to TECHCORP.COM and click forgot password").passed);
        let o = check_output(&c, "Go to techcorp.com");
        assert!(!o.passed);
        assert_eq!(o.failed_checks, vec![r#"missing "Forgot Password""#]);
        assert_eq!(o.json_valid, None);
    }

    #[test]
    fn regex_patterns_match_as_written() {
        let c = case(r#""expected_patterns": ["re:^Answer: .+ \\| Source: policy-\\d+$"]"#);
        assert!(check_output(&c, "Answer: yes | Source: policy-3").passed);
        assert!(!check_output(&c, "answer: yes | Source: policy-3").passed);
        assert!(!check_output(&c, "Answer: yes | Source: policy-x").passed);
        let ci = case(r#""expected_patterns": ["re:(?i)^hi"]"#);
        assert!(check_output(&ci, "HI there").passed);
    }

    #[test]
    fn forbidden_patterns_fail_the_case() {
        let c = case(r#""forbidden_patterns": ["As an AI", "re:\\bsorry\\b"]"#);
        assert!(check_output(&c, "Sure, here it is.").passed);
        let o = check_output(&c, "as an ai, I am sorry");
        assert_eq!(check_output(&c, "Sorry").failed_checks.len(), 0);
        assert_eq!(o.failed_checks.len(), 2);
        assert!(check_output(&c, "no sorrys given").passed);
    }

    #[test]
    fn json_objects_with_whitespace_or_fences() {
        let obj = |s: &str| extract_json_object(s).is_some();
        assert!(obj(" \n{\"a\": 1}\n "));
        assert!(obj("```json\n{\"a\": 1}\n```"));
        assert!(obj("```JSON\n{\"a\": 1}```"));
        assert!(obj("  ```\n{\"a\": 1}\n```  \n"));
        assert!(!obj("Here it is: {\"a\": 1}"));
        assert!(!obj("```python\n{\"a\": 1}\n```"));
        assert!(!obj("```json\n{\"a\": 1}"));
        assert!(!obj("[1, 2]"));
        assert!(!obj("{\"a\": 1"));
        assert!(!obj(""));
    }

    #[test]
    fn expected_json_fields_must_equal() {
        let c = case(r#""expected_json": {"team": "Colts", "n": 1, "tags": ["a"]}"#);
        let o = check_output(
            &c,
            "```json\n{\"team\": \"Colts\", \"n\": 1.0, \"tags\": [\"a\"], \"extra\": true}\n```",
        );
        assert!(o.passed, "{:?}", o.failed_checks);
        assert_eq!(o.json_valid, Some(true));
        let o = check_output(&c, r#"{"team": "colts", "n": 2}"#);
        assert!(!o.passed);
        assert_eq!(o.json_valid, Some(true));
        assert_eq!(o.failed_checks.len(), 3, "{:?}", o.failed_checks);
        assert!(o
            .failed_checks
            .iter()
            .any(|f| f.contains("\"tags\" missing")));
        let o = check_output(&c, "team: Colts");
        assert_eq!(o.json_valid, Some(false));
        assert_eq!(o.failed_checks, vec!["output is not a JSON object"]);
    }

    #[test]
    fn schema_validity_is_checked_and_counted() {
        let c = case(
            r#""expected_schema": {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}"#,
        );
        let o = check_output(&c, "```json\n{\"n\": 3}\n```");
        assert!(o.passed, "{:?}", o.failed_checks);
        assert_eq!((o.schema_valid, o.json_valid), (Some(true), None));
        let o = check_output(&c, r#"{"n": "three"}"#);
        assert_eq!(o.schema_valid, Some(false));
        assert_eq!(o.failed_checks.len(), 1);
        assert!(
            o.failed_checks[0].starts_with("schema: "),
            "{:?}",
            o.failed_checks
        );
        assert!(o.failed_checks[0].contains("/n"), "{:?}", o.failed_checks);
        let o = check_output(&c, "n is 3");
        assert_eq!(o.schema_valid, Some(false));
        assert_eq!(o.failed_checks, vec!["schema: output is not JSON"]);
        let arr = case(r#""expected_schema": {"type": "array", "maxItems": 2}"#);
        assert_eq!(check_output(&arr, "[1, 2]").schema_valid, Some(true));
        assert_eq!(check_output(&arr, "[1, 2, 3]").schema_valid, Some(false));
    }
}
