//! Issue #17 part 2: a client that goes away during a long prompt's prefill
//! stops it within one prompt chunk and frees its chat slot, on the real
//! engine (a tiny random model through `LocalChat`, `ChatEngine` and
//! hone-model's `generate`). Asserted on counters, not on time: a backend
//! wrapper counts the questions `generate` asks between prompt chunks, and
//! holds the first one until the client is gone for sure.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use hone_model::candle_core::quantized::GgmlDType;
use hone_model::generate::{Generation, GenerationParams, PREFILL_CHUNK};
use hone_model::registry::{ModelSource, ResolvedModel};
use hone_model::testing::{tiny_weights, write_tiny_gguf, TinySpec};
use hone_model::WeightPath;
use hone_serve::chat::{ChatBackend, ChatError, ChatTarget, LocalChat, LocalChatOptions};
use hone_serve::{BaseModels, Engines};
use hone_text::ChatMessage;
use serde_json::json;
use tower::ServiceExt;

use crate::common::{TestApp, BASE};

/// The real engine, with the questions between prompt chunks counted; the
/// first question waits for `proceed` when `hold` is set.
struct Counting {
    inner: LocalChat,
    hold: bool,
    questions: AtomicUsize,
    in_prefill: AtomicBool,
    proceed: AtomicBool,
    ended: Mutex<Option<Generation>>,
}

impl ChatBackend for Counting {
    fn generate(
        &self,
        target: &ChatTarget,
        messages: &[ChatMessage],
        tools: Option<&serde_json::Value>,
        params: &GenerationParams,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Generation, ChatError> {
        let mut counted = |piece: &str| {
            if piece.is_empty() && self.questions.fetch_add(1, SeqCst) == 0 && self.hold {
                self.in_prefill.store(true, SeqCst);
                while !self.proceed.load(SeqCst) {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            on_text(piece)
        };
        let g = self
            .inner
            .generate(target, messages, tools, params, &mut counted)?;
        *self.ended.lock().unwrap() = Some(g.clone());
        Ok(g)
    }
}

/// A tiny random model with room for a long prompt (one token per byte).
fn app(hold: bool) -> (TestApp, Arc<Counting>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let spec = TinySpec {
        context: 4096,
        ..TinySpec::default()
    };
    let gguf = dir.path().join("tiny.gguf");
    write_tiny_gguf(&gguf, &spec, &tiny_weights(&spec).unwrap(), GgmlDType::F32).unwrap();
    let catalog = BaseModels::new(vec![ResolvedModel {
        id: BASE.into(),
        source: ModelSource::Gguf(gguf),
    }])
    .unwrap();
    let opts = LocalChatOptions {
        max_adapters: 1,
        weights: WeightPath::Packed,
    };
    let backend = Arc::new(Counting {
        inner: LocalChat::new(Arc::new(catalog), opts),
        hold,
        questions: AtomicUsize::new(0),
        in_prefill: AtomicBool::new(false),
        proceed: AtomicBool::new(false),
        ended: Mutex::new(None),
    });
    let engines = Engines::with_base_models([BASE]).chat(backend.clone(), 2);
    (TestApp::with_engines(engines, |_| {}), backend, dir)
}

fn request(stream: bool) -> Request<Body> {
    let long = "the quick brown fox jumps over the lazy dog. ".repeat(60);
    let body = json!({"model": BASE, "stream": stream, "max_tokens": 2,
                      "messages": [{"role": "user", "content": long}]});
    Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_during_prefill_stops_it_within_one_chunk_and_frees_the_slot() {
    // Undisturbed, the prompt takes many chunks.
    let (t, full, _d) = app(false);
    let r = t.send(request(false)).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let g = full.ended.lock().unwrap().clone().unwrap();
    let chunks = g.prompt_tokens.div_ceil(PREFILL_CHUNK);
    assert!(chunks >= 20, "a long prompt: {} tokens", g.prompt_tokens);
    assert_eq!(full.questions.load(SeqCst), chunks - 1);

    // The client goes away during the first chunk boundary.
    let (t, cut, _d) = app(true);
    let service = t.state.engines.chat.clone().unwrap();
    let pending = tokio::spawn(t.app.clone().oneshot(request(true)));
    wait_for("the prefill", || cut.in_prefill.load(SeqCst)).await;
    assert_eq!(service.available(), service.max_concurrent() - 1);
    pending.abort();
    assert!(pending.await.unwrap_err().is_cancelled());
    cut.proceed.store(true, SeqCst);
    wait_for("the generation to end", || {
        cut.ended.lock().unwrap().is_some()
    })
    .await;
    let g = cut.ended.lock().unwrap().clone().unwrap();
    assert_eq!(
        cut.questions.load(SeqCst),
        1,
        "no chunk after the disconnect ({chunks} for the whole prompt)"
    );
    assert_eq!((g.completion_tokens, g.text.as_str()), (0, ""));
    wait_for("the slot", || {
        service.available() == service.max_concurrent()
    })
    .await;
}

/// A streamed answer gives its slot back before its last message: by the
/// time the client has read `[DONE]`, the slot is free, so a client that
/// sends its next request at once never meets its own previous one (a
/// spurious 429). Checked right after the body ends, with no waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_answer_frees_its_slot_before_done_is_sent() {
    let (t, _backend, _d) = app(false);
    let service = t.state.engines.chat.clone().unwrap();
    for _ in 0..20 {
        let r = t.send(request(true)).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert!(String::from_utf8_lossy(&r.body).contains("[DONE]"));
        assert_eq!(service.available(), service.max_concurrent());
    }
}
