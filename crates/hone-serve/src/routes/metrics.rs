//! `GET /metrics`: the Prometheus text of [`crate::metrics::Metrics`].
//! Admin keys only, unless `hone serve --public-metrics` (the router
//! decides; see `routes/mod.rs`): its labels name the served models of
//! every project and its gauges count every project's jobs, which a
//! project's own key must not see (it gets a 404 for another project's
//! models and jobs everywhere else).

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Extension;

use crate::auth::{require_key, AuthState, Caller};
use crate::error::ApiError;
use crate::metrics::{EngineSnapshot, Metrics, CONTENT_TYPE};
use crate::state::AppState;

#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "ops",
    summary = "Prometheus metrics (admin keys only, unless --public-metrics)",
    responses((status = 200, description = "Every metric in the Prometheus text format 0.0.4 (docs/api.md, Metrics)", content_type = "text/plain", body = String))
)]
pub(super) async fn metrics(
    State(st): State<AppState>,
    caller: Option<Extension<Caller>>,
) -> Result<Response, ApiError> {
    may_read(st.config.public_metrics, caller.as_deref())?;
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

/// Who may read `/metrics`: everyone when `public`, else callers with an
/// admin key (or everyone on a loopback server without keys, whose caller
/// is the admin).
#[derive(Clone)]
pub(super) struct MetricsAuth {
    pub(super) public: bool,
    pub(super) auth: AuthState,
}

/// The key check of `/v1`, skipped when the metrics are public (the
/// handler then asks for an admin).
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

/// Whether `caller` may read the metrics: anyone when they are public,
/// else an admin. A project's key gets a 401 that says what to use
/// instead (as OpenAI answers a key that lacks a scope).
fn may_read(public: bool, caller: Option<&Caller>) -> Result<(), ApiError> {
    if public || caller.is_some_and(|c| c.admin) {
        return Ok(());
    }
    Err(ApiError::Unauthorized {
        message: "GET /metrics needs an admin key (`hone keys create --admin`): it names every \
                  project's models. Or start the server with --public-metrics for a scraper on \
                  a trusted network."
            .into(),
    })
}
