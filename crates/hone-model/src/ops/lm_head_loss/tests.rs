//! The fused head-and-loss op against the materialised logits path.

use super::*;
use crate::ops::testutil::assert_close;
use crate::ops::{frozen_linear, masked_cross_entropy, masked_token_accuracy};
use candle_core::{Device, Var};

/// Loss, accuracy and `d loss / d hidden` equal the materialised path
/// (frozen linear, then masked cross-entropy), over more rows than one
/// chunk, with weighted and masked-out positions.
#[test]
fn matches_the_materialised_logits_path() -> Result<()> {
    check_against_materialised(None)
}

/// The same with a final logit softcap, materialised as `cap · tanh(z / cap)`.
#[test]
fn matches_the_materialised_logits_path_with_softcap() -> Result<()> {
    check_against_materialised(Some(1.5))
}

fn check_against_materialised(softcap: Option<f32>) -> Result<()> {
    let dev = Device::Cpu;
    // 3 rows of t tokens span several chunks, the last one partial.
    let (b, t, h, vocab) = (3, CHUNK_ROWS + 14, 16, 37);
    let hidden = Var::from_tensor(&Tensor::randn(0f32, 1., (b, t, h), &dev)?)?;
    let w = Tensor::randn(0f32, 0.5, (vocab, h), &dev)?;
    let targets: Vec<u32> = (0..b * t).map(|i| (i * 7 % vocab) as u32).collect();
    let targets = Tensor::from_vec(targets, (b, t), &dev)?;
    let mask: Vec<f32> = (0..b * t)
        .map(|i| match i % 5 {
            0 => 0.0,
            1 => 0.5,
            _ => 1.0,
        })
        .collect();
    let mask = Tensor::from_vec(mask, (b, t), &dev)?;

    let mut logits = frozen_linear(hidden.as_tensor(), &w)?;
    if let Some(cap) = softcap {
        logits = ((logits / cap as f64)?.tanh()? * cap as f64)?;
    }
    let want = masked_cross_entropy(&logits, &targets, &mask)?;
    let want_acc = masked_token_accuracy(&logits.detach(), &targets, &mask)?;
    let want_grad = want.backward()?.get(&hidden).unwrap().clone();

    let (got, acc) = lm_head_cross_entropy(hidden.as_tensor(), &w, &targets, &mask, softcap)?;
    let scaled = (got.clone() * 3.0)?;
    let got_grad = scaled.backward()?.get(&hidden).unwrap().clone();

    assert_close(&got, &want, 1e-5, "loss");
    assert_eq!(acc, want_acc);
    assert!(acc.total > 0 && acc.correct < acc.total);
    assert_close(&(got_grad / 3.0)?, &want_grad, 1e-5, "d loss / d hidden");
    Ok(())
}

/// Per-sequence sums equal the materialised `Σ_t m · (lse − z_target)` of each
/// sequence, and with a different upstream weight per sequence (as DPO's loss gives)
/// so do the gradients to the hidden states and to replaced head rows (given the
/// head's own values, so the materialised head is their reference), across chunks.
#[test]
fn sequence_sums_match_the_materialised_path_with_per_sequence_weights() -> Result<()> {
    let dev = Device::Cpu;
    let (b, t, h, vocab) = (3, CHUNK_ROWS / 2 + 9, 8, 23);
    let hidden = Var::from_tensor(&Tensor::randn(0f32, 1., (b, t, h), &dev)?)?;
    let w = Var::from_tensor(&Tensor::randn(0f32, 0.5, (vocab, h), &dev)?)?;
    let targets: Vec<u32> = (0..b * t).map(|i| (i * 5 % vocab) as u32).collect();
    let targets = Tensor::from_vec(targets, (b, t), &dev)?;
    let mask: Vec<f32> = (0..b * t).map(|i| [0.0, 1.0, 0.5, 1.0][i % 4]).collect();
    let mask = Tensor::from_vec(mask, (b, t), &dev)?;
    let weights = Tensor::new(&[0.3f32, -1.7, 2.0], &dev)?;

    let logits = hidden.as_tensor().broadcast_matmul(&w.as_tensor().t()?)?;
    let lsm = candle_nn::ops::log_softmax(&logits, candle_core::D::Minus1)?;
    let picked = lsm.gather(&targets.unsqueeze(2)?, 2)?.squeeze(2)?;
    let want = (picked * &mask)?.sum(1)?.neg()?;
    let g = (&want * &weights)?.sum_all()?.backward()?;
    let (want_dx, want_dw) = (g.get(&hidden).unwrap(), g.get(&w).unwrap());

    let ids = [2u32, 17];
    let rows = Var::from_tensor(&w.as_tensor().index_select(&Tensor::new(&ids, &dev)?, 0)?)?;
    let head = BaseWeight::Dense(w.as_tensor().detach());
    let got = lm_head_sequence_nll(
        hidden.as_tensor(),
        &head,
        &targets,
        &mask,
        None,
        Some((&ids, rows.as_tensor())),
    )?;
    assert_eq!(got.dims(), [b]);
    let g = (&got * &weights)?.sum_all()?.backward()?;
    assert_close(&got, &want, 1e-5, "sums");
    assert_close(g.get(&hidden).unwrap(), want_dx, 1e-5, "d / d hidden");
    let want_rows = want_dw.index_select(&Tensor::new(&ids, &dev)?, 0)?;
    assert_close(g.get(&rows).unwrap(), &want_rows, 1e-5, "d / d rows");
    Ok(())
}

#[test]
fn no_trained_position_gives_zero_and_bad_targets_are_errors() -> Result<()> {
    let dev = Device::Cpu;
    let hidden = Tensor::randn(0f32, 1., (2, 8), &dev)?;
    let w = Tensor::randn(0f32, 1., (5, 8), &dev)?;
    let zero = Tensor::zeros(2, DType::F32, &dev)?;
    let (loss, acc) =
        lm_head_cross_entropy(&hidden, &w, &Tensor::new(&[9u32, 1], &dev)?, &zero, None)?;
    assert_eq!(loss.to_scalar::<f32>()?, 0.0);
    assert_eq!(acc.total, 0);
    let one = Tensor::ones(2, DType::F32, &dev)?;
    assert!(
        lm_head_cross_entropy(&hidden, &w, &Tensor::new(&[9u32, 1], &dev)?, &one, None).is_err()
    );
    assert!(lm_head_cross_entropy(
        &hidden,
        &w.t()?,
        &Tensor::new(&[0u32, 1], &dev)?,
        &one,
        None
    )
    .is_err());
    Ok(())
}
