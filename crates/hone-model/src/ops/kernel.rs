//! Shared plumbing for the CPU kernels: typed access to contiguous storage, and a
//! row-parallel driver.
//!
//! `hone-model` does not depend on rayon directly, so the driver uses scoped std
//! threads. An op runs for about a millisecond or more at training sizes, so the cost of
//! spawning one extra thread per call (tens of microseconds) is small, and small inputs
//! stay on the calling thread.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, Layout, Result};

/// Below this many f32 operations per thread, splitting costs more than it saves.
const MIN_WORK_PER_THREAD: usize = 64 * 1024;

/// The contiguous f32 data that `layout` views in `storage`.
pub(crate) fn f32_data<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    what: &str,
) -> Result<&'a [f32]> {
    let data = match storage {
        CpuStorage::F32(v) => v.as_slice(),
        other => bail!("{what}: expected an f32 tensor, got {:?}", other.dtype()),
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("{what}: the tensor must be contiguous"),
    }
}

/// Class indices (targets) as i64, whether stored as u32 or i64.
pub(crate) fn index_data(storage: &CpuStorage, layout: &Layout, what: &str) -> Result<Vec<i64>> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("{what}: the tensor must be contiguous")
    };
    Ok(match storage {
        CpuStorage::U32(v) => v[start..end].iter().map(|&t| t as i64).collect(),
        CpuStorage::I64(v) => v[start..end].to_vec(),
        other => bail!(
            "{what}: expected u32 or i64 indices, got {:?}",
            other.dtype()
        ),
    })
}

/// The last dimension of a layout, with an error for scalars.
pub(crate) fn last_dim(layout: &Layout, what: &str) -> Result<usize> {
    match layout.dims().last() {
        Some(&d) if d > 0 => Ok(d),
        _ => bail!("{what}: expected a tensor with a non-empty last dimension"),
    }
}

/// Runs `f(first_row, rows)` over disjoint chunks of whole rows of `out`, in parallel when
/// the work is large enough. `work_per_row` is the number of inputs read per output row
/// (e.g. the vocabulary size for a per-row loss), used only to decide how many threads.
pub(crate) fn par_rows<F>(out: &mut [f32], row_len: usize, work_per_row: usize, f: F)
where
    F: Fn(usize, &mut [f32]) + Sync,
{
    if row_len == 0 || out.is_empty() {
        return;
    }
    let rows = out.len() / row_len;
    let work = rows.saturating_mul(work_per_row.max(row_len));
    let threads = candle_core::utils::get_num_threads()
        .min(work / MIN_WORK_PER_THREAD)
        .min(rows)
        .max(1);
    if threads == 1 {
        f(0, out);
        return;
    }
    let rows_per_thread = rows.div_ceil(threads);
    std::thread::scope(|scope| {
        let mut chunks = out.chunks_mut(rows_per_thread * row_len).enumerate();
        let first = chunks.next();
        for (i, chunk) in chunks {
            let f = &f;
            scope.spawn(move || f(i * rows_per_thread, chunk));
        }
        if let Some((_, chunk)) = first {
            f(0, chunk);
        }
    });
}
