//! `hone serve` survives a SIGKILL mid-job: the restarted server resumes the
//! job from its last checkpoint and finishes it, and no upload is lost. Then
//! SIGTERM drains and exits cleanly. On a tiny random model, so it is fast.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

struct Server {
    child: Child,
    port: u16,
}

/// Starts `hone serve` on a free port and waits for its banner.
fn start(home: &Path, model: &Path) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hone"))
        .args(["serve", "--port", "0", "--checkpoint-every", "5", "--model"])
        .arg(format!("tiny={}", model.display()))
        .arg("--home")
        .arg(home)
        .env_remove("HONE_API_KEYS")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start hone serve");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[hone serve] {line}");
            if let Some(rest) = line.split("http://127.0.0.1:").nth(1) {
                let port: String = rest.chars().take_while(char::is_ascii_digit).collect();
                let _ = tx.send(port.parse::<u16>().unwrap());
            }
        }
    });
    let port = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("hone serve printed its address");
    Server { child, port }
}

/// One HTTP/1.0 request (no chunked answers); returns status and body.
fn http(port: u16, method: &str, path: &str, ctype: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.0\r\nHost: x\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a full HTTP answer");
    let status = String::from_utf8_lossy(&out[9..12]).parse().unwrap();
    (status, out[split + 4..].to_vec())
}

fn get_json(port: u16, path: &str) -> Value {
    let (status, body) = http(port, "GET", path, "application/json", b"");
    assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

fn post_json(port: u16, path: &str, v: &Value) -> Value {
    let (status, body) = http(
        port,
        "POST",
        path,
        "application/json",
        v.to_string().as_bytes(),
    );
    assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

fn upload(port: u16, content: &[u8]) -> Value {
    let b = "----honecrashtest";
    let mut body = format!(
        "--{b}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n\
         --{b}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"train.jsonl\"\r\n\
         Content-Type: application/jsonl\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(content);
    body.extend_from_slice(format!("\r\n--{b}--\r\n").as_bytes());
    let (status, out) = http(
        port,
        "POST",
        "/v1/files",
        &format!("multipart/form-data; boundary={b}"),
        &body,
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&out));
    serde_json::from_slice(&out).unwrap()
}

fn events(port: u16, job: &str) -> Vec<Value> {
    let v = get_json(
        port,
        &format!("/v1/fine_tuning/jobs/{job}/events?limit=1000"),
    );
    let mut e = v["data"].as_array().unwrap().clone();
    e.reverse();
    e
}

fn last_step(port: u16, job: &str) -> u64 {
    events(port, job)
        .iter()
        .filter(|e| e["type"] == "metrics")
        .filter_map(|e| e["data"]["step"].as_u64())
        .max()
        .unwrap_or(0)
}

fn training_data() -> Vec<u8> {
    (0..40)
        .map(|i| {
            json!({"messages": [
                {"role": "user", "content": format!("question number {i}?")},
                {"role": "assistant", "content": vec![format!("answer{i}"); 20].join(" ")},
            ]})
            .to_string()
                + "\n"
        })
        .collect::<String>()
        .into_bytes()
}

#[test]
fn a_job_killed_mid_run_resumes_after_restart_and_sigterm_drains() {
    let dir = tempfile::tempdir().unwrap();
    let spec = hone_model::testing::TinySpec::default();
    let (gguf, _) = hone_model::testing::write_tiny_model(dir.path(), &spec).unwrap();
    let home = dir.path().join("home");

    let mut first = start(&home, &gguf);
    let data = training_data();
    let file = upload(first.port, &data);
    assert_eq!(file["status"], "processed", "{file}");
    let file_id = file["id"].as_str().unwrap().to_string();
    let job = post_json(
        first.port,
        "/v1/fine_tuning/jobs",
        &json!({"model": "tiny", "training_file": file_id, "suffix": "crash",
                "hyperparameters": {"n_epochs": 10, "batch_size": 1}}),
    );
    let id = job["id"].as_str().unwrap().to_string();
    let end = Instant::now() + Duration::from_secs(120);
    while last_step(first.port, &id) < 12 {
        assert!(Instant::now() < end, "no progress before the kill");
        std::thread::sleep(Duration::from_millis(10));
    }
    first.child.kill().unwrap(); // SIGKILL
    first.child.wait().unwrap();

    let mut second = start(&home, &gguf);
    let end = Instant::now() + Duration::from_secs(300);
    let done = loop {
        let j = get_json(second.port, &format!("/v1/fine_tuning/jobs/{id}"));
        match j["status"].as_str().unwrap() {
            "succeeded" => break j,
            "failed" | "cancelled" => panic!("{j}"),
            _ => {}
        }
        assert!(Instant::now() < end, "not finished after the restart: {j}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let msgs: Vec<String> = events(second.port, &id)
        .iter()
        .map(|e| e["message"].as_str().unwrap().to_string())
        .collect();
    assert!(
        msgs.iter()
            .any(|m| m.starts_with("The server restarted during training")),
        "{msgs:#?}"
    );
    let resumed = msgs
        .iter()
        .find_map(|m| m.strip_prefix("Resuming from the checkpoint at step "))
        .unwrap_or_else(|| panic!("no resume: {msgs:#?}"));
    let step: u64 = resumed.split(' ').next().unwrap().parse().unwrap();
    assert!(step >= 10, "resumed from step {step}, a checkpoint every 5");

    // Nothing lost: the upload, the result file (every step once), the models.
    let (status, content) = http(
        second.port,
        "GET",
        &format!("/v1/files/{file_id}/content"),
        "",
        b"",
    );
    assert_eq!(status, 200);
    assert_eq!(content, data, "the uploaded file is intact");
    let result = done["result_files"][0].as_str().unwrap();
    let (_, csv) = http(
        second.port,
        "GET",
        &format!("/v1/files/{result}/content"),
        "",
        b"",
    );
    let csv = String::from_utf8(csv).unwrap();
    let steps: Vec<u64> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(steps, (1..=400).collect::<Vec<u64>>(), "each step once");
    let mut event_steps: Vec<u64> = events(second.port, &id)
        .iter()
        .filter(|e| e["type"] == "metrics")
        .filter_map(|e| e["data"]["step"].as_u64())
        .collect();
    event_steps.sort_unstable();
    assert_eq!(
        event_steps,
        (1..=400).collect::<Vec<u64>>(),
        "one metrics event per step: the steps redone after the crash are not logged twice"
    );
    let model = done["fine_tuned_model"].as_str().unwrap();
    let models = get_json(second.port, "/v1/models").to_string();
    assert!(models.contains(model), "{models}");

    // SIGTERM: drains and exits 0.
    let status = Command::new("kill")
        .args(["-TERM", &second.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(s) = second.child.try_wait().unwrap() {
            assert!(s.success(), "exit after SIGTERM: {s:?}");
            break;
        }
        assert!(Instant::now() < end, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}
