//! Typed training examples: what a JSONL line becomes once it has passed
//! validation. Every later stage (templates, token masks, training, serving)
//! works on these types, never on raw JSON.

use serde::{Deserialize, Serialize};

/// A chat role. `developer` is accepted on input and treated as `system`,
/// as OpenAI does for newer models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[serde(alias = "developer")]
    System,
    User,
    Assistant,
    Tool,
}

impl Role {
    /// The role name that chat templates expect.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

/// One message of a conversation, with text parts already joined into
/// `content`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    #[serde(default)]
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// OpenAI's per-message weight: 0 excludes an assistant message from the
    /// loss, 1 (or absent) includes it. Only meaningful on assistant messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    /// A plain message with no weight, name or tool fields.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        ChatMessage {
            role,
            content: content.into(),
            name: None,
            weight: None,
            tool_calls: None,
            tool_call_id: None,
        }
    }

    /// Whether this message's tokens count in the SFT loss: assistant
    /// messages, unless they carry `weight: 0`.
    pub fn is_trained(&self) -> bool {
        self.role == Role::Assistant && self.weight != Some(0)
    }
}

/// One supervised fine-tuning example (a line of chat JSONL).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SftExample {
    pub messages: Vec<ChatMessage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
}

/// One DPO preference pair: a prompt and two single-turn assistant answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreferenceExample {
    /// The prompt conversation (`input.messages`).
    pub input: Vec<ChatMessage>,
    /// The preferred assistant answer (one message).
    pub preferred: ChatMessage,
    /// The rejected assistant answer (one message).
    pub non_preferred: ChatMessage,
    /// Tool definitions given with the prompt (`input.tools`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<serde_json::Value>,
}

/// Which fine-tuning method a file is for, and so which JSONL format it uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Supervised fine-tuning on chat transcripts (`{"messages": [...]}`).
    Sft,
    /// Direct preference optimisation on pairs
    /// (`{"input", "preferred_output", "non_preferred_output"}`).
    Dpo,
}

impl Method {
    /// The name used on the command line and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Sft => "sft",
            Method::Dpo => "dpo",
        }
    }
}

impl std::str::FromStr for Method {
    type Err = String;

    /// Accepts `sft`/`supervised` and `dpo`, as the CLI and the API spell them.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "sft" | "supervised" => Ok(Method::Sft),
            "dpo" => Ok(Method::Dpo),
            other => Err(format!("unknown method '{other}': expected sft or dpo")),
        }
    }
}
