use serde_json::json;

use super::*;

fn words() -> Vec<Vec<u8>> {
    (0..=255u8)
        .map(|b| vec![b])
        .chain([b"\xFF<|end|>".to_vec()])
        .collect()
}

#[test]
fn schemas_the_engine_cannot_honour_are_refused_up_front() {
    for bad in [
        json!({"type": "frobnicate"}),
        json!({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}),
        json!("just a string"),
        json!(42),
        json!({"type": "string", "pattern": "("}),
    ] {
        let e = Grammar::json_schema(bad.clone()).unwrap_err();
        assert!(matches!(e, ModelError::Grammar(_)), "{bad}: {e}");
        assert!(!e.to_string().is_empty());
    }
    assert!(Grammar::lark("start: (").is_err());
}

#[test]
fn the_openai_strict_subset_compiles() {
    let schema = json!({
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "email": {"type": "string", "format": "email"},
            "when": {"type": "string", "format": "date-time"},
            "kind": {"enum": ["a", "b"]},
            "n": {"type": "integer"},
            "x": {"type": "number"},
            "list": {"type": "array", "items": {"$ref": "#/$defs/item"}},
            "either": {"anyOf": [{"type": "string"}, {"type": "null"}]}
        },
        "required": ["name", "email", "when", "kind", "n", "x", "list", "either"],
        "additionalProperties": false,
        "$defs": {
            "item": {
                "type": "object",
                "properties": {"v": {"type": "boolean"}},
                "required": ["v"],
                "additionalProperties": false
            }
        }
    });
    Grammar::json_schema(schema).unwrap();
    Grammar::json_schema(json!(true)).unwrap();
}

#[test]
fn a_grammar_round_trips_through_serde_and_is_checked_when_read() {
    let g = Grammar::json_schema(json!({"type": "object"})).unwrap();
    let v = serde_json::to_value(&g).unwrap();
    assert_eq!(
        v,
        json!({"type": "json_schema", "schema": {"type": "object"}})
    );
    assert_eq!(serde_json::from_value::<Grammar>(v).unwrap(), g);
    let bad = json!({"type": "json_schema", "schema": {"type": "frobnicate"}});
    assert!(serde_json::from_value::<Grammar>(bad).is_err());
}

#[test]
fn the_mask_allows_the_stop_token_only_once_the_grammar_accepts() {
    let env = GrammarEnv::from_token_bytes(&words(), &[256]).unwrap();
    let mut c = env.constraint(&Grammar::json_object()).unwrap();
    let allowed = |c: &mut Constraint| {
        let mut l = vec![0.0f32; 257];
        c.mask(&mut l, &[256]).unwrap();
        (0..257u32)
            .filter(|&i| l[i as usize].is_finite())
            .collect::<Vec<_>>()
    };
    assert_eq!(allowed(&mut c), vec![b'{' as u32]);
    for b in br#"{"a":1"# {
        c.accept(*b as u32).unwrap();
    }
    assert!(!allowed(&mut c).contains(&256));
    assert!(!c.is_finished());
    c.accept(b'}' as u32).unwrap();
    assert!(c.is_finished(), "nothing can follow the object");
    assert_eq!(allowed(&mut c), vec![256], "only the end of the turn");
    // A number can go on, or end: the stop token is allowed beside digits.
    let number = Grammar::json_schema(json!({"type": "integer"})).unwrap();
    let mut c = env.constraint(&number).unwrap();
    c.accept(b'7' as u32).unwrap();
    let after = allowed(&mut c);
    assert!(
        after.contains(&256) && after.contains(&(b'0' as u32)),
        "{after:?}"
    );
    assert!(!c.is_finished());
    // A token the grammar forbids is an error, not a silent drift.
    let mut c = env.constraint(&Grammar::json_object()).unwrap();
    assert!(c.accept(b'x' as u32).is_err());
}

fn weather_tools() -> Vec<CallableTool> {
    vec![
        CallableTool {
            name: "get_weather".into(),
            parameters: Some(json!({
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"$ref": "#/$defs/unit"}},
                "required": ["city", "unit"],
                "additionalProperties": false,
                "$defs": {"unit": {"enum": ["c", "f"]}}
            })),
        },
        CallableTool {
            name: "now".into(),
            parameters: None,
        },
    ]
}

/// Whether `text` (fed byte by byte) is accepted to the end by `grammar`.
fn accepts(grammar: &Grammar, text: &str) -> bool {
    let env = GrammarEnv::from_token_bytes(&words(), &[256]).unwrap();
    let mut c = env.constraint(grammar).unwrap();
    for b in text.bytes() {
        let mut l = vec![0.0f32; 257];
        c.mask(&mut l, &[256]).unwrap();
        if !l[b as usize].is_finite() || c.accept(b as u32).is_err() {
            return false;
        }
    }
    let mut l = vec![0.0f32; 257];
    c.mask(&mut l, &[256]).unwrap();
    l[256].is_finite()
}

#[test]
fn tool_call_grammar_holds_calls_to_their_schemas() {
    let one = CallRules {
        parallel: false,
        allow_text: false,
    };
    let g = Grammar::tool_calls(&weather_tools(), one).unwrap();
    let call = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": \"c\"}}\n</tool_call>";
    assert!(accepts(&g, call));
    assert!(accepts(
        &g,
        "<tool_call>\n{\"name\": \"now\", \"arguments\": {}}\n</tool_call>"
    ));
    for bad in [
        "<tool_call>\n{\"name\": \"nope\", \"arguments\": {}}\n</tool_call>",
        "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": \"k\"}}\n</tool_call>",
        "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
        "Sure, here it is.",
    ] {
        assert!(!accepts(&g, bad), "{bad}");
    }
    let two = format!("{call}\n{call}");
    assert!(!accepts(&g, &two), "one call only without parallel");
    let parallel = CallRules {
        parallel: true,
        allow_text: false,
    };
    let g = Grammar::tool_calls(&weather_tools(), parallel).unwrap();
    assert!(accepts(&g, &two));
    let either = CallRules {
        parallel: true,
        allow_text: true,
    };
    let g = Grammar::tool_calls(&weather_tools(), either).unwrap();
    assert!(accepts(&g, "Sure, no call needed.\nBye."));
    assert!(accepts(&g, call));
    let bad = CallableTool {
        name: "f".into(),
        parameters: Some(json!({"type": "frobnicate"})),
    };
    assert!(Grammar::tool_calls(&[bad], one).is_err());
}
