//! End-to-end tests of the `hone` binary on the real default model. They need
//! the GGUF in `HONE_TEST_GGUF` (scripts/test.sh fetches it with
//! `hone model fetch` and sets it), so they are ignored in a plain
//! `cargo test`.

use std::path::PathBuf;
use std::process::Command;

fn real_gguf() -> PathBuf {
    let path = std::env::var_os("HONE_TEST_GGUF")
        .map(PathBuf::from)
        .expect("HONE_TEST_GGUF must point at SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.exists(),
        "HONE_TEST_GGUF={} does not exist",
        path.display()
    );
    path
}

fn hone(args: &[&str]) -> (bool, String, String) {
    let home = tempfile::tempdir().expect("temp HONE_HOME");
    let out = Command::new(env!("CARGO_BIN_EXE_hone"))
        .args(args)
        .env("HONE_HOME", home.path())
        .output()
        .expect("run hone");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
#[ignore = "needs HONE_TEST_GGUF"]
fn chat_answers_the_france_question_with_paris() {
    let gguf = real_gguf();
    let (ok, stdout, stderr) = hone(&[
        "chat",
        "--model",
        gguf.to_str().unwrap(),
        "--temperature",
        "0",
        "--max-tokens",
        "40",
        "What is the capital of France?",
    ]);
    assert!(ok, "hone chat failed: {stderr}");
    assert!(stdout.contains("Paris"), "answer was: {stdout:?}");
}

#[test]
#[ignore = "needs HONE_TEST_GGUF"]
fn chat_with_a_missing_adapter_is_a_clear_error() {
    let gguf = real_gguf();
    let (ok, _, stderr) = hone(&[
        "chat",
        "--model",
        gguf.to_str().unwrap(),
        "--adapter",
        "/nonexistent/adapter",
        "hi",
    ]);
    assert!(!ok);
    assert!(stderr.contains("/nonexistent/adapter"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// `Answer: <text> | Source: policy-<N>`, the format taught by
/// examples/format/train.jsonl.
fn follows_format(answer: &str) -> bool {
    let a = answer.trim();
    let Some(rest) = a.strip_prefix("Answer: ") else {
        return false;
    };
    match rest.rsplit_once(" | Source: policy-") {
        Some((text, n)) => {
            !text.trim().is_empty() && !n.is_empty() && n.chars().all(|c| c.is_ascii_digit())
        }
        None => false,
    }
}

/// Held-out (system, user) prompts of the format task.
fn heldout_prompts() -> Vec<(String, String)> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/format/heldout.jsonl");
    let text = std::fs::read_to_string(&path).expect("read heldout.jsonl");
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("heldout line is JSON");
            let msg = |i: usize| v["messages"][i]["content"].as_str().unwrap().to_string();
            (msg(0), msg(1))
        })
        .collect()
}

fn format_pass_count(gguf: &str, adapter: Option<&str>) -> usize {
    heldout_prompts()
        .iter()
        .filter(|(system, user)| {
            let mut args = vec![
                "chat",
                "--model",
                gguf,
                "--temperature",
                "0",
                "--max-tokens",
                "48",
                "--system",
                system,
            ];
            if let Some(dir) = adapter {
                args.extend(["--adapter", dir]);
            }
            args.push(user);
            let (ok, stdout, stderr) = hone(&args);
            assert!(ok, "hone chat failed: {stderr}");
            eprintln!(
                "[{}] {}",
                adapter.map_or("base", |_| "tuned"),
                stdout.trim()
            );
            follows_format(&stdout)
        })
        .count()
}

/// Peers' most common complaint is a fine-tune that trains but changes
/// nothing. This trains the real model on a format the base model does not
/// have, then checks greedy answers to held-out prompts.
#[test]
#[ignore = "needs HONE_TEST_GGUF; trains for a few minutes"]
fn sft_on_the_real_model_teaches_a_new_answer_format() {
    let gguf = real_gguf();
    let gguf = gguf.to_str().unwrap();
    let out = tempfile::tempdir().unwrap();
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/format/train.jsonl");
    let (ok, _, stderr) = hone(&[
        "train",
        "--model",
        gguf,
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.path().to_str().unwrap(),
        "--json-events",
    ]);
    assert!(ok, "hone train failed: {stderr}");
    let n = heldout_prompts().len();
    let base = format_pass_count(gguf, None);
    let tuned = format_pass_count(gguf, Some(out.path().to_str().unwrap()));
    eprintln!("format followed: base {base}/{n}, fine-tuned {tuned}/{n}");
    assert!(
        base <= 1,
        "the base model already follows the format ({base}/{n})"
    );
    assert!(
        tuned * 4 >= n * 3,
        "only {tuned}/{n} held-out answers follow the format"
    );
}

/// Issue #15: the base Gemma 3 270M (its file has no chat template, so hone's
/// documented default Gemma template renders the turns for training and chat
/// alike) learns the same format from the same 32 examples. Kept short for CI:
/// 3 epochs, 32-token answers.
#[test]
#[ignore = "needs HONE_TEST_GEMMA_GGUF; trains for about a minute"]
fn sft_on_real_gemma_teaches_the_answer_format() {
    let gguf = std::env::var("HONE_TEST_GEMMA_GGUF")
        .expect("HONE_TEST_GEMMA_GGUF must point at gemma-3-270m-q4_k_m.gguf");
    assert!(PathBuf::from(&gguf).exists(), "{gguf} does not exist");
    let out = tempfile::tempdir().unwrap();
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/format/train.jsonl");
    let (ok, _, stderr) = hone(&[
        "train",
        "--model",
        &gguf,
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.path().to_str().unwrap(),
        "--epochs",
        "3",
        "--json-events",
    ]);
    assert!(ok, "hone train failed: {stderr}");
    let n = heldout_prompts().len();
    let base = format_pass_count(&gguf, None);
    let tuned = format_pass_count(&gguf, Some(out.path().to_str().unwrap()));
    eprintln!("gemma-3-270m format followed: base {base}/{n}, fine-tuned {tuned}/{n}");
    assert!(
        base <= 1,
        "the base model already follows the format ({base}/{n})"
    );
    assert!(
        tuned * 4 >= n * 3,
        "only {tuned}/{n} held-out answers follow the format"
    );
}

#[test]
fn the_format_checker_accepts_only_the_taught_format() {
    assert!(follows_format("Answer: Ten days | Source: policy-3\n"));
    assert!(!follows_format("Ten days. Source: policy-3"));
    assert!(!follows_format("Answer: Ten days | Source: policy-"));
    assert!(!follows_format("Answer:  | Source: policy-2x"));
}
