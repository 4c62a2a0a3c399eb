//! `hf:ORG/NAME[@REV]`: base models fetched from a Hugging Face hub with the
//! `hf-hub` crate (its blocking client), then registered like the pinned
//! models so the same spec resolves later without network.
//!
//! Files are kept in hf-hub's cache layout under `$HONE_HOME/models/hf`
//! (not `HF_HOME`: everything hone fetches lives under one home):
//! `models--ORG--NAME/blobs/<etag>` holds the bytes, and
//! `models--ORG--NAME/snapshots/<commit>/<file>` links to them. A GGUF repo
//! registers one file of that snapshot; a safetensors repo registers the
//! snapshot directory. hf-hub downloads into `blobs/<etag>.part` and resumes
//! from it with a `Range` request, both after a dropped connection (a few
//! retries in the same run) and on the next run. Every file is then checked
//! against the size the hub lists and, where the hub gives one (LFS files),
//! its sha256; a bad file is deleted.
//!
//! `HF_ENDPOINT` picks the hub (default `https://huggingface.co`) and
//! `HF_TOKEN` authenticates (private or gated repos).

use std::fs;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::{Api, ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Cache, Repo, RepoType};
use serde::{Deserialize, Serialize};

pub use super::hub_error::HubError;
use super::hub_files::{check_file, select_files, RepoListing, Selection, Sibling};
use super::{io_err, unix_now, InstalledModel, ModelSource, Registry};
use super::{ResolvedModel, Result};

/// The prefix that marks a hub spec in `--model` and `hone model fetch`.
pub const HUB_PREFIX: &str = "hf:";

/// The hub used when `HF_ENDPOINT` is not set.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Where to fetch from and as whom; from `HF_ENDPOINT` and `HF_TOKEN` by
/// default.
#[derive(Debug, Clone)]
pub struct HubSettings {
    pub endpoint: String,
    pub token: Option<String>,
    /// In-run retries of a dropped download, each resuming where it stopped.
    pub retries: usize,
}

impl HubSettings {
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        HubSettings {
            endpoint: var("HF_ENDPOINT")
                .map(|e| e.trim_end_matches('/').to_string())
                .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string()),
            token: var("HF_TOKEN"),
            retries: 3,
        }
    }
}

/// A parsed `hf:ORG/NAME[@REV]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubSpec {
    /// `ORG/NAME`.
    pub repo: String,
    /// A branch, tag or commit; `None` means `main`.
    pub revision: Option<String>,
}

impl HubSpec {
    /// `None` when `spec` does not start with `hf:` (so it is some other
    /// kind of `--model` value); an error when it does but is malformed.
    pub fn parse(spec: &str) -> Option<std::result::Result<HubSpec, HubError>> {
        let rest = spec.strip_prefix(HUB_PREFIX)?;
        let (repo, revision) = match rest.split_once('@') {
            Some((r, rev)) => (r, Some(rev)),
            None => (rest, None),
        };
        let ok_part = |s: &str| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        let valid_repo =
            matches!(repo.split_once('/'), Some((org, name)) if ok_part(org) && ok_part(name));
        let valid_rev = revision.is_none_or(|r| {
            !r.is_empty() && !r.contains("..") && !r.chars().any(|c| c.is_whitespace())
        });
        if !valid_repo || !valid_rev {
            return Some(Err(HubError::BadSpec(spec.to_string())));
        }
        Some(Ok(HubSpec {
            repo: repo.to_string(),
            revision: revision.map(str::to_string),
        }))
    }

    /// The registry id: `hf--ORG--NAME` (plus `--REV` when one was given).
    /// Ids carry no '/' or ':' because they appear in `ft:` model names.
    pub fn model_id(&self) -> String {
        let mut id = format!("hf--{}", self.repo.replace('/', "--"));
        if let Some(rev) = &self.revision {
            id += "--";
            id += &rev.replace('/', "-");
        }
        id
    }

    fn revision(&self) -> &str {
        self.revision.as_deref().unwrap_or("main")
    }

    fn display(&self) -> String {
        format!("{}{}@{}", HUB_PREFIX, self.repo, self.revision())
    }
}

/// Where a registered model came from on the hub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubOrigin {
    pub endpoint: String,
    pub repo: String,
    /// The revision asked for (`main` when none was).
    pub revision: String,
    /// The commit it pointed to when fetched.
    pub commit: String,
    /// The files fetched.
    pub files: Vec<String>,
}

impl Registry {
    /// The directory hf-hub's cache lives in: `$HONE_HOME/models/hf`.
    pub fn hub_dir(&self) -> PathBuf {
        self.models_dir.join("hf")
    }

    /// Fetches `spec` (when `file` is given, that GGUF file of the repo),
    /// checks every file, registers it as [`HubSpec::model_id`] and returns
    /// it. Files already downloaded are checked, not fetched again.
    pub fn fetch_hub(&self, spec: &HubSpec, file: Option<&str>) -> Result<ResolvedModel> {
        let api = self.hub_api()?;
        let listing = self.list_repo(&api, spec)?;
        let selection = select_files(&spec.repo, &listing.siblings, file)?;
        // Pinning the listed commit makes every file come from the same
        // snapshot even if the branch moves during the download.
        let repo = api.repo(Repo::with_revision(
            spec.repo.clone(),
            RepoType::Model,
            listing.sha.clone(),
        ));
        let names = match &selection {
            Selection::Gguf(f) => {
                eprintln!("Fetching {f} from {}", spec.display());
                vec![f.clone()]
            }
            Selection::Safetensors(files) => {
                eprintln!("Fetching {} files from {}", files.len(), spec.display());
                files.clone()
            }
        };
        let mut paths = Vec::with_capacity(names.len());
        for name in &names {
            let sibling = listing.siblings.iter().find(|s| &s.rfilename == name);
            paths.push(self.download_checked(&repo, spec, name, sibling)?);
        }
        let source = match selection {
            Selection::Gguf(_) => ModelSource::Gguf(paths.remove(0)),
            Selection::Safetensors(_) => {
                let dir = paths[0].parent().map(Path::to_path_buf).unwrap_or_default();
                ModelSource::HfDir(dir)
            }
        };
        let sha256 = match &source {
            ModelSource::Gguf(_) => listing
                .siblings
                .iter()
                .find(|s| s.rfilename == names[0])
                .and_then(|s| s.lfs.as_ref())
                .map(|l| l.sha256.clone()),
            ModelSource::HfDir(_) => None,
        };
        let entry = InstalledModel {
            id: spec.model_id(),
            source: source.clone(),
            sha256,
            installed_at: unix_now(),
            hub: Some(HubOrigin {
                endpoint: self.hub.endpoint.clone(),
                repo: spec.repo.clone(),
                revision: spec.revision().to_string(),
                commit: listing.sha,
                files: names,
            }),
        };
        self.register_entry(entry)?;
        Ok(ResolvedModel {
            id: spec.model_id(),
            source,
        })
    }

    fn hub_api(&self) -> Result<Api> {
        let dir = self.hub_dir();
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        // `from_cache` rather than `new`: `new` looks up the home directory
        // for HF's default cache and token, which hone does not use.
        ApiBuilder::from_cache(Cache::new(dir))
            .with_endpoint(self.hub.endpoint.clone())
            .with_token(self.hub.token.clone())
            .with_retries(self.hub.retries)
            .with_user_agent("hone", env!("CARGO_PKG_VERSION"))
            .build()
            .map_err(|e| self.hub_error(e, "the hub client".into()).into())
    }

    fn list_repo(&self, api: &Api, spec: &HubSpec) -> Result<RepoListing> {
        let what = format!("repo {} at revision '{}'", spec.repo, spec.revision());
        let repo = api.repo(Repo::with_revision(
            spec.repo.clone(),
            RepoType::Model,
            spec.revision().to_string(),
        ));
        let body = repo
            .info_request()
            .query("blobs", "true")
            .call()
            .map_err(|e| self.hub_error(ApiError::RequestError(Box::new(e)), what.clone()))?
            .into_string()
            .map_err(|e| HubError::BadAnswer {
                what: what.clone(),
                reason: e.to_string(),
            })?;
        serde_json::from_str(&body).map_err(|e| {
            HubError::BadAnswer {
                what,
                reason: format!("the listing is not the expected JSON ({e})"),
            }
            .into()
        })
    }

    /// Downloads one file (resuming a partial one) and checks its size and
    /// sha256 against the listing; deletes it when they differ.
    fn download_checked(
        &self,
        repo: &ApiRepo,
        spec: &HubSpec,
        name: &str,
        sibling: Option<&Sibling>,
    ) -> Result<PathBuf> {
        let path = repo.get(name).map_err(|e| match e {
            ApiError::IoError(io) => HubError::Download {
                repo: spec.repo.clone(),
                file: name.to_string(),
                reason: io.to_string(),
            },
            ApiError::TooManyRetries(inner) => HubError::Download {
                repo: spec.repo.clone(),
                file: name.to_string(),
                reason: format!(
                    "still failing after {} retries: {}",
                    self.hub.retries,
                    self.hub_error(*inner, format!("{name} of {}", spec.repo))
                ),
            },
            other => self.hub_error(other, format!("{name} of {}", spec.repo)),
        })?;
        let blob = fs::canonicalize(&path).map_err(io_err(&path))?;
        if let Err(e) = check_file(&blob, sibling) {
            // The blob and the snapshot link both go: a next fetch starts over.
            let _ = fs::remove_file(&blob);
            let _ = fs::remove_file(&path);
            let (expected, actual) = e;
            return Err(HubError::Checksum {
                repo: spec.repo.clone(),
                file: name.to_string(),
                expected,
                actual,
            }
            .into());
        }
        Ok(path)
    }

    /// Turns an hf-hub error into a [`HubError`] that names the setting to
    /// change (`HF_ENDPOINT`, `HF_TOKEN`) or the thing that is missing.
    fn hub_error(&self, e: ApiError, what: String) -> HubError {
        let endpoint = self.hub.endpoint.clone();
        match e {
            ApiError::RequestError(err) => {
                let reason = err.to_string();
                let Some(resp) = (*err).into_response() else {
                    return HubError::Unreachable { endpoint, reason };
                };
                let status = resp.status();
                let code = resp.header("x-error-code").unwrap_or("").to_string();
                let message = resp
                    .header("x-error-message")
                    .map(|m| format!(" ({m})"))
                    .unwrap_or_default();
                match status {
                    401 | 403 => HubError::Denied {
                        what,
                        status,
                        hint: match (self.hub.token.is_some(), code.as_str()) {
                            (_, "GatedRepo") => {
                                "the repo is gated: accept its terms on the hub, then set \
                                 HF_TOKEN to a token of that account"
                            }
                            (false, _) => {
                                "it is private, gated or does not exist; set HF_TOKEN to a \
                                 token with read access"
                            }
                            (true, _) => {
                                "HF_TOKEN is set but has no access to it (wrong or expired \
                                 token, or the repo does not exist)"
                            }
                        },
                        message,
                    },
                    404 => HubError::NotFound {
                        what: match code.as_str() {
                            "RevisionNotFound" => format!("the revision of {what}"),
                            "EntryNotFound" => format!("file {what}"),
                            _ => what,
                        },
                        endpoint,
                        message,
                    },
                    _ => HubError::Http {
                        what,
                        status,
                        message,
                    },
                }
            }
            ApiError::MissingHeader(h) | ApiError::InvalidHeader(h) => HubError::BadAnswer {
                what,
                reason: format!(
                    "header '{h}' is missing or invalid; is HF_ENDPOINT ({endpoint}) a \
                     Hugging Face hub?"
                ),
            },
            ApiError::LockAcquisition(p) => HubError::BadAnswer {
                what,
                reason: format!(
                    "another process is downloading the same file (lock {})",
                    p.display()
                ),
            },
            other => HubError::BadAnswer {
                what,
                reason: other.to_string(),
            },
        }
    }
}
