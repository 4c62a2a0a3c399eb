//! Crash-safe checkpoint directories (architecture.md, "Storage").
//!
//! A checkpoint is written into `step-N.tmp/`: its files first, each fsynced, then
//! `manifest.json` with the size and sha256 of every file, written last. The directory is
//! fsynced, renamed to `step-N/`, and the parent fsynced. A crash at any point leaves
//! either a `.tmp` directory (ignored) or a complete checkpoint. Resume takes the newest
//! checkpoint whose manifest verifies, so a torn or corrupted one falls back to the one
//! before it; old checkpoints are pruned only after a new one is committed.

use crate::error::{io_err, Result, TrainError};

/// Where checkpoints go, inside a run's output directory.
pub const CHECKPOINTS_DIR: &str = "checkpoints";
use hone_model::atomic_file;
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

pub const MANIFEST_FILE: &str = "manifest.json";
const FORMAT_VERSION: u32 = 1;
const TMP_SUFFIX: &str = ".tmp";

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub step: u64,
    pub files: Vec<ManifestEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ManifestEntry {
    pub name: String,
    pub size: u64,
    /// Lowercase hex.
    pub sha256: String,
}

/// A committed, verified checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub step: u64,
    pub path: PathBuf,
    pub manifest: Manifest,
}

impl Checkpoint {
    /// Path of one of its files.
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

/// The directory name of the checkpoint for `step`.
pub fn dir_name(step: u64) -> String {
    format!("step-{step}")
}

/// The step of a committed checkpoint directory name (`step-N`, canonical digits only).
fn parse_dir_name(name: &str) -> Option<u64> {
    let step: u64 = name.strip_prefix("step-")?.parse().ok()?;
    (dir_name(step) == name).then_some(step)
}

fn checkpoint_err(path: &Path, message: impl Into<String>) -> TrainError {
    TrainError::Checkpoint {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// File names are plain names inside the checkpoint directory.
fn check_name(dir: &Path, name: &str) -> Result<()> {
    let plain = !name.is_empty()
        && name != MANIFEST_FILE
        && !name.starts_with('.')
        && !name.contains(['/', '\\', '\0']);
    if plain {
        Ok(())
    } else {
        Err(checkpoint_err(dir, format!("invalid file name `{name}`")))
    }
}

/// fsyncs a file or directory (so a rename that follows is durable).
pub(crate) fn fsync_path(path: &Path) -> Result<()> {
    atomic_file::fsync(path).map_err(io_err("fsync", path))
}

/// Size and lowercase-hex sha256 of a file, read in blocks.
fn hash_file(path: &Path) -> Result<(u64, String)> {
    let mut file = File::open(path).map_err(io_err("open", path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io_err("read", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    let hex = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((size, hex))
}

/// A checkpoint being written. Dropping it without [`PendingCheckpoint::commit`] removes
/// the temporary directory (best effort; after a crash, the `.tmp` is simply ignored).
pub struct PendingCheckpoint {
    root: PathBuf,
    step: u64,
    tmp: PathBuf,
    files: Vec<String>,
    committed: bool,
}

impl PendingCheckpoint {
    /// Starts `root/step-N.tmp/`, replacing a stale one from an earlier crash.
    pub fn begin(root: &Path, step: u64) -> Result<Self> {
        fs::create_dir_all(root).map_err(io_err("create", root))?;
        let tmp = root.join(format!("{}{TMP_SUFFIX}", dir_name(step)));
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(io_err("remove", &tmp))?;
        }
        fs::create_dir(&tmp).map_err(io_err("create", &tmp))?;
        Ok(PendingCheckpoint {
            root: root.to_path_buf(),
            step,
            tmp,
            files: Vec::new(),
            committed: false,
        })
    }

    /// Writes a named byte blob (e.g. safetensors bytes or JSON) and fsyncs it.
    pub fn write(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        self.write_with(name, |path| {
            let mut f = File::create(path).map_err(io_err("create", path))?;
            f.write_all(bytes).map_err(io_err("write", path))
        })
    }

    /// Lets `write` create the file at the given path itself (e.g. a safetensors save);
    /// the file then gets mode `0666 & !umask` and is fsynced (`atomic_file::finish_file`).
    pub fn write_with(
        &mut self,
        name: &str,
        write: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<()> {
        check_name(&self.tmp, name)?;
        if self.files.iter().any(|f| f == name) {
            return Err(checkpoint_err(
                &self.tmp,
                format!("file `{name}` written twice"),
            ));
        }
        let path = self.tmp.join(name);
        write(&path)?;
        atomic_file::finish_file(&path).map_err(io_err("finish", &path))?;
        self.files.push(name.to_string());
        Ok(())
    }

    /// Hashes the files, writes the manifest last, and atomically publishes `step-N/`.
    /// A leftover `step-N/` (only possible if it failed to verify and training went on
    /// from an older checkpoint) is replaced.
    pub fn commit(mut self) -> Result<Checkpoint> {
        let mut entries = Vec::with_capacity(self.files.len());
        for name in &self.files {
            let (size, sha256) = hash_file(&self.tmp.join(name))?;
            entries.push(ManifestEntry {
                name: name.clone(),
                size,
                sha256,
            });
        }
        let manifest = Manifest {
            format: FORMAT_VERSION,
            step: self.step,
            files: entries,
        };
        let manifest_path = self.tmp.join(MANIFEST_FILE);
        let json = serde_json::to_vec_pretty(&manifest)?;
        let mut f = File::create(&manifest_path).map_err(io_err("create", &manifest_path))?;
        f.write_all(&json)
            .map_err(io_err("write", &manifest_path))?;
        atomic_file::finish_file(&manifest_path).map_err(io_err("finish", &manifest_path))?;

        let dest = self.root.join(dir_name(self.step));
        if dest.exists() {
            fs::remove_dir_all(&dest).map_err(io_err("remove", &dest))?;
        }
        atomic_file::publish_dir(&self.tmp, &dest).map_err(io_err("rename", &self.tmp))?;
        self.committed = true;
        Ok(Checkpoint {
            step: self.step,
            path: dest,
            manifest,
        })
    }
}

impl Drop for PendingCheckpoint {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.tmp);
        }
    }
}

/// Checks a checkpoint directory against its manifest: the step matches the directory
/// name, and every listed file exists with the recorded size and sha256.
pub fn verify(path: &Path) -> Result<Checkpoint> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let step =
        parse_dir_name(name).ok_or_else(|| checkpoint_err(path, "not a step-N directory"))?;
    let manifest_path = path.join(MANIFEST_FILE);
    let bytes = fs::read(&manifest_path).map_err(io_err("read", &manifest_path))?;
    let manifest: Manifest = serde_json::from_slice(&bytes)?;
    if manifest.format != FORMAT_VERSION || manifest.step != step {
        return Err(checkpoint_err(
            path,
            format!(
                "manifest format {} step {} does not match",
                manifest.format, manifest.step
            ),
        ));
    }
    for entry in &manifest.files {
        check_name(path, &entry.name)?;
        let (size, sha256) = hash_file(&path.join(&entry.name))?;
        if size != entry.size || sha256 != entry.sha256 {
            return Err(checkpoint_err(
                path,
                format!("`{}` does not match its manifest entry", entry.name),
            ));
        }
    }
    Ok(Checkpoint {
        step,
        path: path.to_path_buf(),
        manifest,
    })
}

/// Committed checkpoint directories under `root` (by name only), newest first.
fn committed_dirs(root: &Path) -> Result<Vec<(u64, PathBuf)>> {
    if !root.exists() {
        return Ok(Vec::new());
    }
    let mut dirs = Vec::new();
    for entry in fs::read_dir(root).map_err(io_err("list", root))? {
        let entry = entry.map_err(io_err("list", root))?;
        if let Some(step) = entry.file_name().to_str().and_then(parse_dir_name) {
            dirs.push((step, entry.path()));
        }
    }
    dirs.sort_by_key(|d| std::cmp::Reverse(d.0));
    Ok(dirs)
}

/// The newest checkpoint under `root` whose manifest verifies. Partial (`.tmp`), torn,
/// or corrupted ones are skipped. `None` if there is none (or `root` does not exist).
pub fn latest_valid(root: &Path) -> Result<Option<Checkpoint>> {
    Ok(committed_dirs(root)?
        .into_iter()
        .find_map(|(_, path)| verify(&path).ok()))
}

/// Keeps the newest `keep_last` valid checkpoints and deletes every other checkpoint
/// directory (older ones, invalid ones, and leftover `.tmp` ones). Call it only after a
/// new checkpoint is committed. Returns the deleted paths.
pub fn prune(root: &Path, keep_last: usize) -> Result<Vec<PathBuf>> {
    if keep_last == 0 {
        return Err(checkpoint_err(
            root,
            "prune must keep at least one checkpoint",
        ));
    }
    let mut kept = 0;
    let mut doomed = Vec::new();
    for (_, path) in committed_dirs(root)? {
        if kept < keep_last && verify(&path).is_ok() {
            kept += 1;
        } else {
            doomed.push(path);
        }
    }
    if root.exists() {
        for entry in fs::read_dir(root).map_err(io_err("list", root))? {
            let entry = entry.map_err(io_err("list", root))?;
            let name = entry.file_name();
            let is_tmp = name
                .to_str()
                .and_then(|n| n.strip_suffix(TMP_SUFFIX))
                .is_some_and(|n| parse_dir_name(n).is_some());
            if is_tmp {
                doomed.push(entry.path());
            }
        }
    }
    for path in &doomed {
        fs::remove_dir_all(path).map_err(io_err("remove", path))?;
    }
    if !doomed.is_empty() {
        fsync_path(root)?;
    }
    Ok(doomed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_checkpoint(root: &Path, step: u64) -> Checkpoint {
        let mut p = PendingCheckpoint::begin(root, step).unwrap();
        p.write(
            "adapter_model.safetensors",
            format!("weights {step}").as_bytes(),
        )
        .unwrap();
        p.write_with("trainer_state.json", |path| {
            fs::write(path, format!("{{\"step\":{step}}}")).map_err(io_err("write", path))
        })
        .unwrap();
        p.commit().unwrap()
    }

    #[test]
    fn commit_publishes_a_verified_directory() {
        let dir = tempfile::tempdir().unwrap();
        let ckpt = write_checkpoint(dir.path(), 7);
        assert_eq!(ckpt.path, dir.path().join("step-7"));
        assert!(!dir.path().join("step-7.tmp").exists());
        assert_eq!(ckpt.manifest.files.len(), 2);
        assert_eq!(
            fs::read(ckpt.file("adapter_model.safetensors")).unwrap(),
            b"weights 7"
        );
        assert_eq!(latest_valid(dir.path()).unwrap().unwrap(), ckpt);
    }

    /// Files written by a 0600-creating writer, the manifest and the directory all end
    /// with the umask's mode (0644 / 0755 under umask 022), readable by other users.
    #[cfg(unix)]
    #[test]
    fn checkpoint_files_get_the_umask_mode() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = tempfile::tempdir().unwrap();
        let mut p = PendingCheckpoint::begin(dir.path(), 3).unwrap();
        p.write_with("a.bin", |path| {
            fs::write(path, b"a").map_err(io_err("write", path))?;
            fs::set_permissions(path, fs::Permissions::from_mode(0o600))
                .map_err(io_err("chmod", path))
        })
        .unwrap();
        let ckpt = p.commit().unwrap();
        let umask = atomic_file::umask();
        for f in ["a.bin", MANIFEST_FILE] {
            assert_eq!(mode(&ckpt.file(f)), 0o666 & !umask, "{f}");
        }
        assert_eq!(mode(&ckpt.path), 0o777 & !umask);
        if umask == 0o022 {
            assert_eq!(mode(&ckpt.file("a.bin")), 0o644);
        }
    }

    #[test]
    fn corrupted_checkpoint_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        write_checkpoint(dir.path(), 10);
        let newer = write_checkpoint(dir.path(), 20);
        fs::write(newer.file("adapter_model.safetensors"), b"weights 2X").unwrap();
        assert_eq!(latest_valid(dir.path()).unwrap().unwrap().step, 10);
    }

    #[test]
    fn missing_manifest_or_file_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        write_checkpoint(dir.path(), 1);
        let b = write_checkpoint(dir.path(), 2);
        let c = write_checkpoint(dir.path(), 3);
        fs::remove_file(c.file(MANIFEST_FILE)).unwrap();
        fs::remove_file(b.file("trainer_state.json")).unwrap();
        assert_eq!(latest_valid(dir.path()).unwrap().unwrap().step, 1);
    }

    #[test]
    fn leftover_tmp_directory_is_ignored_and_pruned() {
        let dir = tempfile::tempdir().unwrap();
        write_checkpoint(dir.path(), 5);
        let mut partial = PendingCheckpoint::begin(dir.path(), 9).unwrap();
        partial.write("adapter_model.safetensors", b"half").unwrap();
        std::mem::forget(partial); // as if the process died here
        assert!(dir.path().join("step-9.tmp").exists());
        assert_eq!(latest_valid(dir.path()).unwrap().unwrap().step, 5);
        let removed = prune(dir.path(), 3).unwrap();
        assert_eq!(removed, vec![dir.path().join("step-9.tmp")]);
    }

    #[test]
    fn dropped_pending_checkpoint_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = PendingCheckpoint::begin(dir.path(), 3).unwrap();
        p.write("a.bin", b"x").unwrap();
        drop(p);
        assert!(!dir.path().join("step-3.tmp").exists());
        assert!(latest_valid(dir.path()).unwrap().is_none());
    }

    #[test]
    fn prune_keeps_the_newest_valid_k() {
        let dir = tempfile::tempdir().unwrap();
        for step in [10, 20, 30, 40] {
            write_checkpoint(dir.path(), step);
        }
        let corrupt = dir.path().join("step-40").join("trainer_state.json");
        fs::write(corrupt, b"torn").unwrap();
        prune(dir.path(), 2).unwrap();
        let left: Vec<u64> = committed_dirs(dir.path())
            .unwrap()
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(left, vec![30, 20]);
        assert!(prune(dir.path(), 0).is_err());
    }

    #[test]
    fn rewriting_a_step_replaces_the_old_directory() {
        let dir = tempfile::tempdir().unwrap();
        let first = write_checkpoint(dir.path(), 4);
        fs::write(first.file("trainer_state.json"), b"corrupt").unwrap();
        let again = write_checkpoint(dir.path(), 4);
        assert_eq!(verify(&again.path).unwrap(), again);
    }

    #[test]
    fn bad_file_names_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = PendingCheckpoint::begin(dir.path(), 1).unwrap();
        for bad in ["", "../x", "a/b", MANIFEST_FILE, ".hidden"] {
            assert!(p.write(bad, b"x").is_err(), "{bad:?}");
        }
        p.write("ok.bin", b"x").unwrap();
        assert!(p.write("ok.bin", b"y").is_err());
    }

    #[test]
    fn odd_directory_names_are_not_checkpoints() {
        assert_eq!(parse_dir_name("step-12"), Some(12));
        for name in ["step-012", "step-", "step-1.tmp", "step--1", "steps-1"] {
            assert_eq!(parse_dir_name(name), None, "{name}");
        }
    }
}
