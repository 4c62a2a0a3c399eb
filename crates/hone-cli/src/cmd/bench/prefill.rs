//! `hone bench prefill`: prompt-processing speed at several prompt lengths
//! (512, 2048 and 8192 tokens by default, as `llama-bench -p 512,2048,8192
//! -n 0` measures), one JSON line on stdout.
//!
//! Each length is one forward pass over a prompt of exactly that many
//! tokens on an empty cache, through `StepModel::step` (the step generation
//! uses), timed to its logits. The prompt is the benchmark sentence's tokens
//! repeated: speed does not depend on which tokens they are. A length the
//! model's context cannot hold is reported as skipped, not truncated.
//! Lengths alternate within each round, so that all see the same machine
//! load; the median of `--runs` rounds is reported, after one warm-up round.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use hone_model::generate::StepModel;
use hone_model::registry::DEFAULT_MODEL_ID;
use hone_model::WeightPath;
use hone_text::{ChatMessage, Role};

use super::{loadavg, median, round2, PROMPT};
use crate::cmd::chat::{load_engine, parse_weights};

#[derive(clap::Args)]
pub struct PrefillArgs {
    /// Model id or path to a GGUF file or HF directory.
    #[arg(long, env = "HONE_MODEL", default_value = DEFAULT_MODEL_ID)]
    pub model: String,
    /// Weight path to measure: packed (default; hone's kernels) or f32.
    #[arg(long, env = "HONE_WEIGHTS", default_value = "packed", value_parser = parse_weights)]
    pub weights: WeightPath,
    /// Prompt lengths to measure, in tokens (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [512usize, 2048, 8192])]
    pub prompt_tokens: Vec<usize>,
    /// Measured rounds (after one warm-up round); the median is reported.
    #[arg(long, env = "HONE_BENCH_RUNS", default_value_t = 3)]
    pub runs: usize,
}

pub fn run(args: PrefillArgs) -> anyhow::Result<ExitCode> {
    if args.runs == 0 || args.prompt_tokens.contains(&0) {
        bail!("--runs and every --prompt-tokens must be at least 1");
    }
    let engine = load_engine(&args.model, args.weights)?;
    let model = &engine.model;
    let ctx = model.context_length();
    let unit = engine.encode_prompt(&[ChatMessage::new(Role::User, PROMPT)], None)?;
    let (fits, skipped): (Vec<usize>, Vec<usize>) =
        args.prompt_tokens.iter().partition(|&&n| n <= ctx);
    let mut secs: Vec<Vec<f64>> = vec![Vec::new(); fits.len()];
    for round in 0..=args.runs {
        for (i, &n) in fits.iter().enumerate() {
            let prompt: Vec<u32> = unit.iter().copied().cycle().take(n).collect();
            let mut cache = model.new_cache();
            let t = Instant::now();
            model
                .step(&prompt, 0, &mut cache)
                .with_context(|| format!("prefill of {n} tokens"))?;
            if round > 0 {
                secs[i].push(t.elapsed().as_secs_f64());
            }
        }
    }
    let results: Vec<serde_json::Value> = fits
        .iter()
        .zip(secs.iter_mut())
        .map(|(&n, s)| {
            let m = median(s);
            serde_json::json!({
                "prompt_tokens": n,
                "prefill_s": round2(m),
                "prefill_tokens_per_s": round2(n as f64 / m),
            })
        })
        .collect();
    let out = serde_json::json!({
        "bench": "prefill",
        "model": engine.id,
        "weights": args.weights.as_str(),
        "context_length": ctx,
        "results": results,
        "skipped_over_context": skipped,
        "threads": hone_model::compute_threads(),
        "loadavg_1m": loadavg(),
        "runs": args.runs,
    });
    println!("{out}");
    Ok(ExitCode::SUCCESS)
}
