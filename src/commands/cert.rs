//! `sallyport cert`: list issued certificates and revoke them. A revocation
//! is a row in the audit store; the SSH server consults it at every login, so
//! it takes effect at the next connection (export a KRL with `ca krl` for
//! targets that are plain sshd).

use std::process::ExitCode;

use anyhow::Context;

use super::{Global, open_store};
use crate::audit::certs::RevokeTarget;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Revoke certificates by serial, key id or subject (takes effect at the next connection).
    ///
    /// Example: sallyport cert revoke --subject alice@example.com --reason "left the company"
    Revoke(RevokeArgs),
    /// List issued certificates, newest first.
    List(ListArgs),
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["serial", "key_id", "subject"])))]
pub struct RevokeArgs {
    /// Certificate serial (see `cert list`).
    #[arg(long)]
    pub serial: Option<u64>,
    /// Certificate key id, e.g. `oidc:corp:alice@example.com`.
    #[arg(long, value_name = "ID")]
    pub key_id: Option<String>,
    /// Every certificate of this token subject, past and future.
    #[arg(long, value_name = "SUB")]
    pub subject: Option<String>,
    /// Why (recorded, shown in login rejections).
    #[arg(long)]
    pub reason: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// At most this many.
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
}

pub async fn run(g: &Global, cmd: Command) -> anyhow::Result<ExitCode> {
    let cfg = g.load_config()?;
    let store = open_store(&cfg)?;
    match cmd {
        Command::Revoke(a) => {
            let target = match (a.serial, a.key_id, a.subject) {
                (Some(s), _, _) => RevokeTarget::Serial(s),
                (_, Some(k), _) => RevokeTarget::KeyId(k),
                (_, _, Some(s)) => RevokeTarget::Subject(s),
                _ => anyhow::bail!("name what to revoke: --serial, --key-id or --subject"),
            };
            let n = store
                .count_matching_certificates(&target)
                .context("cannot query issued certificates")?;
            store
                .revoke(&target, a.reason.as_deref())
                .context("cannot record the revocation")?;
            if n == 0 {
                eprintln!("warning: no issued certificate matches {target:?} yet; revoked anyway");
            }
            eprintln!(
                "revoked {target:?} ({n} issued certificate(s) match); effective at the next connection"
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::List(a) => {
            let certs = store
                .list_certificates(a.limit)
                .context("cannot list certificates")?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&certs)?);
            } else {
                println!(
                    "{:<20} {:<25} {:<40} {:<25} STATUS",
                    "SERIAL", "ISSUED", "KEY ID", "VALID BEFORE"
                );
                for c in certs {
                    println!(
                        "{:<20} {:<25} {:<40} {:<25} {}",
                        c.serial,
                        c.issued_at,
                        c.key_id,
                        c.valid_before,
                        c.revoked
                            .map(|r| format!("revoked: {r}"))
                            .unwrap_or_else(|| "valid".into())
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
