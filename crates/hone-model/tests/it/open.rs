//! `ResolvedModel::open` then `OpenModel::load`, the one way front ends open a
//! model: opening reads the configuration, tokenizer and chat template from
//! the header alone, and loading gives the same network as `load_model`.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, GgmlDType};
use hone_model::registry::{ModelSource, ResolvedModel};
use hone_model::testing::{max_abs, tiny_weights, write_tiny_gguf, write_tiny_model, TinySpec};
use hone_model::{load_model, ModelError, WeightPath};
use hone_text::{ChatMessage, ChatTokenizer, Role};

fn resolved(path: &Path) -> ResolvedModel {
    ResolvedModel {
        id: "tiny".into(),
        source: ModelSource::Gguf(path.to_path_buf()),
    }
}

fn tiny_gguf(dir: &Path) -> PathBuf {
    write_tiny_model(dir, &TinySpec::default()).unwrap().0
}

#[test]
fn open_reads_config_and_tokenizer_and_load_gives_the_loaded_model() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = tiny_gguf(dir.path());
    let open = resolved(&gguf).open().unwrap();
    let reference = load_model(&gguf, WeightPath::F32).unwrap();
    assert_eq!(open.id, "tiny");
    assert_eq!(open.config, reference.cfg);
    assert_eq!(open.context_length(), TinySpec::default().context);

    let msgs = [ChatMessage::new(Role::User, "hi there")];
    let tok = ChatTokenizer::from_gguf(&gguf).unwrap();
    assert_eq!(
        open.tokenizer.encode_prompt(&msgs, None).unwrap(),
        tok.encode_prompt(&msgs, None).unwrap()
    );
    let counter = open.token_counter();
    assert_eq!(counter.context_length, open.context_length());

    let engine = open.load(WeightPath::F32).unwrap();
    assert_eq!(engine.id, "tiny");
    let x = candle_core::Tensor::new(&[1u32, 40, 41, 42], reference.device())
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let want = reference.forward(&x, 0, None).unwrap();
    let got = engine.model.forward(&x, 0, None).unwrap();
    assert_eq!(max_abs(&(want - got).unwrap()), 0.0);
}

/// Opening needs only the header: a file cut off where the tensor data
/// begins still opens (token counts work), and loading it is an error, not
/// a panic.
#[test]
fn open_reads_no_weights() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = tiny_gguf(dir.path());
    let offset = {
        let mut f = std::fs::File::open(&gguf).unwrap();
        gguf_file::Content::read(&mut f).unwrap().tensor_data_offset
    };
    OpenOptions::new()
        .write(true)
        .open(&gguf)
        .unwrap()
        .set_len(offset)
        .unwrap();
    let open = resolved(&gguf).open().unwrap();
    let msgs = [
        ChatMessage::new(Role::User, "hi"),
        ChatMessage::new(Role::Assistant, "hello"),
    ];
    let count = open.token_counter().chat.count_chat(&msgs, None).unwrap();
    let tok = ChatTokenizer::from_gguf(&gguf).unwrap();
    let enc = tok.encode_chat(&msgs, None).unwrap();
    assert_eq!(
        (count.total, count.trained),
        (enc.len(), enc.trained_token_count())
    );
    assert!(count.trained > 0 && count.trained < count.total);
    assert!(open.load(WeightPath::Packed).is_err());
}

/// Whether the embeddings are tied is known at open, from the tensor index.
#[test]
fn open_tells_tied_from_untied_embeddings() {
    let dir = tempfile::tempdir().unwrap();
    let spec = TinySpec::default();
    let mut w = tiny_weights(&spec).unwrap();
    let embed = w
        .iter()
        .find(|(n, _)| n == "model.embed_tokens.weight")
        .map(|(_, t)| t.affine(0.5, 0.0).unwrap())
        .unwrap();
    w.push(("lm_head.weight".into(), embed));
    let untied = dir.path().join("untied.gguf");
    write_tiny_gguf(&untied, &spec, &w, GgmlDType::F32).unwrap();
    let open = resolved(&untied).open().unwrap();
    assert!(!open.config.tie_word_embeddings);
    assert!(
        !load_model(&untied, WeightPath::F32)
            .unwrap()
            .cfg
            .tie_word_embeddings
    );
    let tied = resolved(&tiny_gguf(dir.path())).open().unwrap();
    assert!(tied.config.tie_word_embeddings);
}

#[test]
fn opening_a_missing_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let e = resolved(&dir.path().join("nope.gguf")).open().unwrap_err();
    assert!(matches!(e, ModelError::NotFound(_)), "{e}");
}
