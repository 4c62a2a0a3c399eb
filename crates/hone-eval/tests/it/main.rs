//! Integration tests for hone-eval (one binary, modules inside).

mod html;
mod report;
mod tiny;
