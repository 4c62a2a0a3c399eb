//! hone-train: LoRA training (SFT and DPO) over hone-model: one shared loop
//! ([`runner`]) with our own AdamW (exact, checkpointable state), learning-rate
//! schedules, crash-safe checkpoints, exact resume, cooperative cancel, `best/`, and
//! the training event stream. The differentiable ops live in `hone_model::ops`.

pub mod batch;
pub mod checkpoint;
pub mod config;
pub mod dpo;
pub mod error;
pub mod events;
pub mod optim;
pub mod rng;
pub mod runner;
pub mod schedule;
pub mod sft;

pub use checkpoint::{latest_valid, prune, Checkpoint, Manifest, PendingCheckpoint};
pub use config::TrainConfig;
pub use dpo::{run_dpo, tokenize_dpo, DpoConfig, TokenizedPair, TokenizedPairs};
pub use error::{Result, TrainError};
pub use events::{EventSink, JsonLinesSink, RewardStats, TrainEvent, VecSink};
pub use optim::{AdamW, AdamWConfig, StepStats};
pub use rng::{RngState, TrainRng};
pub use runner::{RunControl, TrainSummary};
pub use schedule::{LrSchedule, ScheduleKind};
pub use sft::{resume_sft, run_sft, tokenize_sft, train_sft, SftConfig, SftSummary};
