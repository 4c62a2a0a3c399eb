//! The training engine over hone-train: runs one fine-tuning job in-process.
//!
//! [`HoneTrainer::train`] loads the job's base model (f32 weights, its own
//! tokenizer and chat template), parses and tokenizes the files with the
//! same code as `hone train`, and calls [`hone_train::sft::run_sft`] with
//! `resume: true`, so a run of a job that was paused, shut down or killed
//! continues from its newest valid checkpoint. Everything the run writes
//! lives in `$HONE_HOME/jobs/<job-id>/`:
//!
//! - `run/`: hone-train's output directory (final adapter, `metrics.csv`,
//!   `summary.json`, and `checkpoints/step-N/` with optimizer state, which
//!   hone-train prunes);
//! - `models/ckpt-step-N/`: a copy of the adapter of each epoch-end
//!   checkpoint, kept for the job's life, which is what the checkpoint model
//!   `ft:…:ckpt-step-N` serves from.
//!
//! Training events become job events ([`JobSink`]): one `metrics` event per
//! step (with the validation loss at epoch ends), messages for the start, a
//! resume and each checkpoint, and `estimated_finish` from the measured
//! step rate. A cancel, pause or shutdown sets hone-train's cooperative
//! cancel flag: the run stops after the current step with a checkpoint.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hone_data::hparams::{resolve_auto, AutoInput, Overrides};
use hone_data::DataError;
use hone_model::lora::{ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE};
use hone_model::{ChatEngine, LoraConfig, WeightPath};
use hone_train::batch::{batches_per_epoch, TokenizedExample};
use hone_train::runner::METRICS_CSV;
use hone_train::{
    run_dpo, run_sft, tokenize_dpo, tokenize_sft, AdamWConfig, DpoConfig, EventSink, RunControl,
    ScheduleKind, TokenizedPair, TrainConfig, TrainError, TrainEvent,
};

use crate::api::{EventLevel, JobError, MethodType, StepMetrics};
use crate::catalog::BaseModels;
use crate::store::{unix_now, JobUpdate};
use crate::worker::{JobContext, TrainingEngine, TrainingOutcome};

/// hone-train's output directory inside the job directory.
pub const RUN_DIR: &str = "run";
/// Where checkpoint adapters are kept, inside the job directory.
pub const CHECKPOINT_MODELS_DIR: &str = "models";
/// The result file's name (OpenAI's).
pub const RESULT_FILE_NAME: &str = "step_metrics.csv";

/// LoRA and loop settings the API does not expose; the defaults are the
/// ones measured to learn on small models (DESIGN.md, "Defaults that learn").
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
}

impl Default for TrainerOptions {
    fn default() -> Self {
        TrainerOptions {
            lora_r: 8,
            lora_alpha: 16.0,
            target_modules: "all-linear".into(),
            max_seq_len: 1024,
            checkpoint_every: 20,
            keep_checkpoints: 2,
        }
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

/// A job failure with a code and a message for the user.
fn job_error(code: &str, message: impl Into<String>) -> JobError {
    JobError {
        code: code.into(),
        message: message.into(),
        param: None,
    }
}

impl TrainingEngine for HoneTrainer {
    fn train(&self, ctx: &JobContext) -> TrainingOutcome {
        match self.run(ctx) {
            Ok(outcome) => outcome,
            Err(e) => TrainingOutcome::Failed(e),
        }
    }
}

/// Tokenised training and validation data of either method.
enum Data {
    Sft {
        train: Vec<TokenizedExample>,
        valid: Vec<TokenizedExample>,
    },
    Dpo {
        train: Vec<TokenizedPair>,
        valid: Vec<TokenizedPair>,
    },
}

impl Data {
    fn n_train(&self) -> usize {
        match self {
            Data::Sft { train, .. } => train.len(),
            Data::Dpo { train, .. } => train.len(),
        }
    }

    fn has_valid(&self) -> bool {
        match self {
            Data::Sft { valid, .. } => !valid.is_empty(),
            Data::Dpo { valid, .. } => !valid.is_empty(),
        }
    }

    /// Mean tokens per training example (both answers of a pair).
    fn mean_tokens(&self) -> f64 {
        let (sum, n) = match self {
            Data::Sft { train, .. } => (
                train.iter().map(|e| e.ids.len()).sum::<usize>(),
                train.len(),
            ),
            Data::Dpo { train, .. } => (
                train
                    .iter()
                    .map(|p| p.chosen.ids.len() + p.rejected.ids.len())
                    .sum::<usize>(),
                train.len(),
            ),
        };
        sum as f64 / n.max(1) as f64
    }
}

impl HoneTrainer {
    fn run(&self, ctx: &JobContext) -> Result<TrainingOutcome, JobError> {
        let method = ctx.job.method.kind;
        let resolved = self.models.source(&ctx.job.model).ok_or_else(|| {
            job_error(
                "model_not_available",
                format!("The base model '{}' is no longer served.", ctx.job.model),
            )
        })?;
        let _ = ctx.message(
            EventLevel::Info,
            format!("Loading base model {}", ctx.job.model),
        );
        let engine = ChatEngine::load(resolved, WeightPath::F32).map_err(|e| {
            job_error(
                "model_load_failed",
                format!("Loading base model {}: {e}", ctx.job.model),
            )
        })?;
        let mut model = engine.model;
        let tok = engine.tokenizer;
        let max_len = self
            .options
            .max_seq_len
            .min(model.cfg.max_position_embeddings);
        let data = read_data(ctx, method, &tok, max_len)?;
        let (cfg, beta) = self.config(
            ctx,
            &data,
            engine.id.clone(),
            tok.tokenizer.eos_id(),
            max_len,
        )?;
        let out_dir = ctx.job_dir.join(RUN_DIR);
        let steps_per_epoch = batches_per_epoch(data.n_train(), cfg.batch_size) as u64;
        let mut sink = JobSink::new(ctx, steps_per_epoch, data.has_valid());
        let cancel = Arc::new(AtomicBool::new(false));
        let ctl = RunControl {
            resume: true,
            cancel: Some(cancel.clone()),
        };
        let result = with_stop_watcher(ctx, &cancel, || match &data {
            Data::Sft { train, valid } => {
                run_sft(&mut model, train, valid, &cfg, &out_dir, &mut sink, &ctl)
            }
            Data::Dpo { train, valid } => {
                let dcfg = DpoConfig {
                    train: cfg.clone(),
                    beta,
                };
                run_dpo(&mut model, train, valid, &dcfg, &out_dir, &mut sink, &ctl)
            }
        });
        match result {
            Ok(summary) => {
                let csv = out_dir.join(METRICS_CSV);
                let file = ctx.store_result_file(RESULT_FILE_NAME, &csv).map_err(|e| {
                    job_error("internal_error", format!("storing the result file: {e}"))
                })?;
                Ok(TrainingOutcome::Succeeded {
                    adapter_path: out_dir,
                    trained_tokens: summary.processed_tokens,
                    result_files: vec![file.id],
                })
            }
            Err(TrainError::Cancelled { .. }) => Ok(TrainingOutcome::Stopped),
            Err(e) => Err(job_error(
                "training_failed",
                format!("Training failed: {e:#}"),
            )),
        }
    }

    /// The hone-train config of a job (and DPO's beta): its resolved
    /// hyperparameters (the worker resolved "auto" at validation and showed
    /// them on the job; any left are resolved here by the same rule), the
    /// server's LoRA options, and the job's seed.
    fn config(
        &self,
        ctx: &JobContext,
        data: &Data,
        base_model: String,
        pad_id: u32,
        max_seq_len: usize,
    ) -> Result<(TrainConfig, f64), JobError> {
        let h = ctx.job.hyperparameters;
        let dpo = matches!(data, Data::Dpo { .. });
        let overrides = Overrides {
            n_epochs: h.n_epochs.value(),
            batch_size: h.batch_size.value(),
            learning_rate_multiplier: h.learning_rate_multiplier.value(),
            beta: h.beta.and_then(|b| b.value()),
        };
        let input = AutoInput {
            method: if dpo {
                hone_data::Method::Dpo
            } else {
                hone_data::Method::Sft
            },
            n_examples: data.n_train(),
            mean_tokens_per_example: Some(data.mean_tokens()),
            model_params: None,
        };
        let hp = resolve_auto(&input, &overrides)
            .map_err(|e| job_error("invalid_hyperparameters", e.to_string()))?;
        let target_modules = LoraConfig::parse_target_modules(&self.options.target_modules)
            .map_err(|e| job_error("internal_error", format!("server LoRA options: {e}")))?;
        let cfg = TrainConfig {
            epochs: hp.n_epochs,
            batch_size: hp.batch_size as usize,
            grad_accum: 1,
            learning_rate: hp.learning_rate,
            schedule: ScheduleKind::Linear,
            warmup_ratio: 0.0,
            max_seq_len,
            seed: ctx.job.seed as u64,
            lora_r: self.options.lora_r,
            lora_alpha: self.options.lora_alpha,
            lora_dropout: 0.0,
            target_modules,
            adamw: AdamWConfig {
                max_grad_norm: Some(1.0),
                ..AdamWConfig::default()
            },
            keep_checkpoints: self.options.keep_checkpoints.max(1),
            checkpoint_every: self.options.checkpoint_every,
            base_model,
            pad_id,
            init_adapter: None,
            packing: false,
        };
        Ok((cfg, hp.beta.unwrap_or(hone_data::hparams::DPO_AUTO_BETA)))
    }
}

/// Parses and tokenises the job's files for its method. Invalid data
/// (which upload validation should have caught) fails the job with every
/// problem listed.
fn read_data(
    ctx: &JobContext,
    method: MethodType,
    tok: &hone_text::ChatTokenizer,
    max_len: usize,
) -> Result<Data, JobError> {
    let tok_err = |e: TrainError| job_error("invalid_training_file", format!("{e:#}"));
    let data = match method {
        MethodType::Supervised => {
            let mut sets = Vec::new();
            for (path, role) in job_files(ctx) {
                let ex = read_sft(path, role)?;
                sets.push(tokenize_sft(tok, &ex, max_len).map_err(tok_err)?);
            }
            let valid = sets.get(1).map(|t| t.examples.clone()).unwrap_or_default();
            let train = sets.swap_remove(0);
            warn_truncated(ctx, train.truncated, max_len);
            Data::Sft {
                train: train.examples,
                valid,
            }
        }
        MethodType::Dpo => {
            let mut sets = Vec::new();
            for (path, role) in job_files(ctx) {
                let ex = read_preference(path, role)?;
                sets.push(tokenize_dpo(tok, &ex, max_len).map_err(tok_err)?);
            }
            let valid = sets.get(1).map(|t| t.pairs.clone()).unwrap_or_default();
            let train = sets.swap_remove(0);
            warn_truncated(ctx, train.truncated, max_len);
            if train.dropped > 0 {
                let _ = ctx.message(
                    EventLevel::Warn,
                    format!(
                        "{} preference pair(s) were dropped: an answer had no token left within {max_len} tokens",
                        train.dropped
                    ),
                );
            }
            Data::Dpo {
                train: train.pairs,
                valid,
            }
        }
        MethodType::Reinforcement => {
            return Err(JobError {
                code: "unsupported_method".into(),
                message: "Reinforcement fine-tuning is not supported by this server.".into(),
                param: Some("method.type".into()),
            })
        }
    };
    if data.n_train() == 0 {
        return Err(job_error(
            "invalid_training_file",
            "No training example is left after tokenization.",
        ));
    }
    Ok(data)
}

fn warn_truncated(ctx: &JobContext, truncated: usize, max_len: usize) {
    if truncated > 0 {
        let _ = ctx.message(
            EventLevel::Warn,
            format!("{truncated} training example(s) were cut to {max_len} tokens"),
        );
    }
}

/// Which of a job's two files is being read, for error codes and `param`.
#[derive(Clone, Copy)]
enum FileRole {
    Training,
    Validation,
}

impl FileRole {
    fn param(self) -> &'static str {
        match self {
            FileRole::Training => "training_file",
            FileRole::Validation => "validation_file",
        }
    }

    /// The error of a file that hone-data rejected, with its full report.
    fn error(self, e: DataError) -> JobError {
        let message = match e {
            DataError::Invalid(report) => hone_data::render::render_report(&report),
            other => other.to_string(),
        };
        JobError {
            code: format!("invalid_{}", self.param()),
            message,
            param: Some(self.param().into()),
        }
    }
}

/// Parses an SFT file with hone-data. A validation file may hold fewer than
/// [`hone_data::MIN_EXAMPLES`] examples (that minimum is for training).
fn read_sft(path: &Path, role: FileRole) -> Result<Vec<hone_data::SftExample>, JobError> {
    match role {
        FileRole::Training => hone_data::parse_sft_file(path),
        FileRole::Validation => hone_data::parse_sft_validation_file(path),
    }
    .map_err(|e| role.error(e))
}

/// Parses a DPO file with hone-data, as [`read_sft`] does.
fn read_preference(
    path: &Path,
    role: FileRole,
) -> Result<Vec<hone_data::PreferenceExample>, JobError> {
    match role {
        FileRole::Training => hone_data::parse_preference_file(path),
        FileRole::Validation => hone_data::parse_preference_validation_file(path),
    }
    .map_err(|e| role.error(e))
}

/// The training file, then the validation file if the job has one.
fn job_files(ctx: &JobContext) -> impl Iterator<Item = (&PathBuf, FileRole)> {
    std::iter::once((&ctx.training_file, FileRole::Training)).chain(
        ctx.validation_file
            .iter()
            .map(|p| (p, FileRole::Validation)),
    )
}

/// Runs `f` while a watcher thread turns the job's stop request into
/// hone-train's cancel flag (checked after every step).
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
            TrainEvent::Start {
                total_steps,
                epochs,
                train_examples,
                trainable_params,
                resumed_from_step,
                ..
            } => {
                let msg = match resumed_from_step {
                    Some(s) => format!("Resuming from the checkpoint at step {s} of {total_steps}"),
                    None => format!(
                        "Training {trainable_params} LoRA parameters on {train_examples} examples: \
                         {epochs} epoch(s), {total_steps} steps"
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
            TrainEvent::Done { .. } => self.flush(),
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

/// Copies the two PEFT files of a checkpoint into `dest` atomically (a temp
/// directory, fsynced, then renamed), replacing an older copy.
fn copy_adapter(src: &Path, dest: &Path) -> std::io::Result<()> {
    let parent = dest
        .parent()
        .ok_or_else(|| std::io::Error::other("checkpoint model path has no parent"))?;
    std::fs::create_dir_all(parent)?;
    let tmp: PathBuf = parent.join(format!(
        ".{}.tmp",
        dest.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    for name in [ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE] {
        std::fs::copy(src.join(name), tmp.join(name))?;
        std::fs::File::open(tmp.join(name))?.sync_all()?;
    }
    std::fs::File::open(&tmp)?.sync_all()?;
    if dest.exists() {
        std::fs::remove_dir_all(dest)?;
    }
    std::fs::rename(&tmp, dest)?;
    std::fs::File::open(parent)?.sync_all()
}
