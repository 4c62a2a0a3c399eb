//! `run_eval`: load the model (and adapter) once, run the fine-tuned model
//! and its baseline on the cases, and build the report.

use std::path::{Path, PathBuf};

use hone_data::{DataError, PreferenceExample, SftExample};
use hone_model::registry::{self, ResolvedModel, DEFAULT_MODEL_ID};
use hone_model::{ChatEngine, WeightPath, SERVING_WEIGHTS};

use crate::case::{load_cases, EvalCase};
use crate::error::{EvalError, Result};
use crate::model::{EngineModel, EvalModel};
use crate::report::{EvalReport, GenerationInfo};
use crate::run::{chat_loss, pair_accuracy, run_cases, Decoding, ModelRun, Progress, Summary};

/// Which model to compare against.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Baseline {
    /// The base model under the adapter (the same loaded weights with the
    /// adapter off); no baseline when there is no adapter.
    #[default]
    Auto,
    /// No baseline.
    None,
    /// Another model: an id or a path (without adapter).
    Model(String),
}

impl std::str::FromStr for Baseline {
    type Err = std::convert::Infallible;

    /// `auto`, `none`, or a model id or path.
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Ok(match s {
            "auto" | "" => Baseline::Auto,
            "none" => Baseline::None,
            other => Baseline::Model(other.to_string()),
        })
    }
}

/// Cases decoded together by default: enough rows to read each weight
/// matrix once for many tokens, few enough that a batch's slowest case
/// (which runs to `max_tokens`) does not hold up the others for long.
pub const DEFAULT_BATCH: usize = 8;

/// What to evaluate.
#[derive(Debug, Clone)]
pub struct EvalSpec {
    /// The cases JSONL file.
    pub cases: PathBuf,
    /// Model id or path; `None`: the adapter's base model, else the default model.
    pub model: Option<String>,
    /// A PEFT adapter directory applied on top of the model.
    pub adapter: Option<PathBuf>,
    pub baseline: Baseline,
    /// Token limit of each generated answer.
    pub max_tokens: usize,
    /// Cases decoded together (each with its own KV cache); outputs do not
    /// depend on it.
    pub batch: usize,
    /// Held-out chat file for validation loss and perplexity.
    pub chat_file: Option<PathBuf>,
    /// Preference (DPO) file for pair accuracy.
    pub preference_file: Option<PathBuf>,
    /// Inference weights (default: the serving path, packed).
    pub weights: WeightPath,
    /// How the evaluated model is opened (`--chat-template`); a baseline of
    /// another model keeps its own template.
    pub open: hone_model::OpenOptions,
}

impl EvalSpec {
    fn decoding(&self) -> Decoding {
        Decoding {
            max_tokens: self.max_tokens,
            batch: self.batch,
        }
    }

    /// A spec with defaults: no adapter, auto baseline, 256 tokens, packed weights.
    pub fn new(cases: impl Into<PathBuf>) -> Self {
        EvalSpec {
            cases: cases.into(),
            model: None,
            adapter: None,
            baseline: Baseline::Auto,
            max_tokens: 256,
            batch: DEFAULT_BATCH,
            chat_file: None,
            preference_file: None,
            weights: SERVING_WEIGHTS,
            open: Default::default(),
        }
    }
}

/// Runs the evaluation described by `spec`.
pub fn run_eval(spec: &EvalSpec) -> Result<EvalReport> {
    run_eval_with(spec, &mut |_| {})
}

/// [`run_eval`] reporting progress (for a progress bar).
pub fn run_eval_with(spec: &EvalSpec, on_progress: &mut dyn FnMut(Progress)) -> Result<EvalReport> {
    if spec.max_tokens == 0 {
        return Err(EvalError::Spec("max_tokens must be at least 1".into()));
    }
    if spec.batch == 0 {
        return Err(EvalError::Spec("batch must be at least 1".into()));
    }
    // Everything the user wrote is checked before the (slow) model load.
    let cases = load_cases(&spec.cases)?;
    let inputs = LossInputs::load(spec)?;
    let mut warnings = Vec::new();
    let resolved = resolve_model(spec)?;
    let mut engine = ChatEngine::load_with(&resolved, spec.weights, &spec.open)?;
    let adapter_label = match &spec.adapter {
        Some(dir) => {
            let cfg = hone_model::load_peft_adapter(&mut engine.model, dir)?;
            let base = cfg.hone_base().unwrap_or_default().to_string();
            if !base.is_empty() && base != engine.id {
                warnings.push(format!(
                    "adapter {} was trained on '{base}', but the base model is '{}'",
                    dir.display(),
                    engine.id
                ));
            }
            Some(dir.display().to_string())
        }
        None => None,
    };
    let tuned = EngineModel {
        engine: &engine,
        use_adapters: true,
    };
    let label = if adapter_label.is_some() {
        "fine-tuned".to_string()
    } else {
        engine.id.clone()
    };
    let mut runs = vec![evaluate(
        &tuned,
        &label,
        (&engine.id, adapter_label),
        &cases,
        spec.decoding(),
        &inputs,
        on_progress,
    )?];
    match &spec.baseline {
        Baseline::None => {}
        Baseline::Auto if spec.adapter.is_none() => {}
        Baseline::Auto => runs.push(base_run(&engine, &cases, spec, &inputs, on_progress)?),
        Baseline::Model(m) => {
            let other = registry::resolve(m)?;
            if other.source == resolved.source && spec.adapter.is_some() {
                runs.push(base_run(&engine, &cases, spec, &inputs, on_progress)?);
            } else {
                let e2 = ChatEngine::load(&other, spec.weights)?;
                let m2 = EngineModel {
                    engine: &e2,
                    use_adapters: false,
                };
                let label = if e2.id == label {
                    format!("{} (baseline)", e2.id)
                } else {
                    e2.id.clone()
                };
                runs.push(evaluate(
                    &m2,
                    &label,
                    (&e2.id, None),
                    &cases,
                    spec.decoding(),
                    &inputs,
                    on_progress,
                )?);
            }
        }
    }
    let generation = GenerationInfo {
        max_tokens: spec.max_tokens,
        greedy: true,
        batch: spec.batch,
        weights: spec.weights.as_str().to_string(),
    };
    Ok(EvalReport::new(
        &spec.cases.display().to_string(),
        &cases,
        runs,
        generation,
        warnings,
    ))
}

fn base_run(
    engine: &ChatEngine,
    cases: &[EvalCase],
    spec: &EvalSpec,
    inputs: &LossInputs,
    on_progress: &mut dyn FnMut(Progress),
) -> Result<ModelRun> {
    let base = EngineModel {
        engine,
        use_adapters: false,
    };
    evaluate(
        &base,
        "base",
        (&engine.id, None),
        cases,
        spec.decoding(),
        inputs,
        on_progress,
    )
}

/// The optional loss-measure inputs, parsed once for both models.
#[derive(Default)]
pub struct LossInputs {
    pub chats: Option<Vec<SftExample>>,
    pub pairs: Option<Vec<PreferenceExample>>,
}

impl LossInputs {
    /// Held-out files get hone-data's full validation, as for training,
    /// except its minimum number of examples: a held-out file may be small.
    fn load(spec: &EvalSpec) -> Result<Self> {
        let chats = match &spec.chat_file {
            Some(p) => Some(hone_data::parse_sft_validation_file(p).map_err(data_err(p))?),
            None => None,
        };
        let pairs = match &spec.preference_file {
            Some(p) => Some(hone_data::parse_preference_validation_file(p).map_err(data_err(p))?),
            None => None,
        };
        Ok(LossInputs { chats, pairs })
    }
}

/// A held-out file's error: unreadable files keep their I/O error; invalid
/// ones carry hone-data's full report (every problem, with line numbers).
fn data_err(path: &Path) -> impl FnOnce(DataError) -> EvalError + '_ {
    move |e| match e {
        DataError::Io { path, source } => EvalError::Io { path, source },
        DataError::Invalid(r) => EvalError::Data {
            path: path.to_path_buf(),
            message: hone_data::render::render_report(&r),
        },
        other => EvalError::Data {
            path: path.to_path_buf(),
            message: other.to_string(),
        },
    }
}

/// Runs every measure for one model.
pub fn evaluate(
    model: &dyn EvalModel,
    label: &str,
    (model_id, adapter): (&str, Option<String>),
    cases: &[EvalCase],
    decoding: Decoding,
    inputs: &LossInputs,
    on_progress: &mut dyn FnMut(Progress),
) -> Result<ModelRun> {
    let (results, secs) = run_cases(model, label, cases, decoding, on_progress);
    let chat = match &inputs.chats {
        Some(c) => Some(chat_loss(model, label, c, on_progress)?),
        None => None,
    };
    let pairs = match &inputs.pairs {
        Some(p) => Some(pair_accuracy(model, label, p, on_progress)?),
        None => None,
    };
    Ok(ModelRun {
        label: label.to_string(),
        model: model_id.to_string(),
        adapter,
        summary: Summary::of(&results),
        results,
        chat_loss: chat,
        pair_accuracy: pairs,
        generation_seconds: secs,
    })
}

/// `--model`, else the model the adapter names as its base, else the default.
fn resolve_model(spec: &EvalSpec) -> Result<ResolvedModel> {
    if let Some(m) = &spec.model {
        return Ok(registry::resolve(m)?);
    }
    let Some(dir) = &spec.adapter else {
        return Ok(registry::resolve(DEFAULT_MODEL_ID)?);
    };
    let base = adapter_base(dir)?;
    match base {
        None => Ok(registry::resolve(DEFAULT_MODEL_ID)?),
        Some(b) => registry::resolve(&b).map_err(|e| {
            EvalError::Spec(format!(
                "the adapter {} names its base model '{b}', which cannot be loaded ({e}); \
                 give the base with --model",
                dir.display()
            ))
        }),
    }
}

/// `base_model_name_or_path` of an adapter's `adapter_config.json`.
fn adapter_base(dir: &Path) -> Result<Option<String>> {
    let p = dir.join(hone_model::lora::ADAPTER_CONFIG_FILE);
    let text = std::fs::read_to_string(&p).map_err(|source| EvalError::Io {
        path: p.clone(),
        source,
    })?;
    let cfg: hone_model::PeftConfig = serde_json::from_str(&text).map_err(|e| EvalError::Data {
        path: p.clone(),
        message: e.to_string(),
    })?;
    Ok(cfg.hone_base().map(str::to_string))
}
