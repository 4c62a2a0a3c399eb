//! The block formats a [`super::PackedMatrix`] keeps, and their scalar dequantization.
//!
//! Every kind is ggml's layout split by part: the f16 scales (and minimums)
//! in one array, the quants byte for byte in another. Scales stay f16 as in
//! the file: decode reads every weight byte once per token and is bound by
//! those bytes, and f32 scales made Q5_0/Q4_1 blocks 9-20% larger; the SIMD
//! kernels widen a row's scales 16 at a time before its units. The
//! K-quants' 6-bit packed sub-block scales and mins are unpacked once to one
//! byte each (16 bytes per 256 weights instead of 12): the kernels then read a
//! scale with a plain load, and the bytes read per token grow by under 2%.
//!
//! The kernels walk every kind in *units* of 32 weights: a legacy block
//! (Q4_1, Q5_0, Q8_0) is one unit, a K-quant super-block (256 weights) is
//! eight. Unit `u` of a matrix is weights `32u..32u + 32` in row-major order,
//! so a row of `cols` weights is `cols / 32` consecutive units.

use candle_core::quantized::GgmlDType;
use half::f16;

use crate::error::{ModelError, Result};

/// Weights per kernel unit: a legacy ggml block (`QK4_1`, `QK5_0`, `QK8_0`),
/// or an eighth of a K-quant super-block.
pub const UNIT: usize = 32;

/// Weights per K-quant super-block (ggml's `QK_K`).
pub const SUPER: usize = 256;

/// Units per K-quant super-block.
pub(crate) const UNITS_PER_SUPER: usize = SUPER / UNIT;

/// Bytes of unpacked sub-block scales kept per K-quant super-block: 8 scales
/// then 8 mins (Q4_K, Q5_K), or 16 signed scales (Q6_K).
pub(crate) const SUB_BYTES: usize = 16;

/// f16 zeros kept after the last block's scale (and minimum), so the SIMD
/// kernels widen a row's scales 16 at a time without a scalar tail.
pub(crate) const SCALE_PAD: usize = 16;

/// The quantization of a [`PackedMatrix`]: one of ggml's block types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum PackedKind {
    /// 4-bit weights with a scale and a minimum per block of 32 (the default GGUF's linears).
    Q4_1,
    /// 8-bit weights with a scale per block of 32 (types not kept natively are re-quantized to it).
    Q8_0,
    /// 5-bit weights (offset 16) with a scale per block of 32 (most linears of Q4_K_M files).
    Q5_0,
    /// 4-bit weights in super-blocks of 256: eight sub-blocks with 6-bit scales and mins.
    Q4_K,
    /// As Q4_K with a fifth bit per weight.
    Q5_K,
    /// 6-bit weights (offset 32) in super-blocks of 256: sixteen sub-blocks with 8-bit scales.
    Q6_K,
}

impl PackedKind {
    /// The kind that keeps a GGUF type's blocks as stored, if there is one.
    pub fn from_ggml(dtype: GgmlDType) -> Option<Self> {
        Some(match dtype {
            GgmlDType::Q4_1 => PackedKind::Q4_1,
            GgmlDType::Q8_0 => PackedKind::Q8_0,
            GgmlDType::Q5_0 => PackedKind::Q5_0,
            GgmlDType::Q4K => PackedKind::Q4_K,
            GgmlDType::Q5K => PackedKind::Q5_K,
            GgmlDType::Q6K => PackedKind::Q6_K,
            _ => return None,
        })
    }

    /// Weights per block: 32, or 256 for the K-quants.
    pub fn block_weights(self) -> usize {
        match self {
            PackedKind::Q4_K | PackedKind::Q5_K | PackedKind::Q6_K => SUPER,
            _ => UNIT,
        }
    }

    /// Bytes of one block in a GGUF file.
    pub(crate) fn ggml_block_bytes(self) -> usize {
        match self {
            PackedKind::Q4_1 => 20,
            PackedKind::Q8_0 => 34,
            PackedKind::Q5_0 => 22,
            PackedKind::Q4_K => 144,
            PackedKind::Q5_K => 176,
            PackedKind::Q6_K => 210,
        }
    }

    /// Bytes of quants kept per block (the file's block without its scales).
    pub(crate) fn quant_bytes(self) -> usize {
        match self {
            PackedKind::Q4_1 => 16,
            PackedKind::Q8_0 => 32,
            PackedKind::Q5_0 => 20,
            PackedKind::Q4_K => 128,
            PackedKind::Q5_K => 160,
            PackedKind::Q6_K => 192,
        }
    }

    pub(crate) fn has_mins(self) -> bool {
        matches!(self, PackedKind::Q4_1 | PackedKind::Q4_K | PackedKind::Q5_K)
    }
}

/// The blocks of one matrix, split by part so the kernels read each with a
/// plain load.
#[derive(Debug, Clone)]
pub struct Blocks {
    pub(crate) kind: PackedKind,
    /// `d` of each block, row-major, as stored (f16).
    pub(crate) scales: Vec<f16>,
    /// `m` (Q4_1) or `dmin` (Q4_K, Q5_K) of each block (f16); empty for other kinds.
    pub(crate) mins: Vec<f16>,
    /// The K-quants' sub-block scales, [`SUB_BYTES`] per block; empty for
    /// other kinds.
    pub(crate) sub: Vec<u8>,
    /// The quants of each block, in ggml's byte order.
    pub(crate) quants: Vec<u8>,
}

impl Blocks {
    /// Empty parts with room for `weights` weights of `kind`.
    pub(crate) fn with_capacity(kind: PackedKind, weights: usize) -> Self {
        let n = weights / kind.block_weights();
        let sub = if kind.block_weights() == SUPER {
            SUB_BYTES
        } else {
            0
        };
        Self {
            kind,
            scales: Vec::with_capacity(n + SCALE_PAD),
            mins: Vec::with_capacity(if kind.has_mins() { n + SCALE_PAD } else { 0 }),
            sub: Vec::with_capacity(n * sub),
            quants: Vec::with_capacity(n * kind.quant_bytes()),
        }
    }

    /// Ends the parts once every block is in: pads the scales and minimums
    /// with [`SCALE_PAD`] zeros (see there).
    pub(crate) fn seal(&mut self) {
        self.scales.extend([f16::ZERO; SCALE_PAD]);
        if self.kind.has_mins() {
            self.mins.extend([f16::ZERO; SCALE_PAD]);
        }
    }

    /// Bytes held (quants and scales).
    pub(crate) fn bytes(&self) -> usize {
        self.quants.len() + self.sub.len() + 2 * (self.scales.len() + self.mins.len())
    }
}

/// Splits ggml's bytes of `weights` weights of `m.kind` into `m`'s scales,
/// mins, unpacked sub-block scales and quants.
pub(crate) fn parse_blocks(m: &mut Blocks, weights: usize, data: &[u8]) -> Result<()> {
    let kind = m.kind;
    let block_bytes = kind.ggml_block_bytes();
    let n_blocks = weights / kind.block_weights();
    if data.len() != n_blocks * block_bytes {
        return Err(ModelError::Config(format!(
            "{kind:?} data of {} bytes does not hold {weights} weights",
            data.len()
        )));
    }
    for b in data.chunks_exact(block_bytes) {
        let h = |i: usize| f16::from_le_bytes([b[i], b[i + 1]]);
        match kind {
            // d, m, qs[16]
            PackedKind::Q4_1 => {
                m.scales.push(h(0));
                m.mins.push(h(2));
                m.quants.extend_from_slice(&b[4..]);
            }
            // d, qs[32]  /  d, qh[4], qs[16]
            PackedKind::Q8_0 | PackedKind::Q5_0 => {
                m.scales.push(h(0));
                m.quants.extend_from_slice(&b[2..]);
            }
            // d, dmin, scales[12], (qh[32],) qs[128]
            PackedKind::Q4_K | PackedKind::Q5_K => {
                m.scales.push(h(0));
                m.mins.push(h(2));
                m.sub.extend_from_slice(&unpack_scales_mins(&b[4..16]));
                m.quants.extend_from_slice(&b[16..]);
            }
            // ql[128], qh[64], scales[16] (i8), d
            PackedKind::Q6_K => {
                m.scales.push(h(208));
                m.sub.extend_from_slice(&b[192..208]);
                m.quants.extend_from_slice(&b[..192]);
            }
        }
    }
    m.seal();
    Ok(())
}

/// ggml's 12 bytes of 6-bit sub-block scales and mins (`get_scale_min_k4`)
/// as 8 scales followed by 8 mins, one byte each.
fn unpack_scales_mins(q: &[u8]) -> [u8; SUB_BYTES] {
    let mut out = [0u8; SUB_BYTES];
    for j in 0..8 {
        let (sc, mn) = if j < 4 {
            (q[j] & 63, q[j + 4] & 63)
        } else {
            (
                (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
                (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
            )
        };
        out[j] = sc;
        out[8 + j] = mn;
    }
    out
}

/// A [`PackedKind`] known at compile time: the kernels are generic over it, so
/// each kind gets its own loop with the unpacking inlined and no branch on the
/// kind per unit (the match on `K::KIND` folds away).
pub(crate) trait Kind {
    const KIND: PackedKind;
}

macro_rules! kinds {
    ($($tag:ident => $kind:ident),*) => {
        $(
            #[allow(non_camel_case_types)]
            pub(crate) struct $tag;
            impl Kind for $tag {
                const KIND: PackedKind = PackedKind::$kind;
            }
        )*
    };
}
kinds!(KQ4_1 => Q4_1, KQ8_0 => Q8_0, KQ5_0 => Q5_0, KQ4_K => Q4_K, KQ5_K => Q5_K, KQ6_K => Q6_K);

/// Runs `$body` with `$k` bound to the [`Kind`] marker of `$kind`: the one
/// place a run-time kind becomes a compile-time one.
macro_rules! with_kind {
    ($kind:expr, $k:ident => $body:expr) => {{
        use $crate::decode::kquant::{KQ4_1, KQ4_K, KQ5_0, KQ5_K, KQ6_K, KQ8_0};
        match $kind {
            PackedKind::Q4_1 => {
                type $k = KQ4_1;
                $body
            }
            PackedKind::Q8_0 => {
                type $k = KQ8_0;
                $body
            }
            PackedKind::Q5_0 => {
                type $k = KQ5_0;
                $body
            }
            PackedKind::Q4_K => {
                type $k = KQ4_K;
                $body
            }
            PackedKind::Q5_K => {
                type $k = KQ5_K;
                $body
            }
            PackedKind::Q6_K => {
                type $k = KQ6_K;
                $body
            }
        }
    }};
}
pub(crate) use with_kind;

/// Where unit `u` of a matrix of `kind` lives: its block, and its index in it.
#[inline(always)]
pub(crate) fn locate(kind: PackedKind, u: usize) -> (usize, usize) {
    if kind.block_weights() == SUPER {
        (u / UNITS_PER_SUPER, u % UNITS_PER_SUPER)
    } else {
        (u, 0)
    }
}

/// Unit `u` of `m` as f32 weights: the reference the SIMD kernels must match,
/// written as ggml's `dequantize_row_*`.
pub(crate) fn unit_f32(m: &Blocks, u: usize, w: &mut [f32; UNIT]) {
    unit_with(m, u, w, |q, s, o| q * s + o)
}

/// [`unit_f32`] with each weight `madd(quant, scale, offset)`: a plain
/// multiply and add there, a fused multiply-add in the tests that hold the
/// AVX-512 kernels' weights to it bit for bit.
pub(crate) fn unit_with(
    m: &Blocks,
    u: usize,
    w: &mut [f32; UNIT],
    madd: impl Fn(f32, f32, f32) -> f32,
) {
    let (b, j) = locate(m.kind, u);
    let qb = m.kind.quant_bytes();
    let q = &m.quants[b * qb..(b + 1) * qb];
    let d = m.scales[b].to_f32();
    match m.kind {
        PackedKind::Q4_1 => {
            let mn = m.mins[b].to_f32();
            for l in 0..16 {
                w[l] = madd((q[l] & 0xF) as f32, d, mn);
                w[l + 16] = madd((q[l] >> 4) as f32, d, mn);
            }
        }
        PackedKind::Q8_0 => {
            for l in 0..UNIT {
                w[l] = madd(q[l] as i8 as f32, d, 0.0);
            }
        }
        PackedKind::Q5_0 => {
            let qh = u32::from_le_bytes([q[0], q[1], q[2], q[3]]);
            let qs = &q[4..];
            for l in 0..16 {
                let lo = (qs[l] & 0xF) as u32 | (((qh >> l) & 1) << 4);
                let hi = (qs[l] >> 4) as u32 | (((qh >> (l + 16)) & 1) << 4);
                w[l] = madd((lo as i32 - 16) as f32, d, 0.0);
                w[l + 16] = madd((hi as i32 - 16) as f32, d, 0.0);
            }
        }
        PackedKind::Q4_K | PackedKind::Q5_K => {
            let sub = &m.sub[b * SUB_BYTES..][..SUB_BYTES];
            let (d1, m1) = (d * sub[j] as f32, m.mins[b].to_f32() * sub[8 + j] as f32);
            let (qh, qs) = if m.kind == PackedKind::Q5_K {
                (Some(&q[..32]), &q[32..])
            } else {
                (None, q)
            };
            let shift = 4 * (j & 1);
            for l in 0..UNIT {
                let mut v = (qs[(j / 2) * 32 + l] >> shift) & 0xF;
                if let Some(qh) = qh {
                    v |= ((qh[l] >> j) & 1) << 4;
                }
                w[l] = madd(v as f32, d1, -m1);
            }
        }
        PackedKind::Q6_K => {
            let (ql, qh) = q.split_at(128);
            let (half, k) = (j / 4, j % 4);
            let ql = &ql[64 * half + 32 * (k & 1)..][..32];
            let qh = &qh[32 * half..][..32];
            let (nshift, hshift) = (4 * (k >> 1), 2 * k);
            let sub = &m.sub[b * SUB_BYTES..][..SUB_BYTES];
            for l in 0..UNIT {
                let sc = sub[8 * half + 2 * k + l / 16] as i8 as f32;
                let v = ((ql[l] >> nshift) & 0xF) | (((qh[l] >> hshift) & 3) << 4);
                w[l] = madd((v as i32 - 32) as f32, d * sc, 0.0);
            }
        }
    }
}
