//! The packed decode path (`WeightPath::Packed`, `hone_model::decode`) against
//! the candle tensor path on a tiny random model: same logits within
//! quantization noise, prefill chunking that changes nothing, adapters that
//! switch on and off, and clear errors.

use std::path::{Path, PathBuf};

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use hone_model::generate::StepModel;
use hone_model::lora::{LoraConfig, LoraParams};
use hone_model::score::AdapterSwitch;
use hone_model::testing::{tiny_weights, write_tiny_gguf, TinySpec};
use hone_model::{load_model, ForwardOptions, Llama, ModelError, WeightPath};

/// A tiny GGUF whose linear layers are Q4_1, like the default model's, and
/// whose embedding holds Q8_0-representable values (the packed path stores
/// it as Q8_0), so both paths multiply the same weights.
fn tiny_q4_1(dir: &Path) -> PathBuf {
    tiny_q4_1_shaped(dir, &TinySpec::default())
}

/// [`tiny_q4_1`] with another shape.
fn tiny_q4_1_shaped(dir: &Path, spec: &TinySpec) -> PathBuf {
    let spec = spec.clone();
    let mut w = tiny_weights(&spec).unwrap();
    for (name, t) in w.iter_mut() {
        if name.contains("embed_tokens") {
            let q = QTensor::quantize(t, GgmlDType::Q8_0).unwrap();
            *t = q.dequantize(&Device::Cpu).unwrap();
        }
    }
    let path = dir.join("tiny-q4_1.gguf");
    write_tiny_gguf(&path, &spec, &w, GgmlDType::Q4_1).unwrap();
    path
}

/// Logits of every position of `ids` through the tensor forward pass.
fn tensor_logits(m: &Llama, ids: &[u32], use_adapters: bool) -> Vec<Vec<f32>> {
    let input = Tensor::new(ids, m.device()).unwrap().unsqueeze(0).unwrap();
    let opts = ForwardOptions { use_adapters };
    let logits = m.forward_with(&input, 0, None, opts).unwrap();
    logits.squeeze(0).unwrap().to_vec2::<f32>().unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

const IDS: &[u32] = &[
    1, 40, 50, 60, 70, 80, 90, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
];

/// Prefill then token-by-token steps on packed weights give the logits of the
/// f32 forward pass over the whole sequence, up to summation order.
#[test]
fn packed_steps_match_the_f32_forward_pass() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = tiny_q4_1(dir.path());
    let reference = load_model(&gguf, WeightPath::F32).unwrap();
    let packed = load_model(&gguf, WeightPath::Packed).unwrap();
    let want = tensor_logits(&reference, IDS, true);
    let mut cache = packed.new_cache();
    let split = 5;
    let first = packed.step(&IDS[..split], 0, &mut cache).unwrap();
    let d = max_abs_diff(&first, &want[split - 1]);
    assert!(d < 1e-3, "prefill logits differ by {d}");
    for (pos, &id) in IDS.iter().enumerate().skip(split) {
        let got = packed.step(&[id], pos, &mut cache).unwrap();
        let d = max_abs_diff(&got, &want[pos]);
        assert!(d < 1e-3, "position {pos} differs by {d}");
    }
    assert_eq!(cache.len(), IDS.len());
}

/// A prompt run in one call (chunks of several rows) gives exactly the
/// logits of feeding it one token at a time.
#[test]
fn prefill_in_chunks_equals_one_token_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let m = load_model(&tiny_q4_1(dir.path()), WeightPath::Packed).unwrap();
    let mut all_at_once = m.new_cache();
    let a = m.step(IDS, 0, &mut all_at_once).unwrap();
    let mut one_by_one = m.new_cache();
    let mut b = Vec::new();
    for (pos, &id) in IDS.iter().enumerate() {
        b = m.step(&[id], pos, &mut one_by_one).unwrap();
    }
    assert_eq!(a, b);
}

/// A prompt longer than several key blocks (64 positions), with heads of 64
/// columns (whole value tiles): chunked prefill equals one token at a time
/// bit for bit, and both follow the tensor pass across the block edges.
#[test]
fn long_prompts_cross_key_blocks_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let spec = TinySpec {
        hidden: 128,
        heads: 2,
        kv_heads: 1,
        ..TinySpec::default()
    };
    let gguf = tiny_q4_1_shaped(dir.path(), &spec);
    let m = load_model(&gguf, WeightPath::Packed).unwrap();
    let reference = load_model(&gguf, WeightPath::F32).unwrap();
    let ids: Vec<u32> = (0..200u32).map(|i| 3 + (i * 37 + i / 7) % 250).collect();
    let want = tensor_logits(&reference, &ids, true);
    let mut one_by_one = m.new_cache();
    let mut each = Vec::new();
    for (pos, &id) in ids.iter().enumerate() {
        each.push(m.step(&[id], pos, &mut one_by_one).unwrap());
    }
    for end in [63, 64, 65, 128, 150, 200] {
        let mut cache = m.new_cache();
        let got = m.step(&ids[..end], 0, &mut cache).unwrap();
        assert_eq!(got, each[end - 1], "prefill of {end} tokens");
        let d = max_abs_diff(&got, &want[end - 1]);
        assert!(d < 1e-3, "position {}: {d} from the tensor pass", end - 1);
    }
}

/// With an adapter attached, the packed step follows it when adapters are on
/// and ignores it when they are off, like the tensor path.
#[test]
fn adapters_switch_on_and_off_on_packed_weights() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = tiny_q4_1(dir.path());
    let mut reference = load_model(&gguf, WeightPath::F32).unwrap();
    let mut packed = load_model(&gguf, WeightPath::Packed).unwrap();
    let cfg = LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        target_modules: vec!["q_proj".into(), "v_proj".into(), "down_proj".into()],
        trainable_tokens: Vec::new(),
    };
    for m in [&mut reference, &mut packed] {
        let lora = LoraParams::attach(m, &cfg, 9).unwrap();
        for (i, module) in lora.modules.iter().enumerate() {
            // The same non-zero B in both models.
            let (out, r) = module.b.as_tensor().dims2().unwrap();
            let b: Vec<f32> = (0..out * r)
                .map(|k| ((k * 7 + i) % 13) as f32 / 13.0 - 0.5)
                .collect();
            let b = Tensor::from_vec(b, (out, r), &Device::Cpu).unwrap();
            module.b.set(&b).unwrap();
        }
    }
    for use_adapters in [true, false] {
        let want = tensor_logits(&reference, IDS, use_adapters);
        let switch = AdapterSwitch {
            model: &packed,
            use_adapters,
        };
        let mut cache = switch.new_cache();
        let got = switch.step(IDS, 0, &mut cache).unwrap();
        let d = max_abs_diff(&got, want.last().unwrap());
        assert!(d < 1e-3, "adapters {use_adapters}: {d}");
    }
    let on = tensor_logits(&reference, IDS, true);
    let off = tensor_logits(&reference, IDS, false);
    assert!(
        max_abs_diff(on.last().unwrap(), off.last().unwrap()) > 0.1,
        "the adapter must change the output, or this test proves nothing"
    );
}

/// The tensor forward pass still works on packed weights (scoring uses it).
#[test]
fn the_tensor_forward_pass_runs_on_packed_weights() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = tiny_q4_1(dir.path());
    let reference = load_model(&gguf, WeightPath::F32).unwrap();
    let packed = load_model(&gguf, WeightPath::Packed).unwrap();
    let want = tensor_logits(&reference, IDS, true);
    let got = tensor_logits(&packed, IDS, true);
    for (pos, (g, w)) in got.iter().zip(&want).enumerate() {
        let d = max_abs_diff(g, w);
        assert!(d < 1e-3, "position {pos}: {d}");
    }
}

#[test]
fn bad_steps_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let m = load_model(&tiny_q4_1(dir.path()), WeightPath::Packed).unwrap();
    let mut cache = m.new_cache();
    assert!(m.step(&[], 0, &mut cache).is_err(), "empty step");
    assert!(m.step(&[1, 2], 3, &mut cache).is_err(), "wrong start_pos");
    let vocab = m.cfg.vocab_size as u32;
    assert!(
        m.step(&[vocab], 0, &mut cache).is_err(),
        "id outside the vocabulary"
    );
    let ctx = m.context_length();
    let long = vec![5u32; ctx + 1];
    let r = m.step(&long, 0, &mut m.new_cache());
    assert!(
        matches!(r, Err(ModelError::ContextOverflow { .. })),
        "{r:?}"
    );
    // Each step path has its own cache type: the tensor forward pass takes
    // only a `TensorKvCache` (checked by the compiler), and a cache made by
    // an f32 model is refused by the packed step, in a single or batched step.
    let f32_model = load_model(&tiny_q4_1(dir.path()), WeightPath::F32).unwrap();
    let mut tensor_cache = f32_model.new_cache();
    f32_model.step(&[1, 2], 0, &mut tensor_cache).unwrap();
    let r = m.step(&[3], 2, &mut tensor_cache);
    assert!(matches!(r, Err(ModelError::Generation(_))), "{r:?}");
    let r = m.step_batch_logits(&[3], &mut [&mut tensor_cache], ForwardOptions::default());
    assert!(r.is_err(), "batched step on a tensor cache");
    let mut packed_cache = m.new_cache();
    assert!(f32_model.step(&[1], 0, &mut packed_cache).is_err());
}

/// A packed cache made for a model of another shape is an error, not an
/// out-of-bounds panic.
#[test]
fn a_cache_from_another_model_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let m = load_model(&tiny_q4_1(dir.path()), WeightPath::Packed).unwrap();
    let mut other_cfg = m.cfg.clone();
    other_cfg.num_hidden_layers += 1;
    let mut cache = hone_model::KvCache::Packed(hone_model::PackedKvCache::new(&other_cfg));
    assert!(m.step(&[1, 2], 0, &mut cache).is_err());
}
