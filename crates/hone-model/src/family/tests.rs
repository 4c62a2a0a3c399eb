//! Tests of the family specs: RoPE against transformers' inverse
//! frequencies, the tiny reference models of `testdata/families/`, real and
//! edited HF configs, GGUF metadata, and the real GGUF files (ignored).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::Device;
use hone_text::testing::{RealModel, REAL_GEMMA_GGUF, REAL_QWEN_GGUF};
use serde_json::Value as Json;

use super::gguf;
use super::hf::{self, Fields};
use super::*;

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
    assert!(matches!(s.rope_full.scaling, RopeScaling::Llama3 { factor, .. } if factor == 32.0));
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
    let mm = gemma_270m_config("").replace("Gemma3ForCausalLM", "Gemma3ForConditionalGeneration");
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
    // A file that sets the sliding layers' base (llama.cpp reads the same key).
    let mut swa = m.clone();
    swa.insert("gemma3.rope.freq_base_swa".into(), Value::F32(50_000.0));
    let s_swa = parse_md(&swa, &[]).unwrap();
    assert_eq!(s_swa.layer(0).rope.theta, 50_000.0);
    assert_eq!(s_swa.layer(5).rope.theta, 1_000_000.0);
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
    let q = candle_core::quantized::QTensor::quantize(&t, candle_core::quantized::GgmlDType::F32)
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

// ---- The real GGUF files (HONE_TEST_QWEN_GGUF / HONE_TEST_GEMMA_GGUF, or $HONE_HOME/models) ----

/// Every tensor the spec expects is in the file with the expected shape,
/// and every tensor of the file is one the spec knows.
fn check_real_gguf(model: RealModel, family: Family) -> DecoderSpec {
    let path = model.path();
    let mut f = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
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
#[ignore = "needs the Qwen2.5-Coder GGUF (HONE_TEST_QWEN_GGUF or HONE_HOME)"]
fn real_qwen2_5_gguf() {
    let s = check_real_gguf(REAL_QWEN_GGUF, Family::Qwen2);
    assert_eq!(
        (s.dims.num_layers, s.dims.hidden_size, s.dims.head_dim),
        (24, 896, 64)
    );
    assert!(s.qkv_bias);
}

#[test]
#[ignore = "needs the Gemma 3 270M GGUF (HONE_TEST_GEMMA_GGUF or HONE_HOME)"]
fn real_gemma3_270m_gguf() {
    let s = check_real_gguf(REAL_GEMMA_GGUF, Family::Gemma3);
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
