//! SIMD kernels of [`super::PackedMatrix`] products, for every packed kind: AVX-512
//! and AVX2+FMA+F16C, chosen at run time (see `PackedMatrix::group`), each
//! monomorphised per kind ([`super::kquant::Kind`]) so a row's loop never
//! branches on the block format.
//!
//! Both walk a row in units of 32 weights (see [`super::kquant`]): each unit is
//! unpacked to f32 weights once and fused-multiply-added into the accumulators
//! of up to four activation rows, so one weight read serves them all. Every
//! activation row gets the same operations whatever `N` is, so batching never
//! changes a result. The unpacking follows [`super::kquant::unit_f32`], which
//! the tests hold both kernels to.

use std::arch::x86_64::*;

use half::f16;

use super::kquant::{locate, Blocks, Kind, PackedKind, SCALE_PAD, SUB_BYTES, UNIT};

/// Units of a row whose block scales are widened to f32 at once, into a
/// stack buffer the units then read with a plain broadcast.
const SPAN: usize = 256;

/// AVX-512 kernel: four accumulators per activation row (two units per
/// iteration), so consecutive multiply-adds do not wait on each other.
///
/// # Safety
/// Needs AVX-512F and AVX2. `out` holds whole rows of `n` values for rows starting
/// at `r0` within the `cols`-wide matrix of `m`, and `x` holds `n` rows of
/// `cols` values; `m`'s scales carry [`super::kquant::SCALE_PAD`] padding.
#[target_feature(enable = "avx512f,avx2")]
pub(crate) unsafe fn group512<const N: usize, K: Kind>(
    m: &Blocks,
    cols: usize,
    x: &[f32],
    c0: usize,
    n: usize,
    r0: usize,
    out: &mut [f32],
) {
    debug_assert!(m.kind == K::KIND);
    let nu = cols / UNIT;
    let upb = K::KIND.block_weights() / UNIT;
    let rows = out.len() / n;
    debug_assert!((r0 + rows) * nu * UNIT <= m.scales.len() * m.kind.block_weights());
    debug_assert!((c0 + N) * cols <= x.len());
    let xp = x.as_ptr().add(c0 * cols);
    let (mut ds, mut ms) = ([0f32; SPAN + SCALE_PAD], [0f32; SPAN + SCALE_PAD]);
    for r in 0..rows {
        let u0 = (r0 + r) * nu;
        let mut acc = [[_mm512_setzero_ps(); 4]; N];
        let mut s = 0;
        while s < nu {
            let span = (nu - s).min(SPAN);
            let (b0, nb) = ((u0 + s) / upb, span.div_ceil(upb));
            widen512(m.scales.as_ptr().add(b0), nb, &mut ds);
            if K::KIND.has_mins() {
                widen512(m.mins.as_ptr().add(b0), nb, &mut ms);
            }
            let scale = |u: usize| (*ds.get_unchecked(u / upb), *ms.get_unchecked(u / upb));
            let xs = xp.add(s * UNIT);
            let mut u = 0;
            while u + 2 <= span {
                let (wl, wh) = unit512::<K>(m, u0 + s + u, scale(u));
                let (vl, vh) = unit512::<K>(m, u0 + s + u + 1, scale(u + 1));
                for (c, a) in acc.iter_mut().enumerate() {
                    let xb = xs.add(c * cols + u * UNIT);
                    a[0] = _mm512_fmadd_ps(wl, _mm512_loadu_ps(xb), a[0]);
                    a[1] = _mm512_fmadd_ps(wh, _mm512_loadu_ps(xb.add(16)), a[1]);
                    a[2] = _mm512_fmadd_ps(vl, _mm512_loadu_ps(xb.add(32)), a[2]);
                    a[3] = _mm512_fmadd_ps(vh, _mm512_loadu_ps(xb.add(48)), a[3]);
                }
                u += 2;
            }
            if u < span {
                let (wl, wh) = unit512::<K>(m, u0 + s + u, scale(u));
                for (c, a) in acc.iter_mut().enumerate() {
                    let xb = xs.add(c * cols + u * UNIT);
                    a[0] = _mm512_fmadd_ps(wl, _mm512_loadu_ps(xb), a[0]);
                    a[1] = _mm512_fmadd_ps(wh, _mm512_loadu_ps(xb.add(16)), a[1]);
                }
            }
            s += span;
        }
        for (c, a) in acc.iter().enumerate() {
            let s = _mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3]));
            out[r * n + c0 + c] = _mm512_reduce_add_ps(s);
        }
    }
}

/// `n` f16 values at `src` as f32 in `dst`, 16 at a time: reads and writes
/// up to 15 values past `n` (the blocks' [`super::kquant::SCALE_PAD`]).
#[inline(always)]
unsafe fn widen512(src: *const f16, n: usize, dst: &mut [f32; SPAN + SCALE_PAD]) {
    debug_assert!(n <= SPAN);
    for i in (0..n).step_by(16) {
        let h = _mm256_loadu_si256(src.add(i) as *const __m256i);
        _mm512_storeu_ps(dst.as_mut_ptr().add(i), _mm512_cvtph_ps(h));
    }
}

/// 16 bytes as 16 unsigned 32-bit lanes.
#[inline(always)]
unsafe fn bytes16(p: *const u8) -> __m512i {
    _mm512_cvtepu8_epi32(_mm_loadu_si128(p as *const __m128i))
}

/// 0.0, 1.0, …, 15.0: the quant values a 16-entry weight table is built on.
#[inline(always)]
unsafe fn iota16() -> __m512 {
    _mm512_setr_ps(
        0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0,
    )
}

/// Unit `u` as two f32 vectors (weights 0..16 and 16..32), given its
/// block's scale and minimum widened to f32.
///
/// The kinds of at most 5 bits per quant build the unit's weight for every
/// possible quant (a table of 16 or 32 f32, one or two multiply-adds) and
/// look each weight up with a permute (`vpermps` reads an index's low 4 bits,
/// `vpermt2ps` its low 5), where widening every quant to f32 and scaling it
/// took four multiply-class instructions per unit. A table entry is the
/// same multiply-add of the same quant value, so the weights are bit for bit
/// those of the widening (`kquant_tests`); the multiply-add pipes, which
/// bound a batched step, are left to the activation rows' products.
#[inline(always)]
pub(super) unsafe fn unit512<K: Kind>(
    m: &Blocks,
    u: usize,
    (d, mn): (f32, f32),
) -> (__m512, __m512) {
    let (b, j) = locate(K::KIND, u);
    let q = m.quants.as_ptr().add(b * K::KIND.quant_bytes());
    match K::KIND {
        PackedKind::Q4_1 => {
            // Byte l holds weight l in its low nibble and weight l + 16 in its high.
            let bytes = bytes16(q);
            let table = _mm512_fmadd_ps(iota16(), _mm512_set1_ps(d), _mm512_set1_ps(mn));
            (
                _mm512_permutexvar_ps(bytes, table),
                _mm512_permutexvar_ps(_mm512_srli_epi32::<4>(bytes), table),
            )
        }
        PackedKind::Q8_0 => {
            let q = q as *const __m128i;
            let low = _mm512_cvtepi8_epi32(_mm_loadu_si128(q));
            let high = _mm512_cvtepi8_epi32(_mm_loadu_si128(q.add(1)));
            let d = _mm512_set1_ps(d);
            (
                _mm512_mul_ps(_mm512_cvtepi32_ps(low), d),
                _mm512_mul_ps(_mm512_cvtepi32_ps(high), d),
            )
        }
        PackedKind::Q5_0 => {
            // A weight is `(nibble | high bit << 4) - 16`: entry `i` of the
            // 32-entry table (low half, high half) is `(i - 16)·d`.
            let qh = (q as *const u32).read_unaligned();
            let bytes = bytes16(q.add(4));
            let (nib, sixteen) = (_mm512_set1_epi32(0xF), _mm512_set1_epi32(16));
            let low = _mm512_and_si512(bytes, nib);
            let low = _mm512_mask_or_epi32(low, qh as u16, low, sixteen);
            let high = _mm512_srli_epi32::<4>(bytes);
            let high = _mm512_mask_or_epi32(high, (qh >> 16) as u16, high, sixteen);
            let d = _mm512_set1_ps(d);
            let below = _mm512_mul_ps(_mm512_sub_ps(iota16(), _mm512_set1_ps(16.0)), d);
            let above = _mm512_mul_ps(iota16(), d);
            (
                _mm512_permutex2var_ps(below, low, above),
                _mm512_permutex2var_ps(below, high, above),
            )
        }
        PackedKind::Q4_K => {
            let sub = m.sub.as_ptr().add(b * SUB_BYTES);
            let d1 = _mm512_set1_ps(d * *sub.add(j) as f32);
            let m1 = _mm512_set1_ps(mn * *sub.add(8 + j) as f32);
            let table = _mm512_fmsub_ps(iota16(), d1, m1);
            // Unit j's quants are the low (even j) or high (odd j) nibbles of
            // 32 bytes; the permute ignores the bits above the nibble.
            let qs = q.add((j / 2) * 32);
            let (mut lo, mut hi) = (bytes16(qs), bytes16(qs.add(16)));
            if j & 1 == 1 {
                lo = _mm512_srli_epi32::<4>(lo);
                hi = _mm512_srli_epi32::<4>(hi);
            }
            (
                _mm512_permutexvar_ps(lo, table),
                _mm512_permutexvar_ps(hi, table),
            )
        }
        PackedKind::Q5_K => {
            let sub = m.sub.as_ptr().add(b * SUB_BYTES);
            let d1 = _mm512_set1_ps(d * *sub.add(j) as f32);
            let m1 = _mm512_set1_ps(mn * *sub.add(8 + j) as f32);
            let qs = q.add(32 + (j / 2) * 32);
            let mut w = masked_bytes256(qs, 4 * (j & 1) as i32, 0xF);
            // The fifth bit is bit `j` of each weight's `qh` byte.
            let bit = masked_bytes256(q, j as i32, 1);
            w = _mm256_or_si256(w, _mm256_slli_epi16::<4>(bit));
            let (lo, hi) = (_mm256_castsi256_si128(w), _mm256_extracti128_si256::<1>(w));
            let below = _mm512_fmsub_ps(iota16(), d1, m1);
            let above = _mm512_fmsub_ps(_mm512_add_ps(iota16(), _mm512_set1_ps(16.0)), d1, m1);
            (
                _mm512_permutex2var_ps(below, _mm512_cvtepu8_epi32(lo), above),
                _mm512_permutex2var_ps(below, _mm512_cvtepu8_epi32(hi), above),
            )
        }
        PackedKind::Q6_K => {
            let (half, k) = (j / 4, j % 4);
            let ql = q.add(64 * half + 32 * (k & 1));
            let qh = q.add(128 + 32 * half);
            let sc = m.sub.as_ptr().add(b * SUB_BYTES + 8 * half + 2 * k);
            let s0 = _mm512_set1_ps(d * *sc as i8 as f32);
            let s1 = _mm512_set1_ps(d * *sc.add(1) as i8 as f32);
            // A quant is a nibble of `ql` and two bits of `qh` above it, minus 32.
            let lo = masked_bytes256(ql, 4 * (k >> 1) as i32, 0xF);
            let hi = masked_bytes256(qh, 2 * k as i32, 3);
            let w = _mm256_sub_epi8(
                _mm256_or_si256(lo, _mm256_slli_epi16::<4>(hi)),
                _mm256_set1_epi8(32),
            );
            let (low, high) = widen_signed_bytes(w);
            (_mm512_mul_ps(s0, low), _mm512_mul_ps(s1, high))
        }
    }
}

/// The 32 bytes at `p`, each shifted right by `shift` (at most 7) and masked
/// with `mask`: the shifts run on 16-bit lanes, and the mask drops the bits
/// a byte's neighbour shifted into it. Unpacking a unit as bytes in one
/// 256-bit register takes half the instructions of widening each byte to 32
/// bits first (measured: Q6_K was twice llama.cpp's time per token).
#[inline(always)]
unsafe fn masked_bytes256(p: *const u8, shift: i32, mask: i8) -> __m256i {
    let v = _mm256_loadu_si256(p as *const __m256i);
    let v = _mm256_srl_epi16(v, _mm_cvtsi32_si128(shift));
    _mm256_and_si256(v, _mm256_set1_epi8(mask))
}

/// 32 signed byte quants (Q6_K's, the one kind still widened) as two vectors of 16 f32.
#[inline(always)]
unsafe fn widen_signed_bytes(w: __m256i) -> (__m512, __m512) {
    let (lo, hi) = (_mm256_castsi256_si128(w), _mm256_extracti128_si256::<1>(w));
    (
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(lo)),
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(hi)),
    )
}

/// AVX2+FMA kernel, for CPUs without AVX-512: two accumulators per activation
/// row (8 of the 16 vector registers at `N = 4`, beside a unit's four weight
/// vectors).
///
/// # Safety
/// Needs AVX2, FMA and F16C; the same slice contract as [`group512`].
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn group256<const N: usize, K: Kind>(
    m: &Blocks,
    cols: usize,
    x: &[f32],
    c0: usize,
    n: usize,
    r0: usize,
    out: &mut [f32],
) {
    debug_assert!(m.kind == K::KIND);
    let nu = cols / UNIT;
    let upb = K::KIND.block_weights() / UNIT;
    let rows = out.len() / n;
    debug_assert!((r0 + rows) * nu * UNIT <= m.scales.len() * m.kind.block_weights());
    debug_assert!((c0 + N) * cols <= x.len());
    let xp = x.as_ptr().add(c0 * cols);
    let (mut ds, mut ms) = ([0f32; SPAN + SCALE_PAD], [0f32; SPAN + SCALE_PAD]);
    for r in 0..rows {
        let u0 = (r0 + r) * nu;
        let mut acc = [[_mm256_setzero_ps(); 2]; N];
        let mut s = 0;
        while s < nu {
            let span = (nu - s).min(SPAN);
            let (b0, nb) = ((u0 + s) / upb, span.div_ceil(upb));
            widen256(m.scales.as_ptr().add(b0), nb, &mut ds);
            if K::KIND.has_mins() {
                widen256(m.mins.as_ptr().add(b0), nb, &mut ms);
            }
            let xs = xp.add(s * UNIT);
            for u in 0..span {
                let scale = (*ds.get_unchecked(u / upb), *ms.get_unchecked(u / upb));
                let w = unit256::<K>(m, u0 + s + u, scale);
                for (c, a) in acc.iter_mut().enumerate() {
                    let xb = xs.add(c * cols + u * UNIT);
                    a[0] = _mm256_fmadd_ps(w[0], _mm256_loadu_ps(xb), a[0]);
                    a[1] = _mm256_fmadd_ps(w[1], _mm256_loadu_ps(xb.add(8)), a[1]);
                    a[0] = _mm256_fmadd_ps(w[2], _mm256_loadu_ps(xb.add(16)), a[0]);
                    a[1] = _mm256_fmadd_ps(w[3], _mm256_loadu_ps(xb.add(24)), a[1]);
                }
            }
            s += span;
        }
        for (c, a) in acc.iter().enumerate() {
            out[r * n + c0 + c] = hsum256(_mm256_add_ps(a[0], a[1]));
        }
    }
}

/// As [`widen512`], 8 at a time (F16C).
#[inline(always)]
unsafe fn widen256(src: *const f16, n: usize, dst: &mut [f32; SPAN + SCALE_PAD]) {
    debug_assert!(n <= SPAN);
    for i in (0..n).step_by(8) {
        let h = _mm_loadu_si128(src.add(i) as *const __m128i);
        _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
    }
}

#[inline(always)]
unsafe fn hsum256(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
    _mm_cvtss_f32(s)
}

/// 8 bytes as 8 unsigned 32-bit lanes.
#[inline(always)]
unsafe fn bytes8(p: *const u8) -> __m256i {
    _mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i))
}

/// Unit `u` as four f32 vectors of 8 weights each (see [`unit512`]).
#[inline(always)]
unsafe fn unit256<K: Kind>(m: &Blocks, u: usize, (d_f32, mn): (f32, f32)) -> [__m256; 4] {
    let (b, j) = locate(K::KIND, u);
    let q = m.quants.as_ptr().add(b * K::KIND.quant_bytes());
    let d = _mm256_set1_ps(d_f32);
    let zero = _mm_setzero_si128();
    match K::KIND {
        PackedKind::Q4_1 => {
            let mn = _mm256_set1_ps(mn);
            let four = _mm_cvtsi32_si128(4);
            [
                _mm256_fmadd_ps(nibbles256(q, zero), d, mn),
                _mm256_fmadd_ps(nibbles256(q.add(8), zero), d, mn),
                _mm256_fmadd_ps(nibbles256(q, four), d, mn),
                _mm256_fmadd_ps(nibbles256(q.add(8), four), d, mn),
            ]
        }
        PackedKind::Q8_0 => [
            _mm256_mul_ps(signed8(q), d),
            _mm256_mul_ps(signed8(q.add(8)), d),
            _mm256_mul_ps(signed8(q.add(16)), d),
            _mm256_mul_ps(signed8(q.add(24)), d),
        ],
        PackedKind::Q5_0 => {
            let qh = _mm256_set1_epi32((q as *const u32).read_unaligned() as i32);
            let four = _mm_cvtsi32_si128(4);
            let qs = q.add(4);
            [
                _mm256_mul_ps(q5_0_256(qs, zero, qh, 0), d),
                _mm256_mul_ps(q5_0_256(qs.add(8), zero, qh, 8), d),
                _mm256_mul_ps(q5_0_256(qs, four, qh, 16), d),
                _mm256_mul_ps(q5_0_256(qs.add(8), four, qh, 24), d),
            ]
        }
        PackedKind::Q4_K | PackedKind::Q5_K => {
            let sub = m.sub.as_ptr().add(b * SUB_BYTES);
            let d1 = _mm256_set1_ps(d_f32 * *sub.add(j) as f32);
            let m1 = _mm256_set1_ps(mn * *sub.add(8 + j) as f32);
            let five = K::KIND == PackedKind::Q5_K;
            let qs = q.add(if five { 32 } else { 0 } + (j / 2) * 32);
            let shift = _mm_cvtsi32_si128(4 * (j & 1) as i32);
            let hs = _mm_cvtsi32_si128(j as i32);
            let mut w = [_mm256_setzero_ps(); 4];
            for (i, w) in w.iter_mut().enumerate() {
                let mut v = nibbles_i256(qs.add(8 * i), shift);
                if five {
                    let hb = _mm256_srl_epi32(bytes8(q.add(8 * i)), hs);
                    let hb = _mm256_and_si256(hb, _mm256_set1_epi32(1));
                    v = _mm256_or_si256(v, _mm256_slli_epi32::<4>(hb));
                }
                *w = _mm256_fmsub_ps(_mm256_cvtepi32_ps(v), d1, m1);
            }
            w
        }
        // Q6_K: the unit's quants as 32 signed bytes first (as `unit512`),
        // then widened: unpacking each 8 weights at 32 bits took 11
        // instructions per 8 weights (measured 1.6x slower). For Q5_0 and
        // Q4_K, whose 32-bit unpacking is short, bytes were slower (shuffles).
        PackedKind::Q6_K => {
            let (half, k) = (j / 4, j % 4);
            let ql = q.add(64 * half + 32 * (k & 1));
            let qh = q.add(128 + 32 * half);
            let sc = m.sub.as_ptr().add(b * SUB_BYTES + 8 * half + 2 * k);
            let s0 = _mm256_set1_ps(d_f32 * *sc as i8 as f32);
            let s1 = _mm256_set1_ps(d_f32 * *sc.add(1) as i8 as f32);
            let lo = masked_bytes256(ql, 4 * (k >> 1) as i32, 0xF);
            let hi = masked_bytes256(qh, 2 * k as i32, 3);
            let w = _mm256_sub_epi8(
                _mm256_or_si256(lo, _mm256_slli_epi16::<4>(hi)),
                _mm256_set1_epi8(32),
            );
            let [w0, w1, w2, w3] = widen_signed_bytes256(w);
            [
                _mm256_mul_ps(s0, w0),
                _mm256_mul_ps(s0, w1),
                _mm256_mul_ps(s1, w2),
                _mm256_mul_ps(s1, w3),
            ]
        }
    }
}

/// 32 signed byte quants as four vectors of 8 f32.
#[inline(always)]
unsafe fn widen_signed_bytes256(w: __m256i) -> [__m256; 4] {
    let (lo, hi) = (_mm256_castsi256_si128(w), _mm256_extracti128_si256::<1>(w));
    let (lo2, hi2) = (_mm_srli_si128::<8>(lo), _mm_srli_si128::<8>(hi));
    [
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo)),
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo2)),
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi)),
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi2)),
    ]
}

/// The nibble at bit `shift` (0 or 4) of 8 bytes.
#[inline(always)]
unsafe fn nibbles_i256(p: *const u8, shift: __m128i) -> __m256i {
    _mm256_and_si256(_mm256_srl_epi32(bytes8(p), shift), _mm256_set1_epi32(0xF))
}

/// The nibble at bit `shift` (0 or 4) of 8 bytes, as f32.
#[inline(always)]
unsafe fn nibbles256(p: *const u8, shift: __m128i) -> __m256 {
    _mm256_cvtepi32_ps(nibbles_i256(p, shift))
}

/// 8 signed bytes as f32.
#[inline(always)]
unsafe fn signed8(p: *const u8) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i)))
}

/// Q5_0 weights `first..first + 8` minus 16: the nibbles at bit `shift` of 8
/// bytes at `qs`, with high bits `first..first + 8` of `qh`.
#[inline(always)]
unsafe fn q5_0_256(qs: *const u8, shift: __m128i, qh: __m256i, first: i32) -> __m256 {
    let nibs = nibbles_i256(qs, shift);
    let lanes = _mm256_add_epi32(
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        _mm256_set1_epi32(first),
    );
    let hb = _mm256_and_si256(_mm256_srlv_epi32(qh, lanes), _mm256_set1_epi32(1));
    let q = _mm256_or_si256(nibs, _mm256_slli_epi32::<4>(hb));
    _mm256_cvtepi32_ps(_mm256_sub_epi32(q, _mm256_set1_epi32(16)))
}
