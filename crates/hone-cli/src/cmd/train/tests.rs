//! `hone train`'s tests: a tiny run end to end, early failures, and that the CLI and
//! the server build the same job.

use super::*;
use clap::Parser;
use hone_model::WeightPath;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: TrainArgs,
}

fn write_data(path: &Path, n: usize) {
    let lines: Vec<String> = (0..n)
        .map(|i| {
            serde_json::json!({"messages": [
                {"role": "user", "content": format!("q{i}")},
                {"role": "assistant", "content": format!("answer {i}")},
            ]})
            .to_string()
        })
        .collect();
    std::fs::write(path, lines.join("\n")).unwrap();
}

fn args(dir: &Path, model: &Path, extra: &[&str]) -> TrainArgs {
    let mut argv = vec![
        "hone".to_string(),
        "--data".into(),
        dir.join("train.jsonl").display().to_string(),
        "--model".into(),
        model.display().to_string(),
        "--out".into(),
        dir.join("out").display().to_string(),
        "--epochs".into(),
        "2".into(),
    ];
    argv.extend(extra.iter().map(|s| s.to_string()));
    Cli::try_parse_from(argv).unwrap().args
}

#[test]
fn trains_a_tiny_model_end_to_end_and_writes_the_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let spec = hone_model::testing::TinySpec::default();
    let (gguf, _) = hone_model::testing::write_tiny_model(dir.path(), &spec).unwrap();
    write_data(&dir.path().join("train.jsonl"), 12);
    let code = run(args(
        dir.path(),
        &gguf,
        &["--batch-size", "4", "--json-events"],
    ))
    .unwrap();
    assert_eq!(code, ExitCode::SUCCESS);
    let out = dir.path().join("out");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["steps"], 6);
    // The default targets all linear layers at auto lr 1e-3.
    assert_eq!(
        summary["config"]["target_modules"]
            .as_array()
            .unwrap()
            .len(),
        7
    );
    assert_eq!(summary["config"]["learning_rate"], 1e-3);
    let mut m = hone_model::load_model(&gguf, WeightPath::F32).unwrap();
    hone_model::load_peft_adapter(&mut m, &out).unwrap();
}

fn write_pairs(path: &Path, n: usize) {
    let lines: Vec<String> = (0..n)
        .map(|i| {
            serde_json::json!({
                "input": {"messages": [{"role": "user", "content": format!("q{i}")}]},
                "preferred_output": [{"role": "assistant", "content": "good answer"}],
                "non_preferred_output": [{"role": "assistant", "content": "bad"}],
            })
            .to_string()
        })
        .collect();
    std::fs::write(path, lines.join("\n")).unwrap();
}

/// `hone train` flags, nothing added.
fn flags(dir: &Path, model: &Path, extra: &[&str]) -> TrainArgs {
    let mut argv: Vec<String> = vec![
        "hone".into(),
        "--data".into(),
        dir.join("train.jsonl").display().to_string(),
        "--validation".into(),
        dir.join("valid.jsonl").display().to_string(),
        "--model".into(),
        model.display().to_string(),
        "--out".into(),
        dir.join("out").display().to_string(),
    ];
    argv.extend(extra.iter().map(|s| s.to_string()));
    Cli::try_parse_from(argv).unwrap().args
}

/// Issue #14: the CLI and the server build the same job from the same file and
/// the same settings: the same options, the same resolved hyperparameters (with
/// the same reasons) and the same `TrainConfig`. With everything "auto" this is the
/// drift that was fixed: the server now sizes the learning rate by the model's
/// parameter count, as the CLI does.
#[test]
fn the_cli_and_the_server_build_the_same_job() {
    use hone_serve::api::{Hyperparameters, MethodType};
    let dir = tempfile::tempdir().unwrap();
    let spec = hone_model::testing::TinySpec::default();
    let (gguf, _) = hone_model::testing::write_tiny_model(dir.path(), &spec).unwrap();
    let engine =
        crate::cmd::chat::load_engine(&gguf.display().to_string(), WeightPath::F32).unwrap();
    let base = BaseModel {
        id: &engine.id,
        config: &engine.model.cfg,
        tokenizer: &engine.tokenizer,
    };
    let build = |opts: &JobOptions| {
        let data = TrainData::read(
            opts.method,
            &dir.path().join("train.jsonl"),
            Some(&dir.path().join("valid.jsonl")),
        )
        .unwrap();
        TrainJob::build(opts, data, base).unwrap()
    };
    let server = hone_serve::TrainerOptions::default();
    // The server checkpoints every 20 steps by default; the CLI's flag for it.
    let cases: [(MethodType, &[&str], serde_json::Value, i64); 3] = [
        (
            MethodType::Supervised,
            &["--save-every-steps", "20"],
            serde_json::json!({}),
            42,
        ),
        (
            MethodType::Supervised,
            &[
                "--save-every-steps",
                "20",
                "--epochs",
                "2",
                "--batch-size",
                "4",
                "--lr-multiplier",
                "2",
                "--seed",
                "7",
            ],
            serde_json::json!({"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 2.0}),
            7,
        ),
        (
            MethodType::Dpo,
            &[
                "--save-every-steps",
                "20",
                "--method",
                "dpo",
                "--beta",
                "0.25",
            ],
            serde_json::json!({"beta": 0.25}),
            42,
        ),
    ];
    for (method, extra, hp, seed) in cases {
        if method == MethodType::Dpo {
            write_pairs(&dir.path().join("train.jsonl"), 12);
            write_pairs(&dir.path().join("valid.jsonl"), 3);
        } else {
            write_data(&dir.path().join("train.jsonl"), 12);
            write_data(&dir.path().join("valid.jsonl"), 3);
        }
        let cli = job_options(&flags(dir.path(), &gguf, extra)).unwrap();
        let h: Hyperparameters = serde_json::from_value(hp).unwrap();
        let srv = server.job_options(method, &h, seed).unwrap();
        assert_eq!(cli, srv, "{extra:?}");
        let (a, b) = (build(&cli), build(&srv));
        assert_eq!(a.hyperparameters, b.hyperparameters, "{extra:?}");
        assert_eq!(a.config, b.config, "{extra:?}");
        assert_eq!(a.beta, b.beta, "{extra:?}");
        assert_eq!(a.data.n_train(), 12);
        assert_eq!(a.data.n_valid(), 3);
        if h.learning_rate_multiplier.value().is_none() {
            // "auto" was resolved with the model's size, not as a model of unknown size.
            let why = &b
                .hyperparameters
                .reasons
                .iter()
                .find(|r| r.param == "learning_rate_multiplier")
                .unwrap()
                .why;
            assert!(why.contains("M-parameter model"), "{why}");
        }
    }
}

#[test]
fn invalid_data_fails_before_loading_the_model() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("train.jsonl"), "not json\n").unwrap();
    let missing_model = dir.path().join("no-such-model.gguf");
    let code = run(args(dir.path(), &missing_model, &[])).unwrap();
    assert_eq!(code, ExitCode::from(1));
    assert!(!dir.path().join("out").exists());
    let code = run(args(dir.path(), &missing_model, &["--method", "dpo"])).unwrap();
    assert_eq!(code, ExitCode::from(1));
    let err = run(args(dir.path(), &missing_model, &["--beta", "0.2"])).unwrap_err();
    assert!(err.to_string().contains("dpo only"), "{err}");
    assert!(!dir.path().join("out").exists());
    let err = run(args(
        dir.path(),
        &missing_model,
        &["--target-modules", "wq"],
    ))
    .unwrap_err();
    assert!(format!("{err:#}").contains("q_proj"));
}

/// `--method sft+dpo`: SFT on the preferred answers into OUT/sft, then DPO from that
/// adapter into OUT, whose reference is the SFT model (so its first loss is ln 2).
#[test]
fn sft_then_dpo_runs_both_stages_and_dpo_continues_the_sft_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let spec = hone_model::testing::TinySpec::default();
    let (gguf, _) = hone_model::testing::write_tiny_model(dir.path(), &spec).unwrap();
    write_pairs(&dir.path().join("train.jsonl"), 12);
    let extra = ["--method", "sft+dpo", "--batch-size", "4", "--json-events"];
    let code = run(args(dir.path(), &gguf, &extra)).unwrap();
    assert_eq!(code, ExitCode::SUCCESS);
    let out = dir.path().join("out");
    let read = |p: &Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p.join("summary.json")).unwrap()).unwrap()
    };
    let (sft, dpo) = (read(&out.join(SFT_STAGE_DIR)), read(&out));
    assert_eq!(sft["method"], "sft");
    assert_eq!(dpo["method"], "dpo");
    assert_eq!(
        (sft["steps"].as_u64(), dpo["steps"].as_u64()),
        (Some(6), Some(6))
    );
    assert_eq!(
        dpo["config"]["init_adapter"].as_str().map(PathBuf::from),
        Some(out.join(SFT_STAGE_DIR))
    );
    assert_eq!(dpo["config"]["lora_r"], sft["config"]["lora_r"]);
    let first = dpo["losses"][0].as_f64().unwrap();
    assert!((first - std::f64::consts::LN_2).abs() < 1e-5, "{first}");
    // The SFT stage learned the preferred answers: its loss fell.
    let losses: Vec<f64> = serde_json::from_value(sft["losses"].clone()).unwrap();
    assert!(losses.last().unwrap() < &losses[0], "{losses:?}");
    for d in [out.clone(), out.join(SFT_STAGE_DIR)] {
        let mut m = hone_model::load_model(&gguf, WeightPath::F32).unwrap();
        hone_model::load_peft_adapter(&mut m, &d).unwrap();
    }
    // SFT data is not preference data.
    write_data(&dir.path().join("train.jsonl"), 12);
    let code = run(args(dir.path(), &gguf, &["--method", "sft+dpo"])).unwrap();
    assert_eq!(code, ExitCode::from(1));
}

/// `--init-adapter` trains the adapter's shape; a LoRA flag that contradicts it is an
/// error naming the flag, before any model is loaded.
#[test]
fn init_adapter_takes_the_adapters_shape_and_refuses_a_conflicting_flag() {
    let dir = tempfile::tempdir().unwrap();
    let adapter = dir.path().join("adapter");
    std::fs::create_dir_all(&adapter).unwrap();
    let lora = LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        target_modules: vec!["q_proj".into()],
        trainable_tokens: Vec::new(),
    };
    let peft = hone_model::PeftConfig::from_lora(&lora, "tiny");
    std::fs::write(
        adapter.join(hone_model::lora::ADAPTER_CONFIG_FILE),
        serde_json::to_vec(&peft).unwrap(),
    )
    .unwrap();
    std::fs::write(adapter.join(hone_model::lora::ADAPTER_WEIGHTS_FILE), b"").unwrap();
    let missing_model = dir.path().join("no-such-model.gguf");
    let a = adapter.display().to_string();
    let o = job_options(&args(dir.path(), &missing_model, &["--init-adapter", &a])).unwrap();
    assert_eq!((o.lora_r, o.lora_alpha), (4, 8.0));
    assert_eq!(o.target_modules, vec!["q_proj"]);
    let o = job_options(&args(
        dir.path(),
        &missing_model,
        &["--init-adapter", &a, "--lora-r", "4"],
    ))
    .unwrap();
    assert_eq!(o.lora_r, 4);
    let err = job_options(&args(
        dir.path(),
        &missing_model,
        &["--init-adapter", &a, "--lora-r", "16"],
    ))
    .unwrap_err();
    assert!(
        err.to_string().starts_with("--lora-r 16 conflicts"),
        "{err}"
    );
    let err = job_options(&args(
        dir.path(),
        &missing_model,
        &[
            "--init-adapter",
            &dir.path().join("none").display().to_string(),
        ],
    ))
    .unwrap_err();
    assert!(
        err.to_string().starts_with("--init-adapter: reading"),
        "{err}"
    );
}
