//! Converters from common dataset layouts to OpenAI chat JSONL.
//!
//! - `alpaca`: `{"instruction", "input"?, "output", "system"?}`; a non-empty
//!   `input` is appended to the instruction after a blank line.
//! - `instruction`: `{"instruction", "response", "system"?}` (seed 002).
//! - `sharegpt`: `{"conversations": [{"from", "value"}], "system"?}` with
//!   `from` in human/user, gpt/assistant/model/chatgpt/bing/bard, system.
//!
//! Input may be JSONL or one JSON array (Alpaca's own files are arrays); for
//! an array, "line" in a failure means the 1-based item number. Rows that
//! cannot be converted are reported, never silently dropped.

use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::issue::{Code, Issue};
use crate::lines::LineReader;
use crate::types::{ChatMessage, Role, SftExample};
use crate::DataError;

/// A source layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceFormat {
    Alpaca,
    Instruction,
    ShareGpt,
}

impl std::str::FromStr for SourceFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "alpaca" => Ok(SourceFormat::Alpaca),
            "instruction" => Ok(SourceFormat::Instruction),
            "sharegpt" => Ok(SourceFormat::ShareGpt),
            other => Err(format!(
                "unknown format '{other}': expected alpaca, instruction or sharegpt"
            )),
        }
    }
}

/// The outcome of a conversion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConvertReport {
    pub n_converted: usize,
    /// One issue per row that was not converted (line number and reason).
    pub failures: Vec<Issue>,
}

/// Converts `reader` to chat JSONL on `writer`. `system`, if given, is added
/// as the first message of every example that has none.
pub fn convert<R: BufRead, W: Write>(
    mut reader: R,
    mut writer: W,
    from: SourceFormat,
    system: Option<&str>,
) -> Result<ConvertReport, DataError> {
    let mut report = ConvertReport {
        n_converted: 0,
        failures: Vec::new(),
    };
    let io = |e| DataError::Io {
        path: "<output>".into(),
        source: e,
    };
    let mut emit = |n: usize,
                    row: Result<Value, String>,
                    report: &mut ConvertReport|
     -> Result<(), DataError> {
        match row.and_then(|v| convert_row(&v, from, system)) {
            Ok(ex) => {
                let line = serde_json::to_string(&ex)
                    .map_err(|e| DataError::InvalidArgument(e.to_string()))?;
                writeln!(writer, "{line}").map_err(io)?;
                report.n_converted += 1;
            }
            Err(why) => report
                .failures
                .push(Issue::new(Some(n), None, Code::DataType, why)),
        }
        Ok(())
    };
    if starts_with_array(&mut reader) {
        let items: Vec<Value> = serde_json::from_reader(reader).map_err(|e| {
            DataError::InvalidArgument(format!(
                "the input looks like a JSON array but does not parse: {e}"
            ))
        })?;
        for (i, item) in items.into_iter().enumerate() {
            emit(i + 1, Ok(item), &mut report)?;
        }
    } else {
        let mut lines = LineReader::new(reader, crate::validate::DEFAULT_MAX_LINE_BYTES);
        while let Some(line) = lines.next_line().map_err(|e| DataError::Io {
            path: "<input>".into(),
            source: e,
        })? {
            if line.is_blank() {
                continue;
            }
            emit(
                line.number,
                parse_row(&line.bytes, line.is_truncated()),
                &mut report,
            )?;
        }
    }
    writer.flush().map_err(io)?;
    Ok(report)
}

fn starts_with_array<R: BufRead>(reader: &mut R) -> bool {
    loop {
        let Ok(buf) = reader.fill_buf() else {
            return false;
        };
        let skip = buf.iter().take_while(|b| b.is_ascii_whitespace()).count();
        let skip = if buf.starts_with(b"\xEF\xBB\xBF") {
            3
        } else {
            skip
        };
        if buf.is_empty() {
            return false;
        }
        if skip == 0 {
            return buf[0] == b'[';
        }
        reader.consume(skip);
    }
}

fn parse_row(bytes: &[u8], truncated: bool) -> Result<Value, String> {
    if truncated {
        return Err("line too long".into());
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|e| format!("invalid UTF-8 at byte {}", e.valid_up_to() + 1))?;
    serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))
}

/// Converts one row, or says why it cannot be.
pub fn convert_row(
    v: &Value,
    from: SourceFormat,
    system: Option<&str>,
) -> Result<SftExample, String> {
    let obj = v.as_object().ok_or("row is not a JSON object")?;
    let mut messages = Vec::new();
    let row_system = obj
        .get("system")
        .and_then(Value::as_str)
        .filter(|s| !s.trim().is_empty());
    if let Some(s) = row_system.or(system) {
        messages.push(ChatMessage::new(Role::System, s));
    }
    match from {
        SourceFormat::Alpaca => {
            let instruction = text_field(obj, "instruction")?;
            let input = obj
                .get("input")
                .and_then(Value::as_str)
                .unwrap_or("")
                .trim();
            let user = if input.is_empty() {
                instruction.to_string()
            } else {
                format!("{instruction}\n\n{input}")
            };
            messages.push(ChatMessage::new(Role::User, user));
            messages.push(ChatMessage::new(
                Role::Assistant,
                text_field(obj, "output")?,
            ));
        }
        SourceFormat::Instruction => {
            messages.push(ChatMessage::new(
                Role::User,
                text_field(obj, "instruction")?,
            ));
            messages.push(ChatMessage::new(
                Role::Assistant,
                text_field(obj, "response")?,
            ));
        }
        SourceFormat::ShareGpt => sharegpt_messages(obj, &mut messages)?,
    }
    Ok(SftExample {
        messages,
        tools: None,
        parallel_tool_calls: None,
    })
}

fn text_field<'a>(obj: &'a serde_json::Map<String, Value>, key: &str) -> Result<&'a str, String> {
    match obj.get(key) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s),
        Some(Value::String(_)) => Err(format!("\"{key}\" is empty")),
        Some(_) => Err(format!("\"{key}\" is not a string")),
        None => Err(format!("missing \"{key}\"")),
    }
}

fn sharegpt_messages(
    obj: &serde_json::Map<String, Value>,
    messages: &mut Vec<ChatMessage>,
) -> Result<(), String> {
    let turns = obj
        .get("conversations")
        .and_then(Value::as_array)
        .ok_or("missing \"conversations\" array")?;
    for (i, turn) in turns.iter().enumerate() {
        let from = turn
            .get("from")
            .and_then(Value::as_str)
            .ok_or(format!("turn {}: missing \"from\"", i + 1))?;
        let value = turn
            .get("value")
            .and_then(Value::as_str)
            .ok_or(format!("turn {}: missing \"value\" text", i + 1))?;
        let role = match from.to_ascii_lowercase().as_str() {
            "human" | "user" => Role::User,
            "gpt" | "assistant" | "model" | "chatgpt" | "bing" | "bard" => Role::Assistant,
            "system" => Role::System,
            other => return Err(format!("turn {}: unsupported speaker \"{other}\"", i + 1)),
        };
        if role == Role::System && messages.iter().any(|m| m.role == Role::System) {
            return Err(format!("turn {}: a second system message", i + 1));
        }
        messages.push(ChatMessage::new(role, value));
    }
    if !messages.iter().any(|m| m.role == Role::User) {
        return Err("no user turn".into());
    }
    match messages.last() {
        Some(m) if m.role == Role::Assistant => Ok(()),
        _ => Err("the conversation does not end with an assistant turn".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &str, from: SourceFormat) -> (String, ConvertReport) {
        let mut out = Vec::new();
        let r = convert(input.as_bytes(), &mut out, from, None).unwrap();
        (String::from_utf8(out).unwrap(), r)
    }

    #[test]
    fn instruction_rows_and_failures_with_line_numbers() {
        let input = "{\"instruction\":\"What are your hours?\",\"response\":\"9 to 6.\"}\n\n{\"instruction\":\"x\"}\nnot json\n";
        let (out, r) = run(input, SourceFormat::Instruction);
        assert_eq!(r.n_converted, 1);
        assert_eq!(
            r.failures.iter().map(|f| f.line).collect::<Vec<_>>(),
            vec![Some(3), Some(4)]
        );
        assert!(r.failures[0].text.contains("response"));
        let v: Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["messages"][1]["role"], "assistant");
        assert_eq!(v["messages"][1]["content"], "9 to 6.");
    }

    #[test]
    fn alpaca_array_joins_input() {
        let input = r#"[{"instruction":"Translate","input":"bonjour","output":"hello"},{"instruction":"","output":"x"}]"#;
        let (out, r) = run(input, SourceFormat::Alpaca);
        assert_eq!(r.n_converted, 1);
        assert_eq!(r.failures[0].line, Some(2));
        assert!(out.contains("Translate\\n\\nbonjour"));
    }

    #[test]
    fn sharegpt_roles() {
        let input = r#"{"conversations":[{"from":"system","value":"Be brief."},{"from":"human","value":"Hi"},{"from":"gpt","value":"Hello"}]}
{"conversations":[{"from":"human","value":"Hi"}]}
{"conversations":[{"from":"robot","value":"Hi"}]}"#;
        let (out, r) = run(input, SourceFormat::ShareGpt);
        assert_eq!(r.n_converted, 1);
        assert_eq!(r.failures.len(), 2);
        assert!(out.contains("\"role\":\"system\""));
    }
}
