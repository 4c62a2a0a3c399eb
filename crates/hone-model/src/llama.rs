//! A model of any supported family (see [`crate::family`]): its weights and the structure that holds them
//! ([`Llama`], blocks, embedding, LM head), and the weight paths it can be
//! loaded with. The passes that run it live beside it: the tensor forward
//! pass ([`crate::forward`], training's reference and scoring), the packed
//! decode step ([`crate::decode`], serving), and generation's step on either
//! ([`crate::kv_cache`]).
//!
//! Weights are always in HF layout: GGUF's Q/K rows, which llama.cpp permutes
//! for interleaved RoPE, are un-permuted at load, so one (half-split) RoPE
//! serves both sources and LoRA adapters on `q_proj`/`k_proj` stay PEFT
//! compatible.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::config::Config;
use crate::decode::packed::PackedMatrix;
use crate::error::{ModelError, Result};
use crate::family::{DecoderSpec, LayerKind, RopeSpec};
use crate::linear::{dense_matmul, packed_forward, Linear, LoraAdapter};
use crate::token_rows::TokenRows;

/// The cosine and sine tables of RoPE for every position up to the context length.
#[derive(Debug, Clone)]
pub struct RopeTables {
    pub cos: Tensor,
    pub sin: Tensor,
}

impl RopeTables {
    /// The tables of `rope` (its inverse frequencies, scaling applied) for
    /// positions `0..positions`.
    pub fn new(rope: &RopeSpec, positions: usize, device: &Device) -> Result<Self> {
        let half = rope.inv_freq.len();
        let n = positions;
        let inv = Tensor::from_vec(rope.inv_freq.clone(), (1, half), device)?;
        let pos = Tensor::arange(0u32, n as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((n, 1))?;
        let freqs = pos.broadcast_mul(&inv)?;
        Ok(Self {
            cos: freqs.cos()?,
            sin: freqs.sin()?,
        })
    }

    pub(crate) fn slice(&self, start: usize, t: usize) -> Result<(Tensor, Tensor)> {
        Ok((self.cos.narrow(0, start, t)?, self.sin.narrow(0, start, t)?))
    }
}

#[derive(Debug, Clone)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    /// Frozen biases of q, k, v (`[out]`), when the spec has `qkv_bias`.
    pub q_bias: Option<Tensor>,
    pub k_bias: Option<Tensor>,
    pub v_bias: Option<Tensor>,
    /// Per-head RMSNorm weights (`[head_dim]`) of q and k, when `qk_norm`.
    pub q_norm: Option<Tensor>,
    pub k_norm: Option<Tensor>,
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
    /// The norm in front of the feed-forward (the spec's `FfnNorm`: Llama's
    /// `post_attention_layernorm`, Gemma's `pre_feedforward_layernorm`).
    pub post_attention_layernorm: Tensor,
    pub mlp: Mlp,
    /// Gemma's norm of the attention output before the residual add.
    pub post_attn_norm: Option<Tensor>,
    /// Gemma's norm of the feed-forward output before the residual add.
    pub post_ffn_norm: Option<Tensor>,
}

impl Block {
    /// The block's seven projections with their module paths inside the
    /// block (`self_attn.q_proj` … `mlp.down_proj`), in HF order.
    pub fn linears_mut(&mut self) -> [(&'static str, &mut Linear); 7] {
        let (a, m) = (&mut self.self_attn, &mut self.mlp);
        [
            ("self_attn.q_proj", &mut a.q_proj),
            ("self_attn.k_proj", &mut a.k_proj),
            ("self_attn.v_proj", &mut a.v_proj),
            ("self_attn.o_proj", &mut a.o_proj),
            ("mlp.gate_proj", &mut m.gate_proj),
            ("mlp.up_proj", &mut m.up_proj),
            ("mlp.down_proj", &mut m.down_proj),
        ]
    }
}

/// The token embedding table: dense, or packed (looked up row by row).
#[derive(Debug, Clone)]
pub enum Embedding {
    Dense(Tensor),
    Packed(Arc<PackedMatrix>),
}

impl Embedding {
    /// Rows `[b, t, hidden]` of `ids: [b, t]`; an id outside the vocabulary
    /// is an error.
    pub(crate) fn lookup(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        match self {
            Embedding::Dense(w) => {
                let h = w.dim(1)?;
                let rows = w.index_select(&ids.flatten_all()?, 0)?;
                // A bf16-held table (`--base-weights bf16`) widens the rows it gives.
                Ok(rows.to_dtype(DType::F32)?.reshape((b, t, h))?)
            }
            Embedding::Packed(p) => {
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
    Packed(Arc<PackedMatrix>),
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

/// Which weight path a model was loaded with. Two on purpose: every forward
/// path is one more place for a new model family to be wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightPath {
    /// Everything dequantized to f32: training and the reference.
    F32,
    /// hone's own kernels ([`crate::decode`]): Q4_1 and Q8_0 blocks kept as in
    /// the file (other types re-quantized to Q8_0), multiplied with f32
    /// activations. The serving path.
    Packed,
}

impl WeightPath {
    pub fn as_str(self) -> &'static str {
        match self {
            WeightPath::F32 => "f32",
            WeightPath::Packed => "packed",
        }
    }
}

/// A causal language model of any supported family ([`DecoderSpec`]):
/// named for the Llama block every family shares.
#[derive(Debug, Clone)]
pub struct Llama {
    /// The sizes, a view of `spec`.
    pub cfg: Config,
    /// What the family switches on; every forward path reads it.
    pub spec: DecoderSpec,
    pub embed_tokens: Embedding,
    pub layers: Vec<Block>,
    pub norm: Tensor,
    pub lm_head: LmHead,
    /// RoPE of full-attention layers (and of all layers unless
    /// `rope_sliding` is set).
    pub rope: RopeTables,
    /// RoPE of sliding layers when the spec gives them their own.
    pub rope_sliding: Option<RopeTables>,
    pub weight_path: WeightPath,
    /// Replacement rows of chosen tokens (PEFT's trainable tokens), part of the adapter.
    pub(crate) token_rows: Option<TokenRows>,
    device: Device,
}

impl Llama {
    pub fn from_parts(
        spec: DecoderSpec,
        embed_tokens: Embedding,
        layers: Vec<Block>,
        norm: Tensor,
        lm_head: LmHead,
        weight_path: WeightPath,
        device: &Device,
    ) -> Result<Self> {
        let n = spec.dims.max_position_embeddings;
        let rope = RopeTables::new(&spec.rope_full, n, device)?;
        let rope_sliding = match &spec.rope_sliding {
            Some(r) => Some(RopeTables::new(r, n, device)?),
            None => None,
        };
        Ok(Self {
            cfg: Config::from_spec(&spec),
            spec,
            rope_sliding,
            embed_tokens,
            layers,
            norm,
            lm_head,
            rope,
            weight_path,
            token_rows: None,
            device: device.clone(),
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The RoPE tables of layer `i` (sliding layers may have their own).
    pub fn rope_of(&self, layer: usize) -> &RopeTables {
        match (self.spec.layer_kinds[layer], &self.rope_sliding) {
            (LayerKind::Sliding, Some(r)) => r,
            _ => &self.rope,
        }
    }

    /// Projects hidden states `[.., hidden]` to logits `[.., vocab]`, with
    /// the spec's final softcap.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.logits_with(hidden, true)
    }

    /// [`Self::logits`], with the adapter's token rows only when `use_adapters`.
    pub fn logits_with(&self, hidden: &Tensor, use_adapters: bool) -> Result<Tensor> {
        let z = match &self.lm_head {
            LmHead::Dense(w) => dense_matmul(hidden, w)?,
            LmHead::Packed(p) => packed_forward(p, hidden)?,
        };
        let z = match self.active_token_rows(use_adapters) {
            Some(rows) => rows.patch_logits(&z, hidden)?,
            None => z,
        };
        match self.spec.final_logit_softcap {
            Some(cap) => Ok(((z / cap as f64)?.tanh()? * cap as f64)?),
            None => Ok(z),
        }
    }

    /// Every linear layer with its HF module path, e.g.
    /// `model.layers.3.self_attn.q_proj`.
    pub fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut out = Vec::new();
        for (i, blk) in self.layers.iter_mut().enumerate() {
            for (name, lin) in blk.linears_mut() {
                out.push((format!("model.layers.{i}.{name}"), lin));
            }
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

    /// The attached trainable token rows, if any.
    pub fn token_rows(&self) -> Option<&TokenRows> {
        self.token_rows.as_ref()
    }

    /// Attaches (or with `None` removes) replacement token rows; adapters stay.
    pub fn set_token_rows(&mut self, rows: Option<TokenRows>) {
        self.token_rows = rows;
    }

    /// The attached token rows, when `use_adapters` (the adapter switched off, e.g. DPO's
    /// reference, switches them off too).
    pub(crate) fn active_token_rows(&self, use_adapters: bool) -> Option<&TokenRows> {
        self.token_rows.as_ref().filter(|_| use_adapters)
    }

    /// The base embedding rows of `ids` (`[k, hidden]` f32, unscaled): where trained
    /// token rows start, as PEFT initialises them.
    pub fn embedding_rows(&self, ids: &[u32]) -> Result<Tensor> {
        crate::token_rows::check_ids(ids, self.cfg.vocab_size)?;
        let idx = Tensor::new(ids, self.device())?.unsqueeze(0)?;
        self.embed_tokens
            .lookup(&idx)?
            .squeeze(0)
            .map_err(Into::into)
    }

    /// The base LM head's rows of `ids` (`[k, hidden]` f32): where an untied model's
    /// trained head rows start.
    pub fn head_rows(&self, ids: &[u32]) -> Result<Tensor> {
        crate::token_rows::check_ids(ids, self.cfg.vocab_size)?;
        match &self.lm_head {
            LmHead::Dense(w) => {
                let idx = Tensor::new(ids, w.device())?;
                Ok(w.index_select(&idx, 0)?.to_dtype(candle_core::DType::F32)?)
            }
            LmHead::Packed(p) => {
                let h = p.dims().1;
                let mut data = Vec::with_capacity(ids.len() * h);
                for &id in ids {
                    data.extend(p.row_f32(id as usize)?);
                }
                Ok(Tensor::from_vec(data, (ids.len(), h), &self.device)?)
            }
        }
    }

    /// Removes every adapter, token rows included.
    pub fn clear_adapters(&mut self) {
        self.token_rows = None;
        for (_, l) in self.linears_mut() {
            // Removing never fails the shape check.
            let _ = l.set_adapter(None);
        }
    }
}
