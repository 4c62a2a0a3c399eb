//! `/openapi.json` matches the router both ways: every route the router
//! declares is in the spec, and every operation in the spec is routed.

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{Method, Request};

use crate::common::TestApp;

/// `(method, path)` of every route in `src/routes/mod.rs`, read from its
/// source: `.route("/path", get(..).post(..))` calls, with `/v1` added to
/// those inside the `v1` router.
fn declared_routes() -> BTreeSet<(String, String)> {
    let src = include_str!("../../src/routes/mod.rs");
    let v1_start = src.find("let v1 = Router::new()").expect("a v1 router");
    let v1_end = v1_start + src[v1_start..].find(".fallback(").expect("v1 ends");
    let mut out = BTreeSet::new();
    let mut at = 0;
    while let Some(i) = src[at..].find(".route(") {
        let open = at + i + ".route(".len();
        let quote = src[open..].trim_start();
        assert!(quote.starts_with('"'), "a .route( without a literal path");
        let start = src.len() - quote.len() + 1;
        let end = start + src[start..].find('"').unwrap();
        let path = &src[start..end];
        // The handlers: up to the next `.route(` or the end of the chain.
        let rest = &src[end..];
        let stop = [".route(", ".route_layer(", ".nest(", ".fallback("]
            .iter()
            .filter_map(|m| rest.find(m))
            .min()
            .unwrap_or(rest.len());
        let handlers = &rest[..stop];
        let prefix = if (v1_start..v1_end).contains(&start) {
            "/v1"
        } else {
            ""
        };
        for m in ["get", "post", "delete", "put", "patch"] {
            let found = handlers.match_indices(&format!("{m}(")).any(|(j, _)| {
                j == 0
                    || !handlers.as_bytes()[j - 1].is_ascii_alphanumeric()
                        && handlers.as_bytes()[j - 1] != b'_'
            });
            if found {
                out.insert((m.to_string(), format!("{prefix}{path}")));
            }
        }
        at = end;
    }
    out
}

#[tokio::test]
async fn the_spec_lists_exactly_the_routed_operations() {
    let t = TestApp::new();
    let r = t.get("/openapi.json").await;
    assert_eq!(r.status, 200, "public, no key needed");
    let spec = r.json();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    let mut in_spec = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            assert!(op["operationId"].is_string(), "{method} {path}");
            in_spec.insert((method.clone(), path.clone()));
        }
    }
    let declared = declared_routes();
    assert!(
        declared.len() >= 19,
        "the route parser found too few: {declared:?}"
    );
    let missing: Vec<_> = declared.difference(&in_spec).collect();
    assert!(
        missing.is_empty(),
        "routed but not in the spec: {missing:?}"
    );
    let extra: Vec<_> = in_spec.difference(&declared).collect();
    assert!(extra.is_empty(), "in the spec but not routed: {extra:?}");
    assert!(in_spec.contains(&("post".into(), "/v1/chat/completions".into())));

    // And each operation really answers (not the unknown-URL fallback, not
    // 405): the route table above is what the router serves.
    for (method, path) in &in_spec {
        let uri = path.replace("{id}", "ftjob-nope");
        let req = Request::builder()
            .method(Method::from_bytes(method.to_uppercase().as_bytes()).unwrap())
            .uri(&uri)
            .header("content-type", "application/json")
            .body(Body::from("{}"))
            .unwrap();
        let r = t.send(req).await;
        assert_ne!(r.status, 405, "{method} {uri}");
        if r.status == 404 {
            let v = r.json();
            assert_ne!(v["error"]["code"], "unknown_url", "{method} {uri}: {v}");
        }
    }
}

#[tokio::test]
async fn the_spec_declares_bearer_auth_on_v1_only() {
    let t = TestApp::new();
    let spec = t.get("/openapi.json").await.json();
    assert_eq!(
        spec["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert!(spec["paths"]["/v1/files"]["post"]["security"].is_array());
    assert!(spec["paths"]["/health"]["get"]["security"].is_null());
    assert_eq!(
        spec["paths"]["/v1/models/{id}"]["delete"]["parameters"][0]["in"],
        "path"
    );
}

#[tokio::test]
async fn the_spec_names_every_error_code() {
    let t = TestApp::new();
    let spec = t.get("/openapi.json").await.json();
    let errors = spec["paths"]["/v1/fine_tuning/jobs"]["post"]["responses"]["default"]
        ["description"]
        .as_str()
        .unwrap()
        .to_string();
    for code in hone_serve::ErrorCode::ALL {
        assert!(errors.contains(code.as_str()), "{code} missing: {errors}");
    }
}

/// Every `$ref` in `v`, as `(where, target)`.
fn refs(v: &serde_json::Value, at: &str, out: &mut Vec<(String, String)>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x.as_str()) {
                    ("$ref", Some(r)) => out.push((at.to_string(), r.to_string())),
                    _ => refs(x, &format!("{at}/{k}"), out),
                }
            }
        }
        serde_json::Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                refs(x, &format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[tokio::test]
async fn every_operation_has_request_and_response_schemas() {
    let t = TestApp::new();
    let spec = t.get("/openapi.json").await.json();
    let schemas = spec["components"]["schemas"].as_object().unwrap();
    let mut with_body = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let what = format!("{method} {path}");
            let ok = op["responses"]["200"]["content"]
                .as_object()
                .unwrap_or_else(|| panic!("{what}: a 200 without content"));
            assert!(!ok.is_empty(), "{what}");
            for (ct, media) in ok {
                assert!(media["schema"].is_object(), "{what} {ct}: no schema");
            }
            if let Some(body) = op.get("requestBody") {
                assert_eq!(body["required"], true, "{what}");
                for (ct, media) in body["content"].as_object().unwrap() {
                    let s = &media["schema"];
                    assert!(s["$ref"].is_string(), "{what} {ct}: body not a named type");
                }
                with_body.insert(what.clone());
            }
            for p in op["parameters"].as_array().into_iter().flatten() {
                assert!(p["schema"].is_object(), "{what}: parameter {p} untyped");
            }
            if path.starts_with("/v1/") {
                let error = &op["responses"]["default"]["content"]["application/json"]["schema"];
                assert_eq!(error["$ref"], "#/components/schemas/ErrorBody", "{what}");
            }
        }
    }
    let expected: BTreeSet<String> = [
        "post /v1/files",
        "post /v1/fine_tuning/jobs",
        "post /v1/chat/completions",
        "post /v1/chat/completions/{id}",
        "post /v1/embeddings",
    ]
    .map(String::from)
    .into();
    assert_eq!(with_body, expected, "the operations that take a body");
    assert!(
        spec["paths"]["/v1/files"]["post"]["requestBody"]["content"]["multipart/form-data"]
            .is_object()
    );
    // Every reference resolves, so a client can follow the whole document.
    let mut found = Vec::new();
    refs(&spec, "", &mut found);
    assert!(found.len() > 20, "{found:?}");
    for (at, r) in found {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("{at}: {r}"));
        assert!(schemas.contains_key(name), "{at}: {r} is not defined");
    }
    // The fields kept as raw JSON in the types are described all the same.
    let chat = &schemas["ChatCompletionRequest"]["properties"];
    for field in [
        "messages",
        "tools",
        "tool_choice",
        "response_format",
        "stop",
    ] {
        assert!(chat[field].is_object(), "chat request lacks {field}");
    }
    assert!(schemas.contains_key("ToolSpec") && schemas.contains_key("JsonSchemaSpec"));
    let list = &spec["paths"]["/v1/files"]["get"]["parameters"];
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["after", "limit", "order", "purpose"]);
}
