//! Rotary position embeddings with a backward for `x`.
//!
//! `candle_nn::rotary_emb::rope` / `rope_i` drop the gradient silently. The rotation is
//! orthogonal, so its backward is the same rotation by the negated angle: one kernel
//! serves both directions.

use super::kernel::{f32_data, last_dim, par_rows};
use candle_core::{bail, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};

/// RoPE in the Hugging Face layout ("rotate_half": the pair of element `i` is `i + d/2`).
/// `x` is `(b, h, t, d)`; `cos` and `sin` are `(t, d/2)` (narrowed by the caller to the
/// positions of `x`), or `(b, t, d/2)` when each row has its own positions (packed
/// sequences, whose positions restart at every example). Differentiable with respect
/// to `x`; `cos`/`sin` get no gradient.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    apply(x, cos, sin, false)
}

/// RoPE in the interleaved layout (GGUF / Meta: the pair of element `2i` is `2i + 1`),
/// as `candle_nn::rotary_emb::rope_i`. Same shapes and gradients as [`rope`].
pub fn rope_i(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    apply(x, cos, sin, true)
}

fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor, interleaved: bool) -> Result<Tensor> {
    let (b, _h, t, d) = x.dims4()?;
    if d % 2 != 0 {
        bail!("rope: head dim {d} must be even");
    }
    for (name, c) in [("cos", cos), ("sin", sin)] {
        if c.dims() != [t, d / 2] && c.dims() != [b, t, d / 2] {
            bail!(
                "rope: {name} must have shape ({t}, {}) or ({b}, {t}, {}), got {:?}",
                d / 2,
                d / 2,
                c.dims()
            );
        }
    }
    if [x.dtype(), cos.dtype(), sin.dtype()]
        .iter()
        .any(|&dt| dt != DType::F32)
    {
        bail!("rope: only f32 is supported");
    }
    let (cos, sin) = (cos.detach().contiguous()?, sin.detach().contiguous()?);
    x.contiguous()?.apply_op3(
        &cos,
        &sin,
        Rope {
            interleaved,
            inverse: false,
        },
    )
}

/// Rotates each pair by `+θ` (forward) or `−θ` (`inverse`, the backward pass).
#[derive(Clone, Copy)]
struct Rope {
    interleaved: bool,
    inverse: bool,
}

impl Rope {
    fn rotate_row(&self, x: &[f32], y: &mut [f32], cos: &[f32], sin: &[f32]) {
        let half = x.len() / 2;
        let sign = if self.inverse { -1.0 } else { 1.0 };
        for i in 0..half {
            let (a, b) = if self.interleaved {
                (2 * i, 2 * i + 1)
            } else {
                (i, i + half)
            };
            let (c, s) = (cos[i], sign * sin[i]);
            y[a] = x[a] * c - x[b] * s;
            y[b] = x[b] * c + x[a] * s;
        }
    }
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "hone-rope"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_data(s1, l1, "rope x")?;
        let cos = f32_data(s2, l2, "rope cos")?;
        let sin = f32_data(s3, l3, "rope sin")?;
        let d = last_dim(l1, "rope x")?;
        let dims = l1.dims();
        let (h, t) = (dims[dims.len() - 3], dims[dims.len() - 2]);
        // Per-row tables (b, t, d/2): batch row `r / (h·t)` has its own positions.
        let per_row = l2.dims().len() == 3;
        let half = d / 2;
        let mut out = vec![0f32; x.len()];
        par_rows(&mut out, d, d, |row0, chunk| {
            for (i, y) in chunk.chunks_exact_mut(d).enumerate() {
                let row = row0 + i;
                let mut pos = row % t;
                if per_row {
                    pos += (row / (h * t)) * t;
                }
                let trig = pos * half..(pos + 1) * half;
                self.rotate_row(
                    &x[row * d..(row + 1) * d],
                    y,
                    &cos[trig.clone()],
                    &sin[trig],
                );
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        if !x.track_op() {
            return Ok((None, None, None));
        }
        let inverse = Rope {
            inverse: !self.inverse,
            ..*self
        };
        let dx = grad.contiguous()?.apply_op3_no_bwd(cos, sin, &inverse)?;
        Ok((Some(dx), None, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::{check_op, randn};

    fn trig(t: usize, half: usize) -> (Tensor, Tensor) {
        let angles = (randn(&[t, half], 5) * 2.0).unwrap();
        (angles.cos().unwrap(), angles.sin().unwrap())
    }

    #[test]
    fn rope_matches_rope_slow_and_gradients() -> Result<()> {
        let (cos, sin) = trig(5, 4);
        check_op(
            &[randn(&[2, 3, 5, 8], 1), cos, sin],
            &[true, false, false],
            |t| rope(&t[0], &t[1], &t[2]),
            |t| candle_nn::rotary_emb::rope_slow(&t[0], &t[1], &t[2]),
            1e-5,
        )
    }

    #[test]
    fn rope_i_matches_rope_i_slow_and_gradients() -> Result<()> {
        let (cos, sin) = trig(5, 4);
        check_op(
            &[randn(&[2, 3, 5, 8], 3), cos, sin],
            &[true, false, false],
            |t| rope_i(&t[0], &t[1], &t[2]),
            |t| candle_nn::rotary_emb::rope_i_slow(&t[0], &t[1], &t[2]),
            1e-5,
        )
    }

    /// Packed rows: each batch row rotated by its own positions' table.
    #[test]
    fn per_row_tables_rotate_each_row_by_its_own_positions() -> Result<()> {
        let angles = (randn(&[2, 5, 4], 7) * 2.0)?;
        let (cos, sin) = (angles.cos()?, angles.sin()?);
        check_op(
            &[randn(&[2, 3, 5, 8], 2), cos, sin],
            &[true, false, false],
            |t| rope(&t[0], &t[1], &t[2]),
            |t| {
                let rows = (0..2)
                    .map(|b| {
                        candle_nn::rotary_emb::rope_slow(
                            &t[0].narrow(0, b, 1)?,
                            &t[1].get(b)?,
                            &t[2].get(b)?,
                        )
                    })
                    .collect::<Result<Vec<_>>>()?;
                Tensor::cat(&rows, 0)
            },
            1e-5,
        )
    }

    #[test]
    fn rope_rejects_mismatched_tables() {
        let (cos, sin) = trig(4, 4);
        assert!(rope(&randn(&[1, 1, 5, 8], 1), &cos, &sin).is_err());
    }
}
