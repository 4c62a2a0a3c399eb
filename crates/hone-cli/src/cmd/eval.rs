//! `hone eval`: pass rates of a fine-tuned model, its base and other
//! baselines (a system prompt, few-shot examples, retrieved document chunks)
//! on test cases, side by side,
//! with costs, break-even and a verdict, the failures, optional loss measures,
//! JSON and an HTML report. The work is in `hone-eval`; this file maps flags
//! and prints.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use hone_eval::cost::{
    DEFAULT_PRICE_INPUT, DEFAULT_PRICE_OUTPUT, DEFAULT_PRICE_PER_HOUR, DEFAULT_REQUESTS_PER_DAY,
};
use hone_eval::{run_eval_with, Baseline, EvalReport, EvalSpec, Prices, Progress, ShotPick};
use hone_model::WeightPath;
use indicatif::{ProgressBar, ProgressStyle};

use super::chat::parse_weights;

#[derive(clap::Args)]
pub struct EvalArgs {
    /// Test cases, one JSON object a line: {"messages": [...], "expected_patterns": [...],
    /// "forbidden_patterns": [...], "expected_json": {...}, "ideal": "..."}. Patterns are
    /// case-insensitive substrings, or regexes with a `re:` prefix.
    #[arg(long, env = "HONE_EVAL_CASES")]
    pub cases: PathBuf,
    /// Model id or path to a GGUF file or HF directory. Default: the base model the
    /// adapter was trained on, or the default model.
    #[arg(long, env = "HONE_MODEL")]
    pub model: Option<String>,
    /// A LoRA adapter directory (what `hone train` writes in --out) to evaluate on top
    /// of the model.
    #[arg(long, env = "HONE_ADAPTER")]
    pub adapter: Option<PathBuf>,
    /// What to compare against; repeat for several: `auto` (default: `base` when there is
    /// an adapter), `none`, `base` (the adapter switched off, same loaded weights),
    /// `prompt:FILE` (base with FILE as system prompt, before the case's own),
    /// `few-shot:K[:FILE]` (base with K example chats from FILE or --train-file as prior
    /// turns), `rag:DIR[:K]` (base with the top-K chunks of the .txt/.md files in DIR in
    /// the system message, K default 4, the format of `hone chat --rag`), `fine-tuned`
    /// (the adapter, always run first), `fine-tuned+rag:DIR[:K]` (the adapter with the
    /// same retrieval), or another model id or path.
    #[arg(long, env = "HONE_EVAL_BASELINE", value_parser = parse_baseline)]
    pub baseline: Vec<Baseline>,
    /// The training file (chat JSONL): few-shot examples for `few-shot:K`, and the
    /// training-cost estimate when the adapter has no summary.json. Examples identical to
    /// an eval case are never shown.
    #[arg(long, env = "HONE_EVAL_TRAIN_FILE")]
    pub train_file: Option<PathBuf>,
    /// How few-shot examples are picked for each case: `similar` (the K whose question
    /// is nearest the case's, by --embedding-model) or `random` (seeded by --seed).
    #[arg(long, env = "HONE_EVAL_FEW_SHOT_PICK", default_value = "similar")]
    pub few_shot_pick: ShotPick,
    /// Seed of the random few-shot picks (each case gets its own, reproducible draw).
    #[arg(long, env = "HONE_SEED", default_value_t = 0)]
    pub seed: u64,
    /// The embedding model (id or path) of the rag baselines and of few-shot picks by
    /// similarity; loaded only when one of them runs (fetched when missing).
    #[arg(long, env = "HONE_EMBEDDING_MODEL", default_value = hone_model::registry::DEFAULT_EMBEDDING_MODEL_ID)]
    pub embedding_model: String,
    /// Decode each case that has `expected_schema` constrained to that schema (as
    /// `response_format: json_schema` does), to compare with unconstrained answers.
    #[arg(long)]
    pub json_schema_from_case: bool,
    /// Price of 1M prompt tokens in US dollars, for the cost per 1,000 requests and
    /// break-even (default: gpt-4o-mini's list price).
    #[arg(long, env = "HONE_PRICE_INPUT", default_value_t = DEFAULT_PRICE_INPUT)]
    pub price_input: f64,
    /// Price of 1M completion tokens in US dollars.
    #[arg(long, env = "HONE_PRICE_OUTPUT", default_value_t = DEFAULT_PRICE_OUTPUT)]
    pub price_output: f64,
    /// Local compute price in US dollars per hour (as in `hone data estimate`), for the
    /// local cost per 1,000 requests and the training cost.
    #[arg(long, env = "HONE_PRICE_PER_HOUR", default_value_t = DEFAULT_PRICE_PER_HOUR)]
    pub price_per_hour: f64,
    /// The traffic the verdict's "pays for itself in N days" assumes.
    #[arg(long, env = "HONE_REQUESTS_PER_DAY", default_value_t = DEFAULT_REQUESTS_PER_DAY)]
    pub requests_per_day: f64,
    /// The fine-tune's training cost in US dollars (e.g. a hosted job's bill), instead
    /// of the adapter's recorded training time or an estimate.
    #[arg(long, env = "HONE_TRAINING_COST")]
    pub training_cost: Option<f64>,
    /// Print the full report as JSON on stdout (progress and warnings go to stderr).
    #[arg(long)]
    pub json: bool,
    /// Write a self-contained HTML report here (with the training loss curves when the
    /// adapter directory has a metrics.csv).
    #[arg(long, env = "HONE_EVAL_REPORT")]
    pub report: Option<PathBuf>,
    /// The metrics.csv whose loss curves go into the HTML report. Default: the
    /// adapter directory's metrics.csv, if there is one.
    #[arg(long, env = "HONE_EVAL_METRICS")]
    pub metrics: Option<PathBuf>,
    /// Maximum tokens generated for each case (greedy decoding).
    #[arg(long, env = "HONE_MAX_TOKENS", default_value_t = 256)]
    pub max_tokens: usize,
    /// Cases decoded together, each with its own KV cache; each weight matrix is
    /// then read once per token for all of them. Outputs do not depend on it.
    #[arg(long, env = "HONE_EVAL_BATCH", default_value_t = hone_eval::spec::DEFAULT_BATCH)]
    pub batch: usize,
    /// A held-out chat file (training format): report validation loss and perplexity
    /// over its assistant tokens, masked as in training.
    #[arg(long, env = "HONE_EVAL_CHAT_FILE")]
    pub chat_file: Option<PathBuf>,
    /// A preference (DPO) file: report pair accuracy, the share of pairs where the
    /// preferred answer gets the higher log-probability.
    #[arg(long, env = "HONE_EVAL_PREFERENCE_FILE")]
    pub preference_file: Option<PathBuf>,
    /// Exit with status 1 when the evaluated model's pass rate is below this fraction
    /// (0 to 1), e.g. in CI. Without it, low pass rates still exit 0.
    #[arg(long, env = "HONE_EVAL_MIN_PASS_RATE")]
    pub min_pass_rate: Option<f64>,
    /// Exit 1 unless the model passes more cases than the baseline (for CI:
    /// "did fine-tuning help?").
    #[arg(long)]
    pub require_improvement: bool,
    /// Weights used for inference: packed (default) or f32.
    #[arg(long, env = "HONE_WEIGHTS", default_value = "packed", value_parser = parse_weights)]
    pub weights: WeightPath,
    #[command(flatten)]
    pub template: super::chat_template::ChatTemplateArgs,
}

pub fn run(args: EvalArgs) -> anyhow::Result<ExitCode> {
    if let Some(r) = args.min_pass_rate {
        if !(0.0..=1.0).contains(&r) {
            bail!("--min-pass-rate must be a fraction between 0 and 1, got {r}");
        }
    }
    let metrics = metrics_file(&args)?;
    let spec = EvalSpec {
        cases: args.cases.clone(),
        model: args.model.clone(),
        adapter: args.adapter.clone(),
        baselines: if args.baseline.is_empty() {
            vec![Baseline::Auto]
        } else {
            args.baseline.clone()
        },
        train_file: args.train_file.clone(),
        few_shot_pick: args.few_shot_pick,
        seed: args.seed,
        embedding_model: args.embedding_model.clone(),
        corpus: hone_retrieve::CorpusOptions::default(),
        json_schema_from_case: args.json_schema_from_case,
        prices: Prices {
            input_per_million: args.price_input,
            output_per_million: args.price_output,
            local_per_hour: args.price_per_hour,
            requests_per_day: args.requests_per_day,
        },
        training_cost: args.training_cost,
        max_tokens: args.max_tokens,
        batch: args.batch,
        chat_file: args.chat_file.clone(),
        preference_file: args.preference_file.clone(),
        weights: args.weights,
        open: args.template.options(),
    };
    let mut bar = Bar::default();
    let report = run_eval_with(&spec, &mut |p| bar.update(p));
    bar.finish();
    let report = report?;
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    if args.json {
        println!("{}", report.to_json());
    } else {
        print_human(&report);
    }
    if let Some(path) = &args.report {
        report
            .write_html(path, metrics.as_deref())
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if args.require_improvement && !improved(&report) {
        return Ok(ExitCode::from(1));
    }
    Ok(exit_code(&report, args.min_pass_rate))
}

fn parse_baseline(s: &str) -> Result<Baseline, String> {
    s.parse()
}

/// Whether the model passed more cases than the (first) baseline; says why not.
fn improved(report: &EvalReport) -> bool {
    let (Some(model), Some(base)) = (report.model_run(), report.baseline_run()) else {
        eprintln!("--require-improvement needs a baseline run (not --baseline none)");
        return false;
    };
    let (m, b) = (model.summary.passed, base.summary.passed);
    if m <= b {
        eprintln!("no improvement: the model passed {m} case(s), the baseline {b}");
    }
    m > b
}

/// `--metrics`, else the adapter's metrics.csv when present.
fn metrics_file(args: &EvalArgs) -> anyhow::Result<Option<PathBuf>> {
    if let Some(m) = &args.metrics {
        if !m.is_file() {
            bail!("--metrics {}: no such file", m.display());
        }
        return Ok(Some(m.clone()));
    }
    Ok(args
        .adapter
        .as_ref()
        .map(|a| a.join("metrics.csv"))
        .filter(|p| p.is_file()))
}

fn print_human(report: &EvalReport) {
    report.print_table();
    println!();
    report.print_failures();
}

fn exit_code(report: &EvalReport, min: Option<f64>) -> ExitCode {
    let (Some(min), Some(run)) = (min, report.model_run()) else {
        return ExitCode::SUCCESS;
    };
    if run.summary.pass_rate + 1e-12 < min {
        eprintln!(
            "pass rate {:.1}% is below --min-pass-rate {:.1}%",
            run.summary.pass_rate * 100.0,
            min * 100.0
        );
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

/// One progress bar per model and task on a terminal; elsewhere (CI logs,
/// `hone quickstart > log`) one stderr line per decoded batch of cases and
/// per finished loss measure, so a slow run still shows where it is.
struct Bar {
    key: Option<(String, &'static str)>,
    bar: Option<ProgressBar>,
    lines: Option<Instant>,
}

impl Default for Bar {
    fn default() -> Self {
        Bar {
            key: None,
            bar: None,
            lines: (!std::io::stderr().is_terminal()).then(Instant::now),
        }
    }
}

impl Bar {
    fn update(&mut self, p: Progress) {
        if let Some(started) = self.lines {
            if p.task == "cases" || p.done == 0 || p.done == p.total {
                eprintln!(
                    "{} {}: {}/{} [{:.1} s]",
                    p.model,
                    p.task,
                    p.done,
                    p.total,
                    started.elapsed().as_secs_f64()
                );
            }
            return;
        }
        let key = (p.model.to_string(), p.task);
        if self.key.as_ref() != Some(&key) {
            self.finish();
            let bar = ProgressBar::new(p.total as u64);
            if let Ok(style) =
                ProgressStyle::with_template("{msg:<24} {bar:30} {pos}/{len} [{elapsed_precise}]")
            {
                bar.set_style(style);
            }
            bar.set_message(format!("{} {}", p.model, p.task));
            self.bar = Some(bar);
            self.key = Some(key);
        }
        if let Some(b) = &self.bar {
            b.set_position(p.done as u64);
        }
    }

    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish();
        }
    }
}
