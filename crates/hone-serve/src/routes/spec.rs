//! `GET /openapi.json`: the operations collected from the
//! `#[utoipa::path]` attribute on each handler (beside the code it
//! describes, so a changed request or answer type changes the spec with it),
//! completed by `crate::openapi` with what every operation shares (auth, the
//! error answer). It lives inside `routes` because the handlers are private
//! to it.

use axum::Json;
use utoipa::OpenApi;

use super::{chat, chat_store, embeddings, files, jobs, metrics, models};

/// Every routed operation. `tests/it/openapi.rs` checks this list against
/// the router both ways.
#[derive(OpenApi)]
#[openapi(paths(
    super::health,
    openapi_json,
    metrics::metrics,
    files::upload,
    files::list,
    files::retrieve,
    files::delete,
    files::content,
    jobs::create,
    jobs::list,
    jobs::retrieve,
    jobs::cancel,
    jobs::pause,
    jobs::resume,
    jobs::events,
    jobs::checkpoints,
    models::list,
    models::retrieve,
    models::delete,
    chat::completions,
    chat_store::list,
    chat_store::retrieve,
    chat_store::update,
    chat_store::delete,
    chat_store::messages,
    embeddings::create,
))]
pub(crate) struct RoutedApi;

/// The OpenAPI document of this server.
pub fn spec() -> utoipa::openapi::OpenApi {
    crate::openapi::complete(RoutedApi::openapi())
}

/// `GET /openapi.json`.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    tag = "ops",
    summary = "This document (no key needed)",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = serde_json::Value))
)]
pub(super) async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(spec())
}
