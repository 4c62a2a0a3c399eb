//! Validating a new job, before it is queued: its files are checked with
//! hone-data (every problem listed, with its line and message number), the
//! training file must hold enough examples, and its "auto" hyperparameters
//! are resolved for this data and shown on the job, with an event saying
//! why. Any problem fails the job with a [`JobError`] whose code and `param`
//! name the file.
//!
//! "auto" is resolved by the training engine when there is one (hone-train's
//! job builder, with the base model's tokenizer and size: exactly what the
//! run and `hone train` resolve), and by hone-data's rule on the report's
//! counts otherwise.
//!
//! Kept apart from the job loop (`worker/mod.rs`) because it is about the
//! data, not about states: the loop only turns its verdict into a
//! transition.

use crate::api::{
    AutoOr, ErrorCode, FineTuningJob, Hyperparameters, JobError, JobFile, MethodType,
};
use crate::blobs::FsBlobStore;
use crate::engines::{FileProblem, ModelCatalog, TrainingEngine};
use crate::store::{JobUpdate, NewEvent, Store};

/// Checks the job's files with hone-data (every problem listed, with its
/// line), then resolves its "auto" hyperparameters for this data, shows
/// them on the job and says why in an event.
pub(super) fn check_files(
    store: &dyn Store,
    blobs: &FsBlobStore,
    engines: Resolvers<'_>,
    job: &FineTuningJob,
) -> Result<(), JobError> {
    let method = match job.method.kind {
        MethodType::Dpo => hone_data::Method::Dpo,
        _ => hone_data::Method::Sft,
    };
    let opts = hone_data::ValidateOptions {
        method: Some(method),
        ..Default::default()
    };
    let train = report(blobs, &job.training_file, &opts, JobFile::Training)?;
    if train.n_examples < hone_data::MIN_EXAMPLES {
        return Err(JobError::new(
            ErrorCode::InvalidNExamples,
            format!(
                "The training file has {} valid examples; at least {} are required.",
                train.n_examples,
                hone_data::MIN_EXAMPLES
            ),
        )
        .with_param(JobFile::Training.param()));
    }
    let valid_path = match &job.validation_file {
        Some(v) => {
            report(blobs, v, &opts, JobFile::Validation)?;
            Some(
                blobs
                    .path(v)
                    .map_err(|e| JobFile::Validation.error(e.to_string()))?,
            )
        }
        None => None,
    };
    let from_engine = match engines.training {
        Some(engine) => {
            let train_path = blobs
                .path(&job.training_file)
                .map_err(|e| JobFile::Training.error(e.to_string()))?;
            engine.resolve_hyperparameters(job, &train_path, valid_path.as_deref())
        }
        None => None,
    };
    let resolved = match from_engine {
        Some(r) => r?,
        None => resolve_from_report(job, method, &train, engines.catalog)?,
    };
    show_resolved(store, job, &resolved);
    Ok(())
}

/// What validation asks to resolve "auto": the training engine, which
/// resolves exactly as the run will, or else hone-data's rule with the
/// catalog's model size.
pub(super) struct Resolvers<'a> {
    pub training: Option<&'a dyn TrainingEngine>,
    pub catalog: &'a dyn ModelCatalog,
}

/// Validates one file; any error (other than too few examples, which
/// the caller judges) fails the job with every problem listed.
fn report(
    blobs: &FsBlobStore,
    file_id: &str,
    opts: &hone_data::ValidateOptions,
    which: JobFile,
) -> Result<hone_data::Report, JobError> {
    let invalid = |message: String| which.error(message);
    let path = blobs.path(file_id).map_err(|e| invalid(e.to_string()))?;
    let report = hone_data::validate_file(&path, opts, None)
        .map_err(|e| invalid(format!("File {file_id} cannot be read: {e}")))?;
    let errors: Vec<String> = report
        .errors
        .iter()
        .filter(|i| i.code != hone_data::Code::InvalidNExamples)
        .map(|i| FileProblem::from(i).to_string())
        .collect();
    if !errors.is_empty() {
        return Err(invalid(format!(
            "File {file_id} has {} error(s):\n{}",
            errors.len(),
            errors.join("\n")
        )));
    }
    Ok(report)
}

/// hone-data's "auto" rule on the validation report's counts, for a server
/// without a training engine.
fn resolve_from_report(
    job: &FineTuningJob,
    method: hone_data::Method,
    train: &hone_data::Report,
    catalog: &dyn ModelCatalog,
) -> Result<hone_data::hparams::ResolvedHyperparameters, JobError> {
    let overrides = job.requested().overrides();
    let mean_tokens = train
        .stats
        .tokens
        .as_ref()
        .map(|t| t.total_tokens as f64 / train.n_examples.max(1) as f64);
    let input = hone_data::hparams::AutoInput {
        method,
        n_examples: train.n_examples,
        mean_tokens_per_example: mean_tokens,
        model: catalog.model_size(&crate::ids::base_model_id(&job.model)),
    };
    hone_data::hparams::resolve_auto(&input, &overrides).map_err(|e| {
        JobError::new(ErrorCode::InvalidHyperparameters, e.to_string())
            .with_param("hyperparameters")
    })
}

/// Shows the resolved values on the job, and says why in an event.
fn show_resolved(
    store: &dyn Store,
    job: &FineTuningJob,
    r: &hone_data::hparams::ResolvedHyperparameters,
) {
    let resolved = Hyperparameters {
        n_epochs: AutoOr::Value(r.n_epochs),
        batch_size: AutoOr::Value(r.batch_size),
        learning_rate_multiplier: AutoOr::Value(r.learning_rate_multiplier),
        beta: r.beta.map(AutoOr::Value),
    };
    let _ = store.update_job(
        &job.id,
        &JobUpdate {
            hyperparameters: Some(resolved),
            ..Default::default()
        },
    );
    let why: Vec<String> = r
        .reasons
        .iter()
        .map(|x| format!("{}={} ({})", x.param, x.value, x.why))
        .collect();
    let _ = store.add_event(
        &job.id,
        &NewEvent::info(format!("Hyperparameters: {}", why.join("; "))),
    );
}
