//! The evaluation report: per-model runs, the comparison of the evaluated
//! model with its baseline, and its renderings (terminal table, failure
//! list, JSON). The HTML rendering, `EvalReport::write_html` included, lives in
//! [`crate::html`] (which uses this module, not the other way round).

use std::fmt::Write as _;

use serde::Serialize;

use crate::case::EvalCase;
pub use crate::run::pct;
use crate::run::ModelRun;
use crate::verdict::Economics;

/// What a case asked, as shown in reports (seed 001's `input`/`expected`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CaseInfo {
    pub line: usize,
    pub id: Option<String>,
    /// The last user message.
    pub input: String,
    pub expected: Vec<String>,
    pub ideal: Option<String>,
}

impl From<&EvalCase> for CaseInfo {
    fn from(c: &EvalCase) -> Self {
        CaseInfo {
            line: c.line,
            id: c.id.clone(),
            input: c.input().to_string(),
            expected: c.expected(),
            ideal: c.ideal.clone(),
        }
    }
}

/// The evaluated model against its baseline, case by case.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    pub model: String,
    pub baseline: String,
    /// `model.pass_rate - baseline.pass_rate`.
    pub pass_rate_delta: f64,
    /// Lines of the cases the baseline failed and the model passes.
    pub fail_to_pass: Vec<usize>,
    /// Lines of the cases the baseline passed and the model fails.
    pub pass_to_fail: Vec<usize>,
}

impl Comparison {
    /// Compares `model` with `baseline` (both run on the same cases).
    pub fn of(model: &ModelRun, baseline: &ModelRun) -> Self {
        let pairs = || model.results.iter().zip(&baseline.results);
        Comparison {
            model: model.label.clone(),
            baseline: baseline.label.clone(),
            pass_rate_delta: model.summary.pass_rate - baseline.summary.pass_rate,
            fail_to_pass: pairs()
                .filter(|(m, b)| m.passed && !b.passed)
                .map(|(m, _)| m.line)
                .collect(),
            pass_to_fail: pairs()
                .filter(|(m, b)| !m.passed && b.passed)
                .map(|(m, _)| m.line)
                .collect(),
        }
    }
}

/// How the outputs were generated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GenerationInfo {
    pub max_tokens: usize,
    /// Always greedy (temperature 0), so runs are reproducible.
    pub greedy: bool,
    /// Cases decoded together, each with its own KV cache (outputs do not
    /// depend on it).
    pub batch: usize,
    /// Inference weights, e.g. `packed`.
    pub weights: String,
    /// Cases with `expected_schema` were decoded constrained to it.
    #[serde(default)]
    pub json_schema_from_case: bool,
    /// Seed of the random few-shot picks.
    #[serde(default)]
    pub few_shot_seed: u64,
    /// How few-shot examples were picked: `similar` or `random`.
    #[serde(default)]
    pub few_shot_pick: String,
    /// The embedding model of the rag baselines and similar few-shot picks,
    /// when one was used.
    #[serde(default)]
    pub embedding_model: Option<String>,
}

/// The whole evaluation. `runs[0]` is the evaluated model; `runs[1..]`, when
/// present, its baselines in the order given (`runs[1]` is the one
/// `comparison` and `--require-improvement` use).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalReport {
    pub cases_file: String,
    pub cases: Vec<CaseInfo>,
    pub runs: Vec<ModelRun>,
    pub comparison: Option<Comparison>,
    pub generation: GenerationInfo,
    /// Things the user should know (e.g. an adapter trained on another base).
    pub warnings: Vec<String>,
    /// Costs, break-even and the verdict (set by [`EvalReport::with_economics`]).
    pub economics: Option<Economics>,
}

impl EvalReport {
    /// Builds the report, comparing `runs[0]` with `runs[1]` if present.
    pub fn new(
        cases_file: &str,
        cases: &[EvalCase],
        runs: Vec<ModelRun>,
        generation: GenerationInfo,
        warnings: Vec<String>,
    ) -> Self {
        let comparison = match runs.as_slice() {
            [m, b, ..] => Some(Comparison::of(m, b)),
            _ => None,
        };
        EvalReport {
            cases_file: cases_file.to_string(),
            cases: cases.iter().map(CaseInfo::from).collect(),
            runs,
            comparison,
            generation,
            warnings,
            economics: None,
        }
    }

    /// The report with its cost and verdict section.
    pub fn with_economics(mut self, economics: Economics) -> Self {
        self.economics = Some(economics);
        self
    }

    /// The evaluated model's run.
    pub fn model_run(&self) -> Option<&ModelRun> {
        self.runs.first()
    }

    /// The baseline's run, if one was evaluated.
    pub fn baseline_run(&self) -> Option<&ModelRun> {
        self.runs.get(1)
    }

    /// The comparison table as text (one column per model).
    pub fn render_table(&self) -> String {
        let rows = table_rows(self);
        let w0 = rows.iter().map(|r| r[0].chars().count()).max().unwrap_or(0);
        let widths: Vec<usize> = (1..=self.runs.len())
            .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for row in &rows {
            let mut line = format!("{:<w0$}", row[0]);
            for (c, w) in widths.iter().enumerate() {
                line.push_str("   ");
                line.push_str(&format!("{:<w$}", row[c + 1], w = *w));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        if let Some(c) = &self.comparison {
            let _ = writeln!(
                out,
                "\nfail -> pass ({}): {}",
                c.fail_to_pass.len(),
                line_list(&c.fail_to_pass)
            );
            let _ = writeln!(
                out,
                "pass -> fail ({}): {}",
                c.pass_to_fail.len(),
                line_list(&c.pass_to_fail)
            );
        }
        if let Some(e) = &self.economics {
            out.push_str(&render_economics(e));
        }
        out
    }

    /// Prints the table to stdout.
    pub fn print_table(&self) {
        print!("{}", self.render_table());
    }

    /// The failures of run `run` (0: the evaluated model), each with its
    /// input, what was expected and the actual output.
    pub fn render_failures(&self, run: usize) -> String {
        let Some(r) = self.runs.get(run) else {
            return String::new();
        };
        let failed: Vec<_> = self
            .cases
            .iter()
            .zip(&r.results)
            .filter(|(_, res)| !res.passed)
            .collect();
        let mut out = format!(
            "Failures of {} ({} of {}):\n",
            r.label,
            failed.len(),
            r.results.len()
        );
        if failed.is_empty() {
            out.push_str("  none\n");
        }
        for (c, res) in failed {
            let id =
                c.id.as_deref()
                    .map(|i| format!(" ({i})"))
                    .unwrap_or_default();
            let _ = writeln!(out, "  line {}{id}", c.line);
            let _ = writeln!(out, "    input:    {}", indent(&c.input));
            let _ = writeln!(out, "    expected: {}", c.expected.join(" | "));
            let _ = writeln!(out, "    actual:   {}", indent(&res.output));
            let _ = writeln!(out, "    failed:   {}", res.failed_checks.join("; "));
        }
        out
    }

    /// The evaluated model's failures in full ([`EvalReport::render_failures`]),
    /// then every other run's, one line a case: the checks it missed and
    /// the start of its answer. Without them a baseline's failures could
    /// not be told apart (bad retrieval, or a model that ignored the
    /// excerpt; a missed greeting or a missed sign-off).
    pub fn render_all_failures(&self) -> String {
        let mut out = self.render_failures(0);
        for r in self.runs.iter().skip(1) {
            let failed: Vec<_> = r.results.iter().filter(|res| !res.passed).collect();
            let _ = writeln!(
                out,
                "\nFailures of {} ({} of {}):",
                r.label,
                failed.len(),
                r.results.len()
            );
            if failed.is_empty() {
                out.push_str("  none\n");
            }
            for res in failed {
                let _ = writeln!(
                    out,
                    "  line {}: {} | actual: {}",
                    res.line,
                    res.failed_checks.join("; "),
                    clip(&res.output, FAILURE_LINE_CHARS)
                );
            }
        }
        out
    }

    /// Prints every run's failures to stdout ([`EvalReport::render_all_failures`]).
    pub fn print_failures(&self) {
        print!("{}", self.render_all_failures());
    }

    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }
}

fn table_rows(r: &EvalReport) -> Vec<Vec<String>> {
    let mut rows = vec![std::iter::once(String::new())
        .chain(r.runs.iter().map(|m| m.label.clone()))
        .collect::<Vec<_>>()];
    let mut add = |name: &str, f: &dyn Fn(&ModelRun) -> String| {
        rows.push(
            std::iter::once(name.to_string())
                .chain(r.runs.iter().map(f))
                .collect(),
        );
    };
    add("pass rate", &|m| {
        let s = &m.summary;
        format!("{}/{} ({})", s.passed, s.total, pct(s.pass_rate))
    });
    if r.runs.iter().any(|m| m.summary.json_cases > 0) {
        add("JSON valid", &|m| {
            let s = &m.summary;
            format!("{}/{}", s.json_valid, s.json_cases)
        });
    }
    if r.runs.iter().any(|m| m.summary.schema_cases > 0) {
        add("schema valid", &|m| {
            let s = &m.summary;
            format!("{}/{}", s.schema_valid, s.schema_cases)
        });
    }
    if r.runs.iter().any(|m| m.summary.tool_calls.is_some()) {
        for k in 0..3 {
            let label = crate::tool_check::ToolCallSummary::rows(None)[k].0;
            add(label, &|m| {
                crate::tool_check::ToolCallSummary::rows(m.summary.tool_calls.as_ref())[k]
                    .1
                    .clone()
            });
        }
    }
    add("mean prompt tokens", &|m| {
        format!("{:.0}", m.summary.mean_prompt_tokens)
    });
    add("mean output length", &|m| {
        let s = &m.summary;
        format!(
            "{:.0} chars, {:.0} tokens",
            s.mean_output_chars, s.mean_output_tokens
        )
    });
    if r.runs.iter().any(|m| m.chat_loss.is_some()) {
        add("validation loss", &|m| match &m.chat_loss {
            Some(l) => format!("{:.4} (ppl {:.2})", l.loss, l.perplexity),
            None => "-".into(),
        });
    }
    if r.runs.iter().any(|m| m.pair_accuracy.is_some()) {
        add("DPO pair accuracy", &|m| match &m.pair_accuracy {
            Some(p) => format!("{} of {} pairs", pct(p.accuracy), p.pairs),
            None => "-".into(),
        });
    }
    add("generation time", &|m| {
        format!("{:.1} s", m.generation_seconds)
    });
    add("mean latency", &|m| {
        format!("{:.2} s", m.summary.mean_latency_seconds)
    });
    if let Some(e) = &r.economics {
        let cost = |i: usize| e.costs.get(i);
        let cells = |f: &dyn Fn(&crate::cost::RunCost) -> String| -> Vec<String> {
            (0..r.runs.len())
                .map(|i| cost(i).map(f).unwrap_or_default())
                .collect()
        };
        let tokens = cells(&|c| format!("${:.4}", c.usd_per_1k_requests));
        let local = cells(&|c| format!("${:.4}", c.local_usd_per_1k_requests));
        rows.push(
            std::iter::once("cost / 1k requests (tokens)".to_string())
                .chain(tokens)
                .collect(),
        );
        rows.push(
            std::iter::once("cost / 1k requests (local)".to_string())
                .chain(local)
                .collect(),
        );
    }
    rows
}

/// Prices, training cost, break-even and verdict, as text under the table.
fn render_economics(e: &Economics) -> String {
    let p = &e.prices;
    let mut out = format!(
        "\ncosts at ${}/1M input and ${}/1M output tokens, local compute ${}/hour\n",
        p.input_per_million, p.output_per_million, p.local_per_hour
    );
    if let Some(t) = &e.training {
        let _ = writeln!(out, "training cost: ${:.4} ({})", t.usd, t.detail);
    }
    for b in &e.break_even {
        let _ = match b.requests {
            Some(n) => writeln!(
                out,
                "break-even against {} {}: {:.0} requests ({:.1} days at {}/day)",
                b.baseline,
                b.basis.words(),
                n.ceil(),
                b.days.unwrap_or(0.0),
                p.requests_per_day
            ),
            None => writeln!(
                out,
                "break-even against {} {}: never (no saving per request)",
                b.baseline,
                b.basis.words()
            ),
        };
    }
    if !e.verdict.is_empty() {
        out.push_str("\nverdict:\n");
        for v in &e.verdict {
            let _ = writeln!(out, "  - {v}");
        }
    }
    out
}

fn line_list(lines: &[usize]) -> String {
    if lines.is_empty() {
        return "none".into();
    }
    let l: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    format!("lines {}", l.join(", "))
}

/// How much of a baseline's failed answer its one failure line shows.
const FAILURE_LINE_CHARS: usize = 80;

/// `s` on one line, cut to `max` characters with an ellipsis.
fn clip(s: &str, max: usize) -> String {
    let one_line = s.trim().replace('\n', "\\n");
    if one_line.chars().count() <= max {
        return one_line;
    }
    let cut: String = one_line.chars().take(max).collect();
    format!("{cut}…")
}

fn indent(s: &str) -> String {
    s.trim_end().replace('\n', "\n              ")
}
