//! Tensor names: each weight's [`TensorRole`], its name in HF safetensors
//! and in llama.cpp's GGUF, its shape, and which roles a model has.

use super::{DecoderSpec, Family, RopeScaling, WeightFormat};

/// A weight of the model, named independently of the file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TensorRole {
    Embed,
    LmHead,
    FinalNorm,
    /// llama.cpp's Llama 3 RoPE divisors (GGUF only).
    RopeFreqs,
    AttnNorm,
    Q,
    K,
    V,
    O,
    QBias,
    KBias,
    VBias,
    QNorm,
    KNorm,
    /// Norm of the attention output before the residual add (Gemma).
    PostAttnNorm,
    /// Norm in front of the feed-forward (Llama's `post_attention_layernorm`,
    /// Gemma's `pre_feedforward_layernorm`).
    FfnNorm,
    /// Norm of the feed-forward output before the residual add (Gemma).
    PostFfnNorm,
    Gate,
    Up,
    Down,
}

impl TensorRole {
    /// Every role.
    pub const ALL: [TensorRole; 20] = {
        use TensorRole::*;
        [
            Embed,
            LmHead,
            FinalNorm,
            RopeFreqs,
            AttnNorm,
            Q,
            K,
            V,
            O,
            QBias,
            KBias,
            VBias,
            QNorm,
            KNorm,
            PostAttnNorm,
            FfnNorm,
            PostFfnNorm,
            Gate,
            Up,
            Down,
        ]
    };

    /// llama.cpp's GGUF name of the HF tensor `hf` of a `family` model
    /// (`model.layers.3.self_attn.o_proj.weight` → `blk.3.attn_output.weight`);
    /// `None` if `hf` is not one of that family's tensor names.
    pub fn hf_to_gguf(family: Family, hf: &str) -> Option<String> {
        let (layer, leaf) = match hf.strip_prefix("model.layers.") {
            Some(rest) => {
                let (idx, leaf) = rest.split_once('.')?;
                (Some(idx.parse::<usize>().ok()?), leaf)
            }
            None => (None, hf),
        };
        let role = Self::ALL
            .into_iter()
            .find(|r| r.is_per_layer() == layer.is_some() && r.hf(family) == Some(leaf))?;
        Some(match layer {
            Some(i) => format!("blk.{i}.{}", role.gguf()),
            None => role.gguf().to_string(),
        })
    }

    /// Whether the tensor is one per layer (`model.layers.N.` / `blk.N.`).
    pub fn is_per_layer(self) -> bool {
        !matches!(
            self,
            TensorRole::Embed | TensorRole::LmHead | TensorRole::FinalNorm | TensorRole::RopeFreqs
        )
    }

    /// Whether the tensor is an RMSNorm weight (gets
    /// [`NormSpec::weight_offset`](super::NormSpec::weight_offset)).
    pub fn is_norm(self) -> bool {
        matches!(
            self,
            TensorRole::FinalNorm
                | TensorRole::AttnNorm
                | TensorRole::QNorm
                | TensorRole::KNorm
                | TensorRole::PostAttnNorm
                | TensorRole::FfnNorm
                | TensorRole::PostFfnNorm
        )
    }

    /// The name inside a layer (HF), or the whole name for model-level tensors.
    fn hf(self, family: Family) -> Option<&'static str> {
        let gemma = family == Family::Gemma3;
        Some(match self {
            TensorRole::Embed => "model.embed_tokens.weight",
            TensorRole::LmHead => "lm_head.weight",
            TensorRole::FinalNorm => "model.norm.weight",
            TensorRole::RopeFreqs => return None,
            TensorRole::AttnNorm => "input_layernorm.weight",
            TensorRole::Q => "self_attn.q_proj.weight",
            TensorRole::K => "self_attn.k_proj.weight",
            TensorRole::V => "self_attn.v_proj.weight",
            TensorRole::O => "self_attn.o_proj.weight",
            TensorRole::QBias => "self_attn.q_proj.bias",
            TensorRole::KBias => "self_attn.k_proj.bias",
            TensorRole::VBias => "self_attn.v_proj.bias",
            TensorRole::QNorm => "self_attn.q_norm.weight",
            TensorRole::KNorm => "self_attn.k_norm.weight",
            // The same HF name means different norms in the two layouts.
            TensorRole::PostAttnNorm if gemma => "post_attention_layernorm.weight",
            TensorRole::PostAttnNorm => return None,
            TensorRole::FfnNorm if gemma => "pre_feedforward_layernorm.weight",
            TensorRole::FfnNorm => "post_attention_layernorm.weight",
            TensorRole::PostFfnNorm => "post_feedforward_layernorm.weight",
            TensorRole::Gate => "mlp.gate_proj.weight",
            TensorRole::Up => "mlp.up_proj.weight",
            TensorRole::Down => "mlp.down_proj.weight",
        })
    }

    /// llama.cpp's name (the part after `blk.N.` for per-layer tensors).
    pub(super) fn gguf(self) -> &'static str {
        match self {
            TensorRole::Embed => "token_embd.weight",
            TensorRole::LmHead => "output.weight",
            TensorRole::FinalNorm => "output_norm.weight",
            TensorRole::RopeFreqs => "rope_freqs.weight",
            TensorRole::AttnNorm => "attn_norm.weight",
            TensorRole::Q => "attn_q.weight",
            TensorRole::K => "attn_k.weight",
            TensorRole::V => "attn_v.weight",
            TensorRole::O => "attn_output.weight",
            TensorRole::QBias => "attn_q.bias",
            TensorRole::KBias => "attn_k.bias",
            TensorRole::VBias => "attn_v.bias",
            TensorRole::QNorm => "attn_q_norm.weight",
            TensorRole::KNorm => "attn_k_norm.weight",
            TensorRole::PostAttnNorm => "post_attention_norm.weight",
            TensorRole::FfnNorm => "ffn_norm.weight",
            TensorRole::PostFfnNorm => "post_ffw_norm.weight",
            TensorRole::Gate => "ffn_gate.weight",
            TensorRole::Up => "ffn_up.weight",
            TensorRole::Down => "ffn_down.weight",
        }
    }
}

impl DecoderSpec {
    /// The per-layer weights this model has, in block order.
    pub fn layer_roles(&self) -> Vec<TensorRole> {
        use TensorRole::*;
        let mut roles = vec![AttnNorm, Q, K, V];
        if self.qkv_bias {
            roles.extend([QBias, KBias, VBias]);
        }
        if self.qk_norm {
            roles.extend([QNorm, KNorm]);
        }
        roles.push(O);
        if self.post_attention_norm {
            roles.push(PostAttnNorm);
        }
        roles.extend([FfnNorm, Gate, Up, Down]);
        if self.post_ffn_norm {
            roles.push(PostFfnNorm);
        }
        roles
    }

    /// The model-level weights this model has in its file.
    pub fn model_roles(&self) -> Vec<TensorRole> {
        let mut roles = vec![TensorRole::Embed, TensorRole::FinalNorm];
        if !self.tie_word_embeddings {
            roles.push(TensorRole::LmHead);
        }
        if self.format == WeightFormat::Gguf
            && matches!(self.rope_full.scaling, RopeScaling::FreqFactors(_))
        {
            roles.push(TensorRole::RopeFreqs);
        }
        roles
    }

    /// The tensor's name in this spec's file format; `layer` is required for
    /// per-layer roles. `None` when the role has no tensor in this family and
    /// format (Llama has no post-attention norm; HF has no `rope_freqs`).
    pub fn tensor_name(&self, role: TensorRole, layer: Option<usize>) -> Option<String> {
        self.tensor_name_in(self.format, role, layer)
    }

    /// As [`Self::tensor_name`], for another file format (merge writes HF
    /// names for a model read from GGUF).
    pub fn tensor_name_in(
        &self,
        format: WeightFormat,
        role: TensorRole,
        layer: Option<usize>,
    ) -> Option<String> {
        let (leaf, prefix) = match format {
            WeightFormat::HfSafetensors => (role.hf(self.family)?, "model.layers"),
            WeightFormat::Gguf => (role.gguf(), "blk"),
        };
        match (role.is_per_layer(), layer) {
            (true, Some(i)) => Some(format!("{prefix}.{i}.{leaf}")),
            (true, None) => None,
            (false, _) => Some(leaf.to_string()),
        }
    }

    /// The tensor's shape in HF order (`[out, in]` for projections; candle's
    /// GGUF reader reports GGUF tensors in the same order).
    pub fn tensor_shape(&self, role: TensorRole) -> Vec<usize> {
        use TensorRole::*;
        let d = &self.dims;
        let (q, kv) = (d.num_heads * d.head_dim, d.num_kv_heads * d.head_dim);
        match role {
            Embed | LmHead => vec![d.vocab_size, d.hidden_size],
            FinalNorm | AttnNorm | PostAttnNorm | FfnNorm | PostFfnNorm => vec![d.hidden_size],
            RopeFreqs => vec![d.head_dim / 2],
            Q => vec![q, d.hidden_size],
            K | V => vec![kv, d.hidden_size],
            O => vec![d.hidden_size, q],
            QBias => vec![q],
            KBias | VBias => vec![kv],
            QNorm | KNorm => vec![d.head_dim],
            Gate | Up => vec![d.intermediate_size, d.hidden_size],
            Down => vec![d.hidden_size, d.intermediate_size],
        }
    }

    /// Every tensor the model's file must hold, with its name and shape, in
    /// model-then-layer order: what a loader checks before reading.
    pub fn expected_tensors(&self) -> Vec<(String, TensorRole, Vec<usize>)> {
        let mut out = Vec::new();
        let mut push = |role: TensorRole, layer: Option<usize>| {
            if let Some(name) = self.tensor_name(role, layer) {
                out.push((name, role, self.tensor_shape(role)));
            }
        };
        for role in self.model_roles() {
            push(role, None);
        }
        for i in 0..self.dims.num_layers {
            for role in self.layer_roles() {
                push(role, Some(i));
            }
        }
        out
    }
}
