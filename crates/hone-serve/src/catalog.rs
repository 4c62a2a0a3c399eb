//! The base models a server offers: resolved once at start (from hone-model's
//! registry under `$HONE_HOME/models`, or from explicit `--model` values), so
//! that `/v1/models`, job creation and the trainer agree on what an id means.

use std::path::Path;

use hone_model::registry::{
    resolve_path, HubSpec, Registry, RegistryError, ResolvedModel, KNOWN_MODELS,
};
use hone_model::{ChatEngine, OpenModel, OpenOptions, WeightPath};

use crate::api::{Model, ModelTag};
use crate::engines::{ModelCatalog, ServedAdapter};

/// One servable base model: its API object and where its weights are.
#[derive(Debug, Clone, PartialEq)]
pub struct BaseModel {
    pub model: Model,
    pub resolved: ResolvedModel,
}

/// Base models with their weights on disk.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BaseModels {
    models: Vec<BaseModel>,
    adapters: Vec<ServedAdapter>,
    /// How every served model is opened (`--chat-template`): applied by
    /// [`BaseModels::open`] and [`BaseModels::load`], which chat, the
    /// trainer and upload checks all go through.
    open: OpenOptions,
}

/// Why a `--model` value could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(
        "model id '{0}' must be non-empty and contain no '/' or ':' (ids appear in ft: names)"
    )]
    BadId(String),
    #[error(
        "model '{spec}' is neither an existing path nor installed in {models_dir} \
         (installed: {installed}); run `hone model fetch {spec}` with the same HONE_HOME, \
         or pass a GGUF file or HF directory path"
    )]
    NotInstalled {
        spec: String,
        installed: String,
        models_dir: std::path::PathBuf,
    },
    #[error("model '{0}' is given twice")]
    Duplicate(String),
    #[error("--adapter '{spec}': {reason}")]
    BadAdapter { spec: String, reason: String },
}

impl BaseModels {
    /// Exactly these models (the first is the default).
    pub fn new(models: Vec<ResolvedModel>) -> Result<Self, CatalogError> {
        let created = crate::store::unix_now();
        let mut out = BaseModels::default();
        for resolved in models {
            if resolved.id.is_empty() || resolved.id.contains(['/', ':']) {
                return Err(CatalogError::BadId(resolved.id));
            }
            if out.source(&resolved.id).is_some() {
                return Err(CatalogError::Duplicate(resolved.id));
            }
            out.models.push(BaseModel {
                model: Model {
                    id: resolved.id.clone(),
                    object: ModelTag,
                    created,
                    owned_by: "system".into(),
                },
                resolved,
            });
        }
        Ok(out)
    }

    /// Opens every served model with `options` (the `--chat-template` override).
    pub fn with_open_options(mut self, options: OpenOptions) -> Self {
        self.open = options;
        self
    }

    /// Opens a served model (config, tokenizer, chat template; no weights)
    /// with the server's open options.
    pub fn open(&self, resolved: &ResolvedModel) -> hone_model::Result<OpenModel> {
        resolved.open_with(&self.open)
    }

    /// Loads a served model's weights with the server's open options.
    pub fn load(
        &self,
        resolved: &ResolvedModel,
        weights: WeightPath,
    ) -> hone_model::Result<ChatEngine> {
        ChatEngine::load_with(resolved, weights, &self.open)
    }

    /// Resolves `--model` values against the registry under `home`: a
    /// registered id, a GGUF file or HF directory path (its id is the file
    /// stem), or `ID=PATH`. With no values, every installed model whose
    /// weights exist. Never fetches: a server start must not download.
    pub fn resolve(home: &Path, specs: &[String]) -> Result<Self, CatalogError> {
        let registry = Registry::new(home);
        let mut out = Vec::new();
        if specs.is_empty() {
            for m in registry.installed()? {
                // Embedding models are served on /v1/embeddings, not here.
                if m.source.path().exists()
                    && !hone_model::embed::is_embedding_model(m.source.path())
                {
                    out.push(ResolvedModel {
                        id: m.id,
                        source: m.source,
                    });
                }
            }
        }
        for spec in specs {
            out.push(resolve_spec(&registry, spec)?);
        }
        Self::new(out)
    }

    /// Adds adapters trained with `hone train`, each given as `NAME=DIR`, served
    /// as models named `NAME`. The base is the adapter's own
    /// `base_model_name_or_path` when this server offers it, else the default
    /// base model. Only the directory's config is read here; the weights are
    /// checked against the base when `hone serve` loads it at start.
    pub fn with_adapters(mut self, specs: &[String]) -> Result<Self, CatalogError> {
        let created = crate::store::unix_now();
        for spec in specs {
            let bad = |reason: String| CatalogError::BadAdapter {
                spec: spec.clone(),
                reason,
            };
            let (name, dir) = spec
                .split_once('=')
                .map(|(n, d)| (n.trim(), Path::new(d.trim())))
                .ok_or_else(|| bad("expected NAME=DIR".into()))?;
            if name.is_empty() || name.contains('/') || name.starts_with("ft:") {
                return Err(bad(
                    "the name must be non-empty, without '/', and not start with \"ft:\"".into(),
                ));
            }
            if self.source(name).is_some() || self.served_adapter(name).is_some() {
                return Err(CatalogError::Duplicate(name.to_string()));
            }
            let trained_on = adapter_base(dir).map_err(bad)?;
            let base = match trained_on {
                Some(b) if self.source(&b).is_some() => b,
                _ => match self.default_model() {
                    Some(d) => d.model.id.clone(),
                    None => return Err(bad("no base model is served to run it on".into())),
                },
            };
            self.adapters.push(ServedAdapter {
                model: Model {
                    id: name.to_string(),
                    object: ModelTag,
                    created,
                    owned_by: "user".into(),
                },
                base,
                dir: dir.to_path_buf(),
            });
        }
        Ok(self)
    }

    /// Where the weights of base model `id` are.
    pub fn source(&self, id: &str) -> Option<&ResolvedModel> {
        self.models
            .iter()
            .find(|m| m.model.id == id)
            .map(|m| &m.resolved)
    }

    /// The default model (the first).
    pub fn default_model(&self) -> Option<&BaseModel> {
        self.models.first()
    }

    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &BaseModel> {
        self.models.iter()
    }
}

/// The `base_model_name_or_path` of a PEFT adapter directory, after checking
/// that its two files are there.
fn adapter_base(dir: &Path) -> Result<Option<String>, String> {
    use hone_model::lora::{ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE};
    for f in [ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE] {
        if !dir.join(f).is_file() {
            return Err(format!(
                "{} has no {f} (expected a PEFT adapter directory, e.g. `hone train --out`)",
                dir.display()
            ));
        }
    }
    let path = dir.join(ADAPTER_CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let cfg: hone_model::PeftConfig =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(cfg.hone_base().map(str::to_string))
}

fn resolve_spec(registry: &Registry, spec: &str) -> Result<ResolvedModel, CatalogError> {
    if let Some((id, path)) = spec.split_once('=') {
        let mut r = resolve_path(Path::new(path))?;
        r.id = id.trim().to_string();
        return Ok(r);
    }
    let path = Path::new(spec);
    if path.exists() {
        let mut r = resolve_path(path)?;
        // A known model's file keeps its registry id wherever it lives, so
        // `--model /models/SmolLM2-135M-Instruct.Q4_1.gguf` serves
        // `smollm2-135m-instruct`, the id `hone model fetch` would give it.
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        if let Some(k) = KNOWN_MODELS
            .iter()
            .find(|k| name.as_deref() == Some(k.file_name))
        {
            r.id = k.id.to_string();
        }
        return Ok(r);
    }
    // `hf:ORG/NAME[@REV]` names the model `hone model fetch` registered as
    // `hf--ORG--NAME[--REV]`; the server never fetches, so it must be there.
    let id = match HubSpec::parse(spec) {
        Some(Ok(hub)) => hub.model_id(),
        _ => spec.to_string(),
    };
    let installed = registry.installed()?;
    match installed.into_iter().find(|m| m.id == id) {
        Some(m) if m.source.path().exists() => Ok(ResolvedModel {
            id: m.id,
            source: m.source,
        }),
        _ => Err(CatalogError::NotInstalled {
            spec: spec.to_string(),
            installed: {
                let ids: Vec<String> = registry
                    .installed()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|m| m.id)
                    .collect();
                if ids.is_empty() {
                    "none".into()
                } else {
                    ids.join(", ")
                }
            },
            models_dir: registry.models_dir().to_path_buf(),
        }),
    }
}

impl ModelCatalog for BaseModels {
    fn base_models(&self) -> Vec<Model> {
        self.models.iter().map(|m| m.model.clone()).collect()
    }

    /// Read from the model's own config (its file's metadata; no weights are
    /// loaded), so a job resolves "auto" with the same model size as
    /// `hone train` does.
    fn model_size(&self, id: &str) -> Option<hone_data::hparams::ModelSize> {
        let m = self.models.iter().find(|m| m.model.id == id)?;
        match self.open(&m.resolved) {
            Ok(open) => Some(open.config.size()),
            Err(e) => {
                tracing::warn!(model = id, error = %e, "cannot read the model's size");
                None
            }
        }
    }

    fn served_adapters(&self) -> Vec<ServedAdapter> {
        self.adapters.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_paths_and_named_paths_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let spec = hone_model::testing::TinySpec::default();
        let (gguf, _) = hone_model::testing::write_tiny_model(dir.path(), &spec).unwrap();
        let specs = vec![
            gguf.display().to_string(),
            format!("house={}", gguf.display()),
        ];
        let c = BaseModels::resolve(dir.path(), &specs).unwrap();
        let ids: Vec<String> = c.base_models().into_iter().map(|m| m.id).collect();
        assert_eq!(ids, vec!["tiny", "house"]);
        assert_eq!(c.source("house").unwrap().source.path(), gguf.as_path());
        assert_eq!(c.default_model().unwrap().model.id, "tiny");
        let dup = BaseModels::resolve(dir.path(), &[specs[0].clone(), specs[0].clone()]);
        assert!(matches!(dup, Err(CatalogError::Duplicate(_))));
        let bad = BaseModels::resolve(dir.path(), &[format!("a:b={}", gguf.display())]);
        assert!(matches!(bad, Err(CatalogError::BadId(_))));
    }

    #[test]
    fn a_known_models_file_keeps_its_registry_id() {
        let dir = tempfile::tempdir().unwrap();
        let spec = hone_model::testing::TinySpec::default();
        let (gguf, _) = hone_model::testing::write_tiny_model(dir.path(), &spec).unwrap();
        let known = dir.path().join(KNOWN_MODELS[0].file_name);
        std::fs::copy(&gguf, &known).unwrap();
        let c = BaseModels::resolve(dir.path(), &[known.display().to_string()]).unwrap();
        assert_eq!(c.default_model().unwrap().model.id, KNOWN_MODELS[0].id);
    }

    #[test]
    fn adapters_are_named_checked_and_put_on_their_base() {
        let dir = tempfile::tempdir().unwrap();
        let spec = hone_model::testing::TinySpec::default();
        let (gguf, _) = hone_model::testing::write_tiny_model(dir.path(), &spec).unwrap();
        let adapter = dir.path().join("ad");
        std::fs::create_dir(&adapter).unwrap();
        let c = || {
            BaseModels::resolve(
                dir.path(),
                &[
                    gguf.display().to_string(),
                    format!("house={}", gguf.display()),
                ],
            )
            .unwrap()
        };
        let missing = c().with_adapters(&[format!("support={}", adapter.display())]);
        let err = missing.unwrap_err().to_string();
        assert!(err.contains("adapter_config.json"), "{err}");
        let cfg = |base: &str| {
            format!(
                r#"{{"peft_type":"LORA","task_type":"CAUSAL_LM","r":2,"lora_alpha":4,"target_modules":["q_proj"],"base_model_name_or_path":"{base}"}}"#
            )
        };
        std::fs::write(adapter.join("adapter_model.safetensors"), b"x").unwrap();
        std::fs::write(adapter.join("adapter_config.json"), cfg("house")).unwrap();
        let one = c()
            .with_adapters(&[format!("support={}", adapter.display())])
            .unwrap();
        let a = one.served_adapter("support").unwrap();
        assert_eq!(
            (a.base.as_str(), a.dir.as_path()),
            ("house", adapter.as_path())
        );
        std::fs::write(adapter.join("adapter_config.json"), cfg("elsewhere")).unwrap();
        let other = c()
            .with_adapters(&[format!("support={}", adapter.display())])
            .unwrap();
        assert_eq!(
            other.served_adapter("support").unwrap().base,
            "tiny",
            "the default base"
        );
        for bad in ["support", "ft:x=/tmp", "tiny=/tmp", "a/b=/tmp"] {
            assert!(c().with_adapters(&[bad.to_string()]).is_err(), "{bad}");
        }
        let twice = format!("s={}", adapter.display());
        assert!(matches!(
            c().with_adapters(&[twice.clone(), twice]),
            Err(CatalogError::Duplicate(_))
        ));
    }

    /// `--model hf:ORG/NAME` serves what `hone model fetch hf:ORG/NAME`
    /// registered (as `hf--ORG--NAME`), without fetching.
    #[test]
    fn a_fetched_hub_model_resolves_by_its_hf_spec() {
        let dir = tempfile::tempdir().unwrap();
        let spec = hone_model::testing::TinySpec::default();
        let (gguf, _) = hone_model::testing::write_tiny_model(dir.path(), &spec).unwrap();
        let entry = serde_json::json!([{
            "id": "hf--org--tiny",
            "source": {"format": "gguf", "path": gguf},
            "installed_at": 0,
        }]);
        std::fs::create_dir_all(dir.path().join("models")).unwrap();
        std::fs::write(
            dir.path().join("models/registry.json"),
            serde_json::to_vec(&entry).unwrap(),
        )
        .unwrap();
        let c = BaseModels::resolve(dir.path(), &["hf:org/tiny".to_string()]).unwrap();
        assert_eq!(c.default_model().unwrap().model.id, "hf--org--tiny");
        let err = BaseModels::resolve(dir.path(), &["hf:org/other".to_string()]).unwrap_err();
        assert!(err.to_string().contains("hf:org/other"), "{err}");
    }

    #[test]
    fn an_unknown_id_is_an_error_that_lists_what_exists() {
        let dir = tempfile::tempdir().unwrap();
        let err = BaseModels::resolve(dir.path(), &["nope".to_string()]).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
        assert!(BaseModels::resolve(dir.path(), &[]).unwrap().is_empty());
    }
}
