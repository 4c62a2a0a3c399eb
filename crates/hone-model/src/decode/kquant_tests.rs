//! Tests of the packed kinds and kernels: each equals candle's dequantized
//! f32 product (`QTensor::quantize` / `dequantize`) on every kernel this CPU runs.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use super::packed::{Kernel, PackedKind, PackedMatrix};
use crate::error::Result;

/// Every GGUF type with a packed kind (shared by the decode module's tests).
pub(super) const KINDS: [GgmlDType; 6] = [
    GgmlDType::Q4_1,
    GgmlDType::Q8_0,
    GgmlDType::Q5_0,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
];

/// Weights in [-0.5, 0.5) with a per-row offset, so blocks have both signs
/// and nonzero minimums.
pub(super) fn random(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
    crate::testing::lcg_uniform(seed, rows * cols)
        .into_iter()
        .enumerate()
        .map(|(i, v)| v + 0.1 * ((i / cols) % 3) as f32)
        .collect()
}

fn quantized(dtype: GgmlDType, rows: usize, cols: usize, seed: u64) -> Result<QTensor> {
    let w = Tensor::from_vec(random(rows, cols, seed), (rows, cols), &Device::Cpu)?;
    Ok(QTensor::quantize(&w, dtype)?)
}

/// `x·Wᵀ` (`[n, rows]`) with kernel `k` on one thread.
fn product_with(m: &PackedMatrix, k: Kernel, x: &[f32], n: usize) -> Vec<f32> {
    let (rows, _) = m.dims();
    let mut yt = vec![0f32; rows * n];
    m.rows_into(k, 0, x, n, &mut yt);
    let mut y = vec![0f32; n * rows];
    for (r, row) in yt.chunks_exact(n).enumerate() {
        for (c, v) in row.iter().enumerate() {
            y[c * rows + r] = *v;
        }
    }
    y
}

fn max_gap(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0f32, |g, (x, y)| g.max((x - y).abs()))
}

/// Every kind is kept as stored (no re-quantization), and its rows equal
/// candle's dequantization of the same blocks.
#[test]
fn rows_equal_candles_dequantization() -> Result<()> {
    for dtype in KINDS {
        let q = quantized(dtype, 5, 512, 3)?;
        let p = PackedMatrix::from_qtensor(&q)?;
        assert_eq!(Some(p.kind()), PackedKind::from_ggml(dtype), "{dtype:?}");
        let want = q.dequantize(&Device::Cpu)?.to_vec2::<f32>()?;
        for (r, want_row) in want.iter().enumerate() {
            let gap = max_gap(&p.row_f32(r)?, want_row);
            assert!(gap < 1e-6, "{dtype:?} row {r}: {gap}");
        }
    }
    Ok(())
}

/// For every kind and every kernel this CPU runs, the product equals the
/// dequantized-f32 product up to summation order: 1 to 9 activation rows,
/// odd row counts and odd counts of blocks per row.
#[test]
fn every_kernel_equals_the_dequantized_f32_product() -> Result<()> {
    let kernels = Kernel::available();
    assert_eq!(kernels.last(), Some(&Kernel::Scalar));
    for dtype in KINDS {
        for (rows, cols) in [(1, 256), (7, 768), (3, 1280)] {
            let q = quantized(dtype, rows, cols, rows as u64)?;
            let p = PackedMatrix::from_qtensor(&q)?;
            let wd = q.dequantize(&Device::Cpu)?;
            for n in [1, 2, 3, 4, 5, 9] {
                let x = random(n, cols, 7 + n as u64);
                let xt = Tensor::from_vec(x.clone(), (n, cols), &Device::Cpu)?;
                let want = xt.matmul(&wd.t()?)?.flatten_all()?.to_vec1::<f32>()?;
                for &k in &kernels {
                    let got = product_with(&p, k, &x, n);
                    let gap = max_gap(&got, &want);
                    assert!(gap < 2e-4, "{dtype:?} {k:?} [{rows}, {cols}] n={n}: {gap}");
                }
                let gap = max_gap(&p.matmul_with(&x, n, super::q8::Activations::F32)?, &want);
                assert!(gap < 2e-4, "{dtype:?} matmul [{rows}, {cols}] n={n}: {gap}");
            }
        }
    }
    Ok(())
}

/// The AVX-512 kernel looks weights up in a per-unit table (`kquant_simd::unit512`)
/// rather than widening and scaling each quant: every weight must still be
/// exactly the fused multiply-add of its quant, scale and offset.
#[cfg(target_arch = "x86_64")]
#[test]
fn avx512_weights_are_the_fused_product_of_each_quant() -> Result<()> {
    use super::kquant::{self, locate};
    use std::arch::x86_64::_mm512_storeu_ps;
    if !Kernel::available().contains(&Kernel::Avx512) {
        return Ok(());
    }
    for dtype in KINDS {
        let p = PackedMatrix::from_qtensor(&quantized(dtype, 3, 512, 13)?)?;
        let m = p.blocks();
        for u in 0..3 * 512 / kquant::UNIT {
            let mut want = [0f32; kquant::UNIT];
            kquant::unit_with(m, u, &mut want, f32::mul_add);
            let (b, _) = locate(m.kind, u);
            let mn = if m.kind.has_mins() {
                m.mins[b].to_f32()
            } else {
                0.0
            };
            let mut got = [0f32; kquant::UNIT];
            // SAFETY: the CPU has AVX-512 (checked above) and `u` is a unit of `m`.
            kquant::with_kind!(m.kind, K => unsafe {
                let (lo, hi) = super::kquant_simd::unit512::<K>(m, u, (m.scales[b].to_f32(), mn));
                _mm512_storeu_ps(got.as_mut_ptr(), lo);
                _mm512_storeu_ps(got.as_mut_ptr().add(16), hi);
            });
            assert_eq!(got, want, "{dtype:?} unit {u}");
        }
    }
    Ok(())
}

/// With every kernel, a row's result does not depend on how many rows
/// share the call.
#[test]
fn batching_never_changes_a_row() -> Result<()> {
    for dtype in KINDS {
        let p = PackedMatrix::from_qtensor(&quantized(dtype, 9, 512, 5)?)?;
        let x = random(6, 512, 11);
        for k in Kernel::available() {
            let all = product_with(&p, k, &x, 6);
            for c in 0..6 {
                let alone = product_with(&p, k, &x[c * 512..(c + 1) * 512], 1);
                assert_eq!(alone, all[c * 9..(c + 1) * 9], "{dtype:?} {k:?} row {c}");
            }
        }
    }
    Ok(())
}

/// Native blocks are smaller than the Q8_0 they replaced.
#[test]
fn native_blocks_keep_their_size() -> Result<()> {
    let q8 = PackedMatrix::from_qtensor(&quantized(GgmlDType::Q8_0, 4, 512, 1)?)?;
    for (dtype, bits) in [
        (GgmlDType::Q5_0, 5.5),
        (GgmlDType::Q4K, 4.5),
        (GgmlDType::Q5K, 5.5),
        (GgmlDType::Q6K, 6.5625),
    ] {
        let p = PackedMatrix::from_qtensor(&quantized(dtype, 4, 512, 1)?)?;
        let per_weight = 8.0 * p.bytes() as f64 / (4.0 * 512.0);
        // Scales as stored (f16); K-quant sub-block scales unpacked to a
        // byte each, and the scales' padding, add under a bit per weight here.
        assert!(per_weight < bits + 1.0, "{dtype:?}: {per_weight} bits");
        assert!(p.bytes() < q8.bytes(), "{dtype:?}");
    }
    Ok(())
}

#[test]
fn bad_block_data_is_an_error() {
    for kind in [
        PackedKind::Q5_0,
        PackedKind::Q4_K,
        PackedKind::Q5_K,
        PackedKind::Q6_K,
    ] {
        let bytes = kind.ggml_block_bytes() * 512 / kind.block_weights();
        assert!(PackedMatrix::from_ggml_blocks(kind, 2, 256, &vec![0; bytes]).is_ok());
        assert!(PackedMatrix::from_ggml_blocks(kind, 2, 256, &vec![0; bytes - 1]).is_err());
    }
    // K-quant rows are whole super-blocks.
    let err = PackedMatrix::from_ggml_blocks(PackedKind::Q4_K, 1, 96, &[0; 144]).unwrap_err();
    assert!(err.to_string().contains("multiple of 256"), "{err}");
}

/// Not a test: prints each kernel's single-thread speed per kind, for a matrix
/// that stays in L2 and one that does not (L3 here) (best of many runs,
/// so a busy machine only adds runs, not time). Run by hand:
/// `cargo test --release --workspace -- --ignored kernel_speed_report --nocapture`.
#[test]
#[ignore]
fn kernel_speed_report() -> Result<()> {
    for dtype in KINDS {
        for (rows, cols, reps) in [(128, 1024, 400), (16384, 1024, 10)] {
            let p = PackedMatrix::from_qtensor(&quantized(dtype, rows, cols, 1)?)?;
            let x = random(1, cols, 2);
            for k in Kernel::available() {
                if k == Kernel::Scalar && rows > 128 {
                    continue;
                }
                let mut out = vec![0f32; rows];
                let mut best = f64::MAX;
                for _ in 0..reps {
                    let t = std::time::Instant::now();
                    p.rows_into(k, 0, &x, 1, &mut out);
                    best = best.min(t.elapsed().as_secs_f64());
                }
                let weights = (rows * cols) as f64;
                println!(
                    "{dtype:?} {k:?} [{rows}, {cols}]: {:.2} weights/ns, {:.2} GB/s",
                    weights / best / 1e9,
                    p.bytes() as f64 / best / 1e9
                );
            }
            // The 8-bit-activation kernels, quantization of the row included.
            for k in super::q8::Q8Kernel::available() {
                if k == super::q8::Q8Kernel::Scalar && rows > 128 {
                    continue;
                }
                let mut out = vec![0f32; rows];
                let mut best = f64::MAX;
                for _ in 0..reps {
                    let t = std::time::Instant::now();
                    let xq = super::q8::Q8Rows::quantize(&x, 1, cols);
                    p.rows_into_q8(k, 0, &xq, &mut out);
                    best = best.min(t.elapsed().as_secs_f64());
                }
                println!(
                    "{dtype:?} q8 {k:?} [{rows}, {cols}]: {:.2} weights/ns, {:.2} GB/s",
                    (rows * cols) as f64 / best / 1e9,
                    p.bytes() as f64 / best / 1e9
                );
            }
        }
    }
    Ok(())
}
