//! `POST /v1/chat/completions`, over a tiny random model (the real
//! [`LocalChat`] engine) and over fake backends for admission and
//! disconnects. Fine-tuned models come from real jobs, whose scripted
//! trainer writes real PEFT adapters onto the tiny base.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::http::Request;
use hone_model::candle_core::quantized::GgmlDType;
use hone_model::generate::{FinishReason, Generation, GenerationParams};
use hone_model::registry::{ModelSource, ResolvedModel};
use hone_model::testing::{tiny_weights, write_tiny_gguf, TinySpec};
use hone_model::{ChatEngine, LoraConfig, LoraParams, WeightPath};
use hone_serve::chat::{ChatBackend, ChatError, ChatTarget, LocalChat, LocalChatOptions};
use hone_serve::{BaseModels, Engines, JobContext, TrainingEngine, TrainingOutcome};
use hone_text::{ChatMessage, Role};
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::common::{assert_error, Reply, TestApp, BASE};

/// A tiny random model on disk, and the app serving it as `BASE`.
pub(crate) struct ChatApp {
    pub(crate) t: TestApp,
    chat: Arc<LocalChat>,
    _model_dir: tempfile::TempDir,
}

/// The tiny random model with its (tied) embeddings scaled down. At full
/// scale the residual stream is dominated by the input embedding, so the
/// model repeats its last token ("\n") whatever the seed or adapter; scaled
/// down, the layers decide, and answers vary with both.
fn tiny_gguf() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let spec = TinySpec::default();
    let mut w = tiny_weights(&spec).unwrap();
    for (name, t) in w.iter_mut() {
        if name.contains("embed_tokens") {
            *t = t.affine(0.02, 0.0).unwrap();
        }
    }
    let gguf = dir.path().join("tiny.gguf");
    write_tiny_gguf(&gguf, &spec, &w, GgmlDType::F32).unwrap();
    (dir, gguf)
}

/// A catalog with one base model, `BASE`, whose weights are `gguf`.
fn tiny_catalog(gguf: &Path) -> BaseModels {
    BaseModels::new(vec![ResolvedModel {
        id: BASE.into(),
        source: ModelSource::Gguf(gguf.to_path_buf()),
    }])
    .unwrap()
}

/// Chat over `tiny_catalog`, which loads `BASE` on its first request.
fn tiny_chat(gguf: &Path, max_adapters: usize) -> Arc<LocalChat> {
    let opts = LocalChatOptions {
        max_adapters,
        weights: WeightPath::Packed,
    };
    Arc::new(LocalChat::new(Arc::new(tiny_catalog(gguf)), opts))
}

pub(crate) fn chat_app(max_adapters: usize) -> ChatApp {
    let (dir, gguf) = tiny_gguf();
    let chat = tiny_chat(&gguf, max_adapters);
    let engines = Engines::with_base_models([BASE])
        .chat(chat.clone(), 4)
        .training(Arc::new(AdapterTrainer { gguf }));
    ChatApp {
        t: TestApp::with_engines(engines, |_| {}),
        chat,
        _model_dir: dir,
    }
}

fn post(body: &Value) -> Request<Body> {
    Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

pub(crate) async fn chat(t: &TestApp, body: Value) -> Reply {
    t.send(post(&body)).await
}

pub(crate) fn ask(model: &str, extra: Value) -> Value {
    let mut v = json!({
        "model": model,
        "messages": [
            {"role": "developer", "content": "You are terse."},
            {"role": "user", "content": [{"type": "text", "text": "Name a colour."}]}
        ],
        "temperature": 0,
        "max_tokens": 12
    });
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

/// The content of choice 0 of a successful answer.
pub(crate) async fn content(t: &TestApp, body: Value) -> String {
    let r = chat(t, body).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The JSON payloads of an SSE body, and whether it ended with `[DONE]`.
pub(crate) fn sse_frames(body: &[u8]) -> (Vec<Value>, bool) {
    let text = String::from_utf8(body.to_vec()).unwrap();
    let mut frames = Vec::new();
    let mut done = false;
    for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let data = block
            .strip_prefix("data: ")
            .unwrap_or_else(|| panic!("not a data line: {block:?}"));
        assert!(!done, "data after [DONE]: {data}");
        if data == "[DONE]" {
            done = true;
        } else {
            frames.push(serde_json::from_str(data).unwrap());
        }
    }
    (frames, done)
}

#[tokio::test]
async fn a_completion_has_openai_shape_and_usage() {
    let a = chat_app(2);
    let r = chat(
        &a.t,
        ask(BASE, json!({"user": "ignored", "frequency_penalty": 0})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"), "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert!(v["created"].as_i64().unwrap() > 1_600_000_000);
    assert_eq!(v["model"], BASE);
    let c = &v["choices"][0];
    assert_eq!(c["index"], 0);
    assert_eq!(c["message"]["role"], "assistant");
    assert!(c["message"]["content"].is_string());
    assert!(c["message"]["refusal"].is_null() && c["logprobs"].is_null());
    // A random model does not find its stop token within 12 tokens.
    assert_eq!(c["finish_reason"], "length");
    let u = &v["usage"];
    assert_eq!(u["completion_tokens"], 12);
    let prompt = u["prompt_tokens"].as_u64().unwrap();
    assert!(prompt > 20, "{u}");
    assert_eq!(u["total_tokens"].as_u64().unwrap(), prompt + 12);
}

#[tokio::test]
async fn streaming_sends_role_deltas_finish_usage_then_done() {
    let a = chat_app(2);
    let whole = content(&a.t, ask(BASE, json!({}))).await;
    let r = chat(
        &a.t,
        ask(
            BASE,
            json!({"stream": true, "stream_options": {"include_usage": true}}),
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let (frames, done) = sse_frames(&r.body);
    assert!(done, "no [DONE]");
    let id = frames[0]["id"].as_str().unwrap();
    assert!(id.starts_with("chatcmpl-"));
    for f in &frames {
        assert_eq!(f["object"], "chat.completion.chunk");
        assert_eq!(f["id"], id, "one id for the whole stream");
    }
    assert_eq!(
        frames[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    let (usage, chunks) = frames.split_last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 12);
    let (last, middle) = chunks.split_last().unwrap();
    assert_eq!(last["choices"][0]["delta"], json!({}));
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    let streamed: String = middle[1..]
        .iter()
        .map(|f| f["choices"][0]["delta"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(streamed, whole, "the stream adds up to the completion");
    assert!(middle.len() > 2, "text came in pieces");

    // Without include_usage there is no usage chunk.
    let r = chat(&a.t, ask(BASE, json!({"stream": true}))).await;
    let (frames, done) = sse_frames(&r.body);
    assert!(done);
    assert!(frames.iter().all(|f| f.get("usage").is_none()));
}

#[tokio::test]
async fn stop_strings_end_the_answer_before_them() {
    let a = chat_app(2);
    let whole = content(&a.t, ask(BASE, json!({"max_tokens": 24}))).await;
    // Two printable ASCII characters from inside the answer (the tiny
    // vocabulary is bytes, so some of the answer is not valid UTF-8).
    let chars: Vec<char> = whole.chars().collect();
    let at = (1..chars.len().saturating_sub(1))
        .find(|&i| chars[i].is_ascii_graphic() && chars[i + 1].is_ascii_graphic())
        .unwrap_or_else(|| panic!("no ASCII pair in {whole:?}"));
    let stop: String = chars[at..at + 2].iter().collect();
    let expected = &whole[..whole.find(&stop).unwrap()];
    let r = chat(
        &a.t,
        ask(
            BASE,
            json!({"max_tokens": 24, "stop": [stop, "never-said"]}),
        ),
    )
    .await
    .json();
    assert_eq!(
        r["choices"][0]["message"]["content"], expected,
        "stop {stop:?}"
    );
    assert_eq!(r["choices"][0]["finish_reason"], "stop");
    assert!(r["usage"]["completion_tokens"].as_u64().unwrap() < 24);
    // A single string works too.
    let one = chat(&a.t, ask(BASE, json!({"max_tokens": 24, "stop": stop}))).await;
    assert_eq!(one.json()["choices"][0]["message"]["content"], expected);
}

#[tokio::test]
async fn a_seed_makes_sampling_reproducible() {
    let a = chat_app(2);
    let sample = |seed: i64| {
        ask(
            BASE,
            json!({"temperature": 1.0, "top_p": 1.0, "seed": seed, "max_tokens": 16}),
        )
    };
    let x1 = content(&a.t, sample(7)).await;
    let x2 = content(&a.t, sample(7)).await;
    let y = content(&a.t, sample(8)).await;
    assert_eq!(x1, x2);
    assert_ne!(x1, y, "another seed, the same 16 sampled tokens");
}

#[tokio::test]
async fn n_gives_that_many_choices() {
    let a = chat_app(2);
    let r = chat(
        &a.t,
        ask(
            BASE,
            json!({"n": 2, "temperature": 1.0, "seed": 3, "max_completion_tokens": 6}),
        ),
    )
    .await;
    let v = r.json();
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2, "{v}");
    assert_eq!(choices[0]["index"], 0);
    assert_eq!(choices[1]["index"], 1);
    assert_ne!(
        choices[0]["message"]["content"], choices[1]["message"]["content"],
        "each choice is sampled with its own seed"
    );
    let tokens = v["usage"]["completion_tokens"].as_u64().unwrap();
    assert!((2..=12).contains(&tokens), "{v}");
    // Streamed: each choice gets its role delta and its finish.
    let r = chat(
        &a.t,
        ask(
            BASE,
            json!({"n": 2, "temperature": 1.0, "seed": 3, "max_tokens": 6, "stream": true}),
        ),
    )
    .await;
    let (frames, _) = sse_frames(&r.body);
    for i in 0..2 {
        let mine: Vec<&Value> = frames
            .iter()
            .filter(|f| f["choices"][0]["index"] == i)
            .collect();
        assert_eq!(mine[0]["choices"][0]["delta"]["role"], "assistant");
        let finish = &mine.last().unwrap()["choices"][0]["finish_reason"];
        assert_eq!(finish, &choices[i as usize]["finish_reason"]);
        let text: String = mine
            .iter()
            .filter_map(|f| f["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, choices[i as usize]["message"]["content"]);
    }
}

#[tokio::test]
async fn semantics_changing_fields_are_refused_with_their_param() {
    let a = chat_app(2);
    for (extra, param) in [
        (
            json!({"tools": [{"type": "function", "function": {"description": "no name"}}]}),
            "tools[0].function.name",
        ),
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "frobnicate"}}}}),
            "response_format",
        ),
        (json!({"logprobs": true}), "logprobs"),
        (json!({"top_logprobs": 3}), "top_logprobs"),
        (json!({"n": 50}), "n"),
        (json!({"temperature": -1}), "temperature"),
    ] {
        let r = chat(&a.t, ask(BASE, extra.clone())).await;
        let v = assert_error(&r, 400, None);
        assert_eq!(v["error"]["param"], param, "{extra}: {v}");
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }
    let r = chat(&a.t, json!({"model": BASE})).await;
    assert_error(&r, 400, Some("invalid_json"));
    // An empty tool list changes nothing.
    assert_eq!(
        chat(&a.t, ask(BASE, json!({"tools": [], "tool_choice": "none"})))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn an_unknown_model_is_404_model_not_found() {
    let a = chat_app(2);
    for m in ["gpt-4o", "ft:smollm2-135m-instruct:hone:x:abcdefgh"] {
        let r = chat(&a.t, ask(m, json!({}))).await;
        let v = assert_error(&r, 404, Some("model_not_found"));
        assert_eq!(v["error"]["param"], "model");
    }
}

#[tokio::test]
async fn without_a_chat_engine_the_answer_is_a_permanent_501() {
    let t = TestApp::new();
    let r = chat(&t, ask(BASE, json!({}))).await;
    assert_error(&r, 501, Some("not_implemented"));
    assert_eq!(r.headers["x-should-retry"], "false");
}

#[tokio::test]
async fn a_prompt_over_the_context_is_a_400_before_any_stream() {
    let a = chat_app(2);
    let long = "word ".repeat(300);
    let body =
        json!({"model": BASE, "messages": [{"role": "user", "content": long}], "stream": true});
    let v = assert_error(
        &chat(&a.t, body).await,
        400,
        Some("context_length_exceeded"),
    );
    assert_eq!(v["error"]["param"], "messages");
}

/// Chat resolves base models through the catalog and nothing else: an
/// engine handed in for an id the catalog does not have (say, the base of a
/// stored fine-tune that is no longer offered) is never used, and the
/// catalog's own base loads on first use.
#[test]
fn only_the_catalogs_base_models_are_served() {
    let (_dir, gguf) = tiny_gguf();
    let stray = ChatEngine::load_path(&gguf, WeightPath::Packed).unwrap();
    let opts = LocalChatOptions {
        max_adapters: 1,
        weights: WeightPath::Packed,
    };
    let chat = LocalChat::new(Arc::new(tiny_catalog(&gguf)), opts).with_base("retired", stray);
    let ask = |base: &str| {
        let target = ChatTarget {
            model: format!("ft:{base}:org:x:abcdefgh"),
            base: base.into(),
            adapter: None,
        };
        let params = GenerationParams {
            max_tokens: 2,
            ..Default::default()
        };
        chat.generate(
            &target,
            &[ChatMessage::new(Role::User, "hi")],
            None,
            &params,
            &mut |_| ControlFlow::Continue(()),
        )
    };
    match ask("retired") {
        Err(ChatError::ModelUnavailable { model, reason }) => {
            assert_eq!(model, "retired");
            assert!(reason.contains("not a base model"), "{reason}");
        }
        other => panic!("expected model_unavailable, got {other:?}"),
    }
    let g = ask(BASE).unwrap();
    assert!(g.completion_tokens <= 2, "{g:?}");
}

// ------------------------------------------------- admission, disconnects --

/// Streams "x" every millisecond until told to stop, the callback breaks,
/// or `limit` pieces; records how many pieces it produced.
#[derive(Default)]
struct Drip {
    produced: AtomicUsize,
    finished: AtomicBool,
    release: AtomicBool,
}

impl ChatBackend for Drip {
    fn generate(
        &self,
        _: &ChatTarget,
        _: &[ChatMessage],
        _: Option<&serde_json::Value>,
        params: &GenerationParams,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Generation, ChatError> {
        let mut text = String::new();
        let mut reason = FinishReason::Length;
        while text.len() < params.max_tokens.min(100_000) {
            if self.release.load(Ordering::SeqCst) {
                reason = FinishReason::Stop;
                break;
            }
            text.push('x');
            self.produced.fetch_add(1, Ordering::SeqCst);
            if on_text("x").is_break() {
                reason = FinishReason::Stop;
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        self.finished.store(true, Ordering::SeqCst);
        Ok(Generation {
            completion_tokens: text.len(),
            text,
            token_ids: vec![],
            finish_reason: reason,
            prompt_tokens: 1,
        })
    }
}

fn drip_app(capacity: usize) -> (TestApp, Arc<Drip>) {
    let drip = Arc::new(Drip::default());
    let engines = Engines::with_base_models([BASE]).chat(drip.clone(), capacity);
    (TestApp::with_engines(engines, |_| {}), drip)
}

async fn wait_for(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..2000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn over_capacity_is_429_with_retry_after_and_capacity_comes_back() {
    let (t, drip) = drip_app(1);
    let body =
        json!({"model": BASE, "messages": [{"role": "user", "content": "hi"}], "stream": true});
    // The first request holds the only slot while it streams.
    let held = t.app.clone().oneshot(post(&body)).await.unwrap();
    assert_eq!(held.status(), 200);
    let r = chat(&t, body.clone()).await;
    let v = assert_error(&r, 429, Some("rate_limit_exceeded"));
    assert_eq!(v["error"]["type"], "rate_limit_error");
    let secs: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(secs >= 1);
    drip.release.store(true, Ordering::SeqCst);
    let rest = to_bytes(held.into_body(), usize::MAX).await.unwrap();
    assert!(
        sse_frames(&rest).1,
        "the held stream still ends with [DONE]"
    );
    // The slot is free again once that generation has ended.
    let mut status = 0;
    for _ in 0..200 {
        status = chat(&t, json!({"model": BASE, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}))
            .await
            .status
            .as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_client_disconnect_stops_generation() {
    let (t, drip) = drip_app(2);
    let body =
        json!({"model": BASE, "messages": [{"role": "user", "content": "hi"}], "stream": true});
    let resp = t.app.clone().oneshot(post(&body)).await.unwrap();
    assert_eq!(resp.status(), 200);
    wait_for("some output", || drip.produced.load(Ordering::SeqCst) > 5).await;
    drop(resp);
    wait_for("generation to stop", || {
        drip.finished.load(Ordering::SeqCst)
    })
    .await;
    let n = drip.produced.load(Ordering::SeqCst);
    assert!(n < 5000, "generation went on after the disconnect: {n}");
}

// ------------------------------------------------------------- adapters --

/// A trainer that trains nothing but writes real PEFT adapters for the tiny
/// base: a checkpoint (seed 1) and the final adapter (seed 2). Their B
/// matrices are non-zero, so each changes the model's answers differently.
struct AdapterTrainer {
    gguf: PathBuf,
}

fn write_adapter(gguf: &Path, dir: &Path, seed: u64) {
    let mut model = hone_model::load_model(gguf, WeightPath::F32).unwrap();
    let cfg = LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        // Square projections, so that B can be made from Aᵀ.
        target_modules: vec!["q_proj".into(), "o_proj".into()],
        trainable_tokens: Vec::new(),
    };
    let lora = LoraParams::attach(&mut model, &cfg, seed).unwrap();
    for m in &lora.modules {
        let b = m.a.as_tensor().t().unwrap().affine(4.0, 0.0).unwrap();
        m.b.set(&b.contiguous().unwrap()).unwrap();
    }
    lora.save_peft(dir, BASE).unwrap();
}

impl TrainingEngine for AdapterTrainer {
    fn train(&self, ctx: &JobContext) -> TrainingOutcome {
        let ckpt = ctx.job_dir.join("checkpoints").join("step-1");
        write_adapter(&self.gguf, &ckpt, 1);
        ctx.checkpoint(1, ckpt, Default::default()).unwrap();
        let fin = ctx.job_dir.join("adapter");
        write_adapter(&self.gguf, &fin, 2);
        TrainingOutcome::Succeeded {
            adapter_path: fin,
            trained_tokens: 1,
            result_files: vec![],
        }
    }
}

fn sft_lines(n: usize) -> String {
    (0..n)
        .map(|i| {
            json!({"messages": [
                {"role": "user", "content": format!("question number {i}")},
                {"role": "assistant", "content": format!("answer number {i} in full")}
            ]})
            .to_string()
                + "\n"
        })
        .collect()
}

/// Runs a job to success; returns the fine-tuned and checkpoint models.
pub(crate) async fn fine_tune(t: &TestApp) -> (String, String) {
    let f = t
        .upload("train.jsonl", "fine-tune", sft_lines(10).as_bytes())
        .await
        .json();
    let file = f["id"].as_str().unwrap();
    let req = Request::post("/v1/fine_tuning/jobs")
        .header("content-type", "application/json")
        .body(Body::from(
            json!({"model": BASE, "training_file": file, "suffix": "style"}).to_string(),
        ))
        .unwrap();
    let job = t.send(req).await.json();
    let id = job["id"].as_str().unwrap().to_string();
    for _ in 0..1000 {
        let j = t.get(&format!("/v1/fine_tuning/jobs/{id}")).await.json();
        if j["status"] == "succeeded" {
            let ft = j["fine_tuned_model"].as_str().unwrap().to_string();
            return (ft.clone(), format!("{ft}:ckpt-step-1"));
        }
        assert!(
            !["failed", "cancelled"].contains(&j["status"].as_str().unwrap()),
            "{j}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("job {id} did not succeed");
}

#[tokio::test]
async fn fine_tuned_and_checkpoint_models_answer_with_their_own_adapter() {
    let a = chat_app(2);
    let (ft, ckpt) = fine_tune(&a.t).await;
    let base = content(&a.t, ask(BASE, json!({}))).await;
    let tuned = content(&a.t, ask(&ft, json!({}))).await;
    let early = content(&a.t, ask(&ckpt, json!({}))).await;
    assert_ne!(tuned, base, "the adapter changed nothing");
    assert_ne!(early, base);
    assert_ne!(tuned, early, "two adapters, one answer");
    // Switching back and forth gives the same answers: adapters are swapped
    // per request, never left on the shared base.
    assert_eq!(content(&a.t, ask(BASE, json!({}))).await, base);
    assert_eq!(content(&a.t, ask(&ft, json!({}))).await, tuned);
    assert_eq!(content(&a.t, ask(&ckpt, json!({}))).await, early);
    assert_eq!(a.chat.adapter_loads(), 2, "both adapters stayed cached");
    // The response names the model asked for; streaming works on it too.
    let r = chat(&a.t, ask(&ft, json!({"stream": true}))).await;
    let (frames, done) = sse_frames(&r.body);
    assert!(done);
    assert_eq!(frames[0]["model"], ft.as_str());
    // A deleted fine-tune is gone for chat at once.
    let del =
        a.t.call(axum::http::Method::DELETE, &format!("/v1/models/{ft}"))
            .await;
    assert_eq!(del.status, 200);
    assert_error(
        &chat(&a.t, ask(&ft, json!({}))).await,
        404,
        Some("model_not_found"),
    );
}

/// `hone serve --adapter NAME=DIR`: an adapter trained outside the server is
/// listed, answers chat with its own weights, and cannot be deleted.
#[tokio::test]
async fn a_command_line_adapter_is_a_model_that_answers_with_its_weights() {
    let (dir, gguf) = tiny_gguf();
    let adapter = dir.path().join("support");
    write_adapter(&gguf, &adapter, 2);
    let catalog = tiny_catalog(&gguf)
        .with_adapters(&[format!("support={}", adapter.display())])
        .unwrap();
    let chat = tiny_chat(&gguf, 2);
    let mut engines = Engines::with_base_models([BASE]).chat(chat.clone(), 4);
    engines.catalog = Arc::new(catalog);
    let t = TestApp::with_engines(engines, |_| {});

    let list = t.get("/v1/models").await.json();
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![BASE, "support"]);
    assert_eq!(t.get("/v1/models/support").await.json()["owned_by"], "user");

    let base = content(&t, ask(BASE, json!({}))).await;
    let tuned = content(&t, ask("support", json!({}))).await;
    assert_ne!(tuned, base, "the adapter changed nothing");
    assert_eq!(content(&t, ask(BASE, json!({}))).await, base);
    assert_eq!(chat.adapter_loads(), 1);
    assert_error(
        &t.call(axum::http::Method::DELETE, "/v1/models/support")
            .await,
        400,
        Some("model_not_deletable"),
    );
    assert_eq!(content(&t, ask("support", json!({}))).await, tuned);
}

#[tokio::test]
async fn the_adapter_cache_evicts_the_least_recently_used() {
    let a = chat_app(1);
    let (ft, ckpt) = fine_tune(&a.t).await;
    let tuned = content(&a.t, ask(&ft, json!({}))).await;
    assert_eq!(a.chat.adapter_loads(), 1);
    content(&a.t, ask(&ft, json!({}))).await;
    assert_eq!(a.chat.adapter_loads(), 1, "a hit reads nothing");
    content(&a.t, ask(&ckpt, json!({}))).await;
    assert_eq!(a.chat.adapter_loads(), 2);
    assert_eq!(a.chat.cached_adapters().len(), 1);
    // ft was evicted: it is read again, and answers as before.
    assert_eq!(content(&a.t, ask(&ft, json!({}))).await, tuned);
    assert_eq!(a.chat.adapter_loads(), 3);
}

#[tokio::test]
async fn concurrent_requests_on_different_adapters_do_not_mix() {
    let a = chat_app(2);
    let (ft, ckpt) = fine_tune(&a.t).await;
    let want: Vec<String> = vec![
        content(&a.t, ask(BASE, json!({}))).await,
        content(&a.t, ask(&ft, json!({}))).await,
        content(&a.t, ask(&ckpt, json!({}))).await,
    ];
    let got = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for (i, m) in [BASE.to_string(), ft.clone(), ckpt.clone()]
        .into_iter()
        .enumerate()
    {
        let app = a.t.app.clone();
        let got = got.clone();
        tasks.push(tokio::spawn(async move {
            let resp = app.oneshot(post(&ask(&m, json!({})))).await.unwrap();
            let body = to_bytes(resp.into_body(), usize::MAX).await.unwrap();
            let v: Value = serde_json::from_slice(&body).unwrap();
            let text = v["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_string();
            got.lock().unwrap().push((i, text));
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut got = got.lock().unwrap().clone();
    got.sort();
    let got: Vec<String> = got.into_iter().map(|(_, s)| s).collect();
    assert_eq!(got, want);
}

// ------------------------------------------------------------ real model --

/// France -> Paris through the HTTP route on the real SmolLM2 (packed weights).
#[tokio::test]
#[ignore = "needs HONE_TEST_GGUF (the real SmolLM2 GGUF)"]
async fn real_model_answers_paris_over_http() {
    let gguf = std::env::var("HONE_TEST_GGUF").expect("set HONE_TEST_GGUF");
    let engine = tiny_chat(Path::new(&gguf), 2);
    let t = TestApp::with_engines(Engines::with_base_models([BASE]).chat(engine, 2), |_| {});
    let body = json!({
        "model": BASE,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "temperature": 0,
        "max_tokens": 30
    });
    let text = content(&t, body.clone()).await;
    assert!(text.contains("Paris"), "{text}");
    let mut s = body;
    s["stream"] = json!(true);
    let (frames, done) = sse_frames(&chat(&t, s).await.body);
    assert!(done);
    let streamed: String = frames
        .iter()
        .filter_map(|f| f["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed, text);
}
