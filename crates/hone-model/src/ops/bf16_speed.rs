//! Whether bf16 products beat the f32 gemm on this CPU, measured once per process, so
//! that `--base-weights auto` picks bf16 exactly where it is faster.
//!
//! Why measure rather than read the CPU's flags: the same instruction runs at different
//! rates on different CPUs. On the Sapphire Rapids Xeon of session 9 `vdpbf16ps` ran the
//! products at 0.5× the f32 gemm (only AMX tiles beat it); on the AMD EPYC (Zen 4) of
//! session 20 it ran them at 1.7–2.0× (docs/benchmarks.md). Both report `avx512_bf16`,
//! and a table of CPU models would miss every CPU nobody here measured. The probe times
//! the kernel against the gemm on one projection-sized product, alternating, best of a
//! few rounds: a few milliseconds, once.

use std::sync::OnceLock;
use std::time::Instant;

use super::bf16::{matmul_nt_into, Bf16Kernel, Bf16Matrix};
use super::kernel::{matmul, Tr};

/// How much faster than f32 a kernel must measure for `auto` to pick it: the margin
/// keeps a near tie (where neither choice matters) from flipping between runs on a
/// noisy machine; the CPUs measured so far are far from it (0.5× and 1.7–2.0×).
pub const MIN_SPEEDUP: f64 = 1.25;

/// The probe's product `(rows, k, n)`: one attention projection of a 0.5B model over
/// 256 tokens (0.4 GFLOP, about 2 ms on 2 cores).
const SHAPE: (usize, usize, usize) = (256, 896, 896);

/// Timed rounds per path (after one warm-up each); the fastest of each is compared.
const ROUNDS: usize = 5;

/// The measured speed of `kernel`'s products over the f32 gemm's (f32 time over bf16
/// time, the activations' rounding to bf16 included, as in training), for the kernels
/// whose speed `auto` decides by measurement: AVX512_BF16 when this CPU has it.
/// Measured on first use, then the same value for the rest of the process.
pub fn speedup(kernel: Bf16Kernel) -> Option<f64> {
    static AVX512_BF16: OnceLock<f64> = OnceLock::new();
    match kernel {
        Bf16Kernel::Avx512Bf16 if kernel.available() => {
            Some(*AVX512_BF16.get_or_init(|| measure(kernel)))
        }
        _ => None,
    }
}

/// Whether `auto` multiplies in bf16 on `kernel`: always on AMX tiles (2.3–4.8× the f32
/// gemm where measured, session 9), never on the portable kernel (plain Rust, slow), and
/// on AVX512_BF16 when [`speedup`] measures at least [`MIN_SPEEDUP`].
pub fn beats_f32(kernel: Bf16Kernel) -> bool {
    match kernel {
        Bf16Kernel::Amx => true,
        Bf16Kernel::Portable => false,
        k => speedup(k).is_some_and(fast_enough),
    }
}

/// The decision on a measured speed-up.
fn fast_enough(speedup: f64) -> bool {
    speedup >= MIN_SPEEDUP
}

/// Times the f32 gemm and `kernel` on [`SHAPE`], alternating, and returns the ratio of
/// their best times.
fn measure(kernel: Bf16Kernel) -> f64 {
    let (m, k, n) = SHAPE;
    let fill = |len: usize, seed: usize| -> Vec<f32> {
        (0..len)
            .map(|i| ((i * 2_654_435_761 + seed) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    };
    let (x, w) = (fill(m * k, 1), fill(n * k, 2));
    let wb = Bf16Matrix::from_f32(&w, n, k);
    let mut c = vec![0f32; m * n];
    let mut f32_gemm = || {
        matmul(
            &mut c,
            (m, n, k),
            (&x, Tr::N),
            (&w, Tr::T),
            false,
            1.0,
            true,
        )
    };
    let mut c16 = vec![0f32; m * n];
    let mut bf16 = || {
        let xb = Bf16Matrix::from_f32(&x, m, k);
        matmul_nt_into((&mut c16, n, 0), &xb, wb.view(), false, kernel, true);
    };
    let (mut t32, mut t16) = (f64::INFINITY, f64::INFINITY);
    for round in 0..=ROUNDS {
        let t = Instant::now();
        f32_gemm();
        let a = t.elapsed().as_secs_f64();
        let t = Instant::now();
        bf16();
        let b = t.elapsed().as_secs_f64();
        if round > 0 {
            (t32, t16) = (t32.min(a), t16.min(b));
        }
    }
    let ratio = t32 / t16.max(1e-12);
    tracing::info!(
        kernel = kernel.name(),
        speedup = ratio,
        "bf16 products measured against the f32 gemm: auto multiplies in {}",
        if fast_enough(ratio) { "bf16" } else { "f32" }
    );
    ratio
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_decision_needs_the_margin() {
        assert!(!fast_enough(0.5), "Sapphire Rapids' vdpbf16ps: f32");
        assert!(!fast_enough(1.1), "a near tie stays f32");
        assert!(fast_enough(MIN_SPEEDUP));
        assert!(fast_enough(1.8), "Zen 4's vdpbf16ps: bf16");
    }

    /// The dispatch on this CPU: AMX always, the portable kernel never, AVX512_BF16 by
    /// its measured speed-up, which is measured once and is a real, finite ratio.
    #[test]
    fn each_kernel_is_decided_as_documented() {
        assert!(beats_f32(Bf16Kernel::Amx));
        assert!(!beats_f32(Bf16Kernel::Portable));
        assert_eq!(speedup(Bf16Kernel::Portable), None);
        assert_eq!(speedup(Bf16Kernel::Amx), None);
        let k = Bf16Kernel::Avx512Bf16;
        match speedup(k) {
            None => {
                assert!(!k.available());
                assert!(!beats_f32(k), "no AVX512_BF16: never bf16");
            }
            Some(s) => {
                assert!(s.is_finite() && s > 0.0, "{s}");
                assert_eq!(speedup(k), Some(s), "measured once per process");
                assert_eq!(beats_f32(k), s >= MIN_SPEEDUP);
                eprintln!("avx512_bf16 measured at {s:.2}x the f32 gemm");
            }
        }
    }
}
