//! Shared plumbing for the CPU kernels: typed access to contiguous storage, and a
//! row-parallel driver.
//!
//! `hone-model` does not depend on rayon directly, so the driver uses scoped std
//! threads. An op runs for about a millisecond or more at training sizes, so the cost of
//! spawning one extra thread per call (tens of microseconds) is small, and small inputs
//! stay on the calling thread.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, Layout, Result};

/// Below this many f32 operations per thread, splitting costs more than it saves.
const MIN_WORK_PER_THREAD: usize = 64 * 1024;

/// The contiguous f32 data that `layout` views in `storage`.
pub(crate) fn f32_data<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    what: &str,
) -> Result<&'a [f32]> {
    let data = match storage {
        CpuStorage::F32(v) => v.as_slice(),
        other => bail!("{what}: expected an f32 tensor, got {:?}", other.dtype()),
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("{what}: the tensor must be contiguous"),
    }
}

/// Class indices (targets) as i64, whether stored as u32 or i64.
pub(crate) fn index_data(storage: &CpuStorage, layout: &Layout, what: &str) -> Result<Vec<i64>> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("{what}: the tensor must be contiguous")
    };
    Ok(match storage {
        CpuStorage::U32(v) => v[start..end].iter().map(|&t| t as i64).collect(),
        CpuStorage::I64(v) => v[start..end].to_vec(),
        other => bail!(
            "{what}: expected u32 or i64 indices, got {:?}",
            other.dtype()
        ),
    })
}

/// The last dimension of a layout, with an error for scalars.
pub(crate) fn last_dim(layout: &Layout, what: &str) -> Result<usize> {
    match layout.dims().last() {
        Some(&d) if d > 0 => Ok(d),
        _ => bail!("{what}: expected a tensor with a non-empty last dimension"),
    }
}

/// candle's thread count, read once: `candle_core::utils::get_num_threads` parses
/// `/proc/cpuinfo` on every call unless `RAYON_NUM_THREADS` is set, which profiled at
/// about 4% of a training step when asked per product.
pub(crate) fn threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| candle_core::utils::get_num_threads().max(1))
}

/// Runs `f(first_row, rows)` over disjoint chunks of whole rows of `out`, in parallel when
/// the work is large enough. `work_per_row` is the number of inputs read per output row
/// (e.g. the vocabulary size for a per-row loss), used only to decide how many threads.
pub(crate) fn par_rows<F>(out: &mut [f32], row_len: usize, work_per_row: usize, f: F)
where
    F: Fn(usize, &mut [f32]) + Sync,
{
    if row_len == 0 || out.is_empty() {
        return;
    }
    let rows = out.len() / row_len;
    let work = rows.saturating_mul(work_per_row.max(row_len));
    let threads = threads().min(work / MIN_WORK_PER_THREAD).min(rows).max(1);
    if threads == 1 {
        f(0, out);
        return;
    }
    let rows_per_thread = rows.div_ceil(threads);
    std::thread::scope(|scope| {
        let mut chunks = out.chunks_mut(rows_per_thread * row_len).enumerate();
        let first = chunks.next();
        for (i, chunk) in chunks {
            let f = &f;
            scope.spawn(move || f(i * rows_per_thread, chunk));
        }
        if let Some((_, chunk)) = first {
            f(0, chunk);
        }
    });
}

/// How a matrix operand of [`matmul`] is stored: row-major as used (`N`), or row-major as
/// its transpose (`T`, i.e. the product reads it transposed without copying).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tr {
    N,
    T,
}

/// `c = beta · a·b` (`c += …` when `acc`), with `a` logically `[m, k]`, `b` logically
/// `[k, n]` and `c` row-major `[m, n]`; `parallel` spreads the product over candle's
/// thread count (the gemm crate's rayon driver, as candle's own matmul).
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
    c: &mut [f32],
    (m, n, k): (usize, usize, usize),
    (a, ta): (&[f32], Tr),
    (b, tb): (&[f32], Tr),
    acc: bool,
    beta: f32,
    parallel: bool,
) {
    let lda = if ta == Tr::N { k } else { m };
    let ldb = if tb == Tr::N { n } else { k };
    matmul_ld(
        (c, n),
        (m, n, k),
        (a, lda, ta),
        (b, ldb, tb),
        acc,
        beta,
        parallel,
    );
}

/// [`matmul`] on sub-matrices: each operand comes with the row stride of its storage
/// (`ld`, as in BLAS), so a block of a larger row-major matrix is used in place.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_ld(
    (c, ldc): (&mut [f32], usize),
    (m, n, k): (usize, usize, usize),
    (a, lda, ta): (&[f32], usize, Tr),
    (b, ldb, tb): (&[f32], usize, Tr),
    acc: bool,
    beta: f32,
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    // Stored shapes: a is [m, k] (N) or [k, m] (T); b is [k, n] (N) or [n, k] (T).
    let need = |rows: usize, cols: usize, ld: usize| (rows.max(1) - 1) * ld + cols;
    let (a_rows, a_cols) = if ta == Tr::N { (m, k) } else { (k, m) };
    let (b_rows, b_cols) = if tb == Tr::N { (k, n) } else { (n, k) };
    assert!(ldc >= n && lda >= a_cols && ldb >= b_cols);
    assert!(c.len() >= need(m, n, ldc));
    assert!(
        k == 0 || (a.len() >= need(a_rows, a_cols, lda) && b.len() >= need(b_rows, b_cols, ldb))
    );
    let (a_cs, a_rs) = if ta == Tr::N { (1, lda) } else { (lda, 1) };
    let (b_cs, b_rs) = if tb == Tr::N { (1, ldb) } else { (ldb, 1) };
    let threads = threads();
    let par = if parallel && threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the bounds are checked above, and the strides describe row-major storage of
    // the shapes given (or of their transposes) with the given row strides.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            ldc as isize,
            acc,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            1.0,
            beta,
            false,
            false,
            false,
            par,
        )
    }
}

/// `e^x` for f32 to about 2 ulp, branch-free so that loops over slices vectorize (glibc's
/// `expf` is a scalar call: it was 7% of a training step's samples, from the softmaxes
/// over the vocabulary and the attention rows and from SiLU).
///
/// Range reduction `x = n·ln2 + r` with `|r| ≤ ln2/2`, a degree-6 Taylor polynomial for
/// `e^r` (truncation error below 1.2e-7 relative), then `2^n` through the exponent bits.
/// Inputs are clamped to `[-87, 88]`: below, the result is about 1.6e-38 instead of 0,
/// which no sum in a softmax can tell apart; NaN stays NaN.
#[inline(always)]
pub(crate) fn fast_exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, x));
    let p = [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0]
        .iter()
        .fold(1.0 / 720.0, |p: f32, &c| p.mul_add(r, c));
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    p * scale
}

/// Lanes of the reductions below: a float sum in one accumulator is a serial chain that
/// the compiler may not reorder, so it never vectorizes; 16 independent partial results
/// (one AVX-512 register) do.
const LANES: usize = 16;

/// Combines `map(x)` over `xs` by `f` lane-wise, then the lanes and the tail.
#[inline(always)]
fn reduce(xs: &[f32], init: f32, map: impl Fn(f32) -> f32, f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [init; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = f(*a, map(x));
        }
    }
    let lanes = acc.into_iter().fold(init, &f);
    tail.iter().fold(lanes, |a, &x| f(a, map(x)))
}

/// The largest element (−∞ for an empty slice).
pub(crate) fn max(xs: &[f32]) -> f32 {
    reduce(xs, f32::NEG_INFINITY, |x| x, f32::max)
}

/// The sum of the elements.
pub(crate) fn sum(xs: &[f32]) -> f32 {
    reduce(xs, 0.0, |x| x, |a, x| a + x)
}

/// `Σ e^(x − shift)`, leaving `xs` as it is.
pub(crate) fn sum_exp(xs: &[f32], shift: f32) -> f32 {
    reduce(xs, 0.0, |x| fast_exp(x - shift), |a, x| a + x)
}

/// `Σ a_i·b_i` over the shorter length. Eight partial sums let the compiler vectorize
/// the loop. The decode path uses it too: its batched and one-by-one outputs are
/// compared bit for bit, so its summation order must not change.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `x ← e^(x·scale − shift)` in place, returning the sum of the results.
pub(crate) fn exp_in_place(xs: &mut [f32], scale: f32, shift: f32) -> f32 {
    xs.iter_mut()
        .for_each(|x| *x = fast_exp(x.mul_add(scale, -shift)));
    sum(xs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lane_reductions_equal_the_serial_ones() {
        let xs: Vec<f32> = (0..37)
            .map(|i| ((i * 7919) % 101) as f32 / 10.0 - 5.0)
            .collect();
        for n in [0, 1, 15, 16, 17, 37] {
            let x = &xs[..n];
            let serial_max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            assert_eq!(max(x), serial_max);
            let serial: f64 = x.iter().map(|&v| v as f64).sum();
            assert!((sum(x) as f64 - serial).abs() < 1e-4, "sum of {n}");
            let serial: f64 = x.iter().map(|&v| (v * v) as f64).sum();
            assert!((dot(x, x) as f64 - serial).abs() < 1e-3, "dot of {n}");
            let mut e = x.to_vec();
            let total = exp_in_place(&mut e, 0.5, 1.0);
            for (y, v) in e.iter().zip(x) {
                assert!((y - (v * 0.5 - 1.0).exp()).abs() <= 1e-6 * y.max(1.0));
            }
            assert!((total - e.iter().sum::<f32>()).abs() < 1e-4);
            let unscaled: f32 = x.iter().map(|v| (v - 1.0).exp()).sum();
            assert!((sum_exp(x, 1.0) - unscaled).abs() < 1e-4 * unscaled.max(1.0));
        }
    }

    #[test]
    fn fast_exp_is_within_a_few_ulp_of_exp() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (got, want) = (fast_exp(x) as f64, (x as f64).exp());
            worst = worst.max(((got - want) / want).abs());
            x += 0.013;
        }
        assert!(worst < 3e-7, "worst relative error {worst:e}");
        assert!(fast_exp(f32::NEG_INFINITY) < 1e-37);
        assert!(fast_exp(-1000.0) < 1e-37);
        assert!(fast_exp(f32::NAN).is_nan());
        assert_eq!(fast_exp(0.0), 1.0);
    }
}
