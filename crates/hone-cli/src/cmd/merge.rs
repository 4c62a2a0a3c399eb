//! `hone merge`: base + LoRA adapter -> a Hugging Face model directory.
//!
//! The base is loaded in f32 (the training reference), every adapter is folded into its
//! weight (`W + alpha/r · B·A`), and the result is written atomically as `config.json`,
//! `model.safetensors`, `tokenizer.json`, `tokenizer_config.json` (with the chat template)
//! and `generation_config.json`. `--model DIR` then serves it like any HF directory.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use hone_model::lora::ADAPTER_CONFIG_FILE;
use hone_model::registry::{self, DEFAULT_MODEL_ID};
use hone_model::{ChatEngine, PeftConfig, WeightPath};

#[derive(clap::Args)]
pub struct MergeArgs {
    /// The adapter directory in PEFT layout (what `hone train` writes in --out).
    #[arg(long, env = "HONE_ADAPTER")]
    pub adapter: PathBuf,
    /// Where to write the merged model; must not exist yet.
    #[arg(long)]
    pub out: PathBuf,
    /// Base model id or path (GGUF file or HF directory). Default: the adapter's
    /// `base_model_name_or_path` when it resolves, else smollm2-135m-instruct.
    #[arg(long, env = "HONE_MODEL")]
    pub model: Option<String>,
}

pub fn run(args: MergeArgs) -> anyhow::Result<ExitCode> {
    if args.out.exists() {
        bail!(
            "{} already exists; choose a new --out (merge never overwrites)",
            args.out.display()
        );
    }
    let peft = read_adapter_config(&args.adapter)?;
    let spec = base_model_spec(args.model.as_deref(), &peft);
    let t0 = Instant::now();
    let resolved = registry::resolve(&spec).with_context(|| format!("base model `{spec}`"))?;
    let mut engine = ChatEngine::load(&resolved, WeightPath::F32)
        .with_context(|| format!("loading {}", resolved.source.path().display()))?;
    hone_model::load_peft_adapter(&mut engine.model, &args.adapter)
        .with_context(|| format!("attaching the adapter {}", args.adapter.display()))?;
    let stats = hone_model::merge_to_hf_dir(&mut engine.model, Some(&engine.tokenizer), &args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!(
        "merged {} LoRA module(s) (r={}, alpha={}) into {} -> {} in {:.1}s",
        stats.merged_modules,
        peft.r,
        peft.lora_alpha,
        resolved.id,
        args.out.display(),
        t0.elapsed().as_secs_f64()
    );
    println!("use it with: hone chat --model {}", shell_path(&args.out));
    Ok(ExitCode::SUCCESS)
}

fn read_adapter_config(dir: &Path) -> anyhow::Result<PeftConfig> {
    let path = dir.join(ADAPTER_CONFIG_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {} (is --adapter a PEFT adapter directory?)",
            path.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// `--model`, else the adapter's base when the registry knows it, else the default.
fn base_model_spec(explicit: Option<&str>, peft: &PeftConfig) -> String {
    if let Some(m) = explicit {
        return m.to_string();
    }
    match peft.base_model_name_or_path.as_deref() {
        Some(base) if resolvable(base) => base.to_string(),
        _ => DEFAULT_MODEL_ID.to_string(),
    }
}

/// Whether `spec` names an existing path, an installed model or a fetchable one, without
/// fetching anything.
fn resolvable(spec: &str) -> bool {
    if spec.is_empty() {
        return false;
    }
    if Path::new(spec).exists() {
        return true;
    }
    let reg = registry::Registry::default_home();
    let installed = reg
        .installed()
        .map(|v| v.iter().any(|m| m.id == spec))
        .unwrap_or(false);
    installed || registry::KNOWN_MODELS.iter().any(|k| k.id == spec)
}

fn shell_path(p: &Path) -> String {
    let s = p.display().to_string();
    if s.contains(char::is_whitespace) {
        format!("'{s}'")
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peft(base: Option<&str>) -> PeftConfig {
        let mut c = PeftConfig::from_lora(&hone_model::LoraConfig::default(), "x");
        c.base_model_name_or_path = base.map(str::to_string);
        c
    }

    #[test]
    fn base_model_defaults_to_the_adapters_base_when_resolvable() {
        assert_eq!(
            base_model_spec(Some("m.gguf"), &peft(Some(DEFAULT_MODEL_ID))),
            "m.gguf"
        );
        assert_eq!(
            base_model_spec(None, &peft(Some(DEFAULT_MODEL_ID))),
            DEFAULT_MODEL_ID
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().display().to_string();
        assert_eq!(base_model_spec(None, &peft(Some(&p))), p);
        assert_eq!(
            base_model_spec(None, &peft(Some("no-such-model-anywhere"))),
            DEFAULT_MODEL_ID
        );
        assert_eq!(base_model_spec(None, &peft(None)), DEFAULT_MODEL_ID);
    }
}
