//! The tensor forward pass of a [`Llama`] on candle (candle `llama.rs` style:
//! the KV cache is passed in from outside): the numerical reference, scoring
//! (any weight path), and generation's step on f32 weights. Training runs its
//! own pass with gradients (`crate::train_forward`), serving the packed
//! decode step (`crate::decode`).
//!
//! `rms_norm`, `rope`, `softmax` and `swiglu` are small free functions so the
//! trainer can swap in differentiable custom ops.

use candle_core::{Device, Tensor, D};

use crate::config::Config;
use crate::error::{ModelError, Result};
use crate::llama::{Attention, Block, ForwardOptions, Llama, Mlp};

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

/// Per-layer keys and values of the positions seen so far, as candle
/// tensors `[b, kv_heads, positions, head_dim]`: the tensor forward pass's
/// cache (the packed decode step has its own, [`crate::decode::PackedKvCache`]).
#[derive(Debug, Clone)]
pub struct TensorKvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl TensorKvCache {
    pub fn new(cfg: &Config) -> Self {
        Self {
            layers: vec![None; cfg.num_hidden_layers],
        }
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .and_then(|(k, _)| k.dim(2).ok())
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn clear(&mut self) {
        self.layers.iter_mut().for_each(|l| *l = None);
    }

    /// Appends a layer's new keys and values; returns all of that layer's.
    fn append(&mut self, layer: usize, k: Tensor, v: Tensor) -> Result<(Tensor, Tensor)> {
        let slot = self
            .layers
            .get_mut(layer)
            .ok_or_else(|| ModelError::Generation("KV cache built for another model".into()))?;
        let kv = match slot.take() {
            Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
            None => (k, v),
        };
        *slot = Some(kv.clone());
        Ok(kv)
    }
}

impl Llama {
    /// Logits `[b, t, vocab]` for `input_ids: [b, t]` placed after `start_pos`
    /// cached positions, with adapters on.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        start_pos: usize,
        cache: Option<&mut TensorKvCache>,
    ) -> Result<Tensor> {
        self.forward_with(input_ids, start_pos, cache, ForwardOptions::default())
    }

    pub fn forward_with(
        &self,
        input_ids: &Tensor,
        start_pos: usize,
        cache: Option<&mut TensorKvCache>,
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
        mut cache: Option<&mut TensorKvCache>,
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
            Some(causal_mask(t, start_pos, self.device())?)
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

    /// One decode step for several sequences: `ids[i]` follows the positions
    /// already in `caches[i]`. The linear layers and the LM head run once on
    /// all `B` rows (each weight matrix is read once per step); RoPE uses each
    /// row's own position, and attention runs per sequence over its own cache.
    /// Returns logits `[B, vocab]`, with adapters as `opts` says.
    pub fn forward_step_batch(
        &self,
        ids: &[u32],
        caches: &mut [&mut TensorKvCache],
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
        let pos = Tensor::new(positions.as_slice(), self.device())?;
        let cos = self.rope.cos.index_select(&pos, 0)?.unsqueeze(1)?;
        let sin = self.rope.sin.index_select(&pos, 0)?.unsqueeze(1)?;
        let input = Tensor::new(ids, self.device())?.unsqueeze(1)?;
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
        caches: &mut [&mut TensorKvCache],
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

    #[allow(clippy::too_many_arguments)]
    fn block_forward(
        &self,
        block: &Block,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<(&mut TensorKvCache, usize)>,
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
        cache: Option<(&mut TensorKvCache, usize)>,
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
