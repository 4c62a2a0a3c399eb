//! `hone train`: LoRA fine-tuning of a base model on a JSONL file.
//!
//! The data is parsed and validated first (the full report on failure, before any
//! model is loaded), "auto" hyperparameters are resolved by hone-data's one rule and
//! printed, then hone-train runs the loop and writes a PEFT adapter into `--out`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use hone_data::hparams::{resolve_auto, AutoInput, ResolvedHyperparameters};

use super::hparams::HyperparameterArgs;
use hone_data::{DataError, Method, PreferenceExample, SftExample};
use hone_model::registry::DEFAULT_MODEL_ID;
use hone_model::{LoraConfig, WeightPath};
use hone_train::dpo::{run_dpo, tokenize_dpo, DpoConfig, TokenizedPairs};
use hone_train::sft::{run_sft, tokenize_sft, Tokenized};
use hone_train::{
    AdamWConfig, EventSink, JsonLinesSink, RunControl, ScheduleKind, TrainConfig, TrainError,
    TrainEvent,
};
use indicatif::{ProgressBar, ProgressStyle};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// `--max-seq-len` when not given (capped at the model's context window).
const DEFAULT_MAX_SEQ_LEN: usize = 1024;

#[derive(clap::Args)]
pub struct TrainArgs {
    /// Training data: chat JSONL for sft, preference JSONL for dpo.
    #[arg(long, env = "HONE_TRAIN_DATA")]
    pub data: PathBuf,
    /// Validation data: loss and token accuracy at each epoch end.
    #[arg(long, env = "HONE_VALIDATION_DATA")]
    pub validation: Option<PathBuf>,
    /// Fine-tuning method: sft or dpo.
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
    /// LoRA rank.
    #[arg(long, env = "HONE_LORA_R", default_value_t = 8)]
    pub lora_r: usize,
    /// LoRA alpha (the update is scaled by alpha / r).
    #[arg(long, env = "HONE_LORA_ALPHA", default_value_t = 16.0)]
    pub lora_alpha: f64,
    /// Dropout on the LoRA input during training.
    #[arg(long, env = "HONE_LORA_DROPOUT", default_value_t = 0.0)]
    pub lora_dropout: f64,
    /// Projections to adapt: all-linear, or a list such as q_proj,v_proj.
    #[arg(long, env = "HONE_TARGET_MODULES", default_value = "all-linear")]
    pub target_modules: String,
    /// Sequences are cut to this many tokens: at most the model's context window
    /// [default: 1024, or the context window if shorter].
    #[arg(long, env = "HONE_MAX_SEQ_LEN")]
    pub max_seq_len: Option<usize>,
    /// Seed of LoRA init, data order and dropout: one seed, one run.
    #[arg(long, env = "HONE_SEED", default_value_t = 42)]
    pub seed: u64,
    /// Split each batch into this many micro-batches (same result, less memory).
    #[arg(long, env = "HONE_GRAD_ACCUM", default_value_t = 1)]
    pub grad_accum: usize,
    /// Fraction of steps spent warming up the learning rate.
    #[arg(long, env = "HONE_WARMUP_RATIO", default_value_t = 0.0)]
    pub warmup_ratio: f64,
    /// Learning-rate schedule: linear, cosine or constant.
    #[arg(long, env = "HONE_LR_SCHEDULE", default_value = "linear")]
    pub lr_schedule: String,
    /// Clip the global gradient norm to this (0 disables).
    #[arg(long, env = "HONE_MAX_GRAD_NORM", default_value_t = 1.0)]
    pub max_grad_norm: f64,
    /// DPO: strength of the pull towards the reference (the base without the adapter);
    /// default 0.1.
    #[arg(long, env = "HONE_BETA", value_parser = parse_beta)]
    pub beta: Option<f64>,
    /// Start from this PEFT adapter (e.g. DPO on top of an SFT adapter); its rank, alpha
    /// and target modules replace --lora-r, --lora-alpha and --target-modules.
    #[arg(long, env = "HONE_INIT_ADAPTER")]
    pub init_adapter: Option<PathBuf>,
    /// SFT: pack each batch's examples into rows of up to --max-seq-len tokens instead of
    /// padding each to the longest. Positions and attention stay per example, so the loss
    /// is the same; only padding work is saved. A step still trains --batch-size examples.
    #[arg(long, env = "HONE_PACKING")]
    pub packing: bool,
    /// Checkpoints kept, newest first (0 writes none).
    #[arg(long, env = "HONE_KEEP_CHECKPOINTS", default_value_t = 2)]
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
}

pub fn run(a: TrainArgs) -> anyhow::Result<ExitCode> {
    let method: Method = match a.method.as_str() {
        "sft" => Method::Sft,
        "dpo" => Method::Dpo,
        other => bail!("unknown method `{other}` (expected sft or dpo)"),
    };
    if a.beta.is_some() && method != Method::Dpo {
        bail!("--beta applies to --method dpo only");
    }
    if a.packing && method != Method::Sft {
        bail!("--packing applies to --method sft only (a DPO pair is already one row each)");
    }
    if let Some(n) = a.max_seq_len.filter(|n| *n < 2) {
        bail!("--max-seq-len {n} is impossible: a training sequence needs at least 2 tokens");
    }
    let schedule: ScheduleKind = a.lr_schedule.parse()?;
    let mut lora = LoraShape {
        r: a.lora_r,
        alpha: a.lora_alpha,
        targets: LoraConfig::parse_target_modules(&a.target_modules)?,
    };
    if let Some(dir) = &a.init_adapter {
        lora = adapter_shape(dir)?;
    }
    let Some(data) = read_data(method, &a.data, false)? else {
        return Ok(ExitCode::from(1));
    };
    let valid_data = match &a.validation {
        Some(p) => match read_data(method, p, true)? {
            Some(v) => v,
            None => return Ok(ExitCode::from(1)),
        },
        None => Data::empty(method),
    };
    let engine = crate::cmd::chat::load_engine(&a.model, WeightPath::F32)?;
    let mut model = engine.model;
    let tok = engine.tokenizer;
    let context = model.cfg.max_position_embeddings;
    let max_seq_len = match a.max_seq_len {
        Some(n) if n > context => bail!(
            "--max-seq-len {n} exceeds the context window of {} ({context} tokens)",
            engine.id
        ),
        Some(n) => n,
        None => DEFAULT_MAX_SEQ_LEN.min(context),
    };
    let train = data.tokenize(&tok, max_seq_len)?;
    let valid = valid_data.tokenize(&tok, max_seq_len)?;
    train.report(max_seq_len, "training")?;
    if a.validation.is_some() {
        valid.report(max_seq_len, "validation")?;
    }
    let hp = resolve(&a, method, &train, count_params(&model))?;
    print_hparams(&hp);
    let cfg = TrainConfig {
        epochs: hp.n_epochs,
        batch_size: hp.batch_size as usize,
        grad_accum: a.grad_accum,
        learning_rate: hp.learning_rate,
        schedule,
        warmup_ratio: a.warmup_ratio,
        max_seq_len,
        seed: a.seed,
        lora_r: lora.r,
        lora_alpha: lora.alpha,
        lora_dropout: a.lora_dropout,
        target_modules: lora.targets,
        adamw: AdamWConfig {
            max_grad_norm: (a.max_grad_norm > 0.0).then_some(a.max_grad_norm),
            ..AdamWConfig::default()
        },
        keep_checkpoints: a.keep_checkpoints,
        checkpoint_every: a.save_every_steps,
        base_model: engine.id.clone(),
        pad_id: tok.tokenizer.eos_id(),
        init_adapter: a.init_adapter.clone(),
        packing: a.packing,
    };
    let mut sink: Box<dyn EventSink> = if a.json_events {
        Box::new(JsonLinesSink::new(std::io::stdout()))
    } else {
        Box::new(BarSink::default())
    };
    let ctl = RunControl {
        resume: a.resume,
        cancel: Some(cancel_on_ctrl_c()),
    };
    let out = &a.out;
    let result = match (train, valid) {
        (Tokens::Sft(t), Tokens::Sft(v)) => run_sft(
            &mut model,
            &t.examples,
            &v.examples,
            &cfg,
            out,
            sink.as_mut(),
            &ctl,
        ),
        (Tokens::Dpo(t), Tokens::Dpo(v)) => {
            let cfg = DpoConfig {
                train: cfg,
                beta: hp.beta.unwrap_or(hone_train::dpo::DEFAULT_BETA),
            };
            run_dpo(
                &mut model,
                &t.pairs,
                &v.pairs,
                &cfg,
                out,
                sink.as_mut(),
                &ctl,
            )
        }
        _ => bail!("training and validation data must be of the same method"),
    };
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
            return Ok(ExitCode::from(130));
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
                out.join(hone_train::runner::BEST_DIR).display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The LoRA shape of a run: from the flags, or from `--init-adapter`'s config.
struct LoraShape {
    r: usize,
    alpha: f64,
    targets: Vec<String>,
}

/// Reads an adapter's rank, alpha and targets, so the run trains that shape.
fn adapter_shape(dir: &Path) -> anyhow::Result<LoraShape> {
    let path = dir.join(hone_model::lora::ADAPTER_CONFIG_FILE);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("--init-adapter: reading {}", path.display()))?;
    let cfg: hone_model::PeftConfig = serde_json::from_str(&text).with_context(|| {
        format!(
            "--init-adapter: {} is not a PEFT adapter config",
            path.display()
        )
    })?;
    let targets = LoraConfig::parse_target_modules(&cfg.target_modules.join(","))
        .with_context(|| format!("--init-adapter {}", dir.display()))?;
    eprintln!(
        "starting from adapter {} (r={}, alpha={}, targets {}); its shape replaces --lora-r, --lora-alpha and --target-modules",
        dir.display(),
        cfg.r,
        cfg.lora_alpha,
        targets.join(",")
    );
    Ok(LoraShape {
        r: cfg.r,
        alpha: cfg.lora_alpha,
        targets,
    })
}

/// Parsed examples of either method.
enum Data {
    Sft(Vec<SftExample>),
    Dpo(Vec<PreferenceExample>),
}

impl Data {
    fn empty(method: Method) -> Self {
        match method {
            Method::Sft => Data::Sft(Vec::new()),
            Method::Dpo => Data::Dpo(Vec::new()),
        }
    }

    fn tokenize(&self, tok: &hone_text::ChatTokenizer, max_len: usize) -> anyhow::Result<Tokens> {
        Ok(match self {
            Data::Sft(ex) => Tokens::Sft(tokenize_sft(tok, ex, max_len)?),
            Data::Dpo(ex) => Tokens::Dpo(tokenize_dpo(tok, ex, max_len)?),
        })
    }
}

/// Tokenised examples of either method.
enum Tokens {
    Sft(Tokenized),
    Dpo(TokenizedPairs),
}

impl Tokens {
    fn len(&self) -> usize {
        match self {
            Tokens::Sft(t) => t.examples.len(),
            Tokens::Dpo(t) => t.pairs.len(),
        }
    }

    fn mean_tokens(&self) -> f64 {
        let (sum, n) = match self {
            Tokens::Sft(t) => (
                t.examples.iter().map(|e| e.ids.len()).sum::<usize>(),
                t.examples.len(),
            ),
            Tokens::Dpo(t) => (
                t.pairs
                    .iter()
                    .map(|p| p.chosen.ids.len() + p.rejected.ids.len())
                    .sum(),
                t.pairs.len(),
            ),
        };
        sum as f64 / n.max(1) as f64
    }

    /// Warns about cut or empty examples; fails when nothing is left to train, which
    /// is what an impossible --max-seq-len (shorter than every prompt) looks like.
    fn report(&self, max_len: usize, what: &str) -> anyhow::Result<()> {
        let (n, truncated, useless) = match self {
            Tokens::Sft(t) => (t.examples.len(), t.truncated, t.without_targets),
            Tokens::Dpo(t) => (t.pairs.len() + t.dropped, t.truncated, t.dropped),
        };
        if truncated > 0 {
            eprintln!(
                "warning: {truncated} {what} example(s) cut to --max-seq-len {max_len} tokens"
            );
        }
        if n > 0 && useless == n {
            bail!(
                "--max-seq-len {max_len} leaves no trained token in any {what} example \
                 (every answer starts beyond it); raise --max-seq-len"
            );
        }
        if useless > 0 {
            let fate = match self {
                Tokens::Sft(_) => "have no trained token left and add nothing",
                Tokens::Dpo(_) => "have an answer with no token left and are dropped",
            };
            eprintln!("warning: {useless} {what} example(s) {fate}");
        }
        Ok(())
    }
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

/// Parses a data file of the method's format; on invalid data prints the full report
/// and returns `None`. A held-out (validation) file may have fewer than the
/// ten examples a training file needs.
fn read_data(method: Method, path: &Path, held_out: bool) -> anyhow::Result<Option<Data>> {
    let parsed = match (method, held_out) {
        (Method::Sft, false) => hone_data::parse_sft_file(path).map(Data::Sft),
        (Method::Sft, true) => hone_data::parse_sft_validation_file(path).map(Data::Sft),
        (Method::Dpo, false) => hone_data::parse_preference_file(path).map(Data::Dpo),
        (Method::Dpo, true) => hone_data::parse_preference_validation_file(path).map(Data::Dpo),
    };
    match parsed {
        Ok(d) => Ok(Some(d)),
        Err(DataError::Invalid(report)) => {
            eprintln!("{} is not valid {} data:", path.display(), method.as_str());
            eprint!("{}", hone_data::render::render_report(&report));
            Ok(None)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn resolve(
    a: &TrainArgs,
    method: Method,
    t: &Tokens,
    params: u64,
) -> anyhow::Result<ResolvedHyperparameters> {
    let input = AutoInput {
        method,
        n_examples: t.len(),
        mean_tokens_per_example: Some(t.mean_tokens()),
        model_params: Some(params),
    };
    Ok(resolve_auto(&input, &a.hp.overrides(a.beta))?)
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

/// Parameters of the loaded model (for the auto learning-rate rule).
fn count_params(m: &hone_model::Llama) -> u64 {
    let c = &m.cfg;
    let (h, kv) = (
        c.hidden_size as u64,
        (c.num_key_value_heads * c.head_dim) as u64,
    );
    let per_layer = 2 * h * h + 2 * h * kv + 3 * h * c.intermediate_size as u64;
    let embed = c.vocab_size as u64 * h;
    embed * if c.tie_word_embeddings { 1 } else { 2 } + c.num_hidden_layers as u64 * per_layer
}

/// A progress bar over steps, with the latest loss.
#[derive(Default)]
struct BarSink {
    bar: Option<ProgressBar>,
}

impl EventSink for BarSink {
    fn emit(&mut self, event: &TrainEvent) {
        match event {
            TrainEvent::Start {
                total_steps,
                trainable_params,
                resumed_from_step,
                ..
            } => {
                eprintln!("training {trainable_params} LoRA parameters for {total_steps} steps");
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
            } => self.println(format!(
                "step {step}: valid loss {valid_loss:.4}, token accuracy {:.1}%",
                valid_mean_token_accuracy * 100.0
            )),
            TrainEvent::Checkpoint { step, path } => {
                self.println(format!("step {step}: checkpoint {}", path.display()))
            }
            TrainEvent::Best {
                step, valid_loss, ..
            } => self.println(format!(
                "step {step}: new best validation loss {valid_loss:.4} (saved in best/)"
            )),
            TrainEvent::Done { .. } => {
                if let Some(b) = self.bar.take() {
                    b.finish();
                }
            }
            TrainEvent::Error { message } => self.println(format!("error: {message}")),
        }
    }
}

impl BarSink {
    fn println(&self, line: String) {
        match &self.bar {
            Some(b) => b.println(line),
            None => eprintln!("{line}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: TrainArgs,
    }

    fn write_data(path: &Path, n: usize) {
        let lines: Vec<String> = (0..n)
            .map(|i| {
                serde_json::json!({"messages": [
                    {"role": "user", "content": format!("q{i}")},
                    {"role": "assistant", "content": format!("answer {i}")},
                ]})
                .to_string()
            })
            .collect();
        std::fs::write(path, lines.join("\n")).unwrap();
    }

    fn args(dir: &Path, model: &Path, extra: &[&str]) -> TrainArgs {
        let mut argv = vec![
            "hone".to_string(),
            "--data".into(),
            dir.join("train.jsonl").display().to_string(),
            "--model".into(),
            model.display().to_string(),
            "--out".into(),
            dir.join("out").display().to_string(),
            "--epochs".into(),
            "2".into(),
        ];
        argv.extend(extra.iter().map(|s| s.to_string()));
        Cli::try_parse_from(argv).unwrap().args
    }

    #[test]
    fn trains_a_tiny_model_end_to_end_and_writes_the_adapter() {
        let dir = tempfile::tempdir().unwrap();
        let spec = hone_model::testing::TinySpec::default();
        let (gguf, _) = hone_model::testing::write_tiny_model(dir.path(), &spec).unwrap();
        write_data(&dir.path().join("train.jsonl"), 12);
        let code = run(args(
            dir.path(),
            &gguf,
            &["--batch-size", "4", "--json-events"],
        ))
        .unwrap();
        assert_eq!(code, ExitCode::SUCCESS);
        let out = dir.path().join("out");
        let summary: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap())
                .unwrap();
        assert_eq!(summary["steps"], 6);
        // The default targets all linear layers at auto lr 1e-3.
        assert_eq!(
            summary["config"]["target_modules"]
                .as_array()
                .unwrap()
                .len(),
            7
        );
        assert_eq!(summary["config"]["learning_rate"], 1e-3);
        let mut m = hone_model::load_model(&gguf, WeightPath::F32).unwrap();
        hone_model::load_peft_adapter(&mut m, &out).unwrap();
    }

    #[test]
    fn invalid_data_fails_before_loading_the_model() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("train.jsonl"), "not json\n").unwrap();
        let missing_model = dir.path().join("no-such-model.gguf");
        let code = run(args(dir.path(), &missing_model, &[])).unwrap();
        assert_eq!(code, ExitCode::from(1));
        assert!(!dir.path().join("out").exists());
        let code = run(args(dir.path(), &missing_model, &["--method", "dpo"])).unwrap();
        assert_eq!(code, ExitCode::from(1));
        let err = run(args(dir.path(), &missing_model, &["--beta", "0.2"])).unwrap_err();
        assert!(err.to_string().contains("dpo only"), "{err}");
        assert!(!dir.path().join("out").exists());
        let err = run(args(
            dir.path(),
            &missing_model,
            &["--target-modules", "wq"],
        ))
        .unwrap_err();
        assert!(format!("{err:#}").contains("q_proj"));
    }
}
