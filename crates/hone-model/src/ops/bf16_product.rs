//! Products with a frozen weight held once in bf16 (`--base-weights bf16`): `y = x·Wᵀ`
//! and `dx = dy·W`, with `W` read from its single bf16 copy (row-major `[n_out, n_in]`,
//! as stored) a panel at a time.
//!
//! Why panels: the bf16 kernels want the weight's rows along the reduction dimension
//! (and AMX wants them pair-interleaved, [`VnniMatrix`]), which is `W` for the forward
//! and `Wᵀ` for the backward. Keeping both layouts for the whole base would cost 4 bytes
//! per parameter (as much as f32); keeping one and laying out [`PANEL_ROWS`] rows of the
//! other per product costs one pass over the weight per product (a few percent of the
//! product at a thousand activation rows) and keeps the base at 2 bytes per parameter.
//! Each output is still the whole reduction on one kernel, so a product equals the one
//! over a fully laid-out weight bit for bit.

use super::amx::{self, VnniMatrix};
use super::bf16::{matmul_nt, Bf16Kernel, Bf16Matrix, K_ALIGN};

/// Weight rows laid out per panel: a multiple of 32 (AMX's two 16-column tiles), and
/// 256 rows of a 4864-wide weight are 2.5 MB of bf16.
pub(crate) const PANEL_ROWS: usize = 256;

/// A bf16 weight `[n_out, n_in]`, row-major, as its bits.
#[derive(Clone, Copy)]
pub(crate) struct Bf16Rows<'a> {
    pub bits: &'a [u16],
    pub n_out: usize,
    pub n_in: usize,
}

impl Bf16Rows<'_> {
    /// Rows `r0..r0 + n` of `W` as a padded [`Bf16Matrix`] (rows over `n_in`).
    fn rows(&self, r0: usize, n: usize) -> Bf16Matrix {
        let stride = self.n_in.div_ceil(K_ALIGN) * K_ALIGN;
        let mut data = vec![0u16; n.div_ceil(32) * 32 * stride];
        for (i, d) in data.chunks_exact_mut(stride).take(n).enumerate() {
            let r = r0 + i;
            d[..self.n_in].copy_from_slice(&self.bits[r * self.n_in..(r + 1) * self.n_in]);
        }
        Bf16Matrix {
            rows: n,
            cols: self.n_in,
            stride,
            data,
        }
    }

    /// Rows `c0..c0 + n` of `Wᵀ` (columns of `W`) as a padded [`Bf16Matrix`] (rows over
    /// `n_out`), copied in square blocks so that both sides stay in cache.
    fn columns(&self, c0: usize, n: usize) -> Bf16Matrix {
        const BLOCK: usize = 64;
        let stride = self.n_out.div_ceil(K_ALIGN) * K_ALIGN;
        let mut data = vec![0u16; n.div_ceil(32) * 32 * stride];
        for o0 in (0..self.n_out).step_by(BLOCK) {
            for j0 in (0..n).step_by(BLOCK) {
                for o in o0..(o0 + BLOCK).min(self.n_out) {
                    let row = &self.bits[o * self.n_in + c0..];
                    for j in j0..(j0 + BLOCK).min(n) {
                        data[j * stride + o] = row[j];
                    }
                }
            }
        }
        Bf16Matrix {
            rows: n,
            cols: self.n_out,
            stride,
            data,
        }
    }
}

/// `c = a·bᵀ` into a fresh `[a.rows, b.rows]` buffer on `kernel` (AMX packs `b` first).
fn panel_product(a: &Bf16Matrix, b: &Bf16Matrix, kernel: Bf16Kernel) -> Vec<f32> {
    let mut c = vec![0f32; a.rows * b.rows];
    match kernel {
        Bf16Kernel::Amx => amx::matmul_nt(&mut c, a, &VnniMatrix::pack(b), false, true),
        k => matmul_nt(&mut c, a, b, false, k, true),
    }
    c
}

/// Writes (`acc`: adds) `panel: [rows, n]` into columns `col..col + n` of `c: [rows, ldc]`.
fn scatter(c: &mut [f32], ldc: usize, col: usize, panel: &[f32], n: usize, acc: bool) {
    for (dst, src) in c.chunks_exact_mut(ldc).zip(panel.chunks_exact(n)) {
        let dst = &mut dst[col..col + n];
        if acc {
            dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
        } else {
            dst.copy_from_slice(src);
        }
    }
}

/// `y = x·Wᵀ` (`y +=` when `acc`) for the bf16 activations `x: [rows, n_in]`, `y: [rows,
/// n_out]`.
pub(crate) fn forward(w: Bf16Rows, x: &Bf16Matrix, y: &mut [f32], acc: bool, k: Bf16Kernel) {
    assert_eq!(x.cols, w.n_in, "bf16 product: x does not fit the weight");
    for r0 in (0..w.n_out).step_by(PANEL_ROWS) {
        let n = PANEL_ROWS.min(w.n_out - r0);
        let panel = panel_product(x, &w.rows(r0, n), k);
        scatter(y, w.n_out, r0, &panel, n, acc);
    }
}

/// `dx = dy·W` (`dx +=` when `acc`) for the bf16 output gradients `dy: [rows, n_out]`,
/// `dx: [rows, n_in]`.
pub(crate) fn backward(w: Bf16Rows, dy: &Bf16Matrix, dx: &mut [f32], acc: bool, k: Bf16Kernel) {
    assert_eq!(dy.cols, w.n_out, "bf16 product: dy does not fit the weight");
    for c0 in (0..w.n_in).step_by(PANEL_ROWS) {
        let n = PANEL_ROWS.min(w.n_in - c0);
        let panel = panel_product(dy, &w.columns(c0, n), k);
        scatter(dx, w.n_in, c0, &panel, n, acc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::bf16::{from_bf16, to_bf16};

    fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 1000) as f32 / 500.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn columns_are_the_transpose_with_zero_padding() {
        let (n_out, n_in) = (70, 45);
        let bits: Vec<u16> = data(n_out * n_in, 3).iter().map(|&v| to_bf16(v)).collect();
        let w = Bf16Rows {
            bits: &bits,
            n_out,
            n_in,
        };
        let t = w.columns(5, 30);
        assert_eq!((t.rows, t.cols, t.stride), (30, 70, 96));
        for j in 0..30 {
            for o in 0..n_out {
                assert_eq!(t.data[j * t.stride + o], bits[o * n_in + 5 + j]);
            }
            assert!(t.data[j * t.stride + n_out..(j + 1) * t.stride]
                .iter()
                .all(|&p| p == 0));
        }
        let r = w.rows(10, 3);
        assert_eq!((r.rows, r.cols, r.stride), (3, 45, 64));
        assert_eq!(r.data[64..64 + 45], bits[11 * 45..12 * 45]);
    }

    /// Against the f64 product of the bf16-rounded operands, over more than one panel
    /// (and a partial last one) in both directions, on every kernel this CPU runs, with
    /// and without accumulation; and bit for bit against the product over the whole
    /// weight laid out at once (what bf16 mode did before it kept one copy).
    #[test]
    fn panel_products_equal_whole_weight_products() {
        let (n_out, n_in, rows) = (PANEL_ROWS + 72, 2 * PANEL_ROWS + 40, 37);
        let wf = data(n_out * n_in, 1);
        let bits: Vec<u16> = wf.iter().map(|&v| to_bf16(v)).collect();
        let w = Bf16Rows {
            bits: &bits,
            n_out,
            n_in,
        };
        let xf = data(rows * n_in, 2);
        let gf = data(rows * n_out, 3);
        let x = Bf16Matrix::from_f32(&xf, rows, n_in);
        let g = Bf16Matrix::from_f32(&gf, rows, n_out);
        let r = |v: f32| from_bf16(to_bf16(v)) as f64;
        for k in [
            Bf16Kernel::Amx,
            Bf16Kernel::Avx512Bf16,
            Bf16Kernel::Portable,
        ] {
            if !k.available() {
                continue;
            }
            let mut y = vec![1f32; rows * n_out];
            forward(w, &x, &mut y, true, k);
            let mut dx = vec![0f32; rows * n_in];
            backward(w, &g, &mut dx, false, k);
            for i in 0..rows {
                for o in 0..n_out {
                    let want: f64 = 1.0
                        + (0..n_in)
                            .map(|j| r(xf[i * n_in + j]) * r(wf[o * n_in + j]))
                            .sum::<f64>();
                    let got = y[i * n_out + o] as f64;
                    assert!(
                        (got - want).abs() < 1e-3 * (1.0 + want.abs()),
                        "{k:?} y[{i},{o}]"
                    );
                }
                for j in 0..n_in {
                    let want: f64 = (0..n_out)
                        .map(|o| r(gf[i * n_out + o]) * r(wf[o * n_in + j]))
                        .sum();
                    let got = dx[i * n_in + j] as f64;
                    assert!(
                        (got - want).abs() < 1e-3 * (1.0 + want.abs()),
                        "{k:?} dx[{i},{j}]"
                    );
                }
            }
            let whole = w.rows(0, n_out);
            let whole_t = w.columns(0, n_in);
            assert_eq!(
                panel_product(&x, &whole, k)
                    .iter()
                    .map(|v| (v + 1.0).to_bits())
                    .collect::<Vec<_>>(),
                y.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{k:?}: forward panels change no bit"
            );
            assert_eq!(
                panel_product(&g, &whole_t, k),
                dx,
                "{k:?}: backward panels change no bit"
            );
        }
    }
}
