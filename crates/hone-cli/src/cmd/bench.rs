//! `hone bench infer|prefill|train|serve`: inference and training speed on this machine, as one
//! JSON line each.
//!
//! `infer` has the same shape as the PyTorch reference (`bench_infer.py`): the chat-templated
//! prompt "Write a short story about a robot who learns to paint.", then
//! exactly `--new-tokens` greedy tokens with no early stop, batch 1, KV cache.
//! Prefill is the forward pass over the prompt (which yields the first new
//! token); decode is the remaining `new_tokens - 1` single-token steps.
//!
//! `infer --json-schema FILE` measures the grammar's cost instead: the same
//! prompt through `generate` (the serving path) with and without the
//! schema, alternating runs so that both see the same machine load.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use hone_model::generate::{argmax, StepModel};
use hone_model::registry::DEFAULT_MODEL_ID;
use hone_model::WeightPath;
use hone_text::{ChatMessage, Role};

use super::chat::{load_engine, parse_weights};

mod constrained;
mod prefill;
mod serve;
mod train;

pub(super) const PROMPT: &str = "Write a short story about a robot who learns to paint.";

#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Prefill and decode speed of greedy generation (one JSON line on stdout).
    Infer(InferArgs),
    /// Prompt-processing speed at several prompt lengths (512, 2048, 8192 tokens by
    /// default; one JSON line on stdout).
    Prefill(prefill::PrefillArgs),
    /// Speed of the LoRA training step: forward, backward over the LoRA matrices only,
    /// AdamW step (one JSON line on stdout; also saved to $HONE_HOME/bench/train.json).
    Train(train::TrainBenchArgs),
    /// Serving speed over HTTP: C concurrent streaming clients against `hone serve`
    /// (and llama.cpp's server with --llama-server), one JSON line on stdout.
    Serve(serve::ServeBenchArgs),
}

#[derive(clap::Args)]
pub struct InferArgs {
    /// Model id or path to a GGUF file or HF directory.
    #[arg(long, env = "HONE_MODEL", default_value = DEFAULT_MODEL_ID)]
    pub model: String,
    /// Weight path to measure: packed (default; hone's kernels) or f32.
    #[arg(long, env = "HONE_WEIGHTS", default_value = "packed", value_parser = parse_weights)]
    pub weights: WeightPath,
    /// Tokens to generate per run.
    #[arg(long, env = "HONE_BENCH_NEW_TOKENS", default_value_t = 128)]
    pub new_tokens: usize,
    /// Measured runs (after one warm-up run); the median is reported.
    #[arg(long, env = "HONE_BENCH_RUNS", default_value_t = 3)]
    pub runs: usize,
    /// Compute threads (sets RAYON_NUM_THREADS; default: all cores).
    #[arg(long, env = "HONE_THREADS")]
    pub threads: Option<usize>,
    /// Also decode under this JSON Schema (as `response_format` does) and
    /// report both speeds and the overhead.
    #[arg(long, value_name = "FILE")]
    pub json_schema: Option<std::path::PathBuf>,
    /// Sequences decoded together, one row each per batched step (as the
    /// server's running batch does); decode tokens/s is then the sum over rows.
    #[arg(long, default_value_t = 1)]
    pub rows: usize,
}

pub fn run(c: BenchCommand) -> anyhow::Result<ExitCode> {
    match c {
        BenchCommand::Infer(a) => infer(a),
        BenchCommand::Prefill(a) => prefill::run(a),
        BenchCommand::Train(a) => train::run(a),
        BenchCommand::Serve(a) => serve::run(a),
    }
}

struct RunTimes {
    prefill_s: f64,
    decode_s: f64,
}

fn infer(args: InferArgs) -> anyhow::Result<ExitCode> {
    if args.new_tokens < 2 || args.runs == 0 || args.rows == 0 {
        bail!("--new-tokens must be at least 2, --runs and --rows at least 1");
    }
    if let Some(t) = args.threads {
        // Read by rayon when candle first builds its pool, and by hone's
        // decode team when the first packed product runs, i.e. after this.
        std::env::set_var("RAYON_NUM_THREADS", t.to_string());
    }
    if let Some(path) = &args.json_schema {
        return constrained::run(&args, path);
    }
    let t0 = Instant::now();
    let engine = load_engine(&args.model, args.weights)?;
    let load_s = t0.elapsed().as_secs_f64();
    let msgs = [ChatMessage::new(Role::User, PROMPT)];
    let prompt = engine.encode_prompt(&msgs, None)?;
    let model = &engine.model;
    let mut runs = Vec::with_capacity(args.runs);
    for i in 0..=args.runs {
        let r = match args.rows {
            1 => one_run(model, &prompt, args.new_tokens),
            rows => batched_run(model, &prompt, args.new_tokens, rows),
        }
        .context("benchmark run")?;
        if i > 0 {
            runs.push(r);
        }
    }
    let n = args.new_tokens as f64;
    let rows = args.rows as f64;
    let mut decode: Vec<f64> = runs.iter().map(|r| rows * (n - 1.0) / r.decode_s).collect();
    let mut prefill: Vec<f64> = runs
        .iter()
        .map(|r| prompt.len() as f64 / r.prefill_s)
        .collect();
    let out = serde_json::json!({
        "bench": "infer",
        "model": engine.id,
        "weights": args.weights.as_str(),
        "prompt_tokens": prompt.len(),
        "new_tokens": args.new_tokens,
        "prefill_tokens_per_s": round2(median(&mut prefill)),
        "decode_tokens_per_s": round2(median(&mut decode)),
        "decode_tokens_per_s_best": round2(decode.iter().copied().fold(0.0, f64::max)),
        "rows": args.rows,
        "decode_step_ms": round2(1e3 * rows / median(&mut decode)),
        "peak_rss_mb": peak_rss_mb(),
        "threads": hone_model::compute_threads(),
        "decode_threads": hone_model::decode::team::global().threads(),
        "decode_activations": decode_activations(),
        "candle_num_threads": std::env::var("CANDLE_NUM_THREADS").ok(),
        "loadavg_1m": loadavg(),
        "runs": args.runs,
        "load_s": round2(load_s),
    });
    println!("{out}");
    Ok(ExitCode::SUCCESS)
}

/// One generation of exactly `new_tokens` greedy tokens, timed in two parts.
fn one_run(
    model: &hone_model::Llama,
    prompt: &[u32],
    new_tokens: usize,
) -> anyhow::Result<RunTimes> {
    let mut cache = model.new_cache();
    let t = Instant::now();
    let logits = model.step(prompt, 0, &mut cache)?;
    let mut next = argmax(&logits);
    let prefill_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for i in 1..new_tokens {
        let logits = model.step(&[next], prompt.len() + i - 1, &mut cache)?;
        next = argmax(&logits);
    }
    Ok(RunTimes {
        prefill_s,
        decode_s: t.elapsed().as_secs_f64(),
    })
}

/// As [`one_run`] for `rows` copies of the prompt decoded together: each
/// prefilled alone, then `new_tokens - 1` batched steps of one row each.
fn batched_run(
    model: &hone_model::Llama,
    prompt: &[u32],
    new_tokens: usize,
    rows: usize,
) -> anyhow::Result<RunTimes> {
    let opts = hone_model::ForwardOptions::default();
    let mut caches: Vec<_> = (0..rows).map(|_| model.new_cache()).collect();
    let t = Instant::now();
    let mut next = Vec::with_capacity(rows);
    for cache in caches.iter_mut() {
        next.push(argmax(&model.step(prompt, 0, cache)?));
    }
    let prefill_s = t.elapsed().as_secs_f64() / rows as f64;
    let t = Instant::now();
    for _ in 1..new_tokens {
        let mut refs: Vec<_> = caches.iter_mut().collect();
        let logits = model.step_batch_logits(&next, &mut refs, opts)?;
        next = logits.iter().map(|l| argmax(l)).collect();
    }
    Ok(RunTimes {
        prefill_s,
        decode_s: t.elapsed().as_secs_f64(),
    })
}

pub(super) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub(super) fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The 1-minute load average: other processes skew these figures.
pub(super) fn loadavg() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// Peak resident memory (VmHWM) in MB, from /proc/self/status.
fn peak_rss_mb() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024)
}

/// The packed products' activations as reported: the `HONE_DECODE_ACTIVATIONS`
/// choice, or the per-model default spelled out.
fn decode_activations() -> String {
    use hone_model::decode::Activations;
    match Activations::configured() {
        Some(a) => a.name().to_string(),
        None => match Activations::fastest_on_this_cpu() {
            Activations::Q8 => "q8 (f32 for models with Q4_1 layers)".to_string(),
            Activations::F32 => "f32".to_string(),
        },
    }
}
