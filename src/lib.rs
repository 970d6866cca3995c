//! sallyport — an SSH jump host for AI agents and engineers on Kubernetes.
//!
//! It is a small SSH certificate authority (OIDC and Kubernetes service-account
//! tokens in, short-lived OpenSSH user certificates out) and an SSH bastion in
//! the data path that records, masks, blocks and asks for approval.
//!
//! # Layout
//!
//! - [`commands`]: one file per subcommand (`serve`, `ca`, `cert`, `login`,
//!   `sessions`, `policy`, `approvals`); `main.rs` only dispatches here.
//! - [`config`]: server configuration, parsed (unknown keys rejected) then
//!   validated into a typed [`config::Config`].
//! - [`audit`]: the SQLite audit store (migrations, inserts, queries).
//! - [`ca`]: CA keys, certificate signing, user-certificate verification, KRL.
//! - [`identity`]: the [`identity::Identity`] carried in certificates; OIDC and
//!   Kubernetes token verification.
//! - [`policy`]: policy files (TOML), validation with file:line errors, evaluation.
//! - [`ssh`]: accept loop with limits, the russh handler, per-connection tasks.
//! - [`shell`]: pty and plain child processes for shell/exec channels.
//! - [`record`]: asciicast v2 recorder.
//! - [`mask`]: secret detectors and the streaming masker.
//! - [`malloc`]: allocator tuning for the data path (measured).
//! - [`guard`]: command parsing, interactive line tracking, approvals.
//! - [`tunnel`]: target resolution and relays (TCP, Kubernetes port-forward, kube API proxy).
//! - [`api`]: the HTTP API (certificates, CA keys, approvals, health).

pub mod api;
pub mod audit;
pub mod ca;
pub mod commands;
pub mod config;
pub mod guard;
pub mod identity;
pub mod malloc;
pub mod mask;
pub mod policy;
pub mod record;
pub mod shell;
pub mod ssh;
pub mod tunnel;
