//! Tiny, deterministic tokenizers for tests in this and other crates, so
//! tests need no model file. The vocabulary is SmolLM-shaped: 3 control
//! tokens (`<|endoftext|>`, `<|im_start|>`, `<|im_end|>`), all 256
//! byte-level symbols, and merges for a few words. Also where the
//! `#[ignore]`d tests of every crate find the real model files.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Content, Value};

use crate::chat::ChatTokenizer;
use crate::error::{Error, Result};

/// Words given merges in the tiny vocabulary (byte-level, `Ġ` = space).
const TINY_WORDS: &[&str] = &[
    "user",
    "assistant",
    "system",
    "Hello",
    "ĠHello",
    "Hi",
    "Ġworld",
    "Ġthe",
    "Ġis",
    "ĠParis",
    "Ġcapital",
];

/// SmolLM2-Instruct's own template (with its default system prompt).
pub const SMOLLM2_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Qwen2.5-Instruct's template (tools in the system prompt, calls in `<tool_call>` tags).
pub const QWEN25_TEMPLATE: &str = include_str!("templates/qwen2_5.jinja");

/// GPT-2's byte-to-symbol table used by byte-level BPE.
pub fn byte_level_symbols() -> Vec<char> {
    let printable =
        |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut extra = 0;
    (0u32..256)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).unwrap_or('?')
            } else {
                extra += 1;
                char::from_u32(255 + extra).unwrap_or('?')
            }
        })
        .collect()
}

/// Tokens, token types and merges of the tiny vocabulary.
fn tiny_vocab() -> (Vec<String>, Vec<i32>, Vec<String>) {
    let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut types = vec![3; tokens.len()];
    for c in byte_level_symbols() {
        tokens.push(c.to_string());
        types.push(1);
    }
    let mut merges: Vec<(String, String)> = Vec::new();
    for word in TINY_WORDS {
        // Segment the word with the merges so far (as BPE would), then
        // merge the remaining pieces left to right, so it ends up one token.
        let mut pieces = bpe_segment(word, &merges);
        while pieces.len() > 1 {
            let merged = format!("{}{}", pieces[0], pieces[1]);
            merges.push((pieces[0].clone(), pieces[1].clone()));
            if !tokens.contains(&merged) {
                tokens.push(merged.clone());
                types.push(1);
            }
            pieces.splice(0..2, [merged]);
        }
    }
    let merges = merges
        .into_iter()
        .map(|(a, b)| format!("{a} {b}"))
        .collect();
    (tokens, types, merges)
}

/// Applies `merges` (lowest rank first) to the characters of `word`.
fn bpe_segment(word: &str, merges: &[(String, String)]) -> Vec<String> {
    let mut pieces: Vec<String> = word.chars().map(String::from).collect();
    loop {
        let best = (0..pieces.len().saturating_sub(1))
            .filter_map(|i| {
                merges
                    .iter()
                    .position(|(a, b)| *a == pieces[i] && *b == pieces[i + 1])
                    .map(|rank| (rank, i))
            })
            .min();
        let Some((_, i)) = best else { return pieces };
        let merged = format!("{}{}", pieces[i], pieces[i + 1]);
        pieces.splice(i..i + 2, [merged]);
    }
}

/// GGUF bytes holding only tokenizer metadata (no tensors). `template` is
/// stored as `tokenizer.chat_template` when given.
pub fn tiny_gguf_bytes(template: Option<&str>) -> Result<Vec<u8>> {
    tiny_gguf_bytes_with(template, &[])
}

/// [`tiny_gguf_bytes`] with `user_tokens` appended to the vocabulary as user-defined
/// tokens (GGUF token type 4, as Qwen's `<tool_call>`), each one added token.
pub fn tiny_gguf_bytes_with(template: Option<&str>, user_tokens: &[&str]) -> Result<Vec<u8>> {
    let (mut tokens, mut types, merges) = tiny_vocab();
    for t in user_tokens {
        tokens.push(t.to_string());
        types.push(4);
    }
    let strings = |v: Vec<String>| Value::Array(v.into_iter().map(Value::String).collect());
    let mut meta: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("llama".into())),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("smollm".into())),
        ("tokenizer.ggml.tokens", strings(tokens)),
        (
            "tokenizer.ggml.token_type",
            Value::Array(types.into_iter().map(Value::I32).collect()),
        ),
        ("tokenizer.ggml.merges", strings(merges)),
        ("tokenizer.ggml.bos_token_id", Value::U32(1)),
        ("tokenizer.ggml.eos_token_id", Value::U32(2)),
    ];
    if let Some(t) = template {
        meta.push(("tokenizer.chat_template", Value::String(t.to_string())));
    }
    let refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
    let mut buf = Cursor::new(Vec::new());
    gguf_file::write(&mut buf, &refs, &[]).map_err(|e| Error::Gguf {
        path: "<tiny>".into(),
        message: e.to_string(),
    })?;
    Ok(buf.into_inner())
}

/// The tiny GGUF metadata, parsed back through candle's reader.
pub fn tiny_gguf_content(template: Option<&str>) -> Result<Content> {
    let bytes = tiny_gguf_bytes(template)?;
    Content::read(&mut Cursor::new(bytes)).map_err(|e| Error::Gguf {
        path: "<tiny>".into(),
        message: e.to_string(),
    })
}

/// Writes the tiny GGUF (tokenizer metadata only) to `path`.
pub fn write_tiny_gguf(path: impl AsRef<Path>, template: Option<&str>) -> Result<()> {
    let path = path.as_ref();
    std::fs::write(path, tiny_gguf_bytes(template)?).map_err(|e| Error::io(path, e))
}

/// A tiny chat tokenizer with SmolLM2's template.
pub fn tiny_chat_tokenizer() -> Result<ChatTokenizer> {
    ChatTokenizer::from_gguf_content(&tiny_gguf_content(Some(SMOLLM2_TEMPLATE))?)
}

/// A tiny chat tokenizer with Qwen2.5's template and its tool-call tags as added tokens
/// (ids 3 + 256 + the merged words, then `<tool_call>`, `</tool_call>`).
pub fn tiny_qwen_tool_tokenizer() -> Result<ChatTokenizer> {
    let bytes = tiny_gguf_bytes_with(Some(QWEN25_TEMPLATE), &["<tool_call>", "</tool_call>"])?;
    let content = Content::read(&mut Cursor::new(bytes)).map_err(|e| Error::Gguf {
        path: "<tiny>".into(),
        message: e.to_string(),
    })?;
    ChatTokenizer::from_gguf_content(&content)
}

/// A real model file that `#[ignore]`d tests read: the variable that points
/// at it and its file name in a registry after `hone model fetch`.
#[derive(Debug, Clone, Copy)]
pub struct RealModel {
    pub var: &'static str,
    pub file: &'static str,
}

/// Qwen2.5-Coder-0.5B-Instruct, Q4_K_M.
pub const REAL_QWEN_GGUF: RealModel = RealModel {
    var: "HONE_TEST_QWEN_GGUF",
    file: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
};

/// gemma-3-270m, Q4_K_M.
pub const REAL_GEMMA_GGUF: RealModel = RealModel {
    var: "HONE_TEST_GEMMA_GGUF",
    file: "gemma-3-270m-q4_k_m.gguf",
};

impl RealModel {
    /// `$VAR` when set, else `$HONE_HOME/models/FILE`. Panics naming both
    /// when neither is set: only ignored tests call this, and they cannot run
    /// without the file.
    pub fn path(&self) -> PathBuf {
        if let Ok(p) = std::env::var(self.var) {
            return PathBuf::from(p);
        }
        let home = std::env::var("HONE_HOME")
            .unwrap_or_else(|_| panic!("set {} (or HONE_HOME after `hone model fetch`)", self.var));
        Path::new(&home).join("models").join(self.file)
    }
}
