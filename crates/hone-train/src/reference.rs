//! DPO's reference model: what the policy's log-probs are compared with.
//!
//! Why two kinds: DPO keeps the policy close to the model it started from (Rafailov et
//! al. take π_ref = π_SFT; TRL's `DPOTrainer` uses the model it was given, i.e. the SFT
//! model, as the reference). A run from a fresh LoRA starts from the base, so the
//! reference is the base with the adapter switched off ([`Reference::AdapterOff`]: no
//! second model in memory, and at LoRA's zero init policy and reference agree bit for
//! bit). A run that continues an existing adapter (`init_adapter`: DPO on top of an SFT
//! adapter, `hone train --method sft+dpo`, an API job whose `model` is a fine-tuned
//! model) starts from base + that adapter, so the reference is that parent model: its
//! log-probs are computed once, before the first step, with the parent adapter attached
//! and no dropout, and kept per pair ([`Reference::Parent`]). The reference is frozen,
//! so computing it once is exact, and a resume recomputes the same values from the
//! parent adapter (never from the checkpoint's). Each pair is scored on its own
//! (chosen and rejected padded together), so inside larger training batches the
//! policy's first-step log-probs equal these up to float rounding of the padding
//! (about 1e-6 relative), not bit for bit.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use hone_model::lora::LoraParams;
use hone_model::ops::base_weights::with_precision;
use hone_model::Llama;

use crate::config::TrainConfig;
use crate::error::{Result, TrainError};
use crate::resume::load_adapter_into;

/// A pair's identity (sha256 over its tokens and masks): equal pairs share a reference.
pub type PairKey = [u8; 32];

/// The frozen model a DPO run compares its policy with.
#[derive(Debug, Clone)]
pub enum Reference {
    /// The base with the LoRA adapter switched off (a run from a fresh adapter).
    AdapterOff,
    /// Base + the parent adapter the run continues, precomputed per pair:
    /// `[chosen, rejected]` sequence log-probs by [`PairKey`].
    Parent(HashMap<PairKey, [f32; 2]>),
}

impl Reference {
    /// The reference for a run with `cfg`: with `cfg.init_adapter`, `score` (the
    /// model's `[chosen, rejected]` log-probs of one pair, adapter on, no dropout) on
    /// every pair of `pairs` with the parent adapter attached; else the adapter switched
    /// off. `out_dir` and `resume` decide the base-weight mode exactly as the run does
    /// (a resume keeps its checkpoint's), so reference and policy multiply alike.
    pub fn for_run<P>(
        model: &mut Llama,
        pairs: &[&[P]],
        cfg: &TrainConfig,
        (out_dir, resume): (&Path, bool),
        key: impl Fn(&P) -> PairKey,
        score: impl Fn(&Llama, &P) -> Result<[f32; 2]>,
    ) -> Result<Reference> {
        let Some(dir) = &cfg.init_adapter else {
            return Ok(Reference::AdapterOff);
        };
        let mode = crate::base::mode_for_run(cfg.base_weights, out_dir, resume)?;
        crate::base::fit_model(model, mode)?;
        let lora = LoraParams::attach(model, &cfg.lora(), cfg.seed)?;
        load_adapter_into(&lora.trainable(), dir)?;
        let mut map = HashMap::new();
        with_precision(mode.resolve(), || -> Result<()> {
            for p in pairs.iter().flat_map(|s| s.iter()) {
                if let std::collections::hash_map::Entry::Vacant(e) = map.entry(key(p)) {
                    e.insert(score(model, p)?);
                }
            }
            Ok(())
        })?;
        Ok(Reference::Parent(map))
    }

    /// Reference log-probs of `chunk` as `[chosen..., rejected...]` (shape `[2n]`),
    /// for [`Reference::Parent`]; `None` for [`Reference::AdapterOff`] (the caller runs
    /// the model with the adapter off on its own batch).
    pub fn lookup<P>(
        &self,
        chunk: &[&P],
        key: impl Fn(&P) -> PairKey,
        device: &Device,
    ) -> Result<Option<Tensor>> {
        let Reference::Parent(map) = self else {
            return Ok(None);
        };
        let mut chosen = Vec::with_capacity(chunk.len());
        let mut rejected = Vec::with_capacity(chunk.len());
        for p in chunk {
            let [c, r] = map.get(&key(p)).ok_or_else(|| {
                TrainError::Config("a preference pair has no precomputed reference".into())
            })?;
            chosen.push(*c);
            rejected.push(*r);
        }
        chosen.extend(rejected);
        Ok(Some(Tensor::new(chosen, device)?))
    }
}
