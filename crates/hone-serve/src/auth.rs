//! Bearer-token auth and request ids.
//!
//! Keys are kept only as sha256 digests and compared in constant time
//! (subtle), against every configured key without short-circuiting, so the
//! time taken says nothing about which key or how much of it matched. Keys
//! are never logged.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::ids;

/// The accepted keys, as digests. Empty means auth is off.
#[derive(Clone, Default)]
pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
}

fn digest(s: &[u8]) -> [u8; 32] {
    let out = Sha256::digest(s);
    let mut d = [0u8; 32];
    d.copy_from_slice(&out);
    d
}

impl ApiKeys {
    pub fn new(keys: &[String]) -> Self {
        ApiKeys {
            digests: keys.iter().map(|k| digest(k.as_bytes())).collect(),
        }
    }

    /// Whether any key is configured.
    pub fn enabled(&self) -> bool {
        !self.digests.is_empty()
    }

    /// Whether `token` is one of the keys, in constant time.
    pub fn accepts(&self, token: &str) -> bool {
        let d = digest(token.as_bytes());
        let mut ok = subtle::Choice::from(0u8);
        for k in &self.digests {
            ok |= k.ct_eq(&d);
        }
        ok.into()
    }
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys([{} redacted])", self.digests.len())
    }
}

/// Checks `Authorization: Bearer <key>` when keys are configured.
pub async fn require_key(State(keys): State<Arc<ApiKeys>>, req: Request, next: Next) -> Response {
    if !keys.enabled() {
        return next.run(req).await;
    }
    let header = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let token = header.and_then(|h| {
        h.strip_prefix("Bearer ")
            .or_else(|| h.strip_prefix("bearer "))
    });
    match token {
        None => ApiError::Unauthorized {
            message: "You didn't provide an API key. Send it in an Authorization header \
                      using Bearer auth (Authorization: Bearer YOUR_KEY)."
                .into(),
        }
        .into_response(),
        Some(t) if keys.accepts(t.trim()) => next.run(req).await,
        Some(_) => ApiError::Unauthorized {
            message: "Incorrect API key provided.".into(),
        }
        .into_response(),
    }
}

/// The id of the current request, in the request's extensions.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Gives every request an id: logged in its span, and returned as
/// `x-request-id` on every response, errors included.
pub async fn request_id(mut req: Request, next: Next) -> Response {
    let id = ids::request_id();
    req.extensions_mut().insert(RequestId(id.clone()));
    let span =
        tracing::info_span!("request", id = %id, method = %req.method(), path = %req.uri().path());
    let mut resp = {
        let _enter = span.enter();
        tracing::debug!("start");
        drop(_enter);
        use tracing::Instrument;
        next.run(req).instrument(span.clone()).await
    };
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    span.in_scope(|| tracing::info!(status = resp.status().as_u16(), "done"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_exactly() {
        let k = ApiKeys::new(&["sk-one".into(), "sk-two".into()]);
        assert!(k.enabled());
        assert!(k.accepts("sk-one") && k.accepts("sk-two"));
        assert!(!k.accepts("sk-on") && !k.accepts("sk-one ") && !k.accepts(""));
        assert!(!ApiKeys::default().enabled());
        assert!(!format!("{k:?}").contains("sk-"));
    }
}
