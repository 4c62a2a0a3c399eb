//! Supervised fine-tuning: tokenised chats in, a PEFT adapter, metrics and checkpoints
//! out. The loss is the mean cross-entropy over trained tokens (assistant turns, their
//! end-of-turn token included; see hone-text's loss mask).
//!
//! One optimizer step per batch of `batch_size` examples (OpenAI's meaning of batch
//! size, and what [`hone_data::hparams`] resolves). The loop, checkpoints, resume and
//! cancel are [`crate::runner`]'s, shared with DPO.

use std::path::Path;

use candle_core::Tensor;
use hone_data::SftExample;
use hone_model::ops::TokenAccuracy;
use hone_model::{Llama, TrainOptions};
use hone_text::{ChatTokenizer, EncodedChat};
use sha2::{Digest, Sha256};

use crate::batch::{to_tensors, Batch};
use crate::error::{Result, TrainError};
use crate::events::EventSink;
use crate::objective::{Objective, Stats};
use crate::runner::train_loop;

pub use crate::config::TrainConfig;
pub use crate::metrics::{MetricsRow, METRICS_CSV, METRICS_JSONL};
pub use crate::resume::{TrainerState, OPTIMIZER_FILE, TRAINER_STATE_FILE};
pub use crate::runner::{RunControl, CHECKPOINTS_DIR};
pub use crate::summary::{TrainSummary, SUMMARY_JSON};

/// SFT's settings are the shared [`TrainConfig`].
pub type SftConfig = TrainConfig;
/// SFT's `summary.json`.
pub type SftSummary = TrainSummary;

/// Tokenised examples and what tokenisation did to them.
#[derive(Debug, Clone, Default)]
pub struct Tokenized {
    pub examples: Vec<EncodedChat>,
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
        let mut t = tok
            .encode_chat(&ex.messages, ex.tools.as_ref())
            .map_err(|e| TrainError::Tokenize {
                index,
                message: format!("{e:#}"),
            })?;
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

/// Runs SFT on `model` (loaded with f32 weights), writing the adapter, metrics, summary
/// and checkpoints into `out_dir`. Attaches fresh LoRA adapters (replacing any), or the
/// `cfg.init_adapter` ones.
pub fn train_sft(
    model: &mut Llama,
    train: &[EncodedChat],
    valid: &[EncodedChat],
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
    train: &[EncodedChat],
    valid: &[EncodedChat],
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

/// The SFT entry point for callers that resume and cancel (the CLI, the server).
pub fn run_sft(
    model: &mut Llama,
    train: &[EncodedChat],
    valid: &[EncodedChat],
    cfg: &SftConfig,
    out_dir: &Path,
    sink: &mut dyn EventSink,
    ctl: &RunControl,
) -> Result<SftSummary> {
    let obj = Sft {
        pad_id: cfg.pad_id,
        pack_into: cfg.packing.then_some(cfg.max_seq_len),
    };
    train_loop(model, &obj, train, valid, cfg, out_dir, sink, ctl)
}

/// Mean token loss and token accuracy over `examples`, without gradients.
pub fn evaluate(
    model: &Llama,
    examples: &[EncodedChat],
    batch_size: usize,
    pad_id: u32,
) -> Result<(f64, f64)> {
    let s = Sft {
        pad_id,
        pack_into: None,
    }
    .evaluate(model, examples, batch_size)?;
    Ok((s.mean_loss(), s.accuracy()))
}

/// The SFT objective: masked mean cross-entropy over trained tokens.
struct Sft {
    pad_id: u32,
    /// Training batches are packed into rows of this many tokens (`--packing`).
    /// Validation stays unpacked: the loss is the same either way.
    pack_into: Option<usize>,
}

impl Objective for Sft {
    type Example = EncodedChat;
    const METHOD: &'static str = "sft";

    fn units(&self, ex: &EncodedChat) -> u64 {
        ex.trained_targets() as u64
    }

    fn tokens(&self, ex: &EncodedChat) -> u64 {
        ex.ids.len().saturating_sub(1) as u64
    }

    fn hash(&self, ex: &EncodedChat, h: &mut Sha256) {
        hash_example(ex, h);
    }

    fn forward(
        &self,
        model: &Llama,
        chunk: &[&EncodedChat],
        opts: TrainOptions,
    ) -> Result<(Tensor, Stats)> {
        let batch = match self.pack_into {
            Some(row_len) => Batch::packed(chunk, self.pad_id, row_len),
            None => Batch::from_examples(chunk, self.pad_id),
        };
        let (input, targets, mask) = to_tensors(&batch)?;
        let out = model.train_loss_packed(&input, &targets, &mask, batch.packed.as_ref(), opts)?;
        let stats = token_stats(&out.loss, batch.n_trained, out.accuracy)?;
        Ok((out.loss, stats))
    }

    fn evaluate(&self, model: &Llama, examples: &[EncodedChat], batch: usize) -> Result<Stats> {
        let mut total = Stats::default();
        for chunk in examples.chunks(batch.max(1)) {
            let refs: Vec<&EncodedChat> = chunk.iter().collect();
            let b = Batch::from_examples(&refs, self.pad_id);
            if b.n_trained == 0 {
                continue;
            }
            let (input, targets, mask) = to_tensors(&b)?;
            let out = model.train_loss(&input, &targets, &mask, TrainOptions::default())?;
            total = total.merge(token_stats(&out.loss, b.n_trained, out.accuracy)?);
        }
        Ok(total)
    }
}

fn token_stats(loss: &Tensor, n_trained: usize, acc: TokenAccuracy) -> Result<Stats> {
    Ok(Stats {
        loss_sum: loss.to_scalar::<f32>()? as f64 * n_trained as f64,
        units: n_trained as u64,
        correct: acc.correct,
        counted: acc.total,
        trained_tokens: n_trained as u64,
        ..Stats::default()
    })
}

/// Feeds ids and mask of one example into a data fingerprint.
pub(crate) fn hash_example(ex: &EncodedChat, h: &mut Sha256) {
    h.update((ex.ids.len() as u64).to_le_bytes());
    for (id, m) in ex.ids.iter().zip(&ex.loss_mask) {
        h.update(id.to_le_bytes());
        h.update([*m as u8]);
    }
}
