use super::testing::TinyBert;
use super::*;

fn tiny() -> (tempfile::TempDir, EmbeddingModel) {
    let dir = tempfile::tempdir().unwrap();
    TinyBert::default().write(dir.path()).unwrap();
    let resolved = ResolvedModel {
        id: "tiny-bert".into(),
        source: ModelSource::HfDir(dir.path().to_path_buf()),
    };
    let model = resolved.open_embedding().unwrap();
    (dir, model)
}

fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

#[test]
fn vectors_are_unit_length_and_one_per_input() {
    let (_dir, m) = tiny();
    let out = m
        .embed(
            &["hello world", "a", "the quick brown fox"],
            Overflow::Error,
        )
        .unwrap();
    assert_eq!(out.vectors.len(), 3);
    for v in &out.vectors {
        assert_eq!(v.len(), 32);
        assert!((norm(v) - 1.0).abs() < 1e-5, "{}", norm(v));
    }
    // "hello world" is h-##e-##l-##l-##o w-##o-##r-##l-##d plus [CLS], [SEP].
    assert_eq!(out.tokens, 12 + 3 + 18);
    assert_eq!(out.truncated, 0);
    assert!(m.embed(&[], Overflow::Error).unwrap().vectors.is_empty());
}

#[test]
fn padding_in_a_batch_does_not_change_a_vector() {
    let (_dir, m) = tiny();
    let alone = m.embed(&["hi"], Overflow::Error).unwrap().vectors;
    let batched = m
        .embed(
            &["hi", "a much longer sentence than the first"],
            Overflow::Error,
        )
        .unwrap()
        .vectors;
    for (a, b) in alone[0].iter().zip(&batched[0]) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
    assert_ne!(batched[0], batched[1]);
}

#[test]
fn token_arrays_match_their_text() {
    let (_dir, m) = tiny();
    let ids = m.tokenize(&["abc"]).unwrap().remove(0);
    let inner = ids[1..ids.len() - 1].to_vec();
    let from_ids = m.embed_tokens(&[inner], Overflow::Error).unwrap();
    let from_text = m.embed(&["abc"], Overflow::Error).unwrap();
    assert_eq!(from_ids, from_text);
    let err = m.embed_tokens(&[vec![9999]], Overflow::Error).unwrap_err();
    assert!(err.to_string().contains("outside the vocabulary"), "{err}");
}

#[test]
fn long_inputs_are_refused_or_truncated_as_asked() {
    let (_dir, m) = tiny();
    // 100 one-letter words: 102 tokens with [CLS] and [SEP].
    let long = "x ".repeat(100);
    let err = m.embed(&[&long], Overflow::Error).unwrap_err();
    assert!(
        matches!(err, ModelError::ContextOverflow { max: 64, .. }),
        "{err}"
    );
    let out = m.embed(&[&long, "ok"], Overflow::Truncate).unwrap();
    assert_eq!(out.truncated, 1);
    assert_eq!(out.tokens, 64 + 4);
    assert!((norm(&out.vectors[0]) - 1.0).abs() < 1e-5);
}

#[test]
fn chat_models_and_gguf_files_are_not_embedding_models() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = ResolvedModel {
        id: "m".into(),
        source: ModelSource::Gguf(dir.path().join("m.gguf")),
    };
    let err = gguf.open_embedding().unwrap_err().to_string();
    assert!(err.contains("not an embedding model"), "{err}");
    std::fs::write(dir.path().join("config.json"), r#"{"model_type":"llama"}"#).unwrap();
    assert!(!is_embedding_model(dir.path()));
    let hf = ResolvedModel {
        id: "m".into(),
        source: ModelSource::HfDir(dir.path().to_path_buf()),
    };
    let err = hf.open_embedding().unwrap_err().to_string();
    assert!(err.contains("not an embedding model"), "{err}");
}

#[test]
fn other_pooling_modes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    TinyBert::default().write(dir.path()).unwrap();
    assert!(is_embedding_model(dir.path()));
    std::fs::write(
        dir.path().join("1_Pooling/config.json"),
        r#"{"pooling_mode_cls_token": true, "pooling_mode_mean_tokens": false}"#,
    )
    .unwrap();
    let resolved = ResolvedModel {
        id: "cls".into(),
        source: ModelSource::HfDir(dir.path().to_path_buf()),
    };
    let err = resolved.open_embedding().unwrap_err().to_string();
    assert!(err.contains("only mean pooling"), "{err}");
}

#[test]
fn chat_front_ends_refuse_an_embedding_model() {
    let dir = tempfile::tempdir().unwrap();
    TinyBert::default().write(dir.path()).unwrap();
    let resolved = ResolvedModel {
        id: "all-minilm-l6-v2".into(),
        source: ModelSource::HfDir(dir.path().to_path_buf()),
    };
    let err = resolved.open().unwrap_err().to_string();
    assert!(
        err.contains("'all-minilm-l6-v2' is an embedding model"),
        "{err}"
    );
    assert!(err.contains("cannot chat"), "{err}");
}
