//! `hone data …` (placeholder until hone-data lands).

use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum DataCommand {}

pub fn run(c: DataCommand) -> anyhow::Result<ExitCode> {
    match c {}
}
