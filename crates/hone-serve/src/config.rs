//! Server options: one struct for `hone serve`'s flags and environment.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

/// The default port (OpenAI-compatible servers commonly use 8080).
pub const DEFAULT_PORT: u16 = 8080;

/// 512 MiB: the default upload limit.
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 512 * 1024 * 1024;

/// Options of the OpenAI-compatible server.
#[derive(Clone, clap::Args)]
pub struct ServeConfig {
    /// Address to listen on. Without an API key only loopback addresses are
    /// allowed, so an unprotected server is never exposed by accident.
    #[arg(long, env = "HONE_HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,

    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "HONE_PORT", default_value_t = DEFAULT_PORT)]
    pub port: u16,

    /// Data directory: `hone.db`, `files/`, `jobs/`, `adapters/`.
    #[arg(long, env = "HONE_HOME", default_value = ".hone")]
    pub home: PathBuf,

    /// An accepted API key (repeatable; `HONE_API_KEYS` takes a comma-separated
    /// list). Clients send it as `Authorization: Bearer <key>`.
    #[arg(
        long = "api-key",
        env = "HONE_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<String>,

    /// Largest accepted upload, in bytes.
    #[arg(long, env = "HONE_MAX_UPLOAD_BYTES", default_value_t = DEFAULT_MAX_UPLOAD_BYTES)]
    pub max_upload_bytes: u64,

    /// The default project: where `--api-key` keys (and, without any key,
    /// everyone) act, and its name in `organization_id`, `owned_by` and
    /// fine-tuned model names. Keys made by `hone keys create` name their own
    /// project.
    #[arg(long, env = "HONE_ORG", default_value = "hone")]
    pub org: String,

    /// A base model to serve and fine-tune (repeatable): a registry id
    /// (see `hone model list`), a GGUF file or HF directory path, or
    /// `ID=PATH` to name a path. Without it, every installed model is
    /// offered. The first one is the default (its tokenizer counts tokens
    /// in uploaded files).
    #[arg(long = "model", env = "HONE_SERVE_MODELS", value_delimiter = ',')]
    pub models: Vec<String>,

    /// Serve an adapter trained with `hone train` as the model NAME
    /// (repeatable): `--adapter support=runs/support`. It runs on the base
    /// model named in its adapter_config.json when served, else on the default
    /// base, and shares that base's weights with every other adapter.
    #[arg(long = "adapter", value_name = "NAME=DIR")]
    pub adapters: Vec<String>,

    /// Fine-tuning jobs trained at the same time (each loads its own copy
    /// of the base model).
    #[arg(long, env = "HONE_MAX_CONCURRENT_JOBS", default_value_t = 1)]
    pub max_concurrent_jobs: usize,

    /// Also checkpoint a running job every N steps (besides each epoch
    /// end), so a crash loses at most N steps. 0: epoch ends only.
    #[arg(long, env = "HONE_CHECKPOINT_EVERY", default_value_t = 20)]
    pub checkpoint_every: u64,

    /// How fine-tuning jobs hold and multiply the frozen base: auto (bf16
    /// where bf16 products measure faster than f32 on this CPU, else f32),
    /// f32, bf16, q8_0 or native (see
    /// `hone train --base-weights`). A resumed job keeps the mode it started with.
    #[arg(long, env = "HONE_BASE_WEIGHTS", default_value = "auto", value_parser = hone_model::ops::BaseWeights::parse)]
    pub base_weights: hone_model::ops::BaseWeights,

    /// Fine-tuning jobs keep only each layer's input for the backward and
    /// recompute the rest there (see `hone train --gradient-checkpointing`):
    /// activation memory of about one layer, for one more forward pass per step.
    #[arg(long, env = "HONE_GRADIENT_CHECKPOINTING")]
    pub gradient_checkpointing: bool,

    /// Chat completions admitted at once (they decode together, as rows of
    /// one batch per model); more get a 429 with `Retry-After` (0: 16 per
    /// core, at least 32).
    #[arg(long, env = "HONE_MAX_CONCURRENT_CHATS", default_value_t = 0)]
    pub max_concurrent_chats: usize,

    /// KV-cache budget of chat, in MiB, for all models together. Each
    /// request reserves what its rows can grow to (prompt plus max_tokens,
    /// times n; without max_tokens, prompt plus 1024 positions, grown 1024
    /// at a time); over the budget it gets a 429 with `Retry-After`.
    #[arg(long, env = "HONE_KV_CACHE_MB", default_value_t = crate::chat::DEFAULT_KV_CACHE_MB)]
    pub kv_cache_mb: usize,

    /// LoRA adapters kept in memory for chat (least recently used evicted).
    #[arg(long, env = "HONE_MAX_ADAPTERS", default_value_t = crate::chat::DEFAULT_MAX_ADAPTERS)]
    pub max_adapters: usize,

    /// On SIGTERM/Ctrl-C, how long running jobs get to save a checkpoint
    /// before the server exits anyway (such a job resumes from its last
    /// checkpoint at the next start).
    #[arg(long, env = "HONE_SHUTDOWN_TIMEOUT_SECS", default_value_t = 60)]
    pub shutdown_timeout_secs: u64,

    /// The model `/v1/embeddings` serves: an installed id or a model
    /// directory (default: all-minilm-l6-v2 when installed; `none`: off).
    /// At most --max-concurrent-chats embedding requests run at once.
    #[arg(long, env = "HONE_EMBEDDING_MODEL", value_name = "ID")]
    pub embedding_model: Option<String>,

    /// Serve `GET /metrics` (Prometheus) without the API key, for a
    /// scraper on a trusted network. Without it, /metrics needs an admin
    /// key: its labels name every project's served models.
    #[arg(long, env = "HONE_PUBLIC_METRICS")]
    pub public_metrics: bool,
}

impl ServeConfig {
    /// Defaults rooted at `home`, for tests and embedding.
    pub fn new(home: impl Into<PathBuf>) -> Self {
        ServeConfig {
            host: IpAddr::from([127, 0, 0, 1]),
            port: DEFAULT_PORT,
            home: home.into(),
            api_keys: Vec::new(),
            max_upload_bytes: DEFAULT_MAX_UPLOAD_BYTES,
            org: "hone".into(),
            models: Vec::new(),
            adapters: Vec::new(),
            max_concurrent_jobs: 1,
            checkpoint_every: 20,
            base_weights: hone_model::ops::BaseWeights::Auto,
            gradient_checkpointing: false,
            max_concurrent_chats: 0,
            kv_cache_mb: crate::chat::DEFAULT_KV_CACHE_MB,
            max_adapters: crate::chat::DEFAULT_MAX_ADAPTERS,
            shutdown_timeout_secs: 60,
            embedding_model: None,
            public_metrics: false,
        }
    }

    /// The socket address to bind.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }

    /// Keys that are actually usable (empty strings from a stray comma in
    /// `HONE_API_KEYS` would otherwise accept an empty bearer token).
    pub fn usable_keys(&self) -> Vec<String> {
        self.api_keys
            .iter()
            .map(|k| k.trim().to_string())
            .filter(|k| !k.is_empty())
            .collect()
    }

    /// Chat admission limit, with 0 meaning the default.
    pub fn chat_capacity(&self) -> usize {
        match self.max_concurrent_chats {
            0 => crate::chat::default_max_concurrent_chats(),
            n => n,
        }
    }

    /// Refuses to serve without auth on a non-loopback address.
    pub fn check_exposure(&self) -> Result<(), String> {
        self.check_exposure_with(0)
    }

    /// As [`Self::check_exposure`], counting `stored_keys` keys made with
    /// `hone keys create` (active in `hone.db`).
    pub fn check_exposure_with(&self, stored_keys: usize) -> Result<(), String> {
        if self.usable_keys().is_empty() && stored_keys == 0 && !self.host.is_loopback() {
            return Err(format!(
                "refusing to listen on {} without an API key: create one with `hone keys create`, \
                 pass --api-key (or HONE_API_KEYS), or bind a loopback address",
                self.host
            ));
        }
        Ok(())
    }
}

/// Keys are redacted: configs get logged.
impl fmt::Debug for ServeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServeConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("home", &self.home)
            .field(
                "api_keys",
                &format_args!("[{} redacted]", self.usable_keys().len()),
            )
            .field("max_upload_bytes", &self.max_upload_bytes)
            .field("org", &self.org)
            .field("models", &self.models)
            .field("adapters", &self.adapters)
            .field("max_concurrent_jobs", &self.max_concurrent_jobs)
            .field("checkpoint_every", &self.checkpoint_every)
            .field("base_weights", &self.base_weights)
            .field("gradient_checkpointing", &self.gradient_checkpointing)
            .field("max_concurrent_chats", &self.max_concurrent_chats)
            .field("kv_cache_mb", &self.kv_cache_mb)
            .field("max_adapters", &self.max_adapters)
            .field("shutdown_timeout_secs", &self.shutdown_timeout_secs)
            .field("public_metrics", &self.public_metrics)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeConfig,
    }

    #[test]
    fn debug_redacts_keys() {
        let mut c = ServeConfig::new("/tmp/x");
        c.api_keys = vec!["sk-secret-1".into(), "sk-secret-2".into()];
        let s = format!("{c:?}");
        assert!(!s.contains("secret"), "{s}");
        assert!(s.contains("2 redacted"), "{s}");
    }

    #[test]
    fn flags_parse_with_repeatable_keys() {
        let cli = Cli::try_parse_from([
            "x",
            "--api-key",
            "a",
            "--api-key",
            "b,c",
            "--max-upload-bytes",
            "10",
            "--port",
            "0",
        ])
        .unwrap();
        assert_eq!(cli.serve.api_keys, vec!["a", "b", "c"]);
        assert_eq!(cli.serve.max_upload_bytes, 10);
    }

    #[test]
    fn no_key_means_loopback_only() {
        let mut c = ServeConfig::new("/tmp/x");
        assert!(c.check_exposure().is_ok());
        c.host = IpAddr::from([0, 0, 0, 0]);
        assert!(c.check_exposure().is_err());
        c.api_keys = vec!["  ".into(), "".into()];
        assert!(c.check_exposure().is_err(), "blank keys do not count");
        c.api_keys = vec!["k".into()];
        assert!(c.check_exposure().is_ok());
        c.api_keys = vec![];
        assert!(c.check_exposure_with(1).is_ok(), "a stored key counts");
    }
}
