//! Counting tokens without encoding: the numbers `encode_chat` would give
//! (how many tokens, and how many of them start inside the trained byte
//! ranges), at a fraction of the cost.
//!
//! Why: `hone data validate` counts every example of a file, and the
//! `tokenizers` encode path spends most of its time building things a count
//! does not need (a `NormalizedString` with per-byte alignments for every
//! word, token strings, offsets, the `Encoding`), and the BPE merges of words
//! that fall out of its 10,000-word cache.
//!
//! How, exactly: for the pipeline our GGUF loader builds (no normalizer,
//! added tokens without strip/single-word rules, `Digits(individual)` then
//! byte-level `ByteLevel` with the GPT-2 regex, a BPE model, no
//! post-processor), the text is split the way `tokenizers` splits it — added
//! tokens first (leftmost-longest, non-normalized then normalized ones), then
//! digits, then the GPT-2 regex (plain ASCII scanned by hand, anything else
//! through the same regex engine) — and each word's token count comes from a
//! per-thread cache keyed on the word's bytes, or on a miss from the model
//! itself. A word that straddles a trained-range boundary (rare:
//! content that begins with whitespace) is tokenised with per-token offsets.
//! Any other pipeline is not "recognised", and the caller falls back to the
//! full encode. Tests compare the two paths on many texts.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::hash::Hasher;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use tokenizers::models::ModelWrapper;
use tokenizers::utils::SysRegex;
use tokenizers::{Model, PreTokenizerWrapper};

use crate::error::{Error, Result};

/// The regex of `tokenizers`' ByteLevel pre-tokenizer (GPT-2's), compiled by
/// the same engine (onig, through `tokenizers::utils::SysRegex`).
const GPT2_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// Words kept per thread and counter. When the cache fills up it is cleared:
/// simple, bounded (a few tens of MB per thread at most), and the common
/// words come back within a few examples.
const WORDS_PER_THREAD: usize = 1 << 19;
/// Counters whose caches a thread keeps at once (a server may hold several
/// models); the least recently added goes first.
const COUNTERS_PER_THREAD: usize = 4;

/// Distinguishes counters in the per-thread caches.
static NEXT_COUNTER_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// Per-thread word caches, one per counter: each rayon worker learns
    /// the vocabulary once, and no lock or shared cache line is touched per
    /// word; the price is a second copy of the common words.
    static WORD_CACHES: RefCell<Vec<(u64, WordCache)>> = const { RefCell::new(Vec::new()) };
}

/// Token totals of a text: all tokens, and those whose first byte lies in
/// one of the given ranges (the rule `encode_rendered` uses for the mask).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpanCount {
    pub total: usize,
    pub in_ranges: usize,
}

/// A counting plan for one recognised tokenizer pipeline, with its word
/// cache. Shared by the clones of a [`crate::Tokenizer`].
pub(crate) struct FastCounter {
    /// Added tokens matched on the raw text (`normalized: false`).
    raw_added: Vec<String>,
    /// Added tokens matched in the pieces left over (`normalized: true`;
    /// there is no normalizer, so they match the raw text too).
    normalized_added: Vec<String>,
    /// `Digits(individual_digits: true)` before the byte-level split.
    split_digits: bool,
    regex: SysRegex,
    byte_chars: [char; 256],
    /// Key of this counter's per-thread word caches.
    id: u64,
    cache_enabled: bool,
}

type WordCache = HashMap<Box<[u8]>, u32, BuildHasherDefault<FxHasher>>;

impl std::fmt::Debug for FastCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastCounter")
            .field(
                "added_tokens",
                &(self.raw_added.len() + self.normalized_added.len()),
            )
            .field("split_digits", &self.split_digits)
            .field("cache_enabled", &self.cache_enabled)
            .finish()
    }
}

impl FastCounter {
    /// A plan for `tok` if its pipeline is one this module reproduces
    /// exactly; `None` otherwise (callers then encode in full).
    pub(crate) fn recognise(tok: &tokenizers::Tokenizer) -> Option<Self> {
        if tok.get_normalizer().is_some()
            || tok.get_post_processor().is_some()
            || tok.get_truncation().is_some()
            || tok.get_padding().is_some()
            || tok.get_encode_special_tokens()
        {
            return None;
        }
        match tok.get_model() {
            ModelWrapper::BPE(bpe) if bpe.dropout.is_none_or(|p| p == 0.0) => {}
            _ => return None,
        }
        let split_digits = recognise_pre_tokenizer(tok.get_pre_tokenizer()?)?;
        let mut raw_added = Vec::new();
        let mut normalized_added = Vec::new();
        for t in tok.get_added_tokens_decoder().values() {
            if t.single_word || t.lstrip || t.rstrip || t.content.is_empty() {
                return None;
            }
            let list = if t.normalized {
                &mut normalized_added
            } else {
                &mut raw_added
            };
            list.push(t.content.clone());
        }
        // Longest first, so the first match at a position is the longest.
        raw_added.sort_by_key(|t| std::cmp::Reverse(t.len()));
        normalized_added.sort_by_key(|t| std::cmp::Reverse(t.len()));
        Some(FastCounter {
            raw_added,
            normalized_added,
            split_digits,
            regex: SysRegex::new(GPT2_PATTERN).ok()?,
            byte_chars: byte_chars(),
            id: NEXT_COUNTER_ID.fetch_add(1, Ordering::Relaxed),
            cache_enabled: true,
        })
    }

    /// Turns the word cache off (for measuring what it is worth).
    pub(crate) fn without_cache(mut self) -> Self {
        self.cache_enabled = false;
        self
    }

    /// Counts `text`'s tokens, and those starting inside `ranges`.
    pub(crate) fn count(
        &self,
        model: &ModelWrapper,
        text: &str,
        ranges: &[Range<usize>],
    ) -> Result<SpanCount> {
        let mut acc = Acc {
            ranges,
            count: SpanCount::default(),
        };
        for piece in split_added(text, 0..text.len(), &self.raw_added) {
            match piece {
                Piece::Added(at) => acc.add_token(at),
                Piece::Text(r) => {
                    for inner in split_added(text, r, &self.normalized_added) {
                        match inner {
                            Piece::Added(at) => acc.add_token(at),
                            Piece::Text(r) => self.count_plain(model, text, r, &mut acc)?,
                        }
                    }
                }
            }
        }
        Ok(acc.count)
    }

    /// Text with no added tokens: digits, then regex words.
    fn count_plain(
        &self,
        model: &ModelWrapper,
        text: &str,
        r: Range<usize>,
        acc: &mut Acc<'_>,
    ) -> Result<()> {
        if !self.split_digits {
            return self.count_regex_words(model, text, r, acc);
        }
        let mut run_start = r.start;
        for (i, c) in text[r.clone()].char_indices() {
            if c.is_numeric() {
                let at = r.start + i;
                self.count_regex_words(model, text, run_start..at, acc)?;
                self.count_word(model, text, at..at + c.len_utf8(), acc)?;
                run_start = at + c.len_utf8();
            }
        }
        self.count_regex_words(model, text, run_start..r.end, acc)
    }

    fn count_regex_words(
        &self,
        model: &ModelWrapper,
        text: &str,
        r: Range<usize>,
        acc: &mut Acc<'_>,
    ) -> Result<()> {
        let mut i = r.start;
        while i < r.end {
            let len = self.next_word_len(&text[i..r.end]);
            self.count_word(model, text, i..i + len, acc)?;
            i += len;
        }
        Ok(())
    }

    /// The length of the GPT-2 regex's word at the start of `run` (the rest
    /// of a digit-free run). The pattern has no look-behind and no anchors,
    /// so the word found at a position depends only on the text from there
    /// to the run's end, which the regex's look-ahead must not pass (as in
    /// `tokenizers`, which runs it on each run separately). Plain ASCII is
    /// scanned by hand; anything else goes to the regex itself.
    fn next_word_len(&self, run: &str) -> usize {
        if let Some(n) = ascii_word_len(run.as_bytes()) {
            return n;
        }
        match self.regex.find_iter(run).next() {
            Some((0, e)) if e > 0 => e,
            // Text before the first match is a word of its own
            // (`Isolated` splitting); the pattern matches every character,
            // so this does not happen in practice.
            Some((s, _)) if s > 0 => s,
            _ => run.len(),
        }
    }

    fn count_word(
        &self,
        model: &ModelWrapper,
        text: &str,
        w: Range<usize>,
        acc: &mut Acc<'_>,
    ) -> Result<()> {
        if w.is_empty() {
            return Ok(());
        }
        let bytes = &text.as_bytes()[w.clone()];
        if acc.straddles(&w) {
            for start in self.token_starts(model, bytes)? {
                acc.add_token(w.start + start);
            }
            return Ok(());
        }
        let n = self.word_tokens(model, bytes)?;
        acc.add_tokens(w.start, n);
        Ok(())
    }

    /// The number of tokens of one word, cached.
    fn word_tokens(&self, model: &ModelWrapper, word: &[u8]) -> Result<usize> {
        let tokenize = || -> Result<usize> {
            Ok(model
                .tokenize(&self.byte_level(word))
                .map_err(Error::tokenizer)?
                .len())
        };
        if !self.cache_enabled {
            return tokenize();
        }
        WORD_CACHES.with(|caches| {
            let mut caches = caches.borrow_mut();
            let at = match caches.iter().position(|(id, _)| *id == self.id) {
                Some(at) => at,
                None => {
                    if caches.len() >= COUNTERS_PER_THREAD {
                        caches.remove(0);
                    }
                    caches.push((self.id, WordCache::default()));
                    caches.len() - 1
                }
            };
            let map = &mut caches[at].1;
            if let Some(&n) = map.get(word) {
                return Ok(n as usize);
            }
            let n = tokenize()?;
            if map.len() >= WORDS_PER_THREAD {
                map.clear();
            }
            map.insert(word.into(), n as u32);
            Ok(n)
        })
    }

    /// Byte offsets (in `word`) where each of its tokens starts.
    fn token_starts(&self, model: &ModelWrapper, word: &[u8]) -> Result<Vec<usize>> {
        let mapped = self.byte_level(word);
        let tokens = model.tokenize(&mapped).map_err(Error::tokenizer)?;
        // One char of `mapped` per byte of `word`.
        Ok(tokens
            .iter()
            .map(|t| mapped[..t.offsets.0.min(mapped.len())].chars().count())
            .collect())
    }

    /// The byte-level form of a word (GPT-2's byte-to-char table).
    fn byte_level(&self, word: &[u8]) -> String {
        word.iter().map(|&b| self.byte_chars[b as usize]).collect()
    }
}

/// Running totals for one text.
struct Acc<'a> {
    ranges: &'a [Range<usize>],
    count: SpanCount,
}

impl Acc<'_> {
    fn inside(&self, at: usize) -> bool {
        self.ranges.iter().any(|r| r.contains(&at))
    }

    /// Whether a range starts or ends strictly inside `w`, so that its
    /// tokens may differ in membership.
    fn straddles(&self, w: &Range<usize>) -> bool {
        self.ranges
            .iter()
            .any(|r| (w.start < r.start && r.start < w.end) || (w.start < r.end && r.end < w.end))
    }

    fn add_token(&mut self, at: usize) {
        self.add_tokens(at, 1);
    }

    fn add_tokens(&mut self, at: usize, n: usize) {
        self.count.total += n;
        if self.inside(at) {
            self.count.in_ranges += n;
        }
    }
}

enum Piece {
    /// An added token starting at this byte.
    Added(usize),
    Text(Range<usize>),
}

/// Splits `text[r]` at added tokens, leftmost-longest (as `tokenizers`' trie
/// does). `tokens` is sorted longest first.
fn split_added(text: &str, r: Range<usize>, tokens: &[String]) -> Vec<Piece> {
    if tokens.is_empty() {
        return vec![Piece::Text(r)];
    }
    let mut first = [false; 256];
    for t in tokens {
        first[t.as_bytes()[0] as usize] = true;
    }
    let bytes = text.as_bytes();
    let mut pieces = Vec::new();
    let (mut i, mut prev) = (r.start, r.start);
    while i < r.end {
        let found = first[bytes[i] as usize]
            .then(|| {
                tokens
                    .iter()
                    .find(|t| bytes[i..r.end].starts_with(t.as_bytes()))
            })
            .flatten();
        match found {
            Some(t) => {
                if prev < i {
                    pieces.push(Piece::Text(prev..i));
                }
                pieces.push(Piece::Added(i));
                i += t.len();
                prev = i;
            }
            None => i += 1,
        }
    }
    if prev < r.end {
        pieces.push(Piece::Text(prev..r.end));
    }
    pieces
}

/// `Some(split_digits)` for `ByteLevel(add_prefix_space: false, use_regex:
/// true)`, alone or after `Digits`; `None` for anything else. Read through
/// serde so that every field is seen, whatever the crate exposes.
fn recognise_pre_tokenizer(pre: &PreTokenizerWrapper) -> Option<bool> {
    let v = serde_json::to_value(pre).ok()?;
    let byte_level = |v: &serde_json::Value| {
        v["type"] == "ByteLevel" && v["add_prefix_space"] == false && v["use_regex"] != false
    };
    if byte_level(&v) {
        return Some(false);
    }
    let list = v["pretokenizers"].as_array()?;
    match list.as_slice() {
        [d, b]
            if v["type"] == "Sequence"
                && d["type"] == "Digits"
                && d["individual_digits"] == true
                && byte_level(b) =>
        {
            Some(true)
        }
        [b] if v["type"] == "Sequence" && byte_level(b) => Some(false),
        _ => None,
    }
}

/// Character classes of the GPT-2 regex, for the plain-ASCII bytes whose
/// class is beyond doubt (letters, digits, space, tab, CR, LF, printable
/// punctuation); `None` for any other byte, which sends the run to the regex.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Letter,
    Number,
    Space,
    Other,
}

fn ascii_class(b: u8) -> Option<Class> {
    match b {
        b'a'..=b'z' | b'A'..=b'Z' => Some(Class::Letter),
        b'0'..=b'9' => Some(Class::Number),
        b' ' | b'\t' | b'\n' | b'\r' => Some(Class::Space),
        0x21..=0x7E => Some(Class::Other),
        _ => None,
    }
}

/// The length of the GPT-2 regex's match at the start of `s` (non-empty),
/// trying the alternatives in the regex's order: `'s|'t|'re|'ve|'m|'ll|'d`,
/// ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`, `\s+(?!\S)`, `\s+`. `None`
/// when the answer depends on a byte without an [`ascii_class`] (the word or
/// the character after it is not plain ASCII). Checked against the regex in
/// the tests.
fn ascii_word_len(s: &[u8]) -> Option<usize> {
    // The end of the run of class `c` from `from`; the byte that stops it
    // must have a known class, or a Unicode letter could extend the run.
    let run = |from: usize, c: Class| -> Option<usize> {
        let mut i = from;
        while i < s.len() {
            match ascii_class(s[i])? {
                k if k == c => i += 1,
                _ => return Some(i),
            }
        }
        Some(i)
    };
    let first = ascii_class(*s.first()?)?;
    if s[0] == b'\'' {
        if matches!(s.get(1), Some(b's' | b't' | b'm' | b'd')) {
            return Some(2);
        }
        if s[1..].starts_with(b"re") || s[1..].starts_with(b"ve") || s[1..].starts_with(b"ll") {
            return Some(3);
        }
    }
    let (body, body_class) = if s[0] == b' ' {
        match s.get(1) {
            Some(&b) => (1, Some(ascii_class(b)?)),
            None => (1, None),
        }
    } else {
        (0, Some(first))
    };
    if let Some(c @ (Class::Letter | Class::Number | Class::Other)) = body_class {
        return run(body, c);
    }
    // Whitespace: all of it if it ends the run, else all but the last
    // character (which then leads the next word), but at least one.
    let end = run(0, Class::Space)?;
    Some(if end == s.len() || end == 1 {
        end
    } else {
        end - 1
    })
}

/// GPT-2's byte-to-unicode table (`bytes_to_unicode` in its encoder.py), as
/// `tokenizers`' ByteLevel uses it.
fn byte_chars() -> [char; 256] {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut table = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..=255u8 {
        table[b as usize] = if printable(b) {
            char::from(b)
        } else {
            n += 1;
            char::from_u32(255 + n).unwrap_or('\0')
        };
    }
    table
}

/// rustc's FxHasher: a fast, non-cryptographic hash. The keys are words of
/// the user's own file, so hash flooding is not a concern.
#[derive(Default, Clone, Copy)]
struct FxHasher {
    hash: u64,
}

impl FxHasher {
    const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(Self::SEED);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            self.add(u64::from_le_bytes(b));
        }
        for &b in chunks.remainder() {
            self.add(u64::from(b));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn finish(&self) -> u64 {
        self.hash
    }
}

/// hone-data's [`TokenCounter`](hone_data::TokenCounter) on a model's
/// tokenizer and chat template, through the count-only path: the numbers
/// `encode_chat` / `encode_preference` give, which are what training sees.
#[derive(Debug, Clone)]
pub struct ChatTokenCounter {
    pub chat: crate::ChatTokenizer,
    pub context_length: usize,
}

impl hone_data::TokenCounter for ChatTokenCounter {
    fn count_sft(
        &self,
        ex: &hone_data::SftExample,
    ) -> std::result::Result<hone_data::TokenCount, String> {
        let c = self
            .chat
            .count_chat(&ex.messages, ex.tools.as_ref())
            .map_err(|e| format!("{e:#}"))?;
        Ok(hone_data::TokenCount::sequence(c.total, c.trained))
    }

    fn count_preference(
        &self,
        ex: &hone_data::PreferenceExample,
    ) -> std::result::Result<hone_data::TokenCount, String> {
        let count = |answer| {
            self.chat
                .count_preference(&ex.input, answer)
                .map_err(|e| format!("{e:#}"))
        };
        let (p, n) = (count(&ex.preferred)?, count(&ex.non_preferred)?);
        Ok(hone_data::TokenCount {
            total: p.total + n.total,
            trained: p.trained + n.trained,
            longest: p.total.max(n.total),
        })
    }

    fn context_length(&self) -> usize {
        self.context_length
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{tiny_chat_tokenizer, tiny_gguf_content, SMOLLM2_TEMPLATE};
    use crate::{ChatCount, ChatMessage, ChatTemplate, ChatTokenizer, Role, Tokenizer};
    use serde_json::json;

    /// xorshift64*: deterministic variety without a dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Pieces chosen to hit every rule of the split: whitespace runs before
    /// words and at the end, digits (including non-ASCII numerics), the
    /// contractions, multi-byte characters, special tokens quoted in text.
    const PIECES: &[&str] = &[
        "Hello",
        " world",
        "the",
        " the",
        " ",
        "  ",
        "\n",
        "\n\n",
        "\t",
        " \n ",
        "\r\n",
        "123",
        " 42",
        "3.14",
        "x²",
        "Ⅻ",
        "½",
        "٣",
        "'s",
        "'re",
        "don't",
        " I'll",
        "é",
        " café",
        "東京",
        " 🎉",
        "👍🏽",
        "\u{a0}",
        "!",
        "?!",
        " ...",
        "(",
        ")",
        "{\"a\": 1}",
        "<|im_end|>",
        "<|im_start|>",
        "<|im",
        "|>",
        "<",
        "Paris",
        " capital",
        "ſ",
        "ǅ",
        "\u{301}",
        "a\u{301}",
    ];

    fn text(rng: &mut Rng, max_pieces: usize) -> String {
        (0..rng.below(max_pieces + 1))
            .map(|_| PIECES[rng.below(PIECES.len())])
            .collect()
    }

    /// Conversations of every shape the data checks see: with and without a
    /// system message, multi-turn, weight 0, tool calls and results, empty
    /// and whitespace-led contents, unicode.
    pub(super) fn conversations(n: usize, seed: u64, max_pieces: usize) -> Vec<Vec<ChatMessage>> {
        let mut rng = Rng(seed | 1);
        (0..n)
            .map(|i| {
                let mut msgs = Vec::new();
                if rng.below(3) != 0 {
                    msgs.push(ChatMessage::new(Role::System, text(&mut rng, max_pieces)));
                }
                for t in 0..1 + rng.below(4) {
                    msgs.push(ChatMessage::new(Role::User, text(&mut rng, max_pieces)));
                    if rng.below(5) == 0 {
                        let id = format!("call_{i}_{t}");
                        let mut call = ChatMessage::new(Role::Assistant, "");
                        call.tool_calls = Some(json!([{"id": id, "type": "function",
                            "function": {"name": "lookup", "arguments": text(&mut rng, 4)}}]));
                        msgs.push(call);
                        let mut result = ChatMessage::new(Role::Tool, text(&mut rng, max_pieces));
                        result.tool_call_id = Some(id);
                        msgs.push(result);
                    }
                    let mut answer = ChatMessage::new(Role::Assistant, text(&mut rng, max_pieces));
                    if rng.below(4) == 0 {
                        answer.weight = Some(0);
                    }
                    msgs.push(answer);
                }
                msgs
            })
            .collect()
    }

    /// ChatML that also writes tool calls and tool results, so that their
    /// JSON goes through the tokenizer too.
    const TOOLS_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}{% if message.tool_calls is defined %}{{ message.tool_calls | tojson }}{% endif %}{% if message.tool_call_id is defined %}{{ '[' + message.tool_call_id + '] ' }}{% endif %}{{ message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    fn tiny_with(template: &str) -> ChatTokenizer {
        let tokenizer = Tokenizer::from_gguf_content(&tiny_gguf_content(None).unwrap()).unwrap();
        let template = ChatTemplate::new(template, "<|im_start|>", "<|im_end|>").unwrap();
        ChatTokenizer::new(tokenizer, template)
    }

    fn counted(t: &Tokenizer, text: &str, ranges: &[Range<usize>]) -> SpanCount {
        let enc = t.encode_with_offsets(text).unwrap();
        SpanCount {
            total: enc.ids.len(),
            in_ranges: enc
                .offsets
                .iter()
                .filter(|o| ranges.iter().any(|r| r.contains(&o.start)))
                .count(),
        }
    }

    fn char_boundary(s: &str, mut i: usize) -> usize {
        while !s.is_char_boundary(i) {
            i -= 1;
        }
        i
    }

    #[test]
    fn the_gguf_pipeline_is_recognised() {
        assert!(tiny_chat_tokenizer().unwrap().tokenizer.has_fast_count());
    }

    #[test]
    fn counts_equal_the_encoding_on_random_texts_and_ranges() {
        let t = tiny_chat_tokenizer().unwrap().tokenizer;
        let uncached = t.clone().with_count_cache(false);
        let mut rng = Rng(7);
        for _ in 0..3000 {
            let s = text(&mut rng, 30);
            let mut cuts: Vec<usize> = (0..rng.below(5))
                .map(|_| char_boundary(&s, rng.below(s.len() + 1)))
                .collect();
            cuts.sort_unstable();
            let ranges: Vec<Range<usize>> = cuts
                .chunks(2)
                .map(|c| c[0]..*c.last().unwrap_or(&c[0]))
                .collect();
            let want = counted(&t, &s, &ranges);
            assert_eq!(
                t.count_tokens(&s, &ranges).unwrap(),
                want,
                "{s:?} {ranges:?}"
            );
            assert_eq!(uncached.count_tokens(&s, &ranges).unwrap(), want, "{s:?}");
        }
    }

    #[test]
    fn count_chat_equals_encode_chat_on_varied_conversations() {
        for ct in [tiny_with(SMOLLM2_TEMPLATE), tiny_with(TOOLS_TEMPLATE)] {
            for conv in conversations(400, 11, 12) {
                let enc = ct.encode_chat(&conv, None).unwrap();
                let want = ChatCount {
                    total: enc.len(),
                    trained: enc.trained_token_count(),
                };
                assert_eq!(ct.count_chat(&conv, None).unwrap(), want, "{conv:?}");
            }
        }
    }

    #[test]
    fn count_preference_equals_encode_preference() {
        let ct = tiny_with(SMOLLM2_TEMPLATE);
        for conv in conversations(200, 5, 10) {
            let prompt: Vec<ChatMessage> = conv
                .iter()
                .filter(|m| m.role != Role::Assistant)
                .cloned()
                .collect();
            let answer = conv.last().unwrap();
            let enc = ct.encode_preference(&prompt, answer).unwrap();
            let got = ct.count_preference(&prompt, answer).unwrap();
            assert_eq!(
                (got.total, got.trained),
                (enc.len(), enc.trained_token_count())
            );
        }
    }

    #[test]
    fn whitespace_led_answers_keep_the_straddling_token_untrained() {
        let ct = tiny_with(SMOLLM2_TEMPLATE);
        for content in [" Hello", "\n\nHello", "  \n x", " ", "\n"] {
            let conv = vec![
                ChatMessage::new(Role::User, "Hi"),
                ChatMessage::new(Role::Assistant, content),
            ];
            let enc = ct.encode_chat(&conv, None).unwrap();
            let got = ct.count_chat(&conv, None).unwrap();
            assert_eq!(
                (got.total, got.trained),
                (enc.len(), enc.trained_token_count()),
                "{content:?}"
            );
        }
    }

    #[test]
    fn an_unrecognised_pipeline_falls_back_to_encoding() {
        let ct = tiny_chat_tokenizer().unwrap();
        let mut inner = ct.tokenizer.inner().clone();
        inner.with_normalizer(Some(tokenizers::normalizers::Lowercase));
        let t = Tokenizer::from_parts(inner, ct.tokenizer.bos_id(), ct.tokenizer.eos_id()).unwrap();
        assert!(!t.has_fast_count());
        let s = "Hello World 123<|im_end|>";
        let world: Vec<Range<usize>> = vec![Range { start: 6, end: 12 }];
        assert_eq!(t.count_tokens(s, &world).unwrap(), counted(&t, s, &world));
    }

    #[test]
    fn added_tokens_split_leftmost_longest() {
        let tokens = vec!["<|im_start|>".to_string(), "<|im".to_string()];
        let text = "a<|im_start|>b<|imc";
        let pieces: Vec<String> = split_added(text, 0..text.len(), &tokens)
            .into_iter()
            .map(|p| match p {
                Piece::Added(at) => format!("@{at}"),
                Piece::Text(r) => text[r].to_string(),
            })
            .collect();
        assert_eq!(pieces, ["a", "@1", "b", "@14", "c"]);
    }

    #[test]
    fn word_split_equals_the_regex_on_mixed_text() {
        let t = tiny_chat_tokenizer().unwrap().tokenizer;
        let fast = FastCounter::recognise(t.inner()).unwrap();
        let regex = SysRegex::new(GPT2_PATTERN).unwrap();
        let alphabet: Vec<char> =
            "abstrevlmdA12 \t\n\r'!.-é東\u{a0}\u{3000}½\u{301}\u{b}\u{1}\u{7f}"
                .chars()
                .collect();
        let mut rng = Rng(99);
        for _ in 0..50_000 {
            let len = 1 + rng.below(24);
            let s: String = (0..len)
                .map(|_| alphabet[rng.below(alphabet.len())])
                .collect();
            let want: Vec<(usize, usize)> = regex.find_iter(&s).collect();
            let mut got = Vec::new();
            let mut i = 0;
            while i < s.len() {
                let n = fast.next_word_len(&s[i..]);
                got.push((i, i + n));
                i += n;
            }
            assert_eq!(got, want, "{s:?}");
        }
    }

    fn real_model() -> ChatTokenizer {
        let path = std::env::var("HONE_TEST_GGUF")
            .expect("set HONE_TEST_GGUF to the SmolLM2-135M-Instruct GGUF to run this test");
        ChatTokenizer::from_gguf(&path).unwrap()
    }

    #[test]
    #[ignore = "needs HONE_TEST_GGUF"]
    fn real_model_counts_equal_encode_chat() {
        let ct = real_model();
        assert!(ct.tokenizer.has_fast_count());
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../testdata/smollm2-135m-instruct.json");
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let mut checked = 0;
        for case in v["tokenizer"].as_array().unwrap() {
            let s = case["text"].as_str().unwrap();
            assert_eq!(
                ct.tokenizer.count_tokens(s, &[]).unwrap().total,
                case["ids"].as_array().unwrap().len()
            );
            checked += 1;
        }
        let mut convs: Vec<Vec<ChatMessage>> = v["chat_template"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| serde_json::from_value(c["messages"].clone()).unwrap())
            .collect();
        convs.extend(conversations(3000, 3, 40));
        for conv in convs
            .iter()
            .filter(|c| c.last().is_some_and(|m| m.role == Role::Assistant))
        {
            let enc = ct.encode_chat(conv, None).unwrap();
            let want = ChatCount {
                total: enc.len(),
                trained: enc.trained_token_count(),
            };
            assert_eq!(ct.count_chat(conv, None).unwrap(), want, "{conv:?}");
            checked += 1;
        }
        assert!(checked > 3000);
    }

    /// `HONE_PERF_FILE=/path/to/file.jsonl HONE_TEST_GGUF=... cargo test
    /// --release -p hone-text count::tests::bench -- --ignored --nocapture`:
    /// validates the file with token counts through the count path (word
    /// cache on, then off), printing wall and CPU seconds.
    #[test]
    #[ignore = "benchmark: needs HONE_TEST_GGUF and HONE_PERF_FILE"]
    fn bench_count_path_on_a_file() {
        let file = std::env::var("HONE_PERF_FILE").expect("set HONE_PERF_FILE");
        let ct = real_model();
        let opts = hone_data::ValidateOptions::default();
        for cache in [true, false] {
            let counter = ChatTokenCounter {
                chat: ChatTokenizer::new(
                    ct.tokenizer.clone().with_count_cache(cache),
                    ct.template.clone(),
                ),
                context_length: 8192,
            };
            let (cpu0, t0) = (cpu_seconds(), std::time::Instant::now());
            let r = hone_data::validate_file(std::path::Path::new(&file), &opts, Some(&counter))
                .unwrap();
            let (wall, cpu) = (t0.elapsed().as_secs_f64(), cpu_seconds() - cpu0);
            let tokens = r.stats.tokens.as_ref().map_or(0, |t| t.total_tokens);
            println!(
                "count path, word cache {}: {} examples, {tokens} tokens in {wall:.2} s wall, {cpu:.2} s CPU ({} threads)",
                if cache { "on" } else { "off" },
                r.n_examples,
                std::thread::available_parallelism().map_or(1, |n| n.get())
            );
        }
    }

    /// Single-thread cost of each stage on `HONE_PERF_FILE` (an SFT file):
    /// rendering with spans, counting (word cache on, then off) and the
    /// full `encode_rendered` that counting replaces.
    #[test]
    #[ignore = "benchmark: needs HONE_TEST_GGUF and HONE_PERF_FILE"]
    fn bench_stages_single_thread() {
        let file = std::env::var("HONE_PERF_FILE").expect("set HONE_PERF_FILE");
        let ct = real_model();
        let examples = hone_data::parse_sft_file(std::path::Path::new(&file)).unwrap();
        let timed = |label: &str, f: &mut dyn FnMut() -> usize| {
            let (cpu0, t0) = (cpu_seconds(), std::time::Instant::now());
            let tokens = f();
            let (wall, cpu) = (t0.elapsed().as_secs_f64(), cpu_seconds() - cpu0);
            println!(
                "{label}: {} examples, {tokens} tokens, {wall:.2} s wall, {cpu:.2} s CPU, {:.2} M tokens per CPU second",
                examples.len(),
                tokens as f64 / cpu.max(1e-9) / 1e6
            );
        };
        let mut rendered = Vec::new();
        timed("render_with_spans", &mut || {
            rendered = examples
                .iter()
                .map(|e| ct.render_with_spans(&e.messages, e.tools.as_ref()).unwrap())
                .collect();
            0
        });
        for cache in [true, false] {
            let t = ChatTokenizer::new(
                ct.tokenizer.clone().with_count_cache(cache),
                ct.template.clone(),
            );
            timed(&format!("count_rendered, word cache {cache}"), &mut || {
                rendered
                    .iter()
                    .map(|r| t.count_rendered(r).unwrap().total)
                    .sum()
            });
        }
        timed("encode_rendered (the encode path)", &mut || {
            rendered
                .iter()
                .map(|r| ct.encode_rendered(r).unwrap().len())
                .sum()
        });
    }

    /// User plus system CPU seconds of this process (Linux).
    fn cpu_seconds() -> f64 {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let after = stat.rsplit(')').next().unwrap_or("");
        let f: Vec<&str> = after.split_whitespace().collect();
        let field = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
        // Fields 14 and 15 (utime, stime, in 1/100 s) are the 12th and 13th
        // after the ")" that ends the command name.
        (field(11) + field(12)) / 100.0
    }
}
