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

/// `hone eval` on the tiny model, `--max-tokens 8` unless `args` set it.
fn eval(s: &Setup, args: &[&str]) -> Output {
    let max_tokens: &[&str] = if args.contains(&"--max-tokens") {
        &[]
    } else {
        &["--max-tokens", "8"]
    };
    Command::new(hone_bin())
        .arg("eval")
        .arg("--model")
        .arg(&s.model)
        .args(max_tokens)
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

/// `--baseline` twice (base and few-shot from the training file) beside the
/// fine-tune: every approach's pass rate, tokens, latency and cost, the
/// recorded training cost, break-even and the verdict in the JSON, the
/// table and the HTML report.
#[test]
fn baselines_costs_and_verdict_end_to_end() {
    let st = setup(12, 9);
    let adapter = st.dir.path().join("adapter");
    let t = st.train(&adapter, &["--epochs", "1"]);
    assert!(t.status.success(), "{}", String::from_utf8_lossy(&t.stderr));
    let cases = st.dir.path().join("cases.jsonl");
    write_cases(&cases, &[PASSING, FAILING]);
    let html = st.dir.path().join("report.html");
    let (a, c, d) = (
        adapter.to_str().unwrap(),
        cases.to_str().unwrap(),
        st.data.to_str().unwrap(),
    );
    let base_args = [
        "--cases",
        c,
        "--adapter",
        a,
        "--baseline",
        "base",
        "--baseline",
        "few-shot:2",
        "--train-file",
        d,
        "--seed",
        "4",
        // Random picks: no embedding model in this test's HONE_HOME.
        "--few-shot-pick",
        "random",
    ];
    let o = eval(
        &st,
        &[
            &base_args[..],
            &["--json", "--report", html.to_str().unwrap()],
        ]
        .concat(),
    );
    let (out, err) = s(&o);
    assert!(o.status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let labels: Vec<&str> = v["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["fine-tuned", "base", "few-shot:2"]);
    let prompt = |i: usize| {
        v["runs"][i]["summary"]["mean_prompt_tokens"]
            .as_f64()
            .unwrap()
    };
    assert_eq!(prompt(0), prompt(1), "the same messages");
    assert!(prompt(2) > prompt(1), "two example chats more");
    for r in v["runs"].as_array().unwrap() {
        assert_eq!(r["summary"]["total"], 2);
        assert!(r["summary"]["mean_latency_seconds"].as_f64().unwrap() > 0.0);
    }
    let e = &v["economics"];
    assert_eq!(e["costs"].as_array().unwrap().len(), 3);
    assert_eq!(e["prices"]["input_per_million"], 0.15);
    assert_eq!(
        e["training"]["source"], "recorded",
        "hone train wrote summary.json"
    );
    let verdict = e["verdict"].as_array().unwrap();
    assert_eq!(verdict.len(), 2);
    assert!(
        verdict[1]
            .as_str()
            .unwrap()
            .starts_with("few-shot:2 reaches "),
        "{verdict:?}"
    );
    // Few-shot's longer prompts cost more per request, so the fine-tune pays back.
    assert!(e["break_even"][1]["requests"].as_f64().unwrap() > 0.0);
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("Should I fine-tune?") && page.contains("few-shot:2 reaches"));
    assert!(page.contains("cost / 1k requests (tokens)"));

    let o = eval(&st, &base_args);
    let (out, err) = s(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("mean prompt tokens") && out.contains("cost / 1k requests (local)"));
    assert!(
        out.contains("verdict:") && out.contains("- few-shot:2 reaches"),
        "{out}"
    );
    assert!(
        out.contains("training cost: $") && out.contains("recorded"),
        "{out}"
    );
}

#[test]
fn bad_baselines_are_clear_errors() {
    let st = setup(12, 10);
    let cases = st.dir.path().join("cases.jsonl");
    write_cases(&cases, &[PASSING, FAILING]);
    let (c, d) = (cases.to_str().unwrap(), st.data.to_str().unwrap());
    let fails = |args: &[&str], want: &str| {
        let o = eval(&st, &[&["--cases", c][..], args].concat());
        let (_, err) = s(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    };
    fails(
        &["--baseline", "prompt:/no/such/prompt.txt"],
        "/no/such/prompt.txt",
    );
    fails(
        &["--baseline", "few-shot:3", "--few-shot-pick", "random"],
        "--train-file",
    );
    // 12 examples, 2 of them the eval cases' questions.
    fails(
        &[
            "--baseline",
            "few-shot:11",
            "--train-file",
            d,
            "--few-shot-pick",
            "random",
        ],
        "few-shot:11 needs 11 examples, but",
    );
    fails(
        &[
            "--baseline",
            "few-shot:11",
            "--train-file",
            d,
            "--few-shot-pick",
            "random",
        ],
        "has 10 usable (2 left out",
    );
    // The documents are checked before the embedding model loads; with
    // documents in place, an embedding model that does not exist is named.
    let docs = st.dir.path().join("docs");
    let rag = format!("rag:{}:1", docs.display());
    let no_model = ["--embedding-model", "/no/such/model"];
    fails(
        &[&["--baseline", rag.as_str()][..], &no_model].concat(),
        "does not exist",
    );
    std::fs::create_dir_all(&docs).unwrap();
    std::fs::write(docs.join("a.md"), "Some text to retrieve.").unwrap();
    fails(
        &[&["--baseline", rag.as_str()][..], &no_model].concat(),
        "needs the embedding model '/no/such/model' (--embedding-model)",
    );
    fails(&["--baseline", "fine-tuned"], "needs --adapter");
    // The tiny model's context is 256 tokens: eight examples and 200 answer
    // tokens do not fit, and that is said, never silently cut.
    fails(
        &[
            "--baseline",
            "few-shot:8",
            "--train-file",
            d,
            "--max-tokens",
            "200",
            "--few-shot-pick",
            "random",
        ],
        "do not fit the model's 256-token context",
    );
}
