//! Auth, request ids, unknown routes, and a real listener.

use axum::body::Body;
use axum::http::Request;

use crate::common::{assert_error, TestApp};

fn with_key(uri: &str, key: Option<&str>) -> Request<Body> {
    let mut b = Request::get(uri);
    if let Some(k) = key {
        b = b.header("authorization", format!("Bearer {k}"));
    }
    b.body(Body::empty()).unwrap()
}

#[tokio::test]
async fn keys_guard_v1_but_not_health() {
    let t = TestApp::with(|c| c.api_keys = vec!["sk-a".into(), "sk-b".into()]);
    let v = assert_error(
        &t.send(with_key("/v1/files", None)).await,
        401,
        Some("invalid_api_key"),
    );
    assert_eq!(v["error"]["type"], "invalid_request_error");
    let v = assert_error(
        &t.send(with_key("/v1/models", Some("sk-wrong"))).await,
        401,
        Some("invalid_api_key"),
    );
    assert!(!v.to_string().contains("sk-wrong"), "never echo a key: {v}");
    assert_eq!(
        t.send(with_key("/v1/files", Some("sk-a"))).await.status,
        200
    );
    assert_eq!(
        t.send(with_key("/v1/models", Some("sk-b"))).await.status,
        200
    );
    let h = t.send(with_key("/health", None)).await;
    assert_eq!(h.status, 200);
    assert_eq!(h.json()["status"], "ok");
}

#[tokio::test]
async fn every_response_has_a_request_id() {
    let t = TestApp::new();
    let a = t.get("/health").await;
    let b = t.get("/v1/files/file-missing").await;
    let ida = a.headers["x-request-id"].to_str().unwrap().to_string();
    let idb = b.headers["x-request-id"].to_str().unwrap().to_string();
    assert!(ida.starts_with("req_") && ida != idb);
}

#[tokio::test]
async fn unknown_urls_get_an_openai_404() {
    let t = TestApp::new();
    let v = assert_error(&t.get("/v1/nothing/here").await, 404, Some("unknown_url"));
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("/v1/nothing/here"));
}

#[tokio::test]
async fn malformed_query_is_400_json() {
    let t = TestApp::new();
    assert_error(&t.get("/v1/files?limit=abc").await, 400, None);
}

#[tokio::test]
async fn serves_over_a_real_listener_and_shuts_down() {
    let t = TestApp::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(hone_serve::serve_on(listener, t.state.clone(), async {
        let _ = rx.await;
    }));
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        out.to_ascii_lowercase().contains("x-request-id: req_"),
        "{out}"
    );
    tx.send(()).unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn serve_refuses_public_bind_without_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = hone_serve::ServeConfig::new(dir.path());
    c.host = "0.0.0.0".parse().unwrap();
    c.port = 0;
    let err = hone_serve::serve(c, hone_serve::Engines::with_base_models(["b"]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("--api-key"), "{err}");
}
