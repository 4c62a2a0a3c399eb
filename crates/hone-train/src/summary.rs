//! `summary.json`: what a finished run reports (steps, losses, token counts, speed,
//! `best/`, and the exact [`TrainConfig`] it ran with).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::best::BestInfo;
use crate::checkpoint::fsync_path;
use crate::config::TrainConfig;
use crate::error::{io_err, Result};
use crate::events::RewardStats;

pub const SUMMARY_JSON: &str = "summary.json";

/// What a finished run reports (`summary.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainSummary {
    /// "sft" or "dpo".
    #[serde(default)]
    pub method: String,
    pub steps: u64,
    pub epochs: u32,
    pub final_train_loss: f64,
    pub final_valid_loss: Option<f64>,
    pub final_valid_mean_token_accuracy: Option<f64>,
    /// DPO: the last step's rewards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_rewards: Option<RewardStats>,
    /// Loss of every step, in order.
    pub losses: Vec<f64>,
    /// Tokens that were loss targets.
    pub trained_tokens: u64,
    /// Non-padding tokens the model computed on.
    pub processed_tokens: u64,
    /// Wall time of this session (since the last resume), validation and checkpoints included.
    pub elapsed_s: f64,
    pub tokens_per_s: f64,
    pub trainable_params: u64,
    pub train_examples: usize,
    pub valid_examples: usize,
    pub adapter_path: PathBuf,
    /// The step and validation loss of `best/`, if written.
    #[serde(default)]
    pub best: Option<BestInfo>,
    /// Set when the run stopped early (early stopping on): the step it stopped after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_stop_step: Option<u64>,
    /// Whether `adapter_path` holds `best`'s adapter (early stopping on) rather than the
    /// last step's.
    #[serde(default)]
    pub returned_best: bool,
    /// DPO's beta.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta: Option<f64>,
    pub config: TrainConfig,
}

impl TrainSummary {
    /// Writes `out_dir/summary.json` crash-safely (a temp file, fsynced, renamed).
    pub fn write(&self, out_dir: &Path) -> Result<()> {
        let path = out_dir.join(SUMMARY_JSON);
        let tmp = out_dir.join(format!("{SUMMARY_JSON}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?).map_err(io_err("write", &tmp))?;
        fsync_path(&tmp)?;
        std::fs::rename(&tmp, &path).map_err(io_err("rename", &tmp))?;
        fsync_path(out_dir)
    }
}
