//! Quantized weight matrices in hone's own layout, multiplied with f32
//! activations by hand-written SIMD kernels.
//!
//! Why our own rather than candle's `QMatMul`:
//! - candle quantizes the *activations* to 8 bits before every product, which
//!   changes greedy answers of the file's Q4_1 weights (`quantized_paths_gap_to_f32`);
//!   here activations stay f32, so a product equals the dequantized-f32 path up to
//!   summation order;
//! - candle has no SIMD kernel for Q4_1, so serving had to re-quantize to Q8_0,
//!   doubling the bytes read per token, and decode is bound by those bytes;
//! - one kernel call multiplies a weight block with up to four activation rows, so
//!   a batched decode step or a prefill chunk reads the weights once.
//!
//! Blocks are ggml's (32 weights): Q4_1 `w = d·q + m` with 4-bit `q`, Q8_0
//! `w = d·q` with 8-bit `q`. Scales are kept as f32 beside the quants.

use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;

use super::team;
use crate::error::{ModelError, Result};

/// Weights per quantization block (ggml's `QK4_1` and `QK8_0`).
pub const BLOCK: usize = 32;

/// Multiply-adds below which a product runs on the calling thread: splitting
/// smaller ones costs more in hand-over than it saves.
const PARALLEL_MIN_MACS: usize = 200_000;

/// The quantization of a [`PackedMatrix`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackedKind {
    /// 4-bit weights with a scale and a minimum per block (the default GGUF's linears).
    Q4_1,
    /// 8-bit weights with a scale per block (other types are re-quantized to it).
    Q8_0,
}

impl PackedKind {
    /// Bytes of quants per block.
    fn quant_bytes(self) -> usize {
        match self {
            PackedKind::Q4_1 => BLOCK / 2,
            PackedKind::Q8_0 => BLOCK,
        }
    }
}

/// A `[rows, cols]` weight matrix (HF layout `[out, in]`) of quantized blocks.
#[derive(Debug, Clone)]
pub struct PackedMatrix {
    kind: PackedKind,
    rows: usize,
    cols: usize,
    /// `d` of each block, row-major `[rows, cols/32]`.
    scales: Vec<f32>,
    /// `m` of each block (Q4_1 only; empty for Q8_0).
    mins: Vec<f32>,
    /// The quants of each block, in ggml's byte order.
    quants: Vec<u8>,
}

impl PackedMatrix {
    /// Takes a candle quantized tensor `[rows, cols]`: Q4_1 and Q8_0 blocks are
    /// kept as they are; any other type is dequantized and re-quantized to Q8_0.
    pub fn from_qtensor(q: &QTensor) -> Result<Self> {
        let (rows, cols) = q.shape().dims2()?;
        check_cols(cols)?;
        match q.dtype() {
            GgmlDType::Q4_1 => Self::from_ggml_blocks(PackedKind::Q4_1, rows, cols, &q.data()?),
            GgmlDType::Q8_0 => Self::from_ggml_blocks(PackedKind::Q8_0, rows, cols, &q.data()?),
            _ => {
                let w = q.dequantize(&candle_core::Device::Cpu)?;
                Self::quantize_q8_0(rows, cols, &w.flatten_all()?.to_vec1::<f32>()?)
            }
        }
    }

    /// Parses ggml block bytes (`d: f16[, m: f16], qs`) of a `[rows, cols]` matrix.
    pub fn from_ggml_blocks(
        kind: PackedKind,
        rows: usize,
        cols: usize,
        data: &[u8],
    ) -> Result<Self> {
        check_cols(cols)?;
        let qb = kind.quant_bytes();
        let header = if kind == PackedKind::Q4_1 { 4 } else { 2 };
        let n_blocks = rows * cols / BLOCK;
        if data.len() != n_blocks * (header + qb) {
            return Err(ModelError::Config(format!(
                "{kind:?} data of {} bytes does not hold a [{rows}, {cols}] matrix",
                data.len()
            )));
        }
        let mut m = Self::empty(kind, rows, cols);
        for block in data.chunks_exact(header + qb) {
            m.scales
                .push(f16::from_le_bytes([block[0], block[1]]).to_f32());
            if kind == PackedKind::Q4_1 {
                m.mins
                    .push(f16::from_le_bytes([block[2], block[3]]).to_f32());
            }
            m.quants.extend_from_slice(&block[header..]);
        }
        Ok(m)
    }

    /// Quantizes f32 weights `[rows, cols]` to Q8_0 (ggml's rule: `d = max|w| / 127`).
    pub fn quantize_q8_0(rows: usize, cols: usize, w: &[f32]) -> Result<Self> {
        check_cols(cols)?;
        if w.len() != rows * cols {
            return Err(ModelError::Config(format!(
                "{} weights do not fill a [{rows}, {cols}] matrix",
                w.len()
            )));
        }
        let mut m = Self::empty(PackedKind::Q8_0, rows, cols);
        for block in w.chunks_exact(BLOCK) {
            let amax = block.iter().fold(0f32, |a, x| a.max(x.abs()));
            let d = amax / 127.0;
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            m.scales.push(d);
            m.quants.extend(
                block
                    .iter()
                    .map(|x| (x * inv).round().clamp(-127.0, 127.0) as i8 as u8),
            );
        }
        Ok(m)
    }

    fn empty(kind: PackedKind, rows: usize, cols: usize) -> Self {
        let n_blocks = rows * cols / BLOCK;
        Self {
            kind,
            rows,
            cols,
            scales: Vec::with_capacity(n_blocks),
            mins: Vec::with_capacity(if kind == PackedKind::Q4_1 {
                n_blocks
            } else {
                0
            }),
            quants: Vec::with_capacity(n_blocks * kind.quant_bytes()),
        }
    }

    pub fn kind(&self) -> PackedKind {
        self.kind
    }

    /// `(rows, cols)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// Bytes held (quants and scales).
    pub fn bytes(&self) -> usize {
        self.quants.len() + 4 * (self.scales.len() + self.mins.len())
    }

    /// Row `r` as f32 (an embedding lookup).
    pub fn row_f32(&self, r: usize) -> Result<Vec<f32>> {
        if r >= self.rows {
            return Err(ModelError::Generation(format!(
                "row {r} of a matrix with {} rows",
                self.rows
            )));
        }
        let nb = self.cols / BLOCK;
        let mut out = Vec::with_capacity(self.cols);
        for b in r * nb..(r + 1) * nb {
            let d = self.scales[b];
            match self.kind {
                PackedKind::Q4_1 => {
                    let q = &self.quants[b * 16..(b + 1) * 16];
                    let m = self.mins[b];
                    out.extend(q.iter().map(|x| (x & 0xF) as f32 * d + m));
                    out.extend(q.iter().map(|x| (x >> 4) as f32 * d + m));
                }
                PackedKind::Q8_0 => {
                    let q = &self.quants[b * 32..(b + 1) * 32];
                    out.extend(q.iter().map(|&x| x as i8 as f32 * d));
                }
            }
        }
        Ok(out)
    }

    /// `y = x·Wᵀ` for `n` activation rows `x: [n, cols]`; returns `[n, rows]`.
    /// Output rows are split over the decode team's threads when the product is large.
    pub fn matmul(&self, x: &[f32], n: usize) -> Result<Vec<f32>> {
        let mut ys = matmul_many(&[self], x, n)?;
        Ok(ys.pop().unwrap_or_default())
    }

    /// Output rows `r0..r0 + out.len()/n` into `out: [rows, n]`, four
    /// activation rows per kernel call (each weight block is unpacked once
    /// per four). Every activation row gets the same arithmetic whatever `n`
    /// is, so batching never changes a result.
    fn rows_into(&self, r0: usize, x: &[f32], n: usize, out: &mut [f32]) {
        let mut c0 = 0;
        while c0 < n {
            let group = (n - c0).min(4);
            match group {
                1 => self.group::<1>(r0, x, c0, n, out),
                2 => self.group::<2>(r0, x, c0, n, out),
                3 => self.group::<3>(r0, x, c0, n, out),
                _ => self.group::<4>(r0, x, c0, n, out),
            }
            c0 += group;
        }
    }

    fn group<const N: usize>(&self, r0: usize, x: &[f32], c0: usize, n: usize, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked above); the kernel's
            // indexing stays within the slices (see `simd::group`).
            unsafe { simd::group::<N>(self, r0, x, c0, n, out) };
            return;
        }
        scalar_group::<N>(self, r0, x, c0, n, out);
    }
}

/// `x·Wᵀ` for several matrices with the same input width (e.g. a layer's
/// q, k and v projections) as one job for the team, which then hands work
/// out once instead of once per matrix. Returns one `[n, rows]` per matrix.
pub fn matmul_many(mats: &[&PackedMatrix], x: &[f32], n: usize) -> Result<Vec<Vec<f32>>> {
    let Some(cols) = mats.first().map(|m| m.cols) else {
        return Ok(Vec::new());
    };
    if mats.iter().any(|m| m.cols != cols) || x.len() != n * cols {
        return Err(ModelError::Generation(format!(
            "{} activations are not {n} rows of {cols} for every matrix",
            x.len()
        )));
    }
    if n == 0 {
        return Ok(vec![Vec::new(); mats.len()]);
    }
    // Computed as [rows, n] so threads own contiguous output, then transposed.
    let mut yts: Vec<Vec<f32>> = mats.iter().map(|m| vec![0f32; m.rows * n]).collect();
    let total_rows: usize = mats.iter().map(|m| m.rows).sum();
    let team = team::global();
    if team.threads() <= 1 || total_rows * cols * n < PARALLEL_MIN_MACS {
        for (m, yt) in mats.iter().zip(yts.iter_mut()) {
            m.rows_into(0, x, n, yt);
        }
    } else {
        let per = total_rows.div_ceil(team.threads() * 4).max(1);
        let mut chunks = Vec::new();
        for (k, m) in mats.iter().enumerate() {
            let mut r0 = 0;
            while r0 < m.rows {
                chunks.push((k, r0, (r0 + per).min(m.rows)));
                r0 += per;
            }
        }
        let outs: Vec<OutPtr> = yts.iter_mut().map(|y| OutPtr(y.as_mut_ptr())).collect();
        team.run(chunks.len(), &|i| {
            let (k, r0, r1) = chunks[i];
            // SAFETY: chunk `i` owns rows r0..r1 of matrix k's output, disjoint
            // from every other chunk's, inside `yts[k]`, which outlives `run`.
            let dst = unsafe { std::slice::from_raw_parts_mut(outs[k].at(r0 * n), (r1 - r0) * n) };
            mats[k].rows_into(r0, x, n, dst);
        });
    }
    if n == 1 {
        return Ok(yts);
    }
    Ok(mats
        .iter()
        .zip(yts)
        .map(|(m, yt)| {
            let mut y = vec![0f32; n * m.rows];
            for (r, row) in yt.chunks_exact(n).enumerate() {
                for (c, v) in row.iter().enumerate() {
                    y[c * m.rows + r] = *v;
                }
            }
            y
        })
        .collect())
}

/// The output buffer shared by the chunks of one product (each writes its own rows).
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);

// SAFETY: chunks write disjoint ranges (see `PackedMatrix::matmul`).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    fn at(self, offset: usize) -> *mut f32 {
        // SAFETY: callers stay inside the buffer.
        unsafe { self.0.add(offset) }
    }
}

fn check_cols(cols: usize) -> Result<()> {
    if cols == 0 || !cols.is_multiple_of(BLOCK) {
        return Err(ModelError::Config(format!(
            "a packed matrix needs a column count that is a multiple of {BLOCK}, got {cols}"
        )));
    }
    Ok(())
}

/// The portable kernel for CPUs without AVX-512: the same products in plain
/// loops. Its summation order differs from the SIMD kernel's, but only one of
/// the two runs on a given CPU, and within it every activation row gets the
/// same operations whatever `N` is.
fn scalar_group<const N: usize>(
    m: &PackedMatrix,
    r0: usize,
    x: &[f32],
    c0: usize,
    n: usize,
    out: &mut [f32],
) {
    let nb = m.cols / BLOCK;
    let mut w = [0f32; BLOCK];
    for (r, out_row) in out.chunks_exact_mut(n).enumerate() {
        let row = r0 + r;
        let mut acc = [0f32; N];
        for b in 0..nb {
            let blk = row * nb + b;
            let d = m.scales[blk];
            match m.kind {
                PackedKind::Q4_1 => {
                    let q = &m.quants[blk * 16..blk * 16 + 16];
                    let mn = m.mins[blk];
                    for j in 0..16 {
                        w[j] = (q[j] & 0xF) as f32 * d + mn;
                        w[j + 16] = (q[j] >> 4) as f32 * d + mn;
                    }
                }
                PackedKind::Q8_0 => {
                    let q = &m.quants[blk * 32..blk * 32 + 32];
                    for j in 0..32 {
                        w[j] = q[j] as i8 as f32 * d;
                    }
                }
            }
            for (c, a) in acc.iter_mut().enumerate() {
                let xs = &x[(c0 + c) * m.cols + b * BLOCK..][..BLOCK];
                *a += w.iter().zip(xs).map(|(w, x)| w * x).sum::<f32>();
            }
        }
        for (c, a) in acc.iter().enumerate() {
            out_row[c0 + c] = *a;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    use super::{PackedKind, PackedMatrix, BLOCK};

    /// AVX-512 kernel: for each output row, each block is unpacked to two
    /// 16-lane f32 vectors (`d·q + m`) and fused-multiply-added into the
    /// accumulators of each activation row: four per row (two blocks per
    /// iteration), so consecutive multiply-adds do not wait on each other.
    /// Every activation row gets the same operations whatever `N` is.
    ///
    /// # Safety
    /// Needs AVX-512F. `out` holds whole rows of `n` values for rows starting
    /// at `r0` within the matrix, and `x` holds `n` rows of `m.cols` values.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn group<const N: usize>(
        m: &PackedMatrix,
        r0: usize,
        x: &[f32],
        c0: usize,
        n: usize,
        out: &mut [f32],
    ) {
        let nb = m.cols / BLOCK;
        let rows = out.len() / n;
        debug_assert!(r0 + rows <= m.rows && (c0 + N) * m.cols <= x.len());
        let xp = x.as_ptr().add(c0 * m.cols);
        for r in 0..rows {
            let blk0 = (r0 + r) * nb;
            let mut acc = [[_mm512_setzero_ps(); 4]; N];
            let mut b = 0;
            while b + 2 <= nb {
                let (wl, wh) = unpack(m, blk0 + b);
                let (vl, vh) = unpack(m, blk0 + b + 1);
                for (c, a) in acc.iter_mut().enumerate() {
                    let xb = xp.add(c * m.cols + b * BLOCK);
                    a[0] = _mm512_fmadd_ps(wl, _mm512_loadu_ps(xb), a[0]);
                    a[1] = _mm512_fmadd_ps(wh, _mm512_loadu_ps(xb.add(16)), a[1]);
                    a[2] = _mm512_fmadd_ps(vl, _mm512_loadu_ps(xb.add(32)), a[2]);
                    a[3] = _mm512_fmadd_ps(vh, _mm512_loadu_ps(xb.add(48)), a[3]);
                }
                b += 2;
            }
            if b < nb {
                let (wl, wh) = unpack(m, blk0 + b);
                for (c, a) in acc.iter_mut().enumerate() {
                    let xb = xp.add(c * m.cols + b * BLOCK);
                    a[0] = _mm512_fmadd_ps(wl, _mm512_loadu_ps(xb), a[0]);
                    a[1] = _mm512_fmadd_ps(wh, _mm512_loadu_ps(xb.add(16)), a[1]);
                }
            }
            for (c, a) in acc.iter().enumerate() {
                let s = _mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3]));
                out[r * n + c0 + c] = _mm512_reduce_add_ps(s);
            }
        }
    }

    /// Block `blk` as two f32 vectors: weights 0..16 and 16..32.
    #[inline(always)]
    unsafe fn unpack(m: &PackedMatrix, blk: usize) -> (__m512, __m512) {
        let d = _mm512_set1_ps(*m.scales.get_unchecked(blk));
        match m.kind {
            PackedKind::Q4_1 => {
                let q = m.quants.as_ptr().add(blk * 16) as *const __m128i;
                let bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(q));
                let low = _mm512_and_si512(bytes, _mm512_set1_epi32(0xF));
                let high = _mm512_srli_epi32::<4>(bytes);
                let mn = _mm512_set1_ps(*m.mins.get_unchecked(blk));
                (
                    _mm512_fmadd_ps(_mm512_cvtepi32_ps(low), d, mn),
                    _mm512_fmadd_ps(_mm512_cvtepi32_ps(high), d, mn),
                )
            }
            PackedKind::Q8_0 => {
                let q = m.quants.as_ptr().add(blk * 32) as *const __m128i;
                let low = _mm512_cvtepi8_epi32(_mm_loadu_si128(q));
                let high = _mm512_cvtepi8_epi32(_mm_loadu_si128(q.add(1)));
                (
                    _mm512_mul_ps(_mm512_cvtepi32_ps(low), d),
                    _mm512_mul_ps(_mm512_cvtepi32_ps(high), d),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    fn random(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..rows * cols)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
            })
            .collect()
    }

    /// The packed product equals candle's dequantized weights times f32
    /// activations, for both block types and any number of activation rows.
    #[test]
    fn product_equals_dequantized_f32_matmul() -> Result<()> {
        let (rows, cols) = (37, 96);
        let w = Tensor::from_vec(random(rows, cols, 1), (rows, cols), &Device::Cpu)?;
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q8_0, GgmlDType::F32] {
            let q = QTensor::quantize(&w, dtype)?;
            let p = PackedMatrix::from_qtensor(&q)?;
            let wd = p_dequantized(&p)?;
            for n in [1, 2, 3, 4, 5, 9] {
                let x = random(n, cols, 7 + n as u64);
                let got = p.matmul(&x, n)?;
                let xt = Tensor::from_vec(x.clone(), (n, cols), &Device::Cpu)?;
                let want = xt.matmul(&wd.t()?)?.flatten_all()?.to_vec1::<f32>()?;
                let gap = max_gap(&got, &want);
                assert!(gap < 1e-4, "{dtype:?} n={n}: gap {gap}");
            }
        }
        Ok(())
    }

    /// The file's blocks survive unchanged: rows equal candle's dequantization.
    #[test]
    fn rows_equal_candles_dequantization() -> Result<()> {
        let w = Tensor::from_vec(random(5, 64, 3), (5, 64), &Device::Cpu)?;
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let q = QTensor::quantize(&w, dtype)?;
            let want = q.dequantize(&Device::Cpu)?.to_vec2::<f32>()?;
            let p = PackedMatrix::from_qtensor(&q)?;
            for (r, want_row) in want.iter().enumerate() {
                let got = p.row_f32(r)?;
                let gap = max_gap(&got, want_row);
                assert!(gap < 1e-6, "{dtype:?} row {r}: {gap}");
            }
        }
        Ok(())
    }

    /// A row's result does not depend on how many rows share the call.
    #[test]
    fn batching_never_changes_a_row() -> Result<()> {
        let w = Tensor::from_vec(random(300, 576, 5), (300, 576), &Device::Cpu)?;
        let p = PackedMatrix::from_qtensor(&QTensor::quantize(&w, GgmlDType::Q4_1)?)?;
        let x = random(6, 576, 11);
        let all = p.matmul(&x, 6)?;
        for c in 0..6 {
            let alone = p.matmul(&x[c * 576..(c + 1) * 576], 1)?;
            assert_eq!(alone, all[c * 300..(c + 1) * 300].to_vec(), "row {c}");
        }
        Ok(())
    }

    #[test]
    fn bad_shapes_are_errors() {
        assert!(PackedMatrix::quantize_q8_0(2, 33, &[0.0; 66]).is_err());
        assert!(PackedMatrix::quantize_q8_0(2, 32, &[0.0; 63]).is_err());
        let p = PackedMatrix::quantize_q8_0(2, 32, &[0.5; 64]).unwrap();
        assert!(p.matmul(&[0.0; 31], 1).is_err());
        assert!(p.row_f32(2).is_err());
    }

    fn max_gap(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).fold(0f32, |g, (x, y)| g.max((x - y).abs()))
    }

    fn p_dequantized(p: &PackedMatrix) -> Result<Tensor> {
        let rows: Vec<f32> = (0..p.rows)
            .map(|r| p.row_f32(r))
            .collect::<Result<Vec<_>>>()?
            .concat();
        Ok(Tensor::from_vec(rows, (p.rows, p.cols), &Device::Cpu)?)
    }
}
