//! Checks against the real SmolLM2-135M-Instruct GGUF (path in
//! `HONE_TEST_GGUF`) and the reference vectors made with transformers on the
//! dequantized f32 weights. Run with `--ignored`.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, D};
use hone_model::decode::Activations;
use hone_model::generate::{generate, GenerationParams};
use hone_model::{load_model, Llama, WeightPath};
use serde_json::Value;

const VECTORS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../testdata/smollm2-135m-instruct.json"
);
const BATCH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../testdata/train_batch_4x256.json"
);

fn gguf() -> PathBuf {
    PathBuf::from(std::env::var("HONE_TEST_GGUF").expect("set HONE_TEST_GGUF to the SmolLM2 GGUF"))
}

/// Reference data lives outside the repo; tests look next to the workspace
/// first (`HONE_REFERENCE_DIR`), then at the shared path.
fn reference(default: &str) -> Value {
    let path = match std::env::var("HONE_REFERENCE_DIR") {
        Ok(dir) => Path::new(&dir).join(Path::new(default).file_name().unwrap()),
        Err(_) => PathBuf::from(default),
    };
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn last_logits(m: &Llama, ids: &[u32]) -> Vec<f32> {
    let x = Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let l = m.forward(&x, 0, None).unwrap();
    l.squeeze(0)
        .unwrap()
        .get(ids.len() - 1)
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn top5(l: &[f32]) -> Vec<(u32, f32)> {
    let mut idx: Vec<usize> = (0..l.len()).collect();
    idx.sort_by(|&a, &b| l[b].total_cmp(&l[a]));
    idx.iter().take(5).map(|&i| (i as u32, l[i])).collect()
}

fn greedy(m: &Llama, prompt: &[u32], n: usize) -> Vec<u32> {
    let p = GenerationParams {
        max_tokens: n,
        ..Default::default()
    };
    let detok = |_: &[u32]| -> hone_model::Result<String> { Ok(String::new()) };
    let g = generate(m, prompt, &p, &[2], &detok, &mut |_| {
        std::ops::ControlFlow::Continue(())
    })
    .unwrap();
    g.token_ids
}

#[test]
#[ignore = "needs HONE_TEST_GGUF"]
fn f32_path_matches_reference_top5_logits_and_greedy_20() {
    let m = load_model(&gguf(), WeightPath::F32).unwrap();
    let v = reference(VECTORS);
    for case in v["logits"].as_array().unwrap() {
        let ids = u32s(&case["ids"]);
        let want_ids = u32s(&case["last_logits_top5"]["ids"]);
        let want_vals: Vec<f64> = case["last_logits_top5"]["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        let got = top5(&last_logits(&m, &ids));
        let got_ids: Vec<u32> = got.iter().map(|x| x.0).collect();
        assert_eq!(got_ids, want_ids);
        for ((_, g), w) in got.iter().zip(&want_vals) {
            assert!((*g as f64 - w).abs() < 1e-2, "logit {g} vs {w}");
        }
        assert_eq!(greedy(&m, &ids, 20), u32s(&case["greedy_20"]));
    }
}

#[test]
#[ignore = "needs HONE_TEST_GGUF"]
fn f32_path_reproduces_reference_cross_entropy_on_train_batch() {
    let m = load_model(&gguf(), WeightPath::F32).unwrap();
    let b = reference(BATCH);
    let (bs, t) = (
        b["batch"].as_u64().unwrap() as usize,
        b["seqlen"].as_u64().unwrap() as usize,
    );
    let flat: Vec<u32> = b["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| match row {
            Value::Array(_) => u32s(row),
            x => vec![x.as_u64().unwrap() as u32],
        })
        .collect();
    let ids = Tensor::from_vec(flat, (bs, t), &Device::Cpu).unwrap();
    let logits = m.forward(&ids, 0, None).unwrap();
    let v = m.cfg.vocab_size;
    let inputs = logits
        .narrow(1, 0, t - 1)
        .unwrap()
        .reshape((bs * (t - 1), v))
        .unwrap();
    let targets = ids.narrow(1, 1, t - 1).unwrap().flatten_all().unwrap();
    let loss = candle_nn::loss::cross_entropy(&inputs, &targets)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!((loss - 1.2436).abs() < 1e-3, "mean CE {loss}");
}

/// Measures each quantized path against the f32 reference and prints the gap.
/// Asserts the serving path (`WeightPath::Packed`, f32 activations) answers
/// the reference prompts exactly like f32.
#[test]
#[ignore = "needs HONE_TEST_GGUF"]
fn quantized_paths_gap_to_f32() {
    let v = reference(VECTORS);
    let reference_model = load_model(&gguf(), WeightPath::F32).unwrap();
    let m = load_model(&gguf(), WeightPath::Packed).unwrap();
    // f32 activations: greedy identical and a tight gap. 8-bit activations
    // (`HONE_DECODE_ACTIVATIONS=q8`): the gap and greedy agreement are printed,
    // and the gap bounded: measured 1.40 on the first prompt, whose greedy
    // answer then differs from its first token. The default (no choice made)
    // keeps this Q4_1 file's layers on f32 activations, so its greedy answers
    // must stay the reference's.
    for (act, tol) in [
        (Some(Activations::F32), 2e-2),
        (Some(Activations::Q8), 2.0),
        (None, 2e-1),
    ] {
        let _guard = act.map(Activations::override_on_this_thread);
        for case in v["logits"].as_array().unwrap() {
            let ids = u32s(&case["ids"]);
            let a = Tensor::new(last_logits(&reference_model, &ids), &Device::Cpu).unwrap();
            let b = Tensor::new(last_logits(&m, &ids), &Device::Cpu).unwrap();
            let gap = (&a - &b).unwrap().abs().unwrap().max(D::Minus1).unwrap();
            let gap = gap.to_scalar::<f32>().unwrap();
            let g = greedy(&m, &ids, 20);
            let want = u32s(&case["greedy_20"]);
            let agree = g.iter().zip(&want).take_while(|(a, b)| a == b).count();
            eprintln!("{act:?}: max |logit gap| {gap:.4}, greedy_20 agrees on {agree}/20 {g:?}");
            if act != Some(Activations::Q8) {
                assert_eq!(g, want, "{act:?} greedy differs");
            }
            assert!(gap < tol, "{act:?}: packed logits are {gap} from f32");
        }
    }
}

/// Batched generation on the serving path (packed): the reference prompts
/// decoded together give exactly the greedy tokens each gives alone.
#[test]
#[ignore = "needs HONE_TEST_GGUF"]
fn batched_greedy_generation_equals_one_by_one_on_the_real_model() {
    let m = load_model(&gguf(), WeightPath::Packed).unwrap();
    let v = reference(VECTORS);
    let prompts: Vec<Vec<u32>> = v["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| u32s(&c["ids"]))
        .collect();
    assert!(prompts.len() >= 2);
    let p = GenerationParams {
        max_tokens: 24,
        ..Default::default()
    };
    let detok = |_: &[u32]| -> hone_model::Result<String> { Ok(String::new()) };
    let batch = hone_model::generate::generate_batch(&m, &prompts, &p, &[2], &detok).unwrap();
    for (prompt, g) in prompts.iter().zip(&batch) {
        assert_eq!(g.token_ids, greedy(&m, prompt, 24));
    }
}
