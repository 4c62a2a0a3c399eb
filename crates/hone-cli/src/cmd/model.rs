//! `hone model fetch|list`.

use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum ModelCommand {}

pub fn run(c: ModelCommand) -> anyhow::Result<ExitCode> {
    match c {}
}
