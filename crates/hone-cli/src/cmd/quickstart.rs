//! `hone quickstart`: the whole loop on the bundled example, in one command.
//!
//! A newcomer's first run: fetch the default model, check a small support
//! dataset, show what "auto" resolves to and what training will cost,
//! fine-tune with LoRA, compare base and fine-tuned on held-out cases, write
//! an HTML report, and say how to chat with and serve the result.
//!
//! Each step is the real subcommand (`hone data validate`, `hone train`,
//! `hone eval`, …), called with the flags a user would type, so the
//! quickstart cannot drift from what those commands do. The dataset is
//! compiled into the binary (from `examples/support/`) and written next to
//! the results, so the command works from any directory.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{FromArgMatches, Parser};
use hone_model::ops::BaseWeights;
use hone_model::registry::{self, DEFAULT_MODEL_ID};

use super::{data, eval, train};

/// The bundled example: Cogsworth Cycles' support assistant, with a house
/// style the base model does not have (see `examples/README.md`).
const TRAIN: &str = include_str!("../../../../examples/support/train.jsonl");
const VALID: &str = include_str!("../../../../examples/support/valid.jsonl");
const EVAL: &str = include_str!("../../../../examples/support/eval.jsonl");

#[derive(clap::Args)]
pub struct QuickstartArgs {
    /// Where the data, adapter, checkpoints and report go.
    #[arg(long, env = "HONE_OUT", default_value = "runs/quickstart")]
    pub out: PathBuf,
    /// Base model: an id or a path (GGUF file or Hugging Face directory).
    #[arg(long, env = "HONE_MODEL", default_value = DEFAULT_MODEL_ID)]
    pub model: String,
    /// Epochs: a number or "auto" (resolved from the data and printed).
    #[arg(long, default_value = "auto")]
    pub epochs: String,
    /// Tokens generated per eval case (the answers are short).
    #[arg(long, default_value_t = 96)]
    pub max_tokens: usize,
    /// Exit 1 unless the fine-tuned model passes more held-out cases than
    /// the base model (what CI checks).
    #[arg(long)]
    pub require_improvement: bool,
    /// How training holds and multiplies the frozen base: auto, f32, bf16, q8_0 or
    /// native (`hone train --base-weights`, docs/train.md).
    #[arg(long, env = "HONE_BASE_WEIGHTS", default_value = "auto", value_parser = BaseWeights::parse)]
    pub base_weights: BaseWeights,
}

pub fn run(a: QuickstartArgs) -> anyhow::Result<ExitCode> {
    let mut clock = Phases::start();
    let data_dir = a.out.join("data");
    let adapter = a.out.join("adapter");
    let report = a.out.join("report.html");

    header(1, "the base model");
    let resolved = registry::resolve(&a.model).context("getting the base model")?;
    println!("{} at {}", resolved.id, resolved.source.path().display());
    let model = a.model.clone();
    clock.lap("model");

    header(2, "the example dataset (Cogsworth Cycles support)");
    let files = write_dataset(&data_dir)?;
    // Token counts with the model that will train, not the default one.
    let code = data::run(parse_data(&[
        "validate",
        path(&files.train),
        "--model",
        &model,
    ])?)?;
    if code != ExitCode::SUCCESS {
        bail!("the bundled dataset did not validate");
    }
    clock.lap("dataset");

    header(3, "the estimate and what \"auto\" resolves to");
    data::run(parse_data(&[
        "estimate",
        path(&files.train),
        "--model",
        &model,
        "--epochs",
        &a.epochs,
    ])?)?;
    clock.lap("estimate");

    header(4, "fine-tuning with LoRA");
    let code = train::run(parse_train(&[
        "--data",
        path(&files.train),
        "--validation",
        path(&files.valid),
        "--model",
        &model,
        "--out",
        path(&adapter),
        "--epochs",
        &a.epochs,
        "--base-weights",
        a.base_weights.as_str(),
    ])?)?;
    clock.lap("training");
    if code != ExitCode::SUCCESS {
        return Ok(code);
    }

    header(5, "base against fine-tuned, on the held-out cases");
    let max_tokens = a.max_tokens.to_string();
    let mut eval_args = vec![
        "--cases",
        path(&files.eval),
        "--model",
        &model,
        "--adapter",
        path(&adapter),
        "--max-tokens",
        &max_tokens,
        "--report",
        path(&report),
    ];
    if a.require_improvement {
        eval_args.push("--require-improvement");
    }
    let code = eval::run(parse_eval(&eval_args)?)?;
    clock.lap("evaluation");

    header(6, "next");
    print_next_steps(&adapter, &report, &model);
    println!("\n{}", clock.summary());
    Ok(code)
}

/// Wall time of each step, so a slow quickstart says where its time went
/// (the eval table adds the generation time of each model).
struct Phases {
    started: Instant,
    last: Instant,
    laps: Vec<(&'static str, Duration)>,
}

impl Phases {
    fn start() -> Self {
        let now = Instant::now();
        Phases {
            started: now,
            last: now,
            laps: Vec::new(),
        }
    }

    /// Ends the step `name` and prints how long it took.
    fn lap(&mut self, name: &'static str) {
        let now = Instant::now();
        let took = now - self.last;
        self.last = now;
        println!("({name}: {})", minutes(took));
        self.laps.push((name, took));
    }

    fn summary(&self) -> String {
        let laps: Vec<String> = self
            .laps
            .iter()
            .map(|(name, d)| format!("{name} {}", minutes(*d)))
            .collect();
        format!(
            "quickstart finished in {} ({})",
            minutes(self.started.elapsed()),
            laps.join(", ")
        )
    }
}

/// `42.0 s` below two minutes, else `3.8 min`.
fn minutes(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 120.0 {
        format!("{s:.1} s")
    } else {
        format!("{:.1} min", s / 60.0)
    }
}

/// The dataset's files, once written to disk.
struct Dataset {
    train: PathBuf,
    valid: PathBuf,
    eval: PathBuf,
}

fn write_dataset(dir: &Path) -> anyhow::Result<Dataset> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let write = |name: &str, text: &str| -> anyhow::Result<PathBuf> {
        let p = dir.join(name);
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
        Ok(p)
    };
    let files = Dataset {
        train: write("train.jsonl", TRAIN)?,
        valid: write("valid.jsonl", VALID)?,
        eval: write("eval.jsonl", EVAL)?,
    };
    println!(
        "{} training, {} validation and {} eval examples in {}",
        TRAIN.lines().count(),
        VALID.lines().count(),
        EVAL.lines().count(),
        dir.display()
    );
    Ok(files)
}

fn print_next_steps(adapter: &Path, report: &Path, model: &str) {
    let a = adapter.display();
    println!("Report: {}", report.display());
    println!("Chat with the fine-tuned model:");
    println!(
        "  hone chat --model {model} --adapter {a} --system \"You are the support assistant \
         for Cogsworth Cycles, a bike repair shop.\" \"Do you fix e-bikes?\""
    );
    println!(
        "Serve it through the OpenAI-compatible API as the model \"support\" (docs/api.md), \
         beside the base model, which you can also fine-tune there:"
    );
    println!("  hone serve --model {model} --adapter support={a}");
    println!("Or merge it into a standalone Hugging Face model directory:");
    println!("  hone merge --model {model} --adapter {a} --out {a}-merged");
}

fn header(n: usize, what: &str) {
    println!("\n== {n}/6 {what}");
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

/// Parses `argv` as the given subcommand's flags, exactly as `hone` would.
fn parse_args<T: clap::Args + FromArgMatches>(
    name: &'static str,
    argv: &[&str],
) -> anyhow::Result<T> {
    let cmd = T::augment_args(clap::Command::new(name));
    let matches = cmd
        .try_get_matches_from(std::iter::once(name).chain(argv.iter().copied()))
        .with_context(|| format!("quickstart built bad `hone {name}` arguments"))?;
    Ok(T::from_arg_matches(&matches)?)
}

fn parse_train(argv: &[&str]) -> anyhow::Result<train::TrainArgs> {
    parse_args("train", argv)
}

fn parse_eval(argv: &[&str]) -> anyhow::Result<eval::EvalArgs> {
    parse_args("eval", argv)
}

/// `hone data …` is a subcommand enum, so it parses through a wrapper.
fn parse_data(argv: &[&str]) -> anyhow::Result<data::DataCommand> {
    #[derive(Parser)]
    struct Wrap {
        #[command(subcommand)]
        c: data::DataCommand,
    }
    let w = Wrap::try_parse_from(std::iter::once("data").chain(argv.iter().copied()))
        .context("quickstart built bad `hone data` arguments")?;
    Ok(w.c)
}
