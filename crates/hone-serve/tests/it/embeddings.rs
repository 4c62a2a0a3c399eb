//! `POST /v1/embeddings` on a tiny random BERT written by the test.

use std::sync::Arc;

use base64::Engine as _;
use hone_model::embed::testing::TinyBert;
use hone_model::registry::{ModelSource, ResolvedModel};
use hone_serve::embeddings::EmbeddingService;
use hone_serve::Engines;
use serde_json::{json, Value};

use crate::common::{assert_error, TestApp, BASE};

const EMBED: &str = "tiny-bert";

/// A server with the chat catalog's BASE and the tiny BERT as its
/// embedding model, admitting `slots` requests at once.
fn app_with(slots: usize) -> (TestApp, tempfile::TempDir, EmbeddingService) {
    let dir = tempfile::tempdir().unwrap();
    TinyBert::default().write(dir.path()).unwrap();
    let model = ResolvedModel {
        id: EMBED.into(),
        source: ModelSource::HfDir(dir.path().to_path_buf()),
    }
    .open_embedding()
    .unwrap();
    let service = EmbeddingService::new(Arc::new(model), slots);
    let mut engines = Engines::with_base_models([BASE]);
    engines.embeddings = Some(service.clone());
    (TestApp::with_engines(engines, |_| {}), dir, service)
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

#[tokio::test]
async fn a_list_of_strings_gets_unit_vectors_in_order_with_usage() {
    let (app, _dir, _) = app_with(2);
    let r = app
        .post_json(
            "/v1/embeddings",
            json!({"model": EMBED, "input": ["hello world", "a"]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], EMBED);
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    for (i, d) in data.iter().enumerate() {
        assert_eq!(d["object"], "embedding");
        assert_eq!(d["index"], i);
        let e = floats(&d["embedding"]);
        assert_eq!(e.len(), 32);
        assert!((norm(&e) - 1.0).abs() < 1e-4);
    }
    // "hello world": 10 letters + [CLS] + [SEP]; "a": 3.
    assert_eq!(v["usage"], json!({"prompt_tokens": 15, "total_tokens": 15}));
}

#[tokio::test]
async fn base64_decodes_to_the_float_vector_and_token_arrays_match_text() {
    let (app, _dir, service) = app_with(2);
    let float = app
        .post_json("/v1/embeddings", json!({"model": EMBED, "input": "abc"}))
        .await
        .json();
    let b64 = app
        .post_json(
            "/v1/embeddings",
            json!({"model": EMBED, "input": "abc", "encoding_format": "base64", "dimensions": 32}),
        )
        .await
        .json();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let decoded: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    assert_eq!(decoded, floats(&float["data"][0]["embedding"]));
    // The same text as token ids (without [CLS]/[SEP]), alone and in a list.
    let ids = service.model.tokenize(&["abc"]).unwrap().remove(0);
    let inner = &ids[1..ids.len() - 1];
    for input in [json!(inner), json!([inner, inner])] {
        let v = app
            .post_json("/v1/embeddings", json!({"model": EMBED, "input": input}))
            .await
            .json();
        // Same tokens, same vector, up to summation order (the text and the ids
        // may be batched differently).
        let (a, b) = (
            floats(&v["data"][0]["embedding"]),
            floats(&float["data"][0]["embedding"]),
        );
        assert_eq!(a.len(), b.len());
        assert!(
            a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-5),
            "{a:?} vs {b:?}"
        );
    }
}

#[tokio::test]
async fn bad_requests_name_their_field() {
    let (app, _dir, _) = app_with(2);
    let cases = [
        (json!({"model": EMBED, "input": []}), "input"),
        (json!({"model": EMBED, "input": ["ok", ""]}), "input"),
        (json!({"model": EMBED, "input": [[]]}), "input"),
        (json!({"model": EMBED, "input": [99999]}), "input"),
        (
            json!({"model": EMBED, "input": "x", "dimensions": 8}),
            "dimensions",
        ),
        (
            json!({"model": EMBED, "input": "x", "encoding_format": "int8"}),
            "encoding_format",
        ),
        (json!({"model": EMBED, "input": vec!["a"; 2049]}), "input"),
    ];
    for (body, param) in cases {
        let r = app.post_json("/v1/embeddings", body.clone()).await;
        let v = assert_error(&r, 400, None);
        assert_eq!(v["error"]["param"], param, "{body}: {v}");
    }
    let long = "x ".repeat(100);
    let r = app
        .post_json(
            "/v1/embeddings",
            json!({"model": EMBED, "input": ["ok", long]}),
        )
        .await;
    let v = assert_error(&r, 400, Some("context_length_exceeded"));
    assert!(
        v["error"]["message"].as_str().unwrap().contains("input[1]"),
        "{v}"
    );
}

#[tokio::test]
async fn chat_and_unknown_models_are_404_and_say_what_embeds() {
    let (app, _dir, _) = app_with(2);
    let r = app
        .post_json("/v1/embeddings", json!({"model": BASE, "input": "x"}))
        .await;
    let v = assert_error(&r, 404, Some("model_not_found"));
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("is a chat model") && msg.contains(EMBED),
        "{msg}"
    );
    assert_eq!(v["error"]["param"], "model");
    let r = app
        .post_json("/v1/embeddings", json!({"model": "nope", "input": "x"}))
        .await;
    assert_error(&r, 404, Some("model_not_found"));
}

#[tokio::test]
async fn a_server_without_an_embedding_model_says_how_to_get_one() {
    let app = TestApp::new();
    let r = app
        .post_json(
            "/v1/embeddings",
            json!({"model": "all-minilm-l6-v2", "input": "x"}),
        )
        .await;
    let v = assert_error(&r, 404, Some("model_not_found"));
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("--embedding-model"), "{msg}");
}

#[tokio::test]
async fn a_full_server_answers_429_with_retry_after() {
    let (app, _dir, service) = app_with(1);
    let _held = service.try_admit().unwrap();
    let r = app
        .post_json("/v1/embeddings", json!({"model": EMBED, "input": "x"}))
        .await;
    assert_error(&r, 429, Some("rate_limit_exceeded"));
    assert_eq!(r.headers["retry-after"], "1");
    drop(_held);
    let r = app
        .post_json("/v1/embeddings", json!({"model": EMBED, "input": "x"}))
        .await;
    assert_eq!(r.status, 200);
}
