//! hone-train integration tests (one binary, see architecture.md).

mod base_weight_curves;
mod base_weights;
mod best;
mod common;
mod dpo;
mod job;
mod packing;
mod real_qwen;
mod sft;
