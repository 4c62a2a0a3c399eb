//! A test app in a temp `HONE_HOME`, and request helpers.

use std::path::Path;
use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::Router;
use hone_serve::{AppState, Engines, FileCheck, FileProblem, FileValidator, ServeConfig};
use serde_json::Value;
use tower::ServiceExt;

pub const BASE: &str = "smollm2-135m-instruct";

/// A test validator: every line must be a JSON object with a `messages`
/// array. Stands in for hone-data's validator at the seam.
pub struct LineValidator;

impl FileValidator for LineValidator {
    fn check(&self, path: &Path) -> std::io::Result<FileCheck> {
        let text = std::fs::read_to_string(path)?;
        let mut check = FileCheck::default();
        for (i, line) in text.lines().enumerate() {
            let v: Result<Value, _> = serde_json::from_str(line);
            let ok = matches!(&v, Ok(v) if v.get("messages").is_some_and(Value::is_array));
            if !ok {
                check.errors.push(FileProblem {
                    line: Some(i + 1),
                    message: None,
                    code: "missing_messages_list".into(),
                    text: "expected an object with a `messages` list".into(),
                });
            }
        }
        Ok(check)
    }
}

pub struct TestApp {
    pub app: Router,
    pub state: AppState,
    pub dir: tempfile::TempDir,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

impl TestApp {
    pub fn new() -> Self {
        Self::with(|_| {})
    }

    pub fn with(edit: impl FnOnce(&mut ServeConfig)) -> Self {
        let engines = Engines::with_base_models([BASE]).validator(Arc::new(LineValidator));
        Self::with_engines(engines, edit)
    }

    /// With hone-data's real validator (the default engines).
    pub fn real_validator() -> Self {
        Self::with_engines(Engines::with_base_models([BASE]), |_| {})
    }

    pub fn with_engines(engines: Engines, edit: impl FnOnce(&mut ServeConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ServeConfig::new(dir.path());
        edit(&mut config);
        let state = AppState::open(config, engines).unwrap();
        let app = hone_serve::router(state.clone());
        TestApp { app, state, dir }
    }

    pub async fn send(&self, req: Request<Body>) -> Reply {
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec();
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn call(&self, method: Method, uri: &str) -> Reply {
        self.send(
            Request::builder()
                .method(method)
                .uri(uri)
                .body(Body::empty())
                .unwrap(),
        )
        .await
    }

    pub async fn get(&self, uri: &str) -> Reply {
        self.call(Method::GET, uri).await
    }

    /// Uploads `content` as `filename` with `purpose`.
    /// POSTs a JSON body.
    pub async fn post_json(&self, uri: &str, body: Value) -> Reply {
        let req = Request::post(uri)
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        self.send(req).await
    }

    /// Uploads a fine-tune file that must pass validation; its id.
    pub async fn upload_jsonl(&self, content: &str) -> String {
        let f = self
            .upload("train.jsonl", "fine-tune", content.as_bytes())
            .await
            .json();
        assert_eq!(f["status"], "processed", "{f}");
        f["id"].as_str().unwrap().to_string()
    }

    pub async fn upload(&self, filename: &str, purpose: &str, content: &[u8]) -> Reply {
        let (ct, body) = multipart(&[
            ("purpose", None, purpose.as_bytes()),
            ("file", Some(filename), content),
        ]);
        let req = Request::builder()
            .method(Method::POST)
            .uri("/v1/files")
            .header("content-type", ct)
            .body(Body::from(body))
            .unwrap();
        self.send(req).await
    }
}

/// A multipart/form-data body of `(name, filename, content)` fields.
pub fn multipart(fields: &[(&str, Option<&str>, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "----honetestboundary7MA4YWxkTrZu0gW";
    let mut body = Vec::new();
    for (name, filename, content) in fields {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match filename {
            Some(f) => body.extend_from_slice(
                format!(
                    "Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\n\
                     Content-Type: application/octet-stream\r\n\r\n"
                )
                .as_bytes(),
            ),
            None => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
            ),
        }
        body.extend_from_slice(content);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// Asserts an OpenAI-shaped error with this status and code.
pub fn assert_error(r: &Reply, status: u16, code: Option<&str>) -> Value {
    assert_eq!(
        r.status.as_u16(),
        status,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let v = r.json();
    let e = &v["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(e["type"].is_string(), "{v}");
    assert!(e.get("param").is_some() && e.get("code").is_some(), "{v}");
    if let Some(c) = code {
        assert_eq!(e["code"], c, "{v}");
    }
    assert!(r.headers.contains_key("x-request-id"));
    v
}

pub const GOOD_JSONL: &str = concat!(
    r#"{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"hello"}]}"#,
    "\n",
    r#"{"messages":[{"role":"user","content":"bye"},{"role":"assistant","content":"ciao"}]}"#,
    "\n"
);

/// `n` valid chat (SFT) examples, one per line.
pub fn sft_jsonl(n: usize) -> String {
    (0..n)
        .map(|i| {
            serde_json::json!({"messages": [
                {"role": "user", "content": format!("question number {i}")},
                {"role": "assistant", "content": format!("answer number {i} in full")}
            ]})
            .to_string()
                + "\n"
        })
        .collect()
}

/// `n` valid preference (DPO) pairs, one per line.
pub fn dpo_jsonl(n: usize) -> String {
    (0..n)
        .map(|i| {
            serde_json::json!({
                "input": {"messages": [{"role": "user", "content": format!("question {i}")}]},
                "preferred_output": [{"role": "assistant", "content": format!("good answer {i}")}],
                "non_preferred_output": [{"role": "assistant", "content": format!("bad answer {i}")}]
            })
            .to_string()
                + "\n"
        })
        .collect()
}
