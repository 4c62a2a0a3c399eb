//! Micro-benchmark (ignored by default): an MLP-block stack at SmolLM2-135M sizes, forward
//! and backward, with these ops against stock differentiable candle ops.
//! Run: `cargo test --release -p hone-model --lib ops::bench -- --ignored --nocapture`.

use super::testutil::{assert_close, randn};
use super::{causal_softmax, frozen_linear, masked_cross_entropy, rms_norm, silu_mul};
use candle_core::{DType, Device, Result, Tensor, Var, D};
use std::time::Instant;

const HIDDEN: usize = 576;
const INTERMEDIATE: usize = 1536;
const TOKENS: usize = 4 * 256;
const LAYERS: usize = 4;

struct Layer {
    norm: Tensor,
    gate: Tensor,
    up: Tensor,
    down: Tensor,
}

fn layers() -> Vec<Layer> {
    (0..LAYERS as u64)
        .map(|i| Layer {
            norm: (randn(&[HIDDEN], 10 * i) * 0.1)
                .and_then(|t| t + 1.0)
                .unwrap(),
            gate: (randn(&[INTERMEDIATE, HIDDEN], 10 * i + 1) * 0.04).unwrap(),
            up: (randn(&[INTERMEDIATE, HIDDEN], 10 * i + 2) * 0.04).unwrap(),
            down: (randn(&[HIDDEN, INTERMEDIATE], 10 * i + 3) * 0.025).unwrap(),
        })
        .collect()
}

fn ours(x: &Tensor, layers: &[Layer]) -> Result<Tensor> {
    layers.iter().try_fold(x.clone(), |x, l| {
        let h = rms_norm(&x, &l.norm, 1e-5)?;
        let a = silu_mul(&frozen_linear(&h, &l.gate)?, &frozen_linear(&h, &l.up)?)?;
        x + frozen_linear(&a, &l.down)?
    })
}

fn stock(x: &Tensor, layers: &[Layer]) -> Result<Tensor> {
    layers.iter().try_fold(x.clone(), |x, l| {
        let h = candle_nn::ops::rms_norm_slow(&x, &l.norm, 1e-5)?;
        let a = (h.matmul(&l.gate.t()?)?.silu()? * h.matmul(&l.up.t()?)?)?;
        x + a.matmul(&l.down.t()?)?
    })
}

/// Median seconds of `iters` runs of forward + backward of `sum(f(x) · r)`.
fn time(
    f: impl Fn(&Tensor) -> Result<Tensor>,
    x: &Var,
    r: &Tensor,
    iters: usize,
) -> Result<(f64, Tensor)> {
    let mut times = Vec::new();
    let mut grad = None;
    for _ in 0..iters {
        let start = Instant::now();
        let grads = (f(x)? * r)?.sum_all()?.backward()?;
        times.push(start.elapsed().as_secs_f64());
        grad = grads.get(x).cloned();
    }
    times.sort_by(f64::total_cmp);
    Ok((times[times.len() / 2], grad.expect("gradient for x")))
}

#[test]
#[ignore = "benchmark; run with --ignored --nocapture"]
fn bench_mlp_stack_ours_vs_stock() -> Result<()> {
    let layers = layers();
    let x = Var::from_tensor(&randn(&[TOKENS, HIDDEN], 99))?;
    let r = randn(&[TOKENS, HIDDEN], 98);
    let (t_stock, g_stock) = time(|x| stock(x, &layers), &x, &r, 5)?;
    let (t_ours, g_ours) = time(|x| ours(x, &layers), &x, &r, 5)?;
    assert_close(&g_ours, &g_stock, 1e-4, "dx");
    let flops = (LAYERS * TOKENS * 3 * HIDDEN * INTERMEDIATE * 2) as f64;
    println!(
        "MLP stack ({LAYERS} layers, {TOKENS} tokens, {HIDDEN}→{INTERMEDIATE}), fwd+bwd median: \
         stock {:.1} ms, ours {:.1} ms, speed-up {:.2}× (ours: {:.0} GFLOP/s of fwd+dx matmuls)",
        t_stock * 1e3,
        t_ours * 1e3,
        t_stock / t_ours,
        2.0 * flops / t_ours / 1e9
    );
    Ok(())
}

#[test]
#[ignore = "benchmark; run with --ignored --nocapture"]
fn bench_attention_softmax_and_cross_entropy() -> Result<()> {
    let scores = Var::from_tensor(&randn(&[4, 9, 256, 256], 1))?;
    let r = randn(&[4, 9, 256, 256], 2);
    let mask: Vec<f32> = (0..256 * 256)
        .map(|k| if k % 256 <= k / 256 { 0.0 } else { -1e9 })
        .collect();
    let mask = Tensor::from_vec(mask, (256, 256), &Device::Cpu)?;
    let stock_sm =
        |s: &Tensor| candle_nn::ops::softmax(&(s * 0.125)?.broadcast_add(&mask)?, D::Minus1);
    let (t_stock, _) = time(stock_sm, &scores, &r, 5)?;
    let (t_ours, _) = time(|s| causal_softmax(s, 0.125), &scores, &r, 5)?;
    println!(
        "causal softmax (4×9×256×256) fwd+bwd: stock {:.1} ms, ours {:.1} ms, {:.2}×",
        t_stock * 1e3,
        t_ours * 1e3,
        t_stock / t_ours
    );

    let vocab = 49152;
    let logits = Var::from_tensor(&randn(&[TOKENS, vocab], 3))?;
    let targets = Tensor::from_vec(
        (0..TOKENS as u32)
            .map(|i| (i * 7919) % vocab as u32)
            .collect(),
        TOKENS,
        &Device::Cpu,
    )?;
    let m = Tensor::ones(TOKENS, DType::F32, &Device::Cpu)?;
    let one = Tensor::new(1f32, &Device::Cpu)?;
    let stock_ce = |l: &Tensor| -> Result<Tensor> {
        let logp = candle_nn::ops::log_softmax(l, D::Minus1)?;
        let picked = logp.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?;
        (picked.neg()? * &m)?.sum_all()? / TOKENS as f64
    };
    let (t_stock, g_stock) = time(stock_ce, &logits, &one, 3)?;
    let (t_ours, g_ours) = time(|l| masked_cross_entropy(l, &targets, &m), &logits, &one, 3)?;
    assert_close(&g_ours, &g_stock, 1e-5, "dlogits");
    println!(
        "cross-entropy ({TOKENS}×{vocab}) fwd+bwd: stock {:.1} ms, ours {:.1} ms, {:.2}×",
        t_stock * 1e3,
        t_ours * 1e3,
        t_stock / t_ours
    );
    Ok(())
}

/// bf16 products (`ops::bf16`) against the f32 gemm on training shapes (4×256 tokens;
/// SmolLM2-135M and Qwen2.5-0.5B projections), GFLOP/s of each, best of 5.
/// Run: `cargo test --release -p hone-model --lib ops::bench::bf16 -- --ignored --nocapture`.
#[test]
#[ignore]
fn bf16_products_against_f32_gemm() {
    use super::bf16::{matmul_nt, Bf16Kernel, Bf16Matrix};
    use super::kernel::{matmul, Tr};
    let best = |f: &mut dyn FnMut()| {
        (0..5)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min)
    };
    for (m, n, k) in [
        (1024, 1536, 576),
        (1024, 576, 1536),
        (1024, 896, 896),
        (1024, 4864, 896),
        (1024, 896, 4864),
    ] {
        let x = randn(&[m, k], 1)
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let w = randn(&[n, k], 2)
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let mut c = vec![0f32; m * n];
        let flop = 2.0 * (m * n * k) as f64 / 1e9;
        let t32 = best(&mut || {
            matmul(
                &mut c,
                (m, n, k),
                (&x, Tr::N),
                (&w, Tr::T),
                false,
                1.0,
                true,
            )
        });
        let wb = Bf16Matrix::from_f32(&w, n, k);
        let kernel = Bf16Kernel::Avx512Bf16;
        let t16 = best(&mut || {
            let xb = Bf16Matrix::from_f32(&x, m, k);
            matmul_nt(&mut c, &xb, &wb, false, kernel, true)
        });
        let kernel = Bf16Kernel::Avx512Bf16;
        println!(
            "{m}x{n}x{k}: f32 gemm {:.1} GFLOP/s, bf16 {} {:.1} GFLOP/s ({:.2}x)",
            flop / t32,
            kernel.name(),
            flop / t16,
            t32 / t16
        );
        if super::amx::available() {
            let packed = super::amx::VnniMatrix::pack(&wb);
            let ta = best(&mut || {
                let xb = Bf16Matrix::from_f32(&x, m, k);
                super::amx::matmul_nt(&mut c, &xb, &packed, false, true)
            });
            println!("  amx_bf16 {:.1} GFLOP/s ({:.2}x f32)", flop / ta, t32 / ta);
        }
    }
}

/// A frozen bf16 weight's forward (`x·Wᵀ`, the dot kernel over `W` as stored) and
/// backward (`dy·W`: on AVX512_BF16 the pair kernel, `ops::bf16_pairs`) on this CPU's
/// best kernel, at SmolLM2-135M's and Qwen2.5-0.5B's step shapes (4×256 tokens; Qwen's
/// LM head 256 rows at a time), GFLOP/s of each, best of 4 alternating.
/// Run: `cargo test --release -p hone-model --lib ops::bench::bf16_forward -- --ignored --nocapture`.
#[test]
#[ignore]
fn bf16_forward_and_backward_products() {
    use super::bf16::{to_bf16, Bf16Kernel, Bf16Matrix};
    use super::bf16_product::{backward, forward, Bf16Rows};
    let kernel = Bf16Kernel::detect();
    for (rows, n_in, n_out) in [
        (1024, 576, 576),
        (1024, 576, 1536),
        (1024, 1536, 576),
        (1024, 896, 896),
        (1024, 896, 128),
        (1024, 896, 4864),
        (1024, 4864, 896),
        (256, 896, 151936),
    ] {
        let vec = |len: usize, seed| randn(&[len], seed).to_vec1::<f32>().expect("a vector");
        let bits: Vec<u16> = vec(n_out * n_in, 1).iter().map(|&v| to_bf16(v)).collect();
        let w = Bf16Rows {
            bits: &bits,
            n_out,
            n_in,
        };
        let x = Bf16Matrix::from_f32(&vec(rows * n_in, 2), rows, n_in);
        let dy = Bf16Matrix::from_f32(&vec(rows * n_out, 3), rows, n_out);
        let (mut y, mut dx) = (vec![0f32; rows * n_out], vec![0f32; rows * n_in]);
        let (mut fwd, mut bwd) = (f64::INFINITY, f64::INFINITY);
        for _ in 0..4 {
            let t = Instant::now();
            forward(w, &x, &mut y, false, kernel);
            fwd = fwd.min(t.elapsed().as_secs_f64());
            let t = Instant::now();
            backward(w, &dy, &mut dx, false, kernel);
            bwd = bwd.min(t.elapsed().as_secs_f64());
        }
        let gflop = 2.0 * (rows * n_in * n_out) as f64 / 1e9;
        println!(
            "{} [{rows},{n_in}]x[{n_out},{n_in}]: forward {:.1} GFLOP/s, backward {:.1} GFLOP/s",
            kernel.name(),
            gflop / fwd,
            gflop / bwd
        );
    }
}
