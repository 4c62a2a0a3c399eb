//! The HTTP routes. Handlers are thin: parse, call the store or an engine,
//! answer with an `api` type or an `ApiError`.
//!
//! Two rules hold for every answer, whatever produced it:
//! - an error has OpenAI's JSON body, including the ones axum makes by
//!   itself (405, a body limit's 413, extractor rejections): see
//!   [`openai_errors`];
//! - under `/v1` the key is checked first, also for unknown paths and
//!   methods, so that a caller without a key learns nothing about which
//!   paths exist.

mod chat;
mod chat_store;
mod embeddings;
mod files;
mod jobs;
mod metrics;
mod models;
pub(crate) mod spec;

use axum::extract::{DefaultBodyLimit, OriginalUri, Request};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{from_fn, from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::api::{ErrorCode, Health, ListQuery};
use crate::auth::{request_id, require_key, ApiKeys, AuthState};
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::{Order, PageRequest};

/// Room for the multipart envelope and small fields around an upload of
/// exactly the limit: the request-wide backstop is the file limit plus this.
const MULTIPART_SLACK: u64 = 1024 * 1024;

/// The whole application: `/health` and `/openapi.json` (public),
/// `/metrics` (behind the key unless `--public-metrics`) and `/v1/...`
/// (behind the key, unknown paths included).
pub fn router(state: AppState) -> Router {
    let auth = AuthState {
        store: state.store.clone(),
        config_keys: ApiKeys::for_project(&state.config.usable_keys(), &state.config.org),
        default_project: state.config.org.clone(),
        loopback: state.config.host.is_loopback(),
    };
    let body_limit = state
        .config
        .max_upload_bytes
        .saturating_add(MULTIPART_SLACK)
        .min(usize::MAX as u64) as usize;
    let v1 = Router::new()
        .route(
            "/files",
            post(files::upload)
                .layer(DefaultBodyLimit::max(body_limit))
                .get(files::list),
        )
        .route("/files/{id}", get(files::retrieve).delete(files::delete))
        .route("/files/{id}/content", get(files::content))
        .route("/fine_tuning/jobs", post(jobs::create).get(jobs::list))
        .route("/fine_tuning/jobs/{id}", get(jobs::retrieve))
        .route("/fine_tuning/jobs/{id}/cancel", post(jobs::cancel))
        .route("/fine_tuning/jobs/{id}/pause", post(jobs::pause))
        .route("/fine_tuning/jobs/{id}/resume", post(jobs::resume))
        .route("/fine_tuning/jobs/{id}/events", get(jobs::events))
        .route("/fine_tuning/jobs/{id}/checkpoints", get(jobs::checkpoints))
        .route("/models", get(models::list))
        .route("/models/{id}", get(models::retrieve).delete(models::delete))
        .route(
            "/chat/completions",
            post(chat::completions).get(chat_store::list),
        )
        .route(
            "/chat/completions/{id}",
            get(chat_store::retrieve)
                .post(chat_store::update)
                .delete(chat_store::delete),
        )
        .route("/chat/completions/{id}/messages", get(chat_store::messages))
        .route("/embeddings", post(embeddings::create))
        .fallback(unknown_route)
        .layer(from_fn_with_state(auth.clone(), require_key));
    let metrics_auth = metrics::MetricsAuth {
        public: state.config.public_metrics,
        auth,
    };
    Router::new()
        .route("/health", get(health))
        .route(
            "/metrics",
            get(metrics::metrics)
                .layer(from_fn_with_state(metrics_auth, metrics::key_unless_public)),
        )
        .route("/openapi.json", get(spec::openapi_json))
        .nest("/v1", v1)
        .fallback(unknown_route)
        .layer(from_fn(openai_errors))
        .layer(from_fn(request_id))
        .with_state(state)
}

#[utoipa::path(
    get,
    path = "/health",
    operation_id = "health",
    tag = "ops",
    summary = "Liveness and version (no key needed)",
    responses((status = 200, description = "The server is up", body = Health))
)]
async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    })
}

/// A 404 naming the full path (`OriginalUri`: inside `/v1` the router sees
/// the path without its prefix).
async fn unknown_route(method: Method, OriginalUri(uri): OriginalUri) -> ApiError {
    ApiError::NotFound {
        message: format!("Unknown request URL: {method} {}.", uri.path()),
        param: None,
        code: ErrorCode::UnknownUrl,
    }
}

/// Gives every error answer OpenAI's JSON body. Handlers answer with an
/// [`ApiError`] already; this catches what axum answers by itself, which is
/// plain text or empty: 405 (wrong method on a known path), 413 (a body
/// limit), and any rejection an extractor makes before a handler runs.
/// Headers such as `Allow` are kept.
async fn openai_errors(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let resp = next.run(req).await;
    let status = resp.status();
    let is_error = status.is_client_error() || status.is_server_error();
    if !is_error || crate::extract::is_json(resp.headers()) {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 16 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let mut fixed = plain_error(status, &method, &path, text).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            fixed.headers_mut().entry(name).or_insert(value.clone());
        }
    }
    fixed
}

/// The [`ApiError`] for an error axum answered in plain text (`text`, maybe
/// empty) with `status`.
fn plain_error(status: StatusCode, method: &Method, path: &str, text: String) -> ApiError {
    let said = |fallback: String| {
        if text.is_empty() {
            fallback
        } else {
            text.clone()
        }
    };
    match status {
        StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed {
            message: format!("{method} is not allowed on {path}."),
        },
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge { limit: 0 },
        StatusCode::NOT_FOUND => ApiError::NotFound {
            message: said(format!("Unknown request URL: {method} {path}.")),
            param: None,
            code: ErrorCode::UnknownUrl,
        },
        s if s.is_server_error() => ApiError::internal(said(s.to_string())),
        s => ApiError::invalid(None, said(format!("The request was refused ({s})."))),
    }
}

/// Turns list query parameters into a page request, checking `limit`
/// against `1..=max` and `order` against `asc|desc`.
pub(crate) fn page_request(q: &ListQuery, default: u32, max: u32) -> Result<PageRequest, ApiError> {
    let limit = q.limit.unwrap_or(default);
    if limit == 0 || limit > max {
        return Err(ApiError::invalid(
            "limit",
            format!("limit must be between 1 and {max}, got {limit}"),
        ));
    }
    let order = match q.order.as_deref() {
        None | Some("desc") => Order::Desc,
        Some("asc") => Order::Asc,
        Some(o) => {
            return Err(ApiError::invalid(
                "order",
                format!("order must be 'asc' or 'desc', got '{o}'"),
            ))
        }
    };
    Ok(PageRequest {
        after: q.after.clone(),
        limit,
        order,
    })
}
