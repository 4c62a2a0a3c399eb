//! No-gradient scoring for evaluation: the log-probability a model gives to
//! chosen tokens (validation loss, perplexity, DPO pair accuracy), and a
//! [`StepModel`] view of a [`Llama`] with its adapters switched on or off.
//!
//! Why here: only `hone-model` touches candle tensors (architecture.md), and
//! evaluation must compare a fine-tuned model with its base from one loaded
//! copy of the weights, which the adapter switch makes possible.

use candle_core::{DType, Tensor, D};

use crate::error::{ModelError, Result};
use crate::generate::{BatchStepModel, StepModel};
use crate::kv_cache::KvCache;
use crate::llama::{ForwardOptions, Llama};

/// A [`Llama`] that runs with its LoRA adapters on or off, so one loaded
/// base serves both the fine-tuned model and the baseline.
#[derive(Debug, Clone, Copy)]
pub struct AdapterSwitch<'a> {
    pub model: &'a Llama,
    pub use_adapters: bool,
}

impl StepModel for AdapterSwitch<'_> {
    type Cache = KvCache;

    fn new_cache(&self) -> KvCache {
        self.model.new_cache()
    }

    fn step(&self, ids: &[u32], start_pos: usize, cache: &mut KvCache) -> Result<Vec<f32>> {
        let opts = ForwardOptions {
            use_adapters: self.use_adapters,
        };
        self.model.step_logits(ids, start_pos, cache, opts)
    }

    fn context_length(&self) -> usize {
        self.model.cfg.max_position_embeddings
    }
}

/// Batched decode steps with the adapters on or off, as in [`StepModel::step`].
impl BatchStepModel for AdapterSwitch<'_> {
    fn step_batch(&self, ids: &[u32], caches: &mut [&mut KvCache]) -> Result<Vec<Vec<f32>>> {
        let opts = ForwardOptions {
            use_adapters: self.use_adapters,
        };
        self.model.step_batch_logits(ids, caches, opts)
    }
}

/// Log-probability of the scored tokens of one sequence.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TokenScore {
    /// Sum of `ln p(token | previous tokens)` over the scored tokens.
    pub logprob_sum: f64,
    /// How many tokens were scored.
    pub tokens: usize,
    /// Scored tokens that were also the model's argmax prediction.
    pub correct: usize,
}

impl TokenScore {
    /// Adds another sequence's score (for corpus-level means).
    pub fn merge(self, o: TokenScore) -> TokenScore {
        TokenScore {
            logprob_sum: self.logprob_sum + o.logprob_sum,
            tokens: self.tokens + o.tokens,
            correct: self.correct + o.correct,
        }
    }

    /// Mean negative log-likelihood per scored token (0 when none).
    pub fn mean_nll(&self) -> f64 {
        if self.tokens == 0 {
            0.0
        } else {
            -self.logprob_sum / self.tokens as f64
        }
    }
}

/// Scores `ids[i]` for every `i >= 1` with `mask[i]` true, given `ids[..i]`:
/// the same shifted masking as training's loss (token `i` is a target when
/// its mask is set). One forward pass without a KV cache or gradient; only
/// the scored positions go through the LM head.
pub fn score_tokens(
    model: &Llama,
    ids: &[u32],
    mask: &[bool],
    use_adapters: bool,
) -> Result<TokenScore> {
    if ids.len() != mask.len() {
        return Err(ModelError::Generation(format!(
            "{} ids but {} mask entries",
            ids.len(),
            mask.len()
        )));
    }
    let positions: Vec<u32> = (1..ids.len())
        .filter(|&i| mask[i])
        .map(|i| (i - 1) as u32)
        .collect();
    if positions.is_empty() {
        return Ok(TokenScore::default());
    }
    let dev = model.device();
    let input = Tensor::new(&ids[..ids.len() - 1], dev)?.unsqueeze(0)?;
    let opts = ForwardOptions { use_adapters };
    let hidden = model.forward_hidden(&input, 0, None, opts)?.squeeze(0)?;
    let pos = Tensor::new(positions.as_slice(), dev)?;
    let picked = hidden.index_select(&pos, 0)?;
    let logits = model
        .logits_with(&picked, use_adapters)?
        .to_dtype(DType::F32)?;
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let targets: Vec<u32> = positions.iter().map(|&p| ids[p as usize + 1]).collect();
    let tgt = Tensor::new(targets.as_slice(), dev)?.unsqueeze(1)?;
    let chosen = logp.gather(&tgt, 1)?.flatten_all()?.to_vec1::<f32>()?;
    let argmax = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
    let correct = argmax.iter().zip(&targets).filter(|(a, t)| a == t).count();
    Ok(TokenScore {
        logprob_sum: chosen.iter().map(|&x| x as f64).sum(),
        tokens: targets.len(),
        correct,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llama::WeightPath;
    use crate::load::load_model;
    use crate::testing::{write_tiny_model, TinySpec};

    fn tiny() -> Llama {
        let dir = tempfile::tempdir().unwrap();
        let (gguf, _) = write_tiny_model(dir.path(), &TinySpec::default()).unwrap();
        load_model(&gguf, WeightPath::F32).unwrap()
    }

    /// Reference: full logits, log-softmax, pick each target by hand.
    fn reference(model: &Llama, ids: &[u32], mask: &[bool]) -> f64 {
        let input = Tensor::new(ids, model.device())
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let logits = model.forward(&input, 0, None).unwrap().squeeze(0).unwrap();
        let lp = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap();
        let rows = lp.to_vec2::<f32>().unwrap();
        (1..ids.len())
            .filter(|&i| mask[i])
            .map(|i| rows[i - 1][ids[i] as usize] as f64)
            .sum()
    }

    #[test]
    fn score_matches_full_forward_log_softmax() {
        let m = tiny();
        let ids = [1u32, 40, 41, 42, 43, 2, 50];
        let mask = [false, false, true, true, false, true, true];
        let s = score_tokens(&m, &ids, &mask, true).unwrap();
        assert_eq!(s.tokens, 4);
        let want = reference(&m, &ids, &mask);
        assert!(
            (s.logprob_sum - want).abs() < 1e-3,
            "{} vs {want}",
            s.logprob_sum
        );
        assert!(s.logprob_sum < 0.0);
    }

    #[test]
    fn nothing_scored_is_zero_and_mismatched_mask_is_an_error() {
        let m = tiny();
        let s = score_tokens(&m, &[1, 2, 3], &[true, false, false], true).unwrap();
        assert_eq!(s, TokenScore::default());
        assert!(score_tokens(&m, &[1, 2, 3], &[true], true).is_err());
    }

    #[test]
    fn adapter_switch_off_equals_the_base_model() {
        let m = tiny();
        let mut cache = m.new_cache();
        let base = m.step(&[1, 40, 41], 0, &mut cache).unwrap();
        let sw = AdapterSwitch {
            model: &m,
            use_adapters: false,
        };
        let mut cache = sw.new_cache();
        let off = sw.step(&[1, 40, 41], 0, &mut cache).unwrap();
        assert_eq!(base, off);
    }
}
