//! Merging LoRA adapters into the base weights, and writing the result as a Hugging Face
//! model directory (`config.json`, `model.safetensors`, `tokenizer.json`,
//! `tokenizer_config.json` with the chat template, `generation_config.json`).
//!
//! Why a directory in HF's layout: it is what transformers, vLLM and llama.cpp's converter
//! read, and [`crate::load_model`] reads it back, so `--model DIR` serves a merged model
//! with the same tokenizer and chat template as base plus adapter. Weights are kept in HF
//! row order (GGUF's Q/K permutation is undone at load), so nothing is permuted here.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use hone_text::ChatTokenizer;

use crate::config::Config;
use crate::error::{ModelError, Result};
use crate::linear::{BaseWeight, Linear};
use crate::llama::{Embedding, Llama, LmHead};

/// The files of a merged model directory.
pub const MODEL_CONFIG_FILE: &str = "config.json";
pub const MODEL_WEIGHTS_FILE: &str = "model.safetensors";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
pub const GENERATION_CONFIG_FILE: &str = "generation_config.json";

/// What [`merge_adapters`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MergeStats {
    /// Linear layers whose adapter was folded into the weight.
    pub merged_modules: usize,
}

/// Folds every attached adapter into its base weight, `W' = W + (alpha/r)·B·A`, and
/// removes the adapters, so that the plain forward pass of the result equals base plus
/// adapter. Needs dense f32 weights (load with [`crate::WeightPath::F32`]).
pub fn merge_adapters(model: &mut Llama) -> Result<MergeStats> {
    let mut merged_modules = 0;
    for (path, lin) in model.linears_mut() {
        if merge_linear(lin).map_err(|e| in_module(&path, e))? {
            merged_modules += 1;
        }
    }
    Ok(MergeStats { merged_modules })
}

/// Merge writes a plain HF `LlamaConfig` and Llama tensor names: a model of
/// another family, or with any switch (RoPE scaling included, which the
/// written config would drop), is refused rather than written wrong.
fn check_mergeable(model: &Llama) -> Result<()> {
    let family = model.spec.family;
    if family != crate::family::Family::Llama {
        return Err(ModelError::Unsupported(format!(
            "merge does not support the {} family yet (it writes Llama checkpoints only)",
            family.hf_model_type()
        )));
    }
    model
        .spec
        .require("merge", &[], "merging this model is not implemented yet")
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
    let delta = (ad
        .b
        .to_dtype(DType::F32)?
        .matmul(&ad.a.to_dtype(DType::F32)?)?
        * ad.scale)?;
    let merged = (w.to_dtype(DType::F32)? + delta)?;
    let (out, inp) = lin.dims();
    *lin = Linear::new(BaseWeight::Dense(merged), out, inp);
    Ok(true)
}

fn quantized_base() -> ModelError {
    ModelError::Config("merging needs f32 base weights; load the model with WeightPath::F32".into())
}

/// The model's weights under their HF names (`model.layers.0.self_attn.q_proj.weight`, …),
/// f32, Q/K rows in HF order. `lm_head.weight` is included only when the embeddings are
/// not tied. Attached adapters are ignored: call [`merge_adapters`] first.
pub fn hf_tensors(model: &Llama) -> Result<Vec<(String, Tensor)>> {
    let Embedding::Dense(embed) = &model.embed_tokens else {
        return Err(quantized_base());
    };
    let mut out = vec![("model.embed_tokens.weight".to_string(), embed.clone())];
    for (i, blk) in model.layers.iter().enumerate() {
        let p = format!("model.layers.{i}");
        let at = &blk.self_attn;
        let m = &blk.mlp;
        for (name, lin) in [
            ("self_attn.q_proj", &at.q_proj),
            ("self_attn.k_proj", &at.k_proj),
            ("self_attn.v_proj", &at.v_proj),
            ("self_attn.o_proj", &at.o_proj),
            ("mlp.gate_proj", &m.gate_proj),
            ("mlp.up_proj", &m.up_proj),
            ("mlp.down_proj", &m.down_proj),
        ] {
            let BaseWeight::Dense(w) = lin.base() else {
                return Err(quantized_base());
            };
            out.push((format!("{p}.{name}.weight"), w.clone()));
        }
        out.push((
            format!("{p}.input_layernorm.weight"),
            blk.input_layernorm.clone(),
        ));
        out.push((
            format!("{p}.post_attention_layernorm.weight"),
            blk.post_attention_layernorm.clone(),
        ));
    }
    out.push(("model.norm.weight".to_string(), model.norm.clone()));
    if !model.cfg.tie_word_embeddings {
        let LmHead::Dense(w) = &model.lm_head else {
            return Err(quantized_base());
        };
        out.push(("lm_head.weight".to_string(), w.clone()));
    }
    out.into_iter()
        .map(|(n, t)| Ok((n, t.to_dtype(DType::F32)?.contiguous()?)))
        .collect()
}

/// Special-token ids written into `config.json` and `generation_config.json`.
#[derive(Debug, Clone, Copy, Default)]
struct SpecialIds {
    bos: Option<u32>,
    eos: Option<u32>,
}

impl SpecialIds {
    fn of(tokenizer: Option<&ChatTokenizer>) -> Self {
        match tokenizer {
            Some(t) => Self {
                bos: t.tokenizer.bos_id(),
                eos: Some(t.tokenizer.eos_id()),
            },
            None => Self::default(),
        }
    }
}

/// HF's `LlamaConfig` for `cfg` (what [`crate::family::DecoderSpec::from_hf_config`] and transformers read).
pub fn hf_config_json(cfg: &Config, tokenizer: Option<&ChatTokenizer>) -> serde_json::Value {
    let ids = SpecialIds::of(tokenizer);
    serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": null,
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "attention_bias": false,
        "mlp_bias": false,
        "bos_token_id": ids.bos,
        "eos_token_id": ids.eos,
        "torch_dtype": "float32",
        "use_cache": true,
    })
}

/// `tokenizer_config.json`: the special tokens and the chat template, so that the
/// template survives the merge (transformers and [`ChatTokenizer::from_hf_dir`] read it).
fn tokenizer_config_json(t: &ChatTokenizer, context: usize) -> serde_json::Value {
    let text = |id: Option<u32>| id.and_then(|i| t.tokenizer.id_to_token(i));
    let eos = text(Some(t.tokenizer.eos_id()));
    serde_json::json!({
        "tokenizer_class": "GPT2Tokenizer",
        "bos_token": text(t.tokenizer.bos_id()),
        "eos_token": eos,
        "pad_token": eos,
        "chat_template": t.template.source(),
        "model_max_length": context,
        "add_prefix_space": false,
        "clean_up_tokenization_spaces": false,
    })
}

fn generation_config_json(tokenizer: Option<&ChatTokenizer>) -> serde_json::Value {
    let ids = SpecialIds::of(tokenizer);
    serde_json::json!({
        "bos_token_id": ids.bos,
        "eos_token_id": ids.eos,
        "pad_token_id": ids.eos,
    })
}

/// Writes `model` (adapters already merged) and its tokenizer as an HF directory at
/// `out`. Atomic: everything is written and fsynced in a temporary sibling directory,
/// which is then renamed to `out`, so a crash never leaves a half-written model where a
/// loader would find it. `out` must not exist yet.
pub fn write_hf_dir(model: &Llama, tokenizer: Option<&ChatTokenizer>, out: &Path) -> Result<()> {
    check_mergeable(model)?;
    if out.exists() {
        return Err(ModelError::Config(format!(
            "{} already exists; choose a new output directory",
            out.display()
        )));
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(io(&parent))?;
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "merged".into());
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempdir_in(&parent)
        .map_err(io(&parent))?;
    write_files(model, tokenizer, tmp.path())?;
    // Keep the directory (no delete on drop) only once it is renamed into place.
    std::fs::rename(tmp.path(), out).map_err(io(out))?;
    let _ = tmp.keep();
    if let Ok(d) = File::open(&parent) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn write_files(model: &Llama, tokenizer: Option<&ChatTokenizer>, dir: &Path) -> Result<()> {
    let cfg = hf_config_json(&model.cfg, tokenizer);
    write_json(&dir.join(MODEL_CONFIG_FILE), &cfg)?;
    write_json(
        &dir.join(GENERATION_CONFIG_FILE),
        &generation_config_json(tokenizer),
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
    let tensors = hf_tensors(model)?;
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
    File::open(&weights)
        .and_then(|f| f.sync_all())
        .map_err(io(&weights))?;
    Ok(())
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_vec_pretty(v)
        .map_err(|e| ModelError::Config(format!("{}: {e}", path.display())))?;
    write_synced(path, &text)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ModelError {
    let path = path.to_path_buf();
    move |source| ModelError::Io { path, source }
}

/// Merges the adapters attached to `model` and writes the HF directory `out`: the one
/// call behind `hone merge`. Returns what was merged.
pub fn merge_to_hf_dir(
    model: &mut Llama,
    tokenizer: Option<&ChatTokenizer>,
    out: &Path,
) -> Result<MergeStats> {
    check_mergeable(model)?;
    let stats = merge_adapters(model)?;
    if stats.merged_modules == 0 {
        return Err(ModelError::Adapter(
            "no adapter is attached: nothing to merge".into(),
        ));
    }
    write_hf_dir(model, tokenizer, out)?;
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
