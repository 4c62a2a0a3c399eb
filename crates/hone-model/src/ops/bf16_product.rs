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
use super::bf16::{matmul_nt_into, Bf16Kernel, Bf16Matrix, Bf16View, K_ALIGN};

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
    #[cfg(test)]
    fn rows(&self, r0: usize, n: usize) -> Bf16Matrix {
        let mut m = empty(0, 0);
        self.rows_into(r0, n, &mut m);
        m
    }

    /// [`Self::rows`] into `m`, reusing its storage (a product lays out every panel into
    /// one buffer: a fresh one per panel cost page faults and zero-fills).
    fn rows_into(&self, r0: usize, n: usize, m: &mut Bf16Matrix) {
        let stride = self.n_in.div_ceil(K_ALIGN) * K_ALIGN;
        reshape(m, n, self.n_in, stride);
        for (i, d) in m.data.chunks_exact_mut(stride).take(n).enumerate() {
            let r = r0 + i;
            d[..self.n_in].copy_from_slice(&self.bits[r * self.n_in..(r + 1) * self.n_in]);
        }
    }

    /// Rows `c0..c0 + n` of `Wᵀ` (columns of `W`) as a padded [`Bf16Matrix`] (rows over
    /// `n_out`).
    #[cfg(test)]
    fn columns(&self, c0: usize, n: usize) -> Bf16Matrix {
        let mut m = empty(0, 0);
        self.columns_into(c0, n, &mut m);
        m
    }

    /// [`Self::columns`] into `m`, reusing its storage. The transpose is a pass over the
    /// whole weight per backward product (it was 15% of a bf16 step's samples as a
    /// scalar loop on one thread), so it runs on every thread, each laying out its own
    /// rows of the panel in [`TB`]-square blocks that stay in L1.
    fn columns_into(&self, c0: usize, n: usize, m: &mut Bf16Matrix) {
        let stride = self.n_out.div_ceil(K_ALIGN) * K_ALIGN;
        reshape(m, n, self.n_out, stride);
        let threads = super::kernel::threads().min(n.div_ceil(TB)).max(1);
        let rows_per_thread = n.div_ceil(threads).div_ceil(TB) * TB;
        let data = &mut m.data[..n * stride];
        std::thread::scope(|scope| {
            for (t, chunk) in data.chunks_mut(rows_per_thread * stride).enumerate() {
                let j0 = c0 + t * rows_per_thread;
                if t + 1 == threads || chunk.len() < rows_per_thread * stride {
                    self.transpose_block(j0, stride, chunk);
                } else {
                    scope.spawn(move || self.transpose_block(j0, stride, chunk));
                }
            }
        });
    }

    /// Fills `out` (`out.len() / stride` rows of `Wᵀ` from column `j0`, each `stride`
    /// long) from `W`, a [`TB`]×[`TB`] block at a time; padding is left as it is.
    fn transpose_block(&self, j0: usize, stride: usize, out: &mut [u16]) {
        let rows = out.len() / stride;
        for o0 in (0..self.n_out).step_by(TB) {
            let on = TB.min(self.n_out - o0);
            for jb in (0..rows).step_by(TB) {
                let jn = TB.min(rows - jb);
                if on == TB && jn == TB {
                    // Full block: fixed-size arrays let the compiler drop bounds checks.
                    let mut block = [[0u16; TB]; TB];
                    for (o, b) in block.iter_mut().enumerate() {
                        let at = (o0 + o) * self.n_in + j0 + jb;
                        b.copy_from_slice(&self.bits[at..at + TB]);
                    }
                    for j in 0..TB {
                        let dst = &mut out[(jb + j) * stride + o0..][..TB];
                        for (o, d) in dst.iter_mut().enumerate() {
                            *d = block[o][j];
                        }
                    }
                } else {
                    for o in o0..o0 + on {
                        let row = &self.bits[o * self.n_in + j0 + jb..][..jn];
                        for (j, &v) in row.iter().enumerate() {
                            out[(jb + j) * stride + o] = v;
                        }
                    }
                }
            }
        }
    }
}

/// Side of the square blocks the transpose copies through.
const TB: usize = 16;

/// A matrix with no rows, whose storage [`reshape`] grows.
fn empty(cols: usize, stride: usize) -> Bf16Matrix {
    Bf16Matrix {
        rows: 0,
        cols,
        stride,
        data: Vec::new(),
    }
}

/// Makes `m` a `rows × cols` matrix of row length `stride` holding whole groups of 32
/// rows (AMX reads them as a unit), with zeros in every element past `cols` and past
/// `rows`; the logical elements are left for the caller to overwrite.
fn reshape(m: &mut Bf16Matrix, rows: usize, cols: usize, stride: usize) {
    let len = rows.div_ceil(32) * 32 * stride;
    m.data.clear();
    m.data.resize(len, 0);
    (m.rows, m.cols, m.stride) = (rows, cols, stride);
}

/// `c = a·bᵀ` into a fresh `[a.rows, b.rows]` buffer on `kernel` (AMX packs `b` first).
#[cfg(test)]
fn panel_product(a: &Bf16Matrix, b: &Bf16Matrix, kernel: Bf16Kernel) -> Vec<f32> {
    let mut c = vec![0f32; a.rows * b.rows];
    product_into((&mut c, b.rows, 0), a, b, false, kernel);
    c
}

/// `a·bᵀ` into columns `col..col + b.rows` of `c: [a.rows, ldc]` (`+=` when `acc`). The
/// row kernels write there directly; AMX multiplies into a panel buffer (its kernel
/// writes whole rows) that is then added in.
fn product_into(
    (c, ldc, col): (&mut [f32], usize, usize),
    a: &Bf16Matrix,
    b: &Bf16Matrix,
    acc: bool,
    kernel: Bf16Kernel,
) {
    match kernel {
        Bf16Kernel::Amx => {
            let mut panel = vec![0f32; a.rows * b.rows];
            amx::matmul_nt(&mut panel, a, &VnniMatrix::pack(b), false, true);
            scatter(c, ldc, col, &panel, b.rows, acc);
        }
        k => matmul_nt_into((c, ldc, col), a, b.view(), acc, k, true),
    }
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
    if k != Bf16Kernel::Amx && w.n_in.is_multiple_of(K_ALIGN) {
        // `W` as stored is already the row kernels' layout (no padding needed): multiply
        // by it in place. Every model here has such widths; the LM head's copy per chunk
        // of rows was a pass over the largest weight for nothing.
        let whole = Bf16View {
            rows: w.n_out,
            cols: w.n_in,
            stride: w.n_in,
            data: w.bits,
        };
        matmul_nt_into((y, w.n_out, 0), x, whole, acc, k, true);
        return;
    }
    let mut panel = empty(w.n_in, 0);
    for r0 in (0..w.n_out).step_by(PANEL_ROWS) {
        let n = PANEL_ROWS.min(w.n_out - r0);
        w.rows_into(r0, n, &mut panel);
        product_into((y, w.n_out, r0), x, &panel, acc, k);
    }
}

/// `dx = dy·W` (`dx +=` when `acc`) for the bf16 output gradients `dy: [rows, n_out]`,
/// `dx: [rows, n_in]`.
pub(crate) fn backward(w: Bf16Rows, dy: &Bf16Matrix, dx: &mut [f32], acc: bool, k: Bf16Kernel) {
    assert_eq!(dy.cols, w.n_out, "bf16 product: dy does not fit the weight");
    if k == Bf16Kernel::Avx512Bf16 && k.available() {
        return super::bf16_pairs::backward(w, dy, dx, acc);
    }
    let mut panel = empty(w.n_out, 0);
    for c0 in (0..w.n_in).step_by(PANEL_ROWS) {
        let n = PANEL_ROWS.min(w.n_in - c0);
        w.columns_into(c0, n, &mut panel);
        product_into((dx, w.n_in, c0), dy, &panel, acc, k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::bf16::{from_bf16, to_bf16};

    use crate::ops::testutil::hashed as data;

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
        // A width that needs padding (the forward lays out panels) and one that does not
        // (the forward multiplies by `W` in place).
        for n_in in [2 * PANEL_ROWS + 40, 2 * PANEL_ROWS + 64] {
            let (n_out, rows) = (PANEL_ROWS + 72, 37);
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
                if k != Bf16Kernel::Avx512Bf16 {
                    // (AVX512_BF16's backward is the pair kernel, [`super::super::bf16_pairs`].)
                    assert_eq!(
                        panel_product(&g, &whole_t, k),
                        dx,
                        "{k:?}: backward panels change no bit"
                    );
                }
            }
        }
    }
}
