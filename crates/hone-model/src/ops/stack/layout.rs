//! The stack's inputs and layout: which projection is which, one layer's frozen
//! weights ([`StackLayer`]), the per-pass spec ([`StackSpec`]), and the widths and
//! `theta` offsets checked once per pass ([`Shapes`]).

use candle_core::{bail, DType, Result, Tensor};

use crate::family::Activation;
use crate::linear::BaseWeight;

/// `(out, in)` of a frozen weight.
fn weight_dims(w: &BaseWeight) -> Result<(usize, usize)> {
    match w {
        BaseWeight::Dense(t) => t.dims2(),
        BaseWeight::Packed(p) => Ok(p.dims()),
    }
}

// The projections of a layer, in the order of `StackLayer::weights` and of `theta`:
// the model order of `TARGET_MODULES`, indexed by the constants below.
pub(super) use crate::linear::TARGET_MODULES as MODULES;
pub(super) const Q: usize = 0;
pub(super) const K: usize = 1;
pub(super) const V: usize = 2;
pub(super) const O: usize = 3;
pub(super) const GATE: usize = 4;
pub(super) const UP: usize = 5;
pub(super) const DOWN: usize = 6;

/// One decoder layer's frozen weights, which projections carry an adapter, and what
/// the layer's attention differs in (the block of `crate::family`, every optional step).
///
/// Norm weights are the multipliers themselves: the loader folded Gemma's `1 + w` into
/// them once, so the stack never adds an offset.
#[derive(Debug, Clone)]
pub struct StackLayer {
    /// RMSNorm weight before attention, `[hidden]`.
    pub input_norm: Tensor,
    /// RMSNorm weight before the MLP, `[hidden]` (Gemma's `pre_feedforward_layernorm`).
    pub post_norm: Tensor,
    /// Per-head RMSNorm weights of q and k, `[head_dim]` each, applied before RoPE
    /// (Qwen3, Gemma 3).
    pub qk_norm: Option<[Tensor; 2]>,
    /// RMSNorm of the attention output before its residual add, `[hidden]` (Gemma).
    pub post_attn_norm: Option<Tensor>,
    /// RMSNorm of the feed-forward output before its residual add, `[hidden]` (Gemma).
    pub post_ffn_norm: Option<Tensor>,
    /// Which of [`StackSpec::ropes`] this layer rotates q and k with.
    pub rope: usize,
    /// A sliding layer's window (see `ops::AttentionSpec::window`); `None`: full.
    pub window: Option<usize>,
    /// Frozen `[out, in]` weights in `TARGET_MODULES` order: f32 tensors, or quantized
    /// blocks (`--base-weights q8_0|native`).
    pub weights: [BaseWeight; 7],
    /// Per projection: the adapter's `(rank, scale)`, or `None` for a frozen projection.
    pub adapters: [Option<(usize, f64)>; 7],
    /// Frozen biases of q, k, v (`[out]` each; Qwen2), added after the projections.
    /// Constants: the backward is unchanged, they get no gradient.
    pub qkv_bias: Option<[Tensor; 3]>,
}

/// Shapes and per-pass inputs of [`lora_stack`](super::lora_stack).
#[derive(Debug, Clone, Copy)]
pub struct StackSpec<'a> {
    pub heads: usize,
    pub kv_heads: usize,
    /// Width of one attention head (not always `hidden / heads`: Qwen3, Gemma 3).
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    /// Multiplies `q·kᵀ` (`head_dim^-0.5`, or Gemma's `query_pre_attn_scalar^-0.5`).
    pub attention_scale: f32,
    /// The gate activation of the feed-forward.
    pub activation: Activation,
    /// The distinct RoPE tables `(cos, sin)` of the pass, each `(t, d/2)`, or
    /// `(b, t, d/2)` for packed rows; a layer picks one by [`StackLayer::rope`]
    /// (Gemma's sliding layers have their own base).
    pub ropes: &'a [(&'a Tensor, &'a Tensor)],
    /// Packed rows: `[b·t]` segment starts (see `ops::AttentionSpec`).
    pub segment_starts: Option<&'a [u32]>,
    /// LoRA dropout on every adapter's input: the probability and the pass's seed
    /// (each projection's mask seed is [`module_seed`](super::module_seed) of it).
    pub dropout: Option<(f32, u64)>,
    /// Gradient checkpointing: keep only each layer's input for the backward and
    /// recompute the layer's other activations there (one more forward per step, for
    /// activation memory of one layer instead of all). The gradients are the same bit
    /// for bit: the recomputation runs the same kernels on the same input, and dropout
    /// masks come from the seeds.
    pub checkpoint: bool,
}

/// Widths of the stack and where each adapter sits in `theta`.
#[derive(Debug, Clone)]
pub(super) struct Shapes {
    pub(super) hidden: usize,
    pub(super) intermediate: usize,
    pub(super) head_dim: usize,
    /// `heads · head_dim`: q's width and o's input width.
    pub(super) q_width: usize,
    pub(super) kv_width: usize,
    /// Per layer, per module: the offset of its `A` in `theta` (its `B` follows).
    pub(super) offsets: Vec<[usize; 7]>,
    /// Per layer: where its adapters start in `theta`.
    pub(super) layer_starts: Vec<usize>,
    pub(super) theta_len: usize,
}

impl Shapes {
    pub(super) fn of(layers: &[StackLayer], hidden: usize, spec: &StackSpec) -> Result<Self> {
        let (h, kv, head_dim) = (spec.heads, spec.kv_heads, spec.head_dim);
        if h == 0
            || kv == 0
            || !h.is_multiple_of(kv)
            || head_dim == 0
            || !head_dim.is_multiple_of(2)
        {
            bail!("lora_stack: {h} heads and {kv} key/value heads of width {head_dim} do not fit");
        }
        let (q_width, kv_width) = (h * head_dim, kv * head_dim);
        let intermediate = match layers.first() {
            Some(l) => weight_dims(&l.weights[GATE])?.0,
            None => 0,
        };
        let expected = [
            (q_width, hidden),
            (kv_width, hidden),
            (kv_width, hidden),
            (hidden, q_width),
            (intermediate, hidden),
            (intermediate, hidden),
            (hidden, intermediate),
        ];
        let (mut offsets, mut layer_starts, mut at) = (Vec::new(), Vec::new(), 0);
        for (li, l) in layers.iter().enumerate() {
            let block_norms = [Some(&l.input_norm), Some(&l.post_norm)]
                .into_iter()
                .chain([l.post_attn_norm.as_ref(), l.post_ffn_norm.as_ref()])
                .flatten();
            if block_norms.into_iter().any(|w| w.dims() != [hidden]) {
                bail!("lora_stack: layer {li} norm weights do not have width {hidden}");
            }
            if let Some(qk) = &l.qk_norm {
                if qk.iter().any(|w| w.dims() != [head_dim]) {
                    bail!("lora_stack: layer {li} q/k norm weights do not have width {head_dim}");
                }
            }
            if l.rope >= spec.ropes.len() {
                bail!(
                    "lora_stack: layer {li} asks for RoPE table {} of {}",
                    l.rope,
                    spec.ropes.len()
                );
            }
            if let Some(bias) = &l.qkv_bias {
                let widths = [q_width, kv_width, kv_width];
                if bias.iter().zip(widths).any(|(b, w)| b.dims() != [w]) {
                    bail!("lora_stack: layer {li} q/k/v biases do not fit the projections");
                }
            }
            layer_starts.push(at);
            let mut off = [0; 7];
            for m in 0..7 {
                let (out, inp) = expected[m];
                let w = &l.weights[m];
                let f32_or_blocks = match w {
                    BaseWeight::Dense(t) => matches!(t.dtype(), DType::F32 | DType::BF16),
                    BaseWeight::Packed(_) => true,
                };
                if weight_dims(w)? != (out, inp) || !f32_or_blocks {
                    bail!(
                        "lora_stack: layer {li} {} is {:?}, expected f32, bf16 or blocks [{out}, {inp}]",
                        MODULES[m],
                        weight_dims(w)?
                    );
                }
                off[m] = at;
                if let Some((r, _)) = l.adapters[m] {
                    at += r * (inp + out);
                }
            }
            offsets.push(off);
        }
        Ok(Self {
            hidden,
            intermediate,
            head_dim,
            q_width,
            kv_width,
            offsets,
            layer_starts,
            theta_len: at,
        })
    }

    /// `(out, in)` of module `m`.
    pub(super) fn io(&self, m: usize) -> (usize, usize) {
        let (hd, qw, kv, im) = (self.hidden, self.q_width, self.kv_width, self.intermediate);
        [
            (qw, hd),
            (kv, hd),
            (kv, hd),
            (hd, qw),
            (im, hd),
            (im, hd),
            (hd, im),
        ][m]
    }
}
