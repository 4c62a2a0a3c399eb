//! hone-serve: the OpenAI-compatible HTTP server.
//!
//! - [`api`]: every wire type (the only place JSON shapes are defined);
//! - [`error`]: typed errors and the one status/type/code table;
//! - [`ids`]: object ids and fine-tuned model names;
//! - [`store`]: the durable job/file/model store (SQLite by default);
//! - [`blobs`]: file contents on disk, written atomically;
//! - [`engines`]: traits for what the server calls but does not own;
//! - [`catalog`]: the base models (and `--adapter` models) a server offers;
//! - [`chat`]: chat completions without HTTP (checking, admission, the
//!   choices loop, and the local engine over hone-model);
//! - [`worker`]: the job loop, the only code that changes a job's state;
//!   [`job_context`]: what a training run sees; [`training`]: the trainer;
//! - `routes`: the axum handlers; [`auth`]: keys and request ids;
//! - [`metrics`]: the Prometheus metrics of `GET /metrics`;
//! - [`sweep`]: at start, removes what a crash left that no record refers to.
//!
//! Start it with [`serve`]; tests use [`router`] with an [`AppState`].

pub mod api;
pub mod auth;
pub mod blobs;
pub mod catalog;
pub mod chat;
pub mod config;
pub mod embeddings;
pub mod engines;
pub mod error;
pub mod export;
mod extract;
pub mod ids;
pub mod job_context;
pub mod metrics;
pub mod openapi;
mod routes;
pub mod state;
pub mod store;
pub mod sweep;
pub mod training;
pub mod worker;

use std::future::{Future, IntoFuture};

pub use api::ErrorCode;
pub use catalog::{BaseModels, CatalogError};
pub use config::ServeConfig;
pub use engines::{
    Engines, FileCheck, FileProblem, FileValidator, HoneDataValidator, ModelCatalog, StaticCatalog,
    TrainingEngine, TrainingOutcome,
};
pub use error::ApiError;
pub use job_context::JobContext;
pub use routes::router;
pub use state::{AppState, ServeError};
pub use training::{HoneTrainer, TrainerOptions};

/// Opens the store under `config.home`, sweeps what a crash left
/// ([`sweep`]), binds `config.addr()`, and serves until Ctrl-C / SIGTERM,
/// then drains (see [`serve_on`]).
pub async fn serve(config: ServeConfig, engines: Engines) -> Result<(), ServeError> {
    let addr = config.addr();
    tracing::info!(?config, "starting hone-serve");
    let store = store::SqliteStore::open(&config.home.join("hone.db"))?;
    // Before the worker starts writing: see `sweep` for why only now.
    if let Err(e) = sweep::sweep_orphans(&config.home, &store) {
        tracing::warn!(error = %e, "could not sweep orphaned files; serving anyway");
    }
    config
        .check_exposure_with(store::Store::active_keys(&store)?.len())
        .map_err(ServeError::Exposure)?;
    let state = AppState::with_store(config, engines, std::sync::Arc::new(store))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Io {
            what: format!("binding {addr}"),
            source,
        })?;
    tracing::info!(addr = %addr, "listening");
    serve_on(listener, state, shutdown_signal()).await
}

/// Serves `state` on an already bound listener until `shutdown` resolves,
/// then drains: new connections are refused at once, requests in flight
/// finish, and running jobs save a checkpoint and go back to `queued`
/// (they resume at the next start). Jobs that take longer than
/// `shutdown_timeout_secs` stay `running` and are resumed from their last
/// checkpoint at the next start, as after a crash.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let worker = state.worker.clone();
    let deadline = std::time::Duration::from_secs(state.config.shutdown_timeout_secs);
    let (fired_tx, mut fired_rx) = tokio::sync::watch::channel(false);
    let signal = async move {
        shutdown.await;
        let _ = fired_tx.send(true);
    };
    let server = axum::serve(listener, router(state)).with_graceful_shutdown(signal);
    let mut server = tokio::spawn(server.into_future());
    tokio::select! {
        r = &mut server => return served(r),
        _ = fired_rx.wait_for(|fired| *fired) => {}
    }
    tracing::info!("shutting down: draining running jobs");
    if tokio::time::timeout(deadline, worker.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "a job did not checkpoint within {}s; it resumes from its last checkpoint at the next start",
            deadline.as_secs()
        );
    }
    match tokio::time::timeout(std::time::Duration::from_secs(5), &mut server).await {
        Ok(r) => served(r),
        Err(_) => {
            tracing::warn!("connections still open after the drain; closing them");
            server.abort();
            Ok(())
        }
    }
}

fn served(r: Result<std::io::Result<()>, tokio::task::JoinError>) -> Result<(), ServeError> {
    match r {
        Ok(Ok(())) => Ok(()),
        Ok(Err(source)) => Err(ServeError::Io {
            what: "serving".into(),
            source,
        }),
        Err(e) => Err(ServeError::Io {
            what: "serving".into(),
            source: std::io::Error::other(e.to_string()),
        }),
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}
