//! Streaming validation: every problem in one pass, with line numbers.
//!
//! Lines are read in batches; each batch is checked (and token-counted) in
//! parallel with rayon, then merged in line order so that duplicate tracking
//! and statistics stay deterministic. Memory stays bounded by the batch size
//! plus a few numbers per example.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use rayon::prelude::*;
use serde_json::Value;

use crate::issue::{Code, Issue, Report, Severity, Stats, TokenStats};
use crate::lines::{LineReader, RawLine};
use crate::parse::{detect_method_value, parse_preference, parse_sft, LineIssues};
use crate::quality::{self, DedupKeys, DuplicateTracker, Goal};
use crate::summary::Distribution;
use crate::tokens::{TokenCount, TokenCounter};
use crate::types::{Method, PreferenceExample, SftExample};
use crate::DataError;

/// Minimum number of examples a file must have (OpenAI's rule).
pub const MIN_EXAMPLES: usize = 10;
/// Default cap on one line's length. Far above any example that fits a
/// small model's context, low enough that a hostile line costs little.
pub const DEFAULT_MAX_LINE_BYTES: usize = 8 * 1024 * 1024;
/// Lines checked per parallel batch.
const BATCH_LINES: usize = 4096;
/// Bytes read per parallel batch, whichever limit comes first.
const BATCH_BYTES: usize = 32 * 1024 * 1024;

/// How to validate.
#[derive(Debug, Clone)]
pub struct ValidateOptions {
    /// The format; `None` detects it from the first line that is a JSON object.
    pub method: Option<Method>,
    /// Examples longer than this many tokens get `example_too_long` (in
    /// addition to the model's context length).
    pub max_seq_len: Option<usize>,
    /// The goal that sets the recommended number of examples.
    pub goal: Option<Goal>,
    /// Lines longer than this are reported as `line_too_long` and skipped.
    pub max_line_bytes: usize,
    /// Shown in the report's token statistics.
    pub model_name: Option<String>,
    /// Fewer examples than this is `invalid_n_examples`. A training file
    /// needs [`MIN_EXAMPLES`]; a held-out file may be smaller (but not empty).
    pub min_examples: usize,
}

impl Default for ValidateOptions {
    fn default() -> Self {
        ValidateOptions {
            method: None,
            max_seq_len: None,
            goal: None,
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
            model_name: None,
            min_examples: MIN_EXAMPLES,
        }
    }
}

/// A typed example of either format.
#[derive(Debug, Clone, PartialEq)]
pub enum Example {
    Sft(SftExample),
    /// Boxed: a pair is several times the size of a chat example.
    Preference(Box<PreferenceExample>),
}

/// Validates a JSONL stream and reports every problem. Token checks run
/// when `counter` is given. Never panics on any input.
pub fn validate_reader<R: BufRead>(
    reader: R,
    opts: &ValidateOptions,
    counter: Option<&dyn TokenCounter>,
) -> Report {
    run(reader, opts, counter, false).0
}

/// [`validate_reader`] on a file.
pub fn validate_file(
    path: &Path,
    opts: &ValidateOptions,
    counter: Option<&dyn TokenCounter>,
) -> Result<Report, DataError> {
    let file = File::open(path).map_err(DataError::io(path))?;
    Ok(validate_reader(
        BufReader::with_capacity(1 << 20, file),
        opts,
        counter,
    ))
}

/// Reads and validates an SFT file, returning its examples when it has no
/// errors, or the full report in [`DataError::Invalid`].
pub fn parse_sft_file(path: &Path) -> Result<Vec<SftExample>, DataError> {
    sft_only(parse_file(path, Method::Sft, MIN_EXAMPLES)?)
}

/// Reads and validates a held-out (validation) SFT file: the same checks as
/// [`parse_sft_file`], but fewer than [`MIN_EXAMPLES`] examples is fine.
pub fn parse_sft_validation_file(path: &Path) -> Result<Vec<SftExample>, DataError> {
    sft_only(parse_file(path, Method::Sft, 1)?)
}

fn sft_only(examples: Vec<Example>) -> Result<Vec<SftExample>, DataError> {
    Ok(examples
        .into_iter()
        .filter_map(|e| match e {
            Example::Sft(s) => Some(s),
            Example::Preference(_) => None,
        })
        .collect())
}

/// Reads and validates a DPO file, like [`parse_sft_file`].
pub fn parse_preference_file(path: &Path) -> Result<Vec<PreferenceExample>, DataError> {
    preference_only(parse_file(path, Method::Dpo, MIN_EXAMPLES)?)
}

/// Reads and validates a held-out DPO file; fewer than [`MIN_EXAMPLES`] is fine.
pub fn parse_preference_validation_file(path: &Path) -> Result<Vec<PreferenceExample>, DataError> {
    preference_only(parse_file(path, Method::Dpo, 1)?)
}

fn preference_only(examples: Vec<Example>) -> Result<Vec<PreferenceExample>, DataError> {
    Ok(examples
        .into_iter()
        .filter_map(|e| match e {
            Example::Preference(p) => Some(*p),
            Example::Sft(_) => None,
        })
        .collect())
}

/// Validates a stream and returns its examples with the report (which may
/// hold warnings). Fails with the report when there is any error.
pub fn parse_reader<R: BufRead>(
    reader: R,
    method: Option<Method>,
) -> Result<(Vec<Example>, Report), DataError> {
    parse_reader_min(reader, method, MIN_EXAMPLES)
}

fn parse_reader_min<R: BufRead>(
    reader: R,
    method: Option<Method>,
    min_examples: usize,
) -> Result<(Vec<Example>, Report), DataError> {
    let opts = ValidateOptions {
        method,
        min_examples,
        ..ValidateOptions::default()
    };
    let (report, examples) = run(reader, &opts, None, true);
    if report.ok {
        Ok((examples, report))
    } else {
        Err(DataError::Invalid(Box::new(report)))
    }
}

fn parse_file(path: &Path, method: Method, min: usize) -> Result<Vec<Example>, DataError> {
    let file = File::open(path).map_err(DataError::io(path))?;
    parse_reader_min(BufReader::with_capacity(1 << 20, file), Some(method), min).map(|(e, _)| e)
}

/// Detects the format of a file from its first JSON-object line: DPO when it
/// has `input` or an output key, SFT when it has `messages`.
pub fn detect_method<R: BufRead>(reader: R) -> Option<Method> {
    let mut lines = LineReader::new(reader, DEFAULT_MAX_LINE_BYTES);
    while let Ok(Some(line)) = lines.next_line() {
        if let Some(m) = detect_line(&line) {
            return Some(m);
        }
    }
    None
}

fn detect_line(line: &RawLine) -> Option<Method> {
    if line.is_truncated() {
        return None;
    }
    let value: Value = serde_json::from_slice(&line.bytes).ok()?;
    detect_method_value(&value)
}

/// What one line turned out to be.
enum Outcome {
    Blank,
    Invalid,
    Valid(Box<ValidLine>),
}

struct ValidLine {
    example: Example,
    n_messages: usize,
    keys: DedupKeys,
    tokens: Option<TokenCount>,
}

struct LineOutcome {
    issues: Vec<Issue>,
    outcome: Outcome,
}

/// Settings every line's check needs.
struct LineContext<'a> {
    method: Method,
    counter: Option<&'a dyn TokenCounter>,
    length_limit: usize,
}

fn check_line(raw: &RawLine, ctx: &LineContext<'_>) -> LineOutcome {
    let mut out = LineIssues::new(raw.number);
    let outcome = check_line_into(raw, ctx, &mut out);
    LineOutcome {
        issues: out.issues,
        outcome,
    }
}

fn check_line_into(raw: &RawLine, ctx: &LineContext<'_>, out: &mut LineIssues) -> Outcome {
    if raw.is_blank() {
        out.push(None, Code::BlankLine, "blank line skipped");
        return Outcome::Blank;
    }
    if raw.is_truncated() {
        out.push(
            None,
            Code::LineTooLong,
            format!(
                "line is {} bytes, over the limit of {}; it was not parsed",
                raw.full_len,
                raw.bytes.len()
            ),
        );
        return Outcome::Invalid;
    }
    let text = match std::str::from_utf8(&raw.bytes) {
        Ok(t) => t,
        Err(e) => {
            out.push(
                None,
                Code::InvalidUtf8,
                format!("invalid UTF-8 at byte {} of the line", e.valid_up_to() + 1),
            );
            return Outcome::Invalid;
        }
    };
    let value: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            out.push(
                None,
                Code::InvalidJson,
                format!("invalid JSON at column {}: {}", e.column(), json_reason(&e)),
            );
            return Outcome::Invalid;
        }
    };
    let (example, n_messages, keys) = match ctx.method {
        Method::Sft => {
            let Some(ex) = parse_sft(&value, out) else {
                return Outcome::Invalid;
            };
            quality::sft_warnings(&ex, out);
            let keys = quality::sft_keys(&ex, text.as_bytes());
            let n = ex.messages.len();
            (Example::Sft(ex), n, keys)
        }
        Method::Dpo => {
            let Some(ex) = parse_preference(&value, out) else {
                return Outcome::Invalid;
            };
            quality::preference_warnings(&ex, out);
            let keys = quality::preference_keys(&ex, text.as_bytes());
            let n = ex.input.len() + 1;
            (Example::Preference(Box::new(ex)), n, keys)
        }
    };
    let tokens = match ctx.counter.map(|c| count(c, &example)) {
        None => None,
        Some(Ok(t)) => {
            check_length(t, ctx.length_limit, out);
            Some(t)
        }
        Some(Err(e)) => {
            out.push(
                None,
                Code::TemplateError,
                format!("the chat template cannot render this example: {e}"),
            );
            return Outcome::Invalid;
        }
    };
    Outcome::Valid(Box::new(ValidLine {
        example,
        n_messages,
        keys,
        tokens,
    }))
}

/// Checks one line on its own (for writers that validate as they go, see
/// [`crate::gate`]): its issues, and its example and duplicate keys when it
/// has no error. The same checks as a file's lines get.
pub(crate) fn check_one(
    text: &str,
    number: usize,
    method: Method,
) -> (Vec<Issue>, Option<(Example, DedupKeys)>) {
    let raw = RawLine {
        number,
        bytes: text.as_bytes().to_vec(),
        full_len: text.len(),
    };
    let ctx = LineContext {
        method,
        counter: None,
        length_limit: usize::MAX,
    };
    let out = check_line(&raw, &ctx);
    let has_error = out
        .issues
        .iter()
        .any(|i| i.code.severity() == Severity::Error);
    match out.outcome {
        Outcome::Valid(v) if !has_error => (out.issues, Some((v.example, v.keys))),
        _ => (out.issues, None),
    }
}

/// serde_json's message without its own " at line 1 column N" suffix.
fn json_reason(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.rfind(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

fn count(counter: &dyn TokenCounter, ex: &Example) -> Result<TokenCount, String> {
    match ex {
        Example::Sft(s) => counter.count_sft(s),
        Example::Preference(p) => counter.count_preference(p),
    }
}

fn check_length(t: TokenCount, limit: usize, out: &mut LineIssues) {
    if t.longest > limit {
        let over = t.longest - limit;
        out.push(None, Code::ExampleTooLong, format!("{} tokens, {over} over the limit of {limit}: the last {over} tokens would be truncated", t.longest));
    }
}

/// Everything gathered while merging lines in order.
#[derive(Default)]
struct Acc {
    errors: Vec<Issue>,
    warnings: Vec<Issue>,
    n_lines: usize,
    n_blank: usize,
    n_invalid: usize,
    messages: Vec<u64>,
    totals: Vec<u64>,
    trained: Vec<u64>,
    n_over: usize,
    dups: DuplicateTracker,
    examples: Vec<Example>,
}

impl Acc {
    fn push_issue(&mut self, issue: Issue) {
        match issue.code.severity() {
            Severity::Error => self.errors.push(issue),
            Severity::Warning => self.warnings.push(issue),
        }
    }

    fn merge(&mut self, number: usize, line: LineOutcome, collect: bool) {
        self.n_lines += 1;
        for issue in line.issues {
            if issue.code == Code::ExampleTooLong {
                self.n_over += 1;
            }
            self.push_issue(issue);
        }
        match line.outcome {
            Outcome::Blank => self.n_blank += 1,
            Outcome::Invalid => self.n_invalid += 1,
            Outcome::Valid(v) => {
                if let Some(dup) = self.dups.check(number, v.keys) {
                    self.push_issue(dup);
                }
                self.messages.push(v.n_messages as u64);
                if let Some(t) = v.tokens {
                    self.totals.push(t.total as u64);
                    self.trained.push(t.trained as u64);
                }
                if collect {
                    self.examples.push(v.example);
                }
            }
        }
    }
}

fn run<R: BufRead>(
    reader: R,
    opts: &ValidateOptions,
    counter: Option<&dyn TokenCounter>,
    collect: bool,
) -> (Report, Vec<Example>) {
    let mut lines = LineReader::new(reader, opts.max_line_bytes.max(1));
    let mut acc = Acc::default();
    let mut notes = Vec::new();
    let mut method = opts.method;
    let length_limit = counter.map_or(usize::MAX, |c| {
        c.context_length()
            .min(opts.max_seq_len.unwrap_or(usize::MAX))
    });
    loop {
        let (batch, read_error) = read_batch(&mut lines);
        let method = *method.get_or_insert_with(|| detect_in_batch(&batch, &mut notes));
        let ctx = LineContext {
            method,
            counter,
            length_limit,
        };
        let outcomes: Vec<LineOutcome> = batch.par_iter().map(|l| check_line(l, &ctx)).collect();
        let done = batch.is_empty() || read_error.is_some();
        for (raw, outcome) in batch.iter().zip(outcomes) {
            acc.merge(raw.number, outcome, collect);
        }
        if let Some(e) = read_error {
            acc.errors.push(Issue::new(
                Some(acc.n_lines + 1),
                None,
                Code::ReadError,
                format!("reading stopped: {e}"),
            ));
        }
        if done {
            break;
        }
    }
    let method = method.unwrap_or(Method::Sft);
    file_level_issues(&mut acc, opts);
    let tokens = counter.map(|c| token_stats(&mut acc, c, opts, length_limit));
    if counter.is_none() {
        notes.push("token checks skipped: no tokenizer was given".to_string());
    }
    let n_examples = acc.messages.len();
    let stats = Stats {
        n_lines: acc.n_lines,
        n_blank_lines: acc.n_blank,
        n_invalid: acc.n_invalid,
        messages_per_example: Distribution::from_values(&mut acc.messages),
        n_missing_system: count_code(&acc.warnings, Code::MissingSystemMessage),
        n_missing_user: count_code(&acc.warnings, Code::MissingUserMessage),
        n_duplicates: count_code(&acc.warnings, Code::DuplicateExample),
        n_near_duplicates: count_code(&acc.warnings, Code::NearDuplicate),
        n_conflicting: count_code(&acc.warnings, Code::ConflictingAnswers),
        tokens,
    };
    let report = Report {
        ok: acc.errors.is_empty(),
        method,
        n_examples,
        errors: acc.errors,
        warnings: acc.warnings,
        stats,
        notes,
    };
    (report, acc.examples)
}

fn count_code(issues: &[Issue], code: Code) -> usize {
    issues.iter().filter(|i| i.code == code).count()
}

/// Reads up to one batch of lines; an I/O error ends the stream.
fn read_batch<R: BufRead>(lines: &mut LineReader<R>) -> (Vec<RawLine>, Option<std::io::Error>) {
    let mut batch = Vec::new();
    let mut bytes = 0usize;
    while batch.len() < BATCH_LINES && bytes < BATCH_BYTES {
        match lines.next_line() {
            Ok(Some(line)) => {
                bytes += line.bytes.len();
                batch.push(line);
            }
            Ok(None) => break,
            Err(e) => return (batch, Some(e)),
        }
    }
    (batch, None)
}

fn detect_in_batch(batch: &[RawLine], notes: &mut Vec<String>) -> Method {
    match batch
        .iter()
        .find_map(|l| detect_line(l).map(|m| (l.number, m)))
    {
        Some((n, m)) => {
            notes.push(format!("format detected from line {n}: {}", m.as_str()));
            m
        }
        None => {
            notes.push(
                "could not detect the format from the first lines; checked as sft".to_string(),
            );
            Method::Sft
        }
    }
}

fn file_level_issues(acc: &mut Acc, opts: &ValidateOptions) {
    let n_candidates = acc.n_lines - acc.n_blank;
    if n_candidates == 0 {
        acc.errors.push(Issue::new(
            None,
            None,
            Code::EmptyFile,
            "the file has no examples",
        ));
        return;
    }
    if n_candidates < opts.min_examples {
        acc.errors.push(Issue::new(
            None,
            None,
            Code::InvalidNExamples,
            format!(
                "the file has {n_candidates} examples; at least {} are required",
                opts.min_examples
            ),
        ));
    }
    if let Some(w) = quality::goal_warning(acc.messages.len(), opts.goal) {
        acc.warnings.push(w);
    }
}

fn token_stats(
    acc: &mut Acc,
    counter: &dyn TokenCounter,
    opts: &ValidateOptions,
    length_limit: usize,
) -> TokenStats {
    let total_tokens = acc.totals.iter().sum();
    let total_trained_tokens = acc.trained.iter().sum();
    TokenStats {
        model: opts.model_name.clone().unwrap_or_default(),
        length_limit,
        context_length: counter.context_length(),
        total_tokens_per_example: Distribution::from_values(&mut acc.totals),
        trained_tokens_per_example: Distribution::from_values(&mut acc.trained),
        total_tokens,
        total_trained_tokens,
        n_over_length_limit: acc.n_over,
    }
}
