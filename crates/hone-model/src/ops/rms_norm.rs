//! RMSNorm with a hand-written backward for the input.
//!
//! `candle_nn::ops::rms_norm` is fast but has no backward (the gradient is dropped
//! silently), and `rms_norm_slow` builds six graph nodes with their temporaries. In LoRA
//! training the norm weights are frozen, so only `dx` is computed.

use super::kernel::{f32_data, last_dim, par_rows};
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};

/// `y = x / sqrt(mean(x², last dim) + eps) * weight`, for `x` of shape `(…, d)` and
/// `weight` of shape `(d)`. Differentiable with respect to `x` only: the weight is treated
/// as frozen and gets no gradient.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let d = x.dim(candle_core::D::Minus1)?;
    if weight.dims() != [d] {
        bail!(
            "rms_norm: weight shape {:?} does not match the last dim {d} of x",
            weight.dims()
        );
    }
    if x.dtype() != DType::F32 || weight.dtype() != DType::F32 {
        bail!("rms_norm: only f32 is supported");
    }
    let x = x.contiguous()?;
    let weight = weight.detach().contiguous()?;
    x.apply_op2(&weight, RmsNorm { eps: eps as f32 })
}

struct RmsNorm {
    eps: f32,
}

/// `y = rms_norm(x) · w` over the rows of width `d` of `x` (the op's forward on slices,
/// shared with the fused decoder stack).
pub(crate) fn rms_norm_rows(x: &[f32], w: &[f32], eps: f32, y: &mut [f32], d: usize) {
    par_rows(y, d, d, |row0, chunk| {
        for (i, y) in chunk.chunks_exact_mut(d).enumerate() {
            let xr = &x[(row0 + i) * d..(row0 + i + 1) * d];
            let r = inv_rms(xr, eps);
            for ((y, &xv), &wv) in y.iter_mut().zip(xr).zip(w) {
                *y = xv * r * wv;
            }
        }
    });
}

/// The input gradient of [`rms_norm_rows`] for the output gradient `g`, written into
/// `dx` (added to it when `acc`, as for a residual stream's gradient).
pub(crate) fn rms_norm_rows_bwd(
    x: &[f32],
    w: &[f32],
    g: &[f32],
    eps: f32,
    (dx, acc): (&mut [f32], bool),
    d: usize,
) {
    par_rows(dx, d, 2 * d, |row0, chunk| {
        for (i, dx) in chunk.chunks_exact_mut(d).enumerate() {
            let range = (row0 + i) * d..(row0 + i + 1) * d;
            let (xr, gr) = (&x[range.clone()], &g[range]);
            let r = inv_rms(xr, eps);
            let dot: f32 = xr
                .iter()
                .zip(gr)
                .zip(w)
                .map(|((&xv, &gv), &wv)| xv * gv * wv)
                .sum();
            let c = r * r * dot / d as f32;
            for (((dx, &xv), &gv), &wv) in dx.iter_mut().zip(xr).zip(gr).zip(w) {
                let v = r * (gv * wv - xv * c);
                *dx = if acc { *dx + v } else { v };
            }
        }
    });
}

/// `1 / sqrt(mean(x²) + eps)` for one row.
fn inv_rms(row: &[f32], eps: f32) -> f32 {
    let ss: f32 = row.iter().map(|v| v * v).sum();
    1.0 / (ss / row.len() as f32 + eps).sqrt()
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "hone-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_data(s1, l1, "rms_norm x")?;
        let w = f32_data(s2, l2, "rms_norm weight")?;
        let d = last_dim(l1, "rms_norm x")?;
        let mut out = vec![0f32; x.len()];
        rms_norm_rows(x, w, self.eps, &mut out, d);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        if !x.track_op() {
            return Ok((None, None));
        }
        let dx = x.apply_op3_no_bwd(w, &grad.contiguous()?, &RmsNormBwd { eps: self.eps })?;
        Ok((Some(dx), None))
    }
}

/// `dx = r · (g·w − x · r² · mean(g·w·x))` with `r = 1/rms(x)`.
struct RmsNormBwd {
    eps: f32,
}

impl CustomOp3 for RmsNormBwd {
    fn name(&self) -> &'static str {
        "hone-rms-norm-bwd"
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
        let x = f32_data(s1, l1, "rms_norm_bwd x")?;
        let w = f32_data(s2, l2, "rms_norm_bwd weight")?;
        let g = f32_data(s3, l3, "rms_norm_bwd grad")?;
        let d = last_dim(l1, "rms_norm_bwd x")?;
        let mut out = vec![0f32; x.len()];
        rms_norm_rows_bwd(x, w, g, self.eps, (&mut out, false), d);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::{check_op, randn};

    #[test]
    fn rms_norm_matches_slow_reference_and_gradients() -> Result<()> {
        let x = randn(&[2, 3, 16], 1);
        let w = (randn(&[16], 2) * 0.5)?.affine(1.0, 1.0)?;
        check_op(
            &[x, w],
            &[true, false],
            |t| rms_norm(&t[0], &t[1], 1e-5),
            |t| candle_nn::ops::rms_norm_slow(&t[0], &t[1], 1e-5),
            1e-5,
        )
    }
}
