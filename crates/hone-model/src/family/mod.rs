//! What the supported model families differ in, as data: a [`DecoderSpec`]
//! parsed once from an HF `config.json` or from GGUF metadata.
//!
//! hone runs one decoder. Llama, Qwen2/2.5, Qwen3 and Gemma 3 share its shape
//! (pre-norm residual blocks, grouped-query attention with RoPE, a gated
//! feed-forward) and differ only in switches and constants: the norm's scale
//! convention and ε, extra norms, q/k/v biases, per-head q/k norms, the
//! activation, the embedding and attention scales, RoPE base and scaling per
//! layer, sliding-window layers, a final-logit softcap, tied embeddings, and the tensor
//! names of each file format. This module holds those differences and nothing
//! else; no forward pass lives here.
//!
//! # One block, written against the spec
//!
//! For layer `i` (`l = spec.layer(i)`), with `norm(x, w) = x̂ · (w + offset)`,
//! `x̂ = x / sqrt(mean(x²) + eps)` and `offset = spec.norm.weight_offset`:
//!
//! ```text
//! h  = embed[ids] · embedding_scale
//! a  = norm(h, AttnNorm)
//! q,k,v = a·Q (+QBias), a·K (+KBias), a·V (+VBias)        if qkv_bias
//! q,k = norm(q_head, QNorm), norm(k_head, KNorm)           if qk_norm (per head, over head_dim)
//! q,k = rope(q, k, l.rope.inv_freq)                        (HF "rotate half" layout)
//! s  = q·kᵀ · attention_scale
//! mask: causal; with l.window = Some(w), the query at p sees keys p-w+1 ..= p only
//! o  = softmax(s)·v·O;  o = norm(o, PostAttnNorm)          if post_attention_norm
//! h  = h + o
//! f  = norm(h, FfnNorm); f = act(f·Gate) ⊙ (f·Up) · Down;  f = norm(f, PostFfnNorm) if post_ffn_norm
//! h  = h + f
//! logits = norm(h, FinalNorm)·LmHead (Embed when tied);    cap·tanh(logits/cap) if final_logit_softcap
//! ```
//!
//! # How each path reads it
//!
//! Wired today: loading, the tensor forward pass, the packed decode step and
//! the fused training stack honour every switch; merge writes every family.
//! A path refuses a model using a [`Switch`] it lacks
//! ([`DecoderSpec::require`]), never computing it wrong.
//!
//! - **Loading** (`load.rs`) asks [`DecoderSpec::tensor_name`] for every
//!   [`TensorRole`] that [`DecoderSpec::layer_roles`] / [`DecoderSpec::model_roles`]
//!   list, adds [`NormSpec::weight_offset`] to every norm weight *once*, and
//!   un-permutes the Q/K rows only when [`DecoderSpec::qk_rows`] is
//!   [`QkRows::Interleaved`] (llama.cpp's Llama files). After loading, every
//!   norm weight is the multiplier itself, so no forward path knows about
//!   Gemma's `(1 + w)`: the offset is applied in exactly one place and never
//!   twice (llama.cpp already stored `1 + w` in Gemma GGUFs, so their offset
//!   is 0; see [`NormSpec`]).
//! - **The tensor forward** (`llama.rs`) builds one RoPE table per distinct
//!   [`RopeSpec`] from its precomputed [`RopeSpec::inv_freq`], and per layer
//!   takes the table and window of [`DecoderSpec::layer`]; the optional steps
//!   of the block above are `if spec.x` branches in the one block function.
//! - **The packed decode step** (`decode/step.rs`) reads the same flags; k is
//!   cached after its q/k norm and RoPE, and a sliding layer masks (or drops
//!   from its KV cache) keys more than `window - 1` positions behind the query.
//! - **The fused training stack** (`ops::stack`) keeps its kernels: RMSNorm
//!   takes the folded weights, `ops::glu` computes SwiGLU or GeGLU as
//!   [`DecoderSpec::activation`] says, biases are added after the frozen
//!   q/k/v matmuls, q/k norms are the same RMSNorm kernel over rows of
//!   `head_dim`, attention takes the layer's RoPE table, window and scale,
//!   and the LM-head loss takes the softcap. Every step has its backward for
//!   the LoRA gradients; the frozen biases and embedding scale need none.
//! - **Merge** (`merge.rs`) writes HF names from [`DecoderSpec::tensor_name_in`]
//!   with [`WeightFormat::HfSafetensors`] (also for a model read from GGUF),
//!   writes norm weights back in HF's convention (the multiplier minus 1 for
//!   Gemma), and keeps biases and extra norms untouched. Its `config.json` is
//!   written from the spec and read back with [`DecoderSpec::from_hf_config`]:
//!   a spec the family's config cannot express (llama.cpp's `rope_freqs`
//!   divisors) is refused with an error naming what it cannot express.
//!
//! # Sources
//!
//! The HF field names and defaults follow transformers' `LlamaConfig`,
//! `Qwen2Config`, `Qwen3Config` and `Gemma3TextConfig` (both the 4.x
//! `rope_theta`/`rope_scaling`/`rope_local_base_freq` keys and the 5.x
//! `rope_parameters` key). The GGUF keys and tensor names follow llama.cpp
//! (`convert_hf_to_gguf.py`, `llama-model.cpp`): Llama 3 scaling arrives as the
//! tensor `rope_freqs.weight`, Gemma 3's sliding pattern is llama.cpp's fixed
//! 5-local-1-global unless the file says otherwise, and its local RoPE base is
//! llama.cpp's fixed 10 000.
//!
//! # Reference data
//!
//! `scripts/make_family_vectors.py` (torch 2.15.0, transformers 5.25.0,
//! gguf 0.19.0) made `testdata/families/`: a tiny random model per family
//! variant with transformers' f32 logits for every position (hone's must match
//! within 1e-4), and the RoPE inverse frequencies the tests below compare
//! against; the script also recomputes each tiny model's logits from the block
//! above and stops unless they match transformers within 1e-5. It made
//! `testdata/real/` too, for the real Qwen2.5-Coder-0.5B and gemma-3-270m
//! GGUFs (see `testdata/families/README.md`).
//!
//! # Layout
//!
//! - this file: [`Family`], [`DecoderSpec`] and its small types, and the
//!   checks every parsed spec passes;
//! - `hf.rs`: [`DecoderSpec::from_hf_config`], `config.json` in its
//!   transformers 4.x and 5.x forms;
//! - `gguf.rs`: [`DecoderSpec::from_gguf`], llama.cpp's GGUF metadata;
//! - `rope.rs`: [`RopeSpec`], RoPE inverse frequencies and their
//!   linear / llama3 / `rope_freqs` scaling;
//! - `names.rs`: [`TensorRole`], each weight's HF and GGUF name and shape;
//! - `switches.rs`: [`Switch`], the optional steps a model uses, so a path
//!   that lacks one refuses the model instead of computing it wrong;
//! - `tests.rs`: the tests of all of the above.

mod gguf;
mod hf;
mod names;
mod rope;
mod switches;
#[cfg(test)]
mod tests;

pub use names::TensorRole;
pub use rope::{RopeScaling, RopeSpec};
pub use switches::Switch;

use crate::error::{ModelError, Result};

/// A model family hone can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    Llama,
    Qwen2,
    Qwen3,
    Gemma3,
}

impl Family {
    /// Every supported family, in the order error messages list them.
    pub const ALL: [Family; 4] = [Family::Llama, Family::Qwen2, Family::Qwen3, Family::Gemma3];

    /// The `architectures[0]` of an HF `config.json`.
    pub fn hf_architecture(self) -> &'static str {
        match self {
            Family::Llama => "LlamaForCausalLM",
            Family::Qwen2 => "Qwen2ForCausalLM",
            Family::Qwen3 => "Qwen3ForCausalLM",
            Family::Gemma3 => "Gemma3ForCausalLM",
        }
    }

    /// The `model_type` of an HF `config.json`.
    pub fn hf_model_type(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Qwen2 => "qwen2",
            Family::Qwen3 => "qwen3",
            Family::Gemma3 => "gemma3_text",
        }
    }

    /// `general.architecture` of a GGUF file, also the prefix of its keys.
    pub fn gguf_architecture(self) -> &'static str {
        match self {
            Family::Llama => "llama",
            Family::Qwen2 => "qwen2",
            Family::Qwen3 => "qwen3",
            Family::Gemma3 => "gemma3",
        }
    }

    fn from_hf_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|f| f.hf_architecture() == name || f.hf_model_type() == name)
    }

    fn from_gguf_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|f| f.gguf_architecture() == name)
    }
}

/// "LlamaForCausalLM (GGUF `llama`), …": what an unsupported model is told.
pub fn supported_architectures() -> String {
    Family::ALL
        .iter()
        .map(|f| format!("{} (GGUF `{}`)", f.hf_architecture(), f.gguf_architecture()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The error for a model of an architecture hone does not run: it names the
/// architecture and lists the supported ones, so nothing is loaded wrong.
pub fn unsupported_architecture(found: &str) -> ModelError {
    ModelError::UnsupportedArchitecture {
        found: found.to_string(),
    }
}

/// Which file a spec was read from: tensor names and some weight conventions
/// depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    /// An HF directory: `config.json` + `model.safetensors`.
    HfSafetensors,
    /// A llama.cpp GGUF file.
    Gguf,
}

/// How the family's RMSNorm uses its weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormKind {
    /// `w · x̂` (Llama, Qwen).
    Scale,
    /// `(1 + w) · x̂` with `w` stored around 0 (Gemma).
    OnePlusScale,
}

/// The RMSNorm of every norm in the model (block norms, q/k norms, final norm).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NormSpec {
    pub kind: NormKind,
    pub eps: f64,
    /// Added to a stored norm weight to get its multiplier. 1 for Gemma in HF
    /// safetensors; 0 for Gemma GGUF, because llama.cpp's converter already
    /// stored `1 + w`; 0 for every `Scale` family.
    pub weight_offset: f32,
}

/// The gate activation of the feed-forward `act(x·Gate) ⊙ (x·Up) · Down`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `x · sigmoid(x)` (`silu`).
    Silu,
    /// GELU with the tanh approximation (`gelu_pytorch_tanh`).
    GeluTanh,
}

/// How the rows of the Q and K projections are ordered in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QkRows {
    /// As in HF: the "rotate half" RoPE layout.
    Hf,
    /// llama.cpp's permutation for interleaved RoPE (Llama GGUFs only; Qwen
    /// and Gemma GGUFs keep HF order because llama.cpp runs them with NeoX RoPE).
    Interleaved,
}

/// Whether a layer attends over the whole causal prefix or a sliding window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    Full,
    Sliding,
}

/// What one layer needs to know beyond the shared spec.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerSpec<'a> {
    pub kind: LayerKind,
    /// A query at position `p` sees keys at `p - window + 1 ..= p` (the
    /// window counts the query itself, as transformers' sliding mask does);
    /// `None` for a full-attention layer, or when the model sets no window.
    pub window: Option<usize>,
    pub rope: &'a RopeSpec,
}

/// Sizes of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
}

/// Everything the forward paths need to know about a model beyond its weights.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderSpec {
    pub family: Family,
    pub format: WeightFormat,
    pub dims: Dims,
    pub norm: NormSpec,
    /// Gemma's norm of the attention output before the residual add.
    pub post_attention_norm: bool,
    /// Gemma's norm of the feed-forward output before the residual add.
    pub post_ffn_norm: bool,
    /// Biases on the q, k and v projections (Qwen2); never on o.
    pub qkv_bias: bool,
    /// RMSNorm of each q and k head over `head_dim` before RoPE (Qwen3, Gemma 3).
    pub qk_norm: bool,
    pub activation: Activation,
    /// Multiplies the embedding rows (√hidden for Gemma, else 1).
    pub embedding_scale: f32,
    /// Multiplies `q·kᵀ`: `head_dim^-0.5`, or `query_pre_attn_scalar^-0.5` (Gemma).
    pub attention_scale: f32,
    /// `cap · tanh(z / cap)` on the output logits.
    ///
    /// There is no attention-score softcap: Gemma 3's config has an
    /// `attn_logit_softcapping` key, but transformers' Gemma 3 attention never
    /// applies it (5.25: stored, not passed to the attention function) and
    /// llama.cpp's converter refuses a Gemma 3 that sets it. hone follows
    /// transformers and ignores the key; `testdata/families/gemma3_softcap`
    /// sets it to check just that.
    pub final_logit_softcap: Option<f32>,
    /// The LM head is the embedding matrix.
    pub tie_word_embeddings: bool,
    pub qk_rows: QkRows,
    /// RoPE of full-attention layers.
    pub rope_full: RopeSpec,
    /// RoPE of sliding layers when it differs (Gemma's local base); `None`
    /// means sliding layers use `rope_full`.
    pub rope_sliding: Option<RopeSpec>,
    /// Window of sliding layers; `None` means they see the whole prefix
    /// (and differ from full layers in their RoPE only).
    pub sliding_window: Option<usize>,
    /// Kind of each layer, `dims.num_layers` long.
    pub layer_kinds: Vec<LayerKind>,
}

impl DecoderSpec {
    /// What layer `i` needs beyond the shared spec. Panics if `i` is not a
    /// layer index (a caller bug, as with slice indexing).
    pub fn layer(&self, i: usize) -> LayerSpec<'_> {
        let kind = self.layer_kinds[i];
        match kind {
            LayerKind::Full => LayerSpec {
                kind,
                window: None,
                rope: &self.rope_full,
            },
            LayerKind::Sliding => LayerSpec {
                kind,
                window: self.sliding_window,
                rope: self.rope_sliding.as_ref().unwrap_or(&self.rope_full),
            },
        }
    }

    /// Query heads sharing one key/value head.
    pub fn n_rep(&self) -> usize {
        self.dims.num_heads / self.dims.num_kv_heads
    }

    /// Checks the invariants every forward path relies on, so that a bad file
    /// fails at load with a message instead of a shape error later.
    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Config(m));
        let d = &self.dims;
        if d.vocab_size == 0 || d.hidden_size == 0 || d.intermediate_size == 0 || d.num_layers == 0
        {
            return bad("vocab, hidden, intermediate and layer counts must be positive".into());
        }
        if d.num_heads == 0 || d.num_kv_heads == 0 || !d.num_heads.is_multiple_of(d.num_kv_heads) {
            return bad(format!(
                "{} attention heads cannot share {} key/value heads evenly",
                d.num_heads, d.num_kv_heads
            ));
        }
        if d.head_dim == 0 || !d.head_dim.is_multiple_of(2) {
            return bad(format!("head_dim {} must be even and positive", d.head_dim));
        }
        if self.layer_kinds.len() != d.num_layers {
            return bad(format!(
                "{} layer types for {} layers",
                self.layer_kinds.len(),
                d.num_layers
            ));
        }
        if self.sliding_window == Some(0) {
            return bad("sliding_window must be positive".into());
        }
        if !(self.norm.eps > 0.0 && self.norm.eps.is_finite()) {
            return bad(format!("RMSNorm eps {} must be positive", self.norm.eps));
        }
        if let Some(cap) = self.final_logit_softcap {
            if !(cap > 0.0 && cap.is_finite()) {
                return bad(format!("final_logit_softcapping {cap} must be positive"));
            }
        }
        Ok(())
    }
}
