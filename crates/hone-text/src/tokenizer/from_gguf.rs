//! Building a `tokenizers` pipeline from GGUF `tokenizer.ggml.*` metadata.
//!
//! A GGUF carries the vocabulary (and merges, for BPE) but not the pipeline
//! around it, so the normalizer, pre-tokenizer and decoder are chosen from
//! `tokenizer.ggml.model`, `tokenizer.ggml.pre` and the architecture. Each
//! choice mirrors what transformers' GGUF loader builds for the same file,
//! and `testdata/tokenizers/` holds ids made with that loader to prove it
//! (`scripts/make_tokenizer_vectors.py`). A value hone has no pipeline for
//! is an error naming the supported ones: a guessed pipeline would tokenise
//! subtly wrong.

use candle_core::quantized::gguf_file::Content;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

use crate::error::{Error, Result};
use crate::gguf;

/// GGUF `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// The `tokenizer.ggml.pre` values hone builds a byte-level BPE for.
pub const SUPPORTED_BYTE_LEVEL_PRE: &[&str] = &["default", "gpt2", "smollm", "qwen2", "llama-bpe"];

/// The architectures whose SentencePiece-style (`tokenizer.ggml.model =
/// "llama"`) vocabulary hone builds.
pub const SUPPORTED_SENTENCEPIECE_ARCHS: &[&str] = &["gemma", "gemma2", "gemma3"];

/// Qwen2's split (transformers' `Qwen2Tokenizer.PRETOKENIZE_REGEX`): like
/// Llama 3's but one digit per piece.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Llama 3's split: digits in runs of up to three.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// SentencePiece's word-boundary symbol.
const SPM_SPACE: char = '\u{2581}';

/// A tokenizer built from GGUF metadata, with the ids chat needs.
pub(super) struct GgufTokenizer {
    pub inner: tokenizers::Tokenizer,
    pub bos: Option<u32>,
    pub eos: u32,
    /// `tokenizer.ggml.eot_token_id`: ends a turn, when it differs from EOS.
    pub eot: Option<u32>,
}

/// Builds the tokenizer a GGUF file describes.
pub(super) fn build(content: &Content) -> Result<GgufTokenizer> {
    let model = gguf::get_string(content, "tokenizer.ggml.model")?;
    let tokens = gguf::get_string_array(content, "tokenizer.ggml.tokens")?;
    let types = gguf::get_opt_int_array(content, "tokenizer.ggml.token_type")?;
    if let Some(t) = &types {
        if t.len() != tokens.len() {
            return Err(Error::BadMetadata {
                key: "tokenizer.ggml.token_type".into(),
                message: format!("{} entries for {} tokens", t.len(), tokens.len()),
            });
        }
    }
    let types = types.as_deref();
    let inner = match model {
        "gpt2" => {
            let pre = gguf::get_opt_string(content, "tokenizer.ggml.pre")?.unwrap_or("default");
            let merges = parse_merges(&gguf::get_string_array(content, "tokenizer.ggml.merges")?)?;
            byte_level_bpe(&tokens, merges, types, pre)?
        }
        "llama" => {
            let arch = gguf::get_opt_string(content, "general.architecture")?.unwrap_or("");
            if !SUPPORTED_SENTENCEPIECE_ARCHS.contains(&arch) {
                return Err(Error::Unsupported(format!(
                    "a SentencePiece-style vocabulary (tokenizer.ggml.model = \"llama\") for \
                     general.architecture = {arch:?}; hone builds it for {} only. Load the \
                     model's tokenizer.json instead",
                    SUPPORTED_SENTENCEPIECE_ARCHS.join(", ")
                )));
            }
            let unk = gguf::get_opt_u32(content, "tokenizer.ggml.unknown_token_id")?;
            gemma_bpe(&tokens, types, unk)?
        }
        other => {
            return Err(Error::Unsupported(format!(
                "tokenizer.ggml.model = {other:?}; hone builds \"gpt2\" (byte-level BPE) and \
                 \"llama\" (SentencePiece-style, for {}). Load the model's tokenizer.json instead",
                SUPPORTED_SENTENCEPIECE_ARCHS.join(", ")
            )))
        }
    };
    Ok(GgufTokenizer {
        inner,
        bos: gguf::get_opt_u32(content, "tokenizer.ggml.bos_token_id")?,
        eos: gguf::get_opt_u32(content, "tokenizer.ggml.eos_token_id")?
            .ok_or_else(|| Error::MissingMetadata("tokenizer.ggml.eos_token_id".into()))?,
        eot: gguf::get_opt_u32(content, "tokenizer.ggml.eot_token_id")?,
    })
}

fn parse_merges(lines: &[String]) -> Result<Vec<(String, String)>> {
    lines
        .iter()
        .enumerate()
        .map(|(i, m)| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| Error::BadMetadata {
                    key: "tokenizer.ggml.merges".into(),
                    message: format!("merge {i} ({m:?}) is not two tokens separated by a space"),
                })
        })
        .collect()
}

/// The vocabulary as `{text: id}`. As in transformers, a text that occurs
/// twice keeps its later id.
fn vocab_of(tokens: &[String]) -> Vocab {
    tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect()
}

/// The pre-tokenizer for each GGUF `tokenizer.ggml.pre`. Never a prefix
/// space: that is the bug in candle's converter.
fn pre_tokenizer_for(pre: &str) -> Result<PreTokenizerWrapper> {
    let byte_level = ByteLevel::new(false, true, true);
    // After a regex split, ByteLevel only maps bytes to symbols.
    let split_then_bytes = |regex: &str| -> Result<PreTokenizerWrapper> {
        let split = Split::new(
            SplitPattern::Regex(regex.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(Error::tokenizer)?;
        Ok(Sequence::new(vec![
            split.into(),
            ByteLevel::new(false, true, false).into(),
        ])
        .into())
    };
    match pre {
        // SmolLM's tokenizer.json: Digits(individual) then ByteLevel.
        "smollm" => Ok(Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()),
        "gpt2" | "default" => Ok(byte_level.into()),
        "qwen2" => split_then_bytes(QWEN2_SPLIT),
        "llama-bpe" => split_then_bytes(LLAMA3_SPLIT),
        other => Err(Error::Unsupported(format!(
            "tokenizer.ggml.pre = {other:?} is not supported when building from GGUF (supported: \
             {}); load the model's tokenizer.json instead",
            SUPPORTED_BYTE_LEVEL_PRE.join(", ")
        ))),
    }
}

/// Byte-level BPE (`tokenizer.ggml.model = "gpt2"`): SmolLM, Qwen2/2.5/3,
/// Llama 3.
fn byte_level_bpe(
    tokens: &[String],
    merges: Vec<(String, String)>,
    types: Option<&[i64]>,
    pre: &str,
) -> Result<tokenizers::Tokenizer> {
    let pre_tokenizer = pre_tokenizer_for(pre)?;
    // Tokens are stored in the byte alphabet; one that is not (a few
    // converters write raw text) is respelled byte by byte, as transformers
    // does.
    let symbols = crate::testing::byte_level_symbols();
    let in_alphabet = |t: &str| t.chars().all(|c| symbols.contains(&c));
    let spelled: Vec<String> = tokens
        .iter()
        .map(|t| {
            if in_alphabet(t) {
                t.clone()
            } else {
                t.bytes().map(|b| symbols[b as usize]).collect()
            }
        })
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab_of(&spelled), merges)
        .build()
        .map_err(Error::tokenizer)?;
    let mut tok = tokenizers::Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(pre_tokenizer));
    tok.with_decoder(Some(ByteLevelDecoder::new(false, true, true)));
    // A control token outside the byte alphabet is a llama.cpp mislabel;
    // transformers skips it, and so does hone.
    add_typed_tokens(&mut tok, tokens, types, |t| in_alphabet(t))?;
    Ok(tok)
}

/// Gemma's SentencePiece-style vocabulary, as transformers' `GemmaTokenizer`
/// builds it: BPE with byte fallback (`<0xNN>` tokens), spaces written as
/// `▁` by the normalizer, and no prefix space.
fn gemma_bpe(
    tokens: &[String],
    types: Option<&[i64]>,
    unk_id: Option<u32>,
) -> Result<tokenizers::Tokenizer> {
    // Pieces of two or more spaces are stored with real spaces, but looked
    // up (after the normalizer) as `▁▁`.
    let spelled: Vec<String> = tokens
        .iter()
        .map(|t| {
            if t.contains(' ') && t.chars().all(is_python_space) {
                SPM_SPACE.to_string().repeat(t.chars().count())
            } else {
                t.clone()
            }
        })
        .collect();
    let vocab = vocab_of(&spelled);
    let merges = merges_by_position(&spelled, &vocab);
    let unk = unk_id
        .and_then(|id| tokens.get(id as usize))
        .cloned()
        .unwrap_or_else(|| "<unk>".to_string());
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .unk_token(unk)
        .fuse_unk(true)
        .byte_fallback(true)
        .build()
        .map_err(Error::tokenizer)?;
    let mut tok = tokenizers::Tokenizer::new(bpe);
    let space = SPM_SPACE.to_string();
    tok.with_normalizer(Some(
        Replace::new(" ", space.as_str()).map_err(Error::tokenizer)?,
    ))
    .map_err(Error::tokenizer)?;
    // A no-op after the normalizer, kept because transformers has it and it
    // shapes the offsets.
    tok.with_pre_tokenizer(Some(
        Split::new(" ", SplitDelimiterBehavior::MergedWithPrevious, false)
            .map_err(Error::tokenizer)?,
    ));
    tok.with_decoder(Some(DecoderSequence::new(vec![
        Replace::new(space.as_str(), " ")
            .map_err(Error::tokenizer)?
            .into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ])));
    add_typed_tokens(&mut tok, tokens, types, |_| true)?;
    Ok(tok)
}

/// Python's `str.isspace`, which transformers uses to find space pieces.
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// The merges a vocabulary without merges implies (transformers'
/// `generate_merges` with Gemma's position scores): every split of a token
/// into two tokens, best first, where a token earlier in the file is better
/// (Gemma's scores do not follow its merge order; positions do), and, for
/// one token, a longer left piece first.
fn merges_by_position(tokens: &[String], vocab: &Vocab) -> Vec<(String, String)> {
    struct Candidate<'a> {
        rank: u32,
        left_chars: usize,
        left: &'a str,
        right: &'a str,
    }
    let mut candidates = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for token in tokens {
        if !seen.insert(token.as_str()) {
            continue;
        }
        let rank = vocab[token];
        for (i, (at, _)) in token.char_indices().enumerate().skip(1) {
            let (left, right) = token.split_at(at);
            if vocab.contains_key(left) && vocab.contains_key(right) {
                candidates.push(Candidate {
                    rank,
                    left_chars: i,
                    left,
                    right,
                });
            }
        }
    }
    // Stable, like Python's sort. Within one token every split has its own
    // left length, so the order is total.
    candidates.sort_by(|a, b| a.rank.cmp(&b.rank).then(b.left_chars.cmp(&a.left_chars)));
    candidates
        .into_iter()
        .map(|c| (c.left.to_string(), c.right.to_string()))
        .collect()
}

/// Adds the tokens the file marks as control as special tokens, and the
/// user-defined ones (such as `<tool_call>` or Gemma's newline runs) as
/// plain added tokens, so they are matched whole in text instead of being
/// cut into pieces. Both are matched on the raw text, before normalization.
fn add_typed_tokens(
    tok: &mut tokenizers::Tokenizer,
    tokens: &[String],
    types: Option<&[i64]>,
    keep_control: impl Fn(&str) -> bool,
) -> Result<()> {
    let Some(types) = types else { return Ok(()) };
    let of_type = |kind: i64| tokens.iter().zip(types).filter(move |(_, &t)| t == kind);
    let control: Vec<AddedToken> = of_type(TOKEN_TYPE_CONTROL)
        .filter(|(t, _)| keep_control(t))
        .map(|(t, _)| AddedToken::from(t.clone(), true).normalized(false))
        .collect();
    tok.add_special_tokens(control).map_err(Error::tokenizer)?;
    let vocab = tok.get_vocab(true);
    let user: Vec<AddedToken> = of_type(TOKEN_TYPE_USER_DEFINED)
        .filter(|(t, _)| vocab.contains_key(t.as_str()))
        .map(|(t, _)| AddedToken::from(t.clone(), false).normalized(false))
        .collect();
    tok.add_tokens(user).map_err(Error::tokenizer)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn merges_follow_token_position_then_longer_left_piece() {
        let tokens = strings(&["a", "b", "c", "ab", "abc", "bc"]);
        let vocab = vocab_of(&tokens);
        let merges = merges_by_position(&tokens, &vocab);
        let pairs: Vec<(&str, &str)> = merges
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        assert_eq!(
            pairs,
            vec![("a", "b"), ("ab", "c"), ("a", "bc"), ("b", "c")]
        );
    }

    #[test]
    fn unknown_pre_tokenizer_lists_the_supported_ones() {
        let err = pre_tokenizer_for("deepseek-llm").unwrap_err().to_string();
        assert!(err.contains("deepseek-llm"), "{err}");
        for pre in SUPPORTED_BYTE_LEVEL_PRE {
            assert!(err.contains(pre), "{err}");
        }
    }
}
