//! bf16 products with f32 accumulation for the frozen base weights of training:
//! `c (+)= a · bᵀ` where `a` (activations) and `b` (weights) are bf16 matrices whose rows
//! are the reduction dimension.
//!
//! Why bf16: the frozen projections are most of a LoRA step's FLOPs, and AVX512_BF16's
//! `vdpbf16ps` does 32 multiply-adds per instruction against the 16 of an f32 FMA, on
//! operands half the size (PyTorch's bf16 autocast gets its CPU speed the same way,
//! through oneDNN). The LoRA matrices, their gradients and AdamW stay f32 elsewhere.
//!
//! Why one "dot" layout (`a·bᵀ`, both row-major over k): `vdpbf16ps` multiplies
//! neighbouring pairs along the reduction dimension, which row-major rows already are, so
//! a weight needs no VNNI repacking: the forward `x·Wᵀ` reads `W` as stored and the
//! backward `dy·W` reads `Wᵀ`, laid out a panel at a time ([`super::bf16_product`]).
//! Rows are zero-padded to a multiple of 32 elements so the kernel never has a k tail.
//!
//! Blocking: a tile of `MR×NR` outputs keeps `MR·NR` accumulators in zmm registers over
//! the whole reduction (one horizontal sum per output at the end); `NB` weight rows are
//! walked by every group of `MR` activation rows while they sit in L2, the scheme oneDNN's
//! brgemm uses for small-batch inner products. Rows of `c` are split across threads.

use super::kernel::par_rows;

/// Elements per zmm register of bf16; rows are padded to a multiple of this.
pub(crate) const K_ALIGN: usize = 32;
/// Activation rows per tile.
const MR: usize = 4;
/// Weight rows per tile.
const NR: usize = 4;
/// Weight rows walked per pass over a group of activation rows (kept in L2: 64 rows of
/// 4864 bf16 are 620 KB).
const NB: usize = 64;

/// Round-to-nearest-even f32 → bf16 (the rounding of `vcvtne2ps2bf16` and of PyTorch's
/// `.to(torch.bfloat16)`); NaN stays NaN.
#[inline(always)]
pub(crate) fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    let round = 0x7FFF + ((bits >> 16) & 1);
    (bits.wrapping_add(round) >> 16) as u16
}

/// bf16 → f32 (exact).
#[inline(always)]
pub(crate) fn from_bf16(x: u16) -> f32 {
    f32::from_bits((x as u32) << 16)
}

/// A row-major bf16 matrix whose rows are padded with zeros to `stride` (a multiple of
/// [`K_ALIGN`]) elements.
#[derive(Debug, Clone)]
pub(crate) struct Bf16Matrix {
    pub rows: usize,
    /// Logical row length (the reduction length of a product).
    pub cols: usize,
    pub stride: usize,
    pub data: Vec<u16>,
}

/// A borrowed bf16 matrix in [`Bf16Matrix`]'s layout (rows of `stride` elements, zero
/// past `cols`): what the row kernels read, so a weight whose rows already have that
/// layout is multiplied in place, without a copy.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bf16View<'a> {
    pub rows: usize,
    pub cols: usize,
    pub stride: usize,
    pub data: &'a [u16],
}

impl Bf16View<'_> {
    fn row(&self, i: usize) -> &[u16] {
        &self.data[i * self.stride..(i + 1) * self.stride]
    }
}

impl Bf16Matrix {
    /// The matrix as a [`Bf16View`].
    pub fn view(&self) -> Bf16View<'_> {
        Bf16View {
            rows: self.rows,
            cols: self.cols,
            stride: self.stride,
            data: &self.data,
        }
    }

    /// `src` (row-major `[rows, cols]`), rounded to bf16. The storage holds whole
    /// groups of 32 rows (zeros past `rows`), which AMX tiles read as a unit.
    pub fn from_f32(src: &[f32], rows: usize, cols: usize) -> Self {
        Self::from_f32_in(src, rows, cols, Vec::new())
    }

    /// [`Self::from_f32`] in `data`'s storage (a buffer a caller reuses across products).
    pub fn from_f32_in(src: &[f32], rows: usize, cols: usize, mut data: Vec<u16>) -> Self {
        assert_eq!(src.len(), rows * cols, "Bf16Matrix::from_f32 shape");
        let stride = cols.div_ceil(K_ALIGN) * K_ALIGN;
        data.clear();
        data.resize(rows.div_ceil(32) * 32 * stride, 0);
        for (d, s) in data
            .chunks_exact_mut(stride.max(1))
            .zip(src.chunks_exact(cols.max(1)))
        {
            d.iter_mut().zip(s).for_each(|(d, &s)| *d = to_bf16(s));
        }
        Self {
            rows,
            cols,
            stride,
            data,
        }
    }

    #[cfg(test)]
    fn row(&self, i: usize) -> &[u16] {
        &self.data[i * self.stride..(i + 1) * self.stride]
    }
}

/// Which implementation runs a bf16 product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bf16Kernel {
    /// AMX-BF16 tiles (`tdpbf16ps`, [`super::amx`]) on weights packed for them.
    Amx,
    /// `vdpbf16ps` (AVX512_BF16 with AVX512F).
    Avx512Bf16,
    /// bf16 operands widened to f32 and multiplied in plain Rust: the same products on
    /// any CPU, slowly (the reference the SIMD path is tested against).
    Portable,
}

impl Bf16Kernel {
    /// The fastest kernel this CPU runs.
    pub fn detect() -> Self {
        [Self::Amx, Self::Avx512Bf16]
            .into_iter()
            .find(|k| k.available())
            .unwrap_or(Self::Portable)
    }

    /// Whether this CPU can run the kernel.
    pub fn available(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Self::Avx512Bf16 => {
                is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")
            }
            #[cfg(not(target_arch = "x86_64"))]
            Self::Avx512Bf16 => false,
            Self::Amx => super::cpu::amx_available(),
            Self::Portable => true,
        }
    }

    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Amx => "amx_bf16",
            Self::Avx512Bf16 => "avx512_bf16",
            Self::Portable => "bf16-portable",
        }
    }
}

/// `c = a · bᵀ` (`c +=` when `acc`) with `a: [m, k]`, `b: [n, k]` and `c` row-major
/// `[m, n]`, on `kernel` (which must be [`Bf16Kernel::available`]; the portable kernel
/// is used otherwise). `parallel` splits the rows of `c` across threads.
#[cfg(test)]
pub(crate) fn matmul_nt(
    c: &mut [f32],
    a: &Bf16Matrix,
    b: &Bf16Matrix,
    acc: bool,
    kernel: Bf16Kernel,
    parallel: bool,
) {
    matmul_nt_into((c, b.rows, 0), a, b.view(), acc, kernel, parallel);
}

/// [`matmul_nt`] into columns `col0..col0 + b.rows` of a wider row-major `c` with
/// `ldc` columns (`c: [a.rows, ldc]`): a product by one panel of a weight's rows writes
/// straight into the whole output, with no panel buffer to allocate and scatter.
pub(crate) fn matmul_nt_into(
    (c, ldc, col0): (&mut [f32], usize, usize),
    a: &Bf16Matrix,
    b: Bf16View,
    acc: bool,
    kernel: Bf16Kernel,
    parallel: bool,
) {
    let a = a.view();
    let (m, n) = (a.rows, b.rows);
    assert!(
        a.cols == b.cols && a.stride == b.stride,
        "matmul_nt: k differs"
    );
    assert!(col0 + n <= ldc, "matmul_nt: columns past ldc");
    assert_eq!(c.len(), m * ldc, "matmul_nt: c has the wrong size");
    if m == 0 || n == 0 {
        return;
    }
    // This is the row-by-row layout; AMX needs packed weights (`amx::matmul_nt`), so
    // here it stands for the best row kernel.
    let kernel = match kernel {
        Bf16Kernel::Amx => Bf16Kernel::Avx512Bf16,
        k => k,
    };
    let kernel = if kernel.available() {
        kernel
    } else {
        Bf16Kernel::Portable
    };
    let run = |row0: usize, chunk: &mut [f32]| {
        let rows = chunk.len() / ldc;
        for j0 in (0..n).step_by(NB) {
            let j1 = (j0 + NB).min(n);
            for i0 in (0..rows).step_by(MR) {
                let mr = MR.min(rows - i0);
                for jt in (j0..j1).step_by(NR) {
                    let nr = NR.min(j1 - jt);
                    let out = Out {
                        c: &mut chunk[i0 * ldc..],
                        ldc,
                        col: col0 + jt,
                        acc,
                    };
                    tile(kernel, (&a, row0 + i0, mr), (&b, jt, nr), out);
                }
            }
        }
    };
    if parallel {
        // Whole groups of MR rows per thread keep the tiles full.
        par_rows(c, ldc * MR, a.stride * n, |g0, chunk| run(g0 * MR, chunk));
    } else {
        run(0, c);
    }
}

/// Where a tile writes: rows of `c` from its start with stride `ldc`, columns from `col`.
struct Out<'a> {
    c: &'a mut [f32],
    ldc: usize,
    col: usize,
    acc: bool,
}

impl Out<'_> {
    fn put(&mut self, i: usize, j: usize, v: f32) {
        let o = &mut self.c[i * self.ldc + self.col + j];
        *o = if self.acc { *o + v } else { v };
    }
}

/// One `mr × nr` tile: rows `a0..a0+mr` of `a` against rows `b0..b0+nr` of `b`.
fn tile(
    kernel: Bf16Kernel,
    (a, a0, mr): (&Bf16View, usize, usize),
    (b, b0, nr): (&Bf16View, usize, usize),
    mut out: Out,
) {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Bf16Kernel::Avx512Bf16 => {
            // SAFETY: `matmul_nt` checked that the CPU has AVX512F and AVX512_BF16; the
            // rows exist and are `stride` (a multiple of 32) elements long.
            unsafe { avx512::tile_dispatch(a, a0, mr, b, b0, nr, &mut out) }
        }
        _ => {
            for i in 0..mr {
                for j in 0..nr {
                    let v = dot_portable(a.row(a0 + i), b.row(b0 + j));
                    out.put(i, j, v);
                }
            }
        }
    }
}

/// `Σ a_i·b_i` of bf16 rows, widened to f32, in 16 lanes so the loop vectorizes.
fn dot_portable(a: &[u16], b: &[u16]) -> f32 {
    let mut lanes = [0f32; 16];
    for (ca, cb) in a.chunks_exact(16).zip(b.chunks_exact(16)) {
        for l in 0..16 {
            lanes[l] += from_bf16(ca[l]) * from_bf16(cb[l]);
        }
    }
    lanes.iter().sum()
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Bf16View, Out, MR, NR};
    use std::arch::x86_64::*;

    /// Picks the monomorphized tile for `mr × nr` (edges of the matrices are smaller).
    ///
    /// # Safety
    /// The CPU must have AVX512F and AVX512_BF16.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn tile_dispatch(
        a: &Bf16View,
        a0: usize,
        mr: usize,
        b: &Bf16View,
        b0: usize,
        nr: usize,
        out: &mut Out,
    ) {
        let pa = a.data.as_ptr().add(a0 * a.stride);
        let pb = b.data.as_ptr().add(b0 * b.stride);
        let (s, k) = (a.stride, a.stride);
        match (mr, nr) {
            (MR, NR) => tile::<MR, NR>(pa, pb, s, k, out),
            (MR, 3) => tile::<MR, 3>(pa, pb, s, k, out),
            (MR, 2) => tile::<MR, 2>(pa, pb, s, k, out),
            (MR, 1) => tile::<MR, 1>(pa, pb, s, k, out),
            (_, _) => {
                // Row edge: one activation row at a time against the same columns.
                for i in 0..mr {
                    let pa = pa.add(i * s);
                    let mut one = Out {
                        c: &mut out.c[i * out.ldc..],
                        ldc: out.ldc,
                        col: out.col,
                        acc: out.acc,
                    };
                    match nr {
                        4 => tile::<1, 4>(pa, pb, s, k, &mut one),
                        3 => tile::<1, 3>(pa, pb, s, k, &mut one),
                        2 => tile::<1, 2>(pa, pb, s, k, &mut one),
                        _ => tile::<1, 1>(pa, pb, s, k, &mut one),
                    }
                }
            }
        }
    }

    /// `M × N` dot products of bf16 rows of length `k` (a multiple of 32) with row
    /// stride `s`, each accumulated in one zmm and summed horizontally at the end.
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[inline]
    unsafe fn tile<const M: usize, const N: usize>(
        pa: *const u16,
        pb: *const u16,
        s: usize,
        k: usize,
        out: &mut Out,
    ) {
        let mut acc = [[_mm512_setzero_ps(); N]; M];
        let mut kk = 0;
        while kk < k {
            let mut av = [_mm512_setzero_si512(); M];
            for (i, v) in av.iter_mut().enumerate() {
                *v = _mm512_loadu_si512(pa.add(i * s + kk) as *const _);
            }
            for j in 0..N {
                let bv: __m512bh =
                    std::mem::transmute(_mm512_loadu_si512(pb.add(j * s + kk) as *const _));
                for (row, &a) in acc.iter_mut().zip(av.iter()) {
                    let a: __m512bh = std::mem::transmute(a);
                    row[j] = _mm512_dpbf16_ps(row[j], a, bv);
                }
            }
            kk += 32;
        }
        for (i, row) in acc.iter().enumerate() {
            if N == 4 {
                let mut sums = [0f32; 4];
                _mm_storeu_ps(sums.as_mut_ptr(), sum4(row[0], row[1], row[2], row[3]));
                sums.iter().enumerate().for_each(|(j, &v)| out.put(i, j, v));
            } else {
                for (j, v) in row.iter().enumerate() {
                    out.put(i, j, _mm512_reduce_add_ps(*v));
                }
            }
        }
    }

    /// The horizontal sums of four vectors at once, `[Σa, Σb, Σc, Σd]`: two rounds of
    /// interleave-and-add within 128-bit lanes, then the four lanes (about a third of
    /// the instructions of four separate reductions, which showed on short rows).
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn sum4(a: __m512, b: __m512, c: __m512, d: __m512) -> __m128 {
        let ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
        let cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
        let (ab, cd) = (_mm512_castps_pd(ab), _mm512_castps_pd(cd));
        let s = _mm512_add_ps(
            _mm512_castpd_ps(_mm512_unpacklo_pd(ab, cd)),
            _mm512_castpd_ps(_mm512_unpackhi_pd(ab, cd)),
        );
        let s = _mm512_add_ps(s, _mm512_shuffle_f32x4::<0b01_00_11_10>(s, s));
        let s = _mm512_add_ps(s, _mm512_shuffle_f32x4::<0b10_11_00_01>(s, s));
        _mm512_castps512_ps128(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let h = (i as u32 ^ seed).wrapping_mul(2_654_435_761) >> 8;
                (h % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    /// `a·bᵀ` in f64 over the f32 inputs, and the bound `Σ|a_i·b_i|` per output.
    fn reference(a: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> (Vec<f64>, Vec<f64>) {
        let mut c = vec![0f64; m * n];
        let mut mag = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                for p in 0..k {
                    let v = a[i * k + p] as f64 * b[j * k + p] as f64;
                    c[i * n + j] += v;
                    mag[i * n + j] += v.abs();
                }
            }
        }
        (c, mag)
    }

    #[test]
    fn bf16_rounding_is_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3F80);
        assert_eq!(from_bf16(to_bf16(-2.5)), -2.5);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1).
        assert_eq!(to_bf16(1.0 + 1.0 / 256.0), 0x3F80);
        // 1 + 3·2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: even is 1 + 2^-6.
        assert_eq!(to_bf16(1.0 + 3.0 / 256.0), 0x3F82);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        assert_eq!(from_bf16(to_bf16(f32::INFINITY)), f32::INFINITY);
    }

    #[test]
    fn rows_are_padded_with_zeros() {
        let (r, c) = (70, 45);
        let x = data(r * c, 3);
        let n = Bf16Matrix::from_f32(&x, r, c);
        assert_eq!(
            (n.rows, n.cols, n.stride, n.data.len()),
            (70, 45, 64, 96 * 64)
        );
        for i in 0..r {
            assert_eq!(
                n.row(i)[..c],
                x[i * c..(i + 1) * c]
                    .iter()
                    .map(|&v| to_bf16(v))
                    .collect::<Vec<_>>()[..]
            );
            assert!(n.row(i)[c..].iter().all(|&p| p == 0), "padding is zero");
        }
    }

    /// Every kernel this CPU runs, on shapes with row, column and k edges, against the
    /// f64 product of the unrounded inputs: bf16 keeps 8 significant bits, so each
    /// product is off by at most about 2·2^-9 relative, bounded by `Σ|a_i·b_i|`.
    #[test]
    fn every_available_kernel_matches_the_f32_product() {
        for kernel in [Bf16Kernel::Avx512Bf16, Bf16Kernel::Portable] {
            if !kernel.available() {
                eprintln!("skipping {}: not supported by this CPU", kernel.name());
                continue;
            }
            for &(m, n, k) in &[(1, 1, 1), (5, 7, 33), (9, 130, 96), (17, 67, 200)] {
                let (x, w) = (data(m * k, 1), data(n * k, 2));
                let (a, b) = (
                    Bf16Matrix::from_f32(&x, m, k),
                    Bf16Matrix::from_f32(&w, n, k),
                );
                let (want, mag) = reference(&x, &w, m, n, k);
                for (acc, parallel) in [(false, false), (true, true)] {
                    let mut c = vec![0.5f32; m * n];
                    matmul_nt(&mut c, &a, &b, acc, kernel, parallel);
                    for i in 0..m * n {
                        let base = if acc { 0.5 } else { 0.0 };
                        let err = (c[i] as f64 - base - want[i]).abs();
                        assert!(
                            err <= 8e-3 * mag[i] + 1e-6,
                            "{} {m}x{n}x{k} [{i}]: {} vs {} (mag {})",
                            kernel.name(),
                            c[i],
                            want[i],
                            mag[i]
                        );
                    }
                }
            }
        }
    }

    /// The SIMD kernel and the portable one compute the same products of the same
    /// rounded operands, up to f32 summation order.
    #[test]
    fn avx512_bf16_kernel_matches_the_portable_kernel() {
        if !Bf16Kernel::Avx512Bf16.available() {
            eprintln!("skipping: this CPU has no AVX512_BF16");
            return;
        }
        let (m, n, k) = (13, 70, 576);
        let a = Bf16Matrix::from_f32(&data(m * k, 5), m, k);
        let b = Bf16Matrix::from_f32(&data(n * k, 6), n, k);
        let mut simd = vec![0f32; m * n];
        let mut portable = vec![0f32; m * n];
        matmul_nt(&mut simd, &a, &b, false, Bf16Kernel::Avx512Bf16, true);
        matmul_nt(&mut portable, &a, &b, false, Bf16Kernel::Portable, false);
        for (s, p) in simd.iter().zip(&portable) {
            assert!((s - p).abs() <= 1e-4 * (1.0 + p.abs()), "{s} vs {p}");
        }
    }

    #[test]
    fn detection_picks_the_best_available_kernel() {
        let k = Bf16Kernel::detect();
        assert!(k.available());
        let expected = if super::super::cpu::amx_available() {
            Bf16Kernel::Amx
        } else if Bf16Kernel::Avx512Bf16.available() {
            Bf16Kernel::Avx512Bf16
        } else {
            Bf16Kernel::Portable
        };
        assert_eq!(k, expected);
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            Bf16Kernel::Avx512Bf16.available(),
            is_x86_feature_detected!("avx512bf16") && is_x86_feature_detected!("avx512f")
        );
    }
}
