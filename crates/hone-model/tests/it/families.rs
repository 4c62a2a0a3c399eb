//! Every model family against transformers: the tiny random models of
//! `testdata/families/` (one per family variant; see its README), loaded from
//! their HF directories. hone's f32 logits must equal transformers' within
//! 1e-4 at every position, through the full pass, the KV-cached pass and the
//! batched step; and paths that do not implement a family's switches yet
//! must refuse it with a clear error instead of computing a wrong answer.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use hone_model::{load_model, ForwardOptions, Llama, ModelError, TrainOptions, WeightPath};
use serde_json::Value;

/// Every tiny model in `testdata/families/`.
pub const FAMILIES: [&str; 6] = [
    "llama3_scaled",
    "llama_linear",
    "qwen2",
    "qwen3",
    "gemma3",
    "gemma3_softcap",
];

/// Absolute tolerance on f32 logits (the README's contract).
const TOL: f32 = 1e-4;

pub fn family_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/families")
        .join(name)
}

/// The fixed ids and transformers' logits `[positions][vocab]`.
pub fn reference(name: &str) -> (Vec<u32>, Vec<Vec<f32>>) {
    let path = family_dir(name).join("logits.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let v: Value = serde_json::from_str(&text).unwrap();
    let ids = v["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    let logits = v["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect();
    (ids, logits)
}

pub fn load(name: &str, wp: WeightPath) -> hone_model::Result<Llama> {
    load_model(&family_dir(name), wp)
}

/// Largest |a - b| over all positions.
pub fn max_gap(got: &[Vec<f32>], want: &[Vec<f32>]) -> f32 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .flat_map(|(g, w)| {
            assert_eq!(g.len(), w.len());
            g.iter().zip(w).map(|(a, b)| (a - b).abs())
        })
        .fold(0.0, f32::max)
}

fn full_logits(m: &Llama, ids: &[u32]) -> Vec<Vec<f32>> {
    let x = Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    m.forward(&x, 0, None)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec2()
        .unwrap()
}

#[test]
fn f32_logits_match_transformers_at_every_position() {
    for name in FAMILIES {
        let m = load(name, WeightPath::F32).unwrap();
        let (ids, want) = reference(name);
        let gap = max_gap(&full_logits(&m, &ids), &want);
        assert!(gap < TOL, "{name}: max |hone - transformers| = {gap}");
    }
}

/// The cached pass (a prompt chunk, then one token at a time) computes the
/// same logits: sliding layers mask by absolute position across chunks.
#[test]
fn cached_steps_match_transformers() {
    for name in FAMILIES {
        let m = load(name, WeightPath::F32).unwrap();
        let (ids, want) = reference(name);
        let mut cache = m.new_cache();
        let split = 3;
        let mut got = Vec::new();
        let x = Tensor::new(&ids[..split], &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let hone_model::KvCache::Tensor(c) = &mut cache else {
            panic!("f32 model makes tensor caches")
        };
        let l = m.forward(&x, 0, Some(c)).unwrap().squeeze(0).unwrap();
        got.extend(l.to_vec2::<f32>().unwrap());
        for (p, &id) in ids.iter().enumerate().skip(split) {
            got.push(
                m.step_logits(&[id], p, &mut cache, ForwardOptions::default())
                    .unwrap(),
            );
        }
        let gap = max_gap(&got, &want);
        assert!(gap < TOL, "{name}: cached max gap {gap}");
    }
}

/// The batched decode step on f32 weights: two sequences at different
/// positions, each token's logits equal transformers' at its position.
#[test]
fn batched_steps_match_transformers() {
    for name in FAMILIES {
        let m = load(name, WeightPath::F32).unwrap();
        let (ids, want) = reference(name);
        let (mut a, mut b) = (m.new_cache(), m.new_cache());
        let opts = ForwardOptions::default();
        // Sequence b starts 5 positions behind a.
        for (p, &id) in ids.iter().enumerate().take(5) {
            m.step_logits(&[id], p, &mut a, opts).unwrap();
        }
        let mut gap: f32 = 0.0;
        for p in 5..ids.len() {
            let q = p - 5;
            let out = m
                .step_batch_logits(&[ids[p], ids[q]], &mut [&mut a, &mut b], opts)
                .unwrap();
            gap = gap.max(max_gap(&out[..1], &want[p..=p]));
            gap = gap.max(max_gap(&out[1..], &want[q..=q]));
        }
        assert!(gap < TOL, "{name}: batched max gap {gap}");
    }
}

fn unsupported(e: ModelError) -> String {
    assert!(matches!(e, ModelError::Unsupported(_)), "{e:?}");
    e.to_string()
}

/// Training's fused stack does not implement the families' switches yet: it
/// refuses them by name. Plain Llama (RoPE scaling is in its tables) trains.
#[test]
fn training_refuses_switches_it_lacks() {
    let ids = Tensor::new(&[[1u32, 2, 3, 4]], &Device::Cpu).unwrap();
    let cases = [
        ("qwen2", "q/k/v bias"),
        ("qwen3", "q/k norms"),
        ("gemma3", "GELU-tanh activation"),
        ("gemma3_softcap", "final logit softcap"),
    ];
    for (name, switch) in cases {
        let m = load(name, WeightPath::F32).unwrap();
        let err = unsupported(m.forward_train(&ids, TrainOptions::default()).unwrap_err());
        assert!(
            err.contains("training does not support") && err.contains(switch),
            "{name}: {err}"
        );
    }
    for name in ["llama3_scaled", "llama_linear"] {
        let m = load(name, WeightPath::F32).unwrap();
        m.forward_train(&ids, TrainOptions::default()).unwrap();
    }
}

/// Merge writes Llama checkpoints only: other families, and Llama with RoPE
/// scaling (which the written config would drop), are refused before anything
/// is written.
#[test]
fn merge_refuses_other_families_and_switches() {
    let dir = tempfile::tempdir().unwrap();
    for name in FAMILIES {
        let m = load(name, WeightPath::F32).unwrap();
        let out = dir.path().join(name);
        let err = unsupported(hone_model::write_hf_dir(&m, None, &out).unwrap_err());
        assert!(err.contains("merge does not support"), "{name}: {err}");
        assert!(!out.exists(), "{name}: nothing is written");
    }
}

/// The packed decode step does not implement the families' switches yet: a
/// packed load refuses them by name and says which path works.
#[test]
fn packed_loading_refuses_switches_it_lacks() {
    let cases = [
        ("qwen2", "q/k/v bias"),
        ("qwen3", "q/k norms"),
        ("gemma3", "sliding-window attention"),
        ("gemma3_softcap", "final logit softcap"),
    ];
    for (name, switch) in cases {
        let err = unsupported(load(name, WeightPath::Packed).unwrap_err());
        assert!(
            err.contains("packed decode does not support")
                && err.contains(switch)
                && err.contains("--weights f32"),
            "{name}: {err}"
        );
    }
    for name in ["llama3_scaled", "llama_linear"] {
        load(name, WeightPath::Packed).unwrap();
    }
}
