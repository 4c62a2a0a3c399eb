//! The SFT loop end to end on a tiny random model with a byte-level tokenizer.

use std::path::Path;

use candle_core::Tensor;
use hone_data::{ChatMessage, Role, SftExample};
use hone_model::testing::max_abs;
use hone_model::{load_model, BaseWeight, Llama, WeightPath};
use hone_train::sft::{tokenize_sft, train_sft, SftConfig, SftSummary};
use hone_train::{AdamWConfig, ScheduleKind, TrainEvent, VecSink};

use crate::common::{fixture, Fixture};

fn chat(q: &str, a: &str) -> SftExample {
    SftExample {
        messages: vec![
            ChatMessage::new(Role::User, q),
            ChatMessage::new(Role::Assistant, a),
        ],
        tools: None,
        parallel_tool_calls: None,
    }
}

fn data() -> Vec<SftExample> {
    vec![
        chat("hi", "hello there"),
        chat("2+2?", "four"),
        chat("sky?", "blue"),
        chat("cat?", "meow meow"),
    ]
}

fn config(epochs: u32) -> SftConfig {
    SftConfig {
        epochs,
        batch_size: 2,
        grad_accum: 1,
        learning_rate: 1e-2,
        schedule: ScheduleKind::Constant,
        warmup_ratio: 0.0,
        max_seq_len: 64,
        seed: 42,
        lora_r: 4,
        lora_alpha: 8.0,
        lora_dropout: 0.0,
        target_modules: vec![
            "q_proj".into(),
            "k_proj".into(),
            "v_proj".into(),
            "o_proj".into(),
            "gate_proj".into(),
            "up_proj".into(),
            "down_proj".into(),
        ],
        adamw: AdamWConfig::default(),
        keep_checkpoints: 2,
        checkpoint_every: 0,
        base_model: "tiny".into(),
        pad_id: 0,
        init_adapter: None,
        packing: false,
        base_weights: hone_model::ops::BaseWeights::F32,
        gradient_checkpointing: false,
        early_stopping_patience: None,
        trainable_tokens: Vec::new(),
    }
}

fn run(f: &mut Fixture, cfg: &SftConfig, out: &Path) -> (SftSummary, VecSink) {
    let train = tokenize_sft(&f.tok, &data(), cfg.max_seq_len).unwrap();
    let valid = tokenize_sft(&f.tok, &data()[..2], cfg.max_seq_len).unwrap();
    let mut sink = VecSink::default();
    let s = train_sft(
        &mut f.model,
        &train.examples,
        &valid.examples,
        cfg,
        out,
        &mut sink,
    )
    .unwrap();
    (s, sink)
}

fn base_weights(m: &Llama) -> Vec<Vec<f32>> {
    let mut out = Vec::new();
    for blk in &m.layers {
        for lin in [
            &blk.self_attn.q_proj,
            &blk.self_attn.v_proj,
            &blk.mlp.down_proj,
        ] {
            if let BaseWeight::Dense(w) = lin.base() {
                out.push(w.flatten_all().unwrap().to_vec1::<f32>().unwrap());
            }
        }
        out.push(blk.input_layernorm.to_vec1::<f32>().unwrap());
    }
    out
}

#[test]
fn loss_goes_down_on_a_memorisable_dataset() {
    let mut f = fixture();
    let out = tempfile::tempdir().unwrap();
    let (s, _) = run(&mut f, &config(8), out.path());
    assert_eq!(s.steps, 16);
    let first = (s.losses[0] + s.losses[1]) / 2.0;
    let last = (s.losses[14] + s.losses[15]) / 2.0;
    assert!(last < first * 0.7, "loss {first} -> {last}: {:?}", s.losses);
}

#[test]
fn same_seed_gives_the_same_loss_sequence() {
    let out = tempfile::tempdir().unwrap();
    let mut f1 = fixture();
    let (a, _) = run(&mut f1, &config(2), &out.path().join("a"));
    let mut f2 = fixture();
    let (b, _) = run(&mut f2, &config(2), &out.path().join("b"));
    assert_eq!(a.losses, b.losses);
    let mut f3 = fixture();
    let cfg = SftConfig {
        seed: 7,
        ..config(2)
    };
    let (c, _) = run(&mut f3, &cfg, &out.path().join("c"));
    assert_ne!(a.losses, c.losses);
}

#[test]
fn base_weights_stay_bit_identical_and_lora_weights_change() {
    let mut f = fixture();
    let before = base_weights(&f.model);
    let out = tempfile::tempdir().unwrap();
    run(&mut f, &config(1), out.path());
    assert_eq!(before, base_weights(&f.model));
    let ad = f.model.layers[0].self_attn.q_proj.adapter().unwrap();
    let bmax =
        ad.b.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
    assert!(bmax > 0.0, "LoRA B never moved from zero");
    // The saved adapter is what the model now holds.
    let saved = candle_core::safetensors::load(
        out.path().join("adapter_model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let key = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight";
    assert_eq!(max_abs(&(&saved[key] - &ad.b).unwrap()), 0.0);
}

#[test]
fn grad_accumulation_gives_the_same_steps_as_the_whole_batch() {
    let out = tempfile::tempdir().unwrap();
    let mut f1 = fixture();
    let (a, _) = run(&mut f1, &config(2), &out.path().join("a"));
    let mut f2 = fixture();
    let cfg = SftConfig {
        grad_accum: 2,
        ..config(2)
    };
    let (b, _) = run(&mut f2, &cfg, &out.path().join("b"));
    for (x, y) in a.losses.iter().zip(&b.losses) {
        assert!((x - y).abs() < 1e-4, "{:?} vs {:?}", a.losses, b.losses);
    }
}

#[test]
fn outputs_metrics_checkpoints_and_events_are_written() {
    let mut f = fixture();
    let out = tempfile::tempdir().unwrap();
    let (s, sink) = run(&mut f, &config(3), out.path());
    let o = out.path();
    for file in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "metrics.csv",
        "metrics.jsonl",
        "summary.json",
    ] {
        assert!(o.join(file).exists(), "{file} missing");
    }
    let csv = std::fs::read_to_string(o.join("metrics.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy"
    );
    assert_eq!(lines.len(), 1 + s.steps as usize);
    // Validation at each epoch end (steps 2, 4, 6), empty elsewhere.
    assert!(lines[1].ends_with(",,"));
    assert!(!lines[2].ends_with(",,"));
    let n_valid = sink
        .events
        .iter()
        .filter(|e| matches!(e, TrainEvent::Validation { .. }))
        .count();
    assert_eq!(n_valid, 3);
    assert!(matches!(
        sink.events[0],
        TrainEvent::Start { total_steps: 6, .. }
    ));
    assert!(matches!(
        sink.events.last(),
        Some(TrainEvent::Done { steps: 6, .. })
    ));
    // Keep the last 2 of 3 epoch checkpoints, each verified by its manifest.
    let ck = o.join("checkpoints");
    let mut dirs: Vec<String> = std::fs::read_dir(&ck)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    assert_eq!(dirs.len(), 2, "{dirs:?}");
    let latest = hone_train::latest_valid(&ck).unwrap().unwrap();
    assert_eq!(latest.step, 6);
    for f in [
        "adapter_model.safetensors",
        "optimizer.safetensors",
        "trainer_state.json",
    ] {
        assert!(latest.file(f).exists());
    }
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(o.join("summary.json")).unwrap()).unwrap();
    assert!(summary["trained_tokens"].as_u64().unwrap() > 0);
    assert!(summary["final_valid_loss"].as_f64().is_some());
}

#[test]
fn loss_mask_trains_im_end_after_each_assistant_turn() {
    let f = fixture();
    let ex = SftExample {
        messages: vec![
            ChatMessage::new(Role::User, "a"),
            ChatMessage::new(Role::Assistant, "b"),
            ChatMessage::new(Role::User, "c"),
            ChatMessage::new(Role::Assistant, "d"),
        ],
        tools: None,
        parallel_tool_calls: None,
    };
    let t = tokenize_sft(&f.tok, &[ex], 256).unwrap();
    let e = &t.examples[0];
    let im_end = f.tok.tokenizer.token_to_id("<|im_end|>").unwrap();
    let trained_ends = e
        .ids
        .iter()
        .zip(&e.loss_mask)
        .filter(|(id, m)| **id == im_end && **m)
        .count();
    let all_ends = e.ids.iter().filter(|id| **id == im_end).count();
    assert_eq!(trained_ends, 2, "one trained <|im_end|> per assistant turn");
    assert!(all_ends >= 4, "user turns end too, untrained");
    // And the trainer's batch keeps them as targets after the shift.
    let b = hone_train::batch::Batch::from_examples(&[e], 0);
    let targets_end = b
        .targets
        .iter()
        .zip(&b.mask)
        .filter(|(t, m)| **t == im_end && **m > 0.0)
        .count();
    assert_eq!(targets_end, 2);
    let _ = Tensor::new(0u32, &candle_core::Device::Cpu);
}

#[test]
fn truncation_is_counted() {
    let f = fixture();
    let t = tokenize_sft(&f.tok, &data(), 8).unwrap();
    assert_eq!(t.truncated, 4);
    assert!(t.examples.iter().all(|e| e.ids.len() == 8));
}

/// The real model through the TRAIN-mode path, against PyTorch's mean CE on the bench
/// batch (labels = input ids, all 4×255 positions) with LoRA B = 0.
#[test]
#[ignore = "needs HONE_TEST_GGUF (SmolLM2-135M-Instruct GGUF)"]
fn real_model_train_path_cross_entropy_matches_pytorch() {
    let path = std::env::var("HONE_TEST_GGUF").expect("HONE_TEST_GGUF");
    let data = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/train_batch_4x256.json"
    );
    let data = std::env::var("HONE_TEST_TRAIN_BATCH").unwrap_or_else(|_| data.to_string());
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&data).expect("batch file")).unwrap();
    let rows: Vec<Vec<u32>> = serde_json::from_value(v["input_ids"].clone()).unwrap();
    let mut model = load_model(Path::new(&path), WeightPath::F32).unwrap();
    let lora = hone_model::LoraConfig {
        target_modules: hone_model::LoraConfig::parse_target_modules("all-linear").unwrap(),
        ..Default::default()
    };
    let params = hone_model::LoraParams::attach(&mut model, &lora, 0).unwrap();
    let (b, t) = (rows.len(), rows[0].len() - 1);
    let input: Vec<u32> = rows.iter().flat_map(|r| r[..t].to_vec()).collect();
    let target: Vec<u32> = rows.iter().flat_map(|r| r[1..].to_vec()).collect();
    let dev = candle_core::Device::Cpu;
    let input = Tensor::from_vec(input, (b, t), &dev).unwrap();
    let target = Tensor::from_vec(target, (b, t), &dev).unwrap();
    let mask = Tensor::ones((b, t), candle_core::DType::F32, &dev).unwrap();
    let start = std::time::Instant::now();
    let out = model
        .train_loss(&input, &target, &mask, hone_model::TrainOptions::default())
        .unwrap();
    let fwd = start.elapsed();
    let ce = out.loss.to_scalar::<f32>().unwrap();
    let grads = out.loss.backward().unwrap();
    let step = start.elapsed();
    for (name, var) in params.trainable() {
        assert!(grads.get(var.as_tensor()).is_some(), "no grad for {name}");
    }
    eprintln!(
        "mean CE {ce:.5}; forward {:.2} s, forward+backward {:.2} s ({:.0} tokens/s)",
        fwd.as_secs_f64(),
        step.as_secs_f64(),
        (b * t) as f64 / step.as_secs_f64()
    );
    assert!((ce - 1.2436).abs() < 1e-3, "mean CE {ce}, PyTorch 1.2436");
}

/// A run interrupted after epoch 1 (later checkpoints gone, metrics rows of the lost
/// steps still on disk) resumes to the same losses and adapter as an uninterrupted run.
#[test]
fn resume_from_an_epoch_checkpoint_reproduces_the_uninterrupted_run() {
    resume_reproduces_the_uninterrupted_run(false);
}

/// The same with `--packing`: the data cursor counts examples, not packed rows, so a
/// resumed packed run replays exactly the steps an uninterrupted packed run takes.
#[test]
fn resume_with_packing_reproduces_the_uninterrupted_run() {
    resume_reproduces_the_uninterrupted_run(true);
}

/// With trainable token rows (tokens of the answers): their values and optimizer
/// moments are checkpointed like the LoRA matrices, so the resume is exact too, and the
/// adapter holds them under PEFT's key.
#[test]
fn resume_with_trainable_token_rows_reproduces_the_uninterrupted_run() {
    let out = resume_reproduces(false, &["e", "o"]);
    let tensors = candle_core::safetensors::load(
        out.path().join("adapter_model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let rows = &tensors["base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta"];
    assert_eq!(rows.dims()[0], 2);
}

fn resume_reproduces_the_uninterrupted_run(packing: bool) {
    resume_reproduces(packing, &[]);
}

fn resume_reproduces(packing: bool, tokens: &[&str]) -> tempfile::TempDir {
    let ids = {
        let f = fixture();
        tokens
            .iter()
            .map(|t| f.tok.tokenizer.token_to_id(t).expect("a byte token"))
            .collect()
    };
    let cfg = SftConfig {
        trainable_tokens: ids,
        packing,
        // Room for a whole batch of these short chats in one packed row.
        max_seq_len: if packing { 256 } else { 64 },
        keep_checkpoints: 5,
        schedule: ScheduleKind::Linear,
        warmup_ratio: 0.2,
        lora_dropout: 0.1,
        ..config(3)
    };
    let out = tempfile::tempdir().unwrap();
    let mut f = fixture();
    let (full, _) = run(&mut f, &cfg, out.path());
    let want = std::fs::read(out.path().join("adapter_model.safetensors")).unwrap();
    let want_csv = std::fs::read_to_string(out.path().join("metrics.csv")).unwrap();
    // "Kill" after step 2: the checkpoints of steps 4 and 6 never happened.
    let ck = out.path().join("checkpoints");
    std::fs::remove_dir_all(ck.join("step-4")).unwrap();
    std::fs::remove_dir_all(ck.join("step-6")).unwrap();
    std::fs::remove_file(out.path().join("adapter_model.safetensors")).unwrap();

    let mut g = fixture();
    let train = tokenize_sft(&g.tok, &data(), cfg.max_seq_len).unwrap();
    let valid = tokenize_sft(&g.tok, &data()[..2], cfg.max_seq_len).unwrap();
    let mut sink = VecSink::default();
    let resumed = hone_train::resume_sft(
        &mut g.model,
        &train.examples,
        &valid.examples,
        &cfg,
        out.path(),
        &mut sink,
    )
    .unwrap();
    assert!(matches!(
        sink.events[0],
        TrainEvent::Start {
            resumed_from_step: Some(2),
            ..
        }
    ));
    let n_steps = sink
        .events
        .iter()
        .filter(|e| matches!(e, TrainEvent::Step { .. }))
        .count();
    assert_eq!(n_steps, 4);
    assert_eq!(resumed.losses, full.losses);
    assert_eq!(resumed.trained_tokens, full.trained_tokens);
    let got = std::fs::read(out.path().join("adapter_model.safetensors")).unwrap();
    assert!(got == want, "resumed adapter differs");
    let got_csv = std::fs::read_to_string(out.path().join("metrics.csv")).unwrap();
    assert_eq!(got_csv, want_csv);
    out
}

#[test]
fn resume_refuses_a_checkpoint_from_other_settings() {
    let out = tempfile::tempdir().unwrap();
    let mut f = fixture();
    run(&mut f, &config(2), out.path());
    let mut g = fixture();
    let train = tokenize_sft(&g.tok, &data(), 64).unwrap();
    let other = SftConfig {
        seed: 1,
        ..config(2)
    };
    let err = hone_train::resume_sft(
        &mut g.model,
        &train.examples,
        &[],
        &other,
        out.path(),
        &mut VecSink::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("other settings"), "{err}");
}

/// Sets the cancel flag when step `at` is reported, as Ctrl-C would.
struct CancelAt {
    at: u64,
    flag: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl hone_train::EventSink for CancelAt {
    fn emit(&mut self, e: &TrainEvent) {
        if let TrainEvent::Step { step, .. } = e {
            if *step == self.at {
                self.flag.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}

#[test]
fn cancel_mid_epoch_checkpoints_and_resume_finishes_identically() {
    let cfg = SftConfig {
        keep_checkpoints: 5,
        schedule: ScheduleKind::Cosine,
        ..config(3)
    };
    let out = tempfile::tempdir().unwrap();
    let mut f = fixture();
    let (full, _) = run(&mut f, &cfg, &out.path().join("full"));

    let dir = out.path().join("cut");
    let mut g = fixture();
    let train = tokenize_sft(&g.tok, &data(), cfg.max_seq_len).unwrap();
    let valid = tokenize_sft(&g.tok, &data()[..2], cfg.max_seq_len).unwrap();
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ctl = hone_train::sft::RunControl {
        resume: false,
        cancel: Some(flag.clone()),
    };
    let mut sink = CancelAt { at: 3, flag };
    let err = hone_train::sft::run_sft(
        &mut g.model,
        &train.examples,
        &valid.examples,
        &cfg,
        &dir,
        &mut sink,
        &ctl,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            hone_train::TrainError::Cancelled {
                step: 3,
                checkpoint: Some(_)
            }
        ),
        "{err}"
    );
    let mut h = fixture();
    let resumed = hone_train::resume_sft(
        &mut h.model,
        &train.examples,
        &valid.examples,
        &cfg,
        &dir,
        &mut VecSink::default(),
    )
    .unwrap();
    assert_eq!(resumed.losses, full.losses);
    assert_eq!(
        std::fs::read(dir.join("adapter_model.safetensors")).unwrap(),
        std::fs::read(out.path().join("full/adapter_model.safetensors")).unwrap()
    );
}

/// A cancel that arrives while a step is between its micro-batches (a job
/// cancelled during a long step) drops that step: no optimizer update, no
/// metrics row, the checkpoint at the last whole step kept as the resume
/// point; resuming then finishes exactly like the uninterrupted run.
#[test]
fn cancel_between_micro_batches_drops_the_step_and_resume_is_exact() {
    let cfg = SftConfig {
        keep_checkpoints: 5,
        grad_accum: 2,
        ..config(3)
    };
    let out = tempfile::tempdir().unwrap();
    let (full, _) = run(&mut fixture(), &cfg, &out.path().join("full"));
    let dir = out.path().join("cut");
    let mut g = fixture();
    let train = tokenize_sft(&g.tok, &data(), cfg.max_seq_len).unwrap();
    let valid = tokenize_sft(&g.tok, &data()[..2], cfg.max_seq_len).unwrap();
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut go = |resume: bool, sink: &mut dyn hone_train::EventSink| {
        let ctl = hone_train::sft::RunControl {
            resume,
            cancel: Some(flag.clone()),
        };
        hone_train::sft::run_sft(
            &mut g.model,
            &train.examples,
            &valid.examples,
            &cfg,
            &dir,
            sink,
            &ctl,
        )
    };
    // Cancelled at the end of step 2: checkpoint at step 2.
    let mut at2 = CancelAt {
        at: 2,
        flag: flag.clone(),
    };
    let err = go(false, &mut at2).unwrap_err();
    let Some(ckpt2) = (match err {
        hone_train::TrainError::Cancelled {
            step: 2,
            checkpoint,
        } => checkpoint,
        e => panic!("{e}"),
    }) else {
        panic!("no checkpoint at step 2")
    };
    let metrics = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    // Resumed with the cancel still set: step 3 computes its first
    // micro-batch, then stops before the second, applying nothing.
    let mut sink = VecSink::default();
    let err = go(true, &mut sink).unwrap_err();
    assert!(
        matches!(&err, hone_train::TrainError::Cancelled { step: 2, checkpoint: Some(p) } if *p == ckpt2),
        "{err}"
    );
    assert!(
        !sink
            .events
            .iter()
            .any(|e| matches!(e, TrainEvent::Step { .. })),
        "no step completed"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("metrics.csv")).unwrap(),
        metrics
    );
    flag.store(false, std::sync::atomic::Ordering::Relaxed);
    let mut h = fixture();
    let resumed = hone_train::resume_sft(
        &mut h.model,
        &train.examples,
        &valid.examples,
        &cfg,
        &dir,
        &mut VecSink::default(),
    )
    .unwrap();
    assert_eq!(resumed.losses, full.losses);
    assert_eq!(
        std::fs::read(dir.join("adapter_model.safetensors")).unwrap(),
        std::fs::read(out.path().join("full/adapter_model.safetensors")).unwrap()
    );
}

#[test]
fn checkpoint_every_n_steps_inside_epochs() {
    let cfg = SftConfig {
        keep_checkpoints: 10,
        checkpoint_every: 1,
        ..config(2)
    };
    let out = tempfile::tempdir().unwrap();
    let mut f = fixture();
    run(&mut f, &cfg, out.path());
    let n = std::fs::read_dir(out.path().join("checkpoints"))
        .unwrap()
        .count();
    assert_eq!(n, 4);
}
