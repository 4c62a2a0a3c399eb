//! `hone bench serve`: end-to-end serving speed over HTTP, as a user of the
//! OpenAI API sees it. For each level of concurrency C it starts `hone
//! serve` (this binary, on a temporary HONE_HOME, `--max-concurrent-chats
//! C`), lets C clients stream chat completions at once, and reports the
//! aggregate generated tokens/s, p50/p95 time to first token and
//! inter-token latency, the 429 count and the server's peak RSS.
//!
//! With `--llama-server PATH`, llama.cpp's server runs the same clients on
//! the same GGUF with the same threads (`-np C`, continuous batching). The
//! two alternate within each level (the order flips from level to level),
//! so both see the same machine load; compare them as ratios.
//!
//! With `--adapters N`, N distinct LoRA adapters are made once
//! ([`adapters`]) and served on the base (`--adapter`); each level then also
//! runs with the clients spread over the N adapters and with all of them on
//! one adapter, alternating, so their ratio is the cost of mixing adapters
//! in one batch.
//!
//! Each client sends at least `--requests-per-client` requests and keeps
//! sending until the level has lasted `--min-seconds`, so that every level
//! is long enough to measure. A client that gets a 429 counts it, waits the
//! `Retry-After` second and sends the request again, as the OpenAI SDK
//! does. A table of every level goes to stderr at the end.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hone_model::registry::{ModelSource, DEFAULT_MODEL_ID};
use serde_json::{json, Value};

use super::{loadavg, round2};

mod adapters;

/// Realistic chat turns: a system prompt and questions that want a
/// paragraph, so that most answers run to the token limit.
const SYSTEM: &str = "You are a helpful assistant. Answer clearly and in full sentences.";
const PROMPTS: [&str; 12] = [
    "Explain how a refrigerator keeps food cold.",
    "Write a short story about a robot who learns to paint.",
    "What are the main causes of inflation, and how do central banks respond?",
    "Give me three tips for writing a good cover letter, with an example of each.",
    "Describe the water cycle to a ten-year-old.",
    "What is the difference between a list and a tuple in Python? Show an example.",
    "Plan a one-day walking tour of Rome for a first-time visitor.",
    "Why is the sky blue? Explain the physics simply.",
    "Summarize the plot of Romeo and Juliet in a paragraph.",
    "How do I make a simple tomato sauce from scratch?",
    "What should I consider when choosing a laptop for programming?",
    "Explain what a hash table is and why lookups are fast.",
];

/// How long a server may take to load its model and answer `/health`.
const START_TIMEOUT: Duration = Duration::from_secs(180);

#[derive(clap::Args)]
pub struct ServeBenchArgs {
    /// Model id or GGUF path (served by hone; its GGUF for llama-server).
    #[arg(long, env = "HONE_MODEL", default_value = DEFAULT_MODEL_ID)]
    pub model: String,
    /// Levels of concurrent streaming clients, measured one after another.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16")]
    pub clients: Vec<usize>,
    /// Requests each client sends at least, one after another, per level.
    #[arg(long, default_value_t = 2)]
    pub requests_per_client: usize,
    /// Clients keep sending requests until the level has lasted this long.
    #[arg(long, default_value_t = 5.0)]
    pub min_seconds: f64,
    /// Also serve N distinct LoRA adapters (made for the run) and measure
    /// the clients spread over them against all on one of them.
    #[arg(long, default_value_t = 0)]
    pub adapters: usize,
    /// `max_tokens` of each request.
    #[arg(long, default_value_t = 96)]
    pub max_tokens: usize,
    /// `temperature` of each request.
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f32,
    /// Compute threads of each server (default: all cores).
    #[arg(long, env = "HONE_THREADS")]
    pub threads: Option<usize>,
    /// llama.cpp's `llama-server` binary: also measure it, alternating.
    #[arg(long, value_name = "PATH")]
    pub llama_server: Option<PathBuf>,
}

/// What a level runs: hone on the base model, llama.cpp's server, or hone
/// with `--adapters` (all clients on one adapter, or spread over all).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Hone,
    Llama,
    OneAdapter,
    Adapters,
}

impl Kind {
    fn key(self) -> &'static str {
        match self {
            Kind::Hone => "hone",
            Kind::Llama => "llama_server",
            Kind::OneAdapter => "hone_one_adapter",
            Kind::Adapters => "hone_adapters",
        }
    }

    /// The model client `c` asks for.
    fn model<'a>(self, base: &'a str, adapters: &'a [(String, PathBuf)], c: usize) -> &'a str {
        match self {
            Kind::Hone | Kind::Llama => base,
            Kind::OneAdapter => &adapters[0].0,
            Kind::Adapters => &adapters[c % adapters.len()].0,
        }
    }
}

/// Ratios reported per level: (name, numerator, denominator).
const RATIOS: [(&str, Kind, Kind); 2] = [
    ("hone_over_llama_server", Kind::Hone, Kind::Llama),
    (
        "adapters_over_one_adapter",
        Kind::Adapters,
        Kind::OneAdapter,
    ),
];

pub fn run(args: ServeBenchArgs) -> anyhow::Result<ExitCode> {
    if args.clients.is_empty() || args.clients.contains(&0) {
        bail!("--clients must list levels of at least 1");
    }
    if args.requests_per_client == 0 || args.max_tokens == 0 {
        bail!("--requests-per-client and --max-tokens must be at least 1");
    }
    if !(args.min_seconds.is_finite() && args.min_seconds >= 0.0) {
        bail!("--min-seconds must be a number of seconds, at least 0");
    }
    let resolved = hone_model::registry::resolve(&args.model)
        .with_context(|| format!("resolving model '{}'", args.model))?;
    let ModelSource::Gguf(gguf) = &resolved.source else {
        bail!("hone bench serve needs a GGUF model (llama-server reads only GGUF)");
    };
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut kinds = vec![Kind::Hone];
    if args.llama_server.is_some() {
        kinds.push(Kind::Llama);
    }
    let adapter_dir = tempfile::tempdir().context("making a directory for the adapters")?;
    let adapters = if args.adapters > 0 {
        kinds.extend([Kind::OneAdapter, Kind::Adapters]);
        adapters::write(gguf, &resolved.id, args.adapters, adapter_dir.path())?
    } else {
        Vec::new()
    };
    let load_before = loadavg();
    let mut levels = Vec::new();
    for (i, &c) in args.clients.iter().enumerate() {
        let mut level = json!({ "clients": c });
        let mut order = kinds.clone();
        if i % 2 == 1 {
            order.reverse();
        }
        for kind in order {
            let served = if kind == Kind::Hone || kind == Kind::Llama {
                &[][..]
            } else {
                &adapters[..]
            };
            let server = Server::start(kind, &args, &resolved.id, gguf, threads, c, served)?;
            let models: Vec<&str> = (0..c)
                .map(|i| kind.model(&resolved.id, &adapters, i))
                .collect();
            let stats = drive(&server, &models, &args)?;
            let mut v = stats.to_json();
            v["peak_rss_mb"] = json!(server.peak_rss_mb());
            level[kind.key()] = v;
            eprintln!("bench serve: C={c} {}: {}", kind.key(), level[kind.key()]);
        }
        for (name, num, den) in RATIOS {
            if let (Some(a), Some(b)) = (
                level[num.key()]["tokens_per_s"].as_f64(),
                level[den.key()]["tokens_per_s"].as_f64(),
            ) {
                level[name] = json!(round2(a / b.max(1e-9)));
            }
        }
        levels.push(level);
    }
    eprint!("{}", table(&levels, &kinds));
    let out = json!({
        "bench": "serve",
        "model": resolved.id,
        "threads": threads,
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "requests_per_client": args.requests_per_client,
        "min_seconds": args.min_seconds,
        "adapters": args.adapters,
        "levels": levels,
        "load_before": load_before,
        "load_after": loadavg(),
    });
    println!("{out}");
    Ok(ExitCode::SUCCESS)
}

/// The levels as a text table (one line per level and server), then the
/// ratios of each level.
fn table(levels: &[Value], kinds: &[Kind]) -> String {
    let mut out = format!(
        "{:>3}  {:<17} {:>8} {:>9} {:>9} {:>8} {:>8} {:>5} {:>8}\n",
        "C", "server", "tok/s", "TTFT p50", "TTFT p95", "ITL p50", "ITL p95", "429", "peak MB"
    );
    let num = |v: &Value| v.as_f64().map_or("-".into(), |x| format!("{x:.1}"));
    for level in levels {
        let c = level["clients"].to_string();
        for kind in kinds {
            let v = &level[kind.key()];
            out += &format!(
                "{c:>3}  {:<17} {:>8} {:>9} {:>9} {:>8} {:>8} {:>5} {:>8}\n",
                kind.key(),
                num(&v["tokens_per_s"]),
                num(&v["ttft_p50_ms"]),
                num(&v["ttft_p95_ms"]),
                num(&v["itl_p50_ms"]),
                num(&v["itl_p95_ms"]),
                v["http_429"].to_string(),
                v["peak_rss_mb"].to_string(),
            );
        }
    }
    for level in levels {
        let ratios: Vec<String> = RATIOS
            .iter()
            .filter_map(|(name, ..)| Some(format!("{name} {}", level[*name].as_f64()?)))
            .collect();
        if !ratios.is_empty() {
            out += &format!("C={}: {}\n", level["clients"], ratios.join(", "));
        }
    }
    out
}

/// A server process on a free local port, killed when dropped.
struct Server {
    child: Child,
    base: String,
    _home: Option<tempfile::TempDir>,
}

impl Server {
    fn start(
        kind: Kind,
        args: &ServeBenchArgs,
        id: &str,
        gguf: &Path,
        threads: usize,
        clients: usize,
        adapters: &[(String, PathBuf)],
    ) -> anyhow::Result<Server> {
        let port = free_port()?;
        let (cmd, home) = match kind {
            Kind::Hone | Kind::OneAdapter | Kind::Adapters => {
                hone_command(id, gguf, threads, clients, port, adapters)?
            }
            Kind::Llama => {
                let bin = args.llama_server.as_deref().context("no --llama-server")?;
                (llama_command(bin, gguf, threads, clients, port), None)
            }
        };
        let mut cmd = cmd;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", kind.key()))?;
        let mut server = Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
            _home: home,
        };
        server.wait_ready(kind)?;
        Ok(server)
    }

    /// Polls `/health` until it answers 200 (llama-server answers 503
    /// while loading), failing early if the process exits.
    fn wait_ready(&mut self, kind: Kind) -> anyhow::Result<()> {
        let t0 = Instant::now();
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(2))
            .build();
        while t0.elapsed() < START_TIMEOUT {
            if let Some(status) = self.child.try_wait()? {
                bail!("{} exited while starting ({status})", kind.key());
            }
            if let Ok(r) = agent.get(&format!("{}/health", self.base)).call() {
                if r.status() == 200 {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!("{} did not become ready in {START_TIMEOUT:?}", kind.key())
    }

    /// The process's peak resident memory (VmHWM) in MB.
    fn peak_rss_mb(&self) -> Option<u64> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `hone serve` (this binary) on a fresh HONE_HOME, serving `gguf` as `id`
/// and each of `adapters` on it. Admission slots are twice the clients, a
/// margin (a streamed request frees its slot before its last chunk) so no
/// delay turns into a 429 that measures nothing.
fn hone_command(
    id: &str,
    gguf: &Path,
    threads: usize,
    clients: usize,
    port: u16,
    adapters: &[(String, PathBuf)],
) -> anyhow::Result<(Command, Option<tempfile::TempDir>)> {
    let home = tempfile::tempdir().context("making a temporary HONE_HOME")?;
    let exe = std::env::current_exe().context("finding the hone binary")?;
    let mut cmd = Command::new(exe);
    cmd.arg("serve")
        .arg("--home")
        .arg(home.path())
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .arg("--model")
        .arg(format!("{id}={}", gguf.display()))
        .args(["--max-concurrent-chats", &(2 * clients).to_string()])
        .args(["--max-adapters", &adapters.len().max(1).to_string()])
        .args(["--embedding-model", "none"])
        .env("RAYON_NUM_THREADS", threads.to_string())
        .env_remove("HONE_API_KEYS");
    for (name, dir) in adapters {
        cmd.arg("--adapter")
            .arg(format!("{name}={}", dir.display()));
    }
    Ok((cmd, Some(home)))
}

/// llama.cpp's server with `clients` slots and continuous batching; its
/// shared libraries are looked for beside the binary.
fn llama_command(bin: &Path, gguf: &Path, threads: usize, clients: usize, port: u16) -> Command {
    let mut cmd = Command::new(bin);
    if let Some(dir) = bin.parent() {
        let old = std::env::var("LD_LIBRARY_PATH").unwrap_or_default();
        cmd.env("LD_LIBRARY_PATH", format!("{}:{old}", dir.display()));
    }
    let t = threads.to_string();
    cmd.arg("-m")
        .arg(gguf)
        .args(["-t", &t, "-tb", &t])
        .args(["-np", &clients.to_string()])
        .args(["-c", &(clients * 1024).to_string()])
        .arg("--cont-batching")
        .args(["--host", "127.0.0.1", "--port", &port.to_string()]);
    cmd
}

/// A port free right now (the server binds it a moment later).
fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// What one level measured on one server.
#[derive(Default)]
struct Stats {
    wall_s: f64,
    requests: usize,
    errors: usize,
    rate_limited: usize,
    tokens: u64,
    ttft: Vec<f64>,
    itl: Vec<f64>,
}

impl Stats {
    fn to_json(&self) -> Value {
        let ms = |v: &[f64], p: f64| percentile(v, p).map(|s| round2(s * 1000.0));
        json!({
            "tokens_per_s": round2(self.tokens as f64 / self.wall_s.max(1e-9)),
            "ttft_p50_ms": ms(&self.ttft, 0.5),
            "ttft_p95_ms": ms(&self.ttft, 0.95),
            "itl_p50_ms": ms(&self.itl, 0.5),
            "itl_p95_ms": ms(&self.itl, 0.95),
            "requests": self.requests,
            "errors": self.errors,
            "http_429": self.rate_limited,
            "generated_tokens": self.tokens,
            "wall_s": round2(self.wall_s),
        })
    }

    fn add(&mut self, other: Stats) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.rate_limited += other.rate_limited;
        self.tokens += other.tokens;
        self.ttft.extend(other.ttft);
        self.itl.extend(other.itl);
    }
}

/// The `p` quantile (0..=1) of `v`, nearest rank.
fn percentile(v: &[f64], p: f64) -> Option<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let i = ((s.len() as f64 - 1.0) * p).round() as usize;
    s.get(i).copied()
}

/// One warm-up request per distinct model (loading its adapter), then one
/// thread per entry of `models` (client `c` asks for `models[c]`), each
/// sending streamed requests: at least `requests_per_client`, and more
/// until `min_seconds` have passed.
fn drive(server: &Server, models: &[&str], args: &ServeBenchArgs) -> anyhow::Result<Stats> {
    let url = format!("{}/v1/chat/completions", server.base);
    let mut distinct = models.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    for model in distinct {
        let warm = stream_one(&url, &body(model, PROMPTS[0], 8, args.temperature, 0));
        if let Err(e) = warm {
            bail!("the warm-up request to {url} ({model}) failed: {e}");
        }
    }
    let t0 = Instant::now();
    let until = t0 + Duration::from_secs_f64(args.min_seconds);
    let mut total = Stats::default();
    let per_client: Vec<Stats> = std::thread::scope(|s| {
        let handles: Vec<_> = models
            .iter()
            .enumerate()
            .map(|(c, model)| {
                let url = &url;
                s.spawn(move || client(url, model, c, args, until))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    total.wall_s = t0.elapsed().as_secs_f64();
    for s in per_client {
        total.add(s);
    }
    Ok(total)
}

/// Client `c`: its requests one after another (at least
/// `requests_per_client`, then more until `until`), retrying after a 429.
fn client(url: &str, model: &str, c: usize, args: &ServeBenchArgs, until: Instant) -> Stats {
    let mut st = Stats::default();
    for r in 0.. {
        if r >= args.requests_per_client && Instant::now() >= until {
            break;
        }
        // 7 is prime to the 12 prompts: the clients start on different ones.
        let prompt = PROMPTS[(c * 7 + r) % PROMPTS.len()];
        let seed = ((c as u64) << 32) | r as u64;
        let req = body(model, prompt, args.max_tokens, args.temperature, seed);
        loop {
            match stream_one(url, &req) {
                Ok(one) => {
                    st.requests += 1;
                    st.tokens += one.tokens;
                    st.ttft.extend(one.ttft);
                    st.itl.extend(one.itl);
                    break;
                }
                Err(Failure::Busy(wait)) => {
                    st.rate_limited += 1;
                    std::thread::sleep(wait);
                }
                Err(Failure::Other(e)) => {
                    eprintln!("bench serve: request failed: {e}");
                    st.errors += 1;
                    break;
                }
            }
        }
    }
    st
}

fn body(model: &str, prompt: &str, max_tokens: usize, temperature: f32, seed: u64) -> String {
    json!({
        "model": model,
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": prompt},
        ],
        "max_tokens": max_tokens,
        "temperature": temperature,
        "seed": seed,
        "stream": true,
        "stream_options": {"include_usage": true},
    })
    .to_string()
}

/// One streamed request's timings.
struct OneStream {
    tokens: u64,
    ttft: Option<f64>,
    itl: Vec<f64>,
}

enum Failure {
    /// A 429: wait this long, then send again.
    Busy(Duration),
    Other(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Busy(d) => write!(f, "429 (retry after {d:?})"),
            Failure::Other(e) => f.write_str(e),
        }
    }
}

/// Sends `body` and reads the SSE answer, timing each content delta. The
/// tokens are the usage chunk's `completion_tokens`, else the deltas.
fn stream_one(url: &str, body: &str) -> Result<OneStream, Failure> {
    let t0 = Instant::now();
    let resp = ureq::post(url)
        .set("content-type", "application/json")
        .send_string(body);
    let resp = match resp {
        Ok(r) => r,
        Err(ureq::Error::Status(429, r)) => {
            let secs = r.header("retry-after").and_then(|s| s.parse().ok());
            return Err(Failure::Busy(Duration::from_secs(secs.unwrap_or(1))));
        }
        Err(e) => return Err(Failure::Other(e.to_string())),
    };
    let mut out = OneStream {
        tokens: 0,
        ttft: None,
        itl: Vec::new(),
    };
    let (mut last, mut deltas, mut usage) = (None::<Instant>, 0u64, None);
    for line in BufReader::new(resp.into_reader()).lines() {
        let line = line.map_err(|e| Failure::Other(format!("reading the stream: {e}")))?;
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            break;
        }
        let v: Value = serde_json::from_str(data)
            .map_err(|e| Failure::Other(format!("a chunk is not JSON ({e}): {data}")))?;
        if let Some(e) = v.get("error") {
            return Err(Failure::Other(format!("error in the stream: {e}")));
        }
        if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
            usage = Some(n);
        }
        let has_text = v["choices"][0]["delta"]["content"]
            .as_str()
            .is_some_and(|s| !s.is_empty());
        if has_text {
            let now = Instant::now();
            match last {
                None => out.ttft = Some((now - t0).as_secs_f64()),
                Some(prev) => out.itl.push((now - prev).as_secs_f64()),
            }
            last = Some(now);
            deltas += 1;
        }
    }
    out.tokens = usage.unwrap_or(deltas);
    Ok(out)
}
