//! `hone data generate`: training data from a teacher model behind any
//! OpenAI-compatible chat API (hone itself, a larger local model, a hosted
//! service). Two modes: `--prompts FILE` answers each prompt (or
//! conversation prefix); `--topic TEXT --n N` has the teacher invent N
//! user/assistant pairs as JSON (`response_format: json_object`, as in seed
//! 003's script).
//!
//! Built to survive a real service: `--concurrency` worker threads, each
//! request with a timeout and retried with backoff on 429/5xx/dropped
//! connections (honouring `Retry-After`, see `teacher.rs`); a malformed
//! answer is retried, then skipped with a count; every line goes through
//! hone-data's gate (valid, not a near-duplicate) before it is written; and
//! the run resumes where it stopped (`generate_journal.rs`). One thread
//! writes, so the output's order is the order answers arrive in.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use hone_data::gate::LineGate;
use hone_data::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::generate_journal::Journal;
use super::teacher::{CallError, RetryPolicy, Teacher};

#[derive(clap::Args)]
pub struct GenerateArgs {
    /// Prompts to answer, one per line: plain text, a JSON string,
    /// `{"prompt": "..."}`, or `{"messages": [...]}` (a conversation prefix;
    /// a final assistant message is answered again).
    #[arg(long, required_unless_present = "topic", conflicts_with = "topic")]
    pub prompts: Option<PathBuf>,
    /// What the invented conversations are about.
    #[arg(long, requires = "n")]
    pub topic: Option<String>,
    /// How many conversations to invent with --topic.
    #[arg(long)]
    pub n: Option<usize>,
    /// The teacher's API root.
    #[arg(
        long,
        env = "HONE_TEACHER_URL",
        default_value = "http://127.0.0.1:8000/v1"
    )]
    pub base_url: String,
    /// The teacher model.
    #[arg(long)]
    pub model: String,
    /// The API key.
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// A system message: sent with each prompt and kept in its example
    /// (--prompts), or the system message of each invented example (--topic).
    #[arg(long)]
    pub system: Option<String>,
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f32,
    /// Longest answer in tokens; an answer cut there is dropped.
    #[arg(long)]
    pub max_tokens: Option<u32>,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Seconds one request may take before it is abandoned and retried.
    #[arg(long, default_value_t = 120.0)]
    pub timeout: f64,
    /// Retries of one request (429, 5xx, timeouts, malformed answers).
    #[arg(long, default_value_t = 5)]
    pub max_retries: u32,
    /// First retry backoff in milliseconds (doubles each retry).
    #[arg(long, default_value_t = 1000, hide = true)]
    pub retry_base_ms: u64,
    /// US dollars per million prompt tokens, for the cost estimate.
    #[arg(long, default_value_t = 0.0)]
    pub input_price: f64,
    /// US dollars per million completion tokens, for the cost estimate.
    #[arg(long, default_value_t = 0.0)]
    pub output_price: f64,
    /// The JSONL file to append examples to (with `<out>.progress` beside it).
    #[arg(long)]
    pub out: PathBuf,
}

/// One request to make: its stable key (for resuming) and what to ask.
#[derive(Debug, Clone)]
struct Task {
    key: String,
    /// The messages sent to the teacher.
    ask: Vec<Value>,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    /// The example is `prefix` plus the teacher's answer.
    Answer { prefix: Vec<Value> },
    /// The teacher's JSON answer holds `user` and `assistant`.
    Invent { system: Option<String> },
}

/// What became of a task.
enum Outcome {
    /// A candidate line (the gate still decides).
    Line(String),
    /// Finished without an example (a malformed or cut answer).
    Skipped(String),
    /// Gave up for now (retries spent, or a non-retryable error): not
    /// journaled, so the next run tries again.
    Failed(String),
}

/// A worker's report on one task, with the tokens it cost.
struct Report {
    key: String,
    outcome: Outcome,
    prompt_tokens: u64,
    completion_tokens: u64,
}

pub fn run(a: &GenerateArgs) -> anyhow::Result<ExitCode> {
    if a.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    if !(a.timeout.is_finite() && a.timeout > 0.0) {
        bail!("--timeout must be a positive number of seconds");
    }
    let tasks = tasks(a)?;
    let mut gate = LineGate::new(Method::Sft);
    let mut journal = Journal::open(&a.out, &mut gate)?;
    let todo: VecDeque<Task> = tasks
        .into_iter()
        .filter(|t| !journal.done.contains(&t.key))
        .collect();
    let retry = RetryPolicy {
        max_retries: a.max_retries,
        base: Duration::from_millis(a.retry_base_ms),
    };
    let teacher = Teacher::new(
        &a.base_url,
        a.api_key.clone(),
        Duration::from_secs_f64(a.timeout),
        retry,
    );
    let already = journal.written;
    let n = todo.len();
    let stats = drive(a, teacher, todo, &mut gate, &mut journal)?;
    stats.print(a, already, n);
    Ok(if stats.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Counts of one run.
#[derive(Default)]
struct Stats {
    written: usize,
    dropped: BTreeMap<String, usize>,
    failed: BTreeMap<String, usize>,
    prompt_tokens: u64,
    completion_tokens: u64,
}

impl Stats {
    fn cost(&self, a: &GenerateArgs) -> f64 {
        (self.prompt_tokens as f64 * a.input_price + self.completion_tokens as f64 * a.output_price)
            / 1e6
    }

    fn message(&self, a: &GenerateArgs) -> String {
        let dropped: usize = self.dropped.values().sum();
        let failed: usize = self.failed.values().sum();
        format!(
            "{} written, {dropped} dropped, {failed} failed · {} tokens · ${:.4}",
            self.written,
            self.prompt_tokens + self.completion_tokens,
            self.cost(a)
        )
    }

    fn print(&self, a: &GenerateArgs, already: usize, n: usize) {
        println!(
            "{n} tasks: {} (the file had {already} before this run).",
            self.message(a)
        );
        for (what, counts) in [("dropped", &self.dropped), ("failed", &self.failed)] {
            for (reason, k) in counts {
                println!("  {what} {reason}: {k}");
            }
        }
        if !self.failed.is_empty() {
            println!("Run the same command again to retry the failed tasks.");
        }
    }
}

/// Runs the workers and writes what they report, one report at a time.
fn drive(
    a: &GenerateArgs,
    teacher: Teacher,
    todo: VecDeque<Task>,
    gate: &mut LineGate,
    journal: &mut Journal,
) -> anyhow::Result<Stats> {
    let total = todo.len();
    let queue = Arc::new(Mutex::new(todo));
    let teacher = Arc::new(teacher);
    let request = Arc::new(RequestShape::of(a));
    let (tx, rx) = mpsc::channel::<Report>();
    let workers: Vec<_> = (0..a.concurrency.min(total.max(1)))
        .map(|_| {
            let (queue, teacher, request, tx) =
                (queue.clone(), teacher.clone(), request.clone(), tx.clone());
            std::thread::spawn(move || loop {
                let task = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
                let Some(task) = task else { break };
                if tx.send(work(&teacher, &request, task)).is_err() {
                    break;
                }
            })
        })
        .collect();
    drop(tx);
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed}<{eta}]")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut stats = Stats::default();
    for r in rx {
        stats.prompt_tokens += r.prompt_tokens;
        stats.completion_tokens += r.completion_tokens;
        match r.outcome {
            Outcome::Line(line) => match gate.admit(&line) {
                Ok(_) => {
                    journal.write(&r.key, &line)?;
                    stats.written += 1;
                }
                Err(why) => {
                    journal.drop_task(&r.key, why.reason())?;
                    *stats.dropped.entry(why.reason().into()).or_default() += 1;
                }
            },
            Outcome::Skipped(reason) => {
                journal.drop_task(&r.key, &reason)?;
                *stats.dropped.entry(reason).or_default() += 1;
            }
            Outcome::Failed(reason) => *stats.failed.entry(reason).or_default() += 1,
        }
        bar.inc(1);
        bar.set_message(stats.message(a));
    }
    bar.finish_and_clear();
    for w in workers {
        let _ = w.join();
    }
    Ok(stats)
}

/// The request fields every task shares.
struct RequestShape {
    model: String,
    temperature: f32,
    max_tokens: Option<u32>,
}

impl RequestShape {
    fn of(a: &GenerateArgs) -> Self {
        RequestShape {
            model: a.model.clone(),
            temperature: a.temperature,
            max_tokens: a.max_tokens,
        }
    }

    fn body(&self, t: &Task) -> Value {
        let mut b = json!({
            "model": self.model,
            "messages": t.ask,
            "temperature": self.temperature,
        });
        if let Some(m) = self.max_tokens {
            b["max_tokens"] = json!(m);
        }
        if matches!(t.kind, Kind::Invent { .. }) {
            b["response_format"] = json!({"type": "json_object"});
        }
        b
    }
}

/// Asks the teacher until it answers well, the retries are spent, or the
/// error is one a retry cannot fix.
fn work(teacher: &Teacher, shape: &RequestShape, task: Task) -> Report {
    let body = shape.body(&task);
    let (mut prompt_tokens, mut completion_tokens) = (0, 0);
    let mut attempt = 0;
    let outcome = loop {
        let err = match teacher.post_once("/chat/completions", &body) {
            Ok(v) => {
                prompt_tokens += v["usage"]["prompt_tokens"].as_u64().unwrap_or(0);
                completion_tokens += v["usage"]["completion_tokens"].as_u64().unwrap_or(0);
                match read_answer(&task, &v) {
                    Ok(o) => break o,
                    Err(reason) => CallError::Retryable { reason, wait: None },
                }
            }
            Err(e) => e,
        };
        match err {
            CallError::Fatal(m) => break Outcome::Failed(m),
            e if attempt >= teacher.retry.max_retries => {
                break match e.reason() {
                    r @ "malformed_answer" => Outcome::Skipped(r.into()),
                    r => Outcome::Failed(r.into()),
                }
            }
            e => {
                std::thread::sleep(teacher.retry.wait(attempt, &e));
                attempt += 1;
            }
        }
    };
    Report {
        key: task.key,
        outcome,
        prompt_tokens,
        completion_tokens,
    }
}

/// The candidate line from a teacher's answer; `Err("malformed_answer")`
/// when the answer does not hold what was asked (retried).
fn read_answer(task: &Task, v: &Value) -> Result<Outcome, String> {
    let malformed = || "malformed_answer".to_string();
    let choice = &v["choices"][0];
    let content = choice["message"]["content"]
        .as_str()
        .ok_or_else(malformed)?;
    if choice["finish_reason"] == "length" {
        return Ok(Outcome::Skipped("truncated_answer".into()));
    }
    let messages: Vec<Value> = match &task.kind {
        Kind::Answer { prefix } => {
            let mut m = prefix.clone();
            m.push(json!({"role": "assistant", "content": content}));
            m
        }
        Kind::Invent { system } => {
            let pair: Value = serde_json::from_str(content).map_err(|_| malformed())?;
            let field = |k: &str| {
                pair[k]
                    .as_str()
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .ok_or_else(malformed)
            };
            let (user, assistant) = (field("user")?, field("assistant")?);
            let mut m: Vec<Value> = system
                .iter()
                .map(|s| json!({"role": "system", "content": s}))
                .collect();
            m.push(json!({"role": "user", "content": user}));
            m.push(json!({"role": "assistant", "content": assistant}));
            m
        }
    };
    Ok(Outcome::Line(json!({ "messages": messages }).to_string()))
}

/// Every task of the run, done or not.
fn tasks(a: &GenerateArgs) -> anyhow::Result<Vec<Task>> {
    match (&a.prompts, &a.topic, a.n) {
        (Some(path), _, _) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let mut out = Vec::new();
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let mut prefix = prompt_messages(line)
                    .with_context(|| format!("line {} of {}", i + 1, path.display()))?;
                if let Some(s) = &a.system {
                    prefix.insert(0, json!({"role": "system", "content": s}));
                }
                out.push(Task {
                    key: format!("p:{}", digest(&Value::Array(prefix.clone()))),
                    ask: prefix.clone(),
                    kind: Kind::Answer { prefix },
                });
            }
            Ok(out)
        }
        (None, Some(topic), Some(n)) => Ok((0..n)
            .map(|i| Task {
                key: format!("t:{i}"),
                ask: invent_messages(topic, i),
                kind: Kind::Invent {
                    system: a.system.clone(),
                },
            })
            .collect()),
        _ => bail!("give --prompts FILE, or --topic TEXT with --n N"),
    }
}

/// The messages of one prompt line (see `--prompts`).
fn prompt_messages(line: &str) -> anyhow::Result<Vec<Value>> {
    let user = |s: &str| vec![json!({"role": "user", "content": s})];
    let Ok(v) = serde_json::from_str::<Value>(line) else {
        return Ok(user(line.trim()));
    };
    match &v {
        Value::String(s) => Ok(user(s)),
        Value::Object(o) if o.get("prompt").is_some_and(Value::is_string) => {
            Ok(user(o["prompt"].as_str().unwrap_or_default()))
        }
        Value::Object(o) => {
            let Some(Value::Array(ms)) = o.get("messages") else {
                bail!("a JSON prompt needs `prompt` (a string) or `messages` (a list)");
            };
            let mut ms = ms.clone();
            if ms.last().is_some_and(|m| m["role"] == "assistant") {
                ms.pop();
            }
            if ms.is_empty() {
                bail!("`messages` has nothing before its answer");
            }
            Ok(ms)
        }
        _ => Ok(user(line.trim())),
    }
}

/// The request that has the teacher invent example `i` about `topic`.
fn invent_messages(topic: &str, i: usize) -> Vec<Value> {
    vec![
        json!({"role": "system", "content": format!(
            "Generate a realistic conversation about {topic}. Return only a JSON object with \
             a \"user\" field (the user's message) and an \"assistant\" field (the ideal reply)."
        )}),
        json!({"role": "user", "content": format!("Generate example {}.", i + 1)}),
    ]
}

/// A short stable hash of a JSON value.
fn digest(v: &Value) -> String {
    let h = Sha256::digest(v.to_string().as_bytes());
    h.iter().take(12).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_lines_in_every_form() {
        let u = |s: &str| vec![json!({"role": "user", "content": s})];
        assert_eq!(prompt_messages("plain text ").unwrap(), u("plain text"));
        assert_eq!(prompt_messages("\"a string\"").unwrap(), u("a string"));
        assert_eq!(prompt_messages(r#"{"prompt": "p"}"#).unwrap(), u("p"));
        let full = r#"{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}"#;
        assert_eq!(prompt_messages(full).unwrap(), u("q"));
        assert!(prompt_messages(r#"{"other": 1}"#).is_err());
        assert!(
            prompt_messages(r#"{"messages": [{"role": "assistant", "content": "a"}]}"#).is_err()
        );
    }

    #[test]
    fn invented_answers_must_hold_both_fields() {
        let task = Task {
            key: "t:0".into(),
            ask: vec![],
            kind: Kind::Invent {
                system: Some("Be kind.".into()),
            },
        };
        let answer = |content: &str| json!({"choices": [{"message": {"content": content}, "finish_reason": "stop"}]});
        let Ok(Outcome::Line(l)) =
            read_answer(&task, &answer(r#"{"user": "hi", "assistant": "hello"}"#))
        else {
            panic!("a good answer is a line");
        };
        let v: Value = serde_json::from_str(&l).unwrap();
        assert_eq!(
            v["messages"][0],
            json!({"role": "system", "content": "Be kind."})
        );
        assert_eq!(v["messages"][2]["content"], "hello");
        for bad in [
            "not json",
            r#"{"user": "hi"}"#,
            r#"{"user": "", "assistant": "x"}"#,
        ] {
            assert_eq!(
                read_answer(&task, &answer(bad)).err().unwrap(),
                "malformed_answer"
            );
        }
    }
}
