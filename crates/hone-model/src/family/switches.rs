//! The optional steps of the block a model uses ([`Switch`]), so that a path
//! which does not implement one yet refuses the model with a clear error
//! instead of computing a wrong answer.

use super::{Activation, DecoderSpec, RopeScaling};
use crate::error::ModelError;

/// An optional step of the block (see the module doc of [`super`]) beyond
/// plain Llama's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Switch {
    QkvBias,
    QkNorm,
    PostAttentionNorm,
    PostFfnNorm,
    GeluTanh,
    EmbeddingScale,
    /// `q·kᵀ` scaled by something other than `head_dim^-0.5`.
    AttentionScale,
    FinalLogitSoftcap,
    SlidingWindow,
    /// Sliding layers with their own RoPE.
    PerLayerRope,
    /// RoPE scaled (linear, llama3, `rope_freqs`): the inverse frequencies
    /// differ from `theta`'s default ones.
    RopeScaling,
}

impl Switch {
    /// What a user reads in an error.
    pub fn describe(self) -> &'static str {
        match self {
            Switch::QkvBias => "q/k/v bias",
            Switch::QkNorm => "q/k norms",
            Switch::PostAttentionNorm => "post-attention norm",
            Switch::PostFfnNorm => "post-feed-forward norm",
            Switch::GeluTanh => "GELU-tanh activation",
            Switch::EmbeddingScale => "embedding scale",
            Switch::AttentionScale => "custom attention scale",
            Switch::FinalLogitSoftcap => "final logit softcap",
            Switch::SlidingWindow => "sliding-window attention",
            Switch::PerLayerRope => "per-layer RoPE",
            Switch::RopeScaling => "RoPE scaling",
        }
    }
}

impl DecoderSpec {
    /// The switches this model uses, in block order.
    pub fn switches(&self) -> Vec<Switch> {
        let default_scale = (self.dims.head_dim as f32).powf(-0.5);
        let has_sliding = self.layer_kinds.contains(&super::LayerKind::Sliding);
        let sliding = self.sliding_window.is_some() && has_sliding;
        let per_layer_rope = self.rope_sliding.is_some() && has_sliding;
        [
            (Switch::EmbeddingScale, self.embedding_scale != 1.0),
            (Switch::QkvBias, self.qkv_bias),
            (Switch::QkNorm, self.qk_norm),
            (
                Switch::RopeScaling,
                !matches!(self.rope_full.scaling, RopeScaling::None),
            ),
            (Switch::PerLayerRope, per_layer_rope),
            (
                Switch::AttentionScale,
                (self.attention_scale - default_scale).abs() > 1e-7 * default_scale,
            ),
            (Switch::SlidingWindow, sliding),
            (Switch::PostAttentionNorm, self.post_attention_norm),
            (Switch::GeluTanh, self.activation == Activation::GeluTanh),
            (Switch::PostFfnNorm, self.post_ffn_norm),
            (
                Switch::FinalLogitSoftcap,
                self.final_logit_softcap.is_some(),
            ),
        ]
        .into_iter()
        .filter(|(_, used)| *used)
        .map(|(s, _)| s)
        .collect()
    }

    /// An error naming the switches of this model that `path` (e.g. "packed
    /// decode") does not implement, with what to use instead; `Ok` when it
    /// implements all the model uses.
    pub fn require(
        &self,
        path: &str,
        implemented: &[Switch],
        instead: &str,
    ) -> Result<(), ModelError> {
        let missing: Vec<&str> = self
            .switches()
            .into_iter()
            .filter(|s| !implemented.contains(s))
            .map(Switch::describe)
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(ModelError::Unsupported(format!(
            "{path} does not support {} yet ({}); {instead}",
            missing.join(", "),
            self.family.hf_model_type()
        )))
    }
}
