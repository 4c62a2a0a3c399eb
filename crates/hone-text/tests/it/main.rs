//! Integration tests for hone-text (one binary, modules below).

mod chat;
mod vectors;
