//! Fine-tuning jobs, their events and checkpoints (`/v1/fine_tuning/jobs`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::errors::ErrorCode;
use super::lists::HasId;

tag!(/// `"fine_tuning.job"`
    JobTag = "fine_tuning.job");
tag!(/// `"fine_tuning.job.event"`
    JobEventTag = "fine_tuning.job.event");
tag!(/// `"fine_tuning.job.checkpoint"`
    JobCheckpointTag = "fine_tuning.job.checkpoint");
tag!(/// `"auto"`, for hyperparameters the server resolves.
    AutoTag = "auto");

/// `"auto"` or a concrete value: what a user may give for a hyperparameter,
/// and what a job shows until the worker resolves it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum AutoOr<T> {
    Auto(AutoTag),
    Value(T),
}

/// By hand rather than `untagged`, whose error ("data did not match any
/// variant") hides what was wrong: this one says what was expected and what
/// came (`-1`, `"abc"`, `2.5`, `null`, 2⁴⁰ for a `u32`), and the request
/// parser adds the field's path as the error's `param`.
impl<'de, T: Deserialize<'de>> Deserialize<'de> for AutoOr<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        if v.as_str() == Some("auto") {
            return Ok(AutoOr::Auto(AutoTag));
        }
        T::deserialize(v)
            .map(AutoOr::Value)
            .map_err(|e| serde::de::Error::custom(format!("must be \"auto\" or a number ({e})")))
    }
}

impl<T> Default for AutoOr<T> {
    fn default() -> Self {
        AutoOr::Auto(AutoTag)
    }
}

impl<T: Copy> AutoOr<T> {
    /// The concrete value, if one was given.
    pub fn value(&self) -> Option<T> {
        match self {
            AutoOr::Auto(_) => None,
            AutoOr::Value(v) => Some(*v),
        }
    }
}

/// Hyperparameters, as requested (possibly `"auto"`) or resolved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Hyperparameters {
    #[serde(default)]
    pub n_epochs: AutoOr<u32>,
    #[serde(default)]
    pub batch_size: AutoOr<u32>,
    #[serde(default)]
    pub learning_rate_multiplier: AutoOr<f64>,
    /// DPO only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta: Option<AutoOr<f64>>,
}

impl Hyperparameters {
    /// The values the user set, as hone-data's overrides (`None` is
    /// "auto"): what the job route's range check, the trainer and the auto
    /// rule all read.
    pub fn overrides(&self) -> hone_data::hparams::Overrides {
        hone_data::hparams::Overrides {
            n_epochs: self.n_epochs.value(),
            batch_size: self.batch_size.value(),
            learning_rate_multiplier: self.learning_rate_multiplier.value(),
            beta: self.beta.and_then(|b| b.value()),
            // Not an API hyperparameter: the server's jobs use auto's.
            lr_schedule: None,
        }
    }
}

/// `method.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MethodType {
    Supervised,
    Dpo,
    /// Parsed so that we can answer it with a clear 400, not a serde error.
    Reinforcement,
}

/// `method.supervised` / `method.dpo`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MethodParams {
    #[serde(default)]
    pub hyperparameters: Hyperparameters,
}

/// The training method of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Method {
    #[serde(rename = "type")]
    pub kind: MethodType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supervised: Option<MethodParams>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpo: Option<MethodParams>,
    /// Accepted on input only to be refused clearly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reinforcement: Option<Value>,
}

/// Status of a fine-tuning job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    ValidatingFiles,
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    Paused,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::ValidatingFiles => "validating_files",
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
            JobStatus::Paused => "paused",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            JobStatus::ValidatingFiles,
            JobStatus::Queued,
            JobStatus::Running,
            JobStatus::Succeeded,
            JobStatus::Failed,
            JobStatus::Cancelled,
            JobStatus::Paused,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }

    /// A finished job never changes state again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled
        )
    }
}

/// `error` of a failed job. `code` is a string on the wire and in the
/// store (a job failed by an older version keeps its code); new ones are
/// built from an [`ErrorCode`] with [`JobError::new`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobError {
    pub code: String,
    pub message: String,
    pub param: Option<String>,
}

impl JobError {
    /// A job failure with `code` and a message for the user.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        JobError {
            code: code.as_str().to_string(),
            message: message.into(),
            param: None,
        }
    }

    /// The same, about request field `param` (e.g. `training_file`).
    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }
}

/// One of a job's two files: names its request field and the code of its
/// problems, at job creation and when the worker validates it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobFile {
    Training,
    Validation,
}

impl JobFile {
    /// The request field: `training_file` or `validation_file`.
    pub fn param(self) -> &'static str {
        match self {
            JobFile::Training => "training_file",
            JobFile::Validation => "validation_file",
        }
    }

    /// The code of a problem with this file.
    pub fn invalid_code(self) -> ErrorCode {
        match self {
            JobFile::Training => ErrorCode::InvalidTrainingFile,
            JobFile::Validation => ErrorCode::InvalidValidationFile,
        }
    }

    /// A job failure about this file.
    pub fn error(self, message: impl Into<String>) -> JobError {
        JobError::new(self.invalid_code(), message).with_param(self.param())
    }
}

impl Method {
    /// Shows `h` (the resolved values, once the worker has them) in the
    /// method's own `hyperparameters` too, as the hosted API does, so a client
    /// reading `method.supervised.hyperparameters` sees numbers, not `"auto"`.
    pub fn set_hyperparameters(&mut self, h: Hyperparameters) {
        let params = Some(MethodParams { hyperparameters: h });
        match self.kind {
            MethodType::Supervised => self.supervised = params,
            MethodType::Dpo => self.dpo = params,
            MethodType::Reinforcement => {}
        }
    }
}

/// `object: "fine_tuning.job"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FineTuningJob {
    pub id: String,
    pub object: JobTag,
    pub created_at: i64,
    pub error: Option<JobError>,
    pub fine_tuned_model: Option<String>,
    pub finished_at: Option<i64>,
    pub hyperparameters: Hyperparameters,
    pub method: Method,
    pub model: String,
    pub organization_id: String,
    pub result_files: Vec<String>,
    pub seed: i64,
    pub status: JobStatus,
    pub trained_tokens: Option<u64>,
    pub training_file: String,
    pub validation_file: Option<String>,
    pub estimated_finish: Option<i64>,
    pub integrations: Option<Vec<Value>>,
    pub metadata: Option<BTreeMap<String, String>>,
    /// The suffix the user asked for (OpenAI's `user_provided_suffix`).
    #[serde(default)]
    pub user_provided_suffix: Option<String>,
    /// The hyperparameters as the user gave them (`"auto"` kept), where
    /// `hyperparameters` shows the resolved values once the worker has them (as
    /// OpenAI does). The trainer reads these: "auto" epochs with a validation file
    /// stop early, user-fixed ones run to the end. A hone extension; jobs stored
    /// before it existed lack it and train on `hyperparameters`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_hyperparameters: Option<Hyperparameters>,
}

impl FineTuningJob {
    /// What the user asked for: `requested_hyperparameters`, or for a job stored
    /// before that field, `hyperparameters`.
    pub fn requested(&self) -> &Hyperparameters {
        self.requested_hyperparameters
            .as_ref()
            .unwrap_or(&self.hyperparameters)
    }
}

impl HasId for FineTuningJob {
    fn id(&self) -> &str {
        &self.id
    }
}

/// Body of `POST /v1/fine_tuning/jobs`.
#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
pub struct CreateJobRequest {
    pub model: String,
    pub training_file: String,
    #[serde(default)]
    pub validation_file: Option<String>,
    #[serde(default)]
    pub suffix: Option<String>,
    #[serde(default)]
    pub seed: Option<i64>,
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub method: Option<Method>,
    /// Legacy top-level hyperparameters (supervised).
    #[serde(default)]
    pub hyperparameters: Option<Hyperparameters>,
}

/// Level of a job event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventLevel {
    Info,
    Warn,
    Error,
}

impl EventLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            EventLevel::Info => "info",
            EventLevel::Warn => "warn",
            EventLevel::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "info" => Some(EventLevel::Info),
            "warn" => Some(EventLevel::Warn),
            "error" => Some(EventLevel::Error),
            _ => None,
        }
    }
}

/// Kind of a job event: a human message, or a metrics record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    Message,
    Metrics,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Message => "message",
            EventType::Metrics => "metrics",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "message" => Some(EventType::Message),
            "metrics" => Some(EventType::Metrics),
            _ => None,
        }
    }
}

/// `object: "fine_tuning.job.event"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobEvent {
    pub id: String,
    pub object: JobEventTag,
    pub created_at: i64,
    pub level: EventLevel,
    pub message: String,
    #[serde(rename = "type")]
    pub kind: EventType,
    pub data: Option<Value>,
}

impl HasId for JobEvent {
    fn id(&self) -> &str {
        &self.id
    }
}

/// Metrics of a step, as in metrics events and checkpoints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StepMetrics {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_steps: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_mean_token_accuracy: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_mean_token_accuracy: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_valid_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_valid_mean_token_accuracy: Option<f64>,
}

/// `object: "fine_tuning.job.checkpoint"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobCheckpoint {
    pub id: String,
    pub object: JobCheckpointTag,
    pub created_at: i64,
    pub fine_tuned_model_checkpoint: String,
    pub fine_tuning_job_id: String,
    pub step_number: u64,
    pub metrics: StepMetrics,
}

impl HasId for JobCheckpoint {
    fn id(&self) -> &str {
        &self.id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hyperparameters_take_auto_or_numbers() {
        let h: Hyperparameters =
            serde_json::from_value(json!({"n_epochs": "auto", "batch_size": 4})).unwrap();
        assert_eq!(h.n_epochs, AutoOr::Auto(AutoTag));
        assert_eq!(h.batch_size.value(), Some(4));
        assert_eq!(h.learning_rate_multiplier, AutoOr::Auto(AutoTag));
        assert!(serde_json::from_value::<Hyperparameters>(json!({"n_epochs": "many"})).is_err());
        let out = serde_json::to_value(h).unwrap();
        assert_eq!(
            out,
            json!({"n_epochs": "auto", "batch_size": 4, "learning_rate_multiplier": "auto"})
        );
    }
}
