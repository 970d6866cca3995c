//! Forwarding targets: named-target resolution, address checks, TCP relays,
//! Kubernetes pod/service port-forwards and the Kubernetes API proxy.
//!
//! - [`resolve`]: what a `direct-tcpip` host/port means (named targets,
//!   `<pod>.<ns>.pod`, `<svc>.<ns>.svc`, raw hosts), DNS with a timeout, and
//!   the addresses never reached implicitly.
//! - [`connect`]: TCP with a connect timeout; Kubernetes port-forwards.
//! - [`relay`]: the byte pump with half-close, counts and an end reason.
//!
//! The SSH layer builds one [`Forwarder`] per server and one
//! [`ForwardContext`] per authenticated connection, and hands every
//! `channel_open_direct_tcpip` to [`ForwardContext::direct_tcpip`], which
//! returns at once: resolve → policy → connect → accept/reject → relay →
//! audit run in a task of their own, so a slow target never holds up the
//! connection's other channels.

pub mod api_target;
pub mod approvals;
pub mod connect;
pub mod kubeapi;
pub mod relay;
pub mod resolve;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use russh::ChannelOpenFailure;
use russh::server::{ChannelOpenHandle, Msg};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::audit::Store;
use crate::audit::forwards::NewForward;
use crate::config::Config;
use crate::identity::Identity;
use crate::policy::{Decision, ForwardKind, ForwardRequest, PolicyHandle, Verdict};

/// Asks a human to approve a forward whose policy verdict is `approve`.
/// The approvals engine plugs in here; without one, such forwards are denied.
pub trait ForwardApprover: Send + Sync {
    /// `Ok(true)` = approved. `target` is `host:port` as requested.
    /// `cancel` fires when the requesting connection has ended: the
    /// request is withdrawn.
    fn approve<'a>(
        &'a self,
        identity: &'a Identity,
        connection_id: &'a str,
        target: &'a str,
        reason: &'a str,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, Result<bool, String>>;
}

/// Server-wide forwarding state: targets, limits, the Kubernetes client,
/// policy and audit.
pub struct Forwarder {
    targets: BTreeMap<String, String>,
    hosts: BTreeMap<String, IpAddr>,
    /// The bastion's own listen addresses (SSH, API).
    own: Vec<SocketAddr>,
    connect_timeout: Duration,
    resolve_timeout: Duration,
    max_per_connection: u32,
    kube: connect::Kube,
    policy: PolicyHandle,
    audit: Store,
    approver: Option<Arc<dyn ForwardApprover>>,
    /// The Kubernetes API proxy behind `[kube] api_target`.
    kube_api: api_target::KubeApiTarget,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("targets", &self.targets.len())
            .field("own", &self.own)
            .field("max_per_connection", &self.max_per_connection)
            .finish_non_exhaustive()
    }
}

impl Forwarder {
    /// Build from the validated config.
    pub fn new(config: &Config, policy: PolicyHandle, audit: Store) -> Arc<Self> {
        let mut own = vec![config.ssh.listen];
        own.extend(config.api.listen);
        Arc::new(Self {
            targets: config.targets.clone(),
            hosts: config.forward.hosts.clone(),
            own,
            connect_timeout: config.forward.connect_timeout,
            resolve_timeout: config.forward.resolve_timeout,
            max_per_connection: config.forward.max_per_connection,
            kube: connect::Kube::new(config.kube.clone()),
            kube_api: api_target::KubeApiTarget::new(config, policy.clone(), audit.clone()),
            policy,
            audit,
            approver: None,
        })
    }

    /// Same, with an approver for `approve` verdicts.
    pub fn with_approver(
        config: &Config,
        policy: PolicyHandle,
        audit: Store,
        approver: Arc<dyn ForwardApprover>,
    ) -> Arc<Self> {
        let mut f = Self::new(config, policy, audit);
        if let Some(inner) = Arc::get_mut(&mut f) {
            inner.approver = Some(approver);
        }
        f
    }

    /// The per-connection context, once the connection is authenticated.
    /// `permit_port_forwarding` is the certificate's extension.
    pub fn connection(
        self: &Arc<Self>,
        connection_id: impl Into<String>,
        identity: Identity,
        permit_port_forwarding: bool,
    ) -> ForwardContext {
        ForwardContext {
            forwarder: Arc::clone(self),
            connection_id: connection_id.into().into(),
            identity: Arc::new(identity),
            permit_port_forwarding,
            slots: Arc::new(Semaphore::new(self.max_per_connection as usize)),
            closed: CancellationToken::new(),
        }
    }
}

/// One authenticated connection's view: who, whether the certificate
/// permits forwarding, and its share of the forward cap. Cheap to clone.
#[derive(Clone)]
pub struct ForwardContext {
    forwarder: Arc<Forwarder>,
    connection_id: Arc<str>,
    identity: Arc<Identity>,
    permit_port_forwarding: bool,
    slots: Arc<Semaphore>,
    /// Cancelled by [`ForwardContext::connection_closed`]: pending approvals
    /// of this connection are withdrawn.
    closed: CancellationToken,
}

impl std::fmt::Debug for ForwardContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForwardContext")
            .field("connection_id", &self.connection_id)
            .field("subject", &self.identity.subject)
            .field("permit_port_forwarding", &self.permit_port_forwarding)
            .finish_non_exhaustive()
    }
}

/// Where the client says a forward comes from (`originator address/port`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Originator {
    pub address: String,
    pub port: u32,
}

/// A forward decision before connecting.
#[derive(Debug)]
struct Plan {
    parsed: resolve::Parsed,
    addrs: Vec<SocketAddr>,
    decision: Decision,
}

/// A refusal: what the client is told and what the audit row says.
#[derive(Debug)]
struct Refusal {
    code: ChannelOpenFailure,
    decision: Verdict,
    reason: String,
    resolved: Option<String>,
    end: String,
}

impl Refusal {
    fn deny(reason: impl Into<String>) -> Self {
        Self {
            code: ChannelOpenFailure::AdministrativelyProhibited,
            decision: Verdict::Deny,
            reason: reason.into(),
            resolved: None,
            end: "denied".into(),
        }
    }
}

fn kind_str(k: ForwardKind) -> &'static str {
    match k {
        ForwardKind::Local => "local",
        ForwardKind::Remote => "remote",
        ForwardKind::Agent => "agent",
        ForwardKind::X11 => "x11",
        ForwardKind::Streamlocal => "streamlocal",
    }
}

/// Printable, bounded form of a client-supplied host for audit rows.
fn shown_target(host: &str, port: u32) -> String {
    let h: String = host
        .chars()
        .take(resolve::MAX_HOST_LEN)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if h.contains(':') {
        format!("[{h}]:{port}")
    } else {
        format!("{h}:{port}")
    }
}

impl ForwardContext {
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The SSH connection has ended: withdraw its pending approvals.
    pub fn connection_closed(&self) {
        self.closed.cancel();
    }

    /// Forwards currently open on this connection.
    pub fn open_forwards(&self) -> usize {
        (self.forwarder.max_per_connection as usize).saturating_sub(self.slots.available_permits())
    }

    /// Handle a `direct-tcpip` channel open (`ssh -L`, `ssh -J`, `ssh -W`).
    /// Returns at once; the work runs in a spawned task that accepts or
    /// rejects `reply` (denied → `ADMINISTRATIVELY_PROHIBITED`, unreachable →
    /// `CONNECT_FAILED`, over the cap → `RESOURCE_SHORTAGE`), relays, and
    /// writes the audit row.
    pub fn direct_tcpip(
        &self,
        channel: russh::Channel<Msg>,
        reply: ChannelOpenHandle,
        host: &str,
        port: u32,
        originator: Originator,
    ) {
        let ctx = self.clone();
        let host = host.to_string();
        tokio::spawn(handle_direct_tcpip(
            ctx, channel, reply, host, port, originator,
        ));
    }

    /// Decide and audit a forwarding request the SSH layer handles itself
    /// (`-R` tcpip-forward, streamlocal, agent, X11): policy, always audited.
    pub fn decide_other(&self, kind: ForwardKind, host: &str, port: u32) -> Decision {
        let target = shown_target(host, port);
        let decision = if !self.permit_port_forwarding
            && matches!(kind, ForwardKind::Remote | ForwardKind::Streamlocal)
        {
            Decision::deny("certificate lacks permit-port-forwarding")
        } else {
            let req = ForwardRequest {
                kind,
                host: host.to_string(),
                port: u16::try_from(port).unwrap_or(0),
                resolved: Vec::new(),
            };
            self.forwarder
                .policy
                .current()
                .forward(&self.identity, &req)
        };
        self.audit_refused_or_noted(kind, &target, &decision);
        decision
    }

    /// Refuse and audit such a request before policy (e.g. the certificate
    /// lacks `permit-agent-forwarding`).
    pub fn deny_other(&self, kind: ForwardKind, host: &str, port: u32, reason: &str) -> Decision {
        let decision = Decision::deny(reason);
        self.audit_refused_or_noted(kind, &shown_target(host, port), &decision);
        decision
    }

    fn audit_refused_or_noted(&self, kind: ForwardKind, target: &str, d: &Decision) {
        let nf = NewForward {
            connection_id: &self.connection_id,
            subject: Some(&self.identity.subject),
            kind: kind_str(kind),
            target,
            resolved: None,
            decision: &d.verdict.to_string(),
            reason: &d.reason,
        };
        let end = if d.is_allow() { "allowed" } else { "denied" };
        if let Err(e) = self.forwarder.audit.forward_refused(&nf, end) {
            tracing::error!(error = %e, "cannot audit forward request");
        }
    }

    /// Resolve and decide, without connecting.
    async fn plan(&self, host: &str, port: u32) -> Result<Plan, Refusal> {
        let f = &self.forwarder;
        if !self.permit_port_forwarding {
            return Err(Refusal::deny("certificate lacks permit-port-forwarding"));
        }
        let parsed =
            resolve::parse(host, port, &f.targets).map_err(|e| Refusal::deny(e.to_string()))?;
        let addrs = match &parsed.target {
            resolve::Target::Tcp { host, port } => {
                resolve::lookup(host, *port, &f.hosts, f.resolve_timeout)
                    .await
                    .map_err(|e| Refusal::deny(e.to_string()))?
            }
            // The API server reaches pods; the bastion never connects to them.
            resolve::Target::Pod { .. } | resolve::Target::Service { .. } => Vec::new(),
        };
        let shown_addrs = || joined(&addrs);
        let policy = f.policy.current();
        let req = ForwardRequest {
            kind: ForwardKind::Local,
            host: parsed.host.clone(),
            port: parsed.port,
            resolved: addrs.iter().map(|a| a.ip()).collect(),
        };
        let decision = policy.forward(&self.identity, &req);
        let mut decision = screen(decision, &addrs, &f.own, |ip, port| {
            policy.forward_names_address(&self.identity, ip, port)
        })
        .map_err(|reason| Refusal {
            resolved: shown_addrs(),
            ..Refusal::deny(reason)
        })?;
        if decision.verdict == Verdict::Approve {
            let Some(approver) = &f.approver else {
                return Err(Refusal {
                    resolved: shown_addrs(),
                    ..Refusal::deny(format!(
                        "{} (approval required; forward approvals are not available)",
                        decision.reason
                    ))
                });
            };
            let target = parsed.requested();
            match approver
                .approve(
                    &self.identity,
                    &self.connection_id,
                    &target,
                    &decision.reason,
                    self.closed.clone(),
                )
                .await
            {
                Ok(true) => decision.reason = format!("{} (approved)", decision.reason),
                Ok(false) => {
                    return Err(Refusal {
                        decision: Verdict::Approve,
                        resolved: shown_addrs(),
                        ..Refusal::deny(format!("{} (approval denied)", decision.reason))
                    });
                }
                Err(e) => {
                    return Err(Refusal {
                        decision: Verdict::Approve,
                        resolved: shown_addrs(),
                        ..Refusal::deny(format!("{} (approval failed: {e})", decision.reason))
                    });
                }
            }
        }
        Ok(Plan {
            parsed,
            addrs,
            decision,
        })
    }
}

/// `a,b,c` for audit rows; `None` when nothing was resolved.
fn joined(addrs: &[SocketAddr]) -> Option<String> {
    (!addrs.is_empty()).then(|| {
        addrs
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(",")
    })
}

/// One `direct-tcpip` channel's audit trail: a refusal (row, log line,
/// open failure to the client) or an opened forward's row, opened and closed.
struct ChannelAudit<'a> {
    ctx: &'a ForwardContext,
    target: &'a str,
    span: &'a tracing::Span,
}

impl ChannelAudit<'_> {
    /// Audit and log `r`, then refuse the channel with its code.
    async fn refuse(&self, reply: ChannelOpenHandle, r: Refusal) {
        let decision = r.decision.to_string();
        let nf = NewForward {
            connection_id: &self.ctx.connection_id,
            subject: Some(&self.ctx.identity.subject),
            kind: "local",
            target: self.target,
            resolved: r.resolved.as_deref(),
            decision: &decision,
            reason: &r.reason,
        };
        if let Err(e) = self.ctx.forwarder.audit.forward_refused(&nf, &r.end) {
            tracing::error!(parent: self.span, error = %e, "cannot audit forward");
        }
        tracing::info!(parent: self.span, decision = %decision, reason = %r.reason, end = %r.end, "forward refused");
        reply.reject(r.code).await;
    }

    /// The forward's row, before the channel is confirmed (`None`: the
    /// audit failed and was logged; the forward still runs, like every
    /// other audit write here).
    fn opened(&self, resolved: &str, decision: &Decision) -> Option<String> {
        let nf = NewForward {
            connection_id: &self.ctx.connection_id,
            subject: Some(&self.ctx.identity.subject),
            kind: "local",
            target: self.target,
            resolved: Some(resolved),
            decision: &decision.verdict.to_string(),
            reason: &decision.reason,
        };
        match self.ctx.forwarder.audit.forward_open(&nf) {
            Ok(id) => Some(id),
            Err(e) => {
                tracing::error!(parent: self.span, error = %e, "cannot audit forward");
                None
            }
        }
    }

    /// Close the row made by [`Self::opened`].
    fn closed(&self, id: Option<String>, up: u64, down: u64, end: &str) {
        if let Some(id) = id
            && let Err(e) = self
                .ctx
                .forwarder
                .audit
                .forward_close(&id, None, up, down, end)
        {
            tracing::error!(parent: self.span, error = %e, "cannot audit forward");
        }
    }
}

/// Apply the address checks to a policy decision: a deny stays a deny
/// (`Err(reason)`); an allow/approve survives only if no resolved address is
/// protected, or every protected one is named by an explicit rule
/// (`explicit(ip, port)` allows), whose reason is appended.
fn screen(
    decision: Decision,
    addrs: &[SocketAddr],
    own: &[SocketAddr],
    explicit: impl Fn(IpAddr, u16) -> Option<Decision>,
) -> Result<Decision, String> {
    if decision.verdict == Verdict::Deny {
        return Err(decision.reason);
    }
    let mut decision = decision;
    for a in addrs {
        if let Some(why) = resolve::protected(*a, own) {
            match explicit(a.ip(), a.port()) {
                Some(d) if d.is_allow() => {
                    decision.reason =
                        format!("{}; {a} ({why}) allowed by {}", decision.reason, d.reason);
                }
                _ => return Err(format!("{a}: {why}; no forward rule names it explicitly")),
            }
        }
    }
    Ok(decision)
}

/// A channel to the Kubernetes API target: certificate and kube grant
/// checked, the shared proxy built if needed, then HTTP served inside the
/// channel until the client closes it (each request audited in
/// `kube_requests`; the channel itself is a `forwards` row).
async fn kube_api_channel(
    audit: &ChannelAudit<'_>,
    channel: russh::Channel<Msg>,
    reply: ChannelOpenHandle,
) {
    let ctx = audit.ctx;
    let f = &ctx.forwarder;
    const RESOLVED: &str = "kube-api-proxy";
    if !ctx.permit_port_forwarding {
        let r = Refusal::deny("certificate lacks permit-port-forwarding");
        return audit.refuse(reply, r).await;
    }
    let decision = f.kube_api.admit(&ctx.identity);
    if !decision.is_allow() {
        let r = Refusal {
            resolved: Some(RESOLVED.into()),
            ..Refusal::deny(decision.reason)
        };
        return audit.refuse(reply, r).await;
    }
    let kctx = match f
        .kube_api
        .context(&ctx.identity, &ctx.connection_id, ctx.closed.clone())
        .await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(parent: audit.span, error = %e, "Kubernetes API proxy unavailable");
            let r = Refusal {
                code: ChannelOpenFailure::ConnectFailed,
                decision: decision.verdict,
                reason: decision.reason.clone(),
                resolved: Some(RESOLVED.into()),
                end: format!("connect failed: {e}"),
            };
            return audit.refuse(reply, r).await;
        }
    };
    let id = audit.opened(RESOLVED, &decision);
    reply.accept().await;
    tracing::info!(parent: audit.span, reason = %decision.reason, "Kubernetes API proxy channel open");
    let (stream, counts) = api_target::Counted::new(channel.into_stream());
    kubeapi::serve_connection(stream, kctx).await;
    let (up, down) = counts.get();
    tracing::info!(parent: audit.span, up, down, "Kubernetes API proxy channel closed");
    audit.closed(id, up, down, "kube API session ended");
}

/// resolve → policy → connect → accept → relay → audit, for one channel.
pub async fn handle_direct_tcpip(
    ctx: ForwardContext,
    channel: russh::Channel<Msg>,
    reply: ChannelOpenHandle,
    host: String,
    port: u32,
    originator: Originator,
) {
    let f = Arc::clone(&ctx.forwarder);
    let target = shown_target(&host, port);
    let span = tracing::info_span!(
        "forward",
        connection = %ctx.connection_id,
        subject = %ctx.identity.subject,
        target = %target,
        from = %format!("{}:{}", originator.address, originator.port),
    );
    let audit = ChannelAudit {
        ctx: &ctx,
        target: &target,
        span: &span,
    };

    // The cap first: a flood of opens costs one semaphore check each.
    let Ok(permit) = Arc::clone(&ctx.slots).try_acquire_owned() else {
        let r = Refusal {
            code: ChannelOpenFailure::ResourceShortage,
            ..Refusal::deny(format!(
                "too many forwards open on this connection (forward.max_per_connection = {})",
                f.max_per_connection
            ))
        };
        return audit.refuse(reply, r).await;
    };

    // The Kubernetes API target is not a TCP destination: the channel
    // carries HTTP that the proxy serves and checks request by request.
    if f.kube_api.matches(&host, port) {
        kube_api_channel(&audit, channel, reply).await;
        drop(permit);
        return;
    }

    let plan = match ctx.plan(&host, port).await {
        Ok(p) => p,
        Err(r) => return audit.refuse(reply, r).await,
    };
    let connected =
        connect::target(&f.kube, &plan.parsed.target, &plan.addrs, f.connect_timeout).await;
    let connected = match connected {
        Ok(c) => c,
        Err(e) => {
            let r = Refusal {
                code: ChannelOpenFailure::ConnectFailed,
                decision: plan.decision.verdict,
                reason: plan.decision.reason.clone(),
                resolved: joined(&plan.addrs),
                end: format!("connect failed: {e}"),
            };
            return audit.refuse(reply, r).await;
        }
    };

    let id = audit.opened(&connected.resolved, &plan.decision);
    // Confirm before relaying: russh sends the confirmation (priority queue)
    // before any data we queue afterwards.
    reply.accept().await;
    tracing::info!(parent: &span, resolved = %connected.resolved, reason = %plan.decision.reason, "forward open");
    let outcome =
        relay::relay_channel(channel, connected.stream, connected.ended, connected.relay).await;
    tracing::info!(
        parent: &span,
        up = outcome.bytes_up,
        down = outcome.bytes_down,
        end = %outcome.reason,
        "forward closed"
    );
    audit.closed(
        id,
        outcome.bytes_up,
        outcome.bytes_down,
        &outcome.reason.to_string(),
    );
    drop(permit);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn screen_keeps_denials_and_blocks_protected_addresses() {
        let own = [sa("127.0.0.1:2222"), sa("127.0.0.1:8022")];
        let none = |_: IpAddr, _: u16| None;
        // Deny stays deny, with the policy's reason.
        assert_eq!(
            screen(
                Decision::deny("no role matched (default deny)"),
                &[sa("10.0.0.1:22")],
                &own,
                none
            ),
            Err("no role matched (default deny)".into())
        );
        // Allowed name, harmless address: allowed as is.
        let ok = screen(
            Decision::allow("p.toml:3 role 'r' forward.allow 'db:*'"),
            &[sa("10.0.0.1:5432")],
            &own,
            none,
        )
        .unwrap();
        assert_eq!(ok.reason, "p.toml:3 role 'r' forward.allow 'db:*'");
        // Allowed name resolving to metadata / our own port: refused.
        for a in [
            "169.254.169.254:80",
            "127.0.0.1:2222",
            "[::1]:8022",
            "[fd00:ec2::254]:80",
        ] {
            let e = screen(
                Decision::allow("glob"),
                &[sa("10.0.0.1:80"), sa(a)],
                &own,
                none,
            )
            .unwrap_err();
            assert!(e.starts_with(&format!("{}:", sa(a))), "{e}");
            assert!(e.contains("no forward rule names it explicitly"), "{e}");
        }
        // Approve is screened the same way.
        assert!(
            screen(
                Decision::approve("r"),
                &[sa("169.254.169.254:80")],
                &own,
                none
            )
            .is_err()
        );
        // An explicit rule (allow) lets it through and is named in the reason.
        let explicit = |ip: IpAddr, port: u16| {
            (ip == "169.254.169.254".parse::<IpAddr>().unwrap() && port == 80)
                .then(|| Decision::allow("p.toml:9 role 'r' forward.allow '169.254.169.254:80'"))
        };
        let d = screen(
            Decision::allow("glob"),
            &[sa("169.254.169.254:80")],
            &own,
            explicit,
        )
        .unwrap();
        assert!(d.reason.contains("allowed by p.toml:9"), "{}", d.reason);
        // ... but only for what it names.
        assert!(
            screen(
                Decision::allow("glob"),
                &[sa("169.254.169.254:81")],
                &own,
                explicit
            )
            .is_err()
        );
        // An explicit deny is no permission.
        let explicit_deny = |_: IpAddr, _: u16| Some(Decision::deny("x"));
        assert!(
            screen(
                Decision::allow("glob"),
                &[sa("169.254.169.254:80")],
                &own,
                explicit_deny
            )
            .is_err()
        );
    }

    fn forwarder(extra: &str) -> Arc<Forwarder> {
        let p = std::path::Path::new("t.toml");
        let cfg = crate::config::parse(extra, p)
            .unwrap()
            .validate(p, None)
            .unwrap();
        Forwarder::new(&cfg, PolicyHandle::default(), Store::in_memory().unwrap())
    }

    fn ident() -> Identity {
        Identity {
            issuer: "local".into(),
            subject: "alice".into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn plan_refuses_before_policy_when_it_must() {
        let f = forwarder("[targets]\ndb = \"127.0.0.1:5432\"\n");
        let no_pf = f.connection("c1", ident(), false);
        let r = no_pf.plan("db", 5432).await.unwrap_err();
        assert_eq!(r.reason, "certificate lacks permit-port-forwarding");
        assert!(matches!(
            r.code,
            ChannelOpenFailure::AdministrativelyProhibited
        ));
        let ctx = f.connection("c2", ident(), true);
        for (host, port, why) in [
            ("db", 1u32, "is port 5432, not 1"),
            ("nosuch", 22, "unknown target"),
            ("a\0b", 22, "NUL"),
            ("x.example", 0, "invalid port"),
            ("x.example", 70000, "invalid port"),
        ] {
            let r = ctx.plan(host, port).await.unwrap_err();
            assert!(r.reason.contains(why), "{host}:{port}: {}", r.reason);
            assert_eq!(r.decision, Verdict::Deny);
        }
        // Valid and resolvable, but the (default) policy denies: the
        // policy's reason is what the audit row gets.
        let r = ctx.plan("db", 5432).await.unwrap_err();
        let direct = PolicyHandle::default().current().forward(
            &ident(),
            &ForwardRequest {
                kind: ForwardKind::Local,
                host: "db".into(),
                port: 5432,
                resolved: vec!["127.0.0.1".parse().unwrap()],
            },
        );
        assert_eq!(direct.verdict, Verdict::Deny);
        assert_eq!(r.reason, direct.reason);
        assert_eq!(r.resolved.as_deref(), Some("127.0.0.1:5432"));
    }

    #[test]
    fn decide_other_is_audited() {
        let f = forwarder("");
        let ctx = f.connection("c9", ident(), true);
        let d = ctx.decide_other(ForwardKind::Remote, "0.0.0.0", 8080);
        assert!(!d.is_allow());
        let rows = f.audit.list_forwards(10).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].kind, "remote");
        assert_eq!(rows[0].target, "0.0.0.0:8080");
        assert_eq!(rows[0].decision, "deny");
        assert_eq!(rows[0].connection_id, "c9");
    }
}

/// Kube API channels ask the live policy for every HTTP request: a reload
/// applies to the next request of a channel opened before it.
#[cfg(test)]
mod reload_tests {
    use super::*;
    use crate::policy::{KubeRequest, Policy};

    const POLICY: &str = r#"
[[role]]
name = "viewers"
[role.match]
subject = ["alice"]
[role.kube]
allow = [{ verbs = ["get"], resources = ["pods"] }]
"#;

    #[tokio::test]
    async fn kube_api_requests_are_decided_by_the_policy_in_force_now() {
        let dir = tempfile::tempdir().unwrap();
        let kc = dir.path().join("kc.yaml");
        // Never dialled: only the per-request policy question is asked here.
        std::fs::write(
            &kc,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster:\n    server: http://127.0.0.1:9\ncontexts:\n- name: t\n  context:\n    cluster: t\n    user: b\ncurrent-context: t\nusers:\n- name: b\n  user:\n    token: t\n",
        )
        .unwrap();
        let p = std::path::Path::new("t.toml");
        let cfg = crate::config::parse(
            &format!(
                "[kube]\napi_target = \"kubernetes:443\"\nkubeconfig = {:?}\n",
                kc.display().to_string()
            ),
            p,
        )
        .unwrap()
        .validate(p, None)
        .unwrap();
        let handle = PolicyHandle::new(Policy::from_toml("p.toml", POLICY).unwrap());
        let f = Forwarder::new(&cfg, handle.clone(), Store::in_memory().unwrap());
        let alice = Identity {
            issuer: "local".into(),
            subject: "alice".into(),
            ..Default::default()
        };
        // The channel's context is made once, when the channel opens.
        let ctx = f
            .kube_api
            .context(&alice, "c1", CancellationToken::new())
            .await
            .unwrap();
        let req = KubeRequest {
            verb: "get".into(),
            resource: "pods".into(),
            namespace: Some("dev".into()),
            ..Default::default()
        };
        let before = ctx.authorizer.kube(&ctx.identity, &req);
        assert!(before.is_allow(), "{before:?}");
        handle.replace(
            Policy::from_toml("p.toml", &POLICY.replace("allow = [{", "deny = [{")).unwrap(),
        );
        let after = ctx.authorizer.kube(&ctx.identity, &req);
        assert_eq!(after.verdict, Verdict::Deny, "{after:?}");
        assert!(after.reason.contains("kube.deny"), "{}", after.reason);
    }
}
