//! The real trainer (hone-train over a tiny random model written here)
//! behind the HTTP API: a full job to `succeeded`, cancel, pause/resume,
//! queue positions, and a shutdown drain followed by a restart.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::Method;
use hone_model::ops::BaseWeights;
use hone_model::registry::{ModelSource, ResolvedModel};
use hone_serve::{AppState, BaseModels, Engines, HoneTrainer, ServeConfig, TrainerOptions};
use serde_json::{json, Value};

use crate::common::TestApp;

pub const TINY: &str = "tiny";

/// A tiny random model on disk, and the engines that train it.
pub struct TinyModel {
    pub dir: tempfile::TempDir,
    pub models: Arc<BaseModels>,
}

impl TinyModel {
    pub fn new() -> Self {
        Self::with_spec(hone_model::testing::TinySpec::default())
    }

    pub fn with_spec(spec: hone_model::testing::TinySpec) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (gguf, _) = hone_model::testing::write_tiny_model(dir.path(), &spec).unwrap();
        let models = BaseModels::new(vec![ResolvedModel {
            id: TINY.into(),
            source: ModelSource::Gguf(gguf),
        }])
        .unwrap();
        TinyModel {
            dir,
            models: Arc::new(models),
        }
    }

    pub fn engines(&self, options: TrainerOptions) -> Engines {
        let mut e = Engines::with_base_models(Vec::<String>::new());
        e.catalog = self.models.clone();
        e.training(Arc::new(HoneTrainer::new(self.models.clone(), options)))
    }

    pub fn gguf(&self) -> std::path::PathBuf {
        self.dir.path().join("tiny.gguf")
    }
}

fn app(tiny: &TinyModel, edit: impl FnOnce(&mut ServeConfig)) -> TestApp {
    TestApp::with_engines(tiny.engines(TrainerOptions::default()), edit)
}

pub fn chats(n: usize, words: usize) -> String {
    (0..n)
        .map(|i| {
            let answer = vec![format!("reply{i}"); words].join(" ");
            json!({"messages": [
                {"role": "user", "content": format!("question number {i}?")},
                {"role": "assistant", "content": answer},
            ]})
            .to_string()
                + "\n"
        })
        .collect()
}

async fn create(t: &TestApp, body: Value) -> String {
    let r = t.post_json("/v1/fine_tuning/jobs", body).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["id"].as_str().unwrap().to_string()
}

async fn job(t: &TestApp, id: &str) -> Value {
    t.get(&format!("/v1/fine_tuning/jobs/{id}")).await.json()
}

async fn wait_for(t: &TestApp, id: &str, want: &str, secs: u64) -> Value {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        let j = job(t, id).await;
        if j["status"] == want {
            return j;
        }
        if Instant::now() > end {
            panic!("job never reached {want}: {j}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Events oldest first.
async fn events(t: &TestApp, id: &str) -> Vec<Value> {
    let v = t
        .get(&format!("/v1/fine_tuning/jobs/{id}/events?limit=1000"))
        .await
        .json();
    let mut e = v["data"].as_array().unwrap().clone();
    e.reverse();
    e
}

fn messages(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["message"].as_str().unwrap().to_string())
        .collect()
}

fn metric_steps(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .filter(|e| e["type"] == "metrics")
        .map(|e| e["data"]["step"].as_u64().unwrap())
        .collect()
}

/// Waits until the job has logged at least `n` metrics events.
async fn wait_steps(t: &TestApp, id: &str, n: usize) {
    let end = Instant::now() + Duration::from_secs(120);
    while metric_steps(&events(t, id).await).len() < n {
        assert!(Instant::now() < end, "no progress: {:?}", job(t, id).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `POST /v1/fine_tuning/jobs/{id}/{action}` (cancel, pause, resume), as JSON.
async fn job_action(t: &TestApp, id: &str, action: &str) -> Value {
    t.call(Method::POST, &format!("/v1/fine_tuning/jobs/{id}/{action}"))
        .await
        .json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_job_succeeds_with_metrics_checkpoints_result_file_and_models() {
    let tiny = TinyModel::new();
    let t = app(&tiny, |_| {});
    let train = t.upload_jsonl(&chats(12, 3)).await;
    let valid = t.upload_jsonl(&chats(3, 3)).await;
    let id = create(
        &t,
        json!({"model": TINY, "training_file": train, "validation_file": valid, "suffix": "house",
               "seed": 3, "hyperparameters": {"n_epochs": 2, "batch_size": 4}}),
    )
    .await;
    let j = wait_for(&t, &id, "succeeded", 120).await;
    let model = j["fine_tuned_model"].as_str().unwrap().to_string();
    assert!(model.starts_with("ft:tiny:hone:house:"), "{model}");
    assert!(j["trained_tokens"].as_u64().unwrap() > 0, "{j}");
    assert_eq!(j["hyperparameters"]["n_epochs"], 2);
    assert_eq!(j["hyperparameters"]["batch_size"], 4);
    assert!(j["hyperparameters"]["learning_rate_multiplier"].is_number());
    assert!(j["estimated_finish"].is_null() && j["finished_at"].is_number());

    // Events: the reference's messages in order, one metrics event per step,
    // the validation loss at each epoch end.
    let ev = events(&t, &id).await;
    let msgs = messages(&ev);
    let pos = |m: &str| {
        msgs.iter()
            .position(|x| x.starts_with(m))
            .unwrap_or_else(|| panic!("no '{m}' in {msgs:#?}"))
    };
    assert!(pos("Created fine-tuning job") < pos("Validating training file"));
    assert!(pos("Files validated") < pos("Fine-tuning job started"));
    assert!(pos("Fine-tuning job started") < pos("Step 1/6: training loss="));
    assert!(pos("Step 6/6") < pos("New fine-tuned model created: ft:tiny"));
    assert_eq!(msgs.last().unwrap(), "The job has successfully completed");
    assert_eq!(metric_steps(&ev), vec![1, 2, 3, 4, 5, 6]);
    let m3 = ev
        .iter()
        .find(|e| e["type"] == "metrics" && e["data"]["step"] == 3)
        .unwrap();
    assert!(m3["data"]["valid_loss"].is_number(), "{m3}");
    assert!(m3["data"]["train_mean_token_accuracy"].is_number(), "{m3}");
    assert_eq!(m3["data"]["total_steps"], 6);

    // One checkpoint per epoch, each a model with its adapter kept.
    let ck = t
        .get(&format!("/v1/fine_tuning/jobs/{id}/checkpoints"))
        .await
        .json();
    let steps: Vec<u64> = ck["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["step_number"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, vec![6, 3], "newest first: {ck}");
    assert_eq!(
        ck["data"][1]["fine_tuned_model_checkpoint"],
        format!("{model}:ckpt-step-3")
    );
    assert!(ck["data"][1]["metrics"]["valid_loss"].is_number(), "{ck}");
    for name in [model.clone(), format!("{model}:ckpt-step-3")] {
        assert_eq!(t.get(&format!("/v1/models/{name}")).await.status, 200);
        let rec = {
            let name = name.clone();
            t.state
                .store
                .run(move |s| s.get_model(&hone_serve::store::Scope::All, &name))
                .await
                .unwrap()
        };
        let mut m = hone_model::load_model(&tiny.gguf(), hone_model::WeightPath::F32).unwrap();
        hone_model::load_peft_adapter(&mut m, &rec.adapter_path)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let listed = t.get("/v1/models").await.json().to_string();
    assert!(listed.contains(&format!("{model}:ckpt-step-6")), "{listed}");

    // The result file: the metrics CSV with OpenAI's columns.
    let rf = j["result_files"][0].as_str().unwrap();
    let f = t.get(&format!("/v1/files/{rf}")).await.json();
    assert_eq!(f["purpose"], "fine-tune-results");
    assert_eq!(f["filename"], "step_metrics.csv");
    let csv = String::from_utf8(t.get(&format!("/v1/files/{rf}/content")).await.body).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy"
    );
    assert_eq!(lines.len(), 7, "{csv}");
    assert_eq!(f["bytes"], csv.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_running_job_within_seconds_and_the_next_job_starts() {
    let tiny = TinyModel::new();
    let t = app(&tiny, |_| {});
    let train = t.upload_jsonl(&chats(40, 20)).await;
    let long = json!({"model": TINY, "training_file": train,
                      "hyperparameters": {"n_epochs": 50, "batch_size": 1}});
    let a = create(&t, long.clone()).await;
    let b = create(&t, long).await;
    wait_steps(&t, &a, 2).await;
    // b waits behind a, and is told where it stands.
    let b_msgs = messages(&events(&t, &b).await);
    assert!(
        b_msgs
            .iter()
            .any(|m| m.starts_with("Job queued: position 1 in the queue (1 job(s) training")),
        "{b_msgs:#?}"
    );
    assert_eq!(job(&t, &b).await["status"], "queued");
    let started = Instant::now();
    let c = job_action(&t, &a, "cancel").await;
    assert_eq!(c["status"], "cancelled", "{c}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "cancel took {:?}",
        started.elapsed()
    );
    assert!(c["fine_tuned_model"].is_null());
    wait_for(&t, &b, "running", 30).await;
    let c = job_action(&t, &b, "cancel").await;
    assert_eq!(c["status"], "cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_checkpoints_and_resume_continues_from_that_step() {
    let tiny = TinyModel::new();
    let t = app(&tiny, |_| {});
    let train = t.upload_jsonl(&chats(40, 20)).await;
    let id = create(
        &t,
        json!({"model": TINY, "training_file": train,
               "hyperparameters": {"n_epochs": 50, "batch_size": 1}}),
    )
    .await;
    wait_steps(&t, &id, 3).await;
    let p = job_action(&t, &id, "pause").await;
    assert_eq!(p["status"], "paused", "{p}");
    let paused_at = *metric_steps(&events(&t, &id).await).last().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        *metric_steps(&events(&t, &id).await).last().unwrap(),
        paused_at,
        "a paused job does not train"
    );
    let r = job_action(&t, &id, "resume").await;
    assert_eq!(r["status"], "queued");
    wait_steps(&t, &id, paused_at as usize + 2).await;
    let ev = events(&t, &id).await;
    let msgs = messages(&ev);
    let mode = BaseWeights::Auto.resolved().as_str();
    assert!(
        msgs.contains(&format!(
            "Resuming from the checkpoint at step {paused_at} of 2000 ({mode} base weights)"
        )),
        "{msgs:#?}"
    );
    let steps = metric_steps(&ev);
    assert_eq!(
        steps[paused_at as usize],
        paused_at + 1,
        "training continues at the step after the pause: {steps:?}"
    );
    let c = job_action(&t, &id, "cancel").await;
    assert_eq!(c["status"], "cancelled");
}

/// A shutdown parks the running job in `queued` after a checkpoint; a
/// server started again on the same home finishes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_a_running_job_and_a_restart_finishes_it() {
    let tiny = TinyModel::new();
    let t = app(&tiny, |_| {});
    let train = t.upload_jsonl(&chats(40, 20)).await;
    let id = create(
        &t,
        json!({"model": TINY, "training_file": train,
               "hyperparameters": {"n_epochs": 3, "batch_size": 1}}),
    )
    .await;
    wait_steps(&t, &id, 3).await;
    tokio::time::timeout(Duration::from_secs(30), t.state.worker.shutdown())
        .await
        .expect("drained in time");
    let j = job(&t, &id).await;
    assert_eq!(j["status"], "queued", "{j}");
    let msgs = messages(&events(&t, &id).await);
    assert!(
        msgs.last()
            .unwrap()
            .starts_with("The server is shutting down"),
        "{msgs:#?}"
    );
    let home: &Path = t.dir.path();
    let config = ServeConfig::new(home);
    let st = AppState::open(config, tiny.engines(TrainerOptions::default())).unwrap();
    let t2 = TestApp {
        app: hone_serve::router(st.clone()),
        state: st,
        dir: tempfile::tempdir().unwrap(),
    };
    let j = wait_for(&t2, &id, "succeeded", 300).await;
    let msgs = messages(&events(&t2, &id).await);
    assert!(
        msgs.iter()
            .any(|m| m.starts_with("Resuming from the checkpoint at step")),
        "{msgs:#?}"
    );
    let mut steps = metric_steps(&events(&t2, &id).await);
    steps.sort_unstable();
    assert_eq!(
        steps,
        (1..=120).collect::<Vec<u64>>(),
        "each step has one metrics event, none repeated by the resumed run"
    );
    assert!(j["fine_tuned_model"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dpo_job_trains_to_succeeded() {
    let tiny = TinyModel::new();
    let t = app(&tiny, |_| {});
    let lines: String = (0..10)
        .map(|i| {
            json!({"input": {"messages": [{"role": "user", "content": format!("q{i}")}]},
                   "preferred_output": [{"role": "assistant", "content": "good answer"}],
                   "non_preferred_output": [{"role": "assistant", "content": "bad answer"}]})
            .to_string()
                + "\n"
        })
        .collect();
    let f = t.upload_jsonl(&lines).await;
    let id = create(
        &t,
        json!({"model": TINY, "training_file": f, "method": {"type": "dpo",
               "dpo": {"hyperparameters": {"n_epochs": 1, "batch_size": 5, "beta": 0.2}}}}),
    )
    .await;
    let j = wait_for(&t, &id, "succeeded", 120).await;
    assert_eq!(j["method"]["type"], "dpo");
    assert_eq!(j["hyperparameters"]["beta"], 0.2, "{j}");
    assert_eq!(metric_steps(&events(&t, &id).await), vec![1, 2]);
    assert!(j["fine_tuned_model"]
        .as_str()
        .unwrap()
        .starts_with("ft:tiny:"));
}

/// Regression (issue #14): a job's "auto" hyperparameters were resolved at
/// validation by hone-data's rule alone (no model size, no token counts) and
/// then trained as if the user had set them, so the API picked another batch
/// size than `hone train` for the same file. Now validation asks the trainer,
/// which resolves with hone-train's one job builder, as `hone train` does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_auto_hyperparameters_are_the_ones_hone_train_resolves() {
    // A context long enough for the examples below not to be cut.
    let tiny = TinyModel::with_spec(hone_model::testing::TinySpec {
        context: 2048,
        ..Default::default()
    });
    let t = app(&tiny, |_| {});
    // Enough long chats that the token budget halves the batch size, which
    // the old rule (without token counts) did not.
    let content = chats(1600, 120);
    let train = t.upload_jsonl(&content).await;
    let id = create(
        &t,
        json!({"model": TINY, "training_file": train, "seed": 5}),
    )
    .await;
    let shown = wait_for_resolved(&t, &id).await;
    let _ = job_action(&t, &id, "cancel").await;

    // What `hone train --data FILE --model tiny.gguf` resolves (its flags'
    // defaults are hone-train's `JobOptions::new`, tested in hone-cli).
    let path = tiny.dir.path().join("same.jsonl");
    std::fs::write(&path, &content).unwrap();
    let open = hone_model::OpenModel::open_path(&tiny.gguf()).unwrap();
    let data = hone_train::TrainData::read(hone_data::Method::Sft, &path, None).unwrap();
    let opts = hone_train::JobOptions::new(hone_data::Method::Sft);
    let base = hone_train::BaseModel {
        id: &open.id,
        config: &open.config,
        tokenizer: &open.tokenizer,
    };
    let cli = hone_train::TrainJob::build(&opts, data, base)
        .unwrap()
        .hyperparameters;
    let without_counts = hone_data::hparams::auto_batch_size(1600, None, None);
    assert!(
        cli.batch_size < without_counts,
        "the file must exercise the token budget: {cli:?}"
    );
    assert_eq!(shown["n_epochs"], cli.n_epochs, "{shown}");
    assert_eq!(shown["batch_size"], cli.batch_size, "{shown}");
    assert_eq!(
        shown["learning_rate_multiplier"], cli.learning_rate_multiplier,
        "{shown}"
    );
}

/// The job's hyperparameters once they are no longer "auto".
async fn wait_for_resolved(t: &TestApp, id: &str) -> Value {
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        let j = job(t, id).await;
        if j["hyperparameters"]["batch_size"].is_number() {
            return j["hyperparameters"].clone();
        }
        assert!(j["error"].is_null(), "{j}");
        assert!(Instant::now() < end, "never resolved: {j}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A job trains with the server's `--base-weights` mode, records it in its
/// checkpoints and summary, and a restarted server whose mode is `auto`
/// resumes it in the recorded mode (here the one `auto` would not pick on
/// this CPU, so keeping it is visible).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_records_its_base_weight_mode_and_a_restart_resumes_in_it() {
    let here = BaseWeights::Auto.resolved();
    let other = if here == BaseWeights::Bf16 {
        BaseWeights::F32
    } else {
        BaseWeights::Bf16
    };
    let tiny = TinyModel::new();
    let forced = TrainerOptions {
        base_weights: other,
        ..TrainerOptions::default()
    };
    let t = TestApp::with_engines(tiny.engines(forced), |_| {});
    let train = t.upload_jsonl(&chats(10, 20)).await;
    let id = create(
        &t,
        json!({"model": TINY, "training_file": train,
               "hyperparameters": {"n_epochs": 2, "batch_size": 1}}),
    )
    .await;
    wait_steps(&t, &id, 2).await;
    let started = format!(", {} base weights", other.as_str());
    assert!(
        messages(&events(&t, &id).await)
            .iter()
            .any(|m| m.starts_with("Training ") && m.ends_with(&started)),
        "the start message names the mode"
    );
    tokio::time::timeout(Duration::from_secs(30), t.state.worker.shutdown())
        .await
        .expect("drained in time");
    let home: &Path = t.dir.path();
    let st = AppState::open(
        ServeConfig::new(home),
        tiny.engines(TrainerOptions::default()),
    )
    .unwrap();
    let t2 = TestApp {
        app: hone_serve::router(st.clone()),
        state: st,
        dir: tempfile::tempdir().unwrap(),
    };
    wait_for(&t2, &id, "succeeded", 300).await;
    let resumed = format!("({} base weights)", other.as_str());
    assert!(
        messages(&events(&t2, &id).await)
            .iter()
            .any(|m| m.starts_with("Resuming from the checkpoint") && m.ends_with(&resumed)),
        "the resume keeps the recorded mode"
    );
    let summary = home.join("jobs").join(&id).join("run/summary.json");
    let summary: Value = serde_json::from_slice(&std::fs::read(summary).unwrap()).unwrap();
    assert_eq!(summary["config"]["base_weights"], other.as_str());
}

/// `hone serve --gradient-checkpointing`: a job recomputes each layer in the backward,
/// which changes memory, not the gradients, so the same job (same seed) logs the same
/// losses with it as without, and its run records the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_with_gradient_checkpointing_trains_as_one_without() {
    let tiny = TinyModel::new();
    let mut losses = Vec::new();
    for on in [false, true] {
        let opts = TrainerOptions {
            gradient_checkpointing: on,
            ..TrainerOptions::default()
        };
        let t = TestApp::with_engines(tiny.engines(opts), |_| {});
        let train = t.upload_jsonl(&chats(10, 20)).await;
        let id = create(
            &t,
            json!({"model": TINY, "training_file": train, "seed": 7,
                   "hyperparameters": {"n_epochs": 1, "batch_size": 5}}),
        )
        .await;
        wait_for(&t, &id, "succeeded", 120).await;
        let summary = t.dir.path().join("jobs").join(&id).join("run/summary.json");
        let summary: Value = serde_json::from_slice(&std::fs::read(summary).unwrap()).unwrap();
        assert_eq!(summary["config"]["gradient_checkpointing"], on);
        losses.push(train_losses(&t, &id).await);
    }
    assert_eq!(losses[0].len(), 2, "{losses:?}");
    for (a, b) in losses[0].iter().zip(&losses[1]) {
        assert!((a - b).abs() < 1e-5, "{losses:?}");
    }
}

/// Step-1.. training losses from a job's metrics events.
async fn train_losses(t: &TestApp, id: &str) -> Vec<f64> {
    events(t, id)
        .await
        .iter()
        .filter(|e| e["type"] == "metrics")
        .map(|e| e["data"]["train_loss"].as_f64().unwrap())
        .collect()
}

/// Issue #18: a job whose `model` is a fine-tuned model continues that model's
/// adapter, as on OpenAI: a second SFT round starts where the first ended (its first
/// loss is near the parent's last, far below the parent's first), and DPO on top of
/// the SFT result starts at ln 2 (its reference is the parent model). The new models
/// keep the root base in their names and records, so chat and export find it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_on_a_fine_tuned_model_continues_its_adapter() {
    let tiny = TinyModel::new();
    let t = app(&tiny, |_| {});
    let train = t.upload_jsonl(&chats(12, 3)).await;
    let hp = json!({"n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 10});
    let parent_id = create(
        &t,
        json!({"model": TINY, "training_file": train, "seed": 3, "hyperparameters": hp}),
    )
    .await;
    let parent = wait_for(&t, &parent_id, "succeeded", 120).await;
    let parent_model = parent["fine_tuned_model"].as_str().unwrap().to_string();
    let p = train_losses(&t, &parent_id).await;
    let (p_first, p_last) = (p[0], *p.last().unwrap());
    assert!(p_last < 0.9 * p_first, "the parent learned: {p:?}");

    // A second SFT round on the same data, from the parent's final model.
    let child_id = create(
        &t,
        json!({"model": parent_model, "training_file": train, "seed": 3, "hyperparameters": hp}),
    )
    .await;
    let child = wait_for(&t, &child_id, "succeeded", 120).await;
    assert_eq!(child["model"], parent_model.as_str());
    let child_model = child["fine_tuned_model"].as_str().unwrap().to_string();
    assert!(child_model.starts_with("ft:tiny:hone::"), "{child_model}");
    assert_ne!(child_model, parent_model);
    let c = train_losses(&t, &child_id).await;
    assert!(
        (c[0] - p_last).abs() < (c[0] - p_first).abs(),
        "the child starts where the parent ended: parent {p:?}, child {c:?}"
    );
    let msgs = messages(&events(&t, &child_id).await);
    assert!(
        msgs.iter()
            .any(|m| m == &format!("Continuing from the adapter of {parent_model}")),
        "{msgs:#?}"
    );
    // The parent's adapter was copied into the job (what its resumes read).
    let home = t.state.config.home.clone();
    let copy = home.join("jobs").join(&child_id).join("parent");
    let rec = |name: String| {
        let store = t.state.store.clone();
        async move {
            store
                .run(move |s| s.get_model(&hone_serve::store::Scope::All, &name))
                .await
                .unwrap()
        }
    };
    let parent_rec = rec(parent_model.clone()).await;
    let weights = hone_model::lora::ADAPTER_WEIGHTS_FILE;
    assert_eq!(
        std::fs::read(copy.join(weights)).unwrap(),
        std::fs::read(parent_rec.adapter_path.join(weights)).unwrap()
    );
    for name in [child_model.clone(), format!("{child_model}:ckpt-step-3")] {
        let r = rec(name.clone()).await;
        assert_eq!(r.base, TINY, "{name}");
        let mut m = hone_model::load_model(&tiny.gguf(), hone_model::WeightPath::F32).unwrap();
        hone_model::load_peft_adapter(&mut m, &r.adapter_path).unwrap();
    }

    // DPO on top of the SFT result: the reference is the parent, so the first
    // step's loss is ln 2 although the policy starts from a trained adapter.
    let pairs = t.upload_jsonl(&crate::common::dpo_jsonl(12)).await;
    let dpo_id = create(
        &t,
        json!({"model": parent_model, "training_file": pairs, "seed": 3,
               "method": {"type": "dpo", "dpo": {"hyperparameters":
                   {"n_epochs": 1, "batch_size": 4, "beta": 0.1}}}}),
    )
    .await;
    wait_for(&t, &dpo_id, "succeeded", 120).await;
    let d = train_losses(&t, &dpo_id).await;
    assert!((d[0] - std::f64::consts::LN_2).abs() < 1e-4, "{d:?}");
}

/// `n` chats whose answers are made of `words` (each answer a different mix), for
/// runs whose validation loss must rise: train on one vocabulary, validate on another.
fn chats_of(n: usize, words: &[&str]) -> String {
    (0..n)
        .map(|i| {
            let answer: Vec<&str> = (0..2 + i % 3)
                .map(|k| words[(i + k) % words.len()])
                .collect();
            json!({"messages": [
                {"role": "user", "content": format!("q{i}")},
                {"role": "assistant", "content": answer.join(" ")},
            ]})
            .to_string()
                + "\n"
        })
        .collect()
}

/// Issue #18: an API job with "auto" epochs and a validation file stops early, as
/// `hone train` does, and its fine-tuned model is the best step's adapter. The job
/// shows the resolved epochs in `hyperparameters` (as OpenAI does) but keeps what the
/// user asked for in `requested_hyperparameters`, which the trainer reads: before,
/// the worker overwrote "auto" with the resolved number, so the trainer took the
/// epochs for the user's and never stopped early. The same epochs set by the user
/// run to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auto_epochs_job_with_a_validation_file_stops_early_on_the_best_step() {
    let tiny = TinyModel::new();
    let t = app(&tiny, |_| {});
    let train = t.upload_jsonl(&chats_of(10, &["zebra", "quartz"])).await;
    let valid = t
        .upload_jsonl(&chats_of(10, &["hello", "world", "the", "cat"]))
        .await;
    // A high rate so that the disjoint validation set's loss rises within a few epochs.
    let job_with = |hp: Value| {
        json!({"model": TINY, "training_file": train, "validation_file": valid, "seed": 5,
               "hyperparameters": hp})
    };
    let auto = create(&t, job_with(json!({"learning_rate_multiplier": 30}))).await;
    let j = wait_for(&t, &auto, "succeeded", 300).await;
    let epochs = hone_data::hparams::auto_epochs(10);
    assert_eq!(j["hyperparameters"]["n_epochs"], epochs, "resolved: {j}");
    assert_eq!(j["requested_hyperparameters"]["n_epochs"], "auto", "{j}");
    let steps_per_epoch =
        10usize.div_ceil(j["hyperparameters"]["batch_size"].as_u64().unwrap() as usize);
    let planned = epochs as usize * steps_per_epoch;
    let ev = events(&t, &auto).await;
    let ran = metric_steps(&ev).len();
    assert!(ran < planned, "stopped early: {ran} of {planned} steps");
    let msgs = messages(&ev);
    let stop = format!("Early stop at step {ran}; best step ");
    assert!(msgs.iter().any(|m| m.starts_with(&stop)), "{msgs:#?}");
    // The fine-tuned model's adapter is best/'s.
    let name = j["fine_tuned_model"].as_str().unwrap().to_string();
    let rec = t
        .state
        .store
        .run(move |s| s.get_model(&hone_serve::store::Scope::All, &name))
        .await
        .unwrap();
    let weights = hone_model::lora::ADAPTER_WEIGHTS_FILE;
    let read = |p: std::path::PathBuf| std::fs::read(p).unwrap();
    assert_eq!(
        read(rec.adapter_path.join(weights)),
        read(rec.adapter_path.join("best").join(weights))
    );

    // The same number of epochs, set by the user: every step, no early stop.
    let fixed = create(
        &t,
        job_with(json!({"learning_rate_multiplier": 30, "n_epochs": epochs})),
    )
    .await;
    let j = wait_for(&t, &fixed, "succeeded", 300).await;
    assert_eq!(j["requested_hyperparameters"]["n_epochs"], epochs, "{j}");
    let ev = events(&t, &fixed).await;
    assert_eq!(metric_steps(&ev).len(), planned);
    assert!(!messages(&ev).iter().any(|m| m.starts_with("Early stop")));
}
