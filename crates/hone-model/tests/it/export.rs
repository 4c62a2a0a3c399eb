//! `hone merge --dtype` and `hone export`: merged weights in bf16/f16 reload within a
//! stated tolerance of f32; GGUF exports of every family round-trip through hone's own
//! GGUF loader (f16 within 2e-2 of the f32 model on tiny random models, the other types
//! within the gaps measured below); the LoRA GGUF holds exactly the adapter in
//! llama.cpp's layout; a model llama.cpp's metadata cannot express is refused.

use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Tensor};
use hone_model::export::{self, GgufType, TokenizerSource};
use hone_model::family::{RopeScaling, RopeSpec};
use hone_model::load::unpermute_rope_rows;
use hone_model::testing::{write_tiny_model, TinySpec};
use hone_model::{
    load_model, load_peft_adapter, merge_adapters, merge_to_hf_dir_as, Llama, LoraConfig,
    LoraParams, MergeDtype, WeightPath,
};
use hone_text::ChatTokenizer;

use crate::families::{family_dir, full_logits, load, max_gap, reference, FAMILIES};

/// A random adapter on every linear, saved in PEFT layout (B is random, not zero, so
/// that it changes the logits).
fn random_adapter(model_path: &Path, out: &Path) -> LoraParams {
    let mut m = load_model(model_path, WeightPath::F32).unwrap();
    let cfg = LoraConfig {
        target_modules: LoraConfig::parse_target_modules("all-linear").unwrap(),
        ..LoraConfig::default()
    };
    let params = LoraParams::attach(&mut m, &cfg, 5).unwrap();
    // Fixed pseudo-random values (sin of the index), so that the gaps are reproducible.
    for (k, md) in params.modules.iter().enumerate() {
        let n = md.b.elem_count();
        let v: Vec<f32> = (0..n)
            .map(|i| ((i * 7919 + k * 104729) as f32 * 0.37).sin() * 0.2)
            .collect();
        let b = Tensor::from_vec(v, md.b.shape(), &Device::Cpu).unwrap();
        md.b.set(&b).unwrap();
    }
    params.save_peft(out, "tiny").unwrap();
    params
}

fn with_adapter(model_path: &Path, adapter: &Path) -> Llama {
    let mut m = load_model(model_path, WeightPath::F32).unwrap();
    load_peft_adapter(&mut m, adapter).unwrap();
    m
}

fn ids() -> Vec<u32> {
    (0..12).map(|i| (i * 37 + 11) % 250).collect()
}

/// Each merge dtype reloads in hone: f32 exactly as base + adapter (within f32
/// rounding, 1e-4), bf16 within 0.25 (measured 0.11) and f16 within 2e-2 on these logits,
/// with config.json's torch_dtype and the safetensors dtype saying which.
#[test]
fn merge_dtypes_reload_within_their_tolerance() {
    let dir = tempfile::tempdir().unwrap();
    let (gguf, _) = write_tiny_model(dir.path(), &TinySpec::default()).unwrap();
    let adapter = dir.path().join("adapter");
    random_adapter(&gguf, &adapter);
    let want = full_logits(&with_adapter(&gguf, &adapter), &ids());
    let tok = ChatTokenizer::from_gguf(&gguf).unwrap();
    for (dtype, tol, st) in [
        (MergeDtype::F32, 1e-4, safetensors::Dtype::F32),
        (MergeDtype::Bf16, 0.25, safetensors::Dtype::BF16),
        (MergeDtype::F16, 2e-2, safetensors::Dtype::F16),
    ] {
        let out = dir.path().join(format!("merged-{}", dtype.torch_name()));
        let mut m = with_adapter(&gguf, &adapter);
        merge_to_hf_dir_as(&mut m, Some(&tok), &out, dtype).unwrap();
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(cfg["torch_dtype"], dtype.torch_name());
        let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
        let st_file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert!(
            st_file.tensors().iter().all(|(_, v)| v.dtype() == st),
            "{dtype:?}"
        );
        let got = full_logits(&load_model(&out, WeightPath::F32).unwrap(), &ids());
        let gap = max_gap(&got, &want);
        eprintln!("merge {dtype:?}: max logit gap {gap:.2e}");
        assert!(gap < tol, "{dtype:?}: merged logits differ by {gap}");
        if dtype != MergeDtype::F32 {
            assert!(gap > 0.0, "{dtype:?} should round something");
        }
    }
}

/// The largest logit gap between a family's f32 model and its export of type `ty`, and
/// the largest |logit|.
fn export_gap(name: &str, ty: GgufType, dir: &Path) -> (f32, f32) {
    let m = load_model(&llama_cpp_expressible(name, dir), WeightPath::F32).unwrap();
    let (ids, _) = reference(name);
    let want = full_logits(&m, &ids);
    let out = dir.join(format!("{name}-{}.gguf", ty.name()));
    export::write_gguf(&m, &TokenizerSource::WeightsOnly, ty, &out).unwrap();
    let back = load_model(&out, WeightPath::F32).unwrap();
    assert_eq!(back.spec.family, m.spec.family, "{name}");
    let scale = want.iter().flatten().fold(0f32, |m, x| m.max(x.abs()));
    (max_gap(&full_logits(&back, &ids), &want), scale)
}

/// The family's tiny model, with what llama.cpp hard-codes for Gemma 3 and the tiny
/// `gemma3` model deliberately varies (query_pre_attn_scalar = head_dim) set to
/// llama.cpp's value, in a copy under `dir`. The unchanged model is refused (see
/// `a_model_llama_cpps_keys_cannot_express_is_refused`); its local RoPE base of 100 is
/// kept: `rope.freq_base_swa` says it.
fn llama_cpp_expressible(name: &str, dir: &Path) -> std::path::PathBuf {
    let src = family_dir(name);
    let text = std::fs::read_to_string(src.join("config.json")).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&text).unwrap();
    if cfg["model_type"] != "gemma3_text" {
        return src;
    }
    cfg["query_pre_attn_scalar"] = cfg["head_dim"].clone();
    let out = dir.join(format!("{name}-llama-cpp"));
    if !out.exists() {
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("config.json"), cfg.to_string()).unwrap();
        std::fs::copy(src.join("model.safetensors"), out.join("model.safetensors")).unwrap();
    }
    out
}

/// Every family exports and loads back. Logits of these tiny random models reach 4-11;
/// their rows are only 32 wide, so quantization is coarse. Largest gaps measured over
/// the six models (deterministic): f16 8.3e-3, bf16 7.5e-2, q8_0 0.23, q4_k_m 1.5,
/// q4_1 2.75 (see docs/export.md); the bounds sit above those.
#[test]
fn every_family_exports_and_round_trips_through_hones_gguf_loader() {
    let dir = tempfile::tempdir().unwrap();
    let mut failed = Vec::new();
    for name in FAMILIES {
        for (ty, tol) in [
            (GgufType::F16, 2e-2),
            (GgufType::Bf16, 0.2),
            (GgufType::Q8_0, 0.5),
            (GgufType::Q4_1, 3.0),
            (GgufType::Q4KM, 3.0),
        ] {
            let (gap, scale) = export_gap(name, ty, dir.path());
            eprintln!(
                "{name} {}: max logit gap {gap:.2e} (logits up to {scale:.1})",
                ty.name()
            );
            failed.extend((gap >= tol).then(|| format!("{name} {}: gap {gap}", ty.name())));
        }
    }
    assert!(failed.is_empty(), "{failed:#?}");
}

/// Every model directory under `testdata/families` (listed from disk, so a family added
/// there is covered) exports as it is, or is refused by name with nothing written: only
/// the tiny `gemma3`, whose `query_pre_attn_scalar` (20) is not its head size (24), which
/// llama.cpp cannot be told.
#[test]
fn every_family_directory_exports_or_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let root = family_dir("");
    let mut names: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("config.json").exists())
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(names.len() >= FAMILIES.len(), "{names:?}");
    let mut refused = Vec::new();
    for name in &names {
        let m = load_model(&root.join(name), WeightPath::F32).unwrap();
        let out = dir.path().join(format!("{name}.gguf"));
        match export::write_gguf(&m, &TokenizerSource::WeightsOnly, GgufType::F16, &out) {
            Ok(_) => {
                let back = load_model(&out, WeightPath::F32).unwrap();
                assert_eq!(back.spec.family, m.spec.family, "{name}");
                assert_eq!(back.spec.dims, m.spec.dims, "{name}");
            }
            Err(e) => {
                let e = e.to_string();
                assert!(
                    e.contains("cannot export") && e.contains("attention scale"),
                    "{e}"
                );
                assert!(!out.exists(), "{name}: a refused export left a file");
                refused.push(name.clone());
            }
        }
    }
    assert_eq!(refused, ["gemma3"], "of {names:?}");
}

/// A merged tiny Llama exported with its GGUF's tokenizer: the tokenizer, chat template
/// and special tokens come through, the weights are the merged ones, files are 0644.
#[test]
fn export_keeps_the_tokenizer_and_the_merged_weights() {
    let dir = tempfile::tempdir().unwrap();
    let (gguf, _) = write_tiny_model(dir.path(), &TinySpec::default()).unwrap();
    let adapter = dir.path().join("adapter");
    random_adapter(&gguf, &adapter);
    let mut m = with_adapter(&gguf, &adapter);
    let want = full_logits(&m, &ids());
    merge_adapters(&mut m).unwrap();
    let content = export::read_gguf_content(&gguf).unwrap();
    let out = dir.path().join("model-f16.gguf");
    let stats =
        export::write_gguf(&m, &TokenizerSource::Gguf(&content), GgufType::F16, &out).unwrap();
    assert_eq!(
        stats.types,
        vec![("f16".to_string(), 15), ("f32".to_string(), 5)]
    );
    let got = full_logits(&load_model(&out, WeightPath::F32).unwrap(), &ids());
    let gap = max_gap(&got, &want);
    assert!(gap < 2e-2, "f16 export vs base+adapter: {gap}");

    let (src, exp) = (
        ChatTokenizer::from_gguf(&gguf).unwrap(),
        ChatTokenizer::from_gguf(&out).unwrap(),
    );
    assert_eq!(src.template.source(), exp.template.source());
    let text = "<|im_start|>user\nhé llo<|im_end|>";
    assert_eq!(
        src.tokenizer.encode(text).unwrap(),
        exp.tokenizer.encode(text).unwrap()
    );
    assert_eq!(src.tokenizer.eos_id(), exp.tokenizer.eos_id());
    let md = export::read_gguf_content(&out).unwrap().metadata;
    assert_eq!(md["general.file_type"].to_u32().unwrap(), 1);
    assert_eq!(md["general.architecture"].to_string().unwrap(), "llama");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o666 & !hone_model::atomic_file::umask());
    }
    // A model with adapters still attached is refused: merge first.
    let unmerged = with_adapter(&gguf, &adapter);
    let err = export::write_gguf(
        &unmerged,
        &TokenizerSource::WeightsOnly,
        GgufType::F16,
        &dir.path().join("x.gguf"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("merge"), "{err}");
}

fn f32_tensor(content: &Content, file: &Path, name: &str) -> Tensor {
    let mut f = std::fs::File::open(file).unwrap();
    content
        .tensor(&mut f, name, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .dequantize(&Device::Cpu)
        .unwrap()
}

/// The LoRA GGUF holds PEFT's A and B exactly, under llama.cpp's names, with B's rows
/// in llama.cpp's Q/K order for Llama, and the alpha and type keys llama.cpp reads.
#[test]
fn lora_gguf_holds_the_adapter_in_llama_cpps_layout() {
    let dir = tempfile::tempdir().unwrap();
    let spec = TinySpec::default();
    let (gguf, _) = write_tiny_model(dir.path(), &spec).unwrap();
    let adapter = dir.path().join("adapter");
    let params = random_adapter(&gguf, &adapter);
    let m = with_adapter(&gguf, &adapter);
    let out = dir.path().join("adapter-lora.gguf");
    let stats = export::write_lora_gguf(&m, 16.0, &out).unwrap();
    assert_eq!(stats.tensors, 2 * 7 * spec.layers);
    let content = export::read_gguf_content(&out).unwrap();
    let md = &content.metadata;
    let s = |k: &str| md[k].to_string().unwrap().clone();
    assert_eq!(s("general.type"), "adapter");
    assert_eq!(s("adapter.type"), "lora");
    assert_eq!(s("general.architecture"), "llama");
    assert!(matches!(md["adapter.lora.alpha"], Value::F32(a) if a == 16.0));
    for md_ in &params.modules {
        let (layer, leaf) = md_
            .path
            .strip_prefix("model.layers.")
            .unwrap()
            .split_once('.')
            .unwrap();
        let gguf_leaf = match leaf {
            "self_attn.q_proj" => "attn_q",
            "self_attn.k_proj" => "attn_k",
            "self_attn.v_proj" => "attn_v",
            "self_attn.o_proj" => "attn_output",
            "mlp.gate_proj" => "ffn_gate",
            "mlp.up_proj" => "ffn_up",
            "mlp.down_proj" => "ffn_down",
            other => panic!("{other}"),
        };
        let base = format!("blk.{layer}.{gguf_leaf}.weight");
        let a = f32_tensor(&content, &out, &format!("{base}.lora_a"));
        let b = f32_tensor(&content, &out, &format!("{base}.lora_b"));
        let b = match gguf_leaf {
            "attn_q" => unpermute_rope_rows(&b, spec.heads).unwrap(),
            "attn_k" => unpermute_rope_rows(&b, spec.kv_heads).unwrap(),
            _ => b,
        };
        let d = |x: &Tensor, y: &Tensor| {
            (x - y)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        assert_eq!(d(&a, md_.a.as_tensor()), 0.0, "{base} A");
        assert_eq!(d(&b, md_.b.as_tensor()), 0.0, "{base} B");
    }
    // Nothing attached: a clear error, no file.
    let bare = load_model(&gguf, WeightPath::F32).unwrap();
    let none = dir.path().join("none.gguf");
    assert!(export::write_lora_gguf(&bare, 16.0, &none).is_err());
    assert!(!none.exists());
}

/// What llama.cpp's keys cannot say is refused, nothing written: Gemma 3's
/// `query_pre_attn_scalar` other than the head size (llama.cpp derives the scale), and
/// scaled RoPE on the sliding layers (llama.cpp never scales them).
#[test]
fn a_model_llama_cpps_keys_cannot_express_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // The tiny gemma3 sets query_pre_attn_scalar 20 (head_dim 24): llama.cpp derives it.
    let m = load("gemma3", WeightPath::F32).unwrap();
    let err = export::write_gguf(
        &m,
        &TokenizerSource::WeightsOnly,
        GgufType::F16,
        &dir.path().join("t.gguf"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("attention scale"), "{err}");
    let mut m = load("gemma3_softcap", WeightPath::F32).unwrap();
    let dim = m.spec.rope_full.dim;
    let linear = RopeScaling::Linear { factor: 2.0 };
    m.spec.rope_sliding = Some(RopeSpec::new(20_000.0, dim, linear).unwrap());
    let out = dir.path().join("g.gguf");
    let err = export::write_gguf(&m, &TokenizerSource::WeightsOnly, GgufType::F16, &out)
        .unwrap_err()
        .to_string();
    assert!(err.contains("sliding-layer RoPE"), "{err}");
    assert!(!out.exists());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "no temp file left"
    );
}

/// Gemma 3's sliding-layer RoPE base is written as `gemma3.rope.freq_base_swa` (what
/// llama.cpp reads; without it llama.cpp takes 10 000) and read back as the same model.
#[test]
fn gemma_sliding_rope_base_is_written_for_llama_cpp() {
    let dir = tempfile::tempdir().unwrap();
    let mut m = load("gemma3_softcap", WeightPath::F32).unwrap();
    let dim = m.spec.rope_full.dim;
    m.spec.rope_sliding = Some(RopeSpec::new(20_000.0, dim, RopeScaling::None).unwrap());
    let out = dir.path().join("g.gguf");
    export::write_gguf(&m, &TokenizerSource::WeightsOnly, GgufType::F16, &out).unwrap();
    let content = Content::read(&mut std::fs::File::open(&out).unwrap()).unwrap();
    match content.metadata.get("gemma3.rope.freq_base_swa") {
        Some(Value::F32(v)) => assert_eq!(*v, 20_000.0),
        other => panic!("gemma3.rope.freq_base_swa: {other:?}"),
    }
    let back = load_model(&out, WeightPath::F32).unwrap();
    assert_eq!(back.spec.rope_sliding.as_ref().unwrap().theta, 20_000.0);
    // The tiny gemma3's local base of 100 (its copy with llama.cpp's attention scale).
    let g = llama_cpp_expressible("gemma3", dir.path());
    let m = load_model(&g, WeightPath::F32).unwrap();
    let out = dir.path().join("g3.gguf");
    export::write_gguf(&m, &TokenizerSource::WeightsOnly, GgufType::F16, &out).unwrap();
    let back = load_model(&out, WeightPath::F32).unwrap();
    assert_eq!(back.spec.rope_sliding, m.spec.rope_sliding);
    assert_eq!(back.spec.rope_sliding.unwrap().theta, 100.0);
}

/// GPT-2's byte alphabet symbol of each byte.
fn sym(b: u8) -> String {
    hone_text::testing::byte_level_symbols()[b as usize].to_string()
}

/// A small byte-level BPE `tokenizer.json` (ChatML specials, printable ASCII and `\n`,
/// a few merges) with the pre-tokenizer llama.cpp calls `pre`, and its
/// `tokenizer_config.json`, written into `dir`. Merges are written in the newer
/// `[a, b]` form when `pair_merges`.
fn write_bpe_tokenizer(dir: &Path, pre: &str, pair_merges: bool) {
    use serde_json::json;
    let specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
    let mut vocab = serde_json::Map::new();
    for (i, s) in specials.iter().enumerate() {
        vocab.insert(s.to_string(), i.into());
    }
    for b in std::iter::once(b'\n').chain(32..=126u8) {
        let n = vocab.len();
        vocab.insert(sym(b), n.into());
    }
    let pairs = [
        ("Ġ", "t"),
        ("h", "e"),
        ("Ġt", "he"),
        ("i", "n"),
        ("Ġ", "a"),
        ("e", "r"),
        ("o", "n"),
        ("Ġ", "o"),
    ];
    let mut merges = Vec::new();
    for (a, b) in pairs {
        let n = vocab.len();
        vocab.insert(format!("{a}{b}"), n.into());
        merges.push(if pair_merges {
            json!([a, b])
        } else {
            json!(format!("{a} {b}"))
        });
    }
    let byte_level = |regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": regex});
    let split = |re: &str| {
        json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false},
            byte_level(false)]})
    };
    let pre_tokenizer = match pre {
        "gpt2" => byte_level(true),
        "smollm" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
        "qwen2" => split(
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        ),
        "llama-bpe" => split(
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        ),
        other => panic!("{other}"),
    };
    let added: Vec<_> = specials
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({"id": i, "content": s, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let tj = json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
            "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": merges}
    });
    std::fs::write(dir.join("tokenizer.json"), tj.to_string()).unwrap();
    let cfg = json!({
        "bos_token": null, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
        "add_bos_token": false,
        "chat_template": hone_model::testing::CHATML_TEMPLATE,
    });
    std::fs::write(dir.join("tokenizer_config.json"), cfg.to_string()).unwrap();
}

/// A family's tiny model as a complete HF directory (llama.cpp-expressible config,
/// weights, and a byte-level BPE tokenizer with pre-tokenizer `pre`) under `dir`.
fn hf_dir_with_tokenizer(name: &str, pre: &str, dir: &Path) -> std::path::PathBuf {
    let src = llama_cpp_expressible(name, dir);
    let out = dir.join(format!("{name}-hf"));
    std::fs::create_dir_all(&out).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), out.join(f)).unwrap();
    }
    write_bpe_tokenizer(&out, pre, name.starts_with("qwen"));
    out
}

/// An HF-directory base exports to GGUF with tokenizer metadata built from its
/// tokenizer.json, in every family: hone's GGUF reader gives the same token ids, special
/// ids and chat template as the directory's tokenizer.json, the token list is padded to
/// the model's vocabulary with unused `[PAD<i>]` entries as llama.cpp's converter
/// writes it, and the logits are within the f16 gap of the round-trip test (2e-2).
#[test]
fn hf_directory_bases_export_with_their_tokenizer_json() {
    let dir = tempfile::tempdir().unwrap();
    let pres = [
        ("llama3_scaled", "llama-bpe"),
        ("llama_linear", "llama-bpe"),
        ("qwen2", "qwen2"),
        ("qwen3", "qwen2"),
        ("gemma3", "smollm"),
        ("gemma3_softcap", "gpt2"),
    ];
    assert_eq!(pres.map(|(n, _)| n), FAMILIES);
    let texts = [
        "<|im_start|>user\nthe inner other on a tether, 12345!<|im_end|>\n",
        "  two  spaces\n\nand 3.14 'll they're",
    ];
    for (name, pre) in pres {
        let hf = hf_dir_with_tokenizer(name, pre, dir.path());
        let m = load_model(&hf, WeightPath::F32).unwrap();
        let keys = export::tokenizer_keys(&hf, m.cfg.vocab_size).unwrap();
        let out = dir.path().join(format!("{name}-f16.gguf"));
        export::write_gguf(&m, &TokenizerSource::Keys(keys), GgufType::F16, &out).unwrap();

        let (src, exp) = (
            ChatTokenizer::from_hf_dir(&hf).unwrap(),
            ChatTokenizer::from_gguf(&out).unwrap(),
        );
        for t in texts {
            let want = src.tokenizer.encode(t).unwrap();
            assert_eq!(
                exp.tokenizer.encode(t).unwrap(),
                want,
                "{name} ({pre}): {t:?}"
            );
            assert!(want.len() < t.len(), "{name}: some merges apply");
        }
        assert_eq!(src.tokenizer.eos_id(), exp.tokenizer.eos_id(), "{name}");
        assert_eq!(src.template.source(), exp.template.source(), "{name}");

        let md = export::read_gguf_content(&out).unwrap().metadata;
        let s = |k: &str| md[k].to_string().unwrap().clone();
        assert_eq!(s("tokenizer.ggml.model"), "gpt2");
        assert_eq!(s("tokenizer.ggml.pre"), pre);
        let tokens = md["tokenizer.ggml.tokens"].to_vec().unwrap();
        assert_eq!(tokens.len(), m.cfg.vocab_size);
        assert_eq!(tokens[200].to_string().unwrap(), "[PAD200]");
        let types = md["tokenizer.ggml.token_type"].to_vec().unwrap();
        let ty = |i: usize| types[i].to_i32().unwrap();
        assert_eq!((ty(0), ty(2), ty(10), ty(200)), (3, 3, 1, 5));
        assert_eq!(md["tokenizer.ggml.merges"].to_vec().unwrap().len(), 8);
        assert_eq!(md["tokenizer.ggml.eos_token_id"].to_u32().unwrap(), 2);
        assert_eq!(md["tokenizer.ggml.padding_token_id"].to_u32().unwrap(), 0);
        // No bos_token in tokenizer_config.json: config.json's id, as the converter does.
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(hf.join("config.json")).unwrap())
                .unwrap();
        match cfg["bos_token_id"].as_u64() {
            Some(b) => assert_eq!(
                md["tokenizer.ggml.bos_token_id"].to_u32().unwrap() as u64,
                b
            ),
            None => assert!(!md.contains_key("tokenizer.ggml.bos_token_id")),
        }
        assert!(matches!(
            md["tokenizer.ggml.add_bos_token"],
            Value::Bool(false)
        ));

        let (ids, _) = reference(name);
        let gap = max_gap(
            &full_logits(&load_model(&out, WeightPath::F32).unwrap(), &ids),
            &full_logits(&m, &ids),
        );
        eprintln!("{name} ({pre}) from its HF directory, f16: max logit gap {gap:.2e}");
        assert!(gap < 2e-2, "{name}: {gap}");
    }
}

/// Tokenizers llama.cpp's byte-level keys cannot hold are refused with the reason:
/// Gemma's SentencePiece-style BPE, a Unigram model, an unknown split, no tokenizer.json,
/// a token id beyond the model's vocabulary.
#[test]
fn tokenizers_gguf_cannot_hold_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let edit = |f: &dyn Fn(&mut serde_json::Value)| {
        write_bpe_tokenizer(d, "gpt2", false);
        let p = d.join("tokenizer.json");
        let mut tj: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        f(&mut tj);
        std::fs::write(&p, tj.to_string()).unwrap();
        export::tokenizer_keys(d, 256)
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    let err = edit(&|tj| {
        tj["model"]["byte_fallback"] = true.into();
        tj["decoder"] =
            serde_json::json!({"type": "Sequence", "decoders": [{"type": "ByteFallback"}]});
    });
    assert!(err.contains("SentencePiece"), "{err}");
    let err = edit(&|tj| tj["model"]["type"] = "Unigram".into());
    assert!(err.contains("Unigram"), "{err}");
    let err = edit(&|tj| {
        tj["pre_tokenizer"] = serde_json::json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": "\\s+"}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]})
    });
    assert!(err.contains("pre-tokenizer"), "{err}");
    let err = edit(&|tj| tj["added_tokens"][0]["id"] = 300.into());
    assert!(err.contains("vocab_size 256"), "{err}");
    std::fs::remove_file(d.join("tokenizer.json")).unwrap();
    let err = export::tokenizer_keys(d, 256)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(err.contains("no tokenizer.json"), "{err}");
    // write_bpe_tokenizer's own file is accepted (the refusals above are the edits).
    write_bpe_tokenizer(d, "gpt2", false);
    assert!(export::tokenizer_keys(d, 256).is_ok());
}
