//! Wire types of the OpenAI-compatible API: the one place where the JSON
//! shapes the official SDK sees are defined. Handlers build these structs;
//! no other module writes JSON by hand.
//!
//! One file per resource, each type re-exported here, so callers write
//! `crate::api::FileObject` and never need to know which file holds it:
//!
//! - [`errors`]: the error body and [`ErrorCode`], every `code` the API answers;
//! - [`lists`]: list pages and their query;
//! - [`files`], [`models`], [`jobs`] (fine-tuning jobs, events, checkpoints),
//!   [`chat`] (chat completions, streamed or not).
//!
//! Request types ignore unknown fields (serde's default), because the SDK
//! sends fields we do not use and must not fail on them.

use serde::{Deserialize, Serialize};

/// Declares a zero-sized type that (de)serializes as one fixed string, for
/// the `object` tags (`"file"`, `"list"`, …) that every OpenAI object has.
/// Defined before the submodules so each declares the tags of its resource.
macro_rules! tag {
    ($(#[$doc:meta])* $name:ident = $s:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct $name;

        impl $name {
            /// The string this tag stands for.
            pub const VALUE: &'static str = $s;
        }

        /// A string schema with this one value.
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .enum_values(Some([$s]))
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str($s)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let got = <String as serde::Deserialize>::deserialize(d)?;
                if got == $s {
                    Ok($name)
                } else {
                    Err(serde::de::Error::custom(format!(
                        "expected \"{}\", got \"{}\"",
                        $s, got
                    )))
                }
            }
        }
    };
}

pub mod chat;
pub mod chat_store;
pub mod embeddings;
pub mod errors;
pub mod files;
pub mod jobs;
pub mod lists;
pub mod models;

pub use chat::*;
pub use chat_store::*;
pub use embeddings::*;
pub use errors::*;
pub use files::*;
pub use jobs::*;
pub use lists::*;
pub use models::*;

/// Answer of `GET /health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Health {
    pub status: String,
    pub version: String,
}
