//! File objects (`/v1/files`).

use serde::{Deserialize, Serialize};

use super::lists::HasId;

tag!(/// `"file"`
    FileTag = "file");

/// Upload state of a file. Fine-tune files are validated at upload and end
/// `processed` or `error` before the upload call returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FileStatus {
    Uploaded,
    Processed,
    Error,
}

impl FileStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            FileStatus::Uploaded => "uploaded",
            FileStatus::Processed => "processed",
            FileStatus::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "uploaded" => Some(FileStatus::Uploaded),
            "processed" => Some(FileStatus::Processed),
            "error" => Some(FileStatus::Error),
            _ => None,
        }
    }
}

/// `object: "file"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FileObject {
    pub id: String,
    pub object: FileTag,
    pub bytes: u64,
    pub created_at: i64,
    pub filename: String,
    pub purpose: String,
    pub status: FileStatus,
    /// For `status: "error"`: every problem found, one per line, each with
    /// its line number.
    pub status_details: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
}

impl HasId for FileObject {
    fn id(&self) -> &str {
        &self.id
    }
}

/// Answer of `DELETE /v1/files/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FileDeleted {
    pub id: String,
    pub object: FileTag,
    pub deleted: bool,
}

/// The multipart form of `POST /v1/files`, for the OpenAPI spec only (the
/// handler reads the parts as a stream, so that a large upload never sits
/// in memory). Other parts (e.g. `expires_after`) are accepted and ignored.
#[derive(Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct FileUpload {
    /// The file's bytes, with its filename.
    #[schema(value_type = String, format = Binary)]
    pub file: Vec<u8>,
    /// `fine-tune` (validated at upload), `assistants`, `batch`, `user_data`,
    /// `evals` or `vision`.
    pub purpose: String,
}
