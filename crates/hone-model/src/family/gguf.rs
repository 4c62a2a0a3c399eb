//! Parsing GGUF metadata (llama.cpp's keys under `<arch>.`) into a
//! [`DecoderSpec`].

use std::collections::HashMap;
use std::io::{Read, Seek};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::Device;

use super::{
    unsupported_architecture, Activation, DecoderSpec, Dims, Family, LayerKind, NormKind, NormSpec,
    QkRows, RopeScaling, RopeSpec, TensorRole, WeightFormat,
};
use crate::error::{ModelError, Result};

impl DecoderSpec {
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
        parse(&content.metadata, &has, freq_factors)
    }
}

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
        .ok_or_else(|| ModelError::MissingMetadata(m.key("attention.layer_norm_rms_epsilon")))?;
    let rope_full = rope_full(&m, head_dim, freq_factors)?;
    let (layer_kinds, sliding_window) = layers(&m, family, num_layers)?;
    // Gemma 3's sliding layers: `rope.freq_base_swa` when the file sets it,
    // else llama.cpp's default of 10 000; never scaled (as llama.cpp).
    let rope_sliding = if gemma {
        let theta = m.f64_opt("rope.freq_base_swa")?.unwrap_or(10_000.0) as f32;
        Some(RopeSpec::new(theta, head_dim, RopeScaling::None)?)
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
            / (query_pre_attn_scalar(family, num_layers, hidden, heads, head_dim) as f32).sqrt(),
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
