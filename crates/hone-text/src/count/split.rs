//! How `tokenizers` cuts text before its BPE model sees it, reproduced for
//! the pipeline [`super::FastCounter`] recognises: added tokens first
//! (leftmost-longest), then the GPT-2 regex of the ByteLevel pre-tokenizer
//! (plain ASCII scanned by hand), and GPT-2's byte-to-char table.

use std::ops::Range;

use tokenizers::PreTokenizerWrapper;

/// The regex of `tokenizers`' ByteLevel pre-tokenizer (GPT-2's), compiled by
/// the same engine (onig, through `tokenizers::utils::SysRegex`).
pub(super) const GPT2_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

pub(super) enum Piece {
    /// An added token starting at this byte.
    Added(usize),
    Text(Range<usize>),
}

/// Splits `text[r]` at added tokens, leftmost-longest (as `tokenizers`' trie
/// does). `tokens` is sorted longest first.
pub(super) fn split_added(text: &str, r: Range<usize>, tokens: &[String]) -> Vec<Piece> {
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
pub(super) fn recognise_pre_tokenizer(pre: &PreTokenizerWrapper) -> Option<bool> {
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
pub(super) fn ascii_word_len(s: &[u8]) -> Option<usize> {
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
pub(super) fn byte_chars() -> [char; 256] {
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
