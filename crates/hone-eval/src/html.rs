//! The HTML report: one self-contained file (inline CSS and SVG, no scripts
//! or external resources) with the comparison table, the failures and, when
//! the adapter's `metrics.csv` is given, the loss curves. Everything that
//! comes from data is HTML-escaped.
//!
//! This module depends on [`crate::report`], never the reverse:
//! [`EvalReport::write_html`] is defined here.

use std::fmt::Write as _;
use std::path::Path;

use hone_train::{parse_metrics_csv, MetricsRow};

use crate::cost::RunCost;
use crate::error::{EvalError, Result};
use crate::report::{pct, EvalReport};
use crate::run::ModelRun;
use crate::verdict::Economics;

impl EvalReport {
    /// Writes the self-contained HTML report; with `metrics_csv` (a trainer's
    /// `metrics.csv`, or the server's `step_metrics.csv`), it includes the loss curves.
    /// (Defined here, with the rendering, so that the report does not depend on its
    /// HTML form.)
    pub fn write_html(&self, path: &Path, metrics_csv: Option<&Path>) -> Result<()> {
        let metrics = match metrics_csv {
            Some(p) => Some(read_metrics_csv(p)?),
            None => None,
        };
        let html = render_html(self, metrics.as_deref());
        std::fs::write(path, html).map_err(|source| EvalError::Write {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// Reads a trainer's `metrics.csv` with hone-train's reader (the format is defined
/// once, next to its writer).
pub fn read_metrics_csv(path: &Path) -> Result<Vec<MetricsRow>> {
    let text = std::fs::read_to_string(path).map_err(|source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_metrics_csv(&text).map_err(|message| EvalError::Data {
        path: path.to_path_buf(),
        message,
    })
}

/// Escapes text for HTML element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:70em;padding:0 1em;color:#222}\
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}\
th{background:#f3f3f3}td.num{text-align:right}pre{white-space:pre-wrap;margin:0;font-size:.9em}\
.pass{color:#17803d}.fail{color:#b3261e}.muted{color:#666}details{margin:.5em 0}";

/// The whole report as an HTML document.
pub fn render_html(report: &EvalReport, metrics: Option<&[MetricsRow]>) -> String {
    let mut h = String::new();
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\"/>\n");
    let _ = writeln!(
        h,
        "<title>hone eval: {}</title>\n<style>{STYLE}</style>\n</head>\n<body>",
        escape(&report.cases_file)
    );
    let _ = writeln!(h, "<h1>hone eval</h1>");
    let _ = writeln!(
        h,
        "<p class=\"muted\">Cases: {} ({} cases), greedy decoding, at most {} tokens, {} weights.</p>",
        escape(&report.cases_file),
        report.cases.len(),
        report.generation.max_tokens,
        escape(&report.generation.weights)
    );
    for w in &report.warnings {
        let _ = writeln!(h, "<p class=\"fail\">Warning: {}</p>", escape(w));
    }
    comparison_table(&mut h, report);
    if let Some(e) = &report.economics {
        economics(&mut h, e);
    }
    if let Some(m) = metrics {
        let _ = writeln!(h, "<h2>Training</h2>");
        h.push_str(&loss_chart_svg(m));
    }
    for (i, run) in report.runs.iter().enumerate() {
        failures(&mut h, report, run, i == 0);
    }
    h.push_str("</body>\n</html>\n");
    h
}

fn comparison_table(h: &mut String, r: &EvalReport) {
    h.push_str("<h2>Results</h2>\n<table>\n<tr><th></th>");
    for run in &r.runs {
        let what = match &run.adapter {
            Some(a) => format!("{} + {}", run.model, a),
            None => run.model.clone(),
        };
        let _ = write!(
            h,
            "<th>{}<br/><span class=\"muted\">{}</span></th>",
            escape(&run.label),
            escape(&what)
        );
    }
    h.push_str("</tr>\n");
    let mut row = |name: &str, f: &dyn Fn(&ModelRun) -> String| {
        let _ = write!(h, "<tr><th>{}</th>", escape(name));
        for run in &r.runs {
            let _ = write!(h, "<td class=\"num\">{}</td>", escape(&f(run)));
        }
        h.push_str("</tr>\n");
    };
    row("pass rate", &|m| {
        format!(
            "{} ({}/{})",
            pct(m.summary.pass_rate),
            m.summary.passed,
            m.summary.total
        )
    });
    row("JSON valid", &|m| match m.summary.json_valid_rate {
        Some(x) => format!(
            "{} ({}/{})",
            pct(x),
            m.summary.json_valid,
            m.summary.json_cases
        ),
        None => "-".into(),
    });
    row("schema valid", &|m| match m.summary.schema_valid_rate {
        Some(x) => format!(
            "{} ({}/{})",
            pct(x),
            m.summary.schema_valid,
            m.summary.schema_cases
        ),
        None => "-".into(),
    });
    let tools = r.runs.iter().any(|m| m.summary.tool_calls.is_some());
    for k in (0..3).filter(|_| tools) {
        let label = crate::tool_check::ToolCallSummary::rows(None)[k].0;
        row(label, &|m| {
            crate::tool_check::ToolCallSummary::rows(m.summary.tool_calls.as_ref())[k]
                .1
                .clone()
        });
    }
    row("mean prompt tokens", &|m| {
        format!("{:.0}", m.summary.mean_prompt_tokens)
    });
    row("mean output length", &|m| {
        format!(
            "{:.0} chars, {:.0} tokens",
            m.summary.mean_output_chars, m.summary.mean_output_tokens
        )
    });
    row("mean latency", &|m| {
        format!("{:.2} s", m.summary.mean_latency_seconds)
    });
    row("validation loss (perplexity)", &|m| match &m.chat_loss {
        Some(l) => format!("{:.4} ({:.2})", l.loss, l.perplexity),
        None => "-".into(),
    });
    row("DPO pair accuracy", &|m| match &m.pair_accuracy {
        Some(p) => format!("{} of {}", pct(p.accuracy), p.pairs),
        None => "-".into(),
    });
    if let Some(e) = &r.economics {
        for (name, f) in [
            (
                "cost / 1k requests (tokens)",
                &(|c: &RunCost| c.usd_per_1k_requests) as &dyn Fn(&RunCost) -> f64,
            ),
            ("cost / 1k requests (local)", &|c: &RunCost| {
                c.local_usd_per_1k_requests
            }),
        ] {
            let _ = write!(h, "<tr><th>{}</th>", escape(name));
            for c in &e.costs {
                let _ = write!(h, "<td class=\"num\">${:.4}</td>", f(c));
            }
            h.push_str("</tr>\n");
        }
    }
    h.push_str("</table>\n");
    if let Some(c) = &r.comparison {
        let list = |v: &[usize]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.iter()
                    .map(|l| format!("line {l}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        let _ = writeln!(
            h,
            "<p><span class=\"pass\">fail &#8594; pass ({}):</span> {}<br/>\
             <span class=\"fail\">pass &#8594; fail ({}):</span> {}</p>",
            c.fail_to_pass.len(),
            escape(&list(&c.fail_to_pass)),
            c.pass_to_fail.len(),
            escape(&list(&c.pass_to_fail))
        );
    }
}

/// Prices, training cost, break-even and the verdict.
fn economics(h: &mut String, e: &Economics) {
    let p = &e.prices;
    let _ = writeln!(
        h,
        "<h2>Should I fine-tune?</h2>\n<p class=\"muted\">Costs at ${}/1M input and ${}/1M output \
         tokens, local compute ${}/hour, {} requests/day.</p>",
        p.input_per_million, p.output_per_million, p.local_per_hour, p.requests_per_day
    );
    if let Some(t) = &e.training {
        let _ = writeln!(
            h,
            "<p>Training cost: ${:.4} ({})</p>",
            t.usd,
            escape(&t.detail)
        );
    }
    if !e.break_even.is_empty() {
        h.push_str(
            "<table>\n<tr><th>against</th><th>saving / 1k requests</th><th>priced</th><th>break-even</th></tr>\n",
        );
        for b in &e.break_even {
            let when = match (b.requests, b.days) {
                (Some(n), Some(d)) => format!("{:.0} requests ({d:.1} days)", n.ceil()),
                _ => "never".into(),
            };
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td class=\"num\">${:.4}</td><td>{}</td><td>{}</td></tr>",
                escape(&b.baseline),
                b.saving_usd_per_1k_requests,
                b.basis.words(),
                escape(&when)
            );
        }
        h.push_str("</table>\n");
    }
    if !e.verdict.is_empty() {
        h.push_str("<ul class=\"verdict\">\n");
        for v in &e.verdict {
            let _ = writeln!(h, "<li>{}</li>", escape(v));
        }
        h.push_str("</ul>\n");
    }
}

fn failures(h: &mut String, r: &EvalReport, run: &ModelRun, open: bool) {
    let failed: Vec<_> = r
        .cases
        .iter()
        .zip(&run.results)
        .filter(|(_, res)| !res.passed)
        .collect();
    let _ = writeln!(
        h,
        "<details{}><summary><h2 style=\"display:inline\">Failures of {} ({} of {})</h2></summary>",
        if open { " open=\"open\"" } else { "" },
        escape(&run.label),
        failed.len(),
        run.results.len()
    );
    if failed.is_empty() {
        h.push_str("<p>None.</p>\n</details>\n");
        return;
    }
    h.push_str("<table>\n<tr><th>line</th><th>input</th><th>expected</th><th>actual</th><th>failed checks</th></tr>\n");
    for (c, res) in failed {
        let expected: Vec<String> = c.expected.iter().map(|e| escape(e)).collect();
        let _ = writeln!(
            h,
            "<tr><td class=\"num\">{}</td><td><pre>{}</pre></td><td>{}</td><td><pre>{}</pre></td><td>{}</td></tr>",
            c.line,
            escape(&c.input),
            expected.join("<br/>"),
            escape(&res.output),
            res.failed_checks
                .iter()
                .map(|f| escape(f))
                .collect::<Vec<_>>()
                .join("<br/>")
        );
    }
    h.push_str("</table>\n</details>\n");
}

const W: f64 = 640.0;
const H: f64 = 320.0;
const PAD_L: f64 = 56.0;
const PAD_R: f64 = 16.0;
const PAD_T: f64 = 28.0;
const PAD_B: f64 = 40.0;

/// Training and validation loss against step as an inline SVG line chart.
/// Non-finite losses (a diverged step) are left out.
pub fn loss_chart_svg(rows: &[MetricsRow]) -> String {
    let point =
        |step: u64, loss: Option<f64>| loss.filter(|l| l.is_finite()).map(|l| (step as f64, l));
    let train: Vec<(f64, f64)> = rows
        .iter()
        .filter_map(|r| point(r.step, Some(r.train_loss)))
        .collect();
    let valid: Vec<(f64, f64)> = rows
        .iter()
        .filter_map(|r| point(r.step, r.valid_loss))
        .collect();
    let all: Vec<&(f64, f64)> = train.iter().chain(&valid).collect();
    if all.is_empty() {
        return "<p class=\"muted\">metrics.csv has no loss values.</p>\n".into();
    }
    let (x0, x1) = span(all.iter().map(|p| p.0));
    let (y0, y1) = span(all.iter().map(|p| p.1));
    let y0 = y0.min(0.0);
    let sx = |x: f64| PAD_L + (x - x0) / (x1 - x0) * (W - PAD_L - PAD_R);
    let sy = |y: f64| H - PAD_B - (y - y0) / (y1 - y0) * (H - PAD_T - PAD_B);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"loss curves\">\n"
    );
    let _ = writeln!(
        s,
        "<rect x=\"{PAD_L}\" y=\"{PAD_T}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"none\" stroke=\"#999\"/>",
        W - PAD_L - PAD_R,
        H - PAD_T - PAD_B
    );
    for i in 0..=4 {
        let y = y0 + (y1 - y0) * i as f64 / 4.0;
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\">{y:.2}</text>",
            PAD_L - 6.0,
            sy(y) + 4.0
        );
        let x = x0 + (x1 - x0) * i as f64 / 4.0;
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\">{x:.0}</text>",
            sx(x),
            H - PAD_B + 16.0
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\" text-anchor=\"middle\">step</text>",
        PAD_L + (W - PAD_L - PAD_R) / 2.0,
        H - 6.0
    );
    for (pts, color, name, legend_x) in [
        (&train, "#1f6feb", "train loss", 0.0),
        (&valid, "#d9480f", "validation loss", 110.0),
    ] {
        if pts.is_empty() {
            continue;
        }
        let coords: Vec<String> = pts
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
            coords.join(" ")
        );
        if pts.len() <= 50 {
            for &(x, y) in pts.iter() {
                let _ = writeln!(
                    s,
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"{color}\"/>",
                    sx(x),
                    sy(y)
                );
            }
        }
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\" fill=\"{color}\">{name}</text>",
            PAD_L + 8.0 + legend_x,
            PAD_T - 10.0
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Min and max of the values, widened when they are equal.
fn span(vals: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = vals.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    if hi > lo {
        (lo, hi)
    } else {
        (lo - 1.0, hi + 1.0)
    }
}
