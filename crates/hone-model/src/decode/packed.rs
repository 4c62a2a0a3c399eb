//! Quantized weight matrices in ggml's block layouts, multiplied with f32
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
//! The kinds a GGUF file uses for its linears (Q4_1, Q5_0, Q8_0, and the
//! K-quants Q4_K, Q5_K, Q6_K of Q4_K_M files) are kept as stored, so their
//! products equal the file's dequantized weights times f32 activations. Other
//! types (Q4_0, Q5_1, Q2_K, Q3_K, Q8_K, F16, BF16, F32) are dequantized and
//! re-quantized to Q8_0 at load. The block formats are in [`super::kquant`],
//! the SIMD kernels in [`super::kquant_simd`].

use candle_core::quantized::QTensor;

use super::kquant::{self, Blocks};
pub use super::kquant::{PackedKind, UNIT};
#[cfg(target_arch = "x86_64")]
use super::kquant_simd;
use super::q8::{self, Activations, Q8Kernel, Q8Rows};
#[cfg(target_arch = "x86_64")]
use super::q8_simd;
use super::team;
use crate::error::{ModelError, Result};

/// Multiply-adds below which a product runs on the calling thread: splitting
/// smaller ones costs more in hand-over than it saves.
const PARALLEL_MIN_MACS: usize = 200_000;

/// Output rows multiplied by every group of (up to four) activation rows
/// before the next rows: with more than four activation rows, the later
/// groups then read these weight rows from L1 instead of memory, so a batched
/// step of 8 rows streams each weight (the LM head's 150 MB on Qwen2.5) once,
/// not twice. Measured in docs/benchmarks.md ("Batched decode").
const ROW_BLOCK: usize = 16;

/// A `[rows, cols]` weight matrix (HF layout `[out, in]`) of quantized blocks.
#[derive(Debug, Clone)]
pub struct PackedMatrix {
    rows: usize,
    cols: usize,
    blocks: Blocks,
    /// What [`Self::matmul`] multiplies with when neither the thread nor the
    /// process chose (see [`Activations`]; a model's loader sets it).
    activations: Activations,
}

impl PackedMatrix {
    /// Takes a candle quantized tensor `[rows, cols]`: blocks of a type with a
    /// [`PackedKind`] are kept as they are; any other type is dequantized and
    /// re-quantized to Q8_0.
    pub fn from_qtensor(q: &QTensor) -> Result<Self> {
        let (rows, cols) = q.shape().dims2()?;
        match PackedKind::from_ggml(q.dtype()) {
            Some(kind) => Self::from_ggml_blocks(kind, rows, cols, &q.data()?),
            None => {
                check_cols(PackedKind::Q8_0, cols)?;
                let w = q.dequantize(&candle_core::Device::Cpu)?;
                Self::quantize_q8_0(rows, cols, &w.flatten_all()?.to_vec1::<f32>()?)
            }
        }
    }

    /// Parses ggml's block bytes of a `[rows, cols]` matrix of `kind`.
    pub fn from_ggml_blocks(
        kind: PackedKind,
        rows: usize,
        cols: usize,
        data: &[u8],
    ) -> Result<Self> {
        check_cols(kind, cols)?;
        let mut m = Self::empty(kind, rows, cols);
        kquant::parse_blocks(&mut m.blocks, rows * cols, data)?;
        Ok(m)
    }

    /// Quantizes f32 weights `[rows, cols]` to Q8_0 (ggml's rule: `d = max|w| / 127`).
    pub fn quantize_q8_0(rows: usize, cols: usize, w: &[f32]) -> Result<Self> {
        check_cols(PackedKind::Q8_0, cols)?;
        if w.len() != rows * cols {
            return Err(ModelError::Config(format!(
                "{} weights do not fill a [{rows}, {cols}] matrix",
                w.len()
            )));
        }
        let mut m = Self::empty(PackedKind::Q8_0, rows, cols);
        for block in w.chunks_exact(UNIT) {
            let amax = block.iter().fold(0f32, |a, x| a.max(x.abs()));
            let d = amax / 127.0;
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            // Stored as f16, quantized with the f32 `d` (ggml's `quantize_row_q8_0`).
            m.blocks.scales.push(half::f16::from_f32(d));
            m.blocks.quants.extend(
                block
                    .iter()
                    .map(|x| (x * inv).round().clamp(-127.0, 127.0) as i8 as u8),
            );
        }
        m.blocks.seal();
        Ok(m)
    }

    fn empty(kind: PackedKind, rows: usize, cols: usize) -> Self {
        Self {
            rows,
            cols,
            blocks: Blocks::with_capacity(kind, rows * cols),
            activations: Activations::fastest_on_this_cpu(),
        }
    }

    pub fn kind(&self) -> PackedKind {
        self.blocks.kind
    }

    /// `(rows, cols)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// The blocks, for the tests that check the kernels' unpacking.
    #[cfg(test)]
    pub(super) fn blocks(&self) -> &Blocks {
        &self.blocks
    }

    /// Bytes held (quants and scales).
    pub fn bytes(&self) -> usize {
        self.blocks.bytes()
    }

    /// Row `r` as f32 (an embedding lookup).
    pub fn row_f32(&self, r: usize) -> Result<Vec<f32>> {
        if r >= self.rows {
            return Err(ModelError::Generation(format!(
                "row {r} of a matrix with {} rows",
                self.rows
            )));
        }
        let nu = self.cols / UNIT;
        let mut out = Vec::with_capacity(self.cols);
        let mut w = [0f32; UNIT];
        for u in r * nu..(r + 1) * nu {
            kquant::unit_f32(&self.blocks, u, &mut w);
            out.extend_from_slice(&w);
        }
        Ok(out)
    }

    /// `y = x·Wᵀ` for `n` activation rows `x: [n, cols]`; returns `[n, rows]`.
    /// Output rows are split over the decode team's threads when the product is large.
    pub fn matmul(&self, x: &[f32], n: usize) -> Result<Vec<f32>> {
        let act = Activations::chosen().unwrap_or_else(|| self.default_activations());
        self.matmul_with(x, n, act)
    }

    /// The activations this matrix multiplies with unless the thread or the
    /// process chose: the fastest on this CPU unless set (a model's loader sets
    /// f32 for a model with Q4_1 layers; [`Activations`] says why).
    pub fn default_activations(&self) -> Activations {
        self.activations
    }

    /// Sets [`Self::default_activations`].
    pub fn set_default_activations(&mut self, act: Activations) {
        self.activations = act;
    }

    /// [`Self::matmul`] with the activations' precision chosen by the caller.
    pub fn matmul_with(&self, x: &[f32], n: usize, act: Activations) -> Result<Vec<f32>> {
        let mut ys = matmul_many_with(&[self], x, n, act)?;
        Ok(ys.pop().unwrap_or_default())
    }

    /// As [`Self::rows_into`] with activations quantized to 8 bits
    /// ([`super::q8`]), four activation rows per kernel call.
    pub(crate) fn rows_into_q8(&self, k: Q8Kernel, r0: usize, xq: &Q8Rows, out: &mut [f32]) {
        if k == Q8Kernel::Scalar {
            return q8::rows_scalar(&self.blocks, self.cols, xq, r0, out);
        }
        for (b, block) in out.chunks_mut(ROW_BLOCK * xq.n).enumerate() {
            self.block_q8(k, r0 + b * ROW_BLOCK, xq, block);
        }
    }

    /// [`Self::rows_into_q8`] for one block of at most [`ROW_BLOCK`] output rows.
    fn block_q8(&self, k: Q8Kernel, r0: usize, xq: &Q8Rows, out: &mut [f32]) {
        let mut c0 = 0;
        while c0 < xq.n {
            let group = (xq.n - c0).min(4);
            match group {
                1 => self.group_q8::<1>(k, r0, xq, c0, out),
                2 => self.group_q8::<2>(k, r0, xq, c0, out),
                3 => self.group_q8::<3>(k, r0, xq, c0, out),
                _ => self.group_q8::<4>(k, r0, xq, c0, out),
            }
            c0 += group;
        }
    }

    fn group_q8<const N: usize>(
        &self,
        k: Q8Kernel,
        r0: usize,
        xq: &Q8Rows,
        c0: usize,
        out: &mut [f32],
    ) {
        let (b, cols) = (&self.blocks, self.cols);
        match k {
            // SAFETY: the kernels exist only on CPUs with their features
            // (`Q8Kernel::available`); their indexing stays within the slices.
            #[cfg(target_arch = "x86_64")]
            Q8Kernel::Vnni512 => kquant::with_kind!(b.kind, K => unsafe {
                q8_simd::group_vnni::<N, K>(b, cols, xq, c0, r0, out)
            }),
            #[cfg(target_arch = "x86_64")]
            Q8Kernel::Avx2 => kquant::with_kind!(b.kind, K => unsafe {
                q8_simd::group_avx2::<N, K>(b, cols, xq, c0, r0, out)
            }),
            _ => q8::rows_scalar(b, cols, xq, r0, out),
        }
    }

    /// Output rows `r0..r0 + out.len()/n` into `out: [rows, n]`, four
    /// activation rows per kernel call (each weight block is unpacked once
    /// per four). Every activation row gets the same arithmetic whatever `n`
    /// is, so batching never changes a result.
    pub(crate) fn rows_into(&self, k: Kernel, r0: usize, x: &[f32], n: usize, out: &mut [f32]) {
        for (b, block) in out.chunks_mut(ROW_BLOCK * n).enumerate() {
            self.block_into(k, r0 + b * ROW_BLOCK, x, n, block);
        }
    }

    /// [`Self::rows_into`] for one block of at most [`ROW_BLOCK`] output rows.
    fn block_into(&self, k: Kernel, r0: usize, x: &[f32], n: usize, out: &mut [f32]) {
        let mut c0 = 0;
        while c0 < n {
            let group = (n - c0).min(4);
            match group {
                1 => self.group::<1>(k, r0, x, c0, n, out),
                2 => self.group::<2>(k, r0, x, c0, n, out),
                3 => self.group::<3>(k, r0, x, c0, n, out),
                _ => self.group::<4>(k, r0, x, c0, n, out),
            }
            c0 += group;
        }
    }

    fn group<const N: usize>(
        &self,
        k: Kernel,
        r0: usize,
        x: &[f32],
        c0: usize,
        n: usize,
        out: &mut [f32],
    ) {
        match k {
            // SAFETY: `Kernel::Avx512` and `Kernel::Avx2` exist only on CPUs
            // with those features (`Kernel::available`); the kernels' indexing
            // stays within the slices (see `kquant_simd`).
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => kquant::with_kind!(self.blocks.kind, K => unsafe {
                kquant_simd::group512::<N, K>(&self.blocks, self.cols, x, c0, n, r0, out)
            }),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => kquant::with_kind!(self.blocks.kind, K => unsafe {
                kquant_simd::group256::<N, K>(&self.blocks, self.cols, x, c0, n, r0, out)
            }),
            _ => scalar_group::<N>(self, r0, x, c0, n, out),
        }
    }
}

/// A kernel for the packed products. Which ones a CPU can run is checked at
/// run time, so one binary serves CPUs with and without AVX-512.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kernel {
    Avx512,
    Avx2,
    Scalar,
}

impl Kernel {
    /// The fastest kernel this CPU runs.
    pub(crate) fn best() -> Self {
        Self::available()[0]
    }

    /// Every kernel this CPU runs, fastest first (the tests check each).
    pub(crate) fn available() -> Vec<Self> {
        let mut ks = Vec::with_capacity(3);
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx2")
            {
                ks.push(Kernel::Avx512);
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")
            {
                ks.push(Kernel::Avx2);
            }
        }
        ks.push(Kernel::Scalar);
        ks
    }
}

/// `x·Wᵀ` for several matrices with the same input width (e.g. a layer's
/// q, k and v projections) as one job for the team, which then hands work
/// out once instead of once per matrix. Returns one `[n, rows]` per matrix.
/// The activations are multiplied as [`Activations::chosen`] says, else as the
/// matrices' [`PackedMatrix::default_activations`] do (f32 if any says f32).
pub fn matmul_many(mats: &[&PackedMatrix], x: &[f32], n: usize) -> Result<Vec<Vec<f32>>> {
    let act = Activations::chosen().unwrap_or_else(|| {
        // One choice for the group, which shares its quantized activations.
        if mats.iter().all(|m| m.activations == Activations::Q8) {
            Activations::Q8
        } else {
            Activations::F32
        }
    });
    matmul_many_with(mats, x, n, act)
}

/// [`matmul_many`] with the activations' precision chosen by the caller.
pub fn matmul_many_with(
    mats: &[&PackedMatrix],
    x: &[f32],
    n: usize,
    act: Activations,
) -> Result<Vec<Vec<f32>>> {
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
    let mut ys: Vec<Vec<f32>> = mats.iter().map(|m| vec![0f32; n * m.rows]).collect();
    let total_rows: usize = mats.iter().map(|m| m.rows).sum();
    let team = team::global();
    let k = Kernel::best();
    // Quantized once for the whole group (e.g. q, k and v share it).
    let (xq, qk) = match act {
        Activations::Q8 => (Some(Q8Rows::quantize(x, n, cols)), Q8Kernel::best()),
        Activations::F32 => (None, Q8Kernel::Scalar),
    };
    let outs: Vec<OutPtr> = ys.iter_mut().map(|y| OutPtr(y.as_mut_ptr())).collect();
    // Rows r0..r1 of matrix `m` into its `[n, rows]` output.
    let rows_into = |m: usize, r0: usize, r1: usize| {
        let mat = mats[m];
        let product = |dst: &mut [f32]| match &xq {
            Some(xq) => mat.rows_into_q8(qk, r0, xq, dst),
            None => mat.rows_into(k, r0, x, n, dst),
        };
        if n == 1 {
            // SAFETY: rows r0..r1 of a one-row output are this call's own
            // (chunks are disjoint), inside `ys[m]`, which outlives the calls.
            product(unsafe { std::slice::from_raw_parts_mut(outs[m].at(r0), r1 - r0) });
            return;
        }
        // The kernels write `[rows, n]`; each chunk moves its own rows into
        // the `[n, rows]` output, on its own thread rather than in a serial
        // transpose after the product.
        SCRATCH.with_borrow_mut(|t| {
            let len = (r1 - r0) * n;
            if t.len() < len {
                t.resize(len, 0.0);
            }
            // Every kernel assigns each output, so the buffer is not cleared.
            let t = &mut t[..len];
            product(t);
            for (i, row) in t.chunks_exact(n).enumerate() {
                for (c, v) in row.iter().enumerate() {
                    // SAFETY: position (c, r0 + i) belongs to this chunk only,
                    // inside `ys[m]` (`n * rows` values).
                    unsafe { *outs[m].at(c * mat.rows + r0 + i) = *v };
                }
            }
        });
    };
    if team.threads() <= 1 || total_rows * cols * n < PARALLEL_MIN_MACS {
        for (m, mat) in mats.iter().enumerate() {
            rows_into(m, 0, mat.rows);
        }
    } else {
        let per = total_rows.div_ceil(team.threads() * 4).max(1);
        let mut chunks = Vec::new();
        for (m, mat) in mats.iter().enumerate() {
            let mut r0 = 0;
            while r0 < mat.rows {
                chunks.push((m, r0, (r0 + per).min(mat.rows)));
                r0 += per;
            }
        }
        team.run(chunks.len(), &|i| {
            let (m, r0, r1) = chunks[i];
            rows_into(m, r0, r1);
        });
    }
    Ok(ys)
}

thread_local! {
    /// A chunk's `[rows, n]` products before they move into the `[n, rows]`
    /// output (kept per thread: a step runs hundreds of products).
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
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

fn check_cols(kind: PackedKind, cols: usize) -> Result<()> {
    let per = kind.block_weights();
    if cols == 0 || !cols.is_multiple_of(per) {
        return Err(ModelError::Config(format!(
            "a packed {kind:?} matrix needs a column count that is a multiple of {per}, got {cols}"
        )));
    }
    Ok(())
}

/// The portable kernel for CPUs without AVX2: the same products in plain
/// loops, on weights dequantized by [`kquant::unit_f32`]. Its summation order
/// differs from the SIMD kernels', but only one kernel runs on a given CPU,
/// and within it every activation row gets the same operations whatever `N` is.
fn scalar_group<const N: usize>(
    m: &PackedMatrix,
    r0: usize,
    x: &[f32],
    c0: usize,
    n: usize,
    out: &mut [f32],
) {
    let nu = m.cols / UNIT;
    let mut w = [0f32; UNIT];
    for (r, out_row) in out.chunks_exact_mut(n).enumerate() {
        let row = r0 + r;
        let mut acc = [0f32; N];
        for u in 0..nu {
            kquant::unit_f32(&m.blocks, row * nu + u, &mut w);
            for (c, a) in acc.iter_mut().enumerate() {
                let xs = &x[(c0 + c) * m.cols + u * UNIT..][..UNIT];
                *a += w.iter().zip(xs).map(|(w, x)| w * x).sum::<f32>();
            }
        }
        for (c, a) in acc.iter().enumerate() {
            out_row[c0 + c] = *a;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::GgmlDType;
    use candle_core::{Device, Tensor};

    fn random(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
        crate::testing::lcg_uniform(seed, rows * cols)
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
                let got = p.matmul_with(&x, n, Activations::F32)?;
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
