//! The Hugging Face repository id of a base model (`HuggingFaceTB/SmolLM2-135M-Instruct`),
//! for `adapter_config.json`'s `base_model_name_or_path`: peft's
//! `AutoPeftModelForCausalLM` loads the base from there, so hone's own id
//! (`smollm2-135m-instruct`) would send it looking for a repository that does not exist.

use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};

use super::{HubSpec, Registry, KNOWN_MODELS};

/// The repository id of the base model `spec` (a hone id, an `hf:` spec, a path, or the
/// file stem hone names a model given by path), or `None` when nothing says it. In
/// order: the registry's entry for a known model; the repository of an `hf:` spec or of
/// a model fetched as one; for a path (or an installed model's file), a known model's
/// file name, then the GGUF's `general.*` metadata (`base_model.0.repo_url`,
/// `source.repo_url`, `source.huggingface.repository`), or an HF directory's
/// `config.json` `_name_or_path` when that is a repository id; last, a known model's or
/// an installed model's file stem (`hone train --model DIR/SmolLM2-135M-Instruct.Q4_1.gguf`
/// names its base `SmolLM2-135M-Instruct.Q4_1`, the path being gone by the time the
/// adapter is written). Never fetches anything. Installed models are looked up in the
/// default `HONE_HOME` ([`Registry::base_repo_id`] for another).
pub fn base_repo_id(spec: &str) -> Option<String> {
    Registry::default_home().base_repo_id(spec)
}

impl Registry {
    /// [`base_repo_id`], looking installed models up in this registry.
    pub fn base_repo_id(&self, spec: &str) -> Option<String> {
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
        if let Some(k) = KNOWN_MODELS.iter().find(|k| file_stem(k.file_name) == spec) {
            return Some(k.hf_repo.to_string());
        }
        let installed = self.installed().ok()?;
        let m = installed.iter().find(|m| m.id == spec).or_else(|| {
            installed
                .iter()
                .find(|m| m.source.path().file_stem().and_then(|s| s.to_str()) == Some(spec))
        })?;
        match &m.hub {
            Some(origin) => Some(origin.repo.clone()),
            None => repo_id_of_path(m.source.path()),
        }
    }
}

/// What `hone train` records as an adapter's base (`hone_base_model`), so that `hone
/// merge`, `hone export` and `hone eval` find it again without `--model`: for a model
/// given by path (`spec`), the id of the installed model that is that file, else the
/// file's absolute path — not the file stem hone names such a model by (`resolved_id`),
/// which resolves to nothing later; any other spec as resolved. Installed models are
/// looked up in the default `HONE_HOME`.
pub fn recorded_base(spec: &str, resolved_id: &str) -> String {
    Registry::default_home().recorded_base(spec, resolved_id)
}

/// Whether an adapter's recorded base ([`crate::PeftConfig::hone_base`]) names the model
/// loaded as `id`: the same id, or a path whose file stem is the id hone gives a model
/// loaded by path (so `hone chat --model PATH --adapter DIR` does not warn about its own
/// base).
pub fn is_same_base(recorded: &str, id: &str) -> bool {
    recorded == id
        || (recorded.contains(std::path::MAIN_SEPARATOR)
            && Path::new(recorded).file_stem().and_then(|s| s.to_str()) == Some(id))
}

impl Registry {
    /// [`recorded_base`], looking installed models up in this registry.
    pub fn recorded_base(&self, spec: &str, resolved_id: &str) -> String {
        let path = Path::new(spec);
        if !path.exists() {
            return resolved_id.to_string();
        }
        let abs = canonical(path);
        let installed = self.installed().unwrap_or_default();
        match installed.iter().find(|m| canonical(m.source.path()) == abs) {
            Some(m) => m.id.clone(),
            None => abs.display().to_string(),
        }
    }

    /// The base model an adapter records (`recorded`, see [`recorded_base`]) as a spec
    /// [`super::resolve`] takes, without fetching anything, or `None` when it names
    /// nothing hone can find: an existing path, an installed or a known model as it is;
    /// else a known model for its file (a vanished path, or the file stem adapters
    /// trained on a path recorded before [`recorded_base`]), an installed model for its
    /// file's stem.
    pub fn recorded_base_model(&self, recorded: &str) -> Option<String> {
        if recorded.is_empty() {
            return None;
        }
        let installed = self.installed().unwrap_or_default();
        let path = Path::new(recorded);
        if path.exists()
            || installed.iter().any(|m| m.id == recorded)
            || KNOWN_MODELS.iter().any(|k| k.id == recorded)
        {
            return Some(recorded.to_string());
        }
        let name = path
            .file_name()
            .and_then(|s| s.to_str())
            .unwrap_or(recorded);
        if let Some(k) = KNOWN_MODELS
            .iter()
            .find(|k| k.file_name == name || file_stem(k.file_name) == name)
        {
            return Some(k.id.to_string());
        }
        installed
            .iter()
            .find(|m| m.source.path().file_stem().and_then(|s| s.to_str()) == Some(name))
            .map(|m| m.id.clone())
    }
}

fn canonical(p: &Path) -> std::path::PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// `name` without its `.gguf` extension, as [`super::resolve_path`] names a model file.
fn file_stem(name: &str) -> &str {
    Path::new(name)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or(name)
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

    /// The bug: `hone train --model /path/SmolLM2-135M-Instruct.Q4_1.gguf` names its base
    /// by the file stem (`resolve_path`'s id), and the adapter's
    /// `base_model_name_or_path` was that stem, which peft cannot load.
    #[test]
    fn train_on_a_gguf_path_records_the_repo_id_not_the_file_stem() {
        let dir = tempfile::tempdir().unwrap();
        let spec = crate::testing::TinySpec::default();
        let (tiny, _) = crate::testing::write_tiny_model(dir.path(), &spec).unwrap();
        let known = KNOWN_MODELS
            .iter()
            .find(|k| k.id == "smollm2-135m-instruct")
            .unwrap();
        let path = dir.path().join(known.file_name);
        std::fs::copy(&tiny, &path).unwrap();
        let id = super::super::resolve_path(&path).unwrap().id;
        assert_eq!(id, "SmolLM2-135M-Instruct.Q4_1");
        let peft = crate::lora::PeftConfig::from_lora(&crate::LoraConfig::default(), &id);
        assert_eq!(
            peft.base_model_name_or_path.as_deref(),
            Some("HuggingFaceTB/SmolLM2-135M-Instruct")
        );
        assert_eq!(peft.hone_base(), Some("SmolLM2-135M-Instruct.Q4_1"));
        // The path itself, and every known model's stem.
        let p = path.display().to_string();
        assert_eq!(base_repo_id(&p).as_deref(), Some(known.hf_repo));
        for k in KNOWN_MODELS {
            assert_eq!(
                base_repo_id(file_stem(k.file_name)).as_deref(),
                Some(k.hf_repo)
            );
        }
    }

    /// `hone train --model PATH` records the path (or the installed model that is that
    /// file), and `hone merge` / `hone export` find the base again from what was
    /// recorded, also from the file stems older adapters recorded.
    #[test]
    fn a_base_given_by_path_is_recorded_so_that_it_resolves_again() {
        let home = tempfile::tempdir().unwrap();
        let reg = Registry::new(home.path());
        let file = home.path().join("my-base.Q8_0.gguf");
        std::fs::write(&file, b"GGUF").unwrap();
        let abs = std::fs::canonicalize(&file).unwrap().display().to_string();
        let p = file.display().to_string();
        assert_eq!(reg.recorded_base(&p, "my-base.Q8_0"), abs);
        assert_eq!(reg.recorded_base("smollm2-135m-instruct", "x"), "x");
        assert_eq!(reg.recorded_base_model(&abs).as_deref(), Some(abs.as_str()));
        reg.register_entry(super::super::InstalledModel {
            id: "mine".into(),
            source: super::super::ModelSource::Gguf(file.clone()),
            sha256: None,
            installed_at: 0,
            hub: None,
        })
        .unwrap();
        assert_eq!(reg.recorded_base(&p, "my-base.Q8_0"), "mine");
        for (recorded, want) in [
            ("mine", Some("mine")),
            ("my-base.Q8_0", Some("mine")),
            ("smollm2-135m-instruct", Some("smollm2-135m-instruct")),
            ("SmolLM2-135M-Instruct.Q4_1", Some("smollm2-135m-instruct")),
            (
                "/gone/dir/SmolLM2-135M-Instruct.Q4_1.gguf",
                Some("smollm2-135m-instruct"),
            ),
            ("/gone/dir/other.gguf", None),
            ("nothing-known", None),
            ("", None),
        ] {
            assert_eq!(
                reg.recorded_base_model(recorded).as_deref(),
                want,
                "{recorded}"
            );
        }
        assert!(is_same_base("a", "a"));
        assert!(!is_same_base("a", "b"));
        assert!(is_same_base(&abs, "my-base.Q8_0"));
        assert!(!is_same_base("my-base.Q8_0.gguf", "my-base.Q8_0"));
    }

    /// A GGUF registered under another name (not a known file): its stem finds the
    /// installed entry, whose file's `general.*` metadata names the repository.
    #[test]
    fn an_installed_ggufs_stem_finds_the_repo_in_its_general_metadata() {
        use candle_core::quantized::gguf_file;
        let home = tempfile::tempdir().unwrap();
        let reg = Registry::new(home.path());
        let file = home.path().join("models").join("my-base.Q8_0.gguf");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        let repo = Value::String("https://huggingface.co/acme/my-base".into());
        let mut out = std::fs::File::create(&file).unwrap();
        gguf_file::write(&mut out, &[("general.base_model.0.repo_url", &repo)], &[]).unwrap();
        drop(out);
        assert_eq!(reg.base_repo_id("my-base.Q8_0"), None, "not registered yet");
        reg.register_entry(super::super::InstalledModel {
            id: "my-base".into(),
            source: super::super::ModelSource::Gguf(file.clone()),
            sha256: None,
            installed_at: 0,
            hub: None,
        })
        .unwrap();
        for spec in ["my-base", "my-base.Q8_0"] {
            assert_eq!(
                reg.base_repo_id(spec).as_deref(),
                Some("acme/my-base"),
                "{spec}"
            );
        }
        assert_eq!(reg.base_repo_id("other"), None);
    }
}
