//! The `models` and `checkpoints` tables: fine-tuned models and the
//! intermediate checkpoints, each served as a model of its job's project.

use std::path::PathBuf;

use rusqlite::types::Value as SqlValue;
use rusqlite::{params, Connection, OptionalExtension};

use super::jobs;
use super::rows::{from_json, not_found, read_page, scope_filter, to_json};
use crate::api::{FineTuningJob, JobCheckpoint, Model, ModelTag};
use crate::store::{CheckpointRecord, ModelRecord, Page, PageRequest, Scope, StoreResult};

/// Records a checkpoint; a second one with the same model id replaces it.
pub(super) fn add_checkpoint(conn: &Connection, c: &CheckpointRecord) -> StoreResult<()> {
    let job = jobs::get(conn, &Scope::All, &c.checkpoint.fine_tuning_job_id)?;
    conn.execute(
        "INSERT INTO checkpoints (id, job_id, model_id, base, adapter_path, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT(model_id) DO UPDATE SET
            id = excluded.id, adapter_path = excluded.adapter_path, body = excluded.body",
        params![
            c.checkpoint.id,
            job.id,
            c.checkpoint.fine_tuned_model_checkpoint,
            crate::ids::base_model_id(&job.model),
            c.adapter_path.to_string_lossy(),
            to_json(&c.checkpoint)?
        ],
    )?;
    Ok(())
}

pub(super) fn list_checkpoints(
    conn: &Connection,
    scope: &Scope,
    job_id: &str,
    page: &PageRequest,
) -> StoreResult<Page<JobCheckpoint>> {
    jobs::get(conn, scope, job_id)?;
    read_page(
        conn,
        "checkpoints",
        "job_id = ?",
        vec![SqlValue::Text(job_id.into())],
        page,
    )
}

/// Fine-tuned models, then checkpoints, newest first.
pub(super) fn list(conn: &Connection, scope: &Scope) -> StoreResult<Vec<Model>> {
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

/// A fine-tuned model by id, else a checkpoint by its model id.
pub(super) fn get(conn: &Connection, scope: &Scope, id: &str) -> StoreResult<ModelRecord> {
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
    get_checkpoint(conn, scope, id)
}

fn get_checkpoint(conn: &Connection, scope: &Scope, id: &str) -> StoreResult<ModelRecord> {
    let row: Option<(String, String, String)> = conn
        .query_row(
            "SELECT body, base, adapter_path FROM checkpoints WHERE model_id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let (body, base, path) = row.ok_or_else(|| not_found("model", id))?;
    let c: JobCheckpoint = from_json(&body)?;
    // A checkpoint belongs to its job's project.
    let job = jobs::get(conn, scope, &c.fine_tuning_job_id).map_err(|_| not_found("model", id))?;
    Ok(ModelRecord {
        model: checkpoint_model(&c, &job),
        base,
        job_id: job.id,
        adapter_path: PathBuf::from(path),
        checkpoint_step: Some(c.step_number),
    })
}

pub(super) fn delete(conn: &Connection, scope: &Scope, id: &str) -> StoreResult<()> {
    let (filter, mut args) = scope_filter(scope);
    args.insert(0, SqlValue::Text(id.into()));
    let n = conn.execute(
        &format!("DELETE FROM models WHERE id = ? AND {filter}"),
        rusqlite::params_from_iter(args),
    )?;
    if n == 0 {
        return Err(not_found("model", id));
    }
    Ok(())
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
