//! The seeded sampler: temperature, top-k and top-p over one logits row.
//!
//! It runs once per generated token over the whole vocabulary (49k for
//! SmolLM2, 152k for Qwen), so it must not sort the vocabulary: the
//! candidates are found by partial selection ([`slice::select_nth_unstable_by`])
//! and only the few that top-k or top-p keep are sorted. The kept tokens,
//! their order and the random draw are the same as a full sort would give.
//!
//! One documented difference from the full sort (session 11): with top-p and
//! no top-k, the mass that top-p is a share of is now summed in vocabulary
//! order in f64, not in sorted order in f32. The cut can only move when the
//! running share lands within float rounding of `top_p`.

use std::cmp::Ordering;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{ModelError, Result};

/// Logits more than this many nats (at temperature 1) below the best are
/// never candidates: together they weigh under 1e-12 even at full vocab.
const FLOOR_NATS: f32 = 40.0;

/// Top-p first sorts this many of the best candidates; when they hold less
/// than `top_p` of the mass it sorts four times as many, and so on.
const FIRST_PREFIX: usize = 64;

/// Seeded sampler over a logits vector.
pub struct Sampler {
    rng: StdRng,
    temperature: f32,
    top_p: f32,
    top_k: usize,
}

impl Sampler {
    /// A sampler seeded with `seed` (`Sampler::new` takes these from
    /// `GenerationParams`).
    pub fn with(temperature: f32, top_p: f32, top_k: usize, seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            temperature,
            top_p,
            top_k,
        }
    }

    pub fn sample(&mut self, logits: &[f32]) -> Result<u32> {
        if logits.is_empty() {
            return Err(ModelError::Generation("empty logits".into()));
        }
        if self.temperature <= 0.0 || self.top_k == 1 {
            return Ok(argmax(logits));
        }
        let cands = self.candidates(logits);
        let total: f32 = cands.iter().map(|(_, p)| p).sum();
        let mut u = self.rng.random::<f32>() * total;
        for (id, p) in &cands {
            if u < *p {
                return Ok(*id);
            }
            u -= p;
        }
        Ok(cands
            .last()
            .map(|(id, _)| *id)
            .unwrap_or_else(|| argmax(logits)))
    }

    /// Tokens that can be sampled with their (unnormalised) probabilities,
    /// most likely first.
    fn candidates(&self, logits: &[f32]) -> Vec<(u32, f32)> {
        let mut c = weights(logits, self.temperature);
        if self.top_k > 0 && self.top_k < c.len() {
            c.select_nth_unstable_by(self.top_k - 1, more_likely);
            c.truncate(self.top_k);
        }
        if self.top_p >= 1.0 {
            c.sort_unstable_by(more_likely);
            return c;
        }
        // With top-k the list is short already: summed in sorted order as
        // it always was. Without it, in vocabulary order (module doc).
        let total = if self.top_k > 0 {
            c.sort_unstable_by(more_likely);
            c.iter().map(|(_, p)| p).sum::<f32>()
        } else {
            c.iter().map(|(_, p)| f64::from(*p)).sum::<f64>() as f32
        };
        let keep = nucleus(&mut c, self.top_p, total);
        c.truncate(keep.max(1));
        c
    }
}

/// `exp((l - max) / t)` for every logit within [`FLOOR_NATS`]`* t` of the
/// best, with its token id, in vocabulary order.
fn weights(logits: &[f32], t: f32) -> Vec<(u32, f32)> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let floor = max - FLOOR_NATS * t;
    logits
        .iter()
        .enumerate()
        .filter(|(_, &l)| l >= floor)
        .map(|(i, &l)| (i as u32, ((l - max) / t).exp()))
        .collect()
}

/// Sorts the best of `c` (most likely first) until the running share of
/// `total` reaches `top_p`, and returns how many that took (all of `c` if
/// it never does). Only a prefix is ever sorted: usually a few dozen tokens
/// of a vocabulary of tens of thousands.
fn nucleus(c: &mut [(u32, f32)], top_p: f32, total: f32) -> usize {
    let mut sorted = 0;
    let mut acc = 0.0f32;
    let mut want = FIRST_PREFIX.min(c.len());
    loop {
        if want < c.len() {
            c[sorted..].select_nth_unstable_by(want - sorted - 1, more_likely);
        }
        c[sorted..want].sort_unstable_by(more_likely);
        for (i, (_, p)) in c.iter().enumerate().take(want).skip(sorted) {
            acc += p / total;
            if acc >= top_p {
                return i + 1;
            }
        }
        if want == c.len() {
            return want;
        }
        sorted = want;
        want = (want * 4).min(c.len());
    }
}

/// Higher probability first; on ties, the lower id (a total order, so a
/// partial selection keeps exactly the tokens a full sort would).
fn more_likely(a: &(u32, f32), b: &(u32, f32)) -> Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// Index of the largest logit (the first on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sampler as it was before partial selection: the full sort.
    fn full_sort_candidates(s: &Sampler, logits: &[f32], f64_total: bool) -> Vec<(u32, f32)> {
        let mut c = weights(logits, s.temperature);
        c.sort_unstable_by(more_likely);
        if s.top_k > 0 {
            c.truncate(s.top_k);
        }
        if s.top_p < 1.0 {
            let total = if f64_total {
                let mut by_id = c.clone();
                by_id.sort_unstable_by_key(|(id, _)| *id);
                by_id.iter().map(|(_, p)| f64::from(*p)).sum::<f64>() as f32
            } else {
                c.iter().map(|(_, p)| p).sum::<f32>()
            };
            let mut acc = 0.0;
            let mut keep = c.len();
            for (i, (_, p)) in c.iter().enumerate() {
                acc += p / total;
                if acc >= s.top_p {
                    keep = i + 1;
                    break;
                }
            }
            c.truncate(keep.max(1));
        }
        c
    }

    /// A vocabulary-sized row with many ties and a long flat tail, as a
    /// small model's logits look.
    fn logits(vocab: usize, seed: u64) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..vocab)
            .map(|i| {
                let base: f32 = rng.random::<f32>() * 12.0 - 6.0;
                // Quantised, so that equal probabilities (ties) are common.
                let l = (base * 4.0).round() / 4.0;
                if i % 997 == 0 {
                    l + 9.0
                } else {
                    l
                }
            })
            .collect()
    }

    #[test]
    fn partial_selection_keeps_what_the_full_sort_kept() {
        for (seed, (t, top_p, top_k)) in [
            (0.7, 0.9, 0),
            (1.0, 0.95, 0),
            (0.3, 0.5, 0),
            (1.5, 0.99, 0),
            (0.7, 1.0, 0),
            (0.7, 0.9, 40),
            (1.0, 1.0, 300),
            (0.8, 0.9, 5000),
        ]
        .into_iter()
        .enumerate()
        {
            let s = Sampler::with(t, top_p, top_k, 0);
            let row = logits(49_152, seed as u64);
            let f64_total = top_k == 0;
            assert_eq!(
                s.candidates(&row),
                full_sort_candidates(&s, &row, f64_total),
                "t={t} top_p={top_p} top_k={top_k}"
            );
        }
    }

    #[test]
    fn nucleus_of_a_flat_row_takes_the_whole_row() {
        let mut c: Vec<(u32, f32)> = (0..1000).map(|i| (i, 1.0)).collect();
        assert_eq!(nucleus(&mut c, 1.5, 1000.0), 1000);
        assert!(c.windows(2).all(|w| w[0].0 < w[1].0), "ties by id");
    }
}
