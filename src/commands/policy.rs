//! `sallyport policy`: check policy files and answer what-if questions.

use std::process::ExitCode;

use super::Global;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Not implemented yet.
    Todo,
}

pub async fn run(_g: &Global, _cmd: Command) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`sallyport policy` is not implemented yet")
}
