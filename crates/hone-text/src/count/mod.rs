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
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use tokenizers::models::ModelWrapper;
use tokenizers::utils::SysRegex;
use tokenizers::Model;

use crate::error::{Error, Result};

mod fxhash;
mod split;
#[cfg(test)]
mod tests;

use fxhash::FxHasher;
use split::{
    ascii_word_len, byte_chars, recognise_pre_tokenizer, split_added, Piece, GPT2_PATTERN,
};

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
