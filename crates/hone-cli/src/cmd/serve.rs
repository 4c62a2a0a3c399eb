//! `hone serve`: the OpenAI-compatible HTTP server.
//!
//! Not implemented yet: this command is being built.

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct ServeArgs {}

pub fn run(_args: ServeArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`hone serve` is not implemented yet")
}
