use super::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A fake model that always predicts `script[pos - prompt_len]`.
struct Scripted {
    script: Vec<u32>,
    vocab: usize,
}

impl StepModel for Scripted {
    type Cache = ();
    fn new_cache(&self) {}
    fn step(&self, ids: &[u32], start: usize, _: &mut ()) -> Result<Vec<f32>> {
        let pos = start + ids.len();
        let mut l = vec![0.0; self.vocab];
        let tok = self.script.get(pos.saturating_sub(2)).copied().unwrap_or(0);
        l[tok as usize] = 10.0;
        Ok(l)
    }
    fn context_length(&self) -> usize {
        1000
    }
}

/// Each id is one char: 0..26 → 'a'..'z', 26 → ' ', 27 → '.', 28 → stop.
fn detok(ids: &[u32]) -> Result<String> {
    Ok(ids
        .iter()
        .map(|&i| match i {
            0..=25 => (b'a' + i as u8) as char,
            26 => ' ',
            27 => '.',
            _ => '#',
        })
        .collect())
}

fn ids(s: &str) -> Vec<u32> {
    s.bytes()
        .map(|b| match b {
            b' ' => 26,
            b'.' => 27,
            b'#' => 28,
            c => (c - b'a') as u32,
        })
        .collect()
}

fn run(script: &str, params: &GenerationParams) -> (Generation, Vec<String>) {
    let m = Scripted {
        script: ids(script),
        vocab: 29,
    };
    let mut pieces = Vec::new();
    let g = generate(&m, &[0, 1], params, &[28], &detok, &mut |s: &str| {
        pieces.push(s.to_string());
        ControlFlow::Continue(())
    })
    .unwrap();
    (g, pieces)
}

#[test]
fn stops_on_stop_token_without_emitting_it() {
    let (g, pieces) = run("hi there#more", &GenerationParams::default());
    assert_eq!(g.text, "hi there");
    assert_eq!(pieces.concat(), "hi there");
    assert_eq!(g.finish_reason, FinishReason::Stop);
    assert_eq!(g.completion_tokens, 9);
    assert_eq!(g.prompt_tokens, 2);
}

#[test]
fn max_tokens_gives_length() {
    let p = GenerationParams {
        max_tokens: 4,
        ..Default::default()
    };
    let (g, _) = run("hello world", &p);
    assert_eq!(g.text, "hell");
    assert_eq!(g.finish_reason, FinishReason::Length);
    assert_eq!(g.token_ids.len(), 4);
}

#[test]
fn stop_string_split_across_tokens_is_never_streamed() {
    let p = GenerationParams {
        stop: vec!["end".into(), "xyz".into()],
        ..Default::default()
    };
    let (g, pieces) = run("the end of it", &p);
    assert_eq!(g.text, "the ");
    assert_eq!(g.finish_reason, FinishReason::Stop);
    let streamed = pieces.concat();
    assert_eq!(streamed, "the ");
    // "e", "en" were held back, never streamed and retracted.
    assert!(!streamed.contains("en"));
}

#[test]
fn held_text_that_is_not_a_stop_is_released() {
    let p = GenerationParams {
        stop: vec!["ends".into()],
        max_tokens: 7,
        ..Default::default()
    };
    let (g, pieces) = run("an end.", &p);
    assert_eq!(g.text, "an end.");
    assert_eq!(pieces.concat(), "an end.");
    let p = GenerationParams {
        stop: vec!["ends".into()],
        max_tokens: 6,
        ..Default::default()
    };
    // Generation ends while "end" is held: it is flushed at the end.
    let (g, pieces) = run("an end", &p);
    assert_eq!(pieces.concat(), "an end");
    assert_eq!(g.finish_reason, FinishReason::Length);
}

#[test]
fn callback_break_stops_generation() {
    let m = Scripted {
        script: ids("abcdef"),
        vocab: 29,
    };
    let mut n = 0;
    let g = generate(
        &m,
        &[0, 1],
        &GenerationParams::default(),
        &[28],
        &detok,
        &mut |_| {
            n += 1;
            if n == 2 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        },
    )
    .unwrap();
    assert_eq!(g.text, "ab");
    assert_eq!(g.finish_reason, FinishReason::Stop);
}

#[test]
fn seeded_sampling_is_reproducible_and_seed_dependent() {
    let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
    let p = GenerationParams {
        temperature: 1.0,
        top_p: 0.9,
        top_k: 20,
        seed: 42,
        ..Default::default()
    };
    let draw = |p: &GenerationParams| {
        let mut s = Sampler::new(p);
        (0..64)
            .map(|_| s.sample(&logits).unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(draw(&p), draw(&p));
    let other = GenerationParams {
        seed: 43,
        ..p.clone()
    };
    assert_ne!(draw(&p), draw(&other));
}

#[test]
fn top_k_and_top_p_restrict_the_candidates() {
    let logits = vec![5.0, 4.0, 0.0, -1.0];
    let p = GenerationParams {
        temperature: 1.0,
        top_k: 2,
        ..Default::default()
    };
    let mut s = Sampler::new(&p);
    assert!((0..200).all(|_| s.sample(&logits).unwrap() < 2));
    let p = GenerationParams {
        temperature: 1.0,
        top_p: 0.5,
        ..Default::default()
    };
    let mut s = Sampler::new(&p);
    assert!((0..200).all(|_| s.sample(&logits).unwrap() == 0));
}

#[test]
fn greedy_is_argmax() {
    let mut s = Sampler::new(&GenerationParams::default());
    assert_eq!(s.sample(&[0.1, 3.0, 2.0]).unwrap(), 1);
}

/// Grammar-constrained generation over a toy vocabulary: ids 0..256 are the
/// single bytes, 256 ends the turn.
mod constrained {
    use super::*;
    use crate::constraint::{Grammar, GrammarEnv};
    use serde_json::{json, Value};

    const STOP: u32 = 256;

    /// A detokenizer of raw bytes with a grammar environment.
    struct Bytes(Arc<GrammarEnv>);

    impl Bytes {
        fn new() -> Self {
            let words: Vec<Vec<u8>> = (0..=255u8)
                .map(|b| vec![b])
                .chain([b"\xFF<|end|>".to_vec()])
                .collect();
            Bytes(Arc::new(
                GrammarEnv::from_token_bytes(&words, &[STOP]).unwrap(),
            ))
        }
    }

    impl Detokenizer for Bytes {
        fn decode(&self, ids: &[u32]) -> Result<String> {
            let bytes: Vec<u8> = ids.iter().filter(|&&i| i < 256).map(|&i| i as u8).collect();
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        }
        fn grammar_env(&self) -> Result<Arc<GrammarEnv>> {
            Ok(self.0.clone())
        }
    }

    /// Pseudo-random logits that depend on the position only: a model
    /// that knows nothing, which the mask must still keep to the grammar.
    struct Noise;

    impl Noise {
        fn logits(pos: usize) -> Vec<f32> {
            let mut rng = StdRng::seed_from_u64(pos as u64);
            (0..257).map(|_| rng.random::<f32>() * 8.0).collect()
        }
    }

    /// The cache is the number of positions seen.
    impl StepModel for Noise {
        type Cache = usize;
        fn new_cache(&self) -> usize {
            0
        }
        fn step(&self, ids: &[u32], start: usize, seen: &mut usize) -> Result<Vec<f32>> {
            *seen = start + ids.len();
            Ok(Self::logits(*seen))
        }
        fn context_length(&self) -> usize {
            4096
        }
    }

    impl BatchStepModel for Noise {
        fn step_batch(&self, ids: &[u32], caches: &mut [&mut usize]) -> Result<Vec<Vec<f32>>> {
            assert_eq!(ids.len(), caches.len());
            Ok(caches
                .iter_mut()
                .map(|seen| {
                    **seen += 1;
                    Self::logits(**seen)
                })
                .collect())
        }
    }

    /// [`Noise`] with a head start for the bytes that close strings,
    /// objects and arrays: with plain noise a JSON string would run on for
    /// hundreds of bytes.
    struct Biased;

    impl StepModel for Biased {
        type Cache = usize;
        fn new_cache(&self) -> usize {
            0
        }
        fn step(&self, ids: &[u32], start: usize, c: &mut usize) -> Result<Vec<f32>> {
            let mut l = Noise.step(ids, start, c)?;
            for b in [b'"', b'}', b']'] {
                l[b as usize] += 6.0;
            }
            Ok(l)
        }
        fn context_length(&self) -> usize {
            4096
        }
    }

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "color": {"enum": ["red", "green", "blue"]},
                "ok": {"type": "boolean"},
                "tags": {"type": "array", "items": {"$ref": "#/$defs/tag"}, "maxItems": 3},
                "size": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/size"}]}
            },
            "required": ["color", "ok", "tags", "size"],
            "additionalProperties": false,
            "$defs": {
                "tag": {"enum": ["a", "b"]},
                "size": {
                    "type": "object",
                    "properties": {"w": {"type": "integer", "minimum": 0, "maximum": 9}},
                    "required": ["w"],
                    "additionalProperties": false
                }
            }
        })
    }

    /// Checks `v` against [`schema`] by hand.
    fn conforms(v: &Value) -> bool {
        let o = match v.as_object() {
            Some(o) if o.len() == 4 => o,
            _ => return false,
        };
        let color = o["color"]
            .as_str()
            .is_some_and(|c| ["red", "green", "blue"].contains(&c));
        let tags = o["tags"]
            .as_array()
            .is_some_and(|t| t.len() <= 3 && t.iter().all(|x| x == "a" || x == "b"));
        let size = o["size"].is_null()
            || o["size"]
                .as_object()
                .is_some_and(|s| s.len() == 1 && s["w"].as_u64().is_some_and(|w| w <= 9));
        color && o["ok"].is_boolean() && tags && size
    }

    fn params(grammar: Grammar, seed: u64, temperature: f32) -> GenerationParams {
        GenerationParams {
            max_tokens: 400,
            temperature,
            seed,
            grammar: Some(grammar),
            ..Default::default()
        }
    }

    #[test]
    fn a_model_that_wants_plain_text_still_writes_the_schema() {
        let grammar = Grammar::json_schema(schema()).unwrap();
        let m = Scripted {
            script: b"hello there".iter().map(|&b| b as u32).collect(),
            vocab: 257,
        };
        let detok = Bytes::new();
        let mut streamed = String::new();
        let g = generate(
            &m,
            &[0, 1],
            &params(grammar, 0, 0.0),
            &[STOP],
            &detok,
            &mut |s| {
                streamed.push_str(s);
                ControlFlow::Continue(())
            },
        )
        .unwrap();
        let v: Value = serde_json::from_str(&g.text).unwrap_or_else(|e| panic!("{e}: {}", g.text));
        assert!(conforms(&v), "{v}");
        assert_eq!(streamed, g.text);
        assert_eq!(g.finish_reason, FinishReason::Stop);
        // It ends at the closing brace: nothing else could follow.
        assert_eq!(g.token_ids.last(), Some(&(b'}' as u32)));
        assert_eq!(g.completion_tokens, g.text.len());
    }

    #[test]
    fn sampled_noise_under_a_schema_always_validates() {
        let grammar = Grammar::json_schema(schema()).unwrap();
        let detok = Bytes::new();
        for seed in 0..8 {
            let p = params(grammar.clone(), seed, 1.0);
            let g = generate(&Noise, &[0], &p, &[STOP], &detok, &mut |_| {
                ControlFlow::Continue(())
            })
            .unwrap();
            assert_eq!(
                g.finish_reason,
                FinishReason::Stop,
                "seed {seed}: {}",
                g.text
            );
            let v: Value = serde_json::from_str(&g.text).unwrap();
            assert!(conforms(&v), "seed {seed}: {v}");
        }
    }

    #[test]
    fn max_tokens_cuts_a_constrained_answer_with_length() {
        let grammar = Grammar::json_schema(schema()).unwrap();
        let p = GenerationParams {
            max_tokens: 5,
            ..params(grammar, 3, 1.0)
        };
        let g = generate(&Noise, &[0], &p, &[STOP], &Bytes::new(), &mut |_| {
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(g.finish_reason, FinishReason::Length);
        assert_eq!(g.token_ids.len(), 5);
        assert!(g.text.starts_with("{\""), "{}", g.text);
    }

    #[test]
    fn batched_sequences_each_keep_their_own_grammar_state() {
        let grammar = Grammar::json_schema(schema()).unwrap();
        let p = params(grammar, 5, 1.0);
        let detok = Bytes::new();
        let prompts = vec![vec![0], vec![0, 1, 2], vec![7]];
        let batch = generate_batch(&Noise, &prompts, &p, &[STOP], &detok).unwrap();
        for (prompt, b) in prompts.iter().zip(&batch) {
            let alone = generate(&Noise, prompt, &p, &[STOP], &detok, &mut |_| {
                ControlFlow::Continue(())
            })
            .unwrap();
            assert_eq!(b, &alone);
            assert!(
                conforms(&serde_json::from_str(&b.text).unwrap()),
                "{}",
                b.text
            );
        }
    }

    #[test]
    fn a_detokenizer_without_a_grammar_env_refuses_a_grammar() {
        let p = params(Grammar::json_object(), 0, 0.0);
        let e = generate(&Noise, &[0], &p, &[STOP], &detok, &mut |_| {
            ControlFlow::Continue(())
        })
        .unwrap_err();
        assert!(matches!(e, ModelError::Grammar(_)), "{e}");
    }

    #[test]
    fn json_object_mode_gives_one_object() {
        let detok = Bytes::new();
        let schema_free = Grammar::json_object();
        for seed in 0..4 {
            let p = params(schema_free.clone(), seed, 1.0);
            let g = generate(&Biased, &[0], &p, &[STOP], &detok, &mut |_| {
                ControlFlow::Continue(())
            })
            .unwrap();
            assert_eq!(
                g.finish_reason,
                FinishReason::Stop,
                "seed {seed}: {}",
                g.text
            );
            let v: Value = serde_json::from_str(&g.text).unwrap();
            assert!(v.is_object(), "seed {seed}: {v}");
        }
    }
}

/// Counts the prompt tokens it was fed (its cache), predicting 'a' always.
struct Counting;

impl StepModel for Counting {
    type Cache = usize;
    fn new_cache(&self) -> usize {
        0
    }
    fn step(&self, ids: &[u32], start: usize, fed: &mut usize) -> Result<Vec<f32>> {
        assert_eq!(start, *fed, "chunks are fed in order");
        *fed += ids.len();
        let mut l = vec![0.0; 29];
        l[0] = 10.0;
        Ok(l)
    }
    fn context_length(&self) -> usize {
        100_000
    }
}

/// The client is gone during the prefill of a long prompt: generation stops
/// at the next chunk boundary instead of computing the whole prompt.
#[test]
fn cancellation_reaches_prefill_between_chunks() {
    let prompt = vec![1u32; 40 * PREFILL_CHUNK];
    let mut asked = 0;
    let m = Counting;
    let mut cache = m.new_cache();
    let got = prefill(&m, &prompt, &mut cache, &mut |piece: &str| {
        assert_eq!(piece, "", "prefill only asks, it shows no text");
        asked += 1;
        ControlFlow::Break(())
    })
    .unwrap();
    assert!(got.is_none());
    assert_eq!(asked, 1);
    assert_eq!(
        cache, PREFILL_CHUNK,
        "one chunk was computed, not the prompt"
    );

    let mut pieces = Vec::new();
    let g = generate(
        &m,
        &prompt,
        &GenerationParams::default(),
        &[28],
        &detok,
        &mut |s: &str| {
            pieces.push(s.to_string());
            ControlFlow::Break(())
        },
    )
    .unwrap();
    assert_eq!(pieces, vec![""]);
    assert_eq!((g.completion_tokens, g.text.as_str()), (0, ""));
    assert_eq!(g.finish_reason, FinishReason::Stop);
    assert_eq!(g.prompt_tokens, prompt.len());
}

/// Without a cancellation, a chunked prefill is the whole prompt fed in
/// order, asked once per chunk boundary, and generation goes on as usual.
#[test]
fn a_long_prompt_is_fed_in_chunks_and_asked_between_them() {
    let prompt = vec![1u32; 3 * PREFILL_CHUNK + 5];
    let mut empty = 0;
    let mut text = String::new();
    let p = GenerationParams {
        max_tokens: 3,
        ..Default::default()
    };
    let g = generate(&Counting, &prompt, &p, &[28], &detok, &mut |s: &str| {
        if s.is_empty() {
            empty += 1;
        }
        text.push_str(s);
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(empty, 3, "one question per boundary between 4 chunks");
    assert_eq!(g.text, "aaa");
    assert_eq!(text, "aaa");
    assert_eq!(g.finish_reason, FinishReason::Length);
}
