//! Checks against the reference vectors made with transformers from the real
//! SmolLM2-135M-Instruct GGUF. Ignored by default: they need the model file
//! named by `HONE_TEST_GGUF`.

use std::path::PathBuf;

use hone_text::{ChatMessage, ChatTokenizer};
use serde_json::Value;

fn vectors() -> Value {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/smollm2-135m-instruct.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reference vectors missing at {}: {e}", path.display()));
    serde_json::from_str(&text).expect("reference vectors are not valid JSON")
}

fn chat_tokenizer() -> ChatTokenizer {
    let path = std::env::var("HONE_TEST_GGUF")
        .expect("set HONE_TEST_GGUF to the SmolLM2-135M-Instruct GGUF to run this test");
    ChatTokenizer::from_gguf(&path).unwrap_or_else(|e| panic!("loading {path}: {e}"))
}

fn cases<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    let list = v[key]
        .as_array()
        .unwrap_or_else(|| panic!("vectors have no `{key}` list"));
    assert!(!list.is_empty(), "vectors have an empty `{key}` list");
    list
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("ids list")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

#[test]
#[ignore = "needs HONE_TEST_GGUF"]
fn gguf_tokenizer_matches_hf_on_every_vector() {
    let v = vectors();
    let ct = chat_tokenizer();
    for case in cases(&v, "tokenizer") {
        let text = case["text"].as_str().expect("text");
        let got = ct.tokenizer.encode(text).expect("encode");
        assert_eq!(got, ids(&case["ids"]), "ids for {text:?}");
        let decoded = ct.tokenizer.decode(&got).expect("decode");
        assert_eq!(
            decoded,
            case["decoded"].as_str().expect("decoded"),
            "decode of {text:?}"
        );
    }
}

#[test]
#[ignore = "needs HONE_TEST_GGUF"]
fn first_word_has_no_phantom_prefix_space() {
    // candle's converter gives 38699 (" Hello") here.
    let ct = chat_tokenizer();
    assert_eq!(ct.tokenizer.encode("Hello").unwrap(), vec![19556]);
}

#[test]
#[ignore = "needs HONE_TEST_GGUF"]
fn chat_template_renders_byte_identical_to_transformers() {
    let v = vectors();
    let ct = chat_tokenizer();
    for case in cases(&v, "chat_template") {
        let messages: Vec<ChatMessage> =
            serde_json::from_value(case["messages"].clone()).expect("messages");
        let add = case["add_generation_prompt"].as_bool().expect("flag");
        let rendered = ct.template.render(&messages, add, None).expect("render");
        assert_eq!(rendered, case["rendered"].as_str().expect("rendered"));
        let expected_ids = ids(&case["ids"]);
        assert_eq!(ct.tokenizer.encode(&rendered).unwrap(), expected_ids);
        if add {
            assert_eq!(ct.encode_prompt(&messages, None).unwrap(), expected_ids);
        } else {
            assert_eq!(ct.encode_chat(&messages, None).unwrap().ids, expected_ids);
        }
    }
}

#[test]
#[ignore = "needs HONE_TEST_GGUF"]
fn special_ids_and_stop_tokens_of_smollm2() {
    let ct = chat_tokenizer();
    let t = &ct.tokenizer;
    assert_eq!(t.vocab_size(), 49152);
    assert_eq!(t.bos_id(), Some(1));
    assert_eq!(t.eos_id(), 2);
    assert_eq!(t.token_to_id("<|im_end|>"), Some(2));
    assert_eq!(t.stop_token_ids(), &[2, 0]);
    assert!(t.is_special(1) && !t.is_special(19556));
}

#[test]
#[ignore = "needs HONE_TEST_GGUF"]
fn real_model_mask_covers_exactly_assistant_content_and_im_end() {
    let ct = chat_tokenizer();
    let v = vectors();
    let case = &cases(&v, "chat_template")[2];
    let messages: Vec<ChatMessage> = serde_json::from_value(case["messages"].clone()).unwrap();
    let enc = ct.encode_chat(&messages, None).unwrap();
    assert_eq!(
        ct.tokenizer.decode(&enc.trained_ids()).unwrap(),
        "Hello.<|im_end|>"
    );
    // The inference prompt before the answer is a token prefix of the
    // training sequence, ending right where the mask starts.
    let prompt = ct.encode_prompt(&messages[..2], None).unwrap();
    assert_eq!(&enc.ids[..prompt.len()], &prompt[..]);
    assert!(enc.loss_mask[prompt.len()] && !enc.loss_mask[prompt.len() - 1]);
}

#[test]
#[ignore = "needs HONE_TEST_GGUF"]
fn streaming_decode_of_real_vectors_equals_full_decode() {
    let v = vectors();
    let ct = chat_tokenizer();
    for case in cases(&v, "tokenizer") {
        let all = ids(&case["ids"]);
        let mut stream = ct.tokenizer.decode_stream();
        let mut out = String::new();
        for id in &all {
            if let Some(piece) = stream.step(*id).unwrap() {
                assert!(
                    !piece.contains('\u{FFFD}'),
                    "partial character in {piece:?}"
                );
                out.push_str(&piece);
            }
        }
        if let Some(rest) = stream.flush().unwrap() {
            out.push_str(&rest);
        }
        assert_eq!(out, case["decoded"].as_str().unwrap());
    }
}

#[test]
#[ignore = "benchmark on the real model (HONE_TEST_GGUF); run with --ignored --nocapture"]
fn bench_encode_chat_throughput() {
    let ct = chat_tokenizer();
    let turn = "The quick brown fox jumps over the lazy dog, and then explains why in detail. ";
    let conv: Vec<ChatMessage> = (0..8)
        .map(|i| {
            let role = if i % 2 == 0 {
                hone_text::Role::User
            } else {
                hone_text::Role::Assistant
            };
            ChatMessage::new(role, turn.repeat(4))
        })
        .collect();
    let n = 200;
    let start = std::time::Instant::now();
    let mut tokens = 0;
    for _ in 0..n {
        tokens += ct.encode_chat(&conv, None).unwrap().len();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "encode_chat: {:.0} examples/s, {:.0} tokens/s ({} tokens per example)",
        n as f64 / secs,
        tokens as f64 / secs,
        tokens / n
    );
}
