//! SwiGLU's gate: `silu(gate) · up`, fused, with gradients for both inputs.
//!
//! The stock version keeps `sigmoid(gate)`, `silu(gate)` and the product as separate
//! tensors of the MLP's intermediate size (the largest activations in the model). Here the
//! forward keeps nothing, and the backward recomputes the sigmoid.

use super::kernel::{f32_data, fast_exp, par_rows};
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};

/// `silu(gate) · up` elementwise (`silu(x) = x · sigmoid(x)`), for tensors of equal shape.
/// Differentiable with respect to both.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if gate.dims() != up.dims() {
        bail!(
            "silu_mul: gate {:?} and up {:?} differ in shape",
            gate.dims(),
            up.dims()
        );
    }
    if gate.dtype() != DType::F32 || up.dtype() != DType::F32 {
        bail!("silu_mul: only f32 is supported");
    }
    gate.contiguous()?.apply_op2(&up.contiguous()?, SiluMul)
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + fast_exp(-x))
}

struct SiluMul;

/// `(d gate, d up)` of one element: `g · up · σ(gate) · (1 + gate · (1 − σ(gate)))` and
/// `g · silu(gate)`.
#[inline(always)]
fn silu_mul_grads(x: f32, u: f32, g: f32) -> (f32, f32) {
    let s = sigmoid(x);
    (g * u * s * (1.0 + x * (1.0 - s)), g * x * s)
}

/// `out = silu(gate) · up` on slices (the op's forward, shared with the fused stack).
pub(crate) fn silu_mul_into(gate: &[f32], up: &[f32], out: &mut [f32]) {
    par_rows(out, 1, 1, |i0, chunk| {
        let n = chunk.len();
        for ((o, &x), &y) in chunk.iter_mut().zip(&gate[i0..i0 + n]).zip(&up[i0..i0 + n]) {
            *o = x * sigmoid(x) * y;
        }
    });
}

/// Both input gradients of [`silu_mul_into`] in one pass: `d_gate` and `d_up` from the
/// output gradient `g`.
pub(crate) fn silu_mul_bwd_into(
    gate: &[f32],
    up: &[f32],
    g: &[f32],
    d_gate: &mut [f32],
    d_up: &mut [f32],
) {
    // Two interleaved outputs do not fit `par_rows`; split the rows by hand.
    let threads = super::kernel::threads();
    let chunk = gate.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        for (i, (dg, du)) in d_gate
            .chunks_mut(chunk)
            .zip(d_up.chunks_mut(chunk))
            .enumerate()
        {
            let i0 = i * chunk;
            scope.spawn(move || {
                for (j, (dg, du)) in dg.iter_mut().zip(du.iter_mut()).enumerate() {
                    (*dg, *du) = silu_mul_grads(gate[i0 + j], up[i0 + j], g[i0 + j]);
                }
            });
        }
    });
}

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "hone-silu-mul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let gate = f32_data(s1, l1, "silu_mul gate")?;
        let up = f32_data(s2, l2, "silu_mul up")?;
        let mut out = vec![0f32; gate.len()];
        silu_mul_into(gate, up, &mut out);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let d_gate = match gate.track_op() {
            true => Some(gate.apply_op3_no_bwd(up, &grad, &SiluMulBwd::Gate)?),
            false => None,
        };
        let d_up = match up.track_op() {
            true => Some(gate.apply_op3_no_bwd(up, &grad, &SiluMulBwd::Up)?),
            false => None,
        };
        Ok((d_gate, d_up))
    }
}

/// One of the two input gradients, each computed in a single pass over `(gate, up, grad)`.
enum SiluMulBwd {
    /// `d gate = g · up · σ(gate) · (1 + gate · (1 − σ(gate)))`
    Gate,
    /// `d up = g · silu(gate)`
    Up,
}

impl CustomOp3 for SiluMulBwd {
    fn name(&self) -> &'static str {
        "hone-silu-mul-bwd"
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
        let gate = f32_data(s1, l1, "silu_mul_bwd gate")?;
        let up = f32_data(s2, l2, "silu_mul_bwd up")?;
        let grad = f32_data(s3, l3, "silu_mul_bwd grad")?;
        let mut out = vec![0f32; gate.len()];
        let gate_grad = matches!(self, SiluMulBwd::Gate);
        par_rows(&mut out, 1, 3, |i0, chunk| {
            let n = chunk.len();
            let it = chunk
                .iter_mut()
                .zip(&gate[i0..i0 + n])
                .zip(&up[i0..i0 + n])
                .zip(&grad[i0..i0 + n]);
            for (((o, &x), &u), &g) in it {
                let (dg, du) = silu_mul_grads(x, u, g);
                *o = if gate_grad { dg } else { du };
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::{check_op, randn};

    #[test]
    fn silu_mul_matches_reference_and_gradients() -> Result<()> {
        check_op(
            &[(randn(&[3, 4, 10], 1) * 2.0)?, randn(&[3, 4, 10], 2)],
            &[true, true],
            |t| silu_mul(&t[0], &t[1]),
            // silu(x) = x / (1 + exp(-x)) from basic differentiable ops.
            |t| (&t[0] / (t[0].neg()?.exp()? + 1.0)?)? * &t[1],
            1e-5,
        )
    }
}
