//! The packed step's KV cache and its attention.
//!
//! Keys are stored transposed in blocks of [`KEY_BLOCK`] positions, so that a
//! query row's scores against a block are `head_dim` vector multiply-adds
//! across 64 keys at once rather than 64 dot products, each ending in a
//! horizontal sum (those sums and a scalar `exp` per key were most of a 2k-token
//! prefill). A block is laid out the same whichever call wrote it, so a row's
//! arithmetic does not depend on which other rows share its call: chunked
//! prefill, one-token-at-a-time feeding and batched decode agree bit for bit.

use std::sync::Mutex;

use crate::config::Config;
use crate::error::{ModelError, Result};
use crate::ops::kernel::fast_exp;

use super::team;

/// Key positions per block: one head's keys and values for a block
/// (2 × 64 × head_dim floats) stay in L1 while every row of the call that sees
/// them is served, and 64 scores fill four AVX-512 registers.
const KEY_BLOCK: usize = 64;

/// Attention work (row × key × head visits) from which the heads are spread
/// over the decode team: below it (a step at a very short context), handing
/// the heads out costs more than it saves. It was 16k visits, so a batched
/// step's attention (8 rows at a few hundred positions) ran on the calling
/// thread while the other waited; at 256, `hone bench serve --clients 8`
/// gained 7–12% on SmolLM2 (docs/benchmarks.md, "Session 22").
const PARALLEL_ATTENTION_MIN: usize = 1 << 8;

/// Keys and values of one sequence, per layer: values as flat f32 rows
/// `[positions, kv_dim]`, keys as blocks `[kv_heads, head_dim, KEY_BLOCK]`.
/// Appended in place instead of copied each step (the tensor forward pass
/// has its own, [`crate::forward::TensorKvCache`]).
#[derive(Debug, Clone, Default)]
pub struct PackedKvCache {
    /// Per layer, whole blocks of transposed keys (the last one partly used).
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    kv_dim: usize,
    head_dim: usize,
}

impl PackedKvCache {
    pub fn new(cfg: &Config) -> Self {
        let layers = cfg.num_hidden_layers;
        Self {
            k: vec![Vec::new(); layers],
            v: vec![Vec::new(); layers],
            kv_dim: cfg.num_key_value_heads * cfg.head_dim,
            head_dim: cfg.head_dim,
        }
    }

    /// Cached positions.
    pub fn len(&self) -> usize {
        match self.v.first() {
            Some(v) if self.kv_dim > 0 => v.len() / self.kv_dim,
            _ => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// An error unless this cache was made for a model shaped like `cfg`
    /// (a cache from another model would index out of its layers).
    pub(super) fn check_fits(&self, cfg: &Config) -> Result<()> {
        let kv_dim = cfg.num_key_value_heads * cfg.head_dim;
        if self.k.len() != cfg.num_hidden_layers
            || self.kv_dim != kv_dim
            || self.head_dim != cfg.head_dim
        {
            return Err(ModelError::Generation(
                "KV cache built for another model".into(),
            ));
        }
        Ok(())
    }

    /// Room for `positions` more positions in every layer, allocated once
    /// before a prompt rather than grown (and copied) as it is fed.
    pub(super) fn reserve(&mut self, positions: usize) {
        let blocks = (self.len() + positions).div_ceil(KEY_BLOCK);
        let k_more = (blocks * KEY_BLOCK * self.kv_dim).saturating_sub(self.k_len());
        self.k.iter_mut().for_each(|l| l.reserve(k_more));
        let v_more = positions * self.kv_dim;
        self.v.iter_mut().for_each(|l| l.reserve(v_more));
    }

    /// Bytes held by the cached positions' keys and values.
    pub fn bytes(&self) -> usize {
        4 * (self.k.iter().map(Vec::len).sum::<usize>()
            + self.v.iter().map(Vec::len).sum::<usize>())
    }

    fn k_len(&self) -> usize {
        self.k.first().map_or(0, Vec::len)
    }

    pub fn clear(&mut self) {
        self.k
            .iter_mut()
            .chain(self.v.iter_mut())
            .for_each(Vec::clear);
    }

    /// A copy of the first `len` positions (at most [`Self::len`]), equal to
    /// the cache a sequence of just those positions would have built: the
    /// unused slots of its last key block are zero, as [`Self::push`]
    /// leaves them.
    pub fn prefix(&self, len: usize) -> Self {
        let len = len.min(self.len());
        let block = KEY_BLOCK * self.kv_dim;
        let k = self
            .k
            .iter()
            .map(|l| {
                let mut keys = l[..len.div_ceil(KEY_BLOCK) * block].to_vec();
                let used = len % KEY_BLOCK;
                if used > 0 {
                    let last = keys.len() - block;
                    for c in 0..self.kv_dim {
                        keys[last + c * KEY_BLOCK + used..last + (c + 1) * KEY_BLOCK].fill(0.0);
                    }
                }
                keys
            })
            .collect();
        let v = self
            .v
            .iter()
            .map(|l| l[..len * self.kv_dim].to_vec())
            .collect();
        Self {
            k,
            v,
            kv_dim: self.kv_dim,
            head_dim: self.head_dim,
        }
    }

    /// Appends one position's key and value (`[kv_dim]` each) to `layer`.
    pub(super) fn push(&mut self, layer: usize, key: &[f32], value: &[f32]) {
        let pos = self.v[layer].len() / self.kv_dim;
        let (j, hd) = (pos % KEY_BLOCK, self.head_dim);
        let ks = &mut self.k[layer];
        if j == 0 {
            ks.resize(ks.len() + KEY_BLOCK * self.kv_dim, 0.0);
        }
        let block = &mut ks[(pos / KEY_BLOCK) * KEY_BLOCK * self.kv_dim..];
        for (c, &x) in key.iter().enumerate() {
            // Column c = head·head_dim + d lands at [head][d][j].
            block[((c / hd) * hd + c % hd) * KEY_BLOCK + j] = x;
        }
        self.v[layer].extend_from_slice(value);
    }

    /// Key head `g`'s block starting at position `b` (a multiple of
    /// [`KEY_BLOCK`]): `[head_dim, KEY_BLOCK]`.
    fn key_block(&self, layer: usize, b: usize, g: usize) -> &[f32] {
        let start = (b / KEY_BLOCK) * KEY_BLOCK * self.kv_dim + g * self.head_dim * KEY_BLOCK;
        &self.k[layer][start..][..self.head_dim * KEY_BLOCK]
    }
}

/// Shapes of the attention, read once per call.
pub(super) struct AttnDims {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Multiplies `q·kᵀ` (the spec's `attention_scale`).
    pub scale: f32,
}

/// Causal grouped-query attention of each row over its own cache up to its
/// own position (its last `window` positions on a sliding layer); returns
/// `[n, heads·head_dim]`. `rows[i]` is row i's sequence, `positions[i]` its
/// position, and the rows of one sequence are adjacent. Block-wise: each head
/// is one job for the decode team, and rows of the same sequence (a prompt
/// chunk) read each block of keys once between them, with an online softmax,
/// instead of each row re-reading the whole cache.
pub(super) fn attend_rows(
    d: &AttnDims,
    q: &[f32],
    rows: &[usize],
    positions: &[usize],
    window: Option<usize>,
    caches: &[&mut PackedKvCache],
    layer: usize,
) -> Vec<f32> {
    let (hd, heads, n) = (d.head_dim, d.heads, rows.len());
    let spans: Vec<(usize, usize)> = positions
        .iter()
        .map(|&p| (window.map_or(0, |w| (p + 1).saturating_sub(w)), p + 1))
        .collect();
    let work = spans.iter().map(|(f, t)| t - f).sum::<usize>() * heads;
    let per_head: Vec<Mutex<Vec<f32>>> = (0..heads).map(|_| Mutex::new(Vec::new())).collect();
    let job = |head: usize| {
        let y = attend_head(d, head, q, rows, &spans, caches, layer);
        *per_head[head].lock().unwrap_or_else(|e| e.into_inner()) = y;
    };
    if work >= PARALLEL_ATTENTION_MIN {
        team::global().run(heads, &job);
    } else {
        (0..heads).for_each(job);
    }
    let mut out = vec![0f32; n * heads * hd];
    for (head, y) in per_head.into_iter().enumerate() {
        let y = y.into_inner().unwrap_or_else(|e| e.into_inner());
        for (i, yi) in y.chunks_exact(hd).enumerate() {
            out[(i * heads + head) * hd..][..hd].copy_from_slice(yi);
        }
    }
    out
}

/// Query head `head`'s attention for every row, `[n, head_dim]`. Keys are
/// visited in blocks on a fixed grid (multiples of [`KEY_BLOCK`]), and each
/// row keeps a running maximum and sum.
fn attend_head(
    d: &AttnDims,
    head: usize,
    q: &[f32],
    rows: &[usize],
    spans: &[(usize, usize)],
    caches: &[&mut PackedKvCache],
    layer: usize,
) -> Vec<f32> {
    let hd = d.head_dim;
    let kvd = d.kv_heads * hd;
    let g = head / (d.heads / d.kv_heads);
    let n = rows.len();
    let mut out = vec![0f32; n * hd];
    // Per row: the largest score so far and the sum of e^(score - max).
    let mut state = vec![(f32::NEG_INFINITY, 0f32); n];
    let mut scores = [0f32; KEY_BLOCK];
    let mut i0 = 0;
    while i0 < n {
        let seq = rows[i0];
        let i1 = i0 + rows[i0..].iter().take_while(|&&r| r == seq).count();
        let cache = &caches[seq];
        let vs = &cache.v[layer];
        let lo = spans[i0..i1].iter().map(|s| s.0).min().unwrap_or(0);
        let hi = spans[i0..i1].iter().map(|s| s.1).max().unwrap_or(0);
        for b in (lo / KEY_BLOCK * KEY_BLOCK..hi).step_by(KEY_BLOCK) {
            let kt = cache.key_block(layer, b, g);
            for i in i0..i1 {
                let (s, e) = (spans[i].0.max(b), spans[i].1.min(b + KEY_BLOCK));
                if s >= e {
                    continue;
                }
                let qh = &q[(i * d.heads + head) * hd..][..hd];
                block_scores(qh, kt, &mut scores);
                let sc = &mut scores[s - b..e - b];
                sc.iter_mut().for_each(|x| *x *= d.scale);
                let oh = &mut out[i * hd..][..hd];
                let (max, sum) = &mut state[i];
                let block_max = sc.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
                if block_max > *max {
                    let c = fast_exp(*max - block_max);
                    *sum *= c;
                    oh.iter_mut().for_each(|o| *o *= c);
                    *max = block_max;
                }
                let m = *max;
                sc.iter_mut().for_each(|x| *x = fast_exp(*x - m));
                *sum = sc.iter().fold(*sum, |a, &p| a + p);
                let values = &vs[s * kvd + g * hd..];
                add_weighted_values(oh, sc, values, kvd);
            }
        }
        i0 = i1;
    }
    for (oh, (_, sum)) in out.chunks_exact_mut(hd).zip(&state) {
        let inv = 1.0 / sum;
        oh.iter_mut().for_each(|o| *o *= inv);
    }
    out
}

/// `scores[j] = Σ_d q[d]·kt[d][j]` for the block's [`KEY_BLOCK`] keys (unused
/// columns of a partial block hold zeros or stale keys and are ignored by the
/// caller). Each column sums over `d` in the same order, so a score does not
/// depend on the block's fill.
#[inline]
fn block_scores(q: &[f32], kt: &[f32], scores: &mut [f32; KEY_BLOCK]) {
    let mut acc = [0f32; KEY_BLOCK];
    for (&qd, row) in q.iter().zip(kt.chunks_exact(KEY_BLOCK)) {
        for (a, &k) in acc.iter_mut().zip(row) {
            *a = qd.mul_add(k, *a);
        }
    }
    *scores = acc;
}

/// Columns of the output kept in registers while the values are summed.
const VALUE_TILE: usize = 64;

/// `out += Σ_j probs[j]·values[j·stride ..][..out.len()]`. The output is
/// summed in register tiles over the keys (rather than loaded and stored
/// once per key), each column in key order.
#[inline]
fn add_weighted_values(out: &mut [f32], probs: &[f32], values: &[f32], stride: usize) {
    let mut col = 0;
    while col < out.len() {
        let w = VALUE_TILE.min(out.len() - col);
        if w == VALUE_TILE {
            let mut acc = [0f32; VALUE_TILE];
            acc.copy_from_slice(&out[col..col + VALUE_TILE]);
            for (j, &p) in probs.iter().enumerate() {
                let v: &[f32; VALUE_TILE] = values[j * stride + col..][..VALUE_TILE]
                    .try_into()
                    .expect("a whole tile");
                for (a, &x) in acc.iter_mut().zip(v) {
                    *a = p.mul_add(x, *a);
                }
            }
            out[col..col + VALUE_TILE].copy_from_slice(&acc);
        } else {
            let o = &mut out[col..col + w];
            for (j, &p) in probs.iter().enumerate() {
                let v = &values[j * stride + col..][..w];
                o.iter_mut()
                    .zip(v)
                    .for_each(|(a, &x)| *a = p.mul_add(x, *a));
            }
        }
        col += w;
    }
}
