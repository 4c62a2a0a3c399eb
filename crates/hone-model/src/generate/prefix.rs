//! Reuse of a shared prompt prefix across requests: the KV cache of a
//! prompt just read is kept (and, once the row ends, that of the prompt plus
//! the answer it generated, which a conversation's next turn starts with),
//! and a later row on the same engine (the same
//! base and adapters) whose prompt starts with the same tokens copies those
//! positions instead of computing them again. A chat template's header and
//! a shared system prompt are read once, not per request (llama.cpp's server
//! does the same per slot; vLLM calls it automatic prefix caching).
//!
//! Exact: the keys and values of a position depend only on the tokens up to
//! it and on the model, and chunked prefill builds the same cache bit for
//! bit whatever the chunks, so a row that starts from a copied prefix
//! generates what it would have from scratch (tested in
//! `tests/it/running_batch.rs`).

use std::collections::VecDeque;
use std::sync::{Arc, Weak};

use crate::kv_cache::KvCache;
use crate::llama::Llama;

/// Prompts kept, the most recent first.
const ENTRIES: usize = 8;
/// Bytes of keys and values kept over all entries (beyond the server's
/// `--kv-cache-mb`, which bounds the running rows): 64 MiB is about 1,400
/// positions of SmolLM2-135M and 2,700 of Qwen2.5-0.5B.
const MAX_BYTES: usize = 64 << 20;
/// Shorter shared prefixes are read again: copying them saves too little.
const MIN_TOKENS: usize = 8;

struct Entry<E: ?Sized> {
    /// Identity of the engine the cache was built with. A `Weak` keeps the
    /// allocation, so a later engine cannot take the same address.
    engine: Weak<E>,
    tokens: Vec<u32>,
    cache: KvCache,
    bytes: usize,
}

/// The recently read prompts of one running batch, with their KV caches,
/// by the engine (`E`: the batch's row engine) that read them.
pub(super) struct PrefixCache<E: ?Sized> {
    entries: VecDeque<Entry<E>>,
}

impl<E: ?Sized> Default for PrefixCache<E> {
    fn default() -> Self {
        Self {
            entries: VecDeque::new(),
        }
    }
}

impl<E: ?Sized> PrefixCache<E> {
    /// The cache of the longest kept prefix of `prompt` read by `engine`,
    /// cut so that at least one prompt token is still to feed (its logits
    /// give the first sampled token); `None` under [`MIN_TOKENS`].
    pub(super) fn lookup(&mut self, engine: &Arc<E>, prompt: &[u32]) -> Option<KvCache> {
        let limit = prompt.len().saturating_sub(1);
        let (i, shared) = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| same_engine(&e.engine, engine))
            .map(|(i, e)| (i, common_len(&e.tokens, prompt).min(limit)))
            .max_by_key(|&(i, n)| (n, std::cmp::Reverse(i)))?;
        if shared < MIN_TOKENS {
            return None;
        }
        let cache = self.entries[i].cache.prefix(shared)?;
        // Most recently used first.
        if let Some(e) = self.entries.remove(i) {
            self.entries.push_front(e);
        }
        Some(cache)
    }

    /// Keeps the cache of a prompt just read (`cache` holds exactly its
    /// positions), replacing a kept prompt it extends or repeats.
    pub(super) fn insert(&mut self, engine: &Arc<E>, prompt: &[u32], cache: &KvCache) {
        if prompt.len() < MIN_TOKENS || cache.len() != prompt.len() {
            return;
        }
        // Checked before copying (a long conversation's cache can be hundreds
        // of MB); the copy holds the same positions, so the same bytes.
        let bytes = cache.bytes();
        if bytes > MAX_BYTES {
            return;
        }
        let Some(copy) = cache.prefix(prompt.len()) else {
            return;
        };
        self.entries.retain(|e| {
            e.engine.strong_count() > 0
                && !(same_engine(&e.engine, engine) && prompt.starts_with(&e.tokens))
        });
        self.entries.push_front(Entry {
            engine: Arc::downgrade(engine),
            tokens: prompt.to_vec(),
            cache: copy,
            bytes,
        });
        self.entries.truncate(ENTRIES);
        while self.entries.iter().map(|e| e.bytes).sum::<usize>() > MAX_BYTES {
            self.entries.pop_back();
        }
    }
}

/// Whether [`PrefixCache::insert`] keeps a prompt of `len` tokens read into
/// `cache` by `model` (so a row with the same prompt may wait for it).
pub(super) fn would_keep(cache: &KvCache, model: &Llama, len: usize) -> bool {
    matches!(cache, KvCache::Packed(_))
        && len >= MIN_TOKENS
        && model.kv_cache_bytes(len) <= MAX_BYTES
}

fn same_engine<E: ?Sized>(kept: &Weak<E>, engine: &Arc<E>) -> bool {
    std::ptr::addr_eq(kept.as_ptr(), Arc::as_ptr(engine))
}

fn common_len(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}
