//! Crash-safe writes with the umask's mode: [`hone_data::atomic_file`], re-exported
//! where hone-model's writers (adapters, merges, exports, registry) have always found it.

pub use hone_data::atomic_file::*;
