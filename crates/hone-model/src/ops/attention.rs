//! RoPE and causal grouped-query attention in one op, `softmax(causal(rq·rkᵀ/√d))·v`,
//! with a hand-written backward that recomputes the probabilities.
//!
//! Why fused: built from autograd ops, attention keeps the scores and the probabilities
//! (`b·h·t·t` floats each, 9.4 MB per layer at 4×256 on SmolLM2) for the backward, and
//! candle's backward adds a zero-filled buffer and an add pass per graph edge; the key and
//! value heads are also copied `n_rep` times for GQA, and the head transposes and RoPE are
//! graph nodes of their own. Here nothing of size `t·t` outlives one head: the forward
//! keeps no scratch, the backward recomputes the probabilities per head (one extra
//! `q·kᵀ`, a few percent of a step), and shared K/V heads are read in place. Each
//! (batch, KV head) group runs on one thread with single-threaded gemm calls, so the
//! threads never wait on each other. Packed rows (several examples per row) pass their
//! segment starts, so no `t·t` mask tensor is built either.

use std::sync::Arc;

use super::kernel::{dot, exp_in_place, f32_data, matmul_ld, max, par_rows, Tr};
use super::scratch;
use candle_core::{bail, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};

/// Where the rotary tables and segment bounds of one attention call come from.
#[derive(Debug, Clone, Copy)]
pub struct AttentionSpec<'a> {
    /// Query heads; `q` is `[b, t, heads·d]`.
    pub heads: usize,
    /// Key/value heads (`heads` a multiple of it); `k`, `v` are `[b, t, kv_heads·d]`.
    pub kv_heads: usize,
    /// RoPE tables `(t, d/2)` shared by all rows, or `(b, t, d/2)` when each row has its
    /// own positions (packed rows).
    pub cos: &'a Tensor,
    /// Same shape as `cos`.
    pub sin: &'a Tensor,
    /// `[b·t]`: the first column each query may attend to (packed rows, whose examples
    /// must not see each other); `None`: every query sees back to column 0.
    pub segment_starts: Option<&'a [u32]>,
    /// Multiplies `q·kᵀ`; `None`: `d^-0.5` (Gemma's `query_pre_attn_scalar^-0.5`
    /// differs, [`crate::family::DecoderSpec::attention_scale`]).
    pub scale: Option<f32>,
    /// A sliding layer's window: the query at column `j` sees keys `j - w + 1 ..= j`
    /// only (on top of its segment start); `None`: the whole causal prefix.
    pub window: Option<usize>,
}

/// RoPE (Hugging Face "rotate_half" layout) on `q` and `k`, then causal grouped-query
/// attention `softmax(q·kᵀ·scale)·v` (`scale` = `1/√d` unless the spec sets it), on the projections' own token-major layout:
/// `q: [b, t, h·d]`, `k`, `v: [b, t, kv·d]` → `[b, t, h·d]`. Query head `i` reads KV
/// head `i / (h/kv)` (as `repeat_kv` does); query `j` sees keys from its segment start
/// (and within its window) to `j`. Differentiable in `q`, `k` and `v`.
///
/// One op instead of head transposes, two RoPE ops, `repeat_kv` copies, a score matmul,
/// a mask add, a softmax and a value matmul: none of those intermediates, nor their
/// gradients, ever enter candle's graph.
pub fn rope_attention(q: &Tensor, k: &Tensor, v: &Tensor, spec: &AttentionSpec) -> Result<Tensor> {
    let dims = Dims::of(q, k, v, spec)?
        .with_scale(spec.scale)
        .with_window(spec.window)?;
    let table = |x: &Tensor, name: &str| -> Result<Arc<Vec<f32>>> {
        let half = dims.d / 2;
        if x.dims() != [dims.t, half] && x.dims() != [dims.b, dims.t, half] {
            bail!(
                "rope_attention: {name} must be ({}, {half}) or ({}, {}, {half}), got {:?}",
                dims.t,
                dims.b,
                dims.t,
                x.dims()
            );
        }
        Ok(Arc::new(x.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?))
    };
    let starts = match spec.segment_starts {
        Some(s) if s.len() != dims.b * dims.t => {
            bail!(
                "rope_attention: {} segment starts for {} tokens",
                s.len(),
                dims.b * dims.t
            )
        }
        Some(s) => Some(Arc::new(s.to_vec())),
        None => None,
    };
    let ctx = Arc::new(Context {
        dims,
        cos: table(spec.cos, "cos")?,
        sin: table(spec.sin, "sin")?,
        per_row_tables: spec.cos.rank() == 3,
        starts,
    });
    q.contiguous()?
        .apply_op3(&k.contiguous()?, &v.contiguous()?, Attention { ctx })
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Dims {
    b: usize,
    h: usize,
    kv: usize,
    t: usize,
    d: usize,
    scale: f32,
    /// A sliding layer's window (see [`AttentionSpec::window`]).
    window: Option<usize>,
}

impl Dims {
    /// Shapes of a batch `b×t` with `h` query and `kv` key/value heads of width `d`.
    pub(crate) fn new(b: usize, t: usize, (h, kv): (usize, usize), d: usize) -> Self {
        Self {
            b,
            h,
            kv,
            t,
            d,
            scale: 1.0 / (d as f32).sqrt(),
            window: None,
        }
    }

    /// These dims with the scores scaled by `scale` (`None`: keep `d^-0.5`).
    pub(crate) fn with_scale(self, scale: Option<f32>) -> Self {
        Self {
            scale: scale.unwrap_or(self.scale),
            ..self
        }
    }

    /// These dims with a sliding window (`None`: full causal attention); a zero window
    /// would leave a query nothing to attend to and is an error.
    pub(crate) fn with_window(self, window: Option<usize>) -> Result<Self> {
        if window == Some(0) {
            bail!("attention: a sliding window must be positive");
        }
        Ok(Self { window, ..self })
    }

    /// The first key column query `i` sees: its segment start (`starts`, the row's),
    /// moved up to the window's left edge on a sliding layer.
    fn first_visible(&self, i: usize, starts: Option<&[u32]>) -> usize {
        let s = starts.map_or(0, |s| (s[i] as usize).min(i));
        match self.window {
            Some(w) => s.max((i + 1).saturating_sub(w)),
            None => s,
        }
    }

    fn of(q: &Tensor, k: &Tensor, v: &Tensor, spec: &AttentionSpec) -> Result<Self> {
        let (b, t, qw) = q.dims3()?;
        let (h, kv) = (spec.heads, spec.kv_heads);
        let fits = h > 0 && kv > 0 && h % kv == 0 && qw % h == 0 && (qw / h) % 2 == 0;
        let d = if fits { qw / h } else { 0 };
        if !fits || k.dims() != [b, t, kv * d] || v.dims() != k.dims() {
            bail!(
                "rope_attention: q {:?}, k {:?}, v {:?} do not fit {h} query and {kv} key/value heads of even width",
                q.dims(),
                k.dims(),
                v.dims()
            );
        }
        if [q, k, v].iter().any(|x| x.dtype() != DType::F32) {
            bail!("rope_attention: only f32 is supported");
        }
        Ok(Self::new(b, t, (h, kv), d))
    }
    fn n_rep(&self) -> usize {
        self.h / self.kv
    }
    /// Floats of one head's `[t, d]` block.
    fn head(&self) -> usize {
        self.t * self.d
    }
}

/// What the forward and backward share: shapes, the RoPE tables and segment starts.
/// The fused decoder stack builds one per pass and calls its kernels directly.
pub(crate) struct Context {
    dims: Dims,
    cos: Arc<Vec<f32>>,
    sin: Arc<Vec<f32>>,
    per_row_tables: bool,
    starts: Option<Arc<Vec<u32>>>,
}

impl Context {
    /// `cos`/`sin`: `(t, d/2)` tables shared by all rows, or `(b, t, d/2)` per row when
    /// `per_row_tables`; `starts`: packed rows' segment starts (`[b·t]`).
    pub(crate) fn new(
        dims: Dims,
        (cos, sin): (Arc<Vec<f32>>, Arc<Vec<f32>>),
        per_row_tables: bool,
        starts: Option<Arc<Vec<u32>>>,
    ) -> Self {
        Self {
            dims,
            cos,
            sin,
            per_row_tables,
            starts,
        }
    }

    /// Causal attention of token-major `q`, `k`, `v` (RoPE applied here) into a new
    /// token-major `[b, t, h·d]` buffer.
    pub(crate) fn forward(&self, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f32> {
        let (cx, dm) = (self, self.dims);
        let q = cx.to_heads(q, dm.h, true);
        let k = cx.to_heads(k, dm.kv, true);
        let v = cx.to_heads(v, dm.kv, false);
        let (hd, rep) = (dm.head(), dm.n_rep());
        let mut heads = scratch::take(q.len());
        // One "row" = the `rep` query heads of one (batch, KV head) group.
        par_rows(&mut heads, rep * hd, 2 * rep * hd * dm.t, |g0, chunk| {
            let mut p = vec![0f32; dm.t * dm.t];
            for (gi, y) in chunk.chunks_exact_mut(rep * hd).enumerate() {
                let g = g0 + gi;
                let starts = cx.row_starts(g / dm.kv);
                let (kh, vh) = (&k[g * hd..(g + 1) * hd], &v[g * hd..(g + 1) * hd]);
                for (r, yh) in y.chunks_exact_mut(hd).enumerate() {
                    let qh = &q[(g * rep + r) * hd..(g * rep + r + 1) * hd];
                    probs(&mut p, qh, kh, &dm, starts);
                    probs_times_v(yh, &p, vh, dm.t, dm.d);
                }
            }
        });
        let mut out = scratch::take(heads.len());
        cx.to_tokens(&heads, dm.h, false, &mut out);
        [q, k, v, heads].into_iter().for_each(scratch::give);
        out
    }

    /// The backward of [`Self::forward`] for the output gradient `dy`, into `out` laid
    /// out as `[dq | dk | dv]`, each token-major like its input.
    pub(crate) fn backward(&self, q: &[f32], k: &[f32], v: &[f32], dy: &[f32], out: &mut [f32]) {
        let (cx, dm) = (self, self.dims);
        let q = cx.to_heads(q, dm.h, true);
        let k = cx.to_heads(k, dm.kv, true);
        let v = cx.to_heads(v, dm.kv, false);
        let dy = cx.to_heads(dy, dm.h, false);
        let (hd, rep, t) = (dm.head(), dm.n_rep(), dm.t);
        let groups = dm.b * dm.kv;
        // Per (batch, KV head) group: [dq of its `rep` heads | dk | dv], head-major.
        let mut grads = scratch::take_zeroed(groups * (rep + 2) * hd);
        par_rows(&mut grads, (rep + 2) * hd, 5 * rep * hd * t, |g0, chunk| {
            let mut p = vec![0f32; t * t];
            let mut dp = vec![0f32; t * t];
            for (gi, o) in chunk.chunks_exact_mut((rep + 2) * hd).enumerate() {
                let g = g0 + gi;
                let starts = cx.row_starts(g / dm.kv);
                let (kh, vh) = (&k[g * hd..(g + 1) * hd], &v[g * hd..(g + 1) * hd]);
                let (dq, dkv) = o.split_at_mut(rep * hd);
                let (dk, dv) = dkv.split_at_mut(hd);
                for r in 0..rep {
                    let h0 = (g * rep + r) * hd;
                    let (qh, dyh) = (&q[h0..h0 + hd], &dy[h0..h0 + hd]);
                    probs(&mut p, qh, kh, &dm, starts);
                    let heads = HeadGrads {
                        dq: &mut dq[r * hd..(r + 1) * hd],
                        dk,
                        dv,
                    };
                    head_backward(heads, (&mut p, &mut dp), (qh, kh, vh, dyh), &dm, starts);
                }
            }
        });
        let (nq, nk) = (q.len(), k.len());
        let (dq_out, dkv_out) = out.split_at_mut(nq);
        let (dk_out, dv_out) = dkv_out.split_at_mut(nk);
        // Gather each kind back into head-major order, then to tokens (RoPE undone on
        // dq and dk).
        let pick = |slot: usize, len: usize| -> Vec<f32> {
            let mut x = Vec::with_capacity(groups * len * hd);
            for g in 0..groups {
                let base = g * (rep + 2) * hd + slot * hd;
                x.extend_from_slice(&grads[base..base + len * hd]);
            }
            x
        };
        cx.to_tokens(&pick(0, rep), dm.h, true, dq_out);
        cx.to_tokens(&pick(rep, 1), dm.kv, true, dk_out);
        cx.to_tokens(&pick(rep + 1, 1), dm.kv, false, dv_out);
        [q, k, v, dy, grads].into_iter().for_each(scratch::give);
    }
    /// The `(cos, sin)` rows of token `i` of batch row `bi`.
    fn trig(&self, bi: usize, i: usize) -> (&[f32], &[f32]) {
        let half = self.dims.d / 2;
        let pos = if self.per_row_tables {
            bi * self.dims.t + i
        } else {
            i
        };
        let r = pos * half..(pos + 1) * half;
        (&self.cos[r.clone()], &self.sin[r])
    }

    /// The segment starts of batch row `bi` (`None`: all zero).
    fn row_starts(&self, bi: usize) -> Option<&[u32]> {
        let t = self.dims.t;
        self.starts.as_ref().map(|s| &s[bi * t..(bi + 1) * t])
    }

    /// Token-major `[b, t, n·d]` → head-major `[b, n, t, d]`, rotating each row by RoPE
    /// when `rotate`.
    fn to_heads(&self, x: &[f32], n: usize, rotate: bool) -> Vec<f32> {
        let Dims { t, d, .. } = self.dims;
        let mut out = scratch::take(x.len());
        par_rows(&mut out, t * d, t * d, |first, chunk| {
            for (ci, block) in chunk.chunks_exact_mut(t * d).enumerate() {
                let (bi, head) = ((first + ci) / n, (first + ci) % n);
                for (i, y) in block.chunks_exact_mut(d).enumerate() {
                    let src = &x[(bi * t + i) * n * d + head * d..][..d];
                    if rotate {
                        let (c, s) = self.trig(bi, i);
                        rotate_half(src, y, c, s, false);
                    } else {
                        y.copy_from_slice(src);
                    }
                }
            }
        });
        out
    }

    /// Head-major `[b, n, t, d]` → token-major `[b, t, n·d]` into `out`, rotating each row
    /// back (by −θ: the transpose of the forward rotation) when `unrotate`.
    fn to_tokens(&self, x: &[f32], n: usize, unrotate: bool, out: &mut [f32]) {
        let Dims { t, d, .. } = self.dims;
        par_rows(out, n * d, n * d, |first, chunk| {
            for (ci, row) in chunk.chunks_exact_mut(n * d).enumerate() {
                let (bi, i) = ((first + ci) / t, (first + ci) % t);
                for (head, y) in row.chunks_exact_mut(d).enumerate() {
                    let src = &x[((bi * n + head) * t + i) * d..][..d];
                    if unrotate {
                        let (c, s) = self.trig(bi, i);
                        rotate_half(src, y, c, s, true);
                    } else {
                        y.copy_from_slice(src);
                    }
                }
            }
        });
    }
}

/// RoPE of one row in the "rotate_half" layout (the pair of element `i` is `i + d/2`);
/// `inverse` rotates by the negated angle.
fn rotate_half(x: &[f32], y: &mut [f32], cos: &[f32], sin: &[f32], inverse: bool) {
    let half = x.len() / 2;
    let sign = if inverse { -1.0 } else { 1.0 };
    let (x1, x2) = x.split_at(half);
    let (y1, y2) = y.split_at_mut(half);
    for i in 0..half {
        let (c, s) = (cos[i], sign * sin[i]);
        y1[i] = x1[i] * c - x2[i] * s;
        y2[i] = x2[i] * c + x1[i] * s;
    }
}

/// Rows per block of the causal products: block `[r0, r1)` of queries only meets keys
/// `[0, r1)`, so the products skip the zero upper triangle block by block (10 of 16
/// blocks computed at t = 256).
const BLOCK: usize = 64;

/// The row blocks `[r0, r1)` of `t` rows.
fn blocks(t: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..t)
        .step_by(BLOCK)
        .map(move |r0| (r0, (r0 + BLOCK).min(t)))
}

/// `y = p·v` for one head (`p: [t, t]` lower-triangular, `v`, `y: [t, d]`).
fn probs_times_v(y: &mut [f32], p: &[f32], v: &[f32], t: usize, d: usize) {
    for (r0, r1) in blocks(t) {
        let (pb, yb) = (&p[r0 * t..], &mut y[r0 * d..]);
        matmul_ld(
            (yb, d),
            (r1 - r0, d, r1),
            (pb, t, Tr::N),
            (v, d, Tr::N),
            false,
            1.0,
            false,
        );
    }
}

/// The causal softmax probabilities `p = softmax(causal(q·kᵀ·scale))` of one head into
/// `p: [t, t]`: row `i` covers columns `dm.first_visible(i)..=i` (its segment start and
/// window), and every other entry is an exact zero.
fn probs(p: &mut [f32], q: &[f32], k: &[f32], dm: &Dims, starts: Option<&[u32]>) {
    let (t, d) = (dm.t, dm.d);
    for (r0, r1) in blocks(t) {
        let (pb, qb) = (&mut p[r0 * t..], &q[r0 * d..]);
        matmul_ld(
            (pb, t),
            (r1 - r0, r1, d),
            (qb, d, Tr::N),
            (k, d, Tr::T),
            false,
            1.0,
            false,
        );
    }
    for (i, row) in p.chunks_exact_mut(t).enumerate() {
        let s = dm.first_visible(i, starts);
        row[..s].fill(0.0);
        let (vis, masked) = row[s..].split_at_mut(i + 1 - s);
        let shift = max(vis) * dm.scale;
        let inv = 1.0 / exp_in_place(vis, dm.scale, shift);
        vis.iter_mut().for_each(|x| *x *= inv);
        masked.fill(0.0);
    }
}

struct Attention {
    ctx: Arc<Context>,
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "hone-rope-attention"
    }

    fn cpu_fwd(
        &self,
        sq: &CpuStorage,
        lq: &Layout,
        sk: &CpuStorage,
        lk: &Layout,
        sv: &CpuStorage,
        lv: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dm = self.ctx.dims;
        let out = self.ctx.forward(
            f32_data(sq, lq, "rope_attention q")?,
            f32_data(sk, lk, "rope_attention k")?,
            f32_data(sv, lv, "rope_attention v")?,
        );
        Ok((CpuStorage::F32(out), Shape::from((dm.b, dm.t, dm.h * dm.d))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        if !(q.track_op() || k.track_op() || v.track_op()) {
            return Ok((None, None, None));
        }
        let dm = self.ctx.dims;
        // One flat buffer [dq | dk | dv], each token-major: narrowing it copies nothing.
        let all = q.apply_op3_no_bwd(
            &Tensor::cat(&[k, v], 0)?,
            &grad.contiguous()?,
            &AttentionBwd {
                ctx: self.ctx.clone(),
            },
        )?;
        let (nq, nk) = (dm.b * dm.t * dm.h * dm.d, dm.b * dm.t * dm.kv * dm.d);
        let part = |start: usize, len: usize, heads: usize| -> Result<Tensor> {
            all.narrow(0, start, len)?
                .reshape((dm.b, dm.t, heads * dm.d))
        };
        let dq = q.track_op().then(|| part(0, nq, dm.h)).transpose()?;
        let dk = k.track_op().then(|| part(nq, nk, dm.kv)).transpose()?;
        let dv = v.track_op().then(|| part(nq + nk, nk, dm.kv)).transpose()?;
        Ok((dq, dk, dv))
    }
}

/// Inputs: `q`, `k` and `v` stacked along the batch axis (`[2b, t, kv·d]`), and `dy`.
/// Output: the flat `[dq | dk | dv]`, each in its input's token-major layout.
struct AttentionBwd {
    ctx: Arc<Context>,
}

impl CustomOp3 for AttentionBwd {
    fn name(&self) -> &'static str {
        "hone-rope-attention-bwd"
    }

    fn cpu_fwd(
        &self,
        sq: &CpuStorage,
        lq: &Layout,
        skv: &CpuStorage,
        lkv: &Layout,
        sg: &CpuStorage,
        lg: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dm = self.ctx.dims;
        let kv = f32_data(skv, lkv, "rope_attention_bwd k,v")?;
        let (k, v) = kv.split_at(kv.len() / 2);
        let mut out = vec![0f32; dm.b * dm.t * (dm.h + 2 * dm.kv) * dm.d];
        self.ctx.backward(
            f32_data(sq, lq, "rope_attention_bwd q")?,
            k,
            v,
            f32_data(sg, lg, "rope_attention_bwd grad")?,
            &mut out,
        );
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}

/// One query head's share of the gradients (`dk` and `dv` are shared by the group's
/// heads and accumulate; all start zeroed).
struct HeadGrads<'a> {
    dq: &'a mut [f32],
    dk: &'a mut [f32],
    dv: &'a mut [f32],
}

/// The backward of one head given its probabilities `p`, block by block below the
/// diagonal: `dv += pᵀ·dy`, `dp = dy·vᵀ`, `ds = softmax'(dp)`, `dq = ds·k`, `dk += dsᵀ·q`.
fn head_backward(
    g: HeadGrads,
    (p, dp): (&mut [f32], &mut [f32]),
    (q, k, v, dy): (&[f32], &[f32], &[f32], &[f32]),
    dm: &Dims,
    starts: Option<&[u32]>,
) {
    let (t, d) = (dm.t, dm.d);
    for (r0, r1) in blocks(t) {
        let (pb, dyb) = (&p[r0 * t..], &dy[r0 * d..]);
        matmul_ld(
            (&mut *g.dv, d),
            (r1, d, r1 - r0),
            (pb, t, Tr::T),
            (dyb, d, Tr::N),
            true,
            1.0,
            false,
        );
        let dpb = &mut dp[r0 * t..];
        matmul_ld(
            (dpb, t),
            (r1 - r0, r1, d),
            (dyb, d, Tr::N),
            (v, d, Tr::T),
            false,
            1.0,
            false,
        );
    }
    softmax_backward(p, dp, dm, starts);
    for (r0, r1) in blocks(t) {
        let (dsb, qb) = (&dp[r0 * t..], &q[r0 * d..]);
        let dqb = &mut g.dq[r0 * d..];
        matmul_ld(
            (dqb, d),
            (r1 - r0, d, r1),
            (dsb, t, Tr::N),
            (k, d, Tr::N),
            false,
            1.0,
            false,
        );
        matmul_ld(
            (&mut *g.dk, d),
            (r1, d, r1 - r0),
            (dsb, t, Tr::T),
            (qb, d, Tr::N),
            true,
            1.0,
            false,
        );
    }
}

/// `ds = scale · p ⊙ (dp − rowsum(p ⊙ dp))` in place in `dp`, over each row's visible
/// columns; zero elsewhere.
fn softmax_backward(p: &[f32], dp: &mut [f32], dm: &Dims, starts: Option<&[u32]>) {
    let (t, scale) = (dm.t, dm.scale);
    for (i, (pr, dr)) in p.chunks_exact(t).zip(dp.chunks_exact_mut(t)).enumerate() {
        let s = dm.first_visible(i, starts);
        let vis = s..i + 1;
        let dot = dot(&pr[vis.clone()], &dr[vis.clone()]);
        for (x, &pv) in dr[vis.clone()].iter_mut().zip(&pr[vis]) {
            *x = scale * pv * (*x - dot);
        }
        dr[..s].fill(0.0);
        dr[i + 1..].fill(0.0);
    }
}

#[cfg(test)]
mod tests;
