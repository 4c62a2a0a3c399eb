//! Issue #19's faithfulness check: a 100-step SFT run in each `--base-weights` mode
//! tracks the f32 run's loss curve within the tolerance docs/train.md states ("Base
//! weights", faithfulness). Same data, order, seed and initial adapter in every mode;
//! only how the frozen base is held and multiplied differs. Through the runner
//! (`train_sft`), so each mode is fitted (`fit_model`: a bf16 base held in bf16, blocks
//! re-quantized for `q8_0`) as a real run does it.

use std::path::Path;

use candle_core::quantized::GgmlDType;
use hone_data::SftExample;
use hone_model::load_model;
use hone_model::ops::BaseWeights;
use hone_model::testing::{tiny_weights, write_tiny_gguf, TinySpec};
use hone_text::ChatTokenizer;
use hone_train::base::weight_path;
use hone_train::sft::{tokenize_sft, train_sft, SftConfig};
use hone_train::{AdamWConfig, ScheduleKind, VecSink};

/// The largest relative distance `|loss − f32 loss| / f32 loss` allowed at any of the
/// 100 steps, per mode, on the tiny model: about twice the worst step measured on
/// 2026-12-06 (bf16 0.0005, q8_0 0.0014, native 0.025; docs/train.md). Native's drift is
/// the largest although its linears hold the f32 run's own Q4_1 values (docs/train.md
/// says why that is worth a look).
const TINY_TOLERANCE: [(BaseWeights, f64); 3] = [
    (BaseWeights::Bf16, 0.001),
    (BaseWeights::Native, 0.05),
    (BaseWeights::Q8_0, 0.003),
];

/// The quickstart's first 50 training chats, one per step for two epochs: 100 steps.
fn data() -> Vec<SftExample> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/support/train.jsonl"
    );
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .take(50)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn config(mode: BaseWeights, pad_id: u32, max_seq_len: usize, lr: f64) -> SftConfig {
    SftConfig {
        epochs: 2,
        batch_size: 1,
        grad_accum: 1,
        learning_rate: lr,
        schedule: ScheduleKind::Constant,
        warmup_ratio: 0.0,
        max_seq_len,
        seed: 42,
        lora_r: 8,
        lora_alpha: 16.0,
        lora_dropout: 0.0,
        target_modules: hone_model::linear::TARGET_MODULES
            .iter()
            .map(|s| s.to_string())
            .collect(),
        adamw: AdamWConfig::default(),
        keep_checkpoints: 1,
        checkpoint_every: 0,
        base_model: "base".into(),
        pad_id,
        init_adapter: None,
        early_stopping_patience: None,
        trainable_tokens: Vec::new(),
        packing: false,
        base_weights: mode,
        gradient_checkpointing: false,
    }
}

/// The f32 run's losses, then each mode's worst step `(step, relative distance)`
/// against it (printed with the curves, for docs/train.md).
fn curves(gguf: &Path, max_seq_len: usize, lr: f64) -> (Vec<f64>, Vec<(BaseWeights, usize, f64)>) {
    let tok = ChatTokenizer::from_gguf(gguf).unwrap();
    let pad = tok.tokenizer.eos_id();
    let train = tokenize_sft(&tok, &data(), max_seq_len).unwrap();
    let curve = |mode: BaseWeights| -> Vec<f64> {
        let mut model = load_model(gguf, weight_path(mode)).unwrap();
        let out = tempfile::tempdir().unwrap();
        let cfg = config(mode, pad, max_seq_len, lr);
        let mut sink = VecSink::default();
        let s = train_sft(
            &mut model,
            &train.examples,
            &[],
            &cfg,
            out.path(),
            &mut sink,
        )
        .unwrap();
        assert_eq!(s.steps, 100, "{mode:?}");
        s.losses
    };
    let want = curve(BaseWeights::F32);
    eprintln!("f32 {want:.4?}");
    let worst = [BaseWeights::Bf16, BaseWeights::Native, BaseWeights::Q8_0]
        .into_iter()
        .map(|mode| {
            let got = curve(mode);
            let dist: Vec<f64> = got
                .iter()
                .zip(&want)
                .map(|(g, w)| (g - w).abs() / w)
                .collect();
            let (step, d) = dist
                .iter()
                .copied()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .unwrap();
            let mean = dist.iter().sum::<f64>() / dist.len() as f64;
            eprintln!("{mode:?}: worst step {step} at {d:.5} (mean {mean:.5}); {got:.4?}");
            (mode, step, d)
        })
        .collect();
    (want, worst)
}

/// The f32 curve must fall (else tracking it says little): the last ten steps' mean
/// below `fall` times the first ten's.
fn assert_learns(want: &[f64], fall: f64) {
    let (head, tail) = (
        want[..10].iter().sum::<f64>(),
        want[90..].iter().sum::<f64>(),
    );
    assert!(
        tail < head * fall,
        "the f32 run learns: first ten {head}, last ten {tail}"
    );
}

fn assert_within(worst: &[(BaseWeights, usize, f64)], tolerance: &[(BaseWeights, f64)]) {
    for &(mode, step, d) in worst {
        let tol = tolerance.iter().find(|t| t.0 == mode).unwrap().1;
        assert!(d <= tol, "{mode:?} step {step}: {d:.5} > {tol}");
    }
}

/// The tiny model with Q4_1 linears (the block modes keep them; f32 and bf16 load them
/// dequantized), its context widened to hold the chats as byte-level tokens.
#[test]
fn a_100_step_run_tracks_the_f32_loss_curve_in_every_mode() {
    let dir = tempfile::tempdir().unwrap();
    let spec = TinySpec {
        context: 1024,
        ..TinySpec::default()
    };
    let gguf = dir.path().join("tiny-q4_1.gguf");
    write_tiny_gguf(&gguf, &spec, &tiny_weights(&spec).unwrap(), GgmlDType::Q4_1).unwrap();
    let (want, worst) = curves(&gguf, 1024, 1e-3);
    assert_learns(&want, 0.9);
    assert_within(&worst, &TINY_TOLERANCE);
}
