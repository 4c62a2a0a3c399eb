//! hone-model: Llama-family models on candle: loading (GGUF, HF safetensors),
//! forward passes for training and inference, LoRA, and generation.

pub mod config;
pub mod engine;
pub mod error;
pub mod generate;
pub mod linear;
pub mod llama;
pub mod load;
pub mod ops;
pub mod registry;
pub mod testing;

pub use config::Config;
pub use engine::{ChatEngine, SERVING_WEIGHTS};
pub use error::{ModelError, Result};
pub use linear::{BaseWeight, Linear, LoraAdapter};
pub use llama::{ForwardOptions, KvCache, Llama, WeightPath};
pub use load::{load_gguf, load_hf_dir, load_model};

/// Threads candle uses for matmuls and element-wise ops.
pub fn compute_threads() -> usize {
    candle_core::utils::get_num_threads()
}
