//! Fast tests on tiny random models written to a temp dir.

use candle_core::quantized::GgmlDType;
use candle_core::{Device, Tensor};
use hone_model::generate::{generate, GenerationParams};
use hone_model::testing::{
    tiny_weights, write_tiny_gguf, write_tiny_hf_dir, write_tiny_model, TinySpec,
};
use hone_model::{load_model, ForwardOptions, LoraAdapter, ModelError, TensorKvCache, WeightPath};

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

#[test]
fn tiny_gguf_loads_with_expected_config_and_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let spec = TinySpec::default();
    let (gguf, _) = write_tiny_model(dir.path(), &spec).unwrap();
    let m = load_model(&gguf, WeightPath::F32).unwrap();
    assert_eq!(m.cfg.vocab_size, spec.vocab_size());
    assert_eq!(m.cfg.num_hidden_layers, 2);
    assert_eq!(m.cfg.num_key_value_heads, 2);
    assert_eq!(m.cfg.head_dim, 16);
    assert!(m.cfg.tie_word_embeddings);
    let logits = m.forward(&ids(2, 5, spec.vocab_size()), 0, None).unwrap();
    assert_eq!(logits.dims(), &[2, 5, spec.vocab_size()]);
}

#[test]
fn gguf_and_safetensors_of_the_same_weights_give_the_same_logits() {
    let dir = tempfile::tempdir().unwrap();
    let spec = TinySpec::default();
    let (gguf, hf) = write_tiny_model(dir.path(), &spec).unwrap();
    let a = load_model(&gguf, WeightPath::F32).unwrap();
    let b = load_model(&hf, WeightPath::F32).unwrap();
    let x = ids(1, 9, spec.vocab_size());
    let la = a.forward(&x, 0, None).unwrap();
    let lb = b.forward(&x, 0, None).unwrap();
    let d = max_diff(&la, &lb);
    assert!(d < 1e-4, "GGUF vs safetensors differ by {d}");
}

#[test]
fn incremental_decoding_with_kv_cache_matches_full_forward() {
    let dir = tempfile::tempdir().unwrap();
    let spec = TinySpec::default();
    let (gguf, _) = write_tiny_model(dir.path(), &spec).unwrap();
    let m = load_model(&gguf, WeightPath::F32).unwrap();
    let x = ids(1, 12, spec.vocab_size());
    let full = m.forward(&x, 0, None).unwrap();
    let mut cache = TensorKvCache::new(&m.cfg);
    // A prefill of 5, then one token at a time.
    let mut parts = vec![m
        .forward(&x.narrow(1, 0, 5).unwrap(), 0, Some(&mut cache))
        .unwrap()];
    for p in 5..12 {
        parts.push(
            m.forward(&x.narrow(1, p, 1).unwrap(), p, Some(&mut cache))
                .unwrap(),
        );
    }
    assert_eq!(cache.len(), 12);
    let inc = Tensor::cat(&parts, 1).unwrap();
    let d = max_diff(&full, &inc);
    assert!(d < 1e-4, "cached vs full differ by {d}");
}

/// Past its starting room the f32 cache grows (positions are written in
/// place, never concatenated): a prompt fed in chunks across two growths,
/// then decoded a token at a time, still gives the full pass's logits; and
/// a clone appends on its own, leaving the original untouched.
#[test]
fn a_growing_kv_cache_matches_full_forward_and_clones_are_independent() {
    let dir = tempfile::tempdir().unwrap();
    let spec = TinySpec {
        context: 512,
        ..TinySpec::default()
    };
    let (gguf, _) = write_tiny_model(dir.path(), &spec).unwrap();
    let m = load_model(&gguf, WeightPath::F32).unwrap();
    let n = 200;
    let x = ids(1, n, spec.vocab_size());
    let full = m.forward(&x, 0, None).unwrap();
    let mut cache = TensorKvCache::new(&m.cfg);
    let mut parts = Vec::new();
    for (start, len) in [(0, 50), (50, 100), (150, 40)] {
        let chunk = x.narrow(1, start, len).unwrap();
        parts.push(m.forward(&chunk, start, Some(&mut cache)).unwrap());
    }
    let fork = cache.clone();
    for p in 190..n {
        let tok = x.narrow(1, p, 1).unwrap();
        parts.push(m.forward(&tok, p, Some(&mut cache)).unwrap());
    }
    assert_eq!((cache.len(), fork.len()), (n, 190));
    let d = max_diff(&full, &Tensor::cat(&parts, 1).unwrap());
    assert!(d < 1e-4, "cached vs full differ by {d}");
    // The fork continues with other tokens; the original is unchanged.
    let mut fork = fork;
    let other = ids(1, 10, spec.vocab_size());
    m.forward(&other, 190, Some(&mut fork)).unwrap();
    assert_eq!(fork.len(), 200);
    let next = ids(1, 1, spec.vocab_size());
    let a = m.forward(&next, n, Some(&mut cache)).unwrap();
    let whole = Tensor::cat(&[x.clone(), next.clone()], 1).unwrap();
    let b = m.forward(&whole, 0, None).unwrap().narrow(1, n, 1).unwrap();
    assert!(
        max_diff(&a, &b) < 1e-4,
        "the original cache was not written by its clone"
    );
}

#[test]
fn quantized_paths_stay_close_to_f32() {
    let dir = tempfile::tempdir().unwrap();
    let spec = TinySpec::default();
    let w = tiny_weights(&spec).unwrap();
    let f32_path = dir.path().join("f32.gguf");
    let q8_path = dir.path().join("q8.gguf");
    write_tiny_gguf(&f32_path, &spec, &w, GgmlDType::F32).unwrap();
    write_tiny_gguf(&q8_path, &spec, &w, GgmlDType::Q8_0).unwrap();
    let x = ids(1, 7, spec.vocab_size());
    let reference = load_model(&f32_path, WeightPath::F32)
        .unwrap()
        .forward(&x, 0, None)
        .unwrap();
    let scale = reference
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap();
    let scale = scale.to_scalar::<f32>().unwrap();
    for (path, wp) in [
        (&q8_path, WeightPath::Packed),
        (&f32_path, WeightPath::Packed),
        (&q8_path, WeightPath::F32),
    ] {
        let m = load_model(path, wp).unwrap();
        let l = m.forward(&x, 0, None).unwrap();
        let d = max_diff(&reference, &l);
        // 8-bit weights: a few percent of the logit range.
        assert!(
            d < 0.03 * scale,
            "{wp:?} from {path:?}: max diff {d} of {scale}"
        );
    }
}

#[test]
fn lora_adapter_can_be_attached_bypassed_and_removed_without_reload() {
    let dir = tempfile::tempdir().unwrap();
    let spec = TinySpec::default();
    let (gguf, _) = write_tiny_model(dir.path(), &spec).unwrap();
    let mut m = load_model(&gguf, WeightPath::F32).unwrap();
    let x = ids(1, 6, spec.vocab_size());
    let base = m.forward(&x, 0, None).unwrap();
    let a = Tensor::randn(0f32, 0.5, (4, 64), &Device::Cpu).unwrap();
    let b = Tensor::randn(0f32, 0.5, (64, 4), &Device::Cpu).unwrap();
    let ad = LoraAdapter::new(a, b, 8.0).unwrap();
    m.set_adapter("model.layers.1.self_attn.q_proj", Some(ad))
        .unwrap();
    let with = m.forward(&x, 0, None).unwrap();
    assert!(max_diff(&base, &with) > 1e-3, "the adapter changed nothing");
    let off = m
        .forward_with(
            &x,
            0,
            None,
            ForwardOptions {
                use_adapters: false,
            },
        )
        .unwrap();
    assert_eq!(max_diff(&base, &off), 0.0);
    m.clear_adapters();
    assert_eq!(max_diff(&base, &m.forward(&x, 0, None).unwrap()), 0.0);
    let err = m
        .set_adapter("model.layers.9.self_attn.q_proj", None)
        .unwrap_err();
    assert!(matches!(err, ModelError::Adapter(_)));
}

#[test]
fn greedy_generation_on_tiny_model_matches_argmax_of_full_forward() {
    let dir = tempfile::tempdir().unwrap();
    let spec = TinySpec::default();
    let (gguf, _) = write_tiny_model(dir.path(), &spec).unwrap();
    let m = load_model(&gguf, WeightPath::F32).unwrap();
    let prompt: Vec<u32> = vec![1, 40, 50, 60, 70];
    let params = GenerationParams {
        max_tokens: 6,
        ..Default::default()
    };
    let detok = |ids: &[u32]| -> hone_model::Result<String> { Ok(format!("{ids:?}")) };
    let g = generate(&m, &prompt, &params, &[], &detok, &mut |_| {
        std::ops::ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(g.token_ids.len(), 6);
    // Recompute each step without a cache.
    let mut seq = prompt.clone();
    for &tok in &g.token_ids {
        let x = Tensor::new(seq.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let l = m.forward(&x, 0, None).unwrap();
        let last = l.squeeze(0).unwrap().get(seq.len() - 1).unwrap();
        let want = last.argmax(0).unwrap().to_scalar::<u32>().unwrap();
        assert_eq!(tok, want);
        seq.push(tok);
    }
}

#[test]
fn loading_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let spec = TinySpec::default();
    let missing = dir.path().join("nope.gguf");
    let e = load_model(&missing, WeightPath::F32).unwrap_err();
    assert!(matches!(e, ModelError::NotFound(_)), "{e}");

    let (gguf, hf) = write_tiny_model(dir.path(), &spec).unwrap();
    // Truncated GGUF: header fine, tensor data cut short.
    let bytes = std::fs::read(&gguf).unwrap();
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let e = load_model(&cut, WeightPath::F32).unwrap_err();
    assert!(matches!(e, ModelError::CorruptGguf { .. }), "{e}");
    // Not a GGUF at all.
    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"hello, this is not a model").unwrap();
    let e = load_model(&junk, WeightPath::F32).unwrap_err();
    assert!(matches!(e, ModelError::CorruptGguf { .. }), "{e}");
    // Missing tensor.
    let mut w = tiny_weights(&spec).unwrap();
    w.retain(|(n, _)| n != "model.layers.1.mlp.up_proj.weight");
    let partial = dir.path().join("partial.gguf");
    write_tiny_gguf(&partial, &spec, &w, GgmlDType::F32).unwrap();
    let e = load_model(&partial, WeightPath::F32).unwrap_err();
    assert!(e.to_string().contains("blk.1.ffn_up.weight"), "{e}");
    // Unsupported architecture in an HF dir.
    let cfg = hf.join("config.json");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("\"llama\"", "\"gpt2\"");
    let text = text.replace("LlamaForCausalLM", "GPT2LMHeadModel");
    std::fs::write(&cfg, text).unwrap();
    let e = load_model(&hf, WeightPath::F32).unwrap_err();
    assert!(
        matches!(e, ModelError::UnsupportedArchitecture { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("llama"), "{e}");
    // An HF dir without weights.
    let empty = dir.path().join("empty-hf");
    write_tiny_hf_dir(&empty, &spec, &[]).unwrap();
    std::fs::remove_file(empty.join("model.safetensors")).unwrap();
    let e = load_model(&empty, WeightPath::F32).unwrap_err();
    assert!(matches!(e, ModelError::NotFound(_)), "{e}");
}

#[test]
fn chat_engine_renders_template_and_generates_on_tiny_gguf() {
    use hone_model::ChatEngine;
    use hone_text::{ChatMessage, Role};
    let dir = tempfile::tempdir().unwrap();
    let (gguf, _) = write_tiny_model(dir.path(), &TinySpec::default()).unwrap();
    let engine = ChatEngine::load_path(&gguf, WeightPath::F32).unwrap();
    let msgs = [ChatMessage::new(Role::User, "hi")];
    let prompt = engine.encode_prompt(&msgs, None).unwrap();
    // <|im_start|> user \n h i <|im_end|> \n <|im_start|> assistant \n
    assert_eq!(prompt.first(), Some(&1));
    assert!(prompt.contains(&2));
    let params = GenerationParams {
        max_tokens: 5,
        temperature: 0.8,
        seed: 3,
        ..Default::default()
    };
    let mut streamed = String::new();
    let g = engine
        .chat(&msgs, &params, &mut |s| {
            streamed.push_str(s);
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(g.prompt_tokens, prompt.len());
    assert!(g.completion_tokens <= 5);
    assert_eq!(streamed, g.text);
    let again = engine
        .chat(&msgs, &params, &mut |_| std::ops::ControlFlow::Continue(()))
        .unwrap();
    assert_eq!(again.token_ids, g.token_ids, "same seed, same tokens");
}
