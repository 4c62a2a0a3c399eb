use serde_json::json;

use super::*;

fn req(extra: Value) -> ChatCompletionRequest {
    let mut v = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    serde_json::from_value(v).unwrap()
}

fn weather(strict: bool) -> Value {
    json!({"type": "function", "function": {
        "name": "get_weather", "description": "Weather in a city", "strict": strict,
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"], "additionalProperties": false}}})
}

#[test]
fn no_tools_means_no_plan() {
    assert_eq!(plan_tools(&req(json!({}))).unwrap(), (None, None));
    let (p, g) = plan_tools(&req(json!({"tools": [], "tool_choice": "auto"}))).unwrap();
    assert!(p.is_none() && g.is_none());
}

#[test]
fn the_choice_decides_parsing_and_the_grammar() {
    let tools = json!([weather(false)]);
    let (p, g) = plan_tools(&req(json!({"tools": tools}))).unwrap();
    let p = p.unwrap();
    assert!(
        p.parse_calls && g.is_none(),
        "auto without strict tools is free"
    );
    assert_eq!(p.tools, tools);
    let (p, g) = plan_tools(&req(json!({"tools": tools, "tool_choice": "none"}))).unwrap();
    assert!(!p.unwrap().parse_calls && g.is_none());
    let forced = |choice: Value, parallel: bool, strict: bool| {
        let (_, g) = plan_tools(&req(json!({
            "tools": [weather(strict)], "tool_choice": choice, "parallel_tool_calls": parallel
        })))
        .unwrap();
        g
    };
    let callable = vec![CallableTool {
        name: "get_weather".into(),
        parameters: weather(false)["function"]["parameters"].clone().into(),
    }];
    let rules = |parallel, allow_text| CallRules {
        parallel,
        allow_text,
    };
    assert_eq!(
        forced(json!("required"), true, false),
        Some(Grammar::tool_calls(&callable, rules(true, false)).unwrap())
    );
    assert_eq!(
        forced(json!("required"), false, false),
        Some(Grammar::tool_calls(&callable, rules(false, false)).unwrap())
    );
    assert_eq!(
        forced(
            json!({"type": "function", "function": {"name": "get_weather"}}),
            true,
            false
        ),
        Some(Grammar::tool_calls(&callable, rules(false, false)).unwrap())
    );
    assert_eq!(
        forced(json!("auto"), true, true),
        Some(Grammar::tool_calls(&callable, rules(true, true)).unwrap())
    );
}

#[test]
fn bad_tools_are_refused_by_param() {
    let cases = [
        (json!({"tools": [42]}), "tools[0]"),
        (json!({"tools": [{"type": "retrieval"}]}), "tools[0].type"),
        (
            json!({"tools": [{"type": "function"}]}),
            "tools[0].function",
        ),
        (
            json!({"tools": [{"type": "function", "function": {"description": "x"}}]}),
            "tools[0].function.name",
        ),
        (
            json!({"tools": [{"type": "function", "function": {"name": "has space"}}]}),
            "tools[0].function.name",
        ),
        (
            json!({"tools": [weather(false), weather(true)]}),
            "tools[1].function.name",
        ),
        (
            json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "frobnicate"}}}]}),
            "tools[0].function.parameters",
        ),
        (
            json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]}),
            "tools[0].function.parameters",
        ),
        (
            json!({"tools": [{"type": "function", "function": {"name": "f", "strict": "yes"}}]}),
            "tools[0].function.strict",
        ),
        (
            json!({"tools": [weather(false)], "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
            "tool_choice",
        ),
        (
            json!({"tools": [weather(false)], "tool_choice": "sometimes"}),
            "tool_choice",
        ),
        (json!({"tool_choice": "required"}), "tool_choice"),
        (
            json!({"tools": [weather(false)], "parallel_tool_calls": "yes"}),
            "parallel_tool_calls",
        ),
    ];
    for (extra, param) in cases {
        let e = plan_tools(&req(extra.clone())).unwrap_err();
        assert_eq!(e.param().as_deref(), Some(param), "{extra}: {e}");
        assert_eq!(e.spec().status.as_u16(), 400, "{extra}");
    }
}

/// A finished answer read for calls: whole calls finish `tool_calls`; a
/// held call cut by `max_tokens` is the partial call finishing `length`
/// (what the stream sends, and what OpenAI answers); the same cut text
/// without a grammar, or cut before the call's name is complete, is content.
#[test]
fn answers_are_read_for_whole_and_cut_calls() {
    let whole = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
    let a = read_answer(whole, FinishReason::Stop, true);
    assert_eq!(a.finish, FinishReason::ToolCalls);
    assert_eq!(a.content, None);
    assert_eq!(
        a.calls,
        vec![("get_weather".to_string(), r#"{"city":"Paris"}"#.to_string())]
    );
    assert_eq!(read_answer(whole, FinishReason::Stop, false), a);

    let cut =
        "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Pa";
    let a = read_answer(cut, FinishReason::Length, true);
    assert_eq!(a.finish, FinishReason::Length);
    assert_eq!(a.content.as_deref(), Some("Let me check."));
    assert_eq!(
        a.calls,
        vec![("get_weather".to_string(), r#"{"city":"Pa"#.to_string())]
    );
    // Not held: a cut call is a malformed one, answered as text.
    let a = read_answer(cut, FinishReason::Length, false);
    assert_eq!(
        (a.content.as_deref(), a.calls.len(), a.finish),
        (Some(cut), 0, FinishReason::Length)
    );
    // Cut before the name is whole: nothing was sent as a call.
    let early = "<tool_call>\n{\"name\": \"get_wea";
    let a = read_answer(early, FinishReason::Length, true);
    assert_eq!(
        (a.content.as_deref(), a.calls.len(), a.finish),
        (Some(early), 0, FinishReason::Length)
    );
}
