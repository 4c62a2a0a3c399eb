//! `GET /metrics`: the Prometheus text of [`crate::metrics::Metrics`].
//! Behind the API key unless `hone serve --public-metrics` (the router
//! decides; see `routes/mod.rs`).

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::auth::{require_key, AuthState};
use crate::error::ApiError;
use crate::metrics::{EngineSnapshot, Metrics, CONTENT_TYPE};
use crate::state::AppState;

#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "ops",
    summary = "Prometheus metrics (behind the key unless --public-metrics)",
    responses((status = 200, description = "Every metric in the Prometheus text format 0.0.4 (docs/api.md, Metrics)", content_type = "text/plain", body = String))
)]
pub(super) async fn metrics(State(st): State<AppState>) -> Result<Response, ApiError> {
    let jobs = st.store.run(Metrics::job_counts).await?;
    let engine = st
        .engines
        .chat
        .as_ref()
        .map(EngineSnapshot::of)
        .unwrap_or_default();
    let catalog = &st.engines.catalog;
    let bases = catalog.base_models().into_iter().map(|m| m.id);
    let adapters = catalog.served_adapters().into_iter().map(|a| a.model.id);
    let served: Vec<String> = bases.chain(adapters).collect();
    let text = st.metrics.render(engine, &jobs, &served);
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response())
}

/// Who may read `/metrics`: everyone when `public`, else callers with a
/// key, checked as under `/v1`.
#[derive(Clone)]
pub(super) struct MetricsAuth {
    pub(super) public: bool,
    pub(super) auth: AuthState,
}

/// The key check of `/v1`, skipped when the metrics are public.
pub(super) async fn key_unless_public(
    State(m): State<MetricsAuth>,
    req: Request,
    next: Next,
) -> Response {
    if m.public {
        return next.run(req).await;
    }
    require_key(State(m.auth), req, next).await
}
