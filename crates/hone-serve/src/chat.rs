//! Chat completions: the engine seam and the adapter cache (being built).
