//! File objects (`/v1/files`).

use serde::{Deserialize, Serialize};

use super::lists::HasId;

tag!(/// `"file"`
    FileTag = "file");

/// Upload state of a file. Fine-tune files are validated at upload and end
/// `processed` or `error` before the upload call returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileDeleted {
    pub id: String,
    pub object: FileTag,
    pub deleted: bool,
}
