//! DPO's reference model: what the policy's log-probs are compared with.
//!
//! DPO keeps the policy close to the model it starts from (Rafailov et al. take π_ref =
//! π_SFT; TRL's `DPOTrainer` uses the model it was given as the reference). A run from
//! a fresh LoRA starts from the base, so the reference is the base with the adapter
//! switched off (no second model in memory). A run that continues an existing adapter
//! (`init_adapter`: DPO on top of an SFT adapter, `hone train --method sft+dpo`, an API
//! job whose `model` is a fine-tuned model) starts from base + that adapter, so the
//! reference is that parent model.
//!
//! Either way the reference is frozen, so its log-probs are computed once per pair,
//! before the first step, and kept ([`Reference`]), as TRL's `precompute_ref_log_probs`
//! does: the training steps then run the policy alone, and a 5-epoch run pays one
//! reference pass per pair instead of five. A resume recomputes the same values (from
//! the base, or from the parent adapter, never from the checkpoint's), so the resumed
//! steps are the uninterrupted run's. Each pair is scored on its own (chosen and
//! rejected padded together), so inside larger training batches the policy's first-step
//! log-probs equal these up to float rounding of the padding (about 1e-6 relative), not
//! bit for bit: the first step's loss is ln 2 to about 1e-6.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::OnceLock;

use candle_core::{Device, Tensor};

use crate::error::{Result, TrainError};

/// A pair's identity (sha256 over its tokens and masks): equal pairs share a reference.
pub type PairKey = [u8; 32];

/// The frozen reference's `[chosen, rejected]` sequence log-probs by [`PairKey`], filled
/// once by [`Reference::compute`].
#[derive(Debug, Default)]
pub struct Reference(OnceLock<HashMap<PairKey, [f32; 2]>>);

impl Reference {
    /// Scores every distinct pair of `pairs` (the training and the validation pairs)
    /// with `score`: the model as the run starts, without dropout. A second call keeps
    /// the first values. `progress(scored, distinct)` is called before each pair and
    /// once at the end; a `Break` before a pair stops the pass (a cancel): the
    /// reference stays unset and `Break` is returned.
    pub fn compute<P>(
        &self,
        pairs: &[&[P]],
        key: impl Fn(&P) -> PairKey,
        score: impl Fn(&P) -> Result<[f32; 2]>,
        progress: &mut dyn FnMut(u64, u64) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>> {
        if self.0.get().is_some() {
            return Ok(ControlFlow::Continue(()));
        }
        let mut distinct = HashMap::new();
        for p in pairs.iter().flat_map(|s| s.iter()) {
            distinct.entry(key(p)).or_insert(p);
        }
        let total = distinct.len() as u64;
        let mut map = HashMap::with_capacity(distinct.len());
        for (i, (k, p)) in distinct.into_iter().enumerate() {
            if progress(i as u64, total).is_break() {
                return Ok(ControlFlow::Break(()));
            }
            map.insert(k, score(p)?);
        }
        let _ = progress(total, total);
        let _ = self.0.set(map);
        Ok(ControlFlow::Continue(()))
    }

    /// Reference log-probs of `chunk` as `[chosen..., rejected...]` (shape `[2n]`).
    pub fn lookup<P>(
        &self,
        chunk: &[&P],
        key: impl Fn(&P) -> PairKey,
        device: &Device,
    ) -> Result<Tensor> {
        let missing =
            || TrainError::Config("a preference pair has no precomputed reference".into());
        let map = self.0.get().ok_or_else(missing)?;
        let mut chosen = Vec::with_capacity(chunk.len());
        let mut rejected = Vec::with_capacity(chunk.len());
        for p in chunk {
            let [c, r] = map.get(&key(p)).ok_or_else(missing)?;
            chosen.push(*c);
            rejected.push(*r);
        }
        chosen.extend(rejected);
        Ok(Tensor::new(chosen, device)?)
    }
}
