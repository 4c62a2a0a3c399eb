//! `POST /v1/chat/completions`: check the request, resolve the model (a
//! base from the catalog, or an `ft:`/checkpoint model from the store with
//! its adapter), admit it (or 429), then generate on the blocking pool:
//! one JSON answer, or SSE chunks as text is decoded.
//!
//! A client that disconnects drops the response (or the handler's future),
//! which drops a [`CancelOnDrop`] guard and the channel's receiver; the
//! generating thread sees either at its next token and stops.

use std::convert::Infallible;
use std::ops::ControlFlow;
use std::time::Instant;

use axum::extract::State;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures_util::stream::{self, StreamExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio_stream::wrappers::ReceiverStream;

use hone_text::{CallEvent, ParsedToolCall, ToolCallStream};

use crate::api::{
    AssistantMessage, AssistantTag, ChatCompletion, ChatCompletionChunk, ChatCompletionChunkTag,
    ChatCompletionRequest, ChatCompletionTag, Choice, ChunkChoice, Delta, FinishReason,
    FunctionCall, FunctionDelta, FunctionTag, ToolCall, ToolCallDelta, Usage,
};
use crate::auth::Caller;
use crate::chat::tools::{read_answer, ReadAnswer};
use crate::chat::{self, CancelFlag, CancelOnDrop, ChatEvent, ChatPlan, ChatRun, ChatTarget};
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::ids;
use crate::metrics::GenerationClock;
use crate::state::AppState;
use crate::store::unix_now;

/// Events buffered between the generating thread and the response: enough
/// to absorb a slow reader's hiccups, small enough that a stalled client
/// pauses generation instead of piling up text.
const STREAM_BUFFER: usize = 64;

#[utoipa::path(
    post,
    path = "/v1/chat/completions",
    operation_id = "createChatCompletion",
    tag = "chat",
    summary = "Chat with a base, ft: or checkpoint model (stream: SSE)",
    request_body(content = ChatCompletionRequest, content_type = "application/json"),
    responses((status = 200, description = "The completion; with `stream: true`, `chat.completion.chunk` objects as server-sent events, then `data: [DONE]`", content((ChatCompletion = "application/json"), (ChatCompletionChunk = "text/event-stream"))))
)]
pub(super) async fn completions(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let metrics = st.metrics.clone();
    let mut found = None;
    let res = respond(st, caller, req, arrived, &mut found).await;
    let status = match &res {
        Ok(r) => r.status(),
        Err(e) => e.spec().status,
    };
    metrics.request(found.as_deref().unwrap_or("other"), status.as_u16());
    res
}

/// The answer to a request that arrived at `arrived`; `found` is set to
/// the model's name once it is known to exist (the metrics' label).
async fn respond(
    st: AppState,
    caller: Caller,
    req: ChatCompletionRequest,
    arrived: Instant,
    found: &mut Option<String>,
) -> Result<Response, ApiError> {
    let plan = chat::plan(&req)?;
    super::chat_store::check_request(&req)?;
    let target = resolve_target(&st, &caller, &req.model).await?;
    *found = Some(req.model.clone());
    let mut clock = GenerationClock::start(st.metrics.clone(), &req.model, arrived);
    let service = st
        .engines
        .chat
        .clone()
        .ok_or_else(|| ApiError::NotImplemented {
            message:
                "Chat completions are not available: this server was started without a chat engine."
                    .into(),
        })?;
    let permit = service.try_admit()?;
    let meta = Meta {
        id: ids::chat_completion_id(),
        created: unix_now(),
        model: req.model.clone(),
    };
    let cancel = CancelFlag::default();
    let guard = cancel.guard();
    let backend = service.backend.clone();
    let parse_calls = plan.parses_calls();
    let calls_held = plan.calls_held();
    if !plan.stream {
        let run = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let res = chat::run_choices(&*backend, &target, &plan, &cancel, &mut |ev| {
                clock.see(&ev);
                ControlFlow::Continue(())
            });
            if let Ok(run) = &res {
                clock.done(&run.usage);
            }
            res
        })
        .await
        .map_err(|e| ApiError::internal(format!("chat generation failed: {e}")))??;
        drop(guard);
        let answer = completion(&meta, run, parse_calls, calls_held);
        if req.is_stored() {
            super::chat_store::keep(&st.store, caller.project, &req, &answer).await?;
        }
        return Ok(Json(answer).into_response());
    }
    let include_usage = plan.include_usage;
    let (tx, mut rx) = mpsc::channel(STREAM_BUFFER);
    tokio::task::spawn_blocking(move || {
        generate_into(&*backend, &target, &plan, &cancel, &tx, clock, permit);
    });
    // Errors before the first token (a prompt over the context, an adapter
    // that cannot load) are still proper HTTP errors, not a broken stream.
    let first = match rx.recv().await {
        Some(Msg::Failed(e)) => return Err(e),
        Some(m) => m,
        None => return Err(ApiError::internal("chat generation ended without output")),
    };
    let mut recorder = req.is_stored().then(|| Keeping {
        store: st.store.clone(),
        project: caller.project.clone(),
        meta: meta.clone(),
        req,
        parse_calls,
        calls_held,
        seen: super::chat_store::Recorder::default(),
    });
    let mut sse = SseState {
        meta,
        include_usage,
        started: Vec::new(),
        calls: parse_calls.then(Vec::new),
        calls_held,
        _guard: guard,
    };
    let events = stream::once(async move { first })
        .chain(ReceiverStream::new(rx))
        .then(move |m| {
            let keep = recorder.as_mut().and_then(|k| k.see(&m));
            async move {
                if let Some(keep) = keep {
                    keep.await;
                }
                m
            }
        })
        .flat_map(move |m| stream::iter(sse.events(m)))
        .map(Ok::<_, Infallible>);
    Ok(Sse::new(events).into_response())
}

/// Which base and adapter serve `model`: a catalog base model, a
/// `--adapter` model, else an `ft:` or checkpoint model from the store (404 `model_not_found` if
/// neither, e.g. a deleted fine-tune, or another project's).
async fn resolve_target(
    st: &AppState,
    caller: &Caller,
    model: &str,
) -> Result<ChatTarget, ApiError> {
    if st.engines.catalog.base_model(model).is_some() {
        return Ok(ChatTarget {
            model: model.to_string(),
            base: model.to_string(),
            adapter: None,
        });
    }
    if let Some(a) = st.engines.catalog.served_adapter(model) {
        return Ok(ChatTarget {
            model: model.to_string(),
            base: a.base,
            adapter: Some(a.dir),
        });
    }
    let id = model.to_string();
    let scope = caller.scope();
    let rec = st.store.run(move |s| s.get_model(&scope, &id)).await?;
    Ok(ChatTarget {
        model: model.to_string(),
        base: rec.base,
        adapter: Some(rec.adapter_path),
    })
}

/// What the generating thread tells the stream.
enum Msg {
    Event(ChatEvent),
    Done(Usage),
    Failed(ApiError),
}

/// Runs the choices, sending each event (timed by `clock`); a closed
/// channel (the client is gone) stops generation. `permit` is the
/// request's admission slot.
fn generate_into(
    backend: &dyn chat::ChatBackend,
    target: &ChatTarget,
    plan: &ChatPlan,
    cancel: &CancelFlag,
    tx: &mpsc::Sender<Msg>,
    mut clock: GenerationClock,
    permit: OwnedSemaphorePermit,
) {
    let res = chat::run_choices(backend, target, plan, cancel, &mut |ev| {
        clock.see(&ev);
        match tx.blocking_send(Msg::Event(ev)) {
            Ok(()) => ControlFlow::Continue(()),
            Err(_) => ControlFlow::Break(()),
        }
    });
    let last = match res {
        Ok(run) => {
            clock.done(&run.usage);
            Msg::Done(run.usage)
        }
        Err(e) => Msg::Failed(e.into()),
    };
    // The slot is free once generation is: given back before the last
    // message, a client that sends its next request as soon as it reads
    // `[DONE]` never meets its own previous request's slot (a spurious 429).
    drop(permit);
    let _ = tx.blocking_send(last);
}

/// A streamed answer to keep (`store: true`): its events are collected, and
/// the completion is stored when it is done, before `[DONE]` is sent.
struct Keeping {
    store: crate::store::StoreHandle,
    project: String,
    meta: Meta,
    req: ChatCompletionRequest,
    parse_calls: bool,
    calls_held: bool,
    seen: super::chat_store::Recorder,
}

impl Keeping {
    /// Notes `m`; at the end, the future that stores the completion. A
    /// failure to store is logged: the answer has already been streamed.
    fn see(&mut self, m: &Msg) -> Option<impl std::future::Future<Output = ()>> {
        match m {
            Msg::Event(e) => {
                self.seen.event(e);
                None
            }
            Msg::Done(usage) => {
                let run = self.seen.run(*usage);
                let answer = completion(&self.meta, run, self.parse_calls, self.calls_held);
                let (store, project) = (self.store.clone(), self.project.clone());
                let req = self.req.clone();
                Some(async move {
                    if let Err(e) = super::chat_store::keep(&store, project, &req, &answer).await {
                        tracing::error!(error = %e.body().error.message, "storing a streamed completion failed");
                    }
                })
            }
            Msg::Failed(_) => None,
        }
    }
}

/// The fields every chunk and the completion share.
#[derive(Clone)]
struct Meta {
    id: String,
    created: i64,
    model: String,
}

/// The JSON answer. With `parse_calls`, each choice's text is read for
/// tool calls: calls become `tool_calls` (content null when there is no
/// text before them) and finish `tool_calls`; text with no well-formed
/// calls stays content (null if empty, as a streamed answer reassembles);
/// a held call cut by `max_tokens` is the partial call, finishing `length`
/// (`chat::tools::read_answer`).
fn completion(meta: &Meta, run: ChatRun, parse_calls: bool, calls_held: bool) -> ChatCompletion {
    let choices = run
        .choices
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let a = if parse_calls {
                read_answer(&c.text, c.finish_reason, calls_held)
            } else {
                ReadAnswer {
                    content: Some(c.text),
                    calls: Vec::new(),
                    finish: c.finish_reason,
                }
            };
            let tool_calls = (!a.calls.is_empty()).then(|| a.calls.iter().map(tool_call).collect());
            Choice {
                index: i as u32,
                message: AssistantMessage {
                    role: AssistantTag,
                    content: a.content,
                    refusal: None,
                    tool_calls,
                },
                logprobs: None,
                finish_reason: a.finish,
            }
        })
        .collect();
    ChatCompletion {
        id: meta.id.clone(),
        object: ChatCompletionTag,
        created: meta.created,
        model: meta.model.clone(),
        choices,
        usage: run.usage,
        system_fingerprint: None,
    }
}

/// `call_<24>`: the id of one tool call in an answer.
fn call_id() -> String {
    format!("call_{}", ids::base62(24))
}

fn tool_call((name, arguments): &(String, String)) -> ToolCall {
    ToolCall {
        id: call_id(),
        kind: FunctionTag,
        function: FunctionCall {
            name: name.clone(),
            arguments: arguments.clone(),
        },
    }
}

/// `tool_calls` when the answer made calls, else why generation stopped.
fn finish_with_calls(reason: FinishReason, calls: &[ParsedToolCall]) -> FinishReason {
    if calls.is_empty() {
        reason
    } else {
        FinishReason::ToolCalls
    }
}

/// Turns run events into SSE events: the role delta before a choice's
/// first text, content deltas, an empty delta with the finish reason, the
/// usage chunk if asked, then `[DONE]`. Holds the cancel guard, so that
/// dropping the response stream (a disconnect) cancels generation.
///
/// When answers are read for tool calls (`calls` is set), text goes
/// through a [`ToolCallStream`] per choice: content is sent as soon as it
/// cannot begin a call; a call is sent as `delta.tool_calls`, first a chunk
/// with its index, id, type and name (arguments empty), then chunks of
/// argument text, and the choice finishes with `tool_calls`. Grammar-held
/// calls (`calls_held`) go out as the model writes them; others when the
/// choice ends (see `hone_text`'s `tool_calls_stream.rs` for why).
struct SseState {
    meta: Meta,
    include_usage: bool,
    started: Vec<u32>,
    calls: Option<Vec<(u32, ToolCallStream)>>,
    calls_held: bool,
    _guard: CancelOnDrop,
}

impl SseState {
    fn events(&mut self, m: Msg) -> Vec<Event> {
        match m {
            Msg::Event(ChatEvent::Text { index, text }) => {
                let mut out = self.start(index);
                let events = match self.call_stream(index) {
                    Some(s) => s.push(&text),
                    None => vec![CallEvent::Content(text)],
                };
                out.extend(self.call_chunks(index, events));
                out
            }
            Msg::Event(ChatEvent::Finish { index, reason }) => {
                let mut out = self.start(index);
                let (events, calls) = match self.take_call_stream(index) {
                    Some(s) => s.finish(),
                    None => (Vec::new(), Vec::new()),
                };
                out.extend(self.call_chunks(index, events));
                let reason = finish_with_calls(reason, &calls);
                out.push(self.chunk(index, Delta::default(), Some(reason)));
                out
            }
            Msg::Done(usage) => {
                let mut out = Vec::new();
                if self.include_usage {
                    out.push(json_event(&self.envelope(Vec::new(), Some(usage))));
                }
                out.push(Event::default().data("[DONE]"));
                out
            }
            // The SDK raises an `error` object met mid-stream.
            Msg::Failed(e) => vec![json_event(&e.body())],
        }
    }

    /// The role delta, the first time choice `index` says anything. When
    /// answers may be calls it has no content (an answer of calls only
    /// then has none, as in the JSON answer).
    fn start(&mut self, index: u32) -> Vec<Event> {
        if self.started.contains(&index) {
            return Vec::new();
        }
        self.started.push(index);
        let content = self.calls.is_none().then(String::new);
        let role = delta(Some(AssistantTag), content);
        vec![self.chunk(index, role, None)]
    }

    /// Choice `index`'s call reader, when answers are read for calls.
    fn call_stream(&mut self, index: u32) -> Option<&mut ToolCallStream> {
        let held = self.calls_held;
        let streams = self.calls.as_mut()?;
        if !streams.iter().any(|(i, _)| *i == index) {
            let s = if held {
                ToolCallStream::live()
            } else {
                ToolCallStream::new()
            };
            streams.push((index, s));
        }
        streams
            .iter_mut()
            .find(|(i, _)| *i == index)
            .map(|s| &mut s.1)
    }

    fn take_call_stream(&mut self, index: u32) -> Option<ToolCallStream> {
        self.call_stream(index)?;
        let streams = self.calls.as_mut()?;
        let at = streams.iter().position(|(i, _)| *i == index)?;
        Some(streams.remove(at).1)
    }

    /// Choice `choice`'s content and call events as chunks.
    fn call_chunks(&self, choice: u32, events: Vec<CallEvent>) -> Vec<Event> {
        events
            .into_iter()
            .filter_map(|e| {
                let d = match e {
                    CallEvent::Content(t) if t.is_empty() => return None,
                    CallEvent::Content(t) => delta(None, Some(t)),
                    CallEvent::Start { index, name } => {
                        call_delta(index, Some(name), String::new())
                    }
                    CallEvent::Arguments { index, fragment } => call_delta(index, None, fragment),
                };
                Some(self.chunk(choice, d, None))
            })
            .collect()
    }

    fn chunk(&self, index: u32, delta: Delta, finish: Option<FinishReason>) -> Event {
        let choice = ChunkChoice {
            index,
            delta,
            logprobs: None,
            finish_reason: finish,
        };
        json_event(&self.envelope(vec![choice], None))
    }

    fn envelope(&self, choices: Vec<ChunkChoice>, usage: Option<Usage>) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.meta.id.clone(),
            object: ChatCompletionChunkTag,
            created: self.meta.created,
            model: self.meta.model.clone(),
            choices,
            usage,
        }
    }
}

fn delta(role: Option<AssistantTag>, content: Option<String>) -> Delta {
    Delta {
        role,
        content,
        tool_calls: None,
    }
}

/// A `delta.tool_calls` entry for call `index` as the SDK reassembles it:
/// the first (with the `name`) has the id and type and empty arguments,
/// later ones only argument text.
fn call_delta(index: usize, name: Option<String>, arguments: String) -> Delta {
    let first = name.is_some();
    let d = ToolCallDelta {
        index: index as u32,
        id: first.then(call_id),
        kind: first.then_some(FunctionTag),
        function: FunctionDelta {
            name,
            arguments: Some(arguments),
        },
    };
    Delta {
        tool_calls: Some(vec![d]),
        ..Delta::default()
    }
}

fn json_event<T: serde::Serialize>(v: &T) -> Event {
    let text = serde_json::to_string(v).unwrap_or_else(|e| {
        let err = ApiError::internal(format!("cannot encode a chunk: {e}"));
        serde_json::to_string(&err.body()).unwrap_or_default()
    });
    Event::default().data(text)
}
