//! Projects: what one key's project creates, another project cannot list,
//! read, page to, change or use; it gets the 404 a missing id gets.

use axum::body::Body;
use axum::http::{Method, Request};
use hone_serve::auth::create_key;
use serde_json::{json, Value};

use crate::common::{assert_error, multipart, sft_jsonl, Reply, TestApp, BASE};

/// An app with keys of projects `alpha` and `beta`, and an admin key.
struct Projects {
    t: TestApp,
    a: String,
    b: String,
    admin: String,
}

impl Projects {
    fn new() -> Self {
        Self::on(TestApp::new())
    }

    fn on(t: TestApp) -> Self {
        let store = t.state.store.blocking().clone();
        let key =
            |project: &str, admin: bool| create_key(store.as_ref(), project, admin).unwrap().1;
        let (a, b, admin) = (key("alpha", false), key("beta", false), key("ops", true));
        Projects { t, a, b, admin }
    }

    async fn call(&self, key: &str, method: Method, uri: &str, body: Option<Value>) -> Reply {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {key}"));
        let body = match body {
            Some(v) => {
                req = req.header("content-type", "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        self.t.send(req.body(body).unwrap()).await
    }

    async fn get(&self, key: &str, uri: &str) -> Reply {
        self.call(key, Method::GET, uri, None).await
    }

    async fn upload(&self, key: &str) -> String {
        // Ten examples: a job refuses fewer at creation.
        let data = sft_jsonl(10);
        let (ct, body) = multipart(&[
            ("purpose", None, b"fine-tune"),
            ("file", Some("train.jsonl"), data.as_bytes()),
        ]);
        let req = Request::builder()
            .method(Method::POST)
            .uri("/v1/files")
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", ct)
            .body(Body::from(body))
            .unwrap();
        let r = self.t.send(req).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        r.json()["id"].as_str().unwrap().to_string()
    }

    async fn create_job(&self, key: &str, file: &str) -> Value {
        let body = json!({"model": BASE, "training_file": file});
        let r = self
            .call(key, Method::POST, "/v1/fine_tuning/jobs", Some(body))
            .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        r.json()
    }
}

fn ids_of(list: &Value) -> Vec<String> {
    list["data"]
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|o| o["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn key_b_cannot_list_or_read_key_as_files() {
    let p = Projects::new();
    let fa = p.upload(&p.a).await;
    let fb = p.upload(&p.b).await;
    assert_eq!(
        ids_of(&p.get(&p.a, "/v1/files").await.json()),
        [fa.as_str()]
    );
    assert_eq!(
        ids_of(&p.get(&p.b, "/v1/files").await.json()),
        [fb.as_str()]
    );
    let purpose = p.get(&p.b, "/v1/files?purpose=fine-tune").await.json();
    assert_eq!(ids_of(&purpose), [fb.as_str()]);
    for uri in [format!("/v1/files/{fa}"), format!("/v1/files/{fa}/content")] {
        assert_error(&p.get(&p.b, &uri).await, 404, Some("not_found"));
    }
    // The 404 for A's file is the 404 for a file that never existed.
    let theirs = p.get(&p.b, &format!("/v1/files/{fa}")).await.json();
    let none = p.get(&p.b, "/v1/files/file-nope").await.json();
    assert_eq!(
        theirs["error"]["message"]
            .as_str()
            .unwrap()
            .replace(&fa, "X"),
        none["error"]["message"]
            .as_str()
            .unwrap()
            .replace("file-nope", "X")
    );
    assert_eq!(p.get(&p.a, &format!("/v1/files/{fa}")).await.status, 200);
    assert_eq!(
        p.get(&p.admin, &format!("/v1/files/{fa}")).await.status,
        200
    );
    let all = ids_of(&p.get(&p.admin, "/v1/files").await.json());
    assert!(all.contains(&fa) && all.contains(&fb), "{all:?}");
}

#[tokio::test]
async fn key_b_cannot_delete_key_as_files() {
    let p = Projects::new();
    let fa = p.upload(&p.a).await;
    let del = p
        .call(&p.b, Method::DELETE, &format!("/v1/files/{fa}"), None)
        .await;
    assert_error(&del, 404, Some("not_found"));
    let content = p.get(&p.a, &format!("/v1/files/{fa}/content")).await;
    assert_eq!(content.body, sft_jsonl(10).as_bytes(), "still there for A");
}

#[tokio::test]
async fn a_cursor_naming_another_projects_object_is_a_bad_cursor() {
    let p = Projects::new();
    let fa = p.upload(&p.a).await;
    let _fb = p.upload(&p.b).await;
    let job_a = p.create_job(&p.a, &fa).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    for uri in [
        format!("/v1/files?after={fa}"),
        format!("/v1/fine_tuning/jobs?after={job_a}"),
    ] {
        let theirs = p.get(&p.b, &uri).await;
        assert_error(&theirs, 400, None);
        // As for an id that does not exist at all.
        let bogus = p
            .get(&p.b, &uri.replace(&fa, "file-x").replace(&job_a, "ftjob-x"))
            .await;
        assert_eq!(
            theirs.json()["error"]["code"],
            bogus.json()["error"]["code"]
        );
        assert_eq!(p.get(&p.a, &uri).await.status, 200, "{uri}");
    }
    // An event of A's job is no cursor into B's own job's events.
    let fb = p.upload(&p.b).await;
    let job_b = p.create_job(&p.b, &fb).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let ev_a = ids_of(
        &p.get(&p.a, &format!("/v1/fine_tuning/jobs/{job_a}/events"))
            .await
            .json(),
    );
    let uri = format!("/v1/fine_tuning/jobs/{job_b}/events?after={}", ev_a[0]);
    assert_error(&p.get(&p.b, &uri).await, 400, None);
}

#[tokio::test]
async fn key_b_cannot_see_or_control_key_as_jobs() {
    let p = Projects::new();
    let fa = p.upload(&p.a).await;
    let job = p.create_job(&p.a, &fa).await;
    assert_eq!(job["organization_id"], "alpha");
    let id = job["id"].as_str().unwrap();
    let listed = ids_of(&p.get(&p.b, "/v1/fine_tuning/jobs").await.json());
    assert!(listed.is_empty(), "{listed:?}");
    for uri in [
        format!("/v1/fine_tuning/jobs/{id}"),
        format!("/v1/fine_tuning/jobs/{id}/events"),
        format!("/v1/fine_tuning/jobs/{id}/checkpoints"),
    ] {
        assert_error(&p.get(&p.b, &uri).await, 404, Some("not_found"));
    }
    for verb in ["cancel", "pause", "resume"] {
        let uri = format!("/v1/fine_tuning/jobs/{id}/{verb}");
        let r = p.call(&p.b, Method::POST, &uri, None).await;
        assert_error(&r, 404, Some("not_found"));
    }
    let own = p.get(&p.a, &format!("/v1/fine_tuning/jobs/{id}")).await;
    assert_ne!(own.json()["status"], "cancelled", "B's cancel did nothing");
    assert_eq!(
        ids_of(&p.get(&p.a, "/v1/fine_tuning/jobs").await.json()),
        [id.to_string()]
    );
    let all = ids_of(&p.get(&p.admin, "/v1/fine_tuning/jobs").await.json());
    assert_eq!(all, [id.to_string()]);
}

#[tokio::test]
async fn key_b_cannot_train_on_key_as_file() {
    let p = Projects::new();
    let fa = p.upload(&p.a).await;
    let body = json!({"model": BASE, "training_file": fa});
    let r = p
        .call(&p.b, Method::POST, "/v1/fine_tuning/jobs", Some(body))
        .await;
    let v = assert_error(&r, 400, None);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("does not exist"),
        "{v}"
    );
}

#[tokio::test]
async fn key_b_cannot_list_read_or_delete_key_as_ft_models() {
    let p = Projects::new();
    let (fin, ckpt) = crate::models::fine_tuned_model_of(&p.t, "alpha").await;
    assert!(fin.contains(":alpha:"), "{fin}");
    let mine = p.get(&p.a, "/v1/models").await.json();
    let ids = ids_of(&mine);
    assert!(ids.contains(&fin) && ids.contains(&ckpt), "{ids:?}");
    let owned: Vec<&Value> = mine["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["id"] == fin.as_str() || m["id"] == ckpt.as_str())
        .map(|m| &m["owned_by"])
        .collect();
    assert_eq!(owned, [&json!("alpha"), &json!("alpha")]);
    assert_eq!(ids_of(&p.get(&p.b, "/v1/models").await.json()), [BASE]);
    for m in [&fin, &ckpt] {
        let uri = format!("/v1/models/{m}");
        assert_error(&p.get(&p.b, &uri).await, 404, Some("model_not_found"));
        let del = p.call(&p.b, Method::DELETE, &uri, None).await;
        assert_error(&del, 404, Some("model_not_found"));
        assert_eq!(p.get(&p.a, &uri).await.status, 200, "still there for A");
    }
    let all = ids_of(&p.get(&p.admin, "/v1/models").await.json());
    assert!(all.contains(&fin), "{all:?}");
}

#[tokio::test]
async fn key_b_cannot_chat_with_key_as_ft_model() {
    let p = Projects::new();
    let (fin, ckpt) = crate::models::fine_tuned_model_of(&p.t, "alpha").await;
    for m in [&fin, &ckpt] {
        let body = json!({"model": m, "messages": [{"role": "user", "content": "hi"}]});
        let theirs = p
            .call(
                &p.b,
                Method::POST,
                "/v1/chat/completions",
                Some(body.clone()),
            )
            .await;
        assert_error(&theirs, 404, Some("model_not_found"));
        // A's own request gets past the model lookup: this test app has
        // no chat engine, which is the next thing checked.
        let own = p
            .call(&p.a, Method::POST, "/v1/chat/completions", Some(body))
            .await;
        assert_error(&own, 501, None);
    }
}

#[tokio::test]
async fn a_revoked_or_unknown_key_is_refused() {
    let p = Projects::new();
    assert_error(&p.get("sk-hone-nope", "/v1/files").await, 401, None);
    assert_error(&p.t.get("/v1/files").await, 401, None);
    let store = p.t.state.store.blocking().clone();
    let id = store
        .list_keys(Some("alpha"))
        .unwrap()
        .into_iter()
        .next()
        .unwrap()
        .id;
    assert_eq!(p.get(&p.a, "/v1/files").await.status, 200);
    let revoked = store.revoke_key(&id).unwrap();
    assert!(revoked.revoked_at.is_some());
    assert_error(&p.get(&p.a, "/v1/files").await, 401, None);
    assert_eq!(p.get(&p.b, "/v1/files").await.status, 200);
}

/// Jobs belong to the project, not to the key that created them (as at
/// OpenAI): revoking that key refuses the key at once, and the project's
/// job goes on, visible to and cancellable by the project's other keys.
#[tokio::test]
async fn revoking_a_key_keeps_its_projects_jobs() {
    let p = Projects::new();
    let store = p.t.state.store.blocking().clone();
    let (id, other) = create_key(store.as_ref(), "alpha", false).unwrap();
    let file = p.upload(&other).await;
    let job = p.create_job(&other, &file).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    store.revoke_key(&id.id).unwrap();
    let uri = format!("/v1/fine_tuning/jobs/{job}");
    assert_error(&p.get(&other, &uri).await, 401, Some("invalid_api_key"));
    let j = p.get(&p.a, &uri).await.json();
    assert!(
        ["validating_files", "queued"].contains(&j["status"].as_str().unwrap()),
        "{j}"
    );
    let c = p
        .call(&p.a, Method::POST, &format!("{uri}/cancel"), None)
        .await
        .json();
    assert_eq!(c["status"], "cancelled");
}

#[tokio::test]
async fn revoking_every_key_locks_the_server_instead_of_opening_it() {
    let p = Projects::new();
    let store = p.t.state.store.blocking().clone();
    for k in store.list_keys(None).unwrap() {
        store.revoke_key(&k.id).unwrap();
    }
    assert_error(&p.t.get("/v1/files").await, 401, None);
    assert_error(&p.get(&p.admin, "/v1/files").await, 401, None);
}

#[tokio::test]
async fn api_key_flag_keys_act_in_the_default_project() {
    let p = Projects::on(TestApp::with(|c| c.api_keys = vec!["sk-flag".into()]));
    let f = p.upload("sk-flag").await;
    let job = p.create_job("sk-flag", &f).await;
    assert_eq!(job["organization_id"], "hone");
    assert!(ids_of(&p.get(&p.b, "/v1/files").await.json()).is_empty());
    assert_eq!(ids_of(&p.get("sk-flag", "/v1/files").await.json()), [f]);
}

#[tokio::test]
async fn stored_keys_turn_auth_on_without_any_flag() {
    let t = TestApp::new();
    assert_eq!(t.get("/v1/files").await.status, 200, "no key: auth off");
    let p = Projects::on(t);
    assert_error(&p.t.get("/v1/files").await, 401, None);
}

/// A real (tiny) training run by project `alpha`: its model name, owner
/// and result file are alpha's, and beta sees none of them.
#[tokio::test]
async fn a_trained_models_name_owner_and_result_file_are_its_projects() {
    use hone_serve::TrainerOptions;
    let tiny = crate::training::TinyModel::new();
    let p = Projects::on(TestApp::with_engines(
        tiny.engines(TrainerOptions::default()),
        |_| {},
    ));
    let data = crate::training::chats(12, 3);
    let (ct, body) = multipart(&[
        ("purpose", None, b"fine-tune"),
        ("file", Some("train.jsonl"), data.as_bytes()),
    ]);
    let req = Request::builder()
        .method(Method::POST)
        .uri("/v1/files")
        .header("authorization", format!("Bearer {}", p.a))
        .header("content-type", ct)
        .body(Body::from(body))
        .unwrap();
    let file = p.t.send(req).await.json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let body = json!({"model": "tiny", "training_file": file, "suffix": "s",
                      "hyperparameters": {"n_epochs": 1, "batch_size": 4}});
    let r = p
        .call(&p.a, Method::POST, "/v1/fine_tuning/jobs", Some(body))
        .await;
    let id = r.json()["id"].as_str().unwrap().to_string();
    let uri = format!("/v1/fine_tuning/jobs/{id}");
    let mut job = p.get(&p.a, &uri).await.json();
    for _ in 0..6000 {
        if job["status"] == "succeeded" || job["status"] == "failed" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        job = p.get(&p.a, &uri).await.json();
    }
    assert_eq!(job["status"], "succeeded", "{job}");
    let model = job["fine_tuned_model"].as_str().unwrap();
    assert!(model.starts_with("ft:tiny:alpha:s:"), "{model}");
    let m = p.get(&p.a, &format!("/v1/models/{model}")).await.json();
    assert_eq!(m["owned_by"], "alpha");
    let result = job["result_files"][0].as_str().unwrap();
    assert_eq!(
        p.get(&p.a, &format!("/v1/files/{result}")).await.status,
        200
    );
    let theirs = p.get(&p.b, &format!("/v1/files/{result}")).await;
    assert_error(&theirs, 404, Some("not_found"));
    let theirs = p.get(&p.b, &format!("/v1/models/{model}")).await;
    assert_error(&theirs, 404, Some("model_not_found"));
    let ckpts = p.get(&p.b, &format!("{uri}/checkpoints")).await;
    assert_error(&ckpts, 404, Some("not_found"));
    // Continuing a fine-tuned model (issue #18) is for its own project only: beta
    // gets the 404 an unknown model gets, for the model and its checkpoints alike.
    let theirs_file = p.upload(&p.b).await;
    let unknown = format!("{}zzzzzzzz", &model[..model.len() - 8]);
    for m in [model.to_string(), format!("{model}:ckpt-step-3"), unknown] {
        let body = json!({"model": m, "training_file": theirs_file});
        let r = p
            .call(&p.b, Method::POST, "/v1/fine_tuning/jobs", Some(body))
            .await;
        let e = assert_error(&r, 404, Some("model_not_found"));
        assert_eq!(e["error"]["param"], "model", "{e}");
    }
    let body = json!({"model": model, "training_file": file});
    let r = p
        .call(&p.a, Method::POST, "/v1/fine_tuning/jobs", Some(body))
        .await;
    assert_eq!(r.status, 200, "{}", r.json());
    assert_eq!(r.json()["model"], model);
}
