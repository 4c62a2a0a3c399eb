//! `GET /openapi.json`: the API described as OpenAPI 3.1, built with
//! utoipa's builders from one table of endpoints ([`ENDPOINTS`]).
//!
//! Why a table and not `#[utoipa::path]` on each handler: the wire types
//! mirror OpenAI's, which the official `openapi.yaml` already documents in
//! full; what clients of *this* server need from us is which endpoints
//! exist, their parameters, auth, and the error shape. A test
//! (`tests/it/openapi.rs`) checks the table against the router both ways,
//! so a route cannot be added or removed without the spec following.

use axum::Json;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, Paths, Required,
    ResponseBuilder,
};

use crate::api::ErrorCode;

/// One endpoint of the API.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint {
    pub method: &'static str,
    pub path: &'static str,
    pub operation_id: &'static str,
    pub summary: &'static str,
    pub tag: &'static str,
    /// The request body's content type, if it takes one.
    pub body: Option<&'static str>,
    /// Query parameters.
    pub query: &'static [&'static str],
    /// Reachable without an API key.
    pub public: bool,
}

const fn ep(
    method: &'static str,
    path: &'static str,
    operation_id: &'static str,
    summary: &'static str,
    tag: &'static str,
) -> Endpoint {
    Endpoint {
        method,
        path,
        operation_id,
        summary,
        tag,
        body: None,
        query: &[],
        public: false,
    }
}

const JSON: Option<&str> = Some("application/json");
const PAGE: &[&str] = &["after", "limit"];

/// Every route of the server, in the order of the docs.
pub const ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        public: true,
        ..ep(
            "get",
            "/health",
            "health",
            "Liveness and version (no key needed)",
            "ops",
        )
    },
    Endpoint {
        public: true,
        ..ep(
            "get",
            "/openapi.json",
            "openapi",
            "This document (no key needed)",
            "ops",
        )
    },
    Endpoint {
        body: Some("multipart/form-data"),
        ..ep(
            "post",
            "/v1/files",
            "createFile",
            "Upload a file (multipart: file, purpose); fine-tune files are validated at upload",
            "files",
        )
    },
    Endpoint {
        query: &["after", "limit", "order", "purpose"],
        ..ep(
            "get",
            "/v1/files",
            "listFiles",
            "List files, newest first",
            "files",
        )
    },
    ep(
        "get",
        "/v1/files/{id}",
        "retrieveFile",
        "Retrieve a file object",
        "files",
    ),
    ep(
        "delete",
        "/v1/files/{id}",
        "deleteFile",
        "Delete a file",
        "files",
    ),
    ep(
        "get",
        "/v1/files/{id}/content",
        "downloadFile",
        "Download a file's raw bytes",
        "files",
    ),
    Endpoint {
        body: JSON,
        ..ep(
            "post",
            "/v1/fine_tuning/jobs",
            "createFineTuningJob",
            "Create a fine-tuning job (supervised or dpo)",
            "fine-tuning",
        )
    },
    Endpoint {
        query: PAGE,
        ..ep(
            "get",
            "/v1/fine_tuning/jobs",
            "listFineTuningJobs",
            "List fine-tuning jobs, newest first",
            "fine-tuning",
        )
    },
    ep(
        "get",
        "/v1/fine_tuning/jobs/{id}",
        "retrieveFineTuningJob",
        "Retrieve a job",
        "fine-tuning",
    ),
    ep(
        "post",
        "/v1/fine_tuning/jobs/{id}/cancel",
        "cancelFineTuningJob",
        "Cancel a job (a running one stops within seconds)",
        "fine-tuning",
    ),
    ep(
        "post",
        "/v1/fine_tuning/jobs/{id}/pause",
        "pauseFineTuningJob",
        "Pause a job (a running one checkpoints first)",
        "fine-tuning",
    ),
    ep(
        "post",
        "/v1/fine_tuning/jobs/{id}/resume",
        "resumeFineTuningJob",
        "Resume a paused job (queued again; continues from its checkpoint)",
        "fine-tuning",
    ),
    Endpoint {
        query: PAGE,
        ..ep(
            "get",
            "/v1/fine_tuning/jobs/{id}/events",
            "listFineTuningEvents",
            "A job's events (messages and per-step metrics), newest first",
            "fine-tuning",
        )
    },
    Endpoint {
        query: PAGE,
        ..ep(
            "get",
            "/v1/fine_tuning/jobs/{id}/checkpoints",
            "listFineTuningJobCheckpoints",
            "A job's checkpoints (one per epoch), each usable as a model",
            "fine-tuning",
        )
    },
    ep(
        "get",
        "/v1/models",
        "listModels",
        "Base, fine-tuned and checkpoint models",
        "models",
    ),
    ep(
        "get",
        "/v1/models/{id}",
        "retrieveModel",
        "Retrieve a model (ft: ids keep their colons)",
        "models",
    ),
    ep(
        "delete",
        "/v1/models/{id}",
        "deleteModel",
        "Delete a fine-tuned model",
        "models",
    ),
    Endpoint {
        body: JSON,
        ..ep(
            "post",
            "/v1/chat/completions",
            "createChatCompletion",
            "Chat with a base, ft: or checkpoint model (stream: SSE)",
            "chat",
        )
    },
    Endpoint {
        query: &["after", "limit", "order", "model", "metadata"],
        ..ep(
            "get",
            "/v1/chat/completions",
            "listChatCompletions",
            "Stored completions (store: true), oldest first; filter by model and metadata[key]=value",
            "chat",
        )
    },
    ep(
        "get",
        "/v1/chat/completions/{id}",
        "getChatCompletion",
        "A stored completion, with its metadata",
        "chat",
    ),
    Endpoint {
        body: JSON,
        ..ep(
            "post",
            "/v1/chat/completions/{id}",
            "updateChatCompletion",
            "Replace a stored completion's metadata",
            "chat",
        )
    },
    ep(
        "delete",
        "/v1/chat/completions/{id}",
        "deleteChatCompletion",
        "Delete a stored completion",
        "chat",
    ),
    Endpoint {
        query: &["after", "limit", "order"],
        ..ep(
            "get",
            "/v1/chat/completions/{id}/messages",
            "getChatCompletionMessages",
            "The request messages of a stored completion",
            "chat",
        )
    },
    Endpoint {
        body: JSON,
        ..ep(
            "post",
            "/v1/embeddings",
            "createEmbedding",
            "Embed texts or token arrays (--embedding-model)",
            "embeddings",
        )
    },
];

fn http_method(m: &str) -> HttpMethod {
    match m {
        "post" => HttpMethod::Post,
        "delete" => HttpMethod::Delete,
        "put" => HttpMethod::Put,
        "patch" => HttpMethod::Patch,
        _ => HttpMethod::Get,
    }
}

fn operation(e: &Endpoint) -> utoipa::openapi::path::Operation {
    let mut op = OperationBuilder::new()
        .operation_id(Some(e.operation_id))
        .summary(Some(e.summary))
        .tag(e.tag)
        .response(
            "200",
            ResponseBuilder::new()
                .description("Success: the OpenAI object (see OpenAI's openapi.yaml)")
                .build(),
        );
    if !e.public {
        op = op
            .response(
                "default",
                ResponseBuilder::new()
                    .description(error_description())
                    .build(),
            )
            .security(SecurityRequirement::new("bearer", Vec::<String>::new()));
    }
    if e.path.contains("{id}") {
        op = op.parameter(
            ParameterBuilder::new()
                .name("id")
                .parameter_in(ParameterIn::Path)
                .required(Required::True)
                .build(),
        );
    }
    for q in e.query {
        op = op.parameter(
            ParameterBuilder::new()
                .name(*q)
                .parameter_in(ParameterIn::Query)
                .build(),
        );
    }
    if let Some(ct) = e.body {
        op = op.request_body(Some(
            RequestBodyBuilder::new()
                .content(ct, ContentBuilder::new().build())
                .required(Some(Required::True))
                .build(),
        ));
    }
    op.build()
}

/// The error response of every `/v1` operation, with every `code` the
/// server can answer (from [`ErrorCode::ALL`], so the list cannot drift).
fn error_description() -> String {
    let codes: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    format!(
        "An error: {{\"error\": {{message, type, param, code}}}}. 400 invalid or \
         a permanent conflict, 401 key, 404 unknown id (model_not_found for \
         models), 413 too large, 429 busy (Retry-After). Codes (also on failed \
         jobs' error.code): {}",
        codes.join(", ")
    )
}

/// The OpenAPI document of this server.
pub fn spec() -> OpenApi {
    let mut paths = Paths::new();
    for e in ENDPOINTS {
        paths.add_path_operation(e.path, vec![http_method(e.method)], operation(e));
    }
    let components = ComponentsBuilder::new()
        .security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        )
        .build();
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("hone")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "OpenAI-compatible fine-tuning and chat server (files, fine-tuning jobs, \
                     models, chat completions). See docs/api.md.",
                ))
                .build(),
        )
        .paths(paths)
        .components(Some(components))
        .build()
}

/// `GET /openapi.json`.
pub(crate) async fn openapi_json() -> Json<OpenApi> {
    Json(spec())
}
