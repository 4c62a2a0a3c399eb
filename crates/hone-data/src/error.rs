//! The crate's error type.

use std::path::PathBuf;

use crate::issue::Report;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// Display shows the path; the I/O error is the `source` (print chains with `{:#}`).
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The data failed validation; the report lists every problem.
    #[error("the file has {} error(s); first: {}", .0.errors.len(), first_error(.0))]
    Invalid(Box<Report>),
    /// A caller passed a value outside its documented range.
    #[error("{0}")]
    InvalidArgument(String),
}

fn first_error(r: &Report) -> String {
    r.errors.first().map_or_else(String::new, |i| match i.line {
        Some(l) => format!("line {l}: {} ({})", i.text, i.code),
        None => format!("{} ({})", i.text, i.code),
    })
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> DataError {
        let path = path.into();
        move |source| DataError::Io { path, source }
    }
}
