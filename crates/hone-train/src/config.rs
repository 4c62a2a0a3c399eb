//! The settings of a training run, shared by SFT and DPO, and the check that a
//! checkpoint was written by a run with the same settings (resume must be exact, so a
//! checkpoint from other settings is refused, naming what differs).

use std::path::PathBuf;

use hone_model::lora::LoraConfig;
use hone_model::ops::BaseWeights;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TrainError};
use crate::optim::AdamWConfig;
use crate::schedule::ScheduleKind;

/// Everything that defines a LoRA run (after "auto" was resolved). SFT uses it as is;
/// DPO wraps it in [`crate::dpo::DpoConfig`] with its `beta`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub epochs: u32,
    /// Examples (SFT) or preference pairs (DPO) per optimizer step.
    pub batch_size: usize,
    /// Micro-batches per step (1 = the whole batch at once).
    pub grad_accum: usize,
    pub learning_rate: f64,
    pub schedule: ScheduleKind,
    pub warmup_ratio: f64,
    /// Sequences are cut to this many tokens.
    pub max_seq_len: usize,
    pub seed: u64,
    pub lora_r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    pub target_modules: Vec<String>,
    pub adamw: AdamWConfig,
    /// Checkpoints kept (the newest K); 0 writes none.
    pub keep_checkpoints: usize,
    /// Also checkpoint every N steps inside an epoch (0: at epoch ends only).
    #[serde(default)]
    pub checkpoint_every: u64,
    /// The base model's id, recorded in the adapter config.
    pub base_model: String,
    /// Padding id for batches (never a target: padded positions are masked out).
    pub pad_id: u32,
    /// Start from this PEFT adapter instead of a fresh LoRA init (e.g. DPO on top of an
    /// SFT adapter). Its rank, alpha and target modules must match the ones above.
    #[serde(default)]
    pub init_adapter: Option<PathBuf>,
    /// SFT: pack each batch's examples into rows of up to `max_seq_len` tokens
    /// (attention and positions stay per example, so the loss is unchanged; only
    /// padding work is saved). A batch still holds `batch_size` examples.
    #[serde(default)]
    pub packing: bool,
    /// How the frozen base weights are multiplied (`--base-weights`). A run resolves
    /// `auto` once ([`BaseWeights::for_run`]) and its checkpoints record the result, so
    /// a resume multiplies the same way; `auto` read from a checkpoint means it predates
    /// the field (not compared).
    #[serde(default)]
    pub base_weights: BaseWeights,
    /// Recompute each layer's activations in the backward instead of keeping them all
    /// (`--gradient-checkpointing`): less memory, one more forward pass per step, the
    /// same gradients bit for bit (so a resume may switch it).
    #[serde(default)]
    pub gradient_checkpointing: bool,
    /// Stop once this many validations in a row brought no lower validation loss, and
    /// return the best step's adapter (`None`: run every epoch, return the last step).
    /// "auto" sets it with a validation file and auto epochs (hone-data's
    /// `hparams::early_stopping`).
    #[serde(default)]
    pub early_stopping_patience: Option<u32>,
    /// Token ids whose embedding rows (and tied LM-head rows) are trained beside LoRA
    /// (`--trainable-tokens`, resolved; hone-model's `token_rows`). Empty: none.
    #[serde(default)]
    pub trainable_tokens: Vec<u32>,
}

/// Settings that may change between an interrupted run and its resume: they do not
/// affect the steps (how often and how many checkpoints are written).
const RESUMABLE_CHANGES: &[&str] = &[
    "keep_checkpoints",
    "checkpoint_every",
    "gradient_checkpointing",
];

impl TrainConfig {
    /// The LoRA shape this run trains.
    pub fn lora(&self) -> LoraConfig {
        LoraConfig {
            r: self.lora_r,
            alpha: self.lora_alpha,
            dropout: self.lora_dropout,
            target_modules: self.target_modules.clone(),
            trainable_tokens: self.trainable_tokens.clone(),
        }
    }

    /// Range checks that need no model or data.
    pub fn check(&self, n_train: usize) -> Result<()> {
        let bad = |m: String| Err(TrainError::Config(m));
        if n_train == 0 {
            return bad("no training examples".into());
        }
        if self.epochs == 0 || self.batch_size == 0 || self.grad_accum == 0 {
            return bad("epochs, batch size and grad accumulation must be at least 1".into());
        }
        if self.max_seq_len < 2 {
            return bad(format!(
                "max_seq_len must be at least 2, got {}",
                self.max_seq_len
            ));
        }
        self.lora().validate()?;
        Ok(())
    }

    /// Checks `max_seq_len` against the model's context window.
    pub fn check_for_model(&self, model: &hone_model::Llama) -> Result<()> {
        let max = model.cfg.max_position_embeddings;
        if self.max_seq_len > max {
            return Err(TrainError::Config(format!(
                "max_seq_len {} exceeds the model's context window of {max} tokens",
                self.max_seq_len
            )));
        }
        Ok(())
    }
}

/// The settings a checkpoint's steps depend on, as flat `name → value` pairs: the run's
/// config plus the method, DPO's beta, and fingerprints of the base model and the data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunIdentity {
    pub method: String,
    #[serde(default)]
    pub beta: Option<f64>,
    pub config: TrainConfig,
    /// See [`crate::resume::model_fingerprint`].
    #[serde(default)]
    pub model_fingerprint: String,
    /// sha256 over the tokenised training examples.
    #[serde(default)]
    pub data_fingerprint: String,
}

impl RunIdentity {
    /// One line per setting that differs, `name: checkpoint X, this run Y`. Settings
    /// that do not change the steps (`RESUMABLE_CHANGES`) are ignored, and so are
    /// fingerprints a (older) checkpoint did not record.
    pub fn differences(&self, now: &RunIdentity) -> Vec<String> {
        let mut out = Vec::new();
        let mut cmp = |name: &str, a: String, b: String| {
            if a != b {
                out.push(format!("{name}: checkpoint {a}, this run {b}"));
            }
        };
        cmp("method", self.method.clone(), now.method.clone());
        cmp("beta", fmt_opt(self.beta), fmt_opt(now.beta));
        let prints = [
            (
                "base model weights",
                &self.model_fingerprint,
                &now.model_fingerprint,
            ),
            (
                "training data",
                &self.data_fingerprint,
                &now.data_fingerprint,
            ),
        ];
        for (name, a, b) in prints {
            if !a.is_empty() {
                cmp(name, short(a), short(b));
            }
        }
        let (a, b) = (flat(&self.config), flat(&now.config));
        for (k, va) in &a {
            if RESUMABLE_CHANGES.contains(&k.as_str()) || k == "init_adapter" {
                continue;
            }
            if k == "base_weights" && va == "\"auto\"" {
                continue; // an older checkpoint: the mode was not recorded
            }
            let vb = b.get(k).cloned().unwrap_or_else(|| "(none)".into());
            cmp(k, va.clone(), vb);
        }
        out
    }
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map(|x| x.to_string()).unwrap_or_else(|| "(none)".into())
}

fn short(h: &str) -> String {
    format!("sha256 {}…", &h[..h.len().min(12)])
}

/// The config as sorted `name → JSON value` pairs (nested objects flattened with dots).
fn flat(c: &TrainConfig) -> std::collections::BTreeMap<String, String> {
    fn walk(
        prefix: &str,
        v: &serde_json::Value,
        out: &mut std::collections::BTreeMap<String, String>,
    ) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    let name = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&name, v, out);
                }
            }
            other => {
                out.insert(prefix.to_string(), other.to_string());
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    if let Ok(v) = serde_json::to_value(c) {
        walk("", &v, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> TrainConfig {
        TrainConfig {
            epochs: 2,
            batch_size: 2,
            grad_accum: 1,
            learning_rate: 1e-3,
            schedule: ScheduleKind::Linear,
            warmup_ratio: 0.0,
            max_seq_len: 64,
            seed: 1,
            lora_r: 4,
            lora_alpha: 8.0,
            lora_dropout: 0.0,
            target_modules: vec!["q_proj".into()],
            adamw: AdamWConfig::default(),
            keep_checkpoints: 2,
            checkpoint_every: 0,
            base_model: "a".into(),
            pad_id: 0,
            init_adapter: None,
            packing: false,
            base_weights: BaseWeights::F32,
            gradient_checkpointing: false,
            early_stopping_patience: None,
            trainable_tokens: Vec::new(),
        }
    }

    fn id(c: TrainConfig) -> RunIdentity {
        RunIdentity {
            method: "sft".into(),
            beta: None,
            config: c,
            model_fingerprint: "m".repeat(64),
            data_fingerprint: "d".repeat(64),
        }
    }

    #[test]
    fn differences_name_each_changed_setting_and_ignore_checkpoint_cadence() {
        let a = id(cfg());
        let mut c = cfg();
        c.keep_checkpoints = 5;
        c.checkpoint_every = 3;
        assert!(a.differences(&id(c)).is_empty());
        let mut c = cfg();
        c.base_model = "b".into();
        c.learning_rate = 2e-3;
        c.adamw.weight_decay = 0.1;
        let d = a.differences(&id(c));
        assert_eq!(d.len(), 3, "{d:?}");
        assert!(d
            .iter()
            .any(|l| l.starts_with("base_model: checkpoint \"a\"")));
        assert!(d.iter().any(|l| l.starts_with("learning_rate:")));
        assert!(d.iter().any(|l| l.starts_with("adamw.weight_decay:")));
        let mut other = id(cfg());
        other.data_fingerprint = "e".repeat(64);
        other.method = "dpo".into();
        let d = a.differences(&other);
        assert!(d.iter().any(|l| l.starts_with("training data:")), "{d:?}");
        assert!(d.iter().any(|l| l.starts_with("method:")), "{d:?}");
    }

    #[test]
    fn a_resume_with_another_base_weight_mode_is_named_unless_the_checkpoint_predates_it() {
        let a = id(cfg());
        let mut c = cfg();
        c.base_weights = BaseWeights::Bf16;
        let d = a.differences(&id(c.clone()));
        assert_eq!(
            d,
            vec!["base_weights: checkpoint \"f32\", this run \"bf16\"".to_string()]
        );
        let mut old = cfg();
        old.base_weights = BaseWeights::Auto;
        assert!(id(old).differences(&id(c)).is_empty());
        let text = serde_json::to_string(&cfg()).unwrap();
        let without = text.replace(",\"base_weights\":\"f32\"", "");
        assert_ne!(text, without, "the field is written");
        let read: TrainConfig = serde_json::from_str(&without).unwrap();
        assert_eq!(
            read.base_weights,
            BaseWeights::Auto,
            "older configs read as auto"
        );
    }

    /// Checkpointing changes memory, not the steps: a resume may switch it, and
    /// checkpoints written before the field read as off.
    #[test]
    fn a_resume_may_switch_gradient_checkpointing() {
        let mut on = cfg();
        on.gradient_checkpointing = true;
        assert!(id(cfg()).differences(&id(on.clone())).is_empty());
        assert!(id(on).differences(&id(cfg())).is_empty());
        let text = serde_json::to_string(&cfg()).unwrap();
        let without = text.replace(",\"gradient_checkpointing\":false", "");
        assert_ne!(text, without, "the field is written");
        let read: TrainConfig = serde_json::from_str(&without).unwrap();
        assert!(!read.gradient_checkpointing);
    }
}
