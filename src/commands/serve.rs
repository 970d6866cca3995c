//! `sallyport serve`: run the bastion (SSH server, HTTP API, audit, recordings) until SIGINT/SIGTERM.

use std::process::ExitCode;

use super::Global;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn run(g: &Global, _args: Args) -> anyhow::Result<ExitCode> {
    // API (oidc branch): until the core branch's serve lands, serve the HTTP
    // API alone; the lead merges these lines into the real serve.
    use anyhow::Context;
    let cfg = g.load_config()?;
    let keys = std::sync::Arc::new(super::open_ca(&cfg)?);
    let store = super::open_store(&cfg)?;
    let policy = crate::policy::PolicyHandle::default();
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let api = crate::api::start(&cfg, keys, store, policy, async move {
        let _ = stop_rx.changed().await;
    })
    .await
    .context("cannot start the HTTP API")?;
    // API (oidc branch) end
    let _ = tokio::signal::ctrl_c().await;
    let _ = stop_tx.send(true);
    if let Some((_, task)) = api {
        let _ = task.await;
    }
    Ok(ExitCode::SUCCESS)
}
