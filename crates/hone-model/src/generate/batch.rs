//! Continuous batching: a [`RunningBatch`] of sequences that join and leave
//! between steps, the machine behind the server's engine loop.
//!
//! Each step feeds every running row at once ([`Llama::step_feeds`]): one
//! token for each row that is decoding, and a chunk of at most
//! [`STEP_PROMPT_ROWS`] prompt tokens for the rows still reading their
//! prompt, so a long prompt is read over several steps while the others
//! keep streaming. Each row runs its own model handle (clones of one base
//! that differ in their adapters), keeps its own KV cache, sampler and
//! grammar matcher ([`Sequence`], the same state [`super::generate`]
//! drives), so its result equals the unbatched one.
//!
//! A row leaves as soon as it is done, its sink no longer wants it (the
//! client went away), or it fails; its cache is freed then. A panic while
//! sampling or decoding one row fails that row only.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

use super::{Detokenizer, FinishReason, Generation, GenerationParams, Sequence};
use crate::error::{ModelError, Result};
use crate::kv_cache::{Feed, KvCache};
use crate::llama::{ForwardOptions, Llama};

use super::prefix::PrefixCache;

/// Prompt tokens fed per step, over all rows still reading their prompt,
/// while other rows are decoding: enough to read each weight block once for
/// many tokens (the packed step's own chunk), few enough that the decoding
/// rows wait little for them.
pub const STEP_PROMPT_ROWS: usize = 16;

/// Prompt tokens fed per step when no row is decoding: nobody waits on the
/// step then, so a prompt is read in as few steps as possible (a 40-token
/// chat prompt in one, not three: a shorter time to first token). Still
/// bounded, so a very long prompt lets new rows join and cancellations
/// land between its chunks. Chunked prefill gives the same cache bit for
/// bit whatever the chunk size, so this changes no result.
pub const IDLE_STEP_PROMPT_ROWS: usize = 256;

/// What a row generates with: a model handle (its adapters on), the
/// tokenizer that turns its ids into text, and the ids that end it
/// (implemented by [`crate::ChatEngine`]).
pub trait RowEngine: Send + Sync {
    fn model(&self) -> &Llama;
    fn detokenizer(&self) -> &dyn Detokenizer;
    fn stop_ids(&self) -> &[u32];
}

/// Where a row's output goes (the request that asked for it).
pub trait RowSink: Send {
    /// False once the client has gone away: the row then leaves before the
    /// next step (asked before every step, so keep it cheap).
    fn wanted(&self) -> bool;
    /// A new piece of text, safe to show; `Break` ends the row.
    fn text(&mut self, piece: &str) -> ControlFlow<()>;
    /// The end of the row: its generation, or why it failed. Called once.
    fn done(&mut self, result: Result<Generation>);
    /// Whether the row may grow its KV cache to `positions` (asked before
    /// each decode step that would pass what it held). `false` ends the row
    /// with [`FinishReason::Length`], as the context length would: the
    /// server's lazily reserved rows answer it from the KV-cache budget.
    fn room(&mut self, positions: usize) -> bool {
        let _ = positions;
        true
    }
    /// The row starts with `tokens` prompt positions copied from a prompt
    /// read before ([`super::prefix`]): they are not computed again
    /// (OpenAI's `usage.prompt_tokens_details.cached_tokens`). Called at most
    /// once, before any text.
    fn reused(&mut self, tokens: usize) {
        let _ = tokens;
    }
}

/// A sequence ready to join a batch: built on the caller's thread, so that
/// checking the prompt and compiling a grammar never stall the batch.
pub struct BatchRow {
    engine: Arc<dyn RowEngine>,
    prompt: Vec<u32>,
    seq: Sequence,
    cache: KvCache,
    /// Prompt tokens fed so far.
    fed: usize,
    /// The sampled token to feed next, once the prompt is read.
    next: Option<u32>,
    sink: Box<dyn RowSink>,
}

impl BatchRow {
    /// A row generating a completion of `prompt` with `params` on `engine`.
    /// Fails (as [`super::generate`] would) on an empty prompt, a prompt
    /// over the context length, or a grammar the tokenizer cannot hold.
    pub fn new(
        engine: Arc<dyn RowEngine>,
        prompt: Vec<u32>,
        params: &GenerationParams,
        sink: Box<dyn RowSink>,
    ) -> Result<Self> {
        let model = engine.model();
        let seq = Sequence::new(
            &prompt,
            params,
            model.cfg.max_position_embeddings,
            engine.detokenizer(),
        )?;
        let cache = model.new_cache();
        Ok(BatchRow {
            engine,
            prompt,
            seq,
            cache,
            fed: 0,
            next: None,
            sink,
        })
    }

    /// The tokens this ending row's cache holds (its prompt, then the
    /// generated tokens fed back) and the cache itself, taken out for the
    /// prefix cache: a conversation's next turn starts with them.
    fn take_kept(&mut self) -> Option<Kept> {
        let generated = self.cache.len().checked_sub(self.prompt.len())?;
        let ids = self.seq.ids.get(..generated)?;
        let tokens: Vec<u32> = self.prompt.iter().chain(ids).copied().collect();
        let cache = std::mem::replace(&mut self.cache, self.engine.model().new_cache());
        Some(Kept {
            engine: self.engine.clone(),
            tokens,
            cache,
        })
    }

    /// Ends the row: the generation so far (text held back for a possible
    /// stop string included) goes to the sink, with `finish` when given.
    fn finish(mut self, finish: Option<FinishReason>) {
        if let Some(f) = finish {
            self.seq.finish = f;
        }
        let BatchRow {
            engine,
            seq,
            mut sink,
            cache,
            ..
        } = self;
        drop(cache);
        let result = catch_unwind(AssertUnwindSafe(|| {
            seq.finish(engine.detokenizer(), &mut |t| sink.text(t))
        }))
        .unwrap_or_else(|p| Err(panicked(&p)));
        sink.done(result);
    }

    fn fail(self, e: ModelError) {
        let BatchRow {
            cache, mut sink, ..
        } = self;
        drop(cache);
        sink.done(Err(e));
    }

    /// Whether this row is still reading the prompt `other` has, on the same
    /// engine (so `other` can copy its cache once it is read).
    fn reads_same_prompt(&self, other: &BatchRow) -> bool {
        self.next.is_none()
            && self.fed < self.prompt.len()
            && Arc::ptr_eq(&self.engine, &other.engine)
            && self.prompt == other.prompt
            && super::prefix::would_keep(&self.cache, self.engine.model(), self.prompt.len())
    }

    /// The tokens this row feeds next: its sampled token, or the next chunk
    /// of its prompt of at most `budget` tokens (then taken from `budget`).
    fn feed(&self, budget: &mut usize) -> Option<std::ops::Range<usize>> {
        if self.next.is_some() {
            return Some(0..1);
        }
        let take = (*budget).min(self.prompt.len() - self.fed);
        *budget -= take;
        (take > 0).then(|| self.fed..self.fed + take)
    }
}

/// A snapshot of a batch, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Rows in the running batch.
    pub running: usize,
    /// Rows waiting for room in the batch.
    pub waiting: usize,
    /// Tokens fed by the last step (decode tokens plus prompt tokens).
    pub last_step_tokens: usize,
    /// Positions held in the KV caches of the running rows.
    pub kv_positions: usize,
    /// Prompt tokens not computed since the batch began, their KV copied
    /// from an earlier prompt with the same start ([`super::prefix`]).
    pub reused_prompt_tokens: u64,
}

/// Rows decoding together, plus rows waiting for room (at most `max_rows`
/// run at once).
pub struct RunningBatch {
    running: Vec<BatchRow>,
    waiting: VecDeque<BatchRow>,
    max_rows: usize,
    last_step_tokens: usize,
    /// Prompts read lately, whose KV a joining row with the same start copies.
    prefixes: PrefixCache<dyn RowEngine>,
    reused_prompt_tokens: u64,
}

impl RunningBatch {
    /// A batch of at most `max_rows` (at least 1) running rows.
    pub fn new(max_rows: usize) -> Self {
        RunningBatch {
            running: Vec::new(),
            waiting: VecDeque::new(),
            max_rows: max_rows.max(1),
            last_step_tokens: 0,
            prefixes: PrefixCache::default(),
            reused_prompt_tokens: 0,
        }
    }

    /// Adds a row; it runs from the next step with room for it.
    pub fn join(&mut self, row: BatchRow) {
        self.waiting.push_back(row);
    }

    /// True when no row is running or waiting.
    pub fn is_empty(&self) -> bool {
        self.running.is_empty() && self.waiting.is_empty()
    }

    pub fn stats(&self) -> BatchStats {
        BatchStats {
            running: self.running.len(),
            waiting: self.waiting.len(),
            last_step_tokens: self.last_step_tokens,
            kv_positions: self.running.iter().map(|r| r.cache.len()).sum(),
            reused_prompt_tokens: self.reused_prompt_tokens,
        }
    }

    /// One step: rows no longer wanted leave, waiting rows join while there
    /// is room, every running row is fed (a token, or a prompt chunk), and
    /// each row whose prompt is read samples its next token. Rows that end
    /// report to their sink and leave. Runs nothing when the batch is empty.
    pub fn step(&mut self) {
        self.drop_unwanted();
        self.admit();
        self.drop_roomless();
        if self.running.is_empty() {
            self.last_step_tokens = 0;
            return;
        }
        let decoding = self.running.iter().any(|r| r.next.is_some());
        let mut budget = if decoding {
            STEP_PROMPT_ROWS
        } else {
            IDLE_STEP_PROMPT_ROWS
        };
        let plan: Vec<Option<std::ops::Range<usize>>> =
            self.running.iter().map(|r| r.feed(&mut budget)).collect();
        self.last_step_tokens = plan.iter().flatten().map(|r| r.len()).sum();
        let logits = match self.forward(&plan) {
            Ok(l) => l,
            Err(e) => {
                // The step itself failed: no row fed in it can go on.
                let fed = std::mem::take(&mut self.running);
                for (row, p) in fed.into_iter().zip(&plan) {
                    match p {
                        Some(_) => row.fail(again(&e)),
                        None => self.running.push(row),
                    }
                }
                return;
            }
        };
        let rows = std::mem::take(&mut self.running);
        let mut logits = logits.into_iter();
        let mut pending = Vec::with_capacity(rows.len());
        for (mut row, p) in rows.into_iter().zip(plan) {
            let Some(range) = p else {
                pending.push(Pending::Ready(row));
                continue;
            };
            let l = logits.next().unwrap_or_default();
            if row.next.is_none() {
                row.fed = range.end;
                if row.fed < row.prompt.len() {
                    pending.push(Pending::Ready(row));
                    continue;
                }
                self.prefixes.insert(&row.engine, &row.prompt, &row.cache);
            }
            pending.push(Pending::Sample(row, l));
        }
        let (running, kept) = advance_all(pending);
        self.running = running;
        for k in kept {
            self.prefixes.insert(&k.engine, &k.tokens, &k.cache);
        }
    }

    /// Waiting rows join while there is room, in order, each starting from
    /// the longest prompt start already read ([`PrefixCache`]). A row whose
    /// prompt a running row is still reading on the same engine (the other
    /// choices of an `n > 1` request, or the same prompt sent twice) waits
    /// instead: once that prompt is read it copies all of it, so the prompt
    /// is computed once, not once per row.
    fn admit(&mut self) {
        let mut held = VecDeque::new();
        while self.running.len() < self.max_rows {
            let Some(mut r) = self.waiting.pop_front() else {
                break;
            };
            let fresh = r.fed == 0 && r.cache.is_empty();
            if fresh && self.running.iter().any(|o| o.reads_same_prompt(&r)) {
                held.push_back(r);
                continue;
            }
            if fresh {
                if let Some(cache) = self.prefixes.lookup(&r.engine, &r.prompt) {
                    r.fed = cache.len();
                    r.cache = cache;
                    self.reused_prompt_tokens += r.fed as u64;
                    r.sink.reused(r.fed);
                }
            }
            self.running.push(r);
        }
        held.append(&mut self.waiting);
        self.waiting = held;
    }

    /// Rows whose sink no longer wants them leave, running or waiting.
    fn drop_unwanted(&mut self) {
        let stop = Some(FinishReason::Stop);
        let (keep, gone): (Vec<_>, Vec<_>) = std::mem::take(&mut self.running)
            .into_iter()
            .partition(|r| r.sink.wanted());
        self.running = keep;
        gone.into_iter().for_each(|r| r.finish(stop));
        let (keep, gone): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|r| r.sink.wanted());
        self.waiting = keep;
        gone.into_iter().for_each(|r| r.finish(stop));
    }

    /// Decoding rows whose sink has no room for one more position end
    /// (finish reason `length`) before the step.
    fn drop_roomless(&mut self) {
        for mut row in std::mem::take(&mut self.running) {
            let grows = row.next.is_some();
            let positions = row.cache.len() + 1;
            if grows && !row.sink.room(positions) {
                row.finish(Some(FinishReason::Length));
            } else {
                self.running.push(row);
            }
        }
    }

    /// The packed step over the rows `plan` feeds: the logits after each
    /// fed row's tokens, in order. A panic in the model fails the step.
    fn forward(&mut self, plan: &[Option<std::ops::Range<usize>>]) -> Result<Vec<Vec<f32>>> {
        let mut feeds = Vec::with_capacity(plan.len());
        for (row, p) in self.running.iter_mut().zip(plan) {
            let Some(range) = p else { continue };
            let BatchRow {
                engine,
                prompt,
                cache,
                next,
                ..
            } = row;
            let ids = match next {
                Some(t) => std::slice::from_ref(t),
                None => &prompt[range.clone()],
            };
            feeds.push(Feed {
                model: engine.model(),
                ids,
                cache,
            });
        }
        catch_unwind(AssertUnwindSafe(|| {
            Llama::step_feeds(&mut feeds, ForwardOptions::default())
        }))
        .unwrap_or_else(|p| Err(panicked(&p)))
    }
}

/// A row after the step's forward pass: going on as it is (still reading its
/// prompt, or not fed this step), or due to sample from its logits; after
/// sampling, ended (with what the prefix cache may keep of it) or gone.
enum Pending {
    Ready(BatchRow),
    Sample(BatchRow, Vec<f32>),
    Ended(Option<Kept>),
    Gone,
}

/// A finished row's tokens and KV cache, for [`PrefixCache::insert`].
struct Kept {
    engine: Arc<dyn RowEngine>,
    tokens: Vec<u32>,
    cache: KvCache,
}

/// Samples every row that is due, spread over the decode team, and returns
/// the rows that go on, in their order.
///
/// Why in parallel: sampling reads the whole vocabulary row (49k logits on
/// SmolLM2, 152k on Qwen2.5) and detokenizes, once per row per step; done
/// one row after another on the engine thread it was about a tenth of a
/// step at 8 rows while the team's other threads spun idle. Each row has
/// its own sampler, grammar and sink, so the results are the same. Also
/// returns what rows that ended normally leave for the prefix cache.
fn advance_all(pending: Vec<Pending>) -> (Vec<BatchRow>, Vec<Kept>) {
    let slots: Vec<Mutex<Pending>> = pending.into_iter().map(Mutex::new).collect();
    let due: Vec<usize> = (0..slots.len())
        .filter(|&i| matches!(*lock(&slots[i]), Pending::Sample(..)))
        .collect();
    crate::decode::team::global().run(due.len(), &|j| {
        let mut slot = lock(&slots[due[j]]);
        if let Pending::Sample(row, l) = std::mem::replace(&mut *slot, Pending::Gone) {
            *slot = advance(row, &l);
        }
    });
    let (mut rows, mut kept) = (Vec::new(), Vec::new());
    for s in slots {
        match s.into_inner().unwrap_or_else(|e| e.into_inner()) {
            Pending::Ready(row) => rows.push(row),
            Pending::Ended(Some(k)) => kept.push(k),
            _ => {}
        }
    }
    (rows, kept)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Samples `row`'s next token from `logits` and streams its text. Returns
/// the row when it goes on (`Ready`); else it has reported its end to its
/// sink (`Ended` when it ended normally, `Gone` when it failed).
fn advance(mut row: BatchRow, logits: &[f32]) -> Pending {
    let BatchRow {
        engine, seq, sink, ..
    } = &mut row;
    let step = catch_unwind(AssertUnwindSafe(|| {
        seq.advance(logits, engine.stop_ids(), engine.detokenizer(), &mut |t| {
            sink.text(t)
        })
    }));
    match step {
        Ok(Ok(Some(next))) => {
            row.next = Some(next);
            Pending::Ready(row)
        }
        Ok(Ok(None)) => {
            let kept = row.take_kept();
            row.finish(None);
            Pending::Ended(kept)
        }
        Ok(Err(e)) => {
            row.fail(e);
            Pending::Gone
        }
        Err(p) => {
            row.fail(panicked(&p));
            Pending::Gone
        }
    }
}

/// The error of a failed step, for each of its rows (errors are not `Clone`).
fn again(e: &ModelError) -> ModelError {
    match e {
        ModelError::ContextOverflow { needed, max } => ModelError::ContextOverflow {
            needed: *needed,
            max: *max,
        },
        other => ModelError::Generation(other.to_string()),
    }
}

/// A panic caught while generating one row, as that row's error.
fn panicked(payload: &Box<dyn std::any::Any + Send>) -> ModelError {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    ModelError::Generation(format!("generation panicked: {what}"))
}
