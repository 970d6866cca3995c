//! `sallyport approvals`: list pending approval requests and approve or deny
//! them. Run on the bastion host with access to its audit database, the
//! caller is a local operator (`local:<os user>`, or `--as NAME`): see
//! [`crate::guard::approval::Approver::local_operator`] for why policy's
//! approver list is not consulted for them. Self-approval is still refused.

use std::process::ExitCode;

use anyhow::Context;

use super::Global;
use crate::guard::approval::{self, Approver, Outcome};
use crate::identity::Identity;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List approval requests (pending ones unless --all), oldest first.
    List {
        /// Include decided, expired and withdrawn requests.
        #[arg(long)]
        all: bool,
        /// At most this many rows.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Start after this request id (paging).
        #[arg(long, value_name = "ID")]
        after: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Approve a pending request: the waiting session runs it.
    Approve(Decide),
    /// Deny a pending request.
    Deny(Decide),
}

#[derive(Debug, clap::Args)]
pub struct Decide {
    /// The request id (`apr-...`).
    pub id: String,
    /// Why (shown to the requester on deny, stored in the audit log).
    #[arg(long)]
    pub reason: Option<String>,
    /// Approver name recorded as `local:<NAME>` (default: the OS user).
    #[arg(long = "as", value_name = "NAME")]
    pub as_name: Option<String>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

fn os_user() -> String {
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| format!("uid{}", nix::unistd::getuid()))
}

pub async fn run(g: &Global, cmd: Command) -> anyhow::Result<ExitCode> {
    let cfg = g.load_config()?;
    let store = super::open_store(&cfg)?;
    match cmd {
        Command::List {
            all,
            limit,
            after,
            json,
        } => {
            store
                .expire_due_approvals()
                .context("cannot expire overdue approvals")?;
            let after_row = match &after {
                Some(id) => Some(
                    store
                        .approval(id)?
                        .with_context(|| format!("no approval request `{id}`"))?,
                ),
                None => None,
            };
            let rows = store.list_approvals(
                (!all).then_some("pending"),
                after_row
                    .as_ref()
                    .map(|r| (r.created_at.as_str(), r.id.as_str())),
                limit,
            )?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else if rows.is_empty() {
                println!("no {}approval requests", if all { "" } else { "pending " });
            } else {
                println!(
                    "{:<11} {:<9} {:<7} {:<24} {:<24} REQUEST",
                    "ID", "STATUS", "KIND", "REQUESTER", "EXPIRES"
                );
                for r in &rows {
                    let who = match &r.on_behalf_of {
                        Some(h) => format!("{} (for {h})", r.subject),
                        None => r.subject.clone(),
                    };
                    println!(
                        "{:<11} {:<9} {:<7} {:<24} {:<24} {}",
                        r.id, r.status, r.kind, who, r.expires_at, r.request
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Approve(d) => decide(&store, d, true),
        Command::Deny(d) => decide(&store, d, false),
    }
}

fn decide(store: &crate::audit::Store, d: Decide, approve: bool) -> anyhow::Result<ExitCode> {
    let approver = Approver {
        identity: Identity {
            issuer: "local".into(),
            subject: d.as_name.unwrap_or_else(os_user),
            ..Identity::default()
        },
        local_operator: true,
    };
    // The placeholder policy is enough: local operators skip `can_approve`.
    let policy = crate::policy::Policy::default();
    let outcome = approval::decide(
        store,
        &policy,
        &d.id,
        &approver,
        approve,
        d.reason.as_deref(),
    )
    .with_context(|| {
        format!(
            "cannot {} {}",
            if approve { "approve" } else { "deny" },
            d.id
        )
    })?;
    if d.json {
        println!("{}", serde_json::json!({ "id": d.id, "outcome": outcome }));
    } else {
        match outcome {
            Outcome::Approved { by } => println!("{} approved by {by}", d.id),
            Outcome::Denied { by, .. } => println!("{} denied by {by}", d.id),
            Outcome::Expired | Outcome::Withdrawn => println!("{} closed", d.id),
        }
    }
    Ok(ExitCode::SUCCESS)
}
