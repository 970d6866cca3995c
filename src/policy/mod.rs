//! Policy: which identity may do what. Files (TOML) under the policy dir hold
//! roles; a role matches identities (issuer, subject glob, email, groups,
//! Kubernetes namespace/serviceaccount, kind) and grants principals, TTLs,
//! shell/exec, exec/forward/kube rules (allow, deny, approve), masking and
//! session limits. Evaluation is the union of matching roles: any deny wins,
//! then approve, then allow; nothing matched means deny. Every [`Decision`]
//! carries its reason (file, role, rule) for the audit log.
//!
//! This file is the API the rest of the crate uses; loading, validation and
//! evaluation live in submodules.

use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::guard::CommandLine;
use crate::identity::Identity;

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
#[derive(Debug, Clone, Default)]
pub struct Policy {
    _private: (),
}

impl Policy {
    /// Session capabilities for an identity.
    ///
    /// Placeholder until the policy files land: operator-signed (`local`)
    /// identities get recorded, masked shells and exec, nobody else anything.
    pub fn session(&self, id: &Identity) -> SessionGrant {
        if id.issuer == "local" {
            SessionGrant {
                shell: true,
                exec: true,
                reason: "builtin default role 'operators'".into(),
                ..SessionGrant::none()
            }
        } else {
            SessionGrant::none()
        }
    }

    /// May this exec command (or typed line) run?
    pub fn exec(&self, id: &Identity, _cmd: &CommandLine) -> Decision {
        if id.issuer == "local" {
            Decision::allow("builtin default role 'operators'")
        } else {
            Decision::deny("no role matched (default deny)")
        }
    }

    /// May this forward be opened?
    pub fn forward(&self, _id: &Identity, _req: &ForwardRequest) -> Decision {
        Decision::deny("no role matched (default deny)")
    }

    /// Does a forward `allow` rule name this protected address explicitly?
    ///
    /// After DNS the tunnel refuses link-local/metadata, unspecified,
    /// multicast/broadcast addresses and the bastion's own loopback ports
    /// unless a rule whose host part is an IP literal or CIDR (not a glob, not
    /// `0.0.0.0/0` / `::/0`) contains `ip` and whose port matches `port`; see
    /// docs/policy.md "Forward". `None` = no such rule (the forward is denied).
    ///
    /// Placeholder (tunnel branch) until the policy engine implements it.
    pub fn forward_explicit(&self, _id: &Identity, _ip: IpAddr, _port: u16) -> Option<Decision> {
        None
    }

    /// May this Kubernetes API request pass?
    pub fn kube(&self, _id: &Identity, _req: &KubeRequest) -> Decision {
        Decision::deny("no role matched (default deny)")
    }

    /// What certificate may this identity get? `Err` carries the denial.
    pub fn issue(&self, _id: &Identity) -> Result<IssueGrant, Decision> {
        Err(Decision::deny("no role matched (default deny)"))
    }

    /// May `approver` decide a request made by `requester`? Never themselves.
    pub fn can_approve(&self, approver: &Identity, requester: &Identity) -> Decision {
        if approver.issuer == requester.issuer && approver.subject == requester.subject {
            return Decision::deny("self-approval is not allowed");
        }
        Decision::deny("no role matched (default deny)")
    }
}

/// The live policy, swapped atomically on reload (SIGHUP, file change).
#[derive(Debug, Clone, Default)]
pub struct PolicyHandle {
    inner: Arc<RwLock<Arc<Policy>>>,
}

impl PolicyHandle {
    pub fn new(policy: Policy) -> Self {
        Self {
            inner: Arc::new(RwLock::new(Arc::new(policy))),
        }
    }

    /// The policy in force now.
    pub fn current(&self) -> Arc<Policy> {
        match self.inner.read() {
            Ok(g) => Arc::clone(&g),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Replace the policy in force.
    pub fn replace(&self, policy: Policy) {
        let new = Arc::new(policy);
        match self.inner.write() {
            Ok(mut g) => *g = new,
            Err(poisoned) => *poisoned.into_inner() = new,
        }
    }
}
