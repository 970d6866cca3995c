//! Policy: which identity may do what. Files (TOML) under the policy dir hold
//! roles; a role matches identities (issuer, subject glob, email, groups,
//! Kubernetes namespace/serviceaccount, kind) and grants principals, TTLs,
//! shell/exec, exec/forward/kube rules (allow, deny, approve), masking and
//! session limits. Evaluation is the union of matching roles: any deny wins,
//! then approve, then allow; nothing matched means deny. Every [`Decision`]
//! carries its reason (file, role, rule) for the audit log.
//!
//! This file is the API the rest of the crate uses; patterns
//! (`pattern.rs`), the validated model (`model.rs`), loading with
//! file:line:column diagnostics (`load.rs`), evaluation (`eval.rs`) and
//! live reload (`watch.rs`) live in submodules. The format is documented in
//! `docs/policy.md`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::guard::CommandLine;
use crate::identity::Identity;

pub mod eval;
pub mod load;
pub mod model;
pub mod pattern;
pub mod watch;

pub use load::Diagnostic;

/// The shipped default policy (`policies/default.toml`): operator-signed
/// (`issuer = local`) identities get recorded, live-masked shells and exec
/// with destructive commands denied; everyone else nothing.
pub fn default_policy_text() -> &'static str {
    include_str!("../../policies/default.toml")
}

/// File name shown in reasons for rules of the embedded default policy.
pub const EMBEDDED_NAME: &str = "<embedded>/default.toml";

/// Policy errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or the directory could not be read (or the default written).
    #[error("cannot read policy {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The directory holds no `*.toml` file.
    #[error(
        "policy dir {0} has no *.toml files; add one (see docs/policy.md), or remove [policy] dir from the config to use the default policy"
    )]
    NoFiles(PathBuf),
    /// One or more files are invalid; every problem, one per line.
    #[error("{}", Diagnostics(.0))]
    Invalid(Vec<Diagnostic>),
}

/// Display helper: one diagnostic per line.
struct Diagnostics<'a>(&'a [Diagnostic]);

impl std::fmt::Display for Diagnostics<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Outcome of one policy question.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Approve,
    Deny,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Allow => "allow",
            Verdict::Approve => "approve",
            Verdict::Deny => "deny",
        })
    }
}

/// A verdict and why: `"<file>:<line> role '<role>' <section> '<rule>'"`, or
/// `"no role matched (default deny)"`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Decision {
    pub verdict: Verdict,
    pub reason: String,
}

impl Decision {
    pub fn allow(reason: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::Allow,
            reason: reason.into(),
        }
    }
    pub fn deny(reason: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::Deny,
            reason: reason.into(),
        }
    }
    pub fn approve(reason: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::Approve,
            reason: reason.into(),
        }
    }
    pub fn is_allow(&self) -> bool {
        self.verdict == Verdict::Allow
    }
}

/// What a connection's sessions may do, merged from every matching role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionGrant {
    /// Interactive shells allowed.
    pub shell: bool,
    /// Exec requests allowed at all (each command still goes through [`Policy::exec`]).
    pub exec: bool,
    /// Record client input ("i" events).
    pub record_input: bool,
    /// Mask output the client sees (the recording and audit are always masked).
    pub mask_live: bool,
    /// Names of built-in detectors to use (empty = all).
    pub mask_detectors: Vec<String>,
    /// Custom masking rules from policy: (name, regex).
    pub mask_custom: Vec<(String, String)>,
    /// Deny constructs the command parser cannot see into.
    pub strict: bool,
    pub max_duration: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub max_sessions: Option<u32>,
    /// How long an approval request waits before it counts as denied.
    pub approval_timeout: Duration,
    /// Which roles made this grant.
    pub reason: String,
}

impl SessionGrant {
    /// Nothing allowed: what an identity no role matches gets.
    pub fn none() -> Self {
        Self {
            shell: false,
            exec: false,
            record_input: false,
            mask_live: true,
            mask_detectors: Vec::new(),
            mask_custom: Vec::new(),
            strict: true,
            max_duration: None,
            idle_timeout: None,
            max_sessions: None,
            approval_timeout: Duration::from_secs(300),
            reason: "no role matched (default deny)".into(),
        }
    }
}

/// What a certificate issued to an identity may carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueGrant {
    pub principals: Vec<String>,
    pub ttl: Duration,
    pub permit_pty: bool,
    pub permit_port_forwarding: bool,
    /// Delegation (`on_behalf_of`) accepted for this identity.
    pub allow_on_behalf_of: bool,
    pub reason: String,
}

/// What kind of forwarding a channel or global request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardKind {
    /// `ssh -L` / `ssh -J` (direct-tcpip).
    Local,
    /// `ssh -R` (tcpip-forward).
    Remote,
    Agent,
    X11,
    Streamlocal,
}

/// A forwarding request as policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardRequest {
    pub kind: ForwardKind,
    /// Host as the client wrote it (a named target, `pod.ns.pod`, or a raw host).
    pub host: String,
    pub port: u16,
    /// Addresses the bastion resolved it to (checked again after DNS).
    pub resolved: Vec<IpAddr>,
}

/// A Kubernetes API request as policy sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct KubeRequest {
    pub verb: String,
    pub api_group: String,
    pub resource: String,
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

/// A loaded, validated policy set. Cheap to share; replaced whole on reload.
///
/// `Policy::default()` is the embedded default policy (what `serve` runs
/// with no configuration); [`Policy::empty`] denies everything.
#[derive(Debug, Clone)]
pub struct Policy {
    roles: Vec<model::Role>,
    files: Vec<PathBuf>,
    warnings: Vec<Diagnostic>,
}

impl Default for Policy {
    fn default() -> Self {
        match load::compile_str(EMBEDDED_NAME, default_policy_text()) {
            Ok(p) => p,
            Err(diags) => {
                // Unreachable in a tested build (policy::tests checks the
                // embedded file); deny everything rather than panic.
                for d in diags {
                    tracing::error!(%d, "embedded default policy is invalid");
                }
                Policy::empty()
            }
        }
    }
}

impl Policy {
    /// No roles: every question is answered with deny.
    pub fn empty() -> Self {
        Self {
            roles: Vec::new(),
            files: Vec::new(),
            warnings: Vec::new(),
        }
    }

    pub(crate) fn from_roles(
        roles: Vec<model::Role>,
        files: Vec<PathBuf>,
        warnings: Vec<Diagnostic>,
    ) -> Self {
        Self {
            roles,
            files,
            warnings,
        }
    }

    /// Legal but suspicious things found while loading (e.g. a role granting
    /// shell with no exec allow rule). `policy check` prints them.
    pub fn warnings(&self) -> &[Diagnostic] {
        &self.warnings
    }

    /// Load every `*.toml` in `dir`; all diagnostics when anything is wrong.
    pub fn load_dir(dir: &Path) -> Result<Self, Error> {
        load::load_dir(dir)
    }

    /// Parse one policy text (tests, what-if tools). `name` is shown in reasons.
    pub fn from_toml(name: &str, text: &str) -> Result<Self, Error> {
        load::compile_str(name, text).map_err(Error::Invalid)
    }

    /// Role names in load order.
    pub fn role_names(&self) -> Vec<String> {
        self.roles.iter().map(|r| r.name.clone()).collect()
    }

    /// The roles, as loaded (for `policy test` output and diagnostics).
    pub fn roles(&self) -> &[model::Role] {
        &self.roles
    }

    /// Files this policy was loaded from.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Roles whose `[role.match]` matches `id`, in load order.
    pub fn matching(&self, id: &Identity) -> Vec<&model::Role> {
        self.roles
            .iter()
            .filter(|r| r.matcher.matches(id))
            .collect()
    }

    /// Session capabilities for an identity: the union of matching roles
    /// (flags OR-ed, limits the largest any role sets, masking the union).
    pub fn session(&self, id: &Identity) -> SessionGrant {
        eval::session(self, id)
    }

    /// May this exec command (or typed line) run? Every simple command must
    /// be allowed; opaque constructs are denied when any matching role is strict.
    pub fn exec(&self, id: &Identity, cmd: &CommandLine) -> Decision {
        eval::exec(self, id, cmd)
    }

    /// May this forward be opened? Rules see the host as written and every
    /// resolved address (CIDR rules).
    pub fn forward(&self, id: &Identity, req: &ForwardRequest) -> Decision {
        eval::forward(self, id, req)
    }

    /// An allow rule naming `ip` explicitly (an address or a specific CIDR,
    /// not a catch-all), if any: the tunnel dials metadata (169.254.0.0/16)
    /// or its own loopback only then.
    pub fn forward_names_address(&self, id: &Identity, ip: IpAddr, port: u16) -> Option<Decision> {
        eval::forward_names_address(self, id, ip, port)
    }

    /// May this Kubernetes API request pass?
    pub fn kube(&self, id: &Identity, req: &KubeRequest) -> Decision {
        eval::kube(self, id, req)
    }

    /// What certificate may this identity get? `Err` carries the denial.
    pub fn issue(&self, id: &Identity) -> Result<IssueGrant, Decision> {
        eval::issue(self, id)
    }

    /// May `approver` decide a request made by `requester`? Never themselves,
    /// never an agent, only members of a role with `approver = true`.
    pub fn can_approve(&self, approver: &Identity, requester: &Identity) -> Decision {
        eval::can_approve(self, approver, requester)
    }
}

/// How the last reload attempts went, for logs, health and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReloadStatus {
    /// Bumped each time a new policy goes live.
    pub generation: u64,
    /// Reload attempts so far (good or bad).
    pub attempts: u64,
    /// Why the last attempt was refused, if it was (the old policy stayed live).
    pub last_error: Option<String>,
}

#[derive(Debug)]
struct HandleInner {
    policy: RwLock<Arc<Policy>>,
    status: tokio::sync::watch::Sender<ReloadStatus>,
}

/// The live policy, swapped atomically on reload (SIGHUP, file change).
/// Open sessions can [`subscribe`](PolicyHandle::subscribe) and re-check
/// what they hold when the generation changes.
#[derive(Debug, Clone)]
pub struct PolicyHandle {
    inner: Arc<HandleInner>,
}

impl Default for PolicyHandle {
    fn default() -> Self {
        Self::new(Policy::default())
    }
}

impl PolicyHandle {
    pub fn new(policy: Policy) -> Self {
        Self {
            inner: Arc::new(HandleInner {
                policy: RwLock::new(Arc::new(policy)),
                status: tokio::sync::watch::Sender::new(ReloadStatus::default()),
            }),
        }
    }

    /// The policy in force now.
    pub fn current(&self) -> Arc<Policy> {
        match self.inner.policy.read() {
            Ok(g) => Arc::clone(&g),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Replace the policy in force and bump the generation.
    pub fn replace(&self, policy: Policy) {
        let new = Arc::new(policy);
        match self.inner.policy.write() {
            Ok(mut g) => *g = new,
            Err(poisoned) => *poisoned.into_inner() = new,
        }
        self.inner.status.send_modify(|s| {
            s.generation += 1;
            s.attempts += 1;
            s.last_error = None;
        });
    }

    /// Record a refused reload (the policy in force stays).
    pub fn reject(&self, why: String) {
        self.inner.status.send_modify(|s| {
            s.attempts += 1;
            s.last_error = Some(why);
        });
    }

    /// Generation of the policy in force (0 = as started).
    pub fn generation(&self) -> u64 {
        self.inner.status.borrow().generation
    }

    /// Reload outcomes so far.
    pub fn status(&self) -> ReloadStatus {
        self.inner.status.borrow().clone()
    }

    /// Changes to [`ReloadStatus`]: `changed().await` wakes on every reload
    /// attempt; compare `generation` to see whether the policy changed.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<ReloadStatus> {
        self.inner.status.subscribe()
    }
}

/// For `serve`: seed the default dir if needed, load it, and hand back the
/// live handle and the directory to watch:
///
/// ```ignore
/// let (policy, policy_dir) = policy::load_for_serve(&cfg)?;
/// let _reloader = policy::watch::spawn(policy.clone(), policy_dir, shutdown_future);
/// ```
pub fn load_for_serve(cfg: &crate::config::Config) -> Result<(PolicyHandle, PathBuf), Error> {
    let dir = cfg.policy_dir.clone();
    load::ensure_dir(&dir, cfg.policy_dir_is_default)?;
    let policy = load::load_dir(&dir)?;
    for w in policy.warnings() {
        tracing::warn!("policy: {w}");
    }
    tracing::info!(
        dir = %dir.display(),
        roles = ?policy.role_names(),
        "policy loaded"
    );
    Ok((PolicyHandle::new(policy), dir))
}

#[cfg(test)]
mod tests;
