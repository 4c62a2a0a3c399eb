//! Chat completions: the engine seam ([`ChatBackend`]), admission control
//! ([`ChatService`]), request checking ([`plan`]), the loop over `n` choices
//! ([`run_choices`]), and the real engine over hone-model ([`LocalChat`])
//! with its adapter cache.
//!
//! Why the seam is one blocking `generate` call: inference is CPU work that
//! must never run on the async executor, and a fake backend in tests then
//! needs no model at all. The handler in `routes/chat.rs` runs it on the
//! blocking pool and turns the text callback into SSE chunks.
//!
//! Why one base and many adapters: a LoRA adapter is a few MB next to a base
//! of hundreds. [`LocalChat`] keeps each base loaded once (packed weights, the serving
//! path measured faithful to f32) and per request clones the model *handle*
//! (its weights are reference-counted, so nothing is copied), attaches the
//! requested adapter's matrices from an LRU cache, and generates. Requests on
//! different adapters therefore run side by side on one base.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hone_model::generate::{generate, FinishReason as GenFinish, Generation, GenerationParams};
use hone_model::registry::{Registry, ResolvedModel};
use hone_model::{ChatEngine, Llama, LoraAdapter, ModelError, WeightPath, SERVING_WEIGHTS};
use hone_text::ChatMessage;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::api::{ChatCompletionRequest, FinishReason, ResponseFormat, Usage};
use crate::error::ApiError;

/// Most choices one request may ask for (`n`): each is a full generation.
pub const MAX_CHOICES: u32 = 8;
/// OpenAI's limit on `stop` strings.
pub const MAX_STOP: usize = 4;
/// Sampling defaults when the request gives none: SmolLM2-Instruct's model
/// card values, the same as `hone chat` (OpenAI's 1.0 makes small models
/// ramble). Documented in docs/api.md.
pub const DEFAULT_TEMPERATURE: f32 = 0.2;
pub const DEFAULT_TOP_P: f32 = 0.9;
/// Adapters kept in memory by default (`--max-adapters`).
pub const DEFAULT_MAX_ADAPTERS: usize = 8;
/// Seconds a 429 tells the client to wait.
pub const RETRY_AFTER_SECS: u64 = 1;

/// Concurrent generations admitted by default: twice the cores (at least
/// 4). More only time-slices the same cores and grows every latency.
pub fn default_max_concurrent_chats() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (2 * cores).max(4)
}

// ------------------------------------------------------------------ seam --

/// What a request generates with: the model id the client named, the base
/// model, and the adapter directory of an `ft:` or checkpoint model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatTarget {
    pub model: String,
    pub base: String,
    pub adapter: Option<PathBuf>,
}

/// Why a generation failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ChatError {
    /// The messages cannot be rendered by the model's chat template.
    #[error("the messages cannot be rendered by the chat template: {0}")]
    InvalidPrompt(String),
    /// The prompt does not leave room for a single generated token.
    #[error("the prompt needs {needed} positions but the model's context length is {max}; shorten the messages")]
    ContextOverflow { needed: usize, max: usize },
    /// The base model or the adapter cannot be loaded. Permanent until an
    /// operator fixes the files, so the client must not retry.
    #[error("model '{model}' cannot be loaded: {reason}")]
    ModelUnavailable { model: String, reason: String },
    /// Anything else that went wrong while generating.
    #[error("generation failed: {0}")]
    Generation(String),
}

impl From<ChatError> for ApiError {
    fn from(e: ChatError) -> Self {
        match &e {
            ChatError::InvalidPrompt(_) => ApiError::invalid("messages", e.to_string()),
            ChatError::ContextOverflow { .. } => ApiError::InvalidRequest {
                message: e.to_string(),
                param: Some("messages".into()),
                code: Some("context_length_exceeded".into()),
            },
            ChatError::ModelUnavailable { .. } => ApiError::InvalidState {
                message: e.to_string(),
                code: "model_unavailable".into(),
            },
            ChatError::Generation(_) => ApiError::internal(e.to_string()),
        }
    }
}

/// Generates one assistant reply. Blocking (called on the blocking pool).
/// `on_text` receives each safe-to-show piece of text as it is decoded;
/// `Break` stops generation (the client went away).
pub trait ChatBackend: Send + Sync + 'static {
    fn generate(
        &self,
        target: &ChatTarget,
        messages: &[ChatMessage],
        params: &GenerationParams,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Generation, ChatError>;
}

/// A backend plus admission control: at most `max_concurrent` generations
/// at once; over that, requests get a 429 with `Retry-After` at once rather
/// than waiting in an unbounded queue.
#[derive(Clone)]
pub struct ChatService {
    pub backend: Arc<dyn ChatBackend>,
    admission: Arc<Semaphore>,
    max_concurrent: usize,
}

impl ChatService {
    /// `max_concurrent` is clamped to at least 1.
    pub fn new(backend: Arc<dyn ChatBackend>, max_concurrent: usize) -> Self {
        let max_concurrent = max_concurrent.max(1);
        ChatService {
            backend,
            admission: Arc::new(Semaphore::new(max_concurrent)),
            max_concurrent,
        }
    }

    /// A slot for one request, or a 429.
    pub fn try_admit(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.admission
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::RateLimited {
                retry_after_secs: RETRY_AFTER_SECS,
            })
    }

    pub fn max_concurrent(&self) -> usize {
        self.max_concurrent
    }

    /// Slots free right now.
    pub fn available(&self) -> usize {
        self.admission.available_permits()
    }
}

// ------------------------------------------------------------ the request --

/// A checked request: what to generate, independent of the wire format.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatPlan {
    pub messages: Vec<ChatMessage>,
    /// Parameters of choice 0; choice `i` uses `seed + i`.
    pub params: GenerationParams,
    pub n: u32,
    pub stream: bool,
    pub include_usage: bool,
}

/// Checks a request and turns it into a [`ChatPlan`]. Fields that would
/// change the meaning of the answer and that we do not implement (tools,
/// JSON modes, log-probabilities) are refused with a 400 naming the field,
/// rather than silently ignored.
pub fn plan(req: &ChatCompletionRequest) -> Result<ChatPlan, ApiError> {
    refuse_unsupported(req)?;
    if req.model.trim().is_empty() {
        return Err(ApiError::invalid("model", "`model` must not be empty."));
    }
    let messages = messages(req)?;
    let n = req.n.unwrap_or(1);
    if n == 0 || n > MAX_CHOICES {
        return Err(ApiError::invalid(
            "n",
            format!("`n` must be between 1 and {MAX_CHOICES}, got {n}."),
        ));
    }
    let params = sampling(req)?;
    Ok(ChatPlan {
        messages,
        params,
        n,
        stream: req.is_stream(),
        include_usage: req.include_usage(),
    })
}

fn refuse_unsupported(req: &ChatCompletionRequest) -> Result<(), ApiError> {
    if req.tools.as_ref().is_some_and(|t| !t.is_empty()) {
        return Err(ApiError::invalid(
            "tools",
            "`tools` (function calling) is not supported by this server yet.",
        ));
    }
    if let Some(tc) = &req.tool_choice {
        let harmless = tc.is_null() || tc == "none" || tc == "auto";
        if !harmless {
            return Err(ApiError::invalid(
                "tool_choice",
                "`tool_choice` is not supported by this server yet (no tools can be called).",
            ));
        }
    }
    match &req.response_format {
        Some(ResponseFormat::JsonSchema { .. }) => {
            return Err(ApiError::invalid(
                "response_format",
                "`response_format` of type `json_schema` (structured outputs) is not supported by this server yet.",
            ))
        }
        Some(ResponseFormat::JsonObject) => {
            return Err(ApiError::invalid(
                "response_format",
                "`response_format` of type `json_object` (JSON mode) is not supported by this server yet.",
            ))
        }
        Some(ResponseFormat::Text) | None => {}
    }
    if req.logprobs == Some(true) {
        return Err(ApiError::invalid(
            "logprobs",
            "`logprobs` is not supported by this server yet.",
        ));
    }
    if req.top_logprobs.is_some_and(|n| n > 0) {
        return Err(ApiError::invalid(
            "top_logprobs",
            "`top_logprobs` is not supported by this server yet.",
        ));
    }
    Ok(())
}

fn messages(req: &ChatCompletionRequest) -> Result<Vec<ChatMessage>, ApiError> {
    if req.messages.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "`messages` must contain at least one message.",
        ));
    }
    req.messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            m.to_chat_message().map_err(|e| ApiError::InvalidRequest {
                message: format!("messages[{i}]: {e}"),
                param: Some(format!("messages[{i}]")),
                code: None,
            })
        })
        .collect()
}

fn sampling(req: &ChatCompletionRequest) -> Result<GenerationParams, ApiError> {
    let temperature = req.temperature.unwrap_or(DEFAULT_TEMPERATURE);
    if !(temperature.is_finite() && (0.0..=2.0).contains(&temperature)) {
        return Err(ApiError::invalid(
            "temperature",
            format!("`temperature` must be between 0 and 2, got {temperature}."),
        ));
    }
    let top_p = req.top_p.unwrap_or(DEFAULT_TOP_P);
    if !(top_p.is_finite() && (0.0..=1.0).contains(&top_p)) {
        return Err(ApiError::invalid(
            "top_p",
            format!("`top_p` must be between 0 and 1, got {top_p}."),
        ));
    }
    let max_tokens = match req.max_new_tokens() {
        Some(0) => {
            let param = if req.max_completion_tokens.is_some() {
                "max_completion_tokens"
            } else {
                "max_tokens"
            };
            return Err(ApiError::invalid(
                param,
                format!("`{param}` must be at least 1."),
            ));
        }
        Some(m) => m as usize,
        // Up to the context length, which generation enforces.
        None => usize::MAX,
    };
    let stop = req.stop.as_ref().map(|s| s.to_vec()).unwrap_or_default();
    if stop.len() > MAX_STOP {
        return Err(ApiError::invalid(
            "stop",
            format!(
                "`stop` takes at most {MAX_STOP} strings, got {}.",
                stop.len()
            ),
        ));
    }
    Ok(GenerationParams {
        max_tokens,
        temperature,
        // top_p 0 keeps only the most likely token: greedy.
        top_p: if top_p == 0.0 { 1.0 } else { top_p },
        top_k: if top_p == 0.0 { 1 } else { 0 },
        // Without a seed every request draws a fresh one.
        seed: req.seed.map_or_else(rand::random::<u64>, |s| s as u64),
        stop,
    })
}

// ------------------------------------------------------------- generation --

/// One event of a run, in order: the text of choice `index` as it is
/// decoded, then its end.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatEvent {
    Text { index: u32, text: String },
    Finish { index: u32, reason: FinishReason },
}

/// One finished choice.
#[derive(Debug, Clone, PartialEq)]
pub struct ChoiceOutput {
    pub text: String,
    pub finish_reason: FinishReason,
}

/// All choices of a request and their token counts (the prompt is
/// counted once, as OpenAI does for `n > 1`).
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRun {
    pub choices: Vec<ChoiceOutput>,
    pub usage: Usage,
}

/// Set when the client is gone: generation stops at the next token.
#[derive(Debug, Clone, Default)]
pub struct CancelFlag(Arc<AtomicBool>);

impl CancelFlag {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
    /// A guard that cancels when dropped: held by the handler's future or
    /// the response stream, so a disconnect (which drops them) cancels.
    pub fn guard(&self) -> CancelOnDrop {
        CancelOnDrop(self.clone())
    }
}

/// Cancels its flag when dropped.
#[derive(Debug)]
pub struct CancelOnDrop(CancelFlag);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// Generates the `n` choices of `plan` one after the other (choice `i` with
/// seed `seed + i`), reporting events through `emit`. Blocking. Stops early
/// when `cancel` is set or `emit` breaks.
pub fn run_choices(
    backend: &dyn ChatBackend,
    target: &ChatTarget,
    plan: &ChatPlan,
    cancel: &CancelFlag,
    emit: &mut dyn FnMut(ChatEvent) -> ControlFlow<()>,
) -> Result<ChatRun, ChatError> {
    let mut choices = Vec::with_capacity(plan.n as usize);
    let mut usage = Usage::default();
    for index in 0..plan.n {
        if cancel.is_cancelled() {
            break;
        }
        let mut params = plan.params.clone();
        params.seed = params.seed.wrapping_add(index as u64);
        let mut stopped = false;
        let mut on_text = |text: &str| {
            if cancel.is_cancelled() {
                stopped = true;
                return ControlFlow::Break(());
            }
            let flow = emit(ChatEvent::Text {
                index,
                text: text.to_string(),
            });
            stopped |= flow.is_break();
            flow
        };
        let g = backend.generate(target, &plan.messages, &params, &mut on_text)?;
        let finish_reason = match g.finish_reason {
            GenFinish::Stop => FinishReason::Stop,
            GenFinish::Length => FinishReason::Length,
        };
        if index == 0 {
            usage.prompt_tokens = count(g.prompt_tokens);
        }
        usage.completion_tokens = usage
            .completion_tokens
            .saturating_add(count(g.completion_tokens));
        choices.push(ChoiceOutput {
            text: g.text,
            finish_reason,
        });
        if stopped
            || emit(ChatEvent::Finish {
                index,
                reason: finish_reason,
            })
            .is_break()
        {
            break;
        }
    }
    usage.total_tokens = usage.prompt_tokens.saturating_add(usage.completion_tokens);
    Ok(ChatRun { choices, usage })
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

// ------------------------------------------------------------- LocalChat --

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

/// The LoRA matrices of one adapter, by HF module path.
type AdapterSet = HashMap<String, LoraAdapter>;

/// The real backend: base models loaded once (lazily, from the registry,
/// or given at start), adapters from an LRU cache.
pub struct LocalChat {
    registry: Option<Registry>,
    options: LocalChatOptions,
    bases: Mutex<HashMap<String, Arc<ChatEngine>>>,
    adapters: Mutex<AdapterLru>,
    adapter_loads: AtomicU64,
}

impl LocalChat {
    /// Loads base models on first use from `registry`'s installed models
    /// (never fetching at request time; fetch or [`LocalChat::preload`] at
    /// startup).
    pub fn new(registry: Registry, options: LocalChatOptions) -> Self {
        let mut chat = Self::without_registry(options);
        chat.registry = Some(registry);
        chat
    }

    /// Serves only bases given with [`LocalChat::with_base`].
    pub fn without_registry(options: LocalChatOptions) -> Self {
        let cap = options.max_adapters.max(1);
        LocalChat {
            registry: None,
            options,
            bases: Mutex::new(HashMap::new()),
            adapters: Mutex::new(AdapterLru::new(cap)),
            adapter_loads: AtomicU64::new(0),
        }
    }

    /// Adds an already loaded base under `id`.
    pub fn with_base(self, id: impl Into<String>, engine: ChatEngine) -> Self {
        lock(&self.bases).insert(id.into(), Arc::new(engine));
        self
    }

    /// Loads base `id` now (e.g. at startup, so the first request is fast
    /// and a missing model is reported before serving).
    pub fn preload(&self, id: &str) -> Result<(), ChatError> {
        self.base(id).map(|_| ())
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

    /// The loaded base `id`, loading it on first use. The lock is held
    /// while loading, so two first requests do not load it twice.
    fn base(&self, id: &str) -> Result<Arc<ChatEngine>, ChatError> {
        let mut bases = lock(&self.bases);
        if let Some(e) = bases.get(id) {
            return Ok(e.clone());
        }
        let unavailable = |reason: String| ChatError::ModelUnavailable {
            model: id.to_string(),
            reason,
        };
        let registry = self
            .registry
            .as_ref()
            .ok_or_else(|| unavailable("no such base model is loaded".into()))?;
        let installed = registry
            .installed()
            .map_err(|e| unavailable(e.to_string()))?
            .into_iter()
            .find(|m| m.id == id)
            .ok_or_else(|| {
                unavailable(format!(
                    "it is not installed in {} (run `hone model fetch`)",
                    registry.models_dir().display()
                ))
            })?;
        let resolved = ResolvedModel {
            id: installed.id,
            source: installed.source,
        };
        tracing::info!(model = id, path = %resolved.source.path().display(), "loading base model");
        let engine = ChatEngine::load(&resolved, self.options.weights)
            .map_err(|e| unavailable(e.to_string()))?;
        let engine = Arc::new(engine);
        bases.insert(id.to_string(), engine.clone());
        Ok(engine)
    }

    /// The adapter at `dir` for base `base`, from the cache or from disk.
    fn adapter(
        &self,
        target: &ChatTarget,
        engine: &ChatEngine,
        dir: &Path,
    ) -> Result<Arc<AdapterSet>, ChatError> {
        let key = (target.base.clone(), dir.to_path_buf());
        if let Some(set) = lock(&self.adapters).get(&key) {
            return Ok(set);
        }
        // Read outside the lock: other requests keep using cached adapters.
        let set = Arc::new(
            load_adapter(engine, dir).map_err(|e| ChatError::ModelUnavailable {
                model: target.model.clone(),
                reason: format!("adapter {}: {e}", dir.display()),
            })?,
        );
        self.adapter_loads.fetch_add(1, Ordering::SeqCst);
        lock(&self.adapters).put(key, set.clone());
        Ok(set)
    }
}

impl ChatBackend for LocalChat {
    fn generate(
        &self,
        target: &ChatTarget,
        messages: &[ChatMessage],
        params: &GenerationParams,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Generation, ChatError> {
        let engine = self.base(&target.base)?;
        let prompt = engine
            .encode_prompt(messages, None)
            .map_err(|e| ChatError::InvalidPrompt(e.to_string()))?;
        let stop_ids = engine.tokenizer.tokenizer.stop_token_ids().to_vec();
        let result = match &target.adapter {
            None => generate(&engine.model, &prompt, params, &stop_ids, &*engine, on_text),
            Some(dir) => {
                let set = self.adapter(target, &engine, dir)?;
                let model = with_adapters(&engine.model, &set).map_err(gen_err)?;
                generate(&model, &prompt, params, &stop_ids, &*engine, on_text)
            }
        };
        result.map_err(gen_err)
    }
}

fn gen_err(e: ModelError) -> ChatError {
    match e {
        ModelError::ContextOverflow { needed, max } => ChatError::ContextOverflow { needed, max },
        ModelError::Text(m) => ChatError::InvalidPrompt(m),
        other => ChatError::Generation(other.to_string()),
    }
}

/// Reads a PEFT adapter for `engine`'s base and keeps only its matrices.
/// It is loaded onto a clone of the model handle (the base weights are
/// shared, not copied), which checks every shape against the base.
fn load_adapter(engine: &ChatEngine, dir: &Path) -> Result<AdapterSet, ModelError> {
    let mut model = engine.model.clone();
    let cfg = hone_model::load_peft_adapter(&mut model, dir)?;
    if let Some(b) = cfg.base_model_name_or_path.as_deref() {
        if !b.is_empty() && b != engine.id {
            tracing::debug!(adapter = %dir.display(), trained_on = b, base = %engine.id,
                "adapter names another base model id");
        }
    }
    Ok(model
        .linears_mut()
        .into_iter()
        .filter_map(|(path, lin)| lin.adapter().cloned().map(|a| (path, a)))
        .collect())
}

/// A handle on `base` with `set` attached; `base` itself stays bare.
fn with_adapters(base: &Llama, set: &AdapterSet) -> Result<Llama, ModelError> {
    let mut model = base.clone();
    for (path, lin) in model.linears_mut() {
        lin.set_adapter(set.get(&path).cloned())?;
    }
    Ok(model)
}

/// A small LRU: few entries, so a vector (most recent last) is plenty.
struct AdapterLru {
    cap: usize,
    entries: Vec<((String, PathBuf), Arc<AdapterSet>)>,
}

impl AdapterLru {
    fn new(cap: usize) -> Self {
        AdapterLru {
            cap,
            entries: Vec::new(),
        }
    }

    fn get(&mut self, key: &(String, PathBuf)) -> Option<Arc<AdapterSet>> {
        let i = self.entries.iter().position(|(k, _)| k == key)?;
        let e = self.entries.remove(i);
        let v = e.1.clone();
        self.entries.push(e);
        Some(v)
    }

    fn put(&mut self, key: (String, PathBuf), v: Arc<AdapterSet>) {
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
    use serde_json::json;

    fn req(v: serde_json::Value) -> ChatCompletionRequest {
        serde_json::from_value(v).unwrap()
    }

    fn base() -> serde_json::Value {
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    }

    fn with(extra: serde_json::Value) -> ChatCompletionRequest {
        let mut v = base();
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        req(v)
    }

    #[test]
    fn plan_reads_sampling_fields() {
        let p = plan(&with(json!({
            "temperature": 0.7, "top_p": 0.5, "max_tokens": 9, "stop": ["a", "b"],
            "seed": 5, "n": 3, "stream": true, "stream_options": {"include_usage": true}
        })))
        .unwrap();
        assert_eq!(p.params.temperature, 0.7);
        assert_eq!(p.params.top_p, 0.5);
        assert_eq!(p.params.max_tokens, 9);
        assert_eq!(p.params.stop, vec!["a", "b"]);
        assert_eq!(p.params.seed, 5);
        assert_eq!(p.n, 3);
        assert!(p.stream && p.include_usage);
        let d = plan(&with(json!({}))).unwrap();
        assert_eq!(d.params.temperature, DEFAULT_TEMPERATURE);
        assert_eq!(d.n, 1);
        assert!(!d.stream);
    }

    #[test]
    fn plan_refuses_what_it_cannot_honour_by_param() {
        let cases = [
            (json!({"tools": [{"type": "function"}]}), "tools"),
            (json!({"tool_choice": "required"}), "tool_choice"),
            (
                json!({"response_format": {"type": "json_schema", "json_schema": {}}}),
                "response_format",
            ),
            (
                json!({"response_format": {"type": "json_object"}}),
                "response_format",
            ),
            (json!({"logprobs": true}), "logprobs"),
            (json!({"top_logprobs": 2}), "top_logprobs"),
            (json!({"n": 0}), "n"),
            (json!({"n": 99}), "n"),
            (json!({"temperature": 3.0}), "temperature"),
            (json!({"top_p": 1.5}), "top_p"),
            (json!({"max_tokens": 0}), "max_tokens"),
            (json!({"max_completion_tokens": 0}), "max_completion_tokens"),
            (json!({"stop": ["a", "b", "c", "d", "e"]}), "stop"),
            (json!({"messages": []}), "messages"),
            (
                json!({"messages": [{"role": "wizard", "content": "x"}]}),
                "messages[0]",
            ),
        ];
        for (extra, param) in cases {
            let e = plan(&with(extra.clone())).unwrap_err();
            assert_eq!(e.param().as_deref(), Some(param), "{extra}: {e}");
            assert_eq!(e.spec().status.as_u16(), 400, "{extra}");
        }
        // Empty or harmless values of the same fields are accepted.
        for ok in [
            json!({"tools": [], "tool_choice": "none"}),
            json!({"response_format": {"type": "text"}}),
            json!({"logprobs": false, "top_logprobs": 0}),
            json!({"frequency_penalty": 0.2, "user": "u", "store": false}),
        ] {
            plan(&with(ok.clone())).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    #[test]
    fn top_p_zero_is_greedy() {
        let p = plan(&with(json!({"top_p": 0.0}))).unwrap();
        assert_eq!(p.params.top_k, 1);
    }

    /// Echoes the seed and counts calls; says "stop" after `len` chars.
    struct Echo;

    impl ChatBackend for Echo {
        fn generate(
            &self,
            _: &ChatTarget,
            messages: &[ChatMessage],
            params: &GenerationParams,
            on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
        ) -> Result<Generation, ChatError> {
            let text = format!("{}#{}", messages[0].content, params.seed);
            let mut out = String::new();
            for c in text.chars() {
                if on_text(&c.to_string()).is_break() {
                    break;
                }
                out.push(c);
            }
            Ok(Generation {
                completion_tokens: out.len(),
                text: out,
                token_ids: vec![],
                finish_reason: GenFinish::Stop,
                prompt_tokens: 3,
            })
        }
    }

    fn target() -> ChatTarget {
        ChatTarget {
            model: "m".into(),
            base: "m".into(),
            adapter: None,
        }
    }

    #[test]
    fn run_choices_seeds_each_choice_and_counts_the_prompt_once() {
        let mut p = plan(&with(json!({"n": 2, "seed": 10}))).unwrap();
        p.messages[0].content = "ab".into();
        let mut events = Vec::new();
        let run = run_choices(&Echo, &target(), &p, &CancelFlag::default(), &mut |e| {
            events.push(e);
            ControlFlow::Continue(())
        })
        .unwrap();
        let texts: Vec<_> = run.choices.iter().map(|c| c.text.as_str()).collect();
        assert_eq!(texts, vec!["ab#10", "ab#11"]);
        assert_eq!(run.usage.prompt_tokens, 3);
        assert_eq!(run.usage.completion_tokens, 10);
        assert_eq!(run.usage.total_tokens, 13);
        assert_eq!(
            events.last(),
            Some(&ChatEvent::Finish {
                index: 1,
                reason: FinishReason::Stop
            })
        );
    }

    #[test]
    fn a_cancelled_run_stops_generating() {
        let p = plan(&with(json!({"n": 3}))).unwrap();
        let cancel = CancelFlag::default();
        let mut pieces = 0;
        let run = run_choices(&Echo, &target(), &p, &cancel, &mut |_| {
            pieces += 1;
            if pieces == 2 {
                cancel.cancel();
            }
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(run.choices.len(), 1);
        assert_eq!(run.choices[0].text, "hi");
        drop(cancel.guard());
        assert!(cancel.is_cancelled());
    }

    #[test]
    fn lru_evicts_the_least_recently_used() {
        let mut lru = AdapterLru::new(2);
        let k = |s: &str| (String::from("b"), PathBuf::from(s));
        let v = Arc::new(AdapterSet::new());
        lru.put(k("a"), v.clone());
        lru.put(k("b"), v.clone());
        assert!(lru.get(&k("a")).is_some());
        lru.put(k("c"), v);
        assert!(lru.get(&k("b")).is_none());
        assert!(lru.get(&k("a")).is_some() && lru.get(&k("c")).is_some());
    }

    #[tokio::test]
    async fn admission_refuses_over_capacity_with_429() {
        let s = ChatService::new(Arc::new(Echo), 1);
        let p = s.try_admit().unwrap();
        let e = s.try_admit().unwrap_err();
        assert_eq!(e.spec().status.as_u16(), 429);
        assert_eq!(e.code().as_deref(), Some("rate_limit_exceeded"));
        drop(p);
        assert!(s.try_admit().is_ok());
    }
}
