//! The embedded store: one SQLite database (`$HONE_HOME/hone.db`) in WAL
//! mode with `synchronous=FULL`, so that a committed transition survives a
//! power cut. Objects are stored as their API JSON in a `body` column, with
//! the columns we filter on beside it; `seq` (an autoincrement) gives the
//! list order, so ids stay opaque random strings.
//!
//! This file holds the connection and the [`Store`] impl, which only locks
//! the connection and hands it to the module owning the table:
//! `files`, `jobs` (jobs, transitions, events), `models` (fine-tuned models
//! and checkpoints), `keys` (API keys); `rows` has what they share (JSON
//! bodies, project scopes, paged reads). Schema changes are numbered
//! migrations in `schema` (recorded in `PRAGMA user_version`).

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::Connection;

use super::{
    CheckpointRecord, FileRecord, JobUpdate, KeyRecord, ModelRecord, NewEvent, Page, PageRequest,
    ReferencedIds, Scope, Store, StoreResult, Transition,
};
use crate::api::{FileObject, FineTuningJob, JobCheckpoint, JobEvent, JobStatus, Model};

mod completions;
mod files;
mod jobs;
mod keys;
mod models;
mod rows;
mod schema;

#[cfg(test)]
use super::StoreError;
use rows::backend;
use schema::migrate;
#[cfg(test)]
use schema::MIGRATIONS;

/// The SQLite [`Store`]. One connection behind a mutex: SQLite serialises
/// writers anyway, and our request rate is small.
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and migrates it.
    pub fn open(path: &Path) -> StoreResult<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(backend)?;
        }
        let conn = Connection::open(path)?;
        Self::setup(conn)
    }

    /// A private in-memory store, for tests.
    pub fn in_memory() -> StoreResult<Self> {
        Self::setup(Connection::open_in_memory()?)
    }

    fn setup(mut conn: Connection) -> StoreResult<Self> {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&mut conn)?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
        })
    }

    /// The schema version the database is at.
    pub fn schema_version(&self) -> StoreResult<u32> {
        Ok(self
            .lock()
            .pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a half transaction
        // (rusqlite rolls back on drop), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Store for SqliteStore {
    fn referenced_ids(&self) -> StoreResult<ReferencedIds> {
        rows::referenced_ids(&self.lock())
    }

    fn insert_file(&self, file: &FileRecord) -> StoreResult<()> {
        files::insert(&self.lock(), file)
    }

    fn get_file(&self, scope: &Scope, id: &str) -> StoreResult<FileRecord> {
        files::get(&self.lock(), scope, id)
    }

    fn list_files(
        &self,
        scope: &Scope,
        purpose: Option<&str>,
        page: &PageRequest,
    ) -> StoreResult<Page<FileObject>> {
        files::list(&self.lock(), scope, purpose, page)
    }

    fn delete_file(&self, scope: &Scope, id: &str) -> StoreResult<()> {
        files::delete(&self.lock(), scope, id)
    }

    fn insert_job(&self, job: &FineTuningJob) -> StoreResult<()> {
        jobs::insert(&mut self.lock(), job)
    }

    fn get_job(&self, scope: &Scope, id: &str) -> StoreResult<FineTuningJob> {
        jobs::get(&self.lock(), scope, id)
    }

    fn list_jobs(&self, scope: &Scope, page: &PageRequest) -> StoreResult<Page<FineTuningJob>> {
        jobs::list(&self.lock(), scope, page)
    }

    fn jobs_with_status(&self, status: JobStatus) -> StoreResult<Vec<FineTuningJob>> {
        jobs::with_status(&self.lock(), status)
    }

    fn transition_job(&self, id: &str, t: &Transition) -> StoreResult<FineTuningJob> {
        jobs::transition(&mut self.lock(), id, t)
    }

    fn update_job(&self, id: &str, u: &JobUpdate) -> StoreResult<FineTuningJob> {
        jobs::update(&mut self.lock(), id, u)
    }

    fn add_event(&self, job_id: &str, event: &NewEvent) -> StoreResult<JobEvent> {
        jobs::add_event(&self.lock(), job_id, event)
    }

    fn list_events(
        &self,
        scope: &Scope,
        job_id: &str,
        page: &PageRequest,
    ) -> StoreResult<Page<JobEvent>> {
        jobs::list_events(&self.lock(), scope, job_id, page)
    }

    fn add_checkpoint(&self, c: &CheckpointRecord) -> StoreResult<()> {
        models::add_checkpoint(&self.lock(), c)
    }

    fn list_checkpoints(
        &self,
        scope: &Scope,
        job_id: &str,
        page: &PageRequest,
    ) -> StoreResult<Page<JobCheckpoint>> {
        models::list_checkpoints(&self.lock(), scope, job_id, page)
    }

    fn list_models(&self, scope: &Scope) -> StoreResult<Vec<Model>> {
        models::list(&self.lock(), scope)
    }

    fn get_model(&self, scope: &Scope, id: &str) -> StoreResult<ModelRecord> {
        models::get(&self.lock(), scope, id)
    }

    fn delete_model(&self, scope: &Scope, id: &str) -> StoreResult<()> {
        models::delete(&self.lock(), scope, id)
    }

    fn adopt_unowned(&self, project: &str) -> StoreResult<()> {
        rows::adopt_unowned(&self.lock(), project)
    }

    fn insert_key(&self, k: &KeyRecord) -> StoreResult<()> {
        keys::insert(&self.lock(), k)
    }

    fn list_keys(&self, project: Option<&str>) -> StoreResult<Vec<KeyRecord>> {
        keys::list(&self.lock(), project)
    }

    fn active_keys(&self) -> StoreResult<Vec<KeyRecord>> {
        keys::active(&self.lock())
    }

    fn revoke_key(&self, id: &str) -> StoreResult<KeyRecord> {
        keys::revoke(&self.lock(), id)
    }
}

#[cfg(test)]
mod tests;
