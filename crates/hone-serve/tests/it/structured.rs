//! `response_format` (JSON mode and structured outputs) over the tiny
//! random model: its answers are garbage, so every one that is valid JSON
//! for its schema is the grammar's doing.

use serde_json::{json, Value};

use crate::chat::{ask, chat, chat_app, fine_tune, sse_frames};
use crate::common::{assert_error, BASE};

fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "colour": {"enum": ["red", "green", "blue"]},
            "sure": {"type": "boolean"},
            "count": {"type": "integer", "minimum": 0, "maximum": 9},
            "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2}
        },
        "required": ["colour", "sure", "count", "tags"],
        "additionalProperties": false
    })
}

fn with_schema(extra: Value) -> Value {
    let mut body = ask(
        BASE,
        json!({
            "max_tokens": 60,
            "response_format": {"type": "json_schema", "json_schema": {
                "name": "colour_pick", "strict": true, "schema": schema()}}
        }),
    );
    for (k, x) in extra.as_object().unwrap() {
        body[k] = x.clone();
    }
    body
}

/// Checks an answer against [`schema`] by hand.
fn conforms(text: &str) -> bool {
    let Ok(Value::Object(o)) = serde_json::from_str::<Value>(text) else {
        return false;
    };
    o.len() == 4
        && o["colour"]
            .as_str()
            .is_some_and(|c| ["red", "green", "blue"].contains(&c))
        && o["sure"].is_boolean()
        && o["count"].as_u64().is_some_and(|n| n <= 9)
        && o["tags"]
            .as_array()
            .is_some_and(|t| t.len() <= 2 && t.iter().all(|x| x == "a" || x == "b"))
}

#[tokio::test]
async fn a_schema_the_engine_cannot_honour_is_a_400_before_generating() {
    let a = chat_app(2);
    for format in [
        json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "frobnicate"}}}),
        json!({"type": "json_schema", "json_schema": {"name": "x",
            "schema": {"type": "object", "properties": {"a": {"$ref": "#/$defs/nope"}}}}}),
        json!({"type": "json_schema", "json_schema": {"schema": {"type": "object"}}}),
        json!({"type": "json_schema"}),
    ] {
        for stream in [false, true] {
            let body = ask(BASE, json!({"response_format": format, "stream": stream}));
            let r = chat(&a.t, body).await;
            let v = assert_error(&r, 400, None);
            assert_eq!(v["error"]["param"], "response_format", "{format}: {v}");
        }
    }
    let r = chat(&a.t, ask(BASE, json!({"response_format": {"type": "xml"}}))).await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn json_schema_answers_validate_greedy_and_sampled() {
    let a = chat_app(2);
    for extra in [
        json!({"temperature": 0}),
        json!({"temperature": 1.0, "seed": 1}),
        json!({"temperature": 1.0, "seed": 2, "top_p": 0.5}),
    ] {
        let r = chat(&a.t, with_schema(extra.clone())).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let v = r.json();
        let c = &v["choices"][0];
        let text = c["message"]["content"].as_str().unwrap();
        assert!(conforms(text), "{extra}: {text}");
        assert_eq!(c["finish_reason"], "stop", "{extra}: the grammar completed");
    }
    // Without the schema the same model writes no JSON at all.
    let plain = chat(&a.t, ask(BASE, json!({"max_tokens": 60})))
        .await
        .json();
    let text = plain["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(serde_json::from_str::<Value>(text).is_err(), "{text}");
}

#[tokio::test]
async fn max_tokens_cuts_a_structured_answer_with_length() {
    let a = chat_app(2);
    let v = chat(&a.t, with_schema(json!({"max_tokens": 4})))
        .await
        .json();
    let c = &v["choices"][0];
    assert_eq!(c["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 4);
    assert!(
        c["message"]["content"].as_str().unwrap().starts_with("{\""),
        "{v}"
    );
}

#[tokio::test]
async fn json_object_streams_one_object_per_choice() {
    let a = chat_app(2);
    let body = ask(
        BASE,
        json!({"response_format": {"type": "json_object"}, "n": 2, "temperature": 1.0,
               "seed": 4, "max_tokens": 200}),
    );
    let whole = chat(&a.t, body.clone()).await.json();
    let mut streamed = body;
    streamed["stream"] = json!(true);
    let r = chat(&a.t, streamed).await;
    assert_eq!(r.status, 200);
    let (frames, done) = sse_frames(&r.body);
    assert!(done);
    let mut stopped = 0;
    for i in 0..2 {
        let mine: Vec<&Value> = frames
            .iter()
            .filter(|f| f["choices"][0]["index"] == i)
            .collect();
        let text: String = mine
            .iter()
            .filter_map(|f| f["choices"][0]["delta"]["content"].as_str())
            .collect();
        let finish = &mine.last().unwrap()["choices"][0]["finish_reason"];
        let choice = &whole["choices"][i as usize];
        assert_eq!(text, choice["message"]["content"], "choice {i}");
        assert_eq!(finish, &choice["finish_reason"]);
        // A random model's keys are random strings, which may outrun
        // max_tokens: then the text is a cut-off object, never free text.
        if finish == "stop" {
            stopped += 1;
            let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
            assert!(v.is_object(), "{text}");
        } else {
            assert_eq!(finish, "length");
            assert!(text.starts_with('{'), "{text}");
        }
    }
    assert!(stopped >= 1, "no choice completed its object");
}

#[tokio::test]
async fn a_fine_tuned_model_answers_under_the_schema_too() {
    let a = chat_app(2);
    let (ft, _) = fine_tune(&a.t).await;
    let base = chat(&a.t, with_schema(json!({"temperature": 1.0, "seed": 9})))
        .await
        .json();
    let mut body = with_schema(json!({"temperature": 1.0, "seed": 9}));
    body["model"] = json!(ft);
    let tuned = chat(&a.t, body).await.json();
    let text = |v: &Value| {
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(conforms(&text(&tuned)), "{}", text(&tuned));
    assert!(conforms(&text(&base)), "{}", text(&base));
}
