//! `best/`: a copy of the adapter with the lowest validation loss so far (runs with a
//! validation set), and `best/best.json` saying which step it is from. It is replaced
//! crash-safely, so a crash mid-swap never leaves a torn or missing best adapter.

use std::path::{Path, PathBuf};

use hone_model::lora::{LoraParams, ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE};
use serde::{Deserialize, Serialize};

use crate::checkpoint::fsync_path;
use crate::error::{io_err, Result};

/// The adapter with the lowest validation loss so far (with a validation set).
pub const BEST_DIR: &str = "best";
/// In `best/`: which step it is from and its validation loss.
pub const BEST_INFO_FILE: &str = "best.json";

/// `best/best.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BestInfo {
    pub step: u64,
    pub valid_loss: f64,
}

/// `best/`: a copy of the adapter with the lowest validation loss so far.
///
/// Replaced crash-safely: the new adapter is written and fsynced in `best.tmp/`, the old
/// `best/` is renamed to `best.old/`, `best.tmp/` to `best/`, then `best.old/` removed. At
/// every instant one of `best/` or `best.old/` is complete; [`BestDir::open`] repairs an
/// interrupted swap.
#[derive(Debug, Default)]
pub(crate) struct BestDir {
    dir: PathBuf,
    pub(crate) current: Option<BestInfo>,
}

impl BestDir {
    /// Repairs an interrupted swap. A fresh run (not resuming) removes an old `best/`, so
    /// it never reports another run's adapter; a resumed run keeps it and its loss.
    pub(crate) fn open(out_dir: &Path, resuming: bool) -> Result<Self> {
        let dir = out_dir.join(BEST_DIR);
        let (tmp, old) = (sibling(&dir, "tmp"), sibling(&dir, "old"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io_err("remove", &tmp))?;
        }
        if old.exists() {
            if dir.exists() {
                std::fs::remove_dir_all(&old).map_err(io_err("remove", &old))?;
            } else {
                std::fs::rename(&old, &dir).map_err(io_err("rename", &old))?;
            }
        }
        if !resuming && dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io_err("remove", &dir))?;
        }
        let current = std::fs::read_to_string(dir.join(BEST_INFO_FILE))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        Ok(Self { dir, current })
    }

    /// The `best/` directory.
    pub(crate) fn path(&self) -> PathBuf {
        self.dir.clone()
    }

    /// Writes `best/` if `info` beats the current best; returns its path then.
    pub(crate) fn offer(
        &mut self,
        info: &BestInfo,
        lora: &LoraParams,
        base_model: &str,
    ) -> Result<Option<PathBuf>> {
        if self.dir.as_os_str().is_empty() {
            return Ok(None);
        }
        let better = self
            .current
            .as_ref()
            .is_none_or(|b| info.valid_loss < b.valid_loss);
        if !better || !info.valid_loss.is_finite() {
            return Ok(None);
        }
        let (tmp, old) = (sibling(&self.dir, "tmp"), sibling(&self.dir, "old"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io_err("remove", &tmp))?;
        }
        std::fs::create_dir_all(&tmp).map_err(io_err("create", &tmp))?;
        lora.save_peft(&tmp, base_model)?;
        std::fs::write(tmp.join(BEST_INFO_FILE), serde_json::to_vec_pretty(info)?)
            .map_err(io_err("write", &tmp))?;
        for name in [ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, BEST_INFO_FILE] {
            fsync_path(&tmp.join(name))?;
        }
        fsync_path(&tmp)?;
        if self.dir.exists() {
            std::fs::rename(&self.dir, &old).map_err(io_err("rename", &self.dir))?;
        }
        std::fs::rename(&tmp, &self.dir).map_err(io_err("rename", &tmp))?;
        if let Some(parent) = self.dir.parent() {
            fsync_path(parent)?;
        }
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(io_err("remove", &old))?;
        }
        self.current = Some(info.clone());
        Ok(Some(self.dir.clone()))
    }
}

/// Early stopping's memory: the lowest validation loss so far and how many validations
/// have passed without a lower one. It is rebuilt on resume by replaying the metrics
/// rows up to the checkpoint ([`Plateau::replay`]), so a resumed run keeps its patience
/// counter exactly, whatever `best/` on disk holds. "Lower" is [`BestDir::offer`]'s rule
/// (strictly lower and finite), so the two always agree on the best step.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Plateau {
    /// `(step, valid_loss)` of the best validation.
    pub(crate) best: Option<(u64, f64)>,
    /// Validations since the best one.
    pub(crate) since_best: u32,
}

impl Plateau {
    /// Records a validation at `step`.
    pub(crate) fn observe(&mut self, step: u64, valid_loss: f64) {
        let lower = valid_loss.is_finite() && self.best.is_none_or(|(_, b)| valid_loss < b);
        if lower {
            self.best = Some((step, valid_loss));
            self.since_best = 0;
        } else {
            self.since_best += 1;
        }
    }

    /// The state after the validations in `rows` (`(step, valid_loss)`, in order).
    pub(crate) fn replay(rows: impl IntoIterator<Item = (u64, f64)>) -> Self {
        let mut p = Plateau::default();
        for (step, loss) in rows {
            p.observe(step, loss);
        }
        p
    }

    /// Whether a run with this `patience` (in validations) should stop now.
    pub(crate) fn exhausted(&self, patience: Option<u32>) -> bool {
        patience.is_some_and(|p| self.since_best >= p.max(1))
    }
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{suffix}"));
    dir.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hone_model::testing::{write_tiny_model, TinySpec};

    fn lora() -> (tempfile::TempDir, LoraParams) {
        let dir = tempfile::tempdir().unwrap();
        let (gguf, _) = write_tiny_model(dir.path(), &TinySpec::default()).unwrap();
        let mut m = hone_model::load_model(&gguf, hone_model::WeightPath::F32).unwrap();
        let cfg = hone_model::LoraConfig::default();
        let l = LoraParams::attach(&mut m, &cfg, 1).unwrap();
        (dir, l)
    }

    fn info(dir: &Path) -> BestInfo {
        serde_json::from_str(&std::fs::read_to_string(dir.join("best/best.json")).unwrap()).unwrap()
    }

    #[test]
    fn best_is_replaced_only_by_a_lower_loss() {
        let (dir, l) = lora();
        let mut b = BestDir::open(dir.path(), false).unwrap();
        let at = |step, valid_loss| BestInfo { step, valid_loss };
        assert!(b.offer(&at(1, 2.0), &l, "t").unwrap().is_some());
        assert!(b.offer(&at(2, 2.5), &l, "t").unwrap().is_none());
        assert!(b.offer(&at(3, f64::NAN), &l, "t").unwrap().is_none());
        assert_eq!(info(dir.path()), at(1, 2.0));
        assert!(b.offer(&at(4, 1.0), &l, "t").unwrap().is_some());
        assert_eq!(info(dir.path()), at(4, 1.0));
        assert!(dir.path().join("best/adapter_model.safetensors").exists());
        // A resumed run keeps it (and its loss); a fresh one starts over.
        let b = BestDir::open(dir.path(), true).unwrap();
        assert_eq!(b.current, Some(at(4, 1.0)));
        let b = BestDir::open(dir.path(), false).unwrap();
        assert_eq!(b.current, None);
        assert!(!dir.path().join("best").exists());
    }

    #[test]
    fn patience_counts_validations_without_a_new_low() {
        let mut p = Plateau::default();
        p.observe(10, 2.0);
        p.observe(20, 1.5);
        assert_eq!((p.best, p.since_best), (Some((20, 1.5)), 0));
        p.observe(30, 1.5); // equal is not lower
        assert!(!p.exhausted(Some(2)));
        p.observe(40, f64::NAN);
        assert_eq!(p.since_best, 2);
        assert!(p.exhausted(Some(2)) && !p.exhausted(Some(3)) && !p.exhausted(None));
        let replayed = Plateau::replay([(10, 2.0), (20, 1.5), (30, 1.5), (40, f64::NAN)]);
        assert_eq!((replayed.best, replayed.since_best), (p.best, p.since_best));
    }

    #[test]
    fn an_interrupted_swap_is_repaired() {
        let (dir, l) = lora();
        let mut b = BestDir::open(dir.path(), false).unwrap();
        b.offer(
            &BestInfo {
                step: 2,
                valid_loss: 1.5,
            },
            &l,
            "t",
        )
        .unwrap();
        // Crash after `best` -> `best.old`, before `best.tmp` -> `best`.
        let p = dir.path();
        std::fs::rename(p.join("best"), p.join("best.old")).unwrap();
        std::fs::create_dir(p.join("best.tmp")).unwrap();
        let b = BestDir::open(p, true).unwrap();
        assert_eq!(b.current.map(|c| c.step), Some(2));
        assert!(p.join("best/adapter_model.safetensors").exists());
        assert!(!p.join("best.old").exists() && !p.join("best.tmp").exists());
    }
}
