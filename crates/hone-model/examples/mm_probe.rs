//! Throughput of candle's f32 matmul (the gemm crate, all threads) on the training step's
//! product shapes, to hold against `torch.matmul` on the same machine: `x·Wᵀ` with `W`
//! as a transposed view (what `ops::frozen_linear` runs) and as a contiguous `[in, out]`.
//! Then the frozen-weight product paths of training (f32 gemm, and bf16 on this CPU's
//! best kernel) on the step's shapes, through `hone_model::ops::peak`, the measurement
//! `hone bench train` divides its GFLOP/s by.
//! Run: `cargo run --release --workspace --example mm_probe`.

use candle_core::{Device, Tensor};
use hone_model::ops::peak;
use std::time::Instant;
fn main() -> candle_core::Result<()> {
    for (m, n, k) in [
        (1024, 576, 576),
        (1024, 1536, 576),
        (1024, 576, 1536),
        (1024, 192, 576),
        // The LM head, 64 and 256 trained rows at a time: forward and backward.
        (64, 49152, 576),
        (256, 49152, 576),
        (64, 576, 49152),
        (256, 576, 49152),
    ] {
        let a = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu)?;
        let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu)?;
        let wt = w.t()?;
        for _ in 0..3 {
            a.matmul(&wt)?;
        }
        let it = 50;
        let t = Instant::now();
        for _ in 0..it {
            a.matmul(&wt)?;
        }
        let dt = t.elapsed().as_secs_f64() / it as f64;
        let wc = w.t()?.contiguous()?;
        let t = Instant::now();
        for _ in 0..it {
            a.matmul(&wc)?;
        }
        let dt2 = t.elapsed().as_secs_f64() / it as f64;
        println!(
            "{m} {n} {k}: wT view {:.1} GFLOP/s, w contiguous [k,n] {:.1} GFLOP/s",
            2.0 * (m * n * k) as f64 / dt / 1e9,
            2.0 * (m * n * k) as f64 / dt2 / 1e9
        );
    }
    let bf16 = hone_model::ops::Precision::Bf16(hone_model::ops::Bf16Kernel::detect());
    for precision in [hone_model::ops::Precision::F32, bf16] {
        let rates = peak::product_rates(precision, peak::TRAINING_SHAPES, 5)?;
        for r in rates {
            let (rows, n_in, n_out) = r.shape;
            println!(
                "{}: x[{rows},{n_in}]·Wᵀ[{n_in},{n_out}] {:.1} GFLOP/s",
                precision.describe(),
                r.gflops
            );
        }
    }
    Ok(())
}
