//! Tests of the packed step's attention ([`super`]): every tiling against an f64
//! reference and each row attended alone.

use super::*;
use crate::testing::lcg_uniform;

/// One layer of cached keys and values per sequence, kept both raw
/// (`[len, kv_dim]`, for the reference) and in the packed cache.
struct Fixture {
    dims: AttnDims,
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    caches: Vec<PackedKvCache>,
}

fn fixture(heads: usize, kv_heads: usize, head_dim: usize, lens: &[usize]) -> Fixture {
    let kvd = kv_heads * head_dim;
    let (mut keys, mut values, mut caches) = (Vec::new(), Vec::new(), Vec::new());
    for (s, &len) in lens.iter().enumerate() {
        // Keys large enough that softmaxes are peaked and the running
        // maximum moves between blocks.
        let k: Vec<f32> = lcg_uniform(100 + s as u64, len * kvd)
            .iter()
            .map(|x| 6.0 * x)
            .collect();
        let v = lcg_uniform(200 + s as u64, len * kvd);
        let mut cache = PackedKvCache {
            k: vec![Vec::new()],
            v: vec![Vec::new()],
            kv_dim: kvd,
            head_dim,
        };
        for p in 0..len {
            cache.push(0, &k[p * kvd..][..kvd], &v[p * kvd..][..kvd]);
        }
        keys.push(k);
        values.push(v);
        caches.push(cache);
    }
    let scale = 1.0 / (head_dim as f32).sqrt();
    let dims = AttnDims {
        heads,
        kv_heads,
        head_dim,
        scale,
    };
    Fixture {
        dims,
        keys,
        values,
        caches,
    }
}

impl Fixture {
    fn attend(
        &mut self,
        q: &[f32],
        rows: &[(usize, usize)],
        window: Option<usize>,
        threads: usize,
    ) -> Vec<f32> {
        let seqs: Vec<usize> = rows.iter().map(|r| r.0).collect();
        let positions: Vec<usize> = rows.iter().map(|r| r.1).collect();
        let spans = visible_spans(&positions, window);
        let caches: Vec<&mut PackedKvCache> = self.caches.iter_mut().collect();
        attend_spans(&self.dims, q, &seqs, &spans, &caches, 0, threads)
    }

    /// `softmax(q·kᵀ·scale)·v` over each row's visible positions, in f64.
    fn reference(&self, q: &[f32], rows: &[(usize, usize)], window: Option<usize>) -> Vec<f64> {
        let (heads, hd) = (self.dims.heads, self.dims.head_dim);
        let kvd = self.dims.kv_heads * hd;
        let mut out = vec![0f64; rows.len() * heads * hd];
        for (i, &(seq, pos)) in rows.iter().enumerate() {
            let from = window.map_or(0, |w| (pos + 1).saturating_sub(w));
            for h in 0..heads {
                let g = h / (heads / self.dims.kv_heads);
                let qh = &q[(i * heads + h) * hd..][..hd];
                let col = |m: &Vec<f32>, p: usize| m[p * kvd + g * hd..][..hd].to_vec();
                let scores: Vec<f64> = (from..=pos)
                    .map(|p| {
                        let k = col(&self.keys[seq], p);
                        let dot: f64 = qh.iter().zip(&k).map(|(&a, &b)| a as f64 * b as f64).sum();
                        dot * self.dims.scale as f64
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let w: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = w.iter().sum();
                let oh = &mut out[(i * heads + h) * hd..][..hd];
                for (p, wp) in (from..=pos).zip(&w) {
                    for (o, v) in oh.iter_mut().zip(col(&self.values[seq], p)) {
                        *o += wp / total * v as f64;
                    }
                }
            }
        }
        out
    }
}

/// Grouped-query attention over several sequences of different lengths in
/// one call (a prompt chunk crossing a block edge among single decode
/// rows, sequences out of order) equals the naive softmax, and each row
/// equals the same row attended alone, bit for bit.
#[test]
fn batched_gqa_equals_reference_and_rows_alone() {
    let lens = [1, 70, 140, 300];
    let mut rows = vec![(3, 299), (0, 0)];
    rows.extend((120..135).map(|p| (2, p)));
    rows.extend([(1, 63), (1, 64), (1, 69)]);
    for (heads, kv_heads, hd) in [(9, 3, 64), (6, 2, 40), (4, 1, 32), (4, 4, 16)] {
        let mut f = fixture(heads, kv_heads, hd, &lens);
        let q = lcg_uniform(7, rows.len() * heads * hd);
        for window in [None, Some(1), Some(50), Some(64)] {
            let what = format!("{heads}/{kv_heads}×{hd}, window {window:?}");
            let got = f.attend(&q, &rows, window, 1);
            // Every tiling (rows and heads cut for 2, 3 and 8 threads) agrees bit
            // for bit with the serial one.
            for threads in [2, 3, 8] {
                let tiled = f.attend(&q, &rows, window, threads);
                assert_eq!(tiled, got, "{what}: tiled for {threads} threads");
            }
            let want = f.reference(&q, &rows, window);
            let gap = got
                .iter()
                .zip(&want)
                .fold(0f64, |g, (&a, &b)| g.max((a as f64 - b).abs()));
            assert!(gap < 2e-5, "{what}: gap {gap:e} from the reference");
            let width = heads * hd;
            for (i, &row) in rows.iter().enumerate() {
                let alone = f.attend(&q[i * width..][..width], &[row], window, 2);
                assert_eq!(alone, got[i * width..][..width], "{what}: row {i} alone");
            }
        }
    }
}

/// Tiles cover every (row, head) once, each inside one sequence and one
/// KV head's group; a group's heads are cut only when whole groups leave
/// a thread idle.
#[test]
fn tiles_cover_rows_and_heads_once() {
    let dims = |heads, kv_heads| AttnDims {
        heads,
        kv_heads,
        head_dim: 8,
        scale: 1.0,
    };
    let decode8: Vec<(usize, usize)> = (0..8).map(|i| (i, i + 1)).collect();
    let chunk = [(0, 100)];
    let one = [(0, 1)];
    let cases = [
        // (runs, heads, kv_heads, threads, tiles expected)
        (&decode8[..], 9, 3, 2, 24), // batched decode: whole groups, no cuts
        (&one[..], 9, 3, 2, 3),      // one row, 3 groups: enough for 2 threads
        (&one[..], 4, 1, 2, 2),      // one row, one group: its heads are cut
        (&one[..], 4, 1, 8, 4),      // ... at most to single heads
        (&chunk[..], 9, 3, 2, 9),    // a prompt chunk: rows cut, 4 tiles a thread
        (&chunk[..], 4, 1, 1, 4),    // serial: still row-cut, harmless
    ];
    for (runs, heads, kv_heads, threads, want) in cases {
        let d = dims(heads, kv_heads);
        let tiles = plan_tiles(runs, &d, threads);
        let what = format!("{} runs, {heads}/{kv_heads}, {threads} threads", runs.len());
        assert_eq!(tiles.len(), want, "{what}: {tiles:?}");
        let n = runs.last().unwrap().1;
        let mut seen = vec![0u8; n * heads];
        for t in &tiles {
            let group = heads / kv_heads;
            assert_eq!(t.heads.0 / group, (t.heads.1 - 1) / group, "{what}: {t:?}");
            assert!(runs.iter().any(|r| r.0 <= t.rows.0 && t.rows.1 <= r.1));
            for i in t.rows.0..t.rows.1 {
                for h in t.heads.0..t.heads.1 {
                    seen[i * heads + h] += 1;
                }
            }
        }
        assert!(seen.iter().all(|&c| c == 1), "{what}: {tiles:?}");
    }
}
