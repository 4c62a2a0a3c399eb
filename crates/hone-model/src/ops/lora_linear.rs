//! A frozen linear layer with its LoRA adapter in one op:
//! `y = x·Wᵀ + scale · (dropout(x)·Aᵀ)·Bᵀ`, differentiable in `x`, `A` and `B` only.
//!
//! Built from autograd ops, that is a frozen matmul, two adapter matmuls, a scale, a
//! dropout mask multiply and an add, and candle's backward gives every one of those edges
//! a zero-filled gradient buffer plus an add pass; for `gate_proj` at 4×256 tokens each
//! pass is 6 MB. Here the adapter's rank-`r` product is accumulated into the frozen
//! product's output by the same gemm call (`beta`), the backward writes `dx`, `dA` and `dB`
//! directly, and the dropout mask is a hash of (seed, element) that the backward recomputes
//! rather than a stored tensor.

use std::sync::Arc;

use super::base_weights::{self, Bf16Weight, FrozenWeight};
use super::bf16::Bf16Kernel;
use super::kernel::{f32_data, par_rows};
use super::low_rank;
use candle_core::{bail, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor};

/// PEFT's `lora_dropout` on the adapter input: each element is zeroed with probability
/// `p`, the rest scaled by `1/(1-p)`, by a mask that is a pure function of `seed`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dropout {
    /// Probability of zeroing an element, in `[0, 1)`.
    pub p: f32,
    /// Selects the mask; the same seed gives the same mask.
    pub seed: u64,
}

impl Dropout {
    /// The multiplier of element `i`: 0 or `1/(1-p)`.
    fn factor(&self, i: usize) -> f32 {
        let mut z = self
            .seed
            .wrapping_add((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        let u = ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32;
        if u < self.p {
            0.0
        } else {
            1.0 / (1.0 - self.p)
        }
    }

    /// `x ⊙ mask`, element `i` of `x` being element `i` of the whole input.
    fn apply(&self, x: &[f32]) -> Vec<f32> {
        let mut out = vec![0f32; x.len()];
        par_rows(&mut out, 1, 1, |i0, chunk| {
            for (j, o) in chunk.iter_mut().enumerate() {
                *o = x[i0 + j] * self.factor(i0 + j);
            }
        });
        out
    }
}

/// `x · wᵀ + scale · (dropout(x) · aᵀ) · bᵀ` for `x: (…, in)`, the frozen `w: (out, in)`,
/// `a: (r, in)` and `b: (out, r)` (PEFT's `lora_A`/`lora_B` layout), giving `(…, out)`.
/// `w` never gets a gradient; `x`, `a` and `b` do when they track one.
pub fn lora_linear(
    x: &Tensor,
    w: &Tensor,
    a: &Tensor,
    b: &Tensor,
    scale: f64,
    dropout: Option<Dropout>,
) -> Result<Tensor> {
    let (n_out, n_in) = w.dims2()?;
    let (r, a_in) = a.dims2()?;
    let dims = x.dims();
    if dims.last() != Some(&n_in) || a_in != n_in || b.dims() != [n_out, r] {
        bail!(
            "lora_linear: x {dims:?}, w {:?}, a {:?}, b {:?} do not fit",
            w.dims(),
            a.dims(),
            b.dims()
        );
    }
    if [x, w, a, b].iter().any(|t| t.dtype() != DType::F32) {
        bail!("lora_linear: only f32 is supported");
    }
    if let Some(d) = dropout {
        if !(0.0..1.0).contains(&d.p) {
            bail!("lora dropout must be in [0, 1), got {}", d.p);
        }
    }
    let rows = x.elem_count() / n_in;
    let mut out_dims = dims.to_vec();
    *out_dims.last_mut().expect("non-empty dims") = n_out;
    let w = w.detach().contiguous()?;
    let op = LoraLinear {
        bf16: base_weights::prepare(&w, base_weights::current_precision())?,
        w,
        shape: Dims { rows, n_in, n_out },
        r,
        scale: scale as f32,
        dropout: dropout.filter(|d| d.p > 0.0),
    };
    x.contiguous()?
        .reshape((rows, n_in))?
        .apply_op3(&a.contiguous()?, &b.contiguous()?, op)?
        .reshape(out_dims)
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Dims {
    pub rows: usize,
    pub n_in: usize,
    pub n_out: usize,
}

/// An adapter's matrices and settings, on slices: `a: [r, n_in]`, `b: [n_out, r]`.
#[derive(Clone, Copy)]
pub(crate) struct AdapterSlices<'a> {
    pub a: &'a [f32],
    pub b: &'a [f32],
    pub r: usize,
    pub scale: f32,
    pub dropout: Option<Dropout>,
}

/// The op's kernels on slices: a frozen `w: [n_out, n_in]` (multiplied in f32 or bf16)
/// and an optional adapter, over `rows` input rows. The fused decoder stack calls these
/// directly with its own buffers.
#[derive(Clone, Copy)]
pub(crate) struct LoraKernel<'a> {
    pub dims: Dims,
    pub w: FrozenWeight<'a>,
    pub adapter: Option<AdapterSlices<'a>>,
}

/// Where [`LoraKernel::backward`] writes its gradients.
pub(crate) struct LoraGrads<'a> {
    /// `dx: [rows, n_in]`, added to when the flag is set; `None`: not needed.
    pub dx: Option<(&'a mut [f32], bool)>,
    /// `dA: [r, n_in]` and `dB: [n_out, r]` (overwritten); used only with an adapter.
    pub dab: Option<(&'a mut [f32], &'a mut [f32])>,
}

impl LoraKernel<'_> {
    /// `y = x·wᵀ + scale · (dropout(x)·aᵀ)·bᵀ` (`y +=` when `acc`, e.g. onto a residual
    /// stream). Returns `xa = dropout(x)·aᵀ` (`[rows, r]`, empty without an adapter),
    /// which the backward needs.
    pub fn forward(&self, x: &[f32], y: &mut [f32], acc: bool) -> Vec<f32> {
        let Dims { rows, n_in, n_out } = self.dims;
        self.w.forward(x, y, (rows, n_in, n_out), acc);
        let Some(ad) = self.adapter else {
            return Vec::new();
        };
        let xa = self.down(&ad, x);
        // y += scale · xa·bᵀ, one pass over y.
        let bt = low_rank::transposed(ad.b, n_out, ad.r);
        low_rank::expand(y, &xa, &bt, (rows, n_out, ad.r), ad.scale, true);
        xa
    }

    /// `xa = dropout(x)·aᵀ`, `[rows, r]`.
    fn down(&self, ad: &AdapterSlices, x: &[f32]) -> Vec<f32> {
        let Dims { rows, n_in, .. } = self.dims;
        let xm = adapter_input(ad, x);
        let mut xa = vec![0f32; rows * ad.r];
        low_rank::project(&mut xa, &xm, ad.a, (rows, n_in, ad.r), 1.0);
        xa
    }

    /// Gradients for the output gradient `dy`: `dB = scale·dyᵀ·xa`, `dxa = scale·dy·b`,
    /// `dA = dxaᵀ·dropout(x)`, `dx = dy·w + (dxa·a) ⊙ mask`. `xa` is the forward's
    /// (recomputed when `None`).
    pub fn backward(&self, x: &[f32], xa: Option<&[f32]>, dy: &[f32], out: LoraGrads) {
        let Dims { rows, n_in, n_out } = self.dims;
        let mut dxa = Vec::new();
        if let (Some(ad), Some((da, db))) = (self.adapter, out.dab) {
            let xa_owned;
            let xa = match xa {
                Some(xa) => xa,
                None => {
                    xa_owned = self.down(&ad, x);
                    &xa_owned
                }
            };
            let r = ad.r;
            // dB = (scale·xaᵀ·dy)ᵀ, written in dB's layout.
            low_rank::outer_sum_t(db, xa, dy, (rows, n_out, r), ad.scale);
            dxa = vec![0f32; rows * r];
            let bt = low_rank::transposed(ad.b, n_out, r);
            low_rank::project(&mut dxa, dy, &bt, (rows, n_out, r), ad.scale);
            let xm = adapter_input(&ad, x);
            low_rank::outer_sum(da, &dxa, &xm, (rows, n_in, r), 1.0);
        }
        let Some((dx, acc)) = out.dx else {
            return;
        };
        self.w.backward(dy, dx, (rows, n_in, n_out), acc);
        if let (Some(ad), false) = (self.adapter, dxa.is_empty()) {
            add_adapter_dx(&ad, self.dims, dx, &dxa);
        }
    }
}

/// The adapter input `dropout(x)` (borrowed when there is no dropout).
fn adapter_input<'a>(ad: &AdapterSlices, x: &'a [f32]) -> std::borrow::Cow<'a, [f32]> {
    match &ad.dropout {
        Some(d) => d.apply(x).into(),
        None => x.into(),
    }
}

/// `dx += (dxa·a) ⊙ mask`: added in place without dropout, through a scratch buffer
/// and the recomputed mask with it.
fn add_adapter_dx(ad: &AdapterSlices, dims: Dims, dx: &mut [f32], dxa: &[f32]) {
    let Dims { rows, n_in, .. } = dims;
    let Some(d) = ad.dropout else {
        low_rank::expand(dx, dxa, ad.a, (rows, n_in, ad.r), 1.0, true);
        return;
    };
    let mut g = vec![0f32; rows * n_in];
    low_rank::expand(&mut g, dxa, ad.a, (rows, n_in, ad.r), 1.0, false);
    par_rows(dx, 1, 1, |i0, chunk| {
        for (j, o) in chunk.iter_mut().enumerate() {
            *o += g[i0 + j] * d.factor(i0 + j);
        }
    });
}

#[derive(Clone)]
struct LoraLinear {
    w: Tensor,
    /// `w`'s bf16 copy when the products run in bf16.
    bf16: Option<(Arc<Bf16Weight>, Bf16Kernel)>,
    shape: Dims,
    r: usize,
    scale: f32,
    dropout: Option<Dropout>,
}

impl LoraLinear {
    /// Runs `f` on the kernel over the frozen weight's data and the adapter `a`, `b`.
    fn with_kernel<T>(
        &self,
        a: &[f32],
        b: &[f32],
        f: impl FnOnce(LoraKernel) -> Result<T>,
    ) -> Result<T> {
        let (storage, layout) = self.w.storage_and_layout();
        let w = match &*storage {
            Storage::Cpu(s) => f32_data(s, layout, "lora_linear w")?,
            _ => bail!("lora_linear: only the CPU backend is supported"),
        };
        f(LoraKernel {
            dims: self.shape,
            w: FrozenWeight {
                f32: w,
                bf16: self.bf16.as_ref().map(|(w, k)| (&**w, *k)),
                packed: None,
            },
            adapter: Some(AdapterSlices {
                a,
                b,
                r: self.r,
                scale: self.scale,
                dropout: self.dropout,
            }),
        })
    }
}

impl CustomOp3 for LoraLinear {
    fn name(&self) -> &'static str {
        "hone-lora-linear"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sa: &CpuStorage,
        la: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let Dims { rows, n_out, .. } = self.shape;
        let x = f32_data(sx, lx, "lora_linear x")?;
        let a = f32_data(sa, la, "lora_linear a")?;
        let b = f32_data(sb, lb, "lora_linear b")?;
        let mut y = vec![0f32; rows * n_out];
        self.with_kernel(a, b, |k| {
            k.forward(x, &mut y, false);
            Ok(())
        })?;
        Ok((CpuStorage::F32(y), Shape::from((rows, n_out))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Dims { rows, n_in, n_out } = self.shape;
        let r = self.r;
        let ab = Tensor::cat(&[a.flatten_all()?, b.flatten_all()?], 0)?;
        let all = x.apply_op3_no_bwd(
            &ab,
            &grad.contiguous()?,
            &LoraLinearBwd {
                fwd: self.clone(),
                need_dx: x.track_op(),
            },
        )?;
        let (nx, na) = (if x.track_op() { rows * n_in } else { 0 }, r * n_in);
        let dx = x
            .track_op()
            .then(|| all.narrow(0, 0, nx)?.reshape((rows, n_in)))
            .transpose()?;
        let da = a
            .track_op()
            .then(|| all.narrow(0, nx, na)?.reshape((r, n_in)))
            .transpose()?;
        let db = b
            .track_op()
            .then(|| all.narrow(0, nx + na, n_out * r)?.reshape((n_out, r)))
            .transpose()?;
        Ok((dx, da, db))
    }
}

/// Inputs: `x`, `a` and `b` flattened and concatenated, and `dy`. Output: the flat
/// `[dx | dA | dB]` (`dx` left out when `x` needs no gradient).
struct LoraLinearBwd {
    fwd: LoraLinear,
    need_dx: bool,
}

impl CustomOp3 for LoraLinearBwd {
    fn name(&self) -> &'static str {
        "hone-lora-linear-bwd"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sab: &CpuStorage,
        lab: &Layout,
        sg: &CpuStorage,
        lg: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let f = &self.fwd;
        let Dims { rows, n_in, n_out } = f.shape;
        let r = f.r;
        let x = f32_data(sx, lx, "lora_linear_bwd x")?;
        let (a, b) = f32_data(sab, lab, "lora_linear_bwd a,b")?.split_at(r * n_in);
        let dy = f32_data(sg, lg, "lora_linear_bwd grad")?;
        let nx = if self.need_dx { rows * n_in } else { 0 };
        let mut out = vec![0f32; nx + r * n_in + n_out * r];
        let (dx, dab) = out.split_at_mut(nx);
        let (da, db) = dab.split_at_mut(r * n_in);
        f.with_kernel(a, b, |k| {
            let grads = LoraGrads {
                dx: self.need_dx.then_some((dx, false)),
                dab: Some((da, db)),
            };
            k.backward(x, None, dy, grads);
            Ok(())
        })?;
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::{check_op, randn};

    fn reference(t: &[Tensor], scale: f64, mask: Option<&Tensor>) -> Result<Tensor> {
        let (x, w, a, b) = (&t[0], &t[1], &t[2], &t[3]);
        let xm = match mask {
            Some(m) => (x * m)?,
            None => x.clone(),
        };
        let lora = (xm.broadcast_matmul(&a.t()?)?.broadcast_matmul(&b.t()?)? * scale)?;
        x.broadcast_matmul(&w.detach().t()?)? + lora
    }

    #[test]
    fn lora_linear_matches_stock_ops_and_gradients() -> Result<()> {
        check_op(
            &[
                randn(&[2, 3, 8], 1),
                randn(&[5, 8], 2),
                randn(&[4, 8], 3),
                randn(&[5, 4], 4),
            ],
            &[true, false, true, true],
            |t| lora_linear(&t[0], &t[1], &t[2], &t[3], 0.7, None),
            |t| reference(t, 0.7, None),
            1e-5,
        )
    }

    #[test]
    fn dropout_mask_is_seeded_and_matches_a_masked_reference() -> Result<()> {
        let d = Dropout { p: 0.3, seed: 11 };
        let n = 2 * 3 * 8;
        let mask: Vec<f32> = (0..n).map(|i| d.factor(i)).collect();
        let zeros = mask.iter().filter(|&&m| m == 0.0).count();
        assert!(zeros > 0 && zeros < n, "{zeros} of {n} dropped");
        assert!(mask
            .iter()
            .all(|&m| m == 0.0 || (m - 1.0 / 0.7).abs() < 1e-6));
        let other: Vec<f32> = (0..n)
            .map(|i| Dropout { seed: 12, ..d }.factor(i))
            .collect();
        assert_ne!(mask, other, "another seed gives another mask");
        let mask = Tensor::from_vec(mask, (2, 3, 8), &candle_core::Device::Cpu)?;
        check_op(
            &[
                randn(&[2, 3, 8], 1),
                randn(&[5, 8], 2),
                randn(&[4, 8], 3),
                randn(&[5, 4], 4),
            ],
            &[true, false, true, true],
            |t| lora_linear(&t[0], &t[1], &t[2], &t[3], 2.0, Some(d)),
            |t| reference(t, 2.0, Some(&mask)),
            1e-5,
        )
    }

    #[test]
    fn lora_linear_rejects_bad_shapes_and_dropout() {
        let (x, w, a, b) = (
            randn(&[3, 8], 1),
            randn(&[5, 8], 2),
            randn(&[4, 8], 3),
            randn(&[5, 4], 4),
        );
        assert!(lora_linear(&x, &w, &a, &b.t().unwrap(), 1.0, None).is_err());
        assert!(lora_linear(&randn(&[3, 7], 1), &w, &a, &b, 1.0, None).is_err());
        let bad = Dropout { p: 1.0, seed: 0 };
        assert!(lora_linear(&x, &w, &a, &b, 1.0, Some(bad)).is_err());
    }
}
