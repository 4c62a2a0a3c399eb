//! The embedding model a server offers on `/v1/embeddings`
//! (`hone serve --embedding-model ID`), with admission control: at most
//! `max_concurrent` embedding requests run at once and the next one gets a
//! 429 with `Retry-After`, as chat completions do
//! ([`crate::chat::admission`]), so a burst of embedding calls cannot queue
//! without bound on the cores generation needs too.

use std::sync::Arc;

use hone_model::embed::EmbeddingModel;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::chat::admission::RETRY_AFTER_SECS;
use crate::error::ApiError;

/// Inputs one request may carry (OpenAI's limit).
pub const MAX_INPUTS: usize = 2048;

/// A loaded embedding model plus its admission limit. Cheap to clone.
#[derive(Clone)]
pub struct EmbeddingService {
    pub model: Arc<EmbeddingModel>,
    admission: Arc<Semaphore>,
}

impl EmbeddingService {
    /// `max_concurrent` is clamped to at least 1.
    pub fn new(model: Arc<EmbeddingModel>, max_concurrent: usize) -> Self {
        EmbeddingService {
            model,
            admission: Arc::new(Semaphore::new(max_concurrent.max(1))),
        }
    }

    /// A slot for one request, or a 429.
    pub fn try_admit(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        self.admission
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::RateLimited {
                retry_after_secs: RETRY_AFTER_SECS,
            })
    }
}

/// The embedding model `hone serve --embedding-model SPEC` serves: an
/// installed id or a model directory; with no SPEC, the registered default
/// (`all-minilm-l6-v2`) when it is installed, else none; `none` turns
/// embeddings off. Like `--model`, it never fetches.
pub fn load_model(
    home: &std::path::Path,
    spec: Option<&str>,
) -> Result<Option<EmbeddingModel>, String> {
    use hone_model::registry::{resolve_path, Registry, ResolvedModel, DEFAULT_EMBEDDING_MODEL_ID};
    let registry = Registry::new(home);
    let installed = |id: &str| -> Result<Option<ResolvedModel>, String> {
        let all = registry.installed().map_err(|e| e.to_string())?;
        Ok(all
            .into_iter()
            .find(|m| m.id == id && m.source.path().exists())
            .map(|m| ResolvedModel {
                id: m.id,
                source: m.source,
            }))
    };
    let resolved = match spec {
        Some("none") => return Ok(None),
        None => match installed(DEFAULT_EMBEDDING_MODEL_ID)? {
            Some(r) => r,
            None => return Ok(None),
        },
        Some(s) if std::path::Path::new(s).exists() => {
            resolve_path(std::path::Path::new(s)).map_err(|e| e.to_string())?
        }
        Some(s) => installed(s)?.ok_or_else(|| {
            format!(
                "--embedding-model '{s}' is neither a model directory nor installed in {}; \
                 run `hone model fetch {s}` with the same HONE_HOME",
                registry.models_dir().display()
            )
        })?,
    };
    let id = resolved.id.clone();
    resolved
        .open_embedding()
        .map(Some)
        .map_err(|e| format!("--embedding-model {id}: {e}"))
}
