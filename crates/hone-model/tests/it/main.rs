//! hone-model integration tests (one binary; see DESIGN.md "Tests").

mod real_model;
mod tiny;
