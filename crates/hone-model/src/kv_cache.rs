//! Generation's step on a [`Llama`], whichever path its weights take: the
//! packed decode step ([`crate::decode`]) for packed weights, the tensor
//! forward pass ([`crate::forward`]) for f32 ones. Each path has its own cache
//! type ([`PackedKvCache`], [`TensorKvCache`]); [`KvCache`] holds the one the
//! model's path uses, so the generic generation loop can own caches without
//! knowing the path. Both caches grow in place (no copy of earlier
//! positions per step or prompt chunk).

use candle_core::Tensor;

use crate::config::Config;
use crate::decode::{self, PackedKvCache};
use crate::error::{ModelError, Result};
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

    /// A copy of the first `len` positions, equal to the cache that feeding
    /// only those positions builds (so generation from it equals generation
    /// from scratch); `None` for the tensor path's cache, which has no cheap
    /// copy of a prefix (the server's packed weights never use it).
    pub fn prefix(&self, len: usize) -> Option<KvCache> {
        match self {
            KvCache::Packed(c) => Some(KvCache::Packed(c.prefix(len))),
            KvCache::Tensor(_) => None,
        }
    }

    /// Bytes the cached positions hold (the packed cache's; 0 for the tensor
    /// path's, which [`Self::prefix`] cannot copy, so nothing keeps it).
    pub fn bytes(&self) -> usize {
        match self {
            KvCache::Packed(c) => c.bytes(),
            KvCache::Tensor(_) => 0,
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
                let input = Tensor::new(ids, self.device())?.unsqueeze(0)?;
                let h = self.forward_hidden(&input, start_pos, Some(cache.tensor_mut()?), opts)?;
                let last = h.narrow(1, ids.len() - 1, 1)?;
                Ok(self
                    .logits_with(&last, opts.use_adapters)?
                    .flatten_all()?
                    .to_vec1::<f32>()?)
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

/// Tokens fed to one sequence in a [`Llama::step_feeds`] call: the model
/// handle it runs (its own adapters), the tokens, and its cache.
pub struct Feed<'a> {
    pub model: &'a Llama,
    pub ids: &'a [u32],
    pub cache: &'a mut KvCache,
}

impl Llama {
    /// Feeds several sequences in one step, each on its own model handle
    /// (clones of one loaded base, which differ in their adapters): a prompt
    /// chunk of one and decode tokens of others go through the packed
    /// weights together. Returns, per feed, the logits after its last token,
    /// each equal to what [`Llama::step_logits`] gives for that feed alone.
    /// On f32 weights (no packed step) the feeds run one after another.
    pub fn step_feeds(feeds: &mut [Feed<'_>], opts: ForwardOptions) -> Result<Vec<Vec<f32>>> {
        let Some(first) = feeds.first() else {
            return Ok(Vec::new());
        };
        match first.model.weight_path {
            WeightPath::Packed => {
                let models: Vec<(&Llama, &[u32])> =
                    feeds.iter().map(|f| (f.model, f.ids)).collect();
                let mut typed = Vec::with_capacity(feeds.len());
                for f in feeds.iter_mut() {
                    typed.push(f.cache.packed_mut()?);
                }
                decode::step_feeds(&models, &mut typed, opts.use_adapters)
            }
            WeightPath::F32 => feeds
                .iter_mut()
                .map(|f| {
                    let start = f.cache.len();
                    f.model.step_logits(f.ids, start, f.cache, opts)
                })
                .collect(),
        }
    }

    /// Bytes of KV cache one sequence of `positions` positions holds (keys
    /// and values of every layer, f32, keys in whole blocks of 64): what a
    /// serving budget reserves per request.
    pub fn kv_cache_bytes(&self, positions: usize) -> usize {
        let c = &self.cfg;
        let per_position = c.num_hidden_layers * c.num_key_value_heads * c.head_dim * 4;
        2 * per_position * positions.div_ceil(64) * 64
    }
}

/// Per-layer keys and values of the positions seen so far, as candle
/// tensors `[b, kv_heads, positions, head_dim]`: the tensor forward pass's
/// cache (the packed decode step has its own, [`crate::decode::PackedKvCache`]).
///
/// Each layer's keys and values live in a buffer with room to spare, grown
/// by doubling; new positions are written in place and attention reads a
/// view of the filled part. Concatenating instead copied the whole cache at
/// every step and every prompt chunk, which made long prompts quadratic.
#[derive(Debug)]
pub struct TensorKvCache {
    layers: Vec<Option<LayerKv>>,
}

/// One layer's buffers `[b, kv_heads, capacity, head_dim]`, the first `len`
/// positions filled.
#[derive(Debug)]
struct LayerKv {
    k: Tensor,
    v: Tensor,
    len: usize,
}

/// Positions a layer's buffer starts with: one short prompt's worth.
const MIN_CAPACITY: usize = 64;

/// A deep copy: clones write their own positions, never into a shared buffer.
impl Clone for TensorKvCache {
    fn clone(&self) -> Self {
        let layers = self
            .layers
            .iter()
            .map(|l| {
                l.as_ref().map(|l| LayerKv {
                    // A copy of a CPU tensor cannot fail but for lack of memory.
                    k: l.k.copy().unwrap_or_else(|_| l.k.clone()),
                    v: l.v.copy().unwrap_or_else(|_| l.v.clone()),
                    len: l.len,
                })
            })
            .collect();
        Self { layers }
    }
}

impl TensorKvCache {
    pub fn new(cfg: &Config) -> Self {
        Self {
            layers: (0..cfg.num_hidden_layers).map(|_| None).collect(),
        }
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map_or(0, |l| l.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn clear(&mut self) {
        self.layers.iter_mut().for_each(|l| *l = None);
    }

    /// Appends a layer's new keys and values; returns views of all of that
    /// layer's (no copy of the earlier positions).
    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: Tensor,
        v: Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let slot = self
            .layers
            .get_mut(layer)
            .ok_or_else(|| ModelError::Generation("KV cache built for another model".into()))?;
        let (k, v) = (k.contiguous()?, v.contiguous()?);
        let len = slot.as_ref().map_or(0, |l| l.len);
        let need = len + k.dim(2)?;
        let cap = slot.as_ref().map_or(0, |l| l.k.dim(2).unwrap_or(0));
        if need > cap {
            let cap = need.max(2 * cap).max(MIN_CAPACITY);
            let grow = |t: &Tensor, old: Option<&Tensor>| -> Result<Tensor> {
                let (b, h, _, d) = t.dims4()?;
                let buf = Tensor::zeros((b, h, cap, d), t.dtype(), t.device())?;
                if let Some(old) = old {
                    buf.slice_set(old, 2, 0)?;
                }
                Ok(buf)
            };
            let old = slot.take();
            *slot = Some(LayerKv {
                k: grow(&k, old.as_ref().map(|l| &l.k))?,
                v: grow(&v, old.as_ref().map(|l| &l.v))?,
                len,
            });
        }
        let l = slot
            .as_mut()
            .ok_or_else(|| ModelError::Generation("KV cache layer missing".into()))?;
        l.k.slice_set(&k, 2, len)?;
        l.v.slice_set(&v, 2, len)?;
        l.len = need;
        Ok((l.k.narrow(2, 0, need)?, l.v.narrow(2, 0, need)?))
    }
}
