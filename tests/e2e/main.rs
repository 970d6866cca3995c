//! End-to-end tests: the real `sallyport` binary driven by real clients
//! (OpenSSH `ssh`, `ssh-keygen`, `sshd`, `psql`, `asciinema`, `kubectl`).
//! `support` owns temp dirs, free ports and child processes, and prints the
//! command, its output and the server log when something fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod approvals;
mod bastion_login;
mod policy;
#[path = "../support/mod.rs"]
mod support;

mod auth;
mod ca_cli;
mod core;
mod deploy;
mod forward;
mod guard;
mod hostcert;
mod krl;
mod kube_portforward;
mod kubeapi;
mod kubewire;
mod lineguard;
mod login;
mod masking;
mod oidc;
mod paste_before_prompt;
mod reload;
mod sessions;
