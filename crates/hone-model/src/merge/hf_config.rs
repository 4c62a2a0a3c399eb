//! The JSON files of a written HF directory, built from the model's
//! [`DecoderSpec`]: `config.json` (one builder per family on top of the
//! fields every family shares), `tokenizer_config.json` and
//! `generation_config.json`.
//!
//! Why from the spec and not from the file the model came from: a model read
//! from GGUF has no `config.json`, and the spec is what hone computed with, so
//! a config written from it describes exactly the merged weights. The written
//! config is read back with [`DecoderSpec::from_hf_config`] and compared with
//! the spec ([`check_round_trip`]): a model whose spec the config cannot
//! express is refused instead of written wrong.
//!
//! RoPE is written in both transformers forms: 5.x's `rope_parameters` and
//! 4.x's `rope_theta` / `rope_scaling` (/ Gemma's `rope_local_base_freq`),
//! with the same values, so either version reads the same model.

use serde_json::{json, Map, Value as Json};

use hone_text::ChatTokenizer;

use crate::error::{ModelError, Result};
use crate::family::{
    DecoderSpec, Family, LayerKind, NormKind, QkRows, RopeScaling, RopeSpec, WeightFormat,
};

/// Special-token ids written into `config.json` and `generation_config.json`.
#[derive(Debug, Clone, Default)]
pub(super) struct SpecialIds {
    bos: Option<u32>,
    eos: Option<u32>,
    /// EOS then the end-of-turn tokens (`<|im_end|>`, `<end_of_turn>`, …):
    /// what generation stops on.
    stop: Vec<u32>,
}

impl SpecialIds {
    pub(super) fn of(tokenizer: Option<&ChatTokenizer>) -> Self {
        match tokenizer {
            Some(t) => {
                let eos = t.tokenizer.eos_id();
                let mut stop = vec![eos];
                for &id in t.tokenizer.stop_token_ids() {
                    if !stop.contains(&id) {
                        stop.push(id);
                    }
                }
                Self {
                    bos: t.tokenizer.bos_id(),
                    eos: Some(eos),
                    stop,
                }
            }
            None => Self::default(),
        }
    }
}

/// HF's `config.json` for `spec`: the shared fields, then the family's own.
/// Refuses a spec the family's config cannot express (see the module doc).
pub fn hf_config_json(spec: &DecoderSpec, tokenizer: Option<&ChatTokenizer>) -> Result<Json> {
    let mut c = common_fields(spec, &SpecialIds::of(tokenizer));
    match spec.family {
        Family::Llama => llama_fields(spec, &mut c)?,
        Family::Qwen2 | Family::Qwen3 => qwen_fields(spec, &mut c)?,
        Family::Gemma3 => gemma3_fields(spec, &mut c)?,
    }
    let json = Json::Object(c);
    check_round_trip(spec, &json)?;
    Ok(json)
}

/// The fields every family's config has, under the same names.
fn common_fields(spec: &DecoderSpec, ids: &SpecialIds) -> Map<String, Json> {
    let d = &spec.dims;
    let f = spec.family;
    let v = json!({
        "architectures": [f.hf_architecture()],
        "model_type": f.hf_model_type(),
        "vocab_size": d.vocab_size,
        "hidden_size": d.hidden_size,
        "intermediate_size": d.intermediate_size,
        "num_hidden_layers": d.num_layers,
        "num_attention_heads": d.num_heads,
        "num_key_value_heads": d.num_kv_heads,
        "head_dim": d.head_dim,
        "rms_norm_eps": spec.norm.eps,
        "max_position_embeddings": d.max_position_embeddings,
        "tie_word_embeddings": spec.tie_word_embeddings,
        "attention_dropout": 0.0,
        "bos_token_id": ids.bos,
        "eos_token_id": ids.eos,
        "torch_dtype": "float32",
        "use_cache": true,
    });
    let Json::Object(map) = v else {
        unreachable!("a json! object literal")
    };
    map
}

fn llama_fields(spec: &DecoderSpec, c: &mut Map<String, Json>) -> Result<()> {
    c.insert("hidden_act".into(), "silu".into());
    c.insert("attention_bias".into(), false.into());
    c.insert("mlp_bias".into(), false.into());
    let rope = rope_set(spec, &spec.rope_full)?;
    c.insert("rope_theta".into(), rope["rope_theta"].clone());
    c.insert("rope_scaling".into(), legacy_scaling(&rope));
    c.insert("rope_parameters".into(), rope);
    Ok(())
}

/// Qwen2 and Qwen3 share their config; Qwen2's q/k/v biases and Qwen3's q/k
/// norms follow from the architecture, not from a key.
fn qwen_fields(spec: &DecoderSpec, c: &mut Map<String, Json>) -> Result<()> {
    c.insert("hidden_act".into(), "silu".into());
    if spec.family == Family::Qwen3 {
        c.insert("attention_bias".into(), false.into());
    }
    let rope = rope_set(spec, &spec.rope_full)?;
    c.insert("rope_theta".into(), rope["rope_theta"].clone());
    c.insert("rope_scaling".into(), legacy_scaling(&rope));
    c.insert("rope_parameters".into(), rope);
    // Qwen's sliding layers are the ones from `max_window_layers` on.
    let first_sliding = spec
        .layer_kinds
        .iter()
        .position(|k| *k == LayerKind::Sliding);
    let sliding = spec.sliding_window.is_some() && first_sliding.is_some();
    c.insert("use_sliding_window".into(), sliding.into());
    c.insert("sliding_window".into(), spec.sliding_window.into());
    c.insert(
        "max_window_layers".into(),
        first_sliding.unwrap_or(spec.dims.num_layers).into(),
    );
    c.insert("layer_types".into(), layer_types(spec));
    Ok(())
}

fn gemma3_fields(spec: &DecoderSpec, c: &mut Map<String, Json>) -> Result<()> {
    c.insert("hidden_activation".into(), "gelu_pytorch_tanh".into());
    c.insert("attention_bias".into(), false.into());
    c.insert(
        "query_pre_attn_scalar".into(),
        query_pre_attn_scalar(spec.attention_scale),
    );
    c.insert("sliding_window".into(), spec.sliding_window.into());
    c.insert("layer_types".into(), layer_types(spec));
    c.insert(
        "final_logit_softcapping".into(),
        spec.final_logit_softcap.map(f64::from).into(),
    );
    // transformers' Gemma 3 never applies it (see DecoderSpec::final_logit_softcap).
    c.insert("attn_logit_softcapping".into(), Json::Null);
    let full = rope_set(spec, &spec.rope_full)?;
    let local = rope_set(spec, spec.rope_sliding.as_ref().unwrap_or(&spec.rope_full))?;
    c.insert("rope_theta".into(), full["rope_theta"].clone());
    c.insert("rope_local_base_freq".into(), local["rope_theta"].clone());
    c.insert("rope_scaling".into(), legacy_scaling(&full));
    c.insert(
        "rope_parameters".into(),
        json!({"full_attention": full, "sliding_attention": local}),
    );
    Ok(())
}

/// `s` with `attention_scale = s^-0.5`, as an integer when it is one (the
/// released configs write 256), so the value reads back exactly.
fn query_pre_attn_scalar(scale: f32) -> Json {
    let s = 1.0 / (scale as f64 * scale as f64);
    let r = s.round();
    if (s - r).abs() <= 1e-4 * r.max(1.0) {
        json!(r as u64)
    } else {
        json!(s)
    }
}

fn layer_types(spec: &DecoderSpec) -> Json {
    spec.layer_kinds
        .iter()
        .map(|k| match k {
            LayerKind::Full => "full_attention",
            LayerKind::Sliding => "sliding_attention",
        })
        .collect::<Vec<_>>()
        .into()
}

/// One RoPE parameter set in transformers 5.x's form (`rope_type`,
/// `rope_theta` and the scaling keys).
fn rope_set(spec: &DecoderSpec, rope: &RopeSpec) -> Result<Json> {
    let theta = rope.theta as f64;
    Ok(match &rope.scaling {
        RopeScaling::None => json!({"rope_type": "default", "rope_theta": theta}),
        RopeScaling::Linear { factor } => {
            json!({"rope_type": "linear", "rope_theta": theta, "factor": *factor as f64})
        }
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => json!({
            "rope_type": "llama3",
            "rope_theta": theta,
            "factor": *factor as f64,
            "low_freq_factor": *low_freq_factor as f64,
            "high_freq_factor": *high_freq_factor as f64,
            "original_max_position_embeddings": original_max_position_embeddings,
        }),
        RopeScaling::FreqFactors(_) => {
            return Err(ModelError::Unsupported(format!(
                "merge cannot write this {} model: its RoPE scaling comes from the GGUF's \
                 rope_freqs.weight divisors, which config.json cannot express; merge onto the \
                 model's HF directory (config.json with rope_scaling) instead",
                spec.family.hf_model_type()
            )))
        }
    })
}

/// transformers 4.x's `rope_scaling`: the set without `rope_theta`, or null
/// when unscaled.
fn legacy_scaling(set: &Json) -> Json {
    if set["rope_type"] == "default" {
        return Json::Null;
    }
    let mut s = set.clone();
    if let Some(o) = s.as_object_mut() {
        o.remove("rope_theta");
    }
    s
}

/// The spec a faithful HF config of `spec` reads back as: the same model,
/// described in HF's conventions (HF names and row order; Gemma's norms
/// stored as `w` with the `+1` added at load).
fn as_hf(spec: &DecoderSpec) -> DecoderSpec {
    let mut s = spec.clone();
    s.format = WeightFormat::HfSafetensors;
    s.qk_rows = QkRows::Hf;
    s.norm.weight_offset = match s.norm.kind {
        NormKind::OnePlusScale => 1.0,
        NormKind::Scale => 0.0,
    };
    s
}

/// Reads `config` back and refuses it unless it describes `spec`, naming
/// what the family's config cannot express (e.g. a Llama with q/k norms).
fn check_round_trip(spec: &DecoderSpec, config: &Json) -> Result<()> {
    let want = as_hf(spec);
    let mut got = DecoderSpec::from_hf_config(&config.to_string())?;
    // query_pre_attn_scalar is written rounded; equal within f32 rounding.
    if (got.attention_scale - want.attention_scale).abs() <= 1e-6 * want.attention_scale.abs() {
        got.attention_scale = want.attention_scale;
    }
    if got == want {
        return Ok(());
    }
    let differs = differing_fields(&want, &got);
    Err(ModelError::Unsupported(format!(
        "merge cannot write this {} model as an HF {}: config.json cannot express its {}",
        spec.family.hf_model_type(),
        spec.family.hf_architecture(),
        differs.join(", ")
    )))
}

pub(crate) fn differing_fields(a: &DecoderSpec, b: &DecoderSpec) -> Vec<&'static str> {
    let checks: [(&str, bool); 15] = [
        ("sizes", a.dims != b.dims),
        ("norm", a.norm != b.norm),
        (
            "post-attention norm",
            a.post_attention_norm != b.post_attention_norm,
        ),
        ("post-feed-forward norm", a.post_ffn_norm != b.post_ffn_norm),
        ("q/k/v bias", a.qkv_bias != b.qkv_bias),
        ("q/k norms", a.qk_norm != b.qk_norm),
        ("activation", a.activation != b.activation),
        ("embedding scale", a.embedding_scale != b.embedding_scale),
        ("attention scale", a.attention_scale != b.attention_scale),
        (
            "final logit softcap",
            a.final_logit_softcap != b.final_logit_softcap,
        ),
        (
            "tied embeddings",
            a.tie_word_embeddings != b.tie_word_embeddings,
        ),
        ("RoPE", a.rope_full != b.rope_full),
        ("sliding-layer RoPE", a.rope_sliding != b.rope_sliding),
        ("sliding window", a.sliding_window != b.sliding_window),
        ("layer types", a.layer_kinds != b.layer_kinds),
    ];
    let out: Vec<&str> = checks.iter().filter(|c| c.1).map(|c| c.0).collect();
    if out.is_empty() {
        vec!["configuration"]
    } else {
        out
    }
}

/// `tokenizer_config.json`: the special tokens and the chat template, so that
/// the template survives the merge (transformers and
/// [`ChatTokenizer::from_hf_dir`] read it). The tokenizer itself is
/// `tokenizer.json`, which transformers' fast tokenizer reads for every family.
pub(super) fn tokenizer_config_json(t: &ChatTokenizer, context: usize) -> Json {
    let text = |id: Option<u32>| id.and_then(|i| t.tokenizer.id_to_token(i));
    let eos = text(Some(t.tokenizer.eos_id()));
    json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": text(t.tokenizer.bos_id()),
        "eos_token": eos,
        "pad_token": eos,
        "chat_template": t.template.source(),
        "model_max_length": context,
        "clean_up_tokenization_spaces": false,
    })
}

/// `generation_config.json`: generation stops on EOS and on every
/// end-of-turn token, as hone's own generation does.
pub(super) fn generation_config_json(ids: &SpecialIds) -> Json {
    let eos: Json = match ids.stop.as_slice() {
        [] => Json::Null,
        [one] => json!(one),
        many => json!(many),
    };
    json!({
        "bos_token_id": ids.bos,
        "eos_token_id": eos,
        "pad_token_id": ids.eos,
    })
}
