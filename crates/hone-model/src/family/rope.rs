//! RoPE of one kind of layer: [`RopeSpec`], its inverse frequencies as
//! transformers computes them, and their linear, llama3 and `rope_freqs`
//! scaling.

use crate::error::{ModelError, Result};

/// How RoPE frequencies are rescaled for long contexts.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Every inverse frequency divided by `factor` (`rope_type: linear`).
    Linear {
        factor: f32,
    },
    /// Llama 3.x (`rope_type: llama3`): low frequencies divided by `factor`,
    /// high ones kept, a smooth blend between.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position_embeddings: usize,
    },
    /// Per-frequency divisors from llama.cpp's `rope_freqs.weight` tensor
    /// (how GGUF files carry Llama 3 scaling).
    FreqFactors(Vec<f32>),
}

/// RoPE of one kind of layer, with its inverse frequencies precomputed.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeSpec {
    pub theta: f32,
    /// Rotated dimensions (the head dim for every supported family).
    pub dim: usize,
    pub scaling: RopeScaling,
    /// `dim / 2` inverse frequencies, scaling applied: position `p` rotates
    /// pair `i` by `p · inv_freq[i]`.
    pub inv_freq: Vec<f32>,
}

impl RopeSpec {
    /// Builds the spec and its inverse frequencies, checking the scaling.
    pub fn new(theta: f32, dim: usize, scaling: RopeScaling) -> Result<Self> {
        check_rope(theta, dim, &scaling)?;
        let inv_freq = scaled_inv_freq(&default_inv_freq(theta, dim), &scaling);
        Ok(Self {
            theta,
            dim,
            scaling,
            inv_freq,
        })
    }
}

/// transformers' `_compute_default_rope_parameters`, in f32 as it does.
fn default_inv_freq(theta: f32, dim: usize) -> Vec<f32> {
    (0..dim / 2)
        .map(|i| 1.0 / theta.powf((2 * i) as f32 / dim as f32))
        .collect()
}

fn scaled_inv_freq(base: &[f32], scaling: &RopeScaling) -> Vec<f32> {
    match scaling {
        RopeScaling::None => base.to_vec(),
        RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
        RopeScaling::FreqFactors(div) => base.iter().zip(div).map(|(f, d)| f / d).collect(),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => base
            .iter()
            .map(|&f| {
                llama3_inv_freq(
                    f,
                    *factor,
                    *low_freq_factor,
                    *high_freq_factor,
                    *original_max_position_embeddings as f32,
                )
            })
            .collect(),
    }
}

/// One frequency of transformers' `_compute_llama3_parameters`.
fn llama3_inv_freq(f: f32, factor: f32, low: f32, high: f32, old_ctx: f32) -> f32 {
    let wavelen = 2.0 * std::f32::consts::PI / f;
    let (low_wavelen, high_wavelen) = (old_ctx / low, old_ctx / high);
    if wavelen < high_wavelen {
        f
    } else if wavelen > low_wavelen {
        f / factor
    } else {
        let smooth = (old_ctx / wavelen - low) / (high - low);
        (1.0 - smooth) * f / factor + smooth * f
    }
}

fn check_rope(theta: f32, dim: usize, scaling: &RopeScaling) -> Result<()> {
    let bad = |m: String| Err(ModelError::Config(m));
    if !(theta.is_finite() && theta > 1.0) {
        return bad(format!("RoPE base {theta} must be a finite number above 1"));
    }
    if dim == 0 || !dim.is_multiple_of(2) {
        return bad(format!("RoPE dimension {dim} must be even and positive"));
    }
    match scaling {
        RopeScaling::None => Ok(()),
        RopeScaling::Linear { factor } if factor.is_finite() && *factor > 0.0 => Ok(()),
        RopeScaling::Linear { factor } => bad(format!("linear RoPE factor {factor} must be > 0")),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            let ok = factor.is_finite()
                && *factor > 0.0
                && *low_freq_factor > 0.0
                && high_freq_factor > low_freq_factor
                && *original_max_position_embeddings > 0;
            if ok {
                Ok(())
            } else {
                bad(format!(
                    "llama3 RoPE scaling needs factor > 0, 0 < low_freq_factor < high_freq_factor \
                     and original_max_position_embeddings > 0; got factor {factor}, \
                     low_freq_factor {low_freq_factor}, high_freq_factor {high_freq_factor}, \
                     original_max_position_embeddings {original_max_position_embeddings}"
                ))
            }
        }
        RopeScaling::FreqFactors(v) if v.len() != dim / 2 => bad(format!(
            "rope_freqs.weight has {} values, expected {}",
            v.len(),
            dim / 2
        )),
        RopeScaling::FreqFactors(v) if v.iter().all(|x| x.is_finite() && *x > 0.0) => Ok(()),
        RopeScaling::FreqFactors(_) => bad("rope_freqs.weight must be positive".into()),
    }
}
