//! hone-train: LoRA training (SFT and DPO) over hone-model: one shared loop
//! ([`runner`]) with our own AdamW (exact, checkpointable state), learning-rate
//! schedules, crash-safe checkpoints, exact resume, cooperative cancel, `best/`, and
//! the training event stream. The differentiable ops live in `hone_model::ops`.
//!
//! Where to start:
//! - [`job`]: [`TrainJob`], what a front end (the CLI's `hone train`, the server's
//!   training engine) calls: data files and resolved options in, a ready run out;
//!   [`data`]: reading and tokenising the job's files.
//! - [`sft`], [`dpo`]: the two methods, each an [`objective::Objective`].
//! - [`runner`]: the loop; its outputs are [`metrics`], [`best`], [`summary`], and the
//!   checkpoints ([`checkpoint`] for the directories, [`resume`] for what they hold).
//! - [`batch`]: tokenised examples into padded or packed batches and tensors.

pub mod base;
pub mod batch;
pub mod best;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod dpo;
pub mod error;
pub mod events;
pub mod job;
pub mod metrics;
pub mod objective;
pub mod optim;
pub mod reference;
pub mod resume;
pub mod rng;
pub mod runner;
pub mod schedule;
pub mod sft;
pub mod summary;
pub mod tokens;

pub use best::BestInfo;
pub use checkpoint::{latest_valid, prune, Checkpoint, Manifest, PendingCheckpoint};
pub use config::TrainConfig;
pub use data::{
    DataFile, DataFileError, DataNote, DataProblem, NoteKind, TokenizedData, TrainData,
};
pub use dpo::{run_dpo, tokenize_dpo, DpoConfig, TokenizedPair, TokenizedPairs};
pub use error::{Result, TrainError};
pub use events::{EventSink, JsonLinesSink, RewardStats, TrainEvent, VecSink};
pub use job::{AdapterShape, BaseModel, FixedLora, JobOptions, MaxSeqLen, TrainJob, TrainJobError};
pub use metrics::{parse_metrics_csv, MetricsRow};
pub use optim::{AdamW, AdamWConfig, StepStats};
pub use rng::{RngState, TrainRng};
pub use runner::RunControl;
pub use schedule::{LrSchedule, ScheduleKind};
pub use sft::{resume_sft, run_sft, tokenize_sft, train_sft, SftConfig, SftSummary};
pub use summary::TrainSummary;
pub use tokens::{TokenSpec, TrainableTokens};
