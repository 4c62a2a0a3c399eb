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
use hone_data::{DataError, Method, SftExample};
use hone_model::registry::DEFAULT_MODEL_ID;
use hone_model::{LoraConfig, WeightPath};
use hone_train::sft::{run_sft, tokenize_sft, RunControl, SftConfig, Tokenized};
use hone_train::{AdamWConfig, EventSink, JsonLinesSink, ScheduleKind, TrainEvent};
use indicatif::{ProgressBar, ProgressStyle};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(clap::Args)]
pub struct TrainArgs {
    /// Training data (chat JSONL for sft).
    #[arg(long, env = "HONE_TRAIN_DATA")]
    pub data: PathBuf,
    /// Validation data: loss and token accuracy at each epoch end.
    #[arg(long, env = "HONE_VALIDATION_DATA")]
    pub validation: Option<PathBuf>,
    /// Fine-tuning method: sft (dpo is not implemented yet).
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
    /// Examples are cut to this many tokens.
    #[arg(long, env = "HONE_MAX_SEQ_LEN", default_value_t = 1024)]
    pub max_seq_len: usize,
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
    /// Epoch-end checkpoints kept (0 writes none).
    #[arg(long, env = "HONE_KEEP_CHECKPOINTS", default_value_t = 2)]
    pub keep_checkpoints: usize,
    /// Also checkpoint every N steps inside an epoch (0: at epoch ends only).
    #[arg(long, env = "HONE_CHECKPOINT_EVERY", default_value_t = 0)]
    pub checkpoint_every: u64,
    /// Continue from the newest valid checkpoint in --out (same settings required).
    #[arg(long, env = "HONE_RESUME")]
    pub resume: bool,
    /// Print training events as JSON lines on stdout instead of a progress bar.
    #[arg(long, env = "HONE_JSON_EVENTS")]
    pub json_events: bool,
}

pub fn run(a: TrainArgs) -> anyhow::Result<ExitCode> {
    match a.method.as_str() {
        "sft" => {}
        "dpo" => bail!("--method dpo is not implemented yet; use --method sft"),
        other => bail!("unknown method `{other}` (expected sft or dpo)"),
    }
    let schedule: ScheduleKind = a.lr_schedule.parse()?;
    let target_modules = LoraConfig::parse_target_modules(&a.target_modules)?;
    let Some(train_ex) = read_sft(&a.data)? else {
        return Ok(ExitCode::from(1));
    };
    let valid_ex = match &a.validation {
        Some(p) => match read_sft(p)? {
            Some(v) => v,
            None => return Ok(ExitCode::from(1)),
        },
        None => Vec::new(),
    };
    let engine = crate::cmd::chat::load_engine(&a.model, WeightPath::F32)?;
    let mut model = engine.model;
    let tok = engine.tokenizer;
    let max_len = a.max_seq_len.min(model.cfg.max_position_embeddings);
    let train = tokenize_sft(&tok, &train_ex, max_len)?;
    let valid = tokenize_sft(&tok, &valid_ex, max_len)?;
    report_tokenization(&train, max_len);
    let hp = resolve(&a, &train, count_params(&model))?;
    print_hparams(&hp);
    let cfg = SftConfig {
        epochs: hp.n_epochs,
        batch_size: hp.batch_size as usize,
        grad_accum: a.grad_accum,
        learning_rate: hp.learning_rate,
        schedule,
        warmup_ratio: a.warmup_ratio,
        max_seq_len: max_len,
        seed: a.seed,
        lora_r: a.lora_r,
        lora_alpha: a.lora_alpha,
        lora_dropout: a.lora_dropout,
        target_modules,
        adamw: AdamWConfig {
            max_grad_norm: (a.max_grad_norm > 0.0).then_some(a.max_grad_norm),
            ..AdamWConfig::default()
        },
        keep_checkpoints: a.keep_checkpoints,
        checkpoint_every: a.checkpoint_every,
        base_model: engine.id.clone(),
        pad_id: tok.tokenizer.eos_id(),
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
    let summary = run_sft(
        &mut model,
        &train.examples,
        &valid.examples,
        &cfg,
        &a.out,
        sink.as_mut(),
        &ctl,
    )?;
    drop(sink);
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
            a.out.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A flag set by the first Ctrl-C (the run checkpoints after the current step and
/// stops; `--resume` continues it). A second Ctrl-C exits at once.
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

/// Parses an SFT file; on invalid data prints the full report and returns `None`.
fn read_sft(path: &Path) -> anyhow::Result<Option<Vec<SftExample>>> {
    match hone_data::parse_sft_file(path) {
        Ok(ex) => Ok(Some(ex)),
        Err(DataError::Invalid(report)) => {
            eprintln!("{} is not valid SFT data:", path.display());
            eprint!("{}", hone_data::render::render_report(&report));
            Ok(None)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn report_tokenization(t: &Tokenized, max_len: usize) {
    if t.truncated > 0 {
        eprintln!(
            "warning: {} example(s) cut to --max-seq-len {max_len} tokens",
            t.truncated
        );
    }
    if t.without_targets > 0 {
        eprintln!(
            "warning: {} example(s) have no trained token left and add nothing",
            t.without_targets
        );
    }
}

fn resolve(a: &TrainArgs, t: &Tokenized, params: u64) -> anyhow::Result<ResolvedHyperparameters> {
    let n = t.examples.len();
    let mean = t.examples.iter().map(|e| e.ids.len()).sum::<usize>() as f64 / n.max(1) as f64;
    let input = AutoInput {
        method: Method::Sft,
        n_examples: n,
        mean_tokens_per_example: Some(mean),
        model_params: Some(params),
    };
    Ok(resolve_auto(&input, &a.hp.overrides(None))?)
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
                ..
            } => {
                if let Some(b) = &self.bar {
                    b.set_position(*step);
                    b.set_message(format!("loss {train_loss:.4}, {tokens_per_s:.0} tok/s"));
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
    fn invalid_data_fails_before_loading_the_model_and_dpo_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("train.jsonl"), "not json\n").unwrap();
        let missing_model = dir.path().join("no-such-model.gguf");
        let code = run(args(dir.path(), &missing_model, &[])).unwrap();
        assert_eq!(code, ExitCode::from(1));
        assert!(!dir.path().join("out").exists());
        let err = run(args(dir.path(), &missing_model, &["--method", "dpo"])).unwrap_err();
        assert!(err.to_string().contains("not implemented yet"));
        let err = run(args(
            dir.path(),
            &missing_model,
            &["--target-modules", "wq"],
        ))
        .unwrap_err();
        assert!(format!("{err:#}").contains("q_proj"));
    }
}
