//! Reading an answer for tool calls while it streams ([`ToolCallStream`]):
//! text before the first `<tool_call>` is released as soon as it cannot
//! begin one; a call is sent as OpenAI streams it, first its name
//! ([`CallEvent::Start`]) then its arguments in pieces
//! ([`CallEvent::Arguments`]).
//!
//! When are the arguments sent? In **live** mode ([`ToolCallStream::live`],
//! for answers whose calls a grammar holds to the tools' schemas), as the
//! model writes them: a held call cannot turn out malformed, only be cut
//! short by `max_tokens` (then its arguments stay incomplete and the answer
//! finishes with `length`, as at OpenAI). Otherwise ([`ToolCallStream::new`],
//! plain `tool_choice: auto`) every call is held until the answer ends,
//! because a malformed call anywhere makes the whole answer text, and text
//! already sent as a call cannot be taken back.
//!
//! Either way the events of a whole answer add up to what
//! [`parse_tool_calls`] gives for its text: the content, and each call's
//! name and `arguments_json()` (the argument pieces joined).

use super::formats::{self, MISTRAL_TOOL_CALLS};
use super::{parse_tool_calls, ParsedToolCall, TOOL_CALL_CLOSE, TOOL_CALL_OPEN};

/// What a [`ToolCallStream`] lets out.
#[derive(Debug, Clone, PartialEq)]
pub enum CallEvent {
    /// Answer text to show.
    Content(String),
    /// Call `index` (0-based, in the answer) begins: its function's name.
    Start { index: usize, name: String },
    /// More of call `index`'s arguments as JSON text.
    Arguments { index: usize, fragment: String },
}

/// See the module doc.
#[derive(Debug, Default)]
pub struct ToolCallStream {
    text: String,
    /// Bytes of content released.
    released: usize,
    live: bool,
    /// Per call started: the bytes of its (compacted) arguments sent.
    sent: Vec<usize>,
}

impl ToolCallStream {
    /// Holds calls until [`Self::finish`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Sends calls as they are written (for grammar-held calls).
    pub fn live() -> Self {
        Self {
            live: true,
            ..Self::default()
        }
    }

    /// Adds a piece of the answer; returns what can be sent now.
    pub fn push(&mut self, piece: &str) -> Vec<CallEvent> {
        self.text.push_str(piece);
        if self.released == 0 && formats::may_open_at_start(&self.text) {
            return Vec::new(); // maybe a Llama 3.1 call: held to the end
        }
        let hermes = self.text.find(TOOL_CALL_OPEN);
        let mistral = self.text.find(MISTRAL_TOOL_CALLS);
        let start = match (hermes, mistral) {
            (None, None) => {
                let safe = safe_end(&self.text);
                return self.release(safe).into_iter().collect();
            }
            (Some(h), m) if self.live && m.is_none_or(|m| m > h) => h,
            _ => return Vec::new(),
        };
        let mut out: Vec<CallEvent> = self
            .release(self.text[..start].trim_end().len())
            .into_iter()
            .collect();
        for (i, call) in scan_calls(&self.text[start..]).iter().enumerate() {
            out.extend(self.send(i, &call.name, &call.arguments));
        }
        out
    }

    /// The end of the answer: what is left to send, and the calls (empty
    /// when the answer is text, or when a live call was cut short).
    pub fn finish(mut self) -> (Vec<CallEvent>, Vec<ParsedToolCall>) {
        let parsed = parse_tool_calls(&self.text);
        if parsed.calls.is_empty() && !self.sent.is_empty() {
            // A live call cut short: what was sent stands (see the module doc).
            return (Vec::new(), Vec::new());
        }
        let mut out: Vec<CallEvent> = self.release_rest(parsed.content.as_deref());
        for (i, call) in parsed.calls.iter().enumerate() {
            out.extend(self.send(i, &call.name, &call.arguments_text));
        }
        (out, parsed.calls)
    }

    /// Content up to byte `end` of the text not yet released.
    fn release(&mut self, end: usize) -> Option<CallEvent> {
        if end <= self.released {
            return None;
        }
        let piece = self.text[self.released..end].to_string();
        self.released = end;
        Some(CallEvent::Content(piece))
    }

    /// The part of the answer's whole `content` not released yet.
    fn release_rest(&mut self, content: Option<&str>) -> Vec<CallEvent> {
        let content = content.unwrap_or_default();
        let rest = content
            .get(self.released.min(content.len())..)
            .unwrap_or_default();
        self.released = self.released.max(content.len());
        if rest.is_empty() {
            Vec::new()
        } else {
            vec![CallEvent::Content(rest.to_string())]
        }
    }

    /// Call `index`'s start (the first time) and the arguments not sent yet.
    fn send(&mut self, index: usize, name: &str, arguments: &str) -> Vec<CallEvent> {
        let mut out = Vec::new();
        if index == self.sent.len() {
            self.sent.push(0);
            out.push(CallEvent::Start {
                index,
                name: name.to_string(),
            });
        }
        let Some(done) = self.sent.get_mut(index) else {
            return out;
        };
        if let Some(rest) = arguments.get(*done..).filter(|r| !r.is_empty()) {
            out.push(CallEvent::Arguments {
                index,
                fragment: rest.to_string(),
            });
            *done = arguments.len();
        }
        out
    }
}

/// How much of `text` (which holds no call opener) can be shown: up to
/// any trailing whitespace, and before a tail that could begin an opener.
fn safe_end(text: &str) -> usize {
    let mut end = text.trim_end().len();
    for opener in [TOOL_CALL_OPEN, MISTRAL_TOOL_CALLS] {
        for (i, _) in text.char_indices().rev().take(opener.len()) {
            if opener.starts_with(&text[i..]) {
                end = end.min(text[..i].trim_end().len());
            }
        }
    }
    end
}

/// A call read from the start of a streamed answer.
#[derive(Debug, PartialEq)]
struct PartialCall {
    name: String,
    /// The arguments so far, compacted ([`compact_json`]).
    arguments: String,
}

/// The calls of `text` (which begins with `<tool_call>`) as far as they are
/// written, each once its name is complete. Reads the shape a call grammar
/// writes, `<tool_call> {"name": "...", "arguments": {...}} </tool_call>`
/// (any whitespace); anything else ends the scan, and the answer's end
/// decides.
fn scan_calls(text: &str) -> Vec<PartialCall> {
    let mut calls = Vec::new();
    let mut rest = text;
    loop {
        let Some((call, after)) = scan_call(rest) else {
            return calls;
        };
        calls.push(call);
        match after {
            Some(a) => rest = a,
            None => return calls,
        }
    }
}

/// One call from the start of `text`: the call, and the text after its
/// `</tool_call>` when the call is complete.
fn scan_call(text: &str) -> Option<(PartialCall, Option<&str>)> {
    let rest = text.trim_start().strip_prefix(TOOL_CALL_OPEN)?;
    let (call, after_arguments) = scan_body(rest)?;
    let after = after_arguments
        .and_then(|r| expect(r, "}"))
        .and_then(|r| expect(r, TOOL_CALL_CLOSE));
    Some((call, after))
}

/// `{"name": "...", "arguments": {...` at the start of `text`: the call so
/// far, and the text after its arguments object once that is closed.
fn scan_body(text: &str) -> Option<(PartialCall, Option<&str>)> {
    let rest = expect(text, "{")?;
    let rest = expect(rest, "\"name\"")?;
    let rest = expect(rest, ":")?.trim_start();
    let (name, rest) = string_literal(rest)?;
    let rest = expect(rest, ",")?;
    let rest = expect(rest, "\"arguments\"")?;
    let rest = expect(rest, ":")?.trim_start();
    if !rest.starts_with('{') {
        return None;
    }
    let (arguments, end) = compact_object(rest);
    Some((PartialCall { name, arguments }, end.map(|e| &rest[e..])))
}

/// The arguments of a whole call body (`{"name": ..., "arguments": {...}}`)
/// as [`ToolCallStream`] sends them, when the body has that shape.
pub(crate) fn streamed_arguments(body: &str) -> Option<String> {
    match scan_body(body)? {
        (call, Some(_)) => Some(call.arguments),
        (_, None) => None,
    }
}

/// `text` after optional whitespace and `token`.
fn expect<'a>(text: &'a str, token: &str) -> Option<&'a str> {
    text.trim_start().strip_prefix(token)
}

/// A complete JSON string at the start of `text`, decoded, and the rest.
fn string_literal(text: &str) -> Option<(String, &str)> {
    let body = text.strip_prefix('"')?;
    let mut escaped = false;
    for (i, c) in body.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => {
                let lit = &text[..i + 2];
                return Some((serde_json::from_str(lit).ok()?, &text[i + 2..]));
            }
            _ => {}
        }
    }
    None
}

/// The JSON object at the start of `text` with the whitespace outside its
/// strings dropped, as far as it is written, and the byte just past it if
/// it is closed.
fn compact_object(text: &str) -> (String, Option<usize>) {
    let mut out = String::new();
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (i, c) in text.char_indices() {
        if in_string {
            out.push(c);
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            c if c.is_whitespace() => continue,
            '"' => in_string = true,
            '{' | '[' => depth += 1,
            '}' | ']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        out.push(c);
        if depth == 0 {
            return (out, Some(i + c.len_utf8()));
        }
    }
    (out, None)
}
