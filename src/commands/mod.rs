//! Subcommands, one file each. [`Cli`] is the whole command line; [`run`]
//! builds the tokio runtime and dispatches. Every subcommand returns an
//! [`ExitCode`] or an error whose chain `main` prints.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::Config;

pub mod approvals;
pub mod ca;
pub mod cert;
pub mod login;
pub mod policy;
pub mod serve;
pub mod sessions;

/// sallyport: an SSH jump host that records, masks, blocks and asks for
/// approval — with a built-in certificate authority for OIDC and Kubernetes
/// identities.
#[derive(Debug, Parser)]
#[command(name = "sallyport", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand understands.
#[derive(Debug, Clone, clap::Args)]
pub struct Global {
    /// Server config file (TOML). Without one, embedded defaults are used.
    #[arg(long, global = true, env = "SALLYPORT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory (keys, audit database, recordings); overrides the config file.
    #[arg(long, global = true, env = "SALLYPORT_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Log filter (tracing EnvFilter syntax), e.g. `info`, `sallyport=debug`.
    #[arg(
        long,
        global = true,
        env = "SALLYPORT_LOG",
        default_value = "info",
        value_name = "FILTER"
    )]
    pub log: String,
}

impl Global {
    /// Load and validate the server configuration these options point at.
    pub fn load_config(&self) -> anyhow::Result<Config> {
        Config::load(self.config.as_deref(), self.data_dir.clone()).context("invalid configuration")
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the bastion: SSH server, HTTP API, audit, recordings.
    Serve(serve::Args),
    /// Certificate authority: show CA keys, sign certificates by hand, write a KRL.
    #[command(subcommand)]
    Ca(ca::Command),
    /// Issued certificates: list and revoke.
    #[command(subcommand)]
    Cert(cert::Command),
    /// Get a short-lived SSH certificate from a sallyport server (OIDC device flow or a token file).
    Login(login::Args),
    /// Recorded sessions: list, show, play.
    #[command(subcommand)]
    Sessions(sessions::Command),
    /// Policies: check files, ask what-if questions.
    #[command(subcommand)]
    Policy(policy::Command),
    /// Just-in-time approvals: list, approve, deny.
    #[command(subcommand)]
    Approvals(approvals::Command),
}

/// Initialise logging to stderr.
pub fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Run the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    init_logging(&cli.global.log);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let g = cli.global;
    rt.block_on(async move {
        match cli.command {
            Command::Serve(a) => serve::run(&g, a).await,
            Command::Ca(c) => ca::run(&g, c).await,
            Command::Cert(c) => cert::run(&g, c).await,
            Command::Login(a) => login::run(&g, a).await,
            Command::Sessions(c) => sessions::run(&g, c).await,
            Command::Policy(c) => policy::run(&g, c).await,
            Command::Approvals(c) => approvals::run(&g, c).await,
        }
    })
}

/// Open (creating on first use) the CA keys of the configured data dir.
pub fn open_ca(cfg: &Config) -> anyhow::Result<crate::ca::CaKeys> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create data dir {}", cfg.data_dir.display()))?;
    let names = crate::ca::keys::default_host_names(&cfg.ssh.listen);
    crate::ca::CaKeys::load_or_create(
        &cfg.data_dir.join("keys"),
        cfg.ssh.host_cert_validity,
        &names,
    )
    .context("cannot load the CA keys")
}

/// Open (creating on first use) the audit database of the configured data dir.
pub fn open_store(cfg: &Config) -> anyhow::Result<crate::audit::Store> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create data dir {}", cfg.data_dir.display()))?;
    let path = cfg.data_dir.join("audit.db");
    crate::audit::Store::open(&path).with_context(|| format!("cannot open {}", path.display()))
}
