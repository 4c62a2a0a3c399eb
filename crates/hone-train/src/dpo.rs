//! Direct preference optimisation: the sigmoid DPO loss of Rafailov et al. as TRL
//! computes it (`loss_type="sigmoid"`, no label smoothing), over LoRA.
//!
//! The reference is the model the run starts from: the base with the adapter switched
//! off (`TrainOptions::use_adapters = false`: no second model in memory, architecture.md
//! pitfall 6), or base + the parent adapter with `init_adapter` (DPO on top of an SFT
//! adapter). Its log-probs are computed once per pair before the first step
//! ([`crate::reference`] says why and what that changes), so a step runs the policy alone.
//!
//! Each sequence is the prompt rendered through the model's chat template plus one
//! answer (hone-text's `encode_preference`); only the answer's tokens (its end-of-turn
//! token included) count in the log-probs, and only they go through the LM head
//! ([`Llama::train_sequence_logprobs`]). The loop, checkpoints, resume and cancel are
//! [`crate::runner`]'s, shared with SFT.

use std::ops::ControlFlow;
use std::path::Path;

use candle_core::{Device, Tensor};
use hone_data::PreferenceExample;
use hone_model::{Llama, TrainOptions};
use hone_text::{ChatTokenizer, EncodedChat};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::batch::{to_tensors, Batch};
use crate::config::TrainConfig;
use crate::error::{Result, TrainError};
use crate::events::EventSink;
use crate::objective::{Objective, Stats};
use crate::reference::{PairKey, Reference};
use crate::runner::{train_loop, RunControl};
use crate::sft::hash_example;
use crate::summary::TrainSummary;

/// A DPO run: the shared settings plus `beta`, the strength of the pull towards the
/// reference (higher keeps the policy closer to it). "auto" beta is hone-data's
/// [`hone_data::hparams::DPO_AUTO_BETA`] (TRL's and OpenAI's 0.1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DpoConfig {
    #[serde(flatten)]
    pub train: TrainConfig,
    pub beta: f64,
}

/// One tokenised preference pair: prompt + chosen answer, prompt + rejected answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedPair {
    pub chosen: EncodedChat,
    pub rejected: EncodedChat,
}

impl TokenizedPair {
    /// Both answers keep at least one trained token.
    pub fn is_trainable(&self) -> bool {
        self.chosen.trained_targets() > 0 && self.rejected.trained_targets() > 0
    }

    /// sha256 over both sequences' ids and masks (the key of a precomputed reference).
    fn key(&self) -> PairKey {
        let mut h = Sha256::new();
        hash_example(&self.chosen, &mut h);
        hash_example(&self.rejected, &mut h);
        h.finalize().into()
    }

    /// `[chosen, rejected]` sequence log-probs under `model` with `opts` (no dropout),
    /// the pair alone in its batch: the reference's values.
    fn score(&self, model: &Llama, pad_id: u32, opts: TrainOptions) -> Result<[f32; 2]> {
        let b = Batch::from_examples(&[&self.chosen, &self.rejected], pad_id);
        let (input, targets, mask) = to_tensors(&b)?;
        let lp: Vec<f32> = model
            .train_sequence_logprobs(&input, &targets, &mask, opts)?
            .detach()
            .to_vec1()?;
        Ok([lp[0], lp[1]])
    }
}

/// Tokenised pairs and what tokenisation did to them.
#[derive(Debug, Clone, Default)]
pub struct TokenizedPairs {
    /// Pairs with both answers trainable (the others are dropped: they carry no signal).
    pub pairs: Vec<TokenizedPair>,
    /// Pairs with a sequence cut at `max_seq_len`.
    pub truncated: usize,
    /// Pairs dropped because an answer had no token left within `max_seq_len`.
    pub dropped: usize,
}

/// Encodes each pair with the model's chat template (the same code path as SFT and
/// serving), cutting every sequence to `max_seq_len` tokens.
pub fn tokenize_dpo(
    tok: &ChatTokenizer,
    examples: &[PreferenceExample],
    max_seq_len: usize,
) -> Result<TokenizedPairs> {
    let mut out = TokenizedPairs::default();
    for (index, ex) in examples.iter().enumerate() {
        let enc = |answer| {
            tok.encode_preference(&ex.input, answer, ex.tools.as_ref())
                .map_err(|e| TrainError::Tokenize {
                    index,
                    message: format!("{e:#}"),
                })
        };
        let mut pair = TokenizedPair {
            chosen: enc(&ex.preferred)?,
            rejected: enc(&ex.non_preferred)?,
        };
        let cut = pair.chosen.truncate(max_seq_len) + pair.rejected.truncate(max_seq_len);
        if cut > 0 {
            out.truncated += 1;
        }
        if pair.is_trainable() {
            out.pairs.push(pair);
        } else {
            out.dropped += 1;
        }
    }
    Ok(out)
}

/// Runs DPO on `model` (f32 weights), writing the adapter, metrics (with rewards),
/// summary, checkpoints and `best/` into `out_dir`. Resume and cancel as [`RunControl`]
/// says, exactly like [`crate::sft::run_sft`].
pub fn run_dpo(
    model: &mut Llama,
    train: &[TokenizedPair],
    valid: &[TokenizedPair],
    cfg: &DpoConfig,
    out_dir: &Path,
    sink: &mut dyn EventSink,
    ctl: &RunControl,
) -> Result<TrainSummary> {
    if !(cfg.beta.is_finite() && cfg.beta > 0.0) {
        return Err(TrainError::Config(format!(
            "beta must be positive, got {}",
            cfg.beta
        )));
    }
    if let Some(i) = train.iter().chain(valid).position(|p| !p.is_trainable()) {
        return Err(TrainError::Config(format!(
            "preference pair {i} has an answer without trained tokens"
        )));
    }
    let obj = Dpo {
        beta: cfg.beta,
        pad_id: cfg.train.pad_id,
        reference_opts: TrainOptions {
            use_adapters: cfg.train.init_adapter.is_some(),
            ..TrainOptions::default()
        },
        reference: Reference::default(),
    };
    train_loop(model, &obj, train, valid, &cfg.train, out_dir, sink, ctl)
}

/// The DPO objective.
struct Dpo {
    beta: f64,
    pad_id: u32,
    /// How the model the run starts from is the reference: the adapter switched off
    /// (a fresh adapter), or on (the parent adapter it continues).
    reference_opts: TrainOptions,
    /// Filled by [`Objective::prepare`].
    reference: Reference,
}

impl Dpo {
    /// Chosen rows then rejected rows in one batch.
    fn batch(&self, chunk: &[&TokenizedPair]) -> Result<(Tensor, Tensor, Tensor, usize)> {
        let seqs: Vec<&EncodedChat> = chunk
            .iter()
            .map(|p| &p.chosen)
            .chain(chunk.iter().map(|p| &p.rejected))
            .collect();
        let b = Batch::from_examples(&seqs, self.pad_id);
        let (input, targets, mask) = to_tensors(&b)?;
        Ok((input, targets, mask, b.n_trained))
    }

    /// Loss and stats of a batch; `policy` decides whether the policy pass is
    /// differentiable (training) or not (validation).
    fn score(
        &self,
        model: &Llama,
        chunk: &[&TokenizedPair],
        opts: TrainOptions,
    ) -> Result<(Tensor, Stats)> {
        let (input, targets, mask, n_trained) = self.batch(chunk)?;
        let n = chunk.len();
        let ref_lp = self
            .reference
            .lookup(chunk, TokenizedPair::key, input.device())?;
        let lp = model.train_sequence_logprobs(&input, &targets, &mask, opts)?;
        let out = dpo_loss(
            &lp.narrow(0, 0, n)?,
            &lp.narrow(0, n, n)?,
            &ref_lp.narrow(0, 0, n)?,
            &ref_lp.narrow(0, n, n)?,
            self.beta,
        )?;
        let policy: Vec<f32> = lp.detach().to_vec1()?;
        let lp_margins: Vec<f64> = (0..n)
            .map(|i| f64::from(policy[i]) - f64::from(policy[n + i]))
            .collect();
        let stats = Stats {
            preferred_higher: lp_margins.iter().filter(|m| **m > 0.0).count() as u64,
            logprob_margin_sum: lp_margins.iter().sum(),
            loss_sum: out.loss.to_scalar::<f32>()? as f64 * n as f64,
            units: n as u64,
            correct: out.margins().filter(|m| *m > 0.0).count() as u64,
            counted: n as u64,
            trained_tokens: n_trained as u64,
            chosen_reward_sum: out.chosen_rewards.iter().sum(),
            rejected_reward_sum: out.rejected_rewards.iter().sum(),
        };
        Ok((out.loss, stats))
    }
}

impl Objective for Dpo {
    type Example = TokenizedPair;
    const METHOD: &'static str = "dpo";

    fn beta(&self) -> Option<f64> {
        Some(self.beta)
    }

    fn prepare(
        &self,
        model: &Llama,
        train: &[TokenizedPair],
        valid: &[TokenizedPair],
        progress: &mut dyn FnMut(u64, u64) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>> {
        self.reference.compute(
            &[train, valid],
            TokenizedPair::key,
            |p| p.score(model, self.pad_id, self.reference_opts),
            progress,
        )
    }

    fn units(&self, _: &TokenizedPair) -> u64 {
        1
    }

    fn tokens(&self, p: &TokenizedPair) -> u64 {
        (p.chosen.ids.len().saturating_sub(1) + p.rejected.ids.len().saturating_sub(1)) as u64
    }

    fn hash(&self, p: &TokenizedPair, h: &mut Sha256) {
        hash_example(&p.chosen, h);
        hash_example(&p.rejected, h);
    }

    fn forward(
        &self,
        model: &Llama,
        chunk: &[&TokenizedPair],
        opts: TrainOptions,
    ) -> Result<(Tensor, Stats)> {
        self.score(model, chunk, opts)
    }

    fn evaluate(&self, model: &Llama, examples: &[TokenizedPair], batch: usize) -> Result<Stats> {
        let mut total = Stats::default();
        for chunk in examples.chunks(batch.max(1)) {
            let refs: Vec<&TokenizedPair> = chunk.iter().collect();
            let (_, s) = self.score(model, &refs, TrainOptions::default())?;
            total = total.merge(s);
        }
        Ok(total)
    }
}

/// The reference (adapter off) and policy (adapter on) sequence log-probs of pairs, as
/// `[(ref_chosen, ref_rejected, policy_chosen, policy_rejected)]`: what the trainer
/// compares (for inspection and tests).
pub fn pair_logprobs(model: &Llama, pairs: &[TokenizedPair], pad_id: u32) -> Result<Vec<[f64; 4]>> {
    let obj = Dpo {
        beta: 1.0,
        pad_id,
        reference_opts: TrainOptions::default(),
        reference: Reference::default(),
    };
    let refs: Vec<&TokenizedPair> = pairs.iter().collect();
    let (input, targets, mask, _) = obj.batch(&refs)?;
    let n = pairs.len();
    let mut cols = Vec::new();
    for use_adapters in [false, true] {
        let opts = TrainOptions {
            use_adapters,
            ..TrainOptions::default()
        };
        let lp: Vec<f32> = model
            .train_sequence_logprobs(&input, &targets, &mask, opts)?
            .detach()
            .to_device(&Device::Cpu)?
            .to_vec1()?;
        cols.push(lp);
    }
    Ok((0..n)
        .map(|i| {
            [
                cols[0][i] as f64,
                cols[0][n + i] as f64,
                cols[1][i] as f64,
                cols[1][n + i] as f64,
            ]
        })
        .collect())
}

/// The DPO loss of a batch and its usual diagnostics.
#[derive(Debug, Clone)]
pub struct DpoLoss {
    /// Scalar mean loss (differentiable through the policy log-probs).
    pub loss: Tensor,
    /// Fraction of pairs whose chosen reward exceeds the rejected one.
    pub reward_accuracy: f64,
    /// Mean of `chosen_reward − rejected_reward`.
    pub reward_margin: f64,
    /// Per pair: `β·(πc − rc)` and `β·(πr − rr)`.
    pub chosen_rewards: Vec<f64>,
    pub rejected_rewards: Vec<f64>,
}

impl DpoLoss {
    /// Per pair: `chosen_reward − rejected_reward`.
    pub fn margins(&self) -> impl Iterator<Item = f64> + '_ {
        self.chosen_rewards
            .iter()
            .zip(&self.rejected_rewards)
            .map(|(c, r)| c - r)
    }
}

/// `mean(−log σ(β·((πc − rc) − (πr − rr))))` over pairs, where `π*` are the policy's and
/// `r*` the frozen reference's sequence log-probs (all `[b]`). The reference values are
/// detached here, so passing tensors with a graph is harmless.
pub fn dpo_loss(
    policy_chosen: &Tensor,
    policy_rejected: &Tensor,
    ref_chosen: &Tensor,
    ref_rejected: &Tensor,
    beta: f64,
) -> Result<DpoLoss> {
    let chosen_reward = ((policy_chosen - ref_chosen.detach())? * beta)?;
    let rejected_reward = ((policy_rejected - ref_rejected.detach())? * beta)?;
    let z = (&chosen_reward - &rejected_reward)?;
    // −log σ(z) = log(1 + e^−z) = m + log(e^−m + e^(−z−m)) with m = max(−z, 0) detached:
    // stable for any z, and the gradient −σ(−z) is exact even at z = 0 (no kink).
    let neg = z.neg()?;
    let m = neg.relu()?.detach();
    let softplus = (&m + (m.neg()?.exp()? + (neg - &m)?.exp()?)?.log()?)?;
    let loss = softplus.mean_all()?;
    let margins: Vec<f32> = z.detach().to_vec1()?;
    let n = margins.len().max(1) as f64;
    let as_f64 = |t: &Tensor| -> Result<Vec<f64>> {
        Ok(t.detach()
            .to_vec1::<f32>()?
            .into_iter()
            .map(f64::from)
            .collect())
    };
    Ok(DpoLoss {
        loss,
        reward_accuracy: margins.iter().filter(|m| **m > 0.0).count() as f64 / n,
        reward_margin: margins.iter().map(|m| *m as f64).sum::<f64>() / n,
        chosen_rewards: as_f64(&chosen_reward)?,
        rejected_rewards: as_f64(&rejected_reward)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn t(v: &[f32]) -> Tensor {
        Tensor::new(v, &Device::Cpu).unwrap()
    }

    #[test]
    fn dpo_loss_matches_the_closed_form_and_its_gradient() {
        let pc = Var::from_tensor(&t(&[-10.0, -3.0])).unwrap();
        let pr = t(&[-12.0, -2.0]);
        let rc = t(&[-11.0, -3.5]);
        let rr = t(&[-11.5, -2.5]);
        let beta = 0.1;
        let out = dpo_loss(pc.as_tensor(), &pr, &rc, &rr, beta).unwrap();
        // z = β((pc − rc) − (pr − rr)) = [0.15, 0.0]
        let z = [0.1f64 * (1.0 - (-0.5)), 0.1 * (0.5 - 0.5)];
        let want: f64 = z.iter().map(|z| (1.0 + (-z).exp()).ln()).sum::<f64>() / 2.0;
        let got = out.loss.to_scalar::<f32>().unwrap() as f64;
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        assert_eq!(out.reward_accuracy, 0.5);
        // d/dpc_i = −β σ(−z_i) / b
        let g = out.loss.backward().unwrap();
        let g: Vec<f32> = g.get(pc.as_tensor()).unwrap().to_vec1().unwrap();
        for (gi, zi) in g.iter().zip(z) {
            let want = -beta / (1.0 + zi.exp()) / 2.0;
            assert!((*gi as f64 - want).abs() < 1e-6, "{gi} vs {want}");
        }
    }

    #[test]
    fn dpo_loss_is_finite_for_huge_margins() {
        let out = dpo_loss(&t(&[0.0]), &t(&[-5000.0]), &t(&[0.0]), &t(&[0.0]), 1.0).unwrap();
        let l = out.loss.to_scalar::<f32>().unwrap();
        assert!(l.is_finite() && l < 1e-6);
        let out = dpo_loss(&t(&[-5000.0]), &t(&[0.0]), &t(&[0.0]), &t(&[0.0]), 1.0).unwrap();
        let l = out.loss.to_scalar::<f32>().unwrap();
        assert!((l - 5000.0).abs() < 1e-2, "{l}");
    }
}
