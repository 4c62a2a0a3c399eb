//! Integration tests for hone-eval.
