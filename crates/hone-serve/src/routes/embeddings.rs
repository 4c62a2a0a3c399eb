//! `POST /v1/embeddings`: check the request, admit it (or 429), tokenize and
//! check every input's length, then embed on the blocking pool, batched
//! ([`hone_model::embed::BATCH_SIZE`] inputs per forward pass).
//!
//! An input longer than the model's window is refused (400
//! `context_length_exceeded`, naming the input) rather than silently cut:
//! its vector would not cover the whole text.

use axum::extract::State;
use axum::Json;
use hone_model::embed::Overflow;

use crate::api::{
    Embedding, EmbeddingInput, EmbeddingList, EmbeddingRequest, EmbeddingTag, EmbeddingUsage,
    EmbeddingVector, EncodingFormat, ErrorCode, ListTag,
};
use crate::embeddings::{EmbeddingService, MAX_INPUTS};
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::state::AppState;

/// The inputs of a request, checked: texts or token arrays.
enum Inputs {
    Texts(Vec<String>),
    Tokens(Vec<Vec<u32>>),
}

#[utoipa::path(
    post,
    path = "/v1/embeddings",
    operation_id = "createEmbedding",
    tag = "embeddings",
    summary = "Embed texts or token arrays (--embedding-model)",
    request_body(content = EmbeddingRequest, content_type = "application/json"),
    responses((status = 200, description = "One vector per input, in order", body = EmbeddingList))
)]
pub(super) async fn create(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<EmbeddingRequest>,
) -> Result<Json<EmbeddingList>, ApiError> {
    let service = served(&st, &req.model)?;
    let dim = service.model.dim();
    if let Some(d) = req.dimensions {
        if d != dim as u64 {
            return Err(ApiError::invalid(
                "dimensions",
                format!(
                    "'{}' makes vectors of {dim} dimensions and cannot shorten them; \
                     omit `dimensions` or pass {dim}.",
                    req.model
                ),
            ));
        }
    }
    let inputs = check_inputs(req.input)?;
    let format = req.encoding_format.unwrap_or_default();
    let permit = service.try_admit()?;
    let model = service.model.clone();
    let out = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let ids = match inputs {
            Inputs::Texts(texts) => {
                let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                model.tokenize(&refs)
            }
            Inputs::Tokens(tokens) => model.encode_tokens(&tokens),
        }
        .map_err(|e| ApiError::invalid("input", e.to_string()))?;
        check_lengths(&ids, model.max_tokens(), &model.id)?;
        model
            .embed_encoded(ids, Overflow::Error)
            .map_err(|e| ApiError::internal(format!("embedding failed: {e}")))
    })
    .await
    .map_err(|e| ApiError::internal(format!("embedding failed: {e}")))??;
    let tokens = u32::try_from(out.tokens).unwrap_or(u32::MAX);
    Ok(Json(EmbeddingList {
        object: ListTag,
        data: out
            .vectors
            .into_iter()
            .enumerate()
            .map(|(index, v)| Embedding {
                object: EmbeddingTag,
                index,
                embedding: encode(v, format),
            })
            .collect(),
        model: req.model,
        usage: EmbeddingUsage {
            prompt_tokens: tokens,
            total_tokens: tokens,
        },
    }))
}

/// The embedding service, if `model` is the one this server embeds with; a
/// 404 `model_not_found` that says what to use otherwise (a chat model is
/// named as such).
fn served(st: &AppState, model: &str) -> Result<EmbeddingService, ApiError> {
    let not_found = |message: String| ApiError::NotFound {
        message,
        param: Some("model".into()),
        code: ErrorCode::ModelNotFound,
    };
    let Some(service) = st.engines.embeddings.clone() else {
        return Err(not_found(format!(
            "The model '{model}' does not exist: this server has no embedding model. Start it \
             with `hone serve --embedding-model all-minilm-l6-v2` (after `hone model fetch \
             all-minilm-l6-v2`)."
        )));
    };
    if service.model.id == model {
        return Ok(service);
    }
    let what = if st.engines.catalog.base_model(model).is_some() {
        format!("'{model}' is a chat model and cannot embed")
    } else {
        format!("The model '{model}' does not exist")
    };
    Err(not_found(format!(
        "{what}; this server embeds with '{}'.",
        service.model.id
    )))
}

/// Flattens the input into texts or token arrays and refuses an empty
/// request, an empty input, or more than [`MAX_INPUTS`].
fn check_inputs(input: EmbeddingInput) -> Result<Inputs, ApiError> {
    let inputs = match input {
        EmbeddingInput::Text(t) => Inputs::Texts(vec![t]),
        EmbeddingInput::Texts(t) => Inputs::Texts(t),
        EmbeddingInput::Tokens(t) => Inputs::Tokens(vec![t]),
        EmbeddingInput::TokenLists(t) => Inputs::Tokens(t),
    };
    let (count, empty) = match &inputs {
        Inputs::Texts(t) => (t.len(), t.iter().position(String::is_empty)),
        Inputs::Tokens(t) => (t.len(), t.iter().position(Vec::is_empty)),
    };
    if count == 0 {
        return Err(ApiError::invalid(
            "input",
            "`input` must not be an empty list.",
        ));
    }
    if count > MAX_INPUTS {
        return Err(ApiError::invalid(
            "input",
            format!("`input` has {count} items; at most {MAX_INPUTS} per request."),
        ));
    }
    if let Some(i) = empty {
        return Err(ApiError::invalid(
            "input",
            format!("input[{i}] is empty; every input needs at least one character or token."),
        ));
    }
    Ok(inputs)
}

/// Refuses the first input over the model's window.
fn check_lengths(ids: &[Vec<u32>], max: usize, model: &str) -> Result<(), ApiError> {
    match ids.iter().position(|s| s.len() > max) {
        None => Ok(()),
        Some(i) => Err(ApiError::invalid_with_code(
            "input",
            ErrorCode::ContextLengthExceeded,
            format!(
                "input[{i}] is {} tokens ([CLS] and [SEP] included); '{model}' reads at most \
                 {max}. Split the text into smaller pieces.",
                ids[i].len()
            ),
        )),
    }
}

/// The vector as floats, or as base64 of its little-endian f32 bytes.
fn encode(v: Vec<f32>, format: EncodingFormat) -> EmbeddingVector {
    match format {
        EncodingFormat::Float => EmbeddingVector::Float(v),
        EncodingFormat::Base64 => {
            use base64::Engine as _;
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            EmbeddingVector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
        }
    }
}
