//! hone-model: Llama-family models on candle: loading (GGUF, HF safetensors),
//! forward passes for training and inference, LoRA, and generation.

pub mod config;
pub mod decode;
pub mod engine;
pub mod error;
pub mod family;
pub mod generate;
pub mod linear;
pub mod llama;
pub mod load;
pub mod lora;
pub mod merge;
pub mod ops;
pub mod registry;
pub mod score;
pub mod testing;
pub mod train_forward;
#[cfg(test)]
mod train_reference;
#[cfg(test)]
mod train_tests;

/// candle itself, so that a driver of the training step (`hone bench train`) can build
/// its input tensors without its own, possibly mismatched, candle dependency.
pub use candle_core;
pub use config::Config;
pub use engine::{ChatEngine, SERVING_WEIGHTS};
pub use error::{ModelError, Result};
pub use linear::{BaseWeight, Linear, LoraAdapter, QWeight};
pub use llama::{ForwardOptions, KvCache, Llama, WeightPath};
pub use load::{load_gguf, load_hf_dir, load_model};
pub use lora::{load_peft_adapter, LoraConfig, LoraParams, PeftConfig};
pub use merge::{merge_adapters, merge_to_hf_dir, write_hf_dir, MergeStats};
pub use train_forward::{PackedLayout, TrainLoss, TrainOptions};

/// Threads candle uses for matmuls and element-wise ops (read once).
pub fn compute_threads() -> usize {
    ops::kernel::threads()
}

/// Sets `RAYON_NUM_THREADS` to candle's default thread count when it is unset, so that
/// candle's own per-call `get_num_threads()` reads an environment variable instead of
/// parsing `/proc/cpuinfo` on every matmul. Call it at the start of a binary, before any
/// thread is spawned; the thread count itself does not change.
pub fn pin_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", compute_threads().to_string());
    }
}

/// Makes candle's spinning "barrier pool" (quantized matmuls and large
/// element-wise ops) single-threaded unless `CANDLE_NUM_THREADS` is set, when
/// `weights` go through candle's quantized kernels (`Q8_0`, `Native`).
///
/// Why: on a small shared machine (2 cores here) its spin-waits collapse
/// whenever another process is busy: Q8_0 decode measured 2.7 tokens/s with
/// two pool threads under load against 38 with one. Call it at the start of
/// an inference binary, before any tensor work (the pool is built once).
/// The packed path does not use that pool, and the training ops and candle's
/// f32 matmuls do: forcing one thread there made a training step 1.15x
/// slower on free cores (120 against 138 tokens/s, docs/benchmarks.md), so
/// other weight paths leave the setting alone.
pub fn prefer_single_threaded_quantized_kernels(weights: WeightPath) {
    let candle_quantized = matches!(weights, WeightPath::Q8_0 | WeightPath::Native);
    if candle_quantized && std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}
