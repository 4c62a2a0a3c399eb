//! hone-retrieve: retrieval over a directory of text and markdown files, for
//! `hone chat --rag DIR`, `hone eval`'s rag baseline and its few-shot
//! picker.
//!
//! ```text
//! let corpus = Corpus::from_dir(dir, &embedder, &CorpusOptions::default())?;
//! let hits = corpus.top_k(&embedder, "question", 4)?;
//! let system = system_with_context(None, &format_context(&hits.hits));
//! ```
//!
//! - [`chunk`] cuts each file into overlapping windows of words;
//! - [`cache`] keeps each file's chunk vectors on disk, keyed by the file's
//!   content hash, the embedding model and the chunking, so an unchanged file
//!   is embedded once;
//! - [`corpus`] walks the directory and ranks chunks by cosine similarity,
//!   brute force: every query is compared with every chunk. That is a few
//!   milliseconds for thousands of chunks (384 floats each); past about a
//!   hundred thousand chunks, or for many queries per second, an
//!   approximate index would be needed ([`vectors`] is the one place
//!   to change);
//! - [`context`] turns the hits into the system message, in the one format
//!   `hone chat --rag` and `hone eval`'s rag baselines share.
//!
//! Any embedding model plugs in through [`Embed`]; hone-model's
//! [`EmbeddingModel`] implements it.

pub mod cache;
pub mod chunk;
pub mod context;
pub mod corpus;
mod error;
pub mod vectors;

pub use chunk::{chunk_text, ChunkOptions};
pub use context::{format_context, system_with_context, CONTEXT_HEADER, DEFAULT_K};
pub use corpus::{Chunk, Corpus, CorpusOptions, Documents, Hit, Hits, LoadReport};
pub use error::{Result, RetrieveError};
pub use vectors::VectorIndex;

use hone_model::embed::{EmbeddingModel, Overflow};

/// Something that turns texts into vectors of one fixed length.
pub trait Embed {
    /// Names the model in cache keys: vectors of two models never mix.
    fn model_id(&self) -> &str;
    /// Length of every vector.
    fn dim(&self) -> usize;
    /// One vector per text, in order. A text longer than the model takes is
    /// cut (the count is returned), not refused: retrieval ranks what fits.
    fn embed(&self, texts: &[&str]) -> Result<Embedded>;
}

/// The vectors of [`Embed::embed`] and how many texts were cut to fit.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedded {
    pub vectors: Vec<Vec<f32>>,
    pub truncated: usize,
}

impl Embed for EmbeddingModel {
    fn model_id(&self) -> &str {
        &self.id
    }

    fn dim(&self) -> usize {
        EmbeddingModel::dim(self)
    }

    fn embed(&self, texts: &[&str]) -> Result<Embedded> {
        let out = EmbeddingModel::embed(self, texts, Overflow::Truncate)
            .map_err(|e| RetrieveError::Embed(e.to_string()))?;
        Ok(Embedded {
            vectors: out.vectors,
            truncated: out.truncated,
        })
    }
}

/// A word-counting fake embedder for fast tests here and in hone-eval.
pub mod fake;
