//! Packed products with the activations quantized to 8 bits, multiplied with
//! the weights' integer quants by integer dot products (llama.cpp's scheme):
//! opt-in with `HONE_DECODE_ACTIVATIONS=q8` (see [`Activations`]).
//!
//! Why: the f32 kernels of [`super::kquant_simd`] widen every weight to f32
//! before a multiply-add, about four instructions per 16 weights; with 8-bit
//! activations one AVX-512 VNNI `vpdpbusd` multiplies and sums 64 byte pairs.
//! The cost is a rounding of the activations (not of the weights): each unit of
//! 32 activations of a row gets its own scale `d = max|x| / 127` (ggml's q8_0
//! rule; finer than llama.cpp's one scale per 256 for K-quants). The logit gap
//! to the f32 path on the real models is measured in `real_families`.
//!
//! Every kind is written as unsigned bytes `q` with factors per group (a unit
//! of 32 weights, or 16 for Q6_K's sub-block scales): `w = a·q + b`. A row's
//! product is then `Σ_g a_g·d_g·(Σ q·qx) + Σ_g b_g·(d_g·Σ qx)`: integer dots
//! scaled per group, plus a correction from the activations' sums, which are
//! computed once per row when the activations are quantized.

use super::kquant::{locate, Blocks, Kind, PackedKind, SUB_BYTES, UNIT};

/// Units of a row whose factors are prepared at once (a multiple of a
/// K-quant super-block's 8 units, so spans start on a block).
pub(crate) const SPAN: usize = 64;

/// Room for a span's group factors (two groups per unit for Q6_K), plus four
/// for the kernels' 128-bit loads past the last group.
pub(crate) const GROUP_BUF: usize = 2 * SPAN + 4;

/// How the packed decode path multiplies: with activations quantized to 8 bits
/// (llama.cpp's scheme), or with f32 activations, which equal the
/// dequantized-weights product up to summation order.
///
/// The default is per model, kept in each matrix
/// ([`super::PackedMatrix::default_activations`]): 8-bit on CPUs with an
/// integer-dot kernel (AVX2, AVX-512 VNNI), except for models whose layers are
/// Q4_1 blocks, which keep f32 in every product. Why: on the AVX2 machine the
/// 8-bit kernels are 1.9-3x the f32 ones per weight byte, and Qwen2.5-0.5B
/// (Q4_K_M) decodes at 1.1-1.6x llama.cpp against 0.7-1.0x with f32
/// (docs/benchmarks.md, "Session 15"), with a logit gap to the f32 model of
/// 0.23 (Gemma 3: 0.49) and the same greedy answers; on SmolLM2's Q4_1 file
/// the gap is 1.4-1.6 and a greedy answer changes from its first token (its
/// hidden states carry outliers), so a Q4_1 model stays f32.
/// `HONE_DECODE_ACTIVATIONS=f32|q8` overrides it for the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activations {
    F32,
    Q8,
}

thread_local! {
    static OVERRIDE: std::cell::Cell<Option<Activations>> = const { std::cell::Cell::new(None) };
}

impl Activations {
    /// What this thread's packed products were told to use: its override if it
    /// set one ([`Self::override_on_this_thread`]), else the process's
    /// [`Self::configured`] choice; `None` leaves it to each matrix's default.
    pub fn chosen() -> Option<Self> {
        OVERRIDE.with(|o| o.get()).or_else(Self::configured)
    }

    /// Makes the packed products called from this thread use `act` until the
    /// guard drops: for tests and benchmarks that compare both paths in one
    /// process (the choice is made on the calling thread, before the decode
    /// team splits a product).
    pub fn override_on_this_thread(act: Activations) -> ActivationsGuard {
        ActivationsGuard(OVERRIDE.with(|o| o.replace(Some(act))))
    }

    /// The process's choice, read once from `HONE_DECODE_ACTIVATIONS`
    /// (`f32` or `q8`; unset or anything else: none, each matrix's default).
    pub fn configured() -> Option<Self> {
        static CHOICE: std::sync::OnceLock<Option<Activations>> = std::sync::OnceLock::new();
        *CHOICE.get_or_init(
            || match std::env::var("HONE_DECODE_ACTIVATIONS").as_deref() {
                Ok("q8") => Some(Activations::Q8),
                Ok("f32") => Some(Activations::F32),
                _ => None,
            },
        )
    }

    /// 8-bit activations where this CPU has an integer-dot kernel for them,
    /// f32 activations elsewhere (the portable 8-bit kernel is no faster).
    pub fn fastest_on_this_cpu() -> Self {
        if Q8Kernel::best() == Q8Kernel::Scalar {
            Activations::F32
        } else {
            Activations::Q8
        }
    }

    /// `"f32"` or `"q8"`, as `HONE_DECODE_ACTIVATIONS` spells it (for reports).
    pub fn name(self) -> &'static str {
        match self {
            Activations::F32 => "f32",
            Activations::Q8 => "q8",
        }
    }
}

/// Restores the thread's previous choice when dropped.
pub struct ActivationsGuard(Option<Activations>);

impl Drop for ActivationsGuard {
    fn drop(&mut self) {
        OVERRIDE.with(|o| o.set(self.0));
    }
}

/// A kernel of the 8-bit path; which ones a CPU runs is checked at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Q8Kernel {
    /// AVX-512 VNNI (`vpdpbusd`), 64 weights per instruction.
    Vnni512,
    /// AVX2 `vpmaddubsw` + `vpmaddwd`, 32 weights per pair.
    Avx2,
    Scalar,
}

impl Q8Kernel {
    pub(crate) fn best() -> Self {
        Self::available()[0]
    }

    /// Every kernel this CPU runs, fastest first (the tests check each).
    pub(crate) fn available() -> Vec<Self> {
        let mut ks = Vec::with_capacity(3);
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let avx2 = has!("avx2") && has!("fma") && has!("f16c");
            let avx512 = has!("avx512f") && has!("avx512bw") && has!("avx512vl");
            if avx2 && avx512 && has!("avx512vnni") {
                ks.push(Q8Kernel::Vnni512);
            }
            if avx2 {
                ks.push(Q8Kernel::Avx2);
            }
        }
        ks.push(Q8Kernel::Scalar);
        ks
    }
}

/// `n` activation rows of `cols`, quantized per unit of 32: `x ≈ d·q`.
pub(crate) struct Q8Rows {
    pub(crate) n: usize,
    pub(crate) cols: usize,
    /// The quants, row-major (`n * cols`).
    pub(crate) q: Vec<i8>,
    /// Per unit (`n * cols / 32`): `d`, and `d·Σq`.
    pub(crate) d_unit: Vec<f32>,
    pub(crate) s_unit: Vec<f32>,
    /// Per half unit (`n * cols / 16`, for Q6_K): `d`, and `d·Σq` over the half.
    pub(crate) d_half: Vec<f32>,
    pub(crate) s_half: Vec<f32>,
}

impl Q8Rows {
    /// Quantizes `x: [n, cols]` (`cols` a multiple of 32) with ggml's q8_0 rule.
    pub(crate) fn quantize(x: &[f32], n: usize, cols: usize) -> Self {
        debug_assert!(cols.is_multiple_of(UNIT) && x.len() == n * cols);
        let units = x.len() / UNIT;
        let mut r = Q8Rows {
            n,
            cols,
            q: vec![0; x.len()],
            d_unit: Vec::with_capacity(units),
            s_unit: Vec::with_capacity(units),
            d_half: Vec::with_capacity(2 * units),
            s_half: Vec::with_capacity(2 * units),
        };
        for (xs, qs) in x.chunks_exact(UNIT).zip(r.q.chunks_exact_mut(UNIT)) {
            let amax = xs.iter().fold(0f32, |a, v| a.max(v.abs()));
            let d = amax / 127.0;
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            for (q, v) in qs.iter_mut().zip(xs) {
                *q = (v * inv).round().clamp(-127.0, 127.0) as i8;
            }
            let sum = |h: &[i8]| h.iter().map(|&q| q as i32).sum::<i32>() as f32 * d;
            let (lo, hi) = (sum(&qs[..16]), sum(&qs[16..]));
            r.d_unit.push(d);
            r.s_unit.push(lo + hi);
            r.d_half.extend([d, d]);
            r.s_half.extend([lo, hi]);
        }
        r
    }
}

/// Factor groups per unit: 2 for Q6_K (a scale per 16 weights), else 1.
#[inline(always)]
pub(crate) const fn groups(kind: PackedKind) -> usize {
    match kind {
        PackedKind::Q6_K => 2,
        _ => 1,
    }
}

/// Prepares the span of `span` units starting at matrix unit `u` (column unit
/// `s` of its row) for activation rows `c0..c0 + N`: `cs[c][g] = a_g·d_g` per
/// group, and adds `Σ b_g·d_g·Σqx` to `corr[c]`. `ds`/`ms` hold the f32 scales
/// and minimums of the blocks from unit `u`'s on.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn prepare_span<const N: usize, K: Kind>(
    m: &Blocks,
    (ds, ms): (&[f32], &[f32]),
    (u, s, span): (usize, usize, usize),
    xq: &Q8Rows,
    c0: usize,
    cs: &mut [[f32; GROUP_BUF]; N],
    corr: &mut [f32; N],
) {
    let g = groups(K::KIND);
    let mut a = [0f32; 2 * SPAN];
    let mut b = [0f32; 2 * SPAN];
    let (a, b) = (&mut a[..g * span], &mut b[..g * span]);
    match K::KIND {
        PackedKind::Q4_1 => {
            a.copy_from_slice(&ds[..span]);
            b.copy_from_slice(&ms[..span]);
        }
        PackedKind::Q8_0 | PackedKind::Q5_0 => {
            // Q8_0's quants are offset by 128 here (see `unit_bytes`).
            let off = if K::KIND == PackedKind::Q5_0 {
                -16.0
            } else {
                -128.0
            };
            a.copy_from_slice(&ds[..span]);
            b.iter_mut()
                .zip(&ds[..span])
                .for_each(|(b, d)| *b = off * d);
        }
        PackedKind::Q4_K | PackedKind::Q5_K => {
            let b0 = locate(K::KIND, u).0;
            for i in 0..span {
                let (blk, j) = (i / 8, i % 8);
                let sub = &m.sub[(b0 + blk) * SUB_BYTES..][..SUB_BYTES];
                a[i] = ds[blk] * sub[j] as f32;
                b[i] = -ms[blk] * sub[8 + j] as f32;
            }
        }
        PackedKind::Q6_K => {
            let b0 = locate(K::KIND, u).0;
            for i in 0..2 * span {
                let blk = i / 16;
                a[i] = ds[blk] * m.sub[(b0 + blk) * SUB_BYTES + i % 16] as i8 as f32;
                b[i] = -32.0 * a[i];
            }
        }
    }
    let per_row = xq.cols / UNIT * g;
    let (dx, sx) = if g == 1 {
        (&xq.d_unit, &xq.s_unit)
    } else {
        (&xq.d_half, &xq.s_half)
    };
    for c in 0..N {
        let at = (c0 + c) * per_row + s * g;
        let (dx, sx) = (&dx[at..at + g * span], &sx[at..at + g * span]);
        cs[c][..g * span]
            .iter_mut()
            .zip(a.iter().zip(dx))
            .for_each(|(o, (a, d))| *o = a * d);
        corr[c] += dot(b, sx);
    }
}

/// `Σ a·b` in 16 independent lanes (so the compiler vectorizes it).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ac, bc) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(a, b)| a * b)
        .sum();
    for (a, b) in ac.zip(bc) {
        for i in 0..16 {
            acc[i] += a[i] * b[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Unit `u` of `m` as 32 unsigned quants `q` (`w = a·q + b`, see the module
/// doc): the reference the SIMD kernels' unpacking must match. Q8_0's signed
/// quants are offset by 128.
pub(crate) fn unit_bytes(m: &Blocks, u: usize, out: &mut [u8; UNIT]) {
    let (b, j) = locate(m.kind, u);
    let qb = m.kind.quant_bytes();
    let q = &m.quants[b * qb..(b + 1) * qb];
    match m.kind {
        PackedKind::Q4_1 => {
            for l in 0..16 {
                out[l] = q[l] & 0xF;
                out[l + 16] = q[l] >> 4;
            }
        }
        PackedKind::Q8_0 => {
            for l in 0..UNIT {
                out[l] = q[l] ^ 0x80;
            }
        }
        PackedKind::Q5_0 => {
            let qh = u32::from_le_bytes([q[0], q[1], q[2], q[3]]);
            for l in 0..16 {
                out[l] = (q[4 + l] & 0xF) | ((((qh >> l) & 1) as u8) << 4);
                out[l + 16] = (q[4 + l] >> 4) | ((((qh >> (l + 16)) & 1) as u8) << 4);
            }
        }
        PackedKind::Q4_K | PackedKind::Q5_K => {
            let five = m.kind == PackedKind::Q5_K;
            let qs = &q[if five { 32 } else { 0 } + (j / 2) * 32..][..32];
            for l in 0..UNIT {
                out[l] = (qs[l] >> (4 * (j & 1))) & 0xF;
                if five {
                    out[l] |= ((q[l] >> j) & 1) << 4;
                }
            }
        }
        PackedKind::Q6_K => {
            let (half, k) = (j / 4, j % 4);
            let ql = &q[64 * half + 32 * (k & 1)..][..32];
            let qh = &q[128 + 32 * half..][..32];
            for l in 0..UNIT {
                out[l] = ((ql[l] >> (4 * (k >> 1))) & 0xF) | (((qh[l] >> (2 * k)) & 3) << 4);
            }
        }
    }
}

/// The portable kernel: output rows `r0..` of `m` (`cols` wide) for every
/// activation row of `xq`, into `out: [rows, xq.n]`.
pub(crate) fn rows_scalar(m: &Blocks, cols: usize, xq: &Q8Rows, r0: usize, out: &mut [f32]) {
    crate::decode::kquant::with_kind!(m.kind, K => rows_scalar_kind::<K>(m, cols, xq, r0, out))
}

fn rows_scalar_kind<K: Kind>(m: &Blocks, cols: usize, xq: &Q8Rows, r0: usize, out: &mut [f32]) {
    let (n, nu, g) = (xq.n, cols / UNIT, groups(K::KIND));
    let upb = K::KIND.block_weights() / UNIT;
    let (mut ds, mut ms) = ([0f32; SPAN], [0f32; SPAN]);
    let mut bytes = [0u8; UNIT];
    for (r, out_row) in out.chunks_exact_mut(n).enumerate() {
        let u0 = (r0 + r) * nu;
        for (c, o) in out_row.iter_mut().enumerate() {
            let (mut cs, mut corr) = ([[0f32; GROUP_BUF]; 1], [0f32; 1]);
            let mut acc = 0f32;
            let mut s = 0;
            while s < nu {
                let span = (nu - s).min(SPAN);
                let b0 = (u0 + s) / upb;
                for i in 0..span.div_ceil(upb) {
                    ds[i] = m.scales[b0 + i].to_f32();
                    ms[i] = m.mins.get(b0 + i).map_or(0.0, |v| v.to_f32());
                }
                let spans = (u0 + s, s, span);
                prepare_span::<1, K>(m, (&ds, &ms), spans, xq, c, &mut cs, &mut corr);
                for u in 0..span {
                    unit_bytes(m, u0 + s + u, &mut bytes);
                    let xs = &xq.q[c * cols + (s + u) * UNIT..][..UNIT];
                    for (h, (w, x)) in bytes.chunks(UNIT / g).zip(xs.chunks(UNIT / g)).enumerate() {
                        let dot: i32 = w.iter().zip(x).map(|(&w, &x)| w as i32 * x as i32).sum();
                        acc += cs[0][u * g + h] * dot as f32;
                    }
                }
                s += span;
            }
            *o = acc + corr[0];
        }
    }
}
