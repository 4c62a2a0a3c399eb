//! A blocking client of an OpenAI-compatible server, for `hone data
//! generate` (the teacher) and `hone data export-completions` (reading
//! stored completions): a per-request timeout, and retries with
//! exponential backoff on 429, 5xx and dropped connections, honouring
//! `Retry-After`. Other errors (a 400, a 401, a 404) are not retried: they
//! would fail the same way again.

use std::time::Duration;

use anyhow::anyhow;
use serde_json::Value;

/// Longest wait between two attempts, whatever `Retry-After` says.
const MAX_WAIT: Duration = Duration::from_secs(120);

/// Where the server is and how patiently to talk to it.
#[derive(Debug, Clone)]
pub struct Teacher {
    agent: ureq::Agent,
    /// The API root, ending in `/v1`.
    base: String,
    api_key: Option<String>,
    pub retry: RetryPolicy,
}

/// How often and how long to retry.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts after the first.
    pub max_retries: u32,
    /// The first backoff; each retry doubles it (up to 30 s).
    pub base: Duration,
}

/// Why one attempt failed.
#[derive(Debug)]
pub enum CallError {
    /// Worth another attempt: 429, 5xx, a timeout, a dropped connection or
    /// an answer that is not JSON. `wait` is the server's `Retry-After`.
    Retryable {
        reason: String,
        wait: Option<Duration>,
    },
    /// Will fail again: another 4xx, or a bad URL.
    Fatal(String),
}

impl CallError {
    /// The short reason, for counts ("429", "500", "timeout", ...).
    pub fn reason(&self) -> &str {
        match self {
            CallError::Retryable { reason, .. } => reason,
            CallError::Fatal(m) => m,
        }
    }
}

/// `http://host:port`, `http://host:port/` and `http://host:port/v1` all
/// name the same API root.
pub fn api_root(url: &str) -> String {
    let u = url.trim_end_matches('/');
    if u.ends_with("/v1") {
        u.to_string()
    } else {
        format!("{u}/v1")
    }
}

impl Teacher {
    pub fn new(url: &str, api_key: Option<String>, timeout: Duration, retry: RetryPolicy) -> Self {
        let agent = ureq::AgentBuilder::new().timeout(timeout).build();
        Teacher {
            agent,
            base: api_root(url),
            api_key: api_key.filter(|k| !k.is_empty()),
            retry,
        }
    }

    /// One POST of `body` to `path` (under `/v1`), no retry.
    pub fn post_once(&self, path: &str, body: &Value) -> Result<Value, CallError> {
        let req = self.authorized(self.agent.post(&format!("{}{path}", self.base)));
        answer(req.send_json(body))
    }

    /// One GET of `path` (under `/v1`, with its query), no retry.
    pub fn get_once(&self, path: &str) -> Result<Value, CallError> {
        let req = self.authorized(self.agent.get(&format!("{}{path}", self.base)));
        answer(req.call())
    }

    /// GET with retries; the last error if every attempt failed.
    pub fn get(&self, path: &str) -> anyhow::Result<Value> {
        let mut attempt = 0;
        loop {
            match self.get_once(path) {
                Ok(v) => return Ok(v),
                Err(CallError::Fatal(m)) => return Err(anyhow!("GET {path}: {m}")),
                Err(e @ CallError::Retryable { .. }) => {
                    if attempt >= self.retry.max_retries {
                        return Err(anyhow!(
                            "GET {path}: {} (after {attempt} retries)",
                            e.reason()
                        ));
                    }
                    std::thread::sleep(self.retry.wait(attempt, &e));
                    attempt += 1;
                }
            }
        }
    }

    fn authorized(&self, req: ureq::Request) -> ureq::Request {
        match &self.api_key {
            Some(k) => req.set("Authorization", &format!("Bearer {k}")),
            None => req,
        }
    }
}

impl RetryPolicy {
    /// How long to wait before retry number `attempt` (0-based) after `e`:
    /// the server's `Retry-After` if it sent one, else the backoff.
    pub fn wait(&self, attempt: u32, e: &CallError) -> Duration {
        let backoff = self
            .base
            .saturating_mul(1u32 << attempt.min(16))
            .min(Duration::from_secs(30));
        match e {
            CallError::Retryable { wait: Some(w), .. } => (*w).min(MAX_WAIT),
            _ => backoff,
        }
    }
}

/// Turns ureq's result into JSON or a [`CallError`].
fn answer(r: Result<ureq::Response, ureq::Error>) -> Result<Value, CallError> {
    match r {
        Ok(resp) => {
            let text = resp.into_string().map_err(|e| CallError::Retryable {
                reason: format!("reading the answer failed: {e}"),
                wait: None,
            })?;
            serde_json::from_str(&text).map_err(|_| CallError::Retryable {
                reason: "answer_not_json".into(),
                wait: None,
            })
        }
        Err(ureq::Error::Status(code, resp)) => {
            let wait = resp
                .header("retry-after")
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(Duration::from_secs_f64);
            let body = resp.into_string().unwrap_or_default();
            let message = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                .unwrap_or(body);
            if code == 429 || code >= 500 {
                Err(CallError::Retryable {
                    reason: code.to_string(),
                    wait,
                })
            } else {
                Err(CallError::Fatal(format!("HTTP {code}: {message}")))
            }
        }
        Err(ureq::Error::Transport(t)) => match t.kind() {
            ureq::ErrorKind::InvalidUrl | ureq::ErrorKind::UnknownScheme => {
                Err(CallError::Fatal(t.to_string()))
            }
            ureq::ErrorKind::Io if t.to_string().contains("timed out") => {
                Err(CallError::Retryable {
                    reason: "timeout".into(),
                    wait: None,
                })
            }
            _ => Err(CallError::Retryable {
                reason: "connection".into(),
                wait: None,
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_root_accepts_the_usual_spellings() {
        for u in [
            "http://h:1",
            "http://h:1/",
            "http://h:1/v1",
            "http://h:1/v1/",
        ] {
            assert_eq!(api_root(u), "http://h:1/v1");
        }
    }

    #[test]
    fn retry_after_wins_over_backoff_and_backoff_doubles_to_a_cap() {
        let p = RetryPolicy {
            max_retries: 5,
            base: Duration::from_millis(100),
        };
        let plain = CallError::Retryable {
            reason: "500".into(),
            wait: None,
        };
        assert_eq!(p.wait(0, &plain), Duration::from_millis(100));
        assert_eq!(p.wait(3, &plain), Duration::from_millis(800));
        assert_eq!(p.wait(30, &plain), Duration::from_secs(30));
        let told = CallError::Retryable {
            reason: "429".into(),
            wait: Some(Duration::from_secs(7)),
        };
        assert_eq!(p.wait(0, &told), Duration::from_secs(7));
    }
}
