//! `hone data validate|stats|estimate|split|convert` (and `generate`,
//! `export-completions` in their own files): a thin layer over
//! hone-data. Token counts come from the model opened the way every command
//! opens it (`ResolvedModel::open`: tokenizer and chat template, no weights),
//! through hone-text's `ChatTokenCounter`, so that counts are the ones
//! training will see.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};

use super::hparams::{parse_auto, Auto, HyperparameterArgs};
use hone_data::estimate::{
    default_hosted_prices, estimate, throughput_from_bench_json, Estimate, EstimateInput,
    Throughput,
};
use hone_data::hparams::{resolve_auto, AutoInput, ResolvedHyperparameters};
use hone_data::quality::Goal;
use hone_data::render::{render_distribution, render_report};
use hone_data::{
    validate_file, Method, Report, TokenCounter, ValidateOptions, DEFAULT_MAX_LINE_BYTES,
};
use hone_model::registry::DEFAULT_MODEL_ID;
use hone_text::ChatTokenCounter;

#[derive(clap::Subcommand)]
pub enum DataCommand {
    /// Check a training file and report every problem with its line and
    /// message number. Exit 0 when there are no errors, 1 when there are.
    Validate(ValidateArgs),
    /// Token statistics with the model's tokenizer and chat template.
    Stats(InputArgs),
    /// Resolve "auto" hyperparameters and estimate steps, time and cost.
    Estimate(EstimateArgs),
    /// Split a file into train and validation files, deterministically.
    Split(SplitArgs),
    /// Convert Alpaca, instruction/response or ShareGPT data to chat JSONL.
    Convert(ConvertArgs),
    /// Write a server's stored completions (`store: true`) as training data.
    ExportCompletions(super::data_export::ExportArgs),
    /// Make training data with a teacher model over an OpenAI-compatible API.
    Generate(super::data_generate::GenerateArgs),
}

/// The file and how to read it.
#[derive(clap::Args)]
pub struct InputArgs {
    /// The JSONL file.
    pub file: PathBuf,
    /// The format: sft or dpo. Detected from the file when omitted.
    #[arg(long, env = "HONE_DATA_METHOD")]
    pub method: Option<Method>,
    /// The model whose tokenizer and chat template count tokens: an id or a
    /// path (GGUF file or Hugging Face directory).
    #[arg(long, env = "HONE_MODEL", default_value = DEFAULT_MODEL_ID)]
    pub model: String,
    /// Examples longer than this many tokens are reported as truncated (in
    /// addition to the model's context length).
    #[arg(long, env = "HONE_MAX_SEQ_LEN")]
    pub max_seq_len: Option<usize>,
    /// What the fine-tune is for (format, style, domain, complex): sets the
    /// recommended number of examples.
    #[arg(long, env = "HONE_DATA_GOAL")]
    pub goal: Option<Goal>,
    /// Lines longer than this many bytes are reported and skipped.
    #[arg(long, env = "HONE_MAX_LINE_BYTES", default_value_t = DEFAULT_MAX_LINE_BYTES)]
    pub max_line_bytes: usize,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Print the elapsed time to stderr (for measuring).
    #[arg(long, hide = true)]
    pub timings: bool,
    #[command(flatten)]
    pub template: super::chat_template::ChatTemplateArgs,
}

#[derive(clap::Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub input: InputArgs,
    /// Skip token counts (format checks need no model).
    #[arg(long)]
    pub no_tokens: bool,
}

#[derive(clap::Args)]
pub struct EstimateArgs {
    #[command(flatten)]
    pub input: InputArgs,
    #[command(flatten)]
    pub hp: HyperparameterArgs,
    /// DPO beta: "auto" or a number.
    #[arg(long, env = "HONE_DPO_BETA", default_value = "auto", value_parser = parse_auto::<f64>)]
    pub beta: Auto<f64>,
    /// Local compute price in US dollars per hour, for the cost comparison.
    #[arg(long, env = "HONE_PRICE_PER_HOUR", default_value_t = 0.10)]
    pub price_per_hour: f64,
    /// Training throughput in tokens/s; overrides the bench result.
    #[arg(long, env = "HONE_TOKENS_PER_SECOND")]
    pub tokens_per_second: Option<f64>,
    /// A `hone bench train` JSON result (default: $HONE_HOME/bench/train.json).
    #[arg(long, env = "HONE_BENCH_RESULT")]
    pub bench_result: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct SplitArgs {
    /// The JSONL file.
    pub file: PathBuf,
    /// The fraction of examples that go to validation.
    #[arg(long, default_value_t = 0.1)]
    pub valid_fraction: f64,
    /// The shuffle seed; the same seed always gives the same split.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where the training part goes (default: FILE's stem + `.train.jsonl`).
    #[arg(long)]
    pub train_out: Option<PathBuf>,
    /// Where the validation part goes (default: FILE's stem + `.valid.jsonl`).
    #[arg(long)]
    pub valid_out: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct ConvertArgs {
    /// The input file (JSONL, or a JSON array).
    pub file: PathBuf,
    /// The input layout: alpaca, instruction or sharegpt.
    #[arg(long)]
    pub from: hone_data::convert::SourceFormat,
    /// The output file (default: standard output).
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// A system message added to every example that has none.
    #[arg(long)]
    pub system: Option<String>,
}

pub fn run(c: DataCommand) -> anyhow::Result<ExitCode> {
    match c {
        DataCommand::Validate(a) => validate(&a),
        DataCommand::Stats(a) => stats(&a),
        DataCommand::Estimate(a) => run_estimate(&a),
        DataCommand::Split(a) => split(&a),
        DataCommand::Convert(a) => convert(&a),
        DataCommand::ExportCompletions(a) => super::data_export::run(&a),
        DataCommand::Generate(a) => super::data_generate::run(&a),
    }
}

/// A model opened for token counts (tokenizer, template and config, not
/// the weights): hone-text's counter on it, its display id and its size
/// (what "auto" reads).
pub struct CountingModel {
    pub counter: ChatTokenCounter,
    pub id: String,
    pub size: hone_data::hparams::ModelSize,
}

/// Resolves `--model` and opens it (not its weights). `count_chat` /
/// `count_preference` then give exactly the lengths and trained-token counts
/// of the `encode_chat` / `encode_preference` calls the trainer makes
/// (tested equal in hone-text).
/// `options` carries `--chat-template`; the template used is printed.
pub fn open_for_counting(
    spec: &str,
    options: &hone_model::OpenOptions,
) -> anyhow::Result<CountingModel> {
    let model = hone_model::registry::resolve(spec)?.open_with(options)?;
    super::chat_template::print_template(&model.id, &model.tokenizer.template);
    Ok(CountingModel {
        counter: model.token_counter(),
        size: model.config.size(),
        id: model.id,
    })
}

fn options(a: &InputArgs, model_name: Option<String>) -> ValidateOptions {
    ValidateOptions {
        method: a.method,
        max_seq_len: a.max_seq_len,
        goal: a.goal,
        max_line_bytes: a.max_line_bytes,
        model_name,
        ..ValidateOptions::default()
    }
}

/// Validates with token counts from `model` (when given).
fn run_validation(a: &InputArgs, model: Option<&CountingModel>) -> anyhow::Result<Report> {
    let start = Instant::now();
    let opts = options(a, model.map(|m| m.id.clone()));
    let counter = model.map(|m| &m.counter as &dyn TokenCounter);
    let report = validate_file(&a.file, &opts, counter)?;
    if a.timings {
        eprintln!(
            "validated {} lines in {:.2} s",
            report.stats.n_lines,
            start.elapsed().as_secs_f64()
        );
    }
    Ok(report)
}

fn exit_for(report: &Report) -> ExitCode {
    if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn validate(a: &ValidateArgs) -> anyhow::Result<ExitCode> {
    let (model, skipped) = if a.no_tokens {
        (None, Some("token checks skipped (--no-tokens)".to_string()))
    } else {
        match open_for_counting(&a.input.model, &a.input.template.options()) {
            Ok(m) => (Some(m), None),
            Err(e) => (
                None,
                Some(format!(
                    "token checks skipped: model '{}' is not available: {e:#}",
                    a.input.model
                )),
            ),
        }
    };
    let mut report = run_validation(&a.input, model.as_ref())?;
    if let Some(note) = skipped {
        report
            .notes
            .retain(|n| !n.starts_with("token checks skipped"));
        report.notes.push(note);
    }
    if a.input.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", render_report(&report));
        if let Some(t) = &report.stats.tokens {
            println!(
                "\ntokens ({}): {} total, {} trained; {} example(s) over the limit of {}",
                t.model,
                t.total_tokens,
                t.total_trained_tokens,
                t.n_over_length_limit,
                t.length_limit
            );
        }
    }
    Ok(exit_for(&report))
}

fn stats(a: &InputArgs) -> anyhow::Result<ExitCode> {
    let model = open_for_counting(&a.model, &a.template.options())
        .with_context(|| format!("stats needs the tokenizer of model '{}'", a.model))?;
    let report = run_validation(a, Some(&model))?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string(
                &serde_json::json!({"ok": report.ok, "n_examples": report.n_examples, "stats": report.stats})
            )?
        );
        return Ok(exit_for(&report));
    }
    print_stats(&report);
    Ok(exit_for(&report))
}

fn print_stats(report: &Report) {
    let s = &report.stats;
    println!(
        "{} valid {} examples ({} lines, {} invalid)",
        report.n_examples,
        report.method.as_str(),
        s.n_lines,
        s.n_invalid
    );
    println!(
        "{}",
        render_distribution("messages per example", &s.messages_per_example)
    );
    if let Some(t) = &s.tokens {
        println!(
            "{}",
            render_distribution("total tokens per example", &t.total_tokens_per_example)
        );
        println!(
            "{}",
            render_distribution("trained tokens per example", &t.trained_tokens_per_example)
        );
        println!(
            "total tokens: {}   trained tokens: {}",
            t.total_tokens, t.total_trained_tokens
        );
        println!(
            "over the length limit ({} = min(context {}, --max-seq-len)): {} example(s)",
            t.length_limit, t.context_length, t.n_over_length_limit
        );
        println!("tokenizer and chat template: {}", t.model);
    }
    println!(
        "missing system message: {}   missing user message: {}",
        s.n_missing_system, s.n_missing_user
    );
    if !report.ok {
        println!(
            "\nthe file has {} error(s): run `hone data validate` for details",
            report.errors.len()
        );
    }
}

fn run_estimate(a: &EstimateArgs) -> anyhow::Result<ExitCode> {
    let model = open_for_counting(&a.input.model, &a.input.template.options())
        .with_context(|| format!("estimate needs the tokenizer of model '{}'", a.input.model))?;
    let report = run_validation(&a.input, Some(&model))?;
    if !report.ok {
        print!("{}", render_report(&report));
        bail!("the file has errors; fix them before estimating");
    }
    let tokens = report
        .stats
        .tokens
        .as_ref()
        .context("token statistics missing")?;
    let hp = resolve_auto(
        &AutoInput {
            method: report.method,
            n_examples: report.n_examples,
            mean_tokens_per_example: Some(tokens.total_tokens_per_example.mean),
            model: Some(model.size),
        },
        &a.hp.overrides(a.beta.0),
    )?;
    let est = estimate(&EstimateInput {
        method: report.method,
        n_examples: report.n_examples,
        total_tokens: tokens.total_tokens,
        trained_tokens: tokens.total_trained_tokens,
        hyperparameters: hp.clone(),
        throughput: throughput(a),
        price_per_hour: a.price_per_hour,
        hosted_prices: default_hosted_prices(),
    });
    if a.input.json {
        println!(
            "{}",
            serde_json::to_string(
                &serde_json::json!({"hyperparameters": hp, "estimate": est, "model": model.id})
            )?
        );
    } else {
        print_estimate(&report, &model, &hp, &est);
    }
    Ok(ExitCode::SUCCESS)
}

/// `--tokens-per-second`, else the bench result, else the default.
fn throughput(a: &EstimateArgs) -> Throughput {
    if let Some(tps) = a.tokens_per_second.filter(|t| *t > 0.0) {
        return Throughput {
            tokens_per_second: tps,
            source: "--tokens-per-second".into(),
        };
    }
    let path = a.bench_result.clone().unwrap_or_else(|| {
        hone_model::registry::hone_home()
            .join("bench")
            .join("train.json")
    });
    std::fs::read_to_string(&path)
        .ok()
        .and_then(|text| throughput_from_bench_json(&text, &path.display().to_string()))
        .unwrap_or_default()
}

fn print_estimate(
    report: &Report,
    model: &CountingModel,
    hp: &ResolvedHyperparameters,
    e: &Estimate,
) {
    println!(
        "{} {} examples, model {} (~{}M parameters)",
        report.n_examples,
        report.method.as_str(),
        model.id,
        model.size.params / 1_000_000
    );
    println!(
        "\nhyperparameters (learning_rate = auto rate for the method and model size × multiplier):"
    );
    for r in &hp.reasons {
        let source = match r.source {
            hone_data::hparams::Source::Auto => "auto",
            hone_data::hparams::Source::User => "set",
        };
        println!("  {:<26} {:>8}  [{source}] {}", r.param, r.value, r.why);
    }
    println!("\nrun:");
    println!(
        "  steps: {} per epoch × {} epochs = {}",
        e.steps_per_epoch, e.n_epochs, e.total_steps
    );
    println!("  trained tokens × epochs: {}", e.trained_tokens_total);
    println!(
        "  all tokens × epochs (what hosted services bill): {}",
        e.billed_tokens_total
    );
    println!(
        "  wall time here: {} at {:.1} tokens/s ({})",
        human_duration(e.wall_seconds),
        e.tokens_per_second,
        e.throughput_source
    );
    println!("\ncost:");
    println!(
        "  local: {} at ${:.2}/hour",
        usd(e.local_usd),
        e.price_per_hour
    );
    for h in &e.hosted {
        println!(
            "  hosted {}: {} at ${}/1M training tokens",
            h.model,
            usd(h.usd),
            h.usd_per_million_tokens
        );
    }
}

/// Dollars with cents, or four decimals for amounts under a cent.
fn usd(x: f64) -> String {
    if x > 0.0 && x < 0.01 {
        format!("${x:.4}")
    } else {
        format!("${x:.2}")
    }
}

fn human_duration(secs: f64) -> String {
    if !secs.is_finite() {
        return "unknown".into();
    }
    let s = secs.round() as u64;
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

fn split(a: &SplitArgs) -> anyhow::Result<ExitCode> {
    let (train, valid) = (
        a.train_out
            .clone()
            .unwrap_or_else(|| sibling(&a.file, "train")),
        a.valid_out
            .clone()
            .unwrap_or_else(|| sibling(&a.file, "valid")),
    );
    if train == a.file || valid == a.file || train == valid {
        bail!("the outputs must differ from each other and from the input");
    }
    let s = hone_data::split::split_file(&a.file, &train, &valid, a.valid_fraction, a.seed)?;
    println!("{} train examples -> {}", s.n_train, train.display());
    println!("{} validation examples -> {}", s.n_valid, valid.display());
    if s.n_blank_skipped > 0 {
        println!("{} blank line(s) skipped", s.n_blank_skipped);
    }
    if s.n_kept_with_duplicate_prompt > 0 {
        println!(
            "{} example(s) repeat an earlier prompt (normalised) and were kept on its side",
            s.n_kept_with_duplicate_prompt
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `data.jsonl` -> `data.<part>.jsonl` in the same directory.
fn sibling(file: &Path, part: &str) -> PathBuf {
    let stem = file
        .file_stem()
        .map_or_else(|| "data".into(), |s| s.to_string_lossy().into_owned());
    file.with_file_name(format!("{stem}.{part}.jsonl"))
}

fn convert(a: &ConvertArgs) -> anyhow::Result<ExitCode> {
    let input = BufReader::new(
        File::open(&a.file).with_context(|| format!("opening {}", a.file.display()))?,
    );
    let report = match &a.output {
        Some(path) => {
            // Crash-safe, with the umask's mode (not a temp file's 0600).
            let mut report = None;
            hone_data::atomic_file::write_with(
                path,
                |tmp| -> anyhow::Result<()> {
                    let mut w = BufWriter::new(File::create(tmp)?);
                    let r =
                        hone_data::convert::convert(input, &mut w, a.from, a.system.as_deref())?;
                    w.flush()?;
                    report = Some(r);
                    Ok(())
                },
                anyhow::Error::from,
            )
            .with_context(|| format!("writing {}", path.display()))?;
            report.expect("set when the write succeeded")
        }
        None => {
            let stdout = std::io::stdout().lock();
            let report = hone_data::convert::convert(
                input,
                BufWriter::new(stdout),
                a.from,
                a.system.as_deref(),
            )?;
            std::io::stdout().flush()?;
            report
        }
    };
    eprintln!(
        "converted {} row(s); {} could not be converted",
        report.n_converted,
        report.failures.len()
    );
    for f in &report.failures {
        eprintln!("  line {}: {}", f.line.unwrap_or(0), f.text);
    }
    Ok(if report.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hone_data::SftExample;

    /// `hone data convert --output` writes a file users take away: the umask's mode
    /// (0644 under umask 022), not a temp file's 0600.
    #[cfg(unix)]
    #[test]
    fn converted_files_get_the_umask_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("alpaca.jsonl");
        std::fs::write(&input, "{\"instruction\": \"Hi\", \"output\": \"Hello\"}\n").unwrap();
        let out = dir.path().join("chat.jsonl");
        let argv = ["hone", "--from", "alpaca", "--output"];
        let mut argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        argv.push(out.display().to_string());
        argv.push(input.display().to_string());
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            a: ConvertArgs,
        }
        let a = <Cli as clap::Parser>::try_parse_from(argv).unwrap().a;
        assert_eq!(convert(&a).unwrap(), ExitCode::SUCCESS);
        let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o666 & !hone_data::atomic_file::umask());
        assert!(std::fs::read_to_string(&out).unwrap().contains("Hello"));
    }

    #[test]
    fn sibling_names() {
        assert_eq!(
            sibling(Path::new("/d/data.jsonl"), "train"),
            PathBuf::from("/d/data.train.jsonl")
        );
    }

    /// Real-model token stats: `HONE_TEST_GGUF=/tmp/smol/SmolLM2-135M-Instruct.Q4_1.gguf
    /// cargo test --release -p hone-cli real_model -- --ignored`.
    #[test]
    #[ignore = "needs HONE_TEST_GGUF"]
    fn real_model_token_stats() {
        let path = std::env::var("HONE_TEST_GGUF").expect("HONE_TEST_GGUF");
        let model = open_for_counting(&path, &Default::default()).unwrap();
        assert_eq!(model.counter.context_length, 8192);
        assert!(
            (130_000_000..140_000_000).contains(&model.size.params),
            "{}",
            model.size.params
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.jsonl");
        let line = r#"{"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hello"},{"role":"assistant","content":"Hi! How can I help?"}]}"#;
        std::fs::write(&file, format!("{line}\n").repeat(10)).unwrap();
        let args = InputArgs {
            file,
            method: None,
            model: path,
            max_seq_len: None,
            goal: None,
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
            json: false,
            timings: false,
            template: Default::default(),
        };
        let report = run_validation(&args, Some(&model)).unwrap();
        let t = report.stats.tokens.unwrap();
        let ex: SftExample = serde_json::from_str(line).unwrap();
        let enc = model.counter.chat.encode_chat(&ex.messages, None).unwrap();
        assert_eq!(t.total_tokens_per_example.max as usize, enc.len());
        assert_eq!(
            t.total_trained_tokens as usize,
            10 * enc.trained_token_count()
        );
        // "Hi! How can I help?" plus <|im_end|>: a handful of tokens.
        assert!(
            (5..=12).contains(&enc.trained_token_count()),
            "{}",
            enc.trained_token_count()
        );
    }
}
