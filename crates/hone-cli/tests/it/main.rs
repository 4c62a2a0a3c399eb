//! Integration tests of the `hone` binary (one test binary, modules inside).

mod cli_docs;
mod distill;
mod eval;
mod export;
mod keys;
mod model_hub;
mod real_model;
mod serve_crash;
mod train_errors;
mod train_resume;
mod train_support;
