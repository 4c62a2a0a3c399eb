//! `hone merge`: base + LoRA adapter -> a Hugging Face model directory.
//!
//! Not implemented yet: this command is being built.

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct MergeArgs {}

pub fn run(_args: MergeArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`hone merge` is not implemented yet")
}
