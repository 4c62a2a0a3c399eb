//! The SQLite store: transition rules, events, pagination, durability.

use std::path::PathBuf;

use hone_serve::api::{JobError, JobStatus};
use hone_serve::store::{NewEvent, PageRequest, Scope, SqliteStore, Store, StoreError, Transition};

use crate::models::new_job;

fn succeed() -> Transition {
    Transition::Succeed {
        fine_tuned_model: "ft:b:org:sfx:abcd1234".into(),
        base: "b".into(),
        adapter_path: PathBuf::from("/x"),
        trained_tokens: 7,
        result_files: vec!["file-r".into()],
    }
}

fn fail() -> Transition {
    Transition::Fail(JobError {
        code: "invalid_training_file".into(),
        message: "bad".into(),
        param: Some("training_file".into()),
    })
}

fn messages(s: &dyn Store, job: &str) -> Vec<String> {
    let mut p = s
        .list_events(&Scope::All, job, &PageRequest::first(100))
        .unwrap()
        .data;
    p.reverse();
    p.into_iter().map(|e| e.message).collect()
}

#[test]
fn happy_path_records_events_in_order_and_registers_the_model() {
    let s = SqliteStore::in_memory().unwrap();
    let job = new_job("b");
    s.insert_job(&job).unwrap();
    s.transition_job(&job.id, &Transition::Queue).unwrap();
    s.transition_job(&job.id, &Transition::Start).unwrap();
    let done = s.transition_job(&job.id, &succeed()).unwrap();
    assert_eq!(done.status, JobStatus::Succeeded);
    assert_eq!(
        done.fine_tuned_model.as_deref(),
        Some("ft:b:org:sfx:abcd1234")
    );
    assert_eq!(done.trained_tokens, Some(7));
    assert!(done.finished_at.is_some());
    assert_eq!(s.get_job(&Scope::All, &job.id).unwrap(), done);
    assert_eq!(
        messages(&s, &job.id),
        vec![
            format!("Created fine-tuning job: {}", job.id),
            "Files validated, moving job to queued state".to_string(),
            "Fine-tuning job started".to_string(),
            "New fine-tuned model created: ft:b:org:sfx:abcd1234".to_string(),
            "The job has successfully completed".to_string(),
        ]
    );
    let m = s.get_model(&Scope::All, "ft:b:org:sfx:abcd1234").unwrap();
    assert_eq!(m.base, "b");
    assert_eq!(m.job_id, job.id);
}

#[test]
fn illegal_transitions_are_refused_and_change_nothing() {
    let s = SqliteStore::in_memory().unwrap();
    let job = new_job("b");
    s.insert_job(&job).unwrap();
    for t in [
        Transition::Start,
        succeed(),
        Transition::Resume,
        Transition::Pause,
    ] {
        let e = s.transition_job(&job.id, &t).unwrap_err();
        assert!(
            matches!(e, StoreError::InvalidTransition { .. }),
            "{t:?}: {e}"
        );
    }
    assert_eq!(
        s.get_job(&Scope::All, &job.id).unwrap().status,
        JobStatus::ValidatingFiles
    );
    assert_eq!(
        messages(&s, &job.id).len(),
        1,
        "no event for a refused transition"
    );

    s.transition_job(&job.id, &Transition::Queue).unwrap();
    s.transition_job(&job.id, &Transition::Pause).unwrap();
    assert!(
        s.transition_job(&job.id, &Transition::Start).is_err(),
        "paused jobs do not start"
    );
    s.transition_job(&job.id, &Transition::Resume).unwrap();
    assert_eq!(
        s.get_job(&Scope::All, &job.id).unwrap().status,
        JobStatus::Queued
    );
    s.transition_job(&job.id, &Transition::Cancel).unwrap();
    for t in [
        Transition::Cancel,
        fail(),
        Transition::Queue,
        Transition::Resume,
        Transition::Start,
    ] {
        let e = s.transition_job(&job.id, &t).unwrap_err();
        assert!(e.to_string().contains("cancelled"), "{e}");
    }
    let api: hone_serve::ApiError = s
        .transition_job(&job.id, &Transition::Cancel)
        .unwrap_err()
        .into();
    assert_eq!(
        api.spec().status,
        400,
        "a permanent conflict is a 400, never a retried 409"
    );
}

#[test]
fn failure_keeps_its_error() {
    let s = SqliteStore::in_memory().unwrap();
    let job = new_job("b");
    s.insert_job(&job).unwrap();
    let j = s.transition_job(&job.id, &fail()).unwrap();
    assert_eq!(j.status, JobStatus::Failed);
    assert_eq!(j.error.unwrap().code, "invalid_training_file");
    assert!(s.get_model(&Scope::All, "ft:b:org:sfx:abcd1234").is_err());
}

#[test]
fn unknown_ids_are_not_found() {
    let s = SqliteStore::in_memory().unwrap();
    assert!(matches!(
        s.get_job(&Scope::All, "ftjob-x"),
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.transition_job("ftjob-x", &Transition::Cancel),
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.add_event("ftjob-x", &NewEvent::info("m")),
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.list_events(&Scope::All, "ftjob-x", &PageRequest::first(5)),
        Err(StoreError::NotFound { .. })
    ));
}

#[test]
fn job_pages_and_status_scan() {
    let s = SqliteStore::in_memory().unwrap();
    let jobs: Vec<_> = (0..3).map(|_| new_job("b")).collect();
    for j in &jobs {
        s.insert_job(j).unwrap();
    }
    s.transition_job(&jobs[1].id, &Transition::Queue).unwrap();
    let p = s.list_jobs(&Scope::All, &PageRequest::first(2)).unwrap();
    assert_eq!(
        p.data.iter().map(|j| &j.id).collect::<Vec<_>>(),
        vec![&jobs[2].id, &jobs[1].id]
    );
    assert!(p.has_more);
    let p2 = s
        .list_jobs(
            &Scope::All,
            &PageRequest {
                after: Some(jobs[1].id.clone()),
                ..PageRequest::first(2)
            },
        )
        .unwrap();
    assert_eq!(p2.data.len(), 1);
    assert!(!p2.has_more);
    let v = s.jobs_with_status(JobStatus::ValidatingFiles).unwrap();
    assert_eq!(
        v.iter().map(|j| &j.id).collect::<Vec<_>>(),
        vec![&jobs[0].id, &jobs[2].id],
        "oldest first"
    );
}

#[test]
fn store_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hone.db");
    let job = new_job("b");
    {
        let s = SqliteStore::open(&path).unwrap();
        s.insert_job(&job).unwrap();
        s.transition_job(&job.id, &Transition::Queue).unwrap();
        s.transition_job(&job.id, &Transition::Start).unwrap();
        s.transition_job(&job.id, &succeed()).unwrap();
    }
    let s = SqliteStore::open(&path).unwrap();
    let j = s.get_job(&Scope::All, &job.id).unwrap();
    assert_eq!(j.status, JobStatus::Succeeded);
    assert_eq!(messages(&s, &job.id).len(), 5);
    assert!(s.get_model(&Scope::All, "ft:b:org:sfx:abcd1234").is_ok());
}

#[tokio::test]
async fn files_survive_a_server_restart() {
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        let config = hone_serve::ServeConfig::new(dir.path());
        let st = hone_serve::AppState::open(config, hone_serve::Engines::with_base_models(["b"]))
            .unwrap();
        hone_serve::router(st)
    };
    let (ct, body) = crate::common::multipart(&[
        ("purpose", None, b"user_data"),
        ("file", Some("a.txt"), b"hello"),
    ]);
    let req = axum::http::Request::post("/v1/files")
        .header("content-type", ct)
        .body(axum::body::Body::from(body))
        .unwrap();
    use tower::ServiceExt;
    let resp = open().oneshot(req).await.unwrap();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    let id = serde_json::from_slice::<serde_json::Value>(&bytes).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let app = open();
    let req = axum::http::Request::get(format!("/v1/files/{id}/content"))
        .body(axum::body::Body::empty())
        .unwrap();
    let resp = app.oneshot(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        &axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap()[..],
        b"hello"
    );
}
