//! Small readers for Hugging Face model-directory files.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};

pub(crate) fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// `bos_token` / `eos_token` in tokenizer_config.json is either a string or
/// an AddedToken object with a `content` field.
pub(crate) fn special_token_text(config: &Value, key: &str) -> Option<String> {
    match config.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// The chat template of an HF directory: `chat_template.jinja` if present
/// (newer transformers), else `chat_template` from tokenizer_config.json,
/// which is a string or a list of `{name, template}` (we take `default`, or
/// the first one).
pub(crate) fn chat_template(dir: &Path, config: Option<&Value>) -> Result<Option<String>> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.exists() {
        return std::fs::read_to_string(&jinja)
            .map(Some)
            .map_err(|e| Error::io(jinja, e));
    }
    let Some(t) = config.and_then(|c| c.get("chat_template")) else {
        return Ok(None);
    };
    match t {
        Value::String(s) => Ok(Some(s.clone())),
        Value::Array(list) => {
            let named = |n: &str| {
                list.iter()
                    .find(|e| e.get("name").and_then(Value::as_str) == Some(n))
            };
            let entry = named("default").or_else(|| list.first());
            Ok(entry
                .and_then(|e| e.get("template"))
                .and_then(Value::as_str)
                .map(str::to_string))
        }
        Value::Null => Ok(None),
        _ => Err(Error::Json {
            path: dir.join("tokenizer_config.json"),
            message: "`chat_template` is neither a string nor a list".into(),
        }),
    }
}

/// Whether the directory's `config.json` describes a Gemma model (its
/// `model_type` starts with `gemma`); false when it cannot be read.
pub(crate) fn is_gemma_dir(dir: &Path) -> bool {
    read_json(&dir.join("config.json"))
        .ok()
        .and_then(|c| {
            c.get("model_type")?
                .as_str()
                .map(|t| t.starts_with("gemma"))
        })
        .unwrap_or(false)
}
