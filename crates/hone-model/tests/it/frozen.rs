//! Frozen base weights cost nothing in the backward pass (issue: "No gradient is computed
//! or held for them"). The whole training path of a small model is run twice on the same
//! weights: ours (`Llama::train_loss`, base weights through `ops::frozen_linear`) and stock
//! candle's (the same ops, but every base weight a `Var` through a plain matmul, which
//! is what candle's autograd does with any weight). Checked without wall time:
//! - our gradient store holds exactly the LoRA matrices, and no base weight;
//! - both paths give the same LoRA gradients (so they compute the same thing);
//! - bytes held by the gradient store, bytes allocated during backward, and the peak of
//!   live bytes during backward, counted by the test binary's allocator, are all far
//!   below stock's.
//!
//! The wall-time comparison is `bench_frozen_backward_ours_vs_stock` (ignored).

use std::collections::{HashMap, HashSet};

use candle_core::{DType, Device, Tensor, Var};
use hone_model::forward::repeat_kv;
use hone_model::linear::{BaseWeight, Linear};
use hone_model::testing::{max_abs, write_tiny_model, TinySpec};
use hone_model::{load_model, ops, Llama, LoraConfig, LoraParams, TrainOptions, WeightPath};

use crate::alloc_count;

/// Weights dominate activations here, as in real LoRA fine-tuning of a model whose
/// weights are far larger than one micro-batch of activations per layer.
fn spec() -> TinySpec {
    TinySpec {
        hidden: 256,
        intermediate: 512,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        context: 64,
        seed: 3,
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    model: Llama,
    lora: LoraParams,
    input: Tensor,
    targets: Tensor,
    mask: Tensor,
}

fn setup(targets: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec();
    let (gguf, _) = write_tiny_model(dir.path(), &spec).unwrap();
    let mut model = load_model(&gguf, WeightPath::F32).unwrap();
    let cfg = LoraConfig {
        target_modules: LoraConfig::parse_target_modules(targets).unwrap(),
        ..LoraConfig::default()
    };
    let lora = LoraParams::attach(&mut model, &cfg, 1).unwrap();
    for m in &lora.modules {
        let b = Tensor::randn(0f32, 0.05, m.b.shape(), &Device::Cpu).unwrap();
        m.b.set(&b).unwrap();
    }
    let (b, t) = (2, 16);
    let v = spec.vocab_size() as u32;
    let ids: Vec<u32> = (0..(b * (t + 1)) as u32)
        .map(|i| (i * 31 + 7) % v)
        .collect();
    let mut input = Vec::new();
    let mut tgt = Vec::new();
    for r in 0..b {
        let row = &ids[r * (t + 1)..(r + 1) * (t + 1)];
        input.extend_from_slice(&row[..t]);
        tgt.extend_from_slice(&row[1..]);
    }
    let dev = Device::Cpu;
    Setup {
        _dir: dir,
        model,
        lora,
        input: Tensor::from_vec(input, (b, t), &dev).unwrap(),
        targets: Tensor::from_vec(tgt, (b, t), &dev).unwrap(),
        mask: Tensor::ones((b, t), DType::F32, &dev).unwrap(),
    }
}

/// Every base weight of the model as a `Var`, keyed by its linear's position.
fn base_vars(m: &Llama) -> Vec<[Var; 7]> {
    let var = |l: &Linear| match l.base() {
        BaseWeight::Dense(w) => Var::from_tensor(w).unwrap(),
        BaseWeight::Packed(_) => panic!("dense weights expected"),
    };
    m.layers
        .iter()
        .map(|b| {
            let (a, p) = (&b.self_attn, &b.mlp);
            [
                var(&a.q_proj),
                var(&a.k_proj),
                var(&a.v_proj),
                var(&a.o_proj),
                var(&p.gate_proj),
                var(&p.up_proj),
                var(&p.down_proj),
            ]
        })
        .collect()
}

/// Ids of every frozen tensor of the model: embedding, norms, base linear weights.
fn frozen_ids(m: &Llama) -> HashSet<candle_core::TensorId> {
    let mut out = HashSet::new();
    if let hone_model::llama::Embedding::Dense(e) = &m.embed_tokens {
        out.insert(e.id());
    }
    out.insert(m.norm.id());
    for blk in &m.layers {
        out.insert(blk.input_layernorm.id());
        out.insert(blk.post_attention_layernorm.id());
    }
    for v in base_vars_ids(m) {
        out.insert(v);
    }
    out
}

fn base_vars_ids(m: &Llama) -> Vec<candle_core::TensorId> {
    m.layers
        .iter()
        .flat_map(|b| {
            let (a, p) = (&b.self_attn, &b.mlp);
            [
                &a.q_proj,
                &a.k_proj,
                &a.v_proj,
                &a.o_proj,
                &p.gate_proj,
                &p.up_proj,
                &p.down_proj,
            ]
        })
        .filter_map(|l| match l.base() {
            BaseWeight::Dense(w) => Some(w.id()),
            BaseWeight::Packed(_) => None,
        })
        .collect()
}

/// Stock candle's linear: `x·Wᵀ` through autograd's matmul (which computes dW), plus
/// the same LoRA delta as ours.
fn stock_linear(lin: &Linear, w: &Var, x: &Tensor) -> Tensor {
    let (b, t, i) = x.dims3().unwrap();
    let x2 = x.reshape((b * t, i)).unwrap();
    let mut y = x2.matmul(&w.as_tensor().t().unwrap()).unwrap();
    if let Some(ad) = lin.adapter() {
        let d = x2
            .matmul(&ad.a.t().unwrap())
            .unwrap()
            .matmul(&ad.b.t().unwrap())
            .unwrap();
        y = (y + (d * ad.scale).unwrap()).unwrap();
    }
    let o = y.dim(1).unwrap();
    y.reshape((b, t, o)).unwrap()
}

/// The training forward pass with stock linears (everything else as ours), to the loss.
fn stock_loss(m: &Llama, vars: &[[Var; 7]], s: &Setup) -> Tensor {
    let cfg = &m.cfg;
    let (b, t) = s.input.dims2().unwrap();
    let hd = cfg.head_dim;
    let cos = m.rope.cos.narrow(0, 0, t).unwrap();
    let sin = m.rope.sin.narrow(0, 0, t).unwrap();
    let hone_model::llama::Embedding::Dense(emb) = &m.embed_tokens else {
        panic!("dense embedding expected")
    };
    let mut x = emb
        .index_select(&s.input.flatten_all().unwrap(), 0)
        .unwrap()
        .reshape((b, t, cfg.hidden_size))
        .unwrap();
    let heads = |y: Tensor, n: usize| {
        y.reshape((b, t, n, hd))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
    };
    for (blk, w) in m.layers.iter().zip(vars) {
        let a = &blk.self_attn;
        let h = ops::rms_norm(&x, &blk.input_layernorm, cfg.rms_norm_eps).unwrap();
        let q = heads(stock_linear(&a.q_proj, &w[0], &h), cfg.num_attention_heads);
        let k = heads(stock_linear(&a.k_proj, &w[1], &h), cfg.num_key_value_heads);
        let v = heads(stock_linear(&a.v_proj, &w[2], &h), cfg.num_key_value_heads);
        let q = ops::rope(&q, &cos, &sin).unwrap();
        let k = ops::rope(&k, &cos, &sin).unwrap();
        let k = repeat_kv(k, cfg.n_rep()).unwrap().contiguous().unwrap();
        let v = repeat_kv(v, cfg.n_rep()).unwrap().contiguous().unwrap();
        let p = ops::causal_softmax(
            &q.matmul(&k.t().unwrap()).unwrap(),
            1.0 / (hd as f64).sqrt(),
        )
        .unwrap();
        let y = p
            .matmul(&v)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((b, t, cfg.num_attention_heads * hd))
            .unwrap();
        x = (x + stock_linear(&a.o_proj, &w[3], &y)).unwrap();
        let h = ops::rms_norm(&x, &blk.post_attention_layernorm, cfg.rms_norm_eps).unwrap();
        let mlp = &blk.mlp;
        let g = stock_linear(&mlp.gate_proj, &w[4], &h);
        let u = stock_linear(&mlp.up_proj, &w[5], &h);
        let act = ops::silu_mul(&g, &u).unwrap();
        x = (x + stock_linear(&mlp.down_proj, &w[6], &act)).unwrap();
    }
    let h = ops::rms_norm(&x, &m.norm, cfg.rms_norm_eps).unwrap();
    let logits = h
        .reshape((b * t, cfg.hidden_size))
        .unwrap()
        .matmul(&emb.t().unwrap())
        .unwrap()
        .reshape((b, t, cfg.vocab_size))
        .unwrap();
    ops::masked_cross_entropy(&logits, &s.targets, &s.mask).unwrap()
}

fn ours_loss(s: &Setup) -> Tensor {
    s.model
        .train_loss(&s.input, &s.targets, &s.mask, TrainOptions::default())
        .unwrap()
        .loss
}

/// What one backward pass cost on this thread.
struct Cost {
    grads: candle_core::backprop::GradStore,
    /// Bytes of every tensor the gradient store holds.
    held_bytes: usize,
    /// Bytes allocated during backward (the work of computing gradients).
    allocated: u64,
    /// Peak of live bytes during backward, above the level before it.
    peak: i64,
}

fn backward_cost(loss: &Tensor) -> Cost {
    let scope = alloc_count::Scope::start();
    let grads = loss.backward().unwrap();
    let (allocated, peak) = scope.finish();
    let held_bytes = grads
        .get_ids()
        .map(|id| grads.get_id(*id).map(|t| t.elem_count() * 4).unwrap_or(0))
        .sum();
    Cost {
        grads,
        held_bytes,
        allocated,
        peak,
    }
}

fn frozen_weights_cost_nothing(targets: &str) {
    let s = setup(targets);
    let lora_ids: HashSet<_> = s
        .lora
        .trainable()
        .iter()
        .map(|(_, v)| v.as_tensor().id())
        .collect();
    let lora_bytes = s.lora.num_params() * 4;

    // Ours: the store holds every LoRA matrix, no base weight, and at most a few
    // activation-sized entries (see `first_layer_activation_grads`).
    let ours = backward_cost(&ours_loss(&s));
    let held: HashSet<_> = ours.grads.get_ids().copied().collect();
    assert!(
        held.is_superset(&lora_ids),
        "{targets}: a LoRA gradient is missing"
    );
    let frozen = frozen_ids(&s.model);
    assert!(
        held.is_disjoint(&frozen),
        "{targets}: a frozen base tensor got a gradient"
    );
    let (b, t) = s.input.dims2().unwrap();
    let activation = b * t * s.model.cfg.hidden_size;
    let extra: Vec<usize> = held
        .difference(&lora_ids)
        .map(|id| ours.grads.get_id(*id).unwrap().elem_count())
        .collect();
    assert!(
        extra.len() <= 8,
        "{targets}: {} extra gradients",
        extra.len()
    );
    assert!(
        extra.iter().all(|&n| n <= activation),
        "{targets}: a weight-sized extra gradient: {extra:?}"
    );
    let extra_bytes: usize = extra.iter().map(|n| n * 4).sum();
    assert_eq!(ours.held_bytes, lora_bytes + extra_bytes);

    // Stock: same model, base weights as Vars through autograd's matmul.
    let vars = base_vars(&s.model);
    let stock = backward_cost(&stock_loss(&s.model, &vars, &s));
    let base_bytes: usize = vars.iter().flatten().map(|v| v.elem_count() * 4).sum();
    for v in vars.iter().flatten() {
        assert!(stock.grads.get(v).is_some(), "stock computes every dW");
    }
    assert!(stock.held_bytes >= base_bytes + lora_bytes);
    // Same computation: the LoRA gradients agree.
    for (name, v) in s.lora.trainable() {
        let (a, b) = (ours.grads.get(&v).unwrap(), stock.grads.get(&v).unwrap());
        let d = max_abs(&(a - b).unwrap());
        assert!(
            d <= 1e-4 * max_abs(b).max(1.0),
            "{name}: LoRA grads differ by {d}"
        );
    }
    // Memory and work: well under stock's, which must at least allocate every dW.
    eprintln!(
        "{targets}: held {} vs {} bytes, allocated {} vs {}, peak {} vs {}",
        ours.held_bytes, stock.held_bytes, ours.allocated, stock.allocated, ours.peak, stock.peak
    );
    assert!(stock.allocated >= base_bytes as u64, "the counter sees dW");
    assert!(
        (ours.allocated as f64) < 0.5 * stock.allocated as f64,
        "{targets}: backward allocated {} bytes, stock {}",
        ours.allocated,
        stock.allocated
    );
    assert!(
        (ours.peak as f64) < 0.5 * stock.peak as f64,
        "{targets}: backward peak {} bytes, stock {}",
        ours.peak,
        stock.peak
    );
}

#[test]
fn frozen_base_weights_get_no_gradient_and_cost_no_memory_q_v() {
    frozen_weights_cost_nothing("q_proj,v_proj");
}

#[test]
fn frozen_base_weights_get_no_gradient_and_cost_no_memory_all_linear() {
    frozen_weights_cost_nothing("all-linear");
}

/// Even a base weight that is itself a `Var` gets no gradient through `frozen_linear`:
/// freezing does not depend on how the caller stored the weight.
#[test]
fn frozen_linear_ignores_var_weights() {
    let w = Var::from_tensor(&Tensor::randn(0f32, 1., (8, 6), &Device::Cpu).unwrap()).unwrap();
    let x = Var::from_tensor(&Tensor::randn(0f32, 1., (3, 6), &Device::Cpu).unwrap()).unwrap();
    let g = ops::frozen_linear(&x, &w)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert!(g.get(&w).is_none());
    assert!(g.get(&x).is_some());
    let ids: HashMap<_, _> = g.get_ids().map(|id| (*id, ())).collect();
    assert_eq!(ids.len(), 1);
}

/// Wall time of one backward pass, ours against stock, on SmolLM2-135M-like layer sizes.
/// Run: `cargo test --release -p hone-model --test it bench_frozen -- --ignored --nocapture`.
#[test]
#[ignore = "benchmark; run with --ignored --nocapture"]
fn bench_frozen_backward_ours_vs_stock() {
    let dir = tempfile::tempdir().unwrap();
    let spec = TinySpec {
        hidden: 576,
        intermediate: 1536,
        layers: 4,
        heads: 9,
        kv_heads: 3,
        context: 256,
        seed: 1,
    };
    let (gguf, _) = write_tiny_model(dir.path(), &spec).unwrap();
    let mut model = load_model(&gguf, WeightPath::F32).unwrap();
    let cfg = LoraConfig {
        target_modules: LoraConfig::parse_target_modules("q_proj,v_proj").unwrap(),
        ..LoraConfig::default()
    };
    let lora = LoraParams::attach(&mut model, &cfg, 1).unwrap();
    let (b, t) = (4, 256);
    let v = spec.vocab_size() as u32;
    let ids: Vec<u32> = (0..(b * t) as u32).map(|i| (i * 31 + 7) % v).collect();
    let dev = Device::Cpu;
    let s = Setup {
        _dir: dir,
        model,
        lora,
        input: Tensor::from_vec(ids.clone(), (b, t), &dev).unwrap(),
        targets: Tensor::from_vec(ids, (b, t), &dev).unwrap(),
        mask: Tensor::ones((b, t), DType::F32, &dev).unwrap(),
    };
    let vars = base_vars(&s.model);
    let time = |f: &dyn Fn() -> Tensor| {
        let mut best = f64::MAX;
        for _ in 0..3 {
            let loss = f();
            let t0 = std::time::Instant::now();
            let _ = loss.backward().unwrap();
            best = best.min(t0.elapsed().as_secs_f64());
        }
        best
    };
    let stock = time(&|| stock_loss(&s.model, &vars, &s));
    let ours = time(&|| ours_loss(&s));
    println!(
        "backward (4 layers 576/1536, 4x256, LoRA q,v): stock {:.0} ms, ours {:.0} ms, {:.2}x",
        stock * 1e3,
        ours * 1e3,
        stock / ours
    );
}
