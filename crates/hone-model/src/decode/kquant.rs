//! The block formats a [`PackedMatrix`] keeps, and their scalar dequantization.
//!
//! Every kind is ggml's layout with the f16 scales widened to f32 once at load,
//! so the kernels never convert them; the quants are kept byte for byte. The
//! K-quants' 6-bit packed sub-block scales and mins are unpacked once to one
//! byte each (16 bytes per 256 weights instead of 12): the kernels then read a
//! scale with a plain load, and the bytes read per token grow by under 2%.
//!
//! The kernels walk every kind in *units* of 32 weights: a legacy block
//! (Q4_1, Q5_0, Q8_0) is one unit, a K-quant super-block (256 weights) is
//! eight. Unit `u` of a matrix is weights `32u..32u + 32` in row-major order,
//! so a row of `cols` weights is `cols / 32` consecutive units.

use half::f16;

use super::packed::{PackedKind, PackedMatrix, UNIT};
use crate::error::{ModelError, Result};

/// Weights per K-quant super-block (ggml's `QK_K`).
pub const SUPER: usize = 256;

/// Units per K-quant super-block.
pub(super) const UNITS_PER_SUPER: usize = SUPER / UNIT;

/// Bytes of unpacked sub-block scales kept per K-quant super-block: 8 scales
/// then 8 mins (Q4_K, Q5_K), or 16 signed scales (Q6_K).
pub(super) const SUB_BYTES: usize = 16;

/// Splits ggml's bytes of a `[rows, cols]` matrix of `kind` into `m`'s
/// scales, mins, unpacked sub-block scales and quants.
pub(super) fn parse_blocks(m: &mut PackedMatrix, data: &[u8]) -> Result<()> {
    let kind = m.kind;
    let block_bytes = kind.ggml_block_bytes();
    let n_blocks = m.rows * m.cols / kind.block_weights();
    if data.len() != n_blocks * block_bytes {
        return Err(ModelError::Config(format!(
            "{kind:?} data of {} bytes does not hold a [{}, {}] matrix",
            data.len(),
            m.rows,
            m.cols
        )));
    }
    for b in data.chunks_exact(block_bytes) {
        let h = |i: usize| f16::from_le_bytes([b[i], b[i + 1]]).to_f32();
        match kind {
            // d, m, qs[16]
            PackedKind::Q4_1 => {
                m.scales.push(h(0));
                m.mins.push(h(2));
                m.quants.extend_from_slice(&b[4..]);
            }
            // d, qs[32]  /  d, qh[4], qs[16]
            PackedKind::Q8_0 | PackedKind::Q5_0 => {
                m.scales.push(h(0));
                m.quants.extend_from_slice(&b[2..]);
            }
            // d, dmin, scales[12], (qh[32],) qs[128]
            PackedKind::Q4_K | PackedKind::Q5_K => {
                m.scales.push(h(0));
                m.mins.push(h(2));
                m.sub.extend_from_slice(&unpack_scales_mins(&b[4..16]));
                m.quants.extend_from_slice(&b[16..]);
            }
            // ql[128], qh[64], scales[16] (i8), d
            PackedKind::Q6_K => {
                m.scales.push(h(208));
                m.sub.extend_from_slice(&b[192..208]);
                m.quants.extend_from_slice(&b[..192]);
            }
        }
    }
    Ok(())
}

/// ggml's 12 bytes of 6-bit sub-block scales and mins (`get_scale_min_k4`)
/// as 8 scales followed by 8 mins, one byte each.
fn unpack_scales_mins(q: &[u8]) -> [u8; SUB_BYTES] {
    let mut out = [0u8; SUB_BYTES];
    for j in 0..8 {
        let (sc, mn) = if j < 4 {
            (q[j] & 63, q[j + 4] & 63)
        } else {
            (
                (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
                (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
            )
        };
        out[j] = sc;
        out[8 + j] = mn;
    }
    out
}

/// Where unit `u` of a matrix of `kind` lives: its block, and its index in it.
#[inline(always)]
pub(super) fn locate(kind: PackedKind, u: usize) -> (usize, usize) {
    if kind.block_weights() == SUPER {
        (u / UNITS_PER_SUPER, u % UNITS_PER_SUPER)
    } else {
        (u, 0)
    }
}

/// Unit `u` of `m` as f32 weights: the reference the SIMD kernels must match,
/// written as ggml's `dequantize_row_*`.
pub(super) fn unit_f32(m: &PackedMatrix, u: usize, w: &mut [f32; UNIT]) {
    let (b, j) = locate(m.kind, u);
    let qb = m.kind.quant_bytes();
    let q = &m.quants[b * qb..(b + 1) * qb];
    let d = m.scales[b];
    match m.kind {
        PackedKind::Q4_1 => {
            let mn = m.mins[b];
            for l in 0..16 {
                w[l] = (q[l] & 0xF) as f32 * d + mn;
                w[l + 16] = (q[l] >> 4) as f32 * d + mn;
            }
        }
        PackedKind::Q8_0 => {
            for l in 0..UNIT {
                w[l] = q[l] as i8 as f32 * d;
            }
        }
        PackedKind::Q5_0 => {
            let qh = u32::from_le_bytes([q[0], q[1], q[2], q[3]]);
            let qs = &q[4..];
            for l in 0..16 {
                let lo = (qs[l] & 0xF) as u32 | (((qh >> l) & 1) << 4);
                let hi = (qs[l] >> 4) as u32 | (((qh >> (l + 16)) & 1) << 4);
                w[l] = (lo as i32 - 16) as f32 * d;
                w[l + 16] = (hi as i32 - 16) as f32 * d;
            }
        }
        PackedKind::Q4_K | PackedKind::Q5_K => {
            let sub = &m.sub[b * SUB_BYTES..][..SUB_BYTES];
            let (d1, m1) = (d * sub[j] as f32, m.mins[b] * sub[8 + j] as f32);
            let (qh, qs) = if m.kind == PackedKind::Q5_K {
                (Some(&q[..32]), &q[32..])
            } else {
                (None, q)
            };
            let shift = 4 * (j & 1);
            for l in 0..UNIT {
                let mut v = (qs[(j / 2) * 32 + l] >> shift) & 0xF;
                if let Some(qh) = qh {
                    v |= ((qh[l] >> j) & 1) << 4;
                }
                w[l] = d1 * v as f32 - m1;
            }
        }
        PackedKind::Q6_K => {
            let (ql, qh) = q.split_at(128);
            let (half, k) = (j / 4, j % 4);
            let ql = &ql[64 * half + 32 * (k & 1)..][..32];
            let qh = &qh[32 * half..][..32];
            let (nshift, hshift) = (4 * (k >> 1), 2 * k);
            let sub = &m.sub[b * SUB_BYTES..][..SUB_BYTES];
            for l in 0..UNIT {
                let sc = sub[8 * half + 2 * k + l / 16] as i8 as f32;
                let v = ((ql[l] >> nshift) & 0xF) | (((qh[l] >> hshift) & 3) << 4);
                w[l] = d * sc * (v as i32 - 32) as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    use super::super::packed::Kernel;
    use super::*;

    const KINDS: [GgmlDType; 6] = [
        GgmlDType::Q4_1,
        GgmlDType::Q8_0,
        GgmlDType::Q5_0,
        GgmlDType::Q4K,
        GgmlDType::Q5K,
        GgmlDType::Q6K,
    ];

    /// Weights in [-0.5, 0.5) with a per-row offset, so blocks have both signs
    /// and nonzero minimums.
    fn random(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..rows * cols)
            .map(|i| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let v = ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5;
                v + 0.1 * ((i / cols) % 3) as f32
            })
            .collect()
    }

    fn quantized(dtype: GgmlDType, rows: usize, cols: usize, seed: u64) -> Result<QTensor> {
        let w = Tensor::from_vec(random(rows, cols, seed), (rows, cols), &Device::Cpu)?;
        Ok(QTensor::quantize(&w, dtype)?)
    }

    /// `x·Wᵀ` (`[n, rows]`) with kernel `k` on one thread.
    fn product_with(m: &PackedMatrix, k: Kernel, x: &[f32], n: usize) -> Vec<f32> {
        let mut yt = vec![0f32; m.rows * n];
        m.rows_into(k, 0, x, n, &mut yt);
        let mut y = vec![0f32; n * m.rows];
        for (r, row) in yt.chunks_exact(n).enumerate() {
            for (c, v) in row.iter().enumerate() {
                y[c * m.rows + r] = *v;
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
                    let gap = max_gap(&p.matmul(&x, n)?, &want);
                    assert!(gap < 2e-4, "{dtype:?} matmul [{rows}, {cols}] n={n}: {gap}");
                }
            }
        }
        Ok(())
    }

    /// With every kernel, a row's result does not depend on how many rows
    /// share the call.
    #[test]
    fn batching_never_changes_a_row() -> Result<()> {
        for dtype in [
            GgmlDType::Q5_0,
            GgmlDType::Q4K,
            GgmlDType::Q5K,
            GgmlDType::Q6K,
        ] {
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
            // f32 scales: up to one extra bit per 32 weights over the file's bits.
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
}
