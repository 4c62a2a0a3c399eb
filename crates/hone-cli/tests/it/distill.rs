//! Distillation: `hone data generate` against a fault-injecting teacher
//! written here (429 with Retry-After, 500, a slow answer, an answer that
//! is not JSON, a dropped connection, malformed JSON content) and against a
//! real `hone serve` on a tiny model; `hone data export-completions` from a
//! hone-serve whose completions were stored with `store: true`, round-
//! tripped through validation and training.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use hone_data::gate::LineGate;
use hone_data::Method;
use serde_json::{json, Value};

use crate::train_support::{hone_bin, setup};

/// What the teacher does with one request.
enum Fault {
    Answer(String),
    Status(u16, Option<&'static str>),
    Slow(String),
    NotJson,
    Drop,
}

type Script = dyn Fn(&str, usize) -> Fault + Send + Sync;

/// A teacher on a local port that answers each request as `script` says,
/// given the last user message and how often it was asked before.
struct FaultTeacher {
    port: u16,
    seen: Arc<Mutex<HashMap<String, usize>>>,
    bodies: Arc<Mutex<Vec<Value>>>,
}

impl FaultTeacher {
    fn start(script: Arc<Script>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let (s2, b2) = (seen.clone(), bodies.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().map_while(Result::ok) {
                let (script, seen, bodies) = (script.clone(), s2.clone(), b2.clone());
                std::thread::spawn(move || serve_one(conn, &*script, &seen, &bodies));
            }
        });
        FaultTeacher { port, seen, bodies }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    fn asked(&self, prompt: &str) -> usize {
        self.seen.lock().unwrap().get(prompt).copied().unwrap_or(0)
    }
}

fn serve_one(
    mut conn: TcpStream,
    script: &Script,
    seen: &Mutex<HashMap<String, usize>>,
    bodies: &Mutex<Vec<Value>>,
) {
    let mut r = BufReader::new(conn.try_clone().unwrap());
    let mut len = 0;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).unwrap();
    let body: Value = serde_json::from_slice(&body).unwrap();
    let prompt = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .map(|m| m["content"].as_str().unwrap().to_string())
        .unwrap();
    bodies.lock().unwrap().push(body);
    let attempt = {
        let mut s = seen.lock().unwrap();
        let n = s.entry(prompt.clone()).or_insert(0);
        *n += 1;
        *n - 1
    };
    let reply = |status: u16, extra: &str, body: &str| {
        format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let ok = |content: &str| {
        let v = json!({
            "id": "chatcmpl-x", "object": "chat.completion", "created": 0, "model": "t",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        });
        reply(200, "", &v.to_string())
    };
    let out = match script(&prompt, attempt) {
        Fault::Answer(c) => ok(&c),
        Fault::Status(code, retry_after) => {
            let extra = retry_after
                .map(|s| format!("Retry-After: {s}\r\n"))
                .unwrap_or_default();
            let e = json!({"error": {"message": "try later", "type": "x", "param": null, "code": null}});
            reply(code, &extra, &e.to_string())
        }
        Fault::Slow(c) => {
            std::thread::sleep(Duration::from_secs(3));
            ok(&c)
        }
        Fault::NotJson => reply(200, "", "{\"choices\": [oops"),
        Fault::Drop => return,
    };
    let _ = conn.write_all(out.as_bytes());
}

fn generate(out: &Path, extra: &[&str]) -> Output {
    Command::new(hone_bin())
        .args(["data", "generate", "--model", "teacher", "--out"])
        .arg(out)
        .args(extra)
        .env_remove("OPENAI_API_KEY")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// The examples of a generated file; each must pass the gate.
fn examples(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut gate = LineGate::new(Method::Sft);
    text.lines()
        .map(|l| {
            gate.admit(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            serde_json::from_str(l).unwrap()
        })
        .collect()
}

fn user_of(ex: &Value) -> String {
    let ms = ex["messages"].as_array().unwrap();
    ms[ms.len() - 2]["content"].as_str().unwrap().to_string()
}

#[test]
fn generate_survives_every_fault_loses_nothing_and_resumes() {
    let healed = Arc::new(AtomicBool::new(false));
    let h = healed.clone();
    let script: Arc<Script> = Arc::new(move |p: &str, attempt: usize| {
        let answer = Fault::Answer(format!("An answer to: {p}"));
        match (p, attempt) {
            ("rate limited", 0) => Fault::Status(429, Some("1")),
            ("server error", 0 | 1) => Fault::Status(500, None),
            ("slow", 0) => Fault::Slow("too late".into()),
            ("not json", 0) => Fault::NotJson,
            ("dropped", 0) => Fault::Drop,
            ("always failing", _) if !h.load(Ordering::SeqCst) => Fault::Status(503, None),
            ("Dup prompt!" | "dup prompt", _) => Fault::Answer("The same answer.".into()),
            _ => answer,
        }
    });
    let t = FaultTeacher::start(script);
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("prompts.txt");
    let names = [
        "ok one",
        "rate limited",
        "server error",
        "slow",
        "not json",
        "dropped",
        "always failing",
        "Dup prompt!",
        "dup prompt",
    ];
    std::fs::write(&prompts, names.join("\n\n")).unwrap();
    let out = dir.path().join("gen.jsonl");
    let flags = [
        "--prompts",
        prompts.to_str().unwrap(),
        "--base-url",
        &t.url(),
        "--max-retries",
        "3",
        "--retry-base-ms",
        "10",
        "--timeout",
        "1",
        "--concurrency",
        "3",
        "--input-price",
        "1",
        "--output-price",
        "2",
    ];
    let o = generate(&out, &flags);
    let text = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(
        text.contains("9 tasks: 7 written, 1 dropped, 1 failed"),
        "{text}"
    );
    assert!(text.contains("dropped near_duplicate: 1"), "{text}");
    assert!(text.contains("failed 503: 1"), "{text}");
    // Tokens are those of the 8 answers (10 prompt and 5 completion tokens
    // each; failed attempts have no usage), priced $1 and $2 per 1M.
    assert!(text.contains("120 tokens · $0.0002"), "{text}");
    assert_eq!(t.asked("always failing"), 4);
    let first = examples(&out);
    assert_eq!(first.len(), 7);
    let mut users: Vec<String> = first.iter().map(user_of).collect();
    users.sort();
    let dup = users
        .iter()
        .filter(|u| u.to_lowercase().starts_with("dup"))
        .count();
    assert_eq!(dup, 1, "{users:?}");
    for ex in &first {
        let u = user_of(ex);
        let a = ex["messages"].as_array().unwrap().last().unwrap()["content"].clone();
        if !u.to_lowercase().starts_with("dup") {
            assert_eq!(a, format!("An answer to: {u}"));
        }
    }

    // The second run asks only for what failed.
    healed.store(true, Ordering::SeqCst);
    let before: HashMap<String, usize> = t.seen.lock().unwrap().clone();
    let o = generate(&out, &flags);
    let text = stdout(&o);
    assert!(o.status.success(), "{text}");
    assert!(
        text.contains("1 tasks: 1 written, 0 dropped, 0 failed"),
        "{text}"
    );
    assert!(text.contains("the file had 7 before"), "{text}");
    let after = t.seen.lock().unwrap().clone();
    for (p, n) in before {
        let more = usize::from(p == "always failing");
        assert_eq!(after[&p], n + more, "{p}");
    }
    let all = examples(&out);
    assert_eq!(all.len(), 8);
    assert_eq!(&all[..7], &first[..]);
    assert_eq!(user_of(&all[7]), "always failing");

    // A third run has nothing to do.
    let o = generate(&out, &flags);
    assert!(stdout(&o).contains("0 tasks"), "{}", stdout(&o));
    assert_eq!(examples(&out).len(), 8);
}

#[test]
fn generate_topic_asks_for_json_and_skips_malformed_answers() {
    let script: Arc<Script> = Arc::new(|p: &str, attempt: usize| {
        let n: usize = p
            .trim_start_matches("Generate example ")
            .trim_end_matches('.')
            .parse()
            .unwrap();
        let good = json!({"user": format!("How do I reset password {n}?"),
                          "assistant": format!("Open settings and choose reset number {n}.")});
        match (n, attempt) {
            (2, 0) => Fault::Answer("Sure! Here is one: no JSON".into()),
            (3, _) => Fault::Answer(json!({"user": "only a question"}).to_string()),
            _ => Fault::Answer(good.to_string()),
        }
    });
    let t = FaultTeacher::start(script);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("topic.jsonl");
    let o = generate(
        &out,
        &[
            "--topic",
            "password resets",
            "--n",
            "5",
            "--base-url",
            &t.url(),
            "--max-retries",
            "2",
            "--retry-base-ms",
            "10",
            "--system",
            "You are a support agent.",
        ],
    );
    let text = stdout(&o);
    assert!(o.status.success(), "{text}");
    assert!(
        text.contains("5 tasks: 4 written, 1 dropped, 0 failed"),
        "{text}"
    );
    assert!(text.contains("dropped malformed_answer: 1"), "{text}");
    assert_eq!(t.asked("Generate example 3."), 3);
    let ex = examples(&out);
    assert_eq!(ex.len(), 4);
    for e in &ex {
        assert_eq!(e["messages"][0]["content"], "You are a support agent.");
    }
    let bodies = t.bodies.lock().unwrap();
    assert!(bodies
        .iter()
        .all(|b| b["response_format"] == json!({"type": "json_object"})));
    assert!(bodies[0]["messages"][0]["content"]
        .as_str()
        .unwrap()
        .contains("password resets"));
}

/// `hone serve` on a tiny model (as `teacher`), on a free port.
struct Served {
    child: std::process::Child,
    port: u16,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn hone_serve(home: &Path, model: &Path) -> Served {
    let mut child = Command::new(hone_bin())
        .args(["serve", "--port", "0", "--model"])
        .arg(format!("teacher={}", model.display()))
        .arg("--home")
        .arg(home)
        .env_remove("HONE_API_KEYS")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("http://127.0.0.1:").nth(1) {
                let port: String = rest.chars().take_while(char::is_ascii_digit).collect();
                let _ = tx.send(port.parse::<u16>().unwrap());
            }
        }
    });
    let port = rx.recv_timeout(Duration::from_secs(60)).unwrap();
    Served { child, port }
}

/// One JSON POST to the server; the answer's JSON.
fn post(port: u16, path: &str, body: &Value) -> Value {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let b = body.to_string();
    let head = format!(
        "POST {path} HTTP/1.0\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        b.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(b.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (_, json) = out.split_once("\r\n\r\n").unwrap();
    assert!(
        out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200"),
        "{out}"
    );
    serde_json::from_str(json).unwrap()
}

#[test]
fn generate_against_a_real_hone_serve_accounts_for_every_prompt() {
    let s = setup(1, 5);
    let served = hone_serve(&s.dir.path().join("home"), &s.model);
    let prompts = s.dir.path().join("p.jsonl");
    let lines = [
        json!("Say hello."),
        json!({"prompt": "Name a fruit."}),
        json!({"messages": [{"role": "user", "content": "Count to three."}]}),
    ];
    let text: Vec<String> = lines.iter().map(Value::to_string).collect();
    std::fs::write(&prompts, text.join("\n")).unwrap();
    let out = s.dir.path().join("gen.jsonl");
    let url = format!("http://127.0.0.1:{}", served.port);
    let flags = [
        "--prompts",
        prompts.to_str().unwrap(),
        "--base-url",
        &url,
        "--max-tokens",
        "24",
        "--temperature",
        "0",
        "--concurrency",
        "2",
    ];
    let o = generate(&out, &flags);
    let text = stdout(&o);
    assert!(
        o.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(text.contains("3 tasks: "), "{text}");
    let journal = std::fs::read_to_string(dir_progress(&out)).unwrap();
    assert_eq!(journal.lines().count(), 3, "{journal}");
    let written = journal.lines().filter(|l| !l.contains("dropped")).count();
    assert_eq!(examples(&out).len(), written);
    // Every prompt is done: a second run asks nothing.
    let o = generate(&out, &flags);
    assert!(stdout(&o).contains("0 tasks"), "{}", stdout(&o));
}

fn dir_progress(out: &Path) -> std::path::PathBuf {
    let mut p = out.as_os_str().to_owned();
    p.push(".progress");
    p.into()
}

/// A chat backend that answers like a careful tutor, and cuts its answer
/// (finish `length`) when asked to.
struct Tutor;

impl hone_serve::chat::ChatBackend for Tutor {
    fn generate(
        &self,
        _: &hone_serve::chat::ChatTarget,
        messages: &[hone_text::ChatMessage],
        _: Option<&Value>,
        _: &hone_model::generate::GenerationParams,
        _: &mut dyn FnMut(&str) -> std::ops::ControlFlow<()>,
    ) -> Result<hone_model::generate::Generation, hone_serve::chat::ChatError> {
        use hone_model::generate::{FinishReason, Generation};
        let q = messages
            .last()
            .map(|m| m.content.clone())
            .unwrap_or_default();
        let cut = q.contains("long");
        Ok(Generation {
            text: format!("Here is a careful answer to \"{q}\"."),
            token_ids: vec![],
            finish_reason: if cut {
                FinishReason::Length
            } else {
                FinishReason::Stop
            },
            prompt_tokens: 4,
            completion_tokens: 8,
        })
    }
}

/// hone-serve over [`Tutor`], in this process, on a free port.
fn tutor_server(home: &Path) -> u16 {
    let config = hone_serve::ServeConfig::new(home);
    let engines = hone_serve::Engines::with_base_models(["tutor"]).chat(Arc::new(Tutor), 2);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let state = hone_serve::AppState::open(config, engines).unwrap();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap().port()).unwrap();
            let _ = hone_serve::serve_on(listener, state, std::future::pending()).await;
        });
    });
    rx.recv_timeout(Duration::from_secs(60)).unwrap()
}

#[test]
fn exported_completions_validate_and_train() {
    let mut s = setup(1, 9);
    let port = tutor_server(&s.dir.path().join("serve"));
    let ask = |q: &str, model: &str, meta: Value| {
        let body = json!({
            "model": model,
            "messages": [{"role": "system", "content": "Be careful."}, {"role": "user", "content": q}],
            "store": true, "metadata": meta
        });
        post(port, "/v1/chat/completions", &body)
    };
    for i in 0..12 {
        ask(
            &format!("Question number {i}?"),
            "tutor",
            json!({"set": "train"}),
        );
    }
    ask("question NUMBER 3", "tutor", json!({"set": "train"})); // a near-duplicate
    ask("A long one", "tutor", json!({"set": "train"})); // cut at the limit
    ask("Not stored", "tutor", json!({"set": "other"}));
    let out = s.dir.path().join("exported.jsonl");
    let url = format!("http://127.0.0.1:{port}");
    let export = |extra: &[&str]| {
        Command::new(hone_bin())
            .args(["data", "export-completions", "--server", &url])
            .args(extra)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap()
    };
    let o = export(&["--metadata", "set=train", "--model", "tutor"]);
    let text = stdout(&o);
    assert!(
        o.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(text.contains("Wrote 12 of 14 stored completions"), "{text}");
    assert!(
        text.contains("near_duplicate: 1") && text.contains("truncated_answer: 1"),
        "{text}"
    );
    let ex = examples(&out);
    assert_eq!(ex.len(), 12);
    assert_eq!(
        ex[0],
        json!({"messages": [
            {"role": "system", "content": "Be careful."},
            {"role": "user", "content": "Question number 0?"},
            {"role": "assistant", "content": "Here is a careful answer to \"Question number 0?\"."}
        ]})
    );
    // Filters that match nothing write nothing and say so.
    assert!(!export(&["--model", "other"]).status.success());
    let v = Command::new(hone_bin())
        .args(["data", "validate", "--no-tokens"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", stdout(&v));
    s.data = out;
    let trained = s.dir.path().join("adapter");
    let t = s.train(&trained, &["--epochs", "1", "--batch-size", "2"]);
    assert!(t.status.success(), "{}", String::from_utf8_lossy(&t.stderr));
    assert!(
        trained.join("summary.json").exists(),
        "hone train wrote summary.json"
    );
}
