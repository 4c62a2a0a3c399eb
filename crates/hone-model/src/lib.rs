//! hone-model: decoder models of the supported families (Llama, Qwen2/2.5,
//! Qwen3, Gemma 3; [`family`]) on candle: opening and loading (GGUF, HF
//! safetensors; [`open`]), forward passes for training and inference, LoRA,
//! and generation.

pub mod atomic_file;
pub mod config;
pub mod constraint;
pub mod decode;
pub mod embed;
pub mod engine;
pub mod error;
pub mod export;
pub mod family;
pub mod forward;
pub mod generate;
pub mod kv_cache;
pub mod linear;
pub mod llama;
pub mod load;
pub mod lora;
pub mod merge;
pub mod open;
pub mod ops;
pub mod registry;
pub mod score;
pub mod testing;
pub mod token_rows;
#[cfg(test)]
mod token_rows_tests;
pub mod train_forward;
#[cfg(test)]
mod train_reference;
#[cfg(test)]
mod train_tests;

/// candle itself, so that a driver of the training step (`hone bench train`) can build
/// its input tensors without its own, possibly mismatched, candle dependency.
pub use candle_core;
pub use config::Config;
pub use decode::PackedKvCache;
pub use engine::{ChatEngine, SERVING_WEIGHTS};
pub use error::{ModelError, Result};
pub use forward::TensorKvCache;
pub use kv_cache::KvCache;
pub use linear::{BaseWeight, Linear, LoraAdapter};
pub use llama::{ForwardOptions, Llama, WeightPath};
pub use load::load_model;
pub use lora::{load_peft_adapter, LoraConfig, LoraParams, PeftConfig};
pub use merge::{
    merge_adapters, merge_to_hf_dir, merge_to_hf_dir_as, write_hf_dir, MergeDtype, MergeStats,
};
pub use open::{OpenModel, OpenOptions};
pub use token_rows::TokenRows;
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
