//! The tiny model and tokenizer most tests train on, written to a temp dir.

use hone_model::testing::{write_tiny_model, TinySpec};
use hone_model::{load_model, Llama, WeightPath};
use hone_text::ChatTokenizer;

/// A tiny random Llama (f32, ready to train) and its byte-level chat tokenizer.
pub struct Fixture {
    pub _dir: tempfile::TempDir,
    pub model: Llama,
    pub tok: ChatTokenizer,
}

pub fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (gguf, _) = write_tiny_model(dir.path(), &TinySpec::default()).unwrap();
    Fixture {
        model: load_model(&gguf, WeightPath::F32).unwrap(),
        tok: ChatTokenizer::from_gguf(&gguf).unwrap(),
        _dir: dir,
    }
}
