//! `sallyport login`: get a short-lived SSH certificate (OIDC device flow, or a token file for pods) and write ssh_config.

use std::process::ExitCode;

use super::Global;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn run(_g: &Global, _args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`sallyport login` is not implemented yet")
}
