//! Wire types of the OpenAI-compatible API: the one place where the JSON
//! shapes the official SDK sees are defined. Handlers build these structs;
//! no other module writes JSON by hand.
//!
//! Request types ignore unknown fields (serde's default), because the SDK
//! sends fields we do not use and must not fail on them.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// Declares a zero-sized type that (de)serializes as one fixed string, for
/// the `object` tags (`"file"`, `"list"`, …) that every OpenAI object has.
macro_rules! tag {
    ($(#[$doc:meta])* $name:ident = $s:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct $name;

        impl $name {
            /// The string this tag stands for.
            pub const VALUE: &'static str = $s;
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str($s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let got = String::deserialize(d)?;
                if got == $s {
                    Ok($name)
                } else {
                    Err(serde::de::Error::custom(format!(
                        "expected \"{}\", got \"{}\"",
                        $s, got
                    )))
                }
            }
        }
    };
}

tag!(/// `"list"`
    ListTag = "list");
tag!(/// `"file"`
    FileTag = "file");
tag!(/// `"model"`
    ModelTag = "model");
tag!(/// `"fine_tuning.job"`
    JobTag = "fine_tuning.job");
tag!(/// `"fine_tuning.job.event"`
    JobEventTag = "fine_tuning.job.event");
tag!(/// `"fine_tuning.job.checkpoint"`
    JobCheckpointTag = "fine_tuning.job.checkpoint");
tag!(/// `"chat.completion"`
    ChatCompletionTag = "chat.completion");
tag!(/// `"chat.completion.chunk"`
    ChatCompletionChunkTag = "chat.completion.chunk");
tag!(/// `"assistant"`, the only role a completion answers with.
    AssistantTag = "assistant");
tag!(/// `"auto"`, for hyperparameters the server resolves.
    AutoTag = "auto");

// ---------------------------------------------------------------- errors --

/// `{"error": {...}}`, the body of every non-2xx answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// The inside of an error body. `param` and `code` are always present (as
/// null when unknown), as in OpenAI's answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: Option<String>,
}

// ------------------------------------------------------------------ lists --

/// A page of a list: newest first, with `has_more` for cursor pagination.
/// `first_id`/`last_id` appear on files and checkpoints (and are harmless on
/// the others, so we send them whenever the page is not empty).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListResponse<T> {
    pub object: ListTag,
    pub data: Vec<T>,
    pub has_more: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_id: Option<String>,
}

/// Anything with an id can be listed with `first_id`/`last_id`.
pub trait HasId {
    fn id(&self) -> &str;
}

impl<T: HasId> ListResponse<T> {
    /// A page with `first_id`/`last_id` filled from the data.
    pub fn page(data: Vec<T>, has_more: bool) -> Self {
        let first_id = data.first().map(|x| x.id().to_string());
        let last_id = data.last().map(|x| x.id().to_string());
        ListResponse {
            object: ListTag,
            data,
            has_more,
            first_id,
            last_id,
        }
    }
}

/// Query of list endpoints: `after` (an id, exclusive) and `limit`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ListQuery {
    pub after: Option<String>,
    pub limit: Option<u32>,
    /// `asc` or `desc` (files only); newest first when absent.
    pub order: Option<String>,
    /// Files only: filter by purpose.
    pub purpose: Option<String>,
}

// ------------------------------------------------------------------ files --

/// Upload state of a file. Fine-tune files are validated at upload and end
/// `processed` or `error` before the upload call returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileStatus {
    Uploaded,
    Processed,
    Error,
}

impl FileStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            FileStatus::Uploaded => "uploaded",
            FileStatus::Processed => "processed",
            FileStatus::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "uploaded" => Some(FileStatus::Uploaded),
            "processed" => Some(FileStatus::Processed),
            "error" => Some(FileStatus::Error),
            _ => None,
        }
    }
}

/// `object: "file"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileObject {
    pub id: String,
    pub object: FileTag,
    pub bytes: u64,
    pub created_at: i64,
    pub filename: String,
    pub purpose: String,
    pub status: FileStatus,
    /// For `status: "error"`: every problem found, one per line, each with
    /// its line number.
    pub status_details: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
}

impl HasId for FileObject {
    fn id(&self) -> &str {
        &self.id
    }
}

/// Answer of `DELETE /v1/files/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileDeleted {
    pub id: String,
    pub object: FileTag,
    pub deleted: bool,
}

// ----------------------------------------------------------------- models --

/// `object: "model"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Model {
    pub id: String,
    pub object: ModelTag,
    pub created: i64,
    pub owned_by: String,
}

impl HasId for Model {
    fn id(&self) -> &str {
        &self.id
    }
}

/// Answer of `DELETE /v1/models/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelDeleted {
    pub id: String,
    pub object: ModelTag,
    pub deleted: bool,
}

// ------------------------------------------------------------ fine-tuning --

/// `"auto"` or a concrete value: what a user may give for a hyperparameter,
/// and what a job shows until the worker resolves it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AutoOr<T> {
    Auto(AutoTag),
    Value(T),
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
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

/// `method.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MethodType {
    Supervised,
    Dpo,
    /// Parsed so that we can answer it with a clear 400, not a serde error.
    Reinforcement,
}

/// `method.supervised` / `method.dpo`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct MethodParams {
    #[serde(default)]
    pub hyperparameters: Hyperparameters,
}

/// The training method of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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

/// `error` of a failed job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobError {
    pub code: String,
    pub message: String,
    pub param: Option<String>,
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
}

impl HasId for FineTuningJob {
    fn id(&self) -> &str {
        &self.id
    }
}

/// Body of `POST /v1/fine_tuning/jobs`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

// ------------------------------------------------------- chat completions --

/// A message's content: a string, or a list of parts (only text parts are
/// understood; others are refused when converted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

/// One part of a multi-part content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

impl MessageContent {
    /// The text, with text parts joined. Non-text parts are an error that
    /// names the part's type.
    pub fn to_text(&self) -> Result<String, String> {
        match self {
            MessageContent::Text(s) => Ok(s.clone()),
            MessageContent::Parts(parts) => {
                let mut out = String::new();
                for p in parts {
                    match (p.kind.as_str(), &p.text) {
                        ("text", Some(t)) => out.push_str(t),
                        ("text", None) => return Err("a text part has no `text`".into()),
                        (other, _) => {
                            return Err(format!(
                                "content parts of type `{other}` are not supported"
                            ))
                        }
                    }
                }
                Ok(out)
            }
        }
    }
}

/// One message of a chat completion request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRequestMessage {
    /// `system`, `developer` (treated as system), `user`, `assistant`, `tool`.
    pub role: String,
    #[serde(default)]
    pub content: Option<MessageContent>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub tool_calls: Option<Value>,
    #[serde(default)]
    pub tool_call_id: Option<String>,
}

impl ChatRequestMessage {
    /// Converts to the typed message the template renders. The error names
    /// the problem; the caller adds which message it was.
    pub fn to_chat_message(&self) -> Result<hone_data::ChatMessage, String> {
        use hone_data::Role;
        let role = match self.role.as_str() {
            "system" | "developer" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "tool" => Role::Tool,
            other => return Err(format!("unknown role `{other}`")),
        };
        let content = match &self.content {
            Some(c) => c.to_text()?,
            None => String::new(),
        };
        let mut m = hone_data::ChatMessage::new(role, content);
        m.name = self.name.clone();
        m.tool_calls = self.tool_calls.clone();
        m.tool_call_id = self.tool_call_id.clone();
        Ok(m)
    }
}

/// `stop`: one string or up to four.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StopSpec {
    One(String),
    Many(Vec<String>),
}

impl StopSpec {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            StopSpec::One(s) => vec![s.clone()],
            StopSpec::Many(v) => v.clone(),
        }
    }
}

/// `stream_options`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// `response_format`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema {
        #[serde(default)]
        json_schema: Option<Value>,
    },
}

/// Body of `POST /v1/chat/completions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionRequest {
    pub model: String,
    pub messages: Vec<ChatRequestMessage>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub n: Option<u32>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub max_completion_tokens: Option<u32>,
    #[serde(default)]
    pub stop: Option<StopSpec>,
    #[serde(default)]
    pub seed: Option<i64>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub logprobs: Option<bool>,
    #[serde(default)]
    pub top_logprobs: Option<u32>,
    #[serde(default)]
    pub response_format: Option<ResponseFormat>,
    #[serde(default)]
    pub tools: Option<Vec<Value>>,
    #[serde(default)]
    pub tool_choice: Option<Value>,
}

impl ChatCompletionRequest {
    /// `max_completion_tokens` wins over the deprecated `max_tokens`.
    pub fn max_new_tokens(&self) -> Option<u32> {
        self.max_completion_tokens.or(self.max_tokens)
    }

    /// Whether the answer is streamed as SSE.
    pub fn is_stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    /// Whether a streamed answer ends with a usage chunk.
    pub fn include_usage(&self) -> bool {
        self.stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false)
    }
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    Stop,
    Length,
    ToolCalls,
    ContentFilter,
}

/// Token counts of a completion.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
}

/// The assistant message of a (non-streamed) choice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssistantMessage {
    pub role: AssistantTag,
    pub content: Option<String>,
    /// Always present, null: the SDK's type has it.
    pub refusal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Value>,
}

/// One choice of a completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    pub index: u32,
    pub message: AssistantMessage,
    pub logprobs: Option<Value>,
    pub finish_reason: FinishReason,
}

/// `object: "chat.completion"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletion {
    pub id: String,
    pub object: ChatCompletionTag,
    pub created: i64,
    pub model: String,
    pub choices: Vec<Choice>,
    pub usage: Usage,
    #[serde(default)]
    pub system_fingerprint: Option<String>,
}

/// The delta of a streamed choice. The first chunk carries the role and an
/// empty content; the last carries neither (an empty object).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<AssistantTag>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// One choice of a streamed chunk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkChoice {
    pub index: u32,
    pub delta: Delta,
    pub logprobs: Option<Value>,
    pub finish_reason: Option<FinishReason>,
}

/// `object: "chat.completion.chunk"`. The usage chunk has `choices: []`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionChunk {
    pub id: String,
    pub object: ChatCompletionChunkTag,
    pub created: i64,
    pub model: String,
    pub choices: Vec<ChunkChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// Answer of `GET /health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    pub version: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn chat_request_accepts_sdk_shapes_and_ignores_unknown_fields() {
        let req: ChatCompletionRequest = serde_json::from_value(json!({
            "model": "ft:smollm2-135m-instruct:org:sfx:abc12345",
            "messages": [
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]}
            ],
            "stop": "END",
            "max_tokens": 5,
            "max_completion_tokens": 7,
            "stream": true,
            "stream_options": {"include_usage": true},
            "response_format": {"type": "json_object"},
            "frequency_penalty": 0.5,
            "user": "someone"
        }))
        .unwrap();
        assert_eq!(req.max_new_tokens(), Some(7));
        assert!(req.is_stream() && req.include_usage());
        assert_eq!(req.stop.as_ref().unwrap().to_vec(), vec!["END"]);
        assert_eq!(req.response_format, Some(ResponseFormat::JsonObject));
        let m0 = req.messages[0].to_chat_message().unwrap();
        assert_eq!(m0.role, hone_data::Role::System);
        assert_eq!(
            req.messages[1].to_chat_message().unwrap().content,
            "hi there"
        );
    }

    #[test]
    fn non_text_parts_are_refused_by_name() {
        let c: MessageContent =
            serde_json::from_value(json!([{"type": "image_url", "image_url": {"url": "x"}}]))
                .unwrap();
        assert!(c.to_text().unwrap_err().contains("image_url"));
    }

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

    #[test]
    fn chunk_delta_shapes_match_the_stream_contract() {
        let first = Delta {
            role: Some(AssistantTag),
            content: Some(String::new()),
        };
        assert_eq!(
            serde_json::to_value(&first).unwrap(),
            json!({"role": "assistant", "content": ""})
        );
        assert_eq!(serde_json::to_value(Delta::default()).unwrap(), json!({}));
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
