//! Products with a frozen weight kept in its GGUF blocks (`--base-weights q8_0|native`,
//! QLoRA-style): `y = x·Wᵀ` and `dx = dy·W` with `W` dequantized a panel of rows at a
//! time into a small f32 buffer and multiplied there by the f32 gemm.
//!
//! Why panels rather than the decode kernels: those multiply up to four activation
//! rows per weight block (a matrix-vector product, bound by reading the weights), while
//! a training product has a thousand rows or more, where the gemm's blocking is what
//! makes it fast. Dequantizing costs one pass over the weight per product (a few percent
//! of the gemm at 1024 rows), and no f32 copy of the whole base ever exists: the only
//! f32 weight memory is one panel ([`PANEL_ROWS`] rows) per product. The block formats
//! are the decode kernels' ([`PackedMatrix::row_f32`]), so a product equals the f32
//! product with the file's dequantized weights up to summation order.

use super::kernel::{matmul_ld, par_rows, Tr};
use crate::decode::PackedMatrix;

/// Weight rows dequantized at once: 256 rows of a 4864-wide matrix are 5 MB, and the
/// gemm over 1024 activation rows and 256 outputs is far past its small-size overheads.
pub(crate) const PANEL_ROWS: usize = 256;

/// Rows `r0..r0 + buf.len() / cols` of `w` as f32 into `buf` (in parallel over rows).
fn dequantize_panel(w: &PackedMatrix, r0: usize, buf: &mut [f32]) {
    let cols = w.dims().1;
    par_rows(buf, cols, cols, |first, chunk| {
        for (i, row) in chunk.chunks_exact_mut(cols).enumerate() {
            // In range by construction: the panels tile `0..rows`.
            let r = w
                .row_f32(r0 + first + i)
                .expect("panel rows lie inside the matrix");
            row.copy_from_slice(&r);
        }
    });
}

/// `y = x·Wᵀ` (`y +=` when `acc`) for `rows` rows of `x: [rows, n_in]`, `W: [n_out,
/// n_in]` in blocks.
pub(crate) fn forward(w: &PackedMatrix, x: &[f32], y: &mut [f32], rows: usize, acc: bool) {
    let (n_out, n_in) = w.dims();
    let mut buf = vec![0f32; PANEL_ROWS.min(n_out) * n_in];
    for r0 in (0..n_out).step_by(PANEL_ROWS) {
        let nr = PANEL_ROWS.min(n_out - r0);
        let panel = &mut buf[..nr * n_in];
        dequantize_panel(w, r0, panel);
        matmul_ld(
            (&mut y[r0..], n_out),
            (rows, nr, n_in),
            (x, n_in, Tr::N),
            (panel, n_in, Tr::T),
            acc,
            1.0,
            true,
        );
    }
}

/// `dx = dy·W` (`dx +=` when `acc`) for `rows` rows of `dy: [rows, n_out]`.
pub(crate) fn backward(w: &PackedMatrix, dy: &[f32], dx: &mut [f32], rows: usize, acc: bool) {
    let (n_out, n_in) = w.dims();
    let mut buf = vec![0f32; PANEL_ROWS.min(n_out) * n_in];
    for (i, r0) in (0..n_out).step_by(PANEL_ROWS).enumerate() {
        let nr = PANEL_ROWS.min(n_out - r0);
        let panel = &mut buf[..nr * n_in];
        dequantize_panel(w, r0, panel);
        matmul_ld(
            (dx, n_in),
            (rows, n_in, nr),
            (&dy[r0..], n_out, Tr::N),
            (panel, n_in, Tr::N),
            acc || i > 0,
            1.0,
            true,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::randn;

    /// A Q8_0 matrix over more rows than one panel (and a partial last panel), against
    /// the f64 product with its dequantized rows; both directions, with and without
    /// accumulation.
    #[test]
    fn panel_products_equal_the_dequantized_weight_products() {
        let (n_out, n_in, rows) = (PANEL_ROWS + 40, 64, 7);
        let wf = randn(&[n_out, n_in], 3)
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let w = PackedMatrix::quantize_q8_0(n_out, n_in, &wf).unwrap();
        let deq: Vec<f32> = (0..n_out).flat_map(|r| w.row_f32(r).unwrap()).collect();
        let x = randn(&[rows, n_in], 4)
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let dy = randn(&[rows, n_out], 5)
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let dot = |a: &mut dyn Iterator<Item = (f32, f32)>| -> f64 {
            a.map(|(p, q)| p as f64 * q as f64).sum()
        };
        let mut y = vec![1f32; rows * n_out];
        forward(&w, &x, &mut y, rows, true);
        let mut dx = vec![0f32; rows * n_in];
        backward(&w, &dy, &mut dx, rows, false);
        for r in 0..rows {
            for o in 0..n_out {
                let want = 1.0 + dot(&mut (0..n_in).map(|i| (x[r * n_in + i], deq[o * n_in + i])));
                let got = y[r * n_out + o] as f64;
                assert!((got - want).abs() < 1e-4 * (1.0 + want.abs()), "y[{r},{o}]");
            }
            for i in 0..n_in {
                let want = dot(&mut (0..n_out).map(|o| (dy[r * n_out + o], deq[o * n_in + i])));
                let got = dx[r * n_in + i] as f64;
                assert!(
                    (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                    "dx[{r},{i}]"
                );
            }
        }
    }
}
