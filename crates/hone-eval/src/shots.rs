//! Few-shot examples: the pool they come from (a training-format chat file,
//! with every example that repeats an eval case left out, so a baseline is
//! never shown the answer it is tested on), and the [`ShotPicker`] seam that
//! chooses K of them for a case: by embedding similarity to the case
//! ([`SimilarPicker`], the default) or at random with a seed
//! ([`RandomPicker`]).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use hone_retrieve::{Embed, VectorIndex};
use hone_text::{ChatMessage, Role};
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::case::EvalCase;
use crate::error::{EvalError, Result};

/// The example conversations a few-shot baseline draws from.
#[derive(Debug, Clone)]
pub struct ShotPool {
    /// Where the examples come from (for messages).
    pub source: PathBuf,
    /// Each example's turns without its system message(s), ending with an
    /// assistant answer.
    shots: Vec<Vec<ChatMessage>>,
    /// Examples left out because their prompt is an eval case's.
    pub excluded: usize,
}

impl ShotPool {
    /// Reads `file` with hone-data's validation-file parser (the training
    /// format's checks, without the training minimum of examples) and leaves
    /// out examples identical to a case.
    pub fn load(file: &Path, cases: &[EvalCase]) -> Result<Self> {
        let examples = hone_data::parse_sft_validation_file(file).map_err(|e| match e {
            hone_data::DataError::Io { path, source } => EvalError::Io { path, source },
            hone_data::DataError::Invalid(r) => EvalError::Data {
                path: file.to_path_buf(),
                message: hone_data::render::render_report(&r),
            },
            other => EvalError::Data {
                path: file.to_path_buf(),
                message: other.to_string(),
            },
        })?;
        Ok(Self::from_examples(
            file,
            examples.into_iter().map(|e| e.messages),
            cases,
        ))
    }

    /// The pool of `examples`, without those whose prompt turns equal a
    /// case's (system messages and surrounding whitespace aside).
    pub fn from_examples(
        source: &Path,
        examples: impl IntoIterator<Item = Vec<ChatMessage>>,
        cases: &[EvalCase],
    ) -> Self {
        let case_keys: HashSet<Vec<(Role, String)>> =
            cases.iter().map(|c| prompt_key(&c.messages)).collect();
        let mut shots = Vec::new();
        let mut excluded = 0;
        for messages in examples {
            let Some(shot) = shot_turns(messages) else {
                continue;
            };
            let answer_at = shot.len() - 1;
            if case_keys.contains(&prompt_key(&shot[..answer_at])) {
                excluded += 1;
            } else {
                shots.push(shot);
            }
        }
        ShotPool {
            source: source.to_path_buf(),
            shots,
            excluded,
        }
    }

    pub fn len(&self) -> usize {
        self.shots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shots.is_empty()
    }

    /// Example `i`'s turns.
    pub fn shot(&self, i: usize) -> &[ChatMessage] {
        &self.shots[i]
    }

    /// An error unless the pool holds at least `k` examples.
    pub fn check_k(&self, k: usize) -> Result<()> {
        if k <= self.len() {
            return Ok(());
        }
        Err(EvalError::Spec(format!(
            "few-shot:{k} needs {k} examples, but {} has {} usable ({} left out as \
             identical to eval cases); lower K or give a larger file",
            self.source.display(),
            self.len(),
            self.excluded
        )))
    }
}

/// An example's turns without system messages, cut after its last
/// assistant message; `None` when it has no answer to show.
fn shot_turns(messages: Vec<ChatMessage>) -> Option<Vec<ChatMessage>> {
    let mut turns: Vec<ChatMessage> = messages
        .into_iter()
        .filter(|m| m.role != Role::System)
        .collect();
    let last_answer = turns.iter().rposition(|m| m.role == Role::Assistant)?;
    turns.truncate(last_answer + 1);
    (last_answer > 0).then_some(turns)
}

/// What makes two prompts the same case: their non-system turns.
fn prompt_key(messages: &[ChatMessage]) -> Vec<(Role, String)> {
    messages
        .iter()
        .filter(|m| m.role != Role::System)
        .map(|m| (m.role, m.content.trim().to_string()))
        .collect()
}

/// Chooses which pool examples a case is shown.
pub trait ShotPicker {
    /// `k` distinct indices into `pool` (the caller checked `k <= pool.len()`).
    fn pick(&self, case: &EvalCase, pool: &ShotPool, k: usize) -> Vec<usize>;
}

/// K examples at random, the same for a case on every run with the same
/// seed (each case draws from its own generator, seeded with the seed and
/// the case's line, so adding a case does not change the others' picks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RandomPicker {
    pub seed: u64,
}

impl ShotPicker for RandomPicker {
    fn pick(&self, case: &EvalCase, pool: &ShotPool, k: usize) -> Vec<usize> {
        let case_seed = (case.line as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut rng = StdRng::seed_from_u64(self.seed ^ case_seed);
        rand::seq::index::sample(&mut rng, pool.len(), k.min(pool.len())).into_vec()
    }
}

/// How few-shot examples are chosen (`--few-shot-pick`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ShotPick {
    /// The K examples whose question is most similar to the case's, by the
    /// embedding model's cosine similarity (what a production few-shot
    /// prompt would retrieve).
    #[default]
    Similar,
    /// K at random, seeded (`--seed`).
    Random,
}

impl ShotPick {
    pub fn as_str(self) -> &'static str {
        match self {
            ShotPick::Similar => "similar",
            ShotPick::Random => "random",
        }
    }
}

impl std::str::FromStr for ShotPick {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "similar" => Ok(ShotPick::Similar),
            "random" => Ok(ShotPick::Random),
            other => Err(format!(
                "few-shot pick '{other}': use similar (by embedding similarity) or random"
            )),
        }
    }
}

/// The question a conversation asks: its last user message (what a
/// retrieval query and the similarity of examples are measured on).
pub fn question(messages: &[ChatMessage]) -> &str {
    messages
        .iter()
        .rev()
        .find(|m| m.role == Role::User)
        .map_or("", |m| m.content.as_str())
}

/// The K examples whose question is nearest the case's. Every vector is
/// computed once, when the picker is made, so picking cannot fail.
#[derive(Debug, Clone)]
pub struct SimilarPicker {
    shots: VectorIndex,
    /// Each case's question vector, by the case's line.
    cases: HashMap<usize, Vec<f32>>,
}

impl SimilarPicker {
    /// Embeds the question of every pool example and every case.
    pub fn new(embedder: &dyn Embed, pool: &ShotPool, cases: &[EvalCase]) -> Result<Self> {
        let embed = |texts: Vec<&str>| {
            embedder
                .embed(&texts)
                .map(|e| e.vectors)
                .map_err(|e| EvalError::Spec(format!("few-shot similarity: {e}")))
        };
        let mut shots = VectorIndex::default();
        for v in embed(pool.shots.iter().map(|s| question(s)).collect())? {
            shots.push(v);
        }
        let case_vectors = embed(cases.iter().map(|c| question(&c.messages)).collect())?;
        let cases = cases
            .iter()
            .zip(case_vectors)
            .map(|(c, v)| (c.line, hone_retrieve::vectors::unit(v)))
            .collect();
        Ok(SimilarPicker { shots, cases })
    }
}

impl ShotPicker for SimilarPicker {
    /// The K nearest, the nearest last: shown as prior turns, it then sits
    /// right before the case's question (as in Liu et al. 2021, "What Makes
    /// Good In-Context Examples for GPT-3?").
    fn pick(&self, case: &EvalCase, _pool: &ShotPool, k: usize) -> Vec<usize> {
        let Some(q) = self.cases.get(&case.line) else {
            return Vec::new();
        };
        let mut picked: Vec<usize> = self.shots.top_k(q, k).into_iter().map(|(i, _)| i).collect();
        picked.reverse();
        picked
    }
}

/// The picker a few-shot baseline runs with.
#[derive(Debug, Clone)]
pub enum Picker {
    Similar(SimilarPicker),
    Random(RandomPicker),
}

impl ShotPicker for Picker {
    fn pick(&self, case: &EvalCase, pool: &ShotPool, k: usize) -> Vec<usize> {
        match self {
            Picker::Similar(p) => p.pick(case, pool, k),
            Picker::Random(p) => p.pick(case, pool, k),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::case::parse_cases;

    fn chat(u: &str, a: &str) -> Vec<ChatMessage> {
        vec![
            ChatMessage::new(Role::System, "sys"),
            ChatMessage::new(Role::User, u),
            ChatMessage::new(Role::Assistant, a),
        ]
    }

    fn cases() -> Vec<EvalCase> {
        parse_cases(concat!(
            r#"{"messages": [{"role": "user", "content": "q1"}], "expected_patterns": ["x"]}"#,
            "\n",
            r#"{"messages": [{"role": "system", "content": "other"}, {"role": "user", "content": "q2 "}, {"role": "assistant", "content": "ideal"}], "expected_patterns": ["x"]}"#,
        ))
        .unwrap()
    }

    #[test]
    fn examples_identical_to_cases_are_left_out() {
        let examples = vec![
            chat("q1", "a"),
            chat("q2", "b"),
            chat("q3", "c"),
            chat("Q1", "d"),
            vec![ChatMessage::new(Role::User, "no answer")],
        ];
        let pool = ShotPool::from_examples(Path::new("train.jsonl"), examples, &cases());
        assert_eq!(pool.excluded, 2, "q1 and q2 (system and whitespace aside)");
        assert_eq!(pool.len(), 2, "q3, Q1; the answerless example is no shot");
        assert_eq!(pool.shot(0)[0].content, "q3");
        assert_eq!(pool.shot(0).len(), 2, "the system message is dropped");
        assert!(pool.check_k(2).is_ok());
        let e = pool.check_k(3).unwrap_err().to_string();
        assert!(
            e.contains("few-shot:3 needs 3 examples, but train.jsonl has 2 usable (2 left out"),
            "{e}"
        );
    }

    #[test]
    fn random_picks_are_distinct_and_seeded() {
        let examples: Vec<_> = (0..20).map(|i| chat(&format!("u{i}"), "a")).collect();
        let cs = cases();
        let pool = ShotPool::from_examples(Path::new("t"), examples, &cs);
        let p = RandomPicker { seed: 7 };
        let a = p.pick(&cs[0], &pool, 5);
        assert_eq!(a.len(), 5);
        assert_eq!(a.iter().collect::<HashSet<_>>().len(), 5);
        assert!(a.iter().all(|&i| i < 20));
        assert_eq!(a, p.pick(&cs[0], &pool, 5), "same seed, same picks");
        assert_ne!(a, p.pick(&cs[1], &pool, 5), "each case draws its own");
        assert_ne!(a, RandomPicker { seed: 8 }.pick(&cs[0], &pool, 5));
    }

    #[test]
    fn similar_picks_are_the_nearest_questions_nearest_last() {
        let examples = vec![
            chat("how do I bake bread", "a"),
            chat("where is the harbour", "b"),
            chat("bake bread at home quickly", "c"),
            chat("ships in the harbour at night", "d"),
            chat("q1", "echo of an eval case"),
        ];
        let cs = parse_cases(concat!(
            r#"{"messages": [{"role": "user", "content": "q1"}], "expected_patterns": ["x"]}"#,
            "\n",
            r#"{"messages": [{"role": "user", "content": "bake bread"}], "expected_patterns": ["x"]}"#,
            "\n",
            r#"{"messages": [{"role": "user", "content": "the harbour ships"}], "expected_patterns": ["x"]}"#,
        ))
        .unwrap();
        let pool = ShotPool::from_examples(Path::new("t"), examples, &cs);
        assert_eq!(pool.len(), 4, "the copy of case q1 is never a shot");
        let e = hone_retrieve::fake::FakeEmbedder::new("fake");
        let p = SimilarPicker::new(&e, &pool, &cs).unwrap();
        assert_eq!(e.embedded.get(), 4 + 3, "each question embedded once");
        // "bake bread": shots 0 (2 shared words of 5) and 2 (2 of 5), tie
        // kept in pool order, the nearest last.
        assert_eq!(p.pick(&cs[1], &pool, 2), vec![2, 0]);
        assert_eq!(p.pick(&cs[2], &pool, 2), vec![1, 3]);
        assert_eq!(p.pick(&cs[2], &pool, 1), vec![3]);
        assert_eq!(Picker::Similar(p.clone()).pick(&cs[2], &pool, 1), vec![3]);
        assert_eq!("random".parse::<ShotPick>(), Ok(ShotPick::Random));
        assert!("nearest".parse::<ShotPick>().is_err());
    }
}
