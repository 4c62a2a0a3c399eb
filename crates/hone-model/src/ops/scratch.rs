//! Recycled `f32` buffers for the training step.
//!
//! A step of the fused decoder stack allocates a few hundred multi-megabyte buffers
//! (activations for the backward, gradients, attention heads). Fresh ones come from
//! `vec![0.0; n]`, whose zero-fill is a single-threaded pass over every byte: 4% of a
//! step's samples, for buffers that a gemm or a kernel overwrites entirely anyway. Here the
//! backward hands each layer's saved activations back once it is done with them, the next
//! layer's gradients and the next step's activations take them, and nothing is zeroed.
//!
//! [`take`] gives a buffer with arbitrary (initialised, stale) contents: callers write
//! every element before reading any. [`release`] drops the pool, e.g. when training ends.

use std::collections::HashMap;
use std::sync::Mutex;

/// Free buffers by length.
static POOL: Mutex<Option<HashMap<usize, Vec<Vec<f32>>>>> = Mutex::new(None);

/// A buffer of `len` floats with stale contents, from the pool when one of that length is
/// free; the caller must overwrite all of it before reading.
pub(crate) fn take(len: usize) -> Vec<f32> {
    let recycled = POOL
        .lock()
        .ok()
        .and_then(|mut p| p.as_mut()?.get_mut(&len)?.pop());
    recycled.unwrap_or_else(|| vec![0.0; len])
}

/// A zeroed buffer of `len` floats (for kernels that accumulate into it).
pub(crate) fn take_zeroed(len: usize) -> Vec<f32> {
    let mut v = take(len);
    v.fill(0.0);
    v
}

/// Returns a buffer to the pool.
pub(crate) fn give(v: Vec<f32>) {
    if v.is_empty() {
        return;
    }
    if let Ok(mut p) = POOL.lock() {
        p.get_or_insert_with(HashMap::new)
            .entry(v.len())
            .or_default()
            .push(v);
    }
}

/// Drops every pooled buffer (the memory goes back to the allocator). Call when training
/// is over, so that a long-running process does not keep a step's working set.
pub fn release() {
    if let Ok(mut p) = POOL.lock() {
        *p = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_recycled_by_length() {
        let a = take(1234);
        let ptr = a.as_ptr();
        give(a);
        let b = take(1234);
        assert_eq!(b.as_ptr(), ptr, "the freed buffer is reused");
        assert_eq!(b.len(), 1234);
        let c = take_zeroed(1234);
        assert!(c.iter().all(|&x| x == 0.0));
        give(b);
        release();
        give(c);
        release();
    }
}
