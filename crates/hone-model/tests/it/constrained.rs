//! Constrained decoding through a real loaded engine: the tiny random model
//! (whose GGUF tokenizer is byte-level BPE, as SmolLM2's and Qwen's are)
//! writes garbage, and the grammar must still make every answer valid; and
//! the real SmolLM2 (ignored; `HONE_TEST_GGUF`) answers a schema.

use std::ops::ControlFlow;

use hone_model::constraint::Grammar;
use hone_model::generate::{generate_batch, FinishReason, GenerationParams};
use hone_model::testing::{write_tiny_model, TinySpec};
use hone_model::{ChatEngine, WeightPath};
use hone_text::{ChatMessage, Role};
use serde_json::{json, Value};

fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 6},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "pets": {"type": "array", "items": {"enum": ["cat", "dog"]}, "maxItems": 2},
            "home": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/place"}]}
        },
        "required": ["name", "age", "pets", "home"],
        "additionalProperties": false,
        "$defs": {
            "place": {
                "type": "object",
                "properties": {"city": {"enum": ["Paris", "Oslo"]}},
                "required": ["city"],
                "additionalProperties": false
            }
        }
    })
}

/// Checks `text` against [`schema`] by hand.
fn conforms(text: &str) -> bool {
    let Ok(Value::Object(o)) = serde_json::from_str::<Value>(text) else {
        return false;
    };
    let home_ok = o["home"].is_null()
        || o["home"]
            .as_object()
            .is_some_and(|h| h.len() == 1 && (h["city"] == "Paris" || h["city"] == "Oslo"));
    o.len() == 4
        && o["name"].as_str().is_some_and(|n| n.chars().count() <= 6)
        && o["age"].as_u64().is_some_and(|a| a <= 120)
        && o["pets"]
            .as_array()
            .is_some_and(|p| p.len() <= 2 && p.iter().all(|x| x == "cat" || x == "dog"))
        && home_ok
}

fn tiny_engine(dir: &std::path::Path) -> ChatEngine {
    let (gguf, _) = write_tiny_model(dir, &TinySpec::default()).unwrap();
    ChatEngine::load_path(&gguf, WeightPath::Packed).unwrap()
}

#[test]
fn a_random_model_under_a_schema_writes_valid_json() {
    let dir = tempfile::tempdir().unwrap();
    let engine = tiny_engine(dir.path());
    let msgs = [ChatMessage::new(Role::User, "Describe a person.")];
    let grammar = Grammar::json_schema(schema()).unwrap();
    for (temperature, seed) in [(0.0, 0), (1.0, 1), (1.0, 2), (0.7, 3)] {
        let params = GenerationParams {
            max_tokens: 150,
            temperature,
            seed,
            grammar: Some(grammar.clone()),
            ..Default::default()
        };
        let mut streamed = String::new();
        let g = engine
            .chat(&msgs, &params, &mut |s| {
                streamed.push_str(s);
                ControlFlow::Continue(())
            })
            .unwrap();
        assert!(
            conforms(&g.text),
            "t={temperature} seed={seed}: {:?}",
            g.text
        );
        assert_eq!(g.finish_reason, FinishReason::Stop);
        assert_eq!(streamed, g.text);
        assert!(g.text.ends_with('}'), "ends when the object is complete");
    }
    // Without the grammar the same model writes no JSON.
    let params = GenerationParams {
        max_tokens: 40,
        ..Default::default()
    };
    let g = engine
        .chat(&msgs, &params, &mut |_| ControlFlow::Continue(()))
        .unwrap();
    assert!(
        serde_json::from_str::<Value>(&g.text).is_err(),
        "{:?}",
        g.text
    );
}

#[test]
fn batched_generation_keeps_one_matcher_per_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let engine = tiny_engine(dir.path());
    let prompts: Vec<Vec<u32>> = ["a person", "someone else", "x"]
        .iter()
        .map(|t| {
            engine
                .encode_prompt(&[ChatMessage::new(Role::User, *t)], None)
                .unwrap()
        })
        .collect();
    let params = GenerationParams {
        max_tokens: 150,
        temperature: 1.0,
        seed: 5,
        grammar: Some(Grammar::json_schema(schema()).unwrap()),
        ..Default::default()
    };
    let stop = engine.tokenizer.tokenizer.stop_token_ids().to_vec();
    let batch = generate_batch(&engine.model, &prompts, &params, &stop, &engine).unwrap();
    for (p, b) in prompts.iter().zip(&batch) {
        let alone = engine
            .generate_ids(p, &params, &mut |_| ControlFlow::Continue(()))
            .unwrap();
        assert_eq!(b.token_ids, alone.token_ids, "batching changed a result");
        assert!(conforms(&b.text), "{:?}", b.text);
    }
}

/// The real SmolLM2 fills a schema from the prompt's facts.
#[test]
#[ignore = "needs HONE_TEST_GGUF (the real SmolLM2 GGUF)"]
fn real_model_answer_validates_against_its_schema() {
    let gguf = std::env::var("HONE_TEST_GGUF").expect("set HONE_TEST_GGUF");
    let engine = ChatEngine::load_path(std::path::Path::new(&gguf), WeightPath::Packed).unwrap();
    let schema = json!({
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer"},
            "city": {"type": "string"}
        },
        "required": ["name", "age", "city"],
        "additionalProperties": false
    });
    let msgs = [ChatMessage::new(
        Role::User,
        "Alice is 30 years old and lives in Paris. Give her name, age and city as JSON.",
    )];
    let params = GenerationParams {
        max_tokens: 60,
        grammar: Some(Grammar::json_schema(schema).unwrap()),
        ..Default::default()
    };
    let g = engine
        .chat(&msgs, &params, &mut |_| ControlFlow::Continue(()))
        .unwrap();
    let v: Value = serde_json::from_str(&g.text).unwrap_or_else(|e| panic!("{e}: {}", g.text));
    let o = v.as_object().unwrap();
    assert_eq!(o.len(), 3, "{v}");
    assert!(
        o["name"].is_string() && o["age"].is_i64() && o["city"].is_string(),
        "{v}"
    );
    assert_eq!(g.finish_reason, FinishReason::Stop, "{v}");
    eprintln!("SmolLM2 under the schema: {}", g.text);
}
