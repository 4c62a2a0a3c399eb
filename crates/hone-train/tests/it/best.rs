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
