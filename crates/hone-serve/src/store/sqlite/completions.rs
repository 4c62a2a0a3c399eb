//! [`CompletionStore`] on SQLite: one `chat_completions` row per stored
//! completion (migration 3 in `schema.rs`), the answer as JSON in `body`,
//! the request's messages in `messages`, and the columns lists filter on
//! (`project`, `model`, `metadata` as a JSON object read with `json_each`).

use rusqlite::types::Value as SqlValue;
use rusqlite::{params, Connection, OptionalExtension};

use super::rows::{from_json, read_page, scope_filter, to_json};
use super::SqliteStore;
use crate::api::{Metadata, StoredCompletion};
use crate::store::completions::{CompletionFilter, CompletionRecord, CompletionStore};
use crate::store::{Page, PageRequest, Scope, StoreError, StoreResult};

fn not_found(id: &str) -> StoreError {
    StoreError::NotFound {
        kind: "chat completion",
        id: id.into(),
    }
}

/// The row of completion `id`, if `scope` sees it.
fn get_tx(conn: &Connection, scope: &Scope, id: &str) -> StoreResult<CompletionRecord> {
    let row: Option<(String, String, String)> = conn
        .query_row(
            "SELECT body, messages, project FROM chat_completions WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    match row {
        Some((body, messages, project)) if scope.sees(&project) => Ok(CompletionRecord {
            completion: from_json(&body)?,
            messages: from_json(&messages)?,
            project,
        }),
        _ => Err(not_found(id)),
    }
}

/// The SQL condition (and its arguments) for `scope` and `filter`.
fn list_filter(scope: &Scope, filter: &CompletionFilter) -> (String, Vec<SqlValue>) {
    let (cond, mut args) = scope_filter(scope);
    let mut cond = cond.to_string();
    if let Some(model) = &filter.model {
        cond.push_str(" AND model = ?");
        args.push(SqlValue::Text(model.clone()));
    }
    for (k, v) in &filter.metadata {
        cond.push_str(
            " AND EXISTS (SELECT 1 FROM json_each(chat_completions.metadata) \
             WHERE json_each.key = ? AND json_each.value = ?)",
        );
        args.push(SqlValue::Text(k.clone()));
        args.push(SqlValue::Text(v.clone()));
    }
    (cond, args)
}

impl CompletionStore for SqliteStore {
    fn insert_completion(&self, rec: &CompletionRecord) -> StoreResult<()> {
        let c = &rec.completion;
        self.lock().execute(
            "INSERT INTO chat_completions (id, project, model, created, metadata, body, messages)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                c.completion.id,
                rec.project,
                c.completion.model,
                c.completion.created,
                to_json(&c.metadata)?,
                to_json(c)?,
                to_json(&rec.messages)?,
            ],
        )?;
        Ok(())
    }

    fn get_completion(&self, scope: &Scope, id: &str) -> StoreResult<CompletionRecord> {
        get_tx(&self.lock(), scope, id)
    }

    fn list_completions(
        &self,
        scope: &Scope,
        filter: &CompletionFilter,
        page: &PageRequest,
    ) -> StoreResult<Page<StoredCompletion>> {
        let (cond, args) = list_filter(scope, filter);
        read_page(&self.lock(), "chat_completions", &cond, args, page)
    }

    fn update_completion_metadata(
        &self,
        scope: &Scope,
        id: &str,
        metadata: &Metadata,
    ) -> StoreResult<StoredCompletion> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let mut rec = get_tx(&tx, scope, id)?;
        rec.completion.metadata = metadata.clone();
        tx.execute(
            "UPDATE chat_completions SET metadata = ?2, body = ?3 WHERE id = ?1",
            params![id, to_json(metadata)?, to_json(&rec.completion)?],
        )?;
        tx.commit()?;
        Ok(rec.completion)
    }

    fn delete_completion(&self, scope: &Scope, id: &str) -> StoreResult<()> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        get_tx(&tx, scope, id)?;
        tx.execute("DELETE FROM chat_completions WHERE id = ?1", [id])?;
        tx.commit()?;
        Ok(())
    }
}
