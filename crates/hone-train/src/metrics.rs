//! `metrics.csv` and `metrics.jsonl`: one [`MetricsRow`] per optimizer step, written as
//! the run goes (and cut back to a checkpoint's step on resume), and read back by
//! whoever charts a run (hone-eval's HTML report, via [`parse_metrics_csv`]).
//!
//! The writer and the reader live together so that the file format is defined once.
//! The CSV has OpenAI's `step_metrics.csv` columns (the server hands it out as the
//! job's result file); the JSON lines add DPO's rewards.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{io_err, Result};
use crate::events::RewardStats;

pub const METRICS_CSV: &str = "metrics.csv";
pub const METRICS_JSONL: &str = "metrics.jsonl";

/// The header of `metrics.csv` (OpenAI's column names).
pub const CSV_HEADER: &str = "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy";

/// One row of `metrics.csv` / `metrics.jsonl`. For DPO, `train_accuracy` and
/// `valid_mean_token_accuracy` hold the reward accuracy (the fraction of pairs ranked
/// correctly). The validation columns are set at epoch ends only (with a validation set).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsRow {
    pub step: u64,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub valid_loss: Option<f64>,
    pub valid_mean_token_accuracy: Option<f64>,
    /// DPO: the step's mean rewards (JSON lines only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewards: Option<RewardStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_rewards: Option<RewardStats>,
}

impl MetricsRow {
    /// The row as a `metrics.csv` line (no newline): six decimals, empty cells for
    /// missing validation values.
    pub fn csv_line(&self) -> String {
        let opt = |v: Option<f64>| v.map(|x| format!("{x:.6}")).unwrap_or_default();
        format!(
            "{},{:.6},{:.6},{},{}",
            self.step,
            self.train_loss,
            self.train_accuracy,
            opt(self.valid_loss),
            opt(self.valid_mean_token_accuracy)
        )
    }
}

/// Parses the text of a `metrics.csv` (ours, or the server's `step_metrics.csv`, which
/// is the same file). Columns are found by name: `step`, `train_loss` and
/// `train_accuracy` are required, the validation columns optional; an empty cell is a
/// missing value. Errors name the row (1 is the header) and the bad cell.
pub fn parse_metrics_csv(text: &str) -> std::result::Result<Vec<MetricsRow>, String> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines
        .next()
        .ok_or("empty metrics file")?
        .split(',')
        .map(str::trim)
        .collect();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let need = |name: &str| col(name).ok_or(format!("no `{name}` column"));
    let (step, loss, acc) = (need("step")?, need("train_loss")?, need("train_accuracy")?);
    let (vloss, vacc) = (col("valid_loss"), col("valid_mean_token_accuracy"));
    let mut rows = Vec::new();
    for (i, line) in lines.enumerate() {
        let row = i + 2;
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        let cell = |c: Option<usize>| c.and_then(|c| cells.get(c)).filter(|s| !s.is_empty());
        let num = |c: Option<usize>| -> std::result::Result<Option<f64>, String> {
            cell(c)
                .map(|s| {
                    s.parse::<f64>()
                        .map_err(|_| format!("row {row}: `{s}` is not a number"))
                })
                .transpose()
        };
        let required =
            |c: usize, name: &str| num(Some(c))?.ok_or_else(|| format!("row {row}: no {name}"));
        let step = match cell(Some(step)) {
            None => return Err(format!("row {row}: no step")),
            Some(s) => s
                .parse::<u64>()
                .map_err(|_| format!("row {row}: `{s}` is not a step number"))?,
        };
        rows.push(MetricsRow {
            step,
            train_loss: required(loss, "train_loss")?,
            train_accuracy: required(acc, "train_accuracy")?,
            valid_loss: num(vloss)?,
            valid_mean_token_accuracy: num(vacc)?,
            rewards: None,
            valid_rewards: None,
        });
    }
    Ok(rows)
}

/// Appends rows to `metrics.csv` and `metrics.jsonl`, flushing each.
pub(crate) struct MetricsWriter {
    csv: File,
    jsonl: File,
    csv_path: PathBuf,
    jsonl_path: PathBuf,
}

impl MetricsWriter {
    /// Opens both files in `dir`: truncated with a fresh header, or (`append`, a
    /// resumed run) as they are.
    pub(crate) fn create(dir: &Path, append: bool) -> Result<Self> {
        let csv_path = dir.join(METRICS_CSV);
        let jp = dir.join(METRICS_JSONL);
        let open = |p: &Path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(append)
                .write(true)
                .truncate(!append)
                .open(p)
                .map_err(io_err("open", p))
        };
        let mut csv = open(&csv_path)?;
        if !append {
            writeln!(csv, "{CSV_HEADER}").map_err(io_err("write", &csv_path))?;
        }
        let jsonl = open(&jp)?;
        Ok(Self {
            csv,
            jsonl,
            csv_path,
            jsonl_path: jp,
        })
    }

    /// Rewrites both files with the rows up to `step` (from `metrics.jsonl`) and returns
    /// them.
    pub(crate) fn keep_until(&mut self, step: u64) -> Result<Vec<MetricsRow>> {
        let text = std::fs::read_to_string(&self.jsonl_path).unwrap_or_default();
        let rows: Vec<MetricsRow> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<MetricsRow>(l).ok())
            .filter(|r| r.step <= step)
            .collect();
        for (p, f) in [(&self.csv_path, &self.csv), (&self.jsonl_path, &self.jsonl)] {
            f.set_len(0).map_err(io_err("truncate", p))?;
        }
        writeln!(self.csv, "{CSV_HEADER}").map_err(io_err("write", &self.csv_path))?;
        for r in &rows {
            self.write(r)?;
        }
        Ok(rows)
    }

    pub(crate) fn write(&mut self, r: &MetricsRow) -> Result<()> {
        writeln!(self.csv, "{}", r.csv_line())
            .and_then(|_| {
                serde_json::to_writer(&mut self.jsonl, r)?;
                writeln!(self.jsonl)
            })
            .map_err(io_err("write", &self.csv_path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(step: u64, loss: f64, valid: Option<f64>) -> MetricsRow {
        MetricsRow {
            step,
            train_loss: loss,
            train_accuracy: 0.5,
            valid_loss: valid,
            valid_mean_token_accuracy: valid.map(|_| 0.25),
            rewards: None,
            valid_rewards: None,
        }
    }

    #[test]
    fn what_the_writer_writes_the_reader_reads() {
        let dir = tempfile::tempdir().unwrap();
        let rows = vec![
            row(1, 2.5, None),
            row(2, 1.25, Some(1.5)),
            row(3, f64::NAN, None),
        ];
        let mut w = MetricsWriter::create(dir.path(), false).unwrap();
        for r in &rows {
            w.write(r).unwrap();
        }
        let text = std::fs::read_to_string(dir.path().join(METRICS_CSV)).unwrap();
        assert!(text.starts_with(CSV_HEADER));
        let back = parse_metrics_csv(&text).unwrap();
        assert_eq!(back[..2], rows[..2]);
        assert_eq!(back[2].step, 3);
        assert!(
            back[2].train_loss.is_nan(),
            "a diverged step reads back as NaN"
        );
        // Resume (the files reopened for appending, as a resumed run does): rows after
        // the checkpoint's step are dropped from both files.
        drop(w);
        let mut w = MetricsWriter::create(dir.path(), true).unwrap();
        let kept = w.keep_until(2).unwrap();
        assert_eq!(kept.len(), 2);
        let text = std::fs::read_to_string(dir.path().join(METRICS_CSV)).unwrap();
        assert_eq!(parse_metrics_csv(&text).unwrap(), rows[..2]);
    }

    #[test]
    fn metrics_csv_errors_are_clear() {
        assert!(parse_metrics_csv("").unwrap_err().contains("empty"));
        assert!(parse_metrics_csv("a,b\n1,2\n")
            .unwrap_err()
            .contains("step"));
        let e = parse_metrics_csv(&format!("{CSV_HEADER}\n1,abc,0.5,,\n")).unwrap_err();
        assert!(e.contains("row 2") && e.contains("abc"), "{e}");
        let e = parse_metrics_csv(&format!("{CSV_HEADER}\n1,,0.5,,\n")).unwrap_err();
        assert!(e.contains("row 2") && e.contains("train_loss"), "{e}");
    }
}
