//! Tests of the 8-bit-activation products ([`super::q8`]) on every kind and
//! every kernel this CPU runs, against the f32-activation path.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use super::kquant_tests::{random, KINDS};
use super::packed::PackedMatrix;
use super::q8::Activations;
use super::q8::{Q8Kernel, Q8Rows};
use crate::error::Result;
use crate::testing::lcg_uniform as lcg;

/// A `[rows, cols]` matrix of `dtype` with a per-row offset (nonzero minimums).
fn matrix(dtype: GgmlDType, rows: usize, cols: usize, seed: u64) -> Result<PackedMatrix> {
    let w = Tensor::from_vec(random(rows, cols, seed), (rows, cols), &Device::Cpu)?;
    PackedMatrix::from_qtensor(&QTensor::quantize(&w, dtype)?)
}

/// `x·Wᵀ` (`[n, rows]`) with 8-bit kernel `k` on one thread.
fn q8_product(m: &PackedMatrix, k: Q8Kernel, x: &[f32], n: usize) -> Vec<f32> {
    let (rows, cols) = m.dims();
    let xq = Q8Rows::quantize(x, n, cols);
    let mut yt = vec![0f32; rows * n];
    m.rows_into_q8(k, 0, &xq, &mut yt);
    let mut y = vec![0f32; n * rows];
    for (r, row) in yt.chunks_exact(n).enumerate() {
        for (c, v) in row.iter().enumerate() {
            y[c * rows + r] = *v;
        }
    }
    y
}

/// `Σ|w·x|` per output, and the bound on the activations' rounding:
/// `Σ_unit Σ|w| · max|x| / 254` (each activation moves by at most `d/2`).
fn scales(m: &PackedMatrix, x: &[f32], n: usize) -> Result<(Vec<f32>, Vec<f32>)> {
    let (rows, cols) = m.dims();
    let (mut mag, mut bound) = (Vec::new(), Vec::new());
    for c in 0..n {
        let xs = &x[c * cols..(c + 1) * cols];
        for r in 0..rows {
            let w = m.row_f32(r)?;
            mag.push(w.iter().zip(xs).map(|(w, x)| (w * x).abs()).sum());
            let b = w
                .chunks(32)
                .zip(xs.chunks(32))
                .map(|(w, x)| {
                    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
                    w.iter().map(|v| v.abs()).sum::<f32>() * amax / 254.0
                })
                .sum();
            bound.push(b);
        }
    }
    Ok((mag, bound))
}

/// Activations that 8 bits hold exactly (integers with 127 in every unit):
/// every kernel then equals the f32 path up to summation order, which checks
/// the unpacking, the factors and the sums' correction of every kind.
#[test]
fn exact_activations_give_the_f32_product_on_every_kernel() -> Result<()> {
    let (rows, cols, n) = (13, 512, 3);
    let mut x: Vec<f32> = lcg(9, n * cols)
        .iter()
        .map(|v| (v * 250.0).round())
        .collect();
    x.iter_mut().step_by(32).for_each(|v| *v = 127.0);
    for dtype in KINDS {
        let m = matrix(dtype, rows, cols, 4)?;
        let want = m.matmul_with(&x, n, Activations::F32)?;
        let (mag, _) = scales(&m, &x, n)?;
        for k in Q8Kernel::available() {
            let got = q8_product(&m, k, &x, n);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                let tol = 1e-5 * mag[i] + 1e-3;
                assert!((g - w).abs() <= tol, "{dtype:?} {k:?} out {i}: {g} vs {w}");
            }
        }
    }
    Ok(())
}

/// On any activations the gap to the f32 path stays within the rounding bound
/// of the activations, and the kernels agree with each other to float rounding.
#[test]
fn every_kernel_stays_within_the_activation_rounding_bound() -> Result<()> {
    let (rows, cols, n) = (21, 768, 5);
    // Mixed magnitudes across units, as real hidden states have.
    let x: Vec<f32> = lcg(17, n * cols)
        .iter()
        .enumerate()
        .map(|(i, v)| v * if (i / 32) % 5 == 0 { 40.0 } else { 1.0 })
        .collect();
    for dtype in KINDS {
        let m = matrix(dtype, rows, cols, 8)?;
        let want = m.matmul_with(&x, n, Activations::F32)?;
        let (mag, bound) = scales(&m, &x, n)?;
        let reference = q8_product(&m, Q8Kernel::Scalar, &x, n);
        for k in Q8Kernel::available() {
            let got = q8_product(&m, k, &x, n);
            for i in 0..got.len() {
                let gap = (got[i] - want[i]).abs();
                assert!(
                    gap <= bound[i] * 1.001 + 1e-4,
                    "{dtype:?} {k:?} out {i}: {gap}"
                );
                let apart = (got[i] - reference[i]).abs();
                assert!(
                    apart <= 1e-5 * mag[i] + 1e-4,
                    "{dtype:?} {k:?} vs scalar: {apart}"
                );
            }
        }
    }
    Ok(())
}

/// A row's result does not depend on how many rows share the kernel call,
/// and `matmul_with(Q8)` (threads, shared quantization) equals the kernel.
#[test]
fn batching_never_changes_a_row() -> Result<()> {
    let (rows, cols) = (300, 512);
    let x = lcg(11, 6 * cols);
    for dtype in KINDS {
        let m = matrix(dtype, rows, cols, 5)?;
        for k in Q8Kernel::available() {
            let all = q8_product(&m, k, &x, 6);
            for c in 0..6 {
                let alone = q8_product(&m, k, &x[c * cols..(c + 1) * cols], 1);
                assert_eq!(
                    alone,
                    all[c * rows..(c + 1) * rows],
                    "{dtype:?} {k:?} row {c}"
                );
            }
        }
        let best = q8_product(&m, Q8Kernel::best(), &x, 6);
        assert_eq!(m.matmul_with(&x, 6, Activations::Q8)?, best, "{dtype:?}");
    }
    Ok(())
}

/// Zero activations (a padded or masked row) give zeros, not NaN.
#[test]
fn zero_activations_give_zero() -> Result<()> {
    for dtype in KINDS {
        let m = matrix(dtype, 4, 256, 2)?;
        for k in Q8Kernel::available() {
            let y = q8_product(&m, k, &[0.0; 256], 1);
            assert!(y.iter().all(|v| *v == 0.0), "{dtype:?} {k:?}: {y:?}");
        }
    }
    Ok(())
}
