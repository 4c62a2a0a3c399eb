//! `run_eval`: load the model (and adapter) once, run the evaluated model
//! and each baseline (base, system prompt, few-shot, another model) on the
//! cases, and build the report with costs and the verdict.

use std::path::{Path, PathBuf};

use hone_data::{DataError, PreferenceExample, SftExample};
use hone_model::registry::{self, ResolvedModel, DEFAULT_MODEL_ID};
use hone_model::{ChatEngine, WeightPath, SERVING_WEIGHTS};

use hone_model::constraint::Grammar;

use hone_retrieve::{CorpusOptions, Embed};

use crate::approach::{Approach, Baseline, Inputs, Request};
use crate::case::{load_cases, EvalCase};
use crate::cost::{estimate_training, Prices, TrainingCost};
use crate::error::{EvalError, Result};
use crate::model::{EngineModel, EvalModel};
use crate::report::{EvalReport, GenerationInfo};
use crate::run::{
    chat_loss, check_fit, pair_accuracy, run_cases, Decoding, ModelRun, Progress, Summary,
};
use crate::shots::ShotPick;
use crate::verdict::Economics;

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
    /// What to compare with (`--baseline`, repeatable), in this order.
    pub baselines: Vec<Baseline>,
    /// The training file: the few-shot pool when `few-shot:K` names no
    /// file, and the training-cost estimate when the adapter has no summary.
    pub train_file: Option<PathBuf>,
    /// How few-shot examples are picked (default: by embedding similarity).
    pub few_shot_pick: ShotPick,
    /// Seed of the random few-shot picks.
    pub seed: u64,
    /// The embedding model (id or path) of the rag baselines and similar
    /// few-shot picks; loaded only when one of them runs.
    pub embedding_model: String,
    /// Chunking and vector cache of the rag baselines' documents.
    pub corpus: CorpusOptions,
    /// Decode each case that has `expected_schema` constrained to it.
    pub json_schema_from_case: bool,
    /// Prices for the cost columns and break-even.
    pub prices: Prices,
    /// The fine-tune's training cost in US dollars, instead of the recorded
    /// or estimated one.
    pub training_cost: Option<f64>,
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

    /// A spec with defaults: no adapter, auto baseline, 256 tokens, packed
    /// weights, default prices.
    pub fn new(cases: impl Into<PathBuf>) -> Self {
        EvalSpec {
            cases: cases.into(),
            model: None,
            adapter: None,
            baselines: vec![Baseline::Auto],
            train_file: None,
            few_shot_pick: ShotPick::default(),
            seed: 0,
            embedding_model: registry::DEFAULT_EMBEDDING_MODEL_ID.to_string(),
            corpus: CorpusOptions::default(),
            json_schema_from_case: false,
            prices: Prices::default(),
            training_cost: None,
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
    spec.prices.check().map_err(EvalError::Spec)?;
    if let Some(t) = spec.training_cost.filter(|t| !(t.is_finite() && *t >= 0.0)) {
        return Err(EvalError::Spec(format!(
            "the training cost must be a number of dollars >= 0, got {t}"
        )));
    }
    // Everything the user wrote is checked before the (slow) model load.
    let cases = load_cases(&spec.cases)?;
    let inputs = LossInputs::load(spec)?;
    let baselines = check_baselines(spec)?;
    let prep = Inputs {
        cases: &cases,
        train_file: spec.train_file.as_deref(),
        pick: spec.few_shot_pick,
        seed: spec.seed,
        corpus: &spec.corpus,
    };
    let checked = baselines
        .iter()
        .map(|b| Approach::check(b, &prep))
        .collect::<Result<Vec<_>>>()?;
    let grammars = case_grammars(spec, &cases)?;
    // Only now, with every input checked, the embedding model (when a
    // baseline needs it), then the chat model.
    let embedder = load_embedder(spec, &baselines)?;
    let approaches = checked
        .into_iter()
        .map(|c| c.finish(&prep, embedder.as_ref().map(|e| e as &dyn Embed)))
        .collect::<Result<Vec<_>>>()?;
    let mut warnings: Vec<String> = approaches
        .iter()
        .flat_map(|a| a.notes().iter().cloned())
        .collect();
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
    let base = EngineModel {
        engine: &engine,
        use_adapters: false,
    };
    // Prompts made longer by an approach must fit, before any generation.
    let requests: Vec<Vec<Request>> = approaches
        .iter()
        .map(|a| {
            cases
                .iter()
                .zip(&grammars)
                .map(|(c, g)| a.request(c, g.clone()))
                .collect()
        })
        .collect();
    for ((b, a), reqs) in baselines.iter().zip(&approaches).zip(&requests) {
        if a.extends_prompt() {
            check_fit(&base, &b.label(), &cases, reqs, spec.max_tokens)?;
        }
    }
    let tuned = EngineModel {
        engine: &engine,
        use_adapters: true,
    };
    let label = if adapter_label.is_some() {
        "fine-tuned".to_string()
    } else {
        engine.id.clone()
    };
    let plain = Approach::AsGiven;
    let plain_requests: Vec<Request> = cases
        .iter()
        .zip(&grammars)
        .map(|(c, g)| plain.request(c, g.clone()))
        .collect();
    let ctx = RunCtx {
        cases: &cases,
        decoding: spec.decoding(),
        inputs: &inputs,
    };
    let mut runs = vec![ctx.evaluate(
        &tuned,
        &label,
        (&engine.id, adapter_label.clone()),
        &plain_requests,
        true,
        on_progress,
    )?];
    for (b, reqs) in baselines.iter().zip(&requests) {
        let run = match b {
            Baseline::None | Baseline::FineTuned => continue,
            // Without an adapter the evaluated model is the base itself.
            Baseline::Auto | Baseline::Base if spec.adapter.is_none() => continue,
            Baseline::Auto | Baseline::Base => {
                ctx.evaluate(&base, "base", (&engine.id, None), reqs, true, on_progress)?
            }
            Baseline::Prompt(_) | Baseline::FewShot { .. } | Baseline::Rag { .. } => {
                // Loss measures belong to the model, not the prompt: the base run has them.
                ctx.evaluate(
                    &base,
                    &b.label(),
                    (&engine.id, None),
                    reqs,
                    false,
                    on_progress,
                )?
            }
            Baseline::FineTunedRag { .. } => ctx.evaluate(
                &tuned,
                &b.label(),
                (&engine.id, adapter_label.clone()),
                reqs,
                false,
                on_progress,
            )?,
            Baseline::Model(m) => {
                let other = registry::resolve(m)?;
                if other.source == resolved.source && spec.adapter.is_some() {
                    ctx.evaluate(&base, "base", (&engine.id, None), reqs, true, on_progress)?
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
                    ctx.evaluate(&m2, &label, (&e2.id, None), reqs, true, on_progress)?
                }
            }
        };
        runs.push(run);
    }
    let generation = GenerationInfo {
        max_tokens: spec.max_tokens,
        greedy: true,
        batch: spec.batch,
        weights: spec.weights.as_str().to_string(),
        json_schema_from_case: spec.json_schema_from_case,
        few_shot_seed: spec.seed,
        few_shot_pick: spec.few_shot_pick.as_str().to_string(),
        embedding_model: embedder.as_ref().map(|e| e.id.clone()),
    };
    let training = match &spec.adapter {
        None => None,
        Some(dir) => training_cost(spec, dir, &engine, &mut warnings),
    };
    let economics = Economics::of(&runs, spec.adapter.is_some(), training, spec.prices);
    Ok(EvalReport::new(
        &spec.cases.display().to_string(),
        &cases,
        runs,
        generation,
        warnings,
    )
    .with_economics(economics))
}

/// The baselines to run, checked: `none` stands alone, `fine-tuned` needs
/// an adapter, and no two runs share a label.
fn check_baselines(spec: &EvalSpec) -> Result<Vec<Baseline>> {
    let b = &spec.baselines;
    if b.contains(&Baseline::None) && b.len() > 1 {
        return Err(EvalError::Spec(
            "--baseline none cannot be combined with other baselines".into(),
        ));
    }
    if spec.adapter.is_none() {
        if let Some(x) = b
            .iter()
            .find(|x| matches!(x, Baseline::FineTuned | Baseline::FineTunedRag { .. }))
        {
            return Err(EvalError::Spec(format!(
                "--baseline {} needs --adapter DIR",
                x.label()
            )));
        }
    }
    let mut seen = std::collections::HashSet::new();
    for x in b {
        // `auto` and `base` are the same run.
        let key = match x {
            Baseline::Auto => Baseline::Base.label(),
            other => other.label(),
        };
        if !seen.insert(key.clone()) {
            return Err(EvalError::Spec(format!("--baseline {key} is given twice")));
        }
    }
    Ok(b.clone())
}

/// The embedding model, loaded when a baseline needs it (retrieval, or
/// few-shot picked by similarity); an unknown or unloadable model is an
/// error naming `--embedding-model`, before the chat model loads.
fn load_embedder(
    spec: &EvalSpec,
    baselines: &[Baseline],
) -> Result<Option<hone_model::embed::EmbeddingModel>> {
    let Some(first) = baselines
        .iter()
        .find(|b| b.needs_embeddings(spec.few_shot_pick))
    else {
        return Ok(None);
    };
    let id = &spec.embedding_model;
    let model = registry::resolve(id)
        .map_err(|e| e.to_string())
        .and_then(|r| r.open_embedding().map_err(|e| e.to_string()))
        .map_err(|e| {
            EvalError::Spec(format!(
                "--baseline {} needs the embedding model '{id}' (--embedding-model): {e}",
                first.label()
            ))
        })?;
    Ok(Some(model))
}

/// Each case's grammar (`case_grammar::case_grammar`: its `response_format`,
/// strict tools, or its `expected_schema` under `--json-schema-from-case`),
/// compiled now so a schema the decoder cannot honour is an error before any
/// model loads.
fn case_grammars(spec: &EvalSpec, cases: &[EvalCase]) -> Result<Vec<Option<Grammar>>> {
    let mut bad = Vec::new();
    let grammars = cases
        .iter()
        .map(|c| {
            crate::case_grammar::case_grammar(c, spec.json_schema_from_case)
                .map_err(|e| bad.push(format!("line {}: {e}", c.line)))
                .ok()
                .flatten()
        })
        .collect();
    if bad.is_empty() {
        Ok(grammars)
    } else {
        Err(EvalError::Spec(format!(
            "grammars the decoder cannot use:\n  {}",
            bad.join("\n  ")
        )))
    }
}

/// `--training-cost`, else the adapter's recorded wall time, else an
/// estimate from `--train-file`; `None` (with a warning) when none is there.
fn training_cost(
    spec: &EvalSpec,
    adapter: &Path,
    engine: &ChatEngine,
    warnings: &mut Vec<String>,
) -> Option<TrainingCost> {
    if let Some(usd) = spec.training_cost {
        return Some(TrainingCost::given(usd));
    }
    if let Some(t) = TrainingCost::recorded(adapter, &spec.prices) {
        return Some(t);
    }
    let Some(file) = &spec.train_file else {
        warnings.push(format!(
            "{} has no summary.json and no --train-file was given: the training cost is \
             unknown, so there is no break-even",
            adapter.display()
        ));
        return None;
    };
    match estimate_training(engine, file, &spec.prices) {
        Ok(t) => Some(t),
        Err(e) => {
            warnings.push(format!("cannot estimate the training cost: {e}"));
            None
        }
    }
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

/// What every run shares: the cases, how they are decoded, the loss inputs.
struct RunCtx<'a> {
    cases: &'a [EvalCase],
    decoding: Decoding,
    inputs: &'a LossInputs,
}

impl RunCtx<'_> {
    /// Runs the cases from `requests` on `model`, and the loss measures when
    /// `losses` (they score the model, so a prompt baseline skips them).
    fn evaluate(
        &self,
        model: &dyn EvalModel,
        label: &str,
        (model_id, adapter): (&str, Option<String>),
        requests: &[Request],
        losses: bool,
        on_progress: &mut dyn FnMut(Progress),
    ) -> Result<ModelRun> {
        let none = LossInputs::default();
        let inputs = if losses { self.inputs } else { &none };
        evaluate(
            model,
            label,
            (model_id, adapter),
            self.cases,
            requests,
            self.decoding,
            inputs,
            on_progress,
        )
    }
}

/// Runs every measure for one model: the cases from `requests` (one per
/// case), then the loss measures `inputs` asks for.
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    model: &dyn EvalModel,
    label: &str,
    (model_id, adapter): (&str, Option<String>),
    cases: &[EvalCase],
    requests: &[Request],
    decoding: Decoding,
    inputs: &LossInputs,
    on_progress: &mut dyn FnMut(Progress),
) -> Result<ModelRun> {
    let (results, secs) = run_cases(model, label, cases, requests, decoding, on_progress);
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
