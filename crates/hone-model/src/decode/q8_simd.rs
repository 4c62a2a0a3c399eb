//! SIMD kernels of the 8-bit-activation products ([`super::q8`]): AVX-512 VNNI
//! and AVX2, chosen at run time, monomorphised per kind like
//! [`super::kquant_simd`]'s f32 kernels.
//!
//! Both unpack a unit of 32 weights to 32 unsigned bytes in their natural
//! order ([`unit256`], held to [`super::q8::unit_bytes`] by the tests), take
//! integer dot products with the activations' bytes, and scale the 32-bit sums
//! per group by `a_g·d_g` (lanes of four bytes each: a unit is 8 lanes, a
//! Q6_K group 4). Every activation row gets the same operations whatever `N`
//! is, so batching never changes a result.

use std::arch::x86_64::*;

use super::kquant::{locate, Blocks, Kind, PackedKind, SCALE_PAD, SUB_BYTES, UNIT};
use super::q8::{groups, Q8Rows, GROUP_BUF, SPAN};

/// A span's widened block scales (and minimums), read by [`prepare_span256`].
type Widened = [f32; SPAN + SCALE_PAD];

/// AVX-512 VNNI kernel: two units (64 bytes) per `vpdpbusd`, two accumulators
/// per activation row.
///
/// # Safety
/// Needs AVX-512F/BW/VL/VNNI, AVX2, FMA and F16C. `out` holds whole rows of
/// `xq.n` values for rows starting at `r0` of the `cols`-wide matrix `m`;
/// `c0 + N <= xq.n`; `m`'s scales carry [`SCALE_PAD`] padding.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn group_vnni<const N: usize, K: Kind>(
    m: &Blocks,
    cols: usize,
    xq: &Q8Rows,
    c0: usize,
    r0: usize,
    out: &mut [f32],
) {
    debug_assert!(m.kind == K::KIND && c0 + N <= xq.n && xq.cols == cols);
    let (n, nu, g) = (xq.n, cols / UNIT, groups(K::KIND));
    let upb = K::KIND.block_weights() / UNIT;
    let idx = if g == 1 {
        _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1)
    } else {
        _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3)
    };
    let (mut ds, mut ms): (Widened, Widened) = ([0.0; SPAN + SCALE_PAD], [0.0; SPAN + SCALE_PAD]);
    let mut cs = [[0f32; GROUP_BUF]; N];
    let xp = xq.q.as_ptr();
    for r in 0..out.len() / n {
        let u0 = (r0 + r) * nu;
        let mut acc = [[_mm512_setzero_ps(); 2]; N];
        let mut corr = [_mm256_setzero_ps(); N];
        let mut s = 0;
        while s < nu {
            let span = (nu - s).min(SPAN);
            let (b0, nb) = ((u0 + s) / upb, span.div_ceil(upb));
            widen(m.scales.as_ptr().add(b0), nb, &mut ds);
            if K::KIND.has_mins() {
                widen(m.mins.as_ptr().add(b0), nb, &mut ms);
            }
            let spans = (u0 + s, s, span);
            prepare_span256::<N, K, false>(m, (&ds, &ms), spans, xq, c0, &mut cs, &mut corr);
            // Sum of unit `u`'s pair (or single unit) with activation row `c`, scaled.
            let term = |w: __m512i, c: usize, u: usize, single: bool| {
                let at = xp.add((c0 + c) * cols + (s + u) * UNIT);
                let x = if single {
                    _mm512_zextsi256_si512(_mm256_loadu_si256(at as *const __m256i))
                } else {
                    _mm512_loadu_si512(at as *const __m512i)
                };
                let dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, x);
                let sc = _mm512_castps128_ps512(_mm_loadu_ps(cs[c].as_ptr().add(u * g)));
                (_mm512_cvtepi32_ps(dot), _mm512_permutexvar_ps(idx, sc))
            };
            let mut u = 0;
            while u + 4 <= span {
                let (w0, w1) = (pair::<K>(m, u0 + s + u), pair::<K>(m, u0 + s + u + 2));
                for (c, a) in acc.iter_mut().enumerate() {
                    let (d0, s0) = term(w0, c, u, false);
                    let (d1, s1) = term(w1, c, u + 2, false);
                    a[0] = _mm512_fmadd_ps(d0, s0, a[0]);
                    a[1] = _mm512_fmadd_ps(d1, s1, a[1]);
                }
                u += 4;
            }
            if u + 2 <= span {
                let w = pair::<K>(m, u0 + s + u);
                for (c, a) in acc.iter_mut().enumerate() {
                    let (d, sc) = term(w, c, u, false);
                    a[0] = _mm512_fmadd_ps(d, sc, a[0]);
                }
                u += 2;
            }
            if u < span {
                let w = _mm512_zextsi256_si512(unsigned::<K>(unit256::<K>(m, u0 + s + u)));
                for (c, a) in acc.iter_mut().enumerate() {
                    let (d, sc) = term(w, c, u, true);
                    a[1] = _mm512_fmadd_ps(d, sc, a[1]);
                }
            }
            s += span;
        }
        for (c, a) in acc.iter().enumerate() {
            out[r * n + c0 + c] =
                _mm512_reduce_add_ps(_mm512_add_ps(a[0], a[1])) + hsum256(corr[c]);
        }
    }
}

/// Units `u` and `u + 1` as 64 unsigned bytes.
#[inline(always)]
unsafe fn pair<K: Kind>(m: &Blocks, u: usize) -> __m512i {
    let lo = _mm512_castsi256_si512(unsigned::<K>(unit256::<K>(m, u)));
    _mm512_inserti64x4::<1>(lo, unsigned::<K>(unit256::<K>(m, u + 1)))
}

/// Q8_0's signed bytes offset by 128 (VNNI multiplies unsigned weights).
#[inline(always)]
unsafe fn unsigned<K: Kind>(w: __m256i) -> __m256i {
    if K::KIND == PackedKind::Q8_0 {
        _mm256_xor_si256(w, _mm256_set1_epi8(-128))
    } else {
        w
    }
}

/// AVX2 kernel: one unit per `vpmaddubsw` (whose 16-bit pair sums cannot
/// saturate: quants are at most 63, or signed for Q8_0 with the sign moved onto
/// the activations), two accumulators per activation row.
///
/// # Safety
/// Needs AVX2, FMA and F16C; the same slice contract as [`group_vnni`].
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn group_avx2<const N: usize, K: Kind>(
    m: &Blocks,
    cols: usize,
    xq: &Q8Rows,
    c0: usize,
    r0: usize,
    out: &mut [f32],
) {
    debug_assert!(m.kind == K::KIND && c0 + N <= xq.n && xq.cols == cols);
    let (n, nu, g) = (xq.n, cols / UNIT, groups(K::KIND));
    let upb = K::KIND.block_weights() / UNIT;
    let idx = if g == 1 {
        _mm256_setzero_si256()
    } else {
        _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1)
    };
    let ones = _mm256_set1_epi16(1);
    let (mut ds, mut ms): (Widened, Widened) = ([0.0; SPAN + SCALE_PAD], [0.0; SPAN + SCALE_PAD]);
    let mut cs = [[0f32; GROUP_BUF]; N];
    let xp = xq.q.as_ptr();
    for r in 0..out.len() / n {
        let u0 = (r0 + r) * nu;
        let mut acc = [[_mm256_setzero_ps(); 2]; N];
        let mut corr = [_mm256_setzero_ps(); N];
        let mut s = 0;
        while s < nu {
            let span = (nu - s).min(SPAN);
            let (b0, nb) = ((u0 + s) / upb, span.div_ceil(upb));
            widen(m.scales.as_ptr().add(b0), nb, &mut ds);
            if K::KIND.has_mins() {
                widen(m.mins.as_ptr().add(b0), nb, &mut ms);
            }
            let spans = (u0 + s, s, span);
            prepare_span256::<N, K, true>(m, (&ds, &ms), spans, xq, c0, &mut cs, &mut corr);
            for u in 0..span {
                let w = unit256::<K>(m, u0 + s + u);
                let wa = if K::KIND == PackedKind::Q8_0 {
                    _mm256_abs_epi8(w)
                } else {
                    w
                };
                for (c, a) in acc.iter_mut().enumerate() {
                    let at = xp.add((c0 + c) * cols + (s + u) * UNIT);
                    let mut x = _mm256_loadu_si256(at as *const __m256i);
                    if K::KIND == PackedKind::Q8_0 {
                        x = _mm256_sign_epi8(x, w);
                    }
                    let dot = _mm256_madd_epi16(_mm256_maddubs_epi16(wa, x), ones);
                    let sc = if g == 1 {
                        _mm256_broadcast_ss(&*cs[c].as_ptr().add(u))
                    } else {
                        let sc = cs[c].as_ptr().add(2 * u) as *const __m128i;
                        let sc = _mm_castsi128_ps(_mm_loadl_epi64(sc));
                        _mm256_permutevar8x32_ps(_mm256_castps128_ps256(sc), idx)
                    };
                    a[u & 1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), sc, a[u & 1]);
                }
            }
            s += span;
        }
        for (c, a) in acc.iter().enumerate() {
            out[r * n + c0 + c] = hsum256(_mm256_add_ps(a[0], a[1])) + hsum256(corr[c]);
        }
    }
}

/// [`prepare_span`] for the SIMD kernels, eight groups per AVX2 instruction:
/// the same factors `cs[c][g] = a_g·d_g`, with the offsets' terms gathered in
/// the eight lanes of `corr[c]` (summed once at the row's end). Written apart
/// from the scalar one because that one's per-group loop, with its block and
/// sub-scale lookups, cost as much as the dot products on the K-quants.
/// `SIGNED_Q8_0`: Q8_0's quants stay signed (the AVX2 kernel: no offset term),
/// else they are offset by 128 (VNNI multiplies unsigned weights).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn prepare_span256<const N: usize, K: Kind, const SIGNED_Q8_0: bool>(
    m: &Blocks,
    (ds, ms): (&Widened, &Widened),
    (u, s, span): (usize, usize, usize),
    xq: &Q8Rows,
    c0: usize,
    cs: &mut [[f32; GROUP_BUF]; N],
    corr: &mut [__m256; N],
) {
    let g = groups(K::KIND);
    let per_row = xq.cols / UNIT * g;
    let (dx, sx) = if g == 1 {
        (&xq.d_unit, &xq.s_unit)
    } else {
        (&xq.d_half, &xq.s_half)
    };
    let b0 = locate(K::KIND, u).0;
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let mut i = 0;
    while i < g * span {
        // Groups i..i + 8 (a K-quant span is whole blocks: no tail there).
        let (a, b) = match K::KIND {
            PackedKind::Q4_1 => (
                _mm256_loadu_ps(ds.as_ptr().add(i)),
                Some(_mm256_loadu_ps(ms.as_ptr().add(i))),
            ),
            PackedKind::Q8_0 => {
                let a = _mm256_loadu_ps(ds.as_ptr().add(i));
                let off = _mm256_mul_ps(a, _mm256_set1_ps(-128.0));
                (a, if SIGNED_Q8_0 { None } else { Some(off) })
            }
            PackedKind::Q5_0 => {
                let a = _mm256_loadu_ps(ds.as_ptr().add(i));
                (a, Some(_mm256_mul_ps(a, _mm256_set1_ps(-16.0))))
            }
            PackedKind::Q4_K | PackedKind::Q5_K => {
                let blk = i / 8;
                let sub = m.sub.as_ptr().add((b0 + blk) * SUB_BYTES);
                let bytes = |p: *const u8| {
                    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i)))
                };
                (
                    _mm256_mul_ps(bytes(sub), _mm256_set1_ps(ds[blk])),
                    Some(_mm256_mul_ps(bytes(sub.add(8)), _mm256_set1_ps(-ms[blk]))),
                )
            }
            PackedKind::Q6_K => {
                let blk = i / 16;
                let sub = m.sub.as_ptr().add((b0 + blk) * SUB_BYTES + i % 16);
                let sc = _mm256_cvtepi8_epi32(_mm_loadl_epi64(sub as *const __m128i));
                let a = _mm256_mul_ps(_mm256_cvtepi32_ps(sc), _mm256_set1_ps(ds[blk]));
                (a, Some(_mm256_mul_ps(a, _mm256_set1_ps(-32.0))))
            }
        };
        // Lanes past the span read nothing (masked loads give 0).
        let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32((g * span - i) as i32), lanes);
        for c in 0..N {
            let at = (c0 + c) * per_row + s * g + i;
            let d = _mm256_maskload_ps(dx.as_ptr().add(at), mask);
            _mm256_storeu_ps(cs[c].as_mut_ptr().add(i), _mm256_mul_ps(a, d));
            if let Some(b) = b {
                let sum = _mm256_maskload_ps(sx.as_ptr().add(at), mask);
                corr[c] = _mm256_fmadd_ps(b, sum, corr[c]);
            }
        }
        i += 8;
    }
}

/// `n` f16 values at `src` as f32 in `dst`, 8 at a time: reads and writes up
/// to 7 values past `n` (the blocks' [`SCALE_PAD`]).
#[inline(always)]
unsafe fn widen(src: *const half::f16, n: usize, dst: &mut Widened) {
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

/// Unit `u` as 32 bytes in weight order: the unsigned quants of
/// [`super::q8::unit_bytes`], except Q8_0's, which stay signed.
#[inline(always)]
pub(crate) unsafe fn unit256<K: Kind>(m: &Blocks, u: usize) -> __m256i {
    let (b, j) = locate(K::KIND, u);
    let q = m.quants.as_ptr().add(b * K::KIND.quant_bytes());
    let low4 = _mm256_set1_epi8(0xF);
    let load = |p: *const u8| _mm256_loadu_si256(p as *const __m256i);
    let shifted = |p: *const u8, by: usize, mask: __m256i| {
        _mm256_and_si256(
            _mm256_srl_epi16(load(p), _mm_cvtsi32_si128(by as i32)),
            mask,
        )
    };
    match K::KIND {
        PackedKind::Q4_1 => nibbles(q),
        PackedKind::Q8_0 => load(q),
        PackedKind::Q5_0 => {
            let high = bits_to_bytes((q as *const u32).read_unaligned());
            _mm256_or_si256(
                nibbles(q.add(4)),
                _mm256_and_si256(high, _mm256_set1_epi8(16)),
            )
        }
        PackedKind::Q4_K | PackedKind::Q5_K => {
            let five = K::KIND == PackedKind::Q5_K;
            let qs = q.add(if five { 32 } else { 0 } + (j / 2) * 32);
            let v = shifted(qs, 4 * (j & 1), low4);
            if five {
                let bit = shifted(q, j, _mm256_set1_epi8(1));
                _mm256_or_si256(v, _mm256_slli_epi16::<4>(bit))
            } else {
                v
            }
        }
        PackedKind::Q6_K => {
            let (half, k) = (j / 4, j % 4);
            let lo = shifted(q.add(64 * half + 32 * (k & 1)), 4 * (k >> 1), low4);
            let hi = shifted(q.add(128 + 32 * half), 2 * k, _mm256_set1_epi8(3));
            _mm256_or_si256(lo, _mm256_slli_epi16::<4>(hi))
        }
    }
}

/// 16 bytes' low nibbles then their high nibbles (ggml's legacy 4-bit order).
#[inline(always)]
unsafe fn nibbles(q: *const u8) -> __m256i {
    let v = _mm_loadu_si128(q as *const __m128i);
    let m = _mm_set1_epi8(0xF);
    let lo = _mm_and_si128(v, m);
    let hi = _mm_and_si128(_mm_srli_epi16::<4>(v), m);
    _mm256_set_m128i(hi, lo)
}

/// Byte `l` = 0xFF where bit `l` of `bits` is set, else 0.
#[inline(always)]
unsafe fn bits_to_bytes(bits: u32) -> __m256i {
    let v = _mm256_set1_epi32(bits as i32);
    let which = _mm256_setr_epi8(
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3,
        3, 3,
    );
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_shuffle_epi8(v, which), bit), bit)
}

#[cfg(test)]
mod tests {
    use candle_core::quantized::QTensor;
    use candle_core::{Device, Tensor};

    use super::*;
    use crate::decode::kquant::{parse_blocks, with_kind};
    use crate::decode::kquant_tests::{random, KINDS};
    use crate::decode::q8::prepare_span;
    use crate::testing::lcg_uniform;

    /// The SIMD span preparation equals the scalar one on every kind: the same
    /// factors bit for bit, the offsets' sum within rounding. Run with Q8_0
    /// offset by 128 (VNNI's form), so this AVX2 CPU checks what the VNNI kernel
    /// prepares; the signed form the AVX2 kernel uses is held to the f32 path by
    /// `q8_tests`. Legacy rows of 25 units end in a partial group of 8.
    #[test]
    fn simd_span_preparation_equals_the_scalar_one() {
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
            return;
        }
        for dtype in KINDS {
            let kind = PackedKind::from_ggml(dtype).unwrap();
            let (rows, cols) = (
                3,
                if kind.block_weights() == 256 {
                    768
                } else {
                    800
                },
            );
            let w = Tensor::from_vec(random(rows, cols, 3), (rows, cols), &Device::Cpu).unwrap();
            let q = QTensor::quantize(&w, dtype).unwrap();
            let mut m = Blocks::with_capacity(kind, rows * cols);
            parse_blocks(&mut m, rows * cols, &q.data().unwrap()).unwrap();
            let xq = Q8Rows::quantize(&lcg_uniform(5, 2 * cols), 2, cols);
            with_kind!(kind, K => check::<K>(&m, rows, cols, &xq));
        }
    }

    fn check<K: Kind>(m: &Blocks, rows: usize, cols: usize, xq: &Q8Rows) {
        let (nu, upb, g) = (cols / UNIT, K::KIND.block_weights() / UNIT, groups(K::KIND));
        for r in 0..rows {
            let u0 = r * nu;
            let (mut ds, mut ms) = ([0f32; SPAN + SCALE_PAD], [0f32; SPAN + SCALE_PAD]);
            for i in 0..nu.div_ceil(upb) {
                ds[i] = m.scales[u0 / upb + i].to_f32();
                ms[i] = m.mins.get(u0 / upb + i).map_or(0.0, |v| v.to_f32());
            }
            for c0 in 0..xq.n {
                let (mut cs, mut corr) = ([[0f32; GROUP_BUF]; 1], [0f32; 1]);
                prepare_span::<1, K>(m, (&ds, &ms), (u0, 0, nu), xq, c0, &mut cs, &mut corr);
                let (mut cs2, mut corr2) =
                    ([[0f32; GROUP_BUF]; 1], [unsafe { _mm256_setzero_ps() }]);
                // SAFETY: AVX2 and FMA were checked; a row of `nu <= SPAN` units is one span.
                let corr2 = unsafe {
                    let spans = (u0, 0, nu);
                    prepare_span256::<1, K, false>(
                        m,
                        (&ds, &ms),
                        spans,
                        xq,
                        c0,
                        &mut cs2,
                        &mut corr2,
                    );
                    hsum256(corr2[0])
                };
                let kind = K::KIND;
                assert_eq!(cs[0][..g * nu], cs2[0][..g * nu], "{kind:?} row {r} x {c0}");
                let tol = 1e-5 * (1.0 + corr[0].abs());
                assert!(
                    (corr[0] - corr2).abs() <= tol,
                    "{kind:?}: {} vs {corr2}",
                    corr[0]
                );
            }
        }
    }
}
