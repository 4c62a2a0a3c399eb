//! `hone chat` (placeholder until the inference engine lands).

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct ChatArgs {}

pub fn run(_args: ChatArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`hone chat` is not implemented yet")
}
