//! One training job, built the same way from every front end.
//!
//! Why this exists: `hone train` (the CLI) and the server's training engine both turn
//! "these files, this base model, these settings" into a run. When each did it on its
//! own (its own data reader, its own "auto" call, its own `TrainConfig` literal) they
//! drifted: the CLI passed the model's size to the auto learning-rate rule and the
//! server did not, so the same file trained differently through the API. Now both
//! front ends only *map* their inputs (flags, or the API's hyperparameters plus the
//! server's [`JobOptions`] defaults) and call this module, which does everything else
//! once:
//!
//! 1. [`JobOptions::check`]: settings that contradict each other, before any file or
//!    model is read.
//! 2. [`TrainData::read`] ([`crate::data`]): parses and validates the training (and
//!    validation) file with hone-data. A rejected file is a typed [`DataFileError`]
//!    carrying hone-data's full report, so the CLI can print it and the server can turn
//!    it into an API error with the file's `param`.
//! 3. [`TrainJob::build`]: with the already-loaded model's tokenizer and config (how a
//!    model is opened is the front end's business), tokenises both files, notes what
//!    tokenisation cut ([`crate::data::DataNote`]), resolves "auto" with hone-data's one
//!    rule (including the model's parameter count), and yields the [`TrainConfig`].
//! 4. [`TrainJob::run`]: SFT or DPO over the shared loop.

use std::path::{Path, PathBuf};

use hone_data::hparams::{
    early_stopping, resolve_auto, AutoInput, Overrides, Reason, ResolvedHyperparameters, Source,
    DPO_AUTO_BETA,
};
use hone_data::{DataError, Method};
use hone_model::linear::TARGET_MODULES;
use hone_model::ops::BaseWeights;
use hone_model::Llama;
use hone_text::ChatTokenizer;

use crate::batch::batches_per_epoch;
use crate::config::TrainConfig;
use crate::data::{DataFileError, DataNote, TokenizedData, TrainData};
use crate::dpo::{run_dpo, DpoConfig};
use crate::error::{Result, TrainError};
use crate::events::EventSink;
use crate::optim::AdamWConfig;
use crate::runner::RunControl;
use crate::sft::run_sft;
use crate::summary::TrainSummary;
use crate::tokens::{TokenSpec, TrainableTokens};

/// Sequences are cut to this many tokens unless told otherwise (and never beyond the
/// model's context window).
pub const DEFAULT_MAX_SEQ_LEN: usize = 1024;
/// LoRA rank, alpha and targets that learned on small models (architecture.md, "Defaults
/// that learn").
pub const DEFAULT_LORA_R: usize = 8;
pub const DEFAULT_LORA_ALPHA: f64 = 16.0;
pub const DEFAULT_TARGET_MODULES: &str = "all-linear";
pub const DEFAULT_SEED: u64 = 42;
/// Resume checkpoints kept (the newest ones).
pub const DEFAULT_KEEP_CHECKPOINTS: usize = 2;
/// The global gradient norm is clipped to this.
pub const DEFAULT_MAX_GRAD_NORM: f64 = 1.0;

/// How long training sequences may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxSeqLen {
    /// Exactly this (a user's explicit choice): beyond the model's context is an error.
    Exactly(usize),
    /// At most this, lowered to the model's context window (the default, and what a
    /// server configures once for every base model it serves).
    UpTo(usize),
}

impl MaxSeqLen {
    fn value(self) -> usize {
        match self {
            MaxSeqLen::Exactly(n) | MaxSeqLen::UpTo(n) => n,
        }
    }

    /// The length to train with on a model with `context` positions.
    fn resolve(self, context: usize, model_id: &str) -> std::result::Result<usize, TrainJobError> {
        match self {
            MaxSeqLen::Exactly(n) if n > context => Err(TrainJobError::BeyondContext {
                max_seq_len: n,
                model: model_id.to_string(),
                context,
            }),
            MaxSeqLen::Exactly(n) => Ok(n),
            MaxSeqLen::UpTo(n) => Ok(n.min(context)),
        }
    }
}

/// Everything a front end decides about a run, already parsed: the method, the
/// user-fixed hyperparameters (the rest are "auto"), and the LoRA and loop settings.
/// [`JobOptions::new`] holds the defaults; a front end overwrites what its user set.
#[derive(Debug, Clone, PartialEq)]
pub struct JobOptions {
    pub method: Method,
    /// `n_epochs`, `batch_size`, `learning_rate_multiplier`, `lr_schedule` and (DPO)
    /// `beta`; `None` is "auto", resolved in [`TrainJob::build`].
    pub overrides: Overrides,
    pub lora_r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    /// Parsed projection names (`LoraConfig::parse_target_modules`).
    pub target_modules: Vec<String>,
    pub max_seq_len: MaxSeqLen,
    pub seed: u64,
    pub grad_accum: usize,
    pub warmup_ratio: f64,
    /// Clip the global gradient norm to this (`None`: no clipping).
    pub max_grad_norm: Option<f64>,
    pub keep_checkpoints: usize,
    pub checkpoint_every: u64,
    /// Start from this PEFT adapter; `lora_r`, `lora_alpha` and `target_modules` must
    /// be its shape.
    pub init_adapter: Option<PathBuf>,
    /// SFT only: pack examples into rows.
    pub packing: bool,
    /// How the frozen base is multiplied (`--base-weights`; resolved when the run
    /// starts, see [`crate::TrainConfig::base_weights`]).
    pub base_weights: BaseWeights,
    /// See [`crate::TrainConfig::gradient_checkpointing`].
    pub gradient_checkpointing: bool,
    /// Early stopping's patience in validations: `None` is "auto" (on with a
    /// validation file and auto epochs, hone-data's `hparams::early_stopping`),
    /// `Some(0)` off, `Some(n)` on with patience `n` (needs a validation file).
    pub early_stopping_patience: Option<u32>,
    /// Token rows trained beside LoRA (`--trainable-tokens`; "auto": the tool-call tags
    /// when the data trains them, see [`crate::tokens`]).
    pub trainable_tokens: TrainableTokens,
}

impl JobOptions {
    /// The defaults for `method`, every hyperparameter "auto".
    pub fn new(method: Method) -> Self {
        JobOptions {
            method,
            overrides: Overrides::default(),
            lora_r: DEFAULT_LORA_R,
            lora_alpha: DEFAULT_LORA_ALPHA,
            lora_dropout: 0.0,
            target_modules: TARGET_MODULES.iter().map(|s| s.to_string()).collect(),
            max_seq_len: MaxSeqLen::UpTo(DEFAULT_MAX_SEQ_LEN),
            seed: DEFAULT_SEED,
            grad_accum: 1,
            warmup_ratio: 0.0,
            max_grad_norm: Some(DEFAULT_MAX_GRAD_NORM),
            keep_checkpoints: DEFAULT_KEEP_CHECKPOINTS,
            checkpoint_every: 0,
            init_adapter: None,
            packing: false,
            base_weights: BaseWeights::Auto,
            gradient_checkpointing: false,
            early_stopping_patience: None,
            trainable_tokens: TrainableTokens::Auto,
        }
    }

    /// Settings that are wrong whatever the data and model: checked first, so a
    /// mistake costs no file read and no model load.
    pub fn check(&self) -> std::result::Result<(), TrainJobError> {
        let bad = |m: &str| Err(TrainJobError::Options(m.into()));
        if self.overrides.beta.is_some() && self.method != Method::Dpo {
            return bad("beta applies to method dpo only");
        }
        if self.packing && self.method != Method::Sft {
            return bad("packing applies to method sft only (a DPO pair is already one row each)");
        }
        let n = self.max_seq_len.value();
        if n < 2 {
            return Err(TrainJobError::Options(format!(
                "max_seq_len {n} is impossible: a training sequence needs at least 2 tokens"
            )));
        }
        self.overrides
            .check()
            .map_err(TrainJobError::Hyperparameters)
    }
}

/// Why a job cannot start.
#[derive(Debug, thiserror::Error)]
pub enum TrainJobError {
    /// A data file is unusable (see [`crate::data::DataProblem::detail`] for the full
    /// text).
    #[error(transparent)]
    Data(#[from] DataFileError),
    /// A user-fixed hyperparameter is out of range.
    #[error("{0}")]
    Hyperparameters(DataError),
    /// An explicit `max_seq_len` longer than the model's context window.
    #[error("max_seq_len {max_seq_len} exceeds the context window of {model} ({context} tokens)")]
    BeyondContext {
        max_seq_len: usize,
        model: String,
        context: usize,
    },
    /// Settings that contradict each other.
    #[error("{0}")]
    Options(String),
    /// The adapter a run continues from is unusable, or a LoRA setting the user fixed
    /// contradicts it; `param` names the setting (`init_adapter`, `lora_r`,
    /// `lora_alpha`, `target_modules`).
    #[error("{message}")]
    Parent {
        param: &'static str,
        message: String,
    },
}

/// The LoRA shape of an existing PEFT adapter: what a run continuing from it trains
/// (its rank, alpha and targets), and the base it was trained on.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterShape {
    pub r: usize,
    pub alpha: f64,
    /// Parsed projection names, in `LoraConfig::parse_target_modules`'s form.
    pub target_modules: Vec<String>,
    /// `base_model_name_or_path` as the adapter recorded it.
    pub base_model: String,
    /// The token ids whose rows it trained (PEFT's `trainable_token_indices`).
    pub trainable_tokens: Vec<u32>,
}

impl AdapterShape {
    /// Reads `dir/adapter_config.json` (and checks the weights file is there).
    pub fn read(dir: &Path) -> std::result::Result<Self, TrainJobError> {
        let bad = |m: String| TrainJobError::Parent {
            param: "init_adapter",
            message: m,
        };
        let path = dir.join(hone_model::lora::ADAPTER_CONFIG_FILE);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| bad(format!("reading {}: {e}", path.display())))?;
        let cfg: hone_model::PeftConfig = serde_json::from_str(&text).map_err(|e| {
            bad(format!(
                "{} is not a PEFT adapter config: {e}",
                path.display()
            ))
        })?;
        let weights = dir.join(hone_model::lora::ADAPTER_WEIGHTS_FILE);
        if !weights.is_file() {
            return Err(bad(format!("{} is missing", weights.display())));
        }
        let target_modules =
            hone_model::LoraConfig::parse_target_modules(&cfg.target_modules.join(","))
                .map_err(|e| bad(format!("{}: {e}", path.display())))?;
        let (trainable_tokens, _) = cfg
            .token_ids()
            .map_err(|e| bad(format!("{}: {e}", path.display())))?;
        Ok(AdapterShape {
            r: cfg.r,
            alpha: cfg.lora_alpha,
            target_modules,
            trainable_tokens,
            base_model: cfg.base_model_name_or_path.unwrap_or_default(),
        })
    }
}

/// LoRA settings a user fixed explicitly (`None`: left at the default). A run that
/// continues an adapter trains the adapter's shape; a fixed value that differs is an
/// error rather than silently ignored.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FixedLora {
    pub r: Option<usize>,
    pub alpha: Option<f64>,
    pub target_modules: Option<Vec<String>>,
}

impl JobOptions {
    /// Continues the adapter in `dir`: its weights are the start (`init_adapter`) and
    /// its rank, alpha and targets replace these options'; the optimizer state is new.
    /// A value in `fixed` that differs from the adapter's is a [`TrainJobError::Parent`]
    /// naming it, found before any data or model is read.
    pub fn continue_from(
        &mut self,
        dir: &Path,
        fixed: &FixedLora,
    ) -> std::result::Result<AdapterShape, TrainJobError> {
        let shape = AdapterShape::read(dir)?;
        let conflict = |param: &'static str, mine: String, theirs: String| {
            TrainJobError::Parent {
            param,
            message: format!(
                "{param} {mine} conflicts with the adapter this run continues ({} has                  {param} {theirs}); a continued run trains its parent's LoRA shape, so                  leave {param} unset",
                dir.display()
            ),
        }
        };
        if let Some(r) = fixed.r.filter(|r| *r != shape.r) {
            return Err(conflict("lora_r", r.to_string(), shape.r.to_string()));
        }
        if let Some(a) = fixed.alpha.filter(|a| *a != shape.alpha) {
            return Err(conflict(
                "lora_alpha",
                a.to_string(),
                shape.alpha.to_string(),
            ));
        }
        if let Some(t) = fixed
            .target_modules
            .as_ref()
            .filter(|t| sorted(t) != sorted(&shape.target_modules))
        {
            return Err(conflict(
                "target_modules",
                t.join(","),
                shape.target_modules.join(","),
            ));
        }
        self.lora_r = shape.r;
        self.lora_alpha = shape.alpha;
        self.target_modules = shape.target_modules.clone();
        // The parent's rows are part of its weights: the run trains exactly those.
        self.trainable_tokens = match shape.trainable_tokens.as_slice() {
            [] => TrainableTokens::None,
            ids => TrainableTokens::List(ids.iter().map(|&i| TokenSpec::Id(i)).collect()),
        };
        self.init_adapter = Some(dir.to_path_buf());
        Ok(shape)
    }

    /// The first stage of `sft+dpo` for a DPO job with these options: SFT on the
    /// preferred answers, with the same LoRA shape, seed and loop settings, and the
    /// same user-fixed epochs, batch size and learning-rate multiplier (the rest
    /// "auto", resolved for SFT); beta is DPO's only.
    pub fn sft_stage(&self) -> JobOptions {
        let mut o = self.clone();
        o.method = Method::Sft;
        o.overrides.beta = None;
        o
    }
}

fn sorted(v: &[String]) -> Vec<String> {
    let mut v = v.to_vec();
    v.sort();
    v
}

/// The base model as far as building a job needs it (already loaded by the caller).
#[derive(Debug, Clone, Copy)]
pub struct BaseModel<'a> {
    /// Recorded in the adapter config and the run's identity.
    pub id: &'a str,
    /// Context window and parameter count.
    pub config: &'a hone_model::Config,
    pub tokenizer: &'a ChatTokenizer,
}

/// A run ready to start: tokenised data, resolved hyperparameters (with the reason for
/// each), and the exact config.
#[derive(Debug, Clone)]
pub struct TrainJob {
    pub method: Method,
    pub config: TrainConfig,
    /// DPO's beta; `None` for SFT.
    pub beta: Option<f64>,
    pub hyperparameters: ResolvedHyperparameters,
    pub data: TokenizedData,
    /// Warnings about the data, for the front end to show.
    pub notes: Vec<DataNote>,
}

impl TrainJob {
    /// Tokenises `data` with the model's template, resolves "auto" and builds the
    /// config (see the module docs).
    pub fn build(
        opts: &JobOptions,
        data: TrainData,
        model: BaseModel<'_>,
    ) -> std::result::Result<TrainJob, TrainJobError> {
        opts.check()?;
        if data.method() != opts.method {
            return Err(TrainJobError::Options(format!(
                "the data was read as {} but the job is {}",
                data.method().as_str(),
                opts.method.as_str()
            )));
        }
        let max_seq_len = opts
            .max_seq_len
            .resolve(model.config.max_position_embeddings, model.id)?;
        let (tokenized, notes) = data.tokenize(model.tokenizer, max_seq_len)?;
        let input = AutoInput {
            method: opts.method,
            n_examples: tokenized.n_train(),
            mean_tokens_per_example: Some(tokenized.mean_train_tokens()),
            model: Some(model.config.size()),
        };
        let mut hp =
            resolve_auto(&input, &opts.overrides).map_err(TrainJobError::Hyperparameters)?;
        let beta = (opts.method == Method::Dpo).then(|| hp.beta.unwrap_or(DPO_AUTO_BETA));
        let mut config = train_config(opts, &hp, max_seq_len, model);
        config.early_stopping_patience = early_stop(opts, tokenized.n_valid() > 0, &mut hp)?;
        let (tokens, why) = opts
            .trainable_tokens
            .resolve(model.tokenizer, model.config.vocab_size, &tokenized)
            .map_err(TrainJobError::Options)?;
        config.trainable_tokens = tokens;
        hp.reasons.push(why);
        Ok(TrainJob {
            method: opts.method,
            config,
            beta,
            hyperparameters: hp,
            data: tokenized,
            notes,
        })
    }

    /// Optimizer steps per epoch.
    pub fn steps_per_epoch(&self) -> u64 {
        batches_per_epoch(self.data.n_train(), self.config.batch_size) as u64
    }

    /// Whether epochs end with a validation pass.
    pub fn has_validation(&self) -> bool {
        self.data.n_valid() > 0
    }

    /// Trains `model` (the base the job was built for, f32 weights), writing the
    /// adapter, metrics, summary, checkpoints and `best/` into `out_dir`.
    pub fn run(
        &self,
        model: &mut Llama,
        out_dir: &Path,
        sink: &mut dyn EventSink,
        ctl: &RunControl,
    ) -> Result<TrainSummary> {
        match (&self.data, self.beta) {
            (TokenizedData::Sft { train, valid }, _) => {
                run_sft(model, train, valid, &self.config, out_dir, sink, ctl)
            }
            (TokenizedData::Dpo { train, valid }, Some(beta)) => {
                let cfg = DpoConfig {
                    train: self.config.clone(),
                    beta,
                };
                run_dpo(model, train, valid, &cfg, out_dir, sink, ctl)
            }
            (TokenizedData::Dpo { .. }, None) => {
                Err(TrainError::Config("a DPO job needs a beta".into()))
            }
        }
    }
}

/// Early stopping's patience for the run (see [`JobOptions::early_stopping_patience`]),
/// with its reason added to the printed ones.
fn early_stop(
    o: &JobOptions,
    has_validation: bool,
    hp: &mut ResolvedHyperparameters,
) -> std::result::Result<Option<u32>, TrainJobError> {
    let (patience, source, why) = match o.early_stopping_patience {
        None => {
            let (p, why) = early_stopping(o.overrides.n_epochs.is_none(), has_validation);
            (p, Source::Auto, why)
        }
        Some(0) => (None, Source::User, "turned off by the user".to_string()),
        Some(_) if !has_validation => {
            return Err(TrainJobError::Options(
                "early stopping needs a validation file".into(),
            ))
        }
        Some(p) => (Some(p), Source::User, "set by the user".to_string()),
    };
    hp.reasons.push(Reason {
        param: "early_stopping_patience".into(),
        value: patience.map_or("off".into(), |p| p.to_string()),
        source,
        why,
    });
    Ok(patience)
}

/// The run's config: resolved hyperparameters, the options, and the model's facts.
fn train_config(
    o: &JobOptions,
    hp: &ResolvedHyperparameters,
    max_seq_len: usize,
    model: BaseModel<'_>,
) -> TrainConfig {
    TrainConfig {
        epochs: hp.n_epochs,
        batch_size: hp.batch_size as usize,
        grad_accum: o.grad_accum,
        learning_rate: hp.learning_rate,
        schedule: hp.lr_schedule,
        warmup_ratio: o.warmup_ratio,
        max_seq_len,
        seed: o.seed,
        lora_r: o.lora_r,
        lora_alpha: o.lora_alpha,
        lora_dropout: o.lora_dropout,
        target_modules: o.target_modules.clone(),
        adamw: AdamWConfig {
            max_grad_norm: o.max_grad_norm,
            ..AdamWConfig::default()
        },
        keep_checkpoints: o.keep_checkpoints,
        checkpoint_every: o.checkpoint_every,
        base_model: model.id.to_string(),
        pad_id: model.tokenizer.tokenizer.eos_id(),
        init_adapter: o.init_adapter.clone(),
        packing: o.packing,
        base_weights: o.base_weights,
        gradient_checkpointing: o.gradient_checkpointing,
        early_stopping_patience: None,
        trainable_tokens: Vec::new(),
    }
}

#[cfg(test)]
#[path = "job_tests.rs"]
mod tests;
