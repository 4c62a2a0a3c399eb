//! `hone data export-completions`: reads the completions a server stored
//! (`store: true`), chosen by model and metadata, and writes them as a chat
//! training file with hone-serve's [`write_examples`] (which validates each
//! line and drops those that fail, counting why). The file is written
//! whole (temporary file, fsync, rename), so a failed export leaves no
//! half file behind.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use hone_serve::api::{StoreMessage, StoredCompletion};
use hone_serve::export::write_examples;
use serde_json::Value;

use super::teacher::{RetryPolicy, Teacher};

/// Page size when reading lists (the server's maximum).
const PAGE: u32 = 100;

#[derive(clap::Args)]
pub struct ExportArgs {
    /// The server: `http://HOST:PORT` (with or without `/v1`).
    #[arg(long, env = "HONE_SERVER", default_value = "http://127.0.0.1:8000")]
    pub server: String,
    /// Only completions of this model.
    #[arg(long)]
    pub model: Option<String>,
    /// Only completions with this metadata pair (`key=value`); repeat to
    /// require several.
    #[arg(long = "metadata", value_name = "KEY=VALUE", value_parser = parse_pair)]
    pub metadata: Vec<(String, String)>,
    /// The API key (its project's completions are the ones listed).
    #[arg(long, env = "HONE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// The training file to write.
    #[arg(long)]
    pub out: PathBuf,
}

/// `key=value` → `(key, value)`.
pub fn parse_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got '{s}'")),
    }
}

pub fn run(a: &ExportArgs) -> anyhow::Result<ExitCode> {
    let retry = RetryPolicy {
        max_retries: 5,
        base: Duration::from_millis(500),
    };
    let server = Teacher::new(&a.server, a.api_key.clone(), Duration::from_secs(60), retry);
    let completions = list_completions(&server, a)?;
    let mut items = Vec::with_capacity(completions.len());
    for c in completions {
        let messages = list_messages(&server, &c.completion.id)?;
        items.push((c, messages));
    }
    let n = items.len();
    let mut buf = Vec::new();
    let summary = write_examples(items, &mut buf)?;
    if summary.written == 0 {
        print_dropped(&summary);
        bail!("none of the {n} matching stored completions made a valid example; nothing written");
    }
    hone_model::atomic_file::write(&a.out, &buf)
        .with_context(|| format!("writing {}", a.out.display()))?;
    println!(
        "Wrote {} of {n} stored completions to {} as training examples.",
        summary.written,
        a.out.display()
    );
    print_dropped(&summary);
    Ok(ExitCode::SUCCESS)
}

fn print_dropped(summary: &hone_serve::export::ExportSummary) {
    if summary.n_dropped() > 0 {
        println!("Dropped {}:", summary.n_dropped());
        for (reason, k) in &summary.dropped {
            println!("  {reason}: {k}");
        }
    }
}

/// Every stored completion matching the filters, oldest first.
fn list_completions(server: &Teacher, a: &ExportArgs) -> anyhow::Result<Vec<StoredCompletion>> {
    let mut query = format!("limit={PAGE}&order=asc");
    if let Some(m) = &a.model {
        query.push_str(&format!("&model={}", encode(m)));
    }
    for (k, v) in &a.metadata {
        query.push_str(&format!(
            "&{}={}",
            encode(&format!("metadata[{k}]")),
            encode(v)
        ));
    }
    read_all(
        server,
        "/chat/completions",
        &query,
        |c: &StoredCompletion| c.completion.id.clone(),
    )
}

/// A completion's request messages, in order.
fn list_messages(server: &Teacher, id: &str) -> anyhow::Result<Vec<StoreMessage>> {
    let path = format!("/chat/completions/{}/messages", encode(id));
    read_all(
        server,
        &path,
        &format!("limit={PAGE}&order=asc"),
        |m: &StoreMessage| m.id.clone(),
    )
}

/// Follows a list's `after` cursor to its end.
fn read_all<T: serde::de::DeserializeOwned>(
    server: &Teacher,
    path: &str,
    query: &str,
    id: impl Fn(&T) -> String,
) -> anyhow::Result<Vec<T>> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let cursor = after
            .as_deref()
            .map(|a| format!("&after={}", encode(a)))
            .unwrap_or_default();
        let page: Value = server.get(&format!("{path}?{query}{cursor}"))?;
        let data: Vec<T> = serde_json::from_value(page["data"].clone())
            .with_context(|| format!("the server's answer to GET {path} is not a list"))?;
        after = data.last().map(&id);
        out.extend(data);
        if page["has_more"] != Value::Bool(true) || after.is_none() {
            return Ok(out);
        }
    }
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_and_encoding() {
        assert_eq!(parse_pair("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert!(parse_pair("=x").is_err() && parse_pair("nokey").is_err());
        assert_eq!(encode("metadata[task]"), "metadata%5Btask%5D");
        assert_eq!(encode("a b/é"), "a%20b%2F%C3%A9");
    }
}
