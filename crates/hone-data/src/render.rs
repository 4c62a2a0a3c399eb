//! The readable form of a [`Report`]: grouped by code, with counts and the
//! first few places each problem occurs. Shared by the CLI and server logs.

use std::fmt::Write;

use crate::issue::{Code, Issue, Report, Severity};
use crate::summary::Distribution;

/// How many occurrences to show per code.
pub const SHOWN_PER_CODE: usize = 5;

/// Renders the report as text.
pub fn render_report(r: &Report) -> String {
    let mut s = String::new();
    let verdict = if r.ok { "OK" } else { "FAILED" };
    let _ = writeln!(
        s,
        "{verdict}: {} valid {} examples, {} error(s), {} warning(s) in {} lines",
        r.n_examples,
        r.method.as_str(),
        r.errors.len(),
        r.warnings.len(),
        r.stats.n_lines
    );
    for (title, issues) in [("Errors", &r.errors), ("Warnings", &r.warnings)] {
        if !issues.is_empty() {
            let _ = writeln!(s, "\n{title}:");
            render_group(&mut s, issues);
        }
    }
    for note in &r.notes {
        let _ = writeln!(s, "\nnote: {note}");
    }
    s
}

fn render_group(s: &mut String, issues: &[Issue]) {
    for code in Code::ALL {
        let of_code: Vec<&Issue> = issues.iter().filter(|i| i.code == *code).collect();
        if of_code.is_empty() {
            continue;
        }
        let _ = writeln!(s, "  {} ({})", code.as_str(), of_code.len());
        for i in of_code.iter().take(SHOWN_PER_CODE) {
            let _ = writeln!(s, "    {}: {}", place(i), i.text);
        }
        if of_code.len() > SHOWN_PER_CODE {
            let _ = writeln!(s, "    … and {} more", of_code.len() - SHOWN_PER_CODE);
        }
    }
}

/// "line 3, message 2", "line 3" or "file".
pub fn place(i: &Issue) -> String {
    match (i.line, i.message) {
        (Some(l), Some(m)) => format!("line {l}, message {m}"),
        (Some(l), None) => format!("line {l}"),
        _ => "file".to_string(),
    }
}

/// One line of a distribution table.
pub fn render_distribution(label: &str, d: &Distribution) -> String {
    format!(
        "{label:<28} min {:>6}  p10 {:>6}  median {:>6}  mean {:>8.1}  p90 {:>6}  max {:>6}",
        d.min, d.p10, d.median, d.mean, d.p90, d.max
    )
}

/// Whether a severity's issues exist in the report.
pub fn has(r: &Report, sev: Severity) -> bool {
    match sev {
        Severity::Error => !r.errors.is_empty(),
        Severity::Warning => !r.warnings.is_empty(),
    }
}
