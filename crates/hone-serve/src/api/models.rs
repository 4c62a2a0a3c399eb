//! Model objects (`/v1/models`).

use serde::{Deserialize, Serialize};

use super::lists::HasId;

tag!(/// `"model"`
    ModelTag = "model");

/// `object: "model"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Model {
    pub id: String,
    pub object: ModelTag,
    pub created: i64,
    pub owned_by: String,
}

impl HasId for Model {
    fn id(&self) -> &str {
        &self.id
    }
}

/// Answer of `DELETE /v1/models/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModelDeleted {
    pub id: String,
    pub object: ModelTag,
    pub deleted: bool,
}
