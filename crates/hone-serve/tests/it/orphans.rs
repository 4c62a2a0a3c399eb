//! Issue #17 part 6, no orphans: what a kill leaves at each stage of an
//! upload, a job's creation and a checkpoint's writing is swept at the next
//! start (`hone_serve::sweep::sweep_orphans`, which `hone serve` runs before
//! its worker), and nothing a record refers to is touched.

use std::fs;
use std::path::{Path, PathBuf};

use axum::http::Method;
use hone_serve::store::Scope;
use hone_serve::sweep::sweep_orphans;
use serde_json::json;

use crate::common::{sft_jsonl, TestApp, BASE};

fn write(path: &Path, bytes: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap();
}

#[tokio::test]
async fn a_restart_after_kills_removes_every_orphan_and_keeps_every_referenced_file() {
    let t = TestApp::new();
    let home = t.dir.path().to_path_buf();
    let kept = t.upload_jsonl(&sft_jsonl(12)).await;
    let kept_bytes = fs::read(home.join("files").join(&kept)).unwrap();
    let r = t
        .post_json(
            "/v1/fine_tuning/jobs",
            json!({"model": BASE, "training_file": kept}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let job = r.json()["id"].as_str().unwrap().to_string();
    // A file whose record was deleted, killed before its blob went.
    let deleted = t.upload_jsonl(&sft_jsonl(11)).await;
    t.state
        .store
        .blocking()
        .delete_file(&Scope::All, &deleted)
        .unwrap();

    let files = home.join("files");
    let run = home.join("jobs").join(&job).join("run");
    let orphans: Vec<PathBuf> = vec![
        // Upload killed while streaming.
        files.join(".upload-cut.tmp"),
        // Upload killed after its blob was committed, during validation.
        files.join("file-validating33mb"),
        files.join(&deleted),
        // Job creation killed after its directory, before its record.
        home.join("jobs/ftjob-neverrecorded/run/metrics.csv"),
        // Checkpoint writing killed half-way, and a cut adapter write.
        run.join("checkpoints/step-2.tmp/adapter_model.safetensors"),
        run.join("adapter_model.safetensors.tmp"),
    ];
    for p in &orphans {
        write(p, b"left by a kill");
    }
    // The complete checkpoint before it is resumed from, recorded or not.
    let referenced = [
        run.join("checkpoints/step-1/adapter_model.safetensors"),
        run.join("checkpoints/step-1/manifest.json"),
        run.join("metrics.csv"),
    ];
    for p in &referenced {
        write(p, b"complete");
    }

    let removed = sweep_orphans(&home, t.state.store.blocking().as_ref()).unwrap();
    let mut want = vec![
        files.join(".upload-cut.tmp"),
        files.join("file-validating33mb"),
        files.join(&deleted),
        home.join("jobs/ftjob-neverrecorded"),
        run.join("checkpoints/step-2.tmp"),
        run.join("adapter_model.safetensors.tmp"),
    ];
    want.sort();
    let mut got = removed.clone();
    got.sort();
    assert_eq!(got, want);
    for p in &want {
        assert!(!p.exists(), "{} is still there", p.display());
    }
    for p in &referenced {
        assert_eq!(fs::read(p).unwrap(), b"complete", "{}", p.display());
    }
    assert_eq!(fs::read(files.join(&kept)).unwrap(), kept_bytes);
    // The kept file still serves, and its job is still there.
    let c = t
        .call(Method::GET, &format!("/v1/files/{kept}/content"))
        .await;
    assert_eq!(c.status, 200);
    assert_eq!(c.body, kept_bytes);
    assert_eq!(
        t.get(&format!("/v1/fine_tuning/jobs/{job}")).await.status,
        200
    );
    // A second start finds nothing to do.
    let again = sweep_orphans(&home, t.state.store.blocking().as_ref()).unwrap();
    assert!(again.is_empty(), "{again:?}");
}
