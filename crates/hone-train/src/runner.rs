//! The loop every training method shares: epochs and batches with gradient
//! accumulation and our AdamW, checkpoints (every epoch end, every N steps, on cancel),
//! exact resume, cooperative cancel, and the run's outputs.
//!
//! A method (SFT, DPO) is an [`Objective`]: how a micro-batch of its examples becomes a
//! differentiable loss, and how a validation set is scored. Everything else happens here
//! once, so SFT and DPO checkpoint, resume and cancel the same way. The outputs have
//! their own modules: [`crate::metrics`] (per-step rows), [`crate::best`] (`best/`),
//! [`crate::summary`] (`summary.json`) and [`crate::resume`] (what a checkpoint records).
//!
//! Everything random (LoRA init, data order, dropout masks) derives from `seed`, and the
//! data order is a pure function of `(seed, epoch)`, so a checkpoint's cursor is just
//! `(epoch, batch)` and a resumed run replays the uninterrupted one step for step.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{Tensor, Var};
use hone_model::lora::LoraParams;
use hone_model::ops::base_weights::with_precision;
use hone_model::ops::BaseWeights;
use hone_model::{Llama, TrainOptions};

use crate::batch::{batch_indices, batches_per_epoch};
use crate::best::{BestDir, BestInfo, Plateau};
use crate::checkpoint::{self, PendingCheckpoint};
use crate::config::{RunIdentity, TrainConfig};
use crate::error::{io_err, Result, TrainError};
use crate::events::{EventSink, RewardStats, TrainEvent};
use crate::metrics::{MetricsRow, MetricsWriter};
use crate::objective::{Objective, Stats};
use crate::optim::AdamW;
use crate::resume::{
    check_identity, data_fingerprint, load_adapter_into, model_fingerprint, read_state,
    write_adapter, TrainerState, OPTIMIZER_FILE, TRAINER_STATE_FILE,
};
use crate::schedule::LrSchedule;
use crate::summary::TrainSummary;

pub use crate::checkpoint::CHECKPOINTS_DIR;

/// How a run is started and stopped from outside.
#[derive(Debug, Clone, Default)]
pub struct RunControl {
    /// Continue from the newest valid checkpoint in `out_dir/checkpoints`, if any.
    pub resume: bool,
    /// Set it (e.g. on Ctrl-C, or a job cancel) to stop: the run checks it after every
    /// step and between the micro-batches of a step (`grad_accum`), whose partial
    /// gradients are then dropped (the step is redone on resume). It writes a
    /// checkpoint at its cursor and returns [`TrainError::Cancelled`].
    pub cancel: Option<Arc<AtomicBool>>,
}

impl RunControl {
    pub(crate) fn cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
    }
}

/// Drops the training ops' pooled buffers when a run ends, however it ends, so that a
/// server that trained keeps no step-sized working set (`ops::scratch`).
struct ReleaseScratch;

impl Drop for ReleaseScratch {
    fn drop(&mut self) {
        hone_model::ops::scratch::release();
    }
}

/// Runs `objective` over `train` (and `valid` at each epoch end) on `model`, writing the
/// adapter, metrics, summary, checkpoints and `best/` into `out_dir`.
#[allow(clippy::too_many_arguments)]
pub fn train_loop<O: Objective>(
    model: &mut Llama,
    objective: &O,
    train: &[O::Example],
    valid: &[O::Example],
    cfg: &TrainConfig,
    out_dir: &Path,
    sink: &mut dyn EventSink,
    ctl: &RunControl,
) -> Result<TrainSummary> {
    let _scratch = ReleaseScratch;
    cfg.check(train.len())?;
    cfg.check_for_model(model)?;
    std::fs::create_dir_all(out_dir).map_err(io_err("create", out_dir))?;
    let ckpt = if ctl.resume {
        checkpoint::latest_valid(&out_dir.join(CHECKPOINTS_DIR))?
    } else {
        None
    };
    let recorded = match &ckpt {
        Some(c) => Some(read_state(c)?.config.base_weights),
        None => None,
    };
    let mut cfg = cfg.clone();
    cfg.base_weights = BaseWeights::for_run(cfg.base_weights, recorded);
    crate::base::fit_model(model, cfg.base_weights)?;
    // Every op of the run (forward, backward, validation) is built on this thread and
    // reads the product path from this scope.
    with_precision(cfg.base_weights.resolve(), || {
        run_from(
            model,
            objective,
            (train, valid),
            &cfg,
            out_dir,
            sink,
            ctl,
            ckpt,
        )
    })
}

/// [`train_loop`] once the checkpoint to resume from (if any) is found and the base-weight
/// mode is resolved.
#[allow(clippy::too_many_arguments)]
fn run_from<O: Objective>(
    model: &mut Llama,
    objective: &O,
    (train, valid): (&[O::Example], &[O::Example]),
    cfg: &TrainConfig,
    out_dir: &Path,
    sink: &mut dyn EventSink,
    ctl: &RunControl,
    ckpt: Option<checkpoint::Checkpoint>,
) -> Result<TrainSummary> {
    let lora = LoraParams::attach(model, &cfg.lora(), cfg.seed)?;
    if let Some(dir) = &cfg.init_adapter {
        load_adapter_into(&lora.trainable(), dir)?;
    }
    let identity = RunIdentity {
        method: O::METHOD.into(),
        beta: objective.beta(),
        config: cfg.clone(),
        model_fingerprint: model_fingerprint(model)?,
        data_fingerprint: data_fingerprint(objective, train),
    };
    if let Some(c) = &ckpt {
        check_identity(c, &identity)?;
    }
    let best = BestDir::open(out_dir, ckpt.is_some())?;
    if prepare(objective, model, (train, valid), sink, ctl)?.is_break() {
        // Cancelled before the first step: a resume still starts from `ckpt`.
        let (step, path) = ckpt.map(|c| (c.step, c.path)).unzip();
        return Err(cancelled(step.unwrap_or(0), path, sink));
    }
    let mut run = Run::new(
        model,
        lora,
        cfg,
        train.len(),
        out_dir,
        ckpt.is_some(),
        identity,
    )?;
    run.best = best;
    let (mut start_epoch, start_batch) = match &ckpt {
        Some(c) => run.restore(c)?,
        None => (0, 0),
    };
    // Killed after the epoch end that exhausted the patience but before the adapter
    // was written: the uninterrupted run stopped there, so this one does too.
    if ckpt.is_some() && start_batch == 0 && run.plateau.exhausted(cfg.early_stopping_patience) {
        run.early_stop_step = Some(run.step);
        start_epoch = cfg.epochs;
    }
    sink.emit(&TrainEvent::Start {
        method: O::METHOD.into(),
        base_model: cfg.base_model.clone(),
        total_steps: run.total_steps,
        epochs: cfg.epochs,
        train_examples: train.len() as u64,
        valid_examples: valid.len() as u64,
        trainable_params: run.lora.num_params() as u64,
        resumed_from_step: ckpt.as_ref().map(|c| c.step),
        base_weights: cfg.base_weights,
    });
    let n_batches = batches_per_epoch(train.len(), cfg.batch_size);
    let mut saved_step = ckpt.as_ref().map(|c| (c.step, c.path.clone()));
    'epochs: for epoch in start_epoch..cfg.epochs {
        let first = if epoch == start_epoch { start_batch } else { 0 };
        for bi in first..n_batches {
            let idx = batch_indices(train.len(), cfg.batch_size, cfg.seed, epoch as usize, bi);
            let examples: Vec<&O::Example> = idx.iter().map(|&i| &train[i]).collect();
            let Some(stats) = run.step(objective, &examples, sink, ctl)? else {
                // Cancelled inside the step: nothing of it was applied, so the
                // checkpoint's cursor is this batch.
                let saved = match saved_step {
                    Some((step, path)) if step == run.step => Some(path),
                    _ if cfg.keep_checkpoints > 0 && run.step > 0 => {
                        let path = run.checkpoint(epoch, bi)?;
                        sink.emit(&TrainEvent::Checkpoint {
                            step: run.step,
                            path: path.clone(),
                        });
                        Some(path)
                    }
                    _ => None,
                };
                return Err(cancelled(run.step, saved, sink));
            };
            let end_of_epoch = bi + 1 == n_batches;
            let mut row = MetricsRow {
                step: run.step,
                train_loss: stats.mean_loss(),
                train_accuracy: stats.accuracy(),
                valid_loss: None,
                valid_mean_token_accuracy: None,
                rewards: objective.reports_rewards().then(|| stats.rewards()),
                valid_rewards: None,
            };
            if end_of_epoch && !valid.is_empty() {
                run.validate(objective, valid, &mut row, sink)?;
            }
            run.metrics.write(&row)?;
            let cursor = if end_of_epoch {
                (epoch + 1, 0)
            } else {
                (epoch, bi + 1)
            };
            let every = cfg.checkpoint_every > 0 && run.step % cfg.checkpoint_every == 0;
            let cancel = ctl.cancelled();
            let mut saved = None;
            if cfg.keep_checkpoints > 0 && (end_of_epoch || every || cancel) {
                let path = run.checkpoint(cursor.0, cursor.1)?;
                sink.emit(&TrainEvent::Checkpoint {
                    step: run.step,
                    path: path.clone(),
                });
                saved_step = Some((run.step, path.clone()));
                saved = Some(path);
            }
            if cancel {
                return Err(cancelled(run.step, saved, sink));
            }
            if end_of_epoch && run.plateau.exhausted(cfg.early_stopping_patience) {
                run.early_stop_step = Some(run.step);
                break 'epochs;
            }
        }
    }
    run.finish(
        O::METHOD,
        objective.beta(),
        out_dir,
        train.len(),
        valid.len(),
        sink,
    )
}

/// [`Objective::prepare`] with its progress as [`TrainEvent::Reference`] events (at 0, at
/// every further percent and at the end) and the run's cancel checked before each unit.
fn prepare<O: Objective>(
    objective: &O,
    model: &Llama,
    (train, valid): (&[O::Example], &[O::Example]),
    sink: &mut dyn EventSink,
    ctl: &RunControl,
) -> Result<ControlFlow<()>> {
    let mut shown = None;
    objective.prepare(model, train, valid, &mut |scored, pairs| {
        if scored < pairs && ctl.cancelled() {
            return ControlFlow::Break(());
        }
        let percent = scored * 100 / pairs.max(1);
        if shown != Some(percent) {
            shown = Some(percent);
            sink.emit(&TrainEvent::Reference { scored, pairs });
        }
        ControlFlow::Continue(())
    })
}

/// Reports a cancel after `step` completed steps, with the checkpoint to resume from.
fn cancelled(step: u64, checkpoint: Option<PathBuf>, sink: &mut dyn EventSink) -> TrainError {
    sink.emit(&TrainEvent::Error {
        message: format!("cancelled after step {step}"),
    });
    TrainError::Cancelled { step, checkpoint }
}

/// The mutable state of a run.
struct Run<'a> {
    model: &'a mut Llama,
    lora: LoraParams,
    params: Vec<(String, Var)>,
    opt: AdamW,
    schedule: LrSchedule,
    cfg: &'a TrainConfig,
    identity: RunIdentity,
    total_steps: u64,
    step: u64,
    losses: Vec<f64>,
    last_rewards: Option<RewardStats>,
    last_valid: Option<(f64, f64)>,
    trained_tokens: u64,
    processed_tokens: u64,
    /// Tokens already counted when this session started (resume), for the rate.
    processed_before: u64,
    started: Instant,
    metrics: MetricsWriter,
    ckpt_root: PathBuf,
    best: BestDir,
    /// Early stopping's patience counter (kept across a resume).
    plateau: Plateau,
    /// The step the run stopped early after.
    early_stop_step: Option<u64>,
}

impl<'a> Run<'a> {
    fn new(
        model: &'a mut Llama,
        lora: LoraParams,
        cfg: &'a TrainConfig,
        n_train: usize,
        out_dir: &Path,
        resuming: bool,
        identity: RunIdentity,
    ) -> Result<Self> {
        let params = lora.trainable();
        let opt = AdamW::new(params.clone(), cfg.adamw)?;
        let schedule = LrSchedule::new(cfg.schedule, cfg.learning_rate, cfg.warmup_ratio)?;
        let total_steps = cfg.epochs as u64 * batches_per_epoch(n_train, cfg.batch_size) as u64;
        Ok(Self {
            model,
            lora,
            params,
            opt,
            schedule,
            cfg,
            identity,
            total_steps,
            step: 0,
            losses: Vec::new(),
            last_rewards: None,
            last_valid: None,
            trained_tokens: 0,
            processed_tokens: 0,
            processed_before: 0,
            started: Instant::now(),
            metrics: MetricsWriter::create(out_dir, resuming)?,
            ckpt_root: out_dir.join(CHECKPOINTS_DIR),
            best: BestDir::default(),
            plateau: Plateau::default(),
            early_stop_step: None,
        })
    }

    /// One optimizer step over a batch. `grad_accum` splits it into micro-batches; each
    /// micro-batch's mean loss is weighted by its share of the batch's units, so the
    /// accumulated gradient is the gradient of the whole batch's mean. `None` when `ctl`
    /// was cancelled between two micro-batches: the step is dropped, nothing applied.
    fn step<O: Objective>(
        &mut self,
        obj: &O,
        examples: &[&O::Example],
        sink: &mut dyn EventSink,
        ctl: &RunControl,
    ) -> Result<Option<Stats>> {
        let t0 = Instant::now();
        let total: u64 = examples.iter().map(|e| obj.units(e)).sum();
        let micro = examples.len().div_ceil(self.cfg.grad_accum).max(1);
        let mut grads: Vec<Option<Tensor>> = vec![None; self.params.len()];
        let (mut stats, mut tokens) = (Stats::default(), 0u64);
        for (mi, chunk) in examples.chunks(micro).enumerate() {
            if mi > 0 && ctl.cancelled() {
                return Ok(None);
            }
            tokens += chunk.iter().map(|e| obj.tokens(e)).sum::<u64>();
            let opts = TrainOptions {
                use_adapters: true,
                lora_dropout: self.cfg.lora_dropout,
                dropout_seed: mix(self.cfg.seed, self.step, mi as u64),
                gradient_checkpointing: self.cfg.gradient_checkpointing,
            };
            let (loss, s) = obj.forward(self.model, chunk, opts)?;
            let weight = s.units as f64 / total.max(1) as f64;
            stats = stats.merge(s);
            let g = (loss * weight)?.backward()?;
            for ((name, var), slot) in self.params.iter().zip(grads.iter_mut()) {
                let gi = g
                    .get(var.as_tensor())
                    .ok_or_else(|| TrainError::MissingGradient(name.clone()))?;
                *slot = Some(match slot.take() {
                    Some(prev) => (prev + gi)?,
                    None => gi.clone(),
                });
            }
        }
        let grads: Vec<Tensor> = grads.into_iter().flatten().collect();
        let lr = self.schedule.lr_at(self.step, self.total_steps);
        let opt_stats = self.opt.step_with_grads(&grads, lr)?;
        self.step += 1;
        let rewards = obj.reports_rewards().then(|| stats.rewards());
        self.losses.push(stats.mean_loss());
        self.last_rewards = rewards;
        self.trained_tokens += stats.trained_tokens;
        self.processed_tokens += tokens;
        sink.emit(&TrainEvent::Step {
            step: self.step,
            total_steps: self.total_steps,
            train_loss: stats.mean_loss(),
            train_accuracy: stats.accuracy(),
            lr,
            tokens_per_s: tokens as f64 / t0.elapsed().as_secs_f64().max(1e-9),
            grad_norm: Some(opt_stats.grad_norm),
            rewards,
        });
        Ok(Some(stats))
    }

    /// Scores the validation set, fills the row, and refreshes `best/` on a new low.
    fn validate<O: Objective>(
        &mut self,
        obj: &O,
        valid: &[O::Example],
        row: &mut MetricsRow,
        sink: &mut dyn EventSink,
    ) -> Result<()> {
        let s = obj.evaluate(self.model, valid, self.cfg.batch_size)?;
        let (vl, va) = (s.mean_loss(), s.accuracy());
        row.valid_loss = Some(vl);
        row.valid_mean_token_accuracy = Some(va);
        row.valid_rewards = obj.reports_rewards().then(|| s.rewards());
        self.last_valid = Some((vl, va));
        self.plateau.observe(self.step, vl);
        sink.emit(&TrainEvent::Validation {
            step: self.step,
            valid_loss: vl,
            valid_mean_token_accuracy: va,
            rewards: row.valid_rewards,
        });
        let info = BestInfo {
            step: self.step,
            valid_loss: vl,
        };
        if let Some(path) = self.best.offer(&info, &self.lora, &self.cfg.base_model)? {
            sink.emit(&TrainEvent::Best {
                step: self.step,
                valid_loss: vl,
                path,
            });
        }
        Ok(())
    }

    /// Loads adapter, optimizer state and cursor from a checkpoint; returns the
    /// `(epoch, batch)` to continue at. Metrics rows after the checkpoint (from the
    /// interrupted run) are dropped, earlier ones kept.
    fn restore(&mut self, c: &checkpoint::Checkpoint) -> Result<(u32, usize)> {
        let st = read_state(c)?;
        if st.total_steps != self.total_steps {
            return Err(TrainError::Checkpoint {
                path: c.path.clone(),
                message: format!(
                    "planned {} steps, this run plans {}; use the same data and settings",
                    st.total_steps, self.total_steps
                ),
            });
        }
        load_adapter_into(&self.params, &c.path)?;
        let opt = std::fs::read(c.file(OPTIMIZER_FILE)).map_err(io_err("read", c.path.clone()))?;
        self.opt.load_state_bytes(&opt)?;
        self.step = st.step;
        self.trained_tokens = st.trained_tokens;
        self.processed_tokens = st.processed_tokens;
        self.processed_before = st.processed_tokens;
        let rows = self.metrics.keep_until(st.step)?;
        self.losses = rows.iter().map(|r| r.train_loss).collect();
        self.last_rewards = rows.last().and_then(|r| r.rewards);
        self.last_valid = rows
            .iter()
            .rev()
            .find_map(|r| r.valid_loss.zip(r.valid_mean_token_accuracy));
        self.plateau = Plateau::replay(rows.iter().filter_map(|r| Some((r.step, r.valid_loss?))));
        Ok((st.next_epoch, st.next_batch))
    }

    /// Writes `checkpoints/step-N/` (adapter, optimizer, cursor) and prunes old ones.
    fn checkpoint(&mut self, next_epoch: u32, next_batch: usize) -> Result<PathBuf> {
        let mut p = PendingCheckpoint::begin(&self.ckpt_root, self.step)?;
        write_adapter(&mut p, &self.lora, &self.cfg.base_model)?;
        p.write(OPTIMIZER_FILE, &self.opt.state_bytes()?)?;
        let id = &self.identity;
        let state = TrainerState {
            step: self.step,
            total_steps: self.total_steps,
            next_epoch,
            next_batch,
            seed: self.cfg.seed,
            schedule: self.schedule,
            trained_tokens: self.trained_tokens,
            processed_tokens: self.processed_tokens,
            method: id.method.clone(),
            beta: id.beta,
            model_fingerprint: id.model_fingerprint.clone(),
            data_fingerprint: id.data_fingerprint.clone(),
            config: self.cfg.clone(),
        };
        p.write(TRAINER_STATE_FILE, &serde_json::to_vec_pretty(&state)?)?;
        let done = p.commit()?;
        checkpoint::prune(&self.ckpt_root, self.cfg.keep_checkpoints)?;
        Ok(done.path)
    }

    /// With early stopping on, the result is `best/`'s adapter: it is loaded back into
    /// the LoRA parameters before they are saved as the run's adapter. Returns what was
    /// returned (`None`: the last step's adapter).
    fn take_best(&mut self) -> Result<Option<BestInfo>> {
        if self.cfg.early_stopping_patience.is_none() {
            return Ok(None);
        }
        let Some(best) = self.best.current.clone() else {
            return Ok(None);
        };
        if best.step != self.step {
            load_adapter_into(&self.params, &self.best.path())?;
        }
        Ok(Some(best))
    }

    fn finish(
        mut self,
        method: &str,
        beta: Option<f64>,
        out_dir: &Path,
        n_train: usize,
        n_valid: usize,
        sink: &mut dyn EventSink,
    ) -> Result<TrainSummary> {
        let returned_best = self.take_best()?;
        self.lora.save_peft(out_dir, &self.cfg.base_model)?;
        let elapsed_s = self.started.elapsed().as_secs_f64();
        let summary = TrainSummary {
            method: method.into(),
            steps: self.step,
            epochs: self.cfg.epochs,
            final_train_loss: self.losses.last().copied().unwrap_or(0.0),
            final_valid_loss: self.last_valid.map(|v| v.0),
            final_valid_mean_token_accuracy: self.last_valid.map(|v| v.1),
            final_rewards: self.last_rewards,
            losses: self.losses.clone(),
            trained_tokens: self.trained_tokens,
            processed_tokens: self.processed_tokens,
            elapsed_s,
            tokens_per_s: (self.processed_tokens - self.processed_before) as f64
                / elapsed_s.max(1e-9),
            trainable_params: self.lora.num_params() as u64,
            train_examples: n_train,
            valid_examples: n_valid,
            adapter_path: out_dir.to_path_buf(),
            best: self.best.current.clone(),
            early_stop_step: self.early_stop_step,
            returned_best: returned_best.is_some(),
            beta,
            config: self.cfg.clone(),
        };
        summary.write(out_dir)?;
        sink.emit(&TrainEvent::Done {
            steps: self.step,
            train_loss: summary.final_train_loss,
            valid_loss: summary.final_valid_loss,
            elapsed_s,
            adapter_path: Some(out_dir.to_path_buf()),
            early_stop_step: self.early_stop_step,
            returned_best,
        });
        Ok(summary)
    }
}

/// A per-(step, micro-batch) seed for dropout masks.
fn mix(seed: u64, step: u64, micro: u64) -> u64 {
    seed ^ (step.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(micro.wrapping_mul(0xBF58_476D_1CE4_E5B9))
}
