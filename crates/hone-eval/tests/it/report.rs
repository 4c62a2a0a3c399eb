//! The runner, comparison and text renderings with scripted models.

use std::collections::HashMap;

use hone_eval::run::{plain_requests, run_cases, Decoding};
use hone_eval::{
    parse_cases, Conversation, EvalCase, EvalModel, EvalReport, Generated, GenerationInfo,
    ModelRun, Summary,
};
use hone_model::score::TokenScore;
use hone_text::ChatMessage;
use serde_json::Value;

/// Answers each case's last user message from a fixed table.
pub struct Scripted(pub HashMap<String, String>);

impl EvalModel for Scripted {
    fn generate(
        &self,
        conv: &Conversation<'_>,
        _max_tokens: usize,
    ) -> hone_eval::Result<Generated> {
        let q = &conv.messages.last().unwrap().content;
        match self.0.get(q) {
            Some(a) => Ok(Generated {
                text: a.clone(),
                tokens: a.split_whitespace().count(),
                prompt_tokens: self.prompt_tokens(conv)?,
            }),
            None => Err(hone_eval::EvalError::Spec(format!("no answer for {q}"))),
        }
    }
    /// One token a word of every message.
    fn prompt_tokens(&self, conv: &Conversation<'_>) -> hone_eval::Result<usize> {
        Ok(conv
            .messages
            .iter()
            .map(|m| m.content.split_whitespace().count())
            .sum())
    }
    fn context_length(&self) -> usize {
        64
    }
    fn score_chat(&self, _: &[ChatMessage], _: Option<&Value>) -> hone_eval::Result<TokenScore> {
        Ok(TokenScore::default())
    }
    fn score_answer(&self, _: &[ChatMessage], _: &ChatMessage) -> hone_eval::Result<TokenScore> {
        Ok(TokenScore::default())
    }
}

pub const CASES: &str = r#"{"messages": [{"role": "user", "content": "reset password"}], "expected_patterns": ["techcorp.com", "forgot password"]}
{"messages": [{"role": "user", "content": "headline"}], "expected_json": {"team": "Colts"}}
{"messages": [{"role": "user", "content": "hours <b>?</b>"}], "expected_patterns": ["re:\\b9\\b"], "forbidden_patterns": ["As an AI"]}
{"messages": [{"role": "user", "content": "unanswerable"}], "expected_patterns": ["x"]}"#;

pub fn cases() -> Vec<EvalCase> {
    parse_cases(CASES).unwrap()
}

fn scripted(pairs: &[(&str, &str)]) -> Scripted {
    Scripted(
        pairs
            .iter()
            .map(|(q, a)| (q.to_string(), a.to_string()))
            .collect(),
    )
}

pub fn tuned() -> Scripted {
    scripted(&[
        (
            "reset password",
            "Go to TechCorp.com and click Forgot Password.",
        ),
        (
            "headline",
            "```json\n{\"team\": \"Colts\", \"player\": \"Taylor\"}\n```",
        ),
        ("hours <b>?</b>", "As an AI, we open at 10."),
    ])
}

pub fn base() -> Scripted {
    scripted(&[
        ("reset password", "I cannot help."),
        (
            "headline",
            "The Colts traded Taylor. <script>alert(1)</script>",
        ),
        ("hours <b>?</b>", "We open at 9."),
        ("unanswerable", "x marks the spot"),
    ])
}

pub fn run(model: &dyn EvalModel, label: &str, cases: &[EvalCase]) -> ModelRun {
    let (results, secs) = run_cases(
        model,
        label,
        cases,
        &plain_requests(cases),
        Decoding {
            max_tokens: 32,
            batch: 3,
        },
        &mut |_| {},
    );
    ModelRun {
        label: label.into(),
        model: "scripted".into(),
        adapter: None,
        summary: Summary::of(&results),
        results,
        chat_loss: None,
        pair_accuracy: None,
        generation_seconds: secs,
    }
}

pub fn report() -> EvalReport {
    let cases = cases();
    let runs = vec![
        run(&tuned(), "fine-tuned", &cases),
        run(&base(), "base", &cases),
    ];
    let gen = GenerationInfo {
        max_tokens: 32,
        greedy: true,
        batch: 3,
        weights: "q8_0".into(),
        json_schema_from_case: false,
        few_shot_seed: 0,
        few_shot_pick: "similar".into(),
        embedding_model: None,
    };
    EvalReport::new("cases.jsonl", &cases, runs, gen, vec![])
}

#[test]
fn pass_rates_json_rate_and_lengths() {
    let r = report();
    let t = &r.runs[0].summary;
    assert_eq!((t.passed, t.total), (2, 4));
    assert_eq!(t.pass_rate, 0.5);
    assert_eq!((t.json_cases, t.json_valid), (1, 1));
    assert_eq!(t.json_valid_rate, Some(1.0));
    let b = &r.runs[1].summary;
    assert_eq!((b.passed, b.json_valid), (2, 0));
    assert_eq!(b.json_valid_rate, Some(0.0));
    // Mean over all four cases; the failed generation counts as empty.
    let chars: usize = r.runs[0]
        .results
        .iter()
        .map(|x| x.output.chars().count())
        .sum();
    assert!((t.mean_output_chars - chars as f64 / 4.0).abs() < 1e-9);
}

#[test]
fn comparison_lists_changed_cases_by_line() {
    let r = report();
    let c = r.comparison.as_ref().unwrap();
    assert_eq!(c.fail_to_pass, vec![1, 2]);
    assert_eq!(c.pass_to_fail, vec![3, 4]);
    assert_eq!(c.pass_rate_delta, 0.0);
    let failed = &r.runs[0].results[3];
    assert!(failed.error.as_deref().unwrap().contains("no answer"));
    assert!(!failed.passed);
}

#[test]
fn table_and_failures_read_like_seed_001() {
    let r = report();
    let table = r.render_table();
    assert!(table.contains("fine-tuned"), "{table}");
    assert!(table.contains("pass rate"));
    assert!(table.contains("2/4 (50.0%)"));
    assert!(table.contains("JSON valid"));
    assert!(table.contains("fail -> pass (2): lines 1, 2"), "{table}");
    assert!(table.contains("pass -> fail (2): lines 3, 4"), "{table}");
    let f = r.render_failures(0);
    assert!(f.contains("Failures of fine-tuned (2 of 4)"), "{f}");
    assert!(f.contains("input:    hours <b>?</b>"));
    assert!(f.contains("expected: re:\\b9\\b | not: As an AI"), "{f}");
    assert!(f.contains("actual:   As an AI, we open at 10."));
    assert!(f.contains("forbidden \"As an AI\" present"));
}

/// The terminal report lists every run's failures: the evaluated model's in
/// full, each baseline's one line a case with the checks it missed.
#[test]
fn failures_of_every_run_are_listed() {
    let r = report();
    let all = r.render_all_failures();
    assert!(all.starts_with(&r.render_failures(0)), "{all}");
    let base = all
        .split("Failures of base (2 of 4):\n")
        .nth(1)
        .expect(&all);
    let lines: Vec<&str> = base.lines().collect();
    assert_eq!(lines.len(), 2, "{base}");
    assert!(lines[0].starts_with("  line 1: "), "{base}");
    assert!(lines[0].ends_with(" | actual: I cannot help."), "{base}");
    assert_eq!(
        lines[0],
        format!(
            "  line 1: {} | actual: I cannot help.",
            r.runs[1].results[0].failed_checks.join("; ")
        )
    );
    assert!(lines[1].starts_with("  line 2: "), "{base}");
    // The answer as given (it is under the 80 characters a line shows).
    assert!(
        lines[1].ends_with("| actual: The Colts traded Taylor. <script>alert(1)</script>"),
        "{base}"
    );
}

#[test]
fn json_output_has_runs_comparison_and_cases() {
    let r = report();
    let v: Value = serde_json::from_str(&r.to_json()).unwrap();
    assert_eq!(v["runs"].as_array().unwrap().len(), 2);
    assert_eq!(v["runs"][0]["summary"]["pass_rate"], 0.5);
    assert_eq!(v["comparison"]["fail_to_pass"], serde_json::json!([1, 2]));
    assert_eq!(v["cases"][0]["expected"][1], "forgot password");
    assert_eq!(v["runs"][1]["results"][1]["json_valid"], false);
    assert_eq!(v["generation"]["greedy"], true);
}

#[test]
fn a_single_model_has_no_comparison() {
    let cases = cases();
    let gen = GenerationInfo {
        max_tokens: 32,
        greedy: true,
        batch: 3,
        weights: "f32".into(),
        json_schema_from_case: false,
        few_shot_seed: 0,
        few_shot_pick: "similar".into(),
        embedding_model: None,
    };
    let r = EvalReport::new("c", &cases, vec![run(&base(), "m", &cases)], gen, vec![]);
    assert!(r.comparison.is_none());
    assert!(!r.render_table().contains("fail -> pass"));
}
