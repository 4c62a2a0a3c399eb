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
//! # How each path will read it
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
//!   takes the folded weights, a GELU-tanh gate kernel sits beside `silu_mul`
//!   and is picked by [`DecoderSpec::activation`], biases are added after the
//!   frozen q/k/v matmuls, q/k norms are the same RMSNorm kernel over rows of
//!   `head_dim`, and the causal softmax takes the layer's window. Each new
//!   step needs its backward for the LoRA gradients (GELU-tanh, the q/k and
//!   post norms, the embedding and logit scales); the frozen biases need none.
//! - **Merge** (`merge.rs`) writes HF names from [`DecoderSpec::tensor_name_in`]
//!   with [`WeightFormat::HfSafetensors`] (also for a model read from GGUF),
//!   writes norm weights back in HF's convention (the multiplier minus 1 for
//!   Gemma), and keeps biases and extra norms untouched.
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

use std::collections::HashMap;
use std::io::{Read, Seek};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::Device;
use serde_json::{Map, Value as Json};

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
    ModelError::Config(format!(
        "unsupported model architecture `{found}`; supported: {}",
        supported_architectures()
    ))
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

/// How RoPE frequencies are rescaled for long contexts.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Every inverse frequency divided by `factor` (`rope_type: linear`).
    Linear {
        factor: f32,
    },
    /// Llama 3.x (`rope_type: llama3`): low frequencies divided by `factor`,
    /// high ones kept, a smooth blend between.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position_embeddings: usize,
    },
    /// Per-frequency divisors from llama.cpp's `rope_freqs.weight` tensor
    /// (how GGUF files carry Llama 3 scaling).
    FreqFactors(Vec<f32>),
}

/// RoPE of one kind of layer, with its inverse frequencies precomputed.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeSpec {
    pub theta: f32,
    /// Rotated dimensions (the head dim for every supported family).
    pub dim: usize,
    pub scaling: RopeScaling,
    /// `dim / 2` inverse frequencies, scaling applied: position `p` rotates
    /// pair `i` by `p · inv_freq[i]`.
    pub inv_freq: Vec<f32>,
}

impl RopeSpec {
    /// Builds the spec and its inverse frequencies, checking the scaling.
    pub fn new(theta: f32, dim: usize, scaling: RopeScaling) -> Result<Self> {
        check_rope(theta, dim, &scaling)?;
        let inv_freq = scaled_inv_freq(&default_inv_freq(theta, dim), &scaling);
        Ok(Self {
            theta,
            dim,
            scaling,
            inv_freq,
        })
    }
}

/// transformers' `_compute_default_rope_parameters`, in f32 as it does.
fn default_inv_freq(theta: f32, dim: usize) -> Vec<f32> {
    (0..dim / 2)
        .map(|i| 1.0 / theta.powf((2 * i) as f32 / dim as f32))
        .collect()
}

fn scaled_inv_freq(base: &[f32], scaling: &RopeScaling) -> Vec<f32> {
    match scaling {
        RopeScaling::None => base.to_vec(),
        RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
        RopeScaling::FreqFactors(div) => base.iter().zip(div).map(|(f, d)| f / d).collect(),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => base
            .iter()
            .map(|&f| {
                llama3_inv_freq(
                    f,
                    *factor,
                    *low_freq_factor,
                    *high_freq_factor,
                    *original_max_position_embeddings as f32,
                )
            })
            .collect(),
    }
}

/// One frequency of transformers' `_compute_llama3_parameters`.
fn llama3_inv_freq(f: f32, factor: f32, low: f32, high: f32, old_ctx: f32) -> f32 {
    let wavelen = 2.0 * std::f32::consts::PI / f;
    let (low_wavelen, high_wavelen) = (old_ctx / low, old_ctx / high);
    if wavelen < high_wavelen {
        f
    } else if wavelen > low_wavelen {
        f / factor
    } else {
        let smooth = (old_ctx / wavelen - low) / (high - low);
        (1.0 - smooth) * f / factor + smooth * f
    }
}

fn check_rope(theta: f32, dim: usize, scaling: &RopeScaling) -> Result<()> {
    let bad = |m: String| Err(ModelError::Config(m));
    if !(theta.is_finite() && theta > 1.0) {
        return bad(format!("RoPE base {theta} must be a finite number above 1"));
    }
    if dim == 0 || !dim.is_multiple_of(2) {
        return bad(format!("RoPE dimension {dim} must be even and positive"));
    }
    match scaling {
        RopeScaling::None => Ok(()),
        RopeScaling::Linear { factor } if factor.is_finite() && *factor > 0.0 => Ok(()),
        RopeScaling::Linear { factor } => bad(format!("linear RoPE factor {factor} must be > 0")),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            let ok = factor.is_finite()
                && *factor > 0.0
                && *low_freq_factor > 0.0
                && high_freq_factor > low_freq_factor
                && *original_max_position_embeddings > 0;
            if ok {
                Ok(())
            } else {
                bad(format!(
                    "llama3 RoPE scaling needs factor > 0, 0 < low_freq_factor < high_freq_factor \
                     and original_max_position_embeddings > 0; got factor {factor}, \
                     low_freq_factor {low_freq_factor}, high_freq_factor {high_freq_factor}, \
                     original_max_position_embeddings {original_max_position_embeddings}"
                ))
            }
        }
        RopeScaling::FreqFactors(v) if v.len() != dim / 2 => bad(format!(
            "rope_freqs.weight has {} values, expected {}",
            v.len(),
            dim / 2
        )),
        RopeScaling::FreqFactors(v) if v.iter().all(|x| x.is_finite() && *x > 0.0) => Ok(()),
        RopeScaling::FreqFactors(_) => bad("rope_freqs.weight must be positive".into()),
    }
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
    /// Whether the tensor is one per layer (`model.layers.N.` / `blk.N.`).
    pub fn is_per_layer(self) -> bool {
        !matches!(
            self,
            TensorRole::Embed | TensorRole::LmHead | TensorRole::FinalNorm | TensorRole::RopeFreqs
        )
    }

    /// Whether the tensor is an RMSNorm weight (gets [`NormSpec::weight_offset`]).
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
    fn gguf(self) -> &'static str {
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

    /// Parses an HF `config.json`.
    pub fn from_hf_config(text: &str) -> Result<Self> {
        let json: Json = serde_json::from_str(text)
            .map_err(|e| ModelError::Config(format!("config.json: {e}")))?;
        let obj = json
            .as_object()
            .ok_or_else(|| ModelError::Config("config.json is not a JSON object".into()))?;
        hf::parse(&Fields(obj))
    }

    /// Parses GGUF metadata; reads `rope_freqs.weight` through `reader` when
    /// the file has it (llama.cpp's form of Llama 3 RoPE scaling).
    pub fn from_gguf<R: Read + Seek>(content: &Content, reader: &mut R) -> Result<Self> {
        let name = TensorRole::RopeFreqs.gguf();
        let freq_factors = if content.tensor_infos.contains_key(name) {
            let t = content.tensor(reader, name, &Device::Cpu)?;
            Some(
                t.dequantize(&Device::Cpu)?
                    .flatten_all()?
                    .to_vec1::<f32>()?,
            )
        } else {
            None
        };
        let has = |name: &str| content.tensor_infos.contains_key(name);
        gguf::parse(&content.metadata, &has, freq_factors)
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

/// Typed reads of a JSON object with clear errors; `null` counts as absent,
/// as transformers treats it.
struct Fields<'a>(&'a Map<String, Json>);

impl Fields<'_> {
    fn get(&self, key: &str) -> Option<&Json> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    fn usize_opt(&self, key: &str) -> Result<Option<usize>> {
        self.get(key)
            .map(|v| {
                v.as_u64().map(|x| x as usize).ok_or_else(|| {
                    ModelError::Config(format!("`{key}` must be a non-negative integer, got {v}"))
                })
            })
            .transpose()
    }

    fn usize(&self, key: &str) -> Result<usize> {
        self.usize_opt(key)?
            .ok_or_else(|| ModelError::Config(format!("config.json lacks `{key}`")))
    }

    fn f64_opt(&self, key: &str) -> Result<Option<f64>> {
        self.get(key)
            .map(|v| {
                v.as_f64()
                    .ok_or_else(|| ModelError::Config(format!("`{key}` must be a number, got {v}")))
            })
            .transpose()
    }

    fn bool_opt(&self, key: &str) -> Result<Option<bool>> {
        self.get(key)
            .map(|v| {
                v.as_bool().ok_or_else(|| {
                    ModelError::Config(format!("`{key}` must be true or false, got {v}"))
                })
            })
            .transpose()
    }

    fn str_opt(&self, key: &str) -> Result<Option<&str>> {
        self.get(key)
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| ModelError::Config(format!("`{key}` must be a string, got {v}")))
            })
            .transpose()
    }

    fn object(&self, key: &str) -> Result<Option<Fields<'_>>> {
        self.get(key)
            .map(|v| {
                v.as_object().map(Fields).ok_or_else(|| {
                    ModelError::Config(format!("`{key}` must be an object, got {v}"))
                })
            })
            .transpose()
    }
}

/// `config.json` parsing.
mod hf {
    use super::*;

    pub(super) fn parse(c: &Fields) -> Result<DecoderSpec> {
        let family = family(c)?;
        let heads = c.usize("num_attention_heads")?;
        let hidden = c.usize("hidden_size")?;
        // transformers' defaults: Qwen3 128, Gemma 3 256, else hidden / heads.
        let head_dim = c.usize_opt("head_dim")?.unwrap_or(match family {
            Family::Qwen3 => 128,
            Family::Gemma3 => 256,
            _ => hidden / heads.max(1),
        });
        let gemma = family == Family::Gemma3;
        let dims = Dims {
            vocab_size: c.usize("vocab_size")?,
            hidden_size: hidden,
            intermediate_size: c.usize("intermediate_size")?,
            num_layers: c.usize("num_hidden_layers")?,
            num_heads: heads,
            num_kv_heads: c.usize_opt("num_key_value_heads")?.unwrap_or(heads),
            head_dim,
            max_position_embeddings: c.usize_opt("max_position_embeddings")?.unwrap_or(
                match family {
                    Family::Llama => 2048,
                    Family::Qwen2 | Family::Qwen3 => 32768,
                    Family::Gemma3 => 131072,
                },
            ),
        };
        reject_unsupported_switches(c, family)?;
        let (rope_full, rope_sliding) = ropes(c, family, &dims)?;
        let (layer_kinds, sliding_window) = layers(c, family, dims.num_layers)?;
        let spec = DecoderSpec {
            family,
            format: WeightFormat::HfSafetensors,
            dims,
            norm: NormSpec {
                kind: if gemma {
                    NormKind::OnePlusScale
                } else {
                    NormKind::Scale
                },
                eps: c.f64_opt("rms_norm_eps")?.unwrap_or(1e-6),
                weight_offset: if gemma { 1.0 } else { 0.0 },
            },
            post_attention_norm: gemma,
            post_ffn_norm: gemma,
            qkv_bias: family == Family::Qwen2,
            qk_norm: matches!(family, Family::Qwen3 | Family::Gemma3),
            activation: activation(c, family)?,
            embedding_scale: if gemma { (hidden as f32).sqrt() } else { 1.0 },
            attention_scale: if gemma {
                let s = c.f64_opt("query_pre_attn_scalar")?.unwrap_or(256.0);
                (1.0 / s.sqrt()) as f32
            } else {
                1.0 / (head_dim as f32).sqrt()
            },
            final_logit_softcap: c.f64_opt("final_logit_softcapping")?.map(|x| x as f32),
            // transformers' defaults: Gemma3TextConfig ties, the others do not.
            tie_word_embeddings: c.bool_opt("tie_word_embeddings")?.unwrap_or(gemma),
            qk_rows: QkRows::Hf,
            rope_full,
            rope_sliding,
            sliding_window,
            layer_kinds,
        };
        spec.validate()?;
        Ok(spec)
    }

    fn family(c: &Fields) -> Result<Family> {
        let arch = match c.get("architectures").and_then(|a| a.as_array()) {
            Some(list) => list.first().and_then(|a| a.as_str()).map(str::to_string),
            None => None,
        };
        let model_type = c.str_opt("model_type")?.map(str::to_string);
        // Both must name the same supported family when both are present.
        let names: Vec<&String> = [arch.as_ref(), model_type.as_ref()]
            .into_iter()
            .flatten()
            .collect();
        let Some(first) = names.first() else {
            return Err(ModelError::Config(format!(
                "config.json has neither `architectures` nor `model_type`; supported: {}",
                supported_architectures()
            )));
        };
        let mut family = None;
        for name in &names {
            match (Family::from_hf_name(name), family) {
                (None, _) => return Err(unsupported_architecture(name)),
                (Some(f), Some(g)) if f != g => return Err(unsupported_architecture(first)),
                (Some(f), _) => family = Some(f),
            }
        }
        family.ok_or_else(|| unsupported_architecture(first))
    }

    /// Options of the families' configs that would change the math in ways
    /// hone does not implement: refused rather than silently ignored.
    fn reject_unsupported_switches(c: &Fields, family: Family) -> Result<()> {
        let refuse = |key: &str| {
            Err(ModelError::Config(format!(
                "{} with `{key}: true` is not supported",
                family.hf_architecture()
            )))
        };
        // Qwen2 hard-codes its q/k/v biases; the other families take them
        // (with an o bias) from `attention_bias`.
        if family != Family::Qwen2 && c.bool_opt("attention_bias")? == Some(true) {
            return refuse("attention_bias");
        }
        if c.bool_opt("mlp_bias")? == Some(true) {
            return refuse("mlp_bias");
        }
        if c.bool_opt("use_bidirectional_attention")? == Some(true) {
            return refuse("use_bidirectional_attention");
        }
        Ok(())
    }

    fn activation(c: &Fields, family: Family) -> Result<Activation> {
        let (key, default) = match family {
            Family::Gemma3 => ("hidden_activation", "gelu_pytorch_tanh"),
            _ => ("hidden_act", "silu"),
        };
        match c.str_opt(key)?.unwrap_or(default) {
            "silu" | "swish" if family != Family::Gemma3 => Ok(Activation::Silu),
            "gelu_pytorch_tanh" | "gelu_tanh" if family == Family::Gemma3 => {
                Ok(Activation::GeluTanh)
            }
            other => Err(ModelError::Config(format!(
                "{} with `{key}: {other}` is not supported (expected `{default}`)",
                family.hf_architecture()
            ))),
        }
    }

    /// RoPE of full layers and, for Gemma, of sliding layers. Reads the 5.x
    /// `rope_parameters` (one set, or one per layer type) or the 4.x
    /// `rope_theta` + `rope_scaling` (+ Gemma's `rope_local_base_freq`), with
    /// transformers' defaults: Gemma's base 1e6 (full) and 1e4 (sliding, never
    /// scaled), 1e4 elsewhere; llama3's `original_max_position_embeddings`
    /// falls back to `max_position_embeddings`.
    fn ropes(c: &Fields, family: Family, dims: &Dims) -> Result<(RopeSpec, Option<RopeSpec>)> {
        let gemma = family == Family::Gemma3;
        let top_theta = c.f64_opt("rope_theta")?;
        let full_theta = top_theta.unwrap_or(if gemma { 1_000_000.0 } else { 10_000.0 });
        let local_theta = c.f64_opt("rope_local_base_freq")?.unwrap_or(10_000.0);
        let at = |theta: f64| RopeAt {
            theta,
            dim: dims.head_dim,
            max_pos: dims.max_position_embeddings,
        };
        let (full, sliding) = match c.object("rope_parameters")? {
            Some(p) => match p.object("full_attention")? {
                Some(full) => {
                    let sliding = match p.object("sliding_attention")? {
                        Some(s) => Some(at(local_theta).read(&s)?),
                        None => None,
                    };
                    (at(full_theta).read(&full)?, sliding)
                }
                None => (at(full_theta).read(&p)?, None),
            },
            None => {
                let full = match c.object("rope_scaling")? {
                    Some(s) => at(full_theta).read(&s)?,
                    None => RopeSpec::new(full_theta as f32, dims.head_dim, RopeScaling::None)?,
                };
                (full, None)
            }
        };
        let sliding = match (gemma, sliding) {
            (true, None) => Some(RopeSpec::new(
                local_theta as f32,
                dims.head_dim,
                RopeScaling::None,
            )?),
            (true, s) => s,
            (false, _) => None,
        };
        Ok((full, sliding))
    }

    /// Defaults for one RoPE parameter set.
    pub(super) struct RopeAt {
        pub(super) theta: f64,
        pub(super) dim: usize,
        pub(super) max_pos: usize,
    }

    impl RopeAt {
        /// Reads `rope_type`/`type`, `rope_theta` and the scaling keys of one set.
        pub(super) fn read(&self, s: &Fields) -> Result<RopeSpec> {
            let theta = s.f64_opt("rope_theta")?.unwrap_or(self.theta);
            let kind = match s.str_opt("rope_type")? {
                Some(t) => Some(t),
                None => s.str_opt("type")?,
            };
            let need = |key: &str| -> Result<f32> {
                s.f64_opt(key)?
                    .map(|x| x as f32)
                    .ok_or_else(|| ModelError::Config(format!("RoPE scaling lacks `{key}`")))
            };
            let scaling = match kind.unwrap_or("default") {
                "default" => RopeScaling::None,
                "linear" => RopeScaling::Linear {
                    factor: need("factor")?,
                },
                "llama3" => RopeScaling::Llama3 {
                    factor: need("factor")?,
                    low_freq_factor: need("low_freq_factor")?,
                    high_freq_factor: need("high_freq_factor")?,
                    original_max_position_embeddings: s
                        .usize_opt("original_max_position_embeddings")?
                        .unwrap_or(self.max_pos),
                },
                other => {
                    return Err(ModelError::Config(format!(
                    "RoPE scaling `{other}` is not supported (supported: default, linear, llama3)"
                )))
                }
            };
            RopeSpec::new(theta as f32, self.dim, scaling)
        }
    }

    /// Layer kinds and the sliding window, as transformers derives them:
    /// `layer_types` when given, else Gemma's `sliding_window_pattern`
    /// (default 6: five sliding layers, then one full) or, for Qwen with
    /// `use_sliding_window`, every layer from `max_window_layers` on. The
    /// window is `sliding_window` (default 4096; an explicit null means no
    /// window), and Qwen has none unless `use_sliding_window`. Llama has no
    /// sliding layers.
    fn layers(c: &Fields, family: Family, n: usize) -> Result<(Vec<LayerKind>, Option<usize>)> {
        let window = match (family, c.bool_opt("use_sliding_window")?) {
            (Family::Llama, _) => return Ok((vec![LayerKind::Full; n], None)),
            (Family::Qwen2 | Family::Qwen3, None | Some(false)) => None,
            _ => match c.0.get("sliding_window") {
                None => Some(4096),
                Some(_) => c.usize_opt("sliding_window")?,
            },
        };
        let kinds = match c.get("layer_types") {
            Some(v) => layer_types(v, n)?,
            None if family == Family::Gemma3 => {
                let p = c.usize_opt("sliding_window_pattern")?.unwrap_or(6);
                (0..n)
                    .map(|i| {
                        if p != 0 && (i + 1) % p != 0 {
                            LayerKind::Sliding
                        } else {
                            LayerKind::Full
                        }
                    })
                    .collect()
            }
            None => {
                let from = c.usize_opt("max_window_layers")?.unwrap_or(28);
                (0..n)
                    .map(|i| {
                        if window.is_some() && i >= from {
                            LayerKind::Sliding
                        } else {
                            LayerKind::Full
                        }
                    })
                    .collect()
            }
        };
        Ok((kinds, window))
    }

    fn layer_types(v: &Json, n: usize) -> Result<Vec<LayerKind>> {
        let list = v
            .as_array()
            .ok_or_else(|| ModelError::Config(format!("`layer_types` must be a list, got {v}")))?;
        if list.len() != n {
            return Err(ModelError::Config(format!(
                "`layer_types` has {} entries for {n} layers",
                list.len()
            )));
        }
        list.iter()
            .map(|t| match t.as_str() {
                Some("full_attention") => Ok(LayerKind::Full),
                Some("sliding_attention") => Ok(LayerKind::Sliding),
                _ => Err(ModelError::Config(format!(
                    "layer type {t} is not supported (full_attention, sliding_attention)"
                ))),
            })
            .collect()
    }
}

/// GGUF metadata parsing (llama.cpp's keys under `<arch>.`).
mod gguf {
    use super::*;

    struct Md<'a> {
        md: &'a HashMap<String, Value>,
        arch: &'a str,
    }

    impl Md<'_> {
        fn key(&self, k: &str) -> String {
            format!("{}.{k}", self.arch)
        }
        fn usize_opt(&self, k: &str) -> Result<Option<usize>> {
            let key = self.key(k);
            self.md
                .get(&key)
                .map(|v| {
                    to_u64(v)
                        .map(|x| x as usize)
                        .ok_or_else(|| ModelError::Config(format!("`{key}` is not an integer")))
                })
                .transpose()
        }
        fn usize(&self, k: &str) -> Result<usize> {
            self.usize_opt(k)?
                .ok_or_else(|| ModelError::MissingMetadata(self.key(k)))
        }
        fn f64_opt(&self, k: &str) -> Result<Option<f64>> {
            let key = self.key(k);
            self.md
                .get(&key)
                .map(|v| {
                    to_f64(v).ok_or_else(|| ModelError::Config(format!("`{key}` is not a number")))
                })
                .transpose()
        }
        fn str_opt(&self, k: &str) -> Option<&str> {
            self.md
                .get(&self.key(k))
                .and_then(|v| v.to_string().ok())
                .map(String::as_str)
        }
    }

    pub(super) fn parse(
        md: &HashMap<String, Value>,
        has_tensor: &dyn Fn(&str) -> bool,
        freq_factors: Option<Vec<f32>>,
    ) -> Result<DecoderSpec> {
        let arch = md
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .ok_or_else(|| ModelError::MissingMetadata("general.architecture".into()))?;
        let family = Family::from_gguf_name(arch).ok_or_else(|| unsupported_architecture(arch))?;
        let m = Md { md, arch };
        let gemma = family == Family::Gemma3;
        let hidden = m.usize("embedding_length")?;
        let heads = m.usize("attention.head_count")?;
        let head_dim = head_dim(&m, hidden, heads)?;
        let num_layers = m.usize("block_count")?;
        let vocab_size = match m.usize_opt("vocab_size")? {
            Some(v) => v,
            None => md
                .get("tokenizer.ggml.tokens")
                .and_then(|v| v.to_vec().ok())
                .map(|v| v.len())
                .ok_or_else(|| ModelError::MissingMetadata(m.key("vocab_size")))?,
        };
        let dims = Dims {
            vocab_size,
            hidden_size: hidden,
            intermediate_size: m.usize("feed_forward_length")?,
            num_layers,
            num_heads: heads,
            num_kv_heads: m.usize_opt("attention.head_count_kv")?.unwrap_or(heads),
            head_dim,
            max_position_embeddings: m.usize_opt("context_length")?.unwrap_or(2048),
        };
        let eps = m
            .f64_opt("attention.layer_norm_rms_epsilon")?
            .ok_or_else(|| {
                ModelError::MissingMetadata(m.key("attention.layer_norm_rms_epsilon"))
            })?;
        let rope_full = rope_full(&m, head_dim, freq_factors)?;
        let (layer_kinds, sliding_window) = layers(&m, family, num_layers)?;
        // llama.cpp hard-codes Gemma 3's local base (10 000, no scaling).
        let rope_sliding = if gemma {
            Some(RopeSpec::new(10_000.0, head_dim, RopeScaling::None)?)
        } else {
            None
        };
        let spec = DecoderSpec {
            family,
            format: WeightFormat::Gguf,
            dims,
            norm: NormSpec {
                kind: if gemma {
                    NormKind::OnePlusScale
                } else {
                    NormKind::Scale
                },
                eps,
                // llama.cpp's converter stored Gemma's norms as 1 + w already.
                weight_offset: 0.0,
            },
            post_attention_norm: gemma,
            post_ffn_norm: gemma,
            qkv_bias: family == Family::Qwen2,
            qk_norm: matches!(family, Family::Qwen3 | Family::Gemma3),
            activation: if gemma {
                Activation::GeluTanh
            } else {
                Activation::Silu
            },
            embedding_scale: if gemma { (hidden as f32).sqrt() } else { 1.0 },
            attention_scale: 1.0
                / (query_pre_attn_scalar(family, num_layers, hidden, heads, head_dim) as f32)
                    .sqrt(),
            final_logit_softcap: m.f64_opt("final_logit_softcapping")?.map(|x| x as f32),
            tie_word_embeddings: !has_tensor("output.weight"),
            qk_rows: if family == Family::Llama {
                QkRows::Interleaved
            } else {
                QkRows::Hf
            },
            rope_full,
            rope_sliding,
            sliding_window,
            layer_kinds,
        };
        spec.validate()?;
        Ok(spec)
    }

    /// `key_length` when present (Qwen3 and Gemma 3 set a head dim other than
    /// hidden / heads), else `rope.dimension_count`, else hidden / heads.
    fn head_dim(m: &Md, hidden: usize, heads: usize) -> Result<usize> {
        let k = m.usize_opt("attention.key_length")?;
        let v = m.usize_opt("attention.value_length")?;
        if let (Some(k), Some(v)) = (k, v) {
            if k != v {
                return Err(ModelError::Config(format!(
                    "key head dim {k} differs from value head dim {v}; not supported"
                )));
            }
        }
        let rope = m.usize_opt("rope.dimension_count")?;
        let dim = k.or(rope).unwrap_or(hidden / heads.max(1));
        if let Some(r) = rope {
            if r != dim {
                return Err(ModelError::Config(format!(
                    "partial RoPE ({r} of {dim} head dims) is not supported"
                )));
            }
        }
        Ok(dim)
    }

    /// Gemma's `query_pre_attn_scalar` is not in GGUF; llama.cpp derives it:
    /// hidden / heads for the 62-layer 27B, else the head dim.
    fn query_pre_attn_scalar(
        family: Family,
        layers: usize,
        hidden: usize,
        heads: usize,
        head_dim: usize,
    ) -> usize {
        match family {
            Family::Gemma3 if layers == 62 => hidden / heads.max(1),
            _ => head_dim,
        }
    }

    fn rope_full(m: &Md, dim: usize, freq_factors: Option<Vec<f32>>) -> Result<RopeSpec> {
        let theta = m.f64_opt("rope.freq_base")?.unwrap_or(10_000.0) as f32;
        let kind = m.str_opt("rope.scaling.type");
        let factor = m.f64_opt("rope.scaling.factor")?.map(|x| x as f32);
        let scaling = match (freq_factors, kind, factor) {
            (Some(f), None | Some("none"), _) => RopeScaling::FreqFactors(f),
            (Some(_), Some(k), _) => {
                return Err(ModelError::Config(format!(
                    "both rope_freqs.weight and RoPE scaling `{k}`: ambiguous"
                )))
            }
            (None, None | Some("none"), _) => RopeScaling::None,
            (None, Some("linear"), Some(factor)) => RopeScaling::Linear { factor },
            (None, Some("linear"), None) => {
                return Err(ModelError::MissingMetadata(m.key("rope.scaling.factor")))
            }
            (None, Some(other), _) => {
                return Err(ModelError::Config(format!(
                    "RoPE scaling `{other}` is not supported (supported: none, linear, rope_freqs.weight)"
                )))
            }
        };
        RopeSpec::new(theta, dim, scaling)
    }

    /// Gemma 3: sliding unless `attention.sliding_window` is absent or 0;
    /// the pattern is `attention.sliding_window_pattern` (a period, or one
    /// bool per layer, true = sliding) or llama.cpp's default period 6.
    fn layers(m: &Md, family: Family, n: usize) -> Result<(Vec<LayerKind>, Option<usize>)> {
        let window = m.usize_opt("attention.sliding_window")?.filter(|&w| w > 0);
        let Some(window) = window.filter(|_| family == Family::Gemma3) else {
            return Ok((vec![LayerKind::Full; n], None));
        };
        let kinds = match m.md.get(&m.key("attention.sliding_window_pattern")) {
            Some(Value::Array(list)) => list
                .iter()
                .map(|v| match v.to_bool() {
                    Ok(true) => Ok(LayerKind::Sliding),
                    Ok(false) => Ok(LayerKind::Full),
                    Err(_) => Err(ModelError::Config(
                        "sliding_window_pattern entries must be bools".into(),
                    )),
                })
                .collect::<Result<Vec<_>>>()?,
            other => {
                let p = match other {
                    Some(v) => to_u64(v).ok_or_else(|| {
                        ModelError::Config("sliding_window_pattern is not an integer".into())
                    })? as usize,
                    None => 6,
                };
                (0..n)
                    .map(|i| {
                        if p != 0 && i % p < p - 1 {
                            LayerKind::Sliding
                        } else {
                            LayerKind::Full
                        }
                    })
                    .collect()
            }
        };
        Ok((kinds, Some(window)))
    }

    fn to_u64(v: &Value) -> Option<u64> {
        match v {
            Value::U8(x) => Some(*x as u64),
            Value::U16(x) => Some(*x as u64),
            Value::U32(x) => Some(*x as u64),
            Value::U64(x) => Some(*x),
            Value::I8(x) if *x >= 0 => Some(*x as u64),
            Value::I16(x) if *x >= 0 => Some(*x as u64),
            Value::I32(x) if *x >= 0 => Some(*x as u64),
            Value::I64(x) if *x >= 0 => Some(*x as u64),
            _ => None,
        }
    }

    fn to_f64(v: &Value) -> Option<f64> {
        match v {
            Value::F32(x) => Some(*x as f64),
            Value::F64(x) => Some(*x),
            other => to_u64(other).map(|x| x as f64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::PathBuf;

    fn testdata(rel: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../testdata")
            .join(rel)
    }

    fn tiny(name: &str) -> DecoderSpec {
        let text = std::fs::read_to_string(testdata(&format!("families/{name}/config.json")))
            .expect("run scripts/make_family_vectors.py --tiny");
        DecoderSpec::from_hf_config(&text).unwrap()
    }

    fn assert_close(got: &[f32], want: &[f32], rel: f32, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= rel * w.abs(),
                "{what}[{i}]: got {g}, want {w}"
            );
        }
    }

    fn err_of(r: Result<DecoderSpec>) -> String {
        r.expect_err("expected an error").to_string()
    }

    // ---- RoPE against transformers ----

    #[test]
    fn rope_inv_freq_matches_transformers() {
        let text = std::fs::read_to_string(testdata("families/rope_reference.json")).unwrap();
        let json: Json = serde_json::from_str(&text).unwrap();
        let cases = json["cases"].as_object().unwrap();
        assert!(cases.len() >= 5);
        for (name, case) in cases {
            let dim = case["head_dim"].as_u64().unwrap() as usize;
            let params = Fields(case["rope_parameters"].as_object().unwrap());
            let at = hf::RopeAt {
                theta: 10_000.0,
                dim,
                max_pos: 131_072,
            };
            let spec = at.read(&params).unwrap();
            let want: Vec<f32> = case["inv_freq"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            // A few ulps: Rust's and torch's `pow` may round differently.
            assert_close(&spec.inv_freq, &want, 2e-6, name);
        }
    }

    #[test]
    fn llama3_scaling_keeps_divides_and_blends_the_three_bands() {
        // Llama 3.2: base 5e5, head_dim 64, factor 32, bands at 8192/4 and 8192/1.
        let scaling = RopeScaling::Llama3 {
            factor: 32.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        };
        let plain = RopeSpec::new(500_000.0, 64, RopeScaling::None).unwrap();
        let scaled = RopeSpec::new(500_000.0, 64, scaling).unwrap();
        let (mut kept, mut divided, mut blended) = (0, 0, 0);
        for (p, s) in plain.inv_freq.iter().zip(&scaled.inv_freq) {
            let wavelen = 2.0 * std::f32::consts::PI / p;
            if wavelen < 2048.0 {
                assert_eq!(s, p);
                kept += 1;
            } else if wavelen > 8192.0 {
                assert_eq!(*s, p / 32.0);
                divided += 1;
            } else {
                assert!(
                    *s < *p && *s > p / 32.0,
                    "{s} not between {p} and {}",
                    p / 32.0
                );
                blended += 1;
            }
        }
        assert!(
            kept > 0 && divided > 0 && blended > 0,
            "{kept} {divided} {blended}"
        );
    }

    #[test]
    fn linear_and_freq_factor_scaling_divide() {
        let plain = RopeSpec::new(10_000.0, 8, RopeScaling::None).unwrap();
        let linear = RopeSpec::new(10_000.0, 8, RopeScaling::Linear { factor: 4.0 }).unwrap();
        let factors = vec![1.0, 2.0, 4.0, 8.0];
        let ff = RopeSpec::new(10_000.0, 8, RopeScaling::FreqFactors(factors.clone())).unwrap();
        for (i, factor) in factors.iter().enumerate() {
            assert_eq!(linear.inv_freq[i], plain.inv_freq[i] / 4.0);
            assert_eq!(ff.inv_freq[i], plain.inv_freq[i] / factor);
        }
        assert_eq!(plain.inv_freq[0], 1.0);
        let short = RopeScaling::FreqFactors(vec![1.0; 3]);
        assert!(RopeSpec::new(10_000.0, 8, short)
            .unwrap_err()
            .to_string()
            .contains("3 values"));
        let bad = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 4.0,
            high_freq_factor: 1.0,
            original_max_position_embeddings: 8192,
        };
        assert!(RopeSpec::new(10_000.0, 8, bad).is_err());
    }

    // ---- The tiny transformers models in testdata/families ----

    const TINY: [&str; 6] = [
        "llama3_scaled",
        "llama_linear",
        "qwen2",
        "qwen3",
        "gemma3",
        "gemma3_softcap",
    ];

    /// The spec names exactly the tensors transformers saved, with their shapes:
    /// no tensor missing, none left over, for every family.
    #[test]
    fn tiny_models_hold_exactly_the_tensors_the_spec_names() {
        for name in TINY {
            let spec = tiny(name);
            let path = testdata(&format!("families/{name}/model.safetensors"));
            let bytes = std::fs::read(&path).unwrap();
            let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            let saved: BTreeMap<String, Vec<usize>> = st
                .tensors()
                .into_iter()
                .map(|(n, v)| (n, v.shape().to_vec()))
                .collect();
            let expected: BTreeMap<String, Vec<usize>> = spec
                .expected_tensors()
                .into_iter()
                .map(|(n, _, shape)| (n, shape))
                .collect();
            assert_eq!(expected, saved, "{name}");
        }
    }

    #[test]
    fn tiny_llama3_scaled() {
        let s = tiny("llama3_scaled");
        assert_eq!(s.family, Family::Llama);
        assert_eq!(s.format, WeightFormat::HfSafetensors);
        assert_eq!(s.norm.kind, NormKind::Scale);
        assert_eq!(s.norm.weight_offset, 0.0);
        assert_eq!(s.norm.eps, 1e-6);
        assert!(s.tie_word_embeddings && !s.qkv_bias && !s.qk_norm);
        assert!(!s.post_attention_norm && !s.post_ffn_norm);
        assert_eq!(s.activation, Activation::Silu);
        assert_eq!(
            (s.embedding_scale, s.attention_scale),
            (1.0, 1.0 / 8f32.sqrt())
        );
        assert_eq!(s.qk_rows, QkRows::Hf);
        assert_eq!(
            s.rope_full.scaling,
            RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 32
            }
        );
        assert_eq!(s.rope_full.theta, 100.0);
        assert!(s.rope_sliding.is_none() && s.sliding_window.is_none());
        for i in 0..2 {
            assert_eq!(s.layer(i).window, None);
            assert_eq!(s.layer(i).rope, &s.rope_full);
        }
    }

    #[test]
    fn tiny_llama_linear_is_untied() {
        let s = tiny("llama_linear");
        assert!(!s.tie_word_embeddings);
        assert!(s.model_roles().contains(&TensorRole::LmHead));
        assert_eq!(s.rope_full.scaling, RopeScaling::Linear { factor: 4.0 });
    }

    #[test]
    fn tiny_qwen2_has_qkv_biases_only() {
        let s = tiny("qwen2");
        assert_eq!(s.family, Family::Qwen2);
        assert!(s.qkv_bias && !s.qk_norm && s.tie_word_embeddings);
        let roles = s.layer_roles();
        for r in [TensorRole::QBias, TensorRole::KBias, TensorRole::VBias] {
            assert!(roles.contains(&r));
        }
        assert_eq!(
            s.tensor_name(TensorRole::KBias, Some(1)).unwrap(),
            "model.layers.1.self_attn.k_proj.bias"
        );
        assert_eq!(s.layer_kinds, vec![LayerKind::Full; 2]);
    }

    #[test]
    fn tiny_qwen3_has_qk_norms_and_its_own_head_dim() {
        let s = tiny("qwen3");
        assert_eq!(s.family, Family::Qwen3);
        assert!(s.qk_norm && !s.qkv_bias);
        assert_eq!(s.dims.head_dim, 16);
        assert_eq!(s.dims.hidden_size / s.dims.num_heads, 8);
        assert_eq!(s.attention_scale, 0.25);
        assert_eq!(s.rope_full.inv_freq.len(), 8);
        assert_eq!(s.tensor_shape(TensorRole::Q), vec![64, 32]);
        assert_eq!(s.tensor_shape(TensorRole::QNorm), vec![16]);
    }

    #[test]
    fn tiny_gemma3_layers_norms_and_scales() {
        let s = tiny("gemma3");
        assert_eq!(s.family, Family::Gemma3);
        assert_eq!(s.norm.kind, NormKind::OnePlusScale);
        assert_eq!(s.norm.weight_offset, 1.0);
        assert!(s.post_attention_norm && s.post_ffn_norm && s.qk_norm && !s.qkv_bias);
        assert!(s.tie_word_embeddings);
        assert_eq!(s.activation, Activation::GeluTanh);
        assert_eq!(s.embedding_scale, 32f32.sqrt());
        assert_eq!(s.attention_scale, (1.0 / 20f64.sqrt()) as f32);
        assert_eq!(s.final_logit_softcap, None);
        use LayerKind::*;
        assert_eq!(s.layer_kinds, vec![Sliding, Sliding, Full, Sliding]);
        assert_eq!(s.sliding_window, Some(4));
        let (local, global) = (s.layer(0), s.layer(2));
        assert_eq!(local.window, Some(4));
        assert_eq!(global.window, None);
        assert_eq!(local.rope.theta, 100.0);
        assert_eq!(local.rope.scaling, RopeScaling::None);
        assert_eq!(global.rope.theta, 10_000.0);
        assert_eq!(global.rope.scaling, RopeScaling::Linear { factor: 2.0 });
        assert_eq!(local.rope.inv_freq.len(), 12);
        // Gemma's HF names: the post-attention norm is its own tensor, the
        // pre-FFN norm is `pre_feedforward_layernorm`.
        let name = |r| s.tensor_name(r, Some(3)).unwrap();
        assert_eq!(
            name(TensorRole::PostAttnNorm),
            "model.layers.3.post_attention_layernorm.weight"
        );
        assert_eq!(
            name(TensorRole::FfnNorm),
            "model.layers.3.pre_feedforward_layernorm.weight"
        );
        assert_eq!(
            name(TensorRole::PostFfnNorm),
            "model.layers.3.post_feedforward_layernorm.weight"
        );
        let gguf = |r| s.tensor_name_in(WeightFormat::Gguf, r, Some(3)).unwrap();
        assert_eq!(
            gguf(TensorRole::PostAttnNorm),
            "blk.3.post_attention_norm.weight"
        );
        assert_eq!(gguf(TensorRole::FfnNorm), "blk.3.ffn_norm.weight");
        assert_eq!(gguf(TensorRole::PostFfnNorm), "blk.3.post_ffw_norm.weight");
    }

    #[test]
    fn tiny_gemma3_softcap_and_default_bases() {
        let s = tiny("gemma3_softcap");
        // Its `attn_logit_softcapping: 1.5` is ignored, as transformers does.
        assert_eq!(s.final_logit_softcap, Some(8.0));
        assert_eq!(s.layer(0).rope.theta, 10_000.0);
        assert_eq!(s.layer(1).rope.theta, 1_000_000.0);
        assert_eq!(s.layer(0).window, Some(3));
    }

    #[test]
    fn tiny_logits_are_all_positions_in_f32() {
        for name in TINY {
            let text =
                std::fs::read_to_string(testdata(&format!("families/{name}/logits.json"))).unwrap();
            let json: Json = serde_json::from_str(&text).unwrap();
            let spec = tiny(name);
            let ids = json["input_ids"].as_array().unwrap();
            let rows = json["logits"].as_array().unwrap();
            assert_eq!(rows.len(), ids.len(), "{name}");
            assert!(rows
                .iter()
                .all(|r| r.as_array().unwrap().len() == spec.dims.vocab_size));
        }
    }

    // ---- HF config.json of released models (transformers 4.x keys) ----

    const LLAMA_3_2_1B: &str = r#"{"architectures":["LlamaForCausalLM"],"attention_bias":false,
        "bos_token_id":128000,"eos_token_id":128001,"head_dim":64,"hidden_act":"silu",
        "hidden_size":2048,"intermediate_size":8192,"max_position_embeddings":131072,
        "mlp_bias":false,"model_type":"llama","num_attention_heads":32,"num_hidden_layers":16,
        "num_key_value_heads":8,"rms_norm_eps":1e-05,"rope_scaling":{"factor":32.0,
        "high_freq_factor":4.0,"low_freq_factor":1.0,"original_max_position_embeddings":8192,
        "rope_type":"llama3"},"rope_theta":500000.0,"tie_word_embeddings":true,
        "torch_dtype":"bfloat16","vocab_size":128256}"#;

    const QWEN2_5_0_5B: &str = r#"{"architectures":["Qwen2ForCausalLM"],"attention_dropout":0.0,
        "bos_token_id":151643,"eos_token_id":151645,"hidden_act":"silu","hidden_size":896,
        "intermediate_size":4864,"max_position_embeddings":32768,"max_window_layers":21,
        "model_type":"qwen2","num_attention_heads":14,"num_hidden_layers":24,
        "num_key_value_heads":2,"rms_norm_eps":1e-06,"rope_theta":1000000.0,
        "sliding_window":32768,"tie_word_embeddings":true,"use_sliding_window":false,
        "vocab_size":151936}"#;

    const QWEN3_0_6B: &str = r#"{"architectures":["Qwen3ForCausalLM"],"attention_bias":false,
        "head_dim":128,"hidden_act":"silu","hidden_size":1024,"intermediate_size":3072,
        "max_position_embeddings":40960,"max_window_layers":28,"model_type":"qwen3",
        "num_attention_heads":16,"num_hidden_layers":28,"num_key_value_heads":8,
        "rms_norm_eps":1e-06,"rope_scaling":null,"rope_theta":1000000,"sliding_window":null,
        "tie_word_embeddings":true,"use_sliding_window":false,"vocab_size":151936}"#;

    fn gemma_270m_config(extra: &str) -> String {
        format!(
            r#"{{"_sliding_window_pattern":6,"architectures":["Gemma3ForCausalLM"],
            "attention_bias":false,"attn_logit_softcapping":null,"final_logit_softcapping":null,
            "head_dim":256,"hidden_activation":"gelu_pytorch_tanh","hidden_size":640,
            "intermediate_size":2048,"max_position_embeddings":32768,"model_type":"gemma3_text",
            "num_attention_heads":4,"num_hidden_layers":18,"num_key_value_heads":1,
            "query_pre_attn_scalar":256,"rms_norm_eps":1e-06,"rope_local_base_freq":10000.0,
            "rope_scaling":null,"rope_theta":1000000.0,"sliding_window":512,
            "use_bidirectional_attention":false,"vocab_size":262144{extra}}}"#
        )
    }

    #[test]
    fn llama_3_2_config() {
        let s = DecoderSpec::from_hf_config(LLAMA_3_2_1B).unwrap();
        assert_eq!(s.family, Family::Llama);
        assert!(s.tie_word_embeddings);
        assert_eq!(s.norm.eps, 1e-5);
        assert_eq!(s.dims.num_kv_heads, 8);
        assert_eq!(s.n_rep(), 4);
        assert!(
            matches!(s.rope_full.scaling, RopeScaling::Llama3 { factor, .. } if factor == 32.0)
        );
        assert_eq!(s.rope_full.theta, 500_000.0);
        assert!(s.model_roles() == vec![TensorRole::Embed, TensorRole::FinalNorm]);
    }

    #[test]
    fn qwen2_5_config_ignores_its_disabled_sliding_window() {
        let s = DecoderSpec::from_hf_config(QWEN2_5_0_5B).unwrap();
        assert_eq!(s.family, Family::Qwen2);
        assert!(s.qkv_bias && s.tie_word_embeddings);
        assert_eq!(s.dims.head_dim, 64);
        assert_eq!(s.sliding_window, None);
        assert!(s.layer_kinds.iter().all(|k| *k == LayerKind::Full));
        assert_eq!(s.rope_full.theta, 1_000_000.0);
        // With the window turned on, layers from max_window_layers slide.
        let on = QWEN2_5_0_5B.replace(
            r#""use_sliding_window":false"#,
            r#""use_sliding_window":true"#,
        );
        let s = DecoderSpec::from_hf_config(&on).unwrap();
        assert_eq!(s.sliding_window, Some(32768));
        assert_eq!(s.layer(20).window, None);
        assert_eq!(s.layer(21).window, Some(32768));
    }

    #[test]
    fn qwen3_config() {
        let s = DecoderSpec::from_hf_config(QWEN3_0_6B).unwrap();
        assert_eq!(s.family, Family::Qwen3);
        assert!(s.qk_norm && !s.qkv_bias);
        assert_eq!(s.dims.head_dim, 128);
        assert_eq!(s.tensor_shape(TensorRole::Q), vec![2048, 1024]);
        assert_eq!(s.sliding_window, None);
        // transformers' default head_dim for Qwen3 is 128, not hidden / heads.
        let no_hd = QWEN3_0_6B.replace(r#""head_dim":128,"#, "");
        assert_eq!(
            DecoderSpec::from_hf_config(&no_hd).unwrap().dims.head_dim,
            128
        );
    }

    #[test]
    fn gemma_3_270m_config_derives_layer_types_from_the_pattern() {
        let s = DecoderSpec::from_hf_config(&gemma_270m_config("")).unwrap();
        assert_eq!(s.family, Family::Gemma3);
        // Tied by Gemma3TextConfig's default: the file does not say.
        assert!(s.tie_word_embeddings);
        let full: Vec<usize> = (0..18)
            .filter(|&i| s.layer(i).kind == LayerKind::Full)
            .collect();
        assert_eq!(full, vec![5, 11, 17]);
        assert_eq!(s.layer(0).window, Some(512));
        assert_eq!(s.layer(0).rope.theta, 10_000.0);
        assert_eq!(s.layer(5).rope.theta, 1_000_000.0);
        assert_eq!(s.attention_scale, 1.0 / 16.0);
        assert_eq!(s.embedding_scale, 640f32.sqrt());
        // 4.x rope_scaling applies to global layers only.
        let scaled = gemma_270m_config(r#","rope_scaling":{"rope_type":"linear","factor":8.0}"#)
            .replace(r#""rope_scaling":null,"#, "");
        let s = DecoderSpec::from_hf_config(&scaled).unwrap();
        assert_eq!(s.layer(5).rope.scaling, RopeScaling::Linear { factor: 8.0 });
        assert_eq!(s.layer(0).rope.scaling, RopeScaling::None);
    }

    #[test]
    fn transformers_5_rope_parameters_and_4x_keys_agree() {
        let v4 = DecoderSpec::from_hf_config(LLAMA_3_2_1B).unwrap();
        let v5_text = LLAMA_3_2_1B
            .replace(r#""rope_scaling""#, r#""rope_parameters""#)
            .replace(
                r#""rope_type":"llama3"}"#,
                r#""rope_type":"llama3","rope_theta":500000.0}"#,
            )
            .replace(r#""rope_theta":500000.0,"tie"#, r#""tie"#);
        let v5 = DecoderSpec::from_hf_config(&v5_text).unwrap();
        assert_eq!(v4, v5);
    }

    // ---- Refusals ----

    #[test]
    fn unsupported_architectures_are_named_with_the_supported_list() {
        let json = r#"{"architectures":["MistralForCausalLM"],"model_type":"mistral","vocab_size":10,
            "hidden_size":8,"intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":2}"#;
        let e = err_of(DecoderSpec::from_hf_config(json));
        assert!(e.contains("`MistralForCausalLM`"), "{e}");
        for f in Family::ALL {
            assert!(
                e.contains(f.hf_architecture()) && e.contains(f.gguf_architecture()),
                "{e}"
            );
        }
        // The multimodal Gemma 3 wrapper is a different architecture.
        let mm =
            gemma_270m_config("").replace("Gemma3ForCausalLM", "Gemma3ForConditionalGeneration");
        assert!(err_of(DecoderSpec::from_hf_config(&mm)).contains("Gemma3ForConditionalGeneration"));
        // Architecture and model_type must agree.
        let mixed = QWEN3_0_6B.replace(r#""model_type":"qwen3""#, r#""model_type":"qwen2""#);
        assert!(err_of(DecoderSpec::from_hf_config(&mixed)).contains("Qwen3ForCausalLM"));
        let none = r#"{"vocab_size":10}"#;
        assert!(err_of(DecoderSpec::from_hf_config(none)).contains("supported"));
    }

    #[test]
    fn switches_hone_does_not_implement_are_refused() {
        let cases = [
            (
                LLAMA_3_2_1B.replace(r#""attention_bias":false"#, r#""attention_bias":true"#),
                "attention_bias",
            ),
            (
                LLAMA_3_2_1B.replace(r#""mlp_bias":false"#, r#""mlp_bias":true"#),
                "mlp_bias",
            ),
            (
                LLAMA_3_2_1B.replace(r#""rope_type":"llama3""#, r#""rope_type":"yarn""#),
                "yarn",
            ),
            (
                LLAMA_3_2_1B.replace(r#""hidden_act":"silu""#, r#""hidden_act":"relu""#),
                "relu",
            ),
            (
                gemma_270m_config("").replace(
                    r#""use_bidirectional_attention":false"#,
                    r#""use_bidirectional_attention":true"#,
                ),
                "use_bidirectional_attention",
            ),
            (
                gemma_270m_config("").replace("gelu_pytorch_tanh", "silu"),
                "silu",
            ),
            (
                QWEN3_0_6B.replace(r#""num_key_value_heads":8"#, r#""num_key_value_heads":5"#),
                "key/value heads",
            ),
            (
                QWEN3_0_6B.replace(r#""hidden_size":1024,"#, ""),
                "hidden_size",
            ),
            (
                QWEN3_0_6B.replace(r#""hidden_size":1024"#, r#""hidden_size":"big""#),
                "hidden_size",
            ),
            (
                gemma_270m_config(r#","layer_types":["full_attention"]"#),
                "layer_types",
            ),
        ];
        for (json, needle) in cases {
            let e = err_of(DecoderSpec::from_hf_config(&json));
            assert!(e.contains(needle), "{needle}: {e}");
        }
        assert!(err_of(DecoderSpec::from_hf_config("[1]")).contains("object"));
        assert!(err_of(DecoderSpec::from_hf_config("{")).contains("config.json"));
    }

    // ---- GGUF metadata ----

    fn md(arch: &str, extra: &[(&str, Value)]) -> HashMap<String, Value> {
        let mut m = HashMap::new();
        m.insert("general.architecture".into(), Value::String(arch.into()));
        let base = [
            ("embedding_length", Value::U32(64)),
            ("feed_forward_length", Value::U32(128)),
            ("block_count", Value::U32(12)),
            ("attention.head_count", Value::U32(4)),
            ("attention.head_count_kv", Value::U32(2)),
            ("attention.layer_norm_rms_epsilon", Value::F32(1e-6)),
            ("context_length", Value::U32(4096)),
            ("vocab_size", Value::U32(100)),
        ];
        for (k, v) in base.into_iter().chain(extra.iter().cloned()) {
            m.insert(format!("{arch}.{k}"), v);
        }
        m
    }

    fn parse_md(m: &HashMap<String, Value>, tensors: &[&str]) -> Result<DecoderSpec> {
        let has = |n: &str| tensors.contains(&n);
        gguf::parse(m, &has, None)
    }

    #[test]
    fn gguf_qwen2_biases_and_tying_from_the_tensor_list() {
        let m = md("qwen2", &[("rope.freq_base", Value::F32(1e6))]);
        let tied = parse_md(&m, &[]).unwrap();
        assert_eq!(tied.family, Family::Qwen2);
        assert_eq!(tied.format, WeightFormat::Gguf);
        assert!(tied.qkv_bias && tied.tie_word_embeddings);
        assert_eq!(tied.qk_rows, QkRows::Hf);
        assert_eq!(
            tied.tensor_name(TensorRole::QBias, Some(0)).unwrap(),
            "blk.0.attn_q.bias"
        );
        assert_eq!(
            tied.tensor_name(TensorRole::FfnNorm, Some(2)).unwrap(),
            "blk.2.ffn_norm.weight"
        );
        let untied = parse_md(&m, &["output.weight"]).unwrap();
        assert!(!untied.tie_word_embeddings);
        assert_eq!(
            untied.tensor_name(TensorRole::LmHead, None).unwrap(),
            "output.weight"
        );
    }

    #[test]
    fn gguf_qwen3_head_dim_from_key_length() {
        let m = md(
            "qwen3",
            &[
                ("attention.key_length", Value::U32(32)),
                ("attention.value_length", Value::U32(32)),
            ],
        );
        let s = parse_md(&m, &[]).unwrap();
        assert!(s.qk_norm && !s.qkv_bias);
        assert_eq!(s.dims.head_dim, 32);
        assert_eq!(
            s.tensor_name(TensorRole::KNorm, Some(1)).unwrap(),
            "blk.1.attn_k_norm.weight"
        );
        let m = md(
            "qwen3",
            &[
                ("attention.key_length", Value::U32(32)),
                ("attention.value_length", Value::U32(16)),
            ],
        );
        assert!(err_of(parse_md(&m, &[])).contains("value head dim"));
    }

    #[test]
    fn gguf_gemma3_norms_are_already_shifted_and_layers_follow_llama_cpp() {
        let m = md(
            "gemma3",
            &[
                ("attention.key_length", Value::U32(32)),
                ("attention.value_length", Value::U32(32)),
                ("attention.sliding_window", Value::U32(512)),
                ("rope.freq_base", Value::F32(1e6)),
            ],
        );
        let s = parse_md(&m, &[]).unwrap();
        assert_eq!(s.norm.kind, NormKind::OnePlusScale);
        // llama.cpp stored 1 + w: adding 1 again would double the shift.
        assert_eq!(s.norm.weight_offset, 0.0);
        assert!(s.post_attention_norm && s.post_ffn_norm && s.qk_norm);
        assert_eq!(s.activation, Activation::GeluTanh);
        assert_eq!(s.embedding_scale, 8.0);
        assert_eq!(s.attention_scale, 1.0 / 32f32.sqrt());
        let full: Vec<usize> = (0..12)
            .filter(|&i| s.layer(i).kind == LayerKind::Full)
            .collect();
        assert_eq!(full, vec![5, 11]);
        assert_eq!(s.layer(0).window, Some(512));
        assert_eq!(s.layer(0).rope.theta, 10_000.0);
        assert_eq!(s.layer(5).rope.theta, 1_000_000.0);
        // The 62-layer 27B scales by hidden / heads (llama.cpp's rule).
        let mut big = m.clone();
        big.insert("gemma3.block_count".into(), Value::U32(62));
        assert_eq!(
            parse_md(&big, &[]).unwrap().attention_scale,
            1.0 / 16f32.sqrt()
        );
        // An explicit pattern, and no window at all.
        let mut pat = m.clone();
        pat.insert(
            "gemma3.attention.sliding_window_pattern".into(),
            Value::U32(2),
        );
        let s = parse_md(&pat, &[]).unwrap();
        assert_eq!(
            s.layer_kinds[..4],
            [
                LayerKind::Sliding,
                LayerKind::Full,
                LayerKind::Sliding,
                LayerKind::Full
            ]
        );
        let mut none = m.clone();
        none.remove("gemma3.attention.sliding_window");
        assert!(parse_md(&none, &[])
            .unwrap()
            .layer_kinds
            .iter()
            .all(|k| *k == LayerKind::Full));
    }

    #[test]
    fn gguf_llama_rows_scaling_and_rope_freqs_tensor() {
        let m = md(
            "llama",
            &[
                ("rope.scaling.type", Value::String("linear".into())),
                ("rope.scaling.factor", Value::F32(2.0)),
            ],
        );
        let s = parse_md(&m, &[]).unwrap();
        assert_eq!(s.qk_rows, QkRows::Interleaved);
        assert_eq!(s.rope_full.scaling, RopeScaling::Linear { factor: 2.0 });
        assert_eq!(s.dims.head_dim, 16);
        let m = md(
            "llama",
            &[("rope.scaling.type", Value::String("yarn".into()))],
        );
        assert!(err_of(parse_md(&m, &[])).contains("yarn"));

        // Llama 3 scaling arrives as the `rope_freqs.weight` tensor: write a
        // real GGUF with one and read the spec back through candle's reader.
        let factors: Vec<f32> = (0..8).map(|i| 1.0 + i as f32).collect();
        let t = candle_core::Tensor::new(factors.as_slice(), &Device::Cpu).unwrap();
        let q =
            candle_core::quantized::QTensor::quantize(&t, candle_core::quantized::GgmlDType::F32)
                .unwrap();
        let m = md("llama", &[("rope.freq_base", Value::F32(500_000.0))]);
        let meta: Vec<(&str, &Value)> = m.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let mut buf = std::io::Cursor::new(Vec::new());
        candle_core::quantized::gguf_file::write(&mut buf, &meta, &[("rope_freqs.weight", &q)])
            .unwrap();
        buf.set_position(0);
        let content = Content::read(&mut buf).unwrap();
        let s = DecoderSpec::from_gguf(&content, &mut buf).unwrap();
        assert_eq!(
            s.rope_full.scaling,
            RopeScaling::FreqFactors(factors.clone())
        );
        let plain = RopeSpec::new(500_000.0, 16, RopeScaling::None).unwrap();
        for (i, factor) in factors.iter().enumerate() {
            assert_eq!(s.rope_full.inv_freq[i], plain.inv_freq[i] / factor);
        }
        assert!(s.model_roles().contains(&TensorRole::RopeFreqs));
    }

    #[test]
    fn gguf_unsupported_and_incomplete_metadata() {
        let e = err_of(parse_md(&md("phi3", &[]), &[]));
        assert!(
            e.contains("`phi3`") && e.contains("gemma3") && e.contains("Qwen2ForCausalLM"),
            "{e}"
        );
        let mut m = md("qwen2", &[]);
        m.remove("qwen2.block_count");
        assert!(err_of(parse_md(&m, &[])).contains("qwen2.block_count"));
        let mut m = md("qwen2", &[]);
        m.remove("qwen2.attention.layer_norm_rms_epsilon");
        assert!(err_of(parse_md(&m, &[])).contains("layer_norm_rms_epsilon"));
        let mut m = md("qwen2", &[]);
        m.remove("general.architecture");
        assert!(err_of(parse_md(&m, &[])).contains("general.architecture"));
    }

    // ---- The real GGUF files (set HONE_TEST_QWEN2_GGUF / HONE_TEST_GEMMA3_GGUF) ----

    /// Every tensor the spec expects is in the file with the expected shape,
    /// and every tensor of the file is one the spec knows.
    fn check_real_gguf(var: &str, family: Family) -> DecoderSpec {
        let path = std::env::var(var).unwrap_or_else(|_| panic!("set {var}"));
        let mut f = std::fs::File::open(&path).unwrap();
        let content = Content::read(&mut f).unwrap();
        let spec = DecoderSpec::from_gguf(&content, &mut f).unwrap();
        assert_eq!(spec.family, family);
        let expected = spec.expected_tensors();
        for (name, _, shape) in &expected {
            let info = content
                .tensor_infos
                .get(name)
                .unwrap_or_else(|| panic!("{name} missing"));
            assert_eq!(info.shape.dims(), shape.as_slice(), "{name}");
        }
        let known: BTreeSet<&String> = expected.iter().map(|(n, _, _)| n).collect();
        let file: BTreeSet<&String> = content.tensor_infos.keys().collect();
        assert_eq!(known, file);
        spec
    }

    #[test]
    #[ignore = "needs HONE_TEST_QWEN2_GGUF (Qwen2.5-Coder-0.5B-Instruct GGUF)"]
    fn real_qwen2_5_gguf() {
        let s = check_real_gguf("HONE_TEST_QWEN2_GGUF", Family::Qwen2);
        assert_eq!(
            (s.dims.num_layers, s.dims.hidden_size, s.dims.head_dim),
            (24, 896, 64)
        );
        assert!(s.qkv_bias);
    }

    #[test]
    #[ignore = "needs HONE_TEST_GEMMA3_GGUF (gemma-3-270m GGUF)"]
    fn real_gemma3_270m_gguf() {
        let s = check_real_gguf("HONE_TEST_GEMMA3_GGUF", Family::Gemma3);
        assert_eq!(
            (s.dims.num_layers, s.dims.hidden_size, s.dims.head_dim),
            (18, 640, 256)
        );
        assert_eq!(s.sliding_window, Some(512));
        assert_eq!(s.attention_scale, 1.0 / 16.0);
        assert!(s.tie_word_embeddings);
        let hf = DecoderSpec::from_hf_config(&gemma_270m_config("")).unwrap();
        // The same model from either source differs only in format, offset and
        // the context length llama.cpp wrote.
        assert_eq!(s.layer_kinds, hf.layer_kinds);
        assert_eq!(s.rope_full, hf.rope_full);
        assert_eq!(s.rope_sliding, hf.rope_sliding);
        assert_eq!(s.attention_scale, hf.attention_scale);
        assert_eq!(s.embedding_scale, hf.embedding_scale);
        assert_eq!((s.norm.weight_offset, hf.norm.weight_offset), (0.0, 1.0));
    }
}
