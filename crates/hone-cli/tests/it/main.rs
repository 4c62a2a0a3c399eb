//! Integration tests of the `hone` binary (one test binary, modules inside).

mod cli_docs;
mod real_model;
