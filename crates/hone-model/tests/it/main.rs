//! hone-model integration tests (one binary; see DESIGN.md "Tests").

mod merge;
mod real_model;
mod tiny;
