//! `sallyport serve`: run the bastion (SSH server, HTTP API, audit, recordings) until SIGINT/SIGTERM.

use std::process::ExitCode;

use super::Global;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn run(_g: &Global, _args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`sallyport serve` is not implemented yet")
}
