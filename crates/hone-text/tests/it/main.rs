//! Integration tests for hone-text (one binary, modules below).

mod chat;
mod families;
mod vectors;
