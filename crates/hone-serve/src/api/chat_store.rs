//! Stored chat completions (`store: true`): the stored object, its
//! messages, the update body and the deletion answer, as the OpenAI API
//! shapes them (`GET/POST/DELETE /v1/chat/completions/{id}`,
//! `GET /v1/chat/completions/{id}/messages`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::chat::{ChatCompletion, ChatRequestMessage, MessageContent};
use super::lists::HasId;

tag!(/// `"chat.completion.deleted"`
    ChatCompletionDeletedTag = "chat.completion.deleted");

/// Key/value strings attached to an object: at most 16 pairs, keys up to
/// 64 characters, values up to 512 (OpenAI's limits).
pub type Metadata = BTreeMap<String, String>;

/// Most pairs a `metadata` object may hold.
pub const METADATA_MAX_PAIRS: usize = 16;
/// Longest `metadata` key, in characters.
pub const METADATA_MAX_KEY: usize = 64;
/// Longest `metadata` value, in characters.
pub const METADATA_MAX_VALUE: usize = 512;

/// Checks `metadata` against OpenAI's limits; the error says which.
pub fn check_metadata(m: &Metadata) -> Result<(), String> {
    if m.len() > METADATA_MAX_PAIRS {
        return Err(format!(
            "metadata has {} pairs; at most {METADATA_MAX_PAIRS} are allowed",
            m.len()
        ));
    }
    for (k, v) in m {
        if k.chars().count() > METADATA_MAX_KEY {
            return Err(format!(
                "metadata key '{k}' is longer than {METADATA_MAX_KEY} characters"
            ));
        }
        if v.chars().count() > METADATA_MAX_VALUE {
            return Err(format!(
                "the value of metadata key '{k}' is longer than {METADATA_MAX_VALUE} characters"
            ));
        }
    }
    Ok(())
}

/// A stored completion: the answer as it was sent, plus its `metadata`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StoredCompletion {
    #[serde(flatten)]
    pub completion: ChatCompletion,
    #[serde(default)]
    pub metadata: Metadata,
}

impl HasId for StoredCompletion {
    fn id(&self) -> &str {
        &self.completion.id
    }
}

/// One message of a stored completion's request
/// (`ChatCompletionStoreMessage`): `id` is `<completion id>-<index>`;
/// `content` is the text (parts joined), `content_parts` the parts when
/// the request sent a list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StoreMessage {
    pub id: String,
    pub role: String,
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    pub content_parts: Option<Value>,
}

impl StoreMessage {
    /// Message `index` of completion `completion_id`'s request.
    pub fn from_request(completion_id: &str, index: usize, m: &ChatRequestMessage) -> Self {
        let (content, parts) = match &m.content {
            None => (None, None),
            Some(MessageContent::Text(s)) => (Some(s.clone()), None),
            Some(c @ MessageContent::Parts(p)) => (c.to_text().ok(), serde_json::to_value(p).ok()),
        };
        StoreMessage {
            id: format!("{completion_id}-{index}"),
            role: m.role.clone(),
            content,
            name: m.name.clone(),
            tool_calls: m.tool_calls.clone(),
            tool_call_id: m.tool_call_id.clone(),
            content_parts: parts,
        }
    }
}

impl HasId for StoreMessage {
    fn id(&self) -> &str {
        &self.id
    }
}

/// Body of `POST /v1/chat/completions/{id}`: the new metadata (replaces
/// the old; null clears it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CompletionUpdate {
    pub metadata: Option<Metadata>,
}

/// Answer of `DELETE /v1/chat/completions/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChatCompletionDeleted {
    pub id: String,
    pub object: ChatCompletionDeletedTag,
    pub deleted: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_limits_are_openais() {
        let mut m: Metadata = (0..16).map(|i| (format!("k{i}"), "v".into())).collect();
        assert!(check_metadata(&m).is_ok());
        m.insert("one-too-many".into(), "v".into());
        assert!(check_metadata(&m).unwrap_err().contains("17 pairs"));
        let long_key: Metadata = [("k".repeat(65), "v".to_string())].into();
        assert!(check_metadata(&long_key)
            .unwrap_err()
            .contains("longer than 64"));
        let long_value: Metadata = [("k".to_string(), "v".repeat(513))].into();
        assert!(check_metadata(&long_value)
            .unwrap_err()
            .contains("longer than 512"));
    }
}
