//! The durable store of files, jobs, events, checkpoints and fine-tuned
//! models, behind the [`Store`] trait so that a PostgreSQL store can be
//! added later without touching handlers.
//!
//! The trait is synchronous on purpose: the embedded backend (SQLite) is
//! blocking, and a blocking trait stays object-safe and simple. Async code
//! goes through [`StoreHandle`], which runs each call on tokio's blocking
//! pool so that a slow disk never stalls the HTTP reactor.
//!
//! Job state changes only through [`Store::transition_job`], which checks
//! the transition against [`Transition::allowed_from`] and commits the new
//! state together with its event in one transaction, before the caller acts
//! on it (the job worker is the only caller meant to use it).
//!
//! Every object belongs to a project (see [`crate::auth`]). Reads and
//! deletes take a [`Scope`]: a row outside it is [`StoreError::NotFound`],
//! exactly like a row that does not exist, so that one project cannot even
//! learn that another's ids exist (a list cursor naming one is a bad cursor).

pub mod completions;
mod sqlite;

use std::path::PathBuf;
use std::sync::Arc;

pub use sqlite::SqliteStore;

use crate::api::{
    ErrorCode, EventLevel, EventType, FileObject, FineTuningJob, JobCheckpoint, JobError, JobEvent,
    JobStatus, Model,
};
use crate::error::ApiError;

/// What the store can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("No such {kind}: '{id}'.")]
    NotFound { kind: &'static str, id: String },
    #[error("Job {job} is {from}; it cannot be {verb}.")]
    InvalidTransition {
        job: String,
        from: &'static str,
        verb: &'static str,
    },
    #[error("The cursor 'after={0}' names no object in this list.")]
    BadCursor(String),
    #[error("{0} already exists")]
    Duplicate(String),
    #[error("store failure: {0}")]
    Backend(String),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { kind: "model", id } => ApiError::model_not_found(&id),
            StoreError::NotFound { kind, id } => ApiError::not_found(kind, &id),
            e @ StoreError::InvalidTransition { .. } => {
                ApiError::conflict(ErrorCode::InvalidJobState, e.to_string())
            }
            e @ StoreError::BadCursor(_) => ApiError::invalid("after", e.to_string()),
            e @ StoreError::Duplicate(_) => ApiError::conflict(ErrorCode::Duplicate, e.to_string()),
            StoreError::Backend(m) => ApiError::internal(m),
        }
    }
}

/// Which projects' objects a call may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every project: admin keys, and the job worker.
    All,
    /// One project's objects only.
    Project(String),
}

impl Scope {
    /// Whether an object of `project` is visible.
    pub fn sees(&self, project: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Project(p) => p == project,
        }
    }
}

/// An API key as stored: only a digest of the key (see [`crate::auth`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// `key_<16>`: how `hone keys list|revoke` name the key.
    pub id: String,
    pub project: String,
    /// An admin key sees every project.
    pub admin: bool,
    /// The keyed sha256 digest of the key, from [`crate::auth::key_digest`].
    pub digest: [u8; 32],
    /// The key's last 4 characters, to tell keys apart in listings.
    pub hint: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

/// Result of a store call.
pub type StoreResult<T> = Result<T, StoreError>;

/// Direction of a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    /// Newest first (the API default).
    #[default]
    Desc,
    Asc,
}

/// Which page of a list: objects after the one with id `after` (exclusive,
/// in list order), at most `limit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    pub after: Option<String>,
    pub limit: u32,
    pub order: Order,
}

impl PageRequest {
    /// The first `limit` objects, newest first.
    pub fn first(limit: u32) -> Self {
        PageRequest {
            after: None,
            limit,
            order: Order::Desc,
        }
    }
}

/// One page and whether more follow.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub data: Vec<T>,
    pub has_more: bool,
}

/// A stored file: the API object plus what only the server needs.
#[derive(Debug, Clone, PartialEq)]
pub struct FileRecord {
    pub object: FileObject,
    /// The project that uploaded it (or whose job produced it).
    pub project: String,
    /// sha256 of the content, hex.
    pub sha256: String,
}

/// A checkpoint with where its adapter lives.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointRecord {
    pub checkpoint: JobCheckpoint,
    pub adapter_path: PathBuf,
}

/// A fine-tuned or checkpoint model, resolved for serving.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelRecord {
    pub model: Model,
    /// The base model id the adapter applies to.
    pub base: String,
    pub job_id: String,
    pub adapter_path: PathBuf,
    /// `Some(step)` for a checkpoint model.
    pub checkpoint_step: Option<u64>,
}

/// A change of a job's state. Each carries what must be committed with it.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    /// validating_files → queued, once the files passed.
    Queue,
    /// queued → running, when the worker picks the job.
    Start,
    /// running → queued, for a job a crash or restart interrupted; it
    /// resumes from its last checkpoint.
    Requeue,
    /// running → queued, for a job the server stopped while shutting down
    /// (after it saved a checkpoint); it resumes at the next start.
    Drain,
    /// running → succeeded; registers the fine-tuned model in the same
    /// transaction, so the model exists the moment the job says so.
    Succeed {
        fine_tuned_model: String,
        base: String,
        adapter_path: PathBuf,
        trained_tokens: u64,
        result_files: Vec<String>,
    },
    /// Any unfinished state → failed.
    Fail(JobError),
    /// Any unfinished state → cancelled.
    Cancel,
    /// queued|running → paused.
    Pause,
    /// paused → queued.
    Resume,
}

impl Transition {
    /// The state the job ends in.
    pub fn target(&self) -> JobStatus {
        match self {
            Transition::Queue | Transition::Resume | Transition::Requeue | Transition::Drain => {
                JobStatus::Queued
            }
            Transition::Start => JobStatus::Running,
            Transition::Succeed { .. } => JobStatus::Succeeded,
            Transition::Fail(_) => JobStatus::Failed,
            Transition::Cancel => JobStatus::Cancelled,
            Transition::Pause => JobStatus::Paused,
        }
    }

    /// The states this transition may start from.
    pub fn allowed_from(&self) -> &'static [JobStatus] {
        use JobStatus::*;
        match self {
            Transition::Queue => &[ValidatingFiles],
            Transition::Start => &[Queued],
            Transition::Requeue | Transition::Drain => &[Running],
            Transition::Succeed { .. } => &[Running],
            Transition::Fail(_) | Transition::Cancel => &[ValidatingFiles, Queued, Running, Paused],
            Transition::Pause => &[Queued, Running],
            Transition::Resume => &[Paused],
        }
    }

    /// For error messages: "Job X is succeeded; it cannot be cancelled."
    pub fn verb(&self) -> &'static str {
        match self {
            Transition::Queue => "queued",
            Transition::Start => "started",
            Transition::Requeue | Transition::Drain => "re-queued",
            Transition::Succeed { .. } => "marked succeeded",
            Transition::Fail(_) => "marked failed",
            Transition::Cancel => "cancelled",
            Transition::Pause => "paused",
            Transition::Resume => "resumed",
        }
    }

    /// The events recorded with the transition, in order.
    pub fn events(&self) -> Vec<(EventLevel, String)> {
        use EventLevel::*;
        match self {
            Transition::Queue => vec![(
                Info,
                "Files validated, moving job to queued state".to_string(),
            )],
            Transition::Start => vec![(Info, "Fine-tuning job started".to_string())],
            Transition::Requeue => vec![(
                Warn,
                "The server restarted during training; the job is queued again and resumes from its last checkpoint"
                    .to_string(),
            )],
            Transition::Drain => vec![(
                Info,
                "The server is shutting down: the job saved a checkpoint and is queued; it resumes at the next start"
                    .to_string(),
            )],
            Transition::Succeed {
                fine_tuned_model, ..
            } => vec![
                (
                    Info,
                    format!("New fine-tuned model created: {fine_tuned_model}"),
                ),
                (Info, "The job has successfully completed".to_string()),
            ],
            Transition::Fail(e) => vec![(Error, format!("Fine-tuning job failed: {}", e.message))],
            Transition::Cancel => vec![(Info, "Fine-tuning job cancelled".to_string())],
            Transition::Pause => vec![(Info, "Fine-tuning job paused".to_string())],
            Transition::Resume => vec![(Info, "Fine-tuning job resumed".to_string())],
        }
    }
}

/// A new event, before it has an id and time.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub level: EventLevel,
    pub kind: EventType,
    pub message: String,
    pub data: Option<serde_json::Value>,
}

impl NewEvent {
    /// An info message.
    pub fn info(message: impl Into<String>) -> Self {
        NewEvent {
            level: EventLevel::Info,
            kind: EventType::Message,
            message: message.into(),
            data: None,
        }
    }
}

/// Fields of a job that change without a change of state (resolved
/// hyperparameters, progress). `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobUpdate {
    pub hyperparameters: Option<crate::api::Hyperparameters>,
    pub trained_tokens: Option<u64>,
    pub estimated_finish: Option<i64>,
    pub seed: Option<i64>,
}

/// The durable store. See the module docs for why it is synchronous.
pub trait Store: completions::CompletionStore + Send + Sync + 'static {
    /// Records an uploaded file (its content is already in the blob store).
    fn insert_file(&self, file: &FileRecord) -> StoreResult<()>;
    fn get_file(&self, scope: &Scope, id: &str) -> StoreResult<FileRecord>;
    fn list_files(
        &self,
        scope: &Scope,
        purpose: Option<&str>,
        page: &PageRequest,
    ) -> StoreResult<Page<FileObject>>;
    /// Forgets a file. The caller removes the blob after this commits.
    fn delete_file(&self, scope: &Scope, id: &str) -> StoreResult<()>;

    /// Records a new job and its "Created fine-tuning job" event together.
    /// The job belongs to the project in its `organization_id`.
    fn insert_job(&self, job: &FineTuningJob) -> StoreResult<()>;
    fn get_job(&self, scope: &Scope, id: &str) -> StoreResult<FineTuningJob>;
    fn list_jobs(&self, scope: &Scope, page: &PageRequest) -> StoreResult<Page<FineTuningJob>>;
    /// Jobs in a state, oldest first: what the worker scans on start.
    fn jobs_with_status(&self, status: JobStatus) -> StoreResult<Vec<FineTuningJob>>;
    /// Changes a job's state if the transition is allowed from its current
    /// state, committing the state, its fields and its events at once.
    fn transition_job(&self, id: &str, t: &Transition) -> StoreResult<FineTuningJob>;
    /// Updates fields that are not the state.
    fn update_job(&self, id: &str, update: &JobUpdate) -> StoreResult<FineTuningJob>;

    fn add_event(&self, job_id: &str, event: &NewEvent) -> StoreResult<JobEvent>;
    fn list_events(
        &self,
        scope: &Scope,
        job_id: &str,
        page: &PageRequest,
    ) -> StoreResult<Page<JobEvent>>;

    /// Records a committed checkpoint; it is a model from then on. Saving
    /// the same step again (a run resumed after a crash between writing the
    /// checkpoint and recording it) replaces the record.
    fn add_checkpoint(&self, ckpt: &CheckpointRecord) -> StoreResult<()>;
    fn list_checkpoints(
        &self,
        scope: &Scope,
        job_id: &str,
        page: &PageRequest,
    ) -> StoreResult<Page<JobCheckpoint>>;

    /// Fine-tuned and checkpoint models, newest first.
    fn list_models(&self, scope: &Scope) -> StoreResult<Vec<Model>>;
    /// A fine-tuned or checkpoint model by id.
    fn get_model(&self, scope: &Scope, id: &str) -> StoreResult<ModelRecord>;
    /// Deletes a fine-tuned model (not its checkpoints).
    fn delete_model(&self, scope: &Scope, id: &str) -> StoreResult<()>;

    /// Gives files stored before projects existed (schema 1) to `project`,
    /// the default project; a no-op once they have one.
    fn adopt_unowned(&self, project: &str) -> StoreResult<()>;

    /// Records a new API key (its digest only).
    fn insert_key(&self, key: &KeyRecord) -> StoreResult<()>;
    /// Keys, oldest first, of one project or all; revoked ones included.
    fn list_keys(&self, project: Option<&str>) -> StoreResult<Vec<KeyRecord>>;
    /// Keys not revoked: what a request's bearer token is checked against.
    fn active_keys(&self) -> StoreResult<Vec<KeyRecord>>;
    /// Revokes a key at once (the next request with it gets a 401).
    fn revoke_key(&self, id: &str) -> StoreResult<KeyRecord>;

    /// The ids of every file and job, all projects: what the start-up sweep
    /// (`crate::sweep`) keeps on disk.
    fn referenced_ids(&self) -> StoreResult<ReferencedIds>;
}

/// Ids the store refers to, for [`Store::referenced_ids`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReferencedIds {
    pub files: std::collections::HashSet<String>,
    pub jobs: std::collections::HashSet<String>,
}

/// Async access to a [`Store`]: each call runs on the blocking pool.
#[derive(Clone)]
pub struct StoreHandle(Arc<dyn Store>);

impl StoreHandle {
    pub fn new(store: Arc<dyn Store>) -> Self {
        StoreHandle(store)
    }

    /// The store itself, for blocking callers (the job worker's thread).
    pub fn blocking(&self) -> &Arc<dyn Store> {
        &self.0
    }

    /// Runs `f` against the store on the blocking pool.
    pub async fn run<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Store) -> StoreResult<T> + Send + 'static,
    {
        let store = self.0.clone();
        tokio::task::spawn_blocking(move || f(store.as_ref()))
            .await
            .map_err(|e| StoreError::Backend(format!("store task failed: {e}")))?
    }
}

/// Unix seconds now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
