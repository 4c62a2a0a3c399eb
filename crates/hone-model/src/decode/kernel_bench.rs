//! Benchmark of the packed kernels themselves, one thread, no decode team:
//! each kind's single-row product (`N = 1`, a decode step) and four- and
//! eight-row products (`N = 4, 8`, a batched step), f32 and 8-bit activations, on the
//! shape of Qwen2.5-0.5B's `ffn_down` (`HONE_BENCH_ROWS`, `HONE_BENCH_COLS` change it).
//! Kernels run alternately, round after round, so a noisy machine shifts them
//! all alike; the figure to read is each one's GB/s of weight bytes and its
//! ratio to the others within a round. Run with
//! `cargo test --release -p hone-model bench_packed_kernels -- --ignored --nocapture`.

use std::time::Instant;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use super::packed::{Kernel, PackedMatrix};
use super::q8::{Q8Kernel, Q8Rows};
use crate::error::Result;

fn random(len: usize, seed: u64) -> Vec<f32> {
    crate::testing::lcg_uniform(seed, len)
}

fn packed(dtype: GgmlDType, rows: usize, cols: usize) -> Result<PackedMatrix> {
    let w = Tensor::from_vec(random(rows * cols, 7), (rows, cols), &Device::Cpu)?;
    PackedMatrix::from_qtensor(&QTensor::quantize(&w, dtype)?)
}

/// Seconds per product, best of `reps` timed runs of `f`.
fn best_of(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

#[test]
#[ignore = "benchmark: measures, does not check"]
fn bench_packed_kernels() -> Result<()> {
    let kinds = [
        GgmlDType::Q5_0,
        GgmlDType::Q8_0,
        GgmlDType::Q4K,
        GgmlDType::Q6K,
        GgmlDType::Q4_1,
    ];
    let env = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    // HONE_BENCH_ROWS=14336 makes each matrix larger than a last-level cache;
    // HONE_BENCH_COLS=576 HONE_BENCH_ROWS=1536 is SmolLM2-135M's gate and up shape.
    let (rows, cols) = (env("HONE_BENCH_ROWS", 896), env("HONE_BENCH_COLS", 4864));
    let rounds = env("HONE_BENCH_ROUNDS", 3);
    let k = Kernel::best();
    let kq = Q8Kernel::best();
    println!("kernels {k:?} / {kq:?}, matrix {rows}x{cols}, one thread, GB/s of weight bytes");
    // Kinds whose blocks do not divide the width (K-quants need 256) are left out.
    let kinds: Vec<_> = kinds
        .into_iter()
        .filter(|d| cols.is_multiple_of(d.block_size()))
        .collect();
    let ms: Vec<_> = kinds
        .iter()
        .map(|&d| packed(d, rows, cols))
        .collect::<Result<_>>()?;
    for round in 1..=rounds {
        for (d, m) in kinds.iter().zip(&ms) {
            let mut line = format!("round {round} {d:?}:");
            for n in [1usize, 4, 8] {
                let x = random(n * cols, 3);
                let mut out = vec![0f32; rows * n];
                let t_f32 = best_of(20, || m.rows_into(k, 0, &x, n, &mut out));
                let t_q8 = best_of(20, || {
                    let xq = Q8Rows::quantize(&x, n, cols);
                    m.rows_into_q8(kq, 0, &xq, &mut out)
                });
                let gbs = |t: f64| m.bytes() as f64 / t / 1e9;
                line += &format!(
                    "  N={n} f32 {:.2} q8 {:.2} (q8/f32 {:.2})",
                    gbs(t_f32),
                    gbs(t_q8),
                    t_f32 / t_q8
                );
            }
            println!("{line}");
        }
    }
    Ok(())
}
