use super::*;
use crate::forward::repeat_kv;
use crate::ops::testutil::{check_op, randn};

fn err(e: crate::error::ModelError) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

/// The same computation from stock differentiable candle ops: head transposes,
/// `rope_slow`, `repeat_kv`, an additive mask, softmax and two matmuls.
fn reference(t: &[Tensor], (h, kv): (usize, usize), spec: &AttentionSpec) -> Result<Tensor> {
    let (cos, sin, starts) = (spec.cos, spec.sin, spec.segment_starts);
    let (b, tt, qw) = t[0].dims3()?;
    let d = qw / h;
    let heads = |x: &Tensor, n: usize| x.reshape((b, tt, n, d))?.transpose(1, 2)?.contiguous();
    let rope = |x: Tensor| -> Result<Tensor> {
        if cos.rank() == 2 {
            return candle_nn::rotary_emb::rope_slow(&x, cos, sin);
        }
        let rows = (0..b)
            .map(|i| {
                candle_nn::rotary_emb::rope_slow(&x.narrow(0, i, 1)?, &cos.get(i)?, &sin.get(i)?)
            })
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&rows, 0)
    };
    let q = rope(heads(&t[0], h)?)?;
    let k = repeat_kv(rope(heads(&t[1], kv)?)?, h / kv)
        .map_err(err)?
        .contiguous()?;
    let v = repeat_kv(heads(&t[2], kv)?, h / kv)
        .map_err(err)?
        .contiguous()?;
    let mask: Vec<f32> = (0..b * tt * tt)
        .map(|n| {
            let (row, i, j) = (n / (tt * tt), (n / tt) % tt, n % tt);
            let s = starts.map_or(0, |s| s[row * tt + i] as usize);
            let in_window = spec.window.is_none_or(|w| j + w > i);
            if j <= i && j >= s && in_window {
                0.0
            } else {
                -1e9
            }
        })
        .collect();
    let mask = Tensor::from_vec(mask, (b, 1, tt, tt), q.device())?;
    let scale = spec.scale.map_or(1.0 / (d as f64).sqrt(), f64::from);
    let s = (q.matmul(&k.t()?)? * scale)?.broadcast_add(&mask)?;
    candle_nn::ops::softmax(&s, candle_core::D::Minus1)?
        .matmul(&v)?
        .transpose(1, 2)?
        .reshape((b, tt, h * d))
}

fn trig(shape: &[usize], seed: u64) -> (Tensor, Tensor) {
    let angles = (randn(shape, seed) * 2.0).unwrap();
    (angles.cos().unwrap(), angles.sin().unwrap())
}

fn check(
    b: usize,
    t: usize,
    (h, kv): (usize, usize),
    d: usize,
    per_row: bool,
    starts: Option<Vec<u32>>,
) -> Result<()> {
    check_with(b, t, (h, kv), d, per_row, starts, (None, None))
}

/// [`check`] with a custom score scale and a sliding window.
fn check_with(
    b: usize,
    t: usize,
    (h, kv): (usize, usize),
    d: usize,
    per_row: bool,
    starts: Option<Vec<u32>>,
    (scale, window): (Option<f32>, Option<usize>),
) -> Result<()> {
    let table: Vec<usize> = if per_row {
        vec![b, t, d / 2]
    } else {
        vec![t, d / 2]
    };
    let (cos, sin) = trig(&table, 9);
    let spec = AttentionSpec {
        heads: h,
        kv_heads: kv,
        cos: &cos,
        sin: &sin,
        segment_starts: starts.as_deref(),
        scale,
        window,
    };
    check_op(
        &[
            randn(&[b, t, h * d], 1),
            randn(&[b, t, kv * d], 2),
            randn(&[b, t, kv * d], 3),
        ],
        &[true, true, true],
        |x| rope_attention(&x[0], &x[1], &x[2], &spec),
        |x| reference(x, (h, kv), &spec),
        1e-4,
    )
}

#[test]
fn rope_attention_matches_stock_gqa_and_gradients() -> Result<()> {
    check(2, 7, (4, 2), 8, false, None)
}

#[test]
fn rope_attention_without_grouping() -> Result<()> {
    check(1, 5, (3, 3), 4, false, None)
}

/// Packed rows: per-row RoPE positions and segments that do not see each other.
#[test]
fn rope_attention_keeps_packed_segments_apart() -> Result<()> {
    let starts = vec![0, 0, 0, 3, 3, 3, 3, 0, 0, 2, 2, 2, 2, 2];
    check(2, 7, (6, 2), 8, true, Some(starts))
}

/// Longer than one row block (`BLOCK`), ending in a partial block, with segments that
/// straddle block boundaries.
#[test]
fn rope_attention_across_row_blocks() -> Result<()> {
    let t = 2 * BLOCK + 22;
    check(1, t, (2, 1), 4, false, None)?;
    let starts = (0..2 * t)
        .map(|i| match i % t {
            j if j < 50 => 0,
            j if j < 100 => 50,
            _ => 100,
        })
        .collect();
    check(2, t, (2, 1), 4, true, Some(starts))
}

/// Gemma 3's sliding layers: a window narrower than the sequence (alone, and with packed
/// segments, whose starts it may lie behind or ahead of), and a custom score scale.
#[test]
fn rope_attention_with_window_and_scale() -> Result<()> {
    check_with(2, 9, (4, 2), 8, false, None, (Some(0.2), Some(3)))?;
    let starts = vec![0, 0, 0, 0, 0, 5, 5, 5, 5, 0, 0, 2, 2, 2, 2, 2, 2, 2];
    check_with(2, 9, (2, 1), 6, true, Some(starts), (None, Some(2)))?;
    // Across row blocks, a window wider than one block.
    check_with(
        1,
        BLOCK + 30,
        (2, 1),
        4,
        false,
        None,
        (Some(0.7), Some(BLOCK + 5)),
    )
}

#[test]
fn rope_attention_rejects_bad_shapes() {
    let (cos, sin) = trig(&[5, 2], 1);
    let spec = |h, kv| AttentionSpec {
        heads: h,
        kv_heads: kv,
        cos: &cos,
        sin: &sin,
        segment_starts: None,
        scale: None,
        window: None,
    };
    let q = randn(&[1, 5, 12], 1);
    let k = randn(&[1, 5, 8], 2);
    assert!(
        rope_attention(&q, &k, &k, &spec(3, 2)).is_err(),
        "3 heads over 2 kv heads"
    );
    assert!(
        rope_attention(&q, &k, &k, &spec(3, 1)).is_err(),
        "k too wide for 1 kv head"
    );
    let short = [0u32; 3];
    let bad = AttentionSpec {
        segment_starts: Some(&short),
        ..spec(3, 3)
    };
    let k = randn(&[1, 5, 12], 2);
    assert!(
        rope_attention(&q, &k, &k, &bad).is_err(),
        "wrong number of starts"
    );
    let (c6, s6) = trig(&[6, 2], 1);
    let bad = AttentionSpec {
        cos: &c6,
        sin: &s6,
        ..spec(3, 3)
    };
    assert!(
        rope_attention(&q, &k, &k, &bad).is_err(),
        "table for 6 tokens"
    );
    let bad = AttentionSpec {
        window: Some(0),
        ..spec(3, 3)
    };
    assert!(rope_attention(&q, &k, &k, &bad).is_err(), "empty window");
}
