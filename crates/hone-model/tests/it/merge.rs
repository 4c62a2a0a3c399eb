//! `merge`: a merged model behaves exactly like base plus adapter (architecture.md pitfall 5),
//! and its HF directory round-trips through the loader, the tokenizer and the template.

use std::path::Path;

use candle_core::{Device, Tensor};
use hone_model::merge::{hf_tensors, MODEL_WEIGHTS_FILE};
use hone_model::registry::{resolve_path, ModelSource};
use hone_model::testing::{write_tiny_model, TinySpec};
use hone_model::{
    load_model, load_peft_adapter, merge_to_hf_dir, ChatEngine, Llama, LoraConfig, LoraParams,
    WeightPath,
};
use hone_text::{ChatMessage, ChatTokenizer, Role};

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn ids(b: usize, t: usize, vocab: usize) -> Tensor {
    let v: Vec<u32> = (0..b * t).map(|i| ((i * 37 + 11) % vocab) as u32).collect();
    Tensor::from_vec(v, (b, t), &Device::Cpu).unwrap()
}

/// Trains nothing, but gives every LoRA B a random value (B starts at zero), so that the
/// adapter visibly changes the logits, and saves it in PEFT layout.
fn random_adapter(gguf: &Path, targets: &str, out: &Path) {
    let mut m = load_model(gguf, WeightPath::F32).unwrap();
    let cfg = LoraConfig {
        target_modules: LoraConfig::parse_target_modules(targets).unwrap(),
        ..LoraConfig::default()
    };
    let params = LoraParams::attach(&mut m, &cfg, 11).unwrap();
    for (i, md) in params.modules.iter().enumerate() {
        let b = Tensor::randn(0f32, 0.3, md.b.shape(), &Device::Cpu).unwrap();
        md.b.set(&(b * (1.0 + i as f64 * 0.01)).unwrap()).unwrap();
    }
    params.save_peft(out, "tiny").unwrap();
}

/// Base plus adapter (unmerged), as `hone chat --adapter` runs it.
fn with_adapter(gguf: &Path, adapter: &Path) -> Llama {
    let mut m = load_model(gguf, WeightPath::F32).unwrap();
    load_peft_adapter(&mut m, adapter).unwrap();
    m
}

fn merged_logits_equal_base_plus_adapter(targets: &str) {
    let dir = tempfile::tempdir().unwrap();
    let spec = TinySpec::default();
    let (gguf, _) = write_tiny_model(dir.path(), &spec).unwrap();
    let adapter = dir.path().join("adapter");
    random_adapter(&gguf, targets, &adapter);

    let unmerged = with_adapter(&gguf, &adapter);
    let mut to_merge = with_adapter(&gguf, &adapter);
    let tok = ChatTokenizer::from_gguf(&gguf).unwrap();
    let out = dir.path().join("merged");
    let stats = merge_to_hf_dir(&mut to_merge, Some(&tok), &out).unwrap();
    let per_layer = LoraConfig::parse_target_modules(targets).unwrap().len();
    assert_eq!(stats.merged_modules, per_layer * spec.layers);

    let merged = load_model(&out, WeightPath::F32).unwrap();
    let base = load_model(&gguf, WeightPath::F32).unwrap();
    let x = ids(2, 11, spec.vocab_size());
    let want = unmerged.forward(&x, 0, None).unwrap();
    let got = merged.forward(&x, 0, None).unwrap();
    let d = max_diff(&want, &got);
    assert!(
        d < 1e-4,
        "{targets}: merged vs base+adapter logits differ by {d}"
    );
    // The adapter matters, so the comparison above is not vacuous.
    let shift = max_diff(&want, &base.forward(&x, 0, None).unwrap());
    assert!(
        shift > 1e-2,
        "{targets}: the adapter changed logits by only {shift}"
    );
    // The training path of the merged model agrees too.
    let tr = merged
        .forward_train(&x, hone_model::TrainOptions::default())
        .unwrap();
    let d = max_diff(&want, &tr);
    assert!(
        d < 1e-4,
        "{targets}: merged train-path logits differ by {d}"
    );
}

#[test]
fn merged_logits_equal_base_plus_adapter_q_v() {
    merged_logits_equal_base_plus_adapter("q_proj,v_proj");
}

#[test]
fn merged_logits_equal_base_plus_adapter_all_linear() {
    merged_logits_equal_base_plus_adapter("all-linear");
}

#[test]
fn merged_dir_round_trips_tokenizer_template_and_registry() {
    let dir = tempfile::tempdir().unwrap();
    let (gguf, _) = write_tiny_model(dir.path(), &TinySpec::default()).unwrap();
    let adapter = dir.path().join("adapter");
    random_adapter(&gguf, "q_proj,v_proj", &adapter);
    let mut m = with_adapter(&gguf, &adapter);
    let tok = ChatTokenizer::from_gguf(&gguf).unwrap();
    let out = dir.path().join("merged");
    merge_to_hf_dir(&mut m, Some(&tok), &out).unwrap();

    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    // No temporary directory is left beside the output.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let back = ChatTokenizer::from_hf_dir(&out).unwrap();
    assert_eq!(back.template.source(), tok.template.source());
    assert_eq!(back.tokenizer.eos_id(), tok.tokenizer.eos_id());
    assert_eq!(back.tokenizer.bos_id(), tok.tokenizer.bos_id());
    assert_eq!(
        back.tokenizer.stop_token_ids(),
        tok.tokenizer.stop_token_ids()
    );
    let chat = [
        ChatMessage::new(Role::System, "Be brief."),
        ChatMessage::new(Role::User, "Hello, world! ünïcödé"),
        ChatMessage::new(Role::Assistant, "Hi <there>."),
    ];
    assert_eq!(
        back.encode_chat(&chat, None).unwrap(),
        tok.encode_chat(&chat, None).unwrap()
    );
    assert_eq!(
        back.encode_prompt(&chat[..2], None).unwrap(),
        tok.encode_prompt(&chat[..2], None).unwrap()
    );

    // `--model DIR` resolves to the directory and loads weights, tokenizer and template.
    let resolved = resolve_path(&out).unwrap();
    assert_eq!(resolved.source, ModelSource::HfDir(out.clone()));
    let engine = ChatEngine::load(&resolved, WeightPath::F32).unwrap();
    assert_eq!(engine.tokenizer.template.source(), tok.template.source());
    // Writing it again as a plain model gives the same tensors (names, shapes, values).
    let st = candle_core::safetensors::load(out.join(MODEL_WEIGHTS_FILE), &Device::Cpu).unwrap();
    let again = hf_tensors(&engine.model).unwrap();
    assert_eq!(st.len(), again.len());
    for (name, t) in &again {
        assert_eq!(max_diff(&st[name], t), 0.0, "{name}");
    }
}

#[test]
fn merge_refuses_an_existing_output_and_a_model_without_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let (gguf, _) = write_tiny_model(dir.path(), &TinySpec::default()).unwrap();
    let adapter = dir.path().join("adapter");
    random_adapter(&gguf, "q_proj", &adapter);
    let mut m = with_adapter(&gguf, &adapter);
    let out = dir.path().join("exists");
    std::fs::create_dir(&out).unwrap();
    let err = merge_to_hf_dir(&mut m, None, &out).unwrap_err().to_string();
    assert!(err.contains("already exists"), "{err}");

    let mut plain = load_model(&gguf, WeightPath::F32).unwrap();
    let err = merge_to_hf_dir(&mut plain, None, &dir.path().join("new"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("nothing to merge"), "{err}");
    assert!(!dir.path().join("new").exists());

    let mut quant = load_model(&gguf, WeightPath::Packed).unwrap();
    load_peft_adapter(&mut quant, &adapter).unwrap();
    let err = merge_to_hf_dir(&mut quant, None, &dir.path().join("q"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("f32"), "{err}");
}

/// The same check on the real SmolLM2-135M (tied embeddings, GQA, permuted Q/K rows in
/// the GGUF). The tolerance is looser than on the tiny model because its logits are an
/// order of magnitude larger and 30 layers accumulate f32 rounding.
#[test]
#[ignore = "needs HONE_TEST_GGUF"]
fn real_model_merged_logits_equal_base_plus_adapter() {
    let gguf = std::path::PathBuf::from(
        std::env::var("HONE_TEST_GGUF").expect("set HONE_TEST_GGUF to the SmolLM2 GGUF"),
    );
    let dir = tempfile::tempdir().unwrap();
    let adapter = dir.path().join("adapter");
    let mut m = load_model(&gguf, WeightPath::F32).unwrap();
    let cfg = LoraConfig {
        target_modules: LoraConfig::parse_target_modules("all-linear").unwrap(),
        ..LoraConfig::default()
    };
    let params = LoraParams::attach(&mut m, &cfg, 5).unwrap();
    for md in &params.modules {
        let b = Tensor::randn(0f32, 0.02, md.b.shape(), &Device::Cpu).unwrap();
        md.b.set(&b).unwrap();
    }
    params.save_peft(&adapter, "smollm2-135m-instruct").unwrap();
    drop(m);
    let mut m = with_adapter(&gguf, &adapter);
    let tok = ChatTokenizer::from_gguf(&gguf).unwrap();
    let prompt = tok
        .encode_prompt(
            &[ChatMessage::new(
                Role::User,
                "What is the capital of France?",
            )],
            None,
        )
        .unwrap();
    let x = Tensor::new(prompt.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let want = m.forward(&x, 0, None).unwrap();
    let out = dir.path().join("merged");
    merge_to_hf_dir(&mut m, Some(&tok), &out).unwrap();
    drop(m);
    let engine = ChatEngine::load_path(&out, WeightPath::F32).unwrap();
    let got = engine.model.forward(&x, 0, None).unwrap();
    let d = max_diff(&want, &got);
    assert!(
        d < 1e-3,
        "real model: merged vs base+adapter logits differ by {d}"
    );
    assert_eq!(
        engine
            .encode_prompt(
                &[ChatMessage::new(
                    Role::User,
                    "What is the capital of France?"
                )],
                None
            )
            .unwrap(),
        prompt
    );
}
