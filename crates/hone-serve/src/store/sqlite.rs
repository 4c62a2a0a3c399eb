//! The embedded store: one SQLite database (`$HONE_HOME/hone.db`) in WAL
//! mode with `synchronous=FULL`, so that a committed transition survives a
//! power cut. Objects are stored as their API JSON in a `body` column, with
//! the columns we filter on beside it; `seq` (an autoincrement) gives the
//! list order, so ids stay opaque random strings.
//!
//! Schema changes are numbered migrations applied in one transaction each
//! and recorded in `PRAGMA user_version` (`sqlite/schema.rs`); the tests are
//! in `sqlite/tests.rs`. This file is over 600 lines because it holds the one
//! `impl Store` block, a method per store operation, which Rust cannot split
//! across files without an extra layer of indirection.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::types::Value as SqlValue;
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{
    unix_now, CheckpointRecord, FileRecord, JobUpdate, KeyRecord, ModelRecord, NewEvent, Order,
    Page, PageRequest, ReferencedIds, Scope, Store, StoreError, StoreResult, Transition,
};
use crate::api::{
    EventType, FileObject, FineTuningJob, JobCheckpoint, JobEvent, JobEventTag, JobStatus, Model,
    ModelTag,
};
use crate::ids;

mod completions;
mod schema;
use schema::migrate;
#[cfg(test)]
use schema::MIGRATIONS;

/// The SQLite [`Store`]. One connection behind a mutex: SQLite serialises
/// writers anyway, and our request rate is small.
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        backend(e)
    }
}

fn to_json<T: Serialize>(v: &T) -> StoreResult<String> {
    serde_json::to_string(v).map_err(backend)
}

fn from_json<T: DeserializeOwned>(s: &str) -> StoreResult<T> {
    serde_json::from_str(s).map_err(|e| backend(format!("corrupt row: {e}")))
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

/// Reads one page of `table` rows matching `filter` (an SQL condition with
/// `?` placeholders bound to `args`), in `page.order`, after `page.after`.
fn read_page<T: DeserializeOwned>(
    conn: &Connection,
    table: &str,
    filter: &str,
    args: Vec<SqlValue>,
    page: &PageRequest,
) -> StoreResult<Page<T>> {
    let mut args = args;
    let mut cond = filter.to_string();
    let (cmp, dir) = match page.order {
        Order::Desc => ("<", "DESC"),
        Order::Asc => (">", "ASC"),
    };
    if let Some(after) = &page.after {
        // The cursor must name a row of this very list: an id of another
        // project (or job) is a bad cursor, like an id that does not exist.
        let sql = format!("SELECT seq FROM {table} WHERE id = ? AND {filter}");
        let mut cursor_args = vec![SqlValue::Text(after.clone())];
        cursor_args.extend(args.iter().cloned());
        let seq: Option<i64> = conn
            .query_row(&sql, rusqlite::params_from_iter(cursor_args), |r| r.get(0))
            .optional()?;
        let seq = seq.ok_or_else(|| StoreError::BadCursor(after.clone()))?;
        cond = format!("{cond} AND seq {cmp} ?");
        args.push(SqlValue::Integer(seq));
    }
    let limit = page.limit.max(1) as i64;
    args.push(SqlValue::Integer(limit + 1));
    let sql = format!("SELECT body FROM {table} WHERE {cond} ORDER BY seq {dir} LIMIT ?");
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(0))?;
    let mut data = Vec::new();
    for row in rows {
        data.push(from_json(&row?)?);
    }
    let has_more = data.len() as i64 > limit;
    data.truncate(limit as usize);
    Ok(Page { data, has_more })
}

/// `project = ?` for one project (with its argument), `1` for all.
fn scope_filter(scope: &Scope) -> (&'static str, Vec<SqlValue>) {
    match scope {
        Scope::All => ("1", vec![]),
        Scope::Project(p) => ("project = ?", vec![SqlValue::Text(p.clone())]),
    }
}

fn get_job_tx(conn: &Connection, scope: &Scope, id: &str) -> StoreResult<FineTuningJob> {
    let row: Option<(String, Option<String>)> = conn
        .query_row("SELECT body, project FROM jobs WHERE id = ?1", [id], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    match row {
        Some((b, project)) if scope.sees(project.as_deref().unwrap_or_default()) => from_json(&b),
        _ => Err(StoreError::NotFound {
            kind: "fine-tuning job",
            id: id.into(),
        }),
    }
}

fn put_job_tx(conn: &Connection, job: &FineTuningJob) -> StoreResult<()> {
    conn.execute(
        "UPDATE jobs SET status = ?2, body = ?3 WHERE id = ?1",
        params![job.id, job.status.as_str(), to_json(job)?],
    )?;
    Ok(())
}

fn insert_event_tx(conn: &Connection, job_id: &str, e: &NewEvent) -> StoreResult<JobEvent> {
    let event = JobEvent {
        id: ids::event_id(),
        object: JobEventTag,
        created_at: unix_now(),
        level: e.level,
        message: e.message.clone(),
        kind: e.kind,
        data: e.data.clone(),
    };
    conn.execute(
        "INSERT INTO events (id, job_id, body) VALUES (?1, ?2, ?3)",
        params![event.id, job_id, to_json(&event)?],
    )?;
    Ok(event)
}

fn job_exists(conn: &Connection, scope: &Scope, id: &str) -> StoreResult<()> {
    get_job_tx(conn, scope, id).map(|_| ())
}

/// Applies `t` to `job` in memory, after checking it is allowed.
fn apply_transition(job: &mut FineTuningJob, t: &Transition) -> StoreResult<()> {
    if !t.allowed_from().contains(&job.status) {
        return Err(StoreError::InvalidTransition {
            job: job.id.clone(),
            from: job.status.as_str(),
            verb: t.verb(),
        });
    }
    job.status = t.target();
    match t {
        Transition::Succeed {
            fine_tuned_model,
            trained_tokens,
            result_files,
            ..
        } => {
            job.fine_tuned_model = Some(fine_tuned_model.clone());
            job.trained_tokens = Some(*trained_tokens);
            job.result_files = result_files.clone();
        }
        Transition::Fail(e) => job.error = Some(e.clone()),
        _ => {}
    }
    if job.status.is_terminal() {
        job.finished_at = Some(unix_now());
        job.estimated_finish = None;
    }
    Ok(())
}

fn register_model_tx(tx: &Transaction<'_>, job: &FineTuningJob, t: &Transition) -> StoreResult<()> {
    if let Transition::Succeed {
        fine_tuned_model,
        base,
        adapter_path,
        ..
    } = t
    {
        let model = Model {
            id: fine_tuned_model.clone(),
            object: ModelTag,
            created: unix_now(),
            owned_by: job.organization_id.clone(),
        };
        tx.execute(
            "INSERT INTO models (id, job_id, base, adapter_path, body, project)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                model.id,
                job.id,
                base,
                adapter_path.to_string_lossy(),
                to_json(&model)?,
                job.organization_id
            ],
        )?;
    }
    Ok(())
}

impl Store for SqliteStore {
    fn referenced_ids(&self) -> StoreResult<ReferencedIds> {
        let conn = self.lock();
        let ids = |table: &str| -> StoreResult<std::collections::HashSet<String>> {
            let mut stmt = conn.prepare(&format!("SELECT id FROM {table}"))?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            Ok(rows.collect::<Result<_, _>>()?)
        };
        Ok(ReferencedIds {
            files: ids("files")?,
            jobs: ids("jobs")?,
        })
    }

    fn insert_file(&self, file: &FileRecord) -> StoreResult<()> {
        let conn = self.lock();
        let n = conn.execute(
            "INSERT OR IGNORE INTO files (id, purpose, sha256, body, project)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                file.object.id,
                file.object.purpose,
                file.sha256,
                to_json(&file.object)?,
                file.project
            ],
        )?;
        if n == 0 {
            return Err(StoreError::Duplicate(format!("file {}", file.object.id)));
        }
        Ok(())
    }

    fn get_file(&self, scope: &Scope, id: &str) -> StoreResult<FileRecord> {
        let conn = self.lock();
        let row: Option<(String, String, Option<String>)> = conn
            .query_row(
                "SELECT body, sha256, project FROM files WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        match row {
            Some((body, sha256, project)) => {
                let project = project.unwrap_or_default();
                if !scope.sees(&project) {
                    return Err(not_found("file", id));
                }
                Ok(FileRecord {
                    object: from_json(&body)?,
                    project,
                    sha256,
                })
            }
            None => Err(not_found("file", id)),
        }
    }

    fn list_files(
        &self,
        scope: &Scope,
        purpose: Option<&str>,
        page: &PageRequest,
    ) -> StoreResult<Page<FileObject>> {
        let conn = self.lock();
        let (filter, mut args) = scope_filter(scope);
        match purpose {
            Some(p) => {
                args.push(SqlValue::Text(p.into()));
                let filter = format!("{filter} AND purpose = ?");
                read_page(&conn, "files", &filter, args, page)
            }
            None => read_page(&conn, "files", filter, args, page),
        }
    }

    fn delete_file(&self, scope: &Scope, id: &str) -> StoreResult<()> {
        let (filter, mut args) = scope_filter(scope);
        args.insert(0, SqlValue::Text(id.into()));
        let n = self.lock().execute(
            &format!("DELETE FROM files WHERE id = ? AND {filter}"),
            rusqlite::params_from_iter(args),
        )?;
        if n == 0 {
            return Err(StoreError::NotFound {
                kind: "file",
                id: id.into(),
            });
        }
        Ok(())
    }

    fn insert_job(&self, job: &FineTuningJob) -> StoreResult<()> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let n = tx.execute(
            "INSERT OR IGNORE INTO jobs (id, status, body, project) VALUES (?1, ?2, ?3, ?4)",
            params![
                job.id,
                job.status.as_str(),
                to_json(job)?,
                job.organization_id
            ],
        )?;
        if n == 0 {
            return Err(StoreError::Duplicate(format!("job {}", job.id)));
        }
        insert_event_tx(
            &tx,
            &job.id,
            &NewEvent::info(format!("Created fine-tuning job: {}", job.id)),
        )?;
        tx.commit()?;
        Ok(())
    }

    fn get_job(&self, scope: &Scope, id: &str) -> StoreResult<FineTuningJob> {
        get_job_tx(&self.lock(), scope, id)
    }

    fn list_jobs(&self, scope: &Scope, page: &PageRequest) -> StoreResult<Page<FineTuningJob>> {
        let (filter, args) = scope_filter(scope);
        read_page(&self.lock(), "jobs", filter, args, page)
    }

    fn jobs_with_status(&self, status: JobStatus) -> StoreResult<Vec<FineTuningJob>> {
        let conn = self.lock();
        let mut stmt = conn.prepare("SELECT body FROM jobs WHERE status = ?1 ORDER BY seq ASC")?;
        let rows = stmt.query_map([status.as_str()], |r| r.get::<_, String>(0))?;
        rows.map(|r| from_json(&r?)).collect()
    }

    fn transition_job(&self, id: &str, t: &Transition) -> StoreResult<FineTuningJob> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let mut job = get_job_tx(&tx, &Scope::All, id)?;
        apply_transition(&mut job, t)?;
        put_job_tx(&tx, &job)?;
        register_model_tx(&tx, &job, t)?;
        for (level, message) in t.events() {
            let e = NewEvent {
                level,
                kind: EventType::Message,
                message,
                data: None,
            };
            insert_event_tx(&tx, id, &e)?;
        }
        tx.commit()?;
        Ok(job)
    }

    fn update_job(&self, id: &str, u: &JobUpdate) -> StoreResult<FineTuningJob> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let mut job = get_job_tx(&tx, &Scope::All, id)?;
        if let Some(h) = u.hyperparameters {
            job.hyperparameters = h;
            job.method.set_hyperparameters(h);
        }
        if let Some(t) = u.trained_tokens {
            job.trained_tokens = Some(t);
        }
        if let Some(e) = u.estimated_finish {
            job.estimated_finish = Some(e);
        }
        if let Some(s) = u.seed {
            job.seed = s;
        }
        put_job_tx(&tx, &job)?;
        tx.commit()?;
        Ok(job)
    }

    fn add_event(&self, job_id: &str, event: &NewEvent) -> StoreResult<JobEvent> {
        let conn = self.lock();
        job_exists(&conn, &Scope::All, job_id)?;
        insert_event_tx(&conn, job_id, event)
    }

    fn list_events(
        &self,
        scope: &Scope,
        job_id: &str,
        page: &PageRequest,
    ) -> StoreResult<Page<JobEvent>> {
        let conn = self.lock();
        job_exists(&conn, scope, job_id)?;
        read_page(
            &conn,
            "events",
            "job_id = ?",
            vec![SqlValue::Text(job_id.into())],
            page,
        )
    }

    fn add_checkpoint(&self, c: &CheckpointRecord) -> StoreResult<()> {
        let conn = self.lock();
        let job = get_job_tx(&conn, &Scope::All, &c.checkpoint.fine_tuning_job_id)?;
        conn.execute(
            "INSERT INTO checkpoints (id, job_id, model_id, base, adapter_path, body)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(model_id) DO UPDATE SET
                id = excluded.id, adapter_path = excluded.adapter_path, body = excluded.body",
            params![
                c.checkpoint.id,
                job.id,
                c.checkpoint.fine_tuned_model_checkpoint,
                job.model,
                c.adapter_path.to_string_lossy(),
                to_json(&c.checkpoint)?
            ],
        )?;
        Ok(())
    }

    fn list_checkpoints(
        &self,
        scope: &Scope,
        job_id: &str,
        page: &PageRequest,
    ) -> StoreResult<Page<JobCheckpoint>> {
        let conn = self.lock();
        job_exists(&conn, scope, job_id)?;
        read_page(
            &conn,
            "checkpoints",
            "job_id = ?",
            vec![SqlValue::Text(job_id.into())],
            page,
        )
    }

    fn list_models(&self, scope: &Scope) -> StoreResult<Vec<Model>> {
        let conn = self.lock();
        let (filter, args) = scope_filter(scope);
        let mut out: Vec<Model> = Vec::new();
        let sql = format!("SELECT body FROM models WHERE {filter} ORDER BY seq DESC");
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args.clone()), |r| {
            r.get::<_, String>(0)
        })?;
        for b in rows {
            out.push(from_json(&b?)?);
        }
        // Checkpoints belong to their job's project.
        let job_filter = if filter == "1" { "1" } else { "j.project = ?" };
        let sql = format!(
            "SELECT c.body, j.body FROM checkpoints c JOIN jobs j ON j.id = c.job_id
             WHERE {job_filter} ORDER BY c.seq DESC"
        );
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?;
        for row in rows {
            let (c, j) = row?;
            let c: JobCheckpoint = from_json(&c)?;
            let j: FineTuningJob = from_json(&j)?;
            out.push(checkpoint_model(&c, &j));
        }
        Ok(out)
    }

    fn get_model(&self, scope: &Scope, id: &str) -> StoreResult<ModelRecord> {
        let conn = self.lock();
        let row: Option<(String, String, String, String, Option<String>)> = conn
            .query_row(
                "SELECT body, job_id, base, adapter_path, project FROM models WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()?;
        if let Some((body, job_id, base, path, project)) = row {
            if !scope.sees(project.as_deref().unwrap_or_default()) {
                return Err(not_found("model", id));
            }
            return Ok(ModelRecord {
                model: from_json(&body)?,
                base,
                job_id,
                adapter_path: PathBuf::from(path),
                checkpoint_step: None,
            });
        }
        let row: Option<(String, String, String)> = conn
            .query_row(
                "SELECT body, base, adapter_path FROM checkpoints WHERE model_id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let (body, base, path) = row.ok_or_else(|| StoreError::NotFound {
            kind: "model",
            id: id.into(),
        })?;
        let c: JobCheckpoint = from_json(&body)?;
        // A checkpoint belongs to its job's project.
        let job =
            get_job_tx(&conn, scope, &c.fine_tuning_job_id).map_err(|_| not_found("model", id))?;
        Ok(ModelRecord {
            model: checkpoint_model(&c, &job),
            base,
            job_id: job.id,
            adapter_path: PathBuf::from(path),
            checkpoint_step: Some(c.step_number),
        })
    }

    fn delete_model(&self, scope: &Scope, id: &str) -> StoreResult<()> {
        let (filter, mut args) = scope_filter(scope);
        args.insert(0, SqlValue::Text(id.into()));
        let n = self.lock().execute(
            &format!("DELETE FROM models WHERE id = ? AND {filter}"),
            rusqlite::params_from_iter(args),
        )?;
        if n == 0 {
            return Err(not_found("model", id));
        }
        Ok(())
    }

    fn adopt_unowned(&self, project: &str) -> StoreResult<()> {
        let conn = self.lock();
        for table in ["files", "jobs", "models"] {
            conn.execute(
                &format!("UPDATE {table} SET project = ?1 WHERE project IS NULL"),
                [project],
            )?;
        }
        Ok(())
    }

    fn insert_key(&self, k: &KeyRecord) -> StoreResult<()> {
        self.lock().execute(
            "INSERT INTO api_keys (id, project, admin, digest, hint, created_at, revoked_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                k.id,
                k.project,
                k.admin,
                &k.digest[..],
                k.hint,
                k.created_at,
                k.revoked_at
            ],
        )?;
        Ok(())
    }

    fn list_keys(&self, project: Option<&str>) -> StoreResult<Vec<KeyRecord>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE ?1 IS NULL OR project = ?1 ORDER BY seq"
        ))?;
        let rows = stmt.query_map([project], key_row)?;
        rows.map(|r| r?).collect()
    }

    fn active_keys(&self) -> StoreResult<Vec<KeyRecord>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE revoked_at IS NULL ORDER BY seq"
        ))?;
        let rows = stmt.query_map([], key_row)?;
        rows.map(|r| r?).collect()
    }

    fn revoke_key(&self, id: &str) -> StoreResult<KeyRecord> {
        let conn = self.lock();
        conn.execute(
            "UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
            params![id, unix_now()],
        )?;
        conn.query_row(
            &format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?1"),
            [id],
            key_row,
        )
        .optional()?
        .unwrap_or_else(|| Err(not_found("API key", id)))
    }
}

const KEY_COLUMNS: &str = "id, project, admin, digest, hint, created_at, revoked_at";

/// One `api_keys` row; a digest of the wrong length is a corrupt row.
fn key_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoreResult<KeyRecord>> {
    let digest: Vec<u8> = r.get(3)?;
    let Ok(digest) = <[u8; 32]>::try_from(digest.as_slice()) else {
        return Ok(Err(backend(
            "corrupt row: an API key digest is not 32 bytes",
        )));
    };
    Ok(Ok(KeyRecord {
        id: r.get(0)?,
        project: r.get(1)?,
        admin: r.get(2)?,
        digest,
        hint: r.get(4)?,
        created_at: r.get(5)?,
        revoked_at: r.get(6)?,
    }))
}

fn not_found(kind: &'static str, id: &str) -> StoreError {
    StoreError::NotFound {
        kind,
        id: id.into(),
    }
}

/// The model object a checkpoint is served as.
fn checkpoint_model(c: &JobCheckpoint, job: &FineTuningJob) -> Model {
    Model {
        id: c.fine_tuned_model_checkpoint.clone(),
        object: ModelTag,
        created: c.created_at,
        owned_by: job.organization_id.clone(),
    }
}

#[cfg(test)]
mod tests;
