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

use axum::extract::State;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures_util::stream::{self, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::api::{
    AssistantMessage, AssistantTag, ChatCompletion, ChatCompletionChunk, ChatCompletionChunkTag,
    ChatCompletionRequest, ChatCompletionTag, Choice, ChunkChoice, Delta, FinishReason, Usage,
};
use crate::auth::Caller;
use crate::chat::{self, CancelFlag, CancelOnDrop, ChatEvent, ChatPlan, ChatRun, ChatTarget};
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::ids;
use crate::state::AppState;
use crate::store::unix_now;

/// Events buffered between the generating thread and the response: enough
/// to absorb a slow reader's hiccups, small enough that a stalled client
/// pauses generation instead of piling up text.
const STREAM_BUFFER: usize = 64;

pub(super) async fn completions(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let plan = chat::plan(&req)?;
    let target = resolve_target(&st, &caller, &req.model).await?;
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
    if !plan.stream {
        let run = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            chat::run_choices(&*backend, &target, &plan, &cancel, &mut |_| {
                ControlFlow::Continue(())
            })
        })
        .await
        .map_err(|e| ApiError::internal(format!("chat generation failed: {e}")))??;
        drop(guard);
        return Ok(Json(completion(&meta, run)).into_response());
    }
    let include_usage = plan.include_usage;
    let (tx, mut rx) = mpsc::channel(STREAM_BUFFER);
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        generate_into(&*backend, &target, &plan, &cancel, &tx);
    });
    // Errors before the first token (a prompt over the context, an adapter
    // that cannot load) are still proper HTTP errors, not a broken stream.
    let first = match rx.recv().await {
        Some(Msg::Failed(e)) => return Err(e),
        Some(m) => m,
        None => return Err(ApiError::internal("chat generation ended without output")),
    };
    let mut sse = SseState {
        meta,
        include_usage,
        started: Vec::new(),
        _guard: guard,
    };
    let events = stream::once(async move { first })
        .chain(ReceiverStream::new(rx))
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

/// Runs the choices, sending each event; a closed channel (the client is
/// gone) stops generation.
fn generate_into(
    backend: &dyn chat::ChatBackend,
    target: &ChatTarget,
    plan: &ChatPlan,
    cancel: &CancelFlag,
    tx: &mpsc::Sender<Msg>,
) {
    let res = chat::run_choices(backend, target, plan, cancel, &mut |ev| match tx
        .blocking_send(Msg::Event(ev))
    {
        Ok(()) => ControlFlow::Continue(()),
        Err(_) => ControlFlow::Break(()),
    });
    let last = match res {
        Ok(run) => Msg::Done(run.usage),
        Err(e) => Msg::Failed(e.into()),
    };
    let _ = tx.blocking_send(last);
}

/// The fields every chunk and the completion share.
struct Meta {
    id: String,
    created: i64,
    model: String,
}

fn completion(meta: &Meta, run: ChatRun) -> ChatCompletion {
    let choices = run
        .choices
        .into_iter()
        .enumerate()
        .map(|(i, c)| Choice {
            index: i as u32,
            message: AssistantMessage {
                role: AssistantTag,
                content: Some(c.text),
                refusal: None,
                tool_calls: None,
            },
            logprobs: None,
            finish_reason: c.finish_reason,
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

/// Turns run events into SSE events: the role delta before a choice's
/// first text, content deltas, an empty delta with the finish reason, the
/// usage chunk if asked, then `[DONE]`. Holds the cancel guard, so that
/// dropping the response stream (a disconnect) cancels generation.
struct SseState {
    meta: Meta,
    include_usage: bool,
    started: Vec<u32>,
    _guard: CancelOnDrop,
}

impl SseState {
    fn events(&mut self, m: Msg) -> Vec<Event> {
        match m {
            Msg::Event(ChatEvent::Text { index, text }) => {
                let mut out = self.start(index);
                out.push(self.chunk(index, delta(None, Some(text)), None));
                out
            }
            Msg::Event(ChatEvent::Finish { index, reason }) => {
                let mut out = self.start(index);
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

    /// The role delta, the first time choice `index` says anything.
    fn start(&mut self, index: u32) -> Vec<Event> {
        if self.started.contains(&index) {
            return Vec::new();
        }
        self.started.push(index);
        let role = delta(Some(AssistantTag), Some(String::new()));
        vec![self.chunk(index, role, None)]
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
    Delta { role, content }
}

fn json_event<T: serde::Serialize>(v: &T) -> Event {
    let text = serde_json::to_string(v).unwrap_or_else(|e| {
        let err = ApiError::internal(format!("cannot encode a chunk: {e}"));
        serde_json::to_string(&err.body()).unwrap_or_default()
    });
    Event::default().data(text)
}
