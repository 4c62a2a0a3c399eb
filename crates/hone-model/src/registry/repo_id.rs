//! The Hugging Face repository id of a base model (`HuggingFaceTB/SmolLM2-135M-Instruct`),
//! for `adapter_config.json`'s `base_model_name_or_path`: peft's
//! `AutoPeftModelForCausalLM` loads the base from there, so hone's own id
//! (`smollm2-135m-instruct`) would send it looking for a repository that does not exist.

use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};

use super::{HubSpec, Registry, KNOWN_MODELS};

/// The repository id of the base model `spec` (a hone id, an `hf:` spec or a path), or
/// `None` when nothing says it. In order: the registry's entry for a known model; the
/// repository of an `hf:` spec or of a model fetched as one; for a path (or an installed
/// model's file), a known model's file name, then the GGUF's `general.*` metadata
/// (`base_model.0.repo_url`, `source.repo_url`, `source.huggingface.repository`), or an
/// HF directory's `config.json` `_name_or_path` when that is a repository id.
/// Never fetches anything.
pub fn base_repo_id(spec: &str) -> Option<String> {
    if let Some(k) = KNOWN_MODELS.iter().find(|k| k.id == spec) {
        return Some(k.hf_repo.to_string());
    }
    if let Some(Ok(hub)) = HubSpec::parse(spec) {
        return Some(hub.repo);
    }
    let path = Path::new(spec);
    if path.exists() {
        return repo_id_of_path(path);
    }
    let installed = Registry::default_home().installed().ok()?;
    let m = installed.into_iter().find(|m| m.id == spec)?;
    match m.hub {
        Some(origin) => Some(origin.repo),
        None => repo_id_of_path(m.source.path()),
    }
}

fn repo_id_of_path(path: &Path) -> Option<String> {
    let file_name = path.file_name()?.to_str()?;
    if let Some(k) = KNOWN_MODELS.iter().find(|k| k.file_name == file_name) {
        return Some(k.hf_repo.to_string());
    }
    if path.is_dir() {
        let text = std::fs::read_to_string(path.join("config.json")).ok()?;
        let cfg: serde_json::Value = serde_json::from_str(&text).ok()?;
        return cfg["_name_or_path"].as_str().and_then(as_repo_id);
    }
    let mut f = std::fs::File::open(path).ok()?;
    let content = Content::read(&mut f).ok()?;
    gguf_repo_id(&content)
}

/// The repository named in a GGUF's `general.*` metadata (llama.cpp's converter writes
/// these from the model card).
pub fn gguf_repo_id(content: &Content) -> Option<String> {
    [
        "general.base_model.0.repo_url",
        "general.source.repo_url",
        "general.source.huggingface.repository",
        "general.source.url",
    ]
    .iter()
    .find_map(|k| match content.metadata.get(*k) {
        Some(Value::String(s)) => as_repo_id(s),
        _ => None,
    })
}

/// `ORG/NAME` from `ORG/NAME` or `https://huggingface.co/ORG/NAME[/...]`; `None` for a
/// local path or anything else.
fn as_repo_id(s: &str) -> Option<String> {
    let s = s.trim();
    let rest = s
        .strip_prefix("https://huggingface.co/")
        .or_else(|| s.strip_prefix("http://huggingface.co/"))
        .unwrap_or(s);
    let mut parts = rest.trim_end_matches('/').split('/');
    let (org, name) = (parts.next()?, parts.next()?);
    let fine = |p: &str| {
        !p.is_empty()
            && p != "."
            && p != ".."
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    let is_url = rest.len() != s.len();
    let extra = parts.next().is_some();
    (fine(org) && fine(name) && (is_url || !extra) && !s.starts_with(['/', '.']))
        .then(|| format!("{org}/{name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_models_and_hub_specs_name_their_repository() {
        assert_eq!(
            base_repo_id("smollm2-135m-instruct").as_deref(),
            Some("HuggingFaceTB/SmolLM2-135M-Instruct")
        );
        assert_eq!(
            base_repo_id("hf:Qwen/Qwen3-0.6B@main").as_deref(),
            Some("Qwen/Qwen3-0.6B")
        );
        for k in KNOWN_MODELS {
            assert!(as_repo_id(k.hf_repo).is_some(), "{}", k.hf_repo);
        }
    }

    #[test]
    fn repository_ids_are_told_from_paths_and_urls() {
        assert_eq!(as_repo_id("org/name").as_deref(), Some("org/name"));
        assert_eq!(
            as_repo_id("https://huggingface.co/google/gemma-3-270m").as_deref(),
            Some("google/gemma-3-270m")
        );
        assert_eq!(
            as_repo_id("https://huggingface.co/google/gemma-3-270m/tree/main").as_deref(),
            Some("google/gemma-3-270m")
        );
        for not in ["/tmp/model", "./m/x", "a/b/c", "name", "", "../x"] {
            assert_eq!(as_repo_id(not), None, "{not}");
        }
    }

    #[test]
    fn an_hf_directory_names_its_repository_in_config_json() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"_name_or_path": "HuggingFaceTB/SmolLM2-135M"}"#,
        )
        .unwrap();
        let p = dir.path().display().to_string();
        assert_eq!(
            base_repo_id(&p).as_deref(),
            Some("HuggingFaceTB/SmolLM2-135M")
        );
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"_name_or_path": "/x/y"}"#,
        )
        .unwrap();
        assert_eq!(base_repo_id(&p), None);
    }
}
