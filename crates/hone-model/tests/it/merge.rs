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

/// Gives every LoRA B of `m` a random value (B starts at zero), so the
/// adapter visibly changes the logits.
fn attach_random_adapter(m: &mut Llama, targets: &str, seed: u64) {
    let cfg = LoraConfig {
        target_modules: LoraConfig::parse_target_modules(targets).unwrap(),
        ..LoraConfig::default()
    };
    let params = LoraParams::attach(m, &cfg, seed).unwrap();
    for md in &params.modules {
        let b = Tensor::randn(0f32, 0.3, md.b.shape(), &Device::Cpu).unwrap();
        md.b.set(&b).unwrap();
    }
}

fn logits(m: &Llama, ids: &[u32]) -> Tensor {
    let x = Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    m.forward(&x, 0, None).unwrap()
}

/// Every family of `testdata/families` (Llama with llama3 and linear RoPE
/// scaling, Qwen2's biases, Qwen3's q/k norms, Gemma 3's norms, windows and
/// softcap) merges into an HF directory that hone reads back as the same
/// spec, with logits equal to base plus adapter, under exactly the tensor
/// names transformers wrote for the base (no missing or extra key), and with
/// every tensor the adapter did not touch (norms in HF's convention, biases)
/// equal to the base file's.
#[test]
fn every_family_merges_into_an_hf_dir_equal_to_base_plus_adapter() {
    let dir = tempfile::tempdir().unwrap();
    for name in crate::families::FAMILIES {
        let base_dir = crate::families::family_dir(name);
        let base = load_model(&base_dir, WeightPath::F32).unwrap();
        let mut m = base.clone();
        attach_random_adapter(&mut m, "q_proj,v_proj,down_proj", 7);
        let (ids, _) = crate::families::reference(name);
        let want = logits(&m, &ids);
        let out = dir.path().join(name);
        let stats = merge_to_hf_dir(&mut m, None, &out).unwrap();
        assert_eq!(stats.merged_modules, 3 * base.cfg.num_hidden_layers);

        let merged = load_model(&out, WeightPath::F32).unwrap();
        assert_eq!(merged.spec, base.spec, "{name}: config.json round trip");
        let d = max_diff(&want, &logits(&merged, &ids));
        assert!(
            d < 1e-4,
            "{name}: merged vs base+adapter logits differ by {d}"
        );
        let shift = max_diff(&want, &logits(&base, &ids));
        assert!(
            shift > 1e-2,
            "{name}: the adapter changed logits by only {shift}"
        );

        let orig = candle_core::safetensors::load(base_dir.join(MODEL_WEIGHTS_FILE), &Device::Cpu)
            .unwrap();
        let written =
            candle_core::safetensors::load(out.join(MODEL_WEIGHTS_FILE), &Device::Cpu).unwrap();
        let mut want_names: Vec<_> = orig.keys().collect();
        let mut got_names: Vec<_> = written.keys().collect();
        want_names.sort();
        got_names.sort();
        assert_eq!(got_names, want_names, "{name}: tensor names");
        for (n, t) in &orig {
            let adapted = ["q_proj.weight", "v_proj.weight", "down_proj.weight"]
                .iter()
                .any(|s| n.ends_with(s));
            if !adapted {
                let d = max_diff(t, &written[n]);
                assert!(d < 1e-6, "{name}: {n} changed by {d}");
            }
        }
    }
}

/// What the written config says beyond what hone reads back: the fields
/// transformers needs for each family.
#[test]
fn written_configs_carry_each_familys_fields() {
    let read = |name: &str| {
        let m = load_model(&crate::families::family_dir(name), WeightPath::F32).unwrap();
        hone_model::merge::hf_config_json(&m.spec, None).unwrap()
    };
    let l = read("llama3_scaled");
    assert_eq!(l["architectures"][0], "LlamaForCausalLM");
    assert_eq!(l["rope_scaling"]["rope_type"], "llama3");
    assert_eq!(l["rope_scaling"]["original_max_position_embeddings"], 32);
    assert_eq!(l["rope_parameters"]["rope_theta"], 100.0);
    assert_eq!(read("llama_linear")["rope_scaling"]["factor"], 4.0);
    let q = read("qwen2");
    assert_eq!(q["model_type"], "qwen2");
    assert_eq!(q["use_sliding_window"], false);
    assert_eq!(read("qwen3")["head_dim"], 16);
    let g = read("gemma3");
    assert_eq!(g["architectures"][0], "Gemma3ForCausalLM");
    assert_eq!(g["model_type"], "gemma3_text");
    assert_eq!(g["query_pre_attn_scalar"], 20);
    assert_eq!(g["sliding_window"], 4);
    assert_eq!(g["rope_local_base_freq"], 100.0);
    assert_eq!(
        g["rope_parameters"]["full_attention"]["rope_type"],
        "linear"
    );
    assert_eq!(g["layer_types"][2], "full_attention");
    assert_eq!(g["tie_word_embeddings"], true);
    assert_eq!(read("gemma3_softcap")["final_logit_softcapping"], 8.0);
}

/// A model the HF config cannot express is refused before anything is
/// written: here a Llama whose RoPE scaling came as GGUF `rope_freqs`
/// divisors, and a Qwen2 whose spec was given q/k norms.
#[test]
fn merge_refuses_what_config_json_cannot_express() {
    use hone_model::family::{RopeScaling, RopeSpec};
    let dir = tempfile::tempdir().unwrap();
    let mut m = load_model(
        &crate::families::family_dir("llama_linear"),
        WeightPath::F32,
    )
    .unwrap();
    let half = m.spec.dims.head_dim / 2;
    m.spec.rope_full =
        RopeSpec::new(100.0, 2 * half, RopeScaling::FreqFactors(vec![2.0; half])).unwrap();
    attach_random_adapter(&mut m, "q_proj", 3);
    let out = dir.path().join("freqs");
    let err = merge_to_hf_dir(&mut m, None, &out).unwrap_err().to_string();
    assert!(err.contains("rope_freqs"), "{err}");
    assert!(!out.exists());

    let mut m = load_model(&crate::families::family_dir("qwen2"), WeightPath::F32).unwrap();
    m.spec.qk_norm = true;
    let out = dir.path().join("qknorm");
    let err = hone_model::write_hf_dir(&m, None, &out, hone_model::MergeDtype::F32)
        .unwrap_err()
        .to_string();
    assert!(err.contains("q/k norms"), "{err}");
    assert!(!out.exists());
}

/// `scripts/check_merged_hf.py` with the python of `HONE_TEST_PYTHON` (one
/// with torch and transformers); panics with the script's output on failure.
fn run_check_script(args: &[&std::ffi::OsStr]) {
    let python = std::env::var_os("HONE_TEST_PYTHON")
        .expect("set HONE_TEST_PYTHON to a python with torch and transformers");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/check_merged_hf.py");
    let out = std::process::Command::new(python)
        .arg(&script)
        .args(args)
        .output()
        .expect("running the check script");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "check_merged_hf.py failed:\n{text}");
    eprintln!("{text}");
}

/// Every family's merged directory loads in transformers without missing or
/// unexpected keys, and transformers' logits equal hone's within 1e-4.
#[test]
#[ignore = "needs HONE_TEST_PYTHON (a python with torch and transformers)"]
fn merged_family_dirs_match_transformers() {
    let dir = tempfile::tempdir().unwrap();
    for name in crate::families::FAMILIES {
        let mut m = load_model(&crate::families::family_dir(name), WeightPath::F32).unwrap();
        attach_random_adapter(&mut m, "all-linear", 5);
        let out = dir.path().join(name);
        merge_to_hf_dir(&mut m, None, &out).unwrap();
        let merged = load_model(&out, WeightPath::F32).unwrap();
        let (ids, _) = crate::families::reference(name);
        let got: Vec<Vec<f32>> = logits(&merged, &ids).squeeze(0).unwrap().to_vec2().unwrap();
        let file = dir.path().join(format!("{name}.logits.json"));
        let json = serde_json::json!({"input_ids": ids, "logits": got});
        std::fs::write(&file, json.to_string()).unwrap();
        run_check_script(&[out.as_os_str(), "--logits".as_ref(), file.as_os_str()]);
    }
}

/// The real Qwen2.5-Coder-0.5B GGUF with a small random adapter, merged: the
/// directory loads in transformers, renders the same prompt ids with its own
/// template and tokenizer, and greedy-decodes the same 16 tokens as hone's
/// merged model. CI runs the same script on the `hone merge` output.
#[test]
#[ignore = "needs HONE_TEST_QWEN_GGUF and HONE_TEST_PYTHON"]
fn real_qwen_merged_generates_like_transformers() {
    use hone_model::generate::GenerationParams;
    let gguf = std::path::PathBuf::from(
        std::env::var("HONE_TEST_QWEN_GGUF").expect("set HONE_TEST_QWEN_GGUF"),
    );
    let dir = tempfile::tempdir().unwrap();
    let mut engine = ChatEngine::load_path(&gguf, WeightPath::F32).unwrap();
    let cfg = LoraConfig {
        target_modules: LoraConfig::parse_target_modules("all-linear").unwrap(),
        ..LoraConfig::default()
    };
    let params = LoraParams::attach(&mut engine.model, &cfg, 9).unwrap();
    for md in &params.modules {
        let b = Tensor::randn(0f32, 0.01, md.b.shape(), &Device::Cpu).unwrap();
        md.b.set(&b).unwrap();
    }
    let out = dir.path().join("merged");
    merge_to_hf_dir(&mut engine.model, Some(&engine.tokenizer), &out).unwrap();
    drop(engine);
    let merged = ChatEngine::load_path(&out, WeightPath::F32).unwrap();
    let prompt = "Write a Python function that reverses a string.";
    let msgs = [ChatMessage::new(Role::User, prompt)];
    let prompt_ids = merged.encode_prompt(&msgs, None).unwrap();
    let params = GenerationParams {
        max_tokens: 16,
        ..GenerationParams::default()
    };
    let g = merged
        .generate_ids(&prompt_ids, &params, &mut |_| {
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
    let expect = dir.path().join("expect.json");
    let json =
        serde_json::json!({"prompt_ids": prompt_ids, "token_ids": g.token_ids, "text": g.text});
    std::fs::write(&expect, json.to_string()).unwrap();
    run_check_script(&[
        out.as_os_str(),
        "--prompt".as_ref(),
        prompt.as_ref(),
        "--expect-file".as_ref(),
        expect.as_os_str(),
    ]);
}
