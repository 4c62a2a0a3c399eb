//! `/v1/fine_tuning/jobs` and the job worker, with a scripted training
//! engine standing in for hone-train (it trains nothing; it exercises the
//! worker's contract: progress, checkpoints, stop requests, outcomes).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request};
use hone_serve::api::{EventLevel, StepMetrics};
use hone_serve::{Engines, JobContext, TrainingEngine, TrainingOutcome};
use serde_json::{json, Value};

use crate::common::{assert_error, TestApp, BASE};

fn sft_lines(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                r#"{{"messages":[{{"role":"user","content":"question number {i}"}},{{"role":"assistant","content":"answer number {i} in full"}}]}}"#
            ) + "\n"
        })
        .collect()
}

async fn post_json(t: &TestApp, uri: &str, body: Value) -> crate::common::Reply {
    let req = Request::post(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    t.send(req).await
}

async fn upload_ok(t: &TestApp, n: usize) -> String {
    let f = t
        .upload("train.jsonl", "fine-tune", sft_lines(n).as_bytes())
        .await
        .json();
    assert_eq!(f["status"], "processed", "{f}");
    f["id"].as_str().unwrap().to_string()
}

/// Creates a job and returns its id.
async fn create_job(t: &TestApp, body: Value) -> String {
    let r = post_json(t, "/v1/fine_tuning/jobs", body).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["id"].as_str().unwrap().to_string()
}

async fn wait_status(t: &TestApp, id: &str, want: &str) -> Value {
    for _ in 0..500 {
        let j = t.get(&format!("/v1/fine_tuning/jobs/{id}")).await.json();
        if j["status"] == want {
            return j;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "job {id} never reached {want}: {}",
        t.get(&format!("/v1/fine_tuning/jobs/{id}")).await.json()
    );
}

async fn event_messages(t: &TestApp, id: &str) -> Vec<String> {
    let v = t
        .get(&format!("/v1/fine_tuning/jobs/{id}/events?limit=100"))
        .await
        .json();
    let mut m: Vec<String> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap().to_string())
        .collect();
    m.reverse();
    m
}

#[tokio::test]
async fn created_job_is_validated_and_queued_with_auto_resolved() {
    let t = TestApp::real_validator();
    let file = upload_ok(&t, 10).await;
    let r = post_json(
        &t,
        "/v1/fine_tuning/jobs",
        json!({"model": BASE, "training_file": file, "suffix": "house", "seed": 7}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let j = r.json();
    let id = j["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("ftjob-"));
    assert_eq!(j["object"], "fine_tuning.job");
    assert_eq!(j["status"], "validating_files");
    assert_eq!(j["hyperparameters"]["n_epochs"], "auto");
    assert_eq!(j["method"]["type"], "supervised");
    assert_eq!(j["seed"], 7);
    assert!(j["fine_tuned_model"].is_null() && j["error"].is_null());
    let q = wait_status(&t, &id, "queued").await;
    assert_eq!(
        q["hyperparameters"]["n_epochs"], 10,
        "min(25, 100 // 10): {q}"
    );
    assert!(q["hyperparameters"]["batch_size"].is_number(), "{q}");
    assert_eq!(
        q["method"]["supervised"]["hyperparameters"], q["hyperparameters"],
        "the method's hyperparameters show the resolved values too: {q}"
    );
    let msgs = event_messages(&t, &id).await;
    assert_eq!(msgs[0], format!("Created fine-tuning job: {id}"));
    assert_eq!(msgs[1], format!("Validating training file: {file}"));
    assert!(msgs[2].starts_with("Hyperparameters: "), "{msgs:?}");
    assert_eq!(msgs[3], "Files validated, moving job to queued state");
    let list = t.get("/v1/fine_tuning/jobs").await.json();
    assert_eq!(list["data"][0]["id"], id.as_str());
}

#[tokio::test]
async fn bad_requests_are_clear_400s() {
    let t = TestApp::real_validator();
    let file = upload_ok(&t, 10).await;
    let cases = [
        (
            json!({"model": BASE, "training_file": file, "method": {"type": "reinforcement"}}),
            "method.type",
        ),
        (
            json!({"model": BASE, "training_file": file, "suffix": "Bad Suffix"}),
            "suffix",
        ),
        (json!({"model": "gpt-4o", "training_file": file}), "model"),
        (
            json!({"model": BASE, "training_file": "file-nope"}),
            "training_file",
        ),
        (
            json!({"model": BASE, "training_file": file, "hyperparameters": {"n_epochs": 0}}),
            "hyperparameters.n_epochs",
        ),
        (
            json!({"model": BASE, "training_file": file, "hyperparameters": {"n_epochs": 2},
                "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3}}}}),
            "hyperparameters",
        ),
        (
            json!({"model": BASE, "training_file": file, "method": {"type": "supervised", "supervised": {"hyperparameters": {"beta": 0.1}}}}),
            "method.supervised.hyperparameters.beta",
        ),
    ];
    for (body, param) in cases {
        let v = assert_error(
            &post_json(&t, "/v1/fine_tuning/jobs", body.clone()).await,
            400,
            None,
        );
        assert_eq!(v["error"]["param"], param, "{body}: {v}");
    }
    assert_error(
        &post_json(&t, "/v1/fine_tuning/jobs", json!({"model": BASE})).await,
        400,
        Some("invalid_json"),
    );
    let bad = t.upload("bad.jsonl", "fine-tune", b"nope\n").await.json();
    let v = assert_error(
        &post_json(
            &t,
            "/v1/fine_tuning/jobs",
            json!({"model": BASE, "training_file": bad["id"]}),
        )
        .await,
        400,
        Some("invalid_training_file"),
    );
    assert!(
        v["error"]["message"].as_str().unwrap().contains("line 1"),
        "{v}"
    );
}

#[tokio::test]
async fn dpo_and_legacy_hyperparameters_are_accepted() {
    let t = TestApp::real_validator();
    let file = upload_ok(&t, 10).await;
    let pairs = t
        .upload(
            "pairs.jsonl",
            "fine-tune",
            crate::common::dpo_jsonl(10).as_bytes(),
        )
        .await
        .json();
    let j = post_json(
        &t,
        "/v1/fine_tuning/jobs",
        json!({"model": BASE, "training_file": pairs["id"], "method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": "auto"}}}}),
    )
    .await
    .json();
    assert_eq!(j["method"]["type"], "dpo");
    assert_eq!(j["method"]["dpo"]["hyperparameters"]["beta"], 0.2);
    let j = post_json(&t, "/v1/fine_tuning/jobs", json!({"model": BASE, "training_file": file, "hyperparameters": {"n_epochs": 2, "batch_size": "auto"}}))
        .await
        .json();
    assert_eq!(j["hyperparameters"]["n_epochs"], 2);
    assert_eq!(j["method"]["supervised"]["hyperparameters"]["n_epochs"], 2);
    let id = j["id"].as_str().unwrap().to_string();
    let q = wait_status(&t, &id, "queued").await;
    assert_eq!(
        q["hyperparameters"]["n_epochs"], 2,
        "a user value is kept: {q}"
    );
}

#[tokio::test]
async fn cancel_pause_resume_of_a_queued_job() {
    let t = TestApp::real_validator();
    let file = upload_ok(&t, 10).await;
    let id = create_job(&t, json!({"model": BASE, "training_file": file})).await;
    wait_status(&t, &id, "queued").await;
    let base = format!("/v1/fine_tuning/jobs/{id}");
    assert_eq!(
        t.call(Method::POST, &format!("{base}/pause")).await.json()["status"],
        "paused"
    );
    assert_error(
        &t.call(Method::POST, &format!("{base}/pause")).await,
        400,
        Some("invalid_job_state"),
    );
    assert_eq!(
        t.call(Method::POST, &format!("{base}/resume")).await.json()["status"],
        "queued"
    );
    let c = t.call(Method::POST, &format!("{base}/cancel")).await.json();
    assert_eq!(c["status"], "cancelled");
    assert!(c["finished_at"].is_number());
    let again = t.call(Method::POST, &format!("{base}/cancel")).await;
    assert_error(&again, 400, Some("invalid_job_state"));
    assert_eq!(again.headers["x-should-retry"], "false");
    assert_error(
        &t.call(Method::POST, "/v1/fine_tuning/jobs/ftjob-nope/cancel")
            .await,
        404,
        Some("not_found"),
    );
    assert_error(
        &t.get("/v1/fine_tuning/jobs/ftjob-nope/events").await,
        404,
        None,
    );
}

/// Succeeds at once after one checkpoint, or (with `block`) waits for a
/// stop request.
struct ScriptedEngine {
    block: bool,
}

impl TrainingEngine for ScriptedEngine {
    fn train(&self, ctx: &JobContext) -> TrainingOutcome {
        assert!(ctx.training_file.exists());
        let m = StepMetrics {
            step: Some(1),
            total_steps: Some(2),
            train_loss: Some(1.5),
            ..Default::default()
        };
        ctx.metrics(&m).unwrap();
        let dir = ctx.job_dir.join("checkpoints").join("step-1");
        ctx.checkpoint(1, dir, m).unwrap();
        if self.block {
            while !ctx.stop_requested() {
                std::thread::sleep(Duration::from_millis(5));
            }
            ctx.message(EventLevel::Info, "stopping at step 1").unwrap();
            return TrainingOutcome::Stopped;
        }
        TrainingOutcome::Succeeded {
            adapter_path: ctx.job_dir.join("adapter"),
            trained_tokens: 42,
            result_files: vec![],
        }
    }
}

fn with_engine(block: bool) -> TestApp {
    TestApp::with_engines(
        Engines::with_base_models([BASE]).training(Arc::new(ScriptedEngine { block })),
        |_| {},
    )
}

#[tokio::test]
async fn a_trained_job_succeeds_and_its_models_exist_at_once() {
    let t = with_engine(false);
    let file = upload_ok(&t, 10).await;
    let id = create_job(
        &t,
        json!({"model": BASE, "training_file": file, "suffix": "sfx"}),
    )
    .await;
    let j = wait_status(&t, &id, "succeeded").await;
    let model = j["fine_tuned_model"].as_str().unwrap().to_string();
    assert!(
        model.starts_with(&format!("ft:{BASE}:hone:sfx:")),
        "{model}"
    );
    assert_eq!(j["trained_tokens"], 42);
    assert_eq!(t.get(&format!("/v1/models/{model}")).await.status, 200);
    let ck = t
        .get(&format!("/v1/fine_tuning/jobs/{id}/checkpoints"))
        .await
        .json();
    assert_eq!(
        ck["data"][0]["fine_tuned_model_checkpoint"],
        format!("{model}:ckpt-step-1")
    );
    assert_eq!(ck["data"][0]["step_number"], 1);
    assert!(ck["data"][0]["id"].as_str().unwrap().starts_with("ftckpt_"));
    assert_eq!(
        t.get(&format!("/v1/models/{model}:ckpt-step-1"))
            .await
            .status,
        200
    );
    let msgs = event_messages(&t, &id).await;
    let tail: Vec<&str> = msgs.iter().map(String::as_str).skip(4).collect();
    assert_eq!(
        tail,
        vec![
            "Fine-tuning job started",
            "Step 1/2: training loss=1.5000",
            &format!("New fine-tuned model created: {model}"),
            "The job has successfully completed",
        ]
    );
    let ev = t
        .get(&format!("/v1/fine_tuning/jobs/{id}/events?limit=100"))
        .await
        .json();
    let metrics = ev["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "metrics")
        .unwrap();
    assert_eq!(metrics["data"]["train_loss"], 1.5);
}

#[tokio::test]
async fn cancel_and_pause_stop_a_running_job_cooperatively() {
    let t = with_engine(true);
    let file = upload_ok(&t, 10).await;
    let mk = || {
        post_json(
            &t,
            "/v1/fine_tuning/jobs",
            json!({"model": BASE, "training_file": file}),
        )
    };
    let a = mk().await.json()["id"].as_str().unwrap().to_string();
    wait_status(&t, &a, "running").await;
    let p = t
        .call(Method::POST, &format!("/v1/fine_tuning/jobs/{a}/pause"))
        .await;
    assert_eq!(
        p.json()["status"],
        "paused",
        "{}",
        String::from_utf8_lossy(&p.body)
    );
    assert!(event_messages(&t, &a)
        .await
        .contains(&"stopping at step 1".to_string()));
    assert_eq!(
        t.call(Method::POST, &format!("/v1/fine_tuning/jobs/{a}/resume"))
            .await
            .json()["status"],
        "queued"
    );
    wait_status(&t, &a, "running").await;
    let c = t
        .call(Method::POST, &format!("/v1/fine_tuning/jobs/{a}/cancel"))
        .await
        .json();
    assert_eq!(c["status"], "cancelled");
    assert!(c["fine_tuned_model"].is_null());
}

struct PanickingEngine;

impl TrainingEngine for PanickingEngine {
    fn train(&self, _ctx: &JobContext) -> TrainingOutcome {
        panic!("boom in step 3");
    }
}

#[tokio::test]
async fn a_panicking_trainer_fails_the_job_with_its_message() {
    let t = TestApp::with_engines(
        Engines::with_base_models([BASE]).training(Arc::new(PanickingEngine)),
        |_| {},
    );
    let file = upload_ok(&t, 10).await;
    let id = create_job(&t, json!({"model": BASE, "training_file": file})).await;
    let j = wait_status(&t, &id, "failed").await;
    assert_eq!(j["error"]["code"], "internal_error");
    assert!(
        j["error"]["message"]
            .as_str()
            .unwrap()
            .contains("boom in step 3"),
        "{j}"
    );
    // The worker survives: a new job is still validated.
    let id2 = create_job(&t, json!({"model": BASE, "training_file": file})).await;
    wait_status(&t, &id2, "failed").await;
}

#[tokio::test]
async fn a_job_left_running_by_a_crash_is_requeued_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let job = crate::models::new_job(BASE);
    {
        let s = hone_serve::store::SqliteStore::open(&dir.path().join("hone.db")).unwrap();
        use hone_serve::store::{Store, Transition};
        s.insert_job(&job).unwrap();
        s.transition_job(&job.id, &Transition::Queue).unwrap();
        s.transition_job(&job.id, &Transition::Start).unwrap();
    }
    let config = hone_serve::ServeConfig::new(dir.path());
    let st = hone_serve::AppState::open(config, Engines::with_base_models([BASE])).unwrap();
    let id = job.id.clone();
    for _ in 0..500 {
        let id = id.clone();
        let j = st
            .store
            .run(move |s| s.get_job(&hone_serve::store::Scope::All, &id))
            .await
            .unwrap();
        if j.status == hone_serve::api::JobStatus::Queued {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("job was not re-queued");
}

/// A training step that does not end until the test releases it, whatever
/// stop is requested (a long step of a real run); records what it saw.
#[derive(Default)]
struct LongStep {
    in_step: std::sync::atomic::AtomicBool,
    saw_stop: std::sync::atomic::AtomicBool,
    release: std::sync::atomic::AtomicBool,
}

impl TrainingEngine for LongStep {
    fn train(&self, ctx: &JobContext) -> TrainingOutcome {
        use std::sync::atomic::Ordering::SeqCst;
        self.in_step.store(true, SeqCst);
        while !self.release.load(SeqCst) {
            if ctx.stop_requested() {
                self.saw_stop.store(true, SeqCst);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        self.in_step.store(false, SeqCst);
        if ctx.stop_requested() {
            return TrainingOutcome::Stopped;
        }
        TrainingOutcome::Succeeded {
            adapter_path: ctx.job_dir.join("adapter"),
            trained_tokens: 1,
            result_files: vec![],
        }
    }
}

/// Cancel answered while the step is still running: the job is `cancelled`
/// at once, the run is told to stop, and its slot is only given to the next
/// job once it has really stopped; its end does not change the job again.
#[tokio::test]
async fn cancel_answers_at_once_during_a_long_step() {
    use std::sync::atomic::Ordering::SeqCst;
    let engine = Arc::new(LongStep::default());
    let t = TestApp::with_engines(
        Engines::with_base_models([BASE]).training(engine.clone()),
        |c| c.max_concurrent_jobs = 1,
    );
    let file = upload_ok(&t, 10).await;
    let a = create_job(&t, json!({"model": BASE, "training_file": file})).await;
    wait_status(&t, &a, "running").await;
    for _ in 0..500 {
        if engine.in_step.load(SeqCst) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(engine.in_step.load(SeqCst));
    let c = t
        .call(Method::POST, &format!("/v1/fine_tuning/jobs/{a}/cancel"))
        .await;
    assert_eq!(c.status, 200, "{}", String::from_utf8_lossy(&c.body));
    assert_eq!(c.json()["status"], "cancelled");
    assert!(
        engine.in_step.load(SeqCst),
        "the answer did not wait for the step"
    );
    assert_eq!(
        t.get(&format!("/v1/fine_tuning/jobs/{a}")).await.json()["status"],
        "cancelled"
    );
    // The stopping run keeps its slot: the next job waits.
    let b = create_job(&t, json!({"model": BASE, "training_file": file})).await;
    wait_status(&t, &b, "queued").await;
    for _ in 0..500 {
        if engine.saw_stop.load(SeqCst) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(engine.saw_stop.load(SeqCst), "the run was asked to stop");
    assert_eq!(
        t.get(&format!("/v1/fine_tuning/jobs/{b}")).await.json()["status"],
        "queued"
    );
    engine.release.store(true, SeqCst);
    wait_status(&t, &b, "succeeded").await;
    let j = t.get(&format!("/v1/fine_tuning/jobs/{a}")).await.json();
    assert_eq!(j["status"], "cancelled");
    assert!(j["fine_tuned_model"].is_null());
    let cancelled = event_messages(&t, &a)
        .await
        .iter()
        .filter(|m| m.as_str() == "Fine-tuning job cancelled")
        .count();
    assert_eq!(cancelled, 1);
}
