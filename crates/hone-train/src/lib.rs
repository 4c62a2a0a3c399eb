//! hone-train: the building blocks of LoRA training that do not need the model itself:
//! our own AdamW (with exact, checkpointable state), learning-rate schedules, crash-safe
//! checkpoint directories, a seeded RNG whose state can be saved, and the training event
//! stream. The differentiable ops live in `hone_model::ops`.

pub mod batch;
pub mod checkpoint;
pub mod dpo;
pub mod error;
pub mod events;
pub mod optim;
pub mod rng;
pub mod schedule;
pub mod sft;

pub use checkpoint::{latest_valid, prune, Checkpoint, Manifest, PendingCheckpoint};
pub use error::{Result, TrainError};
pub use events::{EventSink, JsonLinesSink, TrainEvent, VecSink};
pub use optim::{AdamW, AdamWConfig, StepStats};
pub use rng::{RngState, TrainRng};
pub use schedule::{LrSchedule, ScheduleKind};
pub use sft::{resume_sft, tokenize_sft, train_sft, SftConfig, SftSummary};
