//! A linear layer: a frozen base weight (dense f32 or quantized) plus an
//! optional LoRA adapter that can be attached, replaced or bypassed without
//! touching the base.

use std::sync::Arc;

use candle_core::{DType, Tensor};

use crate::decode::packed::PackedMatrix;
use crate::error::{ModelError, Result};

/// The HF names of the projections LoRA can target, in model order.
pub const TARGET_MODULES: &[&str] = &[
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// The frozen weight of a [`Linear`], in HF layout `[out, in]`.
#[derive(Debug, Clone)]
pub enum BaseWeight {
    /// f32 weights: the training path and the numerical reference.
    Dense(Tensor),
    /// Quantized blocks multiplied with f32 activations by hone's own
    /// kernels ([`crate::decode`]): the serving path.
    Packed(Arc<PackedMatrix>),
}

/// `x·Wᵀ` through a packed matrix for a tensor input (the candle-tensor paths,
/// e.g. scoring; decode steps call the matrix on slices directly).
pub fn packed_forward(p: &PackedMatrix, x: &Tensor) -> Result<Tensor> {
    let dims = x.dims();
    let rows: usize = dims[..dims.len().saturating_sub(1)].iter().product();
    let xs = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let y = p.matmul(&xs, rows)?;
    let mut out = dims.to_vec();
    if let Some(last) = out.last_mut() {
        *last = p.dims().0;
    }
    Ok(Tensor::from_vec(y, out, x.device())?)
}

/// A low-rank update `scale · (x·Aᵀ)·Bᵀ` with `A: [r, in]`, `B: [out, r]`
/// and `scale = alpha / r` (PEFT's convention).
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f64,
}

impl LoraAdapter {
    /// Builds an adapter from PEFT's `lora_alpha` and the matrices, checking shapes.
    pub fn new(a: Tensor, b: Tensor, alpha: f64) -> Result<Self> {
        let (r, _) = a.dims2()?;
        let (_, rb) = b.dims2()?;
        if r == 0 || r != rb {
            return Err(ModelError::Adapter(format!(
                "rank mismatch: A is {:?}, B is {:?}",
                a.dims(),
                b.dims()
            )));
        }
        Ok(Self {
            a,
            b,
            scale: alpha / r as f64,
        })
    }

    pub fn rank(&self) -> usize {
        self.a.dims()[0]
    }

    /// The adapter's contribution alone, for an input `x: [.., in]`.
    pub fn delta(&self, x: &Tensor) -> Result<Tensor> {
        let xa = x.broadcast_matmul(&self.a.t()?)?;
        Ok((xa.broadcast_matmul(&self.b.t()?)? * self.scale)?)
    }
}

/// `y = x·Wᵀ (+ LoRA)`, no bias (Llama has none).
#[derive(Debug, Clone)]
pub struct Linear {
    base: BaseWeight,
    adapter: Option<LoraAdapter>,
    in_dim: usize,
    out_dim: usize,
}

impl Linear {
    pub fn new(base: BaseWeight, out_dim: usize, in_dim: usize) -> Self {
        Self {
            base,
            adapter: None,
            in_dim,
            out_dim,
        }
    }

    pub fn base(&self) -> &BaseWeight {
        &self.base
    }

    /// The packed base matrix, while this linear is its only owner (at load).
    pub(crate) fn packed_mut(&mut self) -> Option<&mut PackedMatrix> {
        match &mut self.base {
            BaseWeight::Packed(p) => Arc::get_mut(p),
            BaseWeight::Dense(_) => None,
        }
    }

    pub fn adapter(&self) -> Option<&LoraAdapter> {
        self.adapter.as_ref()
    }

    /// `(out, in)` of the base weight.
    pub fn dims(&self) -> (usize, usize) {
        (self.out_dim, self.in_dim)
    }

    /// Attaches (or with `None` removes) an adapter, checking that it fits.
    pub fn set_adapter(&mut self, adapter: Option<LoraAdapter>) -> Result<()> {
        if let Some(ad) = &adapter {
            let (_, a_in) = ad.a.dims2()?;
            let (b_out, _) = ad.b.dims2()?;
            if a_in != self.in_dim || b_out != self.out_dim {
                return Err(ModelError::Adapter(format!(
                    "adapter A {:?} / B {:?} does not fit a [{}, {}] weight",
                    ad.a.dims(),
                    ad.b.dims(),
                    self.out_dim,
                    self.in_dim
                )));
            }
        }
        self.adapter = adapter;
        Ok(())
    }

    /// The full layer: base plus adapter (if any and if `use_adapter`).
    pub fn forward(&self, x: &Tensor, use_adapter: bool) -> Result<Tensor> {
        let y = self.forward_base(x)?;
        match (&self.adapter, use_adapter) {
            (Some(ad), true) => Ok((y + ad.delta(x)?)?),
            _ => Ok(y),
        }
    }

    /// The frozen base alone.
    pub fn forward_base(&self, x: &Tensor) -> Result<Tensor> {
        match &self.base {
            BaseWeight::Dense(w) => dense_matmul(x, w),
            BaseWeight::Packed(p) => packed_forward(p, x),
        }
    }
}

/// `x·Wᵀ` for `x: [.., in]` and `W: [out, in]`, flattening leading dims so
/// gemm sees one large matrix product. A weight of another dtype than `x` (a base held
/// in bf16 for training, `--base-weights bf16`) is widened for this product only.
pub fn dense_matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let w = &w.to_dtype(x.dtype())?;
    let dims = x.dims();
    let in_dim = *dims
        .last()
        .ok_or_else(|| ModelError::Generation("matmul of a scalar".into()))?;
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let y = x.reshape((rows, in_dim))?.matmul(&w.t()?)?;
    let mut out = dims.to_vec();
    if let Some(last) = out.last_mut() {
        *last = w.dims()[0];
    }
    Ok(y.reshape(out)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn adapter_adds_scaled_low_rank_update_and_can_be_bypassed() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1., (6, 4), &dev)?;
        let mut lin = Linear::new(BaseWeight::Dense(w.clone()), 6, 4);
        let x = Tensor::randn(0f32, 1., (2, 3, 4), &dev)?;
        let a = Tensor::randn(0f32, 1., (2, 4), &dev)?;
        let b = Tensor::randn(0f32, 1., (6, 2), &dev)?;
        lin.set_adapter(Some(LoraAdapter::new(a.clone(), b.clone(), 4.0)?))?;
        let want_w = (w + (b.matmul(&a)? * 2.0)?)?;
        let want = x.broadcast_matmul(&want_w.t()?)?;
        let got = lin.forward(&x, true)?;
        let diff = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-4, "{diff}");
        let base = lin.forward(&x, false)?;
        let diff = (base - lin.forward_base(&x)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert_eq!(diff, 0.0);
        Ok(())
    }

    #[test]
    fn adapter_of_wrong_shape_is_rejected() -> Result<()> {
        let dev = Device::Cpu;
        let mut lin = Linear::new(
            BaseWeight::Dense(Tensor::zeros((6, 4), DType::F32, &dev)?),
            6,
            4,
        );
        let a = Tensor::zeros((2, 5), DType::F32, &dev)?;
        let b = Tensor::zeros((6, 2), DType::F32, &dev)?;
        assert!(lin.set_adapter(Some(LoraAdapter::new(a, b, 8.0)?)).is_err());
        Ok(())
    }
}
