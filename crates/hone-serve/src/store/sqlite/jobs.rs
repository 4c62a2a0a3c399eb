//! The `jobs` and `events` tables: job rows, their state transitions (which
//! commit the new state, its events and any fine-tuned model together) and
//! the job's event log.

use rusqlite::types::Value as SqlValue;
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::rows::{from_json, not_found, read_page, scope_filter, to_json};
use crate::api::{EventType, FineTuningJob, JobEvent, JobEventTag, JobStatus, Model, ModelTag};
use crate::ids;
use crate::store::{
    unix_now, JobUpdate, NewEvent, Page, PageRequest, Scope, StoreError, StoreResult, Transition,
};

/// The job `id` if `scope` sees it; NotFound otherwise (also used by the
/// event and checkpoint lists, which belong to their job).
pub(super) fn get(conn: &Connection, scope: &Scope, id: &str) -> StoreResult<FineTuningJob> {
    let row: Option<(String, Option<String>)> = conn
        .query_row("SELECT body, project FROM jobs WHERE id = ?1", [id], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    match row {
        Some((b, project)) if scope.sees(project.as_deref().unwrap_or_default()) => from_json(&b),
        _ => Err(not_found("fine-tuning job", id)),
    }
}

fn put(conn: &Connection, job: &FineTuningJob) -> StoreResult<()> {
    conn.execute(
        "UPDATE jobs SET status = ?2, body = ?3 WHERE id = ?1",
        params![job.id, job.status.as_str(), to_json(job)?],
    )?;
    Ok(())
}

/// Inserts the job with its "Created" event, in one transaction.
pub(super) fn insert(conn: &mut Connection, job: &FineTuningJob) -> StoreResult<()> {
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
    insert_event(
        &tx,
        &job.id,
        &NewEvent::info(format!("Created fine-tuning job: {}", job.id)),
    )?;
    tx.commit()?;
    Ok(())
}

pub(super) fn list(
    conn: &Connection,
    scope: &Scope,
    page: &PageRequest,
) -> StoreResult<Page<FineTuningJob>> {
    let (filter, args) = scope_filter(scope);
    read_page(conn, "jobs", filter, args, page)
}

pub(super) fn with_status(conn: &Connection, status: JobStatus) -> StoreResult<Vec<FineTuningJob>> {
    let mut stmt = conn.prepare("SELECT body FROM jobs WHERE status = ?1 ORDER BY seq ASC")?;
    let rows = stmt.query_map([status.as_str()], |r| r.get::<_, String>(0))?;
    rows.map(|r| from_json(&r?)).collect()
}

/// Checks and applies `t`, with its events and (on success) the model row,
/// in one transaction.
pub(super) fn transition(
    conn: &mut Connection,
    id: &str,
    t: &Transition,
) -> StoreResult<FineTuningJob> {
    let tx = conn.transaction()?;
    let mut job = get(&tx, &Scope::All, id)?;
    apply_transition(&mut job, t)?;
    put(&tx, &job)?;
    register_model(&tx, &job, t)?;
    for (level, message) in t.events() {
        let e = NewEvent {
            level,
            kind: EventType::Message,
            message,
            data: None,
        };
        insert_event(&tx, id, &e)?;
    }
    tx.commit()?;
    Ok(job)
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

/// On `Succeed`, the fine-tuned model's row, owned by the job's project.
fn register_model(tx: &Transaction<'_>, job: &FineTuningJob, t: &Transition) -> StoreResult<()> {
    let Transition::Succeed {
        fine_tuned_model,
        base,
        adapter_path,
        ..
    } = t
    else {
        return Ok(());
    };
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
    Ok(())
}

pub(super) fn update(conn: &mut Connection, id: &str, u: &JobUpdate) -> StoreResult<FineTuningJob> {
    let tx = conn.transaction()?;
    let mut job = get(&tx, &Scope::All, id)?;
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
    put(&tx, &job)?;
    tx.commit()?;
    Ok(job)
}

fn insert_event(conn: &Connection, job_id: &str, e: &NewEvent) -> StoreResult<JobEvent> {
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

pub(super) fn add_event(
    conn: &Connection,
    job_id: &str,
    event: &NewEvent,
) -> StoreResult<JobEvent> {
    get(conn, &Scope::All, job_id)?;
    insert_event(conn, job_id, event)
}

pub(super) fn list_events(
    conn: &Connection,
    scope: &Scope,
    job_id: &str,
    page: &PageRequest,
) -> StoreResult<Page<JobEvent>> {
    get(conn, scope, job_id)?;
    read_page(
        conn,
        "events",
        "job_id = ?",
        vec![SqlValue::Text(job_id.into())],
        page,
    )
}
