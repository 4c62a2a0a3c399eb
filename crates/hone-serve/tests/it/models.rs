//! `/v1/models`.

use std::path::PathBuf;

use axum::http::Method;
use hone_serve::api::{
    FineTuningJob, Hyperparameters, JobCheckpoint, JobCheckpointTag, JobStatus, JobTag,
    Method as TrainMethod, MethodType, StepMetrics,
};
use hone_serve::ids::{self, FineTunedName};
use hone_serve::store::{CheckpointRecord, Transition};

use crate::common::{assert_error, TestApp, BASE};

pub fn new_job(model: &str) -> FineTuningJob {
    FineTuningJob {
        id: ids::job_id(),
        object: JobTag,
        created_at: hone_serve::store::unix_now(),
        error: None,
        fine_tuned_model: None,
        finished_at: None,
        hyperparameters: Hyperparameters::default(),
        method: TrainMethod {
            kind: MethodType::Supervised,
            supervised: Some(Default::default()),
            dpo: None,
            reinforcement: None,
        },
        model: model.into(),
        organization_id: "org".into(),
        result_files: vec![],
        seed: 42,
        status: JobStatus::ValidatingFiles,
        trained_tokens: None,
        training_file: "file-x".into(),
        validation_file: None,
        estimated_finish: None,
        integrations: None,
        metadata: None,
        user_provided_suffix: Some("sfx".into()),
        requested_hyperparameters: None,
    }
}

/// Runs a job through the store to success, with one checkpoint; returns
/// (final model name, checkpoint model name).
async fn fine_tuned_model(t: &TestApp) -> (String, String) {
    fine_tuned_model_of(t, "org").await
}

/// The same for a job of `project`.
pub async fn fine_tuned_model_of(t: &TestApp, project: &str) -> (String, String) {
    let name = FineTunedName::new(BASE, project, Some("sfx"));
    let ckpt = name.at_step(10).to_string();
    let fin = name.to_string();
    let (c2, f2, project) = (ckpt.clone(), fin.clone(), project.to_string());
    // The worker answers commands only after its start-up recovery (which
    // re-queues `running` jobs), so after this answer it cannot race the
    // job this test starts by hand.
    let _ = t
        .state
        .worker
        .command("ftjob-none", hone_serve::worker::Command::Cancel)
        .await;
    t.state
        .store
        .run(move |s| {
            // Inserted already queued: the app's worker (no engine here)
            // leaves queued jobs alone, so this test's transitions cannot
            // race with it. A validating_files job would be validated (and
            // failed, its file does not exist) by the worker concurrently.
            let mut job = new_job(BASE);
            job.organization_id = project;
            job.status = JobStatus::Queued;
            s.insert_job(&job)?;
            s.transition_job(&job.id, &Transition::Start)?;
            s.add_checkpoint(&CheckpointRecord {
                checkpoint: JobCheckpoint {
                    id: ids::checkpoint_id(),
                    object: JobCheckpointTag,
                    created_at: 1,
                    fine_tuned_model_checkpoint: c2,
                    fine_tuning_job_id: job.id.clone(),
                    step_number: 10,
                    metrics: StepMetrics::default(),
                },
                adapter_path: PathBuf::from("/a/step-10"),
            })?;
            s.transition_job(
                &job.id,
                &Transition::Succeed {
                    fine_tuned_model: f2,
                    base: BASE.into(),
                    adapter_path: PathBuf::from("/a/final"),
                    trained_tokens: 100,
                    result_files: vec![],
                },
            )
        })
        .await
        .unwrap();
    (fin, ckpt)
}

#[tokio::test]
async fn lists_base_fine_tuned_and_checkpoint_models() {
    let t = TestApp::new();
    let (fin, ckpt) = fine_tuned_model(&t).await;
    let list = t.get("/v1/models").await.json();
    assert_eq!(list["object"], "list");
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![BASE, fin.as_str(), ckpt.as_str()]);
    assert_eq!(list["data"][1]["object"], "model");
    assert_eq!(list["data"][1]["owned_by"], "org");
}

#[tokio::test]
async fn model_ids_with_colons_route_for_get_and_delete() {
    let t = TestApp::new();
    let (fin, ckpt) = fine_tuned_model(&t).await;
    assert!(fin.matches(':').count() == 4, "{fin}");
    let m = t.get(&format!("/v1/models/{fin}")).await;
    assert_eq!(m.status, 200);
    assert_eq!(m.json()["id"], fin.as_str());
    // Percent-encoded colons work too.
    let enc = fin.replace(':', "%3A");
    assert_eq!(
        t.get(&format!("/v1/models/{enc}")).await.json()["id"],
        fin.as_str()
    );
    assert_eq!(
        t.get(&format!("/v1/models/{ckpt}")).await.json()["id"],
        ckpt.as_str()
    );
    assert_eq!(
        t.get(&format!("/v1/models/{BASE}")).await.json()["owned_by"],
        "system"
    );

    let r = t.call(Method::DELETE, &format!("/v1/models/{ckpt}")).await;
    assert_error(&r, 400, Some("model_not_deletable"));
    let r = t.call(Method::DELETE, &format!("/v1/models/{BASE}")).await;
    assert_error(&r, 400, Some("model_not_deletable"));
    assert_eq!(r.headers["x-should-retry"], "false");

    let d = t
        .call(Method::DELETE, &format!("/v1/models/{fin}"))
        .await
        .json();
    assert_eq!(
        d,
        serde_json::json!({"id": fin, "object": "model", "deleted": true})
    );
    assert_error(
        &t.get(&format!("/v1/models/{fin}")).await,
        404,
        Some("model_not_found"),
    );
    assert_error(
        &t.call(Method::DELETE, &format!("/v1/models/{fin}")).await,
        404,
        Some("model_not_found"),
    );
}

#[tokio::test]
async fn unknown_model_is_404_model_not_found() {
    let t = TestApp::new();
    let v = assert_error(
        &t.get("/v1/models/ft:nope:org:x:abcd1234").await,
        404,
        Some("model_not_found"),
    );
    assert_eq!(v["error"]["type"], "invalid_request_error");
}
