//! A counting global allocator for this test binary: per-thread bytes allocated and the
//! peak of live bytes, so memory checks are exact counts rather than RSS samples.
//!
//! Per thread, because tests run in parallel: a [`Scope`] sees only its own thread's
//! allocations (tensor outputs are allocated by the thread that runs the op; matmul
//! workers only allocate packing scratch, the same on any path).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

pub struct Counting;

thread_local! {
    static LIVE: Cell<i64> = const { Cell::new(0) };
    static PEAK: Cell<i64> = const { Cell::new(0) };
    static TOTAL: Cell<u64> = const { Cell::new(0) };
}

fn on_alloc(size: usize) {
    let _ = LIVE.try_with(|l| {
        let v = l.get() + size as i64;
        l.set(v);
        let _ = PEAK.try_with(|p| p.set(p.get().max(v)));
    });
    let _ = TOTAL.try_with(|t| t.set(t.get() + size as u64));
}

fn on_free(size: usize) {
    let _ = LIVE.try_with(|l| l.set(l.get() - size as i64));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        on_alloc(layout.size());
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        on_alloc(layout.size());
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        on_free(layout.size());
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        on_free(layout.size());
        on_alloc(new_size);
        System.realloc(ptr, layout, new_size)
    }
}

/// Counts this thread's allocations from `start` to `finish`.
pub struct Scope {
    live0: i64,
    total0: u64,
}

impl Scope {
    pub fn start() -> Self {
        let live0 = LIVE.with(Cell::get);
        PEAK.with(|p| p.set(live0));
        Self {
            live0,
            total0: TOTAL.with(Cell::get),
        }
    }

    /// `(bytes allocated, peak live bytes above the start level)`.
    pub fn finish(self) -> (u64, i64) {
        (
            TOTAL.with(Cell::get) - self.total0,
            PEAK.with(Cell::get) - self.live0,
        )
    }
}
