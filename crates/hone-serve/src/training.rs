//! The training engine over hone-train: runs one fine-tuning job in-process.
//!
//! [`HoneTrainer::train`] maps the job (its method, hyperparameters and
//! seed) and the server's [`TrainerOptions`] to hone-train's
//! [`JobOptions`] ([`TrainerOptions::job_options`]: the only server-specific
//! part), then does what `hone train` does, through the same builder:
//! [`TrainData::read`] parses the files, [`TrainJob::build`] tokenises them
//! with the job's base model (f32 weights, its own tokenizer and chat
//! template), resolves "auto" and builds the config, and [`TrainJob::run`]
//! trains with `resume: true`, so a run of a job that was paused, shut down
//! or killed continues from its newest valid checkpoint. Everything the run
//! writes lives in `$HONE_HOME/jobs/<job-id>/`:
//!
//! - `run/`: hone-train's output directory (final adapter, `metrics.csv`,
//!   `summary.json`, and `checkpoints/step-N/` with optimizer state, which
//!   hone-train prunes);
//! - `models/ckpt-step-N/`: a copy of the adapter of each epoch-end
//!   checkpoint, kept for the job's life, which is what the checkpoint model
//!   `ft:…:ckpt-step-N` serves from.
//!
//! Training events become job events (`JobSink`): one `metrics` event per
//! step (with the validation loss at epoch ends), messages for the start, a
//! resume and each checkpoint, and `estimated_finish` from the measured
//! step rate. A cancel, pause or shutdown sets hone-train's cooperative
//! cancel flag: the run stops after the current step, or between two of its
//! micro-batches (dropping that step), with a checkpoint. (A cancel is
//! answered before that: see `worker`.)

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hone_data::hparams::{Overrides, ResolvedHyperparameters};
use hone_model::ops::BaseWeights;
use hone_model::{Llama, LoraConfig};
use hone_train::job::{
    DEFAULT_KEEP_CHECKPOINTS, DEFAULT_LORA_ALPHA, DEFAULT_LORA_R, DEFAULT_MAX_SEQ_LEN,
    DEFAULT_TARGET_MODULES,
};
use hone_train::metrics::METRICS_CSV;
use hone_train::{
    BaseModel, DataFile, DataFileError, EventSink, FixedLora, JobOptions, MaxSeqLen, RunControl,
    TrainData, TrainError, TrainEvent, TrainJob, TrainJobError,
};

use crate::api::{
    AutoOr, ErrorCode, EventLevel, FineTuningJob, Hyperparameters, JobError, JobFile, MethodType,
    StepMetrics,
};
use crate::catalog::BaseModels;
use crate::engines::{TrainingEngine, TrainingOutcome};
use crate::job_context::{copy_adapter, JobContext};
use crate::store::{unix_now, JobUpdate};

/// hone-train's output directory inside the job directory.
pub const RUN_DIR: &str = "run";
/// Where checkpoint adapters are kept, inside the job directory.
pub const CHECKPOINT_MODELS_DIR: &str = "models";
/// The result file's name (OpenAI's).
pub const RESULT_FILE_NAME: &str = "step_metrics.csv";

/// LoRA and loop settings the API does not expose; the defaults are the
/// ones measured to learn on small models (architecture.md, "Defaults that learn").
#[derive(Debug, Clone)]
pub struct TrainerOptions {
    pub lora_r: usize,
    pub lora_alpha: f64,
    /// `all-linear` or a list such as `q_proj,v_proj`.
    pub target_modules: String,
    /// Examples are cut to this many tokens (and to the model's context).
    pub max_seq_len: usize,
    /// Also checkpoint every N steps inside an epoch (0: epoch ends only).
    pub checkpoint_every: u64,
    /// Resume checkpoints hone-train keeps (checkpoint models are copied out
    /// and kept regardless).
    pub keep_checkpoints: usize,
    /// How jobs multiply by the frozen base (`hone serve --base-weights`); a job's
    /// checkpoints record the mode it resolved to, and its resume keeps it.
    pub base_weights: BaseWeights,
    /// Recompute each layer's activations in the backward (`hone serve
    /// --gradient-checkpointing`): less memory for long examples, one more
    /// forward per step, the same gradients.
    pub gradient_checkpointing: bool,
}

impl Default for TrainerOptions {
    fn default() -> Self {
        TrainerOptions {
            lora_r: DEFAULT_LORA_R,
            lora_alpha: DEFAULT_LORA_ALPHA,
            target_modules: DEFAULT_TARGET_MODULES.into(),
            max_seq_len: DEFAULT_MAX_SEQ_LEN,
            checkpoint_every: 20,
            keep_checkpoints: DEFAULT_KEEP_CHECKPOINTS,
            base_weights: BaseWeights::Auto,
            gradient_checkpointing: false,
        }
    }
}

impl TrainerOptions {
    /// The hone-train options of a job: its method, its hyperparameters (any
    /// still "auto" are resolved by [`TrainJob::build`], with the base
    /// model's size, exactly as `hone train` resolves them) and its seed,
    /// with these server-wide LoRA and checkpoint settings. Everything the
    /// API does not expose keeps hone-train's defaults, which are also the
    /// CLI's.
    pub fn job_options(
        &self,
        method: MethodType,
        h: &Hyperparameters,
        seed: i64,
    ) -> Result<JobOptions, JobError> {
        let method = match method {
            MethodType::Supervised => hone_data::Method::Sft,
            MethodType::Dpo => hone_data::Method::Dpo,
            MethodType::Reinforcement => {
                return Err(JobError::new(
                    ErrorCode::UnsupportedMethod,
                    "Reinforcement fine-tuning is not supported by this server.",
                )
                .with_param("method.type"))
            }
        };
        let target_modules =
            LoraConfig::parse_target_modules(&self.target_modules).map_err(|e| {
                JobError::new(
                    ErrorCode::InternalError,
                    format!("server LoRA options: {e}"),
                )
            })?;
        Ok(JobOptions {
            overrides: Overrides {
                // The API's beta is DPO's only.
                beta: h
                    .beta
                    .and_then(|b| b.value())
                    .filter(|_| method == hone_data::Method::Dpo),
                ..h.overrides()
            },
            lora_r: self.lora_r,
            lora_alpha: self.lora_alpha,
            target_modules,
            max_seq_len: MaxSeqLen::UpTo(self.max_seq_len),
            seed: seed as u64,
            // A job resumes from its checkpoints: keep at least one.
            keep_checkpoints: self.keep_checkpoints.max(1),
            checkpoint_every: self.checkpoint_every,
            base_weights: self.base_weights,
            gradient_checkpointing: self.gradient_checkpointing,
            ..JobOptions::new(method)
        })
    }
}

/// The real [`TrainingEngine`].
pub struct HoneTrainer {
    models: Arc<BaseModels>,
    options: TrainerOptions,
}

impl HoneTrainer {
    pub fn new(models: Arc<BaseModels>, options: TrainerOptions) -> Self {
        HoneTrainer { models, options }
    }
}

impl TrainingEngine for HoneTrainer {
    fn resolve_hyperparameters(
        &self,
        job: &FineTuningJob,
        training_file: &Path,
        validation_file: Option<&Path>,
    ) -> Option<Result<ResolvedHyperparameters, JobError>> {
        Some(self.resolve(job, training_file, validation_file))
    }

    fn train(&self, ctx: &JobContext) -> TrainingOutcome {
        match self.run(ctx) {
            Ok(outcome) => outcome,
            Err(e) => TrainingOutcome::Failed(e),
        }
    }
}

impl HoneTrainer {
    fn run(&self, ctx: &JobContext) -> Result<TrainingOutcome, JobError> {
        let (train_job, mut model) = self.prepare(ctx)?;
        let out_dir = ctx.job_dir.join(RUN_DIR);
        let mut sink = JobSink::new(ctx, train_job.steps_per_epoch(), train_job.has_validation());
        let cancel = Arc::new(AtomicBool::new(false));
        let ctl = RunControl {
            resume: true,
            cancel: Some(cancel.clone()),
        };
        let result = with_stop_watcher(ctx, &cancel, || {
            train_job.run(&mut model, &out_dir, &mut sink, &ctl)
        });
        match result {
            Ok(summary) => {
                let csv = out_dir.join(METRICS_CSV);
                let file = ctx.store_result_file(RESULT_FILE_NAME, &csv).map_err(|e| {
                    JobError::new(
                        ErrorCode::InternalError,
                        format!("storing the result file: {e}"),
                    )
                })?;
                Ok(TrainingOutcome::Succeeded {
                    adapter_path: out_dir,
                    trained_tokens: summary.processed_tokens,
                    result_files: vec![file.id],
                })
            }
            Err(TrainError::Cancelled { .. }) => Ok(TrainingOutcome::Stopped),
            Err(e) => Err(JobError::new(
                ErrorCode::TrainingFailed,
                format!("Training failed: {e:#}"),
            )),
        }
    }

    /// Reads the job's files (before loading the model, so bad data fails
    /// fast), loads the base model with f32 weights, and builds the run with
    /// hone-train's [`TrainJob::build`]; its data warnings become job events.
    fn resolve(
        &self,
        job: &FineTuningJob,
        training_file: &Path,
        validation_file: Option<&Path>,
    ) -> Result<ResolvedHyperparameters, JobError> {
        let opts = self
            .options
            .job_options(job.method.kind, job.requested(), job.seed)?;
        let data = TrainData::read(opts.method, training_file, validation_file)
            .map_err(|e| job_error_of(&e.into()))?;
        let base_id = crate::ids::base_model_id(&job.model);
        let open = self
            .models
            .open(self.base_model(&base_id)?)
            .map_err(|e| load_failed(&base_id, e))?;
        let base = BaseModel {
            id: &open.id,
            config: &open.config,
            tokenizer: &open.tokenizer,
        };
        let train_job = TrainJob::build(&opts, data, base).map_err(|e| job_error_of(&e))?;
        Ok(train_job.hyperparameters)
    }

    /// Where a job's base model is, or why it cannot be had.
    fn base_model(&self, id: &str) -> Result<&hone_model::registry::ResolvedModel, JobError> {
        self.models.source(id).ok_or_else(|| {
            JobError::new(
                ErrorCode::ModelNotAvailable,
                format!("The base model '{id}' is no longer served."),
            )
        })
    }

    fn prepare(&self, ctx: &JobContext) -> Result<(TrainJob, Llama), JobError> {
        let job = &ctx.job;
        let mut opts = self
            .options
            .job_options(job.method.kind, job.requested(), job.seed)?;
        // A job on a fine-tuned model continues its adapter (shape, weights, and as
        // DPO's reference); the server's LoRA options are its defaults only.
        if let Some(parent) = ctx.parent_adapter()? {
            opts.continue_from(&parent, &FixedLora::default())
                .map_err(|e| job_error_of(&e))?;
            let _ = ctx.message(
                EventLevel::Info,
                format!("Continuing from the adapter of {}", job.model),
            );
        }
        let data = TrainData::read(
            opts.method,
            &ctx.training_file,
            ctx.validation_file.as_deref(),
        )
        .map_err(|e| job_error_of(&e.into()))?;
        let base_id = crate::ids::base_model_id(&job.model);
        let resolved = self.base_model(&base_id)?;
        let _ = ctx.message(EventLevel::Info, format!("Loading base model {base_id}"));
        // A resumed job keeps the mode its checkpoint recorded (with `auto`).
        let out_dir = ctx.job_dir.join(RUN_DIR);
        let mode = hone_train::base::mode_for_run(self.options.base_weights, &out_dir, true)
            .map_err(|e| JobError::new(ErrorCode::InternalError, e.to_string()))?;
        let engine = self
            .models
            .load(resolved, hone_train::base::weight_path(mode))
            .map_err(|e| load_failed(&base_id, e))?;
        let base = BaseModel {
            id: &engine.id,
            config: &engine.model.cfg,
            tokenizer: &engine.tokenizer,
        };
        let train_job = TrainJob::build(&opts, data, base).map_err(|e| job_error_of(&e))?;
        for note in &train_job.notes {
            let _ = ctx.message(EventLevel::Warn, note.to_string());
        }
        record_hyperparameters(ctx, &train_job);
        Ok((train_job, engine.model))
    }
}

/// A base model that is served but cannot be opened or loaded.
fn load_failed(id: &str, e: hone_model::ModelError) -> JobError {
    JobError::new(
        ErrorCode::ModelLoadFailed,
        format!("Loading base model {id}: {e}"),
    )
}

/// Shows on the job the hyperparameters the run uses (all resolved).
fn record_hyperparameters(ctx: &JobContext, job: &TrainJob) {
    let hp = &job.hyperparameters;
    let resolved = Hyperparameters {
        n_epochs: AutoOr::Value(hp.n_epochs),
        batch_size: AutoOr::Value(hp.batch_size),
        learning_rate_multiplier: AutoOr::Value(hp.learning_rate_multiplier),
        beta: job.beta.map(AutoOr::Value),
    };
    if resolved != ctx.job.hyperparameters {
        let r = ctx.update(&JobUpdate {
            hyperparameters: Some(resolved),
            ..Default::default()
        });
        if let Err(e) = r {
            tracing::warn!(job = %ctx.job.id, error = %e, "recording the resolved hyperparameters");
        }
    }
}

/// The API error of a job that cannot start. A data file's problem fails
/// the job with `invalid_training_file` / `invalid_validation_file`, the
/// file as `param`, and (for a file hone-data rejected) every problem listed.
pub fn job_error_of(e: &TrainJobError) -> JobError {
    match e {
        TrainJobError::Data(DataFileError { file, problem, .. }) => {
            let file = match file {
                DataFile::Training => JobFile::Training,
                DataFile::Validation => JobFile::Validation,
            };
            file.error(problem.detail())
        }
        TrainJobError::Hyperparameters(e) => {
            JobError::new(ErrorCode::InvalidHyperparameters, e.to_string())
                .with_param("hyperparameters")
        }
        // The parent model's adapter went missing or broke after the job was created.
        TrainJobError::Parent { message, .. } => JobError::new(
            ErrorCode::ModelNotAvailable,
            format!("The model this job continues cannot be used: {message}"),
        )
        .with_param("model"),
        // The server's options cannot be contradictory or beyond a model's
        // context (its max_seq_len is capped), so these are its own bugs.
        e @ (TrainJobError::Options(_) | TrainJobError::BeyondContext { .. }) => JobError::new(
            ErrorCode::InternalError,
            format!("server training options: {e}"),
        ),
    }
}

/// Runs `f` while a watcher thread turns the job's stop request into
/// hone-train's cancel flag (checked after every step and between
/// micro-batches).
fn with_stop_watcher<T>(ctx: &JobContext, cancel: &AtomicBool, f: impl FnOnce() -> T) -> T {
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                if ctx.stop_requested() {
                    cancel.store(true, Ordering::Relaxed);
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let out = f();
        done.store(true, Ordering::Relaxed);
        out
    })
}

/// Turns hone-train's events into job events, checkpoint models and
/// progress fields. Store errors are logged, not raised: losing a progress
/// line must not stop training.
struct JobSink<'a> {
    ctx: &'a JobContext,
    steps_per_epoch: u64,
    has_validation: bool,
    /// A step's metrics held back until its validation arrives.
    pending: Option<StepMetrics>,
    /// Metrics of the last step, for its checkpoint.
    last: StepMetrics,
    /// Step rate of this session: (first step seen, when).
    session: Option<(u64, Instant)>,
    /// Steps up to this one already have metrics events (a resumed job
    /// redoes the steps after its last checkpoint).
    recorded_up_to: u64,
}

impl<'a> JobSink<'a> {
    fn new(ctx: &'a JobContext, steps_per_epoch: u64, has_validation: bool) -> Self {
        JobSink {
            ctx,
            steps_per_epoch: steps_per_epoch.max(1),
            has_validation,
            pending: None,
            last: StepMetrics::default(),
            session: None,
            recorded_up_to: ctx.last_recorded_step(),
        }
    }

    fn log<T, E: std::fmt::Display>(&self, r: Result<T, E>) {
        if let Err(e) = r {
            tracing::warn!(job = %self.ctx.job.id, error = %e, "recording training progress");
        }
    }

    fn flush(&mut self) {
        if let Some(m) = self.pending.take() {
            let r = self.ctx.metrics(&m);
            self.log(r);
        }
    }

    fn on_step(&mut self, step: u64, total: u64, loss: f64, acc: f64) {
        self.flush();
        let m = StepMetrics {
            step: Some(step),
            total_steps: Some(total),
            train_loss: Some(loss),
            train_mean_token_accuracy: Some(acc),
            ..Default::default()
        };
        self.last = m;
        if step <= self.recorded_up_to {
            // Redone after a resume; the first run's event stands.
        } else if self.has_validation && step.is_multiple_of(self.steps_per_epoch) {
            self.pending = Some(m);
        } else {
            let r = self.ctx.metrics(&m);
            self.log(r);
        }
        self.update_eta(step, total);
    }

    /// `estimated_finish` from the step rate measured in this session.
    fn update_eta(&mut self, step: u64, total: u64) {
        let now = Instant::now();
        let (first, t0) = *self.session.get_or_insert((step.saturating_sub(1), now));
        let done = step.saturating_sub(first);
        let elapsed = now.duration_since(t0).as_secs_f64();
        if done == 0 || elapsed <= 0.0 {
            return;
        }
        let remaining = total.saturating_sub(step) as f64 * elapsed / done as f64;
        let r = self.ctx.update(&JobUpdate {
            estimated_finish: Some(unix_now() + remaining.ceil() as i64),
            ..Default::default()
        });
        self.log(r);
    }

    /// Copies the adapter of an epoch-end checkpoint to
    /// `models/ckpt-step-N/` (hone-train prunes its own checkpoints) and
    /// registers it as a checkpoint model.
    fn on_checkpoint(&mut self, step: u64, path: &Path) {
        self.flush();
        if !step.is_multiple_of(self.steps_per_epoch) {
            return;
        }
        let dest = self
            .ctx
            .job_dir
            .join(CHECKPOINT_MODELS_DIR)
            .join(format!("ckpt-step-{step}"));
        let copied = copy_adapter(path, &dest);
        if let Err(e) = copied {
            self.log::<(), _>(Err(format!("copying checkpoint adapter: {e}")));
            return;
        }
        let mut metrics = self.last;
        if metrics.step != Some(step) {
            metrics = StepMetrics {
                step: Some(step),
                ..Default::default()
            };
        }
        let r = self.ctx.checkpoint(step, dest, metrics);
        if let Ok(c) = &r {
            let _ = self.ctx.message(
                EventLevel::Info,
                format!(
                    "Checkpoint created at step {step}: {}",
                    c.fine_tuned_model_checkpoint
                ),
            );
        }
        self.log(r);
    }
}

impl EventSink for JobSink<'_> {
    fn emit(&mut self, event: &TrainEvent) {
        match event {
            // Only its start and end become job events: one per percent would crowd
            // the job's event list.
            TrainEvent::Reference { scored, pairs } if *scored == 0 || scored == pairs => {
                let msg = if *scored == 0 {
                    format!("Computing the reference model's log-probs of {pairs} preference pairs")
                } else {
                    format!("Reference log-probs computed for {pairs} preference pairs")
                };
                let r = self.ctx.message(EventLevel::Info, msg);
                self.log(r);
            }
            TrainEvent::Reference { .. } => {}
            TrainEvent::Start {
                total_steps,
                epochs,
                train_examples,
                trainable_params,
                resumed_from_step,
                base_weights,
                ..
            } => {
                let mode = base_weights.as_str();
                let msg = match resumed_from_step {
                    Some(s) => format!(
                        "Resuming from the checkpoint at step {s} of {total_steps} \
                         ({mode} base weights)"
                    ),
                    None => format!(
                        "Training {trainable_params} LoRA parameters on {train_examples} examples: \
                         {epochs} epoch(s), {total_steps} steps, {mode} base weights"
                    ),
                };
                let r = self.ctx.message(EventLevel::Info, msg);
                self.log(r);
            }
            TrainEvent::Step {
                step,
                total_steps,
                train_loss,
                train_accuracy,
                ..
            } => self.on_step(*step, *total_steps, *train_loss, *train_accuracy),
            TrainEvent::Validation {
                step,
                valid_loss,
                valid_mean_token_accuracy,
                ..
            } => {
                let mut m = self.pending.take().unwrap_or(StepMetrics {
                    step: Some(*step),
                    ..Default::default()
                });
                m.valid_loss = Some(*valid_loss);
                m.valid_mean_token_accuracy = Some(*valid_mean_token_accuracy);
                if self.last.step == Some(*step) {
                    self.last = m;
                }
                let r = self.ctx.metrics(&m);
                self.log(r);
            }
            TrainEvent::Checkpoint { step, path } => self.on_checkpoint(*step, path),
            TrainEvent::Best {
                step, valid_loss, ..
            } => {
                let r = self.ctx.message(
                    EventLevel::Info,
                    format!("New best validation loss {valid_loss:.4} at step {step}"),
                );
                self.log(r);
            }
            TrainEvent::Done {
                early_stop_step,
                returned_best,
                ..
            } => {
                self.flush();
                if let Some(msg) = outcome_message(*early_stop_step, returned_best.as_ref()) {
                    let r = self.ctx.message(EventLevel::Info, msg);
                    self.log(r);
                }
            }
            TrainEvent::Error { message } => {
                self.flush();
                let r = self
                    .ctx
                    .message(EventLevel::Info, format!("Training stopped: {message}"));
                self.log(r);
            }
        }
    }
}

/// The job event for a run that stopped early or returns its best step:
/// "Early stop at step N; best step M, valid loss X".
fn outcome_message(stop: Option<u64>, best: Option<&hone_train::BestInfo>) -> Option<String> {
    let best = best.map(|b| format!("best step {}, valid loss {:.4}", b.step, b.valid_loss));
    match (stop, best) {
        (Some(s), Some(b)) => Some(format!(
            "Early stop at step {s}; {b} (the fine-tuned model)"
        )),
        (Some(s), None) => Some(format!("Early stop at step {s}")),
        (None, Some(b)) => Some(format!("The fine-tuned model is the {b}")),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests;
