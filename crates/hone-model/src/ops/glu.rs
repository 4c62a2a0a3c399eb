//! The gate of a gated feed-forward, `act(gate) · up`, fused, with gradients for both
//! inputs: SwiGLU's `silu` (Llama, Qwen) or GeGLU's tanh-approximated GELU (Gemma,
//! `gelu_pytorch_tanh`), as [`Activation`] says.
//!
//! The stock version keeps `act(gate)`, its pieces and the product as separate tensors of
//! the MLP's intermediate size (the largest activations in the model). Here the forward
//! keeps nothing, and the backward recomputes the activation.

use super::kernel::{f32_data, fast_exp, par_rows};
use crate::family::Activation;
use candle_core::{bail, CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};

/// `act(gate) · up` elementwise, for tensors of equal shape. Differentiable with respect
/// to both.
pub fn glu(act: Activation, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if gate.dims() != up.dims() {
        bail!(
            "glu: gate {:?} and up {:?} differ in shape",
            gate.dims(),
            up.dims()
        );
    }
    if gate.dtype() != DType::F32 || up.dtype() != DType::F32 {
        bail!("glu: only f32 is supported");
    }
    gate.contiguous()?.apply_op2(&up.contiguous()?, Glu(act))
}

/// `silu(gate) · up` (`silu(x) = x · sigmoid(x)`): [`glu`] with SwiGLU's activation.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    glu(Activation::Silu, gate, up)
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + fast_exp(-x))
}

/// `√(2/π)`, the tanh approximation's constant.
const GELU_C: f32 = 0.797_884_6;
/// The cubic coefficient of the tanh approximation.
const GELU_K: f32 = 0.044_715;

/// `tanh(u)` from one exponential (saturates cleanly at ±1).
fn tanh(u: f32) -> f32 {
    1.0 - 2.0 / (fast_exp(2.0 * u) + 1.0)
}

/// `act(x)` and `act'(x)` of one element.
#[inline(always)]
fn act_and_slope(act: Activation, x: f32) -> (f32, f32) {
    match act {
        Activation::Silu => {
            let s = sigmoid(x);
            (x * s, s * (1.0 + x * (1.0 - s)))
        }
        // gelu(x) = x/2 · (1 + tanh(u)), u = c·(x + k·x³);
        // gelu'(x) = (1 + tanh u)/2 + x/2 · (1 − tanh² u) · c·(1 + 3k·x²).
        Activation::GeluTanh => {
            let th = tanh(GELU_C * (x + GELU_K * x * x * x));
            let slope = 0.5 * (1.0 + th)
                + 0.5 * x * (1.0 - th * th) * GELU_C * (1.0 + 3.0 * GELU_K * x * x);
            (0.5 * x * (1.0 + th), slope)
        }
    }
}

/// `(d gate, d up)` of one element: `g · up · act'(gate)` and `g · act(gate)`.
#[inline(always)]
fn glu_grads(act: Activation, x: f32, u: f32, g: f32) -> (f32, f32) {
    let (a, slope) = act_and_slope(act, x);
    (g * u * slope, g * a)
}

/// `out = act(gate) · up` on slices (the op's forward, shared with the fused stack).
pub(crate) fn glu_into(act: Activation, gate: &[f32], up: &[f32], out: &mut [f32]) {
    par_rows(out, 1, 1, |i0, chunk| {
        let n = chunk.len();
        for ((o, &x), &y) in chunk.iter_mut().zip(&gate[i0..i0 + n]).zip(&up[i0..i0 + n]) {
            *o = act_and_slope(act, x).0 * y;
        }
    });
}

/// Both input gradients of [`glu_into`] in one pass: `d_gate` and `d_up` from the output
/// gradient `g`.
pub(crate) fn glu_bwd_into(
    act: Activation,
    (gate, up): (&[f32], &[f32]),
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
                    (*dg, *du) = glu_grads(act, gate[i0 + j], up[i0 + j], g[i0 + j]);
                }
            });
        }
    });
}

struct Glu(Activation);

impl CustomOp2 for Glu {
    fn name(&self) -> &'static str {
        "hone-glu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let gate = f32_data(s1, l1, "glu gate")?;
        let up = f32_data(s2, l2, "glu up")?;
        let mut out = vec![0f32; gate.len()];
        glu_into(self.0, gate, up, &mut out);
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
        let one = |want_gate| GluBwd {
            act: self.0,
            want_gate,
        };
        let d_gate = match gate.track_op() {
            true => Some(gate.apply_op3_no_bwd(up, &grad, &one(true))?),
            false => None,
        };
        let d_up = match up.track_op() {
            true => Some(gate.apply_op3_no_bwd(up, &grad, &one(false))?),
            false => None,
        };
        Ok((d_gate, d_up))
    }
}

/// One of the two input gradients (`d gate` when `want_gate`, else `d up`), each computed
/// in a single pass over `(gate, up, grad)`.
struct GluBwd {
    act: Activation,
    want_gate: bool,
}

impl CustomOp3 for GluBwd {
    fn name(&self) -> &'static str {
        "hone-glu-bwd"
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
        let gate = f32_data(s1, l1, "glu_bwd gate")?;
        let up = f32_data(s2, l2, "glu_bwd up")?;
        let grad = f32_data(s3, l3, "glu_bwd grad")?;
        let mut out = vec![0f32; gate.len()];
        par_rows(&mut out, 1, 3, |i0, chunk| {
            let n = chunk.len();
            let it = chunk
                .iter_mut()
                .zip(&gate[i0..i0 + n])
                .zip(&up[i0..i0 + n])
                .zip(&grad[i0..i0 + n]);
            for (((o, &x), &u), &g) in it {
                let (dg, du) = glu_grads(self.act, x, u, g);
                *o = if self.want_gate { dg } else { du };
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

    /// GeGLU against PyTorch's `gelu_pytorch_tanh` formula from basic differentiable
    /// candle ops, over a range that reaches both saturated ends of the tanh.
    #[test]
    fn gelu_tanh_glu_matches_reference_and_gradients() -> Result<()> {
        check_op(
            &[(randn(&[3, 4, 10], 3) * 3.0)?, randn(&[3, 4, 10], 4)],
            &[true, true],
            |t| glu(Activation::GeluTanh, &t[0], &t[1]),
            |t| {
                let x = &t[0];
                let cube = (x.sqr()? * x)?;
                let u = ((x + (cube * GELU_K as f64)?)? * GELU_C as f64)?;
                ((x * 0.5)? * (u.tanh()? + 1.0)?)? * &t[1]
            },
            1e-5,
        )
    }
}
