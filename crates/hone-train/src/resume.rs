//! What a checkpoint records so that a resumed run replays the uninterrupted one step for
//! step, and the checks that refuse a checkpoint from another run.
//!
//! A checkpoint directory ([`crate::checkpoint`] makes it crash-safe) holds the adapter
//! (PEFT files), the optimizer state, and [`TrainerState`]: the data cursor, the step
//! counters, and the run's identity (config, method, beta, fingerprints of the base
//! weights and of the tokenised training data). Resume refuses a checkpoint whose
//! identity differs from the run's, naming each difference.

use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use hone_model::linear::BaseWeight;
use hone_model::lora::{LoraParams, PeftConfig, ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE};
use hone_model::Llama;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::checkpoint::{self, PendingCheckpoint};
use crate::config::{RunIdentity, TrainConfig};
use crate::error::{io_err, Result, TrainError};
use crate::objective::Objective;
use crate::schedule::LrSchedule;

/// Checkpoint files besides the adapter.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const TRAINER_STATE_FILE: &str = "trainer_state.json";

/// Where the data cursor stood when a checkpoint was taken, and the run's identity.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainerState {
    pub step: u64,
    pub total_steps: u64,
    /// The next batch to run: `(epoch, batch index)`.
    pub next_epoch: u32,
    pub next_batch: usize,
    pub seed: u64,
    pub schedule: LrSchedule,
    #[serde(default)]
    pub trained_tokens: u64,
    #[serde(default)]
    pub processed_tokens: u64,
    #[serde(default = "sft_method")]
    pub method: String,
    #[serde(default)]
    pub beta: Option<f64>,
    #[serde(default)]
    pub model_fingerprint: String,
    #[serde(default)]
    pub data_fingerprint: String,
    pub config: TrainConfig,
}

fn sft_method() -> String {
    "sft".into()
}

/// A cheap identity of the base weights: the model config, the final norm, and the first
/// layer's q_proj. Resuming onto another base would silently train something else.
pub fn model_fingerprint(model: &Llama) -> Result<String> {
    let mut h = Sha256::new();
    h.update(format!("{:?}", model.cfg).as_bytes());
    let mut feed = |t: &Tensor| -> Result<()> {
        for v in t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()? {
            h.update(v.to_le_bytes());
        }
        Ok(())
    };
    feed(&model.norm)?;
    if let Some(BaseWeight::Dense(w)) = model.layers.first().map(|b| b.self_attn.q_proj.base()) {
        feed(w)?;
    }
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Refuses a checkpoint written with other settings, saying what differs.
pub(crate) fn check_identity(c: &checkpoint::Checkpoint, now: &RunIdentity) -> Result<()> {
    let st = read_state(c)?;
    let then = RunIdentity {
        method: st.method,
        beta: st.beta,
        config: st.config,
        model_fingerprint: st.model_fingerprint,
        data_fingerprint: st.data_fingerprint,
    };
    let diff = then.differences(now);
    if diff.is_empty() {
        return Ok(());
    }
    Err(TrainError::Checkpoint {
        path: c.path.clone(),
        message: format!(
            "was written by a run with other settings; resume needs the same ones \
             (or use a new --out):\n  {}",
            diff.join("\n  ")
        ),
    })
}

pub(crate) fn read_state(c: &checkpoint::Checkpoint) -> Result<TrainerState> {
    let p = c.file(TRAINER_STATE_FILE);
    let text = std::fs::read_to_string(&p).map_err(io_err("read", &p))?;
    Ok(serde_json::from_str(&text)?)
}

/// sha256 over every training example's tokens, in order.
pub(crate) fn data_fingerprint<O: Objective>(objective: &O, train: &[O::Example]) -> String {
    let mut h = Sha256::new();
    for ex in train {
        objective.hash(ex, &mut h);
    }
    hex(&h.finalize())
}

/// Sets trainable LoRA vars from a PEFT adapter directory (an `--init-adapter`, or a
/// checkpoint). Every trainable tensor must be present with the same shape, and the
/// adapter may hold no other modules.
pub fn load_adapter_into(params: &[(String, Var)], dir: &Path) -> Result<()> {
    let bad = |m: String| TrainError::Checkpoint {
        path: dir.to_path_buf(),
        message: m,
    };
    let cfg_path = dir.join(ADAPTER_CONFIG_FILE);
    let text = std::fs::read_to_string(&cfg_path).map_err(io_err("read", &cfg_path))?;
    let peft: PeftConfig = serde_json::from_str(&text)?;
    let weights = dir.join(ADAPTER_WEIGHTS_FILE);
    let mut tensors = candle_core::safetensors::load(&weights, &Device::Cpu)
        .map_err(|e| bad(format!("{}: {e}", weights.display())))?;
    for (name, var) in params {
        let t = tensors
            .remove(&format!("base_model.model.{name}"))
            .ok_or_else(|| {
                bad(format!(
                    "has no tensor for `{name}` (adapter r={}, alpha={}, targets {}); \
                     train with the adapter's --lora-r/--lora-alpha/--target-modules",
                    peft.r,
                    peft.lora_alpha,
                    peft.target_modules.join(",")
                ))
            })?;
        if t.dims() != var.dims() {
            return Err(bad(format!(
                "`{name}` has shape {:?}, the run expects {:?} (adapter r={}, run r={})",
                t.dims(),
                var.dims(),
                peft.r,
                var.dim(0).unwrap_or(0).min(var.dim(1).unwrap_or(0))
            )));
        }
        var.set(&t.to_dtype(candle_core::DType::F32)?)?;
    }
    if !tensors.is_empty() {
        let mut extra: Vec<_> = tensors.keys().cloned().collect();
        extra.sort();
        return Err(bad(format!(
            "has modules this run does not train: {extra:?} (adapter targets {}); \
             use --target-modules {}",
            peft.target_modules.join(","),
            peft.target_modules.join(",")
        )));
    }
    Ok(())
}

/// Writes the PEFT adapter files into a pending checkpoint-style directory.
pub(crate) fn write_adapter(
    p: &mut PendingCheckpoint,
    lora: &LoraParams,
    base_model: &str,
) -> Result<()> {
    let peft = lora.peft_config(base_model);
    p.write(ADAPTER_CONFIG_FILE, &serde_json::to_vec_pretty(&peft)?)?;
    let tensors = lora.peft_tensors();
    p.write_with(ADAPTER_WEIGHTS_FILE, |path| {
        Ok(candle_core::safetensors::save(&tensors, path)?)
    })
}
