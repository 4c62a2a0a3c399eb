//! Tiny random Llama models written to disk (GGUF and HF safetensors) for
//! fast tests here and in other crates. The GGUF carries a minimal byte-level
//! tokenizer (`<|endoftext|>`, `<|im_start|>`, `<|im_end|>` then the 256
//! GPT-2 byte symbols, no merges) and a ChatML chat template.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{ModelError, Result};
use crate::load::{gguf_name, permute_rope_rows};

/// The ChatML template written into tiny models.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// The special tokens of the tiny vocabulary, at ids 0, 1, 2.
pub const SPECIAL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// Shape of a tiny model. All dims are multiples of 32 so every weight can
/// also be quantized.
#[derive(Debug, Clone)]
pub struct TinySpec {
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub context: usize,
    pub seed: u64,
}

impl Default for TinySpec {
    fn default() -> Self {
        Self {
            hidden: 64,
            intermediate: 128,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            context: 256,
            seed: 7,
        }
    }
}

impl TinySpec {
    pub fn vocab_size(&self) -> usize {
        SPECIAL_TOKENS.len() + 256
    }
    fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }
}

/// The largest absolute entry of `t` (f32), the scale tests compare differences against.
pub fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .and_then(|a| a.max_all())
        .and_then(|m| m.to_scalar::<f32>())
        .expect("max |t| of an f32 tensor")
}

/// `len` values in [-0.5, 0.5) from a 64-bit LCG seeded with `seed`: cheap,
/// reproducible test data for the kernels (the same sequence on every machine).
pub fn lcg_uniform(seed: u64, len: usize) -> Vec<f32> {
    let mut s = seed;
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        })
        .collect()
}

/// GPT-2's byte-to-unicode table: the symbol of each byte in byte-level BPE.
pub fn byte_symbols() -> Vec<String> {
    let printable: Vec<u32> = (33..=126).chain(161..=172).chain(174..=255).collect();
    let mut out = vec![String::new(); 256];
    let mut extra = 0;
    for b in 0..256u32 {
        let cp = if printable.contains(&b) {
            b
        } else {
            extra += 1;
            255 + extra
        };
        out[b as usize] = char::from_u32(cp).map(String::from).unwrap_or_default();
    }
    out
}

/// Random weights in HF layout and names (f32).
pub fn tiny_weights(spec: &TinySpec) -> Result<Vec<(String, Tensor)>> {
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let dev = Device::Cpu;
    let mut rand_t = |shape: (usize, usize), scale: f32| -> Result<Tensor> {
        let v: Vec<f32> = (0..shape.0 * shape.1)
            .map(|_| (rng.random::<f32>() * 2.0 - 1.0) * scale)
            .collect();
        Ok(Tensor::from_vec(v, shape, &dev)?)
    };
    let (h, ff) = (spec.hidden, spec.intermediate);
    let kv = spec.kv_heads * spec.head_dim();
    let mut w = vec![(
        "model.embed_tokens.weight".to_string(),
        rand_t((spec.vocab_size(), h), 1.0)?,
    )];
    let s_h = 1.0 / (h as f32).sqrt();
    let s_ff = 1.0 / (ff as f32).sqrt();
    for i in 0..spec.layers {
        let p = format!("model.layers.{i}");
        for (name, shape, s) in [
            ("self_attn.q_proj", (h, h), s_h * 2.0),
            ("self_attn.k_proj", (kv, h), s_h * 2.0),
            ("self_attn.v_proj", (kv, h), s_h),
            ("self_attn.o_proj", (h, h), s_h),
            ("mlp.gate_proj", (ff, h), s_h),
            ("mlp.up_proj", (ff, h), s_h),
            ("mlp.down_proj", (h, ff), s_ff),
        ] {
            w.push((format!("{p}.{name}.weight"), rand_t(shape, s)?));
        }
        for n in ["input_layernorm", "post_attention_layernorm"] {
            let t = (rand_t((1, h), 0.2)? + 1.0)?.reshape(h)?;
            w.push((format!("{p}.{n}.weight"), t));
        }
    }
    let t = (rand_t((1, h), 0.2)? + 1.0)?.reshape(h)?;
    w.push(("model.norm.weight".to_string(), t));
    Ok(w)
}

/// Writes `weights` (HF layout) as a llama.cpp-style GGUF: Q/K rows permuted,
/// linear weights in `linear_dtype` (F32, Q8_0, Q4_1, ...), norms F32.
pub fn write_tiny_gguf(
    path: &Path,
    spec: &TinySpec,
    weights: &[(String, Tensor)],
    linear_dtype: GgmlDType,
) -> Result<()> {
    let mut qtensors = Vec::new();
    for (name, t) in weights {
        let t = if name.contains("q_proj") {
            permute_rope_rows(t, spec.heads)?
        } else if name.contains("k_proj") {
            permute_rope_rows(t, spec.kv_heads)?
        } else {
            t.clone()
        };
        let dtype = if t.rank() == 2 && !name.contains("embed") {
            linear_dtype
        } else {
            GgmlDType::F32
        };
        qtensors.push((gguf_name(name), QTensor::quantize(&t, dtype)?));
    }
    let md = gguf_metadata(spec);
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = qtensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(path).map_err(|e| ModelError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    gguf_file::write(&mut f, &md_refs, &t_refs)?;
    Ok(())
}

fn gguf_metadata(spec: &TinySpec) -> Vec<(String, Value)> {
    let u = |x: usize| Value::U32(x as u32);
    let mut tokens: Vec<Value> = SPECIAL_TOKENS
        .iter()
        .map(|s| Value::String(s.to_string()))
        .collect();
    tokens.extend(byte_symbols().into_iter().map(Value::String));
    let types: Vec<Value> = (0..spec.vocab_size())
        .map(|i| Value::I32(if i < SPECIAL_TOKENS.len() { 3 } else { 1 }))
        .collect();
    vec![
        ("general.architecture".into(), Value::String("llama".into())),
        ("general.name".into(), Value::String("hone-tiny".into())),
        ("llama.block_count".into(), u(spec.layers)),
        ("llama.context_length".into(), u(spec.context)),
        ("llama.embedding_length".into(), u(spec.hidden)),
        ("llama.feed_forward_length".into(), u(spec.intermediate)),
        ("llama.attention.head_count".into(), u(spec.heads)),
        ("llama.attention.head_count_kv".into(), u(spec.kv_heads)),
        ("llama.rope.freq_base".into(), Value::F32(10_000.0)),
        ("llama.rope.dimension_count".into(), u(spec.head_dim())),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            Value::F32(1e-5),
        ),
        ("llama.vocab_size".into(), u(spec.vocab_size())),
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("smollm".into())),
        ("tokenizer.ggml.tokens".into(), Value::Array(tokens)),
        ("tokenizer.ggml.token_type".into(), Value::Array(types)),
        ("tokenizer.ggml.merges".into(), Value::Array(vec![])),
        ("tokenizer.ggml.bos_token_id".into(), u(1)),
        ("tokenizer.ggml.eos_token_id".into(), u(2)),
        ("tokenizer.ggml.padding_token_id".into(), u(2)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
        (
            "tokenizer.chat_template".into(),
            Value::String(CHATML_TEMPLATE.into()),
        ),
    ]
}

/// Writes `weights` as an HF directory: `config.json` and `model.safetensors`.
pub fn write_tiny_hf_dir(dir: &Path, spec: &TinySpec, weights: &[(String, Tensor)]) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| ModelError::Io {
        path: dir.to_path_buf(),
        source: e,
    })?;
    let cfg = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": spec.vocab_size(),
        "hidden_size": spec.hidden,
        "intermediate_size": spec.intermediate,
        "num_hidden_layers": spec.layers,
        "num_attention_heads": spec.heads,
        "num_key_value_heads": spec.kv_heads,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": spec.context,
        "tie_word_embeddings": true,
        "bos_token_id": 1,
        "eos_token_id": 2
    });
    let cfg_path = dir.join("config.json");
    std::fs::write(&cfg_path, cfg.to_string()).map_err(|e| ModelError::Io {
        path: cfg_path,
        source: e,
    })?;
    let map: HashMap<String, Tensor> = weights.iter().cloned().collect();
    candle_core::safetensors::save(&map, dir.join("model.safetensors"))?;
    Ok(())
}

/// Writes both forms of one random tiny model under `dir`; returns
/// `(gguf_path, hf_dir)`.
pub fn write_tiny_model(dir: &Path, spec: &TinySpec) -> Result<(PathBuf, PathBuf)> {
    let w = tiny_weights(spec)?;
    let gguf = dir.join("tiny.gguf");
    write_tiny_gguf(&gguf, spec, &w, GgmlDType::F32)?;
    let hf = dir.join("tiny-hf");
    write_tiny_hf_dir(&hf, spec, &w)?;
    Ok((gguf, hf))
}
