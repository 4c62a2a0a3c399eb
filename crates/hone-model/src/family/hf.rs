//! Parsing an HF `config.json` into a [`DecoderSpec`], in both its
//! transformers 4.x (`rope_theta`, `rope_scaling`, `rope_local_base_freq`)
//! and 5.x (`rope_parameters`) forms.

use serde_json::{Map, Value as Json};

use super::{
    supported_architectures, unsupported_architecture, Activation, DecoderSpec, Dims, Family,
    LayerKind, NormKind, NormSpec, QkRows, RopeScaling, RopeSpec, WeightFormat,
};
use crate::error::{ModelError, Result};

impl DecoderSpec {
    /// Parses an HF `config.json`.
    pub fn from_hf_config(text: &str) -> Result<Self> {
        let json: Json = serde_json::from_str(text)
            .map_err(|e| ModelError::Config(format!("config.json: {e}")))?;
        let obj = json
            .as_object()
            .ok_or_else(|| ModelError::Config("config.json is not a JSON object".into()))?;
        parse(&Fields(obj))
    }
}

/// Typed reads of a JSON object with clear errors; `null` counts as absent,
/// as transformers treats it.
pub(super) struct Fields<'a>(pub(super) &'a Map<String, Json>);

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

fn parse(c: &Fields) -> Result<DecoderSpec> {
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
        max_position_embeddings: c
            .usize_opt("max_position_embeddings")?
            .unwrap_or(match family {
                Family::Llama => 2048,
                Family::Qwen2 | Family::Qwen3 => 32768,
                Family::Gemma3 => 131072,
            }),
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
        "gelu_pytorch_tanh" | "gelu_tanh" if family == Family::Gemma3 => Ok(Activation::GeluTanh),
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
