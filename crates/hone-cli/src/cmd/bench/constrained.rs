//! `hone bench infer --json-schema FILE`: the decode speed of the same
//! prompt with and without a JSON Schema grammar, through
//! `hone_model::generate::generate` (the path `hone chat` and the server
//! use), greedy. Runs alternate (plain, constrained, plain, …) so that both
//! see the same load on a shared machine; medians are reported.
//!
//! Decode time is measured from the end of the prompt's forward pass to
//! the end of generation, so it holds every decode step and every sample,
//! and, under the schema, every mask and matcher advance. The plain run
//! ignores stop tokens (exactly `--new-tokens`); the constrained one stops
//! when the grammar is complete, so speeds are compared per token.

use std::cell::Cell;
use std::ops::ControlFlow;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use hone_model::constraint::Grammar;
use hone_model::generate::{generate, Generation, GenerationParams, StepModel};
use hone_model::{ChatEngine, Llama};
use hone_text::{ChatMessage, Role};

use super::{loadavg, median, round2, InferArgs, PROMPT};
use crate::cmd::chat::load_engine;

pub fn run(args: &InferArgs, schema_path: &Path) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(schema_path)
        .with_context(|| format!("reading --json-schema {}", schema_path.display()))?;
    let schema: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("--json-schema {} is not JSON", schema_path.display()))?;
    let grammar = Grammar::json_schema(schema)?;
    let engine = load_engine(&args.model, args.weights)?;
    let prompt = engine.encode_prompt(&[ChatMessage::new(Role::User, PROMPT)], None)?;
    let plain = GenerationParams {
        max_tokens: args.new_tokens,
        ..GenerationParams::default()
    };
    let constrained = GenerationParams {
        grammar: Some(grammar),
        ..plain.clone()
    };
    let stop = engine.tokenizer.tokenizer.stop_token_ids().to_vec();
    let (mut free, mut held, mut held_tokens) = (Vec::new(), Vec::new(), Vec::new());
    let mut sample = String::new();
    // Run 0 of each is a warm-up (and builds the vocabulary trie once).
    for i in 0..=args.runs {
        let (g, s) = timed(&engine, &prompt, &plain, &[])?;
        let (cg, cs) = timed(&engine, &prompt, &constrained, &stop)?;
        if i == 0 {
            sample = cg.text.clone();
            continue;
        }
        free.push(s);
        held.push(cs);
        held_tokens.push(cg.completion_tokens as f64);
        anyhow::ensure!(
            g.completion_tokens == args.new_tokens,
            "plain run stopped early"
        );
    }
    let free_tps = median(&mut free);
    let held_tps = median(&mut held);
    let valid = serde_json::from_str::<serde_json::Value>(&sample).is_ok();
    let out = serde_json::json!({
        "bench": "infer_constrained",
        "model": engine.id,
        "weights": args.weights.as_str(),
        "schema": schema_path.display().to_string(),
        "prompt_tokens": prompt.len(),
        "new_tokens": args.new_tokens,
        "decode_tokens_per_s": round2(free_tps),
        "decode_tokens_per_s_constrained": round2(held_tps),
        "overhead_pct": round2((free_tps / held_tps - 1.0) * 100.0),
        "constrained_tokens": median(&mut held_tokens),
        "constrained_answer_is_json": valid,
        "constrained_answer": sample,
        "threads": hone_model::compute_threads(),
        "loadavg_1m": loadavg(),
        "runs": args.runs,
    });
    println!("{out}");
    Ok(ExitCode::SUCCESS)
}

/// One generation and its decode speed in tokens/s.
fn timed(
    engine: &ChatEngine,
    prompt: &[u32],
    params: &GenerationParams,
    stop: &[u32],
) -> anyhow::Result<(Generation, f64)> {
    let model = Timed {
        model: &engine.model,
        prefilled: Cell::new(None),
    };
    let g = generate(&model, prompt, params, stop, engine, &mut |_| {
        ControlFlow::Continue(())
    })?;
    let end = Instant::now();
    let start = model.prefilled.get().context("no forward pass ran")?;
    let steps = g.completion_tokens.saturating_sub(1).max(1);
    Ok((g, steps as f64 / (end - start).as_secs_f64()))
}

/// The model, noting when its first forward pass (the prompt) ended.
struct Timed<'a> {
    model: &'a Llama,
    prefilled: Cell<Option<Instant>>,
}

impl StepModel for Timed<'_> {
    type Cache = <Llama as StepModel>::Cache;

    fn new_cache(&self) -> Self::Cache {
        StepModel::new_cache(self.model)
    }

    fn step(
        &self,
        ids: &[u32],
        start_pos: usize,
        cache: &mut Self::Cache,
    ) -> hone_model::Result<Vec<f32>> {
        let logits = StepModel::step(self.model, ids, start_pos, cache)?;
        if self.prefilled.get().is_none() {
            self.prefilled.set(Some(Instant::now()));
        }
        Ok(logits)
    }

    fn context_length(&self) -> usize {
        StepModel::context_length(self.model)
    }
}
