//! Merging LoRA adapters into the base weights, and writing the result as a Hugging Face
//! model directory (`config.json`, `model.safetensors`, `tokenizer.json`,
//! `tokenizer_config.json` with the chat template, `generation_config.json`).
//!
//! Why a directory in HF's layout: it is what transformers, vLLM and llama.cpp's converter
//! read, and [`crate::load_model`] reads it back, so `--model DIR` serves a merged model
//! with the same tokenizer and chat template as base plus adapter. Weights are kept in HF
//! row order (GGUF's Q/K permutation is undone at load), so nothing is permuted here.
//!
//! Every family is written from its [`DecoderSpec`](crate::family::DecoderSpec): tensor
//! names by role ([`DecoderSpec::tensor_name_in`](crate::family::DecoderSpec::tensor_name_in)
//! with HF names, also for a model read from GGUF), norm weights back in HF's convention
//! (Gemma stores `w` for a `(1 + w)` scale; hone holds the multiplier), biases and extra
//! norms as loaded, and `config.json` from the spec (`hf_config`), read back and compared
//! so that a model the config cannot express is refused rather than written wrong.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Tensor};
use hone_text::ChatTokenizer;

use crate::atomic_file;
use crate::error::{ModelError, Result};
use crate::family::{NormKind, TensorRole, WeightFormat};
use crate::linear::{BaseWeight, Linear};
use crate::llama::{Block, Embedding, Llama, LmHead};

pub(crate) mod hf_config;

pub use hf_config::hf_config_json;
use hf_config::{generation_config_json, tokenizer_config_json, SpecialIds};

/// The files of a merged model directory.
pub const MODEL_CONFIG_FILE: &str = "config.json";
pub const MODEL_WEIGHTS_FILE: &str = "model.safetensors";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
pub const GENERATION_CONFIG_FILE: &str = "generation_config.json";

/// The dtype of the merged weights (`hone merge --dtype`). Merging itself is always done
/// in f64 and rounded to f32 once (see `merge_linear`); this is only how
/// `model.safetensors` stores the result. Norms, biases and every other tensor are
/// written in the same dtype, as transformers' `save_pretrained` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MergeDtype {
    /// Exact: the merged f32 weights bit for bit (4 bytes a weight).
    F32,
    /// Half the size of f32 with f32's range: the default, as most base models ship.
    #[default]
    Bf16,
    /// Half the size, 3 more mantissa bits than bf16 but a range of ±65504.
    F16,
}

impl MergeDtype {
    /// `f32`, `bf16`, `f16` (also `float32`, `bfloat16`, `float16`).
    pub fn parse(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "float32" | "fp32" => Ok(Self::F32),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            "f16" | "float16" | "fp16" => Ok(Self::F16),
            other => Err(ModelError::Config(format!(
                "unknown merge dtype `{other}`; valid: f32, bf16, f16"
            ))),
        }
    }

    /// candle's dtype for the tensors.
    pub fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::Bf16 => DType::BF16,
            Self::F16 => DType::F16,
        }
    }

    /// The `torch_dtype` of `config.json`.
    pub fn torch_name(self) -> &'static str {
        match self {
            Self::F32 => "float32",
            Self::Bf16 => "bfloat16",
            Self::F16 => "float16",
        }
    }
}

/// What [`merge_adapters`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MergeStats {
    /// Linear layers whose adapter was folded into the weight.
    pub merged_modules: usize,
    /// Token rows written into the embedding (and the tied LM head).
    pub merged_token_rows: usize,
}

/// Folds every attached adapter into its base weight, `W' = W + (alpha/r)·B·A`, and
/// removes the adapters, so that the plain forward pass of the result equals base plus
/// adapter. Needs dense f32 weights (load with [`crate::WeightPath::F32`]). Trainable
/// token rows replace the embedding's rows (and the LM head's when tied), as PEFT's
/// merge does.
pub fn merge_adapters(model: &mut Llama) -> Result<MergeStats> {
    let mut merged_modules = 0;
    for (path, lin) in model.linears_mut() {
        if merge_linear(lin).map_err(|e| in_module(&path, e))? {
            merged_modules += 1;
        }
    }
    let merged_token_rows = merge_token_rows(model)?;
    Ok(MergeStats {
        merged_modules,
        merged_token_rows,
    })
}

/// Writes the attached token rows into the embedding (and the head's rows into the LM
/// head) and detaches them; returns how many tokens.
fn merge_token_rows(model: &mut Llama) -> Result<usize> {
    let Some(rows) = model.token_rows.take() else {
        return Ok(0);
    };
    let replace = |w: &Tensor, with: &Tensor| -> Result<Tensor> {
        let mut w = w.to_dtype(DType::F32)?;
        let h = w.dim(1)?;
        for (j, &id) in rows.ids().iter().enumerate() {
            let row = with.narrow(0, j, 1)?.detach();
            let id = id as usize;
            w = w.slice_assign(&[id..id + 1, 0..h], &row)?;
        }
        Ok(w)
    };
    model.embed_tokens = match &model.embed_tokens {
        Embedding::Dense(w) => Embedding::Dense(replace(w, rows.rows())?),
        Embedding::Packed(_) => return Err(quantized_base()),
    };
    if let Some(head) = rows.head_rows() {
        model.lm_head = match &model.lm_head {
            LmHead::Dense(w) => LmHead::Dense(replace(w, head)?),
            LmHead::Packed(_) => return Err(quantized_base()),
        };
    }
    Ok(rows.ids().len())
}

/// Refuses, before anything is merged or written, a model whose HF config
/// cannot describe it (see `hf_config`): every supported family is written,
/// but not, e.g., a Llama GGUF whose RoPE scaling is only `rope_freqs.weight`.
fn check_mergeable(model: &Llama) -> Result<()> {
    hf_config_json(&model.spec, None).map(|_| ())
}

fn in_module(path: &str, e: ModelError) -> ModelError {
    match e {
        ModelError::Config(m) => ModelError::Config(format!("{path}: {m}")),
        other => other,
    }
}

/// Merges one linear's adapter; `false` when it has none.
fn merge_linear(lin: &mut Linear) -> Result<bool> {
    let Some(ad) = lin.adapter().cloned() else {
        return Ok(false);
    };
    let BaseWeight::Dense(w) = lin.base() else {
        return Err(quantized_base());
    };
    // In f64, rounded to f32 once: the stored weight is the f32 nearest to the exact
    // `W + s·B·A` (an f32 product and sum would round twice, up to ~1 ulp more).
    let delta = (ad
        .b
        .to_dtype(DType::F64)?
        .matmul(&ad.a.to_dtype(DType::F64)?)?
        * ad.scale)?;
    let merged = (w.to_dtype(DType::F64)? + delta)?.to_dtype(DType::F32)?;
    let (out, inp) = lin.dims();
    *lin = Linear::new(BaseWeight::Dense(merged), out, inp);
    Ok(true)
}

pub(crate) fn quantized_base() -> ModelError {
    ModelError::Config("merging needs f32 base weights; load the model with WeightPath::F32".into())
}

/// The model's weights under their HF names (`model.layers.0.self_attn.q_proj.weight`, …),
/// f32, Q/K rows in HF order, norms in HF's convention (`w` where Gemma scales by
/// `1 + w`): every tensor the model's [`DecoderSpec`](crate::family::DecoderSpec) lists,
/// by role. `lm_head.weight` is included only when the embeddings are not tied. Attached
/// adapters are ignored: call [`merge_adapters`] first.
pub fn hf_tensors(model: &Llama) -> Result<Vec<(String, Tensor)>> {
    let spec = &model.spec;
    let name = |role, layer| spec.tensor_name_in(WeightFormat::HfSafetensors, role, layer);
    let mut out = Vec::new();
    for role in spec.model_roles() {
        if let Some(n) = name(role, None) {
            out.push((n, role, model_tensor(model, role)?));
        }
    }
    for (i, blk) in model.layers.iter().enumerate() {
        for role in spec.layer_roles() {
            if let Some(n) = name(role, Some(i)) {
                let t = block_tensor(blk, role)?.ok_or_else(|| missing(role, i))?;
                out.push((n, role, t));
            }
        }
    }
    let one_plus = spec.norm.kind == NormKind::OnePlusScale;
    out.into_iter()
        .map(|(n, role, t)| {
            let t = t.to_dtype(DType::F32)?;
            // hone holds Gemma's multiplier 1 + w; HF stores w.
            let t = if one_plus && role.is_norm() {
                (t - 1.0)?
            } else {
                t
            };
            Ok((n, t.contiguous()?))
        })
        .collect()
}

fn missing(role: TensorRole, layer: usize) -> ModelError {
    ModelError::Config(format!(
        "layer {layer} has no {role:?} weight although the model's spec lists it"
    ))
}

/// A model-level weight as loaded (norms as multipliers).
pub(crate) fn model_tensor(model: &Llama, role: TensorRole) -> Result<Tensor> {
    match role {
        TensorRole::Embed => match &model.embed_tokens {
            Embedding::Dense(w) => Ok(w.clone()),
            Embedding::Packed(_) => Err(quantized_base()),
        },
        TensorRole::LmHead => match &model.lm_head {
            LmHead::Dense(w) => Ok(w.clone()),
            LmHead::Packed(_) => Err(quantized_base()),
        },
        TensorRole::FinalNorm => Ok(model.norm.clone()),
        other => Err(ModelError::Config(format!(
            "{other:?} is not a model-level weight hone writes"
        ))),
    }
}

/// A per-layer weight as loaded (norms as multipliers); `None` when the block
/// lacks it. A packed (quantized) projection is an error: merge writes f32.
pub(crate) fn block_tensor(blk: &Block, role: TensorRole) -> Result<Option<Tensor>> {
    use TensorRole::*;
    let at = &blk.self_attn;
    let m = &blk.mlp;
    let dense = |l: &Linear| match l.base() {
        BaseWeight::Dense(w) => Ok(Some(w.clone())),
        BaseWeight::Packed(_) => Err(quantized_base()),
    };
    Ok(match role {
        AttnNorm => Some(blk.input_layernorm.clone()),
        FfnNorm => Some(blk.post_attention_layernorm.clone()),
        PostAttnNorm => blk.post_attn_norm.clone(),
        PostFfnNorm => blk.post_ffn_norm.clone(),
        Q => return dense(&at.q_proj),
        K => return dense(&at.k_proj),
        V => return dense(&at.v_proj),
        O => return dense(&at.o_proj),
        QBias => at.q_bias.clone(),
        KBias => at.k_bias.clone(),
        VBias => at.v_bias.clone(),
        QNorm => at.q_norm.clone(),
        KNorm => at.k_norm.clone(),
        Gate => return dense(&m.gate_proj),
        Up => return dense(&m.up_proj),
        Down => return dense(&m.down_proj),
        Embed | LmHead | FinalNorm | RopeFreqs => None,
    })
}

/// Writes `model` (adapters already merged) and its tokenizer as an HF directory at
/// `out`, weights in `dtype`. Atomic: everything is written and fsynced in a staging
/// sibling directory, which is then renamed to `out` (files 0644, the directory 0755
/// under umask 022; see [`atomic_file`]), so a crash never leaves a half-written model
/// where a loader would find it. `out` must not exist yet.
pub fn write_hf_dir(
    model: &Llama,
    tokenizer: Option<&ChatTokenizer>,
    out: &Path,
    dtype: MergeDtype,
) -> Result<()> {
    check_mergeable(model)?;
    if out.exists() {
        return Err(ModelError::Config(format!(
            "{} already exists; choose a new output directory",
            out.display()
        )));
    }
    let staged = atomic_file::staging_dir(out).map_err(io(out))?;
    let written = write_files(model, tokenizer, &staged, dtype)
        .and_then(|()| atomic_file::publish_dir(&staged, out).map_err(io(out)));
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&staged);
    }
    written
}

fn write_files(
    model: &Llama,
    tokenizer: Option<&ChatTokenizer>,
    dir: &Path,
    dtype: MergeDtype,
) -> Result<()> {
    let mut cfg = hf_config_json(&model.spec, tokenizer)?;
    cfg["torch_dtype"] = dtype.torch_name().into();
    write_json(&dir.join(MODEL_CONFIG_FILE), &cfg)?;
    write_json(
        &dir.join(GENERATION_CONFIG_FILE),
        &generation_config_json(&SpecialIds::of(tokenizer)),
    )?;
    if let Some(t) = tokenizer {
        let json = t
            .tokenizer
            .inner()
            .to_string(false)
            .map_err(|e| ModelError::Text(format!("serializing tokenizer.json: {e}")))?;
        write_synced(&dir.join(TOKENIZER_FILE), json.as_bytes())?;
        let tc = tokenizer_config_json(t, model.cfg.max_position_embeddings);
        write_json(&dir.join(TOKENIZER_CONFIG_FILE), &tc)?;
    }
    let tensors = hf_tensors(model)?
        .into_iter()
        .map(|(n, t)| Ok((n, t.to_dtype(dtype.dtype())?)))
        .collect::<Result<Vec<_>>>()?;
    let weights = dir.join(MODEL_WEIGHTS_FILE);
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::tensor::serialize_to_file(
        tensors.iter().map(|(n, t)| (n.as_str(), t)),
        Some(metadata),
        &weights,
    )
    .map_err(|e| ModelError::CorruptSafetensors {
        path: weights.clone(),
        msg: format!("writing: {e}"),
    })?;
    atomic_file::finish_file(&weights).map_err(io(&weights))
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_vec_pretty(v)
        .map_err(|e| ModelError::Config(format!("{}: {e}", path.display())))?;
    write_synced(path, &text)
}

/// A file inside the staging directory: written, then given its final mode and fsynced.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(io(path))?;
    atomic_file::finish_file(path).map_err(io(path))
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ModelError {
    let path = path.to_path_buf();
    move |source| ModelError::Io {
        path: path.clone(),
        source,
    }
}

/// [`merge_to_hf_dir_as`] in f32, the exact reference.
pub fn merge_to_hf_dir(
    model: &mut Llama,
    tokenizer: Option<&ChatTokenizer>,
    out: &Path,
) -> Result<MergeStats> {
    merge_to_hf_dir_as(model, tokenizer, out, MergeDtype::F32)
}

/// Merges the adapters attached to `model` and writes the HF directory `out` with
/// weights in `dtype`: the one call behind `hone merge`. Returns what was merged.
pub fn merge_to_hf_dir_as(
    model: &mut Llama,
    tokenizer: Option<&ChatTokenizer>,
    out: &Path,
    dtype: MergeDtype,
) -> Result<MergeStats> {
    check_mergeable(model)?;
    let stats = merge_adapters(model)?;
    if stats.merged_modules == 0 && stats.merged_token_rows == 0 {
        return Err(ModelError::Adapter(
            "no adapter is attached: nothing to merge".into(),
        ));
    }
    write_hf_dir(model, tokenizer, out, dtype)?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linear::LoraAdapter;
    use candle_core::Device;

    #[test]
    fn merged_weight_is_base_plus_scaled_b_times_a() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1., (6, 4), &dev)?;
        let a = Tensor::randn(0f32, 1., (2, 4), &dev)?;
        let b = Tensor::randn(0f32, 1., (6, 2), &dev)?;
        let mut lin = Linear::new(BaseWeight::Dense(w.clone()), 6, 4);
        lin.set_adapter(Some(LoraAdapter::new(a.clone(), b.clone(), 16.0)?))?;
        let x = Tensor::randn(0f32, 1., (3, 4), &dev)?;
        let want = lin.forward(&x, true)?;
        assert!(merge_linear(&mut lin)?);
        assert!(lin.adapter().is_none());
        let got = lin.forward(&x, true)?;
        // Outputs reach tens (alpha/r = 8 on random matrices): compare relative to
        // their size, as f32 rounding of the two orders of summation grows with it.
        let size = want.abs()?.max_all()?.to_scalar::<f32>()?.max(1.0);
        let d = (want - got)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(d < 1e-6 * size * 8.0, "{d} on outputs up to {size}");
        let BaseWeight::Dense(m) = lin.base() else {
            panic!("dense")
        };
        let expect = (w + (b.matmul(&a)? * 8.0)?)?;
        let d = (m - expect)?.abs()?.max_all()?.to_scalar::<f32>()?;
        // Random inputs of magnitude ~10 after scaling: equal up to f32 rounding
        // (the merge may scale before or after the product).
        assert!(d < 1e-4, "{d}");
        assert!(!merge_linear(&mut lin)?, "nothing left to merge");
        Ok(())
    }
}
