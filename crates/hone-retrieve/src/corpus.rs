//! A directory of documents, chunked and embedded, ranked against a query
//! by cosine similarity (brute force; see the crate docs for its limits).
//!
//! What is read: every `.txt`, `.md` and `.markdown` file under the
//! directory, recursively, in path order, skipping hidden entries (names
//! starting with `.`, such as `.git`). A file with one of those extensions
//! that holds a NUL byte or is not UTF-8 is skipped as binary, and listed in
//! [`LoadReport::skipped_binary`] for the caller to show; files with other
//! extensions are counted in [`LoadReport::ignored`]. A directory that
//! yields no chunk at all is an error, not an empty corpus.

use std::fs;
use std::path::{Path, PathBuf};

use crate::cache::{content_hash, EmbeddingCache};
use crate::chunk::{chunk_text, ChunkOptions};
use crate::error::{io_err, Result, RetrieveError};
use crate::vectors::{unit, VectorIndex};
use crate::Embed;

/// File extensions read as documents (compared case-insensitively).
pub const DOCUMENT_EXTENSIONS: [&str; 3] = ["txt", "md", "markdown"];

/// How to build a [`Corpus`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorpusOptions {
    pub chunking: ChunkOptions,
    /// Where chunk vectors are cached ([`EmbeddingCache`]); `None` embeds
    /// everything every time. Default: `$HONE_HOME/cache/embeddings`.
    pub cache_dir: Option<PathBuf>,
}

impl Default for CorpusOptions {
    fn default() -> Self {
        CorpusOptions {
            chunking: ChunkOptions::default(),
            cache_dir: Some(EmbeddingCache::default_location()),
        }
    }
}

/// One retrievable piece of a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The document, relative to the corpus directory.
    pub source: PathBuf,
    /// 0-based position of the chunk in its document.
    pub index: usize,
    pub text: String,
}

/// What [`Corpus::from_dir`] read, for the caller to report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Documents read (including those without any word).
    pub files: usize,
    /// `.txt`/`.md` files skipped as binary, relative to the directory.
    pub skipped_binary: Vec<PathBuf>,
    /// Files skipped for their extension.
    pub ignored: usize,
    /// Documents whose vectors came from the cache.
    pub cached_files: usize,
    /// Documents embedded now.
    pub embedded_files: usize,
    /// Chunks longer than the embedding model's window, embedded from
    /// their beginning only (they are still returned whole).
    pub truncated_chunks: usize,
}

/// A ranked chunk.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit<'a> {
    pub chunk: &'a Chunk,
    /// Cosine similarity to the query, in [-1, 1].
    pub score: f32,
}

/// The answer to a top-K query: at most `requested` hits, best first. Fewer
/// when the corpus has fewer chunks ([`Hits::truncated`]), never padded.
#[derive(Debug, Clone, PartialEq)]
pub struct Hits<'a> {
    pub hits: Vec<Hit<'a>>,
    pub requested: usize,
}

impl Hits<'_> {
    /// Whether fewer chunks than asked for exist (the caller should say so).
    pub fn truncated(&self) -> bool {
        self.hits.len() < self.requested
    }
}

/// Chunked, embedded documents.
#[derive(Debug, Clone)]
pub struct Corpus {
    chunks: Vec<Chunk>,
    /// One vector per chunk.
    vectors: VectorIndex,
    model_id: String,
    pub report: LoadReport,
}

/// The documents of a directory read and chunked, not yet embedded: every
/// problem with the directory (missing, empty, only binary files) and the
/// chunk count are known before the embedding model is loaded, so a caller
/// can check its inputs first and load the model only when they are good.
#[derive(Debug, Clone)]
pub struct Documents {
    files: Vec<DocumentFile>,
    pub report: LoadReport,
}

/// One document's chunks and the hash its cached vectors are keyed by.
#[derive(Debug, Clone)]
struct DocumentFile {
    /// Relative to the corpus directory.
    source: PathBuf,
    hash: String,
    texts: Vec<String>,
}

impl Documents {
    /// Reads and chunks the documents under `dir` (see the module docs for
    /// which files); a directory that yields no chunk is an error.
    pub fn read(dir: &Path, chunking: &ChunkOptions) -> Result<Documents> {
        chunking.check()?;
        if !dir.is_dir() {
            return Err(RetrieveError::NotADir(dir.to_path_buf()));
        }
        let mut report = LoadReport::default();
        let mut files = Vec::new();
        for path in documents(dir, &mut report)? {
            let bytes = fs::read(&path).map_err(io_err(&path))?;
            let source = path.strip_prefix(dir).unwrap_or(&path).to_path_buf();
            let text = match std::str::from_utf8(&bytes) {
                Ok(t) if !t.contains('\0') => t,
                _ => {
                    report.skipped_binary.push(source);
                    continue;
                }
            };
            report.files += 1;
            let texts = chunk_text(text, chunking)?;
            if !texts.is_empty() {
                let hash = content_hash(&bytes);
                files.push(DocumentFile {
                    source,
                    hash,
                    texts,
                });
            }
        }
        if files.is_empty() {
            return Err(RetrieveError::Empty {
                dir: dir.to_path_buf(),
                skipped_binary: report.skipped_binary.len(),
                ignored: report.ignored,
            });
        }
        Ok(Documents { files, report })
    }

    /// How many chunks the documents make (what a top-K can return at most).
    pub fn chunk_count(&self) -> usize {
        self.files.iter().map(|f| f.texts.len()).sum()
    }
}

impl Corpus {
    /// Reads, chunks and embeds the documents under `dir` (see the module
    /// docs for which files), reusing cached vectors of unchanged files.
    pub fn from_dir(dir: &Path, embedder: &dyn Embed, options: &CorpusOptions) -> Result<Corpus> {
        Corpus::embed(Documents::read(dir, &options.chunking)?, embedder, options)
    }

    /// Embeds documents already read with `options.chunking`, reusing
    /// cached vectors of unchanged files.
    pub fn embed(docs: Documents, embedder: &dyn Embed, options: &CorpusOptions) -> Result<Corpus> {
        let cache = options.cache_dir.as_ref().map(EmbeddingCache::new);
        let mut corpus = Corpus {
            chunks: Vec::new(),
            vectors: VectorIndex::default(),
            model_id: embedder.model_id().to_string(),
            report: docs.report,
        };
        for file in docs.files {
            corpus.add_file(file, embedder, cache.as_ref(), &options.chunking)?;
        }
        Ok(corpus)
    }

    fn add_file(
        &mut self,
        file: DocumentFile,
        embedder: &dyn Embed,
        cache: Option<&EmbeddingCache>,
        chunking: &ChunkOptions,
    ) -> Result<()> {
        let (model, dim) = (embedder.model_id(), embedder.dim());
        let cached = cache.and_then(|c| c.get(model, &file.hash, chunking, dim, file.texts.len()));
        let vectors = match cached {
            Some(v) => {
                self.report.cached_files += 1;
                v
            }
            None => {
                let refs: Vec<&str> = file.texts.iter().map(String::as_str).collect();
                let out = embedder.embed(&refs)?;
                check_shape(&out.vectors, file.texts.len(), dim)?;
                if let Some(c) = cache {
                    c.put(model, &file.hash, chunking, dim, &out.vectors)?;
                }
                self.report.embedded_files += 1;
                self.report.truncated_chunks += out.truncated;
                out.vectors
            }
        };
        for (index, (text, v)) in file.texts.into_iter().zip(vectors).enumerate() {
            self.chunks.push(Chunk {
                source: file.source.clone(),
                index,
                text,
            });
            self.vectors.push(v);
        }
        Ok(())
    }

    /// All chunks, in document then position order.
    pub fn chunks(&self) -> &[Chunk] {
        &self.chunks
    }

    /// The `k` chunks most similar to `query`, best first (ties in chunk
    /// order). `embedder` must be the model the corpus was built with.
    pub fn top_k(&self, embedder: &dyn Embed, query: &str, k: usize) -> Result<Hits<'_>> {
        if k == 0 {
            return Err(RetrieveError::ZeroK);
        }
        if embedder.model_id() != self.model_id {
            return Err(RetrieveError::Embed(format!(
                "the corpus was embedded with '{}', the query with '{}'",
                self.model_id,
                embedder.model_id()
            )));
        }
        let out = embedder.embed(&[query])?;
        check_shape(&out.vectors, 1, embedder.dim())?;
        let query = unit(out.vectors.into_iter().next().expect("one vector"));
        Ok(self.top_k_vector(&query, k))
    }

    /// [`Corpus::top_k`] for a query already embedded (unit length).
    pub fn top_k_vector(&self, query: &[f32], k: usize) -> Hits<'_> {
        Hits {
            hits: self
                .vectors
                .top_k(query, k)
                .into_iter()
                .map(|(i, score)| Hit {
                    chunk: &self.chunks[i],
                    score,
                })
                .collect(),
            requested: k,
        }
    }
}

/// The documents under `dir` in path order; counts ignored files.
fn documents(dir: &Path, report: &mut LoadReport) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(io_err(dir))?
        .map(|e| e.map(|e| e.path()).map_err(io_err(dir)))
        .collect::<Result<_>>()?;
    entries.sort();
    for path in entries {
        let hidden = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if hidden {
            continue;
        }
        if path.is_dir() {
            out.extend(documents(&path, report)?);
        } else if is_document(&path) {
            out.push(path);
        } else {
            report.ignored += 1;
        }
    }
    Ok(out)
}

fn is_document(path: &Path) -> bool {
    path.extension().is_some_and(|e| {
        DOCUMENT_EXTENSIONS
            .iter()
            .any(|d| e.eq_ignore_ascii_case(d))
    })
}

fn check_shape(vectors: &[Vec<f32>], count: usize, dim: usize) -> Result<()> {
    if vectors.len() != count || vectors.iter().any(|v| v.len() != dim) {
        return Err(RetrieveError::Embed(format!(
            "expected {count} vectors of {dim} floats, got {} vectors",
            vectors.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
#[path = "corpus_tests.rs"]
mod tests;
