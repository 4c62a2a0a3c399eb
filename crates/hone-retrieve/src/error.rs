//! Errors of building a corpus and querying it.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum RetrieveError {
    #[error("retrieval directory {0} does not exist or is not a directory")]
    NotADir(PathBuf),
    #[error(
        "retrieval directory {dir} has no text to retrieve from: it needs .txt or .md \
         files with some text in them ({skipped_binary} binary and {ignored} other files skipped)"
    )]
    Empty {
        dir: PathBuf,
        skipped_binary: usize,
        ignored: usize,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("chunking: {0}")]
    Options(String),
    #[error("embedding: {0}")]
    Embed(String),
    #[error("k must be at least 1")]
    ZeroK,
}

pub type Result<T> = std::result::Result<T, RetrieveError>;

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> RetrieveError + '_ {
    move |source| RetrieveError::Io {
        path: path.to_path_buf(),
        source,
    }
}
