//! `hone export`: base + LoRA adapter -> GGUF files for llama.cpp and Ollama.
//!
//! Writes into `--out` (created; existing files are never overwritten):
//! - `model-<type>.gguf` for each `--type` (f16, bf16, q8_0, q4_k_m, q4_1): the merged
//!   model with the base GGUF's tokenizer, chat template and special tokens;
//! - `adapter-lora.gguf`: the adapter alone, for `llama-cli -m BASE --lora` or Ollama's
//!   `ADAPTER`;
//! - `Modelfile` (FROM the first merged GGUF) and `Modelfile.adapter` (FROM the base
//!   GGUF, ADAPTER the LoRA GGUF), printed too.
//!
//! The tokenizer metadata llama.cpp needs is copied from a GGUF base (every `hone model
//! fetch` model is one), or built from an HF directory's `tokenizer.json` (byte-level BPE
//! vocabularies; others are a clear error, see `hone_model::export::tokenizer_json`).
//! For an HF-directory base, `Modelfile.adapter`'s `FROM` names the directory, which
//! Ollama imports itself (safetensors).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use hone_model::export::{self, GgufType, TokenizerSource};
use hone_model::registry::{self, ModelSource};
use hone_model::{ChatEngine, WeightPath};

use super::merge::{base_model_spec, read_adapter_config};

/// The LoRA GGUF's file name.
pub const LORA_FILE: &str = "adapter-lora.gguf";

#[derive(clap::Args)]
pub struct ExportArgs {
    /// The adapter directory in PEFT layout (what `hone train` writes in --out).
    #[arg(long, env = "HONE_ADAPTER")]
    pub adapter: PathBuf,
    /// Directory to write the GGUF files and Modelfiles into (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// Base model id or GGUF path. Default: the adapter's base when it resolves, else
    /// smollm2-135m-instruct.
    #[arg(long, env = "HONE_MODEL")]
    pub model: Option<String>,
    /// GGUF types of the merged model, comma-separated: f16, bf16, q8_0, q4_k_m, q4_1.
    #[arg(long = "type", default_value = "q8_0", value_delimiter = ',', value_parser = parse_type)]
    pub types: Vec<GgufType>,
    /// Write only the LoRA GGUF and Modelfile.adapter, no merged model.
    #[arg(long)]
    pub lora_only: bool,
}

fn parse_type(s: &str) -> Result<GgufType, String> {
    GgufType::parse(s).map_err(|e| e.to_string())
}

/// The merged model's file name for `ty`.
pub fn model_file(ty: GgufType) -> String {
    format!("model-{}.gguf", ty.name())
}

pub fn run(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let mut files = vec![LORA_FILE.to_string(), "Modelfile.adapter".into()];
    if !args.lora_only {
        files.extend(args.types.iter().map(|t| model_file(*t)));
        files.push("Modelfile".into());
    }
    for f in &files {
        if args.out.join(f).exists() {
            bail!(
                "{} already exists; choose a new --out (export never overwrites)",
                args.out.join(f).display()
            );
        }
    }
    let peft = read_adapter_config(&args.adapter)?;
    let spec = base_model_spec(args.model.as_deref(), &peft);
    let t0 = Instant::now();
    let resolved = registry::resolve(&spec).with_context(|| format!("base model `{spec}`"))?;
    let base_path = resolved.source.path().to_path_buf();
    let content = match &resolved.source {
        ModelSource::Gguf(p) => Some(export::read_gguf_content(p)?),
        ModelSource::HfDir(_) => None,
    };
    let mut engine = ChatEngine::load(&resolved, WeightPath::F32)
        .with_context(|| format!("loading {}", base_path.display()))?;
    hone_model::load_peft_adapter(&mut engine.model, &args.adapter)
        .with_context(|| format!("attaching the adapter {}", args.adapter.display()))?;
    // Before anything is written: a tokenizer llama.cpp's keys cannot hold is an error.
    let source = match &content {
        Some(c) => TokenizerSource::Gguf(c),
        None if args.lora_only => TokenizerSource::WeightsOnly,
        None => TokenizerSource::Keys(
            export::tokenizer_keys(&base_path, engine.model.cfg.vocab_size)
                .with_context(|| format!("the tokenizer of {}", base_path.display()))?,
        ),
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;

    // A llama.cpp LoRA GGUF cannot hold replaced token rows (`write_lora_gguf` says
    // so): with them, only the merged model is written, and --lora-only is that error.
    let stops = engine.tokenizer.tokenizer.stop_token_texts();
    let template = engine.tokenizer.template.source().to_string();
    let with_rows = engine.model.token_rows().is_some();
    let adapter_mf = if with_rows && !args.lora_only {
        eprintln!(
            "note: the adapter trains token rows, which a llama.cpp LoRA GGUF cannot hold: \
             writing the merged model only (no {LORA_FILE})"
        );
        None
    } else {
        let lora = args.out.join(LORA_FILE);
        let stats = export::write_lora_gguf(&engine.model, peft.lora_alpha, &lora)?;
        println!(
            "wrote {} ({} tensors, {})",
            lora.display(),
            stats.tensors,
            mb(stats.bytes)
        );
        let base_abs = std::fs::canonicalize(&base_path).unwrap_or_else(|_| base_path.clone());
        let adapter_mf = export::modelfile(
            &base_abs.display().to_string(),
            Some(LORA_FILE),
            &template,
            &stops,
        );
        write_text(&args.out.join("Modelfile.adapter"), &adapter_mf)?;
        Some(adapter_mf)
    };

    if !args.lora_only {
        let merged = hone_model::merge_adapters(&mut engine.model)?;
        let base_types = content.as_ref().map(base_layer_types).unwrap_or_default();
        for ty in &args.types {
            let path = args.out.join(model_file(*ty));
            let s = export::write_gguf(&engine.model, &source, *ty, &path)
                .with_context(|| format!("writing {}", path.display()))?;
            let types: Vec<String> = s.types.iter().map(|(t, n)| format!("{n} {t}")).collect();
            println!(
                "wrote {} ({} tensors: {}; {})",
                path.display(),
                s.tensors,
                types.join(", "),
                mb(s.bytes)
            );
            if let Some(w) = export::quant::same_grid_warning(&base_types, &s.types) {
                eprintln!("{}: {w}", path.display());
            }
        }
        let first = model_file(args.types[0]);
        let mf = export::modelfile(&first, None, &template, &stops);
        write_text(&args.out.join("Modelfile"), &mf)?;
        println!(
            "merged {} LoRA module(s) and {} token row(s) of {} in {:.1}s\n\n{}/Modelfile:\n{mf}",
            merged.merged_modules,
            merged.merged_token_rows,
            resolved.id,
            t0.elapsed().as_secs_f64(),
            args.out.display()
        );
        println!(
            "use it with: ollama create NAME -f {}/Modelfile",
            args.out.display()
        );
    } else if let Some(mf) = adapter_mf {
        println!("{}/Modelfile.adapter:\n{mf}", args.out.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// The block types of the base GGUF's layer weights (`blk.*`, 2-D), most common first.
fn base_layer_types(
    c: &hone_model::candle_core::quantized::gguf_file::Content,
) -> Vec<(String, usize)> {
    let types = c
        .tensor_infos
        .iter()
        .filter(|(name, info)| name.starts_with("blk.") && info.shape.rank() >= 2)
        .map(|(_, info)| info.ggml_dtype);
    export::quant::type_counts(types)
}

fn write_text(path: &Path, text: &str) -> anyhow::Result<()> {
    hone_model::atomic_file::write(path, text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}
