//! The `files` table: uploaded file records (the bytes are blobs on disk).

use rusqlite::types::Value as SqlValue;
use rusqlite::{params, Connection, OptionalExtension};

use super::rows::{from_json, not_found, read_page, scope_filter, to_json};
use crate::api::FileObject;
use crate::store::{FileRecord, Page, PageRequest, Scope, StoreError, StoreResult};

pub(super) fn insert(conn: &Connection, file: &FileRecord) -> StoreResult<()> {
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

pub(super) fn get(conn: &Connection, scope: &Scope, id: &str) -> StoreResult<FileRecord> {
    let row: Option<(String, String, Option<String>)> = conn
        .query_row(
            "SELECT body, sha256, project FROM files WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let Some((body, sha256, project)) = row else {
        return Err(not_found("file", id));
    };
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

pub(super) fn list(
    conn: &Connection,
    scope: &Scope,
    purpose: Option<&str>,
    page: &PageRequest,
) -> StoreResult<Page<FileObject>> {
    let (filter, mut args) = scope_filter(scope);
    match purpose {
        Some(p) => {
            args.push(SqlValue::Text(p.into()));
            let filter = format!("{filter} AND purpose = ?");
            read_page(conn, "files", &filter, args, page)
        }
        None => read_page(conn, "files", filter, args, page),
    }
}

pub(super) fn delete(conn: &Connection, scope: &Scope, id: &str) -> StoreResult<()> {
    let (filter, mut args) = scope_filter(scope);
    args.insert(0, SqlValue::Text(id.into()));
    let n = conn.execute(
        &format!("DELETE FROM files WHERE id = ? AND {filter}"),
        rusqlite::params_from_iter(args),
    )?;
    if n == 0 {
        return Err(not_found("file", id));
    }
    Ok(())
}
