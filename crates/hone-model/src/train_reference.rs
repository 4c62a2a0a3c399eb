//! The training forward composed from the single-layer ops (one candle graph node per
//! norm, projection and attention): the reference that the fused decoder stack
//! ([`crate::ops::lora_stack`]) is tested against, forward and gradients.

use candle_core::Tensor;

use crate::error::{ModelError, Result};
use crate::linear::{BaseWeight, Linear};
use crate::llama::{Attention, Block, Llama, Mlp};
use crate::ops;
use crate::train_forward::{quantized_in_training, PackedLayout, TrainOptions};

impl Llama {
    /// [`Self::forward_train_hidden_packed`] composed from the single-layer ops (one
    /// candle graph node per norm, projection and attention): the reference that the fused
    /// stack is tested against.
    pub(crate) fn forward_train_hidden_unfused(
        &self,
        input_ids: &Tensor,
        packed: Option<&PackedLayout>,
        opts: TrainOptions,
    ) -> Result<Tensor> {
        let inputs = self.train_inputs(input_ids, packed, opts.use_adapters)?;
        let mut x = inputs.x;
        for (i, block) in self.layers.iter().enumerate() {
            let (cos, sin) = &inputs.ropes[self.rope_index(i)];
            let ctx = Ctx {
                opts,
                layer: i,
                cos,
                sin,
                segment_starts: packed.map(|p| p.segment_starts.as_slice()),
            };
            x = self.train_block(block, &x, &ctx)?;
        }
        Ok(ops::rms_norm(&x, &self.norm, self.cfg.rms_norm_eps)?)
    }

    /// The block of `crate::family`: every optional step is an `if` on the weights the
    /// loader gave the block (which follow the spec).
    fn train_block(&self, block: &Block, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let eps = self.cfg.rms_norm_eps;
        let h = ops::rms_norm(x, &block.input_layernorm, eps)?;
        let h = self.train_attention(&block.self_attn, &h, ctx)?;
        let x = (x + post_norm(h, &block.post_attn_norm, eps)?)?;
        let h = ops::rms_norm(&x, &block.post_attention_layernorm, eps)?;
        let h = self.train_mlp(&block.mlp, &h, ctx)?;
        Ok((x + post_norm(h, &block.post_ffn_norm, eps)?)?)
    }

    fn train_attention(&self, attn: &Attention, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let (heads, kv_heads) = (self.cfg.num_attention_heads, self.cfg.num_key_value_heads);
        let q = with_bias(train_linear(&attn.q_proj, x, ctx, 0)?, &attn.q_bias)?;
        let k = with_bias(train_linear(&attn.k_proj, x, ctx, 1)?, &attn.k_bias)?;
        let v = with_bias(train_linear(&attn.v_proj, x, ctx, 2)?, &attn.v_bias)?;
        let q = self.head_norm(q, &attn.q_norm, heads)?;
        let k = self.head_norm(k, &attn.k_norm, kv_heads)?;
        let spec = ops::AttentionSpec {
            heads,
            kv_heads,
            cos: ctx.cos,
            sin: ctx.sin,
            segment_starts: ctx.segment_starts,
            scale: Some(self.spec.attention_scale),
            window: self.spec.layer(ctx.layer).window,
        };
        let y = ops::rope_attention(&q, &k, &v, &spec)?;
        train_linear(&attn.o_proj, &y, ctx, 3)
    }

    /// RMSNorm of each of the `n` heads of `x: [b, t, n·head_dim]` when the block has a
    /// q/k norm weight (`[head_dim]`).
    fn head_norm(&self, x: Tensor, w: &Option<Tensor>, n: usize) -> Result<Tensor> {
        let Some(w) = w else {
            return Ok(x);
        };
        let (b, t, width) = x.dims3()?;
        let heads = x.reshape((b, t, n, self.cfg.head_dim))?;
        Ok(ops::rms_norm(&heads, w, self.cfg.rms_norm_eps)?.reshape((b, t, width))?)
    }

    fn train_mlp(&self, mlp: &Mlp, x: &Tensor, ctx: &Ctx) -> Result<Tensor> {
        let gate = train_linear(&mlp.gate_proj, x, ctx, 4)?;
        let up = train_linear(&mlp.up_proj, x, ctx, 5)?;
        let act = ops::glu(self.spec.activation, &gate, &up)?;
        train_linear(&mlp.down_proj, &act, ctx, 6)
    }
}

/// `y + bias` for a projection with a (frozen) bias.
fn with_bias(y: Tensor, bias: &Option<Tensor>) -> Result<Tensor> {
    match bias {
        Some(b) => Ok(y.broadcast_add(b)?),
        None => Ok(y),
    }
}

/// `norm(y, w)` when the block has the post norm `w` (Gemma), else `y`.
fn post_norm(y: Tensor, w: &Option<Tensor>, eps: f64) -> Result<Tensor> {
    match w {
        Some(w) => Ok(ops::rms_norm(&y, w, eps)?),
        None => Ok(y),
    }
}

/// Per-layer context of one pass.
struct Ctx<'a> {
    opts: TrainOptions,
    layer: usize,
    /// This layer's RoPE tables (sliding layers may have their own).
    cos: &'a Tensor,
    sin: &'a Tensor,
    /// Packed batches: where each token's example starts in its row.
    segment_starts: Option<&'a [u32]>,
}

/// `frozen_linear(x, W) + lora(dropout(x))`; `module` numbers the projection within its
/// layer so that every dropout mask has its own seed.
fn train_linear(lin: &Linear, x: &Tensor, ctx: &Ctx, module: u64) -> Result<Tensor> {
    let BaseWeight::Dense(w) = lin.base() else {
        return Err(quantized_in_training());
    };
    let Some(ad) = lin.adapter().filter(|_| ctx.opts.use_adapters) else {
        return Ok(ops::frozen_linear(x, w)?);
    };
    let p = ctx.opts.lora_dropout;
    if !(0.0..1.0).contains(&p) {
        return Err(ModelError::Adapter(format!(
            "lora dropout must be in [0, 1), got {p}"
        )));
    }
    let dropout = (p > 0.0).then(|| ops::Dropout {
        p: p as f32,
        seed: ops::module_seed(ctx.opts.dropout_seed, ctx.layer, module as usize),
    });
    Ok(ops::lora_linear(x, w, &ad.a, &ad.b, ad.scale, dropout)?)
}
