//! Allocator tuning for the training loop.
//!
//! A training step frees and re-allocates the same multi-megabyte activation and gradient
//! buffers every few milliseconds. mimalloc hands freed memory back to the OS after 10 ms
//! by default, so each step faulted its buffers in again and the kernel zeroed every page
//! (`clear_page_erms`, with the memsets, about 5% of a step's samples). Keeping freed
//! memory for a second before purging it measured 121 → 133 tokens/s on `hone bench
//! train` (SmolLM2-135M, q,v), at the same peak RSS; an idle server still returns the
//! memory.
//!
//! Commands that train and then exit (`train`, `bench`, `quickstart`) go further and never
//! purge: with the fused decoder stack a step takes about 3 s, long enough for a 1 s delay
//! to purge the previous step's buffers, and `perf stat` counted 134,601 page faults over
//! a 6-step `bench train` against 1,290 without purging (321 → 354 tokens/s, peak RSS
//! 1622 → 1649 MB). The memory goes back to the OS when the process ends.

/// `mi_option_purge_delay` in mimalloc's `mi_option_e` (v2 and v3 headers alike; the
/// crate pins the version). Checked by the test below against the documented default.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Milliseconds a freed region stays mapped before mimalloc purges it.
const PURGE_DELAY_MS: std::os::raw::c_long = 1000;

/// mimalloc's purge delay that means "never purge".
const NEVER_PURGE: std::os::raw::c_long = -1;

/// Sets the purge delay to a second, unless the user set `MIMALLOC_PURGE_DELAY`
/// themselves.
pub fn keep_freed_memory_briefly() {
    set_purge_delay(PURGE_DELAY_MS);
}

/// Keeps freed memory mapped until the process exits (for commands that train and exit),
/// unless the user set `MIMALLOC_PURGE_DELAY` themselves.
pub fn hold_freed_memory() {
    set_purge_delay(NEVER_PURGE);
}

fn set_purge_delay(ms: std::os::raw::c_long) {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: mi_option_set only stores an integer option; any value is valid for it.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, ms) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_delay_option_is_the_one_we_set() {
        // SAFETY: reading and writing an integer option.
        unsafe {
            if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
                // mimalloc documents the default purge delay as 10 ms: a wrong index
                // would read another option's value.
                let before = libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY);
                assert!(before == 10 || before == PURGE_DELAY_MS, "{before}");
            }
            keep_freed_memory_briefly();
            if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
                assert_eq!(
                    libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY),
                    PURGE_DELAY_MS
                );
                hold_freed_memory();
                assert_eq!(
                    libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY),
                    NEVER_PURGE
                );
                keep_freed_memory_briefly();
            }
        }
    }
}
