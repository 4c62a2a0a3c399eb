//! The seams to the parts of hone the server calls but does not own: the
//! training-data validator (hone-data), the base-model catalog
//! (hone-model's registry), the training engine ([`TrainingEngine`], which
//! trains through a [`JobContext`]), and the chat engine
//! ([`crate::chat::ChatBackend`]).
//! Each is a small trait, so the server is testable without them and they
//! are wired in one place (`hone serve` in hone-cli).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hone_data::hparams::ResolvedHyperparameters;

use crate::api::{FineTuningJob, JobError, Model, ModelTag};
use crate::chat::admission::ChatService;
use crate::chat::backend::ChatBackend;
use crate::job_context::JobContext;

/// One problem found in an uploaded training file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileProblem {
    /// 1-based line of the JSONL file, if the problem is on a line.
    pub line: Option<usize>,
    /// 1-based message within the example, if the problem is on a message.
    pub message: Option<usize>,
    /// Machine-readable code (e.g. `missing_content`).
    pub code: String,
    /// What is wrong, for a human.
    pub text: String,
}

impl std::fmt::Display for FileProblem {
    /// `line 3, message 2: missing_content: ...`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.line, self.message) {
            (Some(l), Some(m)) => write!(f, "line {l}, message {m}: ")?,
            (Some(l), None) => write!(f, "line {l}: ")?,
            (None, Some(m)) => write!(f, "message {m}: ")?,
            (None, None) => {}
        }
        write!(f, "{}: {}", self.code, self.text)
    }
}

/// The verdict on an uploaded fine-tune file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileCheck {
    /// Problems that make the file unusable for training. Every one of them,
    /// not just the first.
    pub errors: Vec<FileProblem>,
    /// Problems worth knowing that do not block training.
    pub warnings: Vec<FileProblem>,
}

/// Checks uploaded `purpose=fine-tune` files. Blocking: the server calls it
/// on the blocking pool right after the upload is committed.
pub trait FileValidator: Send + Sync + 'static {
    fn check(&self, path: &Path) -> io::Result<FileCheck>;
}

/// The real validator: hone-data's streaming check, which reports every
/// problem with its line and message number.
///
/// `invalid_n_examples` (fewer than 10 examples) is reported as a warning
/// here, not an error: at upload we cannot know whether the file will be a
/// training file (which needs 10) or a validation file (which may be
/// smaller). Job creation checks the count of the training file.
#[derive(Clone, Default)]
pub struct HoneDataValidator {
    pub options: hone_data::ValidateOptions,
    /// Token counts and length checks with the model's tokenizer, when the
    /// caller has one; without it only format and quality checks run.
    pub counter: Option<Arc<dyn hone_data::TokenCounter + Send + Sync>>,
}

impl HoneDataValidator {
    /// Format and quality checks, no token counts.
    pub fn new() -> Self {
        Self::default()
    }
}

impl From<&hone_data::Issue> for FileProblem {
    fn from(i: &hone_data::Issue) -> Self {
        FileProblem {
            line: i.line,
            message: i.message,
            code: i.code.as_str().to_string(),
            text: i.text.clone(),
        }
    }
}

impl FileValidator for HoneDataValidator {
    fn check(&self, path: &Path) -> io::Result<FileCheck> {
        let counter = self
            .counter
            .as_deref()
            .map(|c| c as &dyn hone_data::TokenCounter);
        let report =
            hone_data::validate_file(path, &self.options, counter).map_err(|e| match e {
                hone_data::DataError::Io { source, .. } => source,
                other => io::Error::other(other.to_string()),
            })?;
        let mut check = FileCheck::default();
        for i in &report.errors {
            if i.code == hone_data::Code::InvalidNExamples {
                check.warnings.push(i.into());
            } else {
                check.errors.push(i.into());
            }
        }
        check
            .warnings
            .extend(report.warnings.iter().map(FileProblem::from));
        Ok(check)
    }
}

/// An adapter trained outside the server (`hone train`) and served under a
/// name of the operator's choosing (`hone serve --adapter NAME=DIR`).
#[derive(Debug, Clone, PartialEq)]
pub struct ServedAdapter {
    pub model: Model,
    /// The base model id it runs on.
    pub base: String,
    /// The PEFT adapter directory.
    pub dir: PathBuf,
}

/// Lists the base models this server can serve and fine-tune, and the
/// adapters it serves on them from the command line.
pub trait ModelCatalog: Send + Sync + 'static {
    /// Base model ids (slash-free, e.g. `smollm2-135m-instruct`).
    fn base_models(&self) -> Vec<Model>;

    /// A base model by id.
    fn base_model(&self, id: &str) -> Option<Model> {
        self.base_models().into_iter().find(|m| m.id == id)
    }

    /// The size of a base model, which the "auto" learning-rate and batch
    /// rules read (hone-data's `resolve_auto`). `None` when unknown (a static
    /// test catalog); the rules then assume a small model, as the CLI does
    /// without a model.
    fn model_size(&self, _id: &str) -> Option<hone_data::hparams::ModelSize> {
        None
    }

    /// Adapters named on the command line (none by default).
    fn served_adapters(&self) -> Vec<ServedAdapter> {
        Vec::new()
    }

    /// A command-line adapter by its model id.
    fn served_adapter(&self, id: &str) -> Option<ServedAdapter> {
        self.served_adapters()
            .into_iter()
            .find(|a| a.model.id == id)
    }
}

/// A fixed list of base model ids: for tests, and for a server started
/// with explicit models.
#[derive(Debug, Clone, Default)]
pub struct StaticCatalog {
    models: Vec<Model>,
}

impl StaticCatalog {
    /// Base models with these ids, owned by `system`.
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(ids: I) -> Self {
        let created = crate::store::unix_now();
        StaticCatalog {
            models: ids
                .into_iter()
                .map(|id| Model {
                    id: id.into(),
                    object: ModelTag,
                    created,
                    owned_by: "system".into(),
                })
                .collect(),
        }
    }
}

impl ModelCatalog for StaticCatalog {
    fn base_models(&self) -> Vec<Model> {
        self.models.clone()
    }
}

// ---------------------------------------------------------------- training --

/// How a training run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum TrainingOutcome {
    /// The adapter at `adapter_path` is final.
    Succeeded {
        adapter_path: PathBuf,
        trained_tokens: u64,
        /// Ids of files the engine stored (e.g. the metrics CSV).
        result_files: Vec<String>,
    },
    /// The engine stopped because [`JobContext::stop_requested`] said so,
    /// after saving a checkpoint to resume from.
    Stopped,
    /// Training failed; the error is shown on the job.
    Failed(JobError),
}

/// Trains one job. Implemented over hone-train in [`crate::training`];
/// blocking. A run of a job that has checkpoints must continue from the
/// newest valid one (a pause, a crash or a shutdown interrupted it).
pub trait TrainingEngine: Send + Sync + 'static {
    fn train(&self, ctx: &JobContext) -> TrainingOutcome;

    /// Resolves a job's "auto" hyperparameters exactly as its run will (the
    /// same data, tokenizer, context and model size), so that the values the
    /// job shows once validated are the ones it trains with, and the same as
    /// `hone train` would pick for that file. `None`: this engine cannot tell
    /// (tests' fakes); the worker then resolves with hone-data's rule alone.
    fn resolve_hyperparameters(
        &self,
        _job: &FineTuningJob,
        _training_file: &Path,
        _validation_file: Option<&Path>,
    ) -> Option<Result<ResolvedHyperparameters, JobError>> {
        None
    }
}

// ------------------------------------------------------------- all of them --

/// Everything the server delegates. `validator: None` leaves uploaded
/// fine-tune files with `status: "uploaded"` (not checked): honest, rather
/// than a made-up `processed`. The default is [`HoneDataValidator`].
#[derive(Clone)]
pub struct Engines {
    pub validator: Option<Arc<dyn FileValidator>>,
    pub catalog: Arc<dyn ModelCatalog>,
    /// Trains jobs; without one, jobs are validated and wait in `queued`.
    pub training: Option<Arc<dyn TrainingEngine>>,
    /// Answers `/v1/chat/completions` (with its admission limit); without
    /// one, chat answers a clear 501.
    pub chat: Option<ChatService>,
    /// Answers `/v1/embeddings`; without one, it answers 404 `model_not_found`.
    pub embeddings: Option<crate::embeddings::EmbeddingService>,
}

impl Engines {
    /// hone-data's validator (no token counts), and a catalog of these
    /// base model ids.
    pub fn with_base_models<I: IntoIterator<Item = S>, S: Into<String>>(ids: I) -> Self {
        Engines {
            validator: Some(Arc::new(HoneDataValidator::new())),
            catalog: Arc::new(StaticCatalog::new(ids)),
            training: None,
            chat: None,
            embeddings: None,
        }
    }

    /// Sets the training engine.
    pub fn training(mut self, t: Arc<dyn TrainingEngine>) -> Self {
        self.training = Some(t);
        self
    }

    /// Sets the chat backend, admitting at most `max_concurrent` generations
    /// at once (see [`crate::chat::default_max_concurrent_chats`]).
    pub fn chat(mut self, backend: Arc<dyn ChatBackend>, max_concurrent: usize) -> Self {
        self.chat = Some(ChatService::new(backend, max_concurrent));
        self
    }

    /// Sets the file validator.
    pub fn validator(mut self, v: Arc<dyn FileValidator>) -> Self {
        self.validator = Some(v);
        self
    }
}
