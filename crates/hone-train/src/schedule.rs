//! Learning-rate schedules with linear warmup, matching the Hugging Face `transformers`
//! schedulers (`get_linear_schedule_with_warmup`, `get_cosine_schedule_with_warmup`,
//! `get_constant_schedule_with_warmup`), so loss curves compare with peer tools.
//!
//! `step` is the number of optimizer steps already taken, i.e. the 0-based index of the
//! step about to use the rate. As in `transformers`, with warmup the first step's rate is 0.

use crate::error::{Result, TrainError};
use std::f64::consts::PI;

/// The schedule's shape is hone-data's, since "auto" picks it there
/// ([`hone_data::hparams::auto_schedule`]).
pub use hone_data::hparams::ScheduleKind;

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LrSchedule {
    pub kind: ScheduleKind,
    /// The peak learning rate, reached at the end of warmup.
    pub base_lr: f64,
    /// Fraction of `total_steps` spent warming up, in `[0, 1]`.
    pub warmup_ratio: f64,
}

impl LrSchedule {
    pub fn new(kind: ScheduleKind, base_lr: f64, warmup_ratio: f64) -> Result<Self> {
        if !(base_lr.is_finite() && base_lr >= 0.0) {
            return Err(TrainError::Schedule(format!(
                "learning rate {base_lr} must be finite and >= 0"
            )));
        }
        if !(0.0..=1.0).contains(&warmup_ratio) {
            return Err(TrainError::Schedule(format!(
                "warmup ratio {warmup_ratio} must be in [0, 1]"
            )));
        }
        Ok(LrSchedule {
            kind,
            base_lr,
            warmup_ratio,
        })
    }

    /// `ceil(warmup_ratio · total_steps)`, as the Hugging Face Trainer computes it.
    pub fn warmup_steps(&self, total_steps: u64) -> u64 {
        (self.warmup_ratio * total_steps as f64).ceil() as u64
    }

    /// The learning rate for the optimizer step with 0-based index `step`.
    pub fn lr_at(&self, step: u64, total_steps: u64) -> f64 {
        let warmup = self.warmup_steps(total_steps);
        if step < warmup {
            return self.base_lr * step as f64 / warmup.max(1) as f64;
        }
        let decay_steps = total_steps.saturating_sub(warmup).max(1) as f64;
        let progress = (step - warmup) as f64 / decay_steps;
        let factor = match self.kind {
            ScheduleKind::Constant => 1.0,
            ScheduleKind::Linear => (1.0 - progress).max(0.0),
            ScheduleKind::Cosine => (0.5 * (1.0 + (PI * progress).cos())).max(0.0),
        };
        self.base_lr * factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn warmup_rises_linearly_from_zero() {
        let s = LrSchedule::new(ScheduleKind::Linear, 1e-3, 0.1).unwrap();
        assert_eq!(s.warmup_steps(100), 10);
        assert_eq!(s.lr_at(0, 100), 0.0);
        assert!(close(s.lr_at(5, 100), 5e-4));
        assert!(close(s.lr_at(10, 100), 1e-3));
    }

    #[test]
    fn linear_decays_to_zero_at_the_end() {
        let s = LrSchedule::new(ScheduleKind::Linear, 1e-3, 0.1).unwrap();
        assert!(close(s.lr_at(55, 100), 5e-4));
        assert!(close(s.lr_at(99, 100), 1e-3 / 90.0));
        assert_eq!(s.lr_at(100, 100), 0.0);
        assert_eq!(s.lr_at(150, 100), 0.0);
    }

    #[test]
    fn cosine_hits_peak_half_and_zero() {
        let s = LrSchedule::new(ScheduleKind::Cosine, 2e-4, 0.0).unwrap();
        assert!(close(s.lr_at(0, 10), 2e-4));
        assert!(close(s.lr_at(5, 10), 1e-4));
        assert!(s.lr_at(10, 10).abs() < 1e-18);
    }

    #[test]
    fn constant_stays_at_peak_after_warmup() {
        let s = LrSchedule::new(ScheduleKind::Constant, 1e-3, 0.25).unwrap();
        assert!(close(s.lr_at(1, 8), 5e-4));
        assert!(close(s.lr_at(2, 8), 1e-3));
        assert!(close(s.lr_at(7, 8), 1e-3));
    }

    #[test]
    fn degenerate_totals_do_not_divide_by_zero() {
        let s = LrSchedule::new(ScheduleKind::Linear, 1e-3, 1.0).unwrap();
        assert_eq!(s.lr_at(0, 0), 1e-3);
        assert!(s.lr_at(0, 1).is_finite());
        let s = LrSchedule::new(ScheduleKind::Cosine, 1e-3, 0.0).unwrap();
        assert!(close(s.lr_at(0, 1), 1e-3));
    }

    #[test]
    fn bad_settings_are_rejected() {
        assert!(LrSchedule::new(ScheduleKind::Linear, -1.0, 0.1).is_err());
        assert!(LrSchedule::new(ScheduleKind::Linear, 1e-3, 1.5).is_err());
        assert!("warmup".parse::<ScheduleKind>().is_err());
        assert_eq!(
            "cosine".parse::<ScheduleKind>().unwrap(),
            ScheduleKind::Cosine
        );
    }
}
