//! `sallyport approvals`: list pending approval requests and approve or deny them.

use std::process::ExitCode;

use super::Global;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Not implemented yet.
    Todo,
}

pub async fn run(_g: &Global, _cmd: Command) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`sallyport approvals` is not implemented yet")
}
