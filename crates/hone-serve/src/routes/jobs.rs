//! `/v1/fine_tuning/jobs`: create, list, retrieve, cancel, pause, resume,
//! events, checkpoints. Handlers read the store directly but never change a
//! job's state: that goes through the worker. What creation checks in the
//! job's files is in [`data`].

mod data;

use axum::extract::State;
use axum::Extension;
use axum::Json;

use super::page_request;
use crate::api::{
    AutoOr, CreateJobRequest, ErrorCode, FileStatus, FineTuningJob, Hyperparameters, JobCheckpoint,
    JobEvent, JobFile, JobStatus, JobTag, ListQuery, ListResponse, Method, MethodParams,
    MethodType,
};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::ids;
use crate::state::AppState;
use crate::store::unix_now;
use crate::worker::Command;

/// The largest `batch_size` the API takes (the other ranges are hone-data's,
/// [`hone_data::hparams::Overrides::out_of_range`], shared with the trainer).
const MAX_BATCH_SIZE: u32 = 256;

/// Page sizes: OpenAI's defaults, and our cap.
const JOBS_PAGE: (u32, u32) = (20, 100);
const EVENTS_PAGE: (u32, u32) = (20, 1000);
const CHECKPOINTS_PAGE: (u32, u32) = (10, 100);

#[utoipa::path(
    post,
    path = "/v1/fine_tuning/jobs",
    operation_id = "createFineTuningJob",
    tag = "fine-tuning",
    summary = "Create a fine-tuning job (supervised or dpo)",
    request_body(content = CreateJobRequest, content_type = "application/json"),
    responses((status = 200, description = "The new job, `validating_files`", body = FineTuningJob))
)]
pub(super) async fn create(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<CreateJobRequest>,
) -> Result<Json<FineTuningJob>, ApiError> {
    check_model(&st, &caller, &req.model).await?;
    if let Some(s) = &req.suffix {
        ids::validate_suffix(s)?;
    }
    check_metadata(&req)?;
    let (method, hyperparameters, given_at) = method_of(&req)?;
    check_file(&st, &caller, &req.training_file, JobFile::Training).await?;
    if let Some(v) = &req.validation_file {
        check_file(&st, &caller, v, JobFile::Validation).await?;
    }
    let batch_size = hyperparameters
        .batch_size
        .value()
        .map(|b| (b, format!("{given_at}.batch_size")));
    let wanted = data::DataRequest {
        kind: method.kind,
        training_file: &req.training_file,
        validation_file: req.validation_file.as_deref(),
        batch_size,
    };
    data::check_data(&st, &wanted).await?;
    let job = FineTuningJob {
        id: ids::job_id(),
        object: JobTag,
        created_at: unix_now(),
        error: None,
        fine_tuned_model: None,
        finished_at: None,
        hyperparameters,
        method,
        model: req.model,
        organization_id: caller.project.clone(),
        result_files: vec![],
        seed: req
            .seed
            .unwrap_or_else(|| i64::from(rand::random::<u32>() >> 1)),
        status: JobStatus::ValidatingFiles,
        trained_tokens: None,
        training_file: req.training_file,
        validation_file: req.validation_file,
        estimated_finish: None,
        integrations: None,
        metadata: req.metadata,
        user_provided_suffix: req.suffix,
        requested_hyperparameters: Some(hyperparameters),
    };
    let stored = job.clone();
    st.store.run(move |s| s.insert_job(&stored)).await?;
    st.worker.job_created();
    Ok(Json(job))
}

/// The job's `model`: a served base model, or a fine-tuned (or checkpoint) model of the
/// caller's project, which the job continues (its adapter's weights and LoRA shape are
/// the start; see docs/api.md). Another project's fine-tuned model is a 404 like an
/// unknown one, so ids of other projects cannot be probed.
async fn check_model(st: &AppState, caller: &Caller, model: &str) -> Result<(), ApiError> {
    if st.engines.catalog.base_model(model).is_some() {
        return Ok(());
    }
    if ids::FineTunedName::parse(model).is_none() {
        return Err(ApiError::invalid_with_code(
            "model",
            ErrorCode::ModelNotAvailable,
            format!(
                "Model '{model}' is not available for fine-tuning. Base models: {}; or a \
                 fine-tuned model (ft:...) of your project, to continue it.",
                base_ids(st).join(", ")
            ),
        ));
    }
    let (scope, id) = (caller.scope(), model.to_string());
    let rec = match st.store.run(move |s| s.get_model(&scope, &id)).await {
        Ok(rec) => rec,
        Err(crate::store::StoreError::NotFound { .. }) => {
            return Err(ApiError::model_not_found(model))
        }
        Err(e) => return Err(e.into()),
    };
    let unusable = |why: String| {
        ApiError::invalid_with_code(
            "model",
            ErrorCode::ModelNotAvailable,
            format!("Model '{model}' cannot be fine-tuned further: {why}."),
        )
    };
    if st.engines.catalog.base_model(&rec.base).is_none() {
        return Err(unusable(format!(
            "its base model '{}' is not served",
            rec.base
        )));
    }
    hone_train::AdapterShape::read(&rec.adapter_path).map_err(|e| unusable(e.to_string()))?;
    Ok(())
}

fn base_ids(st: &AppState) -> Vec<String> {
    st.engines
        .catalog
        .base_models()
        .into_iter()
        .map(|m| m.id)
        .collect()
}

/// OpenAI's limits: at most 16 pairs, keys up to 64 and values up to 512
/// characters.
fn check_metadata(req: &CreateJobRequest) -> Result<(), ApiError> {
    let Some(m) = &req.metadata else {
        return Ok(());
    };
    let bad = m.len() > 16
        || m.iter()
            .any(|(k, v)| k.chars().count() > 64 || v.chars().count() > 512);
    if bad {
        return Err(ApiError::invalid(
            "metadata",
            "metadata takes at most 16 pairs, keys up to 64 and values up to 512 characters",
        ));
    }
    Ok(())
}

/// The method and its requested hyperparameters, from `method` or the
/// legacy top-level `hyperparameters` (not both), and the path of the
/// field they were given in (for `param`: `hyperparameters.n_epochs` or
/// `method.dpo.hyperparameters.beta`, as the user wrote it).
fn method_of(req: &CreateJobRequest) -> Result<(Method, Hyperparameters, &'static str), ApiError> {
    let (kind, from_method) = match &req.method {
        None => (MethodType::Supervised, None),
        Some(m) => match m.kind {
            MethodType::Reinforcement => {
                return Err(ApiError::invalid_with_code(
                    "method.type",
                    ErrorCode::UnsupportedMethod,
                    "Reinforcement fine-tuning is not supported by this server; use method.type 'supervised' or 'dpo'.",
                ))
            }
            MethodType::Supervised => (MethodType::Supervised, m.supervised.map(|p| p.hyperparameters)),
            MethodType::Dpo => (MethodType::Dpo, m.dpo.map(|p| p.hyperparameters)),
        },
    };
    if from_method.is_some() && req.hyperparameters.is_some() {
        return Err(ApiError::invalid(
            "hyperparameters",
            "Give hyperparameters either in method.<type>.hyperparameters or at the top level, not both.",
        ));
    }
    let given_at = match (from_method.is_some(), kind) {
        (false, _) => "hyperparameters",
        (true, MethodType::Dpo) => "method.dpo.hyperparameters",
        (true, _) => "method.supervised.hyperparameters",
    };
    // All "auto" unless given; the worker resolves them at validation.
    let mut h = from_method.or(req.hyperparameters).unwrap_or_default();
    check_ranges(&h, kind, given_at)?;
    if kind == MethodType::Dpo && h.beta.is_none() {
        h.beta = Some(AutoOr::default());
    }
    let params = Some(MethodParams { hyperparameters: h });
    let method = Method {
        kind,
        supervised: if kind == MethodType::Supervised {
            params
        } else {
            None
        },
        dpo: if kind == MethodType::Dpo {
            params
        } else {
            None
        },
        reinforcement: None,
    };
    Ok((method, h, given_at))
}

/// The ranges of the user's values: hone-data's, the ones the trainer
/// checks (so a job accepted here never fails on them later), plus the
/// API's batch cap.
fn check_ranges(h: &Hyperparameters, kind: MethodType, given_at: &str) -> Result<(), ApiError> {
    let bad = |name: &str, message: String| ApiError::InvalidRequest {
        message,
        param: Some(format!("{given_at}.{name}")),
        code: None,
    };
    if kind == MethodType::Supervised && h.beta.is_some() {
        return Err(bad("beta", "beta applies to method.type 'dpo' only".into()));
    }
    if let Some(p) = h.overrides().out_of_range() {
        return Err(bad(p.param, format!("{} (or \"auto\")", p.message)));
    }
    match h.batch_size.value() {
        Some(b) if b > MAX_BATCH_SIZE => Err(bad(
            "batch_size",
            format!("batch_size must be at most {MAX_BATCH_SIZE} (or \"auto\"), got {b}"),
        )),
        _ => Ok(()),
    }
}

/// The file must exist, be a fine-tune upload, and not have failed
/// validation (its problems are repeated here, so the user sees them).
/// Another project's file does not exist, as far as the caller can tell.
async fn check_file(
    st: &AppState,
    caller: &Caller,
    id: &str,
    which: JobFile,
) -> Result<(), ApiError> {
    let invalid =
        |message: String| ApiError::invalid_with_code(which.param(), which.invalid_code(), message);
    let fid = id.to_string();
    let scope = caller.scope();
    let rec = st
        .store
        .run(move |s| s.get_file(&scope, &fid))
        .await
        .map_err(|_| invalid(format!("File '{id}' does not exist.")))?;
    let f = rec.object;
    let problem = if f.purpose != "fine-tune" {
        Some(format!(
            "File '{id}' has purpose '{}', not 'fine-tune'.",
            f.purpose
        ))
    } else if f.status == FileStatus::Error {
        Some(format!(
            "File '{id}' failed validation:\n{}",
            f.status_details.unwrap_or_default()
        ))
    } else {
        None
    };
    match problem {
        Some(message) => Err(invalid(message)),
        None => Ok(()),
    }
}

#[utoipa::path(
    get,
    path = "/v1/fine_tuning/jobs",
    operation_id = "listFineTuningJobs",
    tag = "fine-tuning",
    summary = "List fine-tuning jobs, newest first",
    params(ListQuery),
    responses((status = 200, description = "A page of jobs", body = ListResponse<FineTuningJob>))
)]
pub(super) async fn list(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<ListResponse<FineTuningJob>>, ApiError> {
    let page = page_request(&q, JOBS_PAGE.0, JOBS_PAGE.1)?;
    let p = st
        .store
        .run(move |s| s.list_jobs(&caller.scope(), &page))
        .await?;
    Ok(Json(ListResponse::page(p.data, p.has_more)))
}

#[utoipa::path(
    get,
    path = "/v1/fine_tuning/jobs/{id}",
    operation_id = "retrieveFineTuningJob",
    tag = "fine-tuning",
    summary = "Retrieve a job",
    params(("id" = String, Path, description = "A job id")),
    responses((status = 200, description = "The job", body = FineTuningJob))
)]
pub(super) async fn retrieve(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<FineTuningJob>, ApiError> {
    Ok(Json(
        st.store
            .run(move |s| s.get_job(&caller.scope(), &id))
            .await?,
    ))
}

/// Sends `c` to the worker for a job the caller can see (else 404).
async fn command(
    st: &AppState,
    caller: &Caller,
    id: &str,
    c: Command,
) -> Result<Json<FineTuningJob>, ApiError> {
    let lookup = id.to_string();
    let scope = caller.scope();
    st.store.run(move |s| s.get_job(&scope, &lookup)).await?;
    Ok(Json(st.worker.command(id, c).await?))
}

#[utoipa::path(
    post,
    path = "/v1/fine_tuning/jobs/{id}/cancel",
    operation_id = "cancelFineTuningJob",
    tag = "fine-tuning",
    summary = "Cancel a job (answers at once; a running one stops within a step)",
    params(("id" = String, Path, description = "A job id")),
    responses((status = 200, description = "The job, `cancelled`", body = FineTuningJob))
)]
pub(super) async fn cancel(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<FineTuningJob>, ApiError> {
    command(&st, &caller, &id, Command::Cancel).await
}

#[utoipa::path(
    post,
    path = "/v1/fine_tuning/jobs/{id}/pause",
    operation_id = "pauseFineTuningJob",
    tag = "fine-tuning",
    summary = "Pause a job (a running one checkpoints first)",
    params(("id" = String, Path, description = "A job id")),
    responses((status = 200, description = "The job", body = FineTuningJob))
)]
pub(super) async fn pause(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<FineTuningJob>, ApiError> {
    command(&st, &caller, &id, Command::Pause).await
}

#[utoipa::path(
    post,
    path = "/v1/fine_tuning/jobs/{id}/resume",
    operation_id = "resumeFineTuningJob",
    tag = "fine-tuning",
    summary = "Resume a paused job (queued again; continues from its checkpoint)",
    params(("id" = String, Path, description = "A job id")),
    responses((status = 200, description = "The job", body = FineTuningJob))
)]
pub(super) async fn resume(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<FineTuningJob>, ApiError> {
    command(&st, &caller, &id, Command::Resume).await
}

#[utoipa::path(
    get,
    path = "/v1/fine_tuning/jobs/{id}/events",
    operation_id = "listFineTuningEvents",
    tag = "fine-tuning",
    summary = "A job's events (messages and per-step metrics), newest first",
    params(("id" = String, Path, description = "A job id"), ListQuery),
    responses((status = 200, description = "A page of events", body = ListResponse<JobEvent>))
)]
pub(super) async fn events(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<ListResponse<JobEvent>>, ApiError> {
    let page = page_request(&q, EVENTS_PAGE.0, EVENTS_PAGE.1)?;
    let p = st
        .store
        .run(move |s| s.list_events(&caller.scope(), &id, &page))
        .await?;
    Ok(Json(ListResponse::page(p.data, p.has_more)))
}

#[utoipa::path(
    get,
    path = "/v1/fine_tuning/jobs/{id}/checkpoints",
    operation_id = "listFineTuningJobCheckpoints",
    tag = "fine-tuning",
    summary = "A job's checkpoints, each usable as a model",
    params(("id" = String, Path, description = "A job id"), ListQuery),
    responses((status = 200, description = "A page of checkpoints", body = ListResponse<JobCheckpoint>))
)]
pub(super) async fn checkpoints(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<ListResponse<JobCheckpoint>>, ApiError> {
    let page = page_request(&q, CHECKPOINTS_PAGE.0, CHECKPOINTS_PAGE.1)?;
    let p = st
        .store
        .run(move |s| s.list_checkpoints(&caller.scope(), &id, &page))
        .await?;
    Ok(Json(ListResponse::page(p.data, p.has_more)))
}
