//! Integration tests for hone-eval (one binary, modules inside).

mod html;
mod real;
mod report;
mod tiny;
