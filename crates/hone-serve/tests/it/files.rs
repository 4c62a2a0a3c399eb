//! `/v1/files`.

use axum::http::Method;
use serde_json::Value;

use crate::common::{assert_error, TestApp, GOOD_JSONL};

#[tokio::test]
async fn upload_list_get_content_delete_round_trip() {
    let t = TestApp::new();
    let r = t
        .upload("train.jsonl", "fine-tune", GOOD_JSONL.as_bytes())
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let f = r.json();
    let id = f["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("file-") && id.len() == 29, "{id}");
    assert_eq!(f["object"], "file");
    assert_eq!(f["bytes"], GOOD_JSONL.len());
    assert_eq!(f["filename"], "train.jsonl");
    assert_eq!(f["purpose"], "fine-tune");
    assert_eq!(f["status"], "processed");
    assert!(f["created_at"].as_i64().unwrap() > 1_600_000_000);

    let list = t.get("/v1/files").await.json();
    assert_eq!(list["object"], "list");
    assert_eq!(list["data"][0]["id"], id.as_str());
    assert_eq!(list["has_more"], false);
    assert_eq!(list["first_id"], id.as_str());

    assert_eq!(t.get(&format!("/v1/files/{id}")).await.json(), f);
    let c = t.get(&format!("/v1/files/{id}/content")).await;
    assert_eq!(c.status, 200);
    assert_eq!(c.body, GOOD_JSONL.as_bytes());

    let d = t.call(Method::DELETE, &format!("/v1/files/{id}")).await;
    assert_eq!(
        d.json(),
        serde_json::json!({"id": id, "object": "file", "deleted": true})
    );
    assert_error(
        &t.get(&format!("/v1/files/{id}")).await,
        404,
        Some("not_found"),
    );
    assert_error(&t.get(&format!("/v1/files/{id}/content")).await, 404, None);
    assert_error(
        &t.call(Method::DELETE, &format!("/v1/files/{id}")).await,
        404,
        None,
    );
    assert!(
        !t.dir.path().join("files").join(&id).exists(),
        "blob removed"
    );
}

#[tokio::test]
async fn pagination_is_newest_first_with_after_and_limit() {
    let t = TestApp::new();
    let mut ids = Vec::new();
    for i in 0..5 {
        let r = t
            .upload(&format!("f{i}.jsonl"), "fine-tune", GOOD_JSONL.as_bytes())
            .await;
        ids.push(r.json()["id"].as_str().unwrap().to_string());
    }
    ids.reverse(); // newest first
    let p1 = t.get("/v1/files?limit=2").await.json();
    let got = |v: &Value| -> Vec<String> {
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(got(&p1), ids[0..2]);
    assert_eq!(p1["has_more"], true);
    assert_eq!(p1["last_id"], ids[1].as_str());
    let p2 = t
        .get(&format!("/v1/files?limit=2&after={}", ids[1]))
        .await
        .json();
    assert_eq!(got(&p2), ids[2..4]);
    let p3 = t
        .get(&format!("/v1/files?limit=2&after={}", ids[3]))
        .await
        .json();
    assert_eq!(got(&p3), ids[4..5]);
    assert_eq!(p3["has_more"], false);
    let asc = t.get("/v1/files?order=asc&limit=10").await.json();
    let mut rev = ids.clone();
    rev.reverse();
    assert_eq!(got(&asc), rev);
    let other = t.get("/v1/files?purpose=batch").await.json();
    assert!(other["data"].as_array().unwrap().is_empty());
    assert_error(&t.get("/v1/files?limit=0").await, 400, None);
    assert_error(&t.get("/v1/files?order=sideways").await, 400, None);
    assert_error(&t.get("/v1/files?after=file-nope").await, 400, None);
}

#[tokio::test]
async fn oversized_upload_is_413_and_leaves_no_file() {
    let t = TestApp::with(|c| c.max_upload_bytes = 1000);
    let r = t.upload("big.jsonl", "fine-tune", &vec![b'x'; 1001]).await;
    let v = assert_error(&r, 413, Some("file_too_large"));
    assert!(
        v["error"]["message"].as_str().unwrap().contains("1000"),
        "{v}"
    );
    assert_eq!(r.headers["x-should-retry"], "false");
    let files: Vec<_> = std::fs::read_dir(t.dir.path().join("files"))
        .unwrap()
        .collect();
    assert!(files.is_empty(), "no temp or blob left: {files:?}");
    assert!(t.get("/v1/files").await.json()["data"]
        .as_array()
        .unwrap()
        .is_empty());
    // Exactly at the limit is fine.
    let ok = t.upload("ok.jsonl", "user_data", &vec![b'x'; 1000]).await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.json()["bytes"], 1000);
}

#[tokio::test]
async fn bad_jsonl_upload_lists_every_problem_with_line_numbers() {
    let t = TestApp::new();
    let bad = format!("{GOOD_JSONL}not json\n{{\"prompt\":\"x\"}}\n{GOOD_JSONL}[1]\n");
    let r = t.upload("bad.jsonl", "fine-tune", bad.as_bytes()).await;
    assert_eq!(r.status, 200);
    let f = r.json();
    assert_eq!(f["status"], "error");
    let d = f["status_details"].as_str().unwrap();
    assert!(d.starts_with("3 errors"), "{d}");
    for line in ["line 3:", "line 4:", "line 7:"] {
        assert!(d.contains(line), "{line} missing in {d}");
    }
    assert!(!d.contains("line 1:") && !d.contains("line 5:"), "{d}");
}

#[tokio::test]
async fn upload_needs_file_and_a_known_purpose() {
    let t = TestApp::new();
    let r = t.upload("x.jsonl", "fine-tune-results", b"x").await;
    let v = assert_error(&r, 400, None);
    assert_eq!(v["error"]["param"], "purpose");
    let (ct, body) = crate::common::multipart(&[("purpose", None, b"fine-tune")]);
    let req = axum::http::Request::post("/v1/files")
        .header("content-type", ct)
        .body(axum::body::Body::from(body))
        .unwrap();
    let v = assert_error(&t.send(req).await, 400, None);
    assert_eq!(v["error"]["param"], "file");
    // Non-fine-tune files are stored unvalidated.
    let r = t
        .upload("notes.txt", "user_data", b"not jsonl at all")
        .await;
    assert_eq!(r.json()["status"], "processed");
}

#[tokio::test]
async fn hone_data_validator_reports_every_problem_at_upload() {
    let t = TestApp::real_validator();
    let bad = concat!(
        r#"{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"hello there"}]}"#,
        "\n",
        r#"{"messages":[{"role":"user","content":"q"},{"role":"wizard","content":"x"}]}"#,
        "\n",
        "not json\n",
        r#"{"messages":[{"role":"user"},{"role":"assistant","content":"fine answer"}]}"#,
        "\n",
    );
    let f = t
        .upload("bad.jsonl", "fine-tune", bad.as_bytes())
        .await
        .json();
    assert_eq!(f["status"], "error", "{f}");
    let d = f["status_details"].as_str().unwrap();
    assert!(d.contains("line 2, message 2: unrecognized_role"), "{d}");
    assert!(d.contains("line 3: invalid_json"), "{d}");
    assert!(d.contains("line 4, message 1: message_missing_key"), "{d}");
    assert!(
        !d.contains("invalid_n_examples"),
        "small files may be validation files: {d}"
    );

    // A clean small file is processed: too few examples is a job-time error.
    let f = t
        .upload("ok.jsonl", "fine-tune", GOOD_JSONL.as_bytes())
        .await
        .json();
    assert_eq!(f["status"], "processed", "{f}");
    assert!(f["status_details"].is_null());
}
