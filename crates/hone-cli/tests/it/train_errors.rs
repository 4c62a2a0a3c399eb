//! `hone train` refuses bad settings with a clear message before training starts.

use super::train_support::{setup, stderr};

fn fails_with(o: &std::process::Output, needles: &[&str]) {
    assert!(!o.status.success());
    let err = stderr(o);
    for n in needles {
        assert!(err.contains(n), "`{n}` not in: {err}");
    }
}

#[test]
fn impossible_max_seq_len_is_refused() {
    let s = setup(10, 7);
    let out = s.dir.path().join("out");
    let o = s.train(&out, &["--max-seq-len", "100000"]);
    fails_with(
        &o,
        &["--max-seq-len 100000", "context window", "256 tokens"],
    );
    // Shorter than every prompt: nothing would be trained.
    let o = s.train(&out, &["--max-seq-len", "4"]);
    fails_with(&o, &["--max-seq-len 4", "no trained token"]);
    let o = s.train(&out, &["--max-seq-len", "1"]);
    fails_with(&o, &["at least 2 tokens"]);
    assert!(!out.join("metrics.csv").exists());
}

#[test]
fn unknown_target_module_lists_the_valid_ones() {
    let s = setup(10, 7);
    let o = s.train(
        &s.dir.path().join("out"),
        &["--target-modules", "q_proj,wq"],
    );
    fails_with(
        &o,
        &[
            "`wq`",
            "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj",
        ],
    );
}

#[test]
fn resume_from_another_config_or_base_says_what_differs() {
    let s = setup(10, 7);
    let out = s.dir.path().join("out");
    let o = s.train(&out, &["--epochs", "1", "--batch-size", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = s.train(
        &out,
        &[
            "--epochs",
            "1",
            "--batch-size",
            "2",
            "--lora-alpha",
            "4",
            "--resume",
        ],
    );
    fails_with(
        &o,
        &[
            "other settings",
            "lora_alpha: checkpoint 16.0, this run 4.0",
        ],
    );
    // The same settings on a base with other weights.
    let other = setup(10, 8);
    let o = other.train(&out, &["--epochs", "1", "--batch-size", "2", "--resume"]);
    fails_with(&o, &["base model weights: checkpoint sha256"]);
    // Changing only how often checkpoints are written is fine.
    let o = s.train(
        &out,
        &[
            "--epochs",
            "1",
            "--batch-size",
            "2",
            "--keep-checkpoints",
            "4",
            "--resume",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
}
