//! `hone chat`: one answer to a prompt, or an interactive session.
//!
//! Sampling defaults follow SmolLM2-Instruct's model card (temperature 0.2,
//! top-p 0.9): low enough to stay on topic, not fully greedy. `--temperature 0`
//! is greedy decoding. Without `--seed` each run draws a fresh seed.

use std::io::{BufRead, Write};
use std::ops::ControlFlow;
use std::process::ExitCode;

use anyhow::{bail, Context};
use hone_model::constraint::Grammar;
use hone_model::generate::{Generation, GenerationParams};
use hone_model::registry::{self, DEFAULT_MODEL_ID};
use hone_model::{ChatEngine, WeightPath};
use hone_text::{ChatMessage, Role};

#[derive(clap::Args)]
pub struct ChatArgs {
    /// The user message. Without it, starts an interactive session
    /// (`/reset` clears the conversation, `/exit` or end of input quits).
    pub prompt: Option<String>,
    /// Model id (e.g. smollm2-135m-instruct) or path to a GGUF file or HF directory.
    #[arg(long, env = "HONE_MODEL", default_value = DEFAULT_MODEL_ID)]
    pub model: String,
    /// System message placed before the conversation.
    #[arg(long, env = "HONE_SYSTEM")]
    pub system: Option<String>,
    /// Sampling temperature; 0 means greedy decoding.
    #[arg(long, env = "HONE_TEMPERATURE", default_value_t = 0.2)]
    pub temperature: f32,
    /// Nucleus sampling: keep the most likely tokens up to this probability mass.
    #[arg(long, env = "HONE_TOP_P", default_value_t = 0.9)]
    pub top_p: f32,
    /// Keep only the k most likely tokens (0: no limit).
    #[arg(long, env = "HONE_TOP_K", default_value_t = 0)]
    pub top_k: usize,
    /// Maximum number of tokens in each answer.
    #[arg(long, env = "HONE_MAX_TOKENS", default_value_t = 512)]
    pub max_tokens: usize,
    /// Seed for reproducible sampling.
    #[arg(long, env = "HONE_SEED")]
    pub seed: Option<u64>,
    /// Weights used for inference: packed (default; the file's own blocks with
    /// hone's kernels, fastest: 8-bit activations for K-quant files, f32 ones for
    /// Q4_1 files; HONE_DECODE_ACTIVATIONS=f32|q8 overrides) or f32 (the exact
    /// reference).
    #[arg(long, env = "HONE_WEIGHTS", default_value = "packed", value_parser = parse_weights)]
    pub weights: WeightPath,
    /// A LoRA adapter directory in PEFT layout (what `hone train` writes in
    /// --out), applied on top of the base model without merging.
    #[arg(long, env = "HONE_ADAPTER")]
    pub adapter: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub template: super::chat_template::ChatTemplateArgs,
    /// Constrain each answer to one JSON object (the API's
    /// `response_format: {type: "json_object"}`).
    #[arg(long, conflicts_with = "json_schema")]
    pub json: bool,
    /// Constrain each answer to the JSON Schema in this file (the API's
    /// `response_format: {type: "json_schema"}`, the same engine).
    #[arg(long, value_name = "FILE")]
    pub json_schema: Option<std::path::PathBuf>,
    /// Retrieval: before each answer, put the chunks of the .txt/.md files
    /// under DIR most similar to the message in the system message (after
    /// --system), in the format docs/eval.md ("The retrieval format") shows, the one `hone
    /// eval --baseline rag:DIR` measures. Vectors are cached under $HONE_HOME/cache/embeddings.
    #[arg(long, value_name = "DIR")]
    pub rag: Option<std::path::PathBuf>,
    /// Chunks retrieved per message with --rag (fewer if DIR has fewer; said so).
    #[arg(long, value_name = "K", default_value_t = hone_retrieve::DEFAULT_K, requires = "rag")]
    pub rag_k: usize,
    /// The embedding model --rag uses (fetched when missing).
    #[arg(long, value_name = "ID", default_value = registry::DEFAULT_EMBEDDING_MODEL_ID, requires = "rag")]
    pub rag_model: String,
}

/// Parses `--weights`. The values of the retired candle-quantized paths get
/// their own message, so an old script learns what to use instead.
pub fn parse_weights(s: &str) -> Result<WeightPath, String> {
    match s {
        "packed" => Ok(WeightPath::Packed),
        "f32" => Ok(WeightPath::F32),
        "q8_0" | "q8" | "native" => Err(format!(
            "`--weights {s}` (candle's quantized kernels) was removed: use packed (the \
             default: the file's own blocks with hone's kernels) or f32"
        )),
        _ => Err(format!("unknown weights `{s}` (expected packed or f32)")),
    }
}

pub fn run(args: ChatArgs) -> anyhow::Result<ExitCode> {
    if let Some(p) = &args.prompt {
        if p.trim().is_empty() {
            bail!(
                "the prompt is empty: give a question, or no argument for an interactive session"
            );
        }
    }
    validate(&args)?;
    let grammar = grammar(&args)?;
    let rag = args
        .rag
        .as_deref()
        .map(|dir| Rag::open(dir, &args.rag_model, args.rag_k))
        .transpose()?;
    let mut engine = load_engine_with(&args.model, args.weights, &args.template.options())?;
    if let Some(dir) = &args.adapter {
        attach_adapter(&mut engine, dir)?;
    }
    let mut params = GenerationParams {
        max_tokens: args.max_tokens,
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        seed: args.seed.unwrap_or_else(fresh_seed),
        stop: Vec::new(),
        grammar,
    };
    let turn = Turn {
        engine: &engine,
        system: args.system.clone(),
        rag: rag.as_ref(),
    };
    match &args.prompt {
        Some(p) => {
            turn.answer(&[ChatMessage::new(Role::User, p.clone())], &params)?;
            Ok(ExitCode::SUCCESS)
        }
        None => repl(&turn, &mut params),
    }
}

/// What `--rag` retrieves from: the corpus and the model that embedded it.
struct Rag {
    model: hone_model::embed::EmbeddingModel,
    corpus: hone_retrieve::Corpus,
    k: usize,
}

impl Rag {
    /// Embeds DIR (or reads its cached vectors) and says what was skipped.
    fn open(dir: &std::path::Path, model: &str, k: usize) -> anyhow::Result<Rag> {
        if k == 0 {
            bail!("--rag-k must be at least 1");
        }
        let resolved = registry::resolve(model)?;
        let model = resolved
            .open_embedding()
            .with_context(|| format!("loading the embedding model for --rag ({model})"))?;
        let options = hone_retrieve::CorpusOptions::default();
        let corpus = hone_retrieve::Corpus::from_dir(dir, &model, &options)
            .with_context(|| format!("--rag {}", dir.display()))?;
        let r = &corpus.report;
        eprintln!(
            "--rag {}: {} chunks from {} files ({} embedded now, {} from the cache)",
            dir.display(),
            corpus.chunks().len(),
            r.files,
            r.embedded_files,
            r.cached_files
        );
        for note in r.notes() {
            eprintln!("  {note}");
        }
        Ok(Rag { model, corpus, k })
    }

    /// The system message for `question`: `system` (if any), a blank line,
    /// then the top-K chunks, in the format `hone eval`'s rag baselines use
    /// ([`hone_retrieve::system_with_context`]).
    fn system_for(&self, system: Option<&str>, question: &str) -> anyhow::Result<String> {
        let hits = self.corpus.top_k(&self.model, question, self.k)?;
        if hits.truncated() {
            eprintln!(
                "note: --rag-k {} but the documents hold only {} chunks; using all of them",
                self.k,
                hits.hits.len()
            );
        }
        let context = hone_retrieve::format_context(&hits.hits);
        Ok(hone_retrieve::system_with_context(system, &context))
    }
}

/// One answer's inputs: the model, `--system` and `--rag`.
struct Turn<'a> {
    engine: &'a ChatEngine,
    system: Option<String>,
    rag: Option<&'a Rag>,
}

impl Turn<'_> {
    /// Answers the conversation (without its system message, which is
    /// built here: `--system`, plus retrieved chunks for the last message).
    fn answer(
        &self,
        conversation: &[ChatMessage],
        params: &GenerationParams,
    ) -> anyhow::Result<Generation> {
        let system = match (self.rag, conversation.last()) {
            (Some(rag), Some(last)) => Some(rag.system_for(self.system.as_deref(), &last.content)?),
            _ => self.system.clone(),
        };
        let mut messages = Vec::with_capacity(conversation.len() + 1);
        messages.extend(system.map(|s| ChatMessage::new(Role::System, s)));
        messages.extend_from_slice(conversation);
        answer(self.engine, &messages, params)
    }
}

fn validate(args: &ChatArgs) -> anyhow::Result<()> {
    if !(args.temperature >= 0.0 && args.temperature.is_finite()) {
        bail!("--temperature must be a number >= 0 (0 is greedy)");
    }
    if !(args.top_p > 0.0 && args.top_p <= 1.0) {
        bail!("--top-p must be in (0, 1]");
    }
    if args.max_tokens == 0 {
        bail!("--max-tokens must be at least 1");
    }
    Ok(())
}

/// The grammar of `--json` or `--json-schema`, checked before the model loads.
fn grammar(args: &ChatArgs) -> anyhow::Result<Option<Grammar>> {
    if args.json {
        return Ok(Some(Grammar::json_object()));
    }
    let Some(path) = &args.json_schema else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading --json-schema {}", path.display()))?;
    let schema: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("--json-schema {} is not JSON", path.display()))?;
    let g = Grammar::json_schema(schema)
        .with_context(|| format!("--json-schema {} cannot be used", path.display()))?;
    Ok(Some(g))
}

/// Resolves `--model` (fetching the default model if needed) and loads it.
pub fn load_engine(spec: &str, weights: WeightPath) -> anyhow::Result<ChatEngine> {
    let resolved = registry::resolve(spec)?;
    ChatEngine::load(&resolved, weights)
        .with_context(|| format!("loading model {}", resolved.source.path().display()))
}

/// [`load_engine`] with `--chat-template` applied; prints the template used.
pub fn load_engine_with(
    spec: &str,
    weights: WeightPath,
    options: &hone_model::OpenOptions,
) -> anyhow::Result<ChatEngine> {
    let resolved = registry::resolve(spec)?;
    let engine = ChatEngine::load_with(&resolved, weights, options)
        .with_context(|| format!("loading model {}", resolved.source.path().display()))?;
    super::chat_template::print_template(&engine.id, &engine.tokenizer.template);
    Ok(engine)
}

/// Loads a PEFT adapter onto the loaded base, warning when it was trained on
/// another base (a mismatch in shapes is an error from the loader itself).
pub fn attach_adapter(engine: &mut ChatEngine, dir: &std::path::Path) -> anyhow::Result<()> {
    let cfg = hone_model::load_peft_adapter(&mut engine.model, dir)
        .with_context(|| format!("loading adapter {}", dir.display()))?;
    let base = cfg.hone_base().unwrap_or("");
    if !base.is_empty() && !hone_model::registry::is_same_base(base, &engine.id) {
        eprintln!(
            "warning: adapter {} was trained on '{base}', but the base model is '{}'",
            dir.display(),
            engine.id
        );
    }
    Ok(())
}

fn fresh_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Streams one answer to stdout and returns it.
fn answer(
    engine: &ChatEngine,
    conversation: &[ChatMessage],
    params: &GenerationParams,
) -> anyhow::Result<Generation> {
    let mut out = std::io::stdout().lock();
    let g = engine.chat(conversation, params, &mut |piece| {
        let ok = out.write_all(piece.as_bytes()).and_then(|_| out.flush());
        // A closed stdout (e.g. `| head`) ends generation quietly.
        if ok.is_err() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })?;
    let _ = writeln!(out);
    Ok(g)
}

fn repl(turn: &Turn<'_>, params: &mut GenerationParams) -> anyhow::Result<ExitCode> {
    eprintln!(
        "hone chat with {} — /reset clears the conversation, /exit or Ctrl-D quits",
        turn.engine.id
    );
    let mut conversation: Vec<ChatMessage> = Vec::new();
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        eprint!("> ");
        let _ = std::io::stderr().flush();
        let Some(line) = lines.next() else { break };
        let line = line.context("reading stdin")?;
        let line = line.trim();
        match line {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                conversation.clear();
                eprintln!("(conversation cleared)");
                continue;
            }
            _ => {}
        }
        conversation.push(ChatMessage::new(Role::User, line));
        let g = turn.answer(&conversation, params)?;
        conversation.push(ChatMessage::new(Role::Assistant, g.text));
        // Vary samples between turns while staying reproducible for a given --seed.
        params.seed = params.seed.wrapping_add(1);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_parse_and_retired_values_say_what_to_use() {
        assert_eq!(parse_weights("packed"), Ok(WeightPath::Packed));
        assert_eq!(parse_weights("f32"), Ok(WeightPath::F32));
        for retired in ["q8_0", "q8", "native"] {
            let e = parse_weights(retired).unwrap_err();
            assert!(e.contains("removed") && e.contains("packed"), "{e}");
        }
        let e = parse_weights("q4").unwrap_err();
        assert!(e.contains("expected packed or f32"), "{e}");
    }
}
