use serde_json::json;

use super::*;

fn call(name: &str, args: Value) -> ParsedToolCall {
    ParsedToolCall {
        name: name.into(),
        arguments_text: args.to_string(),
        arguments: args,
    }
}

#[test]
fn plain_text_is_content() {
    let p = parse_tool_calls("Hello there.");
    assert_eq!(p.content.as_deref(), Some("Hello there."));
    assert!(p.calls.is_empty());
    assert_eq!(parse_tool_calls(""), ParsedAnswer::default());
}

#[test]
fn calls_are_read_with_the_text_before_them() {
    let text = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"now\", \"arguments\": \"{\\\"tz\\\": \\\"UTC\\\"}\"}\n</tool_call>";
    let p = parse_tool_calls(text);
    assert_eq!(p.content.as_deref(), Some("Let me check."));
    assert_eq!(
        p.calls,
        vec![
            call("get_weather", json!({"city": "Paris"})),
            call("now", json!({"tz": "UTC"}))
        ]
    );
    assert_eq!(p.calls[0].arguments_json(), r#"{"city":"Paris"}"#);
    let only = parse_tool_calls("<tool_call>\n{\"name\": \"f\"}");
    assert_eq!(only.content, None);
    assert_eq!(only.calls, vec![call("f", json!({}))]);
}

#[test]
fn a_malformed_call_leaves_the_whole_answer_as_content() {
    for text in [
        "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 1}\n</tool_call>",
        "<tool_call>{\"arguments\": {}}</tool_call>",
        "<tool_call>{\"name\": \"f\", \"arguments\": [1]}</tool_call>",
        "<tool_call>{\"name\": \"f\"}</tool_call> and then some words",
        "<tool_call>{\"name\": \"\"}</tool_call>",
        "<tool_call>",
    ] {
        let p = parse_tool_calls(text);
        assert!(p.calls.is_empty(), "{text}");
        assert_eq!(p.content.as_deref(), Some(text));
    }
}

/// Streams `text` in pieces of `size` chars: the content shown while it
/// streamed, the content at the end, the calls, and every event.
fn stream_with(
    mut s: ToolCallStream,
    text: &str,
    size: usize,
) -> (String, String, Vec<ParsedToolCall>, Vec<CallEvent>) {
    let mut shown = String::new();
    let mut events = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    for piece in chars.chunks(size) {
        events.extend(s.push(&piece.iter().collect::<String>()));
    }
    let before_end = events.len();
    let (last, calls) = s.finish();
    events.extend(last);
    let mut rest = String::new();
    for (i, e) in events.iter().enumerate() {
        if let CallEvent::Content(t) = e {
            if i < before_end {
                shown.push_str(t)
            } else {
                rest.push_str(t)
            }
        }
    }
    (shown, rest, calls, events)
}

fn stream(text: &str, size: usize) -> (String, String, Vec<ParsedToolCall>) {
    let (shown, rest, calls, _) = stream_with(ToolCallStream::new(), text, size);
    (shown, rest, calls)
}

/// Joins call events as an SDK does: (name, arguments) per call index.
fn joined_calls(events: &[CallEvent]) -> Vec<(String, String)> {
    let mut calls: Vec<(String, String)> = Vec::new();
    for e in events {
        match e {
            CallEvent::Start { index, name } => {
                assert_eq!(*index, calls.len(), "calls start in order");
                calls.push((name.clone(), String::new()));
            }
            CallEvent::Arguments { index, fragment } => calls[*index].1.push_str(fragment),
            CallEvent::Content(_) => {}
        }
    }
    calls
}

#[test]
fn a_stream_gives_what_the_whole_text_gives() {
    let texts = [
        "plain answer with < and <tool and spaces  ",
        "Checking.\n<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": 1}}\n</tool_call>",
        "<tool_call>{\"name\": \"f\"}</tool_call><tool_call>{\"name\": \"g\"}</tool_call>",
        "broken <tool_call>{\"name\": 3}</tool_call>",
        "ends with <tool_ca",
    ];
    for text in texts {
        let whole = parse_tool_calls(text);
        for size in [1, 2, 3, 7, 100] {
            let (shown, rest, calls) = stream(text, size);
            assert_eq!(calls, whole.calls, "{text} / {size}");
            let content = format!("{shown}{rest}");
            assert_eq!(
                content,
                whole.content.clone().unwrap_or_default(),
                "{text} / {size}"
            );
            if !whole.calls.is_empty() {
                assert!(!shown.contains('<'), "a call was shown as text: {shown}");
            }
            for live in [false, true] {
                let s = if live {
                    ToolCallStream::live()
                } else {
                    ToolCallStream::new()
                };
                let (shown, rest, calls, events) = stream_with(s, text, size);
                assert_eq!(calls, whole.calls, "{text} / {size}");
                assert_eq!(
                    format!("{shown}{rest}"),
                    whole.content.clone().unwrap_or_default()
                );
                let want: Vec<(String, String)> = whole
                    .calls
                    .iter()
                    .map(|c| (c.name.clone(), c.arguments_json()))
                    .collect();
                assert_eq!(joined_calls(&events), want, "{text} / {size} / live {live}");
            }
        }
    }
}

#[test]
fn a_live_stream_sends_the_name_first_then_arguments_as_they_are_written() {
    let text = "Sure.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris, France\", \"days\": [1, 2]}}\n</tool_call>\n<tool_call>\n{\"name\": \"now\", \"arguments\": {}}\n</tool_call>";
    let mut s = ToolCallStream::live();
    let mut seen = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    for (i, c) in chars.iter().enumerate() {
        for e in s.push(&c.to_string()) {
            seen.push((i, e));
        }
    }
    let first_args = seen
        .iter()
        .position(|(_, e)| matches!(e, CallEvent::Arguments { index: 0, .. }))
        .unwrap();
    let content: String = seen
        .iter()
        .filter_map(|(_, e)| match e {
            CallEvent::Content(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(content, "Sure.");
    assert!(
        matches!(&seen[first_args - 1].1, CallEvent::Start { index: 0, name } if name == "get_weather")
    );
    // The first call's arguments arrive in many pieces, all before the second call starts.
    let pieces = seen
        .iter()
        .filter(|(_, e)| matches!(e, CallEvent::Arguments { index: 0, .. }))
        .count();
    assert!(pieces > 10, "{pieces}");
    let second = text.find("now").unwrap();
    assert!(seen
        .iter()
        .any(|(i, e)| matches!(e, CallEvent::Start { index: 1, .. }) && *i > second));
    let (last, calls) = s.finish();
    let mut events: Vec<CallEvent> = seen.into_iter().map(|(_, e)| e).collect();
    events.extend(last);
    assert_eq!(
        joined_calls(&events),
        vec![
            (
                "get_weather".to_string(),
                r#"{"city":"Paris, France","days":[1,2]}"#.to_string()
            ),
            ("now".to_string(), "{}".to_string())
        ]
    );
    assert_eq!(
        calls[0].arguments_json(),
        r#"{"city":"Paris, France","days":[1,2]}"#
    );
}

#[test]
fn a_held_stream_sends_nothing_of_a_call_before_the_end() {
    let text = "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": 1}}\n</tool_call>";
    let mut s = ToolCallStream::new();
    for c in text.chars() {
        assert!(s.push(&c.to_string()).is_empty());
    }
    let (events, calls) = s.finish();
    assert_eq!(
        events,
        vec![
            CallEvent::Start {
                index: 0,
                name: "f".into()
            },
            CallEvent::Arguments {
                index: 0,
                fragment: r#"{"x":1}"#.into()
            }
        ]
    );
    assert_eq!(calls.len(), 1);
}

#[test]
fn a_live_call_cut_short_keeps_what_was_sent_and_reports_no_call() {
    let text = "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": \"abc";
    let (shown, rest, calls, events) = stream_with(ToolCallStream::live(), text, 3);
    assert!(calls.is_empty());
    assert_eq!((shown.as_str(), rest.as_str()), ("", ""));
    assert_eq!(
        joined_calls(&events),
        vec![("f".to_string(), r#"{"x":"abc"#.to_string())]
    );
}

#[test]
fn arguments_keep_the_models_spelling_without_the_spaces() {
    let p = parse_tool_calls(
        "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"n\": 1.50, \"s\": \"a \\u00e9 b\"}}\n</tool_call>",
    );
    assert_eq!(
        p.calls[0].arguments_json(),
        r#"{"n":1.50,"s":"a \u00e9 b"}"#
    );
    assert_eq!(p.calls[0].arguments, json!({"n": 1.5, "s": "a é b"}));
    // Another shape (arguments before the name) is re-encoded.
    let p = parse_tool_calls("<tool_call>{\"arguments\": {\"a\": 1}, \"name\": \"g\"}</tool_call>");
    assert_eq!(p.calls[0].arguments_json(), r#"{"a":1}"#);
}

#[test]
fn fallback_writes_tools_calls_and_responses_as_text() {
    let tools = vec![
        json!({"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}),
    ];
    let mut asst = ChatMessage::new(Role::Assistant, "");
    asst.tool_calls = Some(json!([
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}},
        {"id": "call_2", "type": "function", "function": {"name": "f", "arguments": "{\"a\":2}"}}
    ]));
    let mut r1 = ChatMessage::new(Role::Tool, "one");
    r1.tool_call_id = Some("call_1".into());
    let mut r2 = ChatMessage::new(Role::Tool, "two");
    r2.tool_call_id = Some("call_2".into());
    let messages = vec![
        ChatMessage::new(Role::User, "go"),
        asst,
        r1,
        r2,
        ChatMessage::new(Role::Assistant, "done"),
    ];
    let out = fallback_messages(&messages, Some(&tools));
    let roles: Vec<Role> = out.iter().map(|m| m.role).collect();
    assert_eq!(
        roles,
        [
            Role::System,
            Role::User,
            Role::Assistant,
            Role::User,
            Role::Assistant
        ]
    );
    assert!(out[0].content.starts_with("# Tools\n"));
    assert!(out[0].content.contains(
        "<tools>\n{\"type\": \"function\", \"function\": {\"name\": \"f\", \"parameters\": {\"type\": \"object\"}}}\n</tools>"
    ));
    assert_eq!(
        out[2].content,
        "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 1}}\n</tool_call>\n<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 2}}\n</tool_call>"
    );
    assert_eq!(out[2].tool_calls, None);
    assert_eq!(
        out[3].content,
        "<tool_response>\none\n</tool_response>\n<tool_response>\ntwo\n</tool_response>"
    );
    // The calls written by the fallback read back as the same calls.
    let back = parse_tool_calls(&out[2].content);
    assert_eq!(
        back.calls,
        vec![call("f", json!({"a": 1})), call("f", json!({"a": 2}))]
    );
    // A system message of its own is kept, with the tools after it.
    let with_sys = fallback_messages(
        &[
            ChatMessage::new(Role::System, "Be brief."),
            ChatMessage::new(Role::User, "x"),
        ],
        Some(&tools),
    );
    assert_eq!(with_sys.len(), 2);
    assert!(with_sys[0].content.starts_with("Be brief.\n\n# Tools\n"));
    // Without tools or tool messages nothing changes.
    let plain = vec![ChatMessage::new(Role::User, "x")];
    assert_eq!(fallback_messages(&plain, None), plain);
    assert_eq!(fallback_messages(&plain, Some(&[])), plain);
}

mod templates {
    use super::*;
    use crate::testing::{tiny_chat_tokenizer, SMOLLM2_TEMPLATE};
    use crate::{ChatTemplate, ChatTokenizer, CHATML_TEMPLATE};

    const QWEN25: &str = include_str!("templates/qwen2_5.jinja");

    fn with_template(src: &str) -> ChatTokenizer {
        let ct = tiny_chat_tokenizer().unwrap();
        ChatTokenizer::new(
            ct.tokenizer,
            ChatTemplate::new(src, "", "<|im_end|>").unwrap(),
        )
    }

    fn tools() -> Value {
        json!([{"type": "function", "function": {"name": "get_weather",
            "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])
    }

    /// A system prompt, a question, two parallel calls, their results and
    /// the final answer.
    fn conversation() -> Vec<ChatMessage> {
        let mut asst = ChatMessage::new(Role::Assistant, "");
        asst.tool_calls = Some(json!([
            {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
            {"id": "call_b", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}
        ]));
        let reply = |id: &str, text: &str| {
            let mut m = ChatMessage::new(Role::Tool, text);
            m.tool_call_id = Some(id.into());
            m
        };
        vec![
            ChatMessage::new(Role::System, "Be brief."),
            ChatMessage::new(Role::User, "Weather in Paris and Oslo?"),
            asst,
            reply("call_a", "sunny"),
            reply("call_b", "snow"),
            ChatMessage::new(Role::Assistant, "Paris is sunny, Oslo has snow."),
        ]
    }

    #[test]
    fn only_templates_that_write_tools_render_them() {
        assert!(with_template(QWEN25).template.renders_tools());
        for src in [
            CHATML_TEMPLATE,
            SMOLLM2_TEMPLATE,
            crate::template::GEMMA3_TEMPLATE,
        ] {
            assert!(!with_template(src).template.renders_tools(), "{src}");
        }
    }

    #[test]
    fn the_fallback_writes_what_qwens_template_writes() {
        let conv = conversation();
        let tools = tools();
        let qwen = with_template(QWEN25).template;
        let chatml = with_template(CHATML_TEMPLATE).template;
        for n in 1..=conv.len() {
            let a = qwen.render(&conv[..n], true, Some(&tools)).unwrap();
            let b = chatml.render(&conv[..n], true, Some(&tools)).unwrap();
            assert_eq!(a, b, "first {n} messages");
        }
        let text = qwen.render(&conv, false, Some(&tools)).unwrap();
        assert!(text.contains(
            "<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>"
        ), "{text}");
    }

    #[test]
    fn the_serving_prompt_of_a_tool_conversation_is_its_training_prefix() {
        let conv = conversation();
        let tools = tools();
        for src in [QWEN25, SMOLLM2_TEMPLATE, CHATML_TEMPLATE] {
            let ct = with_template(src);
            let train = ct.encode_chat(&conv, Some(&tools)).unwrap();
            let rendered = ct.render_with_spans(&conv, Some(&tools)).unwrap();
            for (i, m) in conv.iter().enumerate() {
                if m.role != Role::Assistant {
                    continue;
                }
                let prompt_text = ct.template.render(&conv[..i], true, Some(&tools)).unwrap();
                assert!(
                    rendered.text.starts_with(&prompt_text),
                    "{src}: message {i}"
                );
                let prompt = ct.encode_prompt(&conv[..i], Some(&tools)).unwrap();
                assert_eq!(
                    &train.ids[..prompt.len()],
                    &prompt[..],
                    "{src}: message {i}"
                );
            }
            let trained = ct.tokenizer.decode(&train.trained_ids()).unwrap();
            assert_eq!(
                trained,
                "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n\
                 <tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call><|im_end|>\
                 Paris is sunny, Oslo has snow.<|im_end|>",
                "{src}"
            );
            // What the model is trained to write reads back as the calls.
            let calls_text = trained.split("<|im_end|>").next().unwrap();
            assert_eq!(parse_tool_calls(calls_text).calls.len(), 2);
        }
    }

    #[test]
    fn dpo_pairs_render_their_tools() {
        let ct = with_template(QWEN25);
        let prompt = &conversation()[..2];
        let answer = ChatMessage::new(Role::Assistant, "ok");
        let with = ct
            .encode_preference(prompt, &answer, Some(&tools()))
            .unwrap();
        let without = ct.encode_preference(prompt, &answer, None).unwrap();
        assert!(ct
            .tokenizer
            .decode(&with.ids)
            .unwrap()
            .contains("get_weather"));
        assert!(with.len() > without.len());
        assert_eq!(with.trained_token_count(), without.trained_token_count());
    }
}

#[test]
fn llama_3_1_calls_are_read_bare_or_after_the_python_tag() {
    let one = r#"{"name": "get_weather", "parameters": {"city": "Paris"}}"#;
    for text in [
        one.to_string(),
        format!("<|python_tag|>{one}"),
        format!("\n {one}\n"),
    ] {
        let p = parse_tool_calls(&text);
        assert_eq!(
            p.calls,
            vec![call("get_weather", json!({"city": "Paris"}))],
            "{text}"
        );
        assert_eq!((p.content, p.malformed), (None, false));
    }
    // Llama 3.2's parallel calls: separated by `;` (or newlines).
    let two =
        r#"<|python_tag|>{"name": "a", "parameters": {"x": 1}}; {"name": "b", "parameters": {}}"#;
    let p = parse_tool_calls(two);
    assert_eq!(
        p.calls,
        vec![call("a", json!({"x": 1})), call("b", json!({}))]
    );
    // A bare JSON answer of another shape is text, not a call, and not malformed.
    for text in [
        r#"{"name": "f", "arguments": {}}"#,
        r#"{"name": "Alice", "age": 30}"#,
        r#"{"name": "f", "parameters": {}} and some words"#,
    ] {
        let p = parse_tool_calls(text);
        assert!(p.calls.is_empty() && !p.malformed, "{text}");
        assert_eq!(p.content.as_deref(), Some(text));
    }
    // After the tag, anything but calls is malformed.
    let p = parse_tool_calls("<|python_tag|>brave_search.call(query=\"x\")");
    assert!(p.calls.is_empty() && p.malformed);
}

#[test]
fn mistral_calls_are_read_after_their_marker() {
    let text = r#"Let me look. [TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Oslo"}}, {"name": "now", "arguments": "{\"tz\": \"CET\"}"}]"#;
    let p = parse_tool_calls(text);
    assert_eq!(p.content.as_deref(), Some("Let me look."));
    assert_eq!(
        p.calls,
        vec![
            call("get_weather", json!({"city": "Oslo"})),
            call("now", json!({"tz": "CET"}))
        ]
    );
    for bad in [
        "[TOOL_CALLS] []",
        "[TOOL_CALLS] [{\"name\": 1}]",
        "[TOOL_CALLS] {\"name\": \"f\"}",
        "x [TOOL_CALLS]",
    ] {
        let p = parse_tool_calls(bad);
        assert!(p.calls.is_empty() && p.malformed, "{bad}");
        assert_eq!(p.content.as_deref(), Some(bad));
    }
}

#[test]
fn streams_hold_other_syntaxes_until_the_end() {
    let texts = [
        r#"{"name": "f", "parameters": {"x": 1}}"#,
        r#"<|python_tag|>{"name": "f", "parameters": {}}"#,
        r#"Checking [TOOL_CALLS] [{"name": "f", "arguments": {"q": "a b"}}]"#,
        r#"{"answer": 42}"#,
        "an answer that mentions [TOOL and { braces }",
    ];
    for text in texts {
        let whole = parse_tool_calls(text);
        for size in [1, 4, 100] {
            for s in [ToolCallStream::new(), ToolCallStream::live()] {
                let (shown, rest, calls, events) = stream_with(s, text, size);
                assert_eq!(calls, whole.calls, "{text}");
                assert_eq!(
                    format!("{shown}{rest}"),
                    whole.content.clone().unwrap_or_default(),
                    "{text}"
                );
                if !whole.calls.is_empty() {
                    assert!(
                        !shown.contains('{') && !shown.contains("TOOL"),
                        "{text}: {shown}"
                    );
                    assert_eq!(joined_calls(&events).len(), whole.calls.len());
                }
            }
        }
    }
}
