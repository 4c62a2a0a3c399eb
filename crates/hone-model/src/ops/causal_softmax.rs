//! Scaled, causally masked softmax over attention scores, with backward.
//!
//! Attention is `softmax(causal(q·kᵀ · scale)) · v`. The two matmuls act on activations
//! that both need gradients, so stock candle matmuls are right for them; the softmax in
//! between is where candle has no fused differentiable kernel (`softmax_last_dim` drops the
//! gradient, and the basic-op version with a `-inf` mask makes six temporaries). This op
//! fuses the scale, the mask and the softmax, and writes exact zeros above the diagonal.

use super::kernel::{f32_data, fast_exp, last_dim, par_rows};
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};

/// `softmax(scores · scale)` over the last dim, where query row `i` (of `t_q`) sees key
/// columns `j <= i + (t_k − t_q)` and masked entries are exactly 0. `scores` is
/// `(…, t_q, t_k)` with `t_k >= t_q` (keys may include an earlier cached prefix).
/// Differentiable with respect to `scores`.
pub fn causal_softmax(scores: &Tensor, scale: f64) -> Result<Tensor> {
    let dims = scores.dims();
    if dims.len() < 2 {
        bail!("causal_softmax: expected (…, t_q, t_k), got {dims:?}");
    }
    let (tq, tk) = (dims[dims.len() - 2], dims[dims.len() - 1]);
    if tk < tq {
        bail!("causal_softmax: t_k ({tk}) must be >= t_q ({tq})");
    }
    if scale.is_nan() || scale <= 0.0 {
        bail!("causal_softmax: scale must be positive, got {scale}");
    }
    if scores.dtype() != DType::F32 {
        bail!("causal_softmax: only f32 is supported");
    }
    scores.contiguous()?.apply_op1(CausalSoftmax {
        scale: scale as f32,
    })
}

struct CausalSoftmax {
    scale: f32,
}

/// Number of visible keys for a flat row index of a `(…, t_q, t_k)` tensor.
fn visible(row: usize, tq: usize, tk: usize) -> usize {
    row % tq + (tk - tq) + 1
}

fn tq_of(layout: &Layout) -> usize {
    let dims = layout.dims();
    dims[dims.len() - 2]
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "hone-causal-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_data(s, l, "causal_softmax scores")?;
        let tk = last_dim(l, "causal_softmax scores")?;
        let tq = tq_of(l);
        let mut out = vec![0f32; x.len()];
        par_rows(&mut out, tk, tk, |row0, chunk| {
            for (i, y) in chunk.chunks_exact_mut(tk).enumerate() {
                let row = row0 + i;
                let n = visible(row, tq, tk);
                let (xr, yr) = (&x[row * tk..row * tk + n], &mut y[..n]);
                let max = xr.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) * self.scale;
                let mut sum = 0f32;
                for (y, &v) in yr.iter_mut().zip(xr) {
                    *y = fast_exp(v * self.scale - max);
                    sum += *y;
                }
                let inv = 1.0 / sum;
                yr.iter_mut().for_each(|y| *y *= inv);
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        if !arg.track_op() {
            return Ok(None);
        }
        let dx =
            res.apply_op2_no_bwd(&grad.contiguous()?, &CausalSoftmaxBwd { scale: self.scale })?;
        Ok(Some(dx))
    }
}

/// `dx_j = scale · y_j · (g_j − Σ_k y_k g_k)`; masked entries have `y_j = 0`.
struct CausalSoftmaxBwd {
    scale: f32,
}

impl CustomOp2 for CausalSoftmaxBwd {
    fn name(&self) -> &'static str {
        "hone-causal-softmax-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = f32_data(s1, l1, "causal_softmax_bwd probs")?;
        let g = f32_data(s2, l2, "causal_softmax_bwd grad")?;
        let tk = last_dim(l1, "causal_softmax_bwd probs")?;
        let tq = tq_of(l1);
        let mut out = vec![0f32; y.len()];
        par_rows(&mut out, tk, 2 * tk, |row0, chunk| {
            for (i, dx) in chunk.chunks_exact_mut(tk).enumerate() {
                let row = row0 + i;
                let n = visible(row, tq, tk);
                let (yr, gr) = (&y[row * tk..row * tk + n], &g[row * tk..row * tk + n]);
                let dot: f32 = yr.iter().zip(gr).map(|(a, b)| a * b).sum();
                for ((dx, &yv), &gv) in dx[..n].iter_mut().zip(yr).zip(gr) {
                    *dx = self.scale * yv * (gv - dot);
                }
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::{check_op, randn};
    use candle_core::Device;

    /// Stock-op reference: scale, add a large negative mask above the diagonal, softmax.
    fn reference(scores: &Tensor, scale: f64) -> Result<Tensor> {
        let dims = scores.dims();
        let (tq, tk) = (dims[dims.len() - 2], dims[dims.len() - 1]);
        let mask: Vec<f32> = (0..tq * tk)
            .map(|k| {
                if k % tk <= k / tk + tk - tq {
                    0.0
                } else {
                    -1e9
                }
            })
            .collect();
        let mask = Tensor::from_vec(mask, (tq, tk), &Device::Cpu)?;
        let x = (scores * scale)?.broadcast_add(&mask)?;
        candle_nn::ops::softmax(&x, candle_core::D::Minus1)
    }

    #[test]
    fn causal_softmax_matches_reference_and_gradients() -> Result<()> {
        check_op(
            &[randn(&[2, 3, 6, 6], 1)],
            &[true],
            |t| causal_softmax(&t[0], 0.7),
            |t| reference(&t[0], 0.7),
            1e-5,
        )
    }

    #[test]
    fn causal_softmax_with_cached_prefix() -> Result<()> {
        check_op(
            &[randn(&[1, 2, 3, 7], 2)],
            &[true],
            |t| causal_softmax(&t[0], 1.3),
            |t| reference(&t[0], 1.3),
            1e-5,
        )
    }

    #[test]
    fn masked_entries_are_exact_zeros() -> Result<()> {
        let y = causal_softmax(&randn(&[1, 1, 4, 4], 3), 1.0)?;
        let rows: Vec<Vec<f32>> = y.squeeze(0)?.squeeze(0)?.to_vec2()?;
        for (i, row) in rows.iter().enumerate() {
            assert!(row[i + 1..].iter().all(|&v| v == 0.0));
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
        Ok(())
    }
}
