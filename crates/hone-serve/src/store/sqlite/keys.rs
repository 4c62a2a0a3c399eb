//! The `api_keys` table: keys stored as SHA-256 digests, never in plain
//! text (see `crate::auth`), revoked by stamping `revoked_at`.

use rusqlite::{params, Connection, OptionalExtension};

use super::rows::{backend, not_found};
use crate::store::{unix_now, KeyRecord, StoreResult};

const KEY_COLUMNS: &str = "id, project, admin, digest, hint, created_at, revoked_at";

pub(super) fn insert(conn: &Connection, k: &KeyRecord) -> StoreResult<()> {
    conn.execute(
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

/// Every key (revoked ones too) of `project`, or of all projects.
pub(super) fn list(conn: &Connection, project: Option<&str>) -> StoreResult<Vec<KeyRecord>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {KEY_COLUMNS} FROM api_keys WHERE ?1 IS NULL OR project = ?1 ORDER BY seq"
    ))?;
    let rows = stmt.query_map([project], key_row)?;
    rows.map(|r| r?).collect()
}

pub(super) fn active(conn: &Connection) -> StoreResult<Vec<KeyRecord>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {KEY_COLUMNS} FROM api_keys WHERE revoked_at IS NULL ORDER BY seq"
    ))?;
    let rows = stmt.query_map([], key_row)?;
    rows.map(|r| r?).collect()
}

/// Revokes the key (once: a second revoke keeps the first time).
pub(super) fn revoke(conn: &Connection, id: &str) -> StoreResult<KeyRecord> {
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
