//! hone-train integration tests (one binary, see DESIGN.md).

mod sft;
