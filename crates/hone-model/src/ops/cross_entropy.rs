//! Masked cross-entropy over logits, with a fused backward, and token accuracy.
//!
//! The stock path (`log_softmax`, `gather`, mask, mean) materialises several tensors the
//! size of the logits (rows × vocabulary, 200 MB for 4×256 tokens of a 49k vocabulary).
//! Here the forward keeps one log-sum-exp per row, and the backward writes the gradient
//! `softmax − onehot` directly, row by row. Rows whose mask is 0 cost nothing.

use super::kernel::{self, f32_data, fast_exp, index_data, last_dim, par_rows};
use candle_core::{bail, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use std::sync::OnceLock;

/// Mean cross-entropy over the masked positions:
/// `Σ_i m_i · (logsumexp(logits_i) − logits_i[t_i]) / Σ_i m_i`.
///
/// `logits` is `(…, vocab)`; `targets` (u32 or i64) and `mask` (any dtype; usually 0/1)
/// have the leading shape of `logits`. Targets at positions with mask 0 are ignored (they
/// may be padding or −100); a masked-in target outside the vocabulary is an error. With no
/// masked-in position the loss is 0 and so is the gradient. The caller shifts logits and
/// targets for next-token prediction. Differentiable with respect to `logits`.
pub fn masked_cross_entropy(logits: &Tensor, targets: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let (logits, targets, mask) = flatten_inputs(logits, targets, mask, "masked_cross_entropy")?;
    logits.apply_op3(
        &targets,
        &mask,
        MaskedCrossEntropy {
            stats: OnceLock::new(),
        },
    )
}

/// Counts of correct next-token predictions (argmax == target) at masked-in positions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenAccuracy {
    pub correct: u64,
    pub total: u64,
}

impl TokenAccuracy {
    /// `correct / total`, or 0 when nothing was counted.
    pub fn ratio(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.correct as f64 / self.total as f64
        }
    }

    /// Sums counts, e.g. over the batches of a validation pass.
    pub fn merge(self, other: TokenAccuracy) -> TokenAccuracy {
        TokenAccuracy {
            correct: self.correct + other.correct,
            total: self.total + other.total,
        }
    }
}

/// Token accuracy with the same shapes and mask rules as [`masked_cross_entropy`]; ties in
/// the argmax go to the lowest id. Not differentiable.
pub fn masked_token_accuracy(
    logits: &Tensor,
    targets: &Tensor,
    mask: &Tensor,
) -> Result<TokenAccuracy> {
    let (logits, targets, mask) = flatten_inputs(logits, targets, mask, "masked_token_accuracy")?;
    let counts: Vec<u32> = logits
        .apply_op3_no_bwd(&targets, &mask, &Accuracy)?
        .to_vec1()?;
    Ok(TokenAccuracy {
        correct: counts[0] as u64,
        total: counts[1] as u64,
    })
}

/// Flattens to `(n, vocab)`, `(n)`, `(n)` f32 mask, all contiguous.
fn flatten_inputs(
    logits: &Tensor,
    targets: &Tensor,
    mask: &Tensor,
    what: &str,
) -> Result<(Tensor, Tensor, Tensor)> {
    let dims = logits.dims();
    let Some((&vocab, lead)) = dims.split_last() else {
        bail!("{what}: logits must have a vocabulary dimension");
    };
    if targets.dims() != lead || mask.dims() != lead {
        bail!(
            "{what}: targets {:?} and mask {:?} must have the leading shape {lead:?} of logits",
            targets.dims(),
            mask.dims()
        );
    }
    if logits.dtype() != DType::F32 {
        bail!("{what}: only f32 logits are supported");
    }
    if !matches!(targets.dtype(), DType::U32 | DType::I64) {
        bail!(
            "{what}: targets must be u32 or i64, got {:?}",
            targets.dtype()
        );
    }
    let n = targets.elem_count();
    let logits = logits.contiguous()?.reshape((n, vocab))?;
    let targets = targets.detach().contiguous()?.reshape(n)?;
    let mask = mask
        .detach()
        .to_dtype(DType::F32)?
        .contiguous()?
        .reshape(n)?;
    Ok((logits, targets, mask))
}

/// Checks that every masked-in target is a valid class.
fn checked_targets(s: &CpuStorage, l: &Layout, mask: &[f32], vocab: usize) -> Result<Vec<usize>> {
    let targets = index_data(s, l, "cross_entropy targets")?;
    if targets.len() != mask.len() {
        bail!(
            "cross_entropy: {} targets for {} mask entries",
            targets.len(),
            mask.len()
        );
    }
    let mut out = Vec::with_capacity(targets.len());
    for (i, (&t, &m)) in targets.iter().zip(mask).enumerate() {
        match usize::try_from(t) {
            Ok(t) if t < vocab => out.push(t),
            _ if m == 0.0 => out.push(0),
            _ => bail!("cross_entropy: target {t} at position {i} is outside the vocabulary (size {vocab})"),
        }
    }
    Ok(out)
}

fn log_sum_exp(row: &[f32]) -> f32 {
    let max = kernel::max(row);
    max + kernel::sum_exp(row, max).ln()
}

struct MaskedCrossEntropy {
    /// Per-row log-sum-exp and the mask sum, kept from the forward for the backward.
    stats: OnceLock<(Vec<f32>, f64)>,
}

impl CustomOp3 for MaskedCrossEntropy {
    fn name(&self) -> &'static str {
        "hone-masked-cross-entropy"
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
        let logits = f32_data(s1, l1, "cross_entropy logits")?;
        let vocab = last_dim(l1, "cross_entropy logits")?;
        let mask = f32_data(s3, l3, "cross_entropy mask")?;
        let targets = checked_targets(s2, l2, mask, vocab)?;
        let mut lse = vec![0f32; mask.len()];
        par_rows(&mut lse, 1, vocab, |row0, chunk| {
            for (i, out) in chunk.iter_mut().enumerate() {
                let row = row0 + i;
                if mask[row] != 0.0 {
                    *out = log_sum_exp(&logits[row * vocab..(row + 1) * vocab]);
                }
            }
        });
        let (mut total, mut weight) = (0f64, 0f64);
        for (row, (&m, &t)) in mask.iter().zip(&targets).enumerate() {
            if m != 0.0 {
                total += m as f64 * (lse[row] - logits[row * vocab + t]) as f64;
                weight += m as f64;
            }
        }
        let loss = if weight == 0.0 { 0.0 } else { total / weight };
        let _ = self.stats.set((lse, weight));
        Ok((CpuStorage::F32(vec![loss as f32]), Shape::from(())))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        mask: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Some((lse, weight)) = self.stats.get() else {
            bail!("masked_cross_entropy: backward before forward");
        };
        if !logits.track_op() {
            return Ok((None, None, None));
        }
        let g = grad.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        let coef = if *weight == 0.0 {
            0.0
        } else {
            g / *weight as f32
        };
        let op = CrossEntropyBwd { lse, coef };
        Ok((
            Some(logits.apply_op3_no_bwd(targets, mask, &op)?),
            None,
            None,
        ))
    }
}

/// `d logits_i = coef · m_i · (softmax(logits_i) − onehot(t_i))`.
struct CrossEntropyBwd<'a> {
    lse: &'a [f32],
    coef: f32,
}

impl CustomOp3 for CrossEntropyBwd<'_> {
    fn name(&self) -> &'static str {
        "hone-masked-cross-entropy-bwd"
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
        let logits = f32_data(s1, l1, "cross_entropy_bwd logits")?;
        let vocab = last_dim(l1, "cross_entropy_bwd logits")?;
        let mask = f32_data(s3, l3, "cross_entropy_bwd mask")?;
        let targets = checked_targets(s2, l2, mask, vocab)?;
        let mut out = vec![0f32; logits.len()];
        par_rows(&mut out, vocab, vocab, |row0, chunk| {
            for (i, d) in chunk.chunks_exact_mut(vocab).enumerate() {
                let row = row0 + i;
                let scale = self.coef * mask[row];
                if scale == 0.0 {
                    continue;
                }
                let lse = self.lse[row];
                for (d, &x) in d.iter_mut().zip(&logits[row * vocab..(row + 1) * vocab]) {
                    *d = scale * fast_exp(x - lse);
                }
                d[targets[row]] -= scale;
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

struct Accuracy;

impl CustomOp3 for Accuracy {
    fn name(&self) -> &'static str {
        "hone-token-accuracy"
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
        let logits = f32_data(s1, l1, "token_accuracy logits")?;
        let vocab = last_dim(l1, "token_accuracy logits")?;
        let mask = f32_data(s3, l3, "token_accuracy mask")?;
        let targets = checked_targets(s2, l2, mask, vocab)?;
        let (mut correct, mut total) = (0u32, 0u32);
        for (row, (&m, &t)) in mask.iter().zip(&targets).enumerate() {
            if m == 0.0 {
                continue;
            }
            let logits = &logits[row * vocab..(row + 1) * vocab];
            let argmax = logits
                .iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |best, (j, &v)| {
                    if v > best.1 {
                        (j, v)
                    } else {
                        best
                    }
                })
                .0;
            correct += u32::from(argmax == t);
            total += 1;
        }
        Ok((CpuStorage::U32(vec![correct, total]), Shape::from(2)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testutil::{check_op, randn};
    use candle_core::{Device, D};

    fn reference(logits: &Tensor, targets: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
        let picked = logp
            .gather(&targets.unsqueeze(D::Minus1)?, D::Minus1)?
            .squeeze(D::Minus1)?;
        let masked = (picked.neg()? * mask)?;
        masked.sum_all()? / mask.sum_all()?.to_scalar::<f32>()? as f64
    }

    fn inputs() -> Result<(Tensor, Tensor, Tensor)> {
        let logits = (randn(&[2, 5, 11], 1) * 3.0)?;
        let targets = Tensor::from_vec(
            (0..10u32).map(|i| (i * 7) % 11).collect(),
            (2, 5),
            &Device::Cpu,
        )?;
        let mask = Tensor::from_vec(
            vec![1f32, 1., 0., 1., 0., 0., 1., 1., 1., 0.],
            (2, 5),
            &Device::Cpu,
        )?;
        Ok((logits, targets, mask))
    }

    #[test]
    fn cross_entropy_matches_reference_and_gradients() -> Result<()> {
        let (logits, targets, mask) = inputs()?;
        check_op(
            &[logits, targets, mask],
            &[true, false, false],
            |t| masked_cross_entropy(&t[0], &t[1], &t[2]),
            |t| reference(&t[0], &t[1], &t[2]),
            1e-5,
        )
    }

    #[test]
    fn cross_entropy_is_stable_for_huge_logits() -> Result<()> {
        let logits = Tensor::from_vec(vec![1000f32, 0., -1000., 0.], (2, 2), &Device::Cpu)?;
        // Both targets sit 1000 below the row's maximum: each loss is 1000.
        let targets = Tensor::from_vec(vec![1u32, 0], 2, &Device::Cpu)?;
        let mask = Tensor::ones(2, DType::F32, &Device::Cpu)?;
        let var = candle_core::Var::from_tensor(&logits)?;
        let loss = masked_cross_entropy(&var, &targets, &mask)?;
        assert!(
            (loss.to_scalar::<f32>()? - 1000.0).abs() < 1e-3,
            "loss {loss}"
        );
        let grad: Vec<Vec<f32>> = loss.backward()?.get(&var).expect("grad").to_vec2()?;
        assert_eq!(grad, vec![vec![0.5, -0.5], vec![-0.5, 0.5]]);
        Ok(())
    }

    #[test]
    fn empty_mask_gives_zero_loss_and_gradient() -> Result<()> {
        let (logits, targets, _) = inputs()?;
        let var = candle_core::Var::from_tensor(&logits)?;
        let mask = Tensor::zeros((2, 5), DType::U8, &Device::Cpu)?;
        let loss = masked_cross_entropy(&var, &targets, &mask)?;
        assert_eq!(loss.to_scalar::<f32>()?, 0.0);
        let grads = loss.backward()?;
        assert_eq!(
            grads
                .get(&var)
                .expect("grad")
                .abs()?
                .sum_all()?
                .to_scalar::<f32>()?,
            0.0
        );
        Ok(())
    }

    #[test]
    fn out_of_vocabulary_target_is_an_error_unless_masked_out() -> Result<()> {
        let logits = randn(&[2, 3], 1);
        let targets = Tensor::from_vec(vec![1i64, -100], 2, &Device::Cpu)?;
        let ok = Tensor::from_vec(vec![1f32, 0.], 2, &Device::Cpu)?;
        assert!(masked_cross_entropy(&logits, &targets, &ok).is_ok());
        assert!(masked_cross_entropy(
            &logits,
            &targets,
            &Tensor::ones(2, DType::F32, &Device::Cpu)?
        )
        .is_err());
        Ok(())
    }

    #[test]
    fn token_accuracy_counts_masked_argmax_hits() -> Result<()> {
        let logits = Tensor::from_vec(
            vec![0f32, 5., 1., 9., 0., 0., 0., 0., 7.],
            (3, 3),
            &Device::Cpu,
        )?;
        let targets = Tensor::from_vec(vec![1u32, 1, 2], 3, &Device::Cpu)?;
        let mask = Tensor::from_vec(vec![1f32, 1., 0.], 3, &Device::Cpu)?;
        let acc = masked_token_accuracy(&logits, &targets, &mask)?;
        assert_eq!(
            acc,
            TokenAccuracy {
                correct: 1,
                total: 2
            }
        );
        assert_eq!(acc.ratio(), 0.5);
        Ok(())
    }
}
