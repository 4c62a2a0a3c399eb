//! hone's own CPU inference path for serving ([`crate::WeightPath::Packed`]):
//! quantized weights in [`PackedMatrix`] multiplied with f32 activations by
//! SIMD kernels, and a decode step written on plain slices.
//!
//! Why beside candle rather than through it: a decode step of a small model is
//! a few hundred tiny operations, and candle's per-operation cost (allocation,
//! layout checks, an 8-bit copy of the activations for each quantized product,
//! copying the whole KV cache at each step) dominated it: 30 tokens/s against
//! llama.cpp's 75 on SmolLM2-135M (docs/benchmarks.md). Training and scoring keep
//! using candle tensors; [`crate::Llama`] dispatches its step functions here
//! when its weights are packed.

mod attend;
#[cfg(test)]
mod kernel_bench;
mod kquant;
#[cfg(target_arch = "x86_64")]
mod kquant_simd;
#[cfg(test)]
mod kquant_tests;
pub mod packed;
mod q8;
#[cfg(target_arch = "x86_64")]
mod q8_simd;
#[cfg(test)]
mod q8_tests;
mod rows;
mod step;
pub mod team;

pub use attend::PackedKvCache;
pub use packed::{PackedKind, PackedMatrix};
pub use q8::{Activations, ActivationsGuard};
pub(crate) use step::{step, step_batch, step_feeds};
