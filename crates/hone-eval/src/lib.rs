//! hone-eval: evaluation cases, pass rates, base-vs-fine-tuned comparison
//! and reports.
