//! Chunk vectors on disk, one file per (document content, embedding model,
//! chunking): `DIR/<model>/<sha256 of the file>-w<words>-o<overlap>.vec`.
//!
//! Keyed by content, not by path or time, so a renamed file is not
//! re-embedded and an edited one always is. The format is a little
//! header then raw little-endian f32s: `HONEVEC1`, the dimension and the
//! number of vectors as u32 LE, then the vectors. A file that does not
//! parse or does not match the expected shape is treated as missing and
//! rewritten. Writes go to a temp file that is fsynced and renamed.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::chunk::ChunkOptions;
use crate::error::{io_err, Result};

const MAGIC: &[u8; 8] = b"HONEVEC1";

/// An embedding cache rooted at one directory.
#[derive(Debug, Clone)]
pub struct EmbeddingCache {
    root: PathBuf,
}

/// The lowercase hex sha256 of `bytes`: a document's cache key.
pub fn content_hash(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl EmbeddingCache {
    /// A cache under `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        EmbeddingCache { root: root.into() }
    }

    /// `$HONE_HOME/cache/embeddings`.
    pub fn default_location() -> PathBuf {
        hone_model::registry::hone_home()
            .join("cache")
            .join("embeddings")
    }

    fn path(&self, model: &str, hash: &str, chunking: &ChunkOptions) -> PathBuf {
        // A model id may be a path: keep one safe directory name.
        let model: String = model
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.root.join(model).join(format!(
            "{hash}-w{}-o{}.vec",
            chunking.words, chunking.overlap
        ))
    }

    /// The cached vectors, when present with `count` vectors of `dim`.
    pub fn get(
        &self,
        model: &str,
        hash: &str,
        chunking: &ChunkOptions,
        dim: usize,
        count: usize,
    ) -> Option<Vec<Vec<f32>>> {
        let bytes = fs::read(self.path(model, hash, chunking)).ok()?;
        let body = bytes.strip_prefix(MAGIC.as_slice())?;
        let word = |i: usize| -> Option<usize> {
            let b: [u8; 4] = body.get(i * 4..i * 4 + 4)?.try_into().ok()?;
            Some(u32::from_le_bytes(b) as usize)
        };
        if word(0)? != dim || word(1)? != count || body.len() != 8 + dim * count * 4 {
            return None;
        }
        let floats: Vec<f32> = body[8..]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Some(floats.chunks(dim.max(1)).map(<[f32]>::to_vec).collect())
    }

    /// Stores `vectors` (all of length `dim`) crash-safely.
    pub fn put(
        &self,
        model: &str,
        hash: &str,
        chunking: &ChunkOptions,
        dim: usize,
        vectors: &[Vec<f32>],
    ) -> Result<()> {
        let path = self.path(model, hash, chunking);
        let dir = path.parent().expect("cache paths have a parent");
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut bytes = Vec::with_capacity(16 + vectors.len() * dim * 4);
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&(dim as u32).to_le_bytes());
        bytes.extend_from_slice(&(vectors.len() as u32).to_le_bytes());
        for x in vectors.iter().flatten() {
            bytes.extend_from_slice(&x.to_le_bytes());
        }
        write_atomic(&path, &bytes)
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io_err(dir))?;
    tmp.write_all(bytes).map_err(io_err(path))?;
    tmp.as_file().sync_all().map_err(io_err(path))?;
    tmp.persist(path).map_err(|e| io_err(path)(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_round_trip_and_a_shape_mismatch_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let cache = EmbeddingCache::new(dir.path());
        let c = ChunkOptions::default();
        let v = vec![vec![1.0, -2.5, 0.25], vec![0.0, 3.0, f32::MIN_POSITIVE]];
        cache.put("hf:org/m", "abc", &c, 3, &v).unwrap();
        assert_eq!(cache.get("hf:org/m", "abc", &c, 3, 2), Some(v));
        assert_eq!(cache.get("hf:org/m", "abc", &c, 4, 2), None);
        assert_eq!(cache.get("hf:org/m", "abc", &c, 3, 1), None);
        assert_eq!(cache.get("other", "abc", &c, 3, 2), None);
        let other = ChunkOptions {
            words: 50,
            overlap: 5,
        };
        assert_eq!(cache.get("hf:org/m", "abc", &other, 3, 2), None);
        // The model id became one directory name.
        assert!(dir.path().join("hf_org_m").is_dir());
    }

    #[test]
    fn a_corrupt_cache_file_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let cache = EmbeddingCache::new(dir.path());
        let c = ChunkOptions::default();
        let path = cache.path("m", "h", &c);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, b"HONEVEC1\x03\0\0\0\x01\0\0\0short").unwrap();
        assert_eq!(cache.get("m", "h", &c, 3, 1), None);
    }

    #[test]
    fn the_content_hash_is_sha256() {
        assert_eq!(
            content_hash(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
