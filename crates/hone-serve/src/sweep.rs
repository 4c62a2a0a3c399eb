//! The start-up sweep of `$HONE_HOME`: what a crash left on disk that no
//! store record refers to is removed before the job worker starts, and each
//! removal is logged.
//!
//! Why only at start: while the server runs, uploads and training write
//! blobs and temp files whose records are about to follow; before the
//! worker starts nothing is writing, so "unreferenced" then means "left by a
//! crash" (a kill during an upload's validation once left a 33 MB blob that
//! nothing ever removed).
//!
//! Removed:
//! - `files/<id>` with no file record: a kill after the blob was committed
//!   and before its record (an upload being validated, a result file being
//!   stored), or after a delete's record and before its blob;
//! - `files/.upload-*.tmp`: an upload cut while streaming;
//! - `jobs/<id>/` with no job record;
//! - in a recorded job's directory, anything named `*.tmp`: a checkpoint
//!   (`step-N.tmp/`) or any other file that a kill cut mid-write.
//!
//! Kept: every blob and job directory the store refers to, with all their
//! complete files. A complete checkpoint is kept even when the kill came
//! before its record: the run resumes from it and records it then.

use std::io;
use std::path::{Path, PathBuf};

use crate::store::{ReferencedIds, Store, StoreError};

/// Why the sweep could not run (nothing is removed then).
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("reading the store: {0}")]
    Store(#[from] StoreError),
    #[error("sweeping {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Removes what nothing refers to under `home` (see the module docs) and
/// returns the removed paths, each also logged.
pub fn sweep_orphans(home: &Path, store: &dyn Store) -> Result<Vec<PathBuf>, SweepError> {
    let refs = store.referenced_ids()?;
    let mut doomed = orphan_blobs(&home.join("files"), &refs)?;
    doomed.extend(orphan_job_files(&home.join("jobs"), &refs)?);
    for path in &doomed {
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(path)
        } else {
            std::fs::remove_file(path)
        };
        match removed {
            Ok(()) => tracing::info!(path = %path.display(), "removed an orphan left by a crash"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(SweepError::Io {
                    path: path.clone(),
                    source,
                })
            }
        }
    }
    if !doomed.is_empty() {
        tracing::warn!(
            count = doomed.len(),
            "removed files a crash left that no record refers to"
        );
    }
    Ok(doomed)
}

/// Blobs without a file record, and upload temp files.
fn orphan_blobs(dir: &Path, refs: &ReferencedIds) -> Result<Vec<PathBuf>, SweepError> {
    Ok(entries(dir)?
        .into_iter()
        .filter(|(name, path)| {
            let upload_tmp = name.starts_with(".upload-") && name.ends_with(".tmp");
            let blob = !name.starts_with('.') && path.is_file() && !refs.files.contains(name);
            upload_tmp || blob
        })
        .map(|(_, path)| path)
        .collect())
}

/// Job directories without a job record, and `*.tmp` inside recorded ones.
fn orphan_job_files(dir: &Path, refs: &ReferencedIds) -> Result<Vec<PathBuf>, SweepError> {
    let mut out = Vec::new();
    for (name, path) in entries(dir)? {
        if !path.is_dir() {
            continue;
        }
        if refs.jobs.contains(&name) {
            temp_files_under(&path, &mut out)?;
        } else {
            out.push(path);
        }
    }
    Ok(out)
}

/// Every `*.tmp` file or directory under `dir` (not looking inside them;
/// symbolic links are not followed).
fn temp_files_under(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), SweepError> {
    for (name, path) in entries(dir)? {
        if name.ends_with(".tmp") {
            out.push(path);
        } else if path.is_dir() && !path.is_symlink() {
            temp_files_under(&path, out)?;
        }
    }
    Ok(())
}

/// `(name, path)` of each entry of `dir`; none when it does not exist.
fn entries(dir: &Path) -> Result<Vec<(String, PathBuf)>, SweepError> {
    let io_err = |source| SweepError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let read = match std::fs::read_dir(dir) {
        Ok(r) => r,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(e)),
    };
    let mut out = Vec::new();
    for entry in read {
        let entry = entry.map_err(io_err)?;
        out.push((
            entry.file_name().to_string_lossy().into_owned(),
            entry.path(),
        ));
    }
    out.sort();
    Ok(out)
}
