//! List pages (`{"object": "list", ...}`) and the query of list endpoints.

use serde::{Deserialize, Serialize};

tag!(/// `"list"`
    ListTag = "list");

/// A page of a list: newest first, with `has_more` for cursor pagination.
/// `first_id`/`last_id` appear on files and checkpoints (and are harmless on
/// the others, so we send them whenever the page is not empty).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ListResponse<T> {
    pub object: ListTag,
    pub data: Vec<T>,
    pub has_more: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_id: Option<String>,
}

/// Anything with an id can be listed with `first_id`/`last_id`.
pub trait HasId {
    fn id(&self) -> &str;
}

impl<T: HasId> ListResponse<T> {
    /// A page with `first_id`/`last_id` filled from the data.
    pub fn page(data: Vec<T>, has_more: bool) -> Self {
        let first_id = data.first().map(|x| x.id().to_string());
        let last_id = data.last().map(|x| x.id().to_string());
        ListResponse {
            object: ListTag,
            data,
            has_more,
            first_id,
            last_id,
        }
    }
}

/// Query of list endpoints: `after` (an id, exclusive) and `limit`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// The id of the last object of the previous page (exclusive).
    pub after: Option<String>,
    /// Page size, from 1 to the endpoint's maximum (files 10,000, events 1,000,
    /// jobs and checkpoints 100).
    pub limit: Option<u32>,
    /// `asc` or `desc`; newest first when absent.
    pub order: Option<String>,
    /// Files only: filter by purpose.
    pub purpose: Option<String>,
}
