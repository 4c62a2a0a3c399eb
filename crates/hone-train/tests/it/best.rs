//! `best/`: the adapter with the lowest validation loss so far.

use hone_data::{ChatMessage, Role, SftExample};
use hone_model::testing::{write_tiny_model, TinySpec};
use hone_model::{load_model, WeightPath};
use hone_text::ChatTokenizer;
use hone_train::sft::{run_sft, tokenize_sft};
use hone_train::{AdamWConfig, RunControl, ScheduleKind, TrainConfig, TrainEvent, VecSink};
use hone_train::{BestInfo, MetricsRow};

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

fn cfg() -> TrainConfig {
    TrainConfig {
        epochs: 6,
        batch_size: 2,
        grad_accum: 1,
        // High enough that validation loss rises again (overfitting a disjoint set).
        learning_rate: 3e-2,
        schedule: ScheduleKind::Constant,
        warmup_ratio: 0.0,
        max_seq_len: 64,
        seed: 5,
        lora_r: 4,
        lora_alpha: 8.0,
        lora_dropout: 0.0,
        target_modules: vec!["q_proj".into(), "v_proj".into(), "up_proj".into()],
        adamw: AdamWConfig::default(),
        keep_checkpoints: 100,
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

#[test]
fn best_holds_the_adapter_of_the_lowest_validation_loss() {
    let dir = tempfile::tempdir().unwrap();
    let (gguf, _) = write_tiny_model(dir.path(), &TinySpec::default()).unwrap();
    let mut model = load_model(&gguf, WeightPath::F32).unwrap();
    let tok = ChatTokenizer::from_gguf(&gguf).unwrap();
    let train = [
        chat("a", "zebra zebra"),
        chat("b", "quartz"),
        chat("c", "zebra quartz"),
        chat("d", "quartz zebra zebra"),
    ];
    let valid = [chat("e", "hello world"), chat("f", "the cat sat")];
    let train = tokenize_sft(&tok, &train, 64).unwrap().examples;
    let valid = tokenize_sft(&tok, &valid, 64).unwrap().examples;
    let out = dir.path().join("out");
    // A stale best/ of an earlier run in the same --out must not survive a fresh run.
    std::fs::create_dir_all(out.join("best")).unwrap();
    std::fs::write(out.join("best/best.json"), r#"{"step":1,"valid_loss":0.0}"#).unwrap();
    let mut sink = VecSink::default();
    let s = run_sft(
        &mut model,
        &train,
        &valid,
        &cfg(),
        &out,
        &mut sink,
        &RunControl::default(),
    )
    .unwrap();
    let rows: Vec<MetricsRow> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let vals: Vec<(u64, f64)> = rows
        .iter()
        .filter_map(|r| r.valid_loss.map(|v| (r.step, v)))
        .collect();
    assert_eq!(vals.len(), 6);
    let (best_step, best_loss) = vals
        .iter()
        .copied()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap();
    let info: BestInfo =
        serde_json::from_str(&std::fs::read_to_string(out.join("best/best.json")).unwrap())
            .unwrap();
    assert_eq!(info.step, best_step, "{vals:?}");
    assert_eq!(info.valid_loss, best_loss);
    assert_eq!(s.best, Some(info.clone()));
    // best/ is a loadable adapter, byte-identical to the checkpoint of that step.
    let ck = out.join(format!("checkpoints/step-{best_step}"));
    assert_eq!(
        std::fs::read(out.join("best/adapter_model.safetensors")).unwrap(),
        std::fs::read(ck.join("adapter_model.safetensors")).unwrap()
    );
    hone_model::load_peft_adapter(
        &mut load_model(&gguf, WeightPath::F32).unwrap(),
        &out.join("best"),
    )
    .unwrap();
    // One `best` event per new low, never for a worse epoch.
    let mut low = f64::INFINITY;
    let news: Vec<u64> = vals
        .iter()
        .filter(|(_, v)| {
            let new = *v < low;
            low = low.min(*v);
            new
        })
        .map(|(s, _)| *s)
        .collect();
    let events: Vec<u64> = sink
        .events
        .iter()
        .filter_map(|e| match e {
            TrainEvent::Best { step, .. } => Some(*step),
            _ => None,
        })
        .collect();
    assert_eq!(events, news);
    assert!(!out.join("best.tmp").exists() && !out.join("best.old").exists());
}

/// The fixture's run: tiny model, the train and (disjoint) validation sets above.
struct Fixture {
    dir: tempfile::TempDir,
    gguf: std::path::PathBuf,
    train: Vec<hone_text::EncodedChat>,
    valid: Vec<hone_text::EncodedChat>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (gguf, _) = write_tiny_model(dir.path(), &TinySpec::default()).unwrap();
    let tok = ChatTokenizer::from_gguf(&gguf).unwrap();
    let train = [
        chat("a", "zebra zebra"),
        chat("b", "quartz"),
        chat("c", "zebra quartz"),
        chat("d", "quartz zebra zebra"),
    ];
    let valid = [chat("e", "hello world"), chat("f", "the cat sat")];
    Fixture {
        train: tokenize_sft(&tok, &train, 64).unwrap().examples,
        valid: tokenize_sft(&tok, &valid, 64).unwrap().examples,
        dir,
        gguf,
    }
}

/// Sets the cancel flag once step `at` is done.
struct CancelAt {
    at: u64,
    flag: std::sync::Arc<std::sync::atomic::AtomicBool>,
    events: VecSink,
}

impl hone_train::EventSink for CancelAt {
    fn emit(&mut self, e: &TrainEvent) {
        if matches!(e, TrainEvent::Step { step, .. } if *step == self.at) {
            self.flag.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        self.events.emit(e);
    }
}

fn valid_losses(out: &std::path::Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<MetricsRow>(l).unwrap())
        .filter_map(|r| r.valid_loss.map(|v| (r.step, v)))
        .collect()
}

fn adapter(dir: &std::path::Path) -> Vec<u8> {
    std::fs::read(dir.join("adapter_model.safetensors")).unwrap()
}

/// With a patience, a run whose validation loss rises stops after that many
/// validations without a new low, and its adapter is the best step's; without one
/// (explicit epochs), it runs every epoch and keeps the last step's adapter. A run
/// killed in the middle keeps its patience counter on resume: it stops at the same
/// step with the same adapter as the uninterrupted run.
#[test]
fn early_stopping_returns_the_best_step_and_survives_a_resume() {
    let f = fixture();
    let run = |out: &std::path::Path,
               patience: Option<u32>,
               sink: &mut dyn hone_train::EventSink,
               ctl: &RunControl| {
        let mut model = load_model(&f.gguf, WeightPath::F32).unwrap();
        let cfg = TrainConfig {
            early_stopping_patience: patience,
            ..cfg()
        };
        run_sft(&mut model, &f.train, &f.valid, &cfg, out, sink, ctl)
    };
    // Every epoch: the validation losses this data gives.
    let full = f.dir.path().join("full");
    let s = run(&full, None, &mut VecSink::default(), &RunControl::default()).unwrap();
    let vals = valid_losses(&full);
    assert_eq!(
        (vals.len(), s.early_stop_step, s.returned_best),
        (6, None, false)
    );
    assert_eq!(adapter(&full), adapter(&full.join("checkpoints/step-12")));
    // Where patience 2 must stop, from those losses.
    let patience = 2;
    let (mut low, mut since, mut stop, mut best, mut first_miss) =
        (f64::INFINITY, 0, None, 0, None);
    for &(step, v) in &vals {
        if v < low {
            (low, since, best) = (v, 0, step);
        } else {
            since += 1;
            first_miss.get_or_insert(step);
        }
        if since == patience && stop.is_none() {
            stop = Some(step);
        }
    }
    let stop = stop.expect("the validation loss rises for 2 epochs in this fixture");
    // The returned adapter is not the last step's, so returning `best/` is visible.
    assert!(best < 12, "{vals:?}");
    let best_adapter = adapter(&full.join(format!("checkpoints/step-{best}")));

    let early = f.dir.path().join("early");
    let mut sink = VecSink::default();
    let s = run(&early, Some(patience), &mut sink, &RunControl::default()).unwrap();
    assert_eq!(
        (s.steps, s.early_stop_step, s.returned_best),
        (stop, Some(stop), true)
    );
    assert_eq!(s.best.as_ref().map(|b| b.step), Some(best));
    assert_eq!(adapter(&early), best_adapter);
    assert_eq!(adapter(&early.join("best")), best_adapter);
    assert!(matches!(
        sink.events.last(),
        Some(TrainEvent::Done { early_stop_step: Some(n), returned_best: Some(b), .. })
            if *n == stop && b.step == best
    ));

    // Killed one step after the first validation without a new low, then resumed.
    let at = first_miss.unwrap() + 1;
    assert!(at < stop, "{vals:?}");
    let resumed = f.dir.path().join("resumed");
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut cancel = CancelAt {
        at,
        flag: flag.clone(),
        events: VecSink::default(),
    };
    let ctl = RunControl {
        resume: false,
        cancel: Some(flag),
    };
    assert!(run(&resumed, Some(patience), &mut cancel, &ctl).is_err());
    let ctl = RunControl {
        resume: true,
        cancel: None,
    };
    let s = run(&resumed, Some(patience), &mut VecSink::default(), &ctl).unwrap();
    assert_eq!((s.steps, s.early_stop_step), (stop, Some(stop)));
    assert_eq!(adapter(&resumed), best_adapter);
}
