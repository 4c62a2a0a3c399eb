//! hone-model integration tests (one binary; see architecture.md "Tests").

mod alloc_count;
mod batch;
mod chat_template;
mod constrained;
mod embed_real;
mod export;
mod families;
mod frozen;
mod hf_dirs;
mod merge;
mod open;
mod packed;
mod real_families;
mod real_model;
mod running_batch;
mod tiny;

#[global_allocator]
static ALLOC: alloc_count::Counting = alloc_count::Counting;
