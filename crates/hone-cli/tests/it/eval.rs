//! `hone eval` end to end on a tiny random model and an adapter trained by
//! `hone train` (so the adapter directory has a real metrics.csv).

use std::path::Path;
use std::process::{Command, Output};

use hone_model::testing::{write_tiny_model, TinySpec};

use crate::train_support::hone_bin;

/// A temp dir with a tiny GGUF model (`seed` picks its weights) and `n` chats.
struct Setup {
    dir: tempfile::TempDir,
    model: std::path::PathBuf,
    data: std::path::PathBuf,
}

fn setup(n: usize, seed: u64) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let spec = TinySpec {
        seed,
        ..TinySpec::default()
    };
    let (model, _) = write_tiny_model(dir.path(), &spec).unwrap();
    let data = dir.path().join("train.jsonl");
    let lines: Vec<String> = (0..n)
        .map(|i| {
            serde_json::json!({"messages": [
                {"role": "user", "content": format!("question number {i}?")},
                {"role": "assistant", "content": format!("answer {i}: ok")},
            ]})
            .to_string()
        })
        .collect();
    std::fs::write(&data, lines.join("\n")).unwrap();
    Setup { dir, model, data }
}

impl Setup {
    fn train(&self, out: &Path, extra: &[&str]) -> Output {
        Command::new(hone_bin())
            .arg("train")
            .arg("--data")
            .arg(&self.data)
            .arg("--model")
            .arg(&self.model)
            .arg("--out")
            .arg(out)
            .args(["--seed", "3", "--lora-r", "4"])
            .args(extra)
            .env("HONE_HOME", self.dir.path().join("home"))
            .output()
            .unwrap()
    }
}

fn eval(s: &Setup, args: &[&str]) -> Output {
    Command::new(hone_bin())
        .arg("eval")
        .arg("--model")
        .arg(&s.model)
        .args(["--max-tokens", "8"])
        .args(args)
        .env("HONE_HOME", s.dir.path().join("home"))
        .output()
        .unwrap()
}

fn write_cases(path: &Path, lines: &[&str]) {
    std::fs::write(path, lines.join("\n")).unwrap();
}

const PASSING: &str = r#"{"messages": [{"role": "user", "content": "question number 1?"}], "forbidden_patterns": ["As an AI language model"]}"#;
const FAILING: &str = r#"{"messages": [{"role": "user", "content": "question number 2?"}], "expected_patterns": ["re:^this will not be generated$"]}"#;

fn s(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn eval_compares_the_adapter_with_its_base_and_writes_reports() {
    let st = setup(12, 5);
    let adapter = st.dir.path().join("adapter");
    let t = st.train(&adapter, &["--epochs", "1"]);
    assert!(t.status.success(), "{}", String::from_utf8_lossy(&t.stderr));
    assert!(adapter.join("metrics.csv").is_file());
    let cases = st.dir.path().join("cases.jsonl");
    write_cases(&cases, &[PASSING, FAILING]);
    let html = st.dir.path().join("report.html");
    let a = adapter.to_str().unwrap();
    let c = cases.to_str().unwrap();
    let o = eval(
        &st,
        &[
            "--cases",
            c,
            "--adapter",
            a,
            "--json",
            "--report",
            html.to_str().unwrap(),
        ],
    );
    let (out, err) = s(&o);
    assert!(o.status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0]["label"], "fine-tuned");
    assert_eq!(runs[1]["label"], "base");
    for r in runs {
        assert_eq!(r["summary"]["passed"], 1);
        assert_eq!(r["summary"]["total"], 2);
    }
    assert!(v["comparison"]["fail_to_pass"].is_array());
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.starts_with("<!DOCTYPE html>"));
    assert!(
        page.contains("<svg") && page.contains("<polyline"),
        "loss curves from metrics.csv"
    );
    assert!(page.contains("Failures of fine-tuned (1 of 2)"));

    // The human form: table, then failures in seed 001's shape.
    let o = eval(&st, &["--cases", c, "--adapter", a]);
    let (out, err) = s(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains("pass rate") && out.contains("1/2 (50.0%)"),
        "{out}"
    );
    assert!(out.contains("fine-tuned") && out.contains("base"));
    assert!(out.contains("fail -> pass") && out.contains("pass -> fail"));
    assert!(out.contains("input:    question number 2?"), "{out}");
    assert!(out.contains("expected: re:^this will not be generated$"));
}

#[test]
fn min_pass_rate_sets_the_exit_status() {
    let st = setup(12, 6);
    let cases = st.dir.path().join("cases.jsonl");
    write_cases(&cases, &[PASSING, FAILING]);
    let c = cases.to_str().unwrap();
    let o = eval(&st, &["--cases", c]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "a low pass rate alone is not an error"
    );
    let (out, _) = s(&o);
    assert!(!out.contains("fail -> pass"), "no adapter: no baseline");
    let o = eval(&st, &["--cases", c, "--min-pass-rate", "0.5"]);
    assert_eq!(o.status.code(), Some(0));
    let o = eval(&st, &["--cases", c, "--min-pass-rate", "0.75"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(s(&o).1.contains("below --min-pass-rate"));
    let o = eval(&st, &["--cases", c, "--min-pass-rate", "75"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(s(&o).1.contains("between 0 and 1"));
}

#[test]
fn bad_cases_are_all_reported_with_line_numbers() {
    let st = setup(12, 7);
    let cases = st.dir.path().join("cases.jsonl");
    write_cases(
        &cases,
        &[
            PASSING,
            r#"{"messages": [{"role": "user", "content": "q"}], "expected_patterns": ["re:[unclosed"]}"#,
            "{not json",
        ],
    );
    let o = eval(&st, &["--cases", cases.to_str().unwrap()]);
    let (_, err) = s(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("2 invalid case line(s)"), "{err}");
    assert!(
        err.contains("line 2:") && err.contains("invalid regex"),
        "{err}"
    );
    assert!(err.contains("line 3:"), "{err}");
}

/// Without a terminal (CI logs), progress is one stderr line per decoded
/// batch of cases, and the outputs do not depend on the batch size.
#[test]
fn progress_is_one_line_per_batch_without_a_terminal() {
    let st = setup(12, 8);
    let cases = st.dir.path().join("cases.jsonl");
    write_cases(&cases, &[PASSING, FAILING, PASSING]);
    let c = cases.to_str().unwrap();
    let o = eval(&st, &["--cases", c, "--batch", "2", "--json"]);
    let (out2, err) = s(&o);
    assert!(o.status.success(), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.contains(" cases: ")).collect();
    assert_eq!(lines.len(), 3, "{err}");
    for (line, want) in lines.iter().zip(["0/3", "2/3", "3/3"]) {
        assert!(line.contains(&format!("cases: {want} [")), "{err}");
    }
    let o = eval(&st, &["--cases", c, "--batch", "1", "--json"]);
    let (out1, err) = s(&o);
    assert!(o.status.success(), "{err}");
    let outputs = |json: &str| {
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        v["runs"][0]["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["output"].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(outputs(&out2), outputs(&out1));
    assert_eq!(err.lines().filter(|l| l.contains(" cases: ")).count(), 4);
}
