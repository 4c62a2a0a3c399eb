//! LoRA parameters for training, and adapters on disk in PEFT's layout.
//!
//! Training attaches `Var`-backed adapters to the model's linear layers: the
//! `LoraAdapter` tensors share storage with the `Var`s, so the optimizer's in-place
//! updates are what the next forward pass sees, and gradients are keyed by the same
//! tensor ids. On disk the adapter is PEFT's (`adapter_config.json` +
//! `adapter_model.safetensors`), so peft, vLLM and llama.cpp's converter can load it.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor, Var};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::atomic_file;
use crate::error::{ModelError, Result};
use crate::linear::{LoraAdapter, TARGET_MODULES};
use crate::llama::Llama;
use crate::token_rows::{TokenRows, PEFT_HEAD_ROWS_KEY, PEFT_ROWS_KEY};

/// PEFT's file names.
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// The prefix PEFT puts before the HF module path in adapter keys.
const PEFT_PREFIX: &str = "base_model.model.";

/// What to train: rank, scaling, dropout and which projections.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// Projection names, e.g. `q_proj`, in model order.
    pub target_modules: Vec<String>,
    /// Token ids whose embedding and LM-head rows are trained
    /// ([`crate::token_rows`]; PEFT's `trainable_token_indices`); empty: none.
    pub trainable_tokens: Vec<u32>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            r: 8,
            alpha: 16.0,
            dropout: 0.0,
            target_modules: vec!["q_proj".into(), "v_proj".into()],
            trainable_tokens: Vec::new(),
        }
    }
}

impl LoraConfig {
    /// Parses `all-linear` or a comma-separated list such as `q_proj,v_proj`; an unknown
    /// name is an error that lists the valid ones.
    pub fn parse_target_modules(spec: &str) -> Result<Vec<String>> {
        let spec = spec.trim();
        if spec.eq_ignore_ascii_case("all-linear") || spec.eq_ignore_ascii_case("all") {
            return Ok(TARGET_MODULES.iter().map(|s| s.to_string()).collect());
        }
        let mut wanted = Vec::new();
        for name in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if !TARGET_MODULES.contains(&name) {
                return Err(ModelError::Adapter(format!(
                    "unknown target module `{name}`; valid: all-linear or a list of {}",
                    TARGET_MODULES.join(", ")
                )));
            }
            wanted.push(name);
        }
        if wanted.is_empty() {
            return Err(ModelError::Adapter("no target modules given".into()));
        }
        // Model order, no duplicates.
        Ok(TARGET_MODULES
            .iter()
            .filter(|m| wanted.contains(m))
            .map(|s| s.to_string())
            .collect())
    }

    /// Checks the ranges and the module names.
    pub fn validate(&self) -> Result<()> {
        if self.r == 0 {
            return Err(ModelError::Adapter("LoRA rank r must be at least 1".into()));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(ModelError::Adapter(format!(
                "lora_alpha must be positive, got {}",
                self.alpha
            )));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(ModelError::Adapter(format!(
                "lora_dropout must be in [0, 1), got {}",
                self.dropout
            )));
        }
        Self::parse_target_modules(&self.target_modules.join(","))?;
        Ok(())
    }

    fn targets(&self, module_path: &str) -> bool {
        let leaf = module_path.rsplit('.').next().unwrap_or(module_path);
        self.target_modules.iter().any(|m| m == leaf)
    }
}

/// One trained module: its HF path and its `A: [r, in]`, `B: [out, r]`.
#[derive(Debug, Clone)]
pub struct LoraModule {
    pub path: String,
    pub a: Var,
    pub b: Var,
}

/// Trained replacement rows of chosen tokens (`[k, hidden]`, see [`TokenRows`]).
#[derive(Debug, Clone)]
pub struct TrainedTokens {
    pub ids: Vec<u32>,
    /// The embedding's rows (and a tied LM head's).
    pub rows: Var,
    /// An untied LM head's own rows.
    pub head: Option<Var>,
}

/// The trainable LoRA parameters attached to a model.
#[derive(Debug, Clone)]
pub struct LoraParams {
    pub config: LoraConfig,
    pub modules: Vec<LoraModule>,
    /// The token rows trained with them (`config.trainable_tokens`), if any.
    pub tokens: Option<TrainedTokens>,
}

impl LoraParams {
    /// Creates adapters on every targeted linear and attaches them. A gets PEFT's
    /// kaiming-uniform init (`a = √5`, i.e. bound `1/√in`), B zeros, so that the model is
    /// unchanged at step 0. The seed fixes every value.
    pub fn attach(model: &mut Llama, config: &LoraConfig, seed: u64) -> Result<Self> {
        config.validate()?;
        let device = model.device().clone();
        let mut rng = StdRng::seed_from_u64(seed);
        let mut modules = Vec::new();
        for (path, lin) in model.linears_mut() {
            if !config.targets(&path) {
                continue;
            }
            let (out_dim, in_dim) = lin.dims();
            let bound = 1.0 / (in_dim as f64).sqrt();
            let a: Vec<f32> = (0..config.r * in_dim)
                .map(|_| rng.random_range(-bound..bound) as f32)
                .collect();
            let a = Var::from_tensor(&Tensor::from_vec(a, (config.r, in_dim), &device)?)?;
            let b = Var::zeros((out_dim, config.r), candle_core::DType::F32, &device)?;
            let adapter =
                LoraAdapter::new(a.as_tensor().clone(), b.as_tensor().clone(), config.alpha)?;
            lin.set_adapter(Some(adapter))?;
            modules.push(LoraModule { path, a, b });
        }
        let tokens = attach_token_rows(model, &config.trainable_tokens)?;
        Ok(Self {
            config: config.clone(),
            modules,
            tokens,
        })
    }

    /// Every trainable tensor with its PEFT-style name (`<module>.lora_A.weight`, and
    /// the token rows under [`PEFT_ROWS_KEY`] and [`PEFT_HEAD_ROWS_KEY`]).
    pub fn trainable(&self) -> Vec<(String, Var)> {
        let lora = self.modules.iter().flat_map(|m| {
            [
                (format!("{}.lora_A.weight", m.path), m.a.clone()),
                (format!("{}.lora_B.weight", m.path), m.b.clone()),
            ]
        });
        let rows = self.tokens.iter().flat_map(|t| {
            let head = t
                .head
                .iter()
                .map(|h| (PEFT_HEAD_ROWS_KEY.to_string(), h.clone()));
            std::iter::once((PEFT_ROWS_KEY.to_string(), t.rows.clone())).chain(head)
        });
        lora.chain(rows).collect()
    }

    /// Number of trainable scalars.
    pub fn num_params(&self) -> usize {
        self.trainable().iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// The adapter's `adapter_config.json` for `base_model`. Rows of an untied head are
    /// PEFT's map form, `{"embed_tokens": ids, "lm_head": ids}`.
    pub fn peft_config(&self, base_model: &str) -> PeftConfig {
        let mut cfg = PeftConfig::from_lora(&self.config, base_model);
        if let Some(t) = self.tokens.as_ref().filter(|t| t.head.is_some()) {
            cfg.trainable_token_indices =
                Some(serde_json::json!({"embed_tokens": t.ids, "lm_head": t.ids}));
        }
        cfg
    }

    /// The PEFT `adapter_model.safetensors` tensors (detached copies).
    pub fn peft_tensors(&self) -> HashMap<String, Tensor> {
        self.trainable()
            .into_iter()
            .map(|(n, v)| (format!("{PEFT_PREFIX}{n}"), v.as_tensor().detach()))
            .collect()
    }

    /// Writes `adapter_config.json` and `adapter_model.safetensors` into `dir`.
    pub fn save_peft(&self, dir: &Path, base_model: &str) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let cfg = self.peft_config(base_model);
        let json = serde_json::to_vec_pretty(&cfg)
            .map_err(|e| ModelError::Adapter(format!("adapter config: {e}")))?;
        let cfg_path = dir.join(ADAPTER_CONFIG_FILE);
        atomic_file::write(&cfg_path, &json).map_err(io(&cfg_path))?;
        let weights = dir.join(ADAPTER_WEIGHTS_FILE);
        let tensors = self.peft_tensors();
        atomic_file::write_with(
            &weights,
            |tmp| -> Result<()> { Ok(candle_core::safetensors::save(&tensors, tmp)?) },
            io(&weights),
        )
    }
}

/// `adapter_config.json` as PEFT writes it (the fields we set; PEFT fills the rest with
/// its defaults when loading).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeftConfig {
    pub peft_type: String,
    pub task_type: String,
    pub r: usize,
    pub lora_alpha: f64,
    #[serde(default)]
    pub lora_dropout: f64,
    pub target_modules: Vec<String>,
    /// The base model's Hugging Face repository id when hone knows it (see
    /// [`crate::registry::base_repo_id`]), so that peft's `AutoPeftModelForCausalLM`
    /// finds the base; else hone's id, as adapters before this field always had.
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// hone's own id (or path) of the base model, which hone reads back through
    /// [`PeftConfig::hone_base`]. peft ignores unknown keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hone_base_model: Option<String>,
    #[serde(default = "bias_none")]
    pub bias: String,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default)]
    pub inference_mode: bool,
    /// rsLoRA scales by `alpha / sqrt(r)`; we only implement `alpha / r`, so such
    /// adapters are refused rather than applied with the wrong scale.
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub use_dora: bool,
    /// Tokens whose embedding (and LM-head) rows the adapter replaces (PEFT's
    /// `trainable_token_indices`: a list of ids, or a map from the layer to its ids, of
    /// which hone reads `embed_tokens` and `lm_head`); see [`PeftConfig::token_ids`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trainable_token_indices: Option<serde_json::Value>,
}

impl PeftConfig {
    /// The base model as hone names it, for resolving and for mismatch warnings:
    /// `hone_base_model`, or for adapters written before that field (and by other tools)
    /// `base_model_name_or_path`. `None` when both are absent or empty.
    pub fn hone_base(&self) -> Option<&str> {
        [&self.hone_base_model, &self.base_model_name_or_path]
            .into_iter()
            .find_map(|v| v.as_deref().filter(|s| !s.is_empty()))
    }
}

impl PeftConfig {
    /// The ids of `trainable_token_indices` (empty when absent), and whether the LM head
    /// has its own rows of them. PEFT takes a list (the input embedding's rows, shared by
    /// a tied head) or a map from layer names to ids; hone reads `embed_tokens` and
    /// `lm_head` with the same ids, and refuses any other layer or differing lists.
    pub fn token_ids(&self) -> Result<(Vec<u32>, bool)> {
        let bad = |m: String| ModelError::Adapter(format!("trainable_token_indices: {m}"));
        let list = |v: &serde_json::Value| -> Result<Vec<u32>> {
            serde_json::from_value::<Vec<u32>>(v.clone())
                .map_err(|e| bad(format!("expected a list of token ids: {e}")))
        };
        let is = |layer: &str, name: &str| layer == name || layer.ends_with(&format!(".{name}"));
        match &self.trainable_token_indices {
            None | Some(serde_json::Value::Null) => Ok((Vec::new(), false)),
            Some(serde_json::Value::Object(map)) => {
                let (mut embed, mut head) = (None, None);
                for (layer, v) in map {
                    if is(layer, "embed_tokens") {
                        embed = Some(list(v)?);
                    } else if is(layer, "lm_head") {
                        head = Some(list(v)?);
                    } else {
                        return Err(bad(format!(
                            "rows of `{layer}` are not supported (hone trains the rows of \
                             `embed_tokens` and `lm_head`)"
                        )));
                    }
                }
                match (embed, head) {
                    (Some(e), Some(h)) if e != h => Err(bad(format!(
                        "`embed_tokens` {e:?} and `lm_head` {h:?} differ; hone needs the same \
                         tokens in both"
                    ))),
                    (Some(e), head) => Ok((e, head.is_some())),
                    (None, Some(_)) => Err(bad(
                        "`lm_head` rows without `embed_tokens` rows are not supported".into(),
                    )),
                    (None, None) => Ok((Vec::new(), false)),
                }
            }
            Some(v) => Ok((list(v)?, false)),
        }
    }
}

fn bias_none() -> String {
    "none".into()
}

impl PeftConfig {
    /// The config of an adapter trained with `c` on `base_model` (hone's id or path):
    /// `base_model_name_or_path` is its repository id when known, `hone_base_model` the
    /// id itself.
    pub fn from_lora(c: &LoraConfig, base_model: &str) -> Self {
        let repo = crate::registry::base_repo_id(base_model);
        Self {
            peft_type: "LORA".into(),
            task_type: "CAUSAL_LM".into(),
            r: c.r,
            lora_alpha: c.alpha,
            lora_dropout: c.dropout,
            target_modules: c.target_modules.clone(),
            base_model_name_or_path: Some(repo.unwrap_or_else(|| base_model.to_string())),
            hone_base_model: Some(base_model.to_string()),
            bias: "none".into(),
            fan_in_fan_out: false,
            inference_mode: true,
            use_rslora: false,
            use_dora: false,
            trainable_token_indices: (!c.trainable_tokens.is_empty())
                .then(|| serde_json::json!(c.trainable_tokens)),
        }
    }
}

/// Starts trainable rows for `ids` as copies of the base embedding rows (PEFT's init),
/// and on an untied model the LM head's rows as copies of the head's, and attaches them
/// to `model`; `None` (and nothing attached) when `ids` is empty.
fn attach_token_rows(model: &mut Llama, ids: &[u32]) -> Result<Option<TrainedTokens>> {
    if ids.is_empty() {
        model.set_token_rows(None);
        return Ok(None);
    }
    let rows = Var::from_tensor(&model.embedding_rows(ids)?)?;
    let head = match model.cfg.tie_word_embeddings {
        true => None,
        false => Some(Var::from_tensor(&model.head_rows(ids)?)?),
    };
    let attached = TokenRows::new(
        &model.cfg,
        ids.to_vec(),
        rows.as_tensor().clone(),
        head.as_ref().map(|h| h.as_tensor().clone()),
    )?;
    model.set_token_rows(Some(attached));
    Ok(Some(TrainedTokens {
        ids: ids.to_vec(),
        rows,
        head,
    }))
}

/// Reads a PEFT adapter directory and attaches its (frozen) adapters to `model`,
/// replacing any present. Returns the adapter's config.
pub fn load_peft_adapter(model: &mut Llama, dir: &Path) -> Result<PeftConfig> {
    let cfg_path = dir.join(ADAPTER_CONFIG_FILE);
    let text = std::fs::read_to_string(&cfg_path).map_err(io(&cfg_path))?;
    let cfg: PeftConfig = serde_json::from_str(&text)
        .map_err(|e| ModelError::Adapter(format!("{}: {e}", cfg_path.display())))?;
    if cfg.peft_type != "LORA" {
        return Err(ModelError::Adapter(format!(
            "peft_type `{}` is not supported (only LORA)",
            cfg.peft_type
        )));
    }
    if cfg.bias != "none" || cfg.fan_in_fan_out || cfg.use_rslora || cfg.use_dora {
        return Err(ModelError::Adapter(
            "only plain LoRA is supported (bias \"none\", no fan_in_fan_out, rsLoRA or DoRA)"
                .into(),
        ));
    }
    let weights_path = dir.join(ADAPTER_WEIGHTS_FILE);
    if !weights_path.exists() {
        return Err(ModelError::NotFound(weights_path));
    }
    let device: Device = model.device().clone();
    let mut tensors = candle_core::safetensors::load(&weights_path, &device).map_err(|e| {
        ModelError::CorruptSafetensors {
            path: weights_path.clone(),
            msg: e.to_string(),
        }
    })?;
    model.clear_adapters();
    let mut attached = 0;
    for (path, lin) in model.linears_mut() {
        let key = |m: &str| format!("{PEFT_PREFIX}{path}.{m}.weight");
        let (a, b) = (
            tensors.remove(&key("lora_A")),
            tensors.remove(&key("lora_B")),
        );
        match (a, b) {
            (Some(a), Some(b)) => {
                let a = a.to_dtype(candle_core::DType::F32)?;
                let b = b.to_dtype(candle_core::DType::F32)?;
                lin.set_adapter(Some(LoraAdapter::new(a, b, cfg.lora_alpha)?))?;
                attached += 1;
            }
            (None, None) => {}
            _ => {
                return Err(ModelError::Adapter(format!(
                    "{}: `{path}` has only one of lora_A / lora_B",
                    weights_path.display()
                )))
            }
        }
    }
    let (ids, with_head) = cfg.token_ids()?;
    if !ids.is_empty() {
        let mut take = |name: &str| {
            let key = format!("{PEFT_PREFIX}{name}");
            tensors.remove(&key).ok_or_else(|| {
                ModelError::Adapter(format!(
                    "{}: trainable_token_indices is set but `{key}` is missing",
                    weights_path.display()
                ))
            })
        };
        let rows = take(PEFT_ROWS_KEY)?;
        let head = with_head.then(|| take(PEFT_HEAD_ROWS_KEY)).transpose()?;
        let rows = TokenRows::new(&model.cfg, ids, rows, head)?;
        model.set_token_rows(Some(rows));
    }
    if attached == 0 || !tensors.is_empty() {
        let mut extra: Vec<_> = tensors.keys().cloned().collect();
        extra.sort();
        return Err(ModelError::Adapter(format!(
            "{}: {attached} module(s) matched the model; unmatched keys: {extra:?}",
            weights_path.display()
        )));
    }
    Ok(cfg)
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ModelError {
    let path = path.to_path_buf();
    move |source| ModelError::Io {
        path: path.clone(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{write_tiny_model, TinySpec};
    use crate::{load_model, WeightPath};

    #[test]
    fn adapter_config_names_the_repository_and_keeps_hones_id() {
        let c = PeftConfig::from_lora(&LoraConfig::default(), "smollm2-135m-instruct");
        assert_eq!(
            c.base_model_name_or_path.as_deref(),
            Some("HuggingFaceTB/SmolLM2-135M-Instruct")
        );
        assert_eq!(c.hone_base_model.as_deref(), Some("smollm2-135m-instruct"));
        assert_eq!(c.hone_base(), Some("smollm2-135m-instruct"));
        // Unknown to the registry: the id itself, as before.
        let c = PeftConfig::from_lora(&LoraConfig::default(), "tiny");
        assert_eq!(c.base_model_name_or_path.as_deref(), Some("tiny"));
        assert_eq!(c.hone_base(), Some("tiny"));
    }

    /// An adapter written before `hone_base_model` existed (hone's id in
    /// `base_model_name_or_path`, no other field) still loads, and hone reads its base.
    #[test]
    fn old_adapters_still_load_and_name_their_base() {
        let dir = tempfile::tempdir().unwrap();
        let (gguf, _) = write_tiny_model(dir.path(), &TinySpec::default()).unwrap();
        let mut m = load_model(&gguf, WeightPath::F32).unwrap();
        let params = LoraParams::attach(&mut m, &LoraConfig::default(), 1).unwrap();
        let out = dir.path().join("adapter");
        params.save_peft(&out, "smollm2-135m-instruct").unwrap();
        let cfg_path = out.join(ADAPTER_CONFIG_FILE);
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
        assert_eq!(v["hone_base_model"], "smollm2-135m-instruct");
        v.as_object_mut().unwrap().remove("hone_base_model");
        v["base_model_name_or_path"] = "smollm2-135m-instruct".into();
        std::fs::write(&cfg_path, v.to_string()).unwrap();

        let mut fresh = load_model(&gguf, WeightPath::F32).unwrap();
        let cfg = load_peft_adapter(&mut fresh, &out).unwrap();
        assert_eq!(cfg.hone_base_model, None);
        assert_eq!(cfg.hone_base(), Some("smollm2-135m-instruct"));
        let attached = fresh
            .linears_mut()
            .into_iter()
            .filter(|(_, l)| l.adapter().is_some())
            .count();
        assert_eq!(attached, params.modules.len());
    }

    #[cfg(unix)]
    #[test]
    fn adapter_files_are_readable_by_others() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (gguf, _) = write_tiny_model(dir.path(), &TinySpec::default()).unwrap();
        let mut m = load_model(&gguf, WeightPath::F32).unwrap();
        let params = LoraParams::attach(&mut m, &LoraConfig::default(), 1).unwrap();
        let out = dir.path().join("adapter");
        params.save_peft(&out, "tiny").unwrap();
        let want = 0o666 & !crate::atomic_file::umask();
        for f in [ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE] {
            let mode = std::fs::metadata(out.join(f)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, want, "{f}");
        }
    }
}
