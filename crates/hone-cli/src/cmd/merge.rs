//! `hone merge`: base + LoRA adapter -> a Hugging Face model directory.
//!
//! The base is loaded in f32 (the training reference), every adapter is folded into its
//! weight (`W + alpha/r · B·A`), and the result is written atomically as `config.json`,
//! `model.safetensors`, `tokenizer.json`, `tokenizer_config.json` (with the chat template)
//! and `generation_config.json`, weights in `--dtype` (bf16 by default, f32 the exact
//! reference). `--model DIR` then serves it like any HF directory.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use hone_model::lora::ADAPTER_CONFIG_FILE;
use hone_model::registry::{self, DEFAULT_MODEL_ID};
use hone_model::{ChatEngine, MergeDtype, PeftConfig, WeightPath};

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
    /// dtype of the written weights: f32 (exact, 4 bytes a weight), bf16 or f16 (half the
    /// size). The merge itself is computed in f64, rounded to f32, then to the chosen dtype.
    #[arg(long, default_value = "bf16", value_parser = parse_dtype)]
    pub dtype: MergeDtype,
}

fn parse_dtype(s: &str) -> Result<MergeDtype, String> {
    MergeDtype::parse(s).map_err(|e| e.to_string())
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
    let stats = hone_model::merge_to_hf_dir_as(
        &mut engine.model,
        Some(&engine.tokenizer),
        &args.out,
        args.dtype,
    )
    .with_context(|| format!("writing {}", args.out.display()))?;
    println!(
        "merged {} LoRA module(s) (r={}, alpha={}) and {} token row(s) into {} -> {} ({}) in {:.1}s",
        stats.merged_modules,
        peft.r,
        peft.lora_alpha,
        stats.merged_token_rows,
        resolved.id,
        args.out.display(),
        args.dtype.torch_name(),
        t0.elapsed().as_secs_f64()
    );
    println!("use it with: hone chat --model {}", shell_path(&args.out));
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn read_adapter_config(dir: &Path) -> anyhow::Result<PeftConfig> {
    let path = dir.join(ADAPTER_CONFIG_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {} (is --adapter a PEFT adapter directory?)",
            path.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// `--model`, else the adapter's recorded base when hone can find it (see
/// `Registry::recorded_base_model`), else the default (with a warning when the adapter
/// named another base).
pub(crate) fn base_model_spec(explicit: Option<&str>, peft: &PeftConfig) -> String {
    if let Some(m) = explicit {
        return m.to_string();
    }
    let Some(base) = peft.hone_base() else {
        return DEFAULT_MODEL_ID.to_string();
    };
    match registry::Registry::default_home().recorded_base_model(base) {
        Some(spec) => spec,
        None => {
            eprintln!(
                "warning: the adapter's base `{base}` is no file or model hone knows; \
                 using {DEFAULT_MODEL_ID} (pass --model to choose)"
            );
            DEFAULT_MODEL_ID.to_string()
        }
    }
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
        c.hone_base_model = None;
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
        // Adapters trained on a GGUF path recorded its file stem (before
        // `recorded_base`), or record a path since gone: a known model's file names it.
        let known = registry::KNOWN_MODELS[0];
        let stem = known.file_name.trim_end_matches(".gguf");
        let gone = format!("/no/such/dir/{}", known.file_name);
        for recorded in [stem, gone.as_str()] {
            assert_eq!(base_model_spec(None, &peft(Some(recorded))), known.id);
        }
        // A new adapter: the repository id for peft, hone's id read back.
        let new = PeftConfig::from_lora(&hone_model::LoraConfig::default(), DEFAULT_MODEL_ID);
        assert_ne!(
            new.base_model_name_or_path.as_deref(),
            Some(DEFAULT_MODEL_ID)
        );
        assert_eq!(base_model_spec(None, &new), DEFAULT_MODEL_ID);
    }
}
