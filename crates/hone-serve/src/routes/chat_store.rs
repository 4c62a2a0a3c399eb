//! Stored chat completions: keeping a completion made with `store: true`
//! (for `routes/chat.rs`), and the endpoints that read them back:
//! `GET /v1/chat/completions` (filters `model` and `metadata[key]=value`),
//! `GET|POST|DELETE /v1/chat/completions/{id}` and
//! `GET /v1/chat/completions/{id}/messages`. Lists default to the oldest
//! first, as OpenAI's do.
//!
//! A completion belongs to the caller's project, and the store reads it
//! through the caller's scope, so another project's completion is a 404.

use axum::extract::State;
use axum::{Extension, Json};

use super::page_request;
use crate::api::{
    check_metadata, ChatCompletion, ChatCompletionDeleted, ChatCompletionDeletedTag,
    ChatCompletionRequest, CompletionUpdate, FinishReason, ListQuery, ListResponse, Metadata,
    StoreMessage, StoredCompletion,
};
use crate::auth::Caller;
use crate::chat::{ChatEvent, ChatRun, ChoiceOutput};
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::state::AppState;
use crate::store::completions::{page_of, CompletionFilter, CompletionRecord};
use crate::store::{Order, StoreHandle};

/// Default and largest page of completions and of messages.
const PAGE_DEFAULT: u32 = 20;
const PAGE_MAX: u32 = 100;

/// Checks the request's `metadata` (400 on `metadata` if over the limits).
pub(super) fn check_request(req: &ChatCompletionRequest) -> Result<(), ApiError> {
    match &req.metadata {
        Some(m) => check_metadata(m).map_err(|e| ApiError::invalid("metadata", e)),
        None => Ok(()),
    }
}

/// Keeps `completion`, the answer to `req`, in the caller's project.
pub(super) async fn keep(
    store: &StoreHandle,
    project: String,
    req: &ChatCompletionRequest,
    completion: &ChatCompletion,
) -> Result<(), ApiError> {
    let rec = CompletionRecord {
        messages: req
            .messages
            .iter()
            .enumerate()
            .map(|(i, m)| StoreMessage::from_request(&completion.id, i, m))
            .collect(),
        completion: StoredCompletion {
            completion: completion.clone(),
            metadata: req.metadata.clone().unwrap_or_default(),
        },
        project,
    };
    store.run(move |s| s.insert_completion(&rec)).await?;
    Ok(())
}

/// Collects a streamed answer's text per choice, so that a stored
/// streamed completion is the same object a non-streamed one would be.
#[derive(Default)]
pub(super) struct Recorder {
    choices: Vec<(u32, Partial)>,
}

impl Recorder {
    pub(super) fn event(&mut self, e: &ChatEvent) {
        let (index, text, reason) = match e {
            ChatEvent::Text { index, text } => (*index, text.as_str(), None),
            ChatEvent::Finish { index, reason } => (*index, "", Some(*reason)),
        };
        let at = match self.choices.iter().position(|(i, _)| *i == index) {
            Some(at) => at,
            None => {
                self.choices.push((index, Partial::default()));
                self.choices.len() - 1
            }
        };
        let c = &mut self.choices[at].1;
        c.text.push_str(text);
        if reason.is_some() {
            c.finish_reason = reason;
        }
    }

    /// The run the events made, choices by index.
    pub(super) fn run(&mut self, usage: crate::api::Usage) -> ChatRun {
        self.choices.sort_by_key(|(i, _)| *i);
        let choices = std::mem::take(&mut self.choices)
            .into_iter()
            .map(|(_, c)| ChoiceOutput {
                text: c.text,
                finish_reason: c.finish_reason.unwrap_or(FinishReason::Stop),
            })
            .collect();
        ChatRun { choices, usage }
    }
}

/// One streamed choice so far.
#[derive(Default)]
struct Partial {
    text: String,
    finish_reason: Option<FinishReason>,
}

/// `GET /v1/chat/completions`.
#[utoipa::path(
    get,
    path = "/v1/chat/completions",
    operation_id = "listChatCompletions",
    tag = "chat",
    summary = "Stored completions (store: true) of this key's project, oldest first",
    params(
        ListQuery,
        ("model" = Option<String>, Query, description = "Only completions of this model"),
        ("metadata" = Option<std::collections::BTreeMap<String, String>>, Query, style = DeepObject, explode,
            description = "`metadata[key]=value`: only completions whose metadata has every pair"),
    ),
    responses((status = 200, description = "A page of stored completions", body = ListResponse<StoredCompletion>))
)]
pub(super) async fn list(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiQuery(pairs): ApiQuery<Vec<(String, String)>>,
) -> Result<Json<ListResponse<StoredCompletion>>, ApiError> {
    let (q, filter) = list_query(pairs)?;
    let page = oldest_first(&q)?;
    let scope = caller.scope();
    let p = st
        .store
        .run(move |s| s.list_completions(&scope, &filter, &page))
        .await?;
    Ok(Json(ListResponse::page(p.data, p.has_more)))
}

/// Splits the list query into paging and the filter: `model`, and
/// `metadata[key]=value` pairs (all must match).
fn list_query(pairs: Vec<(String, String)>) -> Result<(ListQuery, CompletionFilter), ApiError> {
    let mut q = ListQuery::default();
    let mut filter = CompletionFilter::default();
    for (k, v) in pairs {
        match k.as_str() {
            "after" => q.after = Some(v),
            "order" => q.order = Some(v),
            "model" => filter.model = Some(v),
            "limit" => {
                let n = v.parse().map_err(|_| {
                    ApiError::invalid("limit", format!("limit must be a number, got '{v}'"))
                })?;
                q.limit = Some(n);
            }
            _ => {
                if let Some(key) = k
                    .strip_prefix("metadata[")
                    .and_then(|r| r.strip_suffix(']'))
                {
                    filter.metadata.insert(key.to_string(), v);
                }
            }
        }
    }
    Ok((q, filter))
}

/// The page asked for, oldest first unless `order=desc`.
fn oldest_first(q: &ListQuery) -> Result<crate::store::PageRequest, ApiError> {
    let mut page = page_request(q, PAGE_DEFAULT, PAGE_MAX)?;
    if q.order.is_none() {
        page.order = Order::Asc;
    }
    Ok(page)
}

/// `GET /v1/chat/completions/{id}`.
#[utoipa::path(
    get,
    path = "/v1/chat/completions/{id}",
    operation_id = "retrieveChatCompletion",
    tag = "chat",
    summary = "Retrieve a stored completion",
    params(("id" = String, Path, description = "A stored completion id")),
    responses((status = 200, description = "The stored completion", body = StoredCompletion))
)]
pub(super) async fn retrieve(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<StoredCompletion>, ApiError> {
    let scope = caller.scope();
    let rec = st.store.run(move |s| s.get_completion(&scope, &id)).await?;
    Ok(Json(rec.completion))
}

/// `POST /v1/chat/completions/{id}`: replaces the metadata.
#[utoipa::path(
    post,
    path = "/v1/chat/completions/{id}",
    operation_id = "updateChatCompletion",
    tag = "chat",
    summary = "Replace a stored completion's metadata",
    params(("id" = String, Path, description = "A stored completion id")),
    request_body = CompletionUpdate,
    responses((status = 200, description = "The updated completion", body = StoredCompletion))
)]
pub(super) async fn update(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<CompletionUpdate>,
) -> Result<Json<StoredCompletion>, ApiError> {
    let metadata: Metadata = body.metadata.unwrap_or_default();
    check_metadata(&metadata).map_err(|e| ApiError::invalid("metadata", e))?;
    let scope = caller.scope();
    let c = st
        .store
        .run(move |s| s.update_completion_metadata(&scope, &id, &metadata))
        .await?;
    Ok(Json(c))
}

/// `DELETE /v1/chat/completions/{id}`.
#[utoipa::path(
    delete,
    path = "/v1/chat/completions/{id}",
    operation_id = "deleteChatCompletion",
    tag = "chat",
    summary = "Delete a stored completion",
    params(("id" = String, Path, description = "A stored completion id")),
    responses((status = 200, description = "Deleted", body = ChatCompletionDeleted))
)]
pub(super) async fn delete(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ChatCompletionDeleted>, ApiError> {
    let scope = caller.scope();
    let key = id.clone();
    st.store
        .run(move |s| s.delete_completion(&scope, &key))
        .await?;
    Ok(Json(ChatCompletionDeleted {
        id,
        object: ChatCompletionDeletedTag,
        deleted: true,
    }))
}

/// `GET /v1/chat/completions/{id}/messages`: the request's messages.
#[utoipa::path(
    get,
    path = "/v1/chat/completions/{id}/messages",
    operation_id = "listChatCompletionMessages",
    tag = "chat",
    summary = "The messages of a stored completion's request",
    params(("id" = String, Path, description = "A stored completion id"), ListQuery),
    responses((status = 200, description = "A page of messages", body = ListResponse<StoreMessage>))
)]
pub(super) async fn messages(
    State(st): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<ListResponse<StoreMessage>>, ApiError> {
    let page = oldest_first(&q)?;
    let scope = caller.scope();
    let rec = st.store.run(move |s| s.get_completion(&scope, &id)).await?;
    let p = page_of(&rec.messages, |m| m.id.as_str(), &page)?;
    Ok(Json(ListResponse::page(p.data, p.has_more)))
}
