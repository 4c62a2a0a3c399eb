//! Issue #17, part 3: what is wrong with a job and known when it is created
//! is a 400 at creation, with `param` naming the field, not a job accepted
//! and failed a moment later.

use axum::body::Body;
use axum::http::Request;
use serde_json::{json, Value};

use crate::common::{assert_error, dpo_jsonl, sft_jsonl, Reply, TestApp, BASE};

/// A 400 with this `param` (and code, if given); returns the message.
fn refused(r: &Reply, param: &str, code: Option<&str>) -> String {
    let v = assert_error(r, 400, code);
    assert_eq!(v["error"]["param"], param, "{v}");
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    v["error"]["message"].as_str().unwrap().to_string()
}

async fn wait_status(t: &TestApp, id: &str, want: &str) -> Value {
    for _ in 0..500 {
        let j = t.get(&format!("/v1/fine_tuning/jobs/{id}")).await.json();
        if j["status"] == want {
            return j;
        }
        assert_ne!(j["status"], "failed", "{j}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("job {id} never reached {want}");
}

fn dpo_with(file: &str, hyperparameters: Value) -> Value {
    json!({"model": BASE, "training_file": file,
           "method": {"type": "dpo", "dpo": {"hyperparameters": hyperparameters}}})
}

#[tokio::test]
async fn beta_outside_the_trainers_range_is_a_400_and_inside_it_never_fails_later() {
    let t = TestApp::real_validator();
    let file = t.upload_jsonl(&dpo_jsonl(10)).await;
    for beta in [2.5, 5.0, 10.0, 0.0, -1.0] {
        let r = t
            .post_json(
                "/v1/fine_tuning/jobs",
                dpo_with(&file, json!({"beta": beta})),
            )
            .await;
        let m = refused(&r, "method.dpo.hyperparameters.beta", None);
        assert!(m.contains("(0, 2]"), "{m}");
    }
    // The top of the one range is accepted here and by the trainer's check.
    let r = t
        .post_json(
            "/v1/fine_tuning/jobs",
            dpo_with(&file, json!({"beta": 2.0})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let id = r.json()["id"].as_str().unwrap().to_string();
    let q = wait_status(&t, &id, "queued").await;
    assert_eq!(q["hyperparameters"]["beta"], 2.0, "{q}");
}

#[tokio::test]
async fn a_training_file_with_fewer_than_10_examples_is_a_400_at_creation() {
    let t = TestApp::real_validator();
    let file = t.upload_jsonl(&sft_jsonl(9)).await;
    let r = t
        .post_json(
            "/v1/fine_tuning/jobs",
            json!({"model": BASE, "training_file": file}),
        )
        .await;
    let m = refused(&r, "training_file", Some("invalid_n_examples"));
    assert!(m.contains("9 example") && m.contains("at least 10"), "{m}");
    let listed = t.get("/v1/fine_tuning/jobs").await.json();
    assert_eq!(listed["data"], json!([]), "no job was made");
}

#[tokio::test]
async fn dpo_on_an_sft_file_is_one_error_pointing_at_method_type() {
    let t = TestApp::real_validator();
    let file = t.upload_jsonl(&sft_jsonl(60)).await;
    let r = t
        .post_json("/v1/fine_tuning/jobs", dpo_with(&file, json!({})))
        .await;
    let m = refused(&r, "method.type", Some("invalid_training_file"));
    assert_eq!(m.lines().count(), 1, "said once, not per line: {m}");
    assert!(!m.contains("line ") && !m.contains("--method"), "{m}");
    assert!(m.contains("'dpo'") && m.contains("'supervised'"), "{m}");
}

#[tokio::test]
async fn sft_on_a_dpo_file_is_one_error_pointing_at_method_type() {
    let t = TestApp::real_validator();
    let file = t.upload_jsonl(&dpo_jsonl(12)).await;
    for body in [
        json!({"model": BASE, "training_file": file}),
        json!({"model": BASE, "training_file": file, "method": {"type": "supervised"}}),
    ] {
        let r = t.post_json("/v1/fine_tuning/jobs", body).await;
        let m = refused(&r, "method.type", Some("invalid_training_file"));
        assert_eq!(m.lines().count(), 1, "{m}");
        assert!(m.contains("preference pairs"), "{m}");
    }
}

#[tokio::test]
async fn a_dpo_validation_file_on_an_sft_job_is_a_400_at_creation() {
    let t = TestApp::real_validator();
    let train = t.upload_jsonl(&sft_jsonl(10)).await;
    let valid = t.upload_jsonl(&dpo_jsonl(3)).await;
    let r = t
        .post_json(
            "/v1/fine_tuning/jobs",
            json!({"model": BASE, "training_file": train, "validation_file": valid}),
        )
        .await;
    refused(&r, "validation_file", Some("invalid_validation_file"));
    // A validation file in the job's format may be small.
    let ok_valid = t.upload_jsonl(&sft_jsonl(3)).await;
    let r = t
        .post_json(
            "/v1/fine_tuning/jobs",
            json!({"model": BASE, "training_file": train, "validation_file": ok_valid}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

#[tokio::test]
async fn a_batch_size_larger_than_the_examples_is_refused_at_creation() {
    let t = TestApp::real_validator();
    let file = t.upload_jsonl(&sft_jsonl(12)).await;
    let r = t
        .post_json(
            "/v1/fine_tuning/jobs",
            json!({"model": BASE, "training_file": file, "hyperparameters": {"batch_size": 200}}),
        )
        .await;
    let m = refused(
        &r,
        "hyperparameters.batch_size",
        Some("invalid_hyperparameters"),
    );
    assert!(m.contains("200") && m.contains("12 examples"), "{m}");
    let r = t.post_json("/v1/fine_tuning/jobs", json!({"model": BASE, "training_file": file,
               "method": {"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 13}}}}),
    )
    .await;
    refused(
        &r,
        "method.supervised.hyperparameters.batch_size",
        Some("invalid_hyperparameters"),
    );
    let r = t
        .post_json(
            "/v1/fine_tuning/jobs",
            json!({"model": BASE, "training_file": file, "hyperparameters": {"batch_size": 12}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

#[tokio::test]
async fn body_type_errors_name_their_field_in_param() {
    let t = TestApp::real_validator();
    let file = t.upload_jsonl(&sft_jsonl(10)).await;
    let with_epochs = |n: Value| json!({"model": BASE, "training_file": file, "hyperparameters": {"n_epochs": n}});
    let mut cases: Vec<(Value, &str)> = [
        json!(-1),
        json!("abc"),
        json!(2.5),
        Value::Null,
        json!(1u64 << 40),
    ]
    .into_iter()
    .map(|n| (with_epochs(n), "hyperparameters.n_epochs"))
    .collect();
    cases.extend([
        (
            json!({"model": BASE, "training_file": file, "method": {"type": "foo"}}),
            "method.type",
        ),
        (
            json!({"model": BASE, "training_file": file, "method": {"supervised": {}}}),
            "method.type",
        ),
        (
            json!({"model": BASE, "training_file": file, "method": {"type": "dpo",
                   "dpo": {"hyperparameters": {"beta": "high"}}}}),
            "method.dpo.hyperparameters.beta",
        ),
        (json!({"model": 7, "training_file": file}), "model"),
        (json!({"model": BASE}), "training_file"),
    ]);
    for (body, param) in cases {
        let r = t.post_json("/v1/fine_tuning/jobs", body.clone()).await;
        let v = assert_error(&r, 400, Some("invalid_json"));
        assert_eq!(v["error"]["param"], param, "{body}: {v}");
        assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
        let m = v["error"]["message"].as_str().unwrap();
        assert!(m.contains(param), "the message names the field too: {m}");
    }
    // Not JSON at all: no field to name.
    let req = Request::post("/v1/fine_tuning/jobs")
        .header("content-type", "application/json")
        .body(Body::from("{\"model\": "))
        .unwrap();
    let v = assert_error(&t.send(req).await, 400, Some("invalid_json"));
    assert!(v["error"]["param"].is_null(), "{v}");
}
