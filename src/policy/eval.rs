//! Evaluation: the union of the roles that match an identity, where any
//! matching deny rule wins, then approve, then allow, and nothing matched
//! means deny. Every [`Decision`] names the rule (file:line, role, section,
//! pattern) or says why nothing applied, so the audit row explains itself.

use std::time::Duration;

use crate::guard::CommandLine;
use crate::identity::{Identity, Kind};

use super::model::{Role, Rules};
use super::pattern::{AddrMode, any_match};
use super::{
    Decision, ForwardKind, ForwardRequest, IssueGrant, KubeRequest, Policy, SessionGrant, Verdict,
};

/// Reason given when no role matches the identity at all.
pub const NO_ROLE: &str = "no role matched (default deny)";

/// Certificate lifetime for people when no matching role sets `cert_ttl`.
pub const DEFAULT_CERT_TTL: Duration = Duration::from_secs(15 * 60);

/// Certificate lifetime for agents when no matching role sets `cert_ttl`:
/// shorter than for people (issue 3), since a pod can renew without anyone
/// noticing and its token is the easier one to steal.
pub const DEFAULT_AGENT_CERT_TTL: Duration = Duration::from_secs(10 * 60);

/// Approval wait when no matching role sets `approval_timeout`.
pub const DEFAULT_APPROVAL_TIMEOUT: Duration = Duration::from_secs(300);

fn severity(v: Verdict) -> u8 {
    match v {
        Verdict::Allow => 0,
        Verdict::Approve => 1,
        Verdict::Deny => 2,
    }
}

/// `'a', 'b'` for reasons.
fn role_names(roles: &[&Role]) -> String {
    roles
        .iter()
        .map(|r| format!("'{}'", r.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `policies/a.toml:3 role 'a', policies/b.toml:9 role 'b'`
fn role_labels(roles: &[&Role]) -> String {
    roles
        .iter()
        .map(|r| r.label())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The first rule of `section` that hits, in verdict order deny, approve,
/// allow (roles in load order within each).
fn first_hit<'a, T: 'a>(
    roles: &[&'a Role],
    section: &str,
    rules: impl Fn(&'a Role) -> &'a Rules<T>,
    hit: impl Fn(&T, Verdict) -> bool,
) -> Option<Decision> {
    for verdict in [Verdict::Deny, Verdict::Approve, Verdict::Allow] {
        for role in roles {
            let r = rules(role);
            let list = match verdict {
                Verdict::Deny => &r.deny,
                Verdict::Approve => &r.approve,
                Verdict::Allow => &r.allow,
            };
            if let Some(rule) = list.iter().find(|rule| hit(&rule.pat, verdict)) {
                return Some(Decision {
                    verdict,
                    reason: format!(
                        "{} role '{}' {section}.{verdict} '{}'",
                        rule.origin, role.name, rule.text
                    ),
                });
            }
        }
    }
    None
}

pub fn session(p: &Policy, id: &Identity) -> SessionGrant {
    let roles = p.matching(id);
    if roles.is_empty() {
        return SessionGrant::none();
    }
    let max_of = |f: &dyn Fn(&Role) -> Option<Duration>| roles.iter().filter_map(|r| f(r)).max();
    let mut detectors: Vec<String> = Vec::new();
    // Any role asking for all detectors (an empty list) means all.
    let all = roles.iter().any(|r| r.mask.detectors.is_empty());
    if !all {
        for r in &roles {
            for d in &r.mask.detectors {
                if !detectors.contains(d) {
                    detectors.push(d.clone());
                }
            }
        }
    }
    let mut custom: Vec<(String, String)> = Vec::new();
    for r in &roles {
        for c in &r.mask.custom {
            if !custom.contains(c) {
                custom.push(c.clone());
            }
        }
    }
    SessionGrant {
        shell: roles.iter().any(|r| r.grant.shell),
        exec: roles.iter().any(|r| r.grant.exec),
        record_input: roles.iter().any(|r| r.grant.record_input),
        // Masking what the client sees is the safe side: any role wanting it wins.
        mask_live: roles.iter().any(|r| r.mask.live),
        mask_detectors: detectors,
        mask_custom: custom,
        strict: roles.iter().any(|r| r.grant.strict.is_some()),
        max_duration: max_of(&|r| r.grant.max_duration),
        idle_timeout: max_of(&|r| r.grant.idle_timeout),
        max_sessions: roles.iter().filter_map(|r| r.grant.max_sessions).max(),
        approval_timeout: max_of(&|r| r.grant.approval_timeout).unwrap_or(DEFAULT_APPROVAL_TIMEOUT),
        reason: role_labels(&roles),
    }
}

/// Join argv with single spaces: what exec patterns are matched against.
pub fn command_text(argv: &[String]) -> String {
    argv.join(" ")
}

pub fn exec(p: &Policy, id: &Identity, cmd: &CommandLine) -> Decision {
    let roles = p.matching(id);
    if roles.is_empty() {
        return Decision::deny(NO_ROLE);
    }
    if let Some(op) = cmd.opaque.first()
        && let Some(role) = roles.iter().find(|r| r.grant.strict.is_some())
    {
        let at = role
            .grant
            .strict
            .as_ref()
            .map(|o| o.to_string())
            .unwrap_or_default();
        return Decision::deny(format!(
            "{at} role '{}' grant.strict: cannot check inside '{op}'",
            role.name
        ));
    }
    let commands: Vec<String> = if cmd.simple.is_empty() {
        let raw = cmd.raw.trim();
        if raw.is_empty() {
            return Decision::allow(format!("empty command line (roles {})", role_names(&roles)));
        }
        vec![raw.to_string()]
    } else {
        cmd.simple.iter().map(|a| command_text(a)).collect()
    };
    let mut worst: Option<Decision> = None;
    let mut allow_reasons: Vec<String> = Vec::new();
    for text in &commands {
        let d = first_hit(&roles, "exec", |r| &r.exec, |pat, _| pat.is_match(text)).unwrap_or_else(
            || {
                Decision::deny(format!(
                    "no exec rule allows '{text}' (roles {})",
                    role_names(&roles)
                ))
            },
        );
        match d.verdict {
            Verdict::Deny => return d,
            Verdict::Allow => {
                if !allow_reasons.contains(&d.reason) {
                    allow_reasons.push(d.reason.clone());
                }
            }
            Verdict::Approve => {}
        }
        if worst
            .as_ref()
            .is_none_or(|w| severity(d.verdict) > severity(w.verdict))
        {
            worst = Some(d);
        }
    }
    match worst {
        Some(d) if d.verdict == Verdict::Allow => Decision::allow(allow_reasons.join("; ")),
        Some(d) => d,
        None => Decision::deny(NO_ROLE),
    }
}

/// `host:port`, IPv6 in brackets.
fn target_text(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

pub fn forward(p: &Policy, id: &Identity, req: &ForwardRequest) -> Decision {
    let roles = p.matching(id);
    if roles.is_empty() {
        return Decision::deny(NO_ROLE);
    }
    let target = target_text(&req.host, req.port);
    let needs_host = matches!(req.kind, ForwardKind::Local | ForwardKind::Remote);
    if needs_host
        && (req.host.is_empty()
            || req
                .host
                .chars()
                .any(|c| c.is_control() || c.is_whitespace()))
    {
        return Decision::deny(format!(
            "target host {:?} is empty or contains control characters",
            req.host
        ));
    }
    // `host.` is the same DNS name as `host`: without this, a deny on
    // `metadata.google.internal:*` would miss `metadata.google.internal.`.
    let host = req.host.strip_suffix('.').unwrap_or(&req.host);
    match req.kind {
        ForwardKind::Local => first_hit(
            &roles,
            "forward",
            |r| &r.forward.rules,
            |pat, v| {
                let mode = if v == Verdict::Allow {
                    AddrMode::All
                } else {
                    AddrMode::Any
                };
                pat.is_match(host, req.port, &req.resolved, mode)
            },
        )
        .unwrap_or_else(|| {
            Decision::deny(format!(
                "no forward rule allows '{target}' (roles {})",
                role_names(&roles)
            ))
        }),
        ForwardKind::Remote => {
            for role in &roles {
                if let Some(rule) = role.forward.remote.iter().find(|rule| {
                    rule.pat
                        .is_match(host, req.port, &req.resolved, AddrMode::All)
                }) {
                    return Decision::allow(format!(
                        "{} role '{}' forward.remote '{}'",
                        rule.origin, role.name, rule.text
                    ));
                }
            }
            Decision::deny(format!(
                "no forward.remote rule allows binding '{target}' (roles {})",
                role_names(&roles)
            ))
        }
        ForwardKind::Agent | ForwardKind::X11 => {
            let (key, pick): (&str, fn(&Role) -> Option<&super::model::Origin>) =
                if req.kind == ForwardKind::Agent {
                    ("agent", |r| r.forward.agent.as_ref())
                } else {
                    ("x11", |r| r.forward.x11.as_ref())
                };
            for role in &roles {
                if let Some(o) = pick(role) {
                    return Decision::allow(format!("{o} role '{}' forward.{key}", role.name));
                }
            }
            Decision::deny(format!(
                "{key} forwarding not granted (roles {}); set [role.forward] {key} = true",
                role_names(&roles)
            ))
        }
        ForwardKind::Streamlocal => Decision::deny(
            "Unix-socket (streamlocal) forwarding is never allowed by policy".to_string(),
        ),
    }
}

/// An allow rule of a role matching `id` that names `ip` by address or a
/// specific CIDR (not a catch-all); the tunnel requires this before
/// dialling metadata or its own loopback.
pub fn forward_names_address(
    p: &Policy,
    id: &Identity,
    ip: std::net::IpAddr,
    port: u16,
) -> Option<Decision> {
    for role in p.matching(id) {
        for rule in &role.forward.rules.allow {
            if rule.pat.names_address(ip, port) {
                return Some(Decision::allow(format!(
                    "{} role '{}' forward.allow '{}'",
                    rule.origin, role.name, rule.text
                )));
            }
        }
    }
    None
}

fn kube_text(req: &KubeRequest) -> String {
    let mut s = format!("{} {}", req.verb, kube_resource(req));
    if let Some(n) = &req.name {
        s.push(' ');
        s.push_str(n);
    }
    match &req.namespace {
        Some(ns) => {
            s.push_str(" in ");
            s.push_str(ns);
        }
        None => s.push_str(" (cluster-scoped)"),
    }
    s
}

fn kube_resource(req: &KubeRequest) -> String {
    match &req.subresource {
        Some(sub) => format!("{}/{sub}", req.resource),
        None => req.resource.clone(),
    }
}

pub fn kube(p: &Policy, id: &Identity, req: &KubeRequest) -> Decision {
    let roles = p.matching(id);
    if roles.is_empty() {
        return Decision::deny(NO_ROLE);
    }
    let resource = kube_resource(req);
    let opt = |pats: &Option<Vec<super::pattern::Pattern>>, v: Option<&str>| match pats {
        None => true,
        Some(p) => v.is_some_and(|v| any_match(p, v)),
    };
    first_hit(
        &roles,
        "kube",
        |r| &r.kube,
        |rule, _| {
            any_match(&rule.verbs, &req.verb)
                && opt(&rule.api_groups, Some(&req.api_group))
                && any_match(&rule.resources, &resource)
                && opt(&rule.namespaces, req.namespace.as_deref())
                && opt(&rule.names, req.name.as_deref())
        },
    )
    .unwrap_or_else(|| {
        Decision::deny(format!(
            "no kube rule allows '{}' (roles {})",
            kube_text(req),
            role_names(&roles)
        ))
    })
}

pub fn issue(p: &Policy, id: &Identity) -> Result<IssueGrant, Decision> {
    let roles = p.matching(id);
    if roles.is_empty() {
        return Err(Decision::deny(NO_ROLE));
    }
    let mut principals: Vec<String> = Vec::new();
    for r in &roles {
        for t in &r.grant.principals {
            if let Some(name) = t.expand(id)
                && !principals.contains(&name)
            {
                principals.push(name);
            }
        }
    }
    if principals.is_empty() {
        // A certificate without principals is valid for every login
        // (PROTOCOL.certkeys), so never issue one.
        return Err(Decision::deny(format!(
            "no login principal for this identity from {}; add principals = [\"{{subject}}\"] to [role.grant]",
            role_labels(&roles)
        )));
    }
    let ttl = roles
        .iter()
        .filter_map(|r| r.grant.cert_ttl)
        .max()
        .unwrap_or(match id.kind {
            Kind::Agent => DEFAULT_AGENT_CERT_TTL,
            Kind::Human => DEFAULT_CERT_TTL,
        });
    Ok(IssueGrant {
        principals,
        ttl,
        permit_pty: roles.iter().any(|r| r.grant.pty),
        permit_port_forwarding: roles.iter().any(|r| r.grant.port_forwarding),
        allow_on_behalf_of: roles.iter().any(|r| r.grant.on_behalf_of),
        reason: role_labels(&roles),
    })
}

pub fn can_approve(p: &Policy, approver: &Identity, requester: &Identity) -> Decision {
    if approver.issuer == requester.issuer && approver.subject == requester.subject {
        return Decision::deny("self-approval is not allowed");
    }
    // An agent approving would let automation wave its own kind through;
    // approvals are the human in the loop.
    if approver.kind == Kind::Agent {
        return Decision::deny("agents cannot approve requests");
    }
    // Nor may a human approve through an agent acting for the requester.
    if approver.on_behalf_of.is_some() {
        return Decision::deny("approvals cannot be made on behalf of someone else");
    }
    let roles = p.matching(approver);
    if roles.is_empty() {
        return Decision::deny(NO_ROLE);
    }
    for role in &roles {
        if let Some(o) = &role.grant.approver {
            return Decision::allow(format!("{o} role '{}' grant.approver", role.name));
        }
    }
    Decision::deny(format!(
        "none of the approver's roles ({}) has approver = true",
        role_names(&roles)
    ))
}
