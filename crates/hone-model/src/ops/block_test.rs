//! End-to-end check that the ops compose: a tiny Llama-style attention block with GQA,
//! LoRA on q and v, an LM head and the masked loss, built once from these ops and once
//! from stock differentiable candle ops. Loss and LoRA gradients must agree, and no frozen
//! weight may receive a gradient on our path.

use super::testutil::{assert_close, randn};
use super::{causal_softmax, frozen_linear, masked_cross_entropy, rms_norm, rope};
use candle_core::{Device, Result, Tensor, Var, D};

const B: usize = 2;
const T: usize = 5;
const DIM: usize = 16;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = DIM / HEADS;
const VOCAB: usize = 11;

struct Weights {
    norm: Tensor,
    wq: Tensor,
    wk: Tensor,
    wv: Tensor,
    wo: Tensor,
    head: Tensor,
    lora: [Var; 4], // q.A, q.B, v.A, v.B
    cos: Tensor,
    sin: Tensor,
}

fn weights() -> Result<Weights> {
    let w = |shape: &[usize], seed| randn(shape, seed) * 0.3;
    let angles = (randn(&[T, HEAD_DIM / 2], 9) * 2.0)?;
    Ok(Weights {
        norm: (randn(&[DIM], 1) * 0.1)?.affine(1.0, 1.0)?,
        wq: w(&[DIM, DIM], 2)?,
        wk: w(&[KV_HEADS * HEAD_DIM, DIM], 3)?,
        wv: w(&[KV_HEADS * HEAD_DIM, DIM], 4)?,
        wo: w(&[DIM, DIM], 5)?,
        head: w(&[VOCAB, DIM], 6)?,
        lora: [
            Var::from_tensor(&w(&[2, DIM], 7)?)?,
            Var::from_tensor(&w(&[DIM, 2], 8)?)?,
            Var::from_tensor(&w(&[2, DIM], 10)?)?,
            Var::from_tensor(&w(&[KV_HEADS * HEAD_DIM, 2], 11)?)?,
        ],
        cos: angles.cos()?,
        sin: angles.sin()?,
    })
}

/// The ops a block needs, so one function builds both variants.
struct Kit {
    norm: fn(&Tensor, &Tensor) -> Result<Tensor>,
    linear: fn(&Tensor, &Tensor) -> Result<Tensor>,
    rope: fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>,
    softmax: fn(&Tensor) -> Result<Tensor>,
    loss: fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>,
}

const SCALE: f64 = 0.5; // 1/sqrt(HEAD_DIM)

fn ours() -> Kit {
    Kit {
        norm: |x, w| rms_norm(x, w, 1e-5),
        linear: frozen_linear,
        rope,
        softmax: |s| causal_softmax(s, SCALE),
        loss: masked_cross_entropy,
    }
}

fn stock() -> Kit {
    Kit {
        norm: |x, w| candle_nn::ops::rms_norm_slow(x, w, 1e-5),
        linear: |x, w| x.broadcast_matmul(&w.t()?),
        rope: candle_nn::rotary_emb::rope_slow,
        softmax: |s| {
            let mask: Vec<f32> = (0..T * T)
                .map(|k| if k % T <= k / T { 0.0 } else { -1e9 })
                .collect();
            let mask = Tensor::from_vec(mask, (T, T), &Device::Cpu)?;
            candle_nn::ops::softmax(&(s * SCALE)?.broadcast_add(&mask)?, D::Minus1)
        },
        loss: |logits, targets, mask| {
            let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
            let picked = logp
                .gather(&targets.unsqueeze(D::Minus1)?, D::Minus1)?
                .squeeze(D::Minus1)?;
            (picked.neg()? * mask)?.sum_all()? / mask.sum_all()?.to_scalar::<f32>()? as f64
        },
    }
}

/// `(b, t, n·hd)` → `(b, n, t, hd)`, repeating kv heads for GQA.
fn heads(x: &Tensor, n: usize) -> Result<Tensor> {
    let x = x
        .reshape((B, T, n, HEAD_DIM))?
        .transpose(1, 2)?
        .contiguous()?;
    if n == HEADS {
        return Ok(x);
    }
    let rep = HEADS / n;
    Tensor::cat(&vec![&x; rep], 2)?.reshape((B, HEADS, T, HEAD_DIM))
}

fn loss(kit: &Kit, w: &Weights, x: &Tensor, targets: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let lora =
        |h: &Tensor, a: &Var, b: &Var| h.broadcast_matmul(&a.t()?)?.broadcast_matmul(&b.t()?);
    let h = (kit.norm)(x, &w.norm)?;
    let q = ((kit.linear)(&h, &w.wq)? + lora(&h, &w.lora[0], &w.lora[1])?)?;
    let k = (kit.linear)(&h, &w.wk)?;
    let v = ((kit.linear)(&h, &w.wv)? + lora(&h, &w.lora[2], &w.lora[3])?)?;
    let q = (kit.rope)(&heads(&q, HEADS)?, &w.cos, &w.sin)?;
    let k = (kit.rope)(&heads(&k, KV_HEADS)?, &w.cos, &w.sin)?;
    let p = (kit.softmax)(&q.matmul(&k.t()?.contiguous()?)?)?;
    let o = p
        .matmul(&heads(&v, KV_HEADS)?)?
        .transpose(1, 2)?
        .reshape((B, T, DIM))?;
    let y = (x + (kit.linear)(&o, &w.wo)?)?;
    let logits = (kit.linear)(&(kit.norm)(&y, &w.norm)?, &w.head)?;
    (kit.loss)(&logits.narrow(1, 0, T - 1)?, targets, mask)
}

#[test]
fn attention_block_with_lora_matches_stock_ops() -> Result<()> {
    let w = weights()?;
    let x = randn(&[B, T, DIM], 20);
    let ids: Vec<u32> = (0..B * T).map(|i| (i * 7 % VOCAB) as u32).collect();
    let ids = Tensor::from_vec(ids, (B, T), &Device::Cpu)?;
    let targets = ids.narrow(1, 1, T - 1)?.contiguous()?;
    let mask = Tensor::from_vec(
        vec![0f32, 1., 1., 0., 1., 1., 1., 1.],
        (B, T - 1),
        &Device::Cpu,
    )?;

    let l_ours = loss(&ours(), &w, &x, &targets, &mask)?;
    let l_stock = loss(&stock(), &w, &x, &targets, &mask)?;
    assert_close(&l_ours, &l_stock, 1e-5, "loss");
    let (g_ours, g_stock) = (l_ours.backward()?, l_stock.backward()?);
    for (i, var) in w.lora.iter().enumerate() {
        let g = g_ours.get(var).expect("LoRA gradient on our path");
        assert!(
            g.abs()?.sum_all()?.to_scalar::<f32>()? > 0.0,
            "LoRA {i} gradient is zero"
        );
        assert_close(
            g,
            g_stock.get(var).expect("stock gradient"),
            1e-4,
            &format!("LoRA {i} grad"),
        );
    }
    for frozen in [&w.wq, &w.wk, &w.wv, &w.wo, &w.head, &w.norm] {
        assert!(
            g_ours.get(frozen).is_none(),
            "a frozen weight got a gradient"
        );
    }
    Ok(())
}
