//! The tensor forward pass of a [`Llama`] of any family on candle (the one
//! block of [`crate::family`], every switch of its spec honoured) (candle `llama.rs` style:
//! the KV cache is passed in from outside): the numerical reference, scoring
//! (any weight path), and generation's step on f32 weights. Training runs its
//! own pass with gradients (`crate::train_forward`), serving the packed
//! decode step (`crate::decode`).
//!
//! `rms_norm`, `rope`, `softmax` and `swiglu` are small free functions so the
//! trainer can swap in differentiable custom ops.

use candle_core::{Device, Tensor, D};

use crate::error::{ModelError, Result};
use crate::family::{Activation, LayerKind};
pub use crate::kv_cache::TensorKvCache;
use crate::linear::Linear;
use crate::llama::{Attention, Block, ForwardOptions, Llama, Mlp, RopeTables};

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
/// with an additive `mask: [t, T]` (0 or -inf), scores scaled by `d^-0.5`.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let scale = 1.0 / (q.dim(D::Minus1)? as f64).sqrt();
    scaled_attention(q, k, v, mask, scale)
}

/// [`attention`] with the scores scaled by `scale` (the spec's
/// `attention_scale`, e.g. Gemma's `query_pre_attn_scalar^-0.5`).
pub fn scaled_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
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
    let scale = 1.0 / (q.dim(D::Minus1)? as f64).sqrt();
    grouped_attention_scaled(q, k, v, mask, n_rep, scale)
}

/// [`grouped_attention`] with the scores scaled by `scale`.
pub fn grouped_attention_scaled(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    n_rep: usize,
    scale: f64,
) -> Result<Tensor> {
    let (k, v) = (&matmul_operand(k)?, &matmul_operand(v)?);
    if n_rep == 1 {
        return scaled_attention(q, k, v, mask, scale);
    }
    let (b, h, t, d) = q.dims4()?;
    let kv = h / n_rep;
    let q = q.reshape((b, kv, n_rep * t, d))?;
    let mask = match mask {
        Some(m) => Some(m.repeat((n_rep, 1))?),
        None => None,
    };
    let y = scaled_attention(&q, k, v, mask.as_ref(), scale)?;
    Ok(y.reshape((b, h, t, d))?)
}

/// `x: [b, h, n, d]` as a matmul operand: itself when candle's batched
/// matmul can read its layout (rows of unit stride, batches a fixed stride
/// apart, as in a view of the KV cache's filled part), else a contiguous
/// copy. Views of the cache are thus never copied.
fn matmul_operand(x: &Tensor) -> Result<Tensor> {
    let (b, h, _, _) = x.dims4()?;
    let st = x.stride();
    if st[3] == 1 && (st[0] == st[1] * h || b == 1 || h == 1) {
        Ok(x.clone())
    } else {
        Ok(x.contiguous()?)
    }
}

/// The causal mask for `t` new positions after `start_pos` cached ones.
pub fn causal_mask(t: usize, start_pos: usize, device: &Device) -> Result<Tensor> {
    window_mask(t, start_pos, None, device)
}

/// The causal mask for `t` new positions after `start_pos` cached ones; with
/// `window = Some(w)`, the query at `p` sees keys `p - w + 1 ..= p` only (a
/// sliding layer, [`crate::family::LayerSpec::window`]).
pub fn window_mask(
    t: usize,
    start_pos: usize,
    window: Option<usize>,
    device: &Device,
) -> Result<Tensor> {
    let total = start_pos + t;
    let w = window.unwrap_or(usize::MAX);
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| {
            (0..total).map(move |j| {
                let p = start_pos + i;
                if j > p || p - j >= w {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Ok(Tensor::from_vec(mask, (t, total), device)?)
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
        self.logits_with(&h, opts.use_adapters)
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
        let full = self.rope.slice(start_pos, t)?;
        let sliding = match &self.rope_sliding {
            Some(r) => Some(r.slice(start_pos, t)?),
            None => None,
        };
        let full_mask = (t > 1)
            .then(|| causal_mask(t, start_pos, self.device()))
            .transpose()?;
        let sliding_mask = match self.spec.sliding_window {
            Some(w) if t > 1 || start_pos + t > w => {
                Some(window_mask(t, start_pos, Some(w), self.device())?)
            }
            _ => None,
        };
        let mut x = self.embed(input_ids, opts.use_adapters)?;
        for (i, block) in self.layers.iter().enumerate() {
            let l = self.spec.layer(i);
            let (cos, sin) = match (l.kind, &sliding) {
                (LayerKind::Sliding, Some(r)) => r,
                _ => &full,
            };
            let mask = match l.window {
                Some(_) => sliding_mask.as_ref(),
                None => full_mask.as_ref(),
            };
            let c = cache.as_deref_mut().map(|c| (c, i));
            x = self.block_forward(block, &x, cos, sin, mask, c, opts)?;
        }
        rms_norm(&x, &self.norm, self.cfg.rms_norm_eps)
    }

    /// The embedding rows of `ids: [b, t]` (the adapter's token rows put in when
    /// `use_adapters`), times the spec's embedding scale.
    pub(crate) fn embed(&self, ids: &Tensor, use_adapters: bool) -> Result<Tensor> {
        let x = self.embed_tokens.lookup(ids)?;
        let x = match self.active_token_rows(use_adapters) {
            Some(rows) => rows.patch_embeddings(&x, ids)?,
            None => x,
        };
        let s = self.spec.embedding_scale;
        if s == 1.0 {
            Ok(x)
        } else {
            Ok((x * s as f64)?)
        }
    }

    /// One residual block around `attend` (the attention of whichever pass
    /// calls it), with the spec's post norms and activation.
    fn residual_block(
        &self,
        block: &Block,
        x: &Tensor,
        attend: impl FnOnce(&Tensor) -> Result<Tensor>,
        opts: ForwardOptions,
    ) -> Result<Tensor> {
        let eps = self.cfg.rms_norm_eps;
        let h = attend(&rms_norm(x, &block.input_layernorm, eps)?)?;
        let h = post_norm(h, block.post_attn_norm.as_ref(), eps)?;
        let x = (x + h)?;
        let h = rms_norm(&x, &block.post_attention_layernorm, eps)?;
        let h = mlp_forward(&block.mlp, &h, self.spec.activation, opts)?;
        let h = post_norm(h, block.post_ffn_norm.as_ref(), eps)?;
        Ok((x + h)?)
    }

    /// q, k, v of `x: [b, t, hidden]` as heads `[b, heads, t, head_dim]`:
    /// projections, biases, per-head q/k norms and RoPE (`cos`, `sin` as
    /// [`rope`] takes them).
    fn project_qkv(
        &self,
        attn: &Attention,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        opts: ForwardOptions,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let cfg = &self.cfg;
        let (b, t, _) = x.dims3()?;
        let a = opts.use_adapters;
        let eps = cfg.rms_norm_eps;
        let heads = |lin: &Linear, bias: &Option<Tensor>, n: usize| -> Result<Tensor> {
            let mut y = lin.forward(x, a)?;
            if let Some(bias) = bias {
                y = y.broadcast_add(bias)?;
            }
            Ok(y.reshape((b, t, n, cfg.head_dim))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let mut q = heads(&attn.q_proj, &attn.q_bias, cfg.num_attention_heads)?;
        let mut k = heads(&attn.k_proj, &attn.k_bias, cfg.num_key_value_heads)?;
        let v = heads(&attn.v_proj, &attn.v_bias, cfg.num_key_value_heads)?;
        if let Some(w) = &attn.q_norm {
            q = rms_norm(&q, w, eps)?;
        }
        if let Some(w) = &attn.k_norm {
            k = rms_norm(&k, w, eps)?;
        }
        Ok((rope(&q, cos, sin)?, rope(&k, cos, sin)?, v))
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
        let gather = |r: &RopeTables| -> Result<(Tensor, Tensor)> {
            Ok((
                r.cos.index_select(&pos, 0)?.unsqueeze(1)?,
                r.sin.index_select(&pos, 0)?.unsqueeze(1)?,
            ))
        };
        let full = gather(&self.rope)?;
        let sliding = self.rope_sliding.as_ref().map(gather).transpose()?;
        let input = Tensor::new(ids, self.device())?.unsqueeze(1)?;
        let mut x = self.embed(&input, opts.use_adapters)?;
        for (layer, block) in self.layers.iter().enumerate() {
            let (cos, sin) = match (self.spec.layer(layer).kind, &sliding) {
                (LayerKind::Sliding, Some(r)) => r,
                _ => &full,
            };
            x = self.residual_block(
                block,
                &x,
                |h| self.attn_step_batch(&block.self_attn, h, cos, sin, caches, layer, opts),
                opts,
            )?;
        }
        let h = rms_norm(&x, &self.norm, self.cfg.rms_norm_eps)?;
        Ok(self.logits_with(&h, opts.use_adapters)?.squeeze(1)?)
    }

    /// Attention of one decode step for `B` sequences, `x: [B, 1, hidden]`:
    /// projections batched, then each sequence attends over its own cache
    /// (its last `window` keys on a sliding layer).
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
        let (q, k, v) = self.project_qkv(attn, x, cos, sin, opts)?;
        let window = self.spec.layer(layer).window;
        let mut ys = Vec::with_capacity(b);
        for (i, cache) in caches.iter_mut().enumerate() {
            let (mut ki, mut vi) = cache.append(layer, k.narrow(0, i, 1)?, v.narrow(0, i, 1)?)?;
            let n = ki.dim(2)?;
            if let Some(w) = window.filter(|&w| n > w) {
                ki = ki.narrow(2, n - w, w)?;
                vi = vi.narrow(2, n - w, w)?;
            }
            ys.push(grouped_attention_scaled(
                &q.narrow(0, i, 1)?,
                &ki,
                &vi,
                None,
                cfg.n_rep(),
                self.spec.attention_scale as f64,
            )?);
        }
        let y = Tensor::cat(&ys, 0)?.transpose(1, 2)?.reshape((
            b,
            1,
            cfg.num_attention_heads * cfg.head_dim,
        ))?;
        attn.o_proj.forward(&y, opts.use_adapters)
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
        self.residual_block(
            block,
            x,
            |h| self.attn_forward(&block.self_attn, h, cos, sin, mask, cache, opts),
            opts,
        )
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
        let (q, k, v) = self.project_qkv(attn, x, cos, sin, opts)?;
        let (k, v) = match cache {
            Some((c, layer)) => c.append(layer, k, v)?,
            None => (k, v),
        };
        let scale = self.spec.attention_scale as f64;
        let y = grouped_attention_scaled(&q, &k, &v, mask, cfg.n_rep(), scale)?;
        let y = y
            .transpose(1, 2)?
            .reshape((b, t, cfg.num_attention_heads * cfg.head_dim))?;
        attn.o_proj.forward(&y, opts.use_adapters)
    }
}

/// `norm(h, w)` when the block has that norm (Gemma's post norms), else `h`.
fn post_norm(h: Tensor, weight: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    match weight {
        Some(w) => rms_norm(&h, w, eps),
        None => Ok(h),
    }
}

/// The gated MLP of one block: `act(x·Gate) ⊙ (x·Up) · Down`.
pub fn mlp_forward(
    mlp: &Mlp,
    x: &Tensor,
    activation: Activation,
    opts: ForwardOptions,
) -> Result<Tensor> {
    let a = opts.use_adapters;
    let gate = mlp.gate_proj.forward(x, a)?;
    let up = mlp.up_proj.forward(x, a)?;
    let h = match activation {
        Activation::Silu => swiglu(&gate, &up)?,
        // candle's `gelu` is the tanh approximation (`gelu_pytorch_tanh`).
        Activation::GeluTanh => (gate.gelu()? * up)?,
    };
    mlp.down_proj.forward(&h, a)
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
