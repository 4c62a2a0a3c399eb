//! The job worker: the only code that changes a job's state.
//!
//! It runs on its own thread and owns a queue of messages: commands from
//! the API (a job was created, cancel, pause, resume), the end of a
//! training run, and the server's shutdown. Handlers never call
//! [`Store::transition_job`]; they send a command and await the worker's
//! answer, so the rules of which transition is allowed live in one place
//! and two transitions never race.
//!
//! A new job is first validated (`worker/validate.rs`: its files and "auto"
//! hyperparameters). Training itself is delegated to a [`TrainingEngine`]
//! (hone-train's, in [`crate::training`]), run on a thread per job (at most
//! `max_concurrent_jobs` at once) so that the worker keeps answering while
//! jobs train. The engine reports progress through a [`JobContext`]
//! ([`crate::job_context`]) and polls [`JobContext::stop_requested`] to stop
//! cooperatively for a cancel, a pause or a shutdown, after saving a
//! checkpoint. A cancel does not wait for that: the job is `cancelled` at
//! once, and the run's end is then only bookkeeping (its slot is freed). Without an engine, jobs are validated and then wait in
//! `queued`.

mod validate;

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::api::{ErrorCode, FineTuningJob, JobError, JobStatus};
use crate::blobs::FsBlobStore;
use crate::ids::FineTunedName;
use crate::job_context::{StopFlag, StopReason};
use crate::store::{NewEvent, Scope, Store, StoreError, StoreResult, Transition};

use crate::engines::{ModelCatalog, TrainingEngine, TrainingOutcome};
use crate::job_context::JobContext;

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

    /// Asks for a cancel/pause/resume and waits for the resulting job. A
    /// cancel answers at once (the running job is `cancelled` while its run
    /// stops in the background); a pause of a running job answers once the
    /// engine has stopped at a checkpoint.
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
    pub engine: Option<Arc<dyn TrainingEngine>>,
    /// The served base models: validation resolves "auto" with their size.
    pub catalog: Arc<dyn ModelCatalog>,
    /// Jobs trained at once (at least 1).
    pub max_concurrent_jobs: usize,
}

struct Running {
    job_id: String,
    stop: StopFlag,
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
            let reason = match c {
                Command::Cancel => {
                    // Answered at once, as OpenAI does: the job is cancelled
                    // now; its run stops at the trainer's next check (and
                    // keeps its slot until then), and whatever it ends with
                    // no longer changes the job.
                    run.stop.request(StopReason::Cancel);
                    let _ = reply.send(self.transition(id, &Transition::Cancel));
                    return;
                }
                Command::Pause => StopReason::Pause,
                Command::Resume => {
                    let job = self.cfg.store.get_job(&Scope::All, id);
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
            run.stop.request(reason);
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
            run.stop.request(StopReason::Shutdown);
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
            model_name: model_name_for(&job),
            training_file,
            validation_file,
            job_dir,
            store: self.cfg.store.clone(),
            blobs: self.cfg.blobs.clone(),
            stop: StopFlag::default(),
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
        let stop = run.as_ref().and_then(|r| r.stop.reason());
        if stop == Some(StopReason::Cancel) {
            // Normally cancelled already, when asked (see `command`).
            if let Ok(job) = self.store().get_job(&Scope::All, id) {
                if job.status == JobStatus::Cancelled {
                    for reply in run.map(|r| r.waiting).unwrap_or_default() {
                        let _ = reply.send(Ok(job.clone()));
                    }
                    return;
                }
            }
        }
        let t = match outcome {
            Ok(TrainingOutcome::Succeeded {
                adapter_path,
                trained_tokens,
                result_files,
            }) => match self.store().get_job(&Scope::All, id) {
                Ok(job) => Transition::Succeed {
                    fine_tuned_model: model_name_for(&job).to_string(),
                    base: crate::ids::base_model_id(&job.model),
                    adapter_path,
                    trained_tokens,
                    result_files,
                },
                Err(e) => Transition::Fail(internal_error(&e.to_string())),
            },
            Ok(TrainingOutcome::Stopped) => match stop {
                Some(StopReason::Cancel) => Transition::Cancel,
                Some(StopReason::Pause) => Transition::Pause,
                _ => Transition::Drain,
            },
            Ok(TrainingOutcome::Failed(e)) => Transition::Fail(e),
            Err(panic) => Transition::Fail(JobError::new(
                ErrorCode::InternalError,
                format!(
                    "The trainer crashed (a bug in hone, not in your data): {panic}. \
                     The server kept running; you can create the job again."
                ),
            )),
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
        let t = match validate::check_files(
            self.store(),
            &self.cfg.blobs,
            validate::Resolvers {
                training: self.cfg.engine.as_deref(),
                catalog: self.cfg.catalog.as_ref(),
            },
            job,
        ) {
            Ok(()) => Transition::Queue,
            Err(e) => Transition::Fail(e),
        };
        let _ = self.transition(&job.id, &t);
    }
}

/// The final model name of a job: deterministic (the unique part is the
/// end of the job id), so a paused and resumed job keeps it and its
/// checkpoint models agree with it. The org part is the job's project.
pub fn model_name_for(job: &FineTuningJob) -> FineTunedName {
    let tail = &job.id[job.id.len().saturating_sub(8)..];
    FineTunedName {
        base: crate::ids::base_model_id(&job.model),
        org: job.organization_id.clone(),
        suffix: job.user_provided_suffix.clone().unwrap_or_default(),
        unique: tail.to_string(),
        checkpoint_step: None,
    }
}

fn internal_error(detail: &str) -> JobError {
    JobError::new(ErrorCode::InternalError, detail)
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
