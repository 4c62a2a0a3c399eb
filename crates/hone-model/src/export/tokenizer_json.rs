//! GGUF tokenizer metadata built from an HF directory's `tokenizer.json`,
//! `tokenizer_config.json` (and `chat_template.jinja`, `config.json`), for exporting a base
//! that is an HF directory rather than a GGUF.
//!
//! The keys are the ones llama.cpp's `convert_hf_to_gguf.py` writes for a byte-level BPE
//! vocabulary (its `_set_vocab_gpt2` and gguf-py's `SpecialVocab`): the token list padded
//! to the model's `vocab_size` with `[PAD<i>]` (type unused), token types (added special
//! tokens, and added ones that look like `<|…|>`, are control; other added tokens are
//! user-defined), the merges, the special-token ids from `tokenizer_config.json` (then
//! `config.json`'s `<type>_token_id`), `add_bos_token` / `add_eos_token` from the
//! post-processor and `tokenizer_config.json`, and the chat template.
//!
//! One difference in method, none in result: the converter names the pre-tokenizer
//! (`tokenizer.ggml.pre`) by hashing the token ids of a test string, which needs the
//! tokenizer library; here it is read from `tokenizer.json`'s `pre_tokenizer`, matched
//! against the pipelines of the names llama.cpp (and hone's GGUF reader) know. Anything
//! else — another pre-tokenizer, a SentencePiece-style vocabulary (Gemma's, for which the
//! converter needs `tokenizer.model`), a WordPiece or Unigram model — is an error naming
//! it, never a file llama.cpp would tokenize differently.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use serde_json::Value as Json;

use crate::error::{ModelError, Result};

/// llama.cpp's token types (`llama_token_type`).
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

/// The special-token kinds gguf-py's `SpecialVocab` looks up, with their GGUF key
/// (`seperator` is llama.cpp's spelling).
const SPECIAL_KINDS: [(&str, &str); 7] = [
    ("bos", "tokenizer.ggml.bos_token_id"),
    ("eos", "tokenizer.ggml.eos_token_id"),
    ("unk", "tokenizer.ggml.unknown_token_id"),
    ("sep", "tokenizer.ggml.seperator_token_id"),
    ("pad", "tokenizer.ggml.padding_token_id"),
    ("cls", "tokenizer.ggml.cls_token_id"),
    ("mask", "tokenizer.ggml.mask_token_id"),
];

/// Qwen2's split regex (as in its tokenizer.json): llama.cpp's `qwen2` pre-tokenizer.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Llama 3's split regex: llama.cpp's `llama-bpe`.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The `tokenizer.*` keys for the HF model directory `dir`, whose model has
/// `vocab_size` rows.
pub fn tokenizer_keys(dir: &Path, vocab_size: usize) -> Result<Vec<(String, Value)>> {
    let tj = read_json(&dir.join("tokenizer.json"))?.ok_or_else(|| {
        unsupported(
            dir,
            "it has no tokenizer.json (llama.cpp needs the vocabulary)",
        )
    })?;
    let config = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Json::Null);
    let model_json = read_json(&dir.join("config.json"))?.unwrap_or(Json::Null);
    check_byte_level_bpe(dir, &tj)?;
    let pre = pre_tokenizer_name(&tj["pre_tokenizer"])
        .ok_or_else(|| unsupported(dir, &format!("its pre-tokenizer {}", tj["pre_tokenizer"])))?;
    let vocab = Vocabulary::read(dir, &tj, vocab_size)?;
    let merges = merges(dir, &tj["model"]["merges"])?;

    let strings = |v: Vec<String>| Value::Array(v.into_iter().map(Value::String).collect());
    let mut md: Vec<(String, Value)> = vec![
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String(pre.into())),
        ("tokenizer.ggml.tokens".into(), strings(vocab.tokens)),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(vocab.types.into_iter().map(Value::I32).collect()),
        ),
        ("tokenizer.ggml.merges".into(), strings(merges)),
    ];
    let added = &vocab.added;
    for (kind, key) in SPECIAL_KINDS {
        let by_text = special_text(&config, &format!("{kind}_token")).and_then(|t| added.get(&t));
        let by_config = model_json[format!("{kind}_token_id")].as_u64();
        let id = by_text.map(|i| *i as u64).or(by_config);
        if let Some(id) = id.filter(|i| (*i as usize) < vocab_size) {
            md.push((key.into(), Value::U32(id as u32)));
        }
    }
    for (kind, add) in add_special_flags(&tj["post_processor"], &config) {
        md.push((format!("tokenizer.ggml.add_{kind}_token"), Value::Bool(add)));
    }
    if let Some(t) = chat_template(dir, &config)? {
        md.push(("tokenizer.chat_template".into(), Value::String(t)));
    }
    Ok(md)
}

fn unsupported(dir: &Path, what: &str) -> ModelError {
    ModelError::Unsupported(format!(
        "cannot write GGUF tokenizer metadata for {}: {what}. hone writes llama.cpp's \
         byte-level BPE vocabulary (pre-tokenizers gpt2, smollm, qwen2, llama-bpe); export \
         from the base model's GGUF instead (--model FILE.gguf)",
        dir.display()
    ))
}

fn read_json(path: &Path) -> Result<Option<Json>> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| ModelError::Config(format!("{}: not valid JSON: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ModelError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// A BPE model over the byte alphabet (byte-level decoder, no byte fallback); Gemma's
/// SentencePiece-style BPE (`▁` and byte-fallback tokens) is what llama.cpp's `llama`
/// tokenizer model expresses, from `tokenizer.model`, not this.
fn check_byte_level_bpe(dir: &Path, tj: &Json) -> Result<()> {
    let model = &tj["model"];
    let kind = model["type"].as_str().unwrap_or("(none)");
    if kind != "BPE" {
        return Err(unsupported(dir, &format!("its tokenizer model is {kind}")));
    }
    if model["byte_fallback"].as_bool() == Some(true) || !has_type(&tj["decoder"], "ByteLevel") {
        return Err(unsupported(
            dir,
            "its vocabulary is SentencePiece-style (byte fallback, no byte-level decoder; \
             llama.cpp's converter reads such a vocabulary from tokenizer.model)",
        ));
    }
    Ok(())
}

/// Whether `v` is, or is a `Sequence` holding, a component of type `kind`.
fn has_type(v: &Json, kind: &str) -> bool {
    v["type"] == kind
        || v["pretokenizers"]
            .as_array()
            .or(v["decoders"].as_array())
            .is_some_and(|l| l.iter().any(|x| has_type(x, kind)))
}

/// llama.cpp's `tokenizer.ggml.pre` for a tokenizer.json `pre_tokenizer`, when it is
/// one of the pipelines llama.cpp and hone's GGUF reader implement.
fn pre_tokenizer_name(pre: &Json) -> Option<&'static str> {
    let byte_level = |v: &Json, regex: bool| {
        v["type"] == "ByteLevel"
            && v["use_regex"].as_bool() == Some(regex)
            && v["add_prefix_space"].as_bool() != Some(true)
    };
    if byte_level(pre, true) {
        return Some("gpt2");
    }
    let list = pre["pretokenizers"]
        .as_array()
        .filter(|_| pre["type"] == "Sequence")?;
    match list.as_slice() {
        [digits, bl] if digits["type"] == "Digits" && byte_level(bl, true) => {
            (digits["individual_digits"].as_bool() == Some(true)).then_some("smollm")
        }
        [split, bl] if split["type"] == "Split" && byte_level(bl, false) => {
            if split["behavior"] != "Isolated" || split["invert"].as_bool() == Some(true) {
                return None;
            }
            match split["pattern"]["Regex"].as_str()? {
                QWEN2_SPLIT => Some("qwen2"),
                LLAMA3_SPLIT => Some("llama-bpe"),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The token list and types, as the converter's `get_vocab_base` builds them.
struct Vocabulary {
    tokens: Vec<String>,
    types: Vec<i32>,
    /// Added tokens by text, for the special-token ids.
    added: HashMap<String, u32>,
}

impl Vocabulary {
    fn read(dir: &Path, tj: &Json, vocab_size: usize) -> Result<Self> {
        let mut tokens: Vec<Option<String>> = vec![None; vocab_size];
        let mut types = vec![UNUSED; vocab_size];
        let mut place = |id: u64, text: &str, ty: i32| -> Result<()> {
            let slot = tokens.get_mut(id as usize).ok_or_else(|| {
                ModelError::Config(format!(
                    "{}: token {text:?} has id {id}, beyond the model's vocab_size {vocab_size}",
                    dir.join("tokenizer.json").display()
                ))
            })?;
            *slot = Some(text.to_string());
            types[id as usize] = ty;
            Ok(())
        };
        let vocab = tj["model"]["vocab"]
            .as_object()
            .ok_or_else(|| unsupported(dir, "its model has no vocab"))?;
        for (text, id) in vocab {
            let id = id
                .as_u64()
                .ok_or_else(|| unsupported(dir, &format!("token {text:?} has id {id}")))?;
            place(id, text, NORMAL)?;
        }
        let mut added = HashMap::new();
        for t in tj["added_tokens"].as_array().into_iter().flatten() {
            let (Some(id), Some(text)) = (t["id"].as_u64(), t["content"].as_str()) else {
                return Err(unsupported(dir, &format!("an added token {t}")));
            };
            let special = t["special"].as_bool() == Some(true) || looks_special(text);
            if special {
                place(id, text, CONTROL)?;
            } else {
                // llama.cpp holds user-defined tokens pre-normalized.
                place(id, &text.replace('\u{2581}', " "), USER_DEFINED)?;
            }
            added.insert(text.to_string(), id as u32);
        }
        let tokens = tokens
            .into_iter()
            .enumerate()
            .map(|(i, t)| t.unwrap_or_else(|| format!("[PAD{i}]")))
            .collect();
        Ok(Vocabulary {
            tokens,
            types,
            added,
        })
    }
}

/// The converter's `does_token_look_special`: some models mark control tokens as not
/// special.
fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<\u{ff5c}") && t.ends_with("\u{ff5c}>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

/// Merges as `"a b"` lines, from either tokenizer.json form (`"a b"` or `["a", "b"]`; a
/// space inside a part is spelled `Ġ`, as the converter does).
fn merges(dir: &Path, v: &Json) -> Result<Vec<String>> {
    let list = v
        .as_array()
        .ok_or_else(|| unsupported(dir, "its BPE model has no merges"))?;
    list.iter()
        .map(|m| match m {
            Json::String(s) => Ok(s.clone()),
            Json::Array(pair) => {
                let parts: Option<Vec<String>> = pair
                    .iter()
                    .map(|p| p.as_str().map(|s| s.replace(' ', "\u{120}")))
                    .collect();
                match parts.as_deref() {
                    Some([a, b]) => Ok(format!("{a} {b}")),
                    _ => Err(unsupported(dir, &format!("a merge {m}"))),
                }
            }
            _ => Err(unsupported(dir, &format!("a merge {m}"))),
        })
        .collect()
}

/// `bos_token` etc. in tokenizer_config.json: a string or an AddedToken object.
fn special_text(config: &Json, key: &str) -> Option<String> {
    match &config[key] {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// `add_bos_token` / `add_eos_token`: a `TemplateProcessing` post-processor's first and
/// last special tokens say (when they are BOS / EOS), a `ByteLevel` one says neither;
/// tokenizer_config.json's flags fill in what the post-processor left unsaid.
fn add_special_flags(post: &Json, config: &Json) -> Vec<(&'static str, bool)> {
    let mut flags: Vec<(&'static str, bool)> = Vec::new();
    let mut set = |kind: &'static str, v: bool, overwrite: bool| match flags
        .iter_mut()
        .find(|(k, _)| *k == kind)
    {
        Some(f) if overwrite => f.1 = v,
        Some(_) => {}
        None => flags.push((kind, v)),
    };
    let processors: Vec<&Json> = match post["processors"].as_array() {
        Some(l) => l.iter().collect(),
        None if !post.is_null() => vec![post],
        None => vec![],
    };
    let bos = special_text(config, "bos_token");
    let eos = special_text(config, "eos_token");
    for p in processors {
        match p["type"].as_str() {
            Some("ByteLevel") => {
                set("bos", false, false);
                set("eos", false, false);
            }
            Some("TemplateProcessing") => {
                let single = p["single"].as_array().map(Vec::as_slice).unwrap_or(&[]);
                let special = |e: &Json| e["SpecialToken"]["id"].as_str().map(str::to_string);
                if single.len() > 1 {
                    if let Some(first) = single.first().and_then(special) {
                        set("bos", bos.as_deref() == Some(first.as_str()), true);
                    }
                    if let Some(last) = single.last().and_then(special) {
                        set("eos", eos.as_deref() == Some(last.as_str()), true);
                    }
                }
            }
            _ => {}
        }
    }
    for kind in ["bos", "eos"] {
        if let Some(v) = config[format!("add_{kind}_token")].as_bool() {
            set(kind, v, false);
        }
    }
    flags
}

/// `tokenizer_config.json`'s `chat_template` (a string, or the `default` / first of a
/// list), else `chat_template.jinja`, as gguf-py's `SpecialVocab` picks it.
fn chat_template(dir: &Path, config: &Json) -> Result<Option<String>> {
    match &config["chat_template"] {
        Json::String(s) => return Ok(Some(s.clone())),
        Json::Array(list) => {
            let named = list.iter().find(|e| e["name"] == "default");
            let entry = named.or(list.first());
            if let Some(t) = entry.and_then(|e| e["template"].as_str()) {
                return Ok(Some(t.to_string()));
            }
        }
        _ => {}
    }
    let jinja = dir.join("chat_template.jinja");
    match std::fs::read_to_string(&jinja) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ModelError::Io {
            path: jinja,
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pre_tokenizers_are_named_from_their_pipeline() {
        let bl = |regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": regex});
        assert_eq!(pre_tokenizer_name(&bl(true)), Some("gpt2"));
        let seq = |a: Json, b: Json| json!({"type": "Sequence", "pretokenizers": [a, b]});
        let digits = json!({"type": "Digits", "individual_digits": true});
        assert_eq!(pre_tokenizer_name(&seq(digits, bl(true))), Some("smollm"));
        let split = |re: &str| json!({"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false});
        assert_eq!(
            pre_tokenizer_name(&seq(split(QWEN2_SPLIT), bl(false))),
            Some("qwen2")
        );
        assert_eq!(
            pre_tokenizer_name(&seq(split(LLAMA3_SPLIT), bl(false))),
            Some("llama-bpe")
        );
        // Anything else is not guessed.
        assert_eq!(pre_tokenizer_name(&seq(split(r"\s+"), bl(false))), None);
        assert_eq!(pre_tokenizer_name(&json!({"type": "Metaspace"})), None);
        assert_eq!(pre_tokenizer_name(&Json::Null), None);
        let mut prefix = bl(true);
        prefix["add_prefix_space"] = true.into();
        assert_eq!(pre_tokenizer_name(&prefix), None);
    }

    #[test]
    fn add_bos_follows_the_post_processor_then_the_config() {
        let cfg = json!({"bos_token": "<s>", "eos_token": "</s>", "add_eos_token": true});
        let tp = json!({"type": "TemplateProcessing", "single": [
            {"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}
        ]});
        assert_eq!(
            add_special_flags(&tp, &cfg),
            vec![("bos", true), ("eos", true)]
        );
        let bl = json!({"type": "ByteLevel"});
        assert_eq!(
            add_special_flags(&bl, &cfg),
            vec![("bos", false), ("eos", false)]
        );
        assert_eq!(add_special_flags(&Json::Null, &json!({})), vec![]);
    }

    #[test]
    fn merges_come_in_either_form() {
        let d = Path::new("x");
        assert_eq!(
            merges(d, &json!(["a b", ["Ġ", "t"], ["x y", "z"]])).unwrap(),
            vec!["a b", "Ġ t", "x\u{120}y z"]
        );
        assert!(merges(d, &json!([["a"]])).is_err());
        assert!(merges(d, &Json::Null).is_err());
    }
}
