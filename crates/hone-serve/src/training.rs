//! The training engine over hone-train: runs fine-tuning jobs in-process (being built).
