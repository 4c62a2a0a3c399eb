//! Running one model over the cases (and the optional loss measures), and
//! summarising the results.

use std::time::Instant;

use hone_data::{PreferenceExample, SftExample};
use hone_model::score::TokenScore;
use serde::Serialize;

use crate::approach::{Approach, Request};
use crate::case::EvalCase;
use crate::check::check_output;
use crate::error::{EvalError, Result};
use crate::model::{Conversation, EvalModel, Generated};
use crate::tool_check::{ToolCallOutcome, ToolCallSummary};

/// The result of one case for one model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CaseResult {
    /// The case's line in the cases file.
    pub line: usize,
    pub output: String,
    pub output_tokens: usize,
    /// Tokens of the rendered prompt (0 when it did not encode).
    pub prompt_tokens: usize,
    /// Wall time of the batch the case was decoded in (with `--batch 1`,
    /// the case's own time).
    pub latency_seconds: f64,
    pub passed: bool,
    pub json_valid: Option<bool>,
    pub schema_valid: Option<bool>,
    /// For cases with `expected_tool_calls` (see [`crate::tool_check`]).
    pub tool_calls: Option<ToolCallOutcome>,
    pub failed_checks: Vec<String>,
    /// Generation failed for this case (e.g. the prompt exceeds the
    /// context); the case counts as failed, the run goes on.
    pub error: Option<String>,
}

/// Pass rate and output statistics of one run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub total: usize,
    pub passed: usize,
    pub pass_rate: f64,
    /// Cases with `expected_json`, and how many of them gave a JSON object.
    pub json_cases: usize,
    pub json_valid: usize,
    /// `None` when no case has `expected_json`.
    pub json_valid_rate: Option<f64>,
    /// Cases with `expected_schema`, and how many answers parsed and validated.
    pub schema_cases: usize,
    pub schema_valid: usize,
    /// `None` when no case has `expected_schema`.
    pub schema_valid_rate: Option<f64>,
    /// Function-calling rates; `None` when no case has `expected_tool_calls`.
    pub tool_calls: Option<ToolCallSummary>,
    pub mean_output_chars: f64,
    pub mean_output_tokens: f64,
    pub mean_prompt_tokens: f64,
    /// Mean of the cases' `latency_seconds`.
    pub mean_latency_seconds: f64,
}

impl Summary {
    pub fn of(results: &[CaseResult]) -> Self {
        let total = results.len();
        let passed = results.iter().filter(|r| r.passed).count();
        let json_cases = results.iter().filter(|r| r.json_valid.is_some()).count();
        let json_valid = results
            .iter()
            .filter(|r| r.json_valid == Some(true))
            .count();
        let schema_cases = results.iter().filter(|r| r.schema_valid.is_some()).count();
        let schema_valid = results
            .iter()
            .filter(|r| r.schema_valid == Some(true))
            .count();
        let mean_f = |f: &dyn Fn(&CaseResult) -> f64| {
            if total == 0 {
                0.0
            } else {
                results.iter().map(f).sum::<f64>() / total as f64
            }
        };
        let mean = |f: &dyn Fn(&CaseResult) -> usize| mean_f(&|r| f(r) as f64);
        Summary {
            total,
            passed,
            pass_rate: ratio(passed, total),
            json_cases,
            json_valid,
            json_valid_rate: (json_cases > 0).then(|| ratio(json_valid, json_cases)),
            schema_cases,
            schema_valid,
            schema_valid_rate: (schema_cases > 0).then(|| ratio(schema_valid, schema_cases)),
            tool_calls: ToolCallSummary::of(results.iter().map(|r| r.tool_calls.as_ref())),
            mean_output_chars: mean(&|r| r.output.chars().count()),
            mean_output_tokens: mean(&|r| r.output_tokens),
            mean_prompt_tokens: mean(&|r| r.prompt_tokens),
            mean_latency_seconds: mean_f(&|r| r.latency_seconds),
        }
    }
}

/// Validation loss over the assistant tokens of a held-out chat file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LossMetrics {
    pub examples: usize,
    /// Scored (assistant) tokens.
    pub tokens: usize,
    /// Mean negative log-likelihood per token (nats).
    pub loss: f64,
    /// `exp(loss)`.
    pub perplexity: f64,
    /// Share of scored tokens that were the model's argmax prediction.
    pub token_accuracy: f64,
}

/// DPO pair accuracy over a preference file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PairMetrics {
    pub pairs: usize,
    /// Share of pairs where the preferred answer has the higher summed log-probability.
    pub accuracy: f64,
    /// Mean of `logp(preferred) - logp(non_preferred)` (nats).
    pub mean_margin: f64,
}

/// Everything measured for one model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelRun {
    /// Short name in tables: "fine-tuned", "base", or a model id.
    pub label: String,
    /// The base model's id.
    pub model: String,
    /// The adapter directory, when it was applied.
    pub adapter: Option<String>,
    pub results: Vec<CaseResult>,
    pub summary: Summary,
    pub chat_loss: Option<LossMetrics>,
    pub pair_accuracy: Option<PairMetrics>,
    /// Wall time of the case generations.
    pub generation_seconds: f64,
}

impl ModelRun {
    /// The failed cases with their results.
    pub fn failures<'a>(
        &'a self,
        cases: &'a [EvalCase],
    ) -> impl Iterator<Item = (&'a EvalCase, &'a CaseResult)> {
        cases.iter().zip(&self.results).filter(|(_, r)| !r.passed)
    }
}

/// Where a run is, for progress bars.
#[derive(Debug, Clone, Copy)]
pub struct Progress<'a> {
    /// The run's label.
    pub model: &'a str,
    /// "cases", "chat loss" or "pairs".
    pub task: &'static str,
    pub done: usize,
    pub total: usize,
}

/// How case outputs are decoded: greedy, at most `max_tokens` each, `batch`
/// cases decoded together (each with its own KV cache).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoding {
    pub max_tokens: usize,
    pub batch: usize,
}

/// Each case's request as given: its messages and tools, no grammar.
pub fn plain_requests(cases: &[EvalCase]) -> Vec<Request> {
    cases
        .iter()
        .map(|c| Approach::AsGiven.request(c, None))
        .collect()
}

/// Checks, before anything is generated, that every request leaves room
/// for `max_tokens` in the model's context: an approach that lengthens the
/// prompt (a system prompt, few-shot examples, retrieved chunks) must not silently cut what is
/// measured. The error names the cases and what to change.
pub fn check_fit(
    model: &dyn EvalModel,
    label: &str,
    cases: &[EvalCase],
    requests: &[Request],
    max_tokens: usize,
) -> Result<()> {
    let ctx = model.context_length();
    let mut over = Vec::new();
    for (case, req) in cases.iter().zip(requests) {
        let n = model.prompt_tokens(&req.conversation())?;
        if n + max_tokens > ctx {
            over.push(format!("line {} ({n} tokens)", case.line));
        }
    }
    if over.is_empty() {
        return Ok(());
    }
    Err(EvalError::Spec(format!(
        "{label}: {} case prompt(s) with --max-tokens {max_tokens} do not fit the model's \
         {ctx}-token context: {}; use fewer examples or chunks, a shorter prompt or a smaller \
         --max-tokens",
        over.len(),
        over.join(", ")
    )))
}

/// Generates greedily for each case from its request, `decoding.batch`
/// cases at a time, and checks the outputs. Batching changes speed only,
/// not outputs.
pub fn run_cases(
    model: &dyn EvalModel,
    label: &str,
    cases: &[EvalCase],
    requests: &[Request],
    decoding: Decoding,
    on_progress: &mut dyn FnMut(Progress),
) -> (Vec<CaseResult>, f64) {
    let started = Instant::now();
    let mut results = Vec::with_capacity(cases.len());
    let batch = decoding.batch.max(1);
    for (chunk, reqs) in cases.chunks(batch).zip(requests.chunks(batch)) {
        on_progress(Progress {
            model: label,
            task: "cases",
            done: results.len(),
            total: cases.len(),
        });
        let convs: Vec<Conversation> = reqs.iter().map(Request::conversation).collect();
        let batch_started = Instant::now();
        let outs = model.generate_many(&convs, decoding.max_tokens);
        let secs = batch_started.elapsed().as_secs_f64();
        results.extend(
            chunk
                .iter()
                .zip(outs)
                .map(|(case, out)| case_result(case, out, secs)),
        );
    }
    on_progress(Progress {
        model: label,
        task: "cases",
        done: cases.len(),
        total: cases.len(),
    });
    (results, started.elapsed().as_secs_f64())
}

fn case_result(case: &EvalCase, out: Result<Generated>, latency_seconds: f64) -> CaseResult {
    match out {
        Ok(g) => {
            let o = check_output(case, &g.text);
            CaseResult {
                line: case.line,
                output: g.text,
                output_tokens: g.tokens,
                prompt_tokens: g.prompt_tokens,
                latency_seconds,
                passed: o.passed,
                json_valid: o.json_valid,
                schema_valid: o.schema_valid,
                tool_calls: o.tool_calls,
                failed_checks: o.failed_checks,
                error: None,
            }
        }
        Err(e) => CaseResult {
            line: case.line,
            output: String::new(),
            output_tokens: 0,
            prompt_tokens: 0,
            latency_seconds,
            passed: false,
            json_valid: case.expected_json.as_ref().map(|_| false),
            schema_valid: case.expected_schema.as_ref().map(|_| false),
            tool_calls: None,
            failed_checks: vec![format!("generation failed: {e}")],
            error: Some(e.to_string()),
        },
    }
}

/// Validation loss and perplexity over the assistant tokens of `examples`.
pub fn chat_loss(
    model: &dyn EvalModel,
    label: &str,
    examples: &[SftExample],
    on_progress: &mut dyn FnMut(Progress),
) -> Result<LossMetrics> {
    let mut total = TokenScore::default();
    for (i, ex) in examples.iter().enumerate() {
        on_progress(Progress {
            model: label,
            task: "chat loss",
            done: i,
            total: examples.len(),
        });
        total = total.merge(model.score_chat(&ex.messages, ex.tools.as_ref())?);
    }
    let loss = total.mean_nll();
    Ok(LossMetrics {
        examples: examples.len(),
        tokens: total.tokens,
        loss,
        perplexity: loss.exp(),
        token_accuracy: ratio(total.correct, total.tokens),
    })
}

/// DPO pair accuracy: how often the preferred answer gets the higher
/// summed log-probability (ties count as misses).
pub fn pair_accuracy(
    model: &dyn EvalModel,
    label: &str,
    pairs: &[PreferenceExample],
    on_progress: &mut dyn FnMut(Progress),
) -> Result<PairMetrics> {
    let mut wins = 0;
    let mut margin = 0.0;
    for (i, p) in pairs.iter().enumerate() {
        on_progress(Progress {
            model: label,
            task: "pairs",
            done: i,
            total: pairs.len(),
        });
        let good = model.score_answer(&p.input, &p.preferred)?.logprob_sum;
        let bad = model.score_answer(&p.input, &p.non_preferred)?.logprob_sum;
        if good > bad {
            wins += 1;
        }
        margin += good - bad;
    }
    Ok(PairMetrics {
        pairs: pairs.len(),
        accuracy: ratio(wins, pairs.len()),
        mean_margin: if pairs.is_empty() {
            0.0
        } else {
            margin / pairs.len() as f64
        },
    })
}

/// `0.8` as `80.0%`.
pub fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

pub(crate) fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}
