//! hone's all-MiniLM-L6-v2 vectors against sentence-transformers' own, on
//! the fixed corpus in testdata/embeddings/ (made by
//! scripts/make_embedding_vectors.py). Ignored: it needs the real model,
//! from `HONE_TEST_EMBED_DIR` (a model directory) or else `hone model
//! fetch all-minilm-l6-v2` into `$HONE_HOME`.

use hone_model::embed::Overflow;
use hone_model::registry::{resolve_path, Registry, DEFAULT_EMBEDDING_MODEL_ID};

#[derive(serde::Deserialize)]
struct Reference {
    sentences: Vec<String>,
    vectors: Vec<Vec<f32>>,
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

#[test]
#[ignore = "needs the real all-MiniLM-L6-v2 (HONE_TEST_EMBED_DIR or HONE_HOME)"]
fn matches_sentence_transformers() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/embeddings/all-minilm-l6-v2.json"
    );
    let reference: Reference =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let resolved = match std::env::var_os("HONE_TEST_EMBED_DIR") {
        Some(dir) => resolve_path(std::path::Path::new(&dir)).unwrap(),
        None => Registry::default_home()
            .resolve(DEFAULT_EMBEDDING_MODEL_ID)
            .unwrap(),
    };
    let model = resolved.open_embedding().unwrap();
    assert_eq!(model.dim(), 384);
    assert_eq!(model.max_tokens(), 256);
    let texts: Vec<&str> = reference.sentences.iter().map(String::as_str).collect();
    let out = model.embed(&texts, Overflow::Truncate).unwrap();
    // The last sentence is longer than 256 tokens: both sides cut it.
    assert_eq!(out.truncated, 1);
    for (i, (ours, theirs)) in out.vectors.iter().zip(&reference.vectors).enumerate() {
        let c = cosine(ours, theirs);
        assert!(c >= 0.999, "sentence {i} ({:?}): cosine {c}", texts[i]);
    }
}
