use super::*;
use crate::api::AutoOr;
use hone_model::lora::{ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE};

fn chats(path: &Path, n: usize) {
    let lines: String = (0..n)
        .map(|i| {
            serde_json::json!({"messages": [
                {"role": "user", "content": format!("q{i}")},
                {"role": "assistant", "content": format!("a{i}")},
            ]})
            .to_string()
                + "\n"
        })
        .collect();
    std::fs::write(path, lines).unwrap();
}

#[test]
fn a_rejected_file_fails_the_job_with_its_param_and_full_report() {
    let dir = tempfile::tempdir().unwrap();
    let (good, bad) = (dir.path().join("good.jsonl"), dir.path().join("bad.jsonl"));
    chats(&good, 10);
    std::fs::write(&bad, "not json\n{\"messages\": []}\n").unwrap();
    let read =
        |t: &Path, v: Option<&Path>| TrainData::read(hone_data::Method::Sft, t, v).map(|_| ());
    assert!(read(&good, Some(&good)).is_ok());
    let e = job_error_of(&read(&bad, None).unwrap_err().into());
    assert_eq!(e.code, "invalid_training_file");
    assert_eq!(e.param.as_deref(), Some("training_file"));
    let e = job_error_of(&read(&good, Some(&bad)).unwrap_err().into());
    assert_eq!(e.code, "invalid_validation_file");
    assert_eq!(e.param.as_deref(), Some("validation_file"));
    // The full report: both bad lines, by number.
    assert!(
        e.message.contains("line 1") && e.message.contains("line 2"),
        "{}",
        e.message
    );
}

#[test]
fn training_options_map_the_api_onto_the_shared_builder() {
    let o = TrainerOptions {
        keep_checkpoints: 0,
        ..TrainerOptions::default()
    };
    let h = Hyperparameters {
        n_epochs: AutoOr::Value(3),
        beta: Some(AutoOr::Value(0.3)),
        ..Hyperparameters::default()
    };
    let sft = o.job_options(MethodType::Supervised, &h, 5).unwrap();
    assert_eq!(sft.overrides.n_epochs, Some(3));
    assert_eq!(sft.overrides.batch_size, None, "auto stays auto");
    assert_eq!(sft.overrides.beta, None, "beta is DPO's only");
    assert_eq!((sft.seed, sft.keep_checkpoints), (5, 1));
    assert_eq!(sft.max_seq_len, MaxSeqLen::UpTo(o.max_seq_len));
    let dpo = o.job_options(MethodType::Dpo, &h, 5).unwrap();
    assert_eq!(dpo.overrides.beta, Some(0.3));
    let e = o.job_options(MethodType::Reinforcement, &h, 5).unwrap_err();
    assert_eq!(e.code, "unsupported_method");
    assert!(!sft.gradient_checkpointing, "off unless the server says so");
    let on = TrainerOptions {
        gradient_checkpointing: true,
        ..TrainerOptions::default()
    };
    let sft = on.job_options(MethodType::Supervised, &h, 5).unwrap();
    assert!(sft.gradient_checkpointing);
}

/// The server's checkpoint adapters are for other processes too (a separate inference
/// service, `hone export` as another user): the umask's modes even when the source files
/// are 0600, a stale copy replaced, no staging directory left.
#[cfg(unix)]
#[test]
fn checkpoint_adapters_are_copied_with_the_umask_mode() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("step-2");
    std::fs::create_dir(&src).unwrap();
    for name in [ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE] {
        std::fs::write(src.join(name), name).unwrap();
        std::fs::set_permissions(src.join(name), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let models = dir.path().join("models");
    let dest = models.join("ckpt-step-2");
    std::fs::create_dir_all(&dest).unwrap();
    std::fs::write(dest.join("stale"), b"old").unwrap();
    copy_adapter(&src, &dest).unwrap();
    let umask = hone_model::atomic_file::umask();
    assert_eq!(mode(&dest), 0o777 & !umask);
    for name in [ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE] {
        assert_eq!(mode(&dest.join(name)), 0o666 & !umask, "{name}");
        assert_eq!(std::fs::read_to_string(dest.join(name)).unwrap(), name);
    }
    assert!(!dest.join("stale").exists());
    let names: Vec<_> = std::fs::read_dir(&models).unwrap().collect();
    assert_eq!(names.len(), 1, "no staging directory left");
}
