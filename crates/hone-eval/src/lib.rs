//! hone-eval: evaluation cases, pass rates, base-vs-fine-tuned comparison
//! and reports.
//!
//! - [`case`]: the cases file (JSONL), validated at load with every bad line reported.
//! - [`check`]: expected / forbidden patterns (substring or `re:` regex) and expected JSON.
//! - [`model`]: the [`EvalModel`] trait and its [`EngineModel`] implementation over
//!   hone-model's `ChatEngine` with the adapter on or off.
//! - [`run`]: running one model (greedy), validation loss, DPO pair accuracy.
//! - [`report`]: the comparison, terminal table, failure list and JSON; [`html`]: the
//!   self-contained HTML report with loss curves.
//! - [`spec`]: [`run_eval`], the whole evaluation from an [`EvalSpec`].

pub mod case;
pub mod check;
mod error;
pub mod html;
pub mod model;
pub mod report;
pub mod run;
pub mod spec;

pub use case::{load_cases, parse_cases, EvalCase, Pattern};
pub use check::{check_output, extract_json_object, CheckOutcome};
pub use error::{CaseError, EvalError, Result};
pub use model::{EngineModel, EvalModel, Generated};
pub use report::{CaseInfo, Comparison, EvalReport, GenerationInfo};
pub use run::{CaseResult, Decoding, LossMetrics, ModelRun, PairMetrics, Progress, Summary};
pub use spec::{run_eval, run_eval_with, Baseline, EvalSpec};
