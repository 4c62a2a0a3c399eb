//! Generation's step on a [`Llama`], whichever path its weights take: the
//! packed decode step ([`crate::decode`]) for packed weights, the tensor
//! forward pass ([`crate::forward`]) for f32 ones. Each path has its own cache
//! type ([`PackedKvCache`], [`TensorKvCache`]); [`KvCache`] holds the one the
//! model's path uses, so the generic generation loop can own caches without
//! knowing the path.

use crate::decode::{self, PackedKvCache};
use crate::error::{ModelError, Result};
use crate::forward::TensorKvCache;
use crate::llama::{ForwardOptions, Llama, WeightPath};

/// The KV cache of one sequence, of the type its model's step path uses;
/// made by [`Llama::new_cache`].
#[derive(Debug, Clone)]
pub enum KvCache {
    /// For f32 weights (the tensor forward pass).
    Tensor(TensorKvCache),
    /// For packed weights (hone's decode step).
    Packed(PackedKvCache),
}

impl KvCache {
    /// Number of cached positions.
    pub fn len(&self) -> usize {
        match self {
            KvCache::Tensor(c) => c.len(),
            KvCache::Packed(c) => c.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn clear(&mut self) {
        match self {
            KvCache::Tensor(c) => c.clear(),
            KvCache::Packed(c) => c.clear(),
        }
    }

    fn tensor_mut(&mut self) -> Result<&mut TensorKvCache> {
        match self {
            KvCache::Tensor(c) => Ok(c),
            KvCache::Packed(_) => Err(wrong_cache("packed", "f32")),
        }
    }

    fn packed_mut(&mut self) -> Result<&mut PackedKvCache> {
        match self {
            KvCache::Packed(c) => Ok(c),
            KvCache::Tensor(_) => Err(wrong_cache("f32", "packed")),
        }
    }
}

/// A cache can only come from a model with another weight path: one made by
/// this model's [`Llama::new_cache`] always fits.
fn wrong_cache(cache: &str, model: &str) -> ModelError {
    ModelError::Generation(format!(
        "this KV cache was made for {cache} weights, the model has {model} weights; \
         use the model's own new_cache()"
    ))
}

impl Llama {
    /// An empty cache for this model's step path.
    pub fn new_cache(&self) -> KvCache {
        match self.weight_path {
            WeightPath::F32 => KvCache::Tensor(TensorKvCache::new(&self.cfg)),
            WeightPath::Packed => KvCache::Packed(PackedKvCache::new(&self.cfg)),
        }
    }

    /// Logits of the position after `ids`, which follow `start_pos` positions
    /// already in `cache`: generation's step.
    pub fn step_logits(
        &self,
        ids: &[u32],
        start_pos: usize,
        cache: &mut KvCache,
        opts: ForwardOptions,
    ) -> Result<Vec<f32>> {
        if ids.is_empty() {
            return Err(ModelError::Generation(
                "a step needs at least one token".into(),
            ));
        }
        match self.weight_path {
            WeightPath::Packed => {
                decode::step(self, ids, start_pos, cache.packed_mut()?, opts.use_adapters)
            }
            WeightPath::F32 => {
                let input = candle_core::Tensor::new(ids, self.device())?.unsqueeze(0)?;
                let h = self.forward_hidden(&input, start_pos, Some(cache.tensor_mut()?), opts)?;
                let last = h.narrow(1, ids.len() - 1, 1)?;
                Ok(self.logits(&last)?.flatten_all()?.to_vec1::<f32>()?)
            }
        }
    }

    /// One decode step for several sequences: `ids[i]` follows the positions
    /// already in `caches[i]`; one logits vector per sequence.
    pub fn step_batch_logits(
        &self,
        ids: &[u32],
        caches: &mut [&mut KvCache],
        opts: ForwardOptions,
    ) -> Result<Vec<Vec<f32>>> {
        match self.weight_path {
            WeightPath::Packed => {
                let mut typed = caches
                    .iter_mut()
                    .map(|c| c.packed_mut())
                    .collect::<Result<Vec<_>>>()?;
                decode::step_batch(self, ids, &mut typed, opts.use_adapters)
            }
            WeightPath::F32 => {
                let mut typed = caches
                    .iter_mut()
                    .map(|c| c.tensor_mut())
                    .collect::<Result<Vec<_>>>()?;
                Ok(self
                    .forward_step_batch(ids, &mut typed, opts)?
                    .to_vec2::<f32>()?)
            }
        }
    }
}
