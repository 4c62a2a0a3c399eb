//! The job worker: the only code that changes a job's state.
//!
//! It runs on its own thread and owns a queue of messages: commands from
//! the API (a job was created, cancel, pause, resume), the end of a
//! training run, and the server's shutdown. Handlers never call
//! [`Store::transition_job`]; they send a command and await the worker's
//! answer, so the rules of which transition is allowed live in one place
//! and two transitions never race.
//!
//! Training itself is delegated to a [`TrainingEngine`] (hone-train's, in
//! [`crate::training`]), run on a thread per job (at most
//! `max_concurrent_jobs` at once) so that the worker keeps answering while
//! jobs train. The engine reports progress through [`JobContext`] (events,
//! metrics, checkpoints, result files, resolved hyperparameters) and polls
//! [`JobContext::stop_requested`] to stop cooperatively for a cancel, a
//! pause or a shutdown, after saving a checkpoint. Without an engine, jobs
//! are validated and then wait in `queued`.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::api::{
    AutoOr, AutoTag, EventLevel, EventType, FileObject, FileStatus, FileTag, FineTuningJob,
    Hyperparameters, JobCheckpoint, JobCheckpointTag, JobError, JobStatus, MethodType, StepMetrics,
};
use crate::blobs::FsBlobStore;
use crate::ids::{self, FineTunedName};
use crate::store::{
    unix_now, CheckpointRecord, FileRecord, JobUpdate, NewEvent, PageRequest, Store, StoreError,
    StoreResult, Transition,
};

/// The purpose of the metrics CSV a job produces (OpenAI's name).
pub const RESULTS_PURPOSE: &str = "fine-tune-results";

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
}

/// Why a run is asked to stop. Ordered: a stronger reason replaces a
/// weaker one (a cancel wins over a pause, which wins over a shutdown).
const STOP_NONE: u8 = 0;
const STOP_SHUTDOWN: u8 = 1;
const STOP_PAUSE: u8 = 2;
const STOP_CANCEL: u8 = 3;

/// What a training run may see and do. Everything here is progress, never a
/// change of state: the state is the worker's.
pub struct JobContext {
    pub job: FineTuningJob,
    /// The training file's content on disk.
    pub training_file: PathBuf,
    pub validation_file: Option<PathBuf>,
    /// `$HONE_HOME/jobs/<job-id>/`: everything the run writes goes here.
    pub job_dir: PathBuf,
    /// The name the final model will get; checkpoint models derive from it.
    pub model_name: FineTunedName,
    store: Arc<dyn Store>,
    blobs: FsBlobStore,
    stop: Arc<AtomicU8>,
}

impl JobContext {
    /// Whether the run should save a checkpoint and return
    /// [`TrainingOutcome::Stopped`] (cancel, pause or shutdown was asked).
    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::SeqCst) != STOP_NONE
    }

    /// Records a message event.
    pub fn message(&self, level: EventLevel, message: impl Into<String>) -> StoreResult<()> {
        let e = NewEvent {
            level,
            kind: EventType::Message,
            message: message.into(),
            data: None,
        };
        self.store.add_event(&self.job.id, &e).map(|_| ())
    }

    /// The highest step that already has a metrics event: steps up to it are
    /// being redone after a crash or a pause (resume restarts from the last
    /// checkpoint), and their metrics are not recorded twice. Only recent
    /// events are read (newest first), which always hold the last metrics.
    pub fn last_recorded_step(&self) -> u64 {
        let Ok(page) = self
            .store
            .list_events(&self.job.id, &PageRequest::first(200))
        else {
            return 0;
        };
        page.data
            .iter()
            .filter(|e| e.kind == EventType::Metrics)
            .filter_map(|e| e.data.as_ref()?.get("step")?.as_u64())
            .max()
            .unwrap_or(0)
    }

    /// Records a metrics event ("Step 12/300: training loss=…").
    pub fn metrics(&self, m: &StepMetrics) -> StoreResult<()> {
        let mut msg = match (m.step, m.total_steps) {
            (Some(s), Some(t)) => format!("Step {s}/{t}"),
            (Some(s), None) => format!("Step {s}"),
            _ => "Metrics".to_string(),
        };
        if let Some(l) = m.train_loss {
            msg.push_str(&format!(": training loss={l:.4}"));
        }
        if let Some(l) = m.valid_loss {
            msg.push_str(&format!(", validation loss={l:.4}"));
        }
        let data = serde_json::to_value(m).map_err(|e| StoreError::Backend(e.to_string()))?;
        let e = NewEvent {
            level: EventLevel::Info,
            kind: EventType::Metrics,
            message: msg,
            data: Some(data),
        };
        self.store.add_event(&self.job.id, &e).map(|_| ())
    }

    /// Registers a committed checkpoint (its adapter directory already in
    /// place, and kept as long as the job); from now on it is a model
    /// usable in chat.
    pub fn checkpoint(
        &self,
        step: u64,
        adapter_path: PathBuf,
        metrics: StepMetrics,
    ) -> StoreResult<JobCheckpoint> {
        let checkpoint = JobCheckpoint {
            id: ids::checkpoint_id(),
            object: JobCheckpointTag,
            created_at: unix_now(),
            fine_tuned_model_checkpoint: self.model_name.at_step(step).to_string(),
            fine_tuning_job_id: self.job.id.clone(),
            step_number: step,
            metrics,
        };
        self.store.add_checkpoint(&CheckpointRecord {
            checkpoint: checkpoint.clone(),
            adapter_path,
        })?;
        Ok(checkpoint)
    }

    /// Updates progress fields (resolved hyperparameters, tokens, ETA).
    pub fn update(&self, u: &JobUpdate) -> StoreResult<FineTuningJob> {
        self.store.update_job(&self.job.id, u)
    }

    /// Stores a file the run produced (the metrics CSV) as a file object
    /// with purpose `fine-tune-results`, so clients download it with
    /// `GET /v1/files/{id}/content`. The content is committed before the
    /// record, so a listed file always has its bytes.
    pub fn store_result_file(&self, filename: &str, src: &Path) -> StoreResult<FileObject> {
        let id = ids::file_id();
        let blob = self
            .blobs
            .put_file_blocking(&id, src)
            .map_err(|e| StoreError::Backend(format!("storing {filename}: {e}")))?;
        let object = FileObject {
            id,
            object: FileTag,
            bytes: blob.bytes,
            created_at: unix_now(),
            filename: filename.to_string(),
            purpose: RESULTS_PURPOSE.to_string(),
            status: FileStatus::Processed,
            status_details: None,
            expires_at: None,
        };
        self.store.insert_file(&FileRecord {
            object: object.clone(),
            sha256: blob.sha256,
        })?;
        Ok(object)
    }
}

/// A request from the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Cancel,
    Pause,
    Resume,
}

type Reply = oneshot::Sender<StoreResult<FineTuningJob>>;

enum Msg {
    Created,
    Command(String, Command, Reply),
    Done(String, Result<TrainingOutcome, String>),
    Shutdown(oneshot::Sender<()>),
}

/// The API's side of the worker. Dropping every handle stops the worker
/// once no training run is in flight.
#[derive(Clone)]
pub struct WorkerHandle {
    tx: mpsc::UnboundedSender<Msg>,
}

impl WorkerHandle {
    /// Tells the worker a job was created (it validates it next).
    pub fn job_created(&self) {
        let _ = self.tx.send(Msg::Created);
    }

    /// Asks for a cancel/pause/resume and waits for the resulting job. For a
    /// running job the answer comes once the engine has stopped.
    pub async fn command(&self, job_id: &str, c: Command) -> StoreResult<FineTuningJob> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::Command(job_id.to_string(), c, tx))
            .map_err(|_| StoreError::Backend("the job worker has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Backend("the job worker dropped the request".into()))?
    }

    /// Drains: no job starts any more, and every running job is asked to
    /// checkpoint and stop; they go back to `queued` and resume at the next
    /// start. Resolves once no job runs (callers bound it with a deadline:
    /// a job that does not stop in time stays `running` and is resumed from
    /// its last checkpoint at the next start, like after a crash).
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Shutdown(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

/// Where the worker finds what it needs.
#[derive(Clone)]
pub struct WorkerConfig {
    pub store: Arc<dyn Store>,
    pub blobs: FsBlobStore,
    pub home: PathBuf,
    pub org: String,
    pub engine: Option<Arc<dyn TrainingEngine>>,
    /// Jobs trained at once (at least 1).
    pub max_concurrent_jobs: usize,
}

struct Running {
    job_id: String,
    stop: Arc<AtomicU8>,
    waiting: Vec<Reply>,
}

struct Worker {
    cfg: WorkerConfig,
    /// Weak, so that the worker alone does not keep its queue open.
    tx: mpsc::WeakUnboundedSender<Msg>,
    running: Vec<Running>,
    /// Set by a shutdown: start nothing new; answer these once idle.
    draining: Option<Vec<oneshot::Sender<()>>>,
    /// The queue position last announced per queued job, so an event is
    /// written only when it changes.
    announced: HashMap<String, usize>,
}

/// Starts the worker thread: it first re-queues jobs a crash left
/// `running`, then serves messages until every handle is dropped.
pub fn start(cfg: WorkerConfig) -> std::io::Result<WorkerHandle> {
    let (tx, rx) = mpsc::unbounded_channel();
    let worker = Worker {
        cfg,
        tx: tx.downgrade(),
        running: Vec::new(),
        draining: None,
        announced: HashMap::new(),
    };
    std::thread::Builder::new()
        .name("hone-job-worker".into())
        .spawn(move || worker.run(rx))?;
    Ok(WorkerHandle { tx })
}

impl Worker {
    fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        self.recover();
        self.schedule();
        // Ends when every handle is dropped and no training thread (which
        // holds a sender) is left.
        while let Some(msg) = rx.blocking_recv() {
            match msg {
                Msg::Created => {}
                Msg::Command(id, c, reply) => self.command(&id, c, reply),
                Msg::Done(id, outcome) => self.finish(&id, outcome),
                Msg::Shutdown(reply) => self.drain(reply),
            }
            self.schedule();
            self.answer_drained();
        }
    }

    fn store(&self) -> &dyn Store {
        self.cfg.store.as_ref()
    }

    /// A job found `running` at start was interrupted: queue it again so the
    /// engine resumes it from its last checkpoint.
    fn recover(&mut self) {
        let Ok(jobs) = self.store().jobs_with_status(JobStatus::Running) else {
            return;
        };
        for job in jobs {
            let _ = self.transition(&job.id, &Transition::Requeue);
        }
    }

    fn transition(&self, id: &str, t: &Transition) -> StoreResult<FineTuningJob> {
        let r = self.store().transition_job(id, t);
        if let Err(e) = &r {
            tracing::warn!(job = id, error = %e, "job transition refused");
        }
        r
    }

    fn command(&mut self, id: &str, c: Command, reply: Reply) {
        if let Some(run) = self.running.iter_mut().find(|r| r.job_id == id) {
            let flag = match c {
                Command::Cancel => STOP_CANCEL,
                Command::Pause => STOP_PAUSE,
                Command::Resume => {
                    let job = self.cfg.store.get_job(id);
                    let _ = reply.send(job.and_then(|j| {
                        Err(StoreError::InvalidTransition {
                            job: j.id,
                            from: j.status.as_str(),
                            verb: "resumed",
                        })
                    }));
                    return;
                }
            };
            let _ = run.stop.fetch_max(flag, Ordering::SeqCst);
            run.waiting.push(reply);
            return;
        }
        let t = match c {
            Command::Cancel => Transition::Cancel,
            Command::Pause => Transition::Pause,
            Command::Resume => Transition::Resume,
        };
        let _ = reply.send(self.transition(id, &t));
    }

    /// Stops taking jobs and asks every running job to checkpoint and stop.
    fn drain(&mut self, reply: oneshot::Sender<()>) {
        for run in &self.running {
            let _ = run.stop.fetch_max(STOP_SHUTDOWN, Ordering::SeqCst);
        }
        self.draining.get_or_insert_with(Vec::new).push(reply);
    }

    fn answer_drained(&mut self) {
        if self.running.is_empty() {
            if let Some(waiting) = self.draining.as_mut() {
                for w in waiting.drain(..) {
                    let _ = w.send(());
                }
            }
        }
    }

    /// Validates new jobs, starts queued ones while there is room, and
    /// tells the others where they stand in the queue.
    fn schedule(&mut self) {
        if let Ok(jobs) = self.store().jobs_with_status(JobStatus::ValidatingFiles) {
            for job in jobs {
                self.validate(&job);
            }
        }
        let Ok(mut queued) = self.store().jobs_with_status(JobStatus::Queued) else {
            return;
        };
        if let (Some(engine), None) = (self.cfg.engine.clone(), &self.draining) {
            let room = self
                .cfg
                .max_concurrent_jobs
                .max(1)
                .saturating_sub(self.running.len());
            let n = room.min(queued.len());
            for job in queued.drain(..n) {
                self.announced.remove(&job.id);
                self.start_training(job, engine.clone());
            }
        }
        self.announce_positions(&queued);
    }

    /// A "Queued: position N" event for each waiting job whose position
    /// changed since it was last told.
    fn announce_positions(&mut self, queued: &[FineTuningJob]) {
        if self.draining.is_some() {
            return;
        }
        self.announced
            .retain(|id, _| queued.iter().any(|j| &j.id == id));
        let running = self.running.len();
        for (i, job) in queued.iter().enumerate() {
            let pos = i + 1;
            if self.announced.get(&job.id) == Some(&pos) {
                continue;
            }
            let why = if self.cfg.engine.is_none() {
                "this server has no training engine configured".to_string()
            } else {
                format!(
                    "{running} job(s) training, {} queued ahead",
                    pos.saturating_sub(1)
                )
            };
            let msg = format!("Job queued: position {pos} in the queue ({why})");
            if self
                .store()
                .add_event(&job.id, &NewEvent::info(msg))
                .is_ok()
            {
                self.announced.insert(job.id.clone(), pos);
            }
        }
    }

    fn start_training(&mut self, job: FineTuningJob, engine: Arc<dyn TrainingEngine>) {
        let Ok(job) = self.transition(&job.id, &Transition::Start) else {
            return;
        };
        let ctx = match self.context(job.clone()) {
            Ok(c) => c,
            Err(e) => {
                let _ = self.transition(&job.id, &Transition::Fail(internal_error(&e)));
                return;
            }
        };
        let stop = ctx.stop.clone();
        let Some(tx) = self.tx.upgrade() else {
            return; // Shutting down: the job stays running and is re-queued at the next start.
        };
        let id = job.id.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("hone-train-{id}"))
            .spawn(move || {
                let outcome =
                    catch_unwind(AssertUnwindSafe(|| engine.train(&ctx))).map_err(panic_text);
                let _ = tx.send(Msg::Done(ctx.job.id.clone(), outcome));
            });
        match spawned {
            Ok(_) => self.running.push(Running {
                job_id: id,
                stop,
                waiting: Vec::new(),
            }),
            Err(e) => {
                let _ = self.transition(&id, &Transition::Fail(internal_error(&e.to_string())));
            }
        }
    }

    fn context(&self, job: FineTuningJob) -> Result<JobContext, String> {
        let training_file = self
            .cfg
            .blobs
            .path(&job.training_file)
            .map_err(|e| e.to_string())?;
        let validation_file = match &job.validation_file {
            Some(v) => Some(self.cfg.blobs.path(v).map_err(|e| e.to_string())?),
            None => None,
        };
        let job_dir = self.cfg.home.join("jobs").join(&job.id);
        std::fs::create_dir_all(&job_dir)
            .map_err(|e| format!("creating {}: {e}", job_dir.display()))?;
        Ok(JobContext {
            model_name: model_name_for(&job, &self.cfg.org),
            training_file,
            validation_file,
            job_dir,
            store: self.cfg.store.clone(),
            blobs: self.cfg.blobs.clone(),
            stop: Arc::new(AtomicU8::new(STOP_NONE)),
            job,
        })
    }

    /// Commits how a run ended, then answers the requests that waited.
    fn finish(&mut self, id: &str, outcome: Result<TrainingOutcome, String>) {
        let run = self
            .running
            .iter()
            .position(|r| r.job_id == id)
            .map(|i| self.running.swap_remove(i));
        let stop = run
            .as_ref()
            .map_or(STOP_NONE, |r| r.stop.load(Ordering::SeqCst));
        let t = match outcome {
            Ok(TrainingOutcome::Succeeded {
                adapter_path,
                trained_tokens,
                result_files,
            }) => match self.store().get_job(id) {
                Ok(job) => Transition::Succeed {
                    fine_tuned_model: model_name_for(&job, &self.cfg.org).to_string(),
                    base: job.model.clone(),
                    adapter_path,
                    trained_tokens,
                    result_files,
                },
                Err(e) => Transition::Fail(internal_error(&e.to_string())),
            },
            Ok(TrainingOutcome::Stopped) => match stop {
                STOP_CANCEL => Transition::Cancel,
                STOP_PAUSE => Transition::Pause,
                _ => Transition::Drain,
            },
            Ok(TrainingOutcome::Failed(e)) => Transition::Fail(e),
            Err(panic) => Transition::Fail(JobError {
                code: "internal_error".into(),
                message: format!(
                    "The trainer crashed (a bug in hone, not in your data): {panic}. \
                     The server kept running; you can create the job again."
                ),
                param: None,
            }),
        };
        let result = self.transition(id, &t);
        for reply in run.map(|r| r.waiting).unwrap_or_default() {
            let _ = reply.send(clone_result(&result));
        }
    }

    /// Checks the job's files with hone-data, resolves "auto"
    /// hyperparameters and prints how, then queues the job, or fails it
    /// with every problem listed.
    fn validate(&self, job: &FineTuningJob) {
        let _ = self.store().add_event(
            &job.id,
            &NewEvent::info(format!("Validating training file: {}", job.training_file)),
        );
        let t = match self.check_files(job) {
            Ok(()) => Transition::Queue,
            Err(e) => Transition::Fail(e),
        };
        let _ = self.transition(&job.id, &t);
    }

    fn check_files(&self, job: &FineTuningJob) -> Result<(), JobError> {
        let method = match job.method.kind {
            MethodType::Dpo => hone_data::Method::Dpo,
            _ => hone_data::Method::Sft,
        };
        let opts = hone_data::ValidateOptions {
            method: Some(method),
            ..Default::default()
        };
        let train = self.report(&job.training_file, &opts, "training_file")?;
        if train.n_examples < hone_data::MIN_EXAMPLES {
            return Err(JobError {
                code: "invalid_n_examples".into(),
                message: format!(
                    "The training file has {} valid examples; at least {} are required.",
                    train.n_examples,
                    hone_data::MIN_EXAMPLES
                ),
                param: Some("training_file".into()),
            });
        }
        if let Some(v) = &job.validation_file {
            self.report(v, &opts, "validation_file")?;
        }
        self.resolve_auto(job, method, &train)
    }

    /// Validates one file; any error (other than too few examples, which
    /// the caller judges) fails the job with every problem listed.
    fn report(
        &self,
        file_id: &str,
        opts: &hone_data::ValidateOptions,
        param: &str,
    ) -> Result<hone_data::Report, JobError> {
        let invalid = |message: String| JobError {
            code: format!("invalid_{param}"),
            message,
            param: Some(param.into()),
        };
        let path = self
            .cfg
            .blobs
            .path(file_id)
            .map_err(|e| invalid(e.to_string()))?;
        let report = hone_data::validate_file(&path, opts, None)
            .map_err(|e| invalid(format!("File {file_id} cannot be read: {e}")))?;
        let errors: Vec<String> = report
            .errors
            .iter()
            .filter(|i| i.code != hone_data::Code::InvalidNExamples)
            .map(|i| {
                let p = crate::engines::FileProblem {
                    line: i.line,
                    message: i.message,
                    code: i.code.as_str().into(),
                    text: i.text.clone(),
                };
                p.to_string()
            })
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

    fn resolve_auto(
        &self,
        job: &FineTuningJob,
        method: hone_data::Method,
        train: &hone_data::Report,
    ) -> Result<(), JobError> {
        let h = job.hyperparameters;
        let overrides = hone_data::hparams::Overrides {
            n_epochs: h.n_epochs.value(),
            batch_size: h.batch_size.value(),
            learning_rate_multiplier: h.learning_rate_multiplier.value(),
            beta: h.beta.and_then(|b| b.value()),
        };
        let mean_tokens = train
            .stats
            .tokens
            .as_ref()
            .map(|t| t.total_tokens as f64 / train.n_examples.max(1) as f64);
        let input = hone_data::hparams::AutoInput {
            method,
            n_examples: train.n_examples,
            mean_tokens_per_example: mean_tokens,
            model_params: None,
        };
        let r = hone_data::hparams::resolve_auto(&input, &overrides).map_err(|e| JobError {
            code: "invalid_hyperparameters".into(),
            message: e.to_string(),
            param: Some("hyperparameters".into()),
        })?;
        let resolved = Hyperparameters {
            n_epochs: AutoOr::Value(r.n_epochs),
            batch_size: AutoOr::Value(r.batch_size),
            learning_rate_multiplier: AutoOr::Value(r.learning_rate_multiplier),
            beta: r.beta.map(AutoOr::Value),
        };
        let _ = self.store().update_job(
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
        let _ = self.store().add_event(
            &job.id,
            &NewEvent::info(format!("Hyperparameters: {}", why.join("; "))),
        );
        Ok(())
    }
}

/// The final model name of a job: deterministic (the unique part is the
/// end of the job id), so a paused and resumed job keeps it and its
/// checkpoint models agree with it.
pub fn model_name_for(job: &FineTuningJob, org: &str) -> FineTunedName {
    let tail = &job.id[job.id.len().saturating_sub(8)..];
    FineTunedName {
        base: job.model.clone(),
        org: org.to_string(),
        suffix: job.user_provided_suffix.clone().unwrap_or_default(),
        unique: tail.to_string(),
        checkpoint_step: None,
    }
}

/// The hyperparameters a new job shows before the worker resolves them.
pub fn requested(h: Option<Hyperparameters>) -> Hyperparameters {
    h.unwrap_or(Hyperparameters {
        n_epochs: AutoOr::Auto(AutoTag),
        batch_size: AutoOr::Auto(AutoTag),
        learning_rate_multiplier: AutoOr::Auto(AutoTag),
        beta: None,
    })
}

fn internal_error(detail: &str) -> JobError {
    JobError {
        code: "internal_error".into(),
        message: detail.to_string(),
        param: None,
    }
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

fn clone_result(r: &StoreResult<FineTuningJob>) -> StoreResult<FineTuningJob> {
    match r {
        Ok(j) => Ok(j.clone()),
        Err(e) => Err(StoreError::Backend(e.to_string())),
    }
}
