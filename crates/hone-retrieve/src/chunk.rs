//! Cutting a document into overlapping windows of words.
//!
//! Words, not characters or tokens: a window never splits a word, its size
//! does not depend on the embedding model's tokenizer (so cached vectors
//! stay valid for one chunking), and 120 words stay under all-MiniLM-L6-v2's
//! 256-token window for ordinary prose. The overlap keeps a fact that
//! straddles a boundary whole in at least one chunk.

use crate::error::{Result, RetrieveError};

/// How to cut documents into chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkOptions {
    /// Words per chunk.
    pub words: usize,
    /// Words each chunk shares with the previous one; less than `words`.
    pub overlap: usize,
}

impl Default for ChunkOptions {
    fn default() -> Self {
        ChunkOptions {
            words: 120,
            overlap: 30,
        }
    }
}

impl ChunkOptions {
    /// Refuses a chunking that cannot advance.
    pub fn check(&self) -> Result<()> {
        if self.words == 0 || self.overlap >= self.words {
            return Err(RetrieveError::Options(format!(
                "chunks of {} words with an overlap of {} words: the overlap must be \
                 smaller than the chunk, and the chunk at least 1 word",
                self.words, self.overlap
            )));
        }
        Ok(())
    }
}

/// The chunks of `text`: slices of the original (line breaks kept) from a
/// window's first word to its last. Empty when `text` has no words.
pub fn chunk_text(text: &str, options: &ChunkOptions) -> Result<Vec<String>> {
    options.check()?;
    let words = word_spans(text);
    let mut chunks = Vec::new();
    let step = options.words - options.overlap;
    let mut start = 0;
    while start < words.len() {
        let end = (start + options.words).min(words.len());
        chunks.push(text[words[start].0..words[end - 1].1].to_string());
        if end == words.len() {
            break;
        }
        start += step;
    }
    Ok(chunks)
}

/// Byte ranges of the whitespace-separated words of `text`.
fn word_spans(text: &str) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices() {
        match (c.is_whitespace(), start) {
            (true, Some(s)) => {
                spans.push((s, i));
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(s) = start {
        spans.push((s, text.len()));
    }
    spans
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(words: usize, overlap: usize) -> ChunkOptions {
        ChunkOptions { words, overlap }
    }

    #[test]
    fn windows_overlap_and_cover_every_word() {
        let text = "one two three four five six seven";
        let chunks = chunk_text(text, &opts(3, 1)).unwrap();
        assert_eq!(
            chunks,
            ["one two three", "three four five", "five six seven"]
        );
        let chunks = chunk_text(text, &opts(4, 2)).unwrap();
        assert_eq!(
            chunks,
            [
                "one two three four",
                "three four five six",
                "five six seven"
            ]
        );
    }

    #[test]
    fn line_breaks_inside_a_chunk_are_kept() {
        let chunks = chunk_text("  # Title\n\nBody  text.\n", &opts(10, 2)).unwrap();
        assert_eq!(chunks, ["# Title\n\nBody  text."]);
    }

    #[test]
    fn blank_text_has_no_chunks_and_bad_options_are_refused() {
        assert!(chunk_text(" \n\t ", &opts(3, 1)).unwrap().is_empty());
        for bad in [opts(0, 0), opts(3, 3), opts(3, 5)] {
            let err = chunk_text("a b", &bad).unwrap_err().to_string();
            assert!(err.contains("overlap must be smaller"), "{err}");
        }
    }

    #[test]
    fn non_ascii_words_are_cut_on_char_boundaries() {
        let chunks = chunk_text("café naïve résumé 東京", &opts(2, 0)).unwrap();
        assert_eq!(chunks, ["café naïve", "résumé 東京"]);
    }
}
