//! How training multiplies by the frozen base weights: in f32 (the `gemm` crate) or in
//! bf16 with f32 accumulation ([`super::bf16`]), and the bf16 copies of the weights.
//!
//! The choice is a process setting ([`set_base_weights`], from `--base-weights`) because
//! it belongs to the machine and the run, not to each call; a thread may override it for
//! a scope ([`with_base_weights`]) so that tests of both paths can run side by side. An
//! op reads it once when it is built and keeps it, so a forward and its backward always
//! use the same path.
//!
//! A weight multiplies in bf16 from one bf16 copy, `W` as stored (2 bytes per parameter;
//! each product lays out a panel at a time, [`super::bf16_product`]). A run in bf16 mode
//! holds its base as bf16 tensors ([`to_bf16_tensor`]; no f32 copy exists), which are
//! their own copies. An f32 tensor multiplied in bf16 (a library caller's f32 model under
//! a bf16 precision) gets a copy made the first time a product needs it, kept in a cache
//! keyed by the tensor's id (candle never reuses one); [`release_cache`] frees them when
//! training ends (`scratch::release` calls it).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::{CpuStorage, DType, Result, Tensor, TensorId};
use half::slice::HalfFloatSliceExt;

use super::bf16::{to_bf16, Bf16Kernel, Bf16Matrix};
use super::bf16_product::{self, Bf16Rows};
use super::bf16_speed;
use super::kernel::{f32_data, matmul, Tr};
use super::packed_product;
use crate::decode::PackedMatrix;
use crate::linear::BaseWeight;

/// The precision of the frozen-weight products of training (`--base-weights`).
///
/// A run records the mode it resolved to (`f32` or `bf16`, never `auto`) in its
/// checkpoints, so that a resume multiplies the same way; `auto` in a stored config means
/// "not recorded" (checkpoints older than the field).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BaseWeights {
    /// bf16 where a bf16 kernel is faster than f32 on this CPU, else f32
    /// ([`super::bf16_speed::beats_f32`]): AMX tiles always are; AVX512_BF16's
    /// `vdpbf16ps` is measured once per process, because it ran the products at 0.5×
    /// the f32 gemm on a Sapphire Rapids Xeon and at 1.7–2.0× on an AMD EPYC (Zen 4)
    /// (docs/benchmarks.md, "Session 9, bf16" and "Session 20").
    #[default]
    Auto,
    /// f32 products (the reference).
    F32,
    /// bf16 products with f32 accumulation, on the best kernel this CPU has (the
    /// portable one, slowly, when it has none).
    Bf16,
    /// The base kept as Q8_0 blocks (every linear of the file re-quantized to Q8_0 at
    /// load, as the serving path does for kinds it has no kernel for), dequantized a
    /// panel at a time inside f32 products ([`super::packed_product`]).
    #[serde(rename = "q8_0")]
    Q8_0,
    /// The base kept in the file's own blocks where the decode kernels read them (Q4_1,
    /// Q5_0, Q8_0, Q4_K, Q5_K, Q6_K; other kinds as Q8_0), dequantized a panel at a
    /// time inside f32 products: the least memory (QLoRA-style).
    Native,
}

impl BaseWeights {
    /// Parses `auto`, `f32`, `bf16`, `q8_0` or `native`.
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "f32" => Ok(Self::F32),
            "bf16" => Ok(Self::Bf16),
            "q8_0" => Ok(Self::Q8_0),
            "native" => Ok(Self::Native),
            other => Err(format!(
                "unknown base-weights mode {other:?}: expected auto, f32, bf16, q8_0 or native"
            )),
        }
    }

    /// Whether the base stays in quantized blocks (`q8_0`, `native`): the model is
    /// loaded with `WeightPath::Packed` for these, with `WeightPath::F32` otherwise.
    pub fn keeps_blocks(self) -> bool {
        matches!(self, Self::Q8_0 | Self::Native)
    }

    /// `auto` decided for this CPU (`f32` or `bf16`); an explicit mode as it is.
    pub fn resolved(self) -> Self {
        match (self, self.resolve()) {
            (Self::Auto, Precision::F32) => Self::F32,
            (Self::Auto, Precision::Bf16(_)) => Self::Bf16,
            (explicit, _) => explicit,
        }
    }

    /// The mode a run uses: `requested`, except that `auto` keeps the mode an earlier
    /// part of the run recorded (`recorded`, from its checkpoint) so that a resume
    /// multiplies as the interrupted run did, and is otherwise decided for this CPU. An
    /// explicit mode is returned as is (the checkpoint check then names a mismatch).
    pub fn for_run(requested: Self, recorded: Option<Self>) -> Self {
        match (requested, recorded) {
            (Self::Auto, Some(r)) if r != Self::Auto => r,
            (r, _) => r.resolved(),
        }
    }

    /// `auto`, `f32`, `bf16`, `q8_0` or `native`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::Q8_0 => "q8_0",
            Self::Native => "native",
        }
    }

    /// The product path this setting means on this CPU (block-kept bases multiply in
    /// f32 over dequantized panels).
    pub fn resolve(self) -> Precision {
        match self {
            Self::F32 | Self::Q8_0 | Self::Native => Precision::F32,
            Self::Bf16 => Precision::Bf16(Bf16Kernel::detect()),
            Self::Auto => match Bf16Kernel::detect() {
                k if bf16_speed::beats_f32(k) => Precision::Bf16(k),
                _ => Precision::F32,
            },
        }
    }

    fn code(self) -> u8 {
        match self {
            Self::Auto => 0,
            Self::F32 => 1,
            Self::Bf16 => 2,
            Self::Q8_0 => 3,
            Self::Native => 4,
        }
    }

    fn from_code(c: u8) -> Self {
        match c {
            1 => Self::F32,
            2 => Self::Bf16,
            3 => Self::Q8_0,
            4 => Self::Native,
            _ => Self::Auto,
        }
    }
}

/// A resolved product path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    F32,
    Bf16(Bf16Kernel),
}

impl Precision {
    /// `f32 (gemm)` or `bf16 (avx512_bf16)` and the like, for reports.
    pub fn describe(self) -> String {
        match self {
            Self::F32 => "f32 (gemm)".into(),
            Self::Bf16(k) => format!("bf16 ({})", k.name()),
        }
    }
}

/// The process's mode: f32 until a front end sets another (the library's products stay
/// the reference unless asked; the CLI's `--base-weights` defaults to `auto`).
static PROCESS: AtomicU8 = AtomicU8::new(1);

thread_local! {
    static OVERRIDE: Cell<Option<Precision>> = const { Cell::new(None) };
}

/// Sets the process's base-weight mode (the CLI's `--base-weights`).
pub fn set_base_weights(mode: BaseWeights) {
    PROCESS.store(mode.code(), Ordering::Relaxed);
}

/// The process's base-weight mode.
pub fn base_weights() -> BaseWeights {
    BaseWeights::from_code(PROCESS.load(Ordering::Relaxed))
}

/// The product path ops built on this thread use now.
pub fn current_precision() -> Precision {
    OVERRIDE
        .with(|o| o.get())
        .unwrap_or_else(|| base_weights().resolve())
}

/// Runs `f` with this thread's ops using `precision` (a forced path, e.g. in tests).
pub fn with_precision<T>(precision: Precision, f: impl FnOnce() -> T) -> T {
    let old = OVERRIDE.with(|o| o.replace(Some(precision)));
    struct Restore(Option<Precision>);
    impl Drop for Restore {
        fn drop(&mut self) {
            OVERRIDE.with(|o| o.set(self.0));
        }
    }
    let _restore = Restore(old);
    f()
}

/// The CPU features that bear on the products, as detected at run time: `avx512f`,
/// `avx512_bf16`, `amx_bf16`.
pub fn cpu_flags() -> Vec<&'static str> {
    let mut flags = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            flags.push("avx512f");
        }
        if is_x86_feature_detected!("avx512bf16") {
            flags.push("avx512_bf16");
        }
        // `is_x86_feature_detected!("amx-bf16")` is unstable: CPUID leaf 7, EDX bit 22
        // (a CPU without leaf 7 returns zeros there).
        let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
        if leaf7.edx & (1 << 22) != 0 {
            flags.push("amx_bf16");
        }
    }
    flags
}

/// A frozen weight's one bf16 copy, `[n_out, n_in]` as stored (2 bytes per parameter):
/// the model's own bf16 tensor (`--base-weights bf16` holds the base so, with no f32
/// copy) or one made once from an f32 tensor ([`bf16_weight`]). Each product lays out a
/// panel of it at a time in the layout its kernel reads ([`super::bf16_product`]).
#[derive(Debug)]
pub(crate) struct Bf16Weight {
    t: Tensor,
}

impl Bf16Weight {
    /// Wraps a 2-D bf16 tensor (made contiguous).
    fn new(t: &Tensor) -> Result<Self> {
        if t.dtype() != DType::BF16 || t.rank() != 2 {
            candle_core::bail!("bf16 base weight: expected a 2-D bf16 tensor, got {t:?}");
        }
        if !matches!(&*t.storage_and_layout().0, candle_core::Storage::Cpu(_)) {
            candle_core::bail!("bf16 base weights: only the CPU backend is supported");
        }
        Ok(Self { t: t.contiguous()? })
    }

    fn bytes(&self) -> usize {
        self.t.elem_count() * 2
    }

    /// `c = a·Wᵀ` (`transposed`: `a·W`), `c +=` when `acc`.
    fn product(&self, c: &mut [f32], a: &Bf16Matrix, transposed: bool, acc: bool, k: Bf16Kernel) {
        let (n_out, n_in) = self.t.dims2().expect("checked 2-D in Bf16Weight::new");
        let (storage, layout) = self.t.storage_and_layout();
        let (candle_core::Storage::Cpu(CpuStorage::BF16(v)), Some((s, e))) =
            (&*storage, layout.contiguous_offsets())
        else {
            unreachable!("Bf16Weight::new checked a contiguous CPU bf16 tensor")
        };
        let w = Bf16Rows {
            bits: v[s..e].reinterpret_cast(),
            n_out,
            n_in,
        };
        if transposed {
            bf16_product::backward(w, a, c, acc, k);
        } else {
            bf16_product::forward(w, a, c, acc, k);
        }
    }
}

/// `t` rounded to bf16 (nearest-even, [`super::bf16::to_bf16`]); a bf16 tensor as it is.
/// `--base-weights bf16` holds its base so.
pub fn to_bf16_tensor(t: &Tensor) -> Result<Tensor> {
    if t.dtype() == DType::BF16 {
        return Ok(t.clone());
    }
    let t = t.to_dtype(DType::F32)?.contiguous()?;
    let bits: Vec<half::bf16> = {
        let (storage, layout) = t.storage_and_layout();
        let data = match &*storage {
            candle_core::Storage::Cpu(s) => f32_data(s, layout, "bf16 base weight")?,
            _ => candle_core::bail!("bf16 base weights: only the CPU backend is supported"),
        };
        data.iter()
            .map(|&x| half::bf16::from_bits(to_bf16(x)))
            .collect()
    };
    Tensor::from_vec(bits, t.dims(), t.device())
}

/// The kernel a bf16-held weight multiplies on under `precision`: its kernel, or this
/// CPU's best when the run is f32 (a bf16 weight has no f32 data to multiply).
fn kernel_for(precision: Precision) -> Bf16Kernel {
    match precision {
        Precision::Bf16(k) => k,
        Precision::F32 => Bf16Kernel::detect(),
    }
}

/// A frozen weight `w: [n_out, n_in]` as a product operand: the f32 data, or its bf16
/// copy with the kernel when products run in bf16, or its quantized blocks (a base kept
/// in blocks; the f32 slice is then empty).
#[derive(Clone, Copy)]
pub(crate) struct FrozenWeight<'a> {
    pub f32: &'a [f32],
    pub bf16: Option<(&'a Bf16Weight, Bf16Kernel)>,
    pub packed: Option<&'a PackedMatrix>,
}

impl FrozenWeight<'_> {
    /// `y = x·wᵀ` (`y +=` when `acc`) for `rows` rows of `x: [rows, n_in]`.
    pub fn forward(&self, x: &[f32], y: &mut [f32], (rows, n_in, n_out): Shape3, acc: bool) {
        match (self.bf16, self.packed) {
            (Some((w, kernel)), _) => {
                with_rounded(x, (rows, n_in), |xb| w.product(y, xb, false, acc, kernel))
            }
            (None, Some(p)) => packed_product::forward(p, x, y, rows, acc),
            (None, None) => matmul(
                y,
                (rows, n_out, n_in),
                (x, Tr::N),
                (self.f32, Tr::T),
                acc,
                1.0,
                true,
            ),
        }
    }

    /// `dx = dy·w` (`dx +=` when `acc`) for `rows` rows of `dy: [rows, n_out]`.
    pub fn backward(&self, dy: &[f32], dx: &mut [f32], (rows, n_in, n_out): Shape3, acc: bool) {
        match (self.bf16, self.packed) {
            (Some((w, kernel)), _) => {
                with_rounded(dy, (rows, n_out), |gb| w.product(dx, gb, true, acc, kernel))
            }
            (None, Some(p)) => packed_product::backward(p, dy, dx, rows, acc),
            (None, None) => matmul(
                dx,
                (rows, n_in, n_out),
                (dy, Tr::N),
                (self.f32, Tr::N),
                acc,
                1.0,
                true,
            ),
        }
    }
}

/// The largest rounded-activation buffer a thread keeps for its next product (a 4×256
/// batch of a 0.5B model's widest activations is 10 MB); larger ones are freed.
const MAX_KEPT_ROUNDED: usize = 16 << 20;

thread_local! {
    /// The storage of this thread's last product's bf16 activations: each product
    /// rounds its `x` (or `dy`) into it instead of a fresh allocation, whose page faults
    /// and zero-fill showed in a bf16 step's profile.
    static ROUNDED: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on `x: [rows, cols]` rounded to bf16, in this thread's reused buffer.
fn with_rounded<T>(x: &[f32], (rows, cols): (usize, usize), f: impl FnOnce(&Bf16Matrix) -> T) -> T {
    let buf = ROUNDED.with(|b| std::mem::take(&mut *b.borrow_mut()));
    let m = Bf16Matrix::from_f32_in(x, rows, cols, buf);
    let out = f(&m);
    if m.data.capacity() * 2 <= MAX_KEPT_ROUNDED {
        ROUNDED.with(|b| *b.borrow_mut() = m.data);
    }
    out
}

/// `(rows, n_in, n_out)` of a product with a frozen weight.
pub(crate) type Shape3 = (usize, usize, usize);

/// A frozen weight's bf16 copy and the kernel that multiplies by it.
pub(crate) type Bf16Copy = (Arc<Bf16Weight>, Bf16Kernel);

/// A frozen weight as an op keeps it: the model's weight (f32 tensor or quantized
/// blocks) and, for an f32 tensor whose products run in bf16, its bf16 copy. Blocks
/// always multiply in f32 over dequantized panels (no bf16 copy of them is made).
#[derive(Clone)]
pub(crate) struct PreparedWeight {
    pub weight: BaseWeight,
    pub bf16: Option<Bf16Copy>,
}

impl PreparedWeight {
    /// `w` prepared for `precision`.
    pub fn new(w: &BaseWeight, precision: Precision) -> Result<Self> {
        let bf16 = match w {
            BaseWeight::Dense(t) => prepare(t, precision)?,
            BaseWeight::Packed(_) => None,
        };
        Ok(Self {
            weight: w.clone(),
            bf16,
        })
    }

    /// `(n_out, n_in)`.
    pub fn dims(&self) -> Result<(usize, usize)> {
        match &self.weight {
            BaseWeight::Dense(t) => t.dims2(),
            BaseWeight::Packed(p) => Ok(p.dims()),
        }
    }

    /// The weight as a product operand, with `f32` its tensor's data (empty for blocks).
    pub fn operand<'a>(&'a self, f32: &'a [f32]) -> FrozenWeight<'a> {
        FrozenWeight {
            f32,
            bf16: self.bf16.as_ref().map(|(w, k)| (&**w, *k)),
            packed: match &self.weight {
                BaseWeight::Packed(p) => Some(&**p),
                BaseWeight::Dense(_) => None,
            },
        }
    }
}

/// A frozen weight tensor prepared for `precision`: its bf16 copy when products run in
/// bf16 (`None` for f32), and always for a bf16 tensor (which has no f32 data). Ops keep
/// it beside the tensor and lend both as a [`FrozenWeight`].
pub(crate) fn prepare(w: &Tensor, precision: Precision) -> Result<Option<Bf16Copy>> {
    match (w.dtype(), precision) {
        (DType::BF16, p) => Ok(Some((Arc::new(Bf16Weight::new(w)?), kernel_for(p)))),
        (_, Precision::F32) => Ok(None),
        (_, Precision::Bf16(k)) => Ok(Some((bf16_weight(w)?, k))),
    }
}

/// [`prepare`] without the cache: a copy owned by the caller alone (the peak-rate probe's
/// throwaway weights must not stay in the cache).
pub(crate) fn prepare_uncached(w: &Tensor, precision: Precision) -> Result<Option<Bf16Copy>> {
    let Precision::Bf16(kernel) = precision else {
        return Ok(None);
    };
    let copy = Bf16Weight::new(&to_bf16_tensor(w)?)?;
    Ok(Some((Arc::new(copy), kernel)))
}

/// The copies of f32 weight tensors, by tensor.
type Cache = Mutex<HashMap<TensorId, Arc<Bf16Weight>>>;

fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// The bf16 copy of the frozen 2-D f32 weight `w`, made on first use.
pub(crate) fn bf16_weight(w: &Tensor) -> Result<Arc<Bf16Weight>> {
    let key = w.id();
    if let Some(hit) = cache().lock().expect("bf16 cache").get(&key) {
        return Ok(hit.clone());
    }
    let made = Arc::new(Bf16Weight::new(&to_bf16_tensor(w)?)?);
    let mut c = cache().lock().expect("bf16 cache");
    Ok(c.entry(key).or_insert(made).clone())
}

/// Frees every bf16 weight copy (they are made again on the next bf16 product).
pub fn release_cache() {
    cache().lock().expect("bf16 cache").clear();
}

/// Bytes held by the bf16 copies of f32 weights (a base held in bf16 needs none).
pub fn cache_bytes() -> usize {
    let c = cache().lock().expect("bf16 cache");
    c.values().map(|w| w.bytes()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_resolve_by_the_cpu() {
        assert_eq!(BaseWeights::parse("BF16"), Ok(BaseWeights::Bf16));
        assert_eq!(BaseWeights::parse("f32"), Ok(BaseWeights::F32));
        assert_eq!(BaseWeights::parse("auto"), Ok(BaseWeights::Auto));
        assert_eq!(BaseWeights::parse("Q8_0"), Ok(BaseWeights::Q8_0));
        assert_eq!(BaseWeights::parse("native"), Ok(BaseWeights::Native));
        let err = BaseWeights::parse("fp8").unwrap_err();
        assert!(err.contains("auto, f32, bf16, q8_0 or native"), "{err}");
        for m in [BaseWeights::Q8_0, BaseWeights::Native] {
            assert!(m.keeps_blocks());
            assert_eq!(m.resolve(), Precision::F32, "blocks multiply in f32 panels");
            assert_eq!(m.resolved(), m);
            assert_eq!(BaseWeights::parse(m.as_str()), Ok(m));
        }
        assert!(!BaseWeights::Bf16.keeps_blocks());
        assert_eq!(BaseWeights::F32.resolve(), Precision::F32);
        let best = Bf16Kernel::detect();
        assert_eq!(BaseWeights::Bf16.resolve(), Precision::Bf16(best));
        let auto = BaseWeights::Auto.resolve();
        if bf16_speed::beats_f32(best) {
            assert_eq!(auto, Precision::Bf16(best));
        } else {
            assert_eq!(auto, Precision::F32, "no faster bf16 kernel: auto is f32");
        }
    }

    #[test]
    fn a_run_resolves_auto_once_and_a_resume_keeps_the_recorded_mode() {
        let here = BaseWeights::Auto.resolved();
        assert_ne!(here, BaseWeights::Auto);
        assert_eq!(BaseWeights::for_run(BaseWeights::Auto, None), here);
        assert_eq!(
            BaseWeights::for_run(BaseWeights::Auto, Some(BaseWeights::Auto)),
            here,
            "a checkpoint without the field records nothing"
        );
        for recorded in [BaseWeights::F32, BaseWeights::Bf16] {
            assert_eq!(
                BaseWeights::for_run(BaseWeights::Auto, Some(recorded)),
                recorded
            );
        }
        assert_eq!(
            BaseWeights::for_run(BaseWeights::F32, Some(BaseWeights::Bf16)),
            BaseWeights::F32,
            "an explicit mode is kept (the checkpoint check refuses the mismatch)"
        );
        let json = serde_json::to_string(&BaseWeights::Bf16).unwrap();
        assert_eq!(json, "\"bf16\"");
        let json = serde_json::to_string(&BaseWeights::Q8_0).unwrap();
        assert_eq!(json, "\"q8_0\"");
    }

    #[test]
    fn a_thread_override_is_scoped() {
        let forced = Precision::Bf16(Bf16Kernel::Portable);
        let outside = current_precision();
        let inside = with_precision(forced, || {
            let nested = with_precision(Precision::F32, current_precision);
            assert_eq!(nested, Precision::F32);
            current_precision()
        });
        assert_eq!(inside, forced);
        assert_eq!(current_precision(), outside);
    }

    #[test]
    fn weight_copies_are_cached_per_tensor_and_bf16_tensors_need_none() -> Result<()> {
        let w = crate::ops::testutil::randn(&[5, 40], 9);
        let a = bf16_weight(&w)?;
        let b = bf16_weight(&w)?;
        assert!(Arc::ptr_eq(&a, &b), "the second use hits the cache");
        assert_eq!(a.bytes(), 5 * 40 * 2, "one copy, 2 bytes per parameter");
        let other = bf16_weight(&w.copy()?)?;
        assert!(!Arc::ptr_eq(&a, &other), "another tensor gets its own copy");
        // A bf16 tensor is its own copy, under every precision, and the cache stays as
        // it was; its products equal those of the f32 tensor's copy.
        let held = to_bf16_tensor(&w)?;
        assert_eq!(held.dtype(), DType::BF16);
        let before = cache_bytes();
        for p in [Precision::F32, Precision::Bf16(Bf16Kernel::Portable)] {
            let (copy, k) = prepare(&held, p)?.expect("a bf16 tensor always has its copy");
            assert_eq!(cache_bytes(), before);
            let x = crate::ops::testutil::randn(&[3, 40], 2)
                .flatten_all()?
                .to_vec1::<f32>()?;
            let xb = Bf16Matrix::from_f32(&x, 3, 40);
            let (mut y1, mut y2) = (vec![0f32; 15], vec![0f32; 15]);
            copy.product(&mut y1, &xb, false, false, k);
            a.product(&mut y2, &xb, false, false, k);
            assert_eq!(y1, y2);
        }
        let halves: Vec<f32> = held.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let rounded: Vec<f32> = w
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .map(|&v| super::super::bf16::from_bf16(to_bf16(v)))
            .collect();
        assert_eq!(halves, rounded, "rounded to nearest-even once");
        Ok(())
    }
}
