//! Stored chat completions (`store: true`): kept per project, listed with
//! `model` and `metadata[k]=v` filters and cursor pages, updated, deleted,
//! their request messages listed; a streamed answer is stored as the same
//! object. The backend echoes the last user message, so what was stored
//! can be checked exactly.

use std::ops::ControlFlow;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request};
use hone_model::generate::{FinishReason, Generation, GenerationParams};
use hone_serve::auth::create_key;
use hone_serve::chat::{ChatBackend, ChatError, ChatTarget};
use hone_serve::Engines;
use hone_text::{ChatMessage, Role};
use serde_json::{json, Value};

use crate::common::{assert_error, Reply, TestApp, BASE};

/// Answers "echo: <last user message>", streamed in two pieces.
struct Echo;

impl ChatBackend for Echo {
    fn generate(
        &self,
        _: &ChatTarget,
        messages: &[ChatMessage],
        _: Option<&Value>,
        _: &GenerationParams,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Generation, ChatError> {
        let last = messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map(|m| m.content.clone())
            .unwrap_or_default();
        let _ = on_text("echo: ");
        let _ = on_text(&last);
        Ok(Generation {
            text: format!("echo: {last}"),
            token_ids: vec![],
            finish_reason: FinishReason::Stop,
            prompt_tokens: 3,
            completion_tokens: 2,
        })
    }
}

/// An app over [`Echo`] with keys of projects `alpha` and `beta`.
struct Stored {
    t: TestApp,
    a: String,
    b: String,
}

impl Stored {
    fn new() -> Self {
        let engines = Engines::with_base_models([BASE]).chat(Arc::new(Echo), 4);
        let t = TestApp::with_engines(engines, |_| {});
        let store = t.state.store.blocking().clone();
        let key = |project: &str| create_key(store.as_ref(), project, false).unwrap().1;
        let (a, b) = (key("alpha"), key("beta"));
        Stored { t, a, b }
    }

    async fn call(&self, key: &str, method: Method, uri: &str, body: Option<Value>) -> Reply {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {key}"));
        let body = match body {
            Some(v) => {
                req = req.header("content-type", "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        self.t.send(req.body(body).unwrap()).await
    }

    async fn get(&self, key: &str, uri: &str) -> Value {
        let r = self.call(key, Method::GET, uri, None).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        r.json()
    }

    /// Asks `question` with `extra` fields; the answer's id.
    async fn ask(&self, key: &str, question: &str, extra: Value) -> String {
        let mut body = json!({
            "model": BASE,
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": question}
            ],
            "store": true
        });
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let r = self
            .call(key, Method::POST, "/v1/chat/completions", Some(body))
            .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        r.json()["id"].as_str().unwrap().to_string()
    }
}

fn ids_of(list: &Value) -> Vec<String> {
    list["data"]
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|o| o["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_stored_completion_is_retrieved_with_its_metadata_and_messages() {
    let s = Stored::new();
    let id = s
        .ask(&s.a, "hi", json!({"metadata": {"task": "greet"}}))
        .await;
    let c = s.get(&s.a, &format!("/v1/chat/completions/{id}")).await;
    assert_eq!(c["object"], "chat.completion");
    assert_eq!(c["model"], BASE);
    assert_eq!(c["metadata"], json!({"task": "greet"}));
    assert_eq!(c["choices"][0]["message"]["content"], "echo: hi");
    assert_eq!(c["usage"]["total_tokens"], 5);
    let m = s
        .get(&s.a, &format!("/v1/chat/completions/{id}/messages"))
        .await;
    assert_eq!(m["object"], "list");
    assert_eq!(ids_of(&m), vec![format!("{id}-0"), format!("{id}-1")]);
    assert_eq!(m["data"][0]["role"], "system");
    assert_eq!(m["data"][1]["content"], "hi");
    assert_eq!(m["data"][1]["content_parts"], Value::Null);
}

#[tokio::test]
async fn a_completion_without_store_is_not_kept() {
    let s = Stored::new();
    s.ask(&s.a, "kept", json!({})).await;
    s.ask(&s.a, "not kept", json!({"store": false})).await;
    let l = s.get(&s.a, "/v1/chat/completions").await;
    assert_eq!(l["data"].as_array().unwrap().len(), 1);
    assert_eq!(
        l["data"][0]["choices"][0]["message"]["content"],
        "echo: kept"
    );
}

#[tokio::test]
async fn another_projects_key_cannot_list_read_update_or_delete() {
    let s = Stored::new();
    let id = s.ask(&s.a, "secret", json!({})).await;
    let mine = s.ask(&s.b, "mine", json!({})).await;
    assert_eq!(
        ids_of(&s.get(&s.b, "/v1/chat/completions").await),
        vec![mine]
    );
    let uri = format!("/v1/chat/completions/{id}");
    for (method, body) in [
        (Method::GET, None),
        (Method::POST, Some(json!({"metadata": {"x": "y"}}))),
        (Method::DELETE, None),
    ] {
        let r = s.call(&s.b, method, &uri, body).await;
        let e = assert_error(&r, 404, Some("not_found"));
        assert!(e["error"]["message"].as_str().unwrap().contains(&id));
    }
    let r = s
        .call(&s.b, Method::GET, &format!("{uri}/messages"), None)
        .await;
    assert_error(&r, 404, Some("not_found"));
    // A cursor naming another project's completion is a bad cursor.
    let r = s
        .call(
            &s.b,
            Method::GET,
            &format!("/v1/chat/completions?after={id}"),
            None,
        )
        .await;
    assert_error(&r, 400, None);
    // And it is still there for its owner.
    s.get(&s.a, &uri).await;
}

#[tokio::test]
async fn listing_filters_by_model_and_every_metadata_pair() {
    let s = Stored::new();
    let a = s
        .ask(
            &s.a,
            "1",
            json!({"metadata": {"task": "sql", "lang": "en"}}),
        )
        .await;
    let b = s
        .ask(
            &s.a,
            "2",
            json!({"metadata": {"task": "sql", "lang": "fr"}}),
        )
        .await;
    let c = s
        .ask(&s.a, "3", json!({"metadata": {"task": "poem"}}))
        .await;
    let list = |q: String| {
        let s = &s;
        async move { ids_of(&s.get(&s.a, &format!("/v1/chat/completions{q}")).await) }
    };
    assert_eq!(list("".into()).await, vec![a.clone(), b.clone(), c.clone()]);
    assert_eq!(
        list("?metadata[task]=sql".into()).await,
        vec![a.clone(), b.clone()]
    );
    assert_eq!(
        list("?metadata%5Btask%5D=sql&metadata%5Blang%5D=fr".into()).await,
        vec![b.clone()]
    );
    assert_eq!(
        list("?metadata[task]=none".into()).await,
        Vec::<String>::new()
    );
    assert_eq!(list(format!("?model={BASE}")).await.len(), 3);
    assert_eq!(list("?model=other".into()).await, Vec::<String>::new());
}

#[tokio::test]
async fn pages_follow_the_cursor_both_ways() {
    let s = Stored::new();
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(s.ask(&s.a, &format!("q{i}"), json!({})).await);
    }
    let p1 = s.get(&s.a, "/v1/chat/completions?limit=2").await;
    assert_eq!(ids_of(&p1), ids[..2]);
    assert_eq!(p1["has_more"], true);
    assert_eq!(p1["first_id"], ids[0].as_str());
    assert_eq!(p1["last_id"], ids[1].as_str());
    let p2 = s
        .get(
            &s.a,
            &format!("/v1/chat/completions?limit=2&after={}", ids[1]),
        )
        .await;
    assert_eq!(ids_of(&p2), ids[2..4]);
    let p3 = s
        .get(
            &s.a,
            &format!("/v1/chat/completions?limit=2&after={}", ids[3]),
        )
        .await;
    assert_eq!(ids_of(&p3), ids[4..]);
    assert_eq!(p3["has_more"], false);
    let desc = s.get(&s.a, "/v1/chat/completions?order=desc&limit=3").await;
    assert_eq!(
        ids_of(&desc),
        vec![ids[4].clone(), ids[3].clone(), ids[2].clone()]
    );
    let r = s
        .call(&s.a, Method::GET, "/v1/chat/completions?limit=0", None)
        .await;
    assert_error(&r, 400, None);
    let m = s
        .get(
            &s.a,
            &format!(
                "/v1/chat/completions/{}/messages?limit=1&order=desc",
                ids[0]
            ),
        )
        .await;
    assert_eq!(ids_of(&m), vec![format!("{}-1", ids[0])]);
    assert_eq!(m["has_more"], true);
}

#[tokio::test]
async fn update_replaces_metadata_and_delete_forgets() {
    let s = Stored::new();
    let id = s.ask(&s.a, "x", json!({"metadata": {"old": "1"}})).await;
    let uri = format!("/v1/chat/completions/{id}");
    let r = s
        .call(
            &s.a,
            Method::POST,
            &uri,
            Some(json!({"metadata": {"new": "2"}})),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["metadata"], json!({"new": "2"}));
    assert_eq!(s.get(&s.a, &uri).await["metadata"], json!({"new": "2"}));
    let l = s.get(&s.a, "/v1/chat/completions?metadata[new]=2").await;
    assert_eq!(ids_of(&l), vec![id.clone()]);
    let too_many: serde_json::Map<String, Value> =
        (0..17).map(|i| (format!("k{i}"), json!("v"))).collect();
    let r = s
        .call(
            &s.a,
            Method::POST,
            &uri,
            Some(json!({"metadata": too_many})),
        )
        .await;
    let e = assert_error(&r, 400, None);
    assert_eq!(e["error"]["param"], "metadata");
    let r = s.call(&s.a, Method::DELETE, &uri, None).await;
    assert_eq!(
        r.json(),
        json!({"id": id, "object": "chat.completion.deleted", "deleted": true})
    );
    assert_error(
        &s.call(&s.a, Method::GET, &uri, None).await,
        404,
        Some("not_found"),
    );
    assert_error(
        &s.call(&s.a, Method::DELETE, &uri, None).await,
        404,
        Some("not_found"),
    );
}

#[tokio::test]
async fn a_streamed_completion_is_stored_as_the_whole_answer() {
    let s = Stored::new();
    let body = json!({
        "model": BASE,
        "messages": [{"role": "user", "content": "stream me"}],
        "stream": true,
        "store": true,
        "metadata": {"how": "sse"}
    });
    let r = s
        .call(&s.a, Method::POST, "/v1/chat/completions", Some(body))
        .await;
    assert_eq!(r.status, 200);
    let text = String::from_utf8(r.body).unwrap();
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    let first: Value =
        serde_json::from_str(text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap()).unwrap();
    let l = s.get(&s.a, "/v1/chat/completions?metadata[how]=sse").await;
    assert_eq!(ids_of(&l), vec![first["id"].as_str().unwrap().to_string()]);
    let c = &l["data"][0];
    assert_eq!(c["object"], "chat.completion");
    assert_eq!(c["choices"][0]["message"]["content"], "echo: stream me");
    assert_eq!(c["choices"][0]["finish_reason"], "stop");
    assert_eq!(c["usage"]["completion_tokens"], 2);
}

#[tokio::test]
async fn bad_metadata_on_a_request_is_a_400_and_nothing_is_kept() {
    let s = Stored::new();
    let body = json!({
        "model": BASE,
        "messages": [{"role": "user", "content": "x"}],
        "store": true,
        "metadata": {"k": "v".repeat(513)}
    });
    let r = s
        .call(&s.a, Method::POST, "/v1/chat/completions", Some(body))
        .await;
    let e = assert_error(&r, 400, None);
    assert_eq!(e["error"]["param"], "metadata");
    let l = s.get(&s.a, "/v1/chat/completions").await;
    assert_eq!(ids_of(&l), Vec::<String>::new());
}
