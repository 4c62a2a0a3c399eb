//! The machine's measured peak rate of the frozen-weight product, so that a training
//! step's GFLOP/s can be stated as a fraction of what the product path reaches on its
//! own (`hone bench train`, and the `mm_probe` example, call [`peak_product_rate`]).
//!
//! Why measure rather than compute from the CPU's datasheet: the cores here are shared
//! and their clocks vary, and the f32 gemm, `vdpbf16ps` and AMX tiles each reach a
//! different share of the nominal peak. The step's own product path on the step's own
//! shapes is the ceiling a step can approach, so that is what is timed: `x·Wᵀ` for
//! `x: [rows, n_in]` through [`FrozenWeight::forward`] (f32 gemm, or the bf16 kernel
//! with the activation conversion it includes), all threads, the best of a few runs.

use std::time::Instant;

use candle_core::{Device, Result, Tensor};

use super::base_weights::{prepare_uncached, FrozenWeight, Precision};
use super::kernel::f32_data;

/// One product shape `(rows, n_in, n_out)`.
pub type ProductShape = (usize, usize, usize);

/// A measured rate of one shape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShapeRate {
    pub shape: ProductShape,
    pub gflops: f64,
}

/// The shapes of SmolLM2-135M's step (4×256 tokens: attention and MLP projections) and
/// of a 0.5B model's MLP, the bulk of a step's FLOPs.
pub const TRAINING_SHAPES: &[ProductShape] = &[
    (1024, 576, 576),
    (1024, 576, 1536),
    (1024, 1536, 576),
    (1024, 896, 4864),
    (1024, 4864, 896),
];

/// Times `x·Wᵀ` on `precision`'s product path for each shape (`reps` timed runs after
/// one warm-up, the fastest kept) and returns each shape's GFLOP/s.
pub fn product_rates(
    precision: Precision,
    shapes: &[ProductShape],
    reps: usize,
) -> Result<Vec<ShapeRate>> {
    shapes
        .iter()
        .map(|&(rows, n_in, n_out)| {
            let x = Tensor::randn(0f32, 1.0, (rows, n_in), &Device::Cpu)?;
            let w = Tensor::randn(0f32, 0.05, (n_out, n_in), &Device::Cpu)?;
            let copy = prepare_uncached(&w, precision)?;
            let (ws, wl) = w.storage_and_layout();
            let (xs, xl) = x.storage_and_layout();
            let (candle_core::Storage::Cpu(ws), candle_core::Storage::Cpu(xs)) = (&*ws, &*xs)
            else {
                candle_core::bail!("peak rate: only the CPU backend is measured")
            };
            let weight = FrozenWeight {
                f32: f32_data(ws, wl, "peak weight")?,
                bf16: copy.as_ref().map(|(b, k)| (&**b, *k)),
                packed: None,
            };
            let xd = f32_data(xs, xl, "peak input")?;
            let mut y = vec![0f32; rows * n_out];
            let mut best = f64::INFINITY;
            for i in 0..=reps.max(1) {
                let t = Instant::now();
                weight.forward(xd, &mut y, (rows, n_in, n_out), false);
                if i > 0 {
                    best = best.min(t.elapsed().as_secs_f64());
                }
            }
            let flops = 2.0 * (rows * n_in * n_out) as f64;
            Ok(ShapeRate {
                shape: (rows, n_in, n_out),
                gflops: flops / best.max(1e-12) / 1e9,
            })
        })
        .collect()
}

/// The peak GFLOP/s of `precision`'s product path on this machine now: the best rate
/// over [`TRAINING_SHAPES`].
pub fn peak_product_rate(precision: Precision) -> Result<f64> {
    let rates = product_rates(precision, TRAINING_SHAPES, 3)?;
    Ok(rates.iter().map(|r| r.gflops).fold(0.0, f64::max))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::bf16::Bf16Kernel;

    #[test]
    fn rates_are_measured_per_shape_on_each_path() -> Result<()> {
        let shapes = [(16, 64, 32), (8, 32, 48)];
        for precision in [Precision::F32, Precision::Bf16(Bf16Kernel::Portable)] {
            let rates = product_rates(precision, &shapes, 1)?;
            assert_eq!(rates.len(), 2);
            for (r, s) in rates.iter().zip(shapes) {
                assert_eq!(r.shape, s);
                assert!(r.gflops.is_finite() && r.gflops > 0.0, "{r:?}");
            }
        }
        Ok(())
    }
}
