//! Shared helpers of the `hone train` binary tests: a tiny model and data in a temp
//! dir, and the binary (`HONE_BIN`, or the one Cargo built).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hone_model::testing::{write_tiny_model, TinySpec};

pub fn hone_bin() -> PathBuf {
    std::env::var_os("HONE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_hone")))
}

/// A temp dir with a tiny GGUF model (`seed` picks its weights) and `n` chats.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub model: PathBuf,
    pub data: PathBuf,
}

pub fn setup(n: usize, seed: u64) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let spec = TinySpec {
        seed,
        ..TinySpec::default()
    };
    let model_dir = dir.path().join("model");
    std::fs::create_dir_all(&model_dir).unwrap();
    let (model, _) = write_tiny_model(&model_dir, &spec).unwrap();
    let data = dir.path().join("train.jsonl");
    let lines: Vec<String> = (0..n)
        .map(|i| {
            serde_json::json!({"messages": [
                {"role": "user", "content": format!("question number {i}?")},
                {"role": "assistant", "content": format!("answer {i}: {}", "ok ".repeat(i % 5))},
            ]})
            .to_string()
        })
        .collect();
    std::fs::write(&data, lines.join("\n")).unwrap();
    Setup { dir, model, data }
}

impl Setup {
    /// `hone train` on this model and data, writing into `out`, plus `extra` flags.
    pub fn train_cmd(&self, out: &Path, extra: &[&str]) -> Command {
        let mut c = Command::new(hone_bin());
        c.arg("train")
            .arg("--data")
            .arg(&self.data)
            .arg("--model")
            .arg(&self.model)
            .arg("--out")
            .arg(out)
            .args(["--seed", "3", "--lora-r", "4"])
            .args(extra)
            .env("HONE_HOME", self.dir.path().join("home"));
        c
    }

    pub fn train(&self, out: &Path, extra: &[&str]) -> Output {
        self.train_cmd(out, extra).output().unwrap()
    }
}

/// `metrics.jsonl` rows as JSON values.
pub fn metrics(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
