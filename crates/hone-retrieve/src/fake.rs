//! A fake embedder for tests: each word (lowercased, letters and digits
//! only) adds 1 to one of 64 buckets chosen by its hash, so cosine
//! similarity measures shared words. It counts the texts it embeds.

use std::cell::Cell;

use crate::{Embed, Embedded, Result};

#[derive(Debug)]
pub struct FakeEmbedder {
    pub id: String,
    pub embedded: Cell<usize>,
    /// Texts with more words than this are reported as truncated.
    pub max_words: usize,
}

impl FakeEmbedder {
    pub fn new(id: &str) -> Self {
        FakeEmbedder {
            id: id.into(),
            embedded: Cell::new(0),
            max_words: usize::MAX,
        }
    }
}

const DIM: usize = 64;

fn bucket(word: &str) -> usize {
    // FNV-1a: stable across runs and platforms.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in word.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    (h % DIM as u64) as usize
}

impl Embed for FakeEmbedder {
    fn model_id(&self) -> &str {
        &self.id
    }

    fn dim(&self) -> usize {
        DIM
    }

    fn embed(&self, texts: &[&str]) -> Result<Embedded> {
        self.embedded.set(self.embedded.get() + texts.len());
        let mut truncated = 0;
        let vectors = texts
            .iter()
            .map(|t| {
                let mut v = vec![0f32; DIM];
                let words: Vec<String> = t
                    .split_whitespace()
                    .map(|w| {
                        w.chars()
                            .filter(|c| c.is_alphanumeric())
                            .collect::<String>()
                            .to_lowercase()
                    })
                    .filter(|w| !w.is_empty())
                    .collect();
                if words.len() > self.max_words {
                    truncated += 1;
                }
                for w in words.iter().take(self.max_words) {
                    v[bucket(w)] += 1.0;
                }
                v
            })
            .collect();
        Ok(Embedded { vectors, truncated })
    }
}
