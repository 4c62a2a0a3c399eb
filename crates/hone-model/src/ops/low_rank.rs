//! The products of a LoRA step with one of the adapter's rank-`r` factors: `x·Aᵀ`,
//! `xa·Bᵀ`, `dy·B`, `dxa·A`, `dyᵀ·xa` and `dxaᵀ·x`, where one side is `[rows, n]` and
//! the other has `r` (8–64) rows or columns.
//!
//! Why not the gemm: each of these reads (or writes) a whole `[rows, n]` f32 matrix for
//! only `2·r` flops per element, so it is a pass over memory, and the general gemm's
//! packing and blocking for a rank-8 side made it a slow one (measured at Qwen2.5-0.5B's
//! q shape, 1024×896 with r=8, on a Zen 4: 22–109 GFLOP/s, 0.13–0.67 ms a product, the
//! six products 2.0 ms per adapted projection). The three loops here stream the big
//! matrix once, with the small factor in L1, and keep every output's summation order
//! fixed whatever the thread count. A whole step with all seven projections adapted
//! (`hone bench train --targets all-linear`, same machine, alternating) ran 1–3% faster
//! on Qwen2.5-0.5B and 3% on SmolLM2-135M than through the gemm.

use super::kernel::{dot, par_rows};

/// `out[i, k] = s · Σ_j x[i, j] · m[k, j]` for `x: [rows, n]`, `m: [r, n]`; `out: [rows,
/// r]` is overwritten.
pub(crate) fn project(
    out: &mut [f32],
    x: &[f32],
    m: &[f32],
    (rows, n, r): (usize, usize, usize),
    s: f32,
) {
    assert_eq!(
        (out.len(), x.len(), m.len()),
        (rows * r, rows * n, r * n),
        "project: shapes"
    );
    if r == 0 {
        return;
    }
    par_rows(out, r, n, |i0, chunk| {
        for (i, o) in chunk.chunks_exact_mut(r).enumerate() {
            let xi = &x[(i0 + i) * n..][..n];
            for (k, o) in o.iter_mut().enumerate() {
                *o = s * dot(xi, &m[k * n..][..n]);
            }
        }
    });
}

/// `y[i, :] = s · Σ_k c[i, k] · m[k, :]` (`+=` when `acc`) for `c: [rows, r]`, `m: [r,
/// n]`, `y: [rows, n]`.
pub(crate) fn expand(
    y: &mut [f32],
    c: &[f32],
    m: &[f32],
    (rows, n, r): (usize, usize, usize),
    s: f32,
    acc: bool,
) {
    assert_eq!(
        (y.len(), c.len(), m.len()),
        (rows * n, rows * r, r * n),
        "expand: shapes"
    );
    par_rows(y, n, r, |i0, chunk| {
        for (i, yi) in chunk.chunks_exact_mut(n).enumerate() {
            let ci = &c[(i0 + i) * r..][..r];
            if !acc {
                yi.fill(0.0);
            }
            // A block of columns at a time, so each output is loaded and stored once.
            for j0 in (0..n).step_by(COLUMNS) {
                let w = COLUMNS.min(n - j0);
                let mut block = [0f32; COLUMNS];
                for (k, &ck) in ci.iter().enumerate() {
                    let mk = &m[k * n + j0..][..w];
                    block[..w]
                        .iter_mut()
                        .zip(mk)
                        .for_each(|(b, &v)| *b += ck * v);
                }
                yi[j0..j0 + w]
                    .iter_mut()
                    .zip(&block[..w])
                    .for_each(|(y, &b)| *y += s * b);
            }
        }
    });
}

/// Columns per block of [`expand`] and [`outer_sum`].
const COLUMNS: usize = 128;

/// `out[k, :] = s · Σ_i c[i, k] · x[i, :]` for `c: [rows, r]`, `x: [rows, n]`; `out: [r,
/// n]` is overwritten ([`outer_sum_t`], then laid out).
pub(crate) fn outer_sum(
    out: &mut [f32],
    c: &[f32],
    x: &[f32],
    dims: (usize, usize, usize),
    s: f32,
) {
    let (_, n, r) = dims;
    let mut t = vec![0f32; n * r];
    outer_sum_t(&mut t, c, x, dims, s);
    out.copy_from_slice(&transposed(&t, n, r));
}

/// [`outer_sum`] laid out as its transpose, `out_t: [n, r]` (LoRA's `dB` is stored so).
/// Threads own blocks of `out_t`'s rows, and each output sums over `x`'s rows in order.
pub(crate) fn outer_sum_t(
    out_t: &mut [f32],
    c: &[f32],
    x: &[f32],
    (rows, n, r): (usize, usize, usize),
    s: f32,
) {
    assert_eq!(
        (out_t.len(), c.len(), x.len()),
        (r * n, rows * r, rows * n),
        "outer_sum: shapes"
    );
    if r == 0 || n == 0 {
        return;
    }
    par_rows(out_t, r * COLUMNS, rows * r, |b0, chunk| {
        let mut block = vec![0f32; r * COLUMNS];
        for (b, sub) in chunk.chunks_mut(r * COLUMNS).enumerate() {
            let (j0, w) = ((b0 + b) * COLUMNS, sub.len() / r);
            block.fill(0.0);
            for i in 0..rows {
                let xi = &x[i * n + j0..][..w];
                for (k, &cik) in c[i * r..][..r].iter().enumerate() {
                    let bk = &mut block[k * COLUMNS..][..w];
                    bk.iter_mut().zip(xi).for_each(|(b, &v)| *b += cik * v);
                }
            }
            for (j, row) in sub.chunks_exact_mut(r).enumerate() {
                row.iter_mut()
                    .enumerate()
                    .for_each(|(k, o)| *o = s * block[k * COLUMNS + j]);
            }
        }
    });
}

/// `m: [rows, cols]` transposed, `[cols, rows]` (for a factor stored the other way round).
pub(crate) fn transposed(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; m.len()];
    for (i, row) in m.chunks_exact(cols.max(1)).enumerate().take(rows) {
        row.iter()
            .enumerate()
            .for_each(|(j, &v)| t[j * rows + i] = v);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::ops::testutil::hashed as data;

    /// Each product against the f64 sum, on shapes with lane and block tails and
    /// enough rows to run on several threads.
    #[test]
    fn low_rank_products_match_the_f64_sums() {
        for &(rows, n, r) in &[(1, 1, 1), (3, 17, 2), (37, 300, 8), (700, 257, 16)] {
            let (x, m, c) = (data(rows * n, 1), data(r * n, 2), data(rows * r, 3));
            let s = 0.75;
            let close = |got: f32, want: f64, what: &str| {
                assert!(
                    (got as f64 - want).abs() < 1e-4 * (1.0 + want.abs()),
                    "{what}: {got} vs {want}"
                );
            };
            let mut out = vec![9f32; rows * r];
            project(&mut out, &x, &m, (rows, n, r), s);
            for i in 0..rows {
                for k in 0..r {
                    let want: f64 = (0..n)
                        .map(|j| x[i * n + j] as f64 * m[k * n + j] as f64)
                        .sum();
                    close(out[i * r + k], s as f64 * want, "project");
                }
            }
            for acc in [false, true] {
                let mut y = data(rows * n, 4);
                let before = y.clone();
                expand(&mut y, &c, &m, (rows, n, r), s, acc);
                for i in 0..rows {
                    for j in 0..n {
                        let sum: f64 = (0..r)
                            .map(|k| c[i * r + k] as f64 * m[k * n + j] as f64)
                            .sum();
                        let base = if acc { before[i * n + j] as f64 } else { 0.0 };
                        close(y[i * n + j], base + s as f64 * sum, "expand");
                    }
                }
            }
            let mut o = vec![9f32; r * n];
            outer_sum(&mut o, &c, &x, (rows, n, r), s);
            for k in 0..r {
                for j in 0..n {
                    let want: f64 = (0..rows)
                        .map(|i| c[i * r + k] as f64 * x[i * n + j] as f64)
                        .sum();
                    close(o[k * n + j], s as f64 * want, "outer_sum");
                }
            }
            let mut ot = vec![9f32; n * r];
            outer_sum_t(&mut ot, &c, &x, (rows, n, r), s);
            assert_eq!(
                ot,
                transposed(&o, r, n),
                "outer_sum_t is outer_sum's transpose"
            );
            let t = transposed(&m, r, n);
            assert!((0..r).all(|k| (0..n).all(|j| t[j * r + k] == m[k * n + j])));
        }
    }
}
