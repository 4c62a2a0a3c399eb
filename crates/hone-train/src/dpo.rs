//! DPO building blocks (the loop is not written yet): per-sequence log-probabilities
//! of the trained tokens, and the sigmoid DPO loss of Rafailov et al. as TRL computes it
//! (`loss_type="sigmoid"`, no label smoothing).

use candle_core::{Tensor, D};
use hone_model::ops::masked_cross_entropy;

use crate::error::Result;

/// `Σ_j mask[i, j] · log p(targets[i, j])` for every row `i`: shape `[b]`.
/// `logits` is `[b, t, vocab]`, `targets` (u32) and `mask` (f32) are `[b, t]`, already
/// shifted. Differentiable with respect to `logits`.
pub fn sequence_logprobs(logits: &Tensor, targets: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let b = logits.dim(0)?;
    let counts: Vec<f32> = mask.sum(D::Minus1)?.to_vec1()?;
    let mut rows = Vec::with_capacity(b);
    for (i, n) in counts.iter().enumerate() {
        let ce = masked_cross_entropy(
            &logits.narrow(0, i, 1)?,
            &targets.narrow(0, i, 1)?,
            &mask.narrow(0, i, 1)?,
        )?;
        rows.push((ce * -(*n as f64))?.reshape(1)?);
    }
    Ok(Tensor::cat(&rows, 0)?)
}

/// The DPO loss of a batch and its usual diagnostics.
#[derive(Debug, Clone)]
pub struct DpoLoss {
    /// Scalar mean loss (differentiable through the policy log-probs).
    pub loss: Tensor,
    /// Fraction of pairs whose chosen reward exceeds the rejected one.
    pub reward_accuracy: f64,
    /// Mean of `chosen_reward − rejected_reward`.
    pub reward_margin: f64,
}

/// `mean(−log σ(β·((πc − rc) − (πr − rr))))` over pairs, where `π*` are the policy's and
/// `r*` the frozen reference's sequence log-probs (all `[b]`). The reference values are
/// detached here, so passing tensors with a graph is harmless.
pub fn dpo_loss(
    policy_chosen: &Tensor,
    policy_rejected: &Tensor,
    ref_chosen: &Tensor,
    ref_rejected: &Tensor,
    beta: f64,
) -> Result<DpoLoss> {
    let chosen_reward = ((policy_chosen - ref_chosen.detach())? * beta)?;
    let rejected_reward = ((policy_rejected - ref_rejected.detach())? * beta)?;
    let z = (&chosen_reward - &rejected_reward)?;
    // −log σ(z) = log(1 + e^−z) = m + log(e^−m + e^(−z−m)) with m = max(−z, 0) detached:
    // stable for any z, and the gradient −σ(−z) is exact even at z = 0 (no kink).
    let neg = z.neg()?;
    let m = neg.relu()?.detach();
    let softplus = (&m + (m.neg()?.exp()? + (neg - &m)?.exp()?)?.log()?)?;
    let loss = softplus.mean_all()?;
    let margins: Vec<f32> = z.detach().to_vec1()?;
    let n = margins.len().max(1) as f64;
    Ok(DpoLoss {
        loss,
        reward_accuracy: margins.iter().filter(|m| **m > 0.0).count() as f64 / n,
        reward_margin: margins.iter().map(|m| *m as f64).sum::<f64>() / n,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn t(v: &[f32]) -> Tensor {
        Tensor::new(v, &Device::Cpu).unwrap()
    }

    #[test]
    fn dpo_loss_matches_the_closed_form_and_its_gradient() {
        let pc = Var::from_tensor(&t(&[-10.0, -3.0])).unwrap();
        let pr = t(&[-12.0, -2.0]);
        let rc = t(&[-11.0, -3.5]);
        let rr = t(&[-11.5, -2.5]);
        let beta = 0.1;
        let out = dpo_loss(pc.as_tensor(), &pr, &rc, &rr, beta).unwrap();
        // z = β((pc − rc) − (pr − rr)) = [0.15, 0.0]
        let z = [0.1f64 * (1.0 - (-0.5)), 0.1 * (0.5 - 0.5)];
        let want: f64 = z.iter().map(|z| (1.0 + (-z).exp()).ln()).sum::<f64>() / 2.0;
        let got = out.loss.to_scalar::<f32>().unwrap() as f64;
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        assert_eq!(out.reward_accuracy, 0.5);
        // d/dpc_i = −β σ(−z_i) / b
        let g = out.loss.backward().unwrap();
        let g: Vec<f32> = g.get(pc.as_tensor()).unwrap().to_vec1().unwrap();
        for (gi, zi) in g.iter().zip(z) {
            let want = -beta / (1.0 + zi.exp()) / 2.0;
            assert!((*gi as f64 - want).abs() < 1e-6, "{gi} vs {want}");
        }
    }

    #[test]
    fn dpo_loss_is_finite_for_huge_margins() {
        let out = dpo_loss(&t(&[0.0]), &t(&[-5000.0]), &t(&[0.0]), &t(&[0.0]), 1.0).unwrap();
        let l = out.loss.to_scalar::<f32>().unwrap();
        assert!(l.is_finite() && l < 1e-6);
        let out = dpo_loss(&t(&[-5000.0]), &t(&[0.0]), &t(&[0.0]), &t(&[0.0]), 1.0).unwrap();
        let l = out.loss.to_scalar::<f32>().unwrap();
        assert!((l - 5000.0).abs() < 1e-2, "{l}");
    }

    #[test]
    fn sequence_logprobs_sum_log_softmax_over_the_mask() {
        let dev = Device::Cpu;
        let logits = Tensor::randn(0f32, 1.0, (2, 3, 5), &dev).unwrap();
        let targets = Tensor::new(&[[1u32, 4, 0], [2, 2, 3]], &dev).unwrap();
        let mask = Tensor::new(&[[1f32, 1., 0.], [0., 1., 1.]], &dev).unwrap();
        let got: Vec<f32> = sequence_logprobs(&logits, &targets, &mask)
            .unwrap()
            .to_vec1()
            .unwrap();
        let lsm: Vec<Vec<Vec<f32>>> = candle_nn::ops::log_softmax(&logits, D::Minus1)
            .unwrap()
            .to_vec3()
            .unwrap();
        let tg: Vec<Vec<u32>> = targets.to_vec2().unwrap();
        let mk: Vec<Vec<f32>> = mask.to_vec2().unwrap();
        for i in 0..2 {
            let want: f32 = (0..3)
                .map(|j| mk[i][j] * lsm[i][j][tg[i][j] as usize])
                .sum();
            assert!((got[i] - want).abs() < 1e-5, "{} vs {want}", got[i]);
        }
    }
}
