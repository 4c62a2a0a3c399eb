//! The HTTP routes. Handlers are thin: parse, call the store or an engine,
//! answer with an `api` type or an `ApiError`.

mod chat;
mod files;
mod jobs;
mod models;

use axum::extract::DefaultBodyLimit;
use axum::http::{Method, Uri};
use axum::middleware::{from_fn, from_fn_with_state};
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

/// The whole application: `/health` (public) and `/v1/...` (behind the key).
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
        .route("/chat/completions", post(chat::completions))
        .route_layer(from_fn_with_state(auth, require_key));
    Router::new()
        .route("/health", get(health))
        .route("/openapi.json", get(crate::openapi::openapi_json))
        .nest("/v1", v1)
        .fallback(unknown_route)
        .layer(from_fn(request_id))
        .with_state(state)
}

async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    })
}

async fn unknown_route(method: Method, uri: Uri) -> ApiError {
    ApiError::NotFound {
        message: format!("Unknown request URL: {method} {}.", uri.path()),
        param: None,
        code: ErrorCode::UnknownUrl,
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
