//! Chat completions (`/v1/chat/completions`): the request, the answer, and
//! the chunks of a streamed answer.

use serde::{Deserialize, Serialize};
use serde_json::Value;

tag!(/// `"chat.completion"`
    ChatCompletionTag = "chat.completion");
tag!(/// `"chat.completion.chunk"`
    ChatCompletionChunkTag = "chat.completion.chunk");
tag!(/// `"assistant"`, the only role a completion answers with.
    AssistantTag = "assistant");

/// A message's content: a string, or a list of parts (only text parts are
/// understood; others are refused when converted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

/// One part of a multi-part content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

impl MessageContent {
    /// The text, with text parts joined. Non-text parts are an error that
    /// names the part's type.
    pub fn to_text(&self) -> Result<String, String> {
        match self {
            MessageContent::Text(s) => Ok(s.clone()),
            MessageContent::Parts(parts) => {
                let mut out = String::new();
                for p in parts {
                    match (p.kind.as_str(), &p.text) {
                        ("text", Some(t)) => out.push_str(t),
                        ("text", None) => return Err("a text part has no `text`".into()),
                        (other, _) => {
                            return Err(format!(
                                "content parts of type `{other}` are not supported"
                            ))
                        }
                    }
                }
                Ok(out)
            }
        }
    }
}

/// One message of a chat completion request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChatRequestMessage {
    /// `system`, `developer` (treated as system), `user`, `assistant`, `tool`.
    pub role: String,
    #[serde(default)]
    pub content: Option<MessageContent>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<Vec<ToolCall>>)]
    pub tool_calls: Option<Value>,
    #[serde(default)]
    pub tool_call_id: Option<String>,
}

impl ChatRequestMessage {
    /// Converts to the typed message the template renders. The error names
    /// the problem; the caller adds which message it was.
    pub fn to_chat_message(&self) -> Result<hone_data::ChatMessage, String> {
        use hone_data::Role;
        let role = match self.role.as_str() {
            "system" | "developer" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "tool" => Role::Tool,
            other => return Err(format!("unknown role `{other}`")),
        };
        let content = match &self.content {
            Some(c) => c.to_text()?,
            None => String::new(),
        };
        let mut m = hone_data::ChatMessage::new(role, content);
        m.name = self.name.clone();
        m.tool_calls = self.tool_calls.clone();
        m.tool_call_id = self.tool_call_id.clone();
        Ok(m)
    }
}

/// `stop`: one string or up to four.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum StopSpec {
    One(String),
    Many(Vec<String>),
}

impl StopSpec {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            StopSpec::One(s) => vec![s.clone()],
            StopSpec::Many(v) => v.clone(),
        }
    }
}

/// `stream_options`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// `response_format`: free text, JSON mode, or structured outputs. The
/// `json_schema` object (`name`, `schema`, `strict`) stays raw JSON here and
/// is checked, and its schema compiled, by `chat::plan`, so a malformed one
/// is a 400 on `response_format` rather than an unreadable body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema {
        #[serde(default)]
        #[schema(value_type = Option<JsonSchemaSpec>)]
        json_schema: Option<Value>,
    },
}

/// Body of `POST /v1/chat/completions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChatCompletionRequest {
    pub model: String,
    pub messages: Vec<ChatRequestMessage>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub n: Option<u32>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub max_completion_tokens: Option<u32>,
    #[serde(default)]
    pub stop: Option<StopSpec>,
    #[serde(default)]
    pub seed: Option<i64>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub logprobs: Option<bool>,
    #[serde(default)]
    pub top_logprobs: Option<u32>,
    #[serde(default)]
    pub response_format: Option<ResponseFormat>,
    #[serde(default)]
    #[schema(value_type = Option<Vec<ToolSpec>>)]
    pub tools: Option<Vec<Value>>,
    #[serde(default)]
    #[schema(value_type = Option<ToolChoiceSpec>)]
    pub tool_choice: Option<Value>,
    /// Raw, so a non-boolean is a 400 naming the field.
    #[serde(default)]
    #[schema(value_type = Option<bool>)]
    pub parallel_tool_calls: Option<Value>,
    /// Whether to keep the request and answer (`GET /v1/chat/completions`).
    #[serde(default)]
    pub store: Option<bool>,
    /// Key/value strings stored with the completion (see `chat_store`).
    #[serde(default)]
    pub metadata: Option<std::collections::BTreeMap<String, String>>,
}

impl ChatCompletionRequest {
    /// `max_completion_tokens` wins over the deprecated `max_tokens`.
    pub fn max_new_tokens(&self) -> Option<u32> {
        self.max_completion_tokens.or(self.max_tokens)
    }

    /// Whether the answer is streamed as SSE.
    pub fn is_stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    /// Whether the completion is kept (`store: true`).
    pub fn is_stored(&self) -> bool {
        self.store.unwrap_or(false)
    }

    /// Whether a streamed answer ends with a usage chunk.
    pub fn include_usage(&self) -> bool {
        self.stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false)
    }
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    Stop,
    Length,
    ToolCalls,
    ContentFilter,
}

/// Token counts of a completion.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
    /// How many prompt tokens were not computed: their keys and values were
    /// copied from an earlier prompt with the same start (OpenAI's prompt
    /// caching field; present whenever a model answered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
}

/// Details of `usage.prompt_tokens`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PromptTokensDetails {
    pub cached_tokens: u32,
}

/// The assistant message of a (non-streamed) choice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AssistantMessage {
    pub role: AssistantTag,
    pub content: Option<String>,
    /// Always present, null: the SDK's type has it.
    pub refusal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
}

/// One choice of a completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Choice {
    pub index: u32,
    pub message: AssistantMessage,
    pub logprobs: Option<Value>,
    pub finish_reason: FinishReason,
}

/// `object: "chat.completion"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChatCompletion {
    pub id: String,
    pub object: ChatCompletionTag,
    pub created: i64,
    pub model: String,
    pub choices: Vec<Choice>,
    pub usage: Usage,
    #[serde(default)]
    pub system_fingerprint: Option<String>,
}

/// The delta of a streamed choice. The first chunk carries the role and an
/// empty content; the last carries neither (an empty object).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Delta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<AssistantTag>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
}

/// One call in an answer: `{"id": "call_…", "type": "function",
/// "function": {"name", "arguments"}}`, arguments a JSON string.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: FunctionTag,
    pub function: FunctionCall,
}

/// A called function's name and its arguments as a JSON string.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FunctionCall {
    pub name: String,
    pub arguments: String,
}

tag!(/// `"function"`, the only kind of tool call.
    FunctionTag = "function");

/// A piece of a streamed call: the first for a call carries `index`, `id`,
/// `type` and the name (arguments `""`); later ones add argument text, as
/// the SDK's stream helpers join them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ToolCallDelta {
    pub index: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<FunctionTag>,
    pub function: FunctionDelta,
}

/// The function part of a [`ToolCallDelta`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FunctionDelta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
}

/// One choice of a streamed chunk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChunkChoice {
    pub index: u32,
    pub delta: Delta,
    pub logprobs: Option<Value>,
    pub finish_reason: Option<FinishReason>,
}

/// `object: "chat.completion.chunk"`. The usage chunk has `choices: []`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChatCompletionChunk {
    pub id: String,
    pub object: ChatCompletionChunkTag,
    pub created: i64,
    pub model: String,
    pub choices: Vec<ChunkChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

// ----- Schemas of the request fields kept as raw JSON above (`tools`,
// `tool_choice`, a message's `tool_calls`, `response_format`'s
// `json_schema`), which `chat::tools` and `chat::plan` check by hand so that
// a bad one is a 400 naming the field, not an unreadable body. These types
// only describe the shape for `/openapi.json` (the fields name them with
// `#[schema(value_type = ...)]`); nothing (de)serializes them.

/// One entry of `tools`: a function the model may call.
#[derive(Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ToolSpec {
    #[serde(rename = "type")]
    kind: FunctionTag,
    function: FunctionSpec,
}

/// A callable function: its name, what it does, and a JSON Schema of its
/// arguments.
#[derive(Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct FunctionSpec {
    /// Letters, digits, `_` and `-`, at most 64.
    name: String,
    description: Option<String>,
    /// A JSON Schema object for the arguments.
    parameters: Option<serde_json::Map<String, Value>>,
    /// Hold calls to `parameters` with the grammar.
    strict: Option<bool>,
}

/// `tool_choice`: `"none"`, `"auto"`, `"required"`, or one named function.
#[derive(Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
#[serde(untagged)]
pub enum ToolChoiceSpec {
    Mode(ToolChoiceMode),
    Named(NamedToolChoice),
}

/// The modes of `tool_choice`.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ToolChoiceMode {
    None,
    Auto,
    Required,
}

/// `{"type": "function", "function": {"name": ...}}`.
#[derive(Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct NamedToolChoice {
    #[serde(rename = "type")]
    kind: FunctionTag,
    function: NamedFunction,
}

/// The function a named `tool_choice` requires.
#[derive(Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct NamedFunction {
    name: String,
}

/// `response_format.json_schema`: structured outputs.
#[derive(Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct JsonSchemaSpec {
    name: String,
    description: Option<String>,
    /// The JSON Schema the answer must follow.
    schema: Option<serde_json::Map<String, Value>>,
    strict: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn chat_request_accepts_sdk_shapes_and_ignores_unknown_fields() {
        let req: ChatCompletionRequest = serde_json::from_value(json!({
            "model": "ft:smollm2-135m-instruct:org:sfx:abc12345",
            "messages": [
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]}
            ],
            "stop": "END",
            "max_tokens": 5,
            "max_completion_tokens": 7,
            "stream": true,
            "stream_options": {"include_usage": true},
            "response_format": {"type": "json_object"},
            "frequency_penalty": 0.5,
            "user": "someone"
        }))
        .unwrap();
        assert_eq!(req.max_new_tokens(), Some(7));
        assert!(req.is_stream() && req.include_usage());
        assert_eq!(req.stop.as_ref().unwrap().to_vec(), vec!["END"]);
        assert_eq!(req.response_format, Some(ResponseFormat::JsonObject));
        let m0 = req.messages[0].to_chat_message().unwrap();
        assert_eq!(m0.role, hone_data::Role::System);
        assert_eq!(
            req.messages[1].to_chat_message().unwrap().content,
            "hi there"
        );
    }

    #[test]
    fn non_text_parts_are_refused_by_name() {
        let c: MessageContent =
            serde_json::from_value(json!([{"type": "image_url", "image_url": {"url": "x"}}]))
                .unwrap();
        assert!(c.to_text().unwrap_err().contains("image_url"));
    }

    #[test]
    fn chunk_delta_shapes_match_the_stream_contract() {
        let first = Delta {
            role: Some(AssistantTag),
            content: Some(String::new()),
            tool_calls: None,
        };
        assert_eq!(
            serde_json::to_value(&first).unwrap(),
            json!({"role": "assistant", "content": ""})
        );
        assert_eq!(serde_json::to_value(Delta::default()).unwrap(), json!({}));
    }
}
