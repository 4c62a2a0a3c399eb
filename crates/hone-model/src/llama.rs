//! The Llama-family forward pass (candle `llama.rs` style: the KV cache is
//! passed in from outside).
//!
//! Weights are always in HF layout: GGUF's Q/K rows, which llama.cpp permutes
//! for interleaved RoPE, are un-permuted at load, so one (half-split) RoPE
//! serves both sources and LoRA adapters on `q_proj`/`k_proj` stay PEFT
//! compatible. `rms_norm`, `rope`, `softmax` and `swiglu` are small free
//! functions so the trainer can swap in differentiable custom ops.

use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Tensor, D};

use crate::config::Config;
use crate::decode::{FlatKv, PackedMatrix};
use crate::error::{ModelError, Result};
use crate::linear::{dense_matmul, Linear, LoraAdapter, QWeight};

/// RMSNorm: `x / sqrt(mean(x²) + eps) · weight` over the last dimension.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    Ok(candle_nn::ops::rms_norm(x, weight, eps as f32)?)
}

/// Half-split ("NeoX"/HF) rotary embedding of `x: [b, heads, t, head_dim]`
/// with `cos`, `sin: [t, head_dim/2]`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::rotary_emb::rope(&x.contiguous()?, cos, sin)?)
}

/// Softmax over the last dimension (attention probabilities).
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::ops::softmax_last_dim(x)?)
}

/// SwiGLU: `silu(gate) · up`.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    Ok((candle_nn::ops::silu(gate)? * up)?)
}

/// Scaled dot-product attention of `q: [b, h, t, d]` over `k`, `v: [b, h, T, d]`
/// with an additive `mask: [t, T]` (0 or -inf).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let scale = 1.0 / (q.dim(D::Minus1)? as f64).sqrt();
    let scores = (q.matmul(&k.t()?)? * scale)?;
    let scores = match mask {
        Some(m) => scores.broadcast_add(m)?,
        None => scores,
    };
    Ok(softmax(&scores)?.matmul(v)?)
}

/// Repeats each key/value head `n_rep` times for grouped-query attention.
pub fn repeat_kv(x: Tensor, n_rep: usize) -> Result<Tensor> {
    if n_rep == 1 {
        return Ok(x);
    }
    let (b, h, t, d) = x.dims4()?;
    Ok(x.unsqueeze(2)?
        .expand((b, h, n_rep, t, d))?
        .reshape((b, h * n_rep, t, d))?)
}

/// Grouped-query attention without copying keys and values: the `n_rep`
/// query heads that share a KV head are stacked along the position axis
/// (`[b, kv, n_rep·t, d]`), so one matmul per KV head serves them all.
/// Equivalent to [`repeat_kv`] followed by [`attention`].
pub fn grouped_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    n_rep: usize,
) -> Result<Tensor> {
    if n_rep == 1 {
        return attention(q, &k.contiguous()?, &v.contiguous()?, mask);
    }
    let (b, h, t, d) = q.dims4()?;
    let kv = h / n_rep;
    let q = q.reshape((b, kv, n_rep * t, d))?;
    let mask = match mask {
        Some(m) => Some(m.repeat((n_rep, 1))?),
        None => None,
    };
    let y = attention(&q, &k.contiguous()?, &v.contiguous()?, mask.as_ref())?;
    Ok(y.reshape((b, h, t, d))?)
}

/// The causal mask for `t` new positions after `start_pos` cached ones.
pub fn causal_mask(t: usize, start_pos: usize, device: &Device) -> Result<Tensor> {
    let total = start_pos + t;
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| {
            (0..total).map(move |j| {
                if j > start_pos + i {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Ok(Tensor::from_vec(mask, (t, total), device)?)
}

/// Per-layer keys and values of the positions seen so far: candle tensors
/// for the tensor forward pass, or flat f32 rows for the packed decode step
/// (which appends in place instead of copying the cache each step). A cache
/// is filled by one of the two paths.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    flat: FlatKv,
}

impl KvCache {
    pub fn new(cfg: &Config) -> Self {
        Self {
            layers: vec![None; cfg.num_hidden_layers],
            flat: FlatKv::new(
                cfg.num_hidden_layers,
                cfg.num_key_value_heads * cfg.head_dim,
            ),
        }
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        let tensors = self
            .layers
            .first()
            .and_then(|l| l.as_ref())
            .and_then(|(k, _)| k.dim(2).ok())
            .unwrap_or(0);
        tensors.max(self.flat.len())
    }

    /// The flat storage of the packed decode step.
    pub(crate) fn flat(&self) -> &FlatKv {
        &self.flat
    }

    /// The flat storage, unless the tensor path already filled this cache.
    pub(crate) fn flat_mut(&mut self) -> Result<&mut FlatKv> {
        if self.layers.iter().any(Option::is_some) {
            return Err(ModelError::Generation(
                "this KV cache was filled by the tensor forward pass; use a new cache".into(),
            ));
        }
        Ok(&mut self.flat)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn clear(&mut self) {
        self.layers.iter_mut().for_each(|l| *l = None);
        self.flat.clear();
    }

    fn append(&mut self, layer: usize, k: Tensor, v: Tensor) -> Result<(Tensor, Tensor)> {
        let slot = self
            .layers
            .get_mut(layer)
            .ok_or_else(|| ModelError::Generation("KV cache built for another model".into()))?;
        if !self.flat.is_empty() {
            return Err(ModelError::Generation(
                "this KV cache was filled by the packed decode step; use a new cache".into(),
            ));
        }
        let kv = match slot.take() {
            Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
            None => (k, v),
        };
        *slot = Some(kv.clone());
        Ok(kv)
    }
}

/// The cosine and sine tables of RoPE for every position up to the context length.
#[derive(Debug, Clone)]
pub struct RopeTables {
    pub cos: Tensor,
    pub sin: Tensor,
}

impl RopeTables {
    pub fn new(cfg: &Config, device: &Device) -> Result<Self> {
        let half = cfg.head_dim / 2;
        let inv: Vec<f32> = (0..half)
            .map(|i| 1.0 / cfg.rope_theta.powf(2.0 * i as f32 / cfg.head_dim as f32))
            .collect();
        let n = cfg.max_position_embeddings;
        let inv = Tensor::from_vec(inv, (1, half), device)?;
        let pos = Tensor::arange(0u32, n as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((n, 1))?;
        let freqs = pos.broadcast_mul(&inv)?;
        Ok(Self {
            cos: freqs.cos()?,
            sin: freqs.sin()?,
        })
    }

    fn slice(&self, start: usize, t: usize) -> Result<(Tensor, Tensor)> {
        Ok((self.cos.narrow(0, start, t)?, self.sin.narrow(0, start, t)?))
    }
}

#[derive(Debug, Clone)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
}

#[derive(Debug, Clone)]
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

#[derive(Debug, Clone)]
pub struct Block {
    pub input_layernorm: Tensor,
    pub self_attn: Attention,
    pub post_attention_layernorm: Tensor,
    pub mlp: Mlp,
}

/// The token embedding table: dense, or quantized (looked up row by row).
#[derive(Debug, Clone)]
pub enum Embedding {
    Dense(Tensor),
    Quantized(QEmbedding),
}

/// A quantized embedding table, in candle's blocks or hone's packed ones.
#[derive(Debug, Clone)]
pub enum QEmbedding {
    Candle(Arc<QTensor>),
    Packed(Arc<PackedMatrix>),
}

impl Embedding {
    fn lookup(&self, ids: &Tensor) -> Result<Tensor> {
        match self {
            Embedding::Dense(w) => {
                let (b, t) = ids.dims2()?;
                let h = w.dim(1)?;
                Ok(w.index_select(&ids.flatten_all()?, 0)?.reshape((b, t, h))?)
            }
            Embedding::Quantized(QEmbedding::Candle(q)) => Ok(q.embedding(ids)?),
            Embedding::Quantized(QEmbedding::Packed(p)) => {
                let (b, t) = ids.dims2()?;
                let (vocab, h) = p.dims();
                let mut rows = Vec::with_capacity(b * t * h);
                for id in ids.flatten_all()?.to_vec1::<u32>()? {
                    if id as usize >= vocab {
                        return Err(ModelError::Generation(format!(
                            "token id {id} is outside the vocabulary of {vocab}"
                        )));
                    }
                    rows.extend(p.row_f32(id as usize)?);
                }
                Ok(Tensor::from_vec(rows, (b, t, h), ids.device())?)
            }
        }
    }
}

/// The output projection to the vocabulary.
#[derive(Debug, Clone)]
pub enum LmHead {
    Dense(Tensor),
    Quantized(QWeight),
}

/// Switches for one forward pass.
#[derive(Debug, Clone, Copy)]
pub struct ForwardOptions {
    /// Run LoRA adapters (false: the frozen base, e.g. DPO's reference).
    pub use_adapters: bool,
}

impl Default for ForwardOptions {
    fn default() -> Self {
        Self { use_adapters: true }
    }
}

/// Which weight path a model was loaded with (reported by `hone bench infer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightPath {
    /// Everything dequantized to f32: training and the reference.
    F32,
    /// Linear weights kept in the file's quantization (e.g. Q4_1).
    Native,
    /// Linear weights re-quantized to Q8_0 at load.
    Q8_0,
    /// hone's own kernels ([`crate::decode`]): Q4_1 and Q8_0 blocks kept as in
    /// the file (other types re-quantized to Q8_0), multiplied with f32
    /// activations. The serving path.
    Packed,
}

impl WeightPath {
    pub fn as_str(self) -> &'static str {
        match self {
            WeightPath::F32 => "f32",
            WeightPath::Native => "native",
            WeightPath::Q8_0 => "q8_0",
            WeightPath::Packed => "packed",
        }
    }
}

/// A Llama-family causal language model.
#[derive(Debug, Clone)]
pub struct Llama {
    pub cfg: Config,
    pub embed_tokens: Embedding,
    pub layers: Vec<Block>,
    pub norm: Tensor,
    pub lm_head: LmHead,
    pub rope: RopeTables,
    pub weight_path: WeightPath,
    device: Device,
}

impl Llama {
    pub fn from_parts(
        cfg: Config,
        embed_tokens: Embedding,
        layers: Vec<Block>,
        norm: Tensor,
        lm_head: LmHead,
        weight_path: WeightPath,
        device: &Device,
    ) -> Result<Self> {
        let rope = RopeTables::new(&cfg, device)?;
        Ok(Self {
            cfg,
            embed_tokens,
            layers,
            norm,
            lm_head,
            rope,
            weight_path,
            device: device.clone(),
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache::new(&self.cfg)
    }

    /// Logits `[b, t, vocab]` for `input_ids: [b, t]` placed after `start_pos`
    /// cached positions, with adapters on.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        start_pos: usize,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        self.forward_with(input_ids, start_pos, cache, ForwardOptions::default())
    }

    pub fn forward_with(
        &self,
        input_ids: &Tensor,
        start_pos: usize,
        cache: Option<&mut KvCache>,
        opts: ForwardOptions,
    ) -> Result<Tensor> {
        let h = self.forward_hidden(input_ids, start_pos, cache, opts)?;
        self.logits(&h)
    }

    /// The final-normed hidden states `[b, t, hidden]` (before the LM head),
    /// so callers can project only the positions they need.
    pub fn forward_hidden(
        &self,
        input_ids: &Tensor,
        start_pos: usize,
        mut cache: Option<&mut KvCache>,
        opts: ForwardOptions,
    ) -> Result<Tensor> {
        let (_b, t) = input_ids.dims2()?;
        let needed = start_pos + t;
        if needed > self.cfg.max_position_embeddings {
            return Err(ModelError::ContextOverflow {
                needed,
                max: self.cfg.max_position_embeddings,
            });
        }
        if let Some(c) = cache.as_deref() {
            if c.len() != start_pos {
                return Err(ModelError::Generation(format!(
                    "start_pos {start_pos} does not match the {} cached positions",
                    c.len()
                )));
            }
        }
        let (cos, sin) = self.rope.slice(start_pos, t)?;
        let mask = if t > 1 {
            Some(causal_mask(t, start_pos, &self.device)?)
        } else {
            None
        };
        let mut x = self.embed_tokens.lookup(input_ids)?;
        for (i, block) in self.layers.iter().enumerate() {
            let c = cache.as_deref_mut().map(|c| (c, i));
            x = self.block_forward(block, &x, &cos, &sin, mask.as_ref(), c, opts)?;
        }
        rms_norm(&x, &self.norm, self.cfg.rms_norm_eps)
    }

    /// Logits of the position after `ids`, which follow `start_pos` positions
    /// already in `cache`: generation's step. Packed weights run hone's own
    /// decode step ([`crate::decode`]), others the tensor forward pass.
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
        if self.weight_path == WeightPath::Packed {
            return crate::decode::step(self, ids, start_pos, cache, opts.use_adapters);
        }
        let input = Tensor::new(ids, &self.device)?.unsqueeze(0)?;
        let h = self.forward_hidden(&input, start_pos, Some(cache), opts)?;
        let last = h.narrow(1, ids.len() - 1, 1)?;
        Ok(self.logits(&last)?.flatten_all()?.to_vec1::<f32>()?)
    }

    /// One decode step for several sequences (see [`Llama::forward_step_batch`]),
    /// as one logits vector per sequence; packed weights run hone's own step.
    pub fn step_batch_logits(
        &self,
        ids: &[u32],
        caches: &mut [&mut KvCache],
        opts: ForwardOptions,
    ) -> Result<Vec<Vec<f32>>> {
        if self.weight_path == WeightPath::Packed {
            return crate::decode::step_batch(self, ids, caches, opts.use_adapters);
        }
        Ok(self
            .forward_step_batch(ids, caches, opts)?
            .to_vec2::<f32>()?)
    }

    /// One decode step for several sequences: `ids[i]` follows the positions
    /// already in `caches[i]`. The linear layers and the LM head run once on
    /// all `B` rows (each weight matrix is read once per step); RoPE uses each
    /// row's own position, and attention runs per sequence over its own cache.
    /// Returns logits `[B, vocab]`, with adapters as `opts` says.
    pub fn forward_step_batch(
        &self,
        ids: &[u32],
        caches: &mut [&mut KvCache],
        opts: ForwardOptions,
    ) -> Result<Tensor> {
        let b = ids.len();
        if caches.len() != b || b == 0 {
            return Err(ModelError::Generation(format!(
                "a batched step needs one cache per token, got {b} token(s) and {} cache(s)",
                caches.len()
            )));
        }
        let positions: Vec<u32> = caches.iter().map(|c| c.len() as u32).collect();
        if let Some(&p) = positions.iter().max() {
            if p as usize >= self.cfg.max_position_embeddings {
                return Err(ModelError::ContextOverflow {
                    needed: p as usize + 1,
                    max: self.cfg.max_position_embeddings,
                });
            }
        }
        let pos = Tensor::new(positions.as_slice(), &self.device)?;
        let cos = self.rope.cos.index_select(&pos, 0)?.unsqueeze(1)?;
        let sin = self.rope.sin.index_select(&pos, 0)?.unsqueeze(1)?;
        let input = Tensor::new(ids, &self.device)?.unsqueeze(1)?;
        let mut x = self.embed_tokens.lookup(&input)?;
        for (layer, block) in self.layers.iter().enumerate() {
            let eps = self.cfg.rms_norm_eps;
            let h = rms_norm(&x, &block.input_layernorm, eps)?;
            let h = self.attn_step_batch(&block.self_attn, &h, &cos, &sin, caches, layer, opts)?;
            let x1 = (x + h)?;
            let h = rms_norm(&x1, &block.post_attention_layernorm, eps)?;
            x = (&x1 + mlp_forward(&block.mlp, &h, opts)?)?;
        }
        let h = rms_norm(&x, &self.norm, self.cfg.rms_norm_eps)?;
        Ok(self.logits(&h)?.squeeze(1)?)
    }

    /// Attention of one decode step for `B` sequences, `x: [B, 1, hidden]`:
    /// projections batched, then each sequence attends over its own cache.
    #[allow(clippy::too_many_arguments)]
    fn attn_step_batch(
        &self,
        attn: &Attention,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        caches: &mut [&mut KvCache],
        layer: usize,
        opts: ForwardOptions,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let b = x.dim(0)?;
        let hd = cfg.head_dim;
        let a = opts.use_adapters;
        let heads = |y: Tensor, n: usize| -> Result<Tensor> {
            Ok(y.reshape((b, 1, n, hd))?.transpose(1, 2)?.contiguous()?)
        };
        let q = heads(attn.q_proj.forward(x, a)?, cfg.num_attention_heads)?;
        let k = heads(attn.k_proj.forward(x, a)?, cfg.num_key_value_heads)?;
        let v = heads(attn.v_proj.forward(x, a)?, cfg.num_key_value_heads)?;
        let q = rope(&q, cos, sin)?;
        let k = rope(&k, cos, sin)?;
        let mut ys = Vec::with_capacity(b);
        for (i, cache) in caches.iter_mut().enumerate() {
            let (ki, vi) = cache.append(layer, k.narrow(0, i, 1)?, v.narrow(0, i, 1)?)?;
            ys.push(grouped_attention(
                &q.narrow(0, i, 1)?,
                &ki,
                &vi,
                None,
                cfg.n_rep(),
            )?);
        }
        let y =
            Tensor::cat(&ys, 0)?
                .transpose(1, 2)?
                .reshape((b, 1, cfg.num_attention_heads * hd))?;
        attn.o_proj.forward(&y, a)
    }

    /// Projects hidden states `[.., hidden]` to logits `[.., vocab]`.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        match &self.lm_head {
            LmHead::Dense(w) => dense_matmul(hidden, w),
            LmHead::Quantized(q) => q.forward(hidden),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn block_forward(
        &self,
        block: &Block,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<(&mut KvCache, usize)>,
        opts: ForwardOptions,
    ) -> Result<Tensor> {
        let eps = self.cfg.rms_norm_eps;
        let h = rms_norm(x, &block.input_layernorm, eps)?;
        let h = self.attn_forward(&block.self_attn, &h, cos, sin, mask, cache, opts)?;
        let x = (x + h)?;
        let h = rms_norm(&x, &block.post_attention_layernorm, eps)?;
        let h = mlp_forward(&block.mlp, &h, opts)?;
        Ok((x + h)?)
    }

    #[allow(clippy::too_many_arguments)]
    fn attn_forward(
        &self,
        attn: &Attention,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<(&mut KvCache, usize)>,
        opts: ForwardOptions,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (b, t, _) = x.dims3()?;
        let hd = cfg.head_dim;
        let a = opts.use_adapters;
        let heads = |y: Tensor, n: usize| -> Result<Tensor> {
            Ok(y.reshape((b, t, n, hd))?.transpose(1, 2)?.contiguous()?)
        };
        let q = heads(attn.q_proj.forward(x, a)?, cfg.num_attention_heads)?;
        let k = heads(attn.k_proj.forward(x, a)?, cfg.num_key_value_heads)?;
        let v = heads(attn.v_proj.forward(x, a)?, cfg.num_key_value_heads)?;
        let q = rope(&q, cos, sin)?;
        let k = rope(&k, cos, sin)?;
        let (k, v) = match cache {
            Some((c, layer)) => c.append(layer, k, v)?,
            None => (k, v),
        };
        let y = grouped_attention(&q, &k, &v, mask, cfg.n_rep())?;
        let y = y
            .transpose(1, 2)?
            .reshape((b, t, cfg.num_attention_heads * hd))?;
        attn.o_proj.forward(&y, a)
    }

    /// Every linear layer with its HF module path, e.g.
    /// `model.layers.3.self_attn.q_proj`.
    pub fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut out = Vec::new();
        for (i, blk) in self.layers.iter_mut().enumerate() {
            let p = format!("model.layers.{i}");
            let at = &mut blk.self_attn;
            out.push((format!("{p}.self_attn.q_proj"), &mut at.q_proj));
            out.push((format!("{p}.self_attn.k_proj"), &mut at.k_proj));
            out.push((format!("{p}.self_attn.v_proj"), &mut at.v_proj));
            out.push((format!("{p}.self_attn.o_proj"), &mut at.o_proj));
            let m = &mut blk.mlp;
            out.push((format!("{p}.mlp.gate_proj"), &mut m.gate_proj));
            out.push((format!("{p}.mlp.up_proj"), &mut m.up_proj));
            out.push((format!("{p}.mlp.down_proj"), &mut m.down_proj));
        }
        out
    }

    /// Attaches or replaces the adapter of the linear at `module_path`
    /// (HF path as in [`Llama::linears_mut`]); the base stays loaded.
    pub fn set_adapter(&mut self, module_path: &str, adapter: Option<LoraAdapter>) -> Result<()> {
        let lin = self
            .linears_mut()
            .into_iter()
            .find(|(p, _)| p == module_path)
            .map(|(_, l)| l)
            .ok_or_else(|| ModelError::Adapter(format!("no linear layer `{module_path}`")))?;
        lin.set_adapter(adapter)
    }

    /// Removes every adapter.
    pub fn clear_adapters(&mut self) {
        for (_, l) in self.linears_mut() {
            // Removing never fails the shape check.
            let _ = l.set_adapter(None);
        }
    }
}

/// The SwiGLU MLP of one block.
pub fn mlp_forward(mlp: &Mlp, x: &Tensor, opts: ForwardOptions) -> Result<Tensor> {
    let a = opts.use_adapters;
    let gate = mlp.gate_proj.forward(x, a)?;
    let up = mlp.up_proj.forward(x, a)?;
    mlp.down_proj.forward(&swiglu(&gate, &up)?, a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouped_attention_equals_repeated_kv_attention() -> Result<()> {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1., (2, 6, 5, 8), &dev)?;
        let k = Tensor::randn(0f32, 1., (2, 2, 7, 8), &dev)?;
        let v = Tensor::randn(0f32, 1., (2, 2, 7, 8), &dev)?;
        let mask = causal_mask(5, 2, &dev)?;
        let want = attention(
            &q,
            &repeat_kv(k.clone(), 3)?.contiguous()?,
            &repeat_kv(v.clone(), 3)?.contiguous()?,
            Some(&mask),
        )?;
        let got = grouped_attention(&q, &k, &v, Some(&mask), 3)?;
        let d = (want - got)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        assert!(d < 1e-5, "{d}");
        Ok(())
    }
}
