//! `hf:` fetching against [`FakeHub`] on localhost: a GGUF repo and a
//! safetensors repo are fetched, resolved again without the hub, opened and
//! run; and every failure (checksum, auth, 404, unreachable hub, no usable
//! files, a dropped download) gives its own error.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use super::fake_hub::{FakeFile, FakeHub, FakeRepo};
use super::*;
use crate::generate::StepModel;
use crate::testing::{byte_symbols, write_tiny_model, TinySpec};
use crate::WeightPath;

fn settings(hub: &FakeHub, token: Option<&str>) -> HubSettings {
    HubSettings {
        endpoint: hub.endpoint().to_string(),
        token: token.map(str::to_string),
        retries: 0,
    }
}

/// A registry in a fresh home that fetches from `hub`.
fn registry(home: &Path, hub: &FakeHub, token: Option<&str>) -> Registry {
    Registry::new(home).with_hub(settings(hub, token))
}

/// A hub that is not there: resolving must not need it.
fn offline(home: &Path) -> Registry {
    Registry::new(home).with_hub(HubSettings {
        endpoint: "http://127.0.0.1:9".into(),
        token: None,
        retries: 0,
    })
}

fn spec(s: &str) -> HubSpec {
    HubSpec::parse(s).unwrap().unwrap()
}

/// The bytes of a tiny random Llama GGUF that hone can open.
fn tiny_gguf() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let (gguf, _) = write_tiny_model(dir.path(), &TinySpec::default()).unwrap();
    std::fs::read(gguf).unwrap()
}

fn gguf_repo() -> FakeRepo {
    let gguf = tiny_gguf();
    FakeRepo::new(
        "test/Tiny-GGUF",
        vec![
            FakeFile::new("README.md", b"# tiny".to_vec(), false),
            FakeFile::new("tiny-Q8_0.gguf", gguf.clone(), true),
            FakeFile::new("tiny-Q4_K_M.gguf", gguf, true),
        ],
    )
}

fn families_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/families")
        .join(name)
}

/// A byte-level BPE `tokenizer.json` over the 256 byte symbols (the tiny
/// families' vocabulary size), with no merges.
fn byte_tokenizer_json() -> Vec<u8> {
    let vocab: serde_json::Map<String, serde_json::Value> = byte_symbols()
        .into_iter()
        .enumerate()
        .map(|(i, s)| (s, serde_json::json!(i)))
        .collect();
    let byte_level = serde_json::json!({
        "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true
    });
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": byte_level,
        "post_processor": null,
        "decoder": byte_level,
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": []
        }
    })
    .to_string()
    .into_bytes()
}

/// testdata/families/qwen2 as a hub repo, with a tokenizer added.
fn qwen2_repo() -> FakeRepo {
    let dir = families_dir("qwen2");
    let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
    FakeRepo::new(
        "test/tiny-qwen2",
        vec![
            FakeFile::new("config.json", read("config.json"), false),
            FakeFile::new("model.safetensors", read("model.safetensors"), true),
            FakeFile::new("tokenizer.json", byte_tokenizer_json(), false),
            FakeFile::new(
                "tokenizer_config.json",
                // The byte symbol of byte 0 ends a turn: the vocabulary has no
                // special tokens.
                br#"{"eos_token": "\u0100", "chat_template": "{% for m in messages %}{{ m['content'] }}{% endfor %}"}"#
                    .to_vec(),
                false,
            ),
            FakeFile::new("README.md", b"# tiny qwen2".to_vec(), false),
        ],
    )
}

/// Greedy-step logits of the prompt `ids` through the packed or f32 path.
fn step_logits(resolved: &ResolvedModel, ids: &[u32]) -> Vec<f32> {
    let engine = resolved.open().unwrap().load(WeightPath::F32).unwrap();
    let model = &engine.model;
    let mut cache = model.new_cache();
    model.step(ids, 0, &mut cache).unwrap()
}

#[test]
fn a_gguf_repo_is_fetched_registered_and_resolves_offline() {
    let home = tempfile::tempdir().unwrap();
    let repo = gguf_repo();
    let want_bytes = repo.files[2].bytes.clone();
    let hub = FakeHub::start(repo).unwrap();
    let reg = registry(home.path(), &hub, None);
    let got = reg.fetch_hub(&spec("hf:test/Tiny-GGUF"), None).unwrap();
    assert_eq!(got.id, "hf--test--Tiny-GGUF");
    let ModelSource::Gguf(path) = &got.source else {
        panic!("expected a GGUF source, got {:?}", got.source)
    };
    // Several GGUF files: the Q4_K_M one is the default.
    assert_eq!(path.file_name().unwrap(), "tiny-Q4_K_M.gguf");
    assert!(path.starts_with(home.path().join("models/hf")), "{path:?}");
    assert_eq!(std::fs::read(path).unwrap(), want_bytes);
    let entry = &reg.installed().unwrap()[0];
    assert_eq!(entry.id, got.id);
    let origin = entry.hub.as_ref().unwrap();
    assert_eq!(origin.repo, "test/Tiny-GGUF");
    assert_eq!(origin.files, vec!["tiny-Q4_K_M.gguf".to_string()]);
    drop(hub);

    // Both the spec and the printed id resolve with the hub gone.
    let again = offline(home.path()).resolve("hf:test/Tiny-GGUF").unwrap();
    assert_eq!(again, got);
    assert_eq!(offline(home.path()).resolve(&got.id).unwrap(), got);
    // The fetched model runs, and computes what the original file computes.
    let original = tempfile::tempdir().unwrap();
    let file = original.path().join("tiny.gguf");
    std::fs::write(&file, &want_bytes).unwrap();
    let ids = [1, 72, 101, 108, 108, 111];
    let fetched = step_logits(&again, &ids);
    assert_eq!(fetched.len(), TinySpec::default().vocab_size());
    assert!(fetched.iter().all(|x| x.is_finite()));
    assert_eq!(fetched, step_logits(&resolve_path(&file).unwrap(), &ids));
}

#[test]
fn a_file_can_be_chosen_and_an_unknown_one_is_refused() {
    let home = tempfile::tempdir().unwrap();
    let hub = FakeHub::start(gguf_repo()).unwrap();
    let reg = registry(home.path(), &hub, None);
    let got = reg
        .fetch_hub(&spec("hf:test/Tiny-GGUF"), Some("tiny-Q8_0.gguf"))
        .unwrap();
    assert_eq!(got.source.path().file_name().unwrap(), "tiny-Q8_0.gguf");
    let err = reg
        .fetch_hub(&spec("hf:test/Tiny-GGUF"), Some("nope.gguf"))
        .unwrap_err();
    assert!(err.to_string().contains("tiny-Q4_K_M.gguf"), "{err}");
}

#[test]
fn a_safetensors_repo_is_fetched_opened_and_matches_transformers() {
    let home = tempfile::tempdir().unwrap();
    let hub = FakeHub::start(qwen2_repo()).unwrap();
    let reg = registry(home.path(), &hub, None);
    let got = reg.fetch_hub(&spec("hf:test/tiny-qwen2"), None).unwrap();
    let ModelSource::HfDir(dir) = &got.source else {
        panic!("expected an HF directory, got {:?}", got.source)
    };
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(dir.join(f).exists(), "{f} missing in {dir:?}");
    }
    assert!(
        !dir.join("README.md").exists(),
        "only model files are fetched"
    );
    drop(hub);

    let resolved = offline(home.path()).resolve("hf:test/tiny-qwen2").unwrap();
    assert_eq!(resolved, got);
    // Its tokenizer and chat template are read from the fetched files.
    let open = resolved.open().unwrap();
    assert_eq!(open.config.vocab_size, 256);
    let prompt = open
        .tokenizer
        .encode_prompt(
            &[hone_text::ChatMessage::new(hone_text::Role::User, "hi")],
            None,
        )
        .unwrap();
    assert_eq!(prompt.len(), 2, "one byte token per character: {prompt:?}");
    // transformers' logits for the family's fixed ids (testdata/families).
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(families_dir("qwen2").join("logits.json")).unwrap())
            .unwrap();
    let ids: Vec<u32> = serde_json::from_value(reference["input_ids"].clone()).unwrap();
    let want: Vec<Vec<f32>> = serde_json::from_value(reference["logits"].clone()).unwrap();
    let model = crate::load_model(dir, WeightPath::F32).unwrap();
    let x = Tensor::new(ids.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let got: Vec<Vec<f32>> = model
        .forward(&x, 0, None)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec2()
        .unwrap();
    let gap = got
        .iter()
        .flatten()
        .zip(want.iter().flatten())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert_eq!(got.len(), want.len());
    assert!(gap < 1e-4, "max |hone - transformers| = {gap}");
}

#[test]
fn a_file_with_the_wrong_sha256_is_deleted_and_not_registered() {
    let home = tempfile::tempdir().unwrap();
    let mut repo = gguf_repo();
    repo.files.truncate(2);
    repo.files[1].wrong_sha256 = Some("ab".repeat(32));
    let hub = FakeHub::start(repo).unwrap();
    let reg = registry(home.path(), &hub, None);
    let err = reg.fetch_hub(&spec("hf:test/Tiny-GGUF"), None).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, RegistryError::Hub(HubError::Checksum { .. })),
        "{msg}"
    );
    assert!(
        msg.contains(&"ab".repeat(32)) && msg.contains("deleted"),
        "{msg}"
    );
    let blobs = home.path().join("models/hf/models--test--Tiny-GGUF/blobs");
    let left: Vec<_> = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    assert!(left.is_empty(), "bad blob kept: {left:?}");
    assert!(reg.installed().unwrap().is_empty());
}

#[test]
fn a_private_repo_needs_the_right_token() {
    let home = tempfile::tempdir().unwrap();
    let mut repo = gguf_repo();
    repo.token = Some("hf_secret".into());
    let hub = FakeHub::start(repo).unwrap();
    let s = spec("hf:test/Tiny-GGUF");

    let err = registry(home.path(), &hub, None)
        .fetch_hub(&s, None)
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("401") && msg.contains("set HF_TOKEN"), "{msg}");

    let wrong = registry(home.path(), &hub, Some("hf_wrong"));
    let msg = wrong.fetch_hub(&s, None).unwrap_err().to_string();
    assert!(
        msg.contains("401") && msg.contains("HF_TOKEN is set"),
        "{msg}"
    );

    let right = registry(home.path(), &hub, Some("hf_secret"));
    let got = right.fetch_hub(&s, None).unwrap();
    assert!(got.source.path().exists());
}

#[test]
fn missing_repos_revisions_and_unreachable_hubs_say_so() {
    let home = tempfile::tempdir().unwrap();
    let hub = FakeHub::start(gguf_repo()).unwrap();
    let reg = registry(home.path(), &hub, None);
    let msg = reg
        .fetch_hub(&spec("hf:test/Nope"), None)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("test/Nope") && msg.contains("404"), "{msg}");
    let msg = reg
        .fetch_hub(&spec("hf:test/Tiny-GGUF@v9"), None)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("revision") && msg.contains("'v9'"), "{msg}");

    let err = offline(home.path())
        .fetch_hub(&spec("hf:test/Tiny-GGUF"), None)
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, RegistryError::Hub(HubError::Unreachable { .. })),
        "{msg}"
    );
    assert!(
        msg.contains("HF_ENDPOINT") && msg.contains("127.0.0.1:9"),
        "{msg}"
    );
    // An unfetched hf: spec goes to the hub through the one resolve door.
    let msg = offline(home.path())
        .resolve("hf:test/Tiny-GGUF")
        .unwrap_err()
        .to_string();
    assert!(msg.contains("HF_ENDPOINT"), "{msg}");
    let msg = offline(home.path())
        .resolve("hf:bad")
        .unwrap_err()
        .to_string();
    assert!(msg.contains("hf:ORG/NAME"), "{msg}");
}

#[test]
fn a_repo_without_model_files_is_refused() {
    let home = tempfile::tempdir().unwrap();
    let repo = FakeRepo::new(
        "test/docs-only",
        vec![
            FakeFile::new("README.md", b"# nothing".to_vec(), false),
            FakeFile::new("config.json", b"{}".to_vec(), false),
        ],
    );
    let hub = FakeHub::start(repo).unwrap();
    let err = registry(home.path(), &hub, None)
        .fetch_hub(&spec("hf:test/docs-only"), None)
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, RegistryError::Hub(HubError::NoUsableFiles { .. })),
        "{msg}"
    );
    assert!(msg.contains(".gguf") && msg.contains("README.md"), "{msg}");
}

#[test]
fn a_dropped_download_resumes_where_it_stopped() {
    let home = tempfile::tempdir().unwrap();
    let mut repo = gguf_repo();
    repo.files.truncate(2);
    repo.cut_first_download_of = Some("tiny-Q8_0.gguf".into());
    let want = repo.files[1].bytes.clone();
    let hub = FakeHub::start(repo).unwrap();
    let reg = registry(home.path(), &hub, None);
    let s = spec("hf:test/Tiny-GGUF");

    let err = reg.fetch_hub(&s, None).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, RegistryError::Hub(HubError::Download { .. })),
        "{msg}"
    );
    assert!(msg.contains("resume"), "{msg}");
    assert!(reg.installed().unwrap().is_empty());

    let got = reg.fetch_hub(&s, None).unwrap();
    assert_eq!(std::fs::read(got.source.path()).unwrap(), want);
    // The second run asked only for the bytes the first did not get.
    let half = want.len() / 2;
    let ranges: Vec<String> = hub
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/tiny-Q8_0.gguf"))
        .filter_map(|r| r.range)
        .collect();
    assert_eq!(
        ranges,
        vec![
            "bytes=0-0".to_string(),
            "bytes=0-".into(),
            "bytes=0-0".into(),
            format!("bytes={half}-"),
        ]
    );
}

#[test]
fn a_dropped_download_is_retried_in_the_same_run() {
    let home = tempfile::tempdir().unwrap();
    let mut repo = gguf_repo();
    repo.files.truncate(2);
    repo.cut_first_download_of = Some("tiny-Q8_0.gguf".into());
    let want = repo.files[1].bytes.clone();
    let hub = FakeHub::start(repo).unwrap();
    let reg = Registry::new(home.path()).with_hub(HubSettings {
        retries: 2,
        ..settings(&hub, None)
    });
    let got = reg.fetch_hub(&spec("hf:test/Tiny-GGUF"), None).unwrap();
    assert_eq!(std::fs::read(got.source.path()).unwrap(), want);
}
