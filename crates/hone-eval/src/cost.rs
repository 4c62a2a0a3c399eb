//! What each approach costs, and when the fine-tune pays for itself: the
//! seeds' ROI arithmetic done on the measured token counts.
//!
//! - Per request, token-priced: `prompt × input price + completion × output
//!   price` (per 1M tokens), as a hosted API bills. Few-shot and long system
//!   prompts cost here; a fine-tune that needs no instructions saves here.
//! - Per request, local compute: the measured seconds per request at a price
//!   per hour, the rule `hone data estimate` uses for training.
//! - The fine-tune's one-time training cost ([`TrainingCost`]), and the
//!   break-even volume against each baseline: training cost ÷ the saving per
//!   request, both in the same units ([`Basis`]): a training cost measured
//!   or estimated as local compute time is repaid by local compute saved per
//!   request; a training cost given in dollars (`--training-cost`, a hosted
//!   job's bill) by token-priced savings, as a hosted API bills.

use std::path::Path;

use serde::Serialize;

use crate::error::{EvalError, Result};
use crate::run::ModelRun;

/// gpt-4o-mini's list price per 1M input tokens (US dollars): the hosted
/// model seed 001 compares against.
pub const DEFAULT_PRICE_INPUT: f64 = 0.15;
/// gpt-4o-mini's list price per 1M output tokens.
pub const DEFAULT_PRICE_OUTPUT: f64 = 0.60;
/// Local compute per hour: the same default as `hone data estimate`'s
/// `--price-per-hour`.
pub const DEFAULT_PRICE_PER_HOUR: f64 = 0.10;
/// The traffic the verdict's "pays for itself in N days" assumes.
pub const DEFAULT_REQUESTS_PER_DAY: f64 = 500.0;

/// The prices and traffic the costs are computed at.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Prices {
    /// US dollars per 1M prompt tokens.
    pub input_per_million: f64,
    /// US dollars per 1M completion tokens.
    pub output_per_million: f64,
    /// US dollars per hour of local compute.
    pub local_per_hour: f64,
    pub requests_per_day: f64,
}

impl Default for Prices {
    fn default() -> Self {
        Prices {
            input_per_million: DEFAULT_PRICE_INPUT,
            output_per_million: DEFAULT_PRICE_OUTPUT,
            local_per_hour: DEFAULT_PRICE_PER_HOUR,
            requests_per_day: DEFAULT_REQUESTS_PER_DAY,
        }
    }
}

impl Prices {
    /// Every price a finite number >= 0, and some traffic.
    pub fn check(&self) -> std::result::Result<(), String> {
        let ok = |x: f64| x.is_finite() && x >= 0.0;
        if !(ok(self.input_per_million) && ok(self.output_per_million) && ok(self.local_per_hour)) {
            return Err("prices must be finite numbers >= 0".into());
        }
        if !(self.requests_per_day.is_finite() && self.requests_per_day > 0.0) {
            return Err("requests per day must be a number > 0".into());
        }
        Ok(())
    }
}

/// One approach's cost per request, from its measured tokens and time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunCost {
    pub label: String,
    pub mean_prompt_tokens: f64,
    pub mean_completion_tokens: f64,
    /// Token-priced cost of 1,000 requests (US dollars).
    pub usd_per_1k_requests: f64,
    /// Generation wall time divided by the cases (with `--batch` > 1, the
    /// time a request takes in a batch, shared).
    pub seconds_per_request: f64,
    /// Local compute cost of 1,000 requests at `seconds_per_request`.
    pub local_usd_per_1k_requests: f64,
}

impl RunCost {
    pub fn of(run: &ModelRun, prices: &Prices) -> Self {
        let s = &run.summary;
        let seconds_per_request = if s.total == 0 {
            0.0
        } else {
            run.generation_seconds / s.total as f64
        };
        RunCost {
            label: run.label.clone(),
            mean_prompt_tokens: s.mean_prompt_tokens,
            mean_completion_tokens: s.mean_output_tokens,
            usd_per_1k_requests: 1000.0
                * token_cost(s.mean_prompt_tokens, s.mean_output_tokens, prices),
            seconds_per_request,
            local_usd_per_1k_requests: 1000.0 * seconds_per_request / 3600.0
                * prices.local_per_hour,
        }
    }
}

/// US dollars for one request of `prompt` and `completion` tokens.
pub fn token_cost(prompt: f64, completion: f64, prices: &Prices) -> f64 {
    (prompt * prices.input_per_million + completion * prices.output_per_million) / 1e6
}

/// Where the training cost comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CostSource {
    /// The wall time in the adapter's `summary.json`.
    Recorded,
    /// hone-data's estimate from the training file's tokens.
    Estimated,
    /// Given by the user (`--training-cost`).
    Given,
}

/// The fine-tune's one-time training cost.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainingCost {
    pub usd: f64,
    /// Training wall time, when known.
    pub seconds: Option<f64>,
    pub source: CostSource,
    /// How it was worked out, in words.
    pub detail: String,
}

impl TrainingCost {
    /// From the adapter's `summary.json`: the whole run's training time at
    /// the local price. `None` when the adapter has no readable summary.
    ///
    /// `elapsed_s` there counts only the last session (a resumed run
    /// restarts its clock), while `processed_tokens` counts the whole run and
    /// `tokens_per_s` is the last session's rate; their quotient is the whole
    /// run's time (exactly `elapsed_s` when the run was never resumed; the
    /// earlier sessions taken at the last one's rate when it was).
    pub fn recorded(adapter: &Path, prices: &Prices) -> Option<Self> {
        let text = std::fs::read_to_string(adapter.join(hone_train::summary::SUMMARY_JSON)).ok()?;
        let s: hone_train::TrainSummary = serde_json::from_str(&text).ok()?;
        let session = s.elapsed_s.max(0.0);
        let whole = if s.tokens_per_s > 0.0 && s.processed_tokens > 0 {
            s.processed_tokens as f64 / s.tokens_per_s
        } else {
            session
        };
        let resumed = whole > session * 1.001 + 1.0;
        let how = if resumed {
            format!(
                "{} tokens at the last session's {:.0} tokens/s; the run was resumed, its last \
                 session took {session:.0} s",
                s.processed_tokens, s.tokens_per_s
            )
        } else {
            "summary.json".to_string()
        };
        Some(TrainingCost {
            usd: whole / 3600.0 * prices.local_per_hour,
            seconds: Some(whole),
            source: CostSource::Recorded,
            detail: format!(
                "recorded: {whole:.0} s of training ({how}) at ${}/hour",
                prices.local_per_hour
            ),
        })
    }

    /// From hone-data's estimate (the one `hone data estimate` prints).
    pub fn estimated(e: &hone_data::estimate::Estimate, train_file: &Path) -> Self {
        TrainingCost {
            usd: e.local_usd,
            seconds: Some(e.wall_seconds),
            source: CostSource::Estimated,
            detail: format!(
                "estimated: {} tokens over {} epoch(s) from {} at {} = {:.0} s at ${}/hour",
                e.billed_tokens_total,
                e.n_epochs,
                train_file.display(),
                e.throughput_source,
                e.wall_seconds,
                e.price_per_hour
            ),
        }
    }

    /// `--training-cost USD`.
    pub fn given(usd: f64) -> Self {
        TrainingCost {
            usd,
            seconds: None,
            source: CostSource::Given,
            detail: format!("given: ${usd}"),
        }
    }
}

/// hone-data's training estimate for `train_file` on `engine`'s tokenizer
/// and size: "auto" hyperparameters, the `hone bench train` result in
/// `$HONE_HOME/bench/train.json` if there is one (else hone-data's default
/// throughput), and the local price per hour.
pub fn estimate_training(
    engine: &hone_model::ChatEngine,
    train_file: &Path,
    prices: &Prices,
) -> Result<TrainingCost> {
    use hone_data::estimate::{estimate, throughput_from_bench_json, EstimateInput};
    use hone_data::hparams::{resolve_auto, AutoInput, Overrides};
    let bad = |message: String| EvalError::Data {
        path: train_file.to_path_buf(),
        message,
    };
    let examples =
        hone_data::parse_sft_validation_file(train_file).map_err(|e| bad(e.to_string()))?;
    let (mut total, mut trained) = (0u64, 0u64);
    for ex in &examples {
        let enc = engine
            .tokenizer
            .encode_chat(&ex.messages, ex.tools.as_ref())
            .map_err(|e| bad(e.to_string()))?;
        total += enc.ids.len() as u64;
        trained += enc.trained_token_count() as u64;
    }
    let n = examples.len();
    let method = hone_data::Method::Sft;
    let hyperparameters = resolve_auto(
        &AutoInput {
            method,
            n_examples: n,
            mean_tokens_per_example: (n > 0).then(|| total as f64 / n as f64),
            model: Some(engine.model.cfg.size()),
        },
        &Overrides::default(),
    )
    .map_err(|e| bad(e.to_string()))?;
    let bench = hone_model::registry::hone_home()
        .join("bench")
        .join("train.json");
    let throughput = std::fs::read_to_string(&bench)
        .ok()
        .and_then(|t| throughput_from_bench_json(&t, &bench.display().to_string()))
        .unwrap_or_default();
    let e = estimate(&EstimateInput {
        method,
        n_examples: n,
        total_tokens: total,
        trained_tokens: trained,
        hyperparameters,
        throughput,
        price_per_hour: prices.local_per_hour,
        hosted_prices: Vec::new(),
    });
    Ok(TrainingCost::estimated(&e, train_file))
}

/// What the per-request saving of a break-even is priced in: the same
/// units as the training cost it repays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Basis {
    /// Token prices (`--price-input`/`--price-output`): the training cost was
    /// given in dollars (a hosted job), and requests go to a hosted model.
    Tokens,
    /// Local compute (`--price-per-hour` × measured seconds per request):
    /// the training cost is local compute time too (recorded or estimated),
    /// and requests are served here.
    Local,
}

impl Basis {
    /// The basis that matches a training cost's units.
    pub fn for_training(t: &TrainingCost) -> Self {
        match t.source {
            CostSource::Given => Basis::Tokens,
            CostSource::Recorded | CostSource::Estimated => Basis::Local,
        }
    }

    /// The per-1,000-requests cost of `run` on this basis.
    pub fn usd_per_1k(self, run: &RunCost) -> f64 {
        match self {
            Basis::Tokens => run.usd_per_1k_requests,
            Basis::Local => run.local_usd_per_1k_requests,
        }
    }

    /// How the verdict names it.
    pub fn words(self) -> &'static str {
        match self {
            Basis::Tokens => "at token prices",
            Basis::Local => "in local compute time",
        }
    }
}

/// When the fine-tune's training cost is repaid against one baseline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BreakEven {
    pub baseline: String,
    /// What the saving is priced in (the training cost's units).
    pub basis: Basis,
    /// Baseline minus fine-tune per 1,000 requests (US dollars), on `basis`.
    pub saving_usd_per_1k_requests: f64,
    /// Requests after which the training cost is repaid; `None` when the
    /// fine-tune saves nothing per request (it never pays for itself).
    pub requests: Option<f64>,
    /// `requests` at the given requests per day.
    pub days: Option<f64>,
}

impl BreakEven {
    pub fn of(
        fine_tuned: &RunCost,
        baseline: &RunCost,
        training: &TrainingCost,
        prices: &Prices,
    ) -> Self {
        let basis = Basis::for_training(training);
        let saving_per_1k = basis.usd_per_1k(baseline) - basis.usd_per_1k(fine_tuned);
        let requests = (saving_per_1k > 0.0).then(|| training.usd / (saving_per_1k / 1000.0));
        BreakEven {
            baseline: baseline.label.clone(),
            basis,
            saving_usd_per_1k_requests: saving_per_1k,
            requests,
            days: requests.map(|r| r / prices.requests_per_day),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::run::{CaseResult, Summary};

    /// A run of `n` cases, the first `passed` passing, each with these token counts,
    /// taking `secs` in all (a fixture shared with `verdict`'s tests).
    pub(crate) fn fake_run(
        label: &str,
        n: usize,
        passed: usize,
        prompt: usize,
        completion: usize,
        secs: f64,
    ) -> ModelRun {
        let results: Vec<CaseResult> = (0..n)
            .map(|i| CaseResult {
                line: i + 1,
                output: String::new(),
                output_tokens: completion,
                prompt_tokens: prompt,
                latency_seconds: secs / n as f64,
                passed: i < passed,
                json_valid: None,
                schema_valid: None,
                tool_calls: None,
                failed_checks: vec![],
                error: None,
            })
            .collect();
        ModelRun {
            label: label.into(),
            model: "m".into(),
            adapter: None,
            summary: Summary::of(&results),
            results,
            chat_loss: None,
            pair_accuracy: None,
            generation_seconds: secs,
        }
    }

    fn run(label: &str, prompt: usize, completion: usize, n: usize, secs: f64) -> ModelRun {
        fake_run(label, n, n, prompt, completion, secs)
    }

    #[test]
    fn costs_and_break_even_by_hand() {
        let prices = Prices {
            input_per_million: 0.15,
            output_per_million: 0.60,
            local_per_hour: 0.36,
            requests_per_day: 500.0,
        };
        // Fine-tune: 100 prompt + 50 completion tokens; 4 cases in 2 s.
        let ft = RunCost::of(&run("fine-tuned", 100, 50, 4, 2.0), &prices);
        // (100 × 0.15 + 50 × 0.60) / 1e6 = 45e-6 $ a request → $0.045 per 1k.
        assert!((ft.usd_per_1k_requests - 0.045).abs() < 1e-12);
        assert!((ft.seconds_per_request - 0.5).abs() < 1e-12);
        // 1000 × 0.5 s = 500 s = 0.1389 h × $0.36 = $0.05.
        assert!((ft.local_usd_per_1k_requests - 0.05).abs() < 1e-12);
        // Few-shot: 700 prompt + 50 completion → (105 + 30) / 1e6 = $0.135 per 1k.
        let fs = RunCost::of(&run("few-shot:5", 700, 50, 4, 4.0), &prices);
        assert!((fs.usd_per_1k_requests - 0.135).abs() < 1e-12);
        // Saving $0.09 per 1k = 9e-5 a request; $0.45 of training → 5,000
        // requests → 10 days at 500 a day.
        let given = TrainingCost::given(0.45);
        let be = BreakEven::of(&ft, &fs, &given, &prices);
        assert_eq!(be.basis, Basis::Tokens, "a bill in dollars: token prices");
        assert!((be.saving_usd_per_1k_requests - 0.09).abs() < 1e-12);
        assert!((be.requests.unwrap() - 5000.0).abs() < 1e-6);
        assert!((be.days.unwrap() - 10.0).abs() < 1e-9);
        // A baseline that is cheaper per request: never repaid.
        let be = BreakEven::of(&fs, &ft, &given, &prices);
        assert_eq!((be.requests, be.days), (None, None));
        // Training measured as local compute is repaid in local compute:
        // few-shot takes 1 s a request, the fine-tune 0.5 s; 0.5 s saved a
        // request repays 900 s of training after 1,800 requests, whatever
        // the price per hour.
        let local = TrainingCost {
            usd: 900.0 / 3600.0 * prices.local_per_hour,
            seconds: Some(900.0),
            source: CostSource::Recorded,
            detail: String::new(),
        };
        let be = BreakEven::of(&ft, &fs, &local, &prices);
        assert_eq!(be.basis, Basis::Local);
        assert!((be.saving_usd_per_1k_requests - 0.05).abs() < 1e-12);
        assert!((be.requests.unwrap() - 1800.0).abs() < 1e-6);
    }

    #[test]
    fn recorded_training_cost_reads_the_summary_wall_time() {
        let dir = tempfile::tempdir().unwrap();
        let prices = Prices {
            local_per_hour: 0.36,
            ..Prices::default()
        };
        assert!(TrainingCost::recorded(dir.path(), &prices).is_none());
        std::fs::write(dir.path().join("summary.json"), "{broken").unwrap();
        assert!(TrainingCost::recorded(dir.path(), &prices).is_none());
    }

    /// A summary.json of a run that processed `tokens` in all, whose last
    /// session took `elapsed` s at `rate` tokens/s.
    fn summary(tokens: u64, elapsed: f64, rate: f64) -> String {
        let text = include_str!("../testdata/summary.json");
        let mut v: serde_json::Value = serde_json::from_str(text).unwrap();
        v["processed_tokens"] = tokens.into();
        v["elapsed_s"] = elapsed.into();
        v["tokens_per_s"] = rate.into();
        v.to_string()
    }

    #[test]
    fn recorded_training_cost_counts_the_whole_run_across_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let prices = Prices {
            local_per_hour: 0.36,
            ..Prices::default()
        };
        let path = dir.path().join("summary.json");
        // Never resumed: 3,600 tokens in 36 s at 100 tokens/s.
        std::fs::write(&path, summary(3600, 36.0, 100.0)).unwrap();
        let t = TrainingCost::recorded(dir.path(), &prices).unwrap();
        assert!((t.seconds.unwrap() - 36.0).abs() < 1e-9);
        assert!((t.usd - 0.0036).abs() < 1e-12);
        assert!(!t.detail.contains("resumed"), "{}", t.detail);
        // Resumed: the last session did 1,200 of the 3,600 tokens in 12 s.
        std::fs::write(&path, summary(3600, 12.0, 100.0)).unwrap();
        let t = TrainingCost::recorded(dir.path(), &prices).unwrap();
        assert!((t.seconds.unwrap() - 36.0).abs() < 1e-9, "{t:?}");
        assert!(t.detail.contains("resumed"), "{}", t.detail);
    }

    #[test]
    fn prices_are_checked() {
        assert!(Prices::default().check().is_ok());
        let bad = Prices {
            input_per_million: -1.0,
            ..Prices::default()
        };
        assert!(bad.check().is_err());
        let no_traffic = Prices {
            requests_per_day: 0.0,
            ..Prices::default()
        };
        assert!(no_traffic.check().is_err());
    }
}
