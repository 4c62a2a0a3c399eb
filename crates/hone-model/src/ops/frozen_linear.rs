//! `x · wᵀ` for a frozen weight: the backward computes `dx` only.
//!
//! candle's matmul backward always computes the right-hand (weight) gradient, even for a
//! detached weight, and keeps it in the gradient store until the step ends. For LoRA the
//! base weights are frozen, so that is wasted work (a third of the matmul FLOPs) and, for a
//! 135M model, gigabytes of memory (architecture.md: 95 → 136 tokens/s, 9.9 → 3.5 GB).

use std::sync::Arc;

use super::base_weights::{self, Bf16Weight, FrozenWeight, PreparedWeight};
use super::bf16::Bf16Kernel;
use super::kernel::f32_data;
use crate::linear::BaseWeight;
use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};

/// `x · wᵀ` with `x` of shape `(…, in)` and `w` of shape `(out, in)` (the PyTorch /
/// safetensors layout), giving `(…, out)`. The weight is treated as frozen: it is
/// detached, so it never receives a gradient (even if it is a `Var`), and the backward
/// computes only `dx = dy · w`.
pub fn frozen_linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (n_out, n_in) = w.dims2()?;
    let dims = x.dims();
    if dims.last() != Some(&n_in) {
        bail!("frozen_linear: x {dims:?} does not end in the weight's input dim {n_in}");
    }
    if x.dtype() != DType::F32 || w.dtype() != DType::F32 {
        bail!("frozen_linear: only f32 is supported");
    }
    let rows = x.elem_count() / n_in;
    let mut out_dims = dims.to_vec();
    *out_dims.last_mut().expect("non-empty dims") = n_out;
    let x2 = x.contiguous()?.reshape((rows, n_in))?;
    let w = w.detach().contiguous()?;
    let op = FrozenLinear {
        bf16: base_weights::prepare(&w, base_weights::current_precision())?,
    };
    x2.apply_op2(&w, op)?.reshape(out_dims)
}

/// [`frozen_linear`] for a model's base weight: an f32 tensor, a bf16 tensor
/// (`--base-weights bf16`, multiplied by the bf16 kernels), or quantized blocks kept as
/// they are (`--base-weights q8_0|native`, multiplied over dequantized panels), in the
/// forward and in the backward's `dx`.
pub fn frozen_linear_base(x: &Tensor, w: &BaseWeight) -> Result<Tensor> {
    if let BaseWeight::Dense(t) = w {
        if t.dtype() == DType::F32 {
            return frozen_linear(x, t);
        }
    }
    let w = PreparedWeight::new(w, base_weights::current_precision())?;
    let (n_out, n_in) = w.dims()?;
    let dims = x.dims();
    if dims.last() != Some(&n_in) || x.dtype() != DType::F32 {
        bail!("frozen_linear: x {dims:?} is not f32 ending in the weight's input dim {n_in}");
    }
    let rows = x.elem_count() / n_in;
    let mut out_dims = dims.to_vec();
    *out_dims.last_mut().expect("non-empty dims") = n_out;
    let x2 = x.contiguous()?.reshape((rows, n_in))?;
    x2.apply_op1(FrozenBase { w })?.reshape(out_dims)
}

/// `x · wᵀ` with `w` held without f32 data, in bf16 or in blocks (see
/// [`frozen_linear_base`]).
struct FrozenBase {
    w: PreparedWeight,
}

impl CustomOp1 for FrozenBase {
    fn name(&self) -> &'static str {
        "hone-frozen-linear-base"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (m, k) = l.shape().dims2()?;
        let (n, _) = self.w.dims()?;
        let x = f32_data(s, l, "frozen_linear x")?;
        let mut y = vec![0f32; m * n];
        self.w.operand(&[]).forward(x, &mut y, (m, k, n), false);
        Ok((CpuStorage::F32(y), Shape::from((m, n))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (m, (n, k)) = (grad.dim(0)?, self.w.dims()?);
        let dy = grad.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let mut dx = vec![0f32; m * k];
        self.w.operand(&[]).backward(&dy, &mut dx, (m, k, n), false);
        Ok(Some(Tensor::from_vec(dx, (m, k), x.device())?))
    }
}

/// The op, with the weight's bf16 copy when products run in bf16 (`base_weights`).
struct FrozenLinear {
    bf16: Option<(Arc<Bf16Weight>, Bf16Kernel)>,
}

impl FrozenLinear {
    /// The weight as a bf16 product operand (its f32 slice is not read on that path).
    fn bf16_weight(&self) -> Option<FrozenWeight<'_>> {
        let (w, k) = self.bf16.as_ref()?;
        Some(FrozenWeight {
            f32: &[],
            bf16: Some((w, *k)),
            packed: None,
        })
    }
}

impl CustomOp2 for FrozenLinear {
    fn name(&self) -> &'static str {
        "hone-frozen-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (m, k) = l1.shape().dims2()?;
        let (n, k2) = l2.shape().dims2()?;
        if k != k2 {
            bail!("frozen_linear: inner dims differ ({k} vs {k2})");
        }
        if let Some(w) = self.bf16_weight() {
            let x = f32_data(s1, l1, "frozen_linear x")?;
            let mut y = vec![0f32; m * n];
            w.forward(x, &mut y, (m, k, n), false);
            return Ok((CpuStorage::F32(y), Shape::from((m, n))));
        }
        // wᵀ as a strided view: no copy; gemm handles the column-major operand.
        let wt = l2.transpose(0, 1)?;
        let out = s1.matmul(s2, (1, m, n, k), l1, &wt)?;
        Ok((out, Shape::from((m, n))))
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
        if let Some(wb) = self.bf16_weight() {
            let (m, (n, k)) = (grad.dim(0)?, w.dims2()?);
            let dy = grad.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
            let mut dx = vec![0f32; m * k];
            wb.backward(&dy, &mut dx, (m, k, n), false);
            return Ok((Some(Tensor::from_vec(dx, (m, k), w.device())?), None));
        }
        // grad and w are both detached, so this matmul adds nothing to the graph.
        let dx = grad.contiguous()?.matmul(w)?;
        Ok((Some(dx), None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::{assert_close, check_op, randn};
    use candle_core::Var;

    #[test]
    fn frozen_linear_matches_matmul_and_dx() -> Result<()> {
        check_op(
            &[randn(&[2, 3, 8], 1), randn(&[5, 8], 2)],
            &[true, false],
            |t| frozen_linear(&t[0], &t[1]),
            |t| t[0].broadcast_matmul(&t[1].t()?),
            1e-5,
        )
    }

    #[test]
    fn frozen_linear_leaves_no_weight_gradient() -> Result<()> {
        let x = Var::from_tensor(&randn(&[4, 6], 3))?;
        let w = Var::from_tensor(&randn(&[7, 6], 4))?;
        let grads = frozen_linear(&x, &w)?.sqr()?.sum_all()?.backward()?;
        assert!(
            grads.get(&w).is_none(),
            "a frozen weight must get no gradient"
        );
        let y = x.matmul(&w.t()?)?;
        let expected = (y * 2.0)?.matmul(&w)?;
        assert_close(grads.get(&x).expect("dx"), &expected, 1e-5, "dx");
        Ok(())
    }

    #[test]
    fn frozen_linear_rejects_mismatched_dims() {
        assert!(frozen_linear(&randn(&[2, 5], 1), &randn(&[3, 4], 2)).is_err());
    }
}
