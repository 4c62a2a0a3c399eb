//! `hone serve`: the OpenAI-compatible HTTP server.
//!
//! Wires hone-serve's seams to the real engines: the base models (from the
//! registry under `HONE_HOME`, or `--model`), hone-data's validator with
//! token counts from the default model's tokenizer, and hone-train's
//! trainer. Then binds, says where and whether auth is on, and serves
//! until Ctrl-C / SIGTERM, draining running jobs into checkpoints.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use hone_model::ChatEngine;
use hone_serve::chat::{BatchOptions, LocalChat, LocalChatOptions};
use hone_serve::embeddings::EmbeddingService;
use hone_serve::{
    AppState, BaseModels, Engines, HoneDataValidator, HoneTrainer, ServeConfig, TrainerOptions,
};

#[derive(clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub config: ServeConfig,
    #[command(flatten)]
    pub template: super::chat_template::ChatTemplateArgs,
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let config = args.config;
    let stored_keys = stored_keys(&config)?;
    config
        .check_exposure_with(stored_keys.active)
        .map_err(|m| anyhow::anyhow!(m))?;
    let models = BaseModels::resolve(&config.home, &config.models)
        .context("resolving --model")?
        .with_adapters(&config.adapters)
        .context("resolving --adapter")?
        .with_open_options(args.template.options());
    let models = Arc::new(models);
    let engines = engines(&config, models.clone())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let addr = config.addr();
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let bound = listener.local_addr().context("reading the bound address")?;
        let state = AppState::open(config.clone(), engines)?;
        print_banner(&config, bound, &models, stored_keys);
        hone_serve::serve_on(listener, state, hone_serve::shutdown_signal()).await?;
        eprintln!("hone serve: stopped");
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Keys `hone keys create` stored in `hone.db`.
struct StoredKeys {
    /// Not revoked.
    active: usize,
    /// Ever stored: auth stays on once there was one.
    ever: usize,
}

fn stored_keys(config: &ServeConfig) -> anyhow::Result<StoredKeys> {
    use hone_serve::store::{SqliteStore, Store};
    let path = config.home.join("hone.db");
    let store = SqliteStore::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let all = store.list_keys(None)?;
    Ok(StoredKeys {
        active: all.iter().filter(|k| k.revoked_at.is_none()).count(),
        ever: all.len(),
    })
}

/// The validator, the catalog and the trainer.
fn engines(config: &ServeConfig, models: Arc<BaseModels>) -> anyhow::Result<Engines> {
    let mut engines = Engines::with_base_models(Vec::<String>::new());
    engines.catalog = models.clone();
    engines = engines.validator(Arc::new(validator(&models)));
    let options = TrainerOptions {
        checkpoint_every: config.checkpoint_every,
        base_weights: config.base_weights,
        gradient_checkpointing: config.gradient_checkpointing,
        ..TrainerOptions::default()
    };
    let chat = chat_backend(config, &models)?;
    engines.embeddings = embedding_service(config)?;
    Ok(engines
        .training(Arc::new(HoneTrainer::new(models, options)))
        .chat(Arc::new(chat), config.chat_capacity()))
}

/// `--embedding-model` loaded now (a broken one stops the start), with as
/// many requests at once as chat.
fn embedding_service(config: &ServeConfig) -> anyhow::Result<Option<EmbeddingService>> {
    let model = hone_serve::embeddings::load_model(&config.home, config.embedding_model.as_deref())
        .map_err(|e| anyhow::anyhow!(e))?;
    if let Some(m) = &model {
        eprintln!(
            "embeddings: {} ({} dimensions, up to {} tokens per input)",
            m.id,
            m.dim(),
            m.max_tokens()
        );
    }
    Ok(model.map(|m| EmbeddingService::new(Arc::new(m), config.chat_capacity())))
}

/// Chat over the base models, each loaded once now (so a broken model is
/// reported before serving and the first request is fast), with an LRU of
/// adapters for `ft:` and checkpoint models.
fn chat_backend(config: &ServeConfig, models: &BaseModels) -> anyhow::Result<LocalChat> {
    let options = LocalChatOptions {
        max_adapters: config.max_adapters.max(1),
        ..LocalChatOptions::default()
    };
    let weights = options.weights;
    let batching = BatchOptions {
        kv_cache_bytes: config.kv_cache_mb.saturating_mul(1 << 20),
        ..BatchOptions::default()
    };
    let mut chat = LocalChat::new(Arc::new(models.clone()), options).with_batching(batching);
    for m in models.iter() {
        let engine = models.load(&m.resolved, weights).with_context(|| {
            format!(
                "loading base model {} from {}",
                m.model.id,
                m.resolved.source.path().display()
            )
        })?;
        super::chat_template::print_template(&m.model.id, &engine.tokenizer.template);
        check_adapters(models, &m.model.id, &engine)?;
        chat = chat.with_base(m.model.id.clone(), engine);
    }
    Ok(chat)
}

/// Loads each `--adapter` that runs on `base` once, so that an adapter whose
/// shapes do not fit its base is an error at start, not on the first request.
fn check_adapters(models: &BaseModels, base: &str, engine: &ChatEngine) -> anyhow::Result<()> {
    use hone_serve::engines::ModelCatalog;
    for a in models.served_adapters().iter().filter(|a| a.base == base) {
        let mut model = engine.model.clone();
        hone_model::load_peft_adapter(&mut model, &a.dir).with_context(|| {
            format!(
                "--adapter {}={}: it does not load on base model {base}",
                a.model.id,
                a.dir.display()
            )
        })?;
    }
    Ok(())
}

/// hone-data's checks, with token counts and length checks from the
/// default model's tokenizer and chat template when it loads (only the
/// tokenizer and config are read, not the weights).
fn validator(models: &BaseModels) -> HoneDataValidator {
    let mut v = HoneDataValidator::new();
    let Some(default) = models.default_model() else {
        return v;
    };
    match models.open(&default.resolved) {
        Ok(model) => {
            v.options.model_name = Some(default.model.id.clone());
            v.counter = Some(Arc::new(model.token_counter()));
        }
        Err(e) => eprintln!(
            "warning: no token counts in upload checks ({} did not load: {e:#})",
            default.model.id
        ),
    }
    v
}

fn print_banner(
    config: &ServeConfig,
    bound: std::net::SocketAddr,
    models: &BaseModels,
    stored_keys: StoredKeys,
) {
    eprintln!(
        "hone serve: listening on http://{bound}/v1 (home {})",
        config.home.display()
    );
    let keys = config.usable_keys().len();
    if keys + stored_keys.ever == 0 {
        eprintln!(
            "auth: off (no API key; bound to loopback only, so only this machine can connect; \
             create keys with `hone keys create --project NAME`, or pass --api-key or HONE_API_KEYS)"
        );
    } else {
        eprintln!(
            "auth: on ({keys} --api-key key(s) in project {}, {} active key(s) from `hone keys`; \
             send Authorization: Bearer <key>)",
            config.org, stored_keys.active
        );
    }
    if models.is_empty() {
        eprintln!(
            "warning: no base model is installed: run `hone model fetch` with the same HONE_HOME, \
             or pass --model PATH"
        );
    } else {
        let ids: Vec<String> = models.iter().map(|m| m.model.id.clone()).collect();
        eprintln!("base models: {}", ids.join(", "));
    }
    for a in hone_serve::engines::ModelCatalog::served_adapters(models) {
        eprintln!(
            "adapter model: {} = {} on {}",
            a.model.id,
            a.dir.display(),
            a.base
        );
    }
    eprintln!(
        "jobs: up to {} at a time, checkpoint every {} step(s) and at each epoch end; \
         chat: up to {} at a time in a batch per model, KV cache {} MiB, {} adapter(s) cached",
        config.max_concurrent_jobs.max(1),
        config.checkpoint_every,
        config.chat_capacity(),
        config.kv_cache_mb,
        config.max_adapters.max(1)
    );
}
