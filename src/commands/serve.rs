//! `sallyport serve`: run the bastion (SSH server, audit, recordings) until
//! SIGINT/SIGTERM. First start creates the data dir, CA and host keys, the
//! audit database and the recordings folder (0700). Shutdown is graceful:
//! stop accepting, end sessions (children killed, exit-status and close
//! sent, recordings finished, audit rows closed), exit 0.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use super::{Global, open_ca, open_store};
use crate::shell::Account;
use crate::ssh::Shared;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn run(g: &Global, _args: Args) -> anyhow::Result<ExitCode> {
    crate::malloc::tune();
    let cfg = g.load_config()?;
    let keys = open_ca(&cfg)?;
    let store = open_store(&cfg)?;
    let rec_dir = &cfg.recording.dir;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(rec_dir)
        .with_context(|| format!("cannot create recordings dir {}", rec_dir.display()))?;
    std::fs::set_permissions(rec_dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict recordings dir {}", rec_dir.display()))?;
    let orphans = store
        .close_orphan_sessions("server stopped without closing it (crash or kill)")
        .context("cannot update the audit database")?;
    if orphans > 0 {
        tracing::warn!("closed {orphans} session(s) left open by a previous run");
    }

    let account = Account::lookup(cfg.ssh.run_as.as_deref()).context("ssh.run_as")?;
    if account.is_foreign() && !nix::unistd::getuid().is_root() {
        anyhow::bail!(
            "ssh.run_as = {:?}: sessions can run as another account only when sallyport runs as root",
            account.name
        );
    }
    if account.is_root() {
        tracing::warn!(
            "!!! SESSIONS RUN AS root: every user who may open a shell gets full control of this host. \
             Set ssh.run_as to an unprivileged account !!!"
        );
    }

    let (policy, policy_dir) =
        crate::policy::load_for_serve(&cfg).context("cannot load the policy")?;

    let shutdown = CancellationToken::new();
    let _policy_reloader = crate::policy::watch::spawn(
        policy.clone(),
        policy_dir,
        shutdown.clone().cancelled_owned(),
    );
    let api = crate::api::start(
        &cfg,
        Arc::new(keys.clone()),
        store.clone(),
        policy.clone(),
        shutdown.clone().cancelled_owned(),
    )
    .await
    .context("cannot start the HTTP API (api.listen)")?;
    let listen = cfg.ssh.listen;
    let shared = Arc::new(
        Shared::new(cfg, keys, store, policy, account, shutdown.clone())
            .context("cannot set up the SSH server")?,
    );
    if !shared.breakglass.is_empty() {
        tracing::warn!(
            "break-glass authorized_keys enabled with {} key(s)",
            shared.breakglass.len()
        );
    }
    // Keep the host certificate fresh while running: the renewal task
    // re-signs it two thirds into its life and new connections present the
    // new one (clients trust the host CA, so nothing changes for them).
    let renewer = {
        let s = Arc::clone(&shared);
        tokio::spawn(crate::ca::issue::renew_host_cert(
            shared.keys.dir.clone(),
            shared.config.ssh.host_cert_validity,
            crate::ca::keys::default_host_names(&listen),
            shared.keys.clone(),
            move |k| s.set_host_cert(k.host_cert),
            shutdown.clone().cancelled_owned(),
        ))
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (ssh.listen)"))?;
    tracing::info!(
        addr = %listener.local_addr().unwrap_or(listen),
        data_dir = %shared.config.data_dir.display(),
        run_as = %shared.account.name,
        "sallyport SSH listening"
    );

    let sig = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down: no new connections, ending sessions");
        sig.cancel();
    });
    crate::ssh::serve(shared, listener).await?;
    if let Some((_, task)) = api {
        let _ = task.await;
    }
    let _ = renewer.await;
    tracing::info!("shutdown complete");
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
