//! The LoRA SFT loop: tokenised chats in, a PEFT adapter, metrics and checkpoints out.
//!
//! One optimizer step per batch of `batch_size` examples (OpenAI's meaning of batch
//! size, and what [`hone_data::hparams`] resolves). `grad_accum` splits each batch into
//! that many micro-batches to bound activation memory without changing the math: each
//! micro-batch's loss is weighted by its share of the batch's trained tokens, so the
//! accumulated gradient is the gradient of the whole batch's mean token loss.
//!
//! Everything random (LoRA init, data order, dropout masks) derives from `seed`, so one
//! seed gives one loss sequence.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use hone_data::SftExample;
use hone_model::lora::{LoraConfig, LoraParams, PeftConfig, ADAPTER_CONFIG_FILE};
use hone_model::ops::TokenAccuracy;
use hone_model::{Llama, TrainOptions};
use hone_text::ChatTokenizer;
use serde::{Deserialize, Serialize};

use crate::batch::{batch_indices, batches_per_epoch, Batch, TokenizedExample};
use crate::checkpoint::{self, PendingCheckpoint};
use crate::error::{io_err, Result, TrainError};
use crate::events::{EventSink, TrainEvent};
use crate::optim::{AdamW, AdamWConfig};
use crate::schedule::{LrSchedule, ScheduleKind};

/// Files written into the output directory.
pub const METRICS_CSV: &str = "metrics.csv";
pub const METRICS_JSONL: &str = "metrics.jsonl";
pub const SUMMARY_JSON: &str = "summary.json";
pub const CHECKPOINTS_DIR: &str = "checkpoints";
/// Checkpoint files besides the adapter.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const TRAINER_STATE_FILE: &str = "trainer_state.json";

/// Everything that defines an SFT run (after "auto" was resolved).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SftConfig {
    pub epochs: u32,
    /// Examples per optimizer step.
    pub batch_size: usize,
    /// Micro-batches per step (1 = the whole batch at once).
    pub grad_accum: usize,
    pub learning_rate: f64,
    pub schedule: ScheduleKind,
    pub warmup_ratio: f64,
    /// Examples are cut to this many tokens.
    pub max_seq_len: usize,
    pub seed: u64,
    pub lora_r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    pub target_modules: Vec<String>,
    pub adamw: AdamWConfig,
    /// Checkpoints kept (the newest K); 0 writes none.
    pub keep_checkpoints: usize,
    /// Also checkpoint every N steps inside an epoch (0: at epoch ends only).
    #[serde(default)]
    pub checkpoint_every: u64,
    /// The base model's id, recorded in the adapter config.
    pub base_model: String,
    /// Padding id for batches (never a target: padded positions are masked out).
    pub pad_id: u32,
}

impl SftConfig {
    fn lora(&self) -> LoraConfig {
        LoraConfig {
            r: self.lora_r,
            alpha: self.lora_alpha,
            dropout: self.lora_dropout,
            target_modules: self.target_modules.clone(),
        }
    }

    fn check(&self, n_train: usize) -> Result<()> {
        let bad = |m: String| Err(TrainError::Config(m));
        if n_train == 0 {
            return bad("no training examples".into());
        }
        if self.epochs == 0 || self.batch_size == 0 || self.grad_accum == 0 {
            return bad("epochs, batch size and grad accumulation must be at least 1".into());
        }
        if self.max_seq_len < 2 {
            return bad(format!(
                "max_seq_len must be at least 2, got {}",
                self.max_seq_len
            ));
        }
        Ok(())
    }
}

/// Tokenised examples and what tokenisation did to them.
#[derive(Debug, Clone, Default)]
pub struct Tokenized {
    pub examples: Vec<TokenizedExample>,
    /// Examples cut at `max_seq_len`.
    pub truncated: usize,
    /// Examples with no trained target left (after truncation).
    pub without_targets: usize,
}

/// Encodes every chat with the model's template (the same `encode_chat` the data checks
/// and the server use), cutting each to `max_seq_len` tokens.
pub fn tokenize_sft(
    tok: &ChatTokenizer,
    examples: &[SftExample],
    max_seq_len: usize,
) -> Result<Tokenized> {
    let mut out = Tokenized::default();
    for (index, ex) in examples.iter().enumerate() {
        let enc = tok
            .encode_chat(&ex.messages, ex.tools.as_ref())
            .map_err(|e| TrainError::Tokenize {
                index,
                message: format!("{e:#}"),
            })?;
        let mut t = TokenizedExample {
            ids: enc.ids,
            loss_mask: enc.loss_mask,
        };
        if t.truncate(max_seq_len) > 0 {
            out.truncated += 1;
        }
        if t.trained_targets() == 0 {
            out.without_targets += 1;
        }
        out.examples.push(t);
    }
    Ok(out)
}

/// One row of `metrics.csv` / `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsRow {
    pub step: u64,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub valid_loss: Option<f64>,
    pub valid_mean_token_accuracy: Option<f64>,
}

/// What a finished run reports (`summary.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SftSummary {
    pub steps: u64,
    pub epochs: u32,
    pub final_train_loss: f64,
    pub final_valid_loss: Option<f64>,
    pub final_valid_mean_token_accuracy: Option<f64>,
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
    pub config: SftConfig,
}

/// Where the data cursor stood when a checkpoint was taken.
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
    pub config: SftConfig,
}

/// Runs SFT on `model` (loaded with f32 weights), writing the adapter, metrics, summary
/// and checkpoints into `out_dir`. Attaches fresh LoRA adapters (replacing any).
pub fn train_sft(
    model: &mut Llama,
    train: &[TokenizedExample],
    valid: &[TokenizedExample],
    cfg: &SftConfig,
    out_dir: &Path,
    sink: &mut dyn EventSink,
) -> Result<SftSummary> {
    run_sft(
        model,
        train,
        valid,
        cfg,
        out_dir,
        sink,
        &RunControl::default(),
    )
}

/// Like [`train_sft`], but continues from the newest valid checkpoint in
/// `out_dir/checkpoints` if there is one. The data order and dropout masks are pure
/// functions of `(seed, epoch, step)` and the optimizer state is restored exactly, so the
/// resumed run produces the same steps as an uninterrupted one.
pub fn resume_sft(
    model: &mut Llama,
    train: &[TokenizedExample],
    valid: &[TokenizedExample],
    cfg: &SftConfig,
    out_dir: &Path,
    sink: &mut dyn EventSink,
) -> Result<SftSummary> {
    let ctl = RunControl {
        resume: true,
        ..RunControl::default()
    };
    run_sft(model, train, valid, cfg, out_dir, sink, &ctl)
}

/// How a run is started and stopped from outside.
#[derive(Debug, Clone, Default)]
pub struct RunControl {
    /// Continue from the newest valid checkpoint, if any (see [`resume_sft`]).
    pub resume: bool,
    /// Set it (e.g. on Ctrl-C, or a job cancel) to stop after the current step: the run
    /// writes a checkpoint at its cursor and returns [`TrainError::Cancelled`].
    pub cancel: Option<Arc<AtomicBool>>,
}

impl RunControl {
    fn cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
    }
}

/// The SFT loop behind [`train_sft`] and [`resume_sft`], with cooperative cancel.
pub fn run_sft(
    model: &mut Llama,
    train: &[TokenizedExample],
    valid: &[TokenizedExample],
    cfg: &SftConfig,
    out_dir: &Path,
    sink: &mut dyn EventSink,
    ctl: &RunControl,
) -> Result<SftSummary> {
    let resume = ctl.resume;
    cfg.check(train.len())?;
    std::fs::create_dir_all(out_dir).map_err(io_err("create", out_dir))?;
    let lora = LoraParams::attach(model, &cfg.lora(), cfg.seed)?;
    let ckpt = if resume {
        checkpoint::latest_valid(&out_dir.join(CHECKPOINTS_DIR))?
    } else {
        None
    };
    let mut run = Run::new(model, lora, cfg, train.len(), out_dir, ckpt.is_some())?;
    let (start_epoch, start_batch) = match &ckpt {
        Some(c) => run.restore(c)?,
        None => (0, 0),
    };
    sink.emit(&TrainEvent::Start {
        method: "sft".into(),
        base_model: cfg.base_model.clone(),
        total_steps: run.total_steps,
        epochs: cfg.epochs,
        train_examples: train.len() as u64,
        valid_examples: valid.len() as u64,
        trainable_params: run.lora.num_params() as u64,
        resumed_from_step: ckpt.as_ref().map(|c| c.step),
    });
    let mut last_valid = None;
    for epoch in start_epoch..cfg.epochs {
        let n_batches = batches_per_epoch(train.len(), cfg.batch_size);
        let first = if epoch == start_epoch { start_batch } else { 0 };
        for bi in first..n_batches {
            let idx = batch_indices(train.len(), cfg.batch_size, cfg.seed, epoch as usize, bi);
            let examples: Vec<&TokenizedExample> = idx.iter().map(|&i| &train[i]).collect();
            let (loss, acc) = run.step(&examples, sink)?;
            let end_of_epoch = bi + 1 == n_batches;
            let mut row = MetricsRow {
                step: run.step,
                train_loss: loss,
                train_accuracy: acc,
                valid_loss: None,
                valid_mean_token_accuracy: None,
            };
            if end_of_epoch && !valid.is_empty() {
                let (vl, va) = evaluate(run.model, valid, cfg.batch_size, cfg.pad_id)?;
                row.valid_loss = Some(vl);
                row.valid_mean_token_accuracy = Some(va);
                last_valid = Some((vl, va));
                sink.emit(&TrainEvent::Validation {
                    step: run.step,
                    valid_loss: vl,
                    valid_mean_token_accuracy: va,
                });
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
    run.finish(out_dir, train.len(), valid.len(), last_valid, sink)
}

/// Mean token loss and token accuracy over `examples`, without gradients.
pub fn evaluate(
    model: &Llama,
    examples: &[TokenizedExample],
    batch_size: usize,
    pad_id: u32,
) -> Result<(f64, f64)> {
    let mut loss_sum = 0.0;
    let mut acc = TokenAccuracy::default();
    for chunk in examples.chunks(batch_size.max(1)) {
        let refs: Vec<&TokenizedExample> = chunk.iter().collect();
        let batch = Batch::from_examples(&refs, pad_id);
        if batch.n_trained == 0 {
            continue;
        }
        let (input, targets, mask) = batch_tensors(&batch)?;
        let out = model.train_loss(&input, &targets, &mask, TrainOptions::default())?;
        loss_sum += out.loss.to_scalar::<f32>()? as f64 * batch.n_trained as f64;
        acc = acc.merge(out.accuracy);
    }
    let mean = if acc.total == 0 {
        0.0
    } else {
        loss_sum / acc.total as f64
    };
    Ok((mean, acc.ratio()))
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

/// The mutable state of a run.
struct Run<'a> {
    model: &'a mut Llama,
    lora: LoraParams,
    params: Vec<(String, Var)>,
    opt: AdamW,
    schedule: LrSchedule,
    cfg: &'a SftConfig,
    total_steps: u64,
    step: u64,
    losses: Vec<f64>,
    trained_tokens: u64,
    processed_tokens: u64,
    /// Tokens already counted when this session started (resume), for the rate.
    processed_before: u64,
    started: Instant,
    metrics: MetricsWriter,
    ckpt_root: PathBuf,
}

impl<'a> Run<'a> {
    fn new(
        model: &'a mut Llama,
        lora: LoraParams,
        cfg: &'a SftConfig,
        n_train: usize,
        out_dir: &Path,
        resuming: bool,
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
            total_steps,
            step: 0,
            losses: Vec::new(),
            trained_tokens: 0,
            processed_tokens: 0,
            processed_before: 0,
            started: Instant::now(),
            metrics: MetricsWriter::create(out_dir, resuming)?,
            ckpt_root: out_dir.join(CHECKPOINTS_DIR),
        })
    }

    /// One optimizer step over a batch; returns its mean token loss and accuracy.
    fn step(
        &mut self,
        examples: &[&TokenizedExample],
        sink: &mut dyn EventSink,
    ) -> Result<(f64, f64)> {
        let t0 = Instant::now();
        let total: usize = examples.iter().map(|e| e.trained_targets()).sum();
        let micro = examples.len().div_ceil(self.cfg.grad_accum).max(1);
        let mut grads: Vec<Option<Tensor>> = vec![None; self.params.len()];
        let (mut loss_sum, mut acc, mut tokens) = (0.0, TokenAccuracy::default(), 0u64);
        for (mi, chunk) in examples.chunks(micro).enumerate() {
            let batch = Batch::from_examples(chunk, self.cfg.pad_id);
            tokens += chunk
                .iter()
                .map(|e| e.ids.len().saturating_sub(1) as u64)
                .sum::<u64>();
            let (input, targets, mask) = batch_tensors(&batch)?;
            let opts = TrainOptions {
                use_adapters: true,
                lora_dropout: self.cfg.lora_dropout,
                dropout_seed: mix(self.cfg.seed, self.step, mi as u64),
            };
            let out = self.model.train_loss(&input, &targets, &mask, opts)?;
            let weight = batch.n_trained as f64 / total.max(1) as f64;
            loss_sum += out.loss.to_scalar::<f32>()? as f64 * batch.n_trained as f64;
            acc = acc.merge(out.accuracy);
            let g = (out.loss * weight)?.backward()?;
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
        let stats = self.opt.step_with_grads(&grads, lr)?;
        self.step += 1;
        let loss = if total == 0 {
            0.0
        } else {
            loss_sum / total as f64
        };
        self.losses.push(loss);
        self.trained_tokens += total as u64;
        self.processed_tokens += tokens;
        sink.emit(&TrainEvent::Step {
            step: self.step,
            total_steps: self.total_steps,
            train_loss: loss,
            train_accuracy: acc.ratio(),
            lr,
            tokens_per_s: tokens as f64 / t0.elapsed().as_secs_f64().max(1e-9),
            grad_norm: Some(stats.grad_norm),
        });
        Ok((loss, acc.ratio()))
    }

    /// Loads adapter, optimizer state and cursor from a checkpoint; returns the
    /// `(epoch, batch)` to continue at. Metrics rows after the checkpoint (from the
    /// interrupted run) are dropped, earlier ones kept.
    fn restore(&mut self, c: &checkpoint::Checkpoint) -> Result<(u32, usize)> {
        let bad = |m: String| TrainError::Checkpoint {
            path: c.path.clone(),
            message: m,
        };
        let text = std::fs::read_to_string(c.file(TRAINER_STATE_FILE))
            .map_err(io_err("read", c.file(TRAINER_STATE_FILE)))?;
        let st: TrainerState = serde_json::from_str(&text)?;
        let same = st.total_steps == self.total_steps
            && st.seed == self.cfg.seed
            && st.config.batch_size == self.cfg.batch_size
            && st.config.lora_r == self.cfg.lora_r
            && st.config.target_modules == self.cfg.target_modules;
        if !same {
            return Err(bad(
                "was written by a run with other settings (steps, seed, batch size or LoRA); \
                 use a new --out or the same settings"
                    .into(),
            ));
        }
        let tensors = candle_core::safetensors::load(
            c.file(hone_model::lora::ADAPTER_WEIGHTS_FILE),
            &Device::Cpu,
        )?;
        for (name, var) in &self.params {
            let t = tensors
                .get(&format!("base_model.model.{name}"))
                .ok_or_else(|| bad(format!("no tensor for `{name}`")))?;
            var.set(t)?;
        }
        let opt = std::fs::read(c.file(OPTIMIZER_FILE)).map_err(io_err("read", c.path.clone()))?;
        self.opt.load_state_bytes(&opt)?;
        self.step = st.step;
        self.trained_tokens = st.trained_tokens;
        self.processed_tokens = st.processed_tokens;
        self.processed_before = st.processed_tokens;
        self.losses = self.metrics.keep_until(st.step)?;
        Ok((st.next_epoch, st.next_batch))
    }

    /// Writes `checkpoints/step-N/` (adapter, optimizer, cursor) and prunes old ones.
    fn checkpoint(&mut self, next_epoch: u32, next_batch: usize) -> Result<PathBuf> {
        let mut p = PendingCheckpoint::begin(&self.ckpt_root, self.step)?;
        let peft = PeftConfig::from_lora(&self.lora.config, &self.cfg.base_model);
        p.write(ADAPTER_CONFIG_FILE, &serde_json::to_vec_pretty(&peft)?)?;
        let tensors = self.lora.peft_tensors();
        p.write_with(hone_model::lora::ADAPTER_WEIGHTS_FILE, |path| {
            Ok(candle_core::safetensors::save(&tensors, path)?)
        })?;
        p.write(OPTIMIZER_FILE, &self.opt.state_bytes()?)?;
        let state = TrainerState {
            step: self.step,
            total_steps: self.total_steps,
            next_epoch,
            next_batch,
            seed: self.cfg.seed,
            schedule: self.schedule,
            trained_tokens: self.trained_tokens,
            processed_tokens: self.processed_tokens,
            config: self.cfg.clone(),
        };
        p.write(TRAINER_STATE_FILE, &serde_json::to_vec_pretty(&state)?)?;
        let done = p.commit()?;
        checkpoint::prune(&self.ckpt_root, self.cfg.keep_checkpoints)?;
        Ok(done.path)
    }

    fn finish(
        self,
        out_dir: &Path,
        n_train: usize,
        n_valid: usize,
        last_valid: Option<(f64, f64)>,
        sink: &mut dyn EventSink,
    ) -> Result<SftSummary> {
        self.lora.save_peft(out_dir, &self.cfg.base_model)?;
        let elapsed_s = self.started.elapsed().as_secs_f64();
        let summary = SftSummary {
            steps: self.step,
            epochs: self.cfg.epochs,
            final_train_loss: self.losses.last().copied().unwrap_or(0.0),
            final_valid_loss: last_valid.map(|v| v.0),
            final_valid_mean_token_accuracy: last_valid.map(|v| v.1),
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
    /// their train losses.
    fn keep_until(&mut self, step: u64) -> Result<Vec<f64>> {
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
        Ok(rows.iter().map(|r| r.train_loss).collect())
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
