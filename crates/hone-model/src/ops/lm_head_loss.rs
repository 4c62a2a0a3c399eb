//! The LM head and the masked cross-entropy in one op: `loss(hidden · wᵀ)` without ever
//! holding the logits of the whole batch.
//!
//! Why: for 4×256 tokens and a 49k vocabulary the logits and their gradient are 200 MB
//! each, and writing, zeroing and reading them cost about a tenth of a training step
//! (perf: memset, page clearing, `expf`). Here only the trained positions (mask ≠ 0) are
//! projected, a chunk of rows at a time; the forward computes the loss, the token
//! accuracy and, when a gradient will be needed, `d loss / d hidden` right away (the loss
//! is the end of the graph, so its own gradient is a scalar factor known in the
//! backward). The backward then only scales that saved gradient. The matrix products are
//! the same two PyTorch does (logits, and `dlogits · w`); none is recomputed.

use std::sync::{Arc, OnceLock};

use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};

use super::base_weights::{self, PreparedWeight};
use super::cross_entropy::TokenAccuracy;
use super::kernel::{self, f32_data, fast_exp, index_data, par_rows};
use crate::linear::BaseWeight;

/// Trained positions projected per chunk: 256 rows of a 49k vocabulary are 50 MB of
/// logits. Fewer rows starve gemm: on SmolLM2's head the projection ran at 81 GFLOP/s
/// with 64 rows against 106 with 256, and the `dx` product at 76 against 129
/// (`examples/mm_probe.rs`, 2 threads).
const CHUNK_ROWS: usize = 256;

/// Masked mean cross-entropy of `hidden · wᵀ` and the token accuracy, as
/// [`super::masked_cross_entropy`] and [`super::masked_token_accuracy`] give on the
/// materialised logits (up to summation order).
///
/// With `softcap = Some(cap)` the logits are `cap · tanh(hidden · wᵀ / cap)` (the spec's
/// `final_logit_softcap`), and so is the loss's gradient through them.
///
/// `hidden` is `(…, h)`, `w` the frozen `(vocab, h)` head (never given a gradient);
/// `targets` (u32 or i64) and `mask` have the leading shape of `hidden`. Differentiable
/// with respect to `hidden`; when `hidden` carries no gradient (validation), the gradient
/// is not computed.
pub fn lm_head_cross_entropy(
    hidden: &Tensor,
    w: &Tensor,
    targets: &Tensor,
    mask: &Tensor,
    softcap: Option<f32>,
) -> Result<(Tensor, TokenAccuracy)> {
    if w.dtype() != DType::F32 {
        bail!("lm_head_cross_entropy: only f32 is supported");
    }
    let w = BaseWeight::Dense(w.detach().contiguous()?);
    lm_head_cross_entropy_base(hidden, &w, targets, mask, softcap, None)
}

/// [`lm_head_cross_entropy`] for a model's head as it holds it: an f32 tensor, or
/// quantized blocks (`--base-weights q8_0|native`), multiplied over dequantized panels.
///
/// `token_rows = Some((ids, r))` replaces the head's rows of `ids` with `r: [k, h]` (trainable
/// token rows, [`crate::token_rows`]): their logits are `hidden · r_jᵀ`, the loss over
/// the vocabulary sees them, and the op is differentiable in `r` too (`d r_j = Σ_i
/// dlogit_ij · hidden_i`, over the trained positions).
pub fn lm_head_cross_entropy_base(
    hidden: &Tensor,
    w: &BaseWeight,
    targets: &Tensor,
    mask: &Tensor,
    softcap: Option<f32>,
    token_rows: Option<(&[u32], &Tensor)>,
) -> Result<(Tensor, TokenAccuracy)> {
    head_loss(
        hidden,
        w,
        targets,
        mask,
        (softcap, token_rows),
        Reduction::Mean,
    )
}

/// Per sequence, `Σ_t mask · (−log p(target))` of `hidden · wᵀ`: shape `[b]` for
/// `hidden: [b, t, h]` (DPO's sequence log-probs, negated), with the head, softcap and
/// token rows of [`lm_head_cross_entropy_base`].
///
/// Why not the materialised logits: a DPO batch of 8×124 tokens over a 49k vocabulary
/// holds 195 MB of logits, their log-softmax and both gradients, although only the
/// answers' tokens count; here only those positions are projected, as SFT's loss does.
/// The backward takes each sequence's upstream gradient (DPO weighs every pair by
/// `σ(−z)`), so the saved per-position gradients are scaled sequence by sequence.
pub fn lm_head_sequence_nll(
    hidden: &Tensor,
    w: &BaseWeight,
    targets: &Tensor,
    mask: &Tensor,
    softcap: Option<f32>,
    token_rows: Option<(&[u32], &Tensor)>,
) -> Result<Tensor> {
    let Some(&b) = hidden.dims().first().filter(|_| hidden.rank() == 3) else {
        bail!(
            "lm_head_sequence_nll: hidden states must be [b, t, h], got {:?}",
            hidden.dims()
        );
    };
    let reduction = Reduction::SumPerSequence(b);
    Ok(head_loss(hidden, w, targets, mask, (softcap, token_rows), reduction)?.0)
}

/// What the op returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reduction {
    /// The masked mean over every trained position (SFT's loss): a scalar.
    Mean,
    /// The masked sum over each of this many equal-length sequences: `[b]`.
    SumPerSequence(usize),
}

impl Reduction {
    fn segments(self) -> usize {
        match self {
            Reduction::Mean => 1,
            Reduction::SumPerSequence(b) => b.max(1),
        }
    }
}

/// The shared body of [`lm_head_cross_entropy_base`] and [`lm_head_sequence_nll`].
fn head_loss(
    hidden: &Tensor,
    w: &BaseWeight,
    targets: &Tensor,
    mask: &Tensor,
    (softcap, token_rows): (Option<f32>, Option<(&[u32], &Tensor)>),
    reduction: Reduction,
) -> Result<(Tensor, TokenAccuracy)> {
    let dims = hidden.dims();
    if softcap.is_some_and(|c| !(c > 0.0 && c.is_finite())) {
        bail!("lm_head_cross_entropy: the logit softcap must be positive, got {softcap:?}");
    }
    let Some((&h, lead)) = dims.split_last() else {
        bail!("lm_head_cross_entropy: hidden states must have a feature dimension");
    };
    let w = PreparedWeight::new(w, base_weights::current_precision())?;
    let (vocab, wh) = w.dims()?;
    if wh != h || targets.dims() != lead || mask.dims() != lead {
        bail!(
            "lm_head_cross_entropy: hidden {dims:?}, head [{vocab}, {wh}], targets {:?} and mask {:?} do not fit",
            targets.dims(),
            mask.dims()
        );
    }
    if hidden.dtype() != DType::F32 {
        bail!("lm_head_cross_entropy: only f32 is supported");
    }
    let n = targets.elem_count();
    let mask: Vec<f32> = mask
        .detach()
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1()?;
    let targets = targets.detach().contiguous()?.reshape(n)?;
    let (ts, tl) = targets.storage_and_layout();
    let targets = match &*ts {
        candle_core::Storage::Cpu(cpu) => index_data(cpu, tl, "lm_head_cross_entropy targets")?,
        _ => bail!("lm_head_cross_entropy: only the CPU is supported"),
    };
    let mut rows = Vec::new();
    for (i, (&t, &m)) in targets.iter().zip(&mask).enumerate() {
        if m == 0.0 {
            continue;
        }
        match usize::try_from(t) {
            Ok(t) if t < vocab => rows.push((i, t, m)),
            _ => bail!("cross_entropy: target {t} at position {i} is outside the vocabulary (size {vocab})"),
        }
    }
    let patch = token_rows
        .map(|r| HeadPatch::new(r, vocab, h))
        .transpose()?;
    let need_grad = hidden.track_op() || token_rows.is_some_and(|(_, r)| r.track_op());
    let accuracy = Arc::new(OnceLock::new());
    let op = LmHeadLoss {
        w,
        rows,
        softcap,
        need_grad,
        patch,
        reduction,
        grad: OnceLock::new(),
        grad_rows: OnceLock::new(),
        accuracy: accuracy.clone(),
    };
    let hidden = hidden.contiguous()?.reshape((n, h))?;
    let loss = match token_rows {
        Some((_, r)) => hidden.apply_op2(&r.contiguous()?, op)?,
        None => hidden.apply_op1(op)?,
    };
    let accuracy = accuracy.get().copied().unwrap_or_default();
    Ok((loss, accuracy))
}

/// Head rows replaced for the whole op: columns `ids` read `rows` instead of the head.
struct HeadPatch {
    ids: Vec<usize>,
    /// `[k, h]`, row-major.
    rows: Vec<f32>,
}

impl HeadPatch {
    fn new((ids, rows): (&[u32], &Tensor), vocab: usize, h: usize) -> Result<Self> {
        if rows.dims() != [ids.len(), h] {
            bail!(
                "lm_head_cross_entropy: {} token rows of shape {:?}, the head needs [{}, {h}]",
                ids.len(),
                rows.dims(),
                ids.len()
            );
        }
        if let Some(id) = ids.iter().find(|&&id| id as usize >= vocab) {
            bail!("lm_head_cross_entropy: token row id {id} is outside the vocabulary of {vocab}");
        }
        Ok(Self {
            ids: ids.iter().map(|&i| i as usize).collect(),
            rows: rows
                .detach()
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1()?,
        })
    }

    /// Overwrites the patched columns of each row of `logits` with `x_i · r_j`.
    fn logits(&self, x: &[f32], h: usize, logits: &mut [f32], vocab: usize) {
        for (xi, zi) in x.chunks_exact(h).zip(logits.chunks_exact_mut(vocab)) {
            for (&id, r) in self.ids.iter().zip(self.rows.chunks_exact(h)) {
                zi[id] = kernel::dot(xi, r);
            }
        }
    }

    /// Takes the patched columns out of `dlogits` (so the head's product leaves them
    /// out) and returns them, `[n, k]`.
    fn take_grads(&self, dlogits: &mut [f32], vocab: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(dlogits.len() / vocab * self.ids.len());
        for d in dlogits.chunks_exact_mut(vocab) {
            for &id in &self.ids {
                out.push(std::mem::take(&mut d[id]));
            }
        }
        out
    }

    /// Adds the patched columns' share: `dx_i += Σ_j g_ij r_j`, `drows_j += Σ_i g_ij x_i`,
    /// into the `[k, h]` block of `drows` of row `i`'s output (`segment(i)`).
    fn backward(
        &self,
        g: &[f32],
        (x, h): (&[f32], usize),
        dx: &mut [f32],
        drows: &mut [f32],
        segment: impl Fn(usize) -> usize,
    ) {
        let k = self.ids.len();
        for (i, ((gi, xi), dxi)) in g
            .chunks_exact(k)
            .zip(x.chunks_exact(h))
            .zip(dx.chunks_exact_mut(h))
            .enumerate()
        {
            let block = &mut drows[segment(i) * k * h..(segment(i) + 1) * k * h];
            for ((&gij, r), dr) in gi
                .iter()
                .zip(self.rows.chunks_exact(h))
                .zip(block.chunks_exact_mut(h))
            {
                if gij == 0.0 {
                    continue;
                }
                dxi.iter_mut().zip(r).for_each(|(d, &rv)| *d += gij * rv);
                dr.iter_mut().zip(xi).for_each(|(d, &xv)| *d += gij * xv);
            }
        }
    }
}

struct LmHeadLoss {
    /// The head, with its bf16 copy when the products run in bf16 (`base_weights`).
    w: PreparedWeight,
    /// Trained positions: (row, target, mask weight).
    rows: Vec<(usize, usize, f32)>,
    /// `cap · tanh(z / cap)` on the logits.
    softcap: Option<f32>,
    need_grad: bool,
    /// Replaced head rows (trainable token rows), if any.
    patch: Option<HeadPatch>,
    reduction: Reduction,
    /// `d loss / d hidden` for a unit upstream gradient, `[n, h]`.
    grad: OnceLock<Vec<f32>>,
    /// `d loss / d rows` for a unit upstream gradient, with a patch: `[k, h]` per
    /// output (one for a mean, one per sequence for the sums).
    grad_rows: OnceLock<Vec<f32>>,
    /// Filled by the forward, read by the caller.
    accuracy: Arc<OnceLock<TokenAccuracy>>,
}

/// Per trained row: the loss term and whether the argmax was the target.
struct RowStats {
    loss: f64,
    correct: bool,
}

impl LmHeadLoss {
    /// One chunk of trained rows: their logits, loss terms, argmax hits and, if
    /// needed, `dlogits` (softmax − onehot, scaled by `coef · m`) turned into
    /// `dhidden` rows.
    fn chunk(
        &self,
        hidden: &[f32],
        h: usize,
        rows: &[(usize, usize, f32)],
        (coef, per_segment): (f32, usize),
        drows: &mut [f32],
    ) -> Result<(Vec<RowStats>, Option<Vec<f32>>)> {
        let mut x = Vec::with_capacity(rows.len() * h);
        for &(r, _, _) in rows {
            x.extend_from_slice(&hidden[r * h..(r + 1) * h]);
        }
        let vocab = self.w.dims()?.0;
        let mut logits = match self.candle_f32() {
            Some(w) => {
                let x = Tensor::from_vec(x.clone(), (rows.len(), h), w.device())?;
                x.matmul(&w.t()?)?.flatten_all()?.to_vec1::<f32>()?
            }
            None => {
                let mut z = vec![0f32; rows.len() * vocab];
                let w = self.w.operand(&[]);
                w.forward(&x, &mut z, (rows.len(), h, vocab), false);
                z
            }
        };
        if let Some(p) = &self.patch {
            p.logits(&x, h, &mut logits, vocab);
        }
        if let Some(cap) = self.softcap {
            par_rows(&mut logits, vocab, vocab, |_, chunk| {
                chunk.iter_mut().for_each(|z| *z = cap * (*z / cap).tanh());
            });
        }
        let mut lse = vec![0f32; rows.len()];
        let mut argmax = vec![0f32; rows.len()];
        // Row statistics in parallel (each row is a 49k-wide pass).
        let mut stats = vec![0f32; rows.len() * 2];
        par_rows(&mut stats, 2, vocab, |row0, out| {
            for (i, o) in out.chunks_exact_mut(2).enumerate() {
                let l = &logits[(row0 + i) * vocab..(row0 + i + 1) * vocab];
                // The first maximum, as the serial argmax; both passes vectorize.
                let max = kernel::max(l);
                let best = l.iter().position(|&v| v == max).unwrap_or(0);
                let sum = kernel::sum_exp(l, max);
                o[0] = max + sum.ln();
                o[1] = best as f32;
            }
        });
        for (i, s) in stats.chunks_exact(2).enumerate() {
            lse[i] = s[0];
            argmax[i] = s[1];
        }
        let out: Vec<RowStats> = rows
            .iter()
            .enumerate()
            .map(|(i, &(_, t, m))| RowStats {
                loss: m as f64 * (lse[i] - logits[i * vocab + t]) as f64,
                correct: argmax[i] as usize == t,
            })
            .collect();
        if !self.need_grad {
            return Ok((out, None));
        }
        par_rows(&mut logits, vocab, vocab, |row0, chunk| {
            for (i, d) in chunk.chunks_exact_mut(vocab).enumerate() {
                let (_, t, m) = rows[row0 + i];
                let scale = coef * m;
                let l = lse[row0 + i];
                match self.softcap {
                    None => {
                        d.iter_mut().for_each(|v| *v = scale * fast_exp(*v - l));
                        d[t] -= scale;
                    }
                    // Through the cap: d z = d z' · (1 − (z'/cap)²), z' the capped logit.
                    Some(cap) => {
                        let slope = |z: f32| 1.0 - (z / cap) * (z / cap);
                        let at_target = scale * slope(d[t]);
                        d.iter_mut()
                            .for_each(|v| *v = scale * fast_exp(*v - l) * slope(*v));
                        d[t] -= at_target;
                    }
                }
            }
        });
        let patched = self
            .patch
            .as_ref()
            .map(|p| p.take_grads(&mut logits, vocab));
        let mut dx = match self.candle_f32() {
            Some(w) => {
                let g = Tensor::from_vec(logits, (rows.len(), vocab), w.device())?;
                g.matmul(w)?.flatten_all()?.to_vec1::<f32>()?
            }
            None => {
                let mut dx = vec![0f32; rows.len() * h];
                let w = self.w.operand(&[]);
                w.backward(&logits, &mut dx, (rows.len(), h, vocab), false);
                dx
            }
        };
        if let (Some(p), Some(g)) = (&self.patch, patched) {
            p.backward(&g, (&x, h), &mut dx, drows, |i| rows[i].0 / per_segment);
        }
        Ok((out, Some(dx)))
    }

    /// The head's f32 tensor when its products are f32 ones (candle's matmul); `None`
    /// when hone's own products multiply it (its bf16 copy or its blocks), which never
    /// read an f32 slice.
    fn candle_f32(&self) -> Option<&Tensor> {
        match &self.w.weight {
            BaseWeight::Dense(w) if self.w.bf16.is_none() => Some(w),
            _ => None,
        }
    }
}

impl LmHeadLoss {
    /// The loss over `hidden: [n, h]`; the gradients (to `hidden` and to the patched
    /// rows) are computed here and kept for the backward.
    fn forward(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let hidden = f32_data(s, l, "lm_head_cross_entropy hidden")?;
        let (n, h) = l.shape().dims2()?;
        let segments = self.reduction.segments();
        if n % segments != 0 {
            bail!("lm_head_cross_entropy: {n} positions do not split into {segments} sequences");
        }
        let per_segment = (n / segments).max(1);
        let patch_len = self.patch.as_ref().map_or(0, |p| p.rows.len());
        let mut drows = vec![0f32; patch_len * segments];
        let weight: f64 = self.rows.iter().map(|r| r.2 as f64).sum();
        let coef = match self.reduction {
            Reduction::SumPerSequence(_) => 1.0,
            Reduction::Mean if weight == 0.0 => 0.0,
            Reduction::Mean => (1.0 / weight) as f32,
        };
        let mut grad = if self.need_grad {
            vec![0f32; n * h]
        } else {
            Vec::new()
        };
        let mut sums = vec![0f64; segments];
        let (mut total, mut correct) = (0f64, 0u64);
        for rows in self.rows.chunks(CHUNK_ROWS) {
            let (stats, dx) = self.chunk(hidden, h, rows, (coef, per_segment), &mut drows)?;
            for (&(r, _, _), s) in rows.iter().zip(&stats) {
                sums[r / per_segment] += s.loss;
            }
            total += stats.iter().map(|s| s.loss).sum::<f64>();
            correct += stats.iter().filter(|s| s.correct).count() as u64;
            if let Some(dx) = dx {
                for (&(r, _, _), d) in rows.iter().zip(dx.chunks_exact(h)) {
                    grad[r * h..(r + 1) * h].copy_from_slice(d);
                }
            }
        }
        let loss = if weight == 0.0 { 0.0 } else { total / weight };
        let _ = self.accuracy.set(TokenAccuracy {
            correct,
            total: self.rows.len() as u64,
        });
        let _ = self.grad.set(grad);
        let _ = self.grad_rows.set(drows);
        Ok(match self.reduction {
            Reduction::Mean => (CpuStorage::F32(vec![loss as f32]), Shape::from(())),
            Reduction::SumPerSequence(_) => (
                CpuStorage::F32(sums.iter().map(|&v| v as f32).collect()),
                Shape::from(segments),
            ),
        })
    }

    /// `d loss / d arg` for the upstream `grad_res` (one value per output), from a
    /// gradient kept by the forward: split into one block per output, each block scaled
    /// by its output's upstream gradient, and the blocks summed when they all belong to
    /// `arg` (the token rows) rather than lying side by side in it (the hidden states).
    fn scaled(
        &self,
        saved: &OnceLock<Vec<f32>>,
        arg: &Tensor,
        grad_res: &Tensor,
        sum_blocks: bool,
    ) -> Result<Tensor> {
        let Some(grad) = saved.get().filter(|g| !g.is_empty()) else {
            bail!("lm_head_cross_entropy: backward without a gradient computed in the forward");
        };
        let s = self.reduction.segments();
        let g = Tensor::from_slice(grad, (s, grad.len() / s), arg.device())?;
        let g = g.broadcast_mul(&grad_res.to_dtype(DType::F32)?.reshape((s, 1))?)?;
        let g = if sum_blocks { g.sum(0)? } else { g };
        g.reshape(arg.shape())
    }
}

impl CustomOp1 for LmHeadLoss {
    fn name(&self) -> &'static str {
        "hone-lm-head-cross-entropy"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        self.forward(s, l)
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(self.scaled(&self.grad, arg, grad_res, false)?))
    }
}

/// With replaced head rows: the second argument is the rows (read once, by
/// [`HeadPatch::new`]), which get their own gradient.
impl CustomOp2 for LmHeadLoss {
    fn name(&self) -> &'static str {
        "hone-lm-head-cross-entropy-rows"
    }

    fn cpu_fwd(
        &self,
        s: &CpuStorage,
        l: &Layout,
        _rows: &CpuStorage,
        _rows_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.forward(s, l)
    }

    fn bwd(
        &self,
        arg: &Tensor,
        rows: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = self.scaled(&self.grad, arg, grad_res, false)?;
        let dr = self.scaled(&self.grad_rows, rows, grad_res, true)?;
        Ok((Some(dx), Some(dr)))
    }
}

#[cfg(test)]
mod tests;
