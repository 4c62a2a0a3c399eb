//! "Should I fine-tune?": every approach's cost, the fine-tune's training
//! cost and break-even against each baseline ([`crate::cost`]), and a short
//! plain-language verdict, e.g. "few-shot:5 reaches 80% of the fine-tune's
//! pass rate at 6.0x the prompt tokens; at 500 requests/day the fine-tune
//! pays for itself in 3 days".

use serde::Serialize;

use crate::cost::{BreakEven, Prices, RunCost, TrainingCost};
use crate::run::{pct, ModelRun};

/// The cost and decision section of a report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Economics {
    pub prices: Prices,
    /// One per run, in the order of the report's runs.
    pub costs: Vec<RunCost>,
    /// The fine-tune's one-time cost; `None` without an adapter, or when it
    /// is unknown.
    pub training: Option<TrainingCost>,
    /// The fine-tune against each other run that does not use the adapter
    /// itself (empty without an adapter or without a training cost).
    pub break_even: Vec<BreakEven>,
    /// One sentence per baseline (empty without an adapter).
    pub verdict: Vec<String>,
}

impl Economics {
    /// Costs of `runs`; when `runs[0]` is a fine-tune (`fine_tuned`), its
    /// break-even and the verdict against every other run.
    pub fn of(
        runs: &[ModelRun],
        fine_tuned: bool,
        training: Option<TrainingCost>,
        prices: Prices,
    ) -> Self {
        let costs: Vec<RunCost> = runs.iter().map(|r| RunCost::of(r, &prices)).collect();
        let mut break_even = Vec::new();
        let mut verdict = Vec::new();
        if let (true, Some(ft_run), Some(ft_cost)) = (fine_tuned, runs.first(), costs.first()) {
            for (run, cost) in runs.iter().zip(&costs).skip(1) {
                if run.adapter.is_some() {
                    // The same fine-tune with more in its prompt
                    // (fine-tuned+rag): nothing to repay, only to compare.
                    verdict.push(same_fine_tune(ft_run, run));
                    continue;
                }
                let be = training
                    .as_ref()
                    .map(|t| BreakEven::of(ft_cost, cost, t, &prices));
                verdict.push(sentence(ft_run, run, be.as_ref(), &prices));
                break_even.extend(be);
            }
            // No winner to name: one sentence instead of a comparison each.
            if let Some(none) = nothing_passes(runs) {
                verdict = vec![none];
            }
        }
        Economics {
            prices,
            costs,
            training,
            break_even,
            verdict,
        }
    }
}

/// The verdict on `baseline` against the fine-tune: quality and prompt
/// size, then when the fine-tune pays for itself.
pub fn sentence(
    fine_tuned: &ModelRun,
    baseline: &ModelRun,
    break_even: Option<&BreakEven>,
    prices: &Prices,
) -> String {
    let (quality, tokens) = quality_and_tokens(fine_tuned, baseline);
    if fine_tuned.summary.passed == 0 && baseline.summary.passed == 0 {
        return format!("{quality}{tokens}, so neither is worth paying for on these cases");
    }
    let per_day = prices.requests_per_day;
    let payback = match break_even {
        None => "the training cost is unknown (no summary.json in the adapter: give \
                 --train-file or --training-cost), so there is no break-even"
            .to_string(),
        Some(BreakEven {
            requests: None,
            basis,
            ..
        }) => format!(
            "the fine-tune saves nothing per request against it {}, so it never pays for its \
             training",
            basis.words()
        ),
        Some(BreakEven {
            requests: Some(r),
            days: Some(d),
            basis,
            ..
        }) if *d <= 1.0 => format!(
            "at {per_day} requests/day the fine-tune pays for itself {} within the first day \
             ({:.0} requests)",
            basis.words(),
            round_up(*r)
        ),
        Some(BreakEven { days, basis, .. }) => format!(
            "at {per_day} requests/day the fine-tune pays for itself {} in {:.0} days",
            basis.words(),
            round_up(days.unwrap_or(f64::INFINITY))
        ),
    };
    format!("{quality}{tokens}; {payback}")
}

/// The verdict when no run passes a single case: no approach wins, and the
/// costs and break-evens compare answers that all fail.
fn nothing_passes(runs: &[ModelRun]) -> Option<String> {
    if runs.len() < 2 || runs.iter().any(|r| r.summary.passed > 0) {
        return None;
    }
    let total = runs[0].summary.total;
    Some(format!(
        "no approach passes; none of the {} approaches passes any of the {total} cases, so \
         there is no winner and the costs and break-evens above compare failing answers \
         only: check the cases, the data or the model first",
        runs.len()
    ))
}

/// The verdict on a run of the same fine-tune with more in its prompt
/// (`fine-tuned+rag`): quality and prompt size only.
fn same_fine_tune(fine_tuned: &ModelRun, run: &ModelRun) -> String {
    let (quality, tokens) = quality_and_tokens(fine_tuned, run);
    format!("{quality}{tokens} (the same fine-tune, so no training cost to repay)")
}

/// "{name} reaches N% of the fine-tune's pass rate (..)" and " at Nx the
/// prompt tokens".
fn quality_and_tokens(fine_tuned: &ModelRun, baseline: &ModelRun) -> (String, String) {
    let (f, b) = (&fine_tuned.summary, &baseline.summary);
    let name = &baseline.label;
    let quality = if f.pass_rate > 0.0 {
        format!(
            "{name} reaches {:.0}% of the fine-tune's pass rate ({} vs {})",
            100.0 * b.pass_rate / f.pass_rate,
            pct(b.pass_rate),
            pct(f.pass_rate)
        )
    } else if b.pass_rate > 0.0 {
        format!(
            "{name} passes {} of the cases, the fine-tune none",
            pct(b.pass_rate)
        )
    } else {
        format!("neither {name} nor the fine-tune passes any case")
    };
    let tokens = if f.mean_prompt_tokens > 0.0 {
        format!(
            " at {:.1}x the prompt tokens",
            b.mean_prompt_tokens / f.mean_prompt_tokens
        )
    } else {
        String::new()
    };
    (quality, tokens)
}

/// Rounds up, ignoring float noise (1500.0000000002 requests are 1500).
fn round_up(x: f64) -> f64 {
    (x - 1e-9).ceil()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::{CostSource, TrainingCost};

    /// A run of 10 cases, `passed` of them passing, with these token counts.
    fn run(label: &str, passed: usize, prompt: usize, completion: usize) -> ModelRun {
        crate::cost::tests::fake_run(label, 10, passed, prompt, completion, 1.0)
    }

    fn training(usd: f64) -> TrainingCost {
        TrainingCost {
            usd,
            seconds: None,
            source: CostSource::Given,
            detail: String::new(),
        }
    }

    #[test]
    fn the_issue_example_by_hand() {
        // Fine-tune: 100 prompt + 40 completion tokens: (15 + 24)/1e6 = $39e-6.
        // few-shot:5: 600 + 40: (90 + 24)/1e6 = $114e-6; saving $75e-6 a request.
        // $0.1125 of training / 75e-6 = 1,500 requests = 3 days at 500/day.
        let runs = [
            run("fine-tuned", 10, 100, 40),
            run("few-shot:5", 8, 600, 40),
        ];
        let e = Economics::of(&runs, true, Some(training(0.1125)), Prices::default());
        assert_eq!(e.costs.len(), 2);
        assert!((e.break_even[0].requests.unwrap() - 1500.0).abs() < 1e-6);
        assert_eq!(
            e.verdict,
            vec![
                "few-shot:5 reaches 80% of the fine-tune's pass rate (80.0% vs 100.0%) at 6.0x \
                 the prompt tokens; at 500 requests/day the fine-tune pays for itself at token prices in 3 \
                 days"
            ]
        );
    }

    #[test]
    fn verdict_wording_for_each_outcome() {
        let ft = run("fine-tuned", 5, 100, 40);
        let same = run("base", 5, 100, 40);
        let e = Economics::of(
            &[ft.clone(), same],
            true,
            Some(training(1.0)),
            Prices::default(),
        );
        assert_eq!(
            e.verdict[0],
            "base reaches 100% of the fine-tune's pass rate (50.0% vs 50.0%) at 1.0x the \
             prompt tokens; the fine-tune saves nothing per request against it at token \
             prices, so it never pays for its training"
        );
        let prompt = run("prompt:sys.txt", 0, 200, 40);
        let e = Economics::of(
            &[ft.clone(), prompt.clone()],
            true,
            Some(training(0.0001)),
            Prices::default(),
        );
        // Saving 100 × 0.15 / 1e6 = $15e-6 a request: 6.67 → 7 requests.
        assert_eq!(
            e.verdict[0],
            "prompt:sys.txt reaches 0% of the fine-tune's pass rate (0.0% vs 50.0%) at 2.0x \
             the prompt tokens; at 500 requests/day the fine-tune pays for itself at token \
             prices within the first day (7 requests)"
        );
        let e = Economics::of(&[ft, prompt], true, None, Prices::default());
        assert!(e.verdict[0]
            .ends_with("give --train-file or --training-cost), so there is no break-even"));
        assert!(e.break_even.is_empty());
        let none = run("fine-tuned", 0, 100, 40);
        let s = sentence(&none, &run("base", 3, 100, 40), None, &Prices::default());
        assert!(
            s.starts_with("base passes 30.0% of the cases, the fine-tune none"),
            "{s}"
        );
        let s = sentence(&none, &run("base", 0, 100, 40), None, &Prices::default());
        assert!(
            s.starts_with("neither base nor the fine-tune passes any case"),
            "{s}"
        );
        assert_eq!(
            s,
            "neither base nor the fine-tune passes any case at 1.0x the prompt tokens, so \
             neither is worth paying for on these cases"
        );
    }

    #[test]
    fn no_winner_is_named_when_nothing_passes() {
        let runs = [
            run("fine-tuned", 0, 100, 20),
            run("base", 0, 100, 40),
            run("few-shot:4", 0, 500, 40),
        ];
        let e = Economics::of(&runs, true, Some(training(0.01)), Prices::default());
        assert_eq!(
            e.verdict,
            vec![
                "no approach passes; none of the 3 approaches passes any of the 10 cases, so \
                 there is no winner and the costs and break-evens above compare failing \
                 answers only: check the cases, the data or the model first"
            ]
        );
        assert_eq!(e.break_even.len(), 2, "the figures are still computed");
        // One passing case anywhere brings back the comparison per baseline.
        let mut some = runs.clone();
        some[2] = run("few-shot:4", 1, 500, 40);
        let e = Economics::of(&some, true, Some(training(0.01)), Prices::default());
        assert_eq!(e.verdict.len(), 2);
        assert!(
            e.verdict[1].starts_with("few-shot:4 passes 10.0% of the cases, the fine-tune none")
        );
    }

    #[test]
    fn fine_tuned_plus_rag_is_compared_but_repays_nothing() {
        let ft = run("fine-tuned", 4, 100, 40);
        let mut both = run("fine-tuned+rag:docs:2", 8, 300, 40);
        both.adapter = Some("adapter".into());
        let e = Economics::of(&[ft, both], true, Some(training(1.0)), Prices::default());
        assert!(e.break_even.is_empty());
        assert_eq!(
            e.verdict[0],
            "fine-tuned+rag:docs:2 reaches 200% of the fine-tune's pass rate (80.0% vs 40.0%) \
             at 3.0x the prompt tokens (the same fine-tune, so no training cost to repay)"
        );
    }

    #[test]
    fn no_verdict_without_a_fine_tune() {
        let e = Economics::of(
            &[run("m", 5, 100, 40), run("few-shot:2", 6, 300, 40)],
            false,
            None,
            Prices::default(),
        );
        assert_eq!(e.costs.len(), 2);
        assert!(e.verdict.is_empty() && e.break_even.is_empty());
    }
}
