//! What every handler shares.

use std::path::PathBuf;
use std::sync::Arc;

use crate::blobs::FsBlobStore;
use crate::config::ServeConfig;
use crate::engines::Engines;
use crate::store::{SqliteStore, Store, StoreError, StoreHandle};
use crate::worker::{self, WorkerConfig, WorkerHandle};

/// Shared state of the server. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: StoreHandle,
    pub blobs: FsBlobStore,
    pub engines: Engines,
    pub config: Arc<ServeConfig>,
    /// The job worker: the only changer of job state.
    pub worker: WorkerHandle,
    /// What `GET /metrics` reports.
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Exposure(String),
    #[error("opening the store: {0}")]
    Store(#[from] StoreError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl AppState {
    /// Opens `$HONE_HOME/hone.db` and `$HONE_HOME/files/`.
    pub fn open(config: ServeConfig, engines: Engines) -> Result<Self, ServeError> {
        let store = SqliteStore::open(&config.home.join("hone.db"))?;
        Self::with_store(config, engines, Arc::new(store))
    }

    /// Uses a given store (another backend, or an in-memory one in tests).
    pub fn with_store(
        config: ServeConfig,
        engines: Engines,
        store: Arc<dyn Store>,
    ) -> Result<Self, ServeError> {
        let files_dir = config.home.join("files");
        let blobs = FsBlobStore::open(&files_dir).map_err(|source| ServeError::Io {
            what: format!("opening {}", files_dir.display()),
            source,
        })?;
        store.adopt_unowned(&config.org)?;
        let worker = worker::start(WorkerConfig {
            store: store.clone(),
            blobs: blobs.clone(),
            home: config.home.clone(),
            engine: engines.training.clone(),
            catalog: engines.catalog.clone(),
            max_concurrent_jobs: config.max_concurrent_jobs,
        })
        .map_err(|source| ServeError::Io {
            what: "starting the job worker".into(),
            source,
        })?;
        Ok(AppState {
            store: StoreHandle::new(store),
            blobs,
            engines,
            config: Arc::new(config),
            worker,
            metrics: Arc::default(),
        })
    }

    /// `$HONE_HOME`.
    pub fn home(&self) -> PathBuf {
        self.config.home.clone()
    }
}
