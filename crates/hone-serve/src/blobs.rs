//! File contents under `$HONE_HOME/files/`.
//!
//! Id-addressed, not content-addressed: a blob is stored at
//! `files/<file-id>`. OpenAI's delete removes one file object, and with one
//! blob per id a delete is one `unlink` with no reference counting that a
//! crash could leave wrong. The sha256 of every upload is still computed
//! while streaming and kept in the store, for integrity checks and for
//! de-duplication later if it proves worth it.
//!
//! An upload streams into `files/.upload-<random>.tmp` in the same
//! directory, counting bytes as they arrive (so an oversized upload is cut
//! off at the limit, not after it has filled the disk), then is fsynced and
//! renamed into place, and the directory is fsynced. A temp file left by a
//! crash is removed at the next start.

use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::error::ApiError;
use crate::ids;

/// What a blob operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("the upload is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("'{0}' is not a valid file id")]
    InvalidId(String),
    #[error("file storage: {0}")]
    Io(#[from] io::Error),
}

impl From<BlobError> for ApiError {
    fn from(e: BlobError) -> Self {
        match e {
            BlobError::TooLarge { limit } => ApiError::PayloadTooLarge { limit },
            BlobError::InvalidId(id) => ApiError::not_found("file", &id),
            BlobError::Io(e) => ApiError::internal(format!("file storage: {e}")),
        }
    }
}

/// The local blob store.
#[derive(Debug, Clone)]
pub struct FsBlobStore {
    dir: PathBuf,
}

/// A committed blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub bytes: u64,
    /// Lower-case hex sha256 of the content.
    pub sha256: String,
    pub path: PathBuf,
}

const TMP_PREFIX: &str = ".upload-";
/// Blobs are users' uploaded data (and their jobs' result files), from every project:
/// the server reads them itself and serves them only through the API, behind a key, so
/// they are created private to the server's user whatever the umask. (Adapters the
/// server writes are 0644: docs/export.md.)
#[cfg(unix)]
const BLOB_MODE: u32 = 0o600;
const TMP_SUFFIX: &str = ".tmp";

impl FsBlobStore {
    /// Opens `dir` (creating it) and removes temp files of uploads that a
    /// crash interrupted.
    pub fn open(dir: impl Into<PathBuf>) -> io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(TMP_PREFIX) && name.ends_with(TMP_SUFFIX) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(FsBlobStore { dir })
    }

    /// Where the blob of `id` lives. Refuses ids that are not plain
    /// `[A-Za-z0-9_-]` names, so no id can point outside the directory.
    pub fn path(&self, id: &str) -> Result<PathBuf, BlobError> {
        let ok = !id.is_empty()
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(BlobError::InvalidId(id.to_string()));
        }
        Ok(self.dir.join(id))
    }

    /// Starts an upload that may hold at most `limit` bytes.
    pub async fn begin(&self, limit: u64) -> Result<Upload, BlobError> {
        let tmp = self
            .dir
            .join(format!("{TMP_PREFIX}{}{TMP_SUFFIX}", ids::base62(16)));
        let mut open = tokio::fs::OpenOptions::new();
        open.write(true).create_new(true);
        #[cfg(unix)]
        open.mode(BLOB_MODE);
        let file = open.open(&tmp).await?;
        Ok(Upload {
            file: Some(file),
            tmp,
            dir: self.dir.clone(),
            written: 0,
            limit,
            hasher: Sha256::new(),
            committed: false,
        })
    }

    /// Opens a blob for reading.
    pub async fn open_read(&self, id: &str) -> Result<tokio::fs::File, BlobError> {
        Ok(tokio::fs::File::open(self.path(id)?).await?)
    }

    /// Copies a local file in as the blob of `id`, atomically (temp file,
    /// fsync, rename, fsync of the directory). Blocking: for the training
    /// threads, which store result files.
    pub fn put_file_blocking(&self, id: &str, src: &Path) -> Result<Blob, BlobError> {
        use std::io::{Read, Write};
        let dest = self.path(id)?;
        let tmp = self
            .dir
            .join(format!("{TMP_PREFIX}{}{TMP_SUFFIX}", ids::base62(16)));
        let result = (|| -> Result<Blob, BlobError> {
            let mut input = std::fs::File::open(src)?;
            let mut open = std::fs::OpenOptions::new();
            open.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut open, BLOB_MODE);
            let mut out = open.open(&tmp)?;
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 64 * 1024];
            let mut bytes = 0u64;
            loop {
                let n = input.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                out.write_all(&buf[..n])?;
                hasher.update(&buf[..n]);
                bytes += n as u64;
            }
            out.sync_all()?;
            drop(out);
            std::fs::rename(&tmp, &dest)?;
            std::fs::File::open(&self.dir)?.sync_all()?;
            Ok(Blob {
                bytes,
                sha256: hex(&hasher.finalize()),
                path: dest.clone(),
            })
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// Removes a blob; a blob already gone is not an error.
    pub async fn delete(&self, id: &str) -> Result<(), BlobError> {
        match tokio::fs::remove_file(self.path(id)?).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }
}

/// An upload in progress. Dropping it without [`Upload::commit`] removes
/// its temp file.
pub struct Upload {
    file: Option<tokio::fs::File>,
    tmp: PathBuf,
    dir: PathBuf,
    written: u64,
    limit: u64,
    hasher: Sha256,
    committed: bool,
}

impl Upload {
    /// Appends a chunk, refusing it if the upload would exceed the limit.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), BlobError> {
        let len = chunk.len() as u64;
        if self.written.saturating_add(len) > self.limit {
            return Err(BlobError::TooLarge { limit: self.limit });
        }
        let file = self.file.as_mut().ok_or_else(closed)?;
        file.write_all(chunk).await?;
        self.hasher.update(chunk);
        self.written += len;
        Ok(())
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Makes the upload durable as the blob of `id`: fsync, rename, fsync
    /// of the directory.
    pub async fn commit(mut self, store: &FsBlobStore, id: &str) -> Result<Blob, BlobError> {
        let dest = store.path(id)?;
        let mut file = self.file.take().ok_or_else(closed)?;
        file.flush().await?;
        file.sync_all().await?;
        drop(file);
        tokio::fs::rename(&self.tmp, &dest).await?;
        self.committed = true;
        sync_dir(&self.dir).await?;
        let digest = std::mem::take(&mut self.hasher).finalize();
        Ok(Blob {
            bytes: self.written,
            sha256: hex(&digest),
            path: dest,
        })
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

fn closed() -> BlobError {
    BlobError::Io(io::Error::other("upload already closed"))
}

/// Fsyncs a directory so that a rename in it is durable.
async fn sync_dir(dir: &Path) -> io::Result<()> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || std::fs::File::open(&dir)?.sync_all())
        .await
        .map_err(io::Error::other)?
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn upload_commits_with_size_and_sha256() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(dir.path()).unwrap();
        let mut up = store.begin(100).await.unwrap();
        up.write(b"ab").await.unwrap();
        up.write(b"c").await.unwrap();
        let blob = up.commit(&store, "file-x").await.unwrap();
        assert_eq!(blob.bytes, 3);
        assert_eq!(
            blob.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(std::fs::read(dir.path().join("file-x")).unwrap(), b"abc");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temp file left behind");
    }

    /// Uploads and stored result files are private to the server's user, whatever the
    /// umask (see `BLOB_MODE`).
    #[cfg(unix)]
    #[tokio::test]
    async fn blobs_are_private_to_the_servers_user() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(dir.path()).unwrap();
        let mut up = store.begin(100).await.unwrap();
        up.write(b"data").await.unwrap();
        let uploaded = up.commit(&store, "file-up").await.unwrap();
        let src = dir.path().join("metrics.csv");
        std::fs::write(&src, b"step,loss\n").unwrap();
        let result = store.put_file_blocking("file-res", &src).unwrap();
        for p in [&uploaded.path, &result.path] {
            let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", p.display());
        }
    }

    #[tokio::test]
    async fn over_the_limit_is_refused_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(dir.path()).unwrap();
        let mut up = store.begin(4).await.unwrap();
        up.write(b"1234").await.unwrap();
        let err = up.write(b"5").await.unwrap_err();
        assert!(matches!(err, BlobError::TooLarge { limit: 4 }));
        drop(up);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn ids_cannot_escape_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsBlobStore::open(dir.path()).unwrap();
        for bad in ["../x", "a/b", "", ".hidden", "a.b"] {
            assert!(store.path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn stale_temp_files_are_removed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".upload-abc.tmp"), b"x").unwrap();
        std::fs::write(dir.path().join("file-keep"), b"x").unwrap();
        FsBlobStore::open(dir.path()).unwrap();
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["file-keep".to_string()]);
    }
}
