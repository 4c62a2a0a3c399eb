//! AMX-BF16 tiles for the bf16 products of [`super::bf16`]: `c (+)= a · bᵀ` with `a`
//! bf16 rows (activations) and `b` a weight panel packed into AMX's pair-interleaved
//! ("VNNI") blocks ([`super::bf16_product`] packs one per panel).
//!
//! Why: on Sapphire Rapids `vdpbf16ps` retires at about 0.6× the f32 FMA's FLOP rate,
//! so AVX512_BF16 alone does not beat f32; one `tdpbf16ps` multiplies a 16×32 bf16
//! tile by a 32×16 one (8192 multiply-adds), which is where PyTorch's bf16 autocast gets
//! its speed on these CPUs (oneDNN's brgemm). Stable Rust has no AMX intrinsics, so the
//! tile instructions are `asm!`; Linux hands out the tile state only after an
//! `arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)` request ([`available`]).
//!
//! Blocking: a 32×32 block of `c` lives in four accumulator tiles over the whole
//! reduction (two activation tiles of 16 rows × 32 k, two weight tiles of 32 k × 16
//! columns per step); it is stored once to a stack buffer and added to `c`.

use super::bf16::Bf16Matrix;
use super::kernel::par_rows;

/// Columns of a packed block (one tile's width in f32 outputs).
const NB: usize = 16;
/// Reduction elements per packed block (one tile row of bf16: 64 bytes).
const KB: usize = 32;

/// A weight `[n, k]` (rows = output columns of the product) in AMX B-tile blocks:
/// block `(jb, kb)` holds 16 rows of 64 bytes, row `p` being
/// `(w[jb·16+j][kb·32+2p], w[jb·16+j][kb·32+2p+1])` for `j` in 0..16. Columns are padded
/// with zeros to a multiple of 32 (two tiles).
#[derive(Debug, Clone)]
pub(crate) struct VnniMatrix {
    pub rows: usize,
    pub cols: usize,
    n_blocks: usize,
    k_blocks: usize,
    data: Vec<u16>,
}

impl VnniMatrix {
    /// Packs a bf16 matrix (its padded rows are the reduction dimension).
    pub fn pack(m: &Bf16Matrix) -> Self {
        let n_blocks = m.rows.div_ceil(2 * NB) * 2;
        let k_blocks = m.stride / KB;
        let mut data = vec![0u16; n_blocks * k_blocks * NB * KB];
        for j in 0..m.rows {
            let (jb, jj) = (j / NB, j % NB);
            let row = &m.data[j * m.stride..(j + 1) * m.stride];
            for (kb, chunk) in row.chunks_exact(KB).enumerate() {
                let block = &mut data[(jb * k_blocks + kb) * NB * KB..][..NB * KB];
                for p in 0..KB / 2 {
                    block[p * KB + 2 * jj] = chunk[2 * p];
                    block[p * KB + 2 * jj + 1] = chunk[2 * p + 1];
                }
            }
        }
        Self {
            rows: m.rows,
            cols: m.cols,
            n_blocks,
            k_blocks,
            data,
        }
    }

    fn block(&self, jb: usize, kb: usize) -> *const u16 {
        self.data[(jb * self.k_blocks + kb) * NB * KB..].as_ptr()
    }
}

/// Whether this CPU has AMX-BF16 and the kernel granted this process the tile state.
pub(crate) use super::cpu::amx_available as available;

/// `c = a · bᵀ` (`c +=` when `acc`), `a: [m, k]` bf16 rows, `b` packed `[n, k]`, `c`
/// row-major `[m, n]`. [`available`] must be true.
pub(crate) fn matmul_nt(c: &mut [f32], a: &Bf16Matrix, b: &VnniMatrix, acc: bool, parallel: bool) {
    let (m, n) = (a.rows, b.rows);
    assert!(
        a.cols == b.cols && a.stride == b.k_blocks * KB,
        "amx: k differs"
    );
    assert_eq!(c.len(), m * n, "amx: c has the wrong size");
    assert!(available(), "amx: tiles are not available");
    if m == 0 || n == 0 {
        return;
    }
    let run = |row0: usize, chunk: &mut [f32]| {
        let rows = chunk.len() / n;
        // SAFETY: `available()` checked the CPU and the permission; the tiles read
        // `a`'s rows `row0..row0+rows` rounded up to 32 (Bf16Matrix pads its storage
        // to whole 32-row groups) and `b`'s blocks, which exist for every 32 columns.
        unsafe {
            configure_tiles();
            for i0 in (0..rows).step_by(32) {
                for jb in (0..b.n_blocks).step_by(2) {
                    let block = tile_block(a, row0 + i0, b, jb);
                    let (mr, nr) = ((rows - i0).min(32), (n - jb * NB).min(32));
                    for i in 0..mr {
                        let dst = &mut chunk[(i0 + i) * n + jb * NB..][..nr];
                        let src = &block[i * 32..i * 32 + nr];
                        if acc {
                            dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
                        } else {
                            dst.copy_from_slice(src);
                        }
                    }
                }
            }
            std::arch::asm!("tilerelease", options(nostack));
        }
    };
    if parallel {
        par_rows(c, n * 32, a.stride * n, |g0, chunk| run(g0 * 32, chunk));
    } else {
        run(0, c);
    }
}

/// Loads the tile configuration: eight tiles of 16 rows × 64 bytes (palette 1).
#[target_feature(enable = "avx512f")]
unsafe fn configure_tiles() {
    let mut cfg = [0u8; 64];
    cfg[0] = 1;
    for t in 0..8 {
        cfg[16 + 2 * t] = 64; // bytes per row (u16, little-endian)
        cfg[48 + t] = 16; // rows
    }
    std::arch::asm!("ldtilecfg [{}]", in(reg) cfg.as_ptr(), options(nostack));
}

/// The 32×32 block of `a·bᵀ` at rows `i0..i0+32` of `a` and packed column blocks
/// `jb, jb+1` of `b`, row-major with stride 32.
unsafe fn tile_block(a: &Bf16Matrix, i0: usize, b: &VnniMatrix, jb: usize) -> [f32; 32 * 32] {
    let mut out = [0f32; 32 * 32];
    let lda = (a.stride * 2) as isize;
    let a0 = a.data.as_ptr().add(i0 * a.stride);
    let a1 = a0.add(16 * a.stride);
    std::arch::asm!(
        "tilezero tmm0",
        "tilezero tmm1",
        "tilezero tmm2",
        "tilezero tmm3",
        options(nostack)
    );
    for kb in 0..b.k_blocks {
        std::arch::asm!(
            "tileloadd tmm4, [{a0} + {lda}]",
            "tileloadd tmm5, [{a1} + {lda}]",
            "tileloadd tmm6, [{b0} + {ldb}]",
            "tileloadd tmm7, [{b1} + {ldb}]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            a0 = in(reg) a0.add(kb * KB),
            a1 = in(reg) a1.add(kb * KB),
            b0 = in(reg) b.block(jb, kb),
            b1 = in(reg) b.block(jb + 1, kb),
            lda = in(reg) lda,
            ldb = in(reg) 64isize,
            options(nostack, readonly)
        );
    }
    let p = out.as_mut_ptr();
    std::arch::asm!(
        "tilestored [{c00} + {ldc}], tmm0",
        "tilestored [{c01} + {ldc}], tmm1",
        "tilestored [{c10} + {ldc}], tmm2",
        "tilestored [{c11} + {ldc}], tmm3",
        c00 = in(reg) p,
        c01 = in(reg) p.add(16),
        c10 = in(reg) p.add(16 * 32),
        c11 = in(reg) p.add(16 * 32 + 16),
        ldc = in(reg) 128isize,
        options(nostack)
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::bf16::{self, Bf16Kernel};

    fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let h = (i as u32 ^ seed).wrapping_mul(2_654_435_761) >> 8;
                (h % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn packing_interleaves_pairs_along_k() {
        let (n, k) = (3, 40);
        let m = Bf16Matrix::from_f32(&data(n * k, 1), n, k);
        let v = VnniMatrix::pack(&m);
        assert_eq!((v.n_blocks, v.k_blocks), (2, 2));
        // Column 2, k = 33: block (0, 1), row p = 0, second of the pair.
        assert_eq!(v.data[NB * KB + 2 * 2 + 1], m.data[2 * m.stride + 33]);
        // Padded columns are zero.
        assert!(v.data[..NB * KB]
            .chunks(2)
            .skip(3)
            .step_by(16)
            .all(|p| p == [0, 0]));
    }

    /// Runs wherever AMX is (not on every CI machine): the tiles compute the same
    /// products as the portable kernel on the same rounded operands, on shapes with
    /// row, column and k edges.
    #[test]
    fn amx_matches_the_portable_kernel() {
        if !available() {
            eprintln!("skipping: this CPU or kernel gives no AMX-BF16");
            return;
        }
        for &(m, n, k) in &[(1, 1, 1), (33, 47, 70), (64, 96, 576), (100, 17, 200)] {
            let a = Bf16Matrix::from_f32(&data(m * k, 3), m, k);
            let w = Bf16Matrix::from_f32(&data(n * k, 4), n, k);
            let mut want = vec![0.25f32; m * n];
            bf16::matmul_nt(&mut want, &a, &w, true, Bf16Kernel::Portable, false);
            for parallel in [false, true] {
                let mut got = vec![0.25f32; m * n];
                matmul_nt(&mut got, &a, &VnniMatrix::pack(&w), true, parallel);
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                        "{m}x{n}x{k}: {g} vs {w}"
                    );
                }
            }
        }
    }
}
