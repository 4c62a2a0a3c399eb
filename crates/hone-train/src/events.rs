//! The training event stream. The trainer emits [`TrainEvent`]s into an [`EventSink`];
//! the CLI prints them or writes JSON lines, and the server stores them as job events.

use std::io::Write;
use std::path::PathBuf;

/// One event of a training run. Serialised with a `type` tag, e.g.
/// `{"type":"step","step":3,"total_steps":60,...}`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TrainEvent {
    Start {
        /// "sft" or "dpo".
        method: String,
        base_model: String,
        total_steps: u64,
        epochs: u32,
        train_examples: u64,
        valid_examples: u64,
        trainable_params: u64,
        /// Set when the run continues from a checkpoint.
        resumed_from_step: Option<u64>,
        /// How the frozen base is multiplied (`f32` or `bf16`: `auto` already
        /// resolved, or kept from the checkpoint a resume starts from).
        #[serde(default)]
        base_weights: hone_model::ops::BaseWeights,
    },
    /// DPO, before the first step: the frozen reference's log-probs are computed once
    /// per distinct pair (a forward pass each), `scored` of `pairs` so far. Sent at 0,
    /// at every further percent and at `pairs` (then the reference is complete).
    Reference {
        scored: u64,
        pairs: u64,
    },
    Step {
        step: u64,
        total_steps: u64,
        train_loss: f64,
        train_accuracy: f64,
        lr: f64,
        tokens_per_s: f64,
        /// Global gradient norm before clipping.
        grad_norm: Option<f64>,
        /// DPO only: this step's mean rewards, reward accuracy and margin.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rewards: Option<RewardStats>,
    },
    Validation {
        step: u64,
        valid_loss: f64,
        valid_mean_token_accuracy: f64,
        /// DPO only: the held-out pairs' rewards and preference accuracy.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rewards: Option<RewardStats>,
    },
    Checkpoint {
        step: u64,
        path: PathBuf,
    },
    /// `best/` now holds the adapter of this step (a new lowest validation loss).
    Best {
        step: u64,
        valid_loss: f64,
        path: PathBuf,
    },
    Done {
        steps: u64,
        train_loss: f64,
        valid_loss: Option<f64>,
        elapsed_s: f64,
        /// Where the final adapter was written.
        adapter_path: Option<PathBuf>,
        /// Set when the run stopped early: the step it stopped after.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        early_stop_step: Option<u64>,
        /// Set when the final adapter is the best validation step's (early stopping
        /// on), not the last step's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        returned_best: Option<crate::best::BestInfo>,
    },
    Error {
        message: String,
    },
}

/// DPO's diagnostics over a batch or the validation pairs (means over pairs): the
/// implicit rewards `β·(log π(y|x) − log π_ref(y|x))` of the chosen and rejected answers,
/// the fraction of pairs whose chosen reward is higher (`accuracy`, TRL's
/// `rewards/accuracies`: relative to the reference) and the mean reward margin; then the
/// absolute figures, which decide what the model generates: the fraction of pairs whose
/// chosen answer has the higher total log-prob, and the mean log-prob margin (nats).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RewardStats {
    pub chosen: f64,
    pub rejected: f64,
    pub accuracy: f64,
    pub margin: f64,
    #[serde(default)]
    pub preference_accuracy: f64,
    #[serde(default)]
    pub logprob_margin: f64,
}

/// Receives training events. The server implements this to store events; `emit` must not
/// block training for long.
pub trait EventSink: Send {
    fn emit(&mut self, event: &TrainEvent);
}

/// Writes one JSON object per line, flushed after each event. Write errors are counted
/// rather than returned: losing a progress line must not stop training.
pub struct JsonLinesSink<W: Write + Send> {
    out: W,
    failed_writes: u64,
}

impl<W: Write + Send> JsonLinesSink<W> {
    pub fn new(out: W) -> Self {
        JsonLinesSink {
            out,
            failed_writes: 0,
        }
    }

    /// How many events could not be written.
    pub fn failed_writes(&self) -> u64 {
        self.failed_writes
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

impl<W: Write + Send> EventSink for JsonLinesSink<W> {
    fn emit(&mut self, event: &TrainEvent) {
        let written = serde_json::to_writer(&mut self.out, event)
            .map_err(std::io::Error::from)
            .and_then(|_| self.out.write_all(b"\n"))
            .and_then(|_| self.out.flush());
        if written.is_err() {
            self.failed_writes += 1;
        }
    }
}

/// Keeps events in memory (tests, and callers that forward them in batches).
#[derive(Debug, Default)]
pub struct VecSink {
    pub events: Vec<TrainEvent>,
}

impl EventSink for VecSink {
    fn emit(&mut self, event: &TrainEvent) {
        self.events.push(event.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<TrainEvent> {
        vec![
            TrainEvent::Step {
                step: 3,
                total_steps: 60,
                train_loss: 1.5,
                train_accuracy: 0.25,
                lr: 1e-3,
                tokens_per_s: 150.0,
                grad_norm: Some(0.7),
                rewards: None,
            },
            TrainEvent::Checkpoint {
                step: 3,
                path: PathBuf::from("ckpt/step-3"),
            },
            TrainEvent::Error {
                message: "out of memory".into(),
            },
        ]
    }

    #[test]
    fn json_lines_are_tagged_and_round_trip() {
        let mut sink = JsonLinesSink::new(Vec::new());
        for e in sample() {
            sink.emit(&e);
        }
        let text = String::from_utf8(sink.into_inner()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[0].starts_with(r#"{"type":"step","step":3,"total_steps":60"#),
            "{}",
            lines[0]
        );
        let back: Vec<TrainEvent> = lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(back, sample());
    }

    #[test]
    fn write_failures_are_counted_not_fatal() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("disk full"))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut sink = JsonLinesSink::new(Broken);
        sink.emit(&sample()[0]);
        assert_eq!(sink.failed_writes(), 1);
    }

    #[test]
    fn sinks_are_usable_as_trait_objects() {
        let mut sink: Box<dyn EventSink> = Box::new(VecSink::default());
        sink.emit(&sample()[2]);
    }
}
