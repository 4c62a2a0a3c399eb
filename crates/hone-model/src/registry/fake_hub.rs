//! A Hugging Face hub on localhost for tests of `hf:` fetching (here and in
//! the CLI's tests): it serves the two endpoints hf-hub's blocking client
//! calls, with the headers it reads.
//!
//! - `GET /api/models/{repo}/revision/{rev}[?blobs=true]`: the listing, JSON
//!   with `sha` and `siblings` (`rfilename`, `size`, and `lfs` for LFS files).
//! - `GET /{repo}/resolve/{rev}/{file}` with `Range: bytes=A-[B]`: 206 with
//!   `Content-Range: bytes A-B/TOTAL`, `etag`, `x-repo-commit`, and for LFS
//!   files `x-linked-etag` (their sha256, which hf-hub names the blob after).
//!   hf-hub first asks for `bytes=0-0` to learn the etag, commit and size,
//!   then for `bytes=START-` (START > 0 when it resumes a `.part` file).
//!
//! Errors are answered like the hub: 401 without a valid token when one is
//! required, 404 with `x-error-code` `RepoNotFound` / `RevisionNotFound` /
//! `EntryNotFound`. It can also lie about a file's sha256 and cut the first
//! download of a file midway, to test checksum and resume handling.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use sha2::{Digest, Sha256};

use super::fetch::hex;

/// One file of the fake repo.
#[derive(Debug, Clone)]
pub struct FakeFile {
    pub name: String,
    pub bytes: Vec<u8>,
    /// Stored with LFS: listed with an `lfs.sha256` and served with
    /// `x-linked-etag` (as the hub does for weights).
    pub lfs: bool,
    /// The sha256 to advertise instead of the real one (a corrupt upload).
    pub wrong_sha256: Option<String>,
}

impl FakeFile {
    pub fn new(name: &str, bytes: Vec<u8>, lfs: bool) -> Self {
        FakeFile {
            name: name.into(),
            bytes,
            lfs,
            wrong_sha256: None,
        }
    }

    /// The sha256 the hub advertises for this file.
    pub fn listed_sha256(&self) -> String {
        self.wrong_sha256
            .clone()
            .unwrap_or_else(|| hex(&Sha256::digest(&self.bytes)))
    }
}

/// The repo a [`FakeHub`] serves.
#[derive(Debug, Clone)]
pub struct FakeRepo {
    /// `ORG/NAME`.
    pub repo: String,
    /// The commit `main` points to (40 hex digits).
    pub commit: String,
    pub files: Vec<FakeFile>,
    /// When set, requests without `Authorization: Bearer <token>` get 401.
    pub token: Option<String>,
    /// The first full download of this file is cut after half its bytes.
    pub cut_first_download_of: Option<String>,
}

impl FakeRepo {
    pub fn new(repo: &str, files: Vec<FakeFile>) -> Self {
        FakeRepo {
            repo: repo.into(),
            commit: "0123456789abcdef0123456789abcdef01234567".into(),
            files,
            token: None,
            cut_first_download_of: None,
        }
    }
}

/// A request the fake hub answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedRequest {
    pub path: String,
    pub range: Option<String>,
    pub status: u16,
}

/// The server; stops when dropped.
pub struct FakeHub {
    endpoint: String,
    log: Arc<Mutex<Vec<LoggedRequest>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeHub {
    /// Serves `repo` on a free localhost port.
    pub fn start(repo: FakeRepo) -> std::io::Result<FakeHub> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let state = Server {
            repo,
            log: log.clone(),
            cut_done: false,
        };
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || state.run(listener, &stop2));
        Ok(FakeHub {
            endpoint,
            log,
            stop,
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:PORT`, for `HF_ENDPOINT`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Every request answered so far, in order.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the blocking accept so the thread sees the flag.
        let _ = TcpStream::connect(self.endpoint.trim_start_matches("http://"));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Server {
    repo: FakeRepo,
    log: Arc<Mutex<Vec<LoggedRequest>>>,
    cut_done: bool,
}

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Send only this many body bytes, then close (a dropped connection).
    cut_at: Option<usize>,
}

impl Answer {
    fn error(status: u16, code: &str) -> Self {
        Answer {
            status,
            headers: vec![
                ("x-error-code".into(), code.into()),
                ("x-error-message".into(), format!("fake hub: {code}")),
            ],
            body: format!("{{\"error\":\"{code}\"}}").into_bytes(),
            cut_at: None,
        }
    }
}

impl Server {
    fn run(mut self, listener: TcpListener, stop: &AtomicBool) {
        for stream in listener.incoming() {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            if let Ok(s) = stream {
                let _ = self.serve(s);
            }
        }
    }

    fn serve(&mut self, stream: TcpStream) -> std::io::Result<()> {
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut first = String::new();
        reader.read_line(&mut first)?;
        let path = first.split_whitespace().nth(1).unwrap_or("").to_string();
        let (mut range, mut auth) = (None, None);
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "range" => range = Some(v.trim().to_string()),
                    "authorization" => auth = Some(v.trim().to_string()),
                    _ => {}
                }
            }
        }
        let answer = self.answer(&path, range.as_deref(), auth.as_deref());
        if let Ok(mut log) = self.log.lock() {
            log.push(LoggedRequest {
                path,
                range,
                status: answer.status,
            });
        }
        write_answer(stream, answer)
    }

    fn answer(&mut self, path: &str, range: Option<&str>, auth: Option<&str>) -> Answer {
        if let Some(token) = &self.repo.token {
            if auth != Some(format!("Bearer {token}").as_str()) {
                return Answer::error(401, "RepoNotFound");
            }
        }
        let path = path.split('?').next().unwrap_or("");
        let repo = self.repo.repo.clone();
        if let Some(rest) = path.strip_prefix(&format!("/api/models/{repo}/revision/")) {
            return self.listing(rest);
        }
        if let Some(rest) = path.strip_prefix(&format!("/{repo}/resolve/")) {
            if let Some((rev, file)) = rest.split_once('/') {
                return self.file(rev, file, range);
            }
        }
        Answer::error(404, "RepoNotFound")
    }

    fn knows_revision(&self, rev: &str) -> bool {
        rev == "main" || rev == self.repo.commit
    }

    fn listing(&self, rev: &str) -> Answer {
        if !self.knows_revision(rev) {
            return Answer::error(404, "RevisionNotFound");
        }
        let siblings: Vec<serde_json::Value> = self
            .repo
            .files
            .iter()
            .map(|f| {
                let mut s = serde_json::json!({"rfilename": f.name, "size": f.bytes.len()});
                if f.lfs {
                    s["lfs"] = serde_json::json!({
                        "sha256": f.listed_sha256(),
                        "size": f.bytes.len(),
                        "pointerSize": 134,
                    });
                }
                s
            })
            .collect();
        let body = serde_json::json!({
            "id": self.repo.repo,
            "sha": self.repo.commit,
            "siblings": siblings,
        });
        Answer {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string().into_bytes(),
            cut_at: None,
        }
    }

    fn file(&mut self, rev: &str, name: &str, range: Option<&str>) -> Answer {
        if !self.knows_revision(rev) {
            return Answer::error(404, "RevisionNotFound");
        }
        let Some(file) = self.repo.files.iter().find(|f| f.name == name).cloned() else {
            return Answer::error(404, "EntryNotFound");
        };
        let total = file.bytes.len();
        let (start, end) = parse_range(range, total);
        if start >= total.max(1) || end < start {
            return Answer::error(416, "RangeNotSatisfiable");
        }
        let sha = file.listed_sha256();
        let mut headers = vec![
            // A git blob id for plain files; the hub's etag is quoted.
            ("etag".into(), format!("\"{}\"", &sha[..40])),
            ("x-repo-commit".into(), self.repo.commit.clone()),
            ("accept-ranges".into(), "bytes".into()),
        ];
        if file.lfs {
            headers.push(("x-linked-etag".into(), format!("\"{sha}\"")));
            headers.push(("x-linked-size".into(), total.to_string()));
        }
        let body = file.bytes[start..=end.min(total - 1)].to_vec();
        if range.is_some() {
            headers.push((
                "content-range".into(),
                format!("bytes {start}-{}/{total}", start + body.len() - 1),
            ));
        }
        let probe = start == 0 && end == 0;
        let cut =
            !probe && !self.cut_done && self.repo.cut_first_download_of.as_deref() == Some(name);
        if cut {
            self.cut_done = true;
        }
        Answer {
            status: if range.is_some() { 206 } else { 200 },
            cut_at: cut.then_some(body.len() / 2),
            headers,
            body,
        }
    }
}

/// `(first, last)` byte of `Range: bytes=A-[B]`; the whole file without one.
fn parse_range(range: Option<&str>, total: usize) -> (usize, usize) {
    let whole = (0, total.saturating_sub(1));
    let Some(spec) = range.and_then(|r| r.strip_prefix("bytes=")) else {
        return whole;
    };
    let Some((a, b)) = spec.split_once('-') else {
        return whole;
    };
    let start = a.parse().unwrap_or(0);
    let end = b.parse().unwrap_or(total.saturating_sub(1));
    (start, end.min(total.saturating_sub(1)))
}

fn write_answer(mut stream: TcpStream, a: Answer) -> std::io::Result<()> {
    let reason = match a.status {
        200 => "OK",
        206 => "Partial Content",
        401 => "Unauthorized",
        404 => "Not Found",
        _ => "Error",
    };
    let mut head = format!(
        "HTTP/1.1 {} {reason}\r\ncontent-length: {}\r\nconnection: close\r\n",
        a.status,
        a.body.len()
    );
    for (k, v) in &a.headers {
        head += &format!("{k}: {v}\r\n");
    }
    head += "\r\n";
    stream.write_all(head.as_bytes())?;
    let n = a.cut_at.unwrap_or(a.body.len());
    stream.write_all(&a.body[..n])?;
    stream.flush()?;
    if a.cut_at.is_some() {
        stream.shutdown(std::net::Shutdown::Both)?;
    }
    Ok(())
}
