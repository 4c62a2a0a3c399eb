//! Checking a chat request: [`plan`] turns the wire request into a
//! [`ChatPlan`] (messages, sampling parameters with the grammar of
//! `response_format`, `n`, streaming, the tools of [`super::tools`]), or a
//! 400 that names the offending field. Fields that would change the
//! meaning of the answer and that we do not implement (log-probabilities)
//! are refused rather than silently ignored.
//!
//! `response_format`'s grammar is compiled here, before any generation, so
//! a schema the engine cannot honour is a 400 on `response_format` and
//! never a half-streamed answer.

use hone_model::constraint::Grammar;
use hone_model::generate::GenerationParams;
use hone_text::ChatMessage;
use serde_json::Value;

use super::tools::{plan_tools, ToolPlan};
use crate::api::{ChatCompletionRequest, ResponseFormat};
use crate::error::ApiError;

/// Most choices one request may ask for (`n`): each is a full generation.
pub const MAX_CHOICES: u32 = 8;
/// OpenAI's limit on `stop` strings.
pub const MAX_STOP: usize = 4;
/// Sampling defaults when the request gives none: SmolLM2-Instruct's model
/// card values, the same as `hone chat` (OpenAI's 1.0 makes small models
/// ramble). Documented in docs/api.md.
pub const DEFAULT_TEMPERATURE: f32 = 0.2;
pub const DEFAULT_TOP_P: f32 = 0.9;

/// A checked request: what to generate, independent of the wire format.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatPlan {
    pub messages: Vec<ChatMessage>,
    /// Parameters of choice 0; choice `i` uses `seed + i`.
    pub params: GenerationParams,
    pub n: u32,
    pub stream: bool,
    pub include_usage: bool,
    /// `tools` and how answers are read for calls; `None` without tools.
    pub tools: Option<ToolPlan>,
}

impl ChatPlan {
    /// The tool list the chat template renders, if any.
    pub fn tool_list(&self) -> Option<&Value> {
        self.tools.as_ref().map(|t| &t.tools)
    }

    /// Whether answers are read for tool calls.
    pub fn parses_calls(&self) -> bool {
        self.tools.as_ref().is_some_and(|t| t.parse_calls)
    }

    /// Whether calls are grammar-held (streamed as they are written).
    pub fn calls_held(&self) -> bool {
        self.tools.as_ref().is_some_and(|t| t.calls_held)
    }
}

/// Checks a request and turns it into a [`ChatPlan`]. Fields that would
/// change the meaning of the answer and that we do not implement
/// (log-probabilities) are refused with a 400 naming the field, rather than
/// silently ignored.
pub fn plan(req: &ChatCompletionRequest) -> Result<ChatPlan, ApiError> {
    refuse_unsupported(req)?;
    if req.model.trim().is_empty() {
        return Err(ApiError::invalid("model", "`model` must not be empty."));
    }
    let messages = messages(req)?;
    let n = req.n.unwrap_or(1);
    if n == 0 || n > MAX_CHOICES {
        return Err(ApiError::invalid(
            "n",
            format!("`n` must be between 1 and {MAX_CHOICES}, got {n}."),
        ));
    }
    let mut params = sampling(req)?;
    let (tools, call_grammar) = plan_tools(req)?;
    params.grammar = response_grammar(req.response_format.as_ref())?;
    if call_grammar.is_some() {
        if params.grammar.is_some() {
            return Err(ApiError::invalid(
                "response_format",
                "`response_format` cannot be combined with a `tool_choice` that forces a call, \
                 or with strict tools: both would constrain the same answer.",
            ));
        }
        params.grammar = call_grammar;
    }
    Ok(ChatPlan {
        messages,
        params,
        n,
        stream: req.is_stream(),
        include_usage: req.include_usage(),
        tools,
    })
}

fn refuse_unsupported(req: &ChatCompletionRequest) -> Result<(), ApiError> {
    if req.logprobs == Some(true) {
        return Err(ApiError::invalid(
            "logprobs",
            "`logprobs` is not supported by this server yet.",
        ));
    }
    if req.top_logprobs.is_some_and(|n| n > 0) {
        return Err(ApiError::invalid(
            "top_logprobs",
            "`top_logprobs` is not supported by this server yet.",
        ));
    }
    Ok(())
}

/// The grammar the answer must match: none for text, any JSON object for
/// `json_object`, the schema for `json_schema` (compiled now, so a schema
/// the engine cannot honour is refused before generating).
fn response_grammar(format: Option<&ResponseFormat>) -> Result<Option<Grammar>, ApiError> {
    let json_schema = match format {
        None | Some(ResponseFormat::Text) => return Ok(None),
        Some(ResponseFormat::JsonObject) => return Ok(Some(Grammar::json_object())),
        Some(ResponseFormat::JsonSchema { json_schema }) => json_schema,
    };
    let bad = |msg: String| ApiError::invalid("response_format", msg);
    let spec = json_schema
        .as_ref()
        .and_then(Value::as_object)
        .ok_or_else(|| {
            bad("`response_format.json_schema` must be an object with `name` and `schema`.".into())
        })?;
    let name = spec.get("name").and_then(Value::as_str).unwrap_or("");
    let name_ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !name_ok {
        return Err(bad(format!(
            "`response_format.json_schema.name` must be 1 to 64 letters, digits, `_` or `-`, got {:?}.",
            name
        )));
    }
    if spec
        .get("strict")
        .is_some_and(|s| !s.is_boolean() && !s.is_null())
    {
        return Err(bad(
            "`response_format.json_schema.strict` must be a boolean.".into(),
        ));
    }
    let schema = spec
        .get("schema")
        .ok_or_else(|| bad("`response_format.json_schema.schema` is required.".into()))?;
    Grammar::json_schema(schema.clone()).map(Some).map_err(|e| {
        bad(format!(
            "the schema of `response_format` cannot be used: {e}"
        ))
    })
}

fn messages(req: &ChatCompletionRequest) -> Result<Vec<ChatMessage>, ApiError> {
    if req.messages.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "`messages` must contain at least one message.",
        ));
    }
    req.messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            m.to_chat_message().map_err(|e| ApiError::InvalidRequest {
                message: format!("messages[{i}]: {e}"),
                param: Some(format!("messages[{i}]")),
                code: None,
            })
        })
        .collect()
}

fn sampling(req: &ChatCompletionRequest) -> Result<GenerationParams, ApiError> {
    let temperature = req.temperature.unwrap_or(DEFAULT_TEMPERATURE);
    if !(temperature.is_finite() && (0.0..=2.0).contains(&temperature)) {
        return Err(ApiError::invalid(
            "temperature",
            format!("`temperature` must be between 0 and 2, got {temperature}."),
        ));
    }
    let top_p = req.top_p.unwrap_or(DEFAULT_TOP_P);
    if !(top_p.is_finite() && (0.0..=1.0).contains(&top_p)) {
        return Err(ApiError::invalid(
            "top_p",
            format!("`top_p` must be between 0 and 1, got {top_p}."),
        ));
    }
    let max_tokens = match req.max_new_tokens() {
        Some(0) => {
            let param = if req.max_completion_tokens.is_some() {
                "max_completion_tokens"
            } else {
                "max_tokens"
            };
            return Err(ApiError::invalid(
                param,
                format!("`{param}` must be at least 1."),
            ));
        }
        Some(m) => m as usize,
        // Up to the context length, which generation enforces.
        None => usize::MAX,
    };
    let stop = req.stop.as_ref().map(|s| s.to_vec()).unwrap_or_default();
    if stop.len() > MAX_STOP {
        return Err(ApiError::invalid(
            "stop",
            format!(
                "`stop` takes at most {MAX_STOP} strings, got {}.",
                stop.len()
            ),
        ));
    }
    Ok(GenerationParams {
        max_tokens,
        temperature,
        // top_p 0 keeps only the most likely token: greedy.
        top_p: if top_p == 0.0 { 1.0 } else { top_p },
        top_k: if top_p == 0.0 { 1 } else { 0 },
        // Without a seed every request draws a fresh one.
        seed: req.seed.map_or_else(rand::random::<u64>, |s| s as u64),
        stop,
        grammar: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(v: serde_json::Value) -> ChatCompletionRequest {
        serde_json::from_value(v).unwrap()
    }

    fn base() -> serde_json::Value {
        json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    }

    fn with(extra: serde_json::Value) -> ChatCompletionRequest {
        let mut v = base();
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        req(v)
    }

    #[test]
    fn plan_reads_sampling_fields() {
        let p = plan(&with(json!({
            "temperature": 0.7, "top_p": 0.5, "max_tokens": 9, "stop": ["a", "b"],
            "seed": 5, "n": 3, "stream": true, "stream_options": {"include_usage": true}
        })))
        .unwrap();
        assert_eq!(p.params.temperature, 0.7);
        assert_eq!(p.params.top_p, 0.5);
        assert_eq!(p.params.max_tokens, 9);
        assert_eq!(p.params.stop, vec!["a", "b"]);
        assert_eq!(p.params.seed, 5);
        assert_eq!(p.n, 3);
        assert!(p.stream && p.include_usage);
        let d = plan(&with(json!({}))).unwrap();
        assert_eq!(d.params.temperature, DEFAULT_TEMPERATURE);
        assert_eq!(d.n, 1);
        assert!(!d.stream);
    }

    #[test]
    fn plan_refuses_what_it_cannot_honour_by_param() {
        let cases = [
            (
                json!({"tools": [{"type": "function"}]}),
                "tools[0].function",
            ),
            (json!({"tool_choice": "required"}), "tool_choice"),
            (
                json!({"response_format": {"type": "json_schema", "json_schema": {}}}),
                "response_format",
            ),
            (
                json!({"response_format": {"type": "json_schema", "json_schema": {
                    "name": "x", "schema": {"type": "frobnicate"}}}}),
                "response_format",
            ),
            (
                json!({"response_format": {"type": "json_schema", "json_schema": {
                    "name": "bad name!", "schema": {"type": "object"}}}}),
                "response_format",
            ),
            (
                json!({"response_format": {"type": "json_schema", "json_schema": {
                    "name": "x"}}}),
                "response_format",
            ),
            (json!({"logprobs": true}), "logprobs"),
            (json!({"top_logprobs": 2}), "top_logprobs"),
            (json!({"n": 0}), "n"),
            (json!({"n": 99}), "n"),
            (json!({"temperature": 3.0}), "temperature"),
            (json!({"top_p": 1.5}), "top_p"),
            (json!({"max_tokens": 0}), "max_tokens"),
            (json!({"max_completion_tokens": 0}), "max_completion_tokens"),
            (json!({"stop": ["a", "b", "c", "d", "e"]}), "stop"),
            (json!({"messages": []}), "messages"),
            (
                json!({"messages": [{"role": "wizard", "content": "x"}]}),
                "messages[0]",
            ),
        ];
        for (extra, param) in cases {
            let e = plan(&with(extra.clone())).unwrap_err();
            assert_eq!(e.param().as_deref(), Some(param), "{extra}: {e}");
            assert_eq!(e.spec().status.as_u16(), 400, "{extra}");
        }
        // Empty or harmless values of the same fields are accepted.
        for ok in [
            json!({"tools": [], "tool_choice": "none"}),
            json!({"response_format": {"type": "text"}}),
            json!({"response_format": null}),
            json!({"logprobs": false, "top_logprobs": 0}),
            json!({"frequency_penalty": 0.2, "user": "u", "store": false}),
        ] {
            plan(&with(ok.clone())).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
    }

    #[test]
    fn response_format_becomes_the_grammar_of_every_choice() {
        assert_eq!(plan(&with(json!({}))).unwrap().params.grammar, None);
        let p = plan(&with(
            json!({"response_format": {"type": "json_object"}, "n": 2}),
        ))
        .unwrap();
        assert_eq!(p.params.grammar, Some(Grammar::json_object()));
        let schema = json!({
            "type": "object",
            "properties": {"a": {"enum": ["x", "y"]}},
            "required": ["a"],
            "additionalProperties": false
        });
        let p = plan(&with(
            json!({"response_format": {"type": "json_schema", "json_schema": {
            "name": "pick", "strict": true, "schema": schema}}}),
        ))
        .unwrap();
        assert_eq!(
            p.params.grammar,
            Some(Grammar::json_schema(schema).unwrap())
        );
        let e = plan(&with(
            json!({"response_format": {"type": "json_schema", "json_schema": {
            "name": "x", "schema": {"type": "frobnicate"}}}}),
        ))
        .unwrap_err();
        assert!(e.to_string().contains("frobnicate"), "{e}");
    }

    #[test]
    fn top_p_zero_is_greedy() {
        let p = plan(&with(json!({"top_p": 0.0}))).unwrap();
        assert_eq!(p.params.top_k, 1);
    }
}
