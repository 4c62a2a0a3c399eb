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
