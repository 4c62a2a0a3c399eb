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

/// Attention work (row × key × head visits) from which the tiles of
/// [`attend_rows`] ([`plan_tiles`]) are spread over the decode team: below it (a step at a very short context), handing them out costs
/// more than it saves, and the caller runs them itself. It was 16k visits, so
/// a batched step's attention (8 rows at a few hundred positions) ran on the
/// calling thread while the other waited; at 256, `hone bench serve --clients
/// 8` gained 7–12% on SmolLM2 (docs/benchmarks.md, "Session 22").
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
/// position, and the rows of one sequence are adjacent.
///
/// The work is cut into [`Tile`]s for the decode team ([`plan_tiles`]): a tile
/// is some rows of one sequence and some query heads of one KV head's group,
/// usually the whole group, so each block of that KV head's keys and values is
/// brought into L1 once, on one core, for all its heads. (With one job per
/// query head, the heads of a group read the same blocks on different cores:
/// attention on the team cost ~1.8× the CPU time it took serially.) Each tile
/// writes its own part of the output, split off beforehand, so nothing is
/// copied afterwards. A (row, head)'s arithmetic does not depend on the tiling.
pub(super) fn attend_rows(
    d: &AttnDims,
    q: &[f32],
    rows: &[usize],
    positions: &[usize],
    window: Option<usize>,
    caches: &[&mut PackedKvCache],
    layer: usize,
) -> Vec<f32> {
    let spans = visible_spans(positions, window);
    let work = spans.iter().map(|(f, t)| t - f).sum::<usize>() * d.heads;
    let threads = match work >= PARALLEL_ATTENTION_MIN {
        true => team::global().threads(),
        false => 1,
    };
    attend_spans(d, q, rows, &spans, caches, layer, threads)
}

/// The positions each row sees, `from..to`: up to its own, and only the last
/// `window` of them on a sliding layer.
fn visible_spans(positions: &[usize], window: Option<usize>) -> Vec<(usize, usize)> {
    positions
        .iter()
        .map(|&p| (window.map_or(0, |w| (p + 1).saturating_sub(w)), p + 1))
        .collect()
}

/// [`attend_rows`] with the visible `spans` worked out, tiled for `threads`
/// (1: run on the calling thread).
fn attend_spans(
    d: &AttnDims,
    q: &[f32],
    rows: &[usize],
    spans: &[(usize, usize)],
    caches: &[&mut PackedKvCache],
    layer: usize,
    threads: usize,
) -> Vec<f32> {
    let width = d.heads * d.head_dim;
    let tiles = plan_tiles(&sequence_runs(rows), d, threads);
    let mut out = vec![0f32; rows.len() * width];
    let parts = tile_parts(&mut out, d.head_dim, width, &tiles);
    let job = |j: usize| {
        let t = &tiles[j];
        // Each part is taken once, by its own tile: the lock is never contended.
        let mut outs = std::mem::take(&mut *parts[j].lock().unwrap_or_else(|e| e.into_inner()));
        let (q, spans) = (
            &q[t.rows.0 * width..t.rows.1 * width],
            &spans[t.rows.0..t.rows.1],
        );
        attend_tile(
            d,
            t.heads,
            q,
            spans,
            caches[rows[t.rows.0]],
            layer,
            &mut outs,
        );
    };
    if threads > 1 {
        team::global().run(tiles.len(), &job);
    } else {
        (0..tiles.len()).for_each(job);
    }
    drop(parts);
    out
}

/// One job of [`attend_rows`]: rows `rows.0..rows.1` (all of one sequence)
/// and query heads `heads.0..heads.1` (all of one KV head's group).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tile {
    rows: (usize, usize),
    heads: (usize, usize),
}

/// Tiles read each key block once per tile; splitting rows costs little more
/// (a prompt chunk's rows each do their own scores anyway), so a chunk's rows
/// are cut until there are this many tiles per thread, for balance: later rows
/// of a chunk see more keys and tiles are claimed dynamically.
const ROW_TILES_PER_THREAD: usize = 4;

/// The tiles for sequence runs `runs` (each `(first, end)` row) on `threads`
/// threads, in row-major order (a row's tiles in head order). Each run is one
/// tile per KV head, its rows cut into up to `ROW_TILES_PER_THREAD × threads /
/// (runs × kv_heads)` pieces; only when there are still fewer tiles than threads
/// (single rows on a model with few KV heads, e.g. one) are the groups' heads
/// cut too, since heads of one group in different tiles re-read its keys.
fn plan_tiles(runs: &[(usize, usize)], d: &AttnDims, threads: usize) -> Vec<Tile> {
    let base = (runs.len() * d.kv_heads).max(1);
    let row_pieces = (ROW_TILES_PER_THREAD * threads).div_ceil(base);
    let slices: Vec<(usize, usize)> = runs
        .iter()
        .flat_map(|&(i0, i1)| even_cuts(i0, i1, row_pieces))
        .collect();
    let group = d.heads / d.kv_heads.max(1);
    let head_pieces = threads
        .div_ceil(slices.len() * d.kv_heads)
        .min(group)
        .max(1);
    let cuts: Vec<(usize, usize)> = (0..d.kv_heads)
        .flat_map(|g| even_cuts(g * group, (g + 1) * group, head_pieces))
        .collect();
    slices
        .iter()
        .flat_map(|&rows| cuts.iter().map(move |&heads| Tile { rows, heads }))
        .collect()
}

/// `lo..hi` cut into at most `pieces` non-empty ranges of near-equal length.
fn even_cuts(lo: usize, hi: usize, pieces: usize) -> Vec<(usize, usize)> {
    let (len, pieces) = (hi - lo, pieces.clamp(1, (hi - lo).max(1)));
    (0..pieces)
        .map(|k| (lo + k * len / pieces, lo + (k + 1) * len / pieces))
        .collect()
}

/// The runs of adjacent rows of one sequence, as `(first, end)` row indices.
fn sequence_runs(rows: &[usize]) -> Vec<(usize, usize)> {
    let mut i0 = 0;
    rows.chunk_by(|a, b| a == b)
        .map(|run| {
            i0 += run.len();
            (i0 - run.len(), i0)
        })
        .collect()
}

/// `out` (`[n, width]`, `width` = heads·head_dim) split into the tiles' parts:
/// tile j gets, for each of its rows, the columns of its heads. `tiles` must be
/// [`plan_tiles`]'s row-major order, which visits each row's columns in order.
/// Behind a lock only so that tiles, run through a shared `Fn`, can take them.
fn tile_parts<'o>(
    out: &'o mut [f32],
    head_dim: usize,
    width: usize,
    tiles: &[Tile],
) -> Vec<Mutex<Vec<&'o mut [f32]>>> {
    let mut parts: Vec<Vec<&mut [f32]>> = tiles.iter().map(|_| Vec::new()).collect();
    let mut out_rows = out.chunks_exact_mut(width);
    let mut j = 0;
    while j < tiles.len() {
        // The tiles sharing this row range, which together cover its columns.
        let same = tiles[j..]
            .iter()
            .take_while(|t| t.rows == tiles[j].rows)
            .count();
        let (i0, i1) = tiles[j].rows;
        for mut row in out_rows.by_ref().take(i1 - i0) {
            for (k, t) in tiles[j..j + same].iter().enumerate() {
                let (part, rest) = row.split_at_mut((t.heads.1 - t.heads.0) * head_dim);
                parts[j + k].push(part);
                row = rest;
            }
        }
        j += same;
    }
    parts.into_iter().map(Mutex::new).collect()
}

/// Query heads `heads.0..heads.1` (of one KV head's group) for the rows of one
/// sequence: `q` holds the rows' queries `[rows, heads·head_dim]`, `spans`
/// their visible positions, and `outs[i]` receives row i's `[tile heads,
/// head_dim]`. Keys are visited in blocks on a fixed grid (multiples of
/// [`KEY_BLOCK`]) and each (row, head) keeps a running maximum and sum, so its
/// arithmetic is that of the head alone: per block, a row's heads are scored
/// against the keys, then their values summed, while both are in L1.
fn attend_tile(
    d: &AttnDims,
    heads: (usize, usize),
    q: &[f32],
    spans: &[(usize, usize)],
    cache: &PackedKvCache,
    layer: usize,
    outs: &mut [&mut [f32]],
) {
    let hd = d.head_dim;
    let (h0, nh) = (heads.0, heads.1 - heads.0);
    let g = h0 / (d.heads / d.kv_heads);
    let kvd = d.kv_heads * hd;
    let vs = &cache.v[layer];
    // Per (row, head): the largest score so far and the sum of e^(score - max).
    let mut state = vec![(f32::NEG_INFINITY, 0f32); outs.len() * nh];
    let mut probs = vec![[0f32; KEY_BLOCK]; nh];
    let lo = spans.iter().map(|s| s.0).min().unwrap_or(0);
    let hi = spans.iter().map(|s| s.1).max().unwrap_or(0);
    for b in (lo / KEY_BLOCK * KEY_BLOCK..hi).step_by(KEY_BLOCK) {
        let kt = cache.key_block(layer, b, g);
        for (i, out) in outs.iter_mut().enumerate() {
            let (s, e) = (spans[i].0.max(b), spans[i].1.min(b + KEY_BLOCK));
            if s >= e {
                continue;
            }
            let qs = q[(i * d.heads + h0) * hd..][..nh * hd].chunks_exact(hd);
            let heads = out.chunks_exact_mut(hd).zip(&mut state[i * nh..][..nh]);
            for ((qh, (oh, st)), p) in qs.zip(heads).zip(&mut probs) {
                block_scores(qh, kt, p);
                softmax_step(&mut p[s - b..e - b], d.scale, st, oh);
            }
            let values = &vs[s * kvd + g * hd..];
            for (oh, p) in out.chunks_exact_mut(hd).zip(&probs) {
                add_weighted_values(oh, &p[s - b..e - b], values, kvd);
            }
        }
    }
    for (out, st) in outs.iter_mut().zip(state.chunks_exact(nh)) {
        for (oh, (_, sum)) in out.chunks_exact_mut(hd).zip(st) {
            let inv = 1.0 / sum;
            oh.iter_mut().for_each(|o| *o *= inv);
        }
    }
}

/// One block's step of a (row, head)'s online softmax: `scores` (the row's
/// visible keys of the block) are scaled and become e^(score - max), with
/// `state` = (max, sum) and the partial output `out` rescaled first if the
/// block raised the maximum.
#[inline]
fn softmax_step(scores: &mut [f32], scale: f32, state: &mut (f32, f32), out: &mut [f32]) {
    scores.iter_mut().for_each(|x| *x *= scale);
    let (max, sum) = state;
    let block_max = scores.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
    if block_max > *max {
        let c = fast_exp(*max - block_max);
        *sum *= c;
        out.iter_mut().for_each(|o| *o *= c);
        *max = block_max;
    }
    let m = *max;
    scores.iter_mut().for_each(|x| *x = fast_exp(*x - m));
    *sum = scores.iter().fold(*sum, |a, &p| a + p);
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

#[cfg(test)]
#[path = "attend_tests.rs"]
mod tests;
