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
//! - [`approach`]: the `--baseline` specs (base, `prompt:FILE`, `few-shot:K[:FILE]`,
//!   `rag:DIR[:K]`, another model, the fine-tune, `fine-tuned+rag:DIR[:K]`) and the
//!   conversation each builds for a case; [`shots`]: the few-shot pool (eval cases left
//!   out) and its pickers (embedding similarity, or random); [`rag`]: each case's
//!   retrieved chunks (hone-retrieve) in its system message.
//! - [`cost`]: cost per 1,000 requests, training cost and break-even;
//!   [`verdict`]: the "should I fine-tune?" section and its plain-language verdict.
//! - [`tool_check`]: `expected_tool_calls` (right function, exact / subset arguments,
//!   malformed calls); [`case_grammar`]: the grammar a case is decoded with (`response_format`,
//!   strict tools, `--json-schema-from-case`).
//! - [`spec`]: [`run_eval`], the whole evaluation from an [`EvalSpec`].

pub mod approach;
pub mod case;
pub mod case_grammar;
pub mod check;
pub mod cost;
mod error;
pub mod html;
pub mod model;
pub mod rag;
pub mod report;
pub mod run;
pub mod shots;
pub mod spec;
pub mod tool_check;
pub mod verdict;

pub use approach::{Approach, Baseline, Request};
pub use case::{load_cases, parse_cases, CaseSchema, EvalCase, Pattern, ToolChoice};
pub use check::{check_output, extract_json, extract_json_object, CheckOutcome};
pub use cost::{BreakEven, CostSource, Prices, RunCost, TrainingCost};
pub use error::{CaseError, EvalError, Result};
pub use model::{Conversation, EngineModel, EvalModel, Generated};
pub use report::{CaseInfo, Comparison, EvalReport, GenerationInfo};
pub use run::{CaseResult, Decoding, LossMetrics, ModelRun, PairMetrics, Progress, Summary};
pub use shots::ShotPick;
pub use spec::{run_eval, run_eval_with, EvalSpec};
pub use tool_check::{ArgumentsMatch, ExpectedToolCalls, ToolCallOutcome, ToolCallSummary};
pub use verdict::Economics;
