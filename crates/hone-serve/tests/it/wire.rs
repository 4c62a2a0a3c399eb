//! Issue #17, part 4: every error on the wire is OpenAI's error JSON, even
//! the ones axum makes by itself; the bearer scheme is case-insensitive;
//! and under `/v1` the key is checked before anything says whether a path
//! exists.

use axum::body::Body;
use axum::http::{Method, Request};
use serde_json::{json, Value};

use crate::common::{assert_error, Reply, TestApp};

/// An OpenAI error with this status, sent as `application/json`.
fn openai_error(r: &Reply, status: u16, code: Option<&str>) -> Value {
    let v = assert_error(r, status, code);
    let ct = r.headers["content-type"].to_str().unwrap();
    assert!(ct.starts_with("application/json"), "{ct}");
    v
}

fn request(method: Method, uri: &str, key: Option<&str>) -> axum::http::request::Builder {
    let b = Request::builder().method(method).uri(uri);
    match key {
        Some(k) => b.header("authorization", k),
        None => b,
    }
}

#[tokio::test]
async fn a_file_upload_without_a_multipart_boundary_is_openai_json_not_text() {
    let t = TestApp::new();
    let req = request(Method::POST, "/v1/files", None)
        .header("content-type", "multipart/form-data")
        .body(Body::from("purpose=fine-tune"))
        .unwrap();
    let v = openai_error(&t.send(req).await, 400, None);
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("boundary"),
        "{v}"
    );
}

#[tokio::test]
async fn a_method_not_allowed_is_openai_json_not_an_empty_405() {
    let t = TestApp::new();
    for (method, uri) in [
        (Method::PUT, "/v1/chat/completions"),
        (Method::DELETE, "/v1/fine_tuning/jobs"),
        (Method::PUT, "/v1/files/file-x"),
        (Method::POST, "/health"),
    ] {
        let r = t
            .send(
                request(method.clone(), uri, None)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        let v = openai_error(&r, 405, Some("method_not_allowed"));
        let m = v["error"]["message"].as_str().unwrap();
        assert!(m.contains(method.as_str()) && m.contains(uri), "{m}");
        assert!(r.headers.contains_key("allow"), "the Allow header is kept");
    }
}

#[tokio::test]
async fn a_json_body_over_the_body_limit_is_an_openai_413() {
    let t = TestApp::new();
    let big = json!({"model": "x", "training_file": "f", "suffix": "a".repeat(3 << 20)});
    let req = request(Method::POST, "/v1/fine_tuning/jobs", None)
        .header("content-type", "application/json")
        .body(Body::from(big.to_string()))
        .unwrap();
    openai_error(&t.send(req).await, 413, None);
}

#[tokio::test]
async fn a_json_route_given_another_content_type_is_openai_json() {
    let t = TestApp::new();
    let req = request(Method::POST, "/v1/fine_tuning/jobs", None)
        .header("content-type", "text/plain")
        .body(Body::from("{}"))
        .unwrap();
    openai_error(&t.send(req).await, 400, Some("invalid_json"));
}

#[tokio::test]
async fn an_unknown_v1_path_without_a_key_is_a_401_not_a_404() {
    let t = TestApp::with(|c| c.api_keys = vec!["sk-a".into()]);
    let get = |uri: &'static str, key: Option<&'static str>| {
        request(Method::GET, uri, key).body(Body::empty()).unwrap()
    };
    openai_error(
        &t.send(get("/v1/nothing/here", None)).await,
        401,
        Some("invalid_api_key"),
    );
    openai_error(
        &t.send(get("/v1/nothing/here", Some("Bearer sk-wrong")))
            .await,
        401,
        Some("invalid_api_key"),
    );
    // Neither does a wrong method on a real path tell it exists.
    let r = t
        .send(
            request(Method::DELETE, "/v1/chat/completions", None)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    openai_error(&r, 401, Some("invalid_api_key"));
    // With the key, the caller learns the path is unknown.
    let v = openai_error(
        &t.send(get("/v1/nothing/here", Some("Bearer sk-a"))).await,
        404,
        Some("unknown_url"),
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/v1/nothing/here"),
        "{v}"
    );
    // Outside /v1 there is nothing to protect.
    openai_error(
        &t.send(get("/nothing", None)).await,
        404,
        Some("unknown_url"),
    );
}

#[tokio::test]
async fn the_bearer_scheme_is_accepted_in_any_case() {
    let t = TestApp::with(|c| c.api_keys = vec!["sk-a".into()]);
    for header in ["Bearer sk-a", "bearer sk-a", "BEARER sk-a", "bEaReR sk-a"] {
        let r = t
            .send(
                request(Method::GET, "/v1/models", Some(header))
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(r.status, 200, "{header}");
    }
    let r = t
        .send(
            request(Method::GET, "/v1/models", Some("Basic sk-a"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    openai_error(&r, 401, Some("invalid_api_key"));
}
