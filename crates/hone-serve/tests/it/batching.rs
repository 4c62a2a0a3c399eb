//! Continuous batching in the server (issue #20): concurrent requests on
//! different adapters run as rows of one batch and each gets exactly what
//! it gets alone; a client that goes away frees its row and its KV cache;
//! the KV-cache budget answers 429 with `Retry-After` while `/health`
//! stays responsive. On a tiny random model through the real `LocalChat`.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use hone_model::candle_core::quantized::GgmlDType;
use hone_model::generate::{FinishReason, Generation, GenerationParams};
use hone_model::registry::{ModelSource, ResolvedModel};
use hone_model::testing::{tiny_weights, write_tiny_gguf, TinySpec};
use hone_model::{LoraConfig, LoraParams, WeightPath};
use hone_serve::chat::{
    BatchOptions, CancelFlag, ChatBackend, ChatTarget, ChoiceUpdate, LocalChat, LocalChatOptions,
    LAZY_KV_BLOCK,
};
use hone_serve::{BaseModels, Engines};
use hone_text::{ChatMessage, Role};
use serde_json::json;
use tower::ServiceExt;

use crate::common::{TestApp, BASE};

/// The tiny model (embeddings scaled down so that adapters and seeds
/// change the answers), with room for long prompts, and two adapters.
struct Tiny {
    dir: tempfile::TempDir,
    gguf: PathBuf,
}

fn tiny() -> Tiny {
    let dir = tempfile::tempdir().unwrap();
    let spec = TinySpec {
        context: 4096,
        ..TinySpec::default()
    };
    let mut w = tiny_weights(&spec).unwrap();
    for (name, t) in w.iter_mut() {
        if name.contains("embed_tokens") {
            *t = t.affine(0.02, 0.0).unwrap();
        }
    }
    let gguf = dir.path().join("tiny.gguf");
    write_tiny_gguf(&gguf, &spec, &w, GgmlDType::F32).unwrap();
    for (name, seed, targets) in [
        ("a1", 1, vec!["q_proj", "o_proj"]),
        ("a2", 2, vec!["v_proj", "gate_proj"]),
    ] {
        write_adapter(&gguf, &dir.path().join(name), seed, &targets);
    }
    Tiny { dir, gguf }
}

fn write_adapter(gguf: &Path, dir: &Path, seed: u64, targets: &[&str]) {
    let mut model = hone_model::load_model(gguf, WeightPath::F32).unwrap();
    let cfg = LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        target_modules: targets.iter().map(|s| s.to_string()).collect(),
        trainable_tokens: Vec::new(),
    };
    let lora = LoraParams::attach(&mut model, &cfg, seed).unwrap();
    for m in &lora.modules {
        let b = m.b.as_tensor();
        let b = hone_model::candle_core::Tensor::ones(b.dims(), b.dtype(), b.device())
            .unwrap()
            .affine(0.05 * seed as f64, 0.0)
            .unwrap();
        m.b.set(&b).unwrap();
    }
    lora.save_peft(dir, BASE).unwrap();
}

impl Tiny {
    fn chat(&self, batching: BatchOptions) -> Arc<LocalChat> {
        let catalog = BaseModels::new(vec![ResolvedModel {
            id: BASE.into(),
            source: ModelSource::Gguf(self.gguf.clone()),
        }])
        .unwrap();
        let opts = LocalChatOptions {
            max_adapters: 4,
            weights: WeightPath::Packed,
        };
        Arc::new(LocalChat::new(Arc::new(catalog), opts).with_batching(batching))
    }

    fn target(&self, adapter: Option<&str>) -> ChatTarget {
        ChatTarget {
            model: adapter.unwrap_or(BASE).into(),
            base: BASE.into(),
            adapter: adapter.map(|a| self.dir.path().join(a)),
        }
    }
}

fn messages(text: &str) -> Vec<ChatMessage> {
    vec![ChatMessage::new(Role::User, text)]
}

/// The choices of one request through the engine loop, and the text each
/// streamed.
fn batched(
    chat: &LocalChat,
    target: &ChatTarget,
    msgs: &[ChatMessage],
    params: &[GenerationParams],
) -> (Vec<Generation>, Vec<String>) {
    let mut texts = vec![String::new(); params.len()];
    let gens = chat
        .generate_choices(
            target,
            msgs,
            None,
            params,
            &CancelFlag::default(),
            &mut |i, u| {
                if let ChoiceUpdate::Text(t) = u {
                    texts[i].push_str(t);
                }
                ControlFlow::Continue(())
            },
        )
        .unwrap();
    (gens, texts)
}

/// One choice generated alone, on the caller's thread (the unbatched path).
fn alone(
    chat: &LocalChat,
    target: &ChatTarget,
    msgs: &[ChatMessage],
    p: &GenerationParams,
) -> Generation {
    chat.generate(target, msgs, None, p, &mut |_| ControlFlow::Continue(()))
        .unwrap()
}

async fn wait_for(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..6000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn concurrent_requests_on_mixed_adapters_equal_each_alone() {
    let t = tiny();
    let chat = t.chat(BatchOptions::default());
    let greedy = GenerationParams {
        max_tokens: 12,
        ..Default::default()
    };
    let seeded = |seed| GenerationParams {
        max_tokens: 10,
        temperature: 0.9,
        top_p: 0.9,
        seed,
        ..Default::default()
    };
    let long = "the quick brown fox jumps over the lazy dog. ".repeat(4);
    let mut cases = Vec::new();
    for (i, adapter) in [None, Some("a1"), Some("a2")].into_iter().enumerate() {
        // A greedy request, and a seeded one with n = 2 (seeds s, s + 1).
        cases.push((
            t.target(adapter),
            messages("Name a colour."),
            vec![greedy.clone()],
        ));
        let params = vec![seeded(7 + i as u64), seeded(8 + i as u64)];
        cases.push((t.target(adapter), messages(&long), params));
    }
    let expected: Vec<Vec<Generation>> = cases
        .iter()
        .map(|(target, msgs, ps)| ps.iter().map(|p| alone(&chat, target, msgs, p)).collect())
        .collect();
    assert_ne!(
        expected[0][0].token_ids, expected[2][0].token_ids,
        "adapter a1 changes the answer"
    );
    assert_ne!(
        expected[0][0].token_ids, expected[4][0].token_ids,
        "adapter a2 changes the answer"
    );
    let start = Barrier::new(cases.len());
    let got: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = cases
            .iter()
            .map(|(target, msgs, ps)| {
                let (chat, start) = (&chat, &start);
                s.spawn(move || {
                    start.wait();
                    batched(chat, target, msgs, ps)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, ((gens, texts), want)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(gens, want, "request {i}");
        let streamed: Vec<&str> = want.iter().map(|g| g.text.as_str()).collect();
        assert_eq!(texts, &streamed, "request {i} streamed its text");
    }
    let st = chat.batch_stats();
    assert_eq!(st.len(), 1, "one engine loop for the one base: {st:?}");
    assert_eq!(
        st[0].kv_bytes_reserved, 0,
        "every reservation was given back"
    );
    // The loop publishes its numbers after the step that ended the rows.
    for _ in 0..6000 {
        let st = &chat.batch_stats()[0];
        if (st.running_rows, st.waiting_rows, st.kv_bytes_used) == (0, 0, 0) {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("rows still in the batch: {:?}", chat.batch_stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_frees_its_row_and_its_kv_cache() {
    let t = tiny();
    let chat = t.chat(BatchOptions::default());
    let cancel = CancelFlag::default();
    let params = vec![GenerationParams {
        max_tokens: 3000,
        ..Default::default()
    }];
    let (c2, k2) = (chat.clone(), cancel.clone());
    let target = t.target(Some("a1"));
    let pieces = tokio::task::spawn_blocking(move || {
        let mut pieces = 0;
        let r = c2.generate_choices(
            &target,
            &messages("Say many things."),
            None,
            &params,
            &k2,
            &mut |_, u| {
                if let ChoiceUpdate::Text(_) = u {
                    pieces += 1;
                    // The client goes away after its first piece of text.
                    k2.cancel();
                }
                ControlFlow::Break(())
            },
        );
        assert!(r.unwrap().is_empty(), "no choice finished");
        pieces
    })
    .await
    .unwrap();
    assert_eq!(pieces, 1);
    wait_for("the row to leave", || {
        let st = chat.batch_stats();
        st[0].running_rows == 0 && st[0].kv_bytes_used == 0 && st[0].kv_bytes_reserved == 0
    })
    .await;
    // The loop goes on serving.
    let g = alone(
        &chat,
        &t.target(None),
        &messages("hi"),
        &GenerationParams::default(),
    );
    let (b, _) = batched(
        &chat,
        &t.target(None),
        &messages("hi"),
        &[GenerationParams::default()],
    );
    assert_eq!(b, vec![g]);
}

fn post(body: serde_json::Value) -> Request<Body> {
    Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn app(chat: Arc<LocalChat>) -> TestApp {
    let engines = Engines::with_base_models([BASE]).chat(chat, 64);
    TestApp::with_engines(engines, |_| {})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kv_budget_gives_429s_while_health_stays_responsive() {
    let t = tiny();
    // Room for one request of 1000 positions (prompt plus max_tokens).
    let model = hone_model::load_model(&t.gguf, WeightPath::Packed).unwrap();
    let one = model.kv_cache_bytes(1000);
    let chat = t.chat(BatchOptions {
        kv_cache_bytes: one,
        ..BatchOptions::default()
    });
    drop(model);
    let a = app(chat.clone());
    let ask = |max_tokens: usize| {
        post(
            json!({"model": BASE, "max_tokens": max_tokens, "temperature": 0,
                    "messages": [{"role": "user", "content": "hi"}]}),
        )
    };
    // Over the whole budget: never admitted, a 400 that says why.
    let r = a.send(ask(2000)).await;
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["error"]["param"], "max_tokens");
    // Running requests hold the budget: a 429 with Retry-After, at once.
    let held = chat.kv_budget().try_reserve(one / 2).unwrap();
    let r = a.send(ask(900)).await;
    assert_eq!(r.status, 429, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.headers["retry-after"], "1");
    assert_eq!(a.get("/health").await.status, 200);
    // A smaller request still fits beside them; once they are done, all do.
    let r = a.send(ask(100)).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    drop(held);
    assert_eq!(a.send(ask(900)).await.status, 200);
    assert_eq!(chat.kv_budget().reserved(), 0);

    // Many long prompts at once on a budget of two: some are refused, the
    // rest answered, and /health answers all along.
    let chat = t.chat(BatchOptions {
        kv_cache_bytes: 2 * one,
        ..BatchOptions::default()
    });
    let a = app(chat.clone());
    let long = "the quick brown fox jumps over the lazy dog. ".repeat(18);
    let pending: Vec<_> = (0..8)
        .map(|_| {
            let req = post(json!({"model": BASE, "max_tokens": 50, "stream": true,
                "messages": [{"role": "user", "content": long}]}));
            tokio::spawn(a.app.clone().oneshot(req))
        })
        .collect();
    for _ in 0..5 {
        assert_eq!(a.get("/health").await.status, 200);
    }
    let mut statuses = Vec::new();
    for p in pending {
        let r = p.await.unwrap().unwrap();
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            assert!(r.headers().contains_key("retry-after"));
        }
        let _ = axum::body::to_bytes(r.into_body(), usize::MAX).await;
    }
    assert!(
        statuses.iter().all(|&s| s == 200 || s == 429),
        "{statuses:?}"
    );
    assert!(statuses.contains(&200), "{statuses:?}");
    wait_for("the budget to be given back", || {
        chat.kv_budget().reserved() == 0
    })
    .await;
}

/// Requests without `max_tokens` reserve their prompt plus one block of
/// positions, not the whole context: on a budget smaller than two contexts
/// (where each alone used to be refused as over the budget), two run at
/// once. Each takes another block as it grows; with no room left it ends
/// with `length` at its share, and everything is given back.
#[test]
fn requests_without_max_tokens_reserve_lazily_in_blocks() {
    let t = tiny();
    let model = hone_model::load_model(&t.gguf, WeightPath::Packed).unwrap();
    let ctx = model.cfg.max_position_embeddings;
    let budget = model.kv_cache_bytes(2 * LAZY_KV_BLOCK + 256);
    assert!(budget < model.kv_cache_bytes(ctx));
    let chat = t.chat(BatchOptions {
        kv_cache_bytes: budget,
        ..BatchOptions::default()
    });
    let unbounded = GenerationParams {
        max_tokens: usize::MAX,
        ..Default::default()
    };
    let msgs = messages("Tell me everything.");
    let mut seen_reserved = Vec::new();
    let kv = chat.kv_budget();
    let gens = chat
        .generate_choices(
            &t.target(Some("a1")),
            &msgs,
            None,
            &[unbounded.clone(), unbounded.clone()],
            &CancelFlag::default(),
            &mut |_, u| {
                if let ChoiceUpdate::Text(_) = u {
                    seen_reserved.push(kv.reserved());
                }
                ControlFlow::Continue(())
            },
        )
        .unwrap();
    assert_eq!(gens.len(), 2);
    let first_share = model.kv_cache_bytes(gens[0].prompt_tokens + LAZY_KV_BLOCK);
    assert_eq!(seen_reserved[0], 2 * first_share, "two first shares");
    assert!(seen_reserved.iter().all(|&r| r <= budget));
    for g in &gens {
        // The share ends at prompt + one block: a row that got there could
        // not take a second block beside the other's (unless it stopped).
        match g.finish_reason {
            FinishReason::Length => assert!(g.completion_tokens > LAZY_KV_BLOCK, "{g:?}"),
            FinishReason::Stop => assert!(g.completion_tokens < 3 * LAZY_KV_BLOCK, "{g:?}"),
        }
    }
    assert_eq!(kv.reserved(), 0, "every share given back");
}

/// A request whose prompt another request read before copies it: the same
/// answer, with the copied tokens in `usage.prompt_tokens_details` (OpenAI's
/// prompt-caching field), streamed usage included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_prompt_is_copied_and_reported_as_cached_tokens() {
    let t = tiny();
    let a = app(t.chat(BatchOptions::default()));
    let long = "the quick brown fox jumps over the lazy dog. ".repeat(6);
    let ask = |stream: bool| {
        post(
            json!({"model": BASE, "max_tokens": 8, "temperature": 0, "stream": stream,
            "stream_options": if stream { json!({"include_usage": true}) } else { json!(null) },
            "messages": [{"role": "user", "content": long}]}),
        )
    };
    let first = a.send(ask(false)).await.json();
    let usage = &first["usage"];
    assert_eq!(
        usage["prompt_tokens_details"]["cached_tokens"], 0,
        "{usage}"
    );
    let prompt = usage["prompt_tokens"].as_u64().unwrap();
    let again = a.send(ask(false)).await.json();
    assert_eq!(
        again["usage"]["prompt_tokens_details"]["cached_tokens"],
        prompt - 1,
        "all but the last prompt token: {}",
        again["usage"]
    );
    assert_eq!(
        again["choices"][0]["message"]["content"],
        first["choices"][0]["message"]["content"]
    );
    let streamed = a.send(ask(true)).await;
    let body = String::from_utf8_lossy(&streamed.body).to_string();
    let last_usage = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter_map(|c| c.get("usage").filter(|u| !u.is_null()).cloned())
        .next_back()
        .expect("a usage chunk");
    assert_eq!(
        last_usage["prompt_tokens_details"]["cached_tokens"],
        prompt - 1
    );
}
