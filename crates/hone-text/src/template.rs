//! Chat templates: the model's own Jinja template rendered with minijinja,
//! set up the way Hugging Face transformers renders it (trim_blocks,
//! lstrip_blocks, Python string/dict methods, `raise_exception`,
//! `strftime_now`, a `tojson` that matches Python's `json.dumps`). The same
//! renderer serves training and inference, so the two can't drift apart.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::gguf_file::Content;
use hone_data::types::ChatMessage;
use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, ErrorKind};

use crate::error::{Error, Result};
use crate::gguf;
use crate::json::python_json;

/// Plain ChatML with no default system prompt, used when a model ships no
/// template. It is the format SmolLM, Qwen and many others were tuned on.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Gemma 3's own template (from google/gemma-3 instruct's
/// tokenizer_config.json), for a Gemma GGUF that ships none, as the base
/// gemma-3-270m does: ChatML's markers are not tokens in Gemma's vocabulary.
pub const GEMMA3_TEMPLATE: &str = include_str!("templates/gemma3.jinja");

const TEMPLATE_NAME: &str = "chat_template";

/// Where a chat template came from. Front ends print it, so a user sees
/// which template their data is rendered with before training on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateOrigin {
    /// The model's own (GGUF metadata, `tokenizer_config.json` or
    /// `chat_template.jinja`).
    Model,
    /// hone's Gemma 3 template ([`GEMMA3_TEMPLATE`]): the model is a Gemma
    /// and ships none (the base gemma-3-270m). `file` names what lacked it.
    GemmaDefault { file: &'static str },
    /// ChatML ([`CHATML_TEMPLATE`]): the model ships none.
    ChatmlDefault { file: &'static str },
    /// A Jinja file given with `--chat-template`, overriding the model's.
    File(PathBuf),
}

impl std::fmt::Display for TemplateOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TemplateOrigin::Model => write!(f, "the model's own"),
            TemplateOrigin::GemmaDefault { file } => {
                write!(f, "default Gemma 3 template (the {file} has none)")
            }
            TemplateOrigin::ChatmlDefault { file } => {
                write!(f, "default ChatML template (the {file} has none)")
            }
            TemplateOrigin::File(p) => write!(f, "{} (--chat-template)", p.display()),
        }
    }
}

/// A compiled chat template plus the special-token strings it may use.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    /// Shared so clones (one per worker) don't recompile the template.
    env: Arc<Environment<'static>>,
    source: String,
    origin: TemplateOrigin,
    bos_token: String,
    eos_token: String,
    end_of_turn: Vec<String>,
    /// Whether the template writes the `tools` it is given into the
    /// prompt (Qwen2.5's does). When not, tools, calls and tool results go
    /// through hone's Hermes-style fallback ([`crate::tool_calls`]).
    renders_tools: bool,
}

impl ChatTemplate {
    /// Compiles a Jinja chat template. `bos_token`/`eos_token` are exposed to
    /// it as variables, as transformers does. End-of-turn strings default to
    /// `eos_token` and `<|im_end|>`; see [`Self::with_end_of_turn`].
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let env = Arc::new(build_env(source)?);
        let mut end_of_turn = vec![eos_token.to_string()];
        if eos_token != "<|im_end|>" {
            end_of_turn.push("<|im_end|>".to_string());
        }
        let mut template = ChatTemplate {
            env,
            source: source.to_string(),
            origin: TemplateOrigin::Model,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
            end_of_turn,
            renders_tools: false,
        };
        template.renders_tools = template.probe_tools();
        Ok(template)
    }

    /// Whether rendering a conversation with one tool writes that tool's
    /// name into the prompt. Asked of the template itself rather than
    /// guessed from its source, so any template that renders tools is used
    /// as is.
    fn probe_tools(&self) -> bool {
        const PROBE: &str = "hone_probe_function_name";
        let tools = serde_json::json!([{"type": "function", "function": {
            "name": PROBE, "description": "probe", "parameters": {"type": "object", "properties": {}}}}]);
        let messages = [ChatMessage::new(hone_data::types::Role::User, "hi")];
        self.render_raw(&messages, true, Some(&tools))
            .is_ok_and(|text| text.contains(PROBE))
    }

    /// Whether the template renders `tools` itself; when false, hone's
    /// fallback format ([`crate::tool_calls::fallback_messages`]) is used,
    /// in training and serving alike.
    pub fn renders_tools(&self) -> bool {
        self.renders_tools
    }

    /// The ChatML fallback ([`CHATML_TEMPLATE`]).
    pub fn chatml(bos_token: &str, eos_token: &str) -> Result<Self> {
        Self::new(CHATML_TEMPLATE, bos_token, eos_token)
    }

    /// A template read from a Jinja file (`--chat-template FILE`), overriding
    /// the model's own. An unreadable file or a template that does not
    /// compile is an error naming the file, with minijinja's message and line.
    pub fn from_file(path: &Path, bos_token: &str, eos_token: &str) -> Result<Self> {
        let source = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let template = Self::new(&source, bos_token, eos_token).map_err(|e| match e {
            Error::Template(msg) => Error::TemplateFile {
                path: path.to_path_buf(),
                message: msg,
            },
            other => other,
        })?;
        Ok(template.with_origin(TemplateOrigin::File(path.to_path_buf())))
    }

    fn with_origin(mut self, origin: TemplateOrigin) -> Self {
        self.origin = origin;
        self
    }

    /// Where this template came from.
    pub fn origin(&self) -> &TemplateOrigin {
        &self.origin
    }

    /// Sets the token texts that close an assistant turn (for loss spans).
    /// Normally the tokenizer's stop-token texts.
    pub fn with_end_of_turn(mut self, end_of_turn: Vec<String>) -> Self {
        self.end_of_turn = end_of_turn;
        self
    }

    /// The template of a GGUF file (`tokenizer.chat_template`). A file with
    /// none gets [`GEMMA3_TEMPLATE`] for a Gemma architecture, else ChatML.
    pub fn from_gguf_content(content: &Content, bos_token: &str, eos_token: &str) -> Result<Self> {
        if let Some(src) = gguf::get_opt_string(content, "tokenizer.chat_template")? {
            return Self::new(src, bos_token, eos_token);
        }
        let arch = gguf::get_opt_string(content, "general.architecture")?.unwrap_or("");
        Self::family_default(arch.starts_with("gemma"), "GGUF", bos_token, eos_token)
    }

    /// The template of a model that ships none: Gemma 3's for a Gemma
    /// (ChatML's markers are not tokens in its vocabulary), else ChatML.
    fn family_default(
        gemma: bool,
        file: &'static str,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<Self> {
        if gemma {
            Ok(Self::new(GEMMA3_TEMPLATE, bos_token, eos_token)?
                .with_origin(TemplateOrigin::GemmaDefault { file }))
        } else {
            Ok(Self::chatml(bos_token, eos_token)?
                .with_origin(TemplateOrigin::ChatmlDefault { file }))
        }
    }

    /// The template of an HF model directory (`chat_template.jinja` or
    /// `tokenizer_config.json`'s `chat_template`); with none, Gemma 3's for a
    /// Gemma (`config.json`'s `model_type`), else ChatML.
    pub fn from_hf_dir(dir: impl AsRef<Path>, bos_token: &str, eos_token: &str) -> Result<Self> {
        let dir = dir.as_ref();
        let cfg_path = dir.join("tokenizer_config.json");
        let config = if cfg_path.exists() {
            Some(crate::hf::read_json(&cfg_path)?)
        } else {
            None
        };
        match crate::hf::chat_template(dir, config.as_ref())? {
            Some(src) => Self::new(&src, bos_token, eos_token),
            None => Self::family_default(
                crate::hf::is_gemma_dir(dir),
                "model directory",
                bos_token,
                eos_token,
            ),
        }
    }

    /// The template source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The strings that close a turn.
    pub fn end_of_turn(&self) -> &[String] {
        &self.end_of_turn
    }

    /// Renders a conversation. `tools` is passed as the `tools` variable
    /// (none when absent); messages carry `name`, `tool_calls` (arguments
    /// decoded to objects, as HF templates expect) and `tool_call_id` when
    /// set. A template that does not render tools gets the conversation
    /// through hone's fallback ([`crate::tool_calls::fallback_messages`]).
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        tools: Option<&serde_json::Value>,
    ) -> Result<String> {
        if self.renders_tools {
            return self.render_raw(messages, add_generation_prompt, tools);
        }
        let list = tools
            .and_then(serde_json::Value::as_array)
            .map(Vec::as_slice);
        let messages = crate::tool_calls::fallback_messages(messages, list);
        self.render_raw(&messages, add_generation_prompt, None)
    }

    /// The text an assistant message's turn holds after its generation
    /// prompt, before any end-of-turn marker, when the template writes its
    /// content verbatim: its content, plus its calls in the fallback.
    pub(crate) fn answer_text(&self, message: &ChatMessage) -> String {
        match &message.tool_calls {
            Some(calls) if !self.renders_tools => {
                crate::tool_calls::calls_text(&message.content, calls)
            }
            _ => message.content.clone(),
        }
    }

    fn render_raw(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        tools: Option<&serde_json::Value>,
    ) -> Result<String> {
        let template = self.env.get_template(TEMPLATE_NAME)?;
        let messages: Vec<Value> = messages.iter().map(message_value).collect();
        let ctx = Value::from_pairs([
            ("messages", Value::from(messages)),
            ("add_generation_prompt", Value::from(add_generation_prompt)),
            ("tools", tools.map(json_to_value).unwrap_or(Value::from(()))),
            ("bos_token", Value::from(self.bos_token.as_str())),
            ("eos_token", Value::from(self.eos_token.as_str())),
        ]);
        Ok(template.render(ctx)?)
    }
}

fn build_env(source: &str) -> Result<Environment<'static>> {
    let mut env = Environment::new();
    // transformers compiles templates with trim_blocks and lstrip_blocks.
    env.set_syntax(
        minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()?,
    );
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", strftime_now);
    env.add_filter("tojson", tojson);
    env.add_template_owned(TEMPLATE_NAME, source.to_string())?;
    Ok(env)
}

fn raise_exception(msg: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
}

fn strftime_now(format: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    crate::time::strftime_utc(secs, &format)
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=...)`,
/// so spacing and escaping match Python (minijinja's own escapes `<`, `>`,
/// `&` and `'` for HTML, which Python does not).
fn tojson(
    value: Value,
    indent: Option<Value>,
    kwargs: Kwargs,
) -> std::result::Result<Value, minijinja::Error> {
    let indent = match indent {
        Some(v) => Some(v),
        None => kwargs.get::<Option<Value>>("indent")?,
    };
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => Some(usize::try_from(v)?),
    };
    let sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    let _ = kwargs.get::<Option<bool>>("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let json = python_json(&value, indent, sort_keys)?;
    Ok(Value::from_safe_string(json))
}

/// A message as the template sees it: a dict in OpenAI order, with the
/// optional fields only when set (so `message.name is defined` works).
fn message_value(m: &ChatMessage) -> Value {
    let mut pairs: Vec<(&str, Value)> = vec![
        ("role", Value::from(m.role.as_str())),
        ("content", Value::from(m.content.as_str())),
    ];
    if let Some(name) = &m.name {
        pairs.push(("name", Value::from(name.as_str())));
    }
    if let Some(calls) = &m.tool_calls {
        pairs.push(("tool_calls", json_to_value(&decoded_calls(calls))));
    }
    if let Some(id) = &m.tool_call_id {
        pairs.push(("tool_call_id", Value::from(id.as_str())));
    }
    Value::from_pairs(pairs)
}

/// `tool_calls` with each `function.arguments` JSON string decoded to an
/// object: OpenAI sends strings, HF templates (Qwen's `arguments | tojson`)
/// expect objects, as vLLM and transformers pass them.
fn decoded_calls(calls: &serde_json::Value) -> serde_json::Value {
    let mut calls = calls.clone();
    for call in calls.as_array_mut().into_iter().flatten() {
        if let Some(args) = call.pointer_mut("/function/arguments") {
            *args = crate::tool_calls::decoded_arguments(args);
        }
    }
    calls
}

/// serde_json to minijinja, keeping map order.
pub(crate) fn json_to_value(v: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    match v {
        J::Null => Value::from(()),
        J::Bool(b) => Value::from(*b),
        J::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                Value::from(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        J::String(s) => Value::from(s.as_str()),
        J::Array(a) => a.iter().map(json_to_value).collect(),
        J::Object(o) => Value::from_pairs(o.iter().map(|(k, v)| (k.as_str(), json_to_value(v)))),
    }
}
