//! `hone eval`: pass rates of a fine-tuned model and its base on test cases.
//!
//! Not implemented yet: this command is being built.

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct EvalArgs {}

pub fn run(_args: EvalArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`hone eval` is not implemented yet")
}
