//! `hone train` killed for real (SIGKILL, and Ctrl-C as SIGINT) and resumed: the
//! per-step losses equal an uninterrupted run's, bit for bit on CPU (architecture.md,
//! pitfall 7).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};

use super::train_support::{metrics, setup, stderr, Setup};

/// 48 examples, batch 2, 3 epochs: 72 steps of a tiny model, a checkpoint every 3.
const FLAGS: &[&str] = &[
    "--epochs",
    "3",
    "--batch-size",
    "2",
    "--lr-multiplier",
    "20",
    "--save-every-steps",
    "3",
    "--keep-checkpoints",
    "3",
    "--json-events",
];

/// Starts a run and waits until it reports a checkpoint at step >= `min_step`.
fn start_until_checkpoint_with(
    s: &Setup,
    out: &Path,
    min_step: u64,
    flags: &[&str],
) -> (Child, u64) {
    let mut child = s
        .train_cmd(out, flags)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    for line in BufReader::new(stdout).lines() {
        let ev: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        if ev["type"] == "checkpoint" && ev["step"].as_u64().unwrap() >= min_step {
            return (child, ev["step"].as_u64().unwrap());
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the run ended without a checkpoint at step {min_step}");
}

fn losses(out: &Path) -> Vec<(u64, f64)> {
    metrics(out)
        .iter()
        .map(|r| {
            (
                r["step"].as_u64().unwrap(),
                r["train_loss"].as_f64().unwrap(),
            )
        })
        .collect()
}

fn resume_and_compare_with(s: &Setup, full: &Path, cut: &Path, killed_after: u64, flags: &[&str]) {
    let o = s.train(cut, &[flags, &["--resume"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let start: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&o.stdout).lines().next().unwrap()).unwrap();
    let from = start["resumed_from_step"].as_u64().expect("resumed");
    assert!(from >= killed_after && from < 72, "{start}");
    let (a, b) = (losses(full), losses(cut));
    assert_eq!(a.len(), 72);
    assert_eq!(a, b, "per-step losses differ after resume");
    assert_eq!(
        std::fs::read(full.join("adapter_model.safetensors")).unwrap(),
        std::fs::read(cut.join("adapter_model.safetensors")).unwrap()
    );
}

#[test]
fn sigkill_then_resume_gives_the_uninterrupted_losses() {
    sigkill_then_resume(&[FLAGS, &["--base-weights", "f32"]].concat());
}

/// The same with bf16 products (AVX512_BF16 where the CPU has it, else the portable
/// kernel): the bf16 path is as deterministic as the f32 one.
#[test]
fn sigkill_then_resume_gives_the_uninterrupted_losses_with_bf16_base_weights() {
    sigkill_then_resume(&[FLAGS, &["--base-weights", "bf16"]].concat());
}

/// The same with the base kept in quantized blocks (`native`: the file's kinds the
/// decode kernels read, here Q8_0 re-quantized from the tiny F32 file; `q8_0`): the
/// panel products are as deterministic as the f32 ones.
#[test]
fn sigkill_then_resume_gives_the_uninterrupted_losses_with_block_base_weights() {
    for mode in ["native", "q8_0"] {
        sigkill_then_resume(&[FLAGS, &["--base-weights", mode]].concat());
    }
}

/// A checkpoint records its run's mode: `--resume` with the default `auto` takes it
/// (loading the blocks again) and replays the uninterrupted native run exactly, while
/// an explicit other mode is refused, naming the difference.
#[test]
fn a_resume_with_auto_keeps_the_checkpoints_base_weight_mode() {
    let native = [FLAGS, &["--base-weights", "native"]].concat();
    let s = setup(48, 7);
    let full = s.dir.path().join("full");
    let o = s.train(&full, &native);
    assert!(o.status.success(), "{}", stderr(&o));
    let cut = s.dir.path().join("cut");
    let (mut child, step) = start_until_checkpoint_with(&s, &cut, 6, &native);
    child.kill().unwrap();
    child.wait().unwrap();
    let o = s.train(
        &cut,
        &[FLAGS, &["--base-weights", "f32", "--resume"]].concat(),
    );
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("base_weights: checkpoint \"native\", this run \"f32\""),
        "{err}"
    );
    resume_and_compare_with(&s, &full, &cut, step, FLAGS);
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cut.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["config"]["base_weights"], "native");
}

/// `--gradient-checkpointing` recomputes activations without changing a bit: a run
/// with it, killed and resumed without it, gives the per-step losses and the adapter
/// bytes of an uninterrupted run that never used it.
#[test]
fn gradient_checkpointing_changes_no_step_and_a_resume_may_switch_it() {
    let f32_base = [FLAGS, &["--base-weights", "f32"]].concat();
    let s = setup(48, 7);
    let full = s.dir.path().join("full");
    let o = s.train(&full, &f32_base);
    assert!(o.status.success(), "{}", stderr(&o));
    let cut = s.dir.path().join("cut");
    let recompute = [&f32_base[..], &["--gradient-checkpointing"]].concat();
    let (mut child, step) = start_until_checkpoint_with(&s, &cut, 6, &recompute);
    child.kill().unwrap();
    child.wait().unwrap();
    resume_and_compare_with(&s, &full, &cut, step, &f32_base);
}

fn sigkill_then_resume(flags: &[&str]) {
    let s = setup(48, 7);
    let full = s.dir.path().join("full");
    let o = s.train(&full, flags);
    assert!(o.status.success(), "{}", stderr(&o));

    let cut = s.dir.path().join("cut");
    let (mut child, step) = start_until_checkpoint_with(&s, &cut, 6, flags);
    child.kill().unwrap(); // SIGKILL on Unix
    let status = child.wait().unwrap();
    assert!(!status.success());
    assert!(
        !cut.join("summary.json").exists(),
        "the run finished before the kill; make it longer"
    );
    resume_and_compare_with(&s, &full, &cut, step, flags);
}

#[test]
fn ctrl_c_checkpoints_exits_130_and_resumes_exactly() {
    let s = setup(48, 7);
    let full = s.dir.path().join("full");
    // A pinned mode: under `auto` each process measures bf16 against f32 itself
    // (`ops::bf16_speed`), so on a loaded AVX512_BF16 machine the uninterrupted run and
    // the stopped one could resolve differently, and the comparison would test that.
    let flags = &[FLAGS, &["--base-weights", "f32"]].concat();
    let o = s.train(&full, flags);
    assert!(o.status.success(), "{}", stderr(&o));

    let cut = s.dir.path().join("cut");
    let (mut child, step) = start_until_checkpoint_with(&s, &cut, 3, flags);
    let int = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(int.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(!cut.join("summary.json").exists());
    // The stop wrote a checkpoint at the step it stopped after (the last metrics row).
    let last = losses(&cut).last().unwrap().0;
    assert!(last >= step && last < 72);
    assert!(cut
        .join(format!("checkpoints/step-{last}/manifest.json"))
        .exists());
    resume_and_compare_with(&s, &full, &cut, last, flags);
}
