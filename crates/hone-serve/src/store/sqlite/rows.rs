//! What every table module shares: JSON bodies in and out, error mapping,
//! project scoping and paged reads ordered by `seq`.

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::store::{Order, Page, PageRequest, Scope, StoreError, StoreResult};

pub(super) fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        backend(e)
    }
}

pub(super) fn to_json<T: Serialize>(v: &T) -> StoreResult<String> {
    serde_json::to_string(v).map_err(backend)
}

pub(super) fn from_json<T: DeserializeOwned>(s: &str) -> StoreResult<T> {
    serde_json::from_str(s).map_err(|e| backend(format!("corrupt row: {e}")))
}

pub(super) fn not_found(kind: &'static str, id: &str) -> StoreError {
    StoreError::NotFound {
        kind,
        id: id.into(),
    }
}

/// `project = ?` for one project (with its argument), `1` for all.
pub(super) fn scope_filter(scope: &Scope) -> (&'static str, Vec<SqlValue>) {
    match scope {
        Scope::All => ("1", vec![]),
        Scope::Project(p) => ("project = ?", vec![SqlValue::Text(p.clone())]),
    }
}

/// Reads one page of `table` rows matching `filter` (an SQL condition with
/// `?` placeholders bound to `args`), in `page.order`, after `page.after`.
pub(super) fn read_page<T: DeserializeOwned>(
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

/// Gives every row without a project (from before projects existed) to
/// `project`.
pub(super) fn adopt_unowned(conn: &Connection, project: &str) -> StoreResult<()> {
    for table in ["files", "jobs", "models"] {
        conn.execute(
            &format!("UPDATE {table} SET project = ?1 WHERE project IS NULL"),
            [project],
        )?;
    }
    Ok(())
}

/// The ids of every file and job row, for the orphan sweep.
pub(super) fn referenced_ids(conn: &Connection) -> StoreResult<crate::store::ReferencedIds> {
    let ids = |table: &str| -> StoreResult<std::collections::HashSet<String>> {
        let mut stmt = conn.prepare(&format!("SELECT id FROM {table}"))?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    };
    Ok(crate::store::ReferencedIds {
        files: ids("files")?,
        jobs: ids("jobs")?,
    })
}
