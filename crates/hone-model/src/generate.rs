//! Token generation shared by `hone chat` and the HTTP server: sampling
//! (greedy, temperature, top-k, top-p; seeded), an optional grammar that
//! masks the logits before each sample ([`crate::constraint`]), streaming
//! through a callback, and stop conditions (stop tokens, `max_tokens`, stop
//! strings, a completed grammar).

use std::ops::ControlFlow;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::constraint::{Constraint, Grammar, GrammarEnv};
use crate::error::{ModelError, Result};
use crate::kv_cache::KvCache;
use crate::llama::{ForwardOptions, Llama};

/// How to sample a completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationParams {
    pub max_tokens: usize,
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// Nucleus sampling mass in (0, 1]; 1 disables it.
    pub top_p: f32,
    /// Keep only the `top_k` most likely tokens; 0 disables it.
    pub top_k: usize,
    pub seed: u64,
    /// Generation ends before any of these strings, which are never emitted.
    pub stop: Vec<String>,
    /// What the completion must match (JSON, a schema); each sequence gets
    /// its own matcher. A stop token is allowed only once it is complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grammar: Option<Grammar>,
}

impl Default for GenerationParams {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            seed: 0,
            stop: Vec::new(),
            grammar: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// A stop token or stop string, a completed grammar, or the callback
    /// asked to stop.
    Stop,
    /// `max_tokens` (or the context length) was reached.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// The completion text, without the stop token or stop string.
    pub text: String,
    /// Sampled ids, including a final stop token if one ended generation.
    pub token_ids: Vec<u32>,
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// A model that gives next-token logits one step at a time.
pub trait StepModel {
    type Cache;
    fn new_cache(&self) -> Self::Cache;
    /// Logits of the position after `ids`, which follow `start_pos` cached ones.
    fn step(&self, ids: &[u32], start_pos: usize, cache: &mut Self::Cache) -> Result<Vec<f32>>;
    /// Longest sequence the model accepts.
    fn context_length(&self) -> usize;
}

/// A [`Llama`] generating with its adapters (if any) on.
impl StepModel for Llama {
    type Cache = KvCache;

    fn new_cache(&self) -> KvCache {
        Llama::new_cache(self)
    }

    fn step(&self, ids: &[u32], start_pos: usize, cache: &mut KvCache) -> Result<Vec<f32>> {
        self.step_logits(ids, start_pos, cache, ForwardOptions::default())
    }

    fn context_length(&self) -> usize {
        self.cfg.max_position_embeddings
    }
}

/// Batched decode steps through [`Llama::step_batch_logits`], adapters on.
impl BatchStepModel for Llama {
    fn step_batch(&self, ids: &[u32], caches: &mut [&mut KvCache]) -> Result<Vec<Vec<f32>>> {
        self.step_batch_logits(ids, caches, ForwardOptions::default())
    }
}

/// What generation needs from a tokenizer.
pub trait Detokenizer {
    /// Decodes ids to text (special tokens may be skipped).
    fn decode(&self, ids: &[u32]) -> Result<String>;

    /// The vocabulary grammars compile against, for
    /// [`GenerationParams::grammar`]. A tokenizer without one cannot
    /// constrain its output.
    fn grammar_env(&self) -> Result<Arc<GrammarEnv>> {
        Err(ModelError::Grammar(
            "this tokenizer cannot constrain generation to a grammar".into(),
        ))
    }
}

impl<F: Fn(&[u32]) -> Result<String>> Detokenizer for F {
    fn decode(&self, ids: &[u32]) -> Result<String> {
        self(ids)
    }
}

/// Prompt tokens fed to the model per call by [`generate`]: between two
/// such chunks the caller is asked (an empty piece to `on_text`) whether to
/// go on, so a long prompt can be abandoned within one chunk. Large enough
/// that the packed step still multiplies many rows at once.
pub const PREFILL_CHUNK: usize = 64;

/// Generates a completion of `prompt`, calling `on_text` with each new piece
/// of text as soon as it is safe to show (complete UTF-8, and not possibly
/// the start of a stop string). `on_text` returning `Break` ends generation.
///
/// A prompt longer than [`PREFILL_CHUNK`] is fed in chunks, and `on_text`
/// is also called with an empty piece between chunks: answering `Break`
/// there (a client that went away) stops the prefill, and the generation
/// ends at once with no completion tokens.
pub fn generate<M: StepModel>(
    model: &M,
    prompt: &[u32],
    params: &GenerationParams,
    stop_ids: &[u32],
    detok: &dyn Detokenizer,
    on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
) -> Result<Generation> {
    let mut seq = Sequence::new(prompt, params, model.context_length(), detok)?;
    let mut cache = model.new_cache();
    let Some(mut logits) = prefill(model, prompt, &mut cache, on_text)? else {
        seq.finish = FinishReason::Stop;
        return seq.finish(detok, on_text);
    };
    while let Some(next) = seq.advance(&logits, stop_ids, detok, on_text)? {
        logits = model.step(&[next], seq.position(), &mut cache)?;
    }
    seq.finish(detok, on_text)
}

/// Feeds `prompt` to an empty `cache` in chunks of [`PREFILL_CHUNK`],
/// asking `on_text` (with an empty piece) between chunks whether to go on.
/// Returns the logits after the prompt, or `None` when asked to stop.
fn prefill<M: StepModel>(
    model: &M,
    prompt: &[u32],
    cache: &mut M::Cache,
    on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
) -> Result<Option<Vec<f32>>> {
    let mut logits = Vec::new();
    for (i, chunk) in prompt.chunks(PREFILL_CHUNK).enumerate() {
        if i > 0 && on_text("").is_break() {
            return Ok(None);
        }
        logits = model.step(chunk, i * PREFILL_CHUNK, cache)?;
    }
    Ok(Some(logits))
}

/// A model that can also take one decode step for several sequences at
/// once, each with its own cache: the weights are then read once for all
/// of them, which is where batched generation gains.
pub trait BatchStepModel: StepModel {
    /// Logits after feeding `ids[i]` to sequence `i` (whose cache holds its
    /// earlier positions). Each row must equal what [`StepModel::step`] gives
    /// for that sequence alone, so batching never changes a result.
    fn step_batch(&self, ids: &[u32], caches: &mut [&mut Self::Cache]) -> Result<Vec<Vec<f32>>>;
}

/// Generates a completion for each prompt (in order), decoding the unfinished
/// ones together one token at a time; each keeps its own KV cache, and leaves
/// the batch when it stops. Every result equals what [`generate`] gives for
/// that prompt alone with the same `params` (each sequence has its own
/// sampler, seeded from `params.seed`).
pub fn generate_batch<M: BatchStepModel>(
    model: &M,
    prompts: &[Vec<u32>],
    params: &GenerationParams,
    stop_ids: &[u32],
    detok: &dyn Detokenizer,
) -> Result<Vec<Generation>> {
    let ctx = model.context_length();
    let mut seqs = prompts
        .iter()
        .map(|p| Sequence::new(p, params, ctx, detok))
        .collect::<Result<Vec<_>>>()?;
    let mut caches: Vec<M::Cache> = prompts.iter().map(|_| model.new_cache()).collect();
    let mut logits = Vec::with_capacity(prompts.len());
    for (p, cache) in prompts.iter().zip(caches.iter_mut()) {
        logits.push(model.step(p, 0, cache)?);
    }
    let mut active: Vec<usize> = (0..prompts.len()).collect();
    let mut ignore = |_: &str| ControlFlow::Continue(());
    while !active.is_empty() {
        let mut feed = Vec::with_capacity(active.len());
        for &i in &active {
            if let Some(next) = seqs[i].advance(&logits[i], stop_ids, detok, &mut ignore)? {
                feed.push((i, next));
            }
        }
        active = feed.iter().map(|(i, _)| *i).collect();
        if active.is_empty() {
            break;
        }
        let ids: Vec<u32> = feed.iter().map(|(_, t)| *t).collect();
        let mut batch: Vec<&mut M::Cache> = caches
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| active.contains(i))
            .map(|(_, c)| c)
            .collect();
        let rows = model.step_batch(&ids, &mut batch)?;
        for (&i, row) in active.iter().zip(rows) {
            logits[i] = row;
        }
    }
    seqs.into_iter()
        .map(|s| s.finish(detok, &mut ignore))
        .collect()
}

/// One completion in progress: its sampler, its grammar matcher (if any),
/// the ids so far and the text shown so far. [`generate`] and [`generate_batch`] drive it the same way,
/// which is why their results agree.
struct Sequence {
    prompt_len: usize,
    ctx: usize,
    max_tokens: usize,
    sampler: Sampler,
    constraint: Option<Constraint>,
    stream: TextStream,
    ids: Vec<u32>,
    finish: FinishReason,
    /// The last id is a stop token (kept in `token_ids`, not in the text).
    ended_by_stop_id: bool,
}

impl Sequence {
    fn new(
        prompt: &[u32],
        params: &GenerationParams,
        ctx: usize,
        detok: &dyn Detokenizer,
    ) -> Result<Self> {
        if prompt.is_empty() {
            return Err(ModelError::Generation("the prompt has no tokens".into()));
        }
        if prompt.len() >= ctx {
            return Err(ModelError::ContextOverflow {
                needed: prompt.len() + 1,
                max: ctx,
            });
        }
        let constraint = match &params.grammar {
            Some(g) => Some(detok.grammar_env()?.constraint(g)?),
            None => None,
        };
        Ok(Self {
            prompt_len: prompt.len(),
            ctx,
            max_tokens: params.max_tokens,
            sampler: Sampler::new(params),
            constraint,
            stream: TextStream::new(params.stop.clone()),
            ids: Vec::new(),
            finish: FinishReason::Length,
            ended_by_stop_id: false,
        })
    }

    /// Position of the last sampled token (where it is fed to the model).
    fn position(&self) -> usize {
        self.prompt_len + self.ids.len() - 1
    }

    /// Samples the next token from `logits` and streams its text. Returns the
    /// token to feed to the model next, or `None` when the sequence is done.
    fn advance(
        &mut self,
        logits: &[f32],
        stop_ids: &[u32],
        detok: &dyn Detokenizer,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Option<u32>> {
        if self.ids.len() >= self.max_tokens || self.prompt_len + self.ids.len() >= self.ctx {
            return Ok(None);
        }
        let next = self.sample(logits, stop_ids)?;
        self.ids.push(next);
        if stop_ids.contains(&next) {
            self.finish = FinishReason::Stop;
            self.ended_by_stop_id = true;
            return Ok(None);
        }
        let grammar_done = self
            .constraint
            .as_ref()
            .is_some_and(Constraint::is_finished);
        let full = detok.decode(&self.ids)?;
        let (piece, hit_stop) = self.stream.push(&full);
        if (!piece.is_empty() && on_text(&piece).is_break()) || hit_stop || grammar_done {
            self.finish = FinishReason::Stop;
            return Ok(None);
        }
        if self.ids.len() >= self.max_tokens {
            return Ok(None);
        }
        Ok(Some(next))
    }

    /// The next token: sampled from `logits`, masked by the grammar first
    /// when there is one (which then advances past it).
    fn sample(&mut self, logits: &[f32], stop_ids: &[u32]) -> Result<u32> {
        let Some(c) = &mut self.constraint else {
            return self.sampler.sample(logits);
        };
        let mut masked = logits.to_vec();
        c.mask(&mut masked, stop_ids)?;
        let next = self.sampler.sample(&masked)?;
        if !stop_ids.contains(&next) {
            c.accept(next)?;
        }
        Ok(next)
    }

    /// The completion: emits the text held back for a possible stop string.
    fn finish(
        mut self,
        detok: &dyn Detokenizer,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Generation> {
        let text_ids = if self.ended_by_stop_id {
            &self.ids[..self.ids.len() - 1]
        } else {
            &self.ids[..]
        };
        let full = detok.decode(text_ids)?;
        let rest = self.stream.finish(&full);
        if !rest.is_empty() {
            let _ = on_text(&rest);
        }
        Ok(Generation {
            text: self.stream.text,
            completion_tokens: self.ids.len(),
            token_ids: self.ids,
            finish_reason: self.finish,
            prompt_tokens: self.prompt_len,
        })
    }
}

/// Turns the growing decoded text into safe-to-show increments.
struct TextStream {
    stops: Vec<String>,
    /// Text emitted so far (a prefix of every later decode).
    text: String,
    stopped: bool,
}

impl TextStream {
    fn new(stops: Vec<String>) -> Self {
        Self {
            stops,
            text: String::new(),
            stopped: false,
        }
    }

    /// Given the decode of all completion ids, returns the new text to emit
    /// and whether a stop string was found.
    fn push(&mut self, full: &str) -> (String, bool) {
        let Some(new) = full.get(self.text.len()..) else {
            return (String::new(), false);
        };
        // Never stream half a UTF-8 character (decoded as U+FFFD).
        let new = new.trim_end_matches('\u{FFFD}');
        if let Some(at) = self.first_stop(new) {
            let piece = new[..at].to_string();
            self.text.push_str(&piece);
            self.stopped = true;
            return (piece, true);
        }
        let keep = new.len() - self.held_suffix(new);
        let piece = new[..keep].to_string();
        self.text.push_str(&piece);
        (piece, false)
    }

    /// The remaining text at the end of generation (held text included,
    /// unless a stop string ended it).
    fn finish(&mut self, full: &str) -> String {
        if self.stopped {
            return String::new();
        }
        let rest = match full.get(self.text.len()..) {
            Some(r) => r.to_string(),
            None => String::new(),
        };
        let rest = match self.first_stop(&rest) {
            Some(at) => rest[..at].to_string(),
            None => rest,
        };
        self.text.push_str(&rest);
        rest
    }

    fn first_stop(&self, s: &str) -> Option<usize> {
        self.stops
            .iter()
            .filter(|st| !st.is_empty())
            .filter_map(|st| s.find(st.as_str()))
            .min()
    }

    /// Length of the longest suffix of `s` that is a proper prefix of a stop string.
    fn held_suffix(&self, s: &str) -> usize {
        let mut best = 0;
        for st in &self.stops {
            for (i, _) in st.char_indices().skip(1) {
                let prefix = &st[..i];
                if i > best && s.ends_with(prefix) {
                    best = i;
                }
            }
        }
        best
    }
}

mod sampling;
pub use sampling::{argmax, Sampler};

impl Sampler {
    pub fn new(p: &GenerationParams) -> Self {
        Sampler::with(p.temperature, p.top_p, p.top_k, p.seed)
    }
}

mod batch;
mod prefix;
pub use batch::{
    BatchRow, BatchStats, RowEngine, RowSink, RunningBatch, IDLE_STEP_PROMPT_ROWS, STEP_PROMPT_ROWS,
};

#[cfg(test)]
mod tests;
