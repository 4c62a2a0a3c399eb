//! hone-train integration tests (one binary, see DESIGN.md).

mod best;
mod dpo;
mod packing;
mod sft;
