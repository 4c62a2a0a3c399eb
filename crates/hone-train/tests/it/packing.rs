//! Sequence packing (`--packing`): several examples share a row, with positions
//! and attention kept per example. The tests for architecture.md pitfalls 3 (masking
//! silently off under packing) and 4 (packing changes the loss).

use candle_core::{Device, Tensor};
use hone_data::{ChatMessage, Role, SftExample};
use hone_model::lora::{LoraConfig, LoraParams};
use hone_model::{Llama, TrainOptions};
use hone_text::EncodedChat;
use hone_train::batch::Batch;
use hone_train::sft::{tokenize_sft, train_sft, SftConfig};
use hone_train::{AdamWConfig, ScheduleKind, TrainEvent, VecSink};

use crate::common::{fixture, Fixture};

fn msg(role: Role, text: &str) -> ChatMessage {
    ChatMessage::new(role, text)
}

/// Chats of different lengths, multi-turn, with a weight-0 assistant turn.
fn chats() -> Vec<SftExample> {
    let mut skipped = msg(Role::Assistant, "an answer we do not train on");
    skipped.weight = Some(0);
    let ex = |messages: Vec<ChatMessage>| SftExample {
        messages,
        tools: None,
        parallel_tool_calls: None,
    };
    vec![
        ex(vec![
            msg(Role::User, "hi"),
            msg(Role::Assistant, "hello there"),
        ]),
        ex(vec![
            msg(Role::System, "be brief"),
            msg(Role::User, "first question, quite a long one"),
            skipped,
            msg(Role::User, "second"),
            msg(Role::Assistant, "the second answer, trained"),
        ]),
        ex(vec![msg(Role::User, "2+2?"), msg(Role::Assistant, "four")]),
        ex(vec![
            msg(Role::User, "cat?"),
            msg(Role::Assistant, "meow"),
            msg(Role::User, "dog?"),
            msg(Role::Assistant, "woof woof"),
        ]),
        ex(vec![msg(Role::User, "x"), msg(Role::Assistant, "y")]),
    ]
}

fn examples(f: &Fixture) -> Vec<EncodedChat> {
    tokenize_sft(&f.tok, &chats(), 512).unwrap().examples
}

/// A row length that forces several rows, each holding several examples.
fn row_len(ex: &[EncodedChat]) -> usize {
    let longest = ex.iter().map(|e| e.ids.len() - 1).max().unwrap();
    longest + 8
}

/// The trained targets of each example, in order, read back from a batch.
fn trained_targets(b: &Batch) -> Vec<u32> {
    b.targets
        .iter()
        .zip(&b.mask)
        .filter(|(_, m)| **m == 1.0)
        .map(|(t, _)| *t)
        .collect()
}

#[test]
fn packing_keeps_every_trained_token_and_only_those() {
    let f = fixture();
    let ex = examples(&f);
    let refs: Vec<&EncodedChat> = ex.iter().collect();
    let plain = Batch::from_examples(&refs, 0);
    let packed = Batch::packed(&refs, 0, row_len(&ex));
    assert!(
        packed.batch < plain.batch,
        "nothing was packed: {}",
        packed.batch
    );
    assert!(packed.batch > 1, "one row only: the test should cross rows");
    // Bug class 3: the same count of masked-in tokens with packing on and off.
    assert_eq!(packed.n_trained, plain.n_trained);
    let want: usize = ex.iter().map(|e| e.trained_targets()).sum();
    assert_eq!(packed.n_trained, want);
    let mut a = trained_targets(&plain);
    let mut b = trained_targets(&packed);
    a.sort_unstable();
    b.sort_unstable();
    assert_eq!(a, b, "the same targets are trained");
    // The end-of-turn token of each trained turn stays in the mask.
    let im_end = f.tok.tokenizer.stop_token_ids()[0];
    let ends = |b: &Batch| trained_targets(b).iter().filter(|t| **t == im_end).count();
    assert_eq!(ends(&packed), ends(&plain));
    assert!(
        ends(&packed) >= 5,
        "every trained turn ends with <|im_end|>"
    );
    // Positions restart at 0 for every example.
    let layout = packed.packed.as_ref().unwrap();
    let starts = layout.positions.iter().filter(|p| **p == 0).count();
    assert!(starts >= ex.len());
}

fn with_lora(model: &mut Llama) -> LoraParams {
    let cfg = LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        target_modules: LoraConfig::parse_target_modules("all-linear").unwrap(),
        trainable_tokens: Vec::new(),
    };
    let lora = LoraParams::attach(model, &cfg, 9).unwrap();
    for m in &lora.modules {
        let shape = m.b.as_tensor().shape().clone();
        m.b.set(&Tensor::randn(0f32, 0.05, shape, &Device::Cpu).unwrap())
            .unwrap();
    }
    lora
}

fn loss_and_grads(model: &Llama, lora: &LoraParams, b: &Batch) -> (f32, Vec<Vec<f32>>) {
    let shape = (b.batch, b.seq_len);
    let dev = Device::Cpu;
    let input = Tensor::from_slice(&b.input_ids, shape, &dev).unwrap();
    let targets = Tensor::from_slice(&b.targets, shape, &dev).unwrap();
    let mask = Tensor::from_slice(&b.mask, shape, &dev).unwrap();
    let out = model
        .train_loss_packed(
            &input,
            &targets,
            &mask,
            b.packed.as_ref(),
            TrainOptions::default(),
        )
        .unwrap();
    let grads = out.loss.backward().unwrap();
    let g = lora
        .modules
        .iter()
        .flat_map(|m| [m.a.as_tensor(), m.b.as_tensor()])
        .map(|v| {
            grads
                .get(v)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        })
        .collect();
    (out.loss.to_scalar::<f32>().unwrap(), g)
}

/// Bug class 4: packing must not change the loss (attention never crosses an
/// example boundary, positions restart), nor the LoRA gradients.
#[test]
fn packed_loss_and_lora_gradients_equal_the_unpacked_ones() {
    let mut f = fixture();
    let lora = with_lora(&mut f.model);
    let ex = examples(&f);
    let refs: Vec<&EncodedChat> = ex.iter().collect();
    let (l_plain, g_plain) = loss_and_grads(&f.model, &lora, &Batch::from_examples(&refs, 0));
    let packed = Batch::packed(&refs, 0, row_len(&ex));
    let (l_packed, g_packed) = loss_and_grads(&f.model, &lora, &packed);
    assert!(
        ((l_packed - l_plain) / l_plain).abs() < 1e-5,
        "loss {l_packed} packed vs {l_plain}"
    );
    for (i, (a, b)) in g_plain.iter().zip(&g_packed).enumerate() {
        let scale = a.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-6);
        let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(diff / scale < 1e-4, "gradient {i}: {diff} (scale {scale})");
    }
    // Without the per-example mask and positions the loss would differ: the
    // test can tell packing done right from packing done naively.
    let mut naive = packed.clone();
    naive.packed = None;
    let (l_naive, _) = loss_and_grads(&f.model, &lora, &naive);
    assert!(
        ((l_naive - l_plain) / l_plain).abs() > 1e-4,
        "naive packing gave the same loss ({l_naive} vs {l_plain}): the check is too weak"
    );
}

fn config(packing: bool) -> SftConfig {
    SftConfig {
        epochs: 2,
        batch_size: 3,
        grad_accum: 1,
        learning_rate: 1e-2,
        schedule: ScheduleKind::Constant,
        warmup_ratio: 0.0,
        max_seq_len: 128,
        seed: 4,
        lora_r: 4,
        lora_alpha: 8.0,
        lora_dropout: 0.0,
        target_modules: vec!["q_proj".into(), "v_proj".into(), "down_proj".into()],
        adamw: AdamWConfig::default(),
        keep_checkpoints: 1,
        checkpoint_every: 0,
        base_model: "tiny".into(),
        pad_id: 0,
        init_adapter: None,
        packing,
        base_weights: hone_model::ops::BaseWeights::F32,
        gradient_checkpointing: false,
        early_stopping_patience: None,
        trainable_tokens: Vec::new(),
    }
}

fn step_losses(sink: &VecSink) -> Vec<f64> {
    sink.events
        .iter()
        .filter_map(|e| match e {
            TrainEvent::Step { train_loss, .. } => Some(*train_loss),
            _ => None,
        })
        .collect()
}

/// `--packing` trains the same steps as without it: same batches of examples,
/// same losses (within float rounding), same trained-token count.
#[test]
fn training_with_packing_takes_the_same_steps() {
    let mut runs = Vec::new();
    for packing in [false, true] {
        let mut f = fixture();
        let ex = examples(&f);
        let out = tempfile::tempdir().unwrap();
        let mut sink = VecSink::default();
        let s = train_sft(
            &mut f.model,
            &ex,
            &[],
            &config(packing),
            out.path(),
            &mut sink,
        )
        .unwrap();
        runs.push((step_losses(&sink), s.trained_tokens));
    }
    let ((plain, t_plain), (packed, t_packed)) = (&runs[0], &runs[1]);
    assert_eq!(t_plain, t_packed);
    assert_eq!(plain.len(), packed.len());
    for (i, (a, b)) in plain.iter().zip(packed).enumerate() {
        assert!(((a - b) / a).abs() < 1e-4, "step {i}: {a} vs {b}");
    }
}
