//! The OpenAPI 3.1 document of `GET /openapi.json`: generated from the wire
//! types (`crate::api`, `ToSchema`/`IntoParams`) and the `#[utoipa::path]`
//! attribute on each handler (collected and served by `routes::spec`), so
//! request, response and parameter schemas cannot drift from the code.
//!
//! What every `/v1` operation shares is added here once rather than on each
//! handler ([`complete`]): bearer auth, and the `default` answer (the OpenAI
//! error body, with every `code` the server can answer). Tests (`tests/it/openapi.rs`)
//! check the spec against the router both ways and that every operation
//! has its schemas; `scripts/schemathesis.sh` fuzzes the server with it.

use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, InfoBuilder, OpenApi, Ref, ResponseBuilder};
use utoipa::{PartialSchema, ToSchema};

use crate::api::{ErrorBody, ErrorCode};

/// The name of the security scheme every `/v1` operation requires.
const BEARER: &str = "bearer";

/// The whole document, from the routed operations `doc`: adds the info,
/// the auth scheme, and auth and the error answer on every `/v1` operation.
pub fn complete(mut doc: OpenApi) -> OpenApi {
    doc.info = InfoBuilder::new()
        .title("hone")
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(
            "OpenAI-compatible fine-tuning and chat server (files, fine-tuning jobs, \
             models, chat completions, embeddings). See docs/api.md.",
        ))
        .build();
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        BEARER,
        SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
    );
    let mut schemas = vec![(ErrorBody::name().into_owned(), ErrorBody::schema())];
    ErrorBody::schemas(&mut schemas);
    components.schemas.extend(schemas);
    for (path, item) in doc.paths.paths.iter_mut() {
        // `/metrics` takes a key too (an admin key unless --public-metrics): its 401 is
        // documented like every `/v1` operation's errors.
        if !path.starts_with("/v1/") && path != "/metrics" {
            continue;
        }
        for op in operations(item) {
            guard(op);
        }
    }
    doc
}

/// The operations of a path item, whichever methods it has.
fn operations(item: &mut utoipa::openapi::PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        item.get.as_mut(),
        item.post.as_mut(),
        item.put.as_mut(),
        item.patch.as_mut(),
        item.delete.as_mut(),
    ]
    .into_iter()
    .flatten()
}

/// Adds bearer auth and the error answer to a `/v1` operation.
fn guard(op: &mut Operation) {
    op.security
        .get_or_insert_with(Vec::new)
        .push(SecurityRequirement::new(BEARER, Vec::<String>::new()));
    let error = ResponseBuilder::new()
        .description(error_description())
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name(ErrorBody::name())))
                .build(),
        )
        .build();
    op.responses
        .responses
        .insert("default".into(), error.into());
}

/// The error answer of every `/v1` operation, with every `code` the server
/// can answer (from [`ErrorCode::ALL`], so the list cannot drift).
fn error_description() -> String {
    let codes: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    format!(
        "An error: {{\"error\": {{message, type, param, code}}}}. 400 invalid or \
         a permanent conflict, 401 key, 404 unknown id (model_not_found for \
         models), 405 method, 413 too large, 429 busy (Retry-After), 501 not \
         offered. Codes (also on failed jobs' error.code): {}",
        codes.join(", ")
    )
}
