//! HF model directories as users have them: weights sharded as
//! `model-0000x-of-0000y.safetensors` with `model.safetensors.index.json`,
//! `tokenizer.json`, and `tokenizer_config.json` whose `chat_template` is a
//! string or a list of named templates. `--model DIR` (the registry's
//! `resolve_path`, then open and load) must read every family's directory
//! exactly as the single-file one.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use hone_model::registry::{resolve_path, ModelSource};
use hone_model::testing::{write_tiny_model, TinySpec};
use hone_model::{load_model, ChatEngine, WeightPath};
use hone_text::ChatTokenizer;
use serde_json::json;

use crate::families::{family_dir, full_logits as logits, reference, FAMILIES};

/// Writes `tensors` as `shards` files plus the index transformers writes.
fn write_shards(dir: &Path, tensors: &HashMap<String, Tensor>, shards: usize) {
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let mut weight_map = serde_json::Map::new();
    for s in 0..shards {
        let file = format!("model-{:05}-of-{:05}.safetensors", s + 1, shards);
        let part: HashMap<String, Tensor> = names
            .iter()
            .enumerate()
            .filter(|(i, _)| i % shards == s)
            .map(|(_, n)| ((*n).clone(), tensors[*n].clone()))
            .collect();
        for n in part.keys() {
            weight_map.insert(n.clone(), json!(file));
        }
        candle_core::safetensors::save(&part, dir.join(&file)).unwrap();
    }
    let index = json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::to_vec_pretty(&index).unwrap(),
    )
    .unwrap();
}

/// A tokenizer for the tiny models (its vocabulary is the tiny GGUF's; the
/// family models only need one to be opened as a chat model).
fn tiny_tokenizer(tmp: &Path) -> ChatTokenizer {
    let (gguf, _) = write_tiny_model(tmp, &TinySpec::default()).unwrap();
    ChatTokenizer::from_gguf(&gguf).unwrap()
}

#[test]
fn sharded_hf_dir_of_every_family_loads_as_the_single_file() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = tiny_tokenizer(tmp.path());
    let named = json!([
        {"name": "tool_use", "template": "{{ 'tools' }}"},
        {"name": "default", "template": "{% for m in messages %}[{{ m['content'] }}]{% endfor %}"}
    ]);
    for name in FAMILIES {
        let src = family_dir(name);
        let dir = tmp.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
        let tensors =
            candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
        write_shards(&dir, &tensors, 3);
        std::fs::write(
            dir.join("tokenizer.json"),
            tok.tokenizer.inner().to_string(false).unwrap(),
        )
        .unwrap();
        let tc = json!({"eos_token": "<|im_end|>", "chat_template": named});
        std::fs::write(dir.join("tokenizer_config.json"), tc.to_string()).unwrap();

        let resolved = resolve_path(&dir).unwrap();
        assert_eq!(resolved.source, ModelSource::HfDir(dir.clone()));
        let engine = ChatEngine::load(&resolved, WeightPath::F32).unwrap();
        let single = load_model(&src, WeightPath::F32).unwrap();
        let (ids, want) = reference(name);
        let got = logits(&engine.model, &ids);
        assert_eq!(got, logits(&single, &ids), "{name}: sharded != single file");
        let gap = crate::families::max_gap(&got, &want);
        assert!(gap < 1e-4, "{name}: sharded vs transformers {gap}");
        // The list form picks the template named `default`.
        assert_eq!(
            engine.tokenizer.template.source(),
            named[1]["template"].as_str().unwrap(),
            "{name}"
        );
    }
}

#[test]
fn a_shard_index_that_lies_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let src = family_dir("qwen2");
    let dir = tmp.path().join("m");
    std::fs::create_dir(&dir).unwrap();
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let tensors =
        candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    write_shards(&dir, &tensors, 2);
    // Point one tensor at the wrong shard.
    let idx_path = dir.join("model.safetensors.index.json");
    let mut idx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&idx_path).unwrap()).unwrap();
    let map = idx["weight_map"].as_object_mut().unwrap();
    let (name, file) = map
        .iter()
        .next()
        .map(|(k, v)| (k.clone(), v.clone()))
        .unwrap();
    let other = if file == "model-00001-of-00002.safetensors" {
        "model-00002-of-00002.safetensors"
    } else {
        "model-00001-of-00002.safetensors"
    };
    map.insert(name.clone(), json!(other));
    std::fs::write(&idx_path, idx.to_string()).unwrap();
    let err = load_model(&dir, WeightPath::F32).unwrap_err().to_string();
    assert!(err.contains(&name) && err.contains(other), "{err}");

    // A missing shard names the file.
    std::fs::remove_file(dir.join(other)).unwrap();
    let err = load_model(&dir, WeightPath::F32).unwrap_err().to_string();
    assert!(err.contains(other), "{err}");
}

/// An HF directory without a chat template gets the family's default, and
/// says so: Gemma 3's for a Gemma, ChatML for the others.
#[test]
fn a_directory_without_template_gets_its_familys_default() {
    use hone_text::TemplateOrigin;
    let tmp = tempfile::tempdir().unwrap();
    let tok = tiny_tokenizer(tmp.path());
    for (name, gemma) in [("gemma3", true), ("qwen2", false)] {
        let dir = tmp.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        for f in ["config.json", "model.safetensors"] {
            std::fs::copy(family_dir(name).join(f), dir.join(f)).unwrap();
        }
        std::fs::write(
            dir.join("tokenizer.json"),
            tok.tokenizer.inner().to_string(false).unwrap(),
        )
        .unwrap();
        let open = resolve_path(&dir).unwrap().open().unwrap();
        let origin = open.tokenizer.template.origin().clone();
        let want = if gemma {
            TemplateOrigin::GemmaDefault {
                file: "model directory",
            }
        } else {
            TemplateOrigin::ChatmlDefault {
                file: "model directory",
            }
        };
        assert_eq!(origin, want, "{name}");
        let shown = origin.to_string();
        assert!(shown.contains("has none"), "{shown}");
    }
}
