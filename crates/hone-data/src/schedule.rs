//! The learning-rate schedule's shape, a hyperparameter "auto" resolves
//! ([`crate::hparams::auto_schedule`]); hone-train computes the rates.

use serde::{Deserialize, Serialize};

use crate::DataError;

/// How the learning rate moves over a run (after any warmup). The names and
/// semantics are the Hugging Face Trainer's, so loss curves compare with peer
/// tools; hone-train's `LrSchedule` computes the rates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    /// Decays linearly to 0 at the last step.
    Linear,
    /// Half a cosine from the peak to 0 at the last step.
    Cosine,
    /// Stays at the peak.
    Constant,
}

impl ScheduleKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ScheduleKind::Linear => "linear",
            ScheduleKind::Cosine => "cosine",
            ScheduleKind::Constant => "constant",
        }
    }
}

impl std::fmt::Display for ScheduleKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ScheduleKind {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self, DataError> {
        match s {
            "linear" => Ok(ScheduleKind::Linear),
            "cosine" => Ok(ScheduleKind::Cosine),
            "constant" => Ok(ScheduleKind::Constant),
            other => Err(DataError::InvalidArgument(format!(
                "unknown learning-rate schedule `{other}` (expected linear, cosine or constant)"
            ))),
        }
    }
}
