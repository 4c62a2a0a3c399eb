//! `/v1/models`: base models from the catalog, adapters named with
//! `hone serve --adapter` (both shared by every project, read-only), then
//! the caller's fine-tuned and checkpoint models from the store.

use axum::extract::State;
use axum::{Extension, Json};

use crate::api::{ErrorCode, ListResponse, Model, ModelDeleted, ModelTag};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::ApiPath;
use crate::ids::FineTunedName;
use crate::state::AppState;

#[utoipa::path(
    get,
    path = "/v1/models",
    operation_id = "listModels",
    tag = "models",
    summary = "Base, fine-tuned and checkpoint models",
    responses((status = 200, description = "Every model this key may use", body = ListResponse<Model>))
)]
pub(super) async fn list(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<ListResponse<Model>>, ApiError> {
    let mut data = st.engines.catalog.base_models();
    data.extend(
        st.engines
            .catalog
            .served_adapters()
            .into_iter()
            .map(|a| a.model),
    );
    data.extend(
        st.store
            .run(move |s| s.list_models(&caller.scope()))
            .await?,
    );
    Ok(Json(ListResponse::page(data, false)))
}

#[utoipa::path(
    get,
    path = "/v1/models/{id}",
    operation_id = "retrieveModel",
    tag = "models",
    summary = "Retrieve a model (ft: ids keep their colons)",
    params(("id" = String, Path, description = "A model id")),
    responses((status = 200, description = "The model", body = Model))
)]
pub(super) async fn retrieve(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Model>, ApiError> {
    if let Some(m) = st.engines.catalog.base_model(&id) {
        return Ok(Json(m));
    }
    if let Some(a) = st.engines.catalog.served_adapter(&id) {
        return Ok(Json(a.model));
    }
    let rec = st
        .store
        .run(move |s| s.get_model(&caller.scope(), &id))
        .await?;
    Ok(Json(rec.model))
}

/// Deletes a fine-tuned model. Base and checkpoint models cannot be
/// deleted: a permanent 400, so the SDK does not retry. The adapter files
/// stay on disk with their job (its checkpoints still use them).
#[utoipa::path(
    delete,
    path = "/v1/models/{id}",
    operation_id = "deleteModel",
    tag = "models",
    summary = "Delete a fine-tuned model",
    params(("id" = String, Path, description = "A fine-tuned model id")),
    responses((status = 200, description = "Deleted", body = ModelDeleted))
)]
pub(super) async fn delete(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ModelDeleted>, ApiError> {
    if st.engines.catalog.base_model(&id).is_some() {
        return Err(ApiError::conflict(
            ErrorCode::ModelNotDeletable,
            format!("'{id}' is a base model; only fine-tuned models can be deleted."),
        ));
    }
    if st.engines.catalog.served_adapter(&id).is_some() {
        return Err(ApiError::conflict(
            ErrorCode::ModelNotDeletable,
            format!(
                "'{id}' is served from a directory given to `hone serve --adapter`; restart the server without it instead."
            ),
        ));
    }
    let scope = caller.scope();
    let rec = {
        let (id, scope) = (id.clone(), scope.clone());
        st.store.run(move |s| s.get_model(&scope, &id)).await?
    };
    if rec.checkpoint_step.is_some()
        || FineTunedName::parse(&id).is_some_and(|n| n.checkpoint_step.is_some())
    {
        return Err(ApiError::conflict(
            ErrorCode::ModelNotDeletable,
            format!(
                "'{id}' is a checkpoint model; checkpoints are kept with their job and cannot be deleted one by one."
            ),
        ));
    }
    let del = id.clone();
    st.store.run(move |s| s.delete_model(&scope, &del)).await?;
    Ok(Json(ModelDeleted {
        id,
        object: ModelTag,
        deleted: true,
    }))
}
