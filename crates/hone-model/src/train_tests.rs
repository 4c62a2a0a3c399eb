//! Tests of the training-mode forward and LoRA parameters on tiny random models: the
//! Llama of `crate::testing`, and one model per family variant from
//! `testdata/families` (Qwen2 biases, Qwen3 q/k norms, Gemma 3's norms, GeGLU, scales,
//! sliding windows and per-layer RoPE, and a final softcap), whose logits transformers
//! computed.

use candle_core::{DType, Device, Tensor, Var};

use crate::llama::Llama;
use crate::lora::{load_peft_adapter, LoraConfig, LoraParams, PeftConfig};
use crate::ops::base_weights::{with_precision, Precision};
use crate::ops::Bf16Kernel;
use crate::testing::{max_abs, write_tiny_model, TinySpec};
use crate::train_forward::TrainOptions;
use crate::{load_model, ForwardOptions, WeightPath};

pub(crate) fn tiny() -> (tempfile::TempDir, Llama) {
    let dir = tempfile::tempdir().unwrap();
    let (gguf, _) = write_tiny_model(dir.path(), &TinySpec::default()).unwrap();
    let m = load_model(&gguf, WeightPath::F32).unwrap();
    (dir, m)
}

fn ids(rows: &[&[u32]]) -> Tensor {
    let t = rows[0].len();
    let flat: Vec<u32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_vec(flat, (rows.len(), t), &Device::Cpu).unwrap()
}

pub(crate) fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

pub(crate) fn all_linear() -> LoraConfig {
    LoraConfig {
        target_modules: LoraConfig::parse_target_modules("all-linear").unwrap(),
        ..LoraConfig::default()
    }
}

/// Gives every B a random value of standard deviation `scale`, so that adapters change
/// the output. Seeded: an unseeded draw once made a finite-difference check fail in one
/// run of many (a near-cancelling entry), and a test must not pass or fail by chance.
pub(crate) fn randomize_b(params: &LoraParams, scale: f64) {
    use rand::{rngs::StdRng, Rng, SeedableRng};
    let mut rng = StdRng::seed_from_u64(0x5eed);
    // Uniform on [-√3, √3]: unit variance.
    let bound = 3f32.sqrt();
    for m in &params.modules {
        let v: Vec<f32> = (0..m.b.elem_count())
            .map(|_| rng.random_range(-bound..bound) * scale as f32)
            .collect();
        m.b.set(&Tensor::from_vec(v, m.b.shape(), &Device::Cpu).unwrap())
            .unwrap();
    }
}

pub(crate) fn batch() -> (Tensor, Tensor, Tensor) {
    let input = ids(&[&[1, 40, 41, 42, 43, 2, 7], &[1, 50, 51, 52, 2, 0, 0]]);
    let targets = ids(&[&[40, 41, 42, 43, 2, 7, 9], &[50, 51, 52, 2, 0, 0, 0]]);
    let mask = Tensor::from_vec(
        vec![0f32, 1., 1., 1., 1., 0., 1., 1., 1., 1., 1., 0., 0., 0.],
        (2, 7),
        &Device::Cpu,
    )
    .unwrap();
    (input, targets, mask)
}

#[test]
fn train_forward_matches_inference_forward() {
    let (_d, mut m) = tiny();
    let params = LoraParams::attach(&mut m, &all_linear(), 3).unwrap();
    randomize_b(&params, 0.1);
    let (input, _, _) = batch();
    let inf = m
        .forward_with(&input, 0, None, ForwardOptions::default())
        .unwrap();
    let tr = m.forward_train(&input, TrainOptions::default()).unwrap();
    let d = max_diff(&inf, &tr);
    assert!(d < 1e-4, "train vs inference logits differ by {d}");
    let base = m
        .forward_with(
            &input,
            0,
            None,
            ForwardOptions {
                use_adapters: false,
            },
        )
        .unwrap();
    assert!(max_diff(&base, &inf) > 1e-3, "adapters had no effect");
}

#[test]
fn zero_b_leaves_the_model_unchanged_at_step_0() {
    let (_d, mut m) = tiny();
    let (input, _, _) = batch();
    let before = m.forward(&input, 0, None).unwrap();
    LoraParams::attach(&mut m, &all_linear(), 1).unwrap();
    let with_lora = m.forward_train(&input, TrainOptions::default()).unwrap();
    assert!(max_diff(&before, &with_lora) < 1e-4);
}

#[test]
fn a_init_is_seeded_and_within_the_kaiming_bound() {
    let (_d, mut m1) = tiny();
    let (_d2, mut m2) = tiny();
    let p1 = LoraParams::attach(&mut m1, &LoraConfig::default(), 5).unwrap();
    let p2 = LoraParams::attach(&mut m2, &LoraConfig::default(), 5).unwrap();
    assert_eq!(p1.modules.len(), 2 * m1.layers.len());
    let a1 = p1.modules[0].a.as_tensor();
    assert_eq!(max_diff(a1, p2.modules[0].a.as_tensor()), 0.0);
    let bound = 1.0 / (m1.cfg.hidden_size as f32).sqrt();
    let maxabs = max_abs(a1);
    assert!(
        maxabs <= bound && maxabs > bound * 0.5,
        "{maxabs} vs {bound}"
    );
    let b = p1.modules[0].b.as_tensor();
    assert_eq!(
        b.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap(),
        0.0
    );
}

fn loss_value(m: &Llama) -> f64 {
    let (input, targets, mask) = batch();
    let l = m
        .train_loss(&input, &targets, &mask, TrainOptions::default())
        .unwrap();
    l.loss.to_scalar::<f32>().unwrap() as f64
}

/// The autograd gradient of entry `idx` of `var` against central finite differences of
/// the training loss of [`batch`].
pub(crate) fn fd_check(var: &Var, idx: usize, m: &Llama) {
    fd_check_tol(var, idx, m, FdTolerance::F32, Precision::F32);
}

/// Step and tolerance `abs + rel·|g|` of a finite-difference check.
#[derive(Clone, Copy)]
struct FdTolerance {
    eps: f32,
    abs: f64,
    rel: f64,
    /// Scale `rel` by the largest gradient entry of the whole tensor rather than by
    /// the entry checked: low-precision products err relative to the terms summed,
    /// so a small entry that is a difference of large terms carries their error.
    per_tensor: bool,
}

impl FdTolerance {
    const F32: Self = Self {
        eps: 1e-2,
        abs: 2e-3,
        rel: 2e-2,
        per_tensor: false,
    };
    /// For a bf16 gradient against f32 finite differences: bf16 products round every
    /// activation to 8 significant bits (2^-9 relative), and the gradient passes
    /// through a dozen of them. (Finite differences of the bf16 loss itself are no
    /// reference: on the tiny model, rows of 64, the rounding barely averages out and
    /// the loss moves in steps as large as the differences.) A dozen roundings of
    /// 2^-9 add up to a few percent of the terms summed; with random LoRA `B`s
    /// (`randomize_b`, then unseeded) a small entry was seen 0.03 off while the
    /// tensor's largest was ~0.4, so the bound is 10% of the tensor's largest entry:
    /// a wrong gradient (a missing term, a transposed product) is off by far more.
    const BF16: Self = Self {
        eps: 1e-2,
        abs: 5e-3,
        rel: 1e-1,
        per_tensor: true,
    };
}

/// [`fd_check`] with the autograd gradient computed on `analytic` products (the finite
/// differences stay f32, the reference).
fn fd_check_tol(var: &Var, idx: usize, m: &Llama, tol: FdTolerance, analytic: Precision) {
    let (input, targets, mask) = batch();
    let grads = with_precision(analytic, || {
        let l = m
            .train_loss(&input, &targets, &mask, TrainOptions::default())
            .unwrap();
        l.loss.backward().unwrap()
    });
    let g = grads
        .get(var.as_tensor())
        .expect("gradient for the LoRA var");
    let all = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let analytic = all[idx] as f64;
    let tensor_max = all.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
    let orig = var
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let eps = tol.eps;
    let at = |delta: f32| {
        let mut v = orig.clone();
        v[idx] += delta;
        var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
            .unwrap();
        with_precision(Precision::F32, || loss_value(m))
    };
    let (up, down) = (at(eps), at(-eps));
    var.set(&Tensor::from_vec(orig, var.shape(), &Device::Cpu).unwrap())
        .unwrap();
    let numeric = (up - down) / (2.0 * eps as f64);
    let scale = if tol.per_tensor {
        tensor_max
    } else {
        numeric.abs().max(analytic.abs())
    };
    let tol = tol.abs + tol.rel * scale;
    assert!(
        (numeric - analytic).abs() < tol,
        "finite difference {numeric} vs autograd {analytic}"
    );
    assert!(analytic.abs() > 1e-6, "gradient is zero: nothing to check");
}

#[test]
fn gradient_of_lora_entries_matches_finite_differences() {
    let (_d, mut m) = tiny();
    let params = LoraParams::attach(&mut m, &all_linear(), 11).unwrap();
    randomize_b(&params, 0.3);
    // Layer 0 q_proj: the gradient flows back through every op of the model
    // (RoPE, causal softmax, RMSNorm, SwiGLU, the frozen head, cross-entropy).
    let q0 = &params.modules[0];
    assert!(q0.path.ends_with("layers.0.self_attn.q_proj"));
    fd_check(&q0.a, 3, &m);
    fd_check(&q0.b, 5, &m);
    // And an MLP module.
    let gate0 = params
        .modules
        .iter()
        .find(|mm| mm.path.ends_with("layers.0.mlp.gate_proj"))
        .unwrap();
    fd_check(&gate0.a, 7, &m);
}

#[test]
fn only_lora_vars_get_gradients() {
    let (_d, mut m) = tiny();
    let params = LoraParams::attach(&mut m, &LoraConfig::default(), 2).unwrap();
    let (input, targets, mask) = batch();
    let l = m
        .train_loss(&input, &targets, &mask, TrainOptions::default())
        .unwrap();
    let grads = l.loss.backward().unwrap();
    for (name, v) in params.trainable() {
        assert!(grads.get(v.as_tensor()).is_some(), "no grad for {name}");
    }
    if let crate::linear::BaseWeight::Dense(w) = m.layers[0].self_attn.q_proj.base() {
        assert!(grads.get(w).is_none());
    }
}

#[test]
fn dropout_is_seeded_and_changes_the_output() {
    let (_d, mut m) = tiny();
    let params = LoraParams::attach(&mut m, &all_linear(), 3).unwrap();
    randomize_b(&params, 0.1);
    let (input, _, _) = batch();
    let opts = |seed| TrainOptions {
        lora_dropout: 0.5,
        dropout_seed: seed,
        ..TrainOptions::default()
    };
    let a = m.forward_train(&input, opts(1)).unwrap();
    let b = m.forward_train(&input, opts(1)).unwrap();
    let c = m.forward_train(&input, opts(2)).unwrap();
    assert_eq!(max_diff(&a, &b), 0.0);
    assert!(max_diff(&a, &c) > 1e-5);
}

#[test]
fn peft_adapter_round_trips_onto_a_fresh_model() {
    let (d, mut m) = tiny();
    let params = LoraParams::attach(&mut m, &all_linear(), 4).unwrap();
    randomize_b(&params, 0.1);
    let out = d.path().join("adapter");
    params.save_peft(&out, "tiny").unwrap();
    let cfg: PeftConfig =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg.peft_type, "LORA");
    assert_eq!(cfg.task_type, "CAUSAL_LM");
    assert_eq!(cfg.r, 8);
    assert_eq!(cfg.bias, "none");
    let keys = candle_core::safetensors::load(out.join("adapter_model.safetensors"), &Device::Cpu)
        .unwrap();
    assert!(keys.contains_key("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"));
    assert!(keys.contains_key("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"));
    assert_eq!(keys.len(), 2 * 7 * m.layers.len());

    let (_d2, mut fresh) = tiny();
    load_peft_adapter(&mut fresh, &out).unwrap();
    let (input, _, _) = batch();
    let want = m.forward(&input, 0, None).unwrap();
    let got = fresh.forward(&input, 0, None).unwrap();
    assert!(max_diff(&want, &got) < 1e-5);
    let _ = DType::F32;
}

#[test]
fn unknown_target_module_lists_valid_ones() {
    let err = LoraConfig::parse_target_modules("q_proj,wq").unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("wq") && msg.contains("v_proj") && msg.contains("all-linear"));
    assert_eq!(
        LoraConfig::parse_target_modules("v_proj, q_proj").unwrap(),
        vec!["q_proj", "v_proj"]
    );
    assert_eq!(
        LoraConfig::parse_target_modules("all-linear")
            .unwrap()
            .len(),
        7
    );
}

#[test]
fn adapters_with_unsupported_variants_are_refused() {
    let (d, mut m) = tiny();
    let params = LoraParams::attach(&mut m, &LoraConfig::default(), 4).unwrap();
    let out = d.path().join("adapter");
    params.save_peft(&out, "tiny").unwrap();
    let path = out.join("adapter_config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    cfg["use_rslora"] = serde_json::Value::Bool(true);
    std::fs::write(&path, cfg.to_string()).unwrap();
    let err = load_peft_adapter(&mut m, &out).unwrap_err();
    assert!(err.to_string().contains("rsLoRA"), "{err}");
}

/// The fused decoder stack against the same pass composed from the single-layer ops:
/// final hidden states and every LoRA gradient, for the given adapters, dropout and
/// packing.
fn check_fused_against_unfused(targets: &str, dropout: f64, packed: bool) {
    let (_d, m) = tiny();
    check_fused_against_unfused_on(m, targets, dropout, packed);
}

/// Every tiny model of `testdata/families` (see its README for what each covers).
const FAMILIES: [&str; 6] = [
    "llama3_scaled",
    "llama_linear",
    "qwen2",
    "qwen3",
    "gemma3",
    "gemma3_softcap",
];

/// The families whose block has steps beyond Llama's and Qwen2's biases: Qwen3's q/k
/// norms; Gemma 3's post norms, GeGLU, embedding and attention scales, sliding windows
/// with their own RoPE, q/k norms; and a final logit softcap.
const NEW_FAMILIES: [&str; 3] = ["qwen3", "gemma3", "gemma3_softcap"];

fn family_dir(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/families")
        .join(name)
}

/// The tiny model `testdata/families/<name>`, f32.
fn tiny_family(name: &str) -> Llama {
    load_model(&family_dir(name), WeightPath::F32).unwrap()
}

/// The tiny Qwen2 of `testdata/families/qwen2`: q/k/v biases, which the fused
/// stack adds as frozen constants.
fn tiny_qwen2() -> Llama {
    tiny_family("qwen2")
}

fn check_fused_against_unfused_on(mut m: Llama, targets: &str, dropout: f64, packed: bool) {
    let cfg = LoraConfig {
        target_modules: LoraConfig::parse_target_modules(targets).unwrap(),
        ..LoraConfig::default()
    };
    let params = LoraParams::attach(&mut m, &cfg, 5).unwrap();
    randomize_b(&params, 0.2);
    let (input, _, _) = batch();
    let layout = packed.then(|| crate::train_forward::PackedLayout {
        positions: vec![0, 1, 2, 0, 1, 2, 3, 0, 1, 2, 3, 4, 0, 1],
        segment_starts: vec![0, 0, 0, 3, 3, 3, 3, 0, 0, 0, 0, 0, 5, 5],
    });
    let opts = TrainOptions {
        use_adapters: true,
        lora_dropout: dropout,
        dropout_seed: 99,
        ..TrainOptions::default()
    };
    // A fixed random projection of the hidden states as the loss, so that every
    // position and channel carries gradient.
    let shape = (2, 7, m.cfg.hidden_size);
    let probe = Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap();
    let run = |h: Tensor| {
        let loss = (h.clone() * &probe).unwrap().sum_all().unwrap();
        let g = loss.backward().unwrap();
        let grads: Vec<Tensor> = params
            .trainable()
            .iter()
            .map(|(name, v)| {
                g.get(v.as_tensor())
                    .unwrap_or_else(|| panic!("no gradient for {name}"))
                    .clone()
            })
            .collect();
        (h, grads)
    };
    let (hf, gf) = run(m
        .forward_train_hidden_packed(&input, layout.as_ref(), opts)
        .unwrap());
    let (hu, gu) = run(m
        .forward_train_hidden_unfused(&input, layout.as_ref(), opts)
        .unwrap());
    let d = max_diff(&hf, &hu);
    assert!(d < 1e-4, "fused vs unfused hidden states differ by {d}");
    for ((name, _), (a, b)) in params.trainable().iter().zip(gf.iter().zip(&gu)) {
        let scale = max_abs(b);
        let d = max_diff(a, b);
        assert!(
            d <= 1e-4 * scale.max(1.0),
            "{name}: gradients differ by {d} (max {scale})"
        );
    }
}

#[test]
fn fused_stack_matches_unfused_ops_all_linear() {
    check_fused_against_unfused("all-linear", 0.0, false);
}

#[test]
fn fused_stack_matches_unfused_ops_with_dropout_and_packing() {
    check_fused_against_unfused("all-linear", 0.3, true);
    check_fused_against_unfused("q_proj,v_proj", 0.1, false);
}

#[test]
fn fused_stack_matches_unfused_ops_with_qkv_bias() {
    assert!(tiny_qwen2().layers[0].self_attn.q_bias.is_some());
    check_fused_against_unfused_on(tiny_qwen2(), "all-linear", 0.0, false);
    check_fused_against_unfused_on(tiny_qwen2(), "q_proj,v_proj", 0.2, true);
}

/// Every family's q/k norms, post norms, GeGLU, scales, windows and per-layer RoPE in
/// the fused stack equal the same pass built from the single ops, hidden states and
/// every LoRA gradient, with and without dropout and packing.
#[test]
fn fused_stack_matches_unfused_ops_on_every_family() {
    for name in NEW_FAMILIES {
        check_fused_against_unfused_on(tiny_family(name), "all-linear", 0.0, false);
        check_fused_against_unfused_on(tiny_family(name), "all-linear", 0.2, true);
        check_fused_against_unfused_on(tiny_family(name), "k_proj,o_proj,down_proj", 0.0, true);
    }
}

/// Training's pass equals the inference pass (which matches transformers,
/// `tests/it/families.rs`) on every family, adapters on and off: logits through
/// [`Llama::forward_train`], the path DPO takes (final softcap included).
#[test]
fn train_forward_matches_inference_forward_on_every_family() {
    for name in FAMILIES {
        let mut m = tiny_family(name);
        let params = LoraParams::attach(&mut m, &all_linear(), 3).unwrap();
        randomize_b(&params, 0.1);
        let (input, _, _) = batch();
        for use_adapters in [true, false] {
            let inf = m
                .forward_with(&input, 0, None, ForwardOptions { use_adapters })
                .unwrap();
            let opts = TrainOptions {
                use_adapters,
                ..TrainOptions::default()
            };
            let tr = m.forward_train(&input, opts).unwrap();
            let d = max_diff(&inf, &tr);
            assert!(d < 1e-4, "{name}: train vs inference logits differ by {d}");
        }
    }
}

/// transformers' fixed ids and its logits `[positions][vocab]` of `testdata/families/<name>`.
fn transformers_logits(name: &str) -> (Vec<u32>, Vec<Vec<f64>>) {
    let path = family_dir(name).join("logits.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ids = v["input_ids"].as_array().unwrap();
    let ids = ids.iter().map(|x| x.as_u64().unwrap() as u32).collect();
    let rows = v["logits"].as_array().unwrap().iter();
    let logits = rows
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect();
    (ids, logits)
}

/// The training loss (fused stack, then the fused LM head and cross-entropy) of each
/// tiny model equals the masked mean cross-entropy of transformers' own logits for the
/// same tokens and mask, and so does the token accuracy.
#[test]
fn train_loss_matches_transformers_on_every_family() {
    for name in FAMILIES {
        let m = tiny_family(name);
        let (ids, logits) = transformers_logits(name);
        let n = ids.len() - 1;
        let mask: Vec<f32> = (0..n).map(|i| if i % 4 == 1 { 0.0 } else { 1.0 }).collect();
        let (mut want, mut hits, mut weight) = (0f64, 0u64, 0f64);
        for (i, row) in logits.iter().take(n).enumerate() {
            let t = ids[i + 1] as usize;
            let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = max + row.iter().map(|z| (z - max).exp()).sum::<f64>().ln();
            let m = mask[i] as f64;
            want += m * (lse - row[t]);
            weight += m;
            let best = row.iter().position(|&z| z == max).unwrap();
            hits += (m > 0.0 && best == t) as u64;
        }
        want /= weight;
        let dev = Device::Cpu;
        let input = Tensor::from_slice(&ids[..n], (1, n), &dev).unwrap();
        let targets = Tensor::from_slice(&ids[1..], (1, n), &dev).unwrap();
        let mask = Tensor::from_vec(mask, (1, n), &dev).unwrap();
        let out = m
            .train_loss(&input, &targets, &mask, TrainOptions::default())
            .unwrap();
        let got = out.loss.to_scalar::<f32>().unwrap() as f64;
        assert!(
            (got - want).abs() < 1e-4,
            "{name}: training loss {got} vs transformers' {want}"
        );
        assert_eq!(out.accuracy.correct, hits, "{name}: token accuracy");
        assert_eq!(out.accuracy.total, weight as u64, "{name}");
    }
}

/// Finite differences agree with the fused stack's LoRA gradients on the new families,
/// through every new step: q and k (q/k norms, sliding window and local RoPE on Gemma's
/// layer 0), o (post-attention norm), gate (GeGLU), down (post-feed-forward norm), and
/// Gemma's full-attention layer 2 with its own RoPE.
#[test]
fn gradient_of_lora_entries_matches_finite_differences_on_every_family() {
    for name in NEW_FAMILIES {
        let mut m = tiny_family(name);
        let params = LoraParams::attach(&mut m, &all_linear(), 11).unwrap();
        randomize_b(&params, 0.3);
        let last = m.layers.len() - 1;
        let modules = [
            "layers.0.self_attn.q_proj".to_string(),
            "layers.0.self_attn.k_proj".to_string(),
            "layers.0.self_attn.o_proj".to_string(),
            "layers.0.mlp.gate_proj".to_string(),
            "layers.0.mlp.down_proj".to_string(),
            format!("layers.{last}.self_attn.q_proj"),
        ];
        for suffix in &modules {
            let module = params
                .modules
                .iter()
                .find(|mm| mm.path.ends_with(suffix.as_str()))
                .unwrap();
            fd_check(&module.a, 3, &m);
            fd_check(&module.b, 5, &m);
        }
        if name == "gemma3" {
            // Layer 2 is Gemma's one full-attention layer (linear-scaled global RoPE).
            let full = params
                .modules
                .iter()
                .find(|mm| mm.path.ends_with("layers.2.self_attn.v_proj"));
            fd_check(&full.unwrap().a, 2, &m);
        }
    }
}

#[test]
fn fused_stack_without_adapters_is_the_base_model() {
    let (_d, m) = tiny();
    let (input, _, _) = batch();
    let opts = TrainOptions::default();
    let hf = m.forward_train_hidden_packed(&input, None, opts).unwrap();
    let hu = m.forward_train_hidden_unfused(&input, None, opts).unwrap();
    let d = max_diff(&hf, &hu);
    assert!(d < 1e-5, "fused vs unfused differ by {d}");
}

/// The bf16 kernels this CPU runs, each forced in turn (the portable one everywhere).
fn bf16_paths() -> Vec<Precision> {
    [
        Bf16Kernel::Amx,
        Bf16Kernel::Avx512Bf16,
        Bf16Kernel::Portable,
    ]
    .into_iter()
    .filter(|k| k.available())
    .map(Precision::Bf16)
    .collect()
}

/// Every bf16 path gives the f32 path's logits and loss up to bf16 rounding (and
/// differs from it: the products really ran in bf16), and the fused stack still
/// matches the unfused ops, which use the same bf16 products.
#[test]
fn bf16_products_track_the_f32_forward_and_loss() {
    let (_d, mut m) = tiny();
    let params = LoraParams::attach(&mut m, &all_linear(), 5).unwrap();
    randomize_b(&params, 0.3);
    let (input, targets, mask) = batch();
    let opts = TrainOptions::default();
    let run = |p: Precision| {
        with_precision(p, || {
            let logits = m.forward_train(&input, opts).unwrap();
            let loss = m.train_loss(&input, &targets, &mask, opts).unwrap().loss;
            let fused = m.forward_train_hidden_packed(&input, None, opts).unwrap();
            let unfused = m.forward_train_hidden_unfused(&input, None, opts).unwrap();
            let loss = loss.to_scalar::<f32>().unwrap();
            (logits, loss, max_diff(&fused, &unfused) / max_abs(&unfused))
        })
    };
    let (want, want_loss, _) = run(Precision::F32);
    for p in bf16_paths() {
        let (got, loss, fused_vs_unfused) = run(p);
        let d = max_diff(&got, &want);
        assert!(d > 0.0, "{p:?}: identical to f32, so bf16 never ran");
        assert!(d < 2e-2 * max_abs(&want), "{p:?}: logits differ by {d}");
        assert!(
            (loss - want_loss).abs() < 5e-3 * want_loss,
            "{p:?}: loss {loss} vs {want_loss}"
        );
        // Relative: a last-bit difference upstream can flip one activation's rounding.
        assert!(
            fused_vs_unfused < 5e-3,
            "{p:?}: fused vs unfused {fused_vs_unfused}"
        );
    }
}

/// The LoRA gradients of the bf16 paths against finite differences of the f32 loss.
#[test]
fn gradient_of_lora_entries_matches_finite_differences_in_bf16() {
    let (_d, mut m) = tiny();
    let params = LoraParams::attach(&mut m, &all_linear(), 11).unwrap();
    randomize_b(&params, 0.3);
    let find = |suffix: &str| {
        params
            .modules
            .iter()
            .find(|mm| mm.path.ends_with(suffix))
            .unwrap()
    };
    for p in bf16_paths() {
        let q0 = find("layers.0.self_attn.q_proj");
        fd_check_tol(&q0.a, 3, &m, FdTolerance::BF16, p);
        fd_check_tol(&q0.b, 5, &m, FdTolerance::BF16, p);
        fd_check_tol(
            &find("layers.0.mlp.gate_proj").a,
            7,
            &m,
            FdTolerance::BF16,
            p,
        );
        fd_check_tol(
            &find("layers.1.mlp.down_proj").b,
            2,
            &m,
            FdTolerance::BF16,
            p,
        );
    }
}

/// A short SFT run (plain gradient descent on the LoRA matrices, 12 steps) in bf16
/// tracks the f32 run's loss curve: every step's loss within 1% of f32's (stated in
/// docs/train.md), while the curve falls.
#[test]
fn short_sft_run_in_bf16_tracks_the_f32_loss_curve() {
    let curve = |p: Precision| -> Vec<f32> {
        let (_d, mut m) = tiny();
        let params = LoraParams::attach(&mut m, &all_linear(), 7).unwrap();
        let (input, targets, mask) = batch();
        with_precision(p, || {
            (0..12)
                .map(|_| {
                    let out = m
                        .train_loss(&input, &targets, &mask, TrainOptions::default())
                        .unwrap();
                    let grads = out.loss.backward().unwrap();
                    for (_, v) in params.trainable() {
                        let g = grads.get(v.as_tensor()).unwrap();
                        v.set(&(v.as_tensor() - (g * 0.02).unwrap()).unwrap())
                            .unwrap();
                    }
                    out.loss.to_scalar::<f32>().unwrap()
                })
                .collect()
        })
    };
    let want = curve(Precision::F32);
    assert!(
        want[11] < want[0] - 1e-2,
        "the f32 run must learn: {want:?}"
    );
    for p in bf16_paths() {
        let got = curve(p);
        for (step, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-2 * w,
                "{p:?} step {step}: loss {g} vs f32 {w}\n{got:?}\n{want:?}"
            );
        }
    }
}

/// Hidden states and every LoRA gradient of `m` with and without gradient
/// checkpointing, as flat vectors.
fn checkpointing_pair(mut m: Llama, dropout: f64, packed: bool) -> [(Vec<f32>, Vec<Vec<f32>>); 2] {
    let params = LoraParams::attach(&mut m, &all_linear(), 5).unwrap();
    randomize_b(&params, 0.2);
    let (input, _, _) = batch();
    let layout = packed.then(|| crate::train_forward::PackedLayout {
        positions: vec![0, 1, 2, 0, 1, 2, 3, 0, 1, 2, 3, 4, 0, 1],
        segment_starts: vec![0, 0, 0, 3, 3, 3, 3, 0, 0, 0, 0, 0, 5, 5],
    });
    let probe = Tensor::randn(0f32, 1.0, (2, 7, m.cfg.hidden_size), &Device::Cpu).unwrap();
    [false, true].map(|gradient_checkpointing| {
        let opts = TrainOptions {
            lora_dropout: dropout,
            dropout_seed: 17,
            gradient_checkpointing,
            ..TrainOptions::default()
        };
        let h = m
            .forward_train_hidden_packed(&input, layout.as_ref(), opts)
            .unwrap();
        let g = (h.clone() * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let grads = params
            .trainable()
            .iter()
            .map(|(name, v)| flat(g.get(v.as_tensor()).unwrap_or_else(|| panic!("{name}"))))
            .collect();
        (flat(&h), grads)
    })
}

/// Gradient checkpointing recomputes each layer in the backward from its saved input:
/// same kernels, same input, dropout masks from the same seeds, so the hidden states
/// and every gradient equal the kept-activations run bit for bit, on every family,
/// with dropout and packed rows.
#[test]
fn gradient_checkpointing_gives_the_same_gradients_bit_for_bit() {
    let (_d, m) = tiny();
    let mut models = vec![("llama", m)];
    models.extend(NEW_FAMILIES.iter().map(|n| (*n, tiny_family(n))));
    for (name, m) in models {
        for (dropout, packed) in [(0.0, false), (0.3, true)] {
            let [(h0, g0), (h1, g1)] = checkpointing_pair(m.clone(), dropout, packed);
            assert_eq!(h0, h1, "{name}: hidden states");
            assert!(
                g0.iter().any(|g| g.iter().any(|x| *x != 0.0)),
                "{name}: no gradient"
            );
            assert_eq!(
                g0, g1,
                "{name}: gradients (dropout {dropout}, packed {packed})"
            );
        }
    }
}
