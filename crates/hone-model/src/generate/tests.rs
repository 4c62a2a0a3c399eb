use super::*;

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
