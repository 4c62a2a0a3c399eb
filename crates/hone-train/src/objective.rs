//! What a training method is to the shared loop: an [`Objective`] turns a micro-batch of
//! its examples into a differentiable loss plus [`Stats`], and scores a validation set.
//!
//! SFT ([`crate::sft`]) and DPO ([`crate::dpo`]) implement it; [`crate::runner`] owns
//! everything else (the loop, checkpoints, resume, cancel, outputs), once for both.

use std::ops::ControlFlow;

use candle_core::Tensor;
use hone_model::{Llama, TrainOptions};
use sha2::Sha256;

use crate::error::Result;
use crate::events::RewardStats;

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
    /// DPO: pairs whose chosen answer has the higher total log-prob under the policy
    /// (what decides generation, unlike the rewards, which are relative to the reference).
    pub preferred_higher: u64,
    /// DPO: Σ over pairs of `log π(chosen) − log π(rejected)` (nats).
    pub logprob_margin_sum: f64,
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
            preferred_higher: self.preferred_higher + o.preferred_higher,
            logprob_margin_sum: self.logprob_margin_sum + o.logprob_margin_sum,
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
            preference_accuracy: self.preferred_higher as f64 / n,
            logprob_margin: self.logprob_margin_sum / n,
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
    /// Called once per run before the first step, with the model the run starts from
    /// (LoRA attached, `init_adapter` loaded; on a resume, before the checkpoint's
    /// adapter is): DPO computes its frozen reference here. Long work reports through
    /// `progress` (done, total) and stops when it answers `Break` (a cancel), then
    /// returns `Break` too. Nothing by default.
    fn prepare(
        &self,
        _model: &Llama,
        _train: &[Self::Example],
        _valid: &[Self::Example],
        _progress: &mut dyn FnMut(u64, u64) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>> {
        Ok(ControlFlow::Continue(()))
    }
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
