//! hone-model: Llama-family models on candle: loading (GGUF, HF safetensors),
//! forward passes for training and inference, LoRA, and generation.

pub mod ops;
pub mod registry;
