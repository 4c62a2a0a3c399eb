//! GGUF metadata of an export: llama.cpp's architecture keys written from the
//! [`DecoderSpec`], the tokenizer and descriptive keys copied from a GGUF source, and the
//! check that hone's own parser reads the written file back as the same model.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};

use super::quant::GgufType;
use crate::error::{ModelError, Result};
use crate::family::{DecoderSpec, Family, LayerKind, QkRows, RopeScaling, RopeSpec, WeightFormat};
use crate::merge::hf_config::differing_fields;

/// Where the tokenizer keys of an export come from.
pub enum TokenizerSource<'a> {
    /// A GGUF's metadata (the base model's file): every `tokenizer.*` key (vocabulary,
    /// merges, token types, special-token ids, chat template) and the descriptive
    /// `general.*` keys are copied as they are, so llama.cpp tokenizes exactly as for
    /// the base.
    Gguf(&'a Content),
    /// `tokenizer.*` keys built for the export, from an HF directory's tokenizer files
    /// ([`super::tokenizer_json::tokenizer_keys`]).
    Keys(Vec<(String, Value)>),
    /// None: a weights-only file that hone loads but llama.cpp refuses (it needs a
    /// tokenizer). For tests on tokenizer-less models; `hone export` never writes it.
    WeightsOnly,
}

/// `general.*` keys that describe the model and are copied from the source.
const DESCRIPTIVE: [&str; 10] = [
    "general.name",
    "general.organization",
    "general.basename",
    "general.finetune",
    "general.size_label",
    "general.license",
    "general.languages",
    "general.tags",
    "general.source.repo_url",
    "general.source.url",
];

/// The spec as a GGUF holds it: llama.cpp names, Llama's interleaved Q/K rows, norms as
/// multipliers, Llama 3 RoPE scaling as `rope_freqs` divisors.
pub fn gguf_spec(spec: &DecoderSpec) -> Result<DecoderSpec> {
    let mut s = spec.clone();
    s.format = WeightFormat::Gguf;
    s.qk_rows = if s.family == Family::Llama {
        QkRows::Interleaved
    } else {
        QkRows::Hf
    };
    s.norm.weight_offset = 0.0;
    if let RopeScaling::Llama3 { .. } = s.rope_full.scaling {
        let r = &s.rope_full;
        let base = RopeSpec::new(r.theta, r.dim, RopeScaling::None)?;
        let divisors = base
            .inv_freq
            .iter()
            .zip(&r.inv_freq)
            .map(|(b, f)| b / f)
            .collect();
        s.rope_full = RopeSpec::new(r.theta, r.dim, RopeScaling::FreqFactors(divisors))?;
    }
    Ok(s)
}

/// Every metadata key of the export, in the order written.
pub fn gguf_metadata(
    spec: &DecoderSpec,
    tokenizer: &TokenizerSource<'_>,
    ty: GgufType,
) -> Result<Vec<(String, Value)>> {
    let arch = spec.family.gguf_architecture();
    let mut md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        ("general.type".into(), Value::String("model".into())),
    ];
    let source = match tokenizer {
        TokenizerSource::Gguf(c) => Some(&c.metadata),
        TokenizerSource::Keys(_) | TokenizerSource::WeightsOnly => None,
    };
    let name = source
        .and_then(|m| m.get("general.name"))
        .cloned()
        .unwrap_or_else(|| Value::String(format!("hone export ({arch})")));
    md.push(("general.name".into(), name));
    if let Some(src) = source {
        for k in DESCRIPTIVE.iter().skip(1) {
            if let Some(v) = src.get(*k) {
                md.push((k.to_string(), v.clone()));
            }
        }
        for (k, v) in sorted(src) {
            if k.starts_with("general.base_model.") {
                md.push((k.clone(), v.clone()));
            }
        }
    }
    md.push(("general.file_type".into(), Value::U32(ty.file_type())));
    if ty.is_quantized() {
        md.push(("general.quantization_version".into(), Value::U32(2)));
    }
    let arch_keys = arch_metadata(spec)?;
    let have: Vec<String> = arch_keys.iter().map(|(k, _)| k.clone()).collect();
    md.extend(arch_keys);
    if let Some(src) = source {
        // Keys of the same architecture hone does not model (llama.cpp may), unchanged:
        // the export has the source's architecture and shapes.
        let prefix = format!("{arch}.");
        for (k, v) in sorted(src) {
            if k.starts_with(&prefix) && !have.contains(k) {
                md.push((k.clone(), v.clone()));
            }
        }
        for (k, v) in sorted(src) {
            if k.starts_with("tokenizer.") {
                md.push((k.clone(), v.clone()));
            }
        }
    }
    if let TokenizerSource::Keys(keys) = tokenizer {
        md.extend(keys.iter().cloned());
    }
    Ok(md)
}

fn sorted(m: &HashMap<String, Value>) -> Vec<(&String, &Value)> {
    let mut v: Vec<_> = m.iter().collect();
    v.sort_by(|a, b| a.0.cmp(b.0));
    v
}

/// llama.cpp's `<arch>.*` keys for `spec` (the inverse of `DecoderSpec::from_gguf`).
fn arch_metadata(spec: &DecoderSpec) -> Result<Vec<(String, Value)>> {
    let arch = spec.family.gguf_architecture();
    let d = &spec.dims;
    let u = |x: usize| Value::U32(x as u32);
    let mut md: Vec<(String, Value)> = vec![
        ("block_count".into(), u(d.num_layers)),
        ("context_length".into(), u(d.max_position_embeddings)),
        ("embedding_length".into(), u(d.hidden_size)),
        ("feed_forward_length".into(), u(d.intermediate_size)),
        ("attention.head_count".into(), u(d.num_heads)),
        ("attention.head_count_kv".into(), u(d.num_kv_heads)),
        ("attention.key_length".into(), u(d.head_dim)),
        ("attention.value_length".into(), u(d.head_dim)),
        (
            "attention.layer_norm_rms_epsilon".into(),
            Value::F32(spec.norm.eps as f32),
        ),
        ("rope.freq_base".into(), Value::F32(spec.rope_full.theta)),
        ("rope.dimension_count".into(), u(spec.rope_full.dim)),
        ("vocab_size".into(), u(d.vocab_size)),
    ];
    match &spec.rope_full.scaling {
        RopeScaling::None | RopeScaling::FreqFactors(_) => {}
        RopeScaling::Linear { factor } => {
            md.push(("rope.scaling.type".into(), Value::String("linear".into())));
            md.push(("rope.scaling.factor".into(), Value::F32(*factor)));
        }
        RopeScaling::Llama3 { .. } => {
            return Err(ModelError::Unsupported(
                "Llama 3 RoPE scaling must be converted to rope_freqs first".into(),
            ))
        }
    }
    if let Some(cap) = spec.final_logit_softcap {
        md.push(("final_logit_softcapping".into(), Value::F32(cap)));
    }
    if let Some(w) = spec.sliding_window {
        md.push(("attention.sliding_window".into(), u(w)));
        // Gemma 3's sliding layers' RoPE base (llama.cpp reads it with the window, else
        // takes 10 000; its converter writes it from `rope_local_base_freq` / the
        // `sliding_attention` RoPE parameters). Their RoPE is never scaled in llama.cpp:
        // a scaled one fails the read-back check.
        if let Some(r) = &spec.rope_sliding {
            md.push(("rope.freq_base_swa".into(), Value::F32(r.theta)));
        }
        // llama.cpp's default is 5 sliding layers then 1 full; any other pattern is
        // written out, one bool per layer (true = sliding).
        let default: Vec<LayerKind> = (0..d.num_layers)
            .map(|i| {
                if i % 6 < 5 {
                    LayerKind::Sliding
                } else {
                    LayerKind::Full
                }
            })
            .collect();
        if spec.layer_kinds != default {
            let bools = spec
                .layer_kinds
                .iter()
                .map(|k| Value::Bool(*k == LayerKind::Sliding))
                .collect();
            md.push((
                "attention.sliding_window_pattern".into(),
                Value::Array(bools),
            ));
        }
    }
    Ok(md
        .into_iter()
        .map(|(k, v)| (format!("{arch}.{k}"), v))
        .collect())
}

/// Reads the written file back with hone's GGUF parser and refuses it unless it
/// describes `want` (the export's [`gguf_spec`]): what llama.cpp's keys cannot say
/// (e.g. Gemma 3's `query_pre_attn_scalar` other than the head size, which llama.cpp
/// derives) is an error.
pub fn check_round_trip(path: &Path, want: &DecoderSpec) -> Result<()> {
    let mut f = std::fs::File::open(path).map_err(super::file::io(path))?;
    let content = Content::read(&mut f)?;
    let mut got = DecoderSpec::from_gguf(&content, &mut f)?;
    if same_rope(&got.rope_full, &want.rope_full) {
        got.rope_full = want.rope_full.clone();
    }
    if let (Some(g), Some(w)) = (got.rope_sliding.as_mut(), want.rope_sliding.as_ref()) {
        if same_rope(g, w) {
            *g = w.clone();
        }
    }
    // GGUF stores ε as f32 (llama.cpp reads no other type).
    if got.norm.eps as f32 == want.norm.eps as f32 {
        got.norm.eps = want.norm.eps;
    }
    if (got.attention_scale - want.attention_scale).abs() <= 1e-6 * want.attention_scale.abs() {
        got.attention_scale = want.attention_scale;
    }
    if &got == want {
        return Ok(());
    }
    Err(ModelError::Unsupported(format!(
        "cannot export this {} model as GGUF `{}`: llama.cpp's metadata cannot express its {}",
        want.family.hf_model_type(),
        want.family.gguf_architecture(),
        differing_fields(want, &got).join(", ")
    )))
}

/// Equal RoPE up to f32 rounding of the scaled frequencies.
fn same_rope(a: &RopeSpec, b: &RopeSpec) -> bool {
    a.theta == b.theta
        && a.dim == b.dim
        && a.inv_freq.len() == b.inv_freq.len()
        && a.inv_freq
            .iter()
            .zip(&b.inv_freq)
            .all(|(x, y)| (x - y).abs() <= 1e-6 * y.abs().max(1e-30))
}
