//! Row kernels of the packed decode step ([`super::step`]): each works on
//! `n` rows of f32 activations laid out back to back.

use candle_core::{Storage, Tensor};

use crate::error::Result;
use crate::family::Activation;

/// RMSNorm of each row of `x` (as candle's `rms_norm`: f32 mean of squares).
pub(super) fn rms_norm_rows(x: &[f32], weight: &Tensor, eps: f32, n: usize) -> Result<Vec<f32>> {
    with_f32(weight, |w| {
        let h = w.len();
        let mut out = Vec::with_capacity(n * h);
        for row in x.chunks_exact(h) {
            let ms = row.iter().map(|v| v * v).sum::<f32>() / h as f32;
            let inv = 1.0 / (ms + eps).sqrt();
            out.extend(row.iter().zip(w).map(|(v, w)| v * inv * w));
        }
        out
    })
}

/// Half-split RoPE of `heads` heads per row, each row at its own position;
/// `cos`/`sin` are `[positions, head_dim/2]` tables.
pub(super) fn rope_rows(
    x: &mut [f32],
    heads: usize,
    head_dim: usize,
    positions: &[usize],
    cos: &[f32],
    sin: &[f32],
) {
    let half = head_dim / 2;
    for (row, &p) in x.chunks_exact_mut(heads * head_dim).zip(positions) {
        let (c, s) = (
            &cos[p * half..(p + 1) * half],
            &sin[p * half..(p + 1) * half],
        );
        for head in row.chunks_exact_mut(head_dim) {
            let (a, b) = head.split_at_mut(half);
            for i in 0..half {
                let (x1, x2) = (a[i], b[i]);
                a[i] = x1 * c[i] - x2 * s[i];
                b[i] = x1 * s[i] + x2 * c[i];
            }
        }
    }
}

/// `norm(x, w)` per row when the block has that norm (Gemma's post norms).
pub(super) fn post_norm_rows(
    x: Vec<f32>,
    weight: Option<&Tensor>,
    eps: f32,
    n: usize,
) -> Result<Vec<f32>> {
    match weight {
        Some(w) => rms_norm_rows(&x, w, eps, n),
        None => Ok(x),
    }
}

/// Adds `bias` (`[out]`) to every row of `y`.
pub(super) fn add_bias_rows(y: &mut [f32], bias: &Tensor) -> Result<()> {
    with_f32(bias, |b| {
        for row in y.chunks_exact_mut(b.len()) {
            add_into(row, b);
        }
    })
}

/// `gate = act(gate) ⊙ up`, element-wise.
pub(super) fn gate_in_place(gate: &mut [f32], up: &[f32], activation: Activation) {
    match activation {
        Activation::Silu => {
            for (g, u) in gate.iter_mut().zip(up) {
                *g = *g / (1.0 + (-*g).exp()) * u;
            }
        }
        Activation::GeluTanh => {
            // `gelu_pytorch_tanh`, as candle's `gelu`.
            const SQRT_2_OVER_PI: f32 = 0.797_884_6;
            for (g, u) in gate.iter_mut().zip(up) {
                let x = *g;
                let t = (SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x)).tanh();
                *g = 0.5 * x * (1.0 + t) * u;
            }
        }
    }
}

pub(super) fn add_into(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}

/// Calls `f` with a contiguous f32 CPU tensor's data, without copying it.
pub(super) fn with_f32<T>(t: &Tensor, f: impl FnOnce(&[f32]) -> T) -> Result<T> {
    {
        let (storage, layout) = t.storage_and_layout();
        if let (Storage::Cpu(cpu), Some((start, end))) = (&*storage, layout.contiguous_offsets()) {
            if let Ok(data) = cpu.as_slice::<f32>() {
                return Ok(f(&data[start..end]));
            }
        }
    }
    let data = t
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    Ok(f(&data))
}
