//! [`LocalChat`], the real chat backend: hone-model's [`ChatEngine`] over the
//! base models of the catalog, with an LRU cache of adapters.
//!
//! Why the catalog and nothing else: `/v1/models`, job creation, the
//! trainer and chat must agree on what a base model id means, so the weights
//! of base `id` are the ones [`BaseModels`] resolved at start. A stored
//! `ft:` model whose base is no longer in the catalog answers
//! `model_unavailable`, rather than chat quietly loading some other file.
//!
//! Why one base and many adapters: a LoRA adapter is a few MB next to a base
//! of hundreds. Each base is loaded once (packed weights, the serving path
//! measured faithful to f32). An adapter is loaded onto a clone of the base's
//! model *handle* (its weights are reference-counted, so nothing is copied)
//! and kept, as a ready engine, in an LRU cache. Requests on different
//! adapters therefore run side by side on one base.
//!
//! Why an engine loop per base: a request's choices become rows of that
//! base's running batch ([`super::scheduler`]), whatever their adapters, so
//! concurrent requests share each read of the weights. Each request first
//! reserves its KV cache from the budget shared by all bases, or is refused
//! with a 429. [`ChatBackend::generate`] (one choice on the caller's thread,
//! through [`ChatEngine::generate_ids`] like `hone chat`) stays for callers
//! that wrap the backend one choice at a time.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use hone_model::generate::{BatchRow, Generation, GenerationParams};
use hone_model::{ChatEngine, ModelError, WeightPath, SERVING_WEIGHTS};
use hone_text::ChatMessage;

use super::backend::{BatchSnapshot, CancelFlag, ChatBackend, ChatError, ChatTarget, ChoiceUpdate};
use super::scheduler::{
    ChannelSink, KvBudget, KvGrowth, RowMsg, Scheduler, DEFAULT_MAX_BATCH_ROWS, LAZY_KV_BLOCK,
};
use crate::catalog::BaseModels;

/// Adapters kept in memory by default (`--max-adapters`).
pub const DEFAULT_MAX_ADAPTERS: usize = 8;

/// The KV-cache budget by default (`--kv-cache-mb`), in MiB: room for
/// about ten SmolLM2-135M requests at its full 8k context, or a hundred
/// at 600 positions each.
pub const DEFAULT_KV_CACHE_MB: usize = 4096;

/// Options of [`LocalChat`].
#[derive(Debug, Clone)]
pub struct LocalChatOptions {
    /// Adapters kept in memory (LRU); at least 1.
    pub max_adapters: usize,
    /// The weight path bases are loaded with.
    pub weights: WeightPath,
}

impl Default for LocalChatOptions {
    fn default() -> Self {
        LocalChatOptions {
            max_adapters: DEFAULT_MAX_ADAPTERS,
            weights: SERVING_WEIGHTS,
        }
    }
}

/// How [`LocalChat`] batches requests (see [`LocalChat::with_batching`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchOptions {
    /// The KV-cache budget of all bases together, in bytes.
    pub kv_cache_bytes: usize,
    /// Rows decoding at once per base; more admitted rows wait their turn.
    pub max_batch_rows: usize,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            kv_cache_bytes: DEFAULT_KV_CACHE_MB << 20,
            max_batch_rows: DEFAULT_MAX_BATCH_ROWS,
        }
    }
}

/// The real backend: the catalog's base models, each loaded once (on first
/// use, or given at start), and adapted engines from an LRU cache.
pub struct LocalChat {
    catalog: Arc<BaseModels>,
    options: LocalChatOptions,
    bases: Mutex<HashMap<String, Arc<ChatEngine>>>,
    adapters: Mutex<Lru<Arc<ChatEngine>>>,
    adapter_loads: AtomicU64,
    batching: BatchOptions,
    kv: Arc<KvBudget>,
    schedulers: Mutex<HashMap<String, Arc<Scheduler>>>,
}

impl LocalChat {
    /// Serves the base models of `catalog` (the same catalog the server lists
    /// and trains from), each loaded on first use; load them at start with
    /// [`LocalChat::preload`] or [`LocalChat::with_base`].
    pub fn new(catalog: Arc<BaseModels>, options: LocalChatOptions) -> Self {
        let cap = options.max_adapters.max(1);
        LocalChat {
            catalog,
            bases: Mutex::new(HashMap::new()),
            adapters: Mutex::new(Lru::new(cap)),
            adapter_loads: AtomicU64::new(0),
            options,
            batching: BatchOptions::default(),
            kv: KvBudget::new(BatchOptions::default().kv_cache_bytes),
            schedulers: Mutex::new(HashMap::new()),
        }
    }

    /// Batches with `batching` instead of [`BatchOptions::default`] (set
    /// before serving: the budget starts empty).
    pub fn with_batching(mut self, batching: BatchOptions) -> Self {
        self.kv = KvBudget::new(batching.kv_cache_bytes);
        self.batching = batching;
        self
    }

    /// Uses an already loaded engine for catalog base `id` (`hone serve`
    /// loads every base at start to check its adapters). An id the catalog
    /// does not have is never served.
    pub fn with_base(self, id: impl Into<String>, engine: ChatEngine) -> Self {
        lock(&self.bases).insert(id.into(), Arc::new(engine));
        self
    }

    /// Loads base `id` now (e.g. at startup, so the first request is fast
    /// and a broken model is reported before serving).
    pub fn preload(&self, id: &str) -> Result<(), ChatError> {
        self.base(id).map(|_| ())
    }

    /// The KV-cache budget requests reserve from (shared by all bases).
    pub fn kv_budget(&self) -> Arc<KvBudget> {
        self.kv.clone()
    }

    /// How many times an adapter was read from disk (cache misses).
    pub fn adapter_loads(&self) -> u64 {
        self.adapter_loads.load(Ordering::SeqCst)
    }

    /// Adapter directories in the cache, least recently used first.
    pub fn cached_adapters(&self) -> Vec<PathBuf> {
        lock(&self.adapters)
            .entries
            .iter()
            .map(|(k, _)| k.1.clone())
            .collect()
    }

    /// The loaded base `id`, loading it from the catalog on first use. The
    /// lock is held while loading, so two first requests do not load it
    /// twice.
    fn base(&self, id: &str) -> Result<Arc<ChatEngine>, ChatError> {
        let unavailable = |reason: String| ChatError::ModelUnavailable {
            model: id.to_string(),
            reason,
        };
        let resolved = self
            .catalog
            .source(id)
            .ok_or_else(|| unavailable("it is not a base model of this server".into()))?;
        let mut bases = lock(&self.bases);
        if let Some(e) = bases.get(id) {
            return Ok(e.clone());
        }
        tracing::info!(model = id, path = %resolved.source.path().display(), "loading base model");
        let engine = self
            .catalog
            .load(resolved, self.options.weights)
            .map_err(|e| unavailable(e.to_string()))?;
        let engine = Arc::new(engine);
        bases.insert(id.to_string(), engine.clone());
        Ok(engine)
    }

    /// The engine loop of base `id`, started on first use.
    fn scheduler(&self, id: &str) -> Result<Arc<Scheduler>, ChatError> {
        let mut all = lock(&self.schedulers);
        if let Some(s) = all.get(id) {
            return Ok(s.clone());
        }
        let s = Scheduler::start(id, self.batching.max_batch_rows)
            .map_err(|e| ChatError::Generation(format!("cannot start the engine loop: {e}")))?;
        let s = Arc::new(s);
        all.insert(id.to_string(), s.clone());
        Ok(s)
    }

    /// The engine for `target` (its base, with its adapter if any) and the
    /// prompt ids of `messages`.
    fn prepare(
        &self,
        target: &ChatTarget,
        messages: &[ChatMessage],
        tools: Option<&serde_json::Value>,
    ) -> Result<(Arc<ChatEngine>, Vec<u32>), ChatError> {
        let base = self.base(&target.base)?;
        let prompt = base
            .encode_prompt(messages, tools)
            .map_err(|e| ChatError::InvalidPrompt(e.to_string()))?;
        let engine = match &target.adapter {
            None => base,
            Some(dir) => self.adapted(target, &base, dir)?,
        };
        Ok((engine, prompt))
    }

    /// The rows of one request, each holding its share of the KV budget:
    /// 429 (`Busy`) when the budget is taken, `OverBudget` when the request
    /// could never fit.
    fn rows(
        &self,
        engine: &Arc<ChatEngine>,
        prompt: &[u32],
        params: &[GenerationParams],
        cancel: &CancelFlag,
        tx: &mpsc::Sender<RowMsg>,
        ended: &Arc<AtomicBool>,
    ) -> Result<Vec<BatchRow>, ChatError> {
        let ctx = engine.model.cfg.max_position_embeddings;
        if prompt.len() >= ctx {
            return Err(ChatError::ContextOverflow {
                needed: prompt.len() + 1,
                max: ctx,
            });
        }
        let per_row = |p: &GenerationParams| {
            let positions = first_share(prompt.len(), p.max_tokens, ctx);
            engine.model.kv_cache_bytes(positions)
        };
        let needed: usize = params.iter().map(per_row).sum();
        if needed > self.kv.budget() {
            return Err(ChatError::OverBudget {
                needed_mb: needed.div_ceil(1 << 20),
                budget_mb: self.kv.budget() >> 20,
            });
        }
        let mut kv = self.kv.try_reserve(needed).ok_or(ChatError::Busy)?;
        let mut rows = Vec::with_capacity(params.len());
        for (index, p) in params.iter().enumerate() {
            // Split the request's reservation into one share per row, so
            // each row gives its own back when it leaves.
            let share = kv.split_off(per_row(p));
            let sink = ChannelSink {
                index,
                tx: tx.clone(),
                cancel: cancel.clone(),
                ended: ended.clone(),
                kv: Some(share),
                growth: lazy(prompt.len(), p.max_tokens, ctx).then(|| KvGrowth {
                    positions: first_share(prompt.len(), p.max_tokens, ctx),
                    block: LAZY_KV_BLOCK,
                    block_bytes: engine.model.kv_cache_bytes(LAZY_KV_BLOCK),
                }),
            };
            let row = BatchRow::new(engine.clone(), prompt.to_vec(), p, Box::new(sink))
                .map_err(gen_err)?;
            rows.push(row);
        }
        Ok(rows)
    }

    /// `base` with the adapter at `dir` attached, from the cache or from disk.
    fn adapted(
        &self,
        target: &ChatTarget,
        base: &ChatEngine,
        dir: &Path,
    ) -> Result<Arc<ChatEngine>, ChatError> {
        let key = (target.base.clone(), dir.to_path_buf());
        if let Some(engine) = lock(&self.adapters).get(&key) {
            return Ok(engine);
        }
        // Read outside the lock: other requests keep using cached adapters.
        let engine =
            Arc::new(
                load_adapter(base, dir).map_err(|e| ChatError::ModelUnavailable {
                    model: target.model.clone(),
                    reason: format!("adapter {}: {e}", dir.display()),
                })?,
            );
        self.adapter_loads.fetch_add(1, Ordering::SeqCst);
        lock(&self.adapters).put(key, engine.clone());
        Ok(engine)
    }
}

impl ChatBackend for LocalChat {
    fn generate(
        &self,
        target: &ChatTarget,
        messages: &[ChatMessage],
        tools: Option<&serde_json::Value>,
        params: &GenerationParams,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Generation, ChatError> {
        let (engine, prompt) = self.prepare(target, messages, tools)?;
        engine
            .generate_ids(&prompt, params, on_text)
            .map_err(gen_err)
    }

    /// The choices as rows of the base's running batch: reserve their KV
    /// cache, hand them to the engine loop, relay what they report.
    fn generate_choices(
        &self,
        target: &ChatTarget,
        messages: &[ChatMessage],
        tools: Option<&serde_json::Value>,
        params: &[GenerationParams],
        cancel: &CancelFlag,
        on: &mut dyn FnMut(usize, ChoiceUpdate<'_>) -> ControlFlow<()>,
    ) -> Result<Vec<Generation>, ChatError> {
        let (engine, prompt) = self.prepare(target, messages, tools)?;
        let (tx, rx) = mpsc::channel();
        // Set when this request stops listening: its rows then leave.
        let ended = Arc::new(AtomicBool::new(false));
        let _leave = EndOnDrop(ended.clone());
        let rows = self.rows(&engine, &prompt, params, cancel, &tx, &ended)?;
        drop(tx);
        self.scheduler(&target.base)?
            .submit(rows)
            .map_err(gen_err)?;
        let mut done: Vec<Option<Generation>> = params.iter().map(|_| None).collect();
        while done.iter().any(Option::is_none) {
            let Ok(msg) = rx.recv() else {
                return Err(ChatError::Generation("the engine loop stopped".into()));
            };
            let flow = match msg {
                RowMsg::Reused(i, n) => on(i, ChoiceUpdate::Cached(n)),
                RowMsg::Text(i, t) => on(i, ChoiceUpdate::Text(&t)),
                RowMsg::Done(i, Ok(g)) => {
                    let flow = on(i, ChoiceUpdate::Done(&g));
                    done[i] = Some(g);
                    flow
                }
                RowMsg::Done(_, Err(e)) => return Err(gen_err(e)),
            };
            if flow.is_break() {
                break;
            }
        }
        Ok(done.into_iter().flatten().collect())
    }

    fn batch_stats(&self) -> Vec<BatchSnapshot> {
        let bases = lock(&self.bases);
        let mut out: Vec<BatchSnapshot> = lock(&self.schedulers)
            .iter()
            .map(|(id, s)| {
                let st = s.stats();
                let per_position = bases.get(id).map_or(0, |e| e.model.kv_cache_bytes(64) / 64);
                BatchSnapshot {
                    model: id.clone(),
                    running_rows: st.running,
                    waiting_rows: st.waiting,
                    last_step_tokens: st.last_step_tokens,
                    kv_bytes_used: st.kv_positions * per_position,
                    kv_bytes_reserved: self.kv.reserved(),
                    kv_bytes_budget: self.kv.budget(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.model.cmp(&b.model));
        out
    }
}

/// Whether a row is reserved lazily: only the context length bounds it
/// (no `max_tokens`, or one reaching past the context).
fn lazy(prompt: usize, max_tokens: usize, ctx: usize) -> bool {
    prompt.saturating_add(max_tokens) >= ctx
}

/// The KV positions a row reserves at admission: its prompt plus
/// `max_tokens`, or for a lazy row its prompt plus [`LAZY_KV_BLOCK`]; at
/// most the context length.
fn first_share(prompt: usize, max_tokens: usize, ctx: usize) -> usize {
    let generated = if lazy(prompt, max_tokens, ctx) {
        LAZY_KV_BLOCK
    } else {
        max_tokens
    };
    prompt.saturating_add(generated).min(ctx)
}

/// Marks a request as no longer listening when dropped (it returned, or
/// failed, or its thread unwound), so its remaining rows leave the batch.
struct EndOnDrop(Arc<AtomicBool>);

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn gen_err(e: ModelError) -> ChatError {
    match e {
        ModelError::ContextOverflow { needed, max } => ChatError::ContextOverflow { needed, max },
        ModelError::Text(m) => ChatError::InvalidPrompt(m),
        ModelError::Grammar(m) => ChatError::Grammar(m),
        other => ChatError::Generation(other.to_string()),
    }
}

/// An engine for `base` with the PEFT adapter at `dir` attached: a clone of
/// the base's model handle (the base weights are shared, not copied; the
/// base itself stays bare), which checks every shape against the base, and
/// a copy of its tokenizer (the engine owns one; a few MB, once per cached
/// adapter, never per request).
fn load_adapter(base: &ChatEngine, dir: &Path) -> Result<ChatEngine, ModelError> {
    let mut model = base.model.clone();
    let cfg = hone_model::load_peft_adapter(&mut model, dir)?;
    if let Some(b) = cfg.hone_base() {
        if !b.is_empty() && b != base.id {
            tracing::debug!(adapter = %dir.display(), trained_on = b, base = %base.id,
                "adapter names another base model id");
        }
    }
    Ok(ChatEngine {
        id: base.id.clone(),
        model,
        tokenizer: base.tokenizer.clone(),
        grammar: base.grammar.clone(),
    })
}

/// (base id, adapter directory): what an adapted engine is cached under.
type AdapterKey = (String, PathBuf);

/// A small LRU (of adapted engines): few entries, so a vector (most recent
/// last) is plenty.
struct Lru<V> {
    cap: usize,
    entries: Vec<(AdapterKey, V)>,
}

impl<V: Clone> Lru<V> {
    fn new(cap: usize) -> Self {
        Lru {
            cap,
            entries: Vec::new(),
        }
    }

    fn get(&mut self, key: &AdapterKey) -> Option<V> {
        let i = self.entries.iter().position(|(k, _)| k == key)?;
        let e = self.entries.remove(i);
        let v = e.1.clone();
        self.entries.push(e);
        Some(v)
    }

    fn put(&mut self, key: AdapterKey, v: V) {
        self.entries.retain(|(k, _)| *k != key);
        self.entries.push((key, v));
        while self.entries.len() > self.cap {
            self.entries.remove(0);
        }
    }
}

/// Locks, recovering from a poisoned mutex: a panic in one request must not
/// take chat down for every later one (the data stays consistent: each
/// critical section only inserts whole entries).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_evicts_the_least_recently_used() {
        let mut lru = Lru::new(2);
        let k = |s: &str| (String::from("b"), PathBuf::from(s));
        lru.put(k("a"), 1);
        lru.put(k("b"), 2);
        assert_eq!(lru.get(&k("a")), Some(1));
        lru.put(k("c"), 3);
        assert!(lru.get(&k("b")).is_none());
        assert!(lru.get(&k("a")).is_some() && lru.get(&k("c")).is_some());
    }
}
