//! `hone`: self-hosted LLM fine-tuning behind OpenAI's API.
//!
//! This file only parses the command line and dispatches; each subcommand
//! lives in `cmd/<name>.rs` and calls into the library crates.

mod alloc;
mod cmd;

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Fine-tune small open models with LoRA and serve them behind an
/// OpenAI-compatible API.
#[derive(Parser)]
#[command(name = "hone", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fetch and list base models.
    #[command(subcommand)]
    Model(cmd::model::ModelCommand),
    /// Chat with a model: one-shot with a prompt, or an interactive REPL.
    Chat(cmd::chat::ChatArgs),
    /// Check, describe, split and convert training data.
    #[command(subcommand)]
    Data(cmd::data::DataCommand),
    /// Fine-tune a base model with LoRA (writes a PEFT adapter).
    Train(cmd::train::TrainArgs),
    /// Merge a LoRA adapter into its base and write a Hugging Face model directory.
    Merge(cmd::merge::MergeArgs),
    /// Export base + LoRA adapter as GGUF (merged model, LoRA adapter) with Ollama Modelfiles.
    Export(cmd::export::ExportArgs),
    /// Evaluate a model (and its base, side by side) on test cases.
    Eval(cmd::eval::EvalArgs),
    /// Serve the OpenAI-compatible API: files, fine-tuning jobs, models, chat.
    Serve(cmd::serve::ServeArgs),
    /// Manage the server's API keys and their projects.
    #[command(subcommand)]
    Keys(cmd::keys::KeysCommand),
    /// The whole loop on a bundled example: validate, train, evaluate, report.
    Quickstart(cmd::quickstart::QuickstartArgs),
    /// Measure speed on this machine.
    #[command(subcommand)]
    Bench(cmd::bench::BenchCommand),
}

fn main() -> std::process::ExitCode {
    alloc::keep_freed_memory_briefly();
    hone_model::pin_thread_count();
    init_tracing();
    let cli = Cli::parse();
    if matches!(
        cli.command,
        Command::Train(_) | Command::Bench(_) | Command::Quickstart(_)
    ) {
        alloc::hold_freed_memory();
    }
    let result = match cli.command {
        Command::Model(c) => cmd::model::run(c),
        Command::Chat(a) => cmd::chat::run(a),
        Command::Data(c) => cmd::data::run(c),
        Command::Bench(c) => cmd::bench::run(c),
        Command::Train(a) => cmd::train::run(a),
        Command::Merge(a) => cmd::merge::run(a),
        Command::Export(a) => cmd::export::run(a),
        Command::Eval(a) => cmd::eval::run(a),
        Command::Serve(a) => cmd::serve::run(a),
        Command::Keys(c) => cmd::keys::run(c),
        Command::Quickstart(a) => cmd::quickstart::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

/// Logs go to stderr, filtered by `RUST_LOG` (default: warnings only), so
/// that stdout stays clean for answers and JSON.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
