//! `hone quickstart`: the whole loop on the bundled example.
//!
//! Not implemented yet: this command is being built.

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct QuickstartArgs {}

pub fn run(_args: QuickstartArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`hone quickstart` is not implemented yet")
}
