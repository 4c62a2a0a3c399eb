//! DPO end to end on a tiny random model, and the `--init-adapter` start.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use hone_data::{ChatMessage, PreferenceExample, Role};
use hone_model::{load_peft_adapter, LoraParams};
use hone_train::dpo::{pair_logprobs, run_dpo, tokenize_dpo, DpoConfig, TokenizedPair};
use hone_train::{
    AdamWConfig, EventSink, RunControl, ScheduleKind, TrainConfig, TrainError, TrainEvent,
    TrainSummary, VecSink,
};

use crate::common::{fixture, Fixture};

fn pair(q: &str, good: &str, bad: &str) -> PreferenceExample {
    PreferenceExample {
        input: vec![ChatMessage::new(Role::User, q)],
        preferred: ChatMessage::new(Role::Assistant, good),
        non_preferred: ChatMessage::new(Role::Assistant, bad),
        tools: None,
    }
}

/// The preferred answers share a style ("yes, ...") the rejected ones lack.
fn data() -> Vec<PreferenceExample> {
    vec![
        pair("sky?", "yes, blue", "no idea"),
        pair("cat?", "yes, meow", "no idea"),
        pair("2+2?", "yes, four", "no clue"),
        pair("hi", "yes, hello", "no thanks"),
    ]
}

fn train_cfg(epochs: u32) -> TrainConfig {
    TrainConfig {
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
        target_modules: vec!["q_proj".into(), "v_proj".into(), "down_proj".into()],
        adamw: AdamWConfig::default(),
        keep_checkpoints: 5,
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

fn cfg(epochs: u32) -> DpoConfig {
    DpoConfig {
        train: train_cfg(epochs),
        beta: 0.1,
    }
}

fn pairs(f: &Fixture) -> Vec<TokenizedPair> {
    let t = tokenize_dpo(&f.tok, &data(), 64).unwrap();
    assert_eq!(t.dropped, 0);
    t.pairs
}

fn run(
    f: &mut Fixture,
    cfg: &DpoConfig,
    out: &Path,
    ctl: &RunControl,
) -> hone_train::Result<(TrainSummary, VecSink)> {
    let mut sink = VecSink::default();
    let s = run_into(f, cfg, out, ctl, &mut sink)?;
    Ok((s, sink))
}

fn run_into(
    f: &mut Fixture,
    cfg: &DpoConfig,
    out: &Path,
    ctl: &RunControl,
    sink: &mut dyn EventSink,
) -> hone_train::Result<TrainSummary> {
    let train = pairs(f);
    run_dpo(&mut f.model, &train, &train[..2], cfg, out, sink, ctl)
}

/// Keeps the events, and raises the cancel flag once the run has started (after
/// DPO's reference pass), as a Ctrl-C during the first step would.
struct CancelAtStart {
    events: VecSink,
    flag: Arc<AtomicBool>,
}

impl EventSink for CancelAtStart {
    fn emit(&mut self, e: &TrainEvent) {
        if matches!(e, TrainEvent::Start { .. }) {
            self.flag.store(true, Ordering::Relaxed);
        }
        self.events.emit(e);
    }
}

/// Runs `c` into `out` with a cancel raised once the run has started (after the
/// reference pass), as a Ctrl-C during the first step would; returns its error.
fn cancel_after_first_step(c: &DpoConfig, out: &Path) -> TrainError {
    let flag = Arc::new(AtomicBool::new(false));
    let ctl = RunControl {
        resume: false,
        cancel: Some(flag.clone()),
    };
    let mut sink = CancelAtStart {
        events: VecSink::default(),
        flag,
    };
    run_into(&mut fixture(), c, out, &ctl, &mut sink).unwrap_err()
}

fn reference_events(events: &[TrainEvent]) -> Vec<(u64, u64)> {
    events
        .iter()
        .filter_map(|e| match e {
            TrainEvent::Reference { scored, pairs } => Some((*scored, *pairs)),
            _ => None,
        })
        .collect()
}

fn step_rewards(sink: &VecSink) -> Vec<hone_train::RewardStats> {
    sink.events
        .iter()
        .filter_map(|e| match e {
            TrainEvent::Step { rewards, .. } => *rewards,
            _ => None,
        })
        .collect()
}

#[test]
fn dpo_starts_at_ln2_and_learns_the_preference() {
    let mut f = fixture();
    let out = tempfile::tempdir().unwrap();
    let (s, sink) = run(&mut f, &cfg(10), out.path(), &RunControl::default()).unwrap();
    assert_eq!(s.method, "dpo");
    assert_eq!(s.steps, 20);
    // LoRA B = 0: the policy equals the reference precomputed pair by pair (on this
    // fixture to the bit, although the batch pads pairs together), so every margin is 0.
    assert!(
        (s.losses[0] - std::f64::consts::LN_2).abs() < 1e-6,
        "{}",
        s.losses[0]
    );
    let r = step_rewards(&sink);
    assert_eq!(r.len(), 20);
    assert_eq!((r[0].chosen, r[0].rejected, r[0].accuracy), (0.0, 0.0, 0.0));
    let last = r.last().unwrap();
    assert_eq!(last.accuracy, 1.0, "{r:?}");
    assert!(last.margin > 0.5, "{last:?}");
    assert!(last.chosen > last.rejected);
    let tail = (s.losses[18] + s.losses[19]) / 2.0;
    assert!(tail < 0.5 * std::f64::consts::LN_2, "{:?}", s.losses);
    // Rewards are in metrics.jsonl and the summary; the CSV keeps OpenAI's columns.
    let jsonl = std::fs::read_to_string(out.path().join("metrics.jsonl")).unwrap();
    let row: serde_json::Value = serde_json::from_str(jsonl.lines().last().unwrap()).unwrap();
    assert_eq!(row["rewards"]["accuracy"], 1.0);
    assert!(row["valid_rewards"]["margin"].as_f64().unwrap() > 0.0);
    assert!(s.final_rewards.is_some() && s.best.is_some());
    let csv = std::fs::read_to_string(out.path().join("metrics.csv")).unwrap();
    assert!(csv.starts_with("step,train_loss,train_accuracy,valid_loss,"));
    load_peft_adapter(&mut fixture().model, out.path()).unwrap();
}

/// A random, nonzero adapter on disk (what an SFT run would leave).
fn write_random_adapter(f: &mut Fixture, dir: &Path) {
    let lora = LoraParams::attach(&mut f.model, &train_cfg(1).lora(), 3).unwrap();
    for m in &lora.modules {
        let b = candle_core::Tensor::randn(0f32, 0.5, m.b.shape(), &candle_core::Device::Cpu);
        m.b.set(&b.unwrap()).unwrap();
    }
    lora.save_peft(dir, "tiny").unwrap();
    f.model.clear_adapters();
}

/// DPO on top of an adapter (SFT then DPO) compares with the model it starts from,
/// base + that adapter, as DPO's π_ref = π_SFT (TRL's reference is the SFT model it is
/// given): the first step's rewards are 0 and its loss ln 2, where the base as the
/// reference would already reward every pair by the adapter's shift.
#[test]
fn the_reference_after_init_adapter_is_the_parent_model() {
    let mut f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let sft = dir.path().join("sft");
    write_random_adapter(&mut f, &sft);
    let train = pairs(&f);
    // Independent figures: the base model with no adapter at all, and base + adapter.
    let base = pair_logprobs(&f.model, &train, 0).unwrap();
    let mut tuned = fixture();
    load_peft_adapter(&mut tuned.model, &sft).unwrap();
    let with = pair_logprobs(&tuned.model, &train, 0).unwrap();
    for (b, w) in base.iter().zip(&with) {
        assert_eq!(b[0], b[2], "no adapter: on = off");
        assert!((w[2] - b[2]).abs() > 1e-3, "the adapter changes the policy");
    }
    let n = with.len() as f64;
    let base_reward: f64 = with
        .iter()
        .zip(&base)
        .map(|(w, b)| 0.1 * (w[2] - b[0]))
        .sum::<f64>()
        / n;
    assert!(
        base_reward.abs() > 1e-3,
        "the base would be a different reference"
    );
    // One DPO step from the adapter, with every pair in the batch.
    let mut c = cfg(1);
    c.train.batch_size = 4;
    c.train.init_adapter = Some(sft.clone());
    let mut sink = VecSink::default();
    let s = run_dpo(
        &mut f.model,
        &train,
        &[],
        &c,
        &dir.path().join("dpo"),
        &mut sink,
        &RunControl::default(),
    )
    .unwrap();
    let r = step_rewards(&sink)[0];
    // Equal up to the float rounding of padding (the reference scores each pair alone).
    assert!(r.chosen.abs() < 1e-5 && r.rejected.abs() < 1e-5, "{r:?}");
    assert!(
        (s.losses[0] - std::f64::consts::LN_2).abs() < 1e-5,
        "{}",
        s.losses[0]
    );
}

/// Exact resume holds for a run that continues an adapter: the reference is recomputed
/// from the parent adapter, not from the checkpoint's.
#[test]
fn dpo_from_an_adapter_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let sft = dir.path().join("sft");
    write_random_adapter(&mut fixture(), &sft);
    let mut c = cfg(3);
    c.train.init_adapter = Some(sft);
    let (full, _) = run(
        &mut fixture(),
        &c,
        &dir.path().join("full"),
        &RunControl::default(),
    )
    .unwrap();
    assert!((full.losses[0] - std::f64::consts::LN_2).abs() < 1e-5);
    let cut = dir.path().join("cut");
    let err = cancel_after_first_step(&c, &cut);
    assert!(
        matches!(err, TrainError::Cancelled { step: 1, .. }),
        "{err}"
    );
    let ctl = RunControl {
        resume: true,
        cancel: None,
    };
    let (resumed, _) = run(&mut fixture(), &c, &cut, &ctl).unwrap();
    assert_eq!(resumed.losses, full.losses);
}

#[test]
fn init_adapter_with_another_shape_is_refused_clearly() {
    let mut f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let sft = dir.path().join("sft");
    write_random_adapter(&mut f, &sft);
    let mut c = cfg(1);
    c.train.init_adapter = Some(sft);
    c.train.target_modules = vec!["q_proj".into()];
    let err = run(&mut f, &c, &dir.path().join("a"), &RunControl::default()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("does not train") && msg.contains("v_proj"),
        "{msg}"
    );
    let mut c = cfg(1);
    c.train.init_adapter = Some(dir.path().join("sft"));
    c.train.lora_r = 2;
    let err = run(&mut f, &c, &dir.path().join("b"), &RunControl::default()).unwrap_err();
    assert!(err.to_string().contains("shape"), "{err}");
}

#[test]
fn dpo_cancel_and_resume_match_the_uninterrupted_run() {
    let c = cfg(3);
    let out = tempfile::tempdir().unwrap();
    let (full, _) = run(
        &mut fixture(),
        &c,
        &out.path().join("full"),
        &RunControl::default(),
    )
    .unwrap();
    let cut = out.path().join("cut");
    let err = cancel_after_first_step(&c, &cut);
    assert!(
        matches!(err, TrainError::Cancelled { step: 1, .. }),
        "{err}"
    );
    let ctl = RunControl {
        resume: true,
        cancel: None,
    };
    let (resumed, _) = run(&mut fixture(), &c, &cut, &ctl).unwrap();
    assert_eq!(resumed.losses, full.losses);
    // A DPO checkpoint does not resume as another beta, and says so.
    let other = DpoConfig { beta: 0.5, ..c };
    let err = run(&mut fixture(), &other, &cut, &ctl).unwrap_err();
    assert!(
        err.to_string()
            .contains("beta: checkpoint 0.1, this run 0.5"),
        "{err}"
    );
}

#[test]
fn the_reference_pass_shows_progress_and_a_cancel_stops_it_before_step_one() {
    let c = cfg(2);
    let out = tempfile::tempdir().unwrap();
    let (full, sink) = run(
        &mut fixture(),
        &c,
        &out.path().join("full"),
        &RunControl::default(),
    )
    .unwrap();
    // Four distinct pairs (the validation pairs repeat training ones), scored once
    // each, reported from 0 to 4 before the run starts.
    let progress = reference_events(&sink.events);
    assert_eq!(progress, (0..=4).map(|i| (i, 4)).collect::<Vec<_>>());
    let start = sink
        .events
        .iter()
        .position(|e| matches!(e, TrainEvent::Start { .. }))
        .unwrap();
    assert_eq!(start, progress.len(), "the reference pass comes first");

    // A cancel already set stops the pass before its first pair: no step, no
    // checkpoint, no adapter; a later run (resume or not) starts from scratch.
    let ctl = RunControl {
        resume: false,
        cancel: Some(Arc::new(AtomicBool::new(true))),
    };
    let cut = out.path().join("cut");
    let (err, events) = {
        let mut sink = VecSink::default();
        let err = run_into(&mut fixture(), &c, &cut, &ctl, &mut sink).unwrap_err();
        (err, sink.events)
    };
    assert!(
        matches!(
            err,
            TrainError::Cancelled {
                step: 0,
                checkpoint: None
            }
        ),
        "{err}"
    );
    assert_eq!(reference_events(&events), vec![]);
    assert!(
        !events.iter().any(|e| matches!(e, TrainEvent::Step { .. })),
        "{events:?}"
    );
    assert!(!cut.join("adapter_model.safetensors").exists());
    let ctl = RunControl {
        resume: true,
        cancel: None,
    };
    let (resumed, _) = run(&mut fixture(), &c, &cut, &ctl).unwrap();
    assert_eq!(resumed.losses, full.losses);
}
