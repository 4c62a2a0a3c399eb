//! GGUF tokenizers of the model families beyond SmolLM, checked against ids
//! made with transformers' GGUF loader (scripts/make_tokenizer_vectors.py,
//! testdata/tokenizers/).
//!
//! The synthetic files run in CI: a small byte-level BPE trained by the
//! script (read with pre "llama-bpe" and "qwen2"; there is no real Llama 3
//! file on these machines) and a Gemma vocabulary cut from the real one. The
//! real Qwen2.5-Coder and Gemma 3 files are `#[ignore]`d: they are read from
//! `HONE_TEST_QWEN_GGUF` / `HONE_TEST_GEMMA_GGUF`, or from
//! `$HONE_HOME/models` after `hone model fetch`.

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value as GgufValue};
use hone_text::testing::{RealModel, REAL_GEMMA_GGUF, REAL_QWEN_GGUF};
use hone_text::{read_gguf_content, ChatMessage, ChatTokenizer, Tokenizer};
use serde_json::Value;

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/tokenizers")
        .join(name)
}

fn vectors(name: &str) -> Value {
    let path = testdata(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reference vectors missing at {}: {e}", path.display()));
    serde_json::from_str(&text).expect("reference vectors are not valid JSON")
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("ids list")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

/// Every `tokenizer` case: same ids as transformers, same decoded text, and
/// the streaming decoder gives the full decode.
fn assert_matches_reference(t: &Tokenizer, v: &Value) {
    let list = v["tokenizer"].as_array().expect("tokenizer cases");
    assert!(list.len() > 10, "too few cases");
    for case in list {
        let text = case["text"].as_str().expect("text");
        let want = ids(&case["ids"]);
        assert_eq!(t.encode(text).unwrap(), want, "ids for {text:?}");
        assert_eq!(t.encode_with_offsets(text).unwrap().ids, want, "{text:?}");
        let count = t
            .count_tokens(text, std::slice::from_ref(&(0..text.len())))
            .unwrap();
        assert_eq!((count.total, count.in_ranges), (want.len(), want.len()));
        let decoded = case["decoded"].as_str().expect("decoded");
        assert_eq!(t.decode(&want).unwrap(), decoded, "decode of {text:?}");
        let mut stream = t.decode_stream();
        let mut out = String::new();
        for &id in &want {
            out.extend(stream.step(id).unwrap());
        }
        out.extend(stream.flush().unwrap());
        assert_eq!(out, decoded, "streaming decode of {text:?}");
    }
    assert_eq!(t.bos_id().map(u64::from), v["bos"].as_u64());
    assert_eq!(u64::from(t.eos_id()), v["eos"].as_u64().unwrap());
}

fn synthetic_bpe(pre: &str) -> Content {
    let mut content = read_gguf_content(testdata("synthetic-bpe.gguf")).unwrap();
    content
        .metadata
        .insert("tokenizer.ggml.pre".into(), GgufValue::String(pre.into()));
    content
}

#[test]
fn llama3_bpe_matches_transformers_on_a_synthetic_vocab() {
    let v = vectors("synthetic-bpe.json");
    let t = Tokenizer::from_gguf_content(&synthetic_bpe("llama-bpe")).unwrap();
    assert_matches_reference(&t, &v["llama-bpe"]);
    // transformers' count has one more: GPT2Tokenizer's default unk token
    // `<|endoftext|>`, which this vocabulary lacks and hone does not invent.
    assert_eq!(
        t.vocab_size() as u64 + 1,
        v["llama-bpe"]["vocab_size"].as_u64().unwrap()
    );
    // Llama 3 keeps digits in runs of up to three.
    let n = t.encode("12345").unwrap();
    assert_eq!(t.decode(&n[..1]).unwrap(), "123");
}

#[test]
fn qwen2_bpe_matches_transformers_on_a_synthetic_vocab() {
    let v = vectors("synthetic-bpe.json");
    let t = Tokenizer::from_gguf_content(&synthetic_bpe("qwen2")).unwrap();
    assert_matches_reference(&t, &v["qwen2"]);
    // Qwen splits every digit.
    assert_eq!(t.encode("12345").unwrap().len(), 5);
}

#[test]
fn eot_token_id_from_metadata_is_a_stop_id() {
    let t = Tokenizer::from_gguf_content(&synthetic_bpe("llama-bpe")).unwrap();
    let eot = t.token_to_id("<|eot_id|>").unwrap();
    let eos = t.token_to_id("<|end_of_text|>").unwrap();
    assert_eq!(&t.stop_token_ids()[..2], &[eos, eot]);
    assert!(t.is_special(eot));
    assert_eq!(
        t.encode("a<|eot_id|>").unwrap().last(),
        Some(&eot),
        "control tokens in text are matched whole"
    );
}

#[test]
fn gemma_vocab_matches_transformers_on_a_cut_down_vocab() {
    let v = vectors("synthetic-spm.json");
    let t = Tokenizer::from_gguf(testdata("synthetic-spm.gguf")).unwrap();
    assert_matches_reference(&t, &v);
    // No prefix space: "Hello" and " Hello" differ.
    assert_ne!(t.encode("Hello").unwrap(), t.encode(" Hello").unwrap());
    // A character outside the vocabulary falls back to its UTF-8 bytes.
    let ids = t.encode("ǅ").unwrap();
    let pieces: Vec<String> = ids.iter().map(|&i| t.id_to_token(i).unwrap()).collect();
    assert_eq!(pieces, vec!["<0xC7>", "<0x85>"]);
    assert_eq!(t.decode(&ids).unwrap(), "ǅ");
}

/// Every `chat_template` case renders byte for byte as transformers does.
fn assert_renders_like_transformers(ct: &ChatTokenizer, v: &Value) {
    let cases = v["chat_template"].as_array().expect("chat_template cases");
    assert!(!cases.is_empty());
    for case in cases {
        let messages: Vec<ChatMessage> = serde_json::from_value(case["messages"].clone()).unwrap();
        let add = case["add_generation_prompt"].as_bool().unwrap();
        let rendered = ct.template.render(&messages, add, None).unwrap();
        assert_eq!(rendered, case["rendered"].as_str().unwrap());
    }
}

#[test]
fn a_gemma_file_without_a_template_gets_gemma3s() {
    // The synthetic file, like the real gemma-3-270m, has no template; the
    // reference renders are Gemma 3's template through transformers.
    let ct = ChatTokenizer::from_gguf(testdata("synthetic-spm.gguf")).unwrap();
    assert!(ct.template.source().contains("<start_of_turn>"));
    assert_renders_like_transformers(&ct, &vectors("gemma-3-270m.json"));
    let msgs = [ChatMessage::new(hone_text::Role::User, "Hi")];
    let ids = ct.encode_prompt(&msgs, None).unwrap();
    assert_eq!(ids[0], ct.tokenizer.bos_id().unwrap());
    assert!(ids.contains(&ct.tokenizer.token_to_id("<start_of_turn>").unwrap()));
}

#[test]
fn unknown_tokenizer_model_names_it_and_the_supported_ones() {
    let mut content = synthetic_bpe("llama-bpe");
    content.metadata.insert(
        "tokenizer.ggml.model".into(),
        GgufValue::String("bert".into()),
    );
    let err = Tokenizer::from_gguf_content(&content)
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"bert\""), "{err}");
    assert!(
        err.contains("\"gpt2\"") && err.contains("\"llama\""),
        "{err}"
    );
}

#[test]
fn sentencepiece_vocab_of_an_unsupported_architecture_is_an_error() {
    let mut content = read_gguf_content(testdata("synthetic-spm.gguf")).unwrap();
    content.metadata.insert(
        "general.architecture".into(),
        GgufValue::String("phi3".into()),
    );
    let err = Tokenizer::from_gguf_content(&content)
        .unwrap_err()
        .to_string();
    assert!(err.contains("phi3") && err.contains("gemma3"), "{err}");
}

fn check_real(model: RealModel, vectors_name: &str) -> (ChatTokenizer, Value) {
    let path = model.path();
    let v = vectors(vectors_name);
    let ct = ChatTokenizer::from_gguf(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_matches_reference(&ct.tokenizer, &v);
    assert_eq!(
        ct.tokenizer.vocab_size() as u64,
        v["vocab_size"].as_u64().unwrap()
    );
    let eot = v["eot"].as_u64().unwrap() as u32;
    assert!(ct.tokenizer.stop_token_ids().contains(&eot));
    (ct, v)
}

#[test]
#[ignore = "needs the Qwen2.5-Coder GGUF (HONE_TEST_QWEN_GGUF or HONE_HOME)"]
fn qwen2_5_coder_tokenizer_and_template_match_transformers() {
    let (ct, v) = check_real(REAL_QWEN_GGUF, "qwen2.5-coder-0.5b-instruct.json");
    assert_eq!(ct.tokenizer.stop_token_texts()[0], "<|im_end|>");
    assert_renders_like_transformers(&ct, &v);
}

/// Qwen's `<tool_call>` tags are user-defined tokens, not control tokens: decoding
/// generated text (which skips special tokens) must keep them, or no freely written
/// Qwen tool call could be read back.
#[test]
#[ignore = "needs the Qwen2.5-Coder GGUF (HONE_TEST_QWEN_GGUF or HONE_HOME)"]
fn qwen_tool_call_tags_survive_decoding_without_special_tokens() {
    let ct = ChatTokenizer::from_gguf(REAL_QWEN_GGUF.path()).unwrap();
    let t = &ct.tokenizer;
    let text = "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call><|im_end|>";
    let ids = t.encode(text).unwrap();
    assert_eq!(t.token_to_id("<tool_call>"), Some(151657));
    assert!(ids.contains(&151657) && ids.contains(&151658), "{ids:?}");
    let decoded = t.decode_skip_special(&ids).unwrap();
    assert_eq!(
        decoded,
        "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>"
    );
}

#[test]
#[ignore = "needs the Gemma 3 270M GGUF (HONE_TEST_GEMMA_GGUF or HONE_HOME)"]
fn gemma3_tokenizer_matches_transformers() {
    let (ct, v) = check_real(REAL_GEMMA_GGUF, "gemma-3-270m.json");
    assert_renders_like_transformers(&ct, &v);
    let t = &ct.tokenizer;
    assert_eq!(t.token_to_id("<end_of_turn>"), Some(106));
    assert_eq!(t.stop_token_ids(), &[1, 106]);
    // Newline runs are whole tokens, as in Gemma's own tokenizer.
    assert_eq!(t.encode("\n\n").unwrap(), vec![108]);
}

/// A training conversation with a call, rendered and tokenised the way `hone train`
/// does (`encode_chat`, which hone-train's SFT path calls): Qwen's `<tool_call>` and
/// `</tool_call>` are their own ids and inside the loss mask with the call body and
/// `<|im_end|>`, so a fine-tune is taught to write the tags. (Qwen2.5-Coder still never
/// writes them: its output rows for the tags are untrained, see docs/tools.md.)
#[test]
#[ignore = "needs the Qwen2.5-Coder GGUF (HONE_TEST_QWEN_GGUF or HONE_HOME)"]
fn qwen_tool_call_tags_are_trained_tokens() {
    let ct = ChatTokenizer::from_gguf(REAL_QWEN_GGUF.path()).unwrap();
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/tools/train.jsonl");
    let examples = hone_data::parse_sft_file(&file).unwrap();
    let ex = &examples[0];
    assert!(
        ex.messages[2].tool_calls.is_some(),
        "line 1 answers with a call"
    );
    let enc = ct.encode_chat(&ex.messages, ex.tools.as_ref()).unwrap();
    let trained = enc.trained_ids();
    let (open, close, eot) = (151657, 151658, 151645);
    assert_eq!(trained.first(), Some(&open), "{trained:?}");
    assert_eq!(trained[trained.len() - 2..], [close, eot], "{trained:?}");
    assert_eq!(
        ct.tokenizer.decode(&trained).unwrap(),
        "<tool_call>\n{\"name\": \"set_reminder\", \"arguments\": \
         {\"text\": \"take out the trash\", \"time\": \"10:00\"}}\n</tool_call><|im_end|>"
    );
    // The system prompt quotes the tags too; those stay untrained.
    let untrained_tags = enc
        .ids
        .iter()
        .zip(&enc.loss_mask)
        .filter(|(&id, &m)| id == open && !m)
        .count();
    assert_eq!(untrained_tags, 2);
}
