//! Batched generation (`generate_batch`, `Llama::forward_step_batch`) on a tiny
//! random model: each sequence of a batch must get exactly what it gets alone.

use std::ops::ControlFlow;
use std::path::Path;

use candle_core::quantized::GgmlDType;
use hone_model::generate::{generate, generate_batch, Generation, GenerationParams, StepModel};
use hone_model::lora::{LoraConfig, LoraParams};
use hone_model::testing::{tiny_weights, write_tiny_gguf, TinySpec};
use hone_model::{load_model, ForwardOptions, Llama, WeightPath};

/// The tiny model with its embeddings scaled down, so that the layers (and
/// an adapter) decide the output rather than the input embedding, and greedy
/// answers vary from prompt to prompt.
fn tiny(dir: &Path, weights: WeightPath) -> Llama {
    let spec = TinySpec::default();
    let mut w = tiny_weights(&spec).unwrap();
    for (name, t) in w.iter_mut() {
        if name.contains("embed_tokens") {
            *t = t.affine(0.02, 0.0).unwrap();
        }
    }
    let gguf = dir.join("tiny.gguf");
    write_tiny_gguf(&gguf, &spec, &w, GgmlDType::F32).unwrap();
    load_model(&gguf, weights).unwrap()
}

/// Attaches a LoRA adapter with non-zero B to the square projections.
fn with_adapter(model: &mut Llama) -> LoraParams {
    let cfg = LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        target_modules: vec!["q_proj".into(), "o_proj".into()],
        trainable_tokens: Vec::new(),
    };
    let lora = LoraParams::attach(model, &cfg, 5).unwrap();
    for m in &lora.modules {
        let b = m.a.as_tensor().t().unwrap().affine(3.0, 0.0).unwrap();
        m.b.set(&b.contiguous().unwrap()).unwrap();
    }
    lora
}

fn prompts() -> Vec<Vec<u32>> {
    vec![
        vec![1, 40, 50, 60, 70],
        vec![3],
        vec![9, 8, 7, 6, 5, 4, 3, 2, 1, 30, 31],
        vec![100, 101, 102],
        vec![1, 40, 50, 60, 70],
    ]
}

fn detok(ids: &[u32]) -> hone_model::Result<String> {
    Ok(ids.iter().map(|i| format!("<{i}>")).collect())
}

fn one_by_one(m: &Llama, params: &GenerationParams, stop_ids: &[u32]) -> Vec<Generation> {
    prompts()
        .iter()
        .map(|p| {
            generate(m, p, params, stop_ids, &detok, &mut |_| {
                ControlFlow::Continue(())
            })
            .unwrap()
        })
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn a_batched_step_gives_each_sequence_its_own_logits() {
    let dir = tempfile::tempdir().unwrap();
    for weights in [WeightPath::F32, WeightPath::Packed] {
        let mut m = tiny(dir.path(), weights);
        with_adapter(&mut m);
        let ps = prompts();
        let mut caches: Vec<_> = ps.iter().map(|_| m.new_cache()).collect();
        let mut alone = Vec::new();
        for (p, c) in ps.iter().zip(caches.iter_mut()) {
            m.step(p, 0, c).unwrap();
            // Each sequence's next token alone, on a copy of its cache.
            let mut solo = c.clone();
            alone.push(m.step(&[7], p.len(), &mut solo).unwrap());
        }
        let mut refs: Vec<_> = caches.iter_mut().collect();
        let ids = vec![7; ps.len()];
        let batched = m
            .step_batch_logits(&ids, &mut refs, ForwardOptions::default())
            .unwrap();
        for (i, (b, a)) in batched.iter().zip(&alone).enumerate() {
            let d = max_abs_diff(b, a);
            assert!(d <= 1e-5, "{weights:?}: sequence {i} differs by {d}");
        }
        for (c, p) in caches.iter().zip(&ps) {
            assert_eq!(c.len(), p.len() + 1, "each cache grew by one position");
        }
    }
}

#[test]
fn generate_batch_equals_generating_each_prompt_alone() {
    for weights in [WeightPath::F32, WeightPath::Packed] {
        generate_batch_equals_alone_on(weights);
    }
}

fn generate_batch_equals_alone_on(weights: WeightPath) {
    let dir = tempfile::tempdir().unwrap();
    let mut m = tiny(dir.path(), weights);
    let greedy = GenerationParams {
        max_tokens: 12,
        ..Default::default()
    };
    let sampled = GenerationParams {
        max_tokens: 9,
        temperature: 0.9,
        top_p: 0.9,
        seed: 11,
        ..Default::default()
    };
    let stopping = GenerationParams {
        max_tokens: 12,
        stop: vec!["<5>".into()],
        ..Default::default()
    };
    for adapter in [false, true] {
        if adapter {
            with_adapter(&mut m);
        }
        // A stop id taken from the first prompt's own greedy answer, so that
        // it stops early while others may run on: the batch mixes lengths.
        let stop_id = one_by_one(&m, &greedy, &[])[0].token_ids[2];
        for params in [&greedy, &sampled, &stopping] {
            let alone = one_by_one(&m, params, &[stop_id]);
            let batch = generate_batch(&m, &prompts(), params, &[stop_id], &detok).unwrap();
            assert_eq!(
                batch, alone,
                "{weights:?}, adapter {adapter}, params {params:?}"
            );
        }
        let lens: Vec<usize> = one_by_one(&m, &greedy, &[stop_id])
            .iter()
            .map(|g| g.completion_tokens)
            .collect();
        assert!(lens[0] <= 3, "{lens:?}");
        assert!(
            lens.windows(2).any(|w| w[0] != w[1]),
            "every sequence had the same length, the test proves little: {lens:?}"
        );
    }
}

#[test]
fn bad_batches_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    for weights in [WeightPath::F32, WeightPath::Packed] {
        let m = tiny(dir.path(), weights);
        let mut c = m.new_cache();
        let mut refs = vec![&mut c];
        let r = m.step_batch_logits(&[1, 2], &mut refs, ForwardOptions::default());
        assert!(r.is_err(), "{weights:?}");
        let r = m.step_batch_logits(&[], &mut [], ForwardOptions::default());
        assert!(r.is_err(), "{weights:?}");
    }
    let m = tiny(dir.path(), WeightPath::F32);
    let empty = generate_batch(&m, &[vec![]], &GenerationParams::default(), &[], &detok);
    assert!(empty.is_err());
    let none = generate_batch(&m, &[], &GenerationParams::default(), &[], &detok).unwrap();
    assert!(none.is_empty());
}
