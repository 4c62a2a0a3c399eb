//! Continuous batching (`RunningBatch`, `Llama::step_feeds`) on a tiny random
//! model: rows on different adapters, joining between steps and reading
//! long prompts in chunks, each get exactly what `generate` gives them alone;
//! a row that is no longer wanted leaves at once; a panic in one row's
//! decoding fails that row only; a row that starts like a prompt already read
//! (or being read) copies its cache and still answers exactly as alone.

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use candle_core::quantized::GgmlDType;
use hone_model::generate::{
    generate, BatchRow, Detokenizer, FinishReason, Generation, GenerationParams, RowEngine,
    RowSink, RunningBatch, IDLE_STEP_PROMPT_ROWS, STEP_PROMPT_ROWS,
};
use hone_model::kv_cache::Feed;
use hone_model::lora::{LoraConfig, LoraParams};
use hone_model::testing::{tiny_weights, write_tiny_gguf, TinySpec};
use hone_model::{load_model, ForwardOptions, Llama, WeightPath};

/// The tiny model, embeddings scaled down so the layers (and adapters)
/// decide the answers (as in `batch.rs`).
fn tiny(dir: &Path) -> Llama {
    let spec = TinySpec::default();
    let mut w = tiny_weights(&spec).unwrap();
    for (name, t) in w.iter_mut() {
        if name.contains("embed_tokens") {
            *t = t.affine(0.02, 0.0).unwrap();
        }
    }
    let gguf = dir.join("tiny.gguf");
    write_tiny_gguf(&gguf, &spec, &w, GgmlDType::F32).unwrap();
    load_model(&gguf, WeightPath::Packed).unwrap()
}

/// A clone of `base` (weights shared) with its own LoRA adapter.
fn adapted(base: &Llama, seed: u64, targets: &[&str]) -> Llama {
    let mut m = base.clone();
    let cfg = LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        target_modules: targets.iter().map(|s| s.to_string()).collect(),
        trainable_tokens: Vec::new(),
    };
    let lora = LoraParams::attach(&mut m, &cfg, seed).unwrap();
    for x in &lora.modules {
        let b = x.b.as_tensor();
        let b = candle_core::Tensor::ones(b.dims(), b.dtype(), b.device())
            .unwrap()
            .affine(0.05 * seed as f64, 0.0)
            .unwrap();
        x.b.set(&b).unwrap();
    }
    m
}

/// A row engine over a test model; decoding panics on `panic_on`.
struct Eng {
    model: Llama,
    stop: Vec<u32>,
    panic_on: Option<u32>,
}

impl Detokenizer for Eng {
    fn decode(&self, ids: &[u32]) -> hone_model::Result<String> {
        if let Some(p) = self.panic_on {
            assert!(!ids.contains(&p), "decoding met token {p}");
        }
        Ok(ids.iter().map(|i| format!("<{i}>")).collect())
    }
}

impl RowEngine for Eng {
    fn model(&self) -> &Llama {
        &self.model
    }
    fn detokenizer(&self) -> &dyn Detokenizer {
        self
    }
    fn stop_ids(&self) -> &[u32] {
        &self.stop
    }
}

/// What a row reported.
#[derive(Default)]
struct Seen {
    text: String,
    done: Option<Result<Generation, String>>,
}

struct Sink {
    seen: Arc<Mutex<Seen>>,
    wanted: Arc<AtomicBool>,
    /// The most KV positions the row may hold (None: no limit).
    room: Option<usize>,
}

impl RowSink for Sink {
    fn wanted(&self) -> bool {
        self.wanted.load(SeqCst)
    }
    fn text(&mut self, piece: &str) -> ControlFlow<()> {
        self.seen.lock().unwrap().text.push_str(piece);
        ControlFlow::Continue(())
    }
    fn done(&mut self, result: hone_model::Result<Generation>) {
        let mut s = self.seen.lock().unwrap();
        assert!(s.done.is_none(), "done twice");
        s.done = Some(result.map_err(|e| e.to_string()));
    }
    fn room(&mut self, positions: usize) -> bool {
        self.room.is_none_or(|max| positions <= max)
    }
}

struct Row {
    eng: Arc<Eng>,
    prompt: Vec<u32>,
    params: GenerationParams,
    seen: Arc<Mutex<Seen>>,
    wanted: Arc<AtomicBool>,
    room: Option<usize>,
}

impl Row {
    fn new(eng: &Arc<Eng>, prompt: Vec<u32>, params: GenerationParams) -> Self {
        Row {
            eng: eng.clone(),
            prompt,
            params,
            seen: Arc::default(),
            wanted: Arc::new(AtomicBool::new(true)),
            room: None,
        }
    }

    fn batch_row(&self) -> BatchRow {
        let sink = Sink {
            seen: self.seen.clone(),
            wanted: self.wanted.clone(),
            room: self.room,
        };
        BatchRow::new(
            self.eng.clone(),
            self.prompt.clone(),
            &self.params,
            Box::new(sink),
        )
        .unwrap()
    }

    /// What `generate` gives this row alone, and the text it streams.
    fn alone(&self) -> (Generation, String) {
        let mut text = String::new();
        let g = generate(
            &self.eng.model,
            &self.prompt,
            &self.params,
            &self.eng.stop,
            &*self.eng,
            &mut |t| {
                text.push_str(t);
                ControlFlow::Continue(())
            },
        )
        .unwrap();
        (g, text)
    }

    fn result(&self) -> Option<Result<Generation, String>> {
        self.seen.lock().unwrap().done.clone()
    }
}

fn engines(dir: &Path) -> Vec<Arc<Eng>> {
    let base = tiny(dir);
    let a1 = adapted(&base, 5, &["q_proj", "o_proj"]);
    let a2 = adapted(&base, 9, &["v_proj", "down_proj", "gate_proj"]);
    [base, a1, a2]
        .into_iter()
        .map(|model| {
            Arc::new(Eng {
                model,
                stop: vec![],
                panic_on: None,
            })
        })
        .collect()
}

fn greedy(max_tokens: usize) -> GenerationParams {
    GenerationParams {
        max_tokens,
        ..Default::default()
    }
}

fn sampled(seed: u64) -> GenerationParams {
    GenerationParams {
        max_tokens: 10,
        temperature: 0.9,
        top_p: 0.9,
        seed,
        ..Default::default()
    }
}

/// A prompt several steps long.
fn long_prompt() -> Vec<u32> {
    (0..(2 * STEP_PROMPT_ROWS + 7) as u32)
        .map(|i| 3 + (i * 37) % 200)
        .collect()
}

/// Steps until every row is done (a bounded number of steps).
fn run(batch: &mut RunningBatch) {
    for _ in 0..1000 {
        if batch.is_empty() {
            return;
        }
        batch.step();
    }
    panic!("the batch never emptied");
}

#[test]
fn rows_on_mixed_adapters_equal_generating_each_alone() {
    let dir = tempfile::tempdir().unwrap();
    let engs = engines(dir.path());
    let prompts = [
        vec![1, 40, 50, 60, 70],
        vec![3],
        long_prompt(),
        vec![100, 101],
    ];
    let mut rows = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        for (j, e) in engs.iter().enumerate() {
            let params = if (i + j) % 2 == 0 {
                greedy(8 + i)
            } else {
                sampled((10 * i + j) as u64)
            };
            rows.push(Row::new(e, p.clone(), params));
        }
    }
    // The same prompt on each adapter must differ, else adapters are not applied.
    let alone: Vec<_> = rows.iter().map(Row::alone).collect();
    assert_ne!(alone[0].0.token_ids, alone[1].0.token_ids);
    assert_ne!(alone[0].0.token_ids, alone[2].0.token_ids);

    // Half join at once; the rest join one by one while the first decode.
    let mut batch = RunningBatch::new(8);
    let (first, later) = rows.split_at(rows.len() / 2);
    first.iter().for_each(|r| batch.join(r.batch_row()));
    batch.step();
    batch.step();
    for r in later {
        batch.join(r.batch_row());
        batch.step();
        let st = batch.stats();
        assert!(st.running <= 8, "{st:?}");
        assert!(
            st.last_step_tokens <= st.running + STEP_PROMPT_ROWS,
            "a step feeds one token per decoding row plus one prompt chunk: {st:?}"
        );
    }
    run(&mut batch);
    assert_eq!(batch.stats().kv_positions, 0, "every cache was freed");
    for (i, (r, (g, text))) in rows.iter().zip(&alone).enumerate() {
        let got = r.result().expect("done").expect("no error");
        assert_eq!(&got, g, "row {i}");
        assert_eq!(&r.seen.lock().unwrap().text, text, "row {i} streamed");
    }
}

#[test]
fn a_row_no_longer_wanted_leaves_at_once_with_its_cache() {
    let dir = tempfile::tempdir().unwrap();
    let engs = engines(dir.path());
    let keep = Row::new(&engs[1], vec![1, 2, 3], greedy(30));
    let gone = Row::new(&engs[2], long_prompt(), greedy(30));
    let mut batch = RunningBatch::new(4);
    batch.join(keep.batch_row());
    batch.step();
    // `gone` joins while `keep` decodes, so it reads its prompt in chunks
    // and is still reading it when it stops being wanted.
    batch.join(gone.batch_row());
    batch.step();
    let before = batch.stats();
    assert_eq!(before.running, 2);
    assert!(gone.result().is_none());
    gone.wanted.store(false, SeqCst);
    batch.step();
    let after = batch.stats();
    assert_eq!(after.running, 1, "{after:?}");
    assert_eq!(
        after.kv_positions,
        3 + 2,
        "only the kept row's cache remains"
    );
    let g = gone.result().expect("told at once").unwrap();
    assert_eq!(
        (g.finish_reason, g.completion_tokens),
        (FinishReason::Stop, 0)
    );
    run(&mut batch);
    assert_eq!(keep.result().unwrap().unwrap(), keep.alone().0);
}

#[test]
fn a_panic_while_decoding_one_row_fails_that_row_only() {
    let dir = tempfile::tempdir().unwrap();
    let engs = engines(dir.path());
    let prompt = vec![1, 40, 50, 60, 70];
    let ok = Row::new(&engs[0], prompt.clone(), greedy(8));
    let bad_token = ok.alone().0.token_ids[1];
    let bad = Arc::new(Eng {
        model: engs[0].model.clone(),
        stop: vec![],
        panic_on: Some(bad_token),
    });
    let bad = Row::new(&bad, prompt, greedy(8));
    let other = Row::new(&engs[1], vec![5, 6], sampled(3));
    let mut batch = RunningBatch::new(4);
    for r in [&ok, &bad, &other] {
        batch.join(r.batch_row());
    }
    run(&mut batch);
    let err = bad.result().unwrap().unwrap_err();
    assert!(
        err.contains("panicked") && err.contains("decoding met token"),
        "{err}"
    );
    assert_eq!(ok.result().unwrap().unwrap(), ok.alone().0);
    assert_eq!(other.result().unwrap().unwrap(), other.alone().0);
}

#[test]
fn feeds_on_models_of_different_bases_are_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let a = tiny(dir.path());
    let b = tiny(dir.path());
    let (mut ca, mut cb) = (a.new_cache(), b.new_cache());
    let mut feeds = [
        Feed {
            model: &a,
            ids: &[1, 2],
            cache: &mut ca,
        },
        Feed {
            model: &b,
            ids: &[3],
            cache: &mut cb,
        },
    ];
    let e = Llama::step_feeds(&mut feeds, ForwardOptions::default()).unwrap_err();
    assert!(e.to_string().contains("one loaded base model"), "{e}");
}

/// The real SmolLM2 on its packed serving weights, base and two random
/// adapters in one batch, greedy and seeded, a prompt several steps long
/// among them: each row equals its generation alone.
#[test]
#[ignore = "needs HONE_TEST_GGUF (the real SmolLM2 GGUF)"]
fn real_model_rows_on_mixed_adapters_equal_each_alone() {
    let gguf = std::env::var("HONE_TEST_GGUF").expect("set HONE_TEST_GGUF");
    let base = load_model(Path::new(&gguf), WeightPath::Packed).unwrap();
    let a1 = adapted(&base, 20, &["q_proj", "v_proj"]);
    let a2 = adapted(&base, 40, &["o_proj", "down_proj"]);
    let engs: Vec<Arc<Eng>> = [base, a1, a2]
        .into_iter()
        .map(|model| {
            Arc::new(Eng {
                model,
                stop: vec![2],
                panic_on: None,
            })
        })
        .collect();
    let prompts = [
        vec![1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 2],
        (0..40).map(|i| 100 + 37 * i).collect::<Vec<u32>>(),
    ];
    let mut rows = Vec::new();
    for (i, e) in engs.iter().enumerate() {
        for p in &prompts {
            rows.push(Row::new(e, p.clone(), greedy(16)));
            rows.push(Row::new(e, p.clone(), sampled(i as u64)));
        }
    }
    let alone: Vec<_> = rows.iter().map(Row::alone).collect();
    assert_ne!(
        alone[0].0.token_ids, alone[4].0.token_ids,
        "adapter 1 changes the answer"
    );
    let mut batch = RunningBatch::new(16);
    rows.iter().for_each(|r| batch.join(r.batch_row()));
    run(&mut batch);
    for (i, (r, (g, text))) in rows.iter().zip(&alone).enumerate() {
        assert_eq!(&r.result().unwrap().unwrap(), g, "row {i}");
        assert_eq!(&r.seen.lock().unwrap().text, text, "row {i} streamed");
    }
    // Each engine's second choice of a prompt copied the first's cache.
    let once = batch.stats().reused_prompt_tokens;
    let per_engine: usize = prompts.iter().map(|p| p.len() - 1).sum();
    assert_eq!(once, (engs.len() * per_engine) as u64);
    // Later rows that continue a prompt read before start from its cache.
    let mut longer = prompts[1].clone();
    longer.extend([5, 6, 7, 8]);
    let later: Vec<Row> = engs
        .iter()
        .map(|e| Row::new(e, longer.clone(), greedy(16)))
        .collect();
    later.iter().for_each(|r| batch.join(r.batch_row()));
    run(&mut batch);
    assert_eq!(
        batch.stats().reused_prompt_tokens - once,
        (engs.len() * prompts[1].len()) as u64
    );
    for (i, r) in later.iter().enumerate() {
        assert_eq!(r.result().unwrap().unwrap(), r.alone().0, "later row {i}");
    }
}

#[test]
fn a_lone_row_reads_its_prompt_in_one_step_and_joiners_in_small_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let engs = engines(dir.path());
    let prompt = long_prompt();
    assert!(prompt.len() > STEP_PROMPT_ROWS && prompt.len() <= IDLE_STEP_PROMPT_ROWS);
    let lone = Row::new(&engs[1], prompt.clone(), sampled(4));
    let mut batch = RunningBatch::new(4);
    batch.join(lone.batch_row());
    batch.step();
    let st = batch.stats();
    assert_eq!(
        st.last_step_tokens,
        prompt.len(),
        "the whole prompt at once"
    );
    assert_eq!(st.kv_positions, prompt.len());
    // A row joining while the first decodes reads its prompt in chunks.
    let joiner = Row::new(&engs[2], prompt.clone(), greedy(6));
    batch.join(joiner.batch_row());
    batch.step();
    assert_eq!(batch.stats().last_step_tokens, 1 + STEP_PROMPT_ROWS);
    run(&mut batch);
    for r in [&lone, &joiner] {
        assert_eq!(r.result().unwrap().unwrap(), r.alone().0);
        assert_eq!(r.seen.lock().unwrap().text, r.alone().1);
    }
}

#[test]
fn a_row_without_room_to_grow_ends_with_length_and_what_it_had() {
    let dir = tempfile::tempdir().unwrap();
    let engs = engines(dir.path());
    let prompt = vec![1, 40, 50, 60, 70];
    let mut short = Row::new(&engs[1], prompt.clone(), sampled(7));
    short.params.max_tokens = 12;
    // Room for the prompt and 4 fed tokens: the 5th sampled token is the
    // last, as with max_tokens 5.
    short.room = Some(prompt.len() + 4);
    let mut full = Row::new(&engs[1], prompt.clone(), sampled(7));
    full.params.max_tokens = 5;
    let other = Row::new(&engs[0], prompt.clone(), greedy(12));
    let mut batch = RunningBatch::new(4);
    batch.join(short.batch_row());
    batch.join(other.batch_row());
    run(&mut batch);
    let got = short.result().unwrap().unwrap();
    let want = full.alone().0;
    assert_eq!(got.finish_reason, FinishReason::Length);
    assert_eq!(got.token_ids, want.token_ids);
    assert_eq!(got.text, want.text);
    assert_eq!(
        other.result().unwrap().unwrap(),
        other.alone().0,
        "the other row is untouched"
    );
    assert_eq!(batch.stats().kv_positions, 0);
}

#[test]
fn a_row_starting_like_a_prompt_already_read_reuses_its_cache_and_answers_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let engs = engines(dir.path());
    // Longer than one 64-position key block, so a copy cuts inside the second.
    let head: Vec<u32> = long_prompt().into_iter().cycle().take(78).collect();
    let mut extended = head.clone();
    extended.extend([7, 8, 9]);
    let mut diverging = head[..50].to_vec();
    diverging.extend([11, 12]);
    let first = Row::new(&engs[1], head.clone(), greedy(6));
    // Each row with the prompt tokens it should not compute.
    let later = [
        // The same prompt: all but its last token (whose logits it needs).
        (Row::new(&engs[1], head.clone(), sampled(4)), head.len() - 1),
        (Row::new(&engs[1], extended, greedy(6)), head.len()),
        // It shares 50 tokens with `extended`, now the kept prompt.
        (Row::new(&engs[1], diverging, sampled(5)), 50),
        // Another adapter's keys and values differ: nothing to reuse.
        (Row::new(&engs[2], head.clone(), greedy(6)), 0),
        (Row::new(&engs[1], vec![1, 2, 3], greedy(4)), 0),
    ];
    let mut batch = RunningBatch::new(4);
    batch.join(first.batch_row());
    run(&mut batch);
    assert_eq!(first.result().unwrap().unwrap(), first.alone().0);
    let mut reused = batch.stats().reused_prompt_tokens;
    assert_eq!(reused, 0);
    for (i, (row, expect)) in later.iter().enumerate() {
        batch.join(row.batch_row());
        run(&mut batch);
        let now = batch.stats().reused_prompt_tokens;
        assert_eq!(now - reused, *expect as u64, "row {i}");
        reused = now;
        let (alone, text) = row.alone();
        assert_eq!(row.result().unwrap().unwrap(), alone, "row {i}");
        assert_eq!(row.seen.lock().unwrap().text, text, "row {i} streamed");
    }
    assert_eq!(
        batch.stats().kv_positions,
        0,
        "every running cache was freed"
    );
}

#[test]
fn rows_joining_with_the_same_prompt_read_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let engs = engines(dir.path());
    // The choices of an `n = 3` request (greedy and seeded ones), the same
    // prompt on another adapter, and a short prompt nobody waits for.
    let prompt = long_prompt();
    let rows = [
        Row::new(&engs[1], prompt.clone(), greedy(5)),
        Row::new(&engs[1], prompt.clone(), sampled(1)),
        Row::new(&engs[1], prompt.clone(), sampled(2)),
        Row::new(&engs[2], prompt.clone(), greedy(5)),
        Row::new(&engs[1], vec![5, 6, 7], greedy(5)),
    ];
    let mut batch = RunningBatch::new(8);
    rows.iter().for_each(|r| batch.join(r.batch_row()));
    batch.step();
    let st = batch.stats();
    assert_eq!((st.running, st.waiting), (3, 2), "two choices wait: {st:?}");
    run(&mut batch);
    // Each waiting choice copied all but the prompt's last token.
    assert_eq!(
        batch.stats().reused_prompt_tokens,
        2 * (prompt.len() as u64 - 1)
    );
    for (i, r) in rows.iter().enumerate() {
        let (alone, text) = r.alone();
        assert_eq!(r.result().unwrap().unwrap(), alone, "row {i}");
        assert_eq!(r.seen.lock().unwrap().text, text, "row {i} streamed");
    }
}

#[test]
fn the_next_turn_of_a_conversation_reuses_the_answer_too() {
    let dir = tempfile::tempdir().unwrap();
    let engs = engines(dir.path());
    let prompt = long_prompt();
    let first = Row::new(&engs[1], prompt.clone(), greedy(6));
    let mut batch = RunningBatch::new(4);
    batch.join(first.batch_row());
    run(&mut batch);
    let answer = first.result().unwrap().unwrap().token_ids;
    assert_eq!(answer.len(), 6);
    // The next turn: the prompt, the answer, then the user's next words. The
    // last answer token was sampled but never fed, so the cache holds five.
    let mut next_turn = prompt.clone();
    next_turn.extend(&answer);
    next_turn.extend([21, 22, 23]);
    let second = Row::new(&engs[1], next_turn, sampled(7));
    batch.join(second.batch_row());
    run(&mut batch);
    assert_eq!(
        batch.stats().reused_prompt_tokens,
        (prompt.len() + answer.len() - 1) as u64
    );
    let (alone, text) = second.alone();
    assert_eq!(second.result().unwrap().unwrap(), alone);
    assert_eq!(second.seen.lock().unwrap().text, text);
}
