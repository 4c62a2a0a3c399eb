//! The backward product of a frozen bf16 weight on AVX512_BF16, `dx = dy·W`, with `W`'s
//! rows interleaved in pairs (the "VNNI" layout) and `dy` broadcast a pair at a time.
//!
//! Why not the dot kernel of [`super::bf16`]: it wants the reduction dimension along
//! rows, which for `dy·W` is `Wᵀ`, so the weight was transposed per panel, and each
//! output then ended in a horizontal sum. Measured on a Zen 4 (AVX512_BF16, no AMX) the
//! backward ran at 0.4–0.6 of the forward's rate: worst where the reduction is short
//! (Qwen's k/v projections, 128) or far too long for the caches (the LM head's 151936).
//!
//! Here `vdpbf16ps` multiplies one broadcast pair `(dy[i,2q], dy[i,2q+1])` by sixteen
//! output columns' pairs `(W[2q,j], W[2q+1,j])` at once, so the accumulators are whole
//! rows of `dx` (no horizontal sums), and laying the weight out is a zip of two rows
//! (no transpose). The reduction is cut into blocks of [`KC`] pairs so a block of
//! packed weight stays in L2 while every row tile walks it; each thread owns a range of
//! output columns (its own packing, no sharing), and within a thread the reduction
//! order of every output is fixed: products do not depend on the thread count.

use super::bf16::Bf16Matrix;
use super::bf16_product::Bf16Rows;

/// Rows of `dy` per tile (6 rows × 4 zmm = 24 accumulators, 4 weight vectors and a
/// broadcast fit the 32 zmm registers).
const MR: usize = 6;
/// zmm registers of output columns per tile.
const NV: usize = 4;
/// Output columns per tile and per packed panel.
const NC: usize = 16 * NV;
/// Reduction pairs per block: a panel block is `KC × NC` pairs (64 KB).
const KC: usize = 256;
/// Panels packed and walked together per block (256 KB of packed weight, in L2), so a
/// tile's `dy` rows are read from L1 across them.
const GROUP: usize = 4;

/// `dx = dy·W` (`dx +=` when `acc`) for `dy: [rows, n_out]` (bf16, padded rows) and `W:
/// [n_out, n_in]`, `dx: [rows, n_in]` row-major. The CPU must have AVX512F and
/// AVX512_BF16 ([`super::bf16::Bf16Kernel::Avx512Bf16`] available).
pub(crate) fn backward(w: Bf16Rows, dy: &Bf16Matrix, dx: &mut [f32], acc: bool) {
    let (rows, n) = (dy.rows, w.n_in);
    assert_eq!(dy.cols, w.n_out, "bf16 pairs: dy does not fit the weight");
    assert_eq!(dx.len(), rows * n, "bf16 pairs: dx has the wrong size");
    assert!(
        super::bf16::Bf16Kernel::Avx512Bf16.available(),
        "bf16 pairs: the CPU has no AVX512_BF16"
    );
    if rows == 0 || n == 0 {
        return;
    }
    if w.n_out == 0 {
        // An empty reduction: no block would write `dx`.
        if !acc {
            dx.fill(0.0);
        }
        return;
    }
    // Below about a million multiply-adds a thread is not worth its start.
    let threads = super::kernel::threads().min((rows * w.n_out * n) >> 20);
    on_threads(w, dy, dx, acc, threads);
}

/// [`backward`] on `threads` threads (at most one per column panel, at least one).
fn on_threads(w: Bf16Rows, dy: &Bf16Matrix, dx: &mut [f32], acc: bool, threads: usize) {
    let panels = w.n_in.div_ceil(NC);
    let threads = threads.min(panels).max(1);
    let per_thread = panels.div_ceil(threads);
    let out = SharedOut(dx.as_mut_ptr());
    let run = |t: usize| {
        let p0 = t * per_thread;
        let p1 = (p0 + per_thread).min(panels);
        // SAFETY: each thread writes only the columns of panels `p0..p1`, disjoint from
        // every other thread's, of `dx`, which outlives the scope.
        unsafe { columns(w, dy, out, (p0, p1), acc) };
    };
    if threads == 1 {
        run(0);
        return;
    }
    std::thread::scope(|scope| {
        for t in 1..threads {
            scope.spawn(move || run(t));
        }
        run(0);
    });
}

/// `dx`'s data, shared by threads that write disjoint columns.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: only used by `backward`, whose threads write disjoint columns.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

/// Computes the columns of panels `p0..p1` of `dx` (all rows).
///
/// # Safety
/// `out` points at `dx: [dy.rows, w.n_in]`, and no other thread touches these columns.
unsafe fn columns(
    w: Bf16Rows,
    dy: &Bf16Matrix,
    out: SharedOut,
    (p0, p1): (usize, usize),
    acc: bool,
) {
    let n = w.n_in;
    let pairs = w.n_out.div_ceil(2);
    let mut pack = vec![0u32; GROUP * KC * NC];
    for g0 in (p0..p1).step_by(GROUP) {
        let g1 = (g0 + GROUP).min(p1);
        for q0 in (0..pairs).step_by(KC) {
            let kc = KC.min(pairs - q0);
            for p in g0..g1 {
                let dst = &mut pack[(p - g0) * KC * NC..][..kc * NC];
                pack_panel(w, q0, kc, p * NC, dst);
            }
            let from_c = acc || q0 > 0;
            for i0 in (0..dy.rows).step_by(MR) {
                let mr = MR.min(dy.rows - i0);
                for p in g0..g1 {
                    let c0 = p * NC;
                    let tile = Tile {
                        a: dy.data.as_ptr().add(i0 * dy.stride + 2 * q0),
                        lda: dy.stride,
                        b: pack.as_ptr().add((p - g0) * KC * NC),
                        kc,
                        c: out.0.add(i0 * n + c0),
                        ldc: n,
                        cols: NC.min(n - c0),
                        from_c,
                    };
                    kernel::run(mr, &tile);
                }
            }
        }
    }
}

/// Lays out pairs `q0..q0 + kc` of `W`'s rows for output columns `c0..c0 + NC` as
/// `dst[q][j] = W[2q, c0+j] | W[2q+1, c0+j] << 16` (zeros past the weight's edges).
fn pack_panel(w: Bf16Rows, q0: usize, kc: usize, c0: usize, dst: &mut [u32]) {
    let cols = NC.min(w.n_in - c0);
    for (q, d) in dst.chunks_exact_mut(NC).take(kc).enumerate() {
        let r = 2 * (q0 + q);
        let lo = &w.bits[r * w.n_in + c0..][..cols];
        if r + 1 < w.n_out {
            let hi = &w.bits[(r + 1) * w.n_in + c0..][..cols];
            for ((d, &l), &h) in d.iter_mut().zip(lo).zip(hi) {
                *d = l as u32 | (h as u32) << 16;
            }
        } else {
            d.iter_mut().zip(lo).for_each(|(d, &l)| *d = l as u32);
        }
        d[cols..].fill(0);
    }
}

/// One tile's operands: `mr` rows of `dy` from `a` (row stride `lda` elements, starting
/// at the block's first pair), a packed panel block `b` of `kc` pairs × [`NC`] columns,
/// and the output `c` (row stride `ldc`) of which `cols` columns exist.
struct Tile {
    a: *const u16,
    lda: usize,
    b: *const u32,
    kc: usize,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    /// Start from `c`'s values (accumulating, or a later reduction block).
    from_c: bool,
}

#[cfg(target_arch = "x86_64")]
mod kernel {
    use super::{Tile, MR, NC, NV};
    use std::arch::x86_64::*;

    /// Runs the `mr`-row tile (`mr <= MR`).
    ///
    /// # Safety
    /// The CPU has AVX512F and AVX512_BF16; `t`'s pointers cover `mr` rows, `kc` pairs
    /// and `cols` columns.
    pub(super) unsafe fn run(mr: usize, t: &Tile) {
        match mr {
            6 => tile::<6>(t),
            5 => tile::<5>(t),
            4 => tile::<4>(t),
            3 => tile::<3>(t),
            2 => tile::<2>(t),
            _ => tile::<1>(t),
        }
        const _: () = assert!(MR == 6);
    }

    /// Masks of the valid columns of each of the tile's `NV` vectors.
    fn masks(cols: usize) -> [__mmask16; NV] {
        std::array::from_fn(|v| {
            let n = cols.saturating_sub(16 * v).min(16);
            ((1u32 << n) - 1) as __mmask16
        })
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn tile<const M: usize>(t: &Tile) {
        let m = masks(t.cols);
        let mut acc = [[_mm512_setzero_ps(); NV]; M];
        if t.from_c {
            for (i, row) in acc.iter_mut().enumerate() {
                for (v, r) in row.iter_mut().enumerate() {
                    *r = _mm512_maskz_loadu_ps(m[v], t.c.add(i * t.ldc + 16 * v));
                }
            }
        }
        for q in 0..t.kc {
            let b = t.b.add(q * NC);
            let bv: [__m512bh; NV] = std::array::from_fn(|v| {
                std::mem::transmute(_mm512_loadu_si512(b.add(16 * v) as *const _))
            });
            for (i, row) in acc.iter_mut().enumerate() {
                let pair = (t.a.add(i * t.lda + 2 * q) as *const u32).read_unaligned();
                let a: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair as i32));
                for (r, &b) in row.iter_mut().zip(&bv) {
                    *r = _mm512_dpbf16_ps(*r, a, b);
                }
            }
        }
        for (i, row) in acc.iter().enumerate() {
            for (v, r) in row.iter().enumerate() {
                _mm512_mask_storeu_ps(t.c.add(i * t.ldc + 16 * v), m[v], *r);
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod kernel {
    pub(super) unsafe fn run(_: usize, _: &super::Tile) {
        unreachable!("bf16 pairs: AVX512_BF16 is x86-64 only")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::bf16::{from_bf16, to_bf16, Bf16Kernel};

    use crate::ops::testutil::hashed as data;

    /// Against the f64 product of the rounded operands, on shapes with odd reductions,
    /// partial reduction blocks, partial row tiles and partial column panels, with and
    /// without accumulation; and bit for bit the same on one thread and on many.
    #[test]
    fn pairs_product_matches_the_f64_product() {
        if !Bf16Kernel::Avx512Bf16.available() {
            eprintln!("skipping: this CPU has no AVX512_BF16");
            return;
        }
        for &(rows, n_out, n_in) in &[
            (2, 0, 3),
            (1, 1, 1),
            (7, 5, 70),
            (13, 2 * KC * 2 + 3, 64),
            (20, 128, 3 * NC * GROUP + 17),
        ] {
            let wf = data(n_out * n_in, 1);
            let bits: Vec<u16> = wf.iter().map(|&v| to_bf16(v)).collect();
            let w = Bf16Rows {
                bits: &bits,
                n_out,
                n_in,
            };
            let gf = data(rows * n_out, 2);
            let g = Bf16Matrix::from_f32(&gf, rows, n_out);
            let r = |v: f32| from_bf16(to_bf16(v)) as f64;
            for acc in [false, true] {
                let mut dx = vec![0.5f32; rows * n_in];
                backward(w, &g, &mut dx, acc);
                for i in 0..rows {
                    for j in 0..n_in {
                        let (mut want, mut mag) = (if acc { 0.5 } else { 0.0 }, 0.0);
                        for o in 0..n_out {
                            let p = r(gf[i * n_out + o]) * r(wf[o * n_in + j]);
                            want += p;
                            mag += p.abs();
                        }
                        let got = dx[i * n_in + j] as f64;
                        assert!(
                            (got - want).abs() <= 1e-5 * (1.0 + mag),
                            "{rows}x{n_out}x{n_in} acc {acc} dx[{i},{j}]: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    /// Each output's reduction order is fixed by the blocks, not by who computes it:
    /// one thread, two and three give the same bits (and `+=` adds to what is there).
    #[test]
    fn the_product_does_not_depend_on_the_thread_count() {
        if !Bf16Kernel::Avx512Bf16.available() {
            eprintln!("skipping: this CPU has no AVX512_BF16");
            return;
        }
        let (rows, n_out, n_in) = (31, 3 * KC + 9, 7 * NC + 5);
        let bits: Vec<u16> = data(n_out * n_in, 4).iter().map(|&v| to_bf16(v)).collect();
        let w = Bf16Rows {
            bits: &bits,
            n_out,
            n_in,
        };
        let g = Bf16Matrix::from_f32(&data(rows * n_out, 5), rows, n_out);
        let start = data(rows * n_in, 6);
        let run = |threads, acc| {
            let mut dx = start.clone();
            on_threads(w, &g, &mut dx, acc, threads);
            dx.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        };
        for acc in [false, true] {
            let one = run(1, acc);
            assert_eq!(one, run(2, acc), "acc {acc}: 2 threads");
            assert_eq!(one, run(3, acc), "acc {acc}: 3 threads");
        }
        assert_ne!(run(1, false), run(1, true), "+= keeps what was there");
    }
}
