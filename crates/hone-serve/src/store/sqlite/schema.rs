//! The SQLite schema as numbered migrations, and applying them.

use rusqlite::Connection;

use crate::store::{StoreError, StoreResult};

/// Migration `i` brings the schema from version `i` to `i + 1`.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "CREATE TABLE files (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        purpose TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        body TEXT NOT NULL
    );
    CREATE TABLE jobs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        status TEXT NOT NULL,
        body TEXT NOT NULL
    );
    CREATE INDEX jobs_status ON jobs(status, seq);
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        job_id TEXT NOT NULL REFERENCES jobs(id),
        body TEXT NOT NULL
    );
    CREATE INDEX events_job ON events(job_id, seq);
    CREATE TABLE checkpoints (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        job_id TEXT NOT NULL REFERENCES jobs(id),
        model_id TEXT NOT NULL UNIQUE,
        base TEXT NOT NULL,
        adapter_path TEXT NOT NULL,
        body TEXT NOT NULL
    );
    CREATE INDEX checkpoints_job ON checkpoints(job_id, seq);
    CREATE TABLE models (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        job_id TEXT NOT NULL REFERENCES jobs(id),
        base TEXT NOT NULL,
        adapter_path TEXT NOT NULL,
        body TEXT NOT NULL
    );",
    // 2: projects. Jobs (and their models) already name their project in
    // `organization_id`; files get the default project when the server
    // opens the store (`adopt_unowned`), as its name is not known here.
    // API keys are stored as digests only.
    "ALTER TABLE files ADD COLUMN project TEXT;
    ALTER TABLE jobs ADD COLUMN project TEXT;
    ALTER TABLE models ADD COLUMN project TEXT;
    UPDATE jobs SET project = json_extract(body, '$.organization_id');
    UPDATE models SET project = (SELECT project FROM jobs WHERE jobs.id = models.job_id);
    CREATE INDEX files_project ON files(project, seq);
    CREATE INDEX jobs_project ON jobs(project, seq);
    CREATE TABLE api_keys (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        project TEXT NOT NULL,
        admin INTEGER NOT NULL,
        digest BLOB NOT NULL UNIQUE,
        hint TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        revoked_at INTEGER
    );",
    // 3: stored chat completions (`store: true`), see `completions.rs`.
    "CREATE TABLE chat_completions (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        project TEXT NOT NULL,
        model TEXT NOT NULL,
        created INTEGER NOT NULL,
        metadata TEXT NOT NULL,
        body TEXT NOT NULL,
        messages TEXT NOT NULL
    );
    CREATE INDEX chat_completions_project ON chat_completions(project, seq);",
];

/// Brings the database to the newest schema, one migration per transaction;
/// refuses a database made by a newer hone.
pub(super) fn migrate(conn: &mut Connection) -> StoreResult<()> {
    let version: u32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version as usize > MIGRATIONS.len() {
        return Err(StoreError::Backend(format!(
            "database schema version {version} is newer than this hone ({})",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as u32)?;
        tx.commit()?;
    }
    Ok(())
}
