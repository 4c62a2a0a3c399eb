//! `hone model fetch hf:ORG/NAME` against a fake hub on localhost, and
//! `hone bench infer|train --model` on tiny models: by path, and by the hub
//! id once fetched (with the hub gone).

use std::path::Path;
use std::process::{Command, Output};

use hone_model::registry::fake_hub::{FakeFile, FakeHub, FakeRepo};
use hone_model::testing::{write_tiny_model, TinySpec};

use crate::train_support::hone_bin;

/// `hone ARGS` with its own HONE_HOME and hub settings only from `env`.
fn hone(home: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(hone_bin());
    c.args(args)
        .env("HONE_HOME", home)
        .env_remove("HF_ENDPOINT")
        .env_remove("HF_TOKEN")
        .env_remove("HONE_MODEL");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run hone")
}

fn ok(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "hone failed: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The one JSON line a bench command prints.
fn bench_json(out: &Output) -> serde_json::Value {
    let stdout = ok(out);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn check_infer(home: &Path, model: &str, env: &[(&str, &str)]) -> serde_json::Value {
    let out = hone(
        home,
        &[
            "bench",
            "infer",
            "--model",
            model,
            "--new-tokens",
            "4",
            "--runs",
            "1",
        ],
        env,
    );
    let v = bench_json(&out);
    assert_eq!(v["bench"], "infer");
    assert!(v["decode_tokens_per_s"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["prefill_tokens_per_s"].as_f64().unwrap() > 0.0, "{v}");
    v
}

fn check_train(home: &Path, model: &str, env: &[(&str, &str)]) -> serde_json::Value {
    let args = [
        "bench",
        "train",
        "--model",
        model,
        "--batch",
        "2",
        "--seq",
        "32",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--no-save",
    ];
    let v = bench_json(&hone(home, &args, env));
    assert_eq!(v["bench"], "train");
    assert!(v["tokens_per_second"].as_f64().unwrap() > 0.0, "{v}");
    // Two AdamW steps on the same batch lower its loss.
    let first = v["loss_first"].as_f64().unwrap();
    let last = v["loss_last"].as_f64().unwrap();
    assert!(first.is_finite() && last < first, "{v}");
    v
}

#[test]
fn bench_infer_and_train_run_on_a_tiny_model_path() {
    let dir = tempfile::tempdir().unwrap();
    let (gguf, _) = write_tiny_model(dir.path(), &TinySpec::default()).unwrap();
    let home = dir.path().join("home");
    let model = gguf.to_str().unwrap();
    assert_eq!(check_infer(&home, model, &[])["model"], "tiny");
    assert_eq!(check_train(&home, model, &[])["model"], "tiny");
}

#[test]
fn a_hub_model_is_fetched_printed_and_benched_offline() {
    let dir = tempfile::tempdir().unwrap();
    let (gguf, _) = write_tiny_model(dir.path(), &TinySpec::default()).unwrap();
    let bytes = std::fs::read(gguf).unwrap();
    let mut repo = FakeRepo::new(
        "test/Tiny-GGUF",
        vec![FakeFile::new("tiny-Q4_K_M.gguf", bytes.clone(), true)],
    );
    repo.token = Some("hf_secret".into());
    let hub = FakeHub::start(repo).unwrap();
    let home = dir.path().join("home");
    let at_hub = [("HF_ENDPOINT", hub.endpoint())];

    let out = hone(&home, &["model", "fetch", "hf:test/Tiny-GGUF"], &at_hub);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("HF_TOKEN"), "{stderr}");

    let with_token = [("HF_ENDPOINT", hub.endpoint()), ("HF_TOKEN", "hf_secret")];
    let stdout = ok(&hone(
        &home,
        &["model", "fetch", "hf:test/Tiny-GGUF"],
        &with_token,
    ));
    let (id, path) = stdout.trim().split_once('\t').expect("ID<TAB>PATH");
    assert_eq!(id, "hf--test--Tiny-GGUF");
    assert_eq!(std::fs::read(path).unwrap(), bytes);
    drop(hub);

    let gone = [("HF_ENDPOINT", "http://127.0.0.1:9")];
    let listed = ok(&hone(&home, &["model", "list"], &gone));
    assert!(
        listed.contains(id) && listed.contains("hf:test/Tiny-GGUF@main"),
        "{listed}"
    );
    for model in ["hf:test/Tiny-GGUF", id] {
        let v = check_infer(&home, model, &gone);
        assert_eq!(v["model"], id);
        assert_eq!(check_train(&home, model, &gone)["model"], id);
    }
    let out = hone(&home, &["model", "fetch", "hf:test/Other"], &gone);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("HF_ENDPOINT"),
        "{stderr}"
    );
}
