//! The tokenizer: a `tokenizers` BPE built from GGUF metadata (or loaded
//! from an HF `tokenizer.json`), plus the ids that matter for chat (BOS, EOS,
//! end-of-turn) and a streaming decoder.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::gguf_file::Content;

use crate::count::{FastCounter, SpanCount};
use crate::error::{Error, Result};
use crate::gguf;

mod from_gguf;

/// Token texts that end a turn in common chat formats. Any of them present in
/// the vocabulary is a stop token, in addition to EOS.
pub const END_OF_TURN_TOKENS: &[&str] = &[
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<end_of_turn>",
    "<|end|>",
    "<|endoftext|>",
];

/// A tokenizer with its chat-relevant special ids. Cheap to share: it is
/// `Send + Sync`, so one instance can tokenise from many rayon threads.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos_id: Option<u32>,
    eos_id: u32,
    stop_ids: Vec<u32>,
    /// `inner.get_vocab_size(true)`, which builds the whole vocabulary map
    /// on every call: far too slow per decoded token with a 262k vocabulary.
    vocab_size: usize,
    /// The count-only path, when the pipeline is one it reproduces exactly.
    fast_count: Option<Arc<FastCounter>>,
}

/// Token ids with the byte range of the input text each one came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedText {
    pub ids: Vec<u32>,
    /// Byte offsets into the encoded text, one per id.
    pub offsets: Vec<Range<usize>>,
}

impl Tokenizer {
    /// Builds the tokenizer from GGUF metadata (`tokenizer.ggml.*`): a
    /// byte-level BPE (`tokenizer.ggml.model = "gpt2"`) with one of the
    /// [`SUPPORTED_BYTE_LEVEL_PRE`] pre-tokenizers (SmolLM, Qwen2/2.5/3,
    /// Llama 3), or Gemma's SentencePiece-style vocabulary. Anything else is
    /// an error naming what is supported, rather than a subtly wrong guess;
    /// such models can be loaded from their `tokenizer.json`.
    ///
    /// Stop ids are EOS, then `tokenizer.ggml.eot_token_id`, then any known
    /// end-of-turn token in the vocabulary.
    pub fn from_gguf_content(content: &Content) -> Result<Self> {
        let built = from_gguf::build(content)?;
        let mut tok = Self::from_parts(built.inner, built.bos, built.eos)?;
        if let Some(eot) = built.eot {
            if tok.inner.id_to_token(eot).is_none() {
                return Err(Error::UnknownTokenId {
                    id: eot,
                    vocab_size: tok.vocab_size(),
                });
            }
            if !tok.stop_ids.contains(&eot) {
                tok.stop_ids.insert(1, eot);
            }
        }
        Ok(tok)
    }

    /// Reads a GGUF file's metadata and builds the tokenizer from it.
    pub fn from_gguf(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_gguf_content(&gguf::read_gguf_content(path)?)
    }

    /// Loads an HF `tokenizer.json`. BOS and EOS come from a
    /// `tokenizer_config.json` next to it when present; otherwise EOS is the
    /// first known end-of-turn token in the vocabulary.
    pub fn from_tokenizer_json(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let inner: tokenizers::Tokenizer = text.parse().map_err(|e| Error::Json {
            path: path.to_path_buf(),
            message: format!("{e}"),
        })?;
        let config = match path.parent().map(|d| d.join("tokenizer_config.json")) {
            Some(p) if p.exists() => Some(crate::hf::read_json(&p)?),
            _ => None,
        };
        let token = |key: &str| {
            config
                .as_ref()
                .and_then(|c| crate::hf::special_token_text(c, key))
                .and_then(|t| inner.token_to_id(&t))
        };
        let bos = token("bos_token");
        let eos = token("eos_token")
            .or_else(|| END_OF_TURN_TOKENS.iter().find_map(|t| inner.token_to_id(t)))
            .ok_or_else(|| {
                Error::Unsupported(format!(
                    "{}: no eos_token in tokenizer_config.json and no known end-of-turn token",
                    path.display()
                ))
            })?;
        Self::from_parts(inner, bos, eos)
    }

    /// Wraps an already built `tokenizers::Tokenizer`.
    pub fn from_parts(
        inner: tokenizers::Tokenizer,
        bos_id: Option<u32>,
        eos_id: u32,
    ) -> Result<Self> {
        let vocab_size = inner.get_vocab_size(true);
        for id in bos_id.iter().chain(std::iter::once(&eos_id)) {
            if inner.id_to_token(*id).is_none() {
                return Err(Error::UnknownTokenId {
                    id: *id,
                    vocab_size,
                });
            }
        }
        let mut stop_ids = vec![eos_id];
        for t in END_OF_TURN_TOKENS {
            if let Some(id) = inner.token_to_id(t) {
                if !stop_ids.contains(&id) {
                    stop_ids.push(id);
                }
            }
        }
        let fast_count = FastCounter::recognise(&inner).map(Arc::new);
        Ok(Tokenizer {
            inner,
            bos_id,
            eos_id,
            stop_ids,
            vocab_size,
            fast_count,
        })
    }

    /// Encodes text to ids. No BOS/EOS is added: the chat template is
    /// responsible for those. Special tokens written in the text (such as
    /// `<|im_start|>`) become their special ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode_fast(text, false)
            .map_err(Error::tokenizer)?;
        Ok(enc.get_ids().to_vec())
    }

    /// Encodes text and returns each token's byte range in `text`.
    pub fn encode_with_offsets(&self, text: &str) -> Result<EncodedText> {
        let enc = self.inner.encode(text, false).map_err(Error::tokenizer)?;
        Ok(EncodedText {
            ids: enc.get_ids().to_vec(),
            offsets: enc.get_offsets().iter().map(|&(s, e)| s..e).collect(),
        })
    }

    /// How many tokens [`Self::encode_with_offsets`] gives for `text`, and
    /// how many of them start inside `ranges` (byte ranges of `text`), without
    /// building the encoding. Exactly equal to counting the encoding; faster
    /// when the pipeline is one [`crate::count`] recognises (the GGUF
    /// byte-level BPE is), otherwise it encodes.
    pub fn count_tokens(&self, text: &str, ranges: &[Range<usize>]) -> Result<SpanCount> {
        if let Some(fast) = &self.fast_count {
            return fast.count(self.inner.get_model(), text, ranges);
        }
        let enc = self.encode_with_offsets(text)?;
        let in_ranges = enc
            .offsets
            .iter()
            .filter(|o| ranges.iter().any(|r| r.contains(&o.start)))
            .count();
        Ok(SpanCount {
            total: enc.ids.len(),
            in_ranges,
        })
    }

    /// Whether [`Self::count_tokens`] takes the count-only path.
    pub fn has_fast_count(&self) -> bool {
        self.fast_count.is_some()
    }

    /// The same tokenizer with the count-only path's word cache on or off
    /// (a fresh cache). For measuring what the cache is worth.
    #[doc(hidden)]
    pub fn with_count_cache(mut self, on: bool) -> Self {
        self.fast_count = FastCounter::recognise(&self.inner)
            .map(|f| if on { f } else { f.without_cache() })
            .map(Arc::new);
        self
    }

    /// Decodes ids to text, keeping special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.check_ids(ids)?;
        self.inner.decode(ids, false).map_err(Error::tokenizer)
    }

    /// Decodes ids to text, dropping special tokens.
    pub fn decode_skip_special(&self, ids: &[u32]) -> Result<String> {
        self.check_ids(ids)?;
        self.inner.decode(ids, true).map_err(Error::tokenizer)
    }

    fn check_ids(&self, ids: &[u32]) -> Result<()> {
        let vocab_size = self.vocab_size();
        match ids.iter().find(|&&id| id as usize >= vocab_size) {
            Some(&id) => Err(Error::UnknownTokenId { id, vocab_size }),
            None => Ok(()),
        }
    }

    /// The id of a token text, if it is in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The text of a token id (byte-level form, e.g. `Ġthe`).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Number of ids, including added/special tokens.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Beginning-of-sequence id, if the model has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// End-of-sequence id.
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// Ids that end generation: EOS first, then any end-of-turn tokens
    /// (`<|im_end|>`, `<|eot_id|>`, ...) present in the vocabulary.
    pub fn stop_token_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    /// The texts of [`Self::stop_token_ids`].
    pub fn stop_token_texts(&self) -> Vec<String> {
        self.stop_ids
            .iter()
            .filter_map(|&id| self.id_to_token(id))
            .collect()
    }

    /// Whether `id` is a special (control) token.
    pub fn is_special(&self, id: u32) -> bool {
        self.inner
            .get_added_vocabulary()
            .simple_id_to_token(id)
            .is_some_and(|t| self.inner.get_added_vocabulary().is_special_token(&t))
    }

    /// Whether `id` is an added token (special or not, such as Qwen's `<tool_call>`):
    /// one token whatever the text around it.
    pub fn is_added(&self, id: u32) -> bool {
        self.inner
            .get_added_vocabulary()
            .simple_id_to_token(id)
            .is_some()
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// A streaming decoder bound to this tokenizer.
    pub fn decode_stream(&self) -> DecodeStream<'_> {
        DecodeStream {
            tokenizer: self,
            state: IncrementalDecoder::new(),
        }
    }
}

/// State of a streaming decode, independent of any borrow so it can live in
/// an async task next to an `Arc<Tokenizer>`. Text is only emitted once it
/// is complete UTF-8: a token that ends in the middle of a character is held
/// back until the character is finished.
#[derive(Debug, Clone, Default)]
pub struct IncrementalDecoder {
    ids: Vec<u32>,
    prefix: String,
    prefix_index: usize,
}

impl IncrementalDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one id; returns the new text it completes, if any.
    pub fn step(&mut self, tokenizer: &Tokenizer, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let text = tokenizer.decode(&self.ids)?;
        if text.len() <= self.prefix.len() || text.ends_with('\u{FFFD}') {
            return Ok(None);
        }
        let new_text = match text.strip_prefix(self.prefix.as_str()) {
            Some(t) => t.to_string(),
            None => {
                return Err(Error::Tokenizer(format!(
                    "streaming decode: {text:?} does not extend {:?}",
                    self.prefix
                )))
            }
        };
        // Keep only the ids since the last emitted boundary as context, so
        // decoding stays O(1) per token.
        let keep_from = self.prefix_index;
        self.ids.drain(..keep_from);
        self.prefix_index = self.ids.len();
        self.prefix = tokenizer.decode(&self.ids)?;
        Ok(Some(new_text))
    }

    /// Text still held back (an unfinished character) at the end of a
    /// stream, decoded lossily; `None` if nothing is pending.
    pub fn flush(&mut self, tokenizer: &Tokenizer) -> Result<Option<String>> {
        let text = tokenizer.decode(&self.ids)?;
        let rest = text.get(self.prefix.len()..).unwrap_or("").to_string();
        self.ids.clear();
        self.prefix.clear();
        self.prefix_index = 0;
        Ok(if rest.is_empty() { None } else { Some(rest) })
    }
}

/// [`IncrementalDecoder`] bound to a tokenizer, for simple loops.
#[derive(Debug)]
pub struct DecodeStream<'a> {
    tokenizer: &'a Tokenizer,
    state: IncrementalDecoder,
}

impl DecodeStream<'_> {
    /// Adds one id; returns the new complete text, if any.
    pub fn step(&mut self, id: u32) -> Result<Option<String>> {
        self.state.step(self.tokenizer, id)
    }

    /// Emits whatever is held back at the end of the stream.
    pub fn flush(&mut self) -> Result<Option<String>> {
        self.state.flush(self.tokenizer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::tiny_gguf_content;

    fn tiny() -> Tokenizer {
        Tokenizer::from_gguf_content(&tiny_gguf_content(None).unwrap()).unwrap()
    }

    #[test]
    fn special_tokens_written_in_text_encode_to_their_ids() {
        let t = tiny();
        let ids = t.encode("<|im_start|>user\nHi<|im_end|>").unwrap();
        assert_eq!(ids.first(), Some(&1));
        assert_eq!(ids.last(), Some(&2));
        assert_eq!(t.decode(&ids).unwrap(), "<|im_start|>user\nHi<|im_end|>");
        assert_eq!(t.decode_skip_special(&ids).unwrap(), "user\nHi");
        assert!(t.is_special(2) && !t.is_special(ids[1]));
    }

    #[test]
    fn first_word_is_encoded_without_a_prefix_space() {
        let t = tiny();
        let hello = t.token_to_id("Hello").unwrap();
        let space_hello = t.token_to_id("ĠHello").unwrap();
        assert_eq!(t.encode("Hello").unwrap(), vec![hello]);
        assert_eq!(t.encode(" Hello").unwrap(), vec![space_hello]);
    }

    #[test]
    fn offsets_are_bytes_of_the_input() {
        let t = tiny();
        let text = "é✓Hi";
        let enc = t.encode_with_offsets(text).unwrap();
        assert_eq!(enc.ids.len(), enc.offsets.len());
        assert_eq!(enc.offsets.last().unwrap(), &(5..7));
        assert_eq!(enc.ids.last(), t.token_to_id("Hi").as_ref());
    }

    #[test]
    fn decode_rejects_ids_outside_the_vocabulary() {
        let t = tiny();
        let err = t.decode(&[u32::MAX]).unwrap_err();
        assert!(matches!(err, Error::UnknownTokenId { .. }), "{err}");
    }

    #[test]
    fn stop_tokens_are_eos_then_end_of_turn_tokens() {
        let t = tiny();
        assert_eq!(t.eos_id(), 2);
        assert_eq!(t.bos_id(), Some(1));
        assert_eq!(t.stop_token_ids(), &[2, 0]);
        assert_eq!(t.stop_token_texts(), vec!["<|im_end|>", "<|endoftext|>"]);
    }

    #[test]
    fn streaming_decoder_never_emits_a_partial_character() {
        let t = tiny();
        // Every multi-byte character is several byte tokens in the tiny vocab.
        let text = "Hi é 東京 🎉👍🏽 Hello world";
        let ids = t.encode(text).unwrap();
        assert!(
            ids.len() > text.chars().count(),
            "characters should span tokens"
        );
        let mut dec = IncrementalDecoder::new();
        let mut out = String::new();
        let mut held_back = 0;
        for &id in &ids {
            match dec.step(&t, id).unwrap() {
                Some(piece) => {
                    assert!(
                        !piece.contains('\u{FFFD}'),
                        "partial character in {piece:?}"
                    );
                    out.push_str(&piece);
                }
                None => held_back += 1,
            }
        }
        assert!(held_back > 0);
        assert_eq!(dec.flush(&t).unwrap(), None);
        assert_eq!(out, text);
    }

    #[test]
    fn streaming_flush_returns_an_unfinished_character() {
        let t = tiny();
        let ids = t.encode("a🎉").unwrap();
        let mut s = t.decode_stream();
        let mut out = String::new();
        for &id in &ids[..ids.len() - 1] {
            if let Some(p) = s.step(id).unwrap() {
                out.push_str(&p);
            }
        }
        assert_eq!(out, "a");
        assert!(s.flush().unwrap().is_some_and(|r| r.contains('\u{FFFD}')));
    }

    #[test]
    fn unsupported_gguf_pre_tokenizer_is_an_error_not_a_guess() {
        let mut content = tiny_gguf_content(None).unwrap();
        content.metadata.insert(
            "tokenizer.ggml.pre".into(),
            candle_core::quantized::gguf_file::Value::String("deepseek-llm".into()),
        );
        let err = Tokenizer::from_gguf_content(&content).unwrap_err();
        assert!(err.to_string().contains("deepseek-llm"), "{err}");
    }

    #[test]
    fn missing_eos_names_the_key() {
        let mut content = tiny_gguf_content(None).unwrap();
        content.metadata.remove("tokenizer.ggml.eos_token_id");
        let err = Tokenizer::from_gguf_content(&content).unwrap_err();
        assert!(
            err.to_string().contains("tokenizer.ggml.eos_token_id"),
            "{err}"
        );
    }
}
