//! hone-train integration tests (one binary, see architecture.md).

mod best;
mod common;
mod dpo;
mod job;
mod packing;
mod real_qwen;
mod sft;
