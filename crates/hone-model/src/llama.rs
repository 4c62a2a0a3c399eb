//! A Llama-family model: its weights and the structure that holds them
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
use crate::linear::{dense_matmul, packed_forward, Linear, LoraAdapter};

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
                Ok(w.index_select(&ids.flatten_all()?, 0)?.reshape((b, t, h))?)
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

    /// Projects hidden states `[.., hidden]` to logits `[.., vocab]`.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        match &self.lm_head {
            LmHead::Dense(w) => dense_matmul(hidden, w),
            LmHead::Packed(p) => packed_forward(p, hidden),
        }
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
