//! The error body every non-2xx answer has, and [`ErrorCode`]: every
//! machine-readable `code` the API answers with, in one table.
//!
//! Why one enum: clients branch on these strings (the SDK exposes them as
//! `e.code`), so they are part of the wire format. Written as free literals
//! they drift (one code spelled in two files, a typo nobody sees); here each
//! is spelled once, and HTTP errors ([`crate::error::ApiError`]) and failed
//! jobs ([`super::JobError`]) can only be built from a variant.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Every `code` this server answers with: `error.code` of an HTTP error
/// body, and `error.code` of a failed fine-tuning job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    // ----- any request
    /// The body is not valid JSON for the request.
    InvalidJson,
    /// A missing or wrong API key (401).
    InvalidApiKey,
    /// No route has this method and path (404).
    UnknownUrl,
    /// The path exists, but not with this method (405).
    MethodNotAllowed,
    /// No object with this id (404).
    NotFound,
    /// No base, fine-tuned or checkpoint model with this id (404).
    ModelNotFound,
    /// An upload over the size limit (413).
    FileTooLarge,
    /// Admission control: every chat slot is busy (429, `Retry-After`).
    RateLimitExceeded,
    /// A feature or engine this server does not offer (501).
    NotImplemented,
    /// A fault on our side (500), or a trainer crash on a job.
    InternalError,
    // ----- permanent conflicts with the current state (400)
    /// The job's status does not allow the action (e.g. cancel a finished job).
    InvalidJobState,
    /// An object with this id already exists.
    Duplicate,
    /// Base, `--adapter` and checkpoint models cannot be deleted.
    ModelNotDeletable,
    // ----- fine-tuning jobs: at creation (400) and on failed jobs
    /// The base model is not offered for fine-tuning (or no longer served).
    ModelNotAvailable,
    /// A `method.type` this server does not train (reinforcement).
    UnsupportedMethod,
    /// The training file is missing, not a fine-tune file, or invalid.
    InvalidTrainingFile,
    /// The validation file is missing, not a fine-tune file, or invalid.
    InvalidValidationFile,
    /// The training file has too few valid examples.
    InvalidNExamples,
    /// The hyperparameters cannot be resolved for this data.
    InvalidHyperparameters,
    /// The job's base model did not load.
    ModelLoadFailed,
    /// Training itself failed.
    TrainingFailed,
    // ----- chat completions
    /// The prompt leaves no room for an answer in the model's context.
    ContextLengthExceeded,
    /// The model's weights or adapter cannot be loaded.
    ModelUnavailable,
}

impl ErrorCode {
    /// Every code, in the order of the enum (for the OpenAPI spec). Keep it
    /// in step with the enum when adding a variant.
    pub const ALL: [ErrorCode; 23] = {
        use ErrorCode::*;
        [
            InvalidJson,
            InvalidApiKey,
            UnknownUrl,
            MethodNotAllowed,
            NotFound,
            ModelNotFound,
            FileTooLarge,
            RateLimitExceeded,
            NotImplemented,
            InternalError,
            InvalidJobState,
            Duplicate,
            ModelNotDeletable,
            ModelNotAvailable,
            UnsupportedMethod,
            InvalidTrainingFile,
            InvalidValidationFile,
            InvalidNExamples,
            InvalidHyperparameters,
            ModelLoadFailed,
            TrainingFailed,
            ContextLengthExceeded,
            ModelUnavailable,
        ]
    };

    /// THE table: the string clients see for every code.
    pub fn as_str(self) -> &'static str {
        use ErrorCode::*;
        match self {
            InvalidJson => "invalid_json",
            InvalidApiKey => "invalid_api_key",
            UnknownUrl => "unknown_url",
            MethodNotAllowed => "method_not_allowed",
            NotFound => "not_found",
            ModelNotFound => "model_not_found",
            FileTooLarge => "file_too_large",
            RateLimitExceeded => "rate_limit_exceeded",
            NotImplemented => "not_implemented",
            InternalError => "internal_error",
            InvalidJobState => "invalid_job_state",
            Duplicate => "duplicate",
            ModelNotDeletable => "model_not_deletable",
            ModelNotAvailable => "model_not_available",
            UnsupportedMethod => "unsupported_method",
            InvalidTrainingFile => "invalid_training_file",
            InvalidValidationFile => "invalid_validation_file",
            InvalidNExamples => "invalid_n_examples",
            InvalidHyperparameters => "invalid_hyperparameters",
            ModelLoadFailed => "model_load_failed",
            TrainingFailed => "training_failed",
            ContextLengthExceeded => "context_length_exceeded",
            ModelUnavailable => "model_unavailable",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `{"error": {...}}`, the body of every non-2xx answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// The inside of an error body. `param` and `code` are always present (as
/// null when unknown), as in OpenAI's answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_code_is_listed_once_and_spelled_in_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            let s = c.as_str();
            assert!(seen.insert(s), "{s} twice");
            assert!(
                !s.is_empty() && s.chars().all(|ch| ch.is_ascii_lowercase() || ch == '_'),
                "{s}"
            );
        }
    }

    #[test]
    fn error_body_always_has_param_and_code() {
        let e = ErrorBody {
            error: ErrorDetail {
                message: "m".into(),
                kind: "invalid_request_error".into(),
                param: None,
                code: None,
            },
        };
        assert_eq!(
            serde_json::to_value(e).unwrap(),
            json!({"error": {"message": "m", "type": "invalid_request_error", "param": null, "code": null}})
        );
    }
}
