use serde_json::json;

use super::*;
use crate::case::{parse_cases, EvalCase};
use crate::case_grammar::case_grammar;
use crate::check::check_output;
use crate::run::CaseResult;
use hone_model::constraint::Grammar;

fn case(extra: &str) -> EvalCase {
    // One JSONL line: the tests write `extra` over several lines for reading.
    let extra = extra.replace('\n', " ");
    let line = format!(r#"{{"messages": [{{"role": "user", "content": "q"}}], {extra}}}"#);
    parse_cases(&line).unwrap().remove(0)
}

fn call(name: &str, args: serde_json::Value) -> String {
    format!(
        "<tool_call>\n{}\n</tool_call>",
        json!({"name": name, "arguments": args})
    )
}

#[test]
fn exact_and_subset_arguments_and_parallel_calls_in_any_order() {
    let c = case(
        r#""expected_tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}},
                                    {"name": "get_weather", "arguments": "{\"city\": \"Rome\"}"}]"#,
    );
    let both = format!(
        "{}\n{}",
        call("get_weather", json!({"city": "Rome"})),
        call("get_weather", json!({"city": "Paris"}))
    );
    let o = check_output(&c, &both);
    assert!(o.passed, "{:?}", o.failed_checks);
    let t = o.tool_calls.unwrap();
    assert!(t.right_function && t.exact_arguments && t.subset_arguments && !t.malformed);

    // An extra argument: right function, not exact, but a subset.
    let extra = format!(
        "{}\n{}",
        call("get_weather", json!({"city": "Rome", "unit": "celsius"})),
        call("get_weather", json!({"city": "Paris"}))
    );
    let o = check_output(&c, &extra);
    let t = o.tool_calls.unwrap();
    assert!(t.right_function && !t.exact_arguments && t.subset_arguments);
    assert!(!o.passed);
    assert!(
        o.failed_checks[0].contains("arguments differ"),
        "{:?}",
        o.failed_checks
    );

    // One call where two are expected: the wrong functions.
    let o = check_output(&c, &call("get_weather", json!({"city": "Rome"})));
    let t = o.tool_calls.unwrap();
    assert!(!t.right_function && !t.exact_arguments);
    assert!(
        o.failed_checks[0].contains("expected get_weather, get_weather"),
        "{:?}",
        o.failed_checks
    );
}

#[test]
fn subset_mode_passes_extra_arguments_and_numbers_compare_by_value() {
    let c = case(
        r#""expected_tool_calls": [{"name": "convert", "arguments": {"amount": 100}}], "tool_arguments": "subset""#,
    );
    let o = check_output(&c, &call("convert", json!({"amount": 100.0, "to": "EUR"})));
    assert!(o.passed, "{:?}", o.failed_checks);
    let o = check_output(&c, &call("convert", json!({"amount": 99, "to": "EUR"})));
    assert!(!o.passed);
    let t = o.tool_calls.unwrap();
    assert!(t.right_function && !t.subset_arguments);
}

#[test]
fn no_call_expected_and_malformed_calls() {
    let c = case(r#""expected_tool_calls": []"#);
    let o = check_output(&c, "The capital is Canberra.");
    assert!(o.passed, "{:?}", o.failed_checks);
    assert!(o.tool_calls.unwrap().right_function);
    let o = check_output(&c, &call("f", json!({})));
    assert!(!o.passed);
    assert!(
        o.failed_checks[0].contains("expected no call, got f({})"),
        "{:?}",
        o.failed_checks
    );

    let want = case(r#""expected_tool_calls": [{"name": "f"}]"#);
    let broken = "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": \n</tool_call>";
    let o = check_output(&want, broken);
    let t = o.tool_calls.unwrap();
    assert!(t.malformed && !t.right_function);
    assert!(
        o.failed_checks.iter().any(|f| f.contains("malformed")),
        "{:?}",
        o.failed_checks
    );
    // A bare JSON object is text, not a call (as serving reads it).
    let o = check_output(&want, r#"{"name": "f", "arguments": {}}"#);
    let t = o.tool_calls.unwrap();
    assert!(!t.malformed && !t.right_function);
}

#[test]
fn bad_expectations_are_load_errors() {
    let lines = [
        r#"{"messages": [{"role": "user", "content": "x"}], "expected_tool_calls": {"name": "f"}}"#,
        r#"{"messages": [{"role": "user", "content": "x"}], "expected_tool_calls": [{"arguments": {}}]}"#,
        r#"{"messages": [{"role": "user", "content": "x"}], "expected_tool_calls": [{"name": "f", "arguments": [1]}]}"#,
        r#"{"messages": [{"role": "user", "content": "x"}], "expected_tool_calls": [{"name": "f", "args": {}}]}"#,
        r#"{"messages": [{"role": "user", "content": "x"}], "expected_tool_calls": [], "tool_arguments": "fuzzy"}"#,
        r#"{"messages": [{"role": "user", "content": "x"}], "expected_patterns": ["a"], "tool_arguments": "exact"}"#,
        r#"{"messages": [{"role": "user", "content": "x"}], "expected_patterns": ["a"], "response_format": "json"}"#,
    ]
    .join("\n");
    let errs = parse_cases(&lines).unwrap_err();
    let msgs: Vec<&str> = errs.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(errs.len(), 7, "{msgs:?}");
    assert!(msgs[0].contains("must be a list"), "{}", msgs[0]);
    assert!(msgs[1].contains("[0]: `name`"), "{}", msgs[1]);
    assert!(
        msgs[2].contains("`arguments` must be an object"),
        "{}",
        msgs[2]
    );
    assert!(msgs[3].contains("unknown key `args`"), "{}", msgs[3]);
    assert!(msgs[4].contains("\"exact\" or \"subset\""), "{}", msgs[4]);
    assert!(
        msgs[5].contains("needs `expected_tool_calls`"),
        "{}",
        msgs[5]
    );
    assert!(
        msgs[6].contains("`response_format` must be an object"),
        "{}",
        msgs[6]
    );
}

fn result(outcome: Option<ToolCallOutcome>) -> CaseResult {
    CaseResult {
        line: 1,
        output: String::new(),
        output_tokens: 0,
        prompt_tokens: 0,
        latency_seconds: 0.0,
        passed: false,
        json_valid: None,
        schema_valid: None,
        tool_calls: outcome,
        failed_checks: vec![],
        error: None,
    }
}

#[test]
fn summary_counts_only_tool_cases() {
    assert_eq!(ToolCallSummary::of([None]), None);
    let o = |f: bool, e: bool, m: bool| {
        Some(ToolCallOutcome {
            right_function: f,
            exact_arguments: e,
            subset_arguments: e,
            malformed: m,
        })
    };
    let results = [
        result(o(true, true, false)),
        result(o(true, false, false)),
        result(o(false, false, true)),
        result(None),
    ];
    let s = ToolCallSummary::of(results.iter().map(|r| r.tool_calls.as_ref())).unwrap();
    assert_eq!(
        (s.cases, s.right_function, s.exact_arguments, s.malformed),
        (3, 2, 1, 1)
    );
    assert!((s.right_function_rate - 2.0 / 3.0).abs() < 1e-12);
    let rows = ToolCallSummary::rows(Some(&s));
    assert_eq!(rows[0], ("right function", "66.7% (2/3)".to_string()));
    assert_eq!(rows[1], ("exact arguments", "33.3% (1/3)".to_string()));
    assert_eq!(rows[2], ("malformed calls", "1/3".to_string()));
    assert_eq!(ToolCallSummary::rows(None)[0].1, "-");
}

#[test]
fn grammars_come_from_response_format_then_strict_tools_then_the_schema() {
    let tools = r#""tools": [{"type": "function", "function": {"name": "f", "strict": true,
        "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}}}]"#;
    let schema = r#""expected_schema": {"type": "object"}"#;
    let fmt = r#""response_format": {"type": "json_object"}"#;
    let c = case(&format!("{fmt}, {schema}"));
    assert_eq!(
        case_grammar(&c, false).unwrap(),
        Some(Grammar::json_object())
    );
    let c = case(&format!("{tools}, {schema}"));
    let g = case_grammar(&c, true).unwrap().unwrap();
    assert!(matches!(
        g.spec(),
        hone_model::constraint::GrammarSpec::Lark { .. }
    ));
    let c = case(schema);
    assert_eq!(case_grammar(&c, false).unwrap(), None);
    assert_eq!(
        case_grammar(&c, true).unwrap(),
        Some(Grammar::json_schema(json!({"type": "object"})).unwrap())
    );
    // Not strict: no grammar; text format: none either.
    let loose = tools.replace("\"strict\": true,", "");
    assert_eq!(
        case_grammar(&case(&format!("{loose}, {schema}")), false).unwrap(),
        None
    );
    let text = r#""response_format": {"type": "text"}, "expected_patterns": ["a"]"#;
    assert_eq!(case_grammar(&case(text), true).unwrap(), None);
    let bad = r#""response_format": {"type": "xml"}, "expected_patterns": ["a"]"#;
    assert!(case_grammar(&case(bad), false)
        .unwrap_err()
        .contains("\"json_schema\""));
    let no_schema = r#""response_format": {"type": "json_schema", "json_schema": {"name": "x"}}, "expected_patterns": ["a"]"#;
    assert!(case_grammar(&case(no_schema), false)
        .unwrap_err()
        .contains("schema` is required"));
}

#[test]
fn the_example_tool_cases_load() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/tools");
    for f in [
        "heldout.jsonl",
        "heldout_strict.jsonl",
        "heldout_required.jsonl",
    ] {
        let cases = crate::case::load_cases(&dir.join(f)).unwrap();
        assert_eq!(cases.len(), 30);
        let none = cases
            .iter()
            .filter(|c| c.expected_tool_calls.as_ref().unwrap().calls.is_empty())
            .count();
        assert_eq!(none, 5);
        let strict = f.contains("strict") || f.contains("required");
        for c in &cases {
            assert_eq!(case_grammar(c, false).unwrap().is_some(), strict);
        }
    }
}

/// `tool_choice` per case, as the API: `required` forces the call grammar (no text) even
/// on tools that are not strict, a named function allows one call to it, `none` turns
/// the grammar off, and a bad value or an unknown name is a load error.
#[test]
fn tool_choice_picks_the_call_grammar() {
    let tools = r#""tools": [{"type": "function", "function": {"name": "f",
        "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}}}},
        {"type": "function", "function": {"name": "g", "strict": true}}],
        "expected_patterns": ["a"]"#;
    let lark = |extra: &str| match case_grammar(&case(&format!("{tools}{extra}")), false)
        .unwrap()
        .map(|g| g.spec().clone())
    {
        Some(hone_model::constraint::GrammarSpec::Lark { grammar }) => Some(grammar),
        Some(other) => panic!("{other:?}"),
        None => None,
    };
    let auto = lark("").expect("a strict tool: the auto grammar");
    assert!(auto.contains("TEXT"));
    assert_eq!(lark(r#", "tool_choice": "auto""#), Some(auto));
    let required = lark(r#", "tool_choice": "required""#).unwrap();
    assert!(!required.contains("TEXT") && required.contains("call (\"\\n\" call)*"));
    let named = lark(r#", "tool_choice": {"type": "function", "function": {"name": "f"}}"#);
    let named = named.unwrap();
    assert!(!named.contains("TEXT") && named.contains("\"f\"") && !named.contains("\"g\""));
    assert_eq!(lark(r#", "tool_choice": "none""#), None);
    for (bad, want) in [
        (r#", "tool_choice": "always""#, "must be \"auto\""),
        (
            r#", "tool_choice": {"type": "function", "function": {"name": "h"}}"#,
            "not in `tools`",
        ),
    ] {
        let line = format!(r#"{{"messages": [{{"role": "user", "content": "q"}}], {tools}{bad}}}"#)
            .replace('\n', " ");
        let e = parse_cases(&line).unwrap_err();
        assert!(e[0].message.contains(want), "{}", e[0].message);
    }
    let line = r#"{"messages": [{"role": "user", "content": "q"}], "expected_patterns": ["a"], "tool_choice": "required"}"#;
    assert!(parse_cases(line).unwrap_err()[0]
        .message
        .contains("needs `tools`"));
}
