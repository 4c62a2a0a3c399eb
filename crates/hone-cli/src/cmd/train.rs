//! `hone train`: LoRA fine-tuning of a base model on a JSONL file.
//!
//! This file only maps flags to hone-train's [`JobOptions`] and shows progress: the
//! data is read and validated by [`TrainData::read`] (the full report on failure,
//! before any model is loaded), and [`TrainJob::build`] tokenises it, resolves "auto"
//! hyperparameters by hone-data's one rule and builds the config, exactly as the
//! server does for an API job. The resolved values are printed with their reasons,
//! then the run writes a PEFT adapter into `--out`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};
use hone_data::hparams::{Overrides, ResolvedHyperparameters, ScheduleKind};
use hone_data::{DataError, Method};
use hone_model::registry::DEFAULT_MODEL_ID;
use hone_model::LoraConfig;
use hone_train::job::{
    DEFAULT_KEEP_CHECKPOINTS, DEFAULT_LORA_ALPHA, DEFAULT_LORA_R, DEFAULT_MAX_GRAD_NORM,
    DEFAULT_MAX_SEQ_LEN, DEFAULT_SEED, DEFAULT_TARGET_MODULES,
};
use hone_train::{
    BaseModel, DataFileError, DataProblem, EventSink, FixedLora, JobOptions, JsonLinesSink,
    MaxSeqLen, RunControl, TrainData, TrainError, TrainEvent, TrainJob, TrainJobError,
};
use indicatif::{ProgressBar, ProgressStyle};

use super::hparams::{parse_auto, Auto, HyperparameterArgs};

#[derive(clap::Args)]
pub struct TrainArgs {
    /// Training data: chat JSONL for sft, preference JSONL for dpo.
    #[arg(long, env = "HONE_TRAIN_DATA")]
    pub data: PathBuf,
    /// Validation data: loss and token accuracy at each epoch end.
    #[arg(long, env = "HONE_VALIDATION_DATA")]
    pub validation: Option<PathBuf>,
    /// Fine-tuning method: sft, dpo, or sft+dpo (preference data: SFT on the preferred
    /// answers into OUT/sft, then DPO from that adapter into OUT, with the SFT model as
    /// DPO's reference).
    #[arg(long, env = "HONE_METHOD", default_value = "sft")]
    pub method: String,
    /// Base model: a registry id or a GGUF file / HF directory path.
    #[arg(long, env = "HONE_MODEL", default_value = DEFAULT_MODEL_ID)]
    pub model: String,
    /// Output directory: adapter, metrics, summary and checkpoints.
    #[arg(long, env = "HONE_OUT")]
    pub out: PathBuf,
    #[command(flatten)]
    pub hp: HyperparameterArgs,
    /// LoRA rank [default: 8, or --init-adapter's].
    #[arg(long, env = "HONE_LORA_R")]
    pub lora_r: Option<usize>,
    /// LoRA alpha (the update is scaled by alpha / r) [default: 16, or --init-adapter's].
    #[arg(long, env = "HONE_LORA_ALPHA")]
    pub lora_alpha: Option<f64>,
    /// Dropout on the LoRA input during training.
    #[arg(long, env = "HONE_LORA_DROPOUT", default_value_t = 0.0)]
    pub lora_dropout: f64,
    /// Projections to adapt: all-linear, or a list such as q_proj,v_proj [default:
    /// all-linear, or --init-adapter's].
    #[arg(long, env = "HONE_TARGET_MODULES")]
    pub target_modules: Option<String>,
    /// Sequences are cut to this many tokens: at most the model's context window
    /// [default: 1024, or the context window if shorter].
    #[arg(long, env = "HONE_MAX_SEQ_LEN")]
    pub max_seq_len: Option<usize>,
    /// Seed of LoRA init, data order and dropout: one seed, one run.
    #[arg(long, env = "HONE_SEED", default_value_t = DEFAULT_SEED)]
    pub seed: u64,
    /// Split each batch into this many micro-batches (same result, less memory).
    #[arg(long, env = "HONE_GRAD_ACCUM", default_value_t = 1)]
    pub grad_accum: usize,
    /// Fraction of steps spent warming up the learning rate.
    #[arg(long, env = "HONE_WARMUP_RATIO", default_value_t = 0.0)]
    pub warmup_ratio: f64,
    /// Learning-rate schedule: linear, cosine, constant, or auto (sft: constant, dpo:
    /// linear; docs/quality.md).
    #[arg(long, env = "HONE_LR_SCHEDULE", default_value = "auto", value_parser = parse_auto::<ScheduleKind>)]
    pub lr_schedule: Auto<ScheduleKind>,
    /// Clip the global gradient norm to this (0 disables).
    #[arg(long, env = "HONE_MAX_GRAD_NORM", default_value_t = DEFAULT_MAX_GRAD_NORM)]
    pub max_grad_norm: f64,
    /// DPO: strength of the pull towards the reference (the model the run starts from:
    /// the base, or base + --init-adapter / the SFT stage's adapter); default 0.1.
    #[arg(long, env = "HONE_BETA", value_parser = parse_beta)]
    pub beta: Option<f64>,
    /// Continue this PEFT adapter (e.g. DPO on top of an SFT adapter, or a second SFT
    /// round): its weights are the start, its rank, alpha and targets are the run's (a
    /// different --lora-r, --lora-alpha or --target-modules is an error), the optimizer
    /// state is new, and DPO's reference is base + this adapter.
    #[arg(long, env = "HONE_INIT_ADAPTER")]
    pub init_adapter: Option<PathBuf>,
    /// SFT: pack each batch's examples into rows of up to --max-seq-len tokens instead of
    /// padding each to the longest. Positions and attention stay per example, so the loss
    /// is the same; only padding work is saved. A step still trains --batch-size examples.
    #[arg(long, env = "HONE_PACKING")]
    pub packing: bool,
    /// Checkpoints kept, newest first (0 writes none).
    #[arg(long, env = "HONE_KEEP_CHECKPOINTS", default_value_t = DEFAULT_KEEP_CHECKPOINTS)]
    pub keep_checkpoints: usize,
    /// Also checkpoint every N steps inside an epoch (0: at epoch ends only).
    #[arg(
        long,
        alias = "checkpoint-every",
        env = "HONE_SAVE_EVERY_STEPS",
        default_value_t = 0
    )]
    pub save_every_steps: u64,
    /// Continue from the newest valid checkpoint in --out (same settings required).
    #[arg(long, env = "HONE_RESUME")]
    pub resume: bool,
    /// Print training events as JSON lines on stdout instead of a progress bar.
    #[arg(long, env = "HONE_JSON_EVENTS")]
    pub json_events: bool,
    /// How the frozen base is held and multiplied: auto (bf16 where bf16 products measure
    /// faster than f32 on this CPU: AMX, and AVX512_BF16 on some CPUs; else f32), f32, bf16 (bf16 products, f32 accumulation), q8_0 or native (the GGUF's
    /// quantized blocks kept, dequantized a panel at a time inside f32 products: least
    /// memory). LoRA stays f32. Checkpoints record the mode; --resume with auto keeps it.
    #[arg(long, env = "HONE_BASE_WEIGHTS", default_value = "auto", value_parser = hone_model::ops::BaseWeights::parse)]
    pub base_weights: hone_model::ops::BaseWeights,
    /// Keep only each layer's input for the backward and recompute the rest there:
    /// activation memory of about one layer instead of all, for one more forward pass per
    /// step (for long sequences; the gradients are the same, so --resume may switch it).
    #[arg(long, env = "HONE_GRADIENT_CHECKPOINTING")]
    pub gradient_checkpointing: bool,
    /// Stop after this many validations (one per epoch end) without a lower validation
    /// loss and write the best step's adapter; 0 turns it off. Default: on (2) with
    /// --validation and auto epochs, off otherwise
    #[arg(long, env = "HONE_EARLY_STOPPING_PATIENCE")]
    pub early_stopping_patience: Option<u32>,
    /// Tokens whose embedding and LM-head rows are trained beside LoRA (one set when
    /// the model ties them), saved as PEFT's trainable_token_indices: auto (the tool-call tags when the
    /// data has assistant tool calls and the tags are single added tokens, else none),
    /// none, or a comma-separated list of token ids and token texts
    #[arg(long, env = "HONE_TRAINABLE_TOKENS", default_value = "auto", value_parser = hone_train::TrainableTokens::parse)]
    pub trainable_tokens: hone_train::TrainableTokens,
    #[command(flatten)]
    pub template: super::chat_template::ChatTemplateArgs,
}

/// `--method sft+dpo`: the SFT stage's output directory inside `--out`.
pub const SFT_STAGE_DIR: &str = "sft";

pub fn run(a: TrainArgs) -> anyhow::Result<ExitCode> {
    let opts = job_options(&a)?;
    let data = match TrainData::read(opts.method, &a.data, a.validation.as_deref()) {
        Ok(d) => d,
        Err(e) => return data_error(e, opts.method),
    };
    // A resume with `auto` keeps the checkpoint's mode, which decides the load path.
    let mode = hone_train::base::mode_for_run(a.base_weights, &a.out, a.resume)?;
    let path = hone_train::base::weight_path(mode);
    let engine = crate::cmd::chat::load_engine_with(&a.model, path, &a.template.options())?;
    let mut model = engine.model;
    // A model given by path is recorded as its path (or installed id), not its stem.
    let recorded = hone_model::registry::recorded_base(&a.model, &engine.id);
    // A copy: the model is trained (borrowed mutably) between the two stages' builds.
    let config = model.cfg.clone();
    let base = BaseModel {
        id: &recorded,
        config: &config,
        tokenizer: &engine.tokenizer,
    };
    let job = if is_sft_then_dpo(&a) {
        let sft_dir = a.out.join(SFT_STAGE_DIR);
        let done = a.resume && sft_dir.join(hone_train::sft::SUMMARY_JSON).is_file();
        if done {
            eprintln!(
                "stage 1/2 (sft on the preferred answers): already done in {}",
                sft_dir.display()
            );
        } else {
            eprintln!(
                "stage 1/2: sft on the preferred answers, adapter into {}",
                sft_dir.display()
            );
            let sft_data = data
                .preferred_as_sft()
                .context("sft+dpo needs preference (DPO) data")?;
            let sft = TrainJob::build(&opts.sft_stage(), sft_data, base).map_err(name_flags)?;
            if let Some(code) = run_stage(&a, &sft, &mut model, &sft_dir)? {
                return Ok(code);
            }
        }
        eprintln!(
            "stage 2/2: dpo from the sft adapter (the reference), into {}",
            a.out.display()
        );
        let mut dpo = opts.clone();
        dpo.continue_from(&sft_dir, &FixedLora::default())
            .map_err(name_flags)?;
        TrainJob::build(&dpo, data, base).map_err(name_flags)?
    } else {
        TrainJob::build(&opts, data, base).map_err(name_flags)?
    };
    Ok(run_stage(&a, &job, &mut model, &a.out)?.unwrap_or(ExitCode::SUCCESS))
}

/// Whether `--method sft+dpo` was asked for.
fn is_sft_then_dpo(a: &TrainArgs) -> bool {
    a.method == "sft+dpo"
}

/// Prints the job's notes and hyperparameters, trains it into `out` and prints how it
/// ended. `Some(code)` when the run stopped early (Ctrl-C).
fn run_stage(
    a: &TrainArgs,
    job: &TrainJob,
    model: &mut hone_model::Llama,
    out: &Path,
) -> anyhow::Result<Option<ExitCode>> {
    for note in &job.notes {
        eprintln!("warning: {note}");
    }
    print_hparams(&job.hyperparameters);
    let mut sink: Box<dyn EventSink> = if a.json_events {
        Box::new(JsonLinesSink::new(std::io::stdout()))
    } else {
        Box::new(BarSink::default())
    };
    let ctl = RunControl {
        resume: a.resume,
        cancel: Some(cancel_on_ctrl_c()),
    };
    let result = job.run(model, out, sink.as_mut(), &ctl);
    drop(sink);
    let summary = match result {
        Ok(s) => s,
        Err(TrainError::Cancelled { step, checkpoint }) => {
            match checkpoint {
                Some(p) => eprintln!(
                    "stopped after step {step}; checkpoint {} (continue with --resume)",
                    p.display()
                ),
                None => {
                    eprintln!("stopped after step {step}; no checkpoint (--keep-checkpoints 0)")
                }
            }
            return Ok(Some(ExitCode::from(130)));
        }
        Err(e) => return Err(e.into()),
    };
    if !a.json_events {
        eprintln!(
            "done: {} steps, final loss {:.4}{}, {:.0} tokens/s, adapter in {}",
            summary.steps,
            summary.final_train_loss,
            summary
                .final_valid_loss
                .map(|v| format!(", valid loss {v:.4}"))
                .unwrap_or_default(),
            summary.tokens_per_s,
            out.display()
        );
        if let Some(b) = &summary.best {
            eprintln!(
                "best validation loss {:.4} at step {}: {}",
                b.valid_loss,
                b.step,
                out.join(hone_train::best::BEST_DIR).display()
            );
        }
    }
    Ok(None)
}

/// A positive number.
fn parse_beta(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(b) if b.is_finite() && b > 0.0 => Ok(b),
        Ok(b) => Err(format!("beta must be positive, got {b}")),
        Err(e) => Err(format!("expected a positive number: {e}")),
    }
}

/// A flag set by the first Ctrl-C (the run checkpoints after the current step and
/// stops with exit code 130; `--resume` continues it). A second Ctrl-C exits at once.
fn cancel_on_ctrl_c() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let set = flag.clone();
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("\ninterrupted: stopping after this step and writing a checkpoint (Ctrl-C again to quit now)");
                set.store(true, Ordering::Relaxed);
            }
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        });
    });
    flag
}

/// The job's settings from the flags (no file or model read yet, so a mistake fails
/// fast). With `--init-adapter` the run continues that adapter (its LoRA shape; a
/// different LoRA flag is an error). For `sft+dpo` these are the DPO stage's options
/// (before it continues the SFT stage's adapter); the SFT stage's are
/// [`JobOptions::sft_stage`].
pub(crate) fn job_options(a: &TrainArgs) -> anyhow::Result<JobOptions> {
    let method: Method = match a.method.as_str() {
        "sft" => Method::Sft,
        "dpo" | "sft+dpo" => Method::Dpo,
        other => bail!("unknown method `{other}` (expected sft, dpo or sft+dpo)"),
    };
    let fixed = FixedLora {
        r: a.lora_r,
        alpha: a.lora_alpha,
        target_modules: a
            .target_modules
            .as_deref()
            .map(LoraConfig::parse_target_modules)
            .transpose()?,
    };
    let mut opts = JobOptions {
        overrides: Overrides {
            lr_schedule: a.lr_schedule.0,
            ..a.hp.overrides(a.beta)
        },
        lora_r: fixed.r.unwrap_or(DEFAULT_LORA_R),
        lora_alpha: fixed.alpha.unwrap_or(DEFAULT_LORA_ALPHA),
        lora_dropout: a.lora_dropout,
        target_modules: match &fixed.target_modules {
            Some(t) => t.clone(),
            None => LoraConfig::parse_target_modules(DEFAULT_TARGET_MODULES)?,
        },
        max_seq_len: a
            .max_seq_len
            .map_or(MaxSeqLen::UpTo(DEFAULT_MAX_SEQ_LEN), MaxSeqLen::Exactly),
        seed: a.seed,
        grad_accum: a.grad_accum,
        warmup_ratio: a.warmup_ratio,
        max_grad_norm: (a.max_grad_norm > 0.0).then_some(a.max_grad_norm),
        keep_checkpoints: a.keep_checkpoints,
        checkpoint_every: a.save_every_steps,
        packing: a.packing,
        base_weights: a.base_weights,
        gradient_checkpointing: a.gradient_checkpointing,
        early_stopping_patience: a.early_stopping_patience,
        trainable_tokens: a.trainable_tokens.clone(),
        ..JobOptions::new(method)
    };
    opts.check()?;
    if let Some(dir) = &a.init_adapter {
        let shape = opts.continue_from(dir, &fixed).map_err(name_flags)?;
        eprintln!(
            "continuing adapter {} (r={}, alpha={}, targets {}; trained on {})",
            dir.display(),
            shape.r,
            shape.alpha,
            shape.target_modules.join(","),
            if shape.base_model.is_empty() {
                "an unrecorded base"
            } else {
                &shape.base_model
            }
        );
    }
    Ok(opts)
}

/// Build errors about `max_seq_len` in the flag's words.
fn name_flags(e: TrainJobError) -> anyhow::Error {
    match e {
        TrainJobError::BeyondContext {
            max_seq_len,
            model,
            context,
        } => anyhow::anyhow!(
            "--max-seq-len {max_seq_len} exceeds the context window of {model} ({context} tokens)"
        ),
        TrainJobError::Data(DataFileError {
            file,
            problem,
            path,
        }) => match *problem {
            DataProblem::NothingToTrain { max_seq_len } => anyhow::anyhow!(
                "--max-seq-len {max_seq_len} leaves no trained token in any {file} example \
                 (every answer starts beyond it); raise --max-seq-len"
            ),
            problem => DataFileError {
                file,
                path,
                problem: Box::new(problem),
            }
            .into(),
        },
        TrainJobError::Parent {
            param: "init_adapter",
            message,
        } => anyhow::anyhow!("--init-adapter: {message}"),
        TrainJobError::Parent { param, message } => {
            let flag = format!("--{}", param.replace('_', "-"));
            anyhow::anyhow!("{}", message.replace(param, &flag))
        }
        other => other.into(),
    }
}

/// A data file hone-data rejected: the full report and exit code 1; any other
/// failure (e.g. unreadable) is an error.
fn data_error(e: DataFileError, method: Method) -> anyhow::Result<ExitCode> {
    let DataFileError { path, problem, .. } = e;
    match *problem {
        DataProblem::Rejected(DataError::Invalid(report)) => {
            eprintln!("{} is not valid {} data:", path.display(), method.as_str());
            eprint!("{}", hone_data::render::render_report(&report));
            Ok(ExitCode::from(1))
        }
        DataProblem::Rejected(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        other => Err(other).with_context(|| format!("reading {}", path.display())),
    }
}

fn print_hparams(hp: &ResolvedHyperparameters) {
    eprintln!("hyperparameters:");
    for r in &hp.reasons {
        let why = match r.source {
            hone_data::hparams::Source::Auto => format!("auto: {}", r.why),
            hone_data::hparams::Source::User => r.why.clone(),
        };
        eprintln!("  {:<26} {:<10} ({why})", r.param, r.value);
    }
}

/// A progress bar over steps, with the latest loss.
#[derive(Default)]
struct BarSink {
    bar: Option<ProgressBar>,
}

impl EventSink for BarSink {
    fn emit(&mut self, event: &TrainEvent) {
        match event {
            TrainEvent::Reference { scored, pairs } => self.on_reference(*scored, *pairs),
            TrainEvent::Start {
                total_steps,
                trainable_params,
                resumed_from_step,
                base_weights,
                ..
            } => {
                eprintln!(
                    "training {trainable_params} LoRA parameters for {total_steps} steps \
                     (base weights: {} products)",
                    base_weights.resolve().describe()
                );
                if let Some(step) = resumed_from_step {
                    eprintln!("resuming after step {step}");
                }
                let bar = ProgressBar::new(*total_steps);
                if let Ok(style) = ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} steps [{elapsed_precise}<{eta_precise}] {msg}",
                ) {
                    bar.set_style(style);
                }
                bar.set_position(resumed_from_step.unwrap_or(0));
                self.bar = Some(bar);
            }
            TrainEvent::Step {
                step,
                train_loss,
                tokens_per_s,
                rewards,
                ..
            } => {
                if let Some(b) = &self.bar {
                    b.set_position(*step);
                    let dpo = rewards
                        .map(|r| {
                            format!(
                                ", reward acc {:.0}%, margin {:.3}",
                                r.accuracy * 100.0,
                                r.margin
                            )
                        })
                        .unwrap_or_default();
                    b.set_message(format!(
                        "loss {train_loss:.4}{dpo}, {tokens_per_s:.0} tok/s"
                    ));
                }
            }
            TrainEvent::Validation {
                step,
                valid_loss,
                valid_mean_token_accuracy,
                rewards,
            } => self.println(match rewards {
                Some(r) => format!(
                    "step {step}: valid loss {valid_loss:.4}, held-out pairs: reward accuracy \
                     {:.0}%, chosen more likely {:.0}%, reward margin {:.3}, log-prob margin {:.2}",
                    r.accuracy * 100.0,
                    r.preference_accuracy * 100.0,
                    r.margin,
                    r.logprob_margin
                ),
                None => format!(
                    "step {step}: valid loss {valid_loss:.4}, token accuracy {:.1}%",
                    valid_mean_token_accuracy * 100.0
                ),
            }),
            TrainEvent::Checkpoint { step, path } => {
                self.println(format!("step {step}: checkpoint {}", path.display()))
            }
            TrainEvent::Best {
                step, valid_loss, ..
            } => self.println(format!(
                "step {step}: new best validation loss {valid_loss:.4} (saved in best/)"
            )),
            TrainEvent::Done {
                early_stop_step,
                returned_best,
                ..
            } => {
                if let Some(b) = self.bar.take() {
                    b.finish();
                }
                if let Some(step) = early_stop_step {
                    eprintln!("early stop at step {step}: the validation loss stopped improving");
                }
                if let Some(b) = returned_best {
                    eprintln!(
                        "the adapter is the best step's: step {}, valid loss {:.4}",
                        b.step, b.valid_loss
                    );
                }
            }
            TrainEvent::Error { message } => self.println(format!("error: {message}")),
        }
    }
}

impl BarSink {
    /// DPO's reference pass before the first step: a bar of its own, over pairs.
    fn on_reference(&mut self, scored: u64, pairs: u64) {
        if scored == 0 {
            eprintln!(
                "scoring {pairs} preference pairs with the reference model (once, before step 1)"
            );
            let bar = ProgressBar::new(pairs);
            if let Ok(style) = ProgressStyle::with_template(
                "{bar:30} {pos}/{len} pairs [{elapsed_precise}<{eta_precise}]",
            ) {
                bar.set_style(style);
            }
            self.bar = Some(bar);
        }
        if let Some(b) = &self.bar {
            b.set_position(scored);
            if scored == pairs {
                b.finish();
                self.bar = None;
            }
        }
    }

    fn println(&self, line: String) {
        match &self.bar {
            Some(b) => b.println(line),
            None => eprintln!("{line}"),
        }
    }
}

#[cfg(test)]
mod tests;
