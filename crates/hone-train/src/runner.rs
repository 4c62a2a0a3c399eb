//! The machinery every training method shares: the epoch/batch loop with gradient
//! accumulation and our AdamW, checkpoints (every epoch end, every N steps, on cancel),
//! exact resume, cooperative cancel, metrics files, `best/`, and the summary.
//!
//! A method (SFT, DPO) is an [`Objective`]: how a micro-batch of its examples becomes a
//! differentiable loss, and how a validation set is scored. Everything else lives here
//! once, so SFT and DPO checkpoint, resume and cancel the same way.
//!
//! Everything random (LoRA init, data order, dropout masks) derives from `seed`, and the
//! data order is a pure function of `(seed, epoch)`, so a checkpoint's cursor is just
//! `(epoch, batch)` and a resumed run replays the uninterrupted one step for step.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use hone_model::linear::BaseWeight;
use hone_model::lora::{LoraParams, PeftConfig, ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE};
use hone_model::{Llama, TrainOptions};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::batch::{batch_indices, batches_per_epoch, Batch};
use crate::checkpoint::{self, PendingCheckpoint};
use crate::config::{RunIdentity, TrainConfig};
use crate::error::{io_err, Result, TrainError};
use crate::events::{EventSink, RewardStats, TrainEvent};
use crate::optim::AdamW;
use crate::schedule::LrSchedule;

/// Files written into the output directory.
pub const METRICS_CSV: &str = "metrics.csv";
pub const METRICS_JSONL: &str = "metrics.jsonl";
pub const SUMMARY_JSON: &str = "summary.json";
pub const CHECKPOINTS_DIR: &str = "checkpoints";
/// The adapter with the lowest validation loss so far (with a validation set).
pub const BEST_DIR: &str = "best";
/// In `best/`: which step it is from and its validation loss.
pub const BEST_INFO_FILE: &str = "best.json";
/// Checkpoint files besides the adapter.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const TRAINER_STATE_FILE: &str = "trainer_state.json";

/// How a run is started and stopped from outside.
#[derive(Debug, Clone, Default)]
pub struct RunControl {
    /// Continue from the newest valid checkpoint in `out_dir/checkpoints`, if any.
    pub resume: bool,
    /// Set it (e.g. on Ctrl-C, or a job cancel) to stop after the current step: the run
    /// writes a checkpoint at its cursor and returns [`TrainError::Cancelled`].
    pub cancel: Option<Arc<AtomicBool>>,
}

impl RunControl {
    pub(crate) fn cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
    }
}

/// Sums over the examples of a (micro-)batch or a validation set. Means are taken at
/// the end, so merging micro-batches gives the whole batch's figures.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Stats {
    /// Σ loss over units.
    pub loss_sum: f64,
    /// What the loss is a mean over: trained tokens (SFT) or pairs (DPO).
    pub units: u64,
    /// Token accuracy (SFT) or reward accuracy (DPO) counts.
    pub correct: u64,
    pub counted: u64,
    /// Tokens that were loss targets.
    pub trained_tokens: u64,
    /// DPO: Σ chosen and rejected rewards over pairs.
    pub chosen_reward_sum: f64,
    pub rejected_reward_sum: f64,
}

impl Stats {
    pub fn merge(self, o: Stats) -> Stats {
        Stats {
            loss_sum: self.loss_sum + o.loss_sum,
            units: self.units + o.units,
            correct: self.correct + o.correct,
            counted: self.counted + o.counted,
            trained_tokens: self.trained_tokens + o.trained_tokens,
            chosen_reward_sum: self.chosen_reward_sum + o.chosen_reward_sum,
            rejected_reward_sum: self.rejected_reward_sum + o.rejected_reward_sum,
        }
    }

    pub fn mean_loss(&self) -> f64 {
        if self.units == 0 {
            0.0
        } else {
            self.loss_sum / self.units as f64
        }
    }

    pub fn accuracy(&self) -> f64 {
        if self.counted == 0 {
            0.0
        } else {
            self.correct as f64 / self.counted as f64
        }
    }

    /// Mean rewards per pair (DPO).
    pub fn rewards(&self) -> RewardStats {
        let n = self.units.max(1) as f64;
        let (c, r) = (self.chosen_reward_sum / n, self.rejected_reward_sum / n);
        RewardStats {
            chosen: c,
            rejected: r,
            accuracy: self.accuracy(),
            margin: c - r,
        }
    }
}

/// A training method: how its examples become a loss.
pub trait Objective {
    type Example;
    /// "sft" or "dpo".
    const METHOD: &'static str;
    /// The DPO beta (recorded with checkpoints); `None` for SFT.
    fn beta(&self) -> Option<f64> {
        None
    }
    /// How many units (see [`Stats::units`]) an example adds to a batch's mean.
    fn units(&self, ex: &Self::Example) -> u64;
    /// Non-padding tokens the model computes on for this example (one pass).
    fn tokens(&self, ex: &Self::Example) -> u64;
    /// Feeds the example's tokens into the data fingerprint.
    fn hash(&self, ex: &Self::Example, h: &mut Sha256);
    /// The differentiable mean loss of a micro-batch (over its units) and its stats.
    fn forward(
        &self,
        model: &Llama,
        chunk: &[&Self::Example],
        opts: TrainOptions,
    ) -> Result<(Tensor, Stats)>;
    /// Stats over `examples` without gradients.
    fn evaluate(&self, model: &Llama, examples: &[Self::Example], batch: usize) -> Result<Stats>;
    /// Whether rewards are meaningful (DPO) in events and metrics.
    fn reports_rewards(&self) -> bool {
        self.beta().is_some()
    }
}

/// One row of `metrics.csv` / `metrics.jsonl`. The CSV has OpenAI's columns; the JSON
/// lines add DPO's rewards. For DPO, `train_accuracy` and `valid_mean_token_accuracy`
/// hold the reward accuracy (the fraction of pairs ranked correctly).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsRow {
    pub step: u64,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub valid_loss: Option<f64>,
    pub valid_mean_token_accuracy: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewards: Option<RewardStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_rewards: Option<RewardStats>,
}

/// What a finished run reports (`summary.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainSummary {
    /// "sft" or "dpo".
    #[serde(default)]
    pub method: String,
    pub steps: u64,
    pub epochs: u32,
    pub final_train_loss: f64,
    pub final_valid_loss: Option<f64>,
    pub final_valid_mean_token_accuracy: Option<f64>,
    /// DPO: the last step's rewards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_rewards: Option<RewardStats>,
    /// Loss of every step, in order.
    pub losses: Vec<f64>,
    /// Tokens that were loss targets.
    pub trained_tokens: u64,
    /// Non-padding tokens the model computed on.
    pub processed_tokens: u64,
    /// Wall time of this session (since the last resume), validation and checkpoints included.
    pub elapsed_s: f64,
    pub tokens_per_s: f64,
    pub trainable_params: u64,
    pub train_examples: usize,
    pub valid_examples: usize,
    pub adapter_path: PathBuf,
    /// The step and validation loss of `best/`, if written.
    #[serde(default)]
    pub best: Option<BestInfo>,
    /// DPO's beta.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta: Option<f64>,
    pub config: TrainConfig,
}

/// Where the data cursor stood when a checkpoint was taken, and the run's identity.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainerState {
    pub step: u64,
    pub total_steps: u64,
    /// The next batch to run: `(epoch, batch index)`.
    pub next_epoch: u32,
    pub next_batch: usize,
    pub seed: u64,
    pub schedule: LrSchedule,
    #[serde(default)]
    pub trained_tokens: u64,
    #[serde(default)]
    pub processed_tokens: u64,
    #[serde(default = "sft_method")]
    pub method: String,
    #[serde(default)]
    pub beta: Option<f64>,
    #[serde(default)]
    pub model_fingerprint: String,
    #[serde(default)]
    pub data_fingerprint: String,
    pub config: TrainConfig,
}

fn sft_method() -> String {
    "sft".into()
}

/// `best/best.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BestInfo {
    pub step: u64,
    pub valid_loss: f64,
}

/// A cheap identity of the base weights: the model config, the final norm, and the first
/// layer's q_proj. Resuming onto another base would silently train something else.
pub fn model_fingerprint(model: &Llama) -> Result<String> {
    let mut h = Sha256::new();
    h.update(format!("{:?}", model.cfg).as_bytes());
    let mut feed = |t: &Tensor| -> Result<()> {
        for v in t.flatten_all()?.to_vec1::<f32>()? {
            h.update(v.to_le_bytes());
        }
        Ok(())
    };
    feed(&model.norm)?;
    if let Some(BaseWeight::Dense(w)) = model.layers.first().map(|b| b.self_attn.q_proj.base()) {
        feed(w)?;
    }
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
    let ckpt = if ctl.resume {
        checkpoint::latest_valid(&out_dir.join(CHECKPOINTS_DIR))?
    } else {
        None
    };
    if let Some(c) = &ckpt {
        check_identity(c, &identity)?;
    }
    let best = BestDir::open(out_dir, ckpt.is_some())?;
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
    let (start_epoch, start_batch) = match &ckpt {
        Some(c) => run.restore(c)?,
        None => (0, 0),
    };
    sink.emit(&TrainEvent::Start {
        method: O::METHOD.into(),
        base_model: cfg.base_model.clone(),
        total_steps: run.total_steps,
        epochs: cfg.epochs,
        train_examples: train.len() as u64,
        valid_examples: valid.len() as u64,
        trainable_params: run.lora.num_params() as u64,
        resumed_from_step: ckpt.as_ref().map(|c| c.step),
    });
    let n_batches = batches_per_epoch(train.len(), cfg.batch_size);
    for epoch in start_epoch..cfg.epochs {
        let first = if epoch == start_epoch { start_batch } else { 0 };
        for bi in first..n_batches {
            let idx = batch_indices(train.len(), cfg.batch_size, cfg.seed, epoch as usize, bi);
            let examples: Vec<&O::Example> = idx.iter().map(|&i| &train[i]).collect();
            let stats = run.step(objective, &examples, sink)?;
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
                saved = Some(path);
            }
            if cancel {
                sink.emit(&TrainEvent::Error {
                    message: format!("cancelled after step {}", run.step),
                });
                return Err(TrainError::Cancelled {
                    step: run.step,
                    checkpoint: saved,
                });
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

/// Refuses a checkpoint written with other settings, saying what differs.
fn check_identity(c: &checkpoint::Checkpoint, now: &RunIdentity) -> Result<()> {
    let st = read_state(c)?;
    let then = RunIdentity {
        method: st.method,
        beta: st.beta,
        config: st.config,
        model_fingerprint: st.model_fingerprint,
        data_fingerprint: st.data_fingerprint,
    };
    let diff = then.differences(now);
    if diff.is_empty() {
        return Ok(());
    }
    Err(TrainError::Checkpoint {
        path: c.path.clone(),
        message: format!(
            "was written by a run with other settings; resume needs the same ones \
             (or use a new --out):\n  {}",
            diff.join("\n  ")
        ),
    })
}

fn read_state(c: &checkpoint::Checkpoint) -> Result<TrainerState> {
    let p = c.file(TRAINER_STATE_FILE);
    let text = std::fs::read_to_string(&p).map_err(io_err("read", &p))?;
    Ok(serde_json::from_str(&text)?)
}

/// sha256 over every training example's tokens, in order.
fn data_fingerprint<O: Objective>(objective: &O, train: &[O::Example]) -> String {
    let mut h = Sha256::new();
    for ex in train {
        objective.hash(ex, &mut h);
    }
    hex(&h.finalize())
}

/// Sets trainable LoRA vars from a PEFT adapter directory (an `--init-adapter`, or a
/// checkpoint). Every trainable tensor must be present with the same shape, and the
/// adapter may hold no other modules.
pub fn load_adapter_into(params: &[(String, Var)], dir: &Path) -> Result<()> {
    let bad = |m: String| TrainError::Checkpoint {
        path: dir.to_path_buf(),
        message: m,
    };
    let cfg_path = dir.join(ADAPTER_CONFIG_FILE);
    let text = std::fs::read_to_string(&cfg_path).map_err(io_err("read", &cfg_path))?;
    let peft: PeftConfig = serde_json::from_str(&text)?;
    let weights = dir.join(ADAPTER_WEIGHTS_FILE);
    let mut tensors = candle_core::safetensors::load(&weights, &Device::Cpu)
        .map_err(|e| bad(format!("{}: {e}", weights.display())))?;
    for (name, var) in params {
        let t = tensors
            .remove(&format!("base_model.model.{name}"))
            .ok_or_else(|| {
                bad(format!(
                    "has no tensor for `{name}` (adapter r={}, alpha={}, targets {}); \
                     train with the adapter's --lora-r/--lora-alpha/--target-modules",
                    peft.r,
                    peft.lora_alpha,
                    peft.target_modules.join(",")
                ))
            })?;
        if t.dims() != var.dims() {
            return Err(bad(format!(
                "`{name}` has shape {:?}, the run expects {:?} (adapter r={}, run r={})",
                t.dims(),
                var.dims(),
                peft.r,
                var.dim(0).unwrap_or(0).min(var.dim(1).unwrap_or(0))
            )));
        }
        var.set(&t.to_dtype(candle_core::DType::F32)?)?;
    }
    if !tensors.is_empty() {
        let mut extra: Vec<_> = tensors.keys().cloned().collect();
        extra.sort();
        return Err(bad(format!(
            "has modules this run does not train: {extra:?} (adapter targets {}); \
             use --target-modules {}",
            peft.target_modules.join(","),
            peft.target_modules.join(",")
        )));
    }
    Ok(())
}

fn batch_tensors(b: &Batch) -> Result<(Tensor, Tensor, Tensor)> {
    let dev = Device::Cpu;
    let shape = (b.batch, b.seq_len);
    Ok((
        Tensor::from_slice(&b.input_ids, shape, &dev)?,
        Tensor::from_slice(&b.targets, shape, &dev)?,
        Tensor::from_slice(&b.mask, shape, &dev)?,
    ))
}

/// A shifted, padded batch as `(input_ids, targets, mask)` tensors.
pub fn to_tensors(b: &Batch) -> Result<(Tensor, Tensor, Tensor)> {
    batch_tensors(b)
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
        })
    }

    /// One optimizer step over a batch. `grad_accum` splits it into micro-batches; each
    /// micro-batch's mean loss is weighted by its share of the batch's units, so the
    /// accumulated gradient is the gradient of the whole batch's mean.
    fn step<O: Objective>(
        &mut self,
        obj: &O,
        examples: &[&O::Example],
        sink: &mut dyn EventSink,
    ) -> Result<Stats> {
        let t0 = Instant::now();
        let total: u64 = examples.iter().map(|e| obj.units(e)).sum();
        let micro = examples.len().div_ceil(self.cfg.grad_accum).max(1);
        let mut grads: Vec<Option<Tensor>> = vec![None; self.params.len()];
        let (mut stats, mut tokens) = (Stats::default(), 0u64);
        for (mi, chunk) in examples.chunks(micro).enumerate() {
            tokens += chunk.iter().map(|e| obj.tokens(e)).sum::<u64>();
            let opts = TrainOptions {
                use_adapters: true,
                lora_dropout: self.cfg.lora_dropout,
                dropout_seed: mix(self.cfg.seed, self.step, mi as u64),
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
        Ok(stats)
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
        sink.emit(&TrainEvent::Validation {
            step: self.step,
            valid_loss: vl,
            valid_mean_token_accuracy: va,
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

    fn finish(
        self,
        method: &str,
        beta: Option<f64>,
        out_dir: &Path,
        n_train: usize,
        n_valid: usize,
        sink: &mut dyn EventSink,
    ) -> Result<TrainSummary> {
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
            beta,
            config: self.cfg.clone(),
        };
        let path = out_dir.join(SUMMARY_JSON);
        std::fs::write(&path, serde_json::to_vec_pretty(&summary)?)
            .map_err(io_err("write", &path))?;
        sink.emit(&TrainEvent::Done {
            steps: self.step,
            train_loss: summary.final_train_loss,
            valid_loss: summary.final_valid_loss,
            elapsed_s,
            adapter_path: Some(out_dir.to_path_buf()),
        });
        Ok(summary)
    }
}

/// Writes the PEFT adapter files into a pending checkpoint-style directory.
fn write_adapter(p: &mut PendingCheckpoint, lora: &LoraParams, base_model: &str) -> Result<()> {
    let peft = PeftConfig::from_lora(&lora.config, base_model);
    p.write(ADAPTER_CONFIG_FILE, &serde_json::to_vec_pretty(&peft)?)?;
    let tensors = lora.peft_tensors();
    p.write_with(ADAPTER_WEIGHTS_FILE, |path| {
        Ok(candle_core::safetensors::save(&tensors, path)?)
    })
}

/// `best/`: a copy of the adapter with the lowest validation loss so far.
///
/// Replaced crash-safely: the new adapter is written and fsynced in `best.tmp/`, the old
/// `best/` is renamed to `best.old/`, `best.tmp/` to `best/`, then `best.old/` removed. At
/// every instant one of `best/` or `best.old/` is complete; [`BestDir::open`] repairs an
/// interrupted swap.
#[derive(Debug, Default)]
struct BestDir {
    dir: PathBuf,
    current: Option<BestInfo>,
}

impl BestDir {
    /// Repairs an interrupted swap. A fresh run (not resuming) removes an old `best/`, so
    /// it never reports another run's adapter; a resumed run keeps it and its loss.
    fn open(out_dir: &Path, resuming: bool) -> Result<Self> {
        let dir = out_dir.join(BEST_DIR);
        let (tmp, old) = (sibling(&dir, "tmp"), sibling(&dir, "old"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io_err("remove", &tmp))?;
        }
        if old.exists() {
            if dir.exists() {
                std::fs::remove_dir_all(&old).map_err(io_err("remove", &old))?;
            } else {
                std::fs::rename(&old, &dir).map_err(io_err("rename", &old))?;
            }
        }
        if !resuming && dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io_err("remove", &dir))?;
        }
        let current = std::fs::read_to_string(dir.join(BEST_INFO_FILE))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        Ok(Self { dir, current })
    }

    /// Writes `best/` if `info` beats the current best; returns its path then.
    fn offer(
        &mut self,
        info: &BestInfo,
        lora: &LoraParams,
        base_model: &str,
    ) -> Result<Option<PathBuf>> {
        if self.dir.as_os_str().is_empty() {
            return Ok(None);
        }
        let better = self
            .current
            .as_ref()
            .is_none_or(|b| info.valid_loss < b.valid_loss);
        if !better || !info.valid_loss.is_finite() {
            return Ok(None);
        }
        let (tmp, old) = (sibling(&self.dir, "tmp"), sibling(&self.dir, "old"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io_err("remove", &tmp))?;
        }
        std::fs::create_dir_all(&tmp).map_err(io_err("create", &tmp))?;
        lora.save_peft(&tmp, base_model)?;
        std::fs::write(tmp.join(BEST_INFO_FILE), serde_json::to_vec_pretty(info)?)
            .map_err(io_err("write", &tmp))?;
        for name in [ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, BEST_INFO_FILE] {
            fsync(&tmp.join(name))?;
        }
        fsync(&tmp)?;
        if self.dir.exists() {
            std::fs::rename(&self.dir, &old).map_err(io_err("rename", &self.dir))?;
        }
        std::fs::rename(&tmp, &self.dir).map_err(io_err("rename", &tmp))?;
        if let Some(parent) = self.dir.parent() {
            fsync(parent)?;
        }
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(io_err("remove", &old))?;
        }
        self.current = Some(info.clone());
        Ok(Some(self.dir.clone()))
    }
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{suffix}"));
    dir.with_file_name(name)
}

fn fsync(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io_err("fsync", path))
}

/// A per-(step, micro-batch) seed for dropout masks.
fn mix(seed: u64, step: u64, micro: u64) -> u64 {
    seed ^ (step.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(micro.wrapping_mul(0xBF58_476D_1CE4_E5B9))
}

/// Appends rows to `metrics.csv` and `metrics.jsonl`, flushing each.
struct MetricsWriter {
    csv: File,
    jsonl: File,
    csv_path: PathBuf,
    jsonl_path: PathBuf,
}

impl MetricsWriter {
    const HEADER: &'static str =
        "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy";

    fn create(dir: &Path, append: bool) -> Result<Self> {
        let csv_path = dir.join(METRICS_CSV);
        let jp = dir.join(METRICS_JSONL);
        let open = |p: &Path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(append)
                .write(true)
                .truncate(!append)
                .open(p)
                .map_err(io_err("open", p))
        };
        let mut csv = open(&csv_path)?;
        if !append {
            writeln!(csv, "{}", Self::HEADER).map_err(io_err("write", &csv_path))?;
        }
        let jsonl = open(&jp)?;
        Ok(Self {
            csv,
            jsonl,
            csv_path,
            jsonl_path: jp,
        })
    }

    /// Rewrites both files with the rows up to `step` (from `metrics.jsonl`) and returns
    /// them.
    fn keep_until(&mut self, step: u64) -> Result<Vec<MetricsRow>> {
        let text = std::fs::read_to_string(&self.jsonl_path).unwrap_or_default();
        let rows: Vec<MetricsRow> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<MetricsRow>(l).ok())
            .filter(|r| r.step <= step)
            .collect();
        for (p, f) in [(&self.csv_path, &self.csv), (&self.jsonl_path, &self.jsonl)] {
            f.set_len(0).map_err(io_err("truncate", p))?;
        }
        writeln!(self.csv, "{}", Self::HEADER).map_err(io_err("write", &self.csv_path))?;
        for r in &rows {
            self.write(r)?;
        }
        Ok(rows)
    }

    fn write(&mut self, r: &MetricsRow) -> Result<()> {
        let opt = |v: Option<f64>| v.map(|x| format!("{x:.6}")).unwrap_or_default();
        writeln!(
            self.csv,
            "{},{:.6},{:.6},{},{}",
            r.step,
            r.train_loss,
            r.train_accuracy,
            opt(r.valid_loss),
            opt(r.valid_mean_token_accuracy)
        )
        .and_then(|_| {
            serde_json::to_writer(&mut self.jsonl, r)?;
            writeln!(self.jsonl)
        })
        .map_err(io_err("write", &self.csv_path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hone_model::testing::{write_tiny_model, TinySpec};

    fn lora() -> (tempfile::TempDir, LoraParams) {
        let dir = tempfile::tempdir().unwrap();
        let (gguf, _) = write_tiny_model(dir.path(), &TinySpec::default()).unwrap();
        let mut m = hone_model::load_model(&gguf, hone_model::WeightPath::F32).unwrap();
        let cfg = hone_model::LoraConfig::default();
        let l = LoraParams::attach(&mut m, &cfg, 1).unwrap();
        (dir, l)
    }

    fn info(dir: &Path) -> BestInfo {
        serde_json::from_str(&std::fs::read_to_string(dir.join("best/best.json")).unwrap()).unwrap()
    }

    #[test]
    fn best_is_replaced_only_by_a_lower_loss() {
        let (dir, l) = lora();
        let mut b = BestDir::open(dir.path(), false).unwrap();
        let at = |step, valid_loss| BestInfo { step, valid_loss };
        assert!(b.offer(&at(1, 2.0), &l, "t").unwrap().is_some());
        assert!(b.offer(&at(2, 2.5), &l, "t").unwrap().is_none());
        assert!(b.offer(&at(3, f64::NAN), &l, "t").unwrap().is_none());
        assert_eq!(info(dir.path()), at(1, 2.0));
        assert!(b.offer(&at(4, 1.0), &l, "t").unwrap().is_some());
        assert_eq!(info(dir.path()), at(4, 1.0));
        assert!(dir.path().join("best/adapter_model.safetensors").exists());
        // A resumed run keeps it (and its loss); a fresh one starts over.
        let b = BestDir::open(dir.path(), true).unwrap();
        assert_eq!(b.current, Some(at(4, 1.0)));
        let b = BestDir::open(dir.path(), false).unwrap();
        assert_eq!(b.current, None);
        assert!(!dir.path().join("best").exists());
    }

    #[test]
    fn an_interrupted_swap_is_repaired() {
        let (dir, l) = lora();
        let mut b = BestDir::open(dir.path(), false).unwrap();
        b.offer(
            &BestInfo {
                step: 2,
                valid_loss: 1.5,
            },
            &l,
            "t",
        )
        .unwrap();
        // Crash after `best` -> `best.old`, before `best.tmp` -> `best`.
        let p = dir.path();
        std::fs::rename(p.join("best"), p.join("best.old")).unwrap();
        std::fs::create_dir(p.join("best.tmp")).unwrap();
        let b = BestDir::open(p, true).unwrap();
        assert_eq!(b.current.map(|c| c.step), Some(2));
        assert!(p.join("best/adapter_model.safetensors").exists());
        assert!(!p.join("best.old").exists() && !p.join("best.tmp").exists());
    }
}
