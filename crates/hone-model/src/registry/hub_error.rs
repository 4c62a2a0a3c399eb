//! Why a hub fetch failed: one error type for the hub client (`hub.rs`) and the file
//! selection (`hub_files.rs`), so neither module imports the other's internals.

use super::DEFAULT_GGUF_QUANT;

/// Why a hub fetch failed. Every message says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(
        "'{0}' is not a hub spec: expected hf:ORG/NAME or hf:ORG/NAME@REVISION \
         (e.g. hf:Qwen/Qwen2.5-0.5B-Instruct-GGUF)"
    )]
    BadSpec(String),
    #[error(
        "cannot reach the hub at {endpoint} (HF_ENDPOINT): {reason}. Check the network, \
         or set HF_ENDPOINT to a reachable hub or mirror"
    )]
    Unreachable { endpoint: String, reason: String },
    #[error("the hub refused {what} with HTTP {status}: {hint}{message}")]
    Denied {
        what: String,
        status: u16,
        hint: &'static str,
        message: String,
    },
    #[error("{what} was not found on {endpoint} (HTTP 404){message}")]
    NotFound {
        what: String,
        endpoint: String,
        message: String,
    },
    #[error("the hub answered {what} with HTTP {status}{message}")]
    Http {
        what: String,
        status: u16,
        message: String,
    },
    #[error(
        "{repo} has no files hone can load: it needs one .gguf file, or {required} \
         (files: {files})"
    )]
    NoUsableFiles {
        repo: String,
        required: String,
        files: String,
    },
    #[error(
        "{repo} has several GGUF files and none is {DEFAULT_GGUF_QUANT}; pick one with \
         --file NAME: {files}"
    )]
    AmbiguousGguf { repo: String, files: String },
    #[error("{repo} has no file '{file}'; its GGUF files: {files}")]
    NoSuchFile {
        repo: String,
        file: String,
        files: String,
    },
    #[error(
        "{file} from {repo} is corrupt: expected {expected}, got {actual}. The bad file \
         was deleted; run the fetch again"
    )]
    Checksum {
        repo: String,
        file: String,
        expected: String,
        actual: String,
    },
    #[error(
        "downloading {file} from {repo} failed: {reason}. Run the same command again to \
         resume: the partial download is kept"
    )]
    Download {
        repo: String,
        file: String,
        reason: String,
    },
    #[error("the hub's answer for {what} is not what hf-hub expects: {reason}")]
    BadAnswer { what: String, reason: String },
}
