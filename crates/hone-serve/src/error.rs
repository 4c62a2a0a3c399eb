//! Typed API errors and the one table that maps them to an HTTP status, an
//! OpenAI error `type` and retry advice. Their `code`s come from
//! [`ErrorCode`], the one list of codes (shared with failed jobs).
//!
//! Why the table matters: the official SDK retries 408, 409, 429 and every
//! 5xx. A permanent problem sent with one of those makes the client retry
//! something that can never succeed, so permanent conflicts (cancelling a
//! finished job, deleting a base model) are 400 here, and any 5xx that must
//! not be retried carries `x-should-retry: false`.

use axum::extract::multipart::{MultipartError, MultipartRejection};
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::api::{ErrorBody, ErrorCode, ErrorDetail};

/// Every error a handler can answer with.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed or names something invalid.
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<String>,
        code: Option<ErrorCode>,
    },
    /// A permanent conflict with the current state (e.g. cancelling a job
    /// that already finished). Retrying can never help.
    #[error("{message}")]
    InvalidState { message: String, code: ErrorCode },
    /// Missing or wrong API key.
    #[error("{message}")]
    Unauthorized { message: String },
    /// The named object does not exist (or was deleted).
    #[error("{message}")]
    NotFound {
        message: String,
        param: Option<String>,
        code: ErrorCode,
    },
    /// The path exists, but not with this method (e.g. `GET` on
    /// `/v1/chat/completions`).
    #[error("{message}")]
    MethodNotAllowed { message: String },
    /// A body went over its limit: the configured upload limit, or (`limit`
    /// 0, when the layer that refused it does not say) a request-wide one.
    #[error("{}", too_large_message(*limit))]
    PayloadTooLarge { limit: u64 },
    /// Admission control: too much work in flight; try again later.
    #[error("the server is busy; retry in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    /// A feature this server does not offer (yet), or an engine that is not
    /// configured. Permanent for this server, so never retried.
    #[error("{message}")]
    NotImplemented { message: String },
    /// A fault on our side (storage, I/O). Transient as far as we know.
    #[error("{message}")]
    Internal { message: String },
}

/// One row of the mapping table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorSpec {
    pub status: StatusCode,
    /// OpenAI's error `type`.
    pub kind: &'static str,
    /// `Some(false)` sends `x-should-retry: false`.
    pub should_retry: Option<bool>,
}

impl ApiError {
    /// THE table: status, error type and retry advice for every variant.
    pub fn spec(&self) -> ErrorSpec {
        use ApiError::*;
        let (status, kind, should_retry) = match self {
            InvalidRequest { .. } => (StatusCode::BAD_REQUEST, "invalid_request_error", None),
            InvalidState { .. } => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some(false),
            ),
            Unauthorized { .. } => (StatusCode::UNAUTHORIZED, "invalid_request_error", None),
            NotFound { .. } => (StatusCode::NOT_FOUND, "invalid_request_error", None),
            MethodNotAllowed { .. } => (
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request_error",
                Some(false),
            ),
            PayloadTooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                Some(false),
            ),
            RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", None),
            NotImplemented { .. } => (
                StatusCode::NOT_IMPLEMENTED,
                "invalid_request_error",
                Some(false),
            ),
            Internal { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "server_error", None),
        };
        ErrorSpec {
            status,
            kind,
            should_retry,
        }
    }

    /// The machine-readable `code`, if any.
    pub fn code(&self) -> Option<ErrorCode> {
        use ApiError::*;
        match self {
            InvalidRequest { code, .. } => *code,
            InvalidState { code, .. } | NotFound { code, .. } => Some(*code),
            Unauthorized { .. } => Some(ErrorCode::InvalidApiKey),
            MethodNotAllowed { .. } => Some(ErrorCode::MethodNotAllowed),
            PayloadTooLarge { .. } => Some(ErrorCode::FileTooLarge),
            RateLimited { .. } => Some(ErrorCode::RateLimitExceeded),
            NotImplemented { .. } => Some(ErrorCode::NotImplemented),
            Internal { .. } => Some(ErrorCode::InternalError),
        }
    }

    /// The request field the error is about, if any.
    pub fn param(&self) -> Option<String> {
        match self {
            ApiError::InvalidRequest { param, .. } | ApiError::NotFound { param, .. } => {
                param.clone()
            }
            ApiError::PayloadTooLarge { limit } if *limit > 0 => Some("file".into()),
            _ => None,
        }
    }

    /// The JSON body the client sees.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                message: self.to_string(),
                kind: self.spec().kind.to_string(),
                param: self.param(),
                code: self.code().map(|c| c.as_str().to_string()),
            },
        }
    }

    /// A 400 about one request field.
    pub fn invalid(param: impl Into<Option<&'static str>>, message: impl Into<String>) -> Self {
        ApiError::InvalidRequest {
            message: message.into(),
            param: param.into().map(str::to_string),
            code: None,
        }
    }

    /// A 400 about one request field, with a machine-readable code.
    pub fn invalid_with_code(
        param: impl Into<String>,
        code: ErrorCode,
        message: impl Into<String>,
    ) -> Self {
        ApiError::InvalidRequest {
            message: message.into(),
            param: Some(param.into()),
            code: Some(code),
        }
    }

    /// A permanent conflict with the current state (400, never retried).
    pub fn conflict(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError::InvalidState {
            message: message.into(),
            code,
        }
    }

    /// A 404 for an object of some kind (`file`, `fine-tuning job`, …).
    pub fn not_found(what: &str, id: &str) -> Self {
        ApiError::NotFound {
            message: format!("No such {what}: '{id}'."),
            param: Some("id".into()),
            code: ErrorCode::NotFound,
        }
    }

    /// A 404 for a model, with OpenAI's `model_not_found` code.
    pub fn model_not_found(id: &str) -> Self {
        ApiError::NotFound {
            message: format!("The model '{id}' does not exist."),
            param: Some("model".into()),
            code: ErrorCode::ModelNotFound,
        }
    }

    /// A 500 whose detail is logged and also told to the client: opaque
    /// "internal error"s are what users hate most.
    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::Internal {
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let spec = self.spec();
        if spec.status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let mut resp = (spec.status, axum::Json(self.body())).into_response();
        let headers = resp.headers_mut();
        if let Some(retry) = spec.should_retry {
            let v = if retry { "true" } else { "false" };
            headers.insert("x-should-retry", HeaderValue::from_static(v));
        }
        if let ApiError::RateLimited { retry_after_secs } = &self {
            if let Ok(v) = HeaderValue::from_str(&retry_after_secs.to_string()) {
                headers.insert(axum::http::header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

fn too_large_message(limit: u64) -> String {
    if limit == 0 {
        "The request body is larger than this server accepts.".into()
    } else {
        format!("The upload is larger than the limit of {limit} bytes.")
    }
}

/// A body that could not be read: over a body limit (413), or cut off.
impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::PayloadTooLarge { limit: 0 };
        }
        ApiError::invalid(
            None,
            format!("The body could not be read: {}", r.body_text()),
        )
    }
}

/// Not a multipart body (e.g. no boundary in its `Content-Type`).
impl From<MultipartRejection> for ApiError {
    fn from(r: MultipartRejection) -> Self {
        ApiError::invalid(
            None,
            format!(
                "Expected a multipart/form-data body with a boundary: {}",
                r.body_text()
            ),
        )
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::invalid(None, format!("Invalid query: {}", r.body_text()))
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::invalid(None, format!("Invalid path: {}", r.body_text()))
    }
}

impl From<MultipartError> for ApiError {
    fn from(e: MultipartError) -> Self {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            // Only the request-wide backstop limit produces this; its exact
            // number is not the file limit, so the caller should map it.
            return ApiError::PayloadTooLarge { limit: 0 };
        }
        ApiError::invalid(None, format!("Invalid multipart body: {}", e.body_text()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permanent_errors_never_use_a_status_the_sdk_retries() {
        let permanent = [
            ApiError::invalid(None, "x"),
            ApiError::InvalidState {
                message: "x".into(),
                code: ErrorCode::InvalidJobState,
            },
            ApiError::Unauthorized {
                message: "x".into(),
            },
            ApiError::not_found("file", "f"),
            ApiError::PayloadTooLarge { limit: 1 },
            ApiError::NotImplemented {
                message: "x".into(),
            },
            ApiError::MethodNotAllowed {
                message: "x".into(),
            },
        ];
        for e in permanent {
            let s = e.spec();
            let retried_status =
                matches!(s.status.as_u16(), 408 | 409 | 429) || s.status.is_server_error();
            assert!(
                !retried_status || s.should_retry == Some(false),
                "{e:?} would be retried by the SDK"
            );
        }
    }

    #[tokio::test]
    async fn rate_limit_sends_retry_after() {
        let r = ApiError::RateLimited {
            retry_after_secs: 3,
        }
        .into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()["retry-after"], "3");
    }

    #[tokio::test]
    async fn invalid_state_says_do_not_retry() {
        let r = ApiError::InvalidState {
            message: "done".into(),
            code: ErrorCode::InvalidJobState,
        }
        .into_response();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(r.headers()["x-should-retry"], "false");
    }
}
