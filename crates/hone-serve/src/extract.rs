//! Extractors whose rejections are [`ApiError`]s, so that a malformed body,
//! query or path gets OpenAI's error shape instead of axum's plain text.
//!
//! JSON bodies are parsed here by hand (not through `axum::Json`) so that a
//! value of the wrong type names its field in `param`, as OpenAI does
//! (`hyperparameters.n_epochs`, `method.type`, `messages[0].role`): serde's
//! error alone says what was wrong but not where.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{header, HeaderMap};
use serde::de::DeserializeOwned;

use crate::api::ErrorCode;
use crate::error::ApiError;

/// A JSON body (`Content-Type: application/json`) with OpenAI-shaped
/// rejections that name the offending field.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(req.headers()) {
            return Err(ApiError::InvalidRequest {
                message: "Expected a JSON body with `Content-Type: application/json`.".into(),
                param: None,
                code: Some(ErrorCode::InvalidJson),
            });
        }
        let bytes = Bytes::from_request(req, state).await?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// `application/json`, or any `application/...+json`, as axum accepts.
pub(crate) fn is_json(headers: &HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Parses a request body. A syntax error is `invalid_json` with no `param`;
/// a value of the wrong type, an unknown variant or a missing field is
/// `invalid_json` too, with `param` naming the field by its path.
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let invalid = |message: String, param: Option<String>| ApiError::InvalidRequest {
        message,
        param,
        code: Some(ErrorCode::InvalidJson),
    };
    let not_json =
        |e: &serde_json::Error| invalid(format!("The body is not valid JSON: {e}."), None);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let e = match serde_path_to_error::deserialize(&mut de) {
        Ok(v) => return de.end().map(|()| v).map_err(|e| not_json(&e)),
        Err(e) => e,
    };
    let inner = e.inner();
    if !inner.is_data() {
        return Err(not_json(inner));
    }
    let path = field_path(e.path(), &inner.to_string());
    Err(match missing_field(&inner.to_string()) {
        Some(_) => invalid(format!("Missing required parameter: '{path}'."), Some(path)),
        None => invalid(format!("Invalid value for '{path}': {inner}."), Some(path)),
    })
}

/// The field a data error is about, as OpenAI writes it (`a.b[0].c`). A
/// missing field is reported by serde at its parent, so its name is added.
fn field_path(path: &serde_path_to_error::Path, message: &str) -> String {
    let parent = path.to_string();
    let parent = if parent == "." { "" } else { parent.as_str() };
    match missing_field(message) {
        Some(name) if parent.is_empty() => name.to_string(),
        Some(name) => format!("{parent}.{name}"),
        None if parent.is_empty() => "body".to_string(),
        None => parent.to_string(),
    }
}

/// The name in serde's "missing field `name`" message.
fn missing_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("missing field `")?;
    rest.split('`').next()
}

/// `axum::extract::Query` with OpenAI-shaped rejections.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// `axum::extract::Path` with OpenAI-shaped rejections.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// `axum::extract::Multipart` with OpenAI-shaped rejections (a body without
/// a multipart boundary was a text/plain 400).
#[derive(Debug)]
pub struct ApiMultipart(pub axum::extract::Multipart);

impl<S: Send + Sync> FromRequest<S> for ApiMultipart {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        Ok(ApiMultipart(
            axum::extract::Multipart::from_request(req, state).await?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        #[serde(rename = "type")]
        kind: String,
        n: u32,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Outer {
        name: String,
        inner: Option<Inner>,
        list: Option<Vec<Inner>>,
        map: Option<BTreeMap<String, u32>>,
    }

    fn param_of(body: &str) -> Option<String> {
        parse_json::<Outer>(body.as_bytes()).unwrap_err().param()
    }

    #[test]
    fn a_data_error_names_its_field_by_path() {
        assert_eq!(
            param_of(r#"{"name": "x", "inner": {"type": "a", "n": -1}}"#).as_deref(),
            Some("inner.n")
        );
        assert_eq!(
            param_of(r#"{"name": "x", "inner": {"n": 1}}"#).as_deref(),
            Some("inner.type")
        );
        assert_eq!(param_of(r#"{}"#).as_deref(), Some("name"));
        assert_eq!(
            param_of(r#"{"name": "x", "list": [{"type": "a", "n": 1}, {"type": 3, "n": 1}]}"#)
                .as_deref(),
            Some("list[1].type")
        );
        assert_eq!(param_of(r#""a string""#).as_deref(), Some("body"));
    }

    #[test]
    fn a_syntax_error_has_no_param() {
        for body in [&b"{\"name\": "[..], b"{\"name\": \"x\"} trailing"] {
            let e = parse_json::<Outer>(body).unwrap_err();
            assert_eq!(e.param(), None);
            assert_eq!(e.code(), Some(ErrorCode::InvalidJson));
        }
        assert!(parse_json::<Outer>(b" {\"name\": \"x\"}\n").is_ok());
    }

    #[test]
    fn json_content_types() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::CONTENT_TYPE, v.parse().unwrap());
            is_json(&m)
        };
        assert!(h("application/json") && h("Application/JSON; charset=utf-8"));
        assert!(h("application/vnd.api+json"));
        assert!(!h("text/plain") && !is_json(&HeaderMap::new()));
    }
}
