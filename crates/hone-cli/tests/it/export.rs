//! `hone merge` and `hone export` without `--model` on an adapter `hone train` wrote for
//! a base given by path: the adapter records the path (not the file stem, which resolved
//! to nothing and sent both commands to the default model), and both use it.

use std::process::Command;

use crate::train_support::{hone_bin, setup, stderr};

#[test]
fn merge_and_export_find_a_base_trained_by_path() {
    let s = setup(12, 11);
    let adapter = s.dir.path().join("adapter");
    let o = s.train(&adapter, &["--epochs", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    let model = std::fs::canonicalize(&s.model).unwrap();
    assert_eq!(cfg["hone_base_model"], model.display().to_string());

    let hone = |args: &[&str]| {
        let o = Command::new(hone_bin())
            .args(args)
            .env("HONE_HOME", s.dir.path().join("home"))
            .output()
            .unwrap();
        assert!(o.status.success(), "hone {args:?}: {}", stderr(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let a = adapter.display().to_string();
    let merged = s.dir.path().join("merged");
    let out = hone(&[
        "merge",
        "--adapter",
        &a,
        "--out",
        &merged.display().to_string(),
    ]);
    let stem = model.file_stem().unwrap().to_string_lossy().into_owned();
    assert!(out.contains(&format!("into {stem} ")), "{out}");
    let exported = s.dir.path().join("exported");
    let ex = exported.display().to_string();
    hone(&["export", "--adapter", &a, "--out", &ex, "--type", "f16"]);
    assert!(exported.join("model-f16.gguf").exists());
    let mf = std::fs::read_to_string(exported.join("Modelfile.adapter")).unwrap();
    assert!(mf.contains(&format!("FROM {}", model.display())), "{mf}");
    // `hone chat` on the same path does not warn that the adapter is another base's.
    let o = Command::new(hone_bin())
        .args([
            "chat",
            "--model",
            &s.model.display().to_string(),
            "--adapter",
            &a,
        ])
        .args(["--temperature", "0", "--max-tokens", "2", "hi"])
        .env("HONE_HOME", s.dir.path().join("home"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("was trained on"), "{}", stderr(&o));
}
