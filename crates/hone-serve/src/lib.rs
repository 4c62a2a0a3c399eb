//! hone-serve: the OpenAI-compatible HTTP server.
//!
//! - [`api`]: every wire type (the only place JSON shapes are defined);
//! - [`error`]: typed errors and the one status/type/code table;
//! - [`ids`]: object ids and fine-tuned model names;
//! - [`store`]: the durable job/file/model store (SQLite by default);
//! - [`blobs`]: file contents on disk, written atomically;
//! - [`engines`]: traits for what the server calls but does not own;
//! - [`routes`]: the axum handlers; [`auth`]: keys and request ids.
//!
//! Start it with [`serve`]; tests use [`router`] with an [`AppState`].

pub mod api;
pub mod auth;
pub mod blobs;
pub mod chat;
pub mod config;
pub mod engines;
pub mod error;
mod extract;
pub mod ids;
mod routes;
pub mod state;
pub mod store;
pub mod training;
pub mod worker;

use std::future::Future;

pub use config::ServeConfig;
pub use engines::{
    Engines, FileCheck, FileProblem, FileValidator, HoneDataValidator, ModelCatalog, StaticCatalog,
};
pub use error::ApiError;
pub use routes::router;
pub use state::{AppState, ServeError};
pub use worker::{JobContext, TrainingEngine, TrainingOutcome};

/// Opens the store under `config.home`, binds `config.addr()`, and serves
/// until Ctrl-C / SIGTERM, letting requests in flight finish.
pub async fn serve(config: ServeConfig, engines: Engines) -> Result<(), ServeError> {
    config.check_exposure().map_err(ServeError::Exposure)?;
    let addr = config.addr();
    tracing::info!(?config, "starting hone-serve");
    let state = AppState::open(config, engines)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Io {
            what: format!("binding {addr}"),
            source,
        })?;
    tracing::info!(addr = %addr, "listening");
    serve_on(listener, state, shutdown_signal()).await
}

/// Serves `state` on an already bound listener until `shutdown` resolves.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|source| ServeError::Io {
            what: "serving".into(),
            source,
        })
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
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
