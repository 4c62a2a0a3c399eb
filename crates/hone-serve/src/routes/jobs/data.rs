//! What job creation checks in the job's files, so that a problem known at
//! creation is a 400 then, not a job that fails a moment later: the
//! training file's format must match `method.type` (said once, pointing at
//! `method.type`, not one error per line), it must hold at least
//! [`hone_data::MIN_EXAMPLES`] examples, a validation file must be in the
//! same format, and a `batch_size` the user set must not exceed the number
//! of training examples (refused, not clamped: see docs/api.md).
//!
//! hone-data reads each file once here, detecting its format. The worker
//! validates again when it resolves "auto" (`worker/validate.rs`); a blob
//! never changes, so both see the same data.

use std::path::PathBuf;

use crate::api::{ErrorCode, JobFile, MethodType};
use crate::engines::FileProblem;
use crate::error::ApiError;
use crate::state::AppState;

/// At most this many of a file's problems are quoted in a 400; the rest are
/// counted (the file's `status_details` lists them all).
const MAX_QUOTED_PROBLEMS: usize = 20;

/// What the request asks of the data.
pub(super) struct DataRequest<'a> {
    pub kind: MethodType,
    pub training_file: &'a str,
    pub validation_file: Option<&'a str>,
    /// `batch_size`, if the user set one, and the path of its field.
    pub batch_size: Option<(u32, String)>,
}

/// Reads the job's files with hone-data and refuses what cannot train.
pub(super) async fn check_data(st: &AppState, req: &DataRequest<'_>) -> Result<(), ApiError> {
    let train = read(st, req.training_file, JobFile::Training).await?;
    check_format(&train, req.kind, req.training_file, JobFile::Training)?;
    if train.n_examples < hone_data::MIN_EXAMPLES {
        return Err(ApiError::invalid_with_code(
            JobFile::Training.param(),
            ErrorCode::InvalidNExamples,
            format!(
                "The training file '{}' has {} example(s); at least {} are required.",
                req.training_file,
                train.n_examples,
                hone_data::MIN_EXAMPLES
            ),
        ));
    }
    if let Some(v) = req.validation_file {
        let valid = read(st, v, JobFile::Validation).await?;
        check_format(&valid, req.kind, v, JobFile::Validation)?;
    }
    match &req.batch_size {
        Some((b, param)) if (*b as usize) > train.n_examples => Err(ApiError::invalid_with_code(
            param.clone(),
            ErrorCode::InvalidHyperparameters,
            format!(
                "batch_size {b} is larger than the {} examples of the training file; \
                 use at most {}, or \"auto\".",
                train.n_examples, train.n_examples
            ),
        )),
        _ => Ok(()),
    }
}

/// hone-data's report on one file, its format detected (on the blocking
/// pool: a large file takes a moment).
async fn read(st: &AppState, id: &str, which: JobFile) -> Result<hone_data::Report, ApiError> {
    let path: PathBuf = st.blobs.path(id).map_err(|e| {
        ApiError::invalid_with_code(which.param(), which.invalid_code(), e.to_string())
    })?;
    let opts = hone_data::ValidateOptions {
        method: None,
        min_examples: 1,
        ..Default::default()
    };
    tokio::task::spawn_blocking(move || hone_data::validate_file(&path, &opts, None))
        .await
        .map_err(|e| ApiError::internal(format!("validation task failed: {e}")))?
        .map_err(|e| ApiError::internal(format!("reading file '{id}': {e}")))
}

/// The file's format must be the job's, and the file must have no errors.
fn check_format(
    report: &hone_data::Report,
    kind: MethodType,
    id: &str,
    which: JobFile,
) -> Result<(), ApiError> {
    let want = match kind {
        MethodType::Dpo => hone_data::Method::Dpo,
        _ => hone_data::Method::Sft,
    };
    if report.n_examples > 0 && report.method != want {
        return Err(format_mismatch(report.method, kind, id, which));
    }
    let errors: Vec<String> = report
        .errors
        .iter()
        .map(|i| FileProblem::from(i).to_string())
        .collect();
    if errors.is_empty() {
        return Ok(());
    }
    let mut quoted = errors[..errors.len().min(MAX_QUOTED_PROBLEMS)].join("\n");
    if errors.len() > MAX_QUOTED_PROBLEMS {
        let more = errors.len() - MAX_QUOTED_PROBLEMS;
        quoted.push_str(&format!("\n... and {more} more"));
    }
    Err(ApiError::invalid_with_code(
        which.param(),
        which.invalid_code(),
        format!("File '{id}' has {} error(s):\n{quoted}", errors.len()),
    ))
}

/// One error for a whole file in the other method's format. For the
/// training file it points at `method.type` (the user most likely chose the
/// wrong method); for a validation file, at the file.
fn format_mismatch(
    found: hone_data::Method,
    kind: MethodType,
    id: &str,
    which: JobFile,
) -> ApiError {
    let (holds, fits) = match found {
        hone_data::Method::Dpo => (
            "preference pairs (`input`, `preferred_output`, `non_preferred_output`)",
            "dpo",
        ),
        hone_data::Method::Sft => ("chat examples (`messages`)", "supervised"),
    };
    let job = match kind {
        MethodType::Dpo => "dpo",
        _ => "supervised",
    };
    match which {
        JobFile::Training => ApiError::invalid_with_code(
            "method.type",
            ErrorCode::InvalidTrainingFile,
            format!(
                "The training file '{id}' holds {holds}, but method.type is '{job}'. \
                 Use method.type '{fits}' for this file, or a file in the {job} format."
            ),
        ),
        JobFile::Validation => ApiError::invalid_with_code(
            which.param(),
            which.invalid_code(),
            format!(
                "The validation file '{id}' holds {holds}, but method.type is '{job}': \
                 the validation file must be in the training file's format."
            ),
        ),
    }
}
