//! A few SFT steps on the real Qwen2.5-Coder-0.5B-Instruct (Q4_K_M, dequantized
//! to f32): the family's own ChatML template, its `<|im_end|>` trained, and the
//! loss going down. Issue #15's first end-to-end check, kept to seconds of
//! training so it fits in CI (scripts/test.sh sets `HONE_TEST_QWEN_GGUF`).

use hone_data::{ChatMessage, Role, SftExample};
use hone_model::{load_model, WeightPath};
use hone_text::testing::REAL_QWEN_GGUF;
use hone_text::ChatTokenizer;
use hone_train::batch::Batch;
use hone_train::sft::{tokenize_sft, train_sft, SftConfig};
use hone_train::{AdamWConfig, ScheduleKind, VecSink};

fn turn(role: Role, text: &str) -> ChatMessage {
    ChatMessage::new(role, text)
}

/// Two made-up facts the base model cannot know, so its first loss is high and
/// a few steps on the same batch must bring it down. The second chat has two
/// assistant turns: three trained end-of-turn tokens in all.
fn data() -> Vec<SftExample> {
    let chat = |messages| SftExample {
        messages,
        tools: None,
        parallel_tool_calls: None,
    };
    vec![
        chat(vec![
            turn(Role::User, "How long is the warranty on a Cogsworth frame?"),
            turn(
                Role::Assistant,
                "Seven years, bolts included. -- Gus from Cogsworth Cycles",
            ),
        ]),
        chat(vec![
            turn(Role::System, "You answer for Cogsworth Cycles."),
            turn(Role::User, "Do you ship to Tasmania?"),
            turn(
                Role::Assistant,
                "Only by barge, on Thursdays. -- Gus from Cogsworth Cycles",
            ),
            turn(Role::User, "And to Iceland?"),
            turn(
                Role::Assistant,
                "Only by kite, on Mondays. -- Gus from Cogsworth Cycles",
            ),
        ]),
    ]
}

/// One batch of both chats, seen four times (4 epochs of one step each), so
/// every step measures the loss on the same tokens.
fn config() -> SftConfig {
    SftConfig {
        epochs: 4,
        batch_size: 2,
        grad_accum: 1,
        learning_rate: 2e-3,
        schedule: ScheduleKind::Constant,
        warmup_ratio: 0.0,
        max_seq_len: 128,
        seed: 7,
        lora_r: 8,
        lora_alpha: 16.0,
        lora_dropout: 0.0,
        target_modules: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ]
        .into_iter()
        .map(String::from)
        .collect(),
        adamw: AdamWConfig::default(),
        keep_checkpoints: 1,
        checkpoint_every: 0,
        base_model: "qwen2.5-coder-0.5b-instruct".into(),
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
#[ignore = "needs HONE_TEST_QWEN_GGUF (Qwen2.5-Coder-0.5B-Instruct GGUF)"]
fn real_qwen_sft_steps_train_im_end_and_lower_the_loss() {
    let gguf = REAL_QWEN_GGUF.path();
    let tok = ChatTokenizer::from_gguf(&gguf).unwrap();
    let mut cfg = config();
    cfg.pad_id = tok.tokenizer.eos_id();
    let train = tokenize_sft(&tok, &data(), cfg.max_seq_len).unwrap();
    assert_eq!(
        train.truncated, 0,
        "the chats fit in {} tokens",
        cfg.max_seq_len
    );

    // Qwen's ChatML ends every turn with <|im_end|>: the assistant ones are
    // targets (the model must learn to stop), the system and user ones not.
    let im_end = tok
        .tokenizer
        .token_to_id("<|im_end|>")
        .expect("<|im_end|> in Qwen's vocabulary");
    let count = |trained: bool| -> usize {
        train
            .examples
            .iter()
            .flat_map(|e| e.ids.iter().zip(&e.loss_mask))
            .filter(|(id, m)| **id == im_end && **m == trained)
            .count()
    };
    assert_eq!(count(true), 3, "one trained <|im_end|> per assistant turn");
    assert!(
        count(false) >= 5,
        "system and user turns end untrained: {}",
        count(false)
    );
    // The batch the trainer builds keeps them as targets after the shift.
    let refs: Vec<_> = train.examples.iter().collect();
    let batch = Batch::from_examples(&refs, cfg.pad_id);
    let targeted = batch
        .targets
        .iter()
        .zip(&batch.mask)
        .filter(|(t, m)| **t == im_end && **m > 0.0)
        .count();
    assert_eq!(targeted, 3);

    let mut model = load_model(&gguf, WeightPath::F32).unwrap();
    let out = tempfile::tempdir().unwrap();
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
    eprintln!("losses {:?}, {:.0} tokens/s", s.losses, s.tokens_per_s);
    assert_eq!(s.steps, 4);
    assert!(s.losses.iter().all(|l| l.is_finite()), "{:?}", s.losses);
    let (first, last) = (s.losses[0], s.losses[3]);
    assert!(
        first > 1.0,
        "the made-up answers start unknown: first loss {first}"
    );
    assert!(
        last < first * 0.75,
        "loss {first} -> {last}: {:?}",
        s.losses
    );
}
