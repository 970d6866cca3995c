//! Request headers on their way upstream: everything that could carry the
//! client's own credentials or a claimed identity is removed, then the
//! impersonation headers are set from the certificate [`Identity`] alone.
//!
//! Removed: `Authorization`, `Proxy-Authorization`, `Cookie`, every
//! `Impersonate-*`, and the front-proxy headers `X-Remote-User`,
//! `X-Remote-Group`, `X-Remote-Extra-*` (an apiserver configured with
//! `--requestheader-*` trusts those from its front proxy; we are not one, but
//! a client must never be able to smuggle them through us either).
//! The bastion's own `Authorization` is added afterwards by the upstream
//! client (kube's auth layer), never taken from the client.

use hyper::header::{HeaderMap, HeaderName, HeaderValue};

use crate::identity::{Identity, Kind};

/// `Impersonate-Extra-<key>` carrying the bastion session (connection) id.
pub const EXTRA_SESSION: &str = "impersonate-extra-sallyport-session";
/// `Impersonate-Extra-<key>` carrying the human an agent acts for.
pub const EXTRA_ON_BEHALF_OF: &str = "impersonate-extra-sallyport-on-behalf-of";

/// Who the bastion tells Kubernetes the caller is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Impersonation {
    pub user: String,
    pub groups: Vec<String>,
}

/// Map an identity to a Kubernetes user and groups.
///
/// - An agent with Kubernetes service-account facts becomes that service
///   account, `system:serviceaccount:<ns>:<sa>`, with the groups the
///   apiserver gives service accounts (`system:serviceaccounts`,
///   `system:serviceaccounts:<ns>`), so the RBAC bindings written for the
///   pod's own service account apply unchanged.
/// - Anyone else becomes their email when the certificate carries one, else
///   `<issuer>:<subject>` (so subjects from two issuers can never collide),
///   with the certificate's groups.
pub fn impersonation_for(id: &Identity) -> Impersonation {
    let mut groups: Vec<String> = Vec::new();
    let user = match (&id.kind, &id.kube) {
        (Kind::Agent, Some(k)) if !k.namespace.is_empty() && !k.service_account.is_empty() => {
            groups.push("system:serviceaccounts".into());
            groups.push(format!("system:serviceaccounts:{}", k.namespace));
            format!(
                "system:serviceaccount:{}:{}",
                k.namespace, k.service_account
            )
        }
        _ => match &id.email {
            Some(e) if !e.is_empty() => e.clone(),
            _ => format!("{}:{}", id.issuer, id.subject),
        },
    };
    for g in &id.groups {
        // Never let a token group claim the apiserver's own identities.
        if !g.starts_with("system:") && !groups.contains(g) {
            groups.push(g.clone());
        }
    }
    Impersonation { user, groups }
}

/// True for headers a client must never pass upstream.
pub fn is_forbidden(name: &HeaderName) -> bool {
    let n = name.as_str(); // always lowercase in `http`
    n == "authorization"
        || n == "proxy-authorization"
        || n == "cookie"
        || n.starts_with("impersonate-")
        || n == "x-remote-user"
        || n == "x-remote-group"
        || n.starts_with("x-remote-extra-")
}

/// Remove every forbidden header; returns the names removed (for the log).
pub fn strip(headers: &mut HeaderMap) -> Vec<String> {
    let bad: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_forbidden(n))
        .cloned()
        .collect();
    let mut removed = Vec::new();
    for n in bad {
        headers.remove(&n);
        removed.push(n.as_str().to_string());
    }
    removed
}

/// Header values must be visible ASCII; anything else is percent-encoded
/// (RFC 3986 unreserved characters pass) so a strange subject cannot break
/// the request or inject a header.
fn header_value(s: &str) -> HeaderValue {
    let encoded: String = if s.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        s.to_string()
    } else {
        let mut out = String::new();
        for b in s.bytes() {
            if b.is_ascii_alphanumeric() || b"-._~:@".contains(&b) {
                out.push(char::from(b));
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    };
    HeaderValue::from_str(&encoded).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// Strip, then set impersonation for `id` and the session id.
pub fn apply(headers: &mut HeaderMap, id: &Identity, session_id: &str) -> Vec<String> {
    let removed = strip(headers);
    let imp = impersonation_for(id);
    headers.insert("impersonate-user", header_value(&imp.user));
    for g in &imp.groups {
        headers.append("impersonate-group", header_value(g));
    }
    if !session_id.is_empty() {
        headers.insert(EXTRA_SESSION, header_value(session_id));
    }
    if let Some(h) = &id.on_behalf_of {
        headers.insert(EXTRA_ON_BEHALF_OF, header_value(h));
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::KubeIdentity;

    fn agent() -> Identity {
        Identity {
            issuer: "cluster".into(),
            subject: "system:serviceaccount:dev:copilot".into(),
            kind: Kind::Agent,
            groups: vec!["system:masters".into(), "agents".into()],
            kube: Some(KubeIdentity {
                namespace: "dev".into(),
                service_account: "copilot".into(),
                pod: Some("copilot-0".into()),
            }),
            on_behalf_of: Some("alice@example.com".into()),
            ..Default::default()
        }
    }

    #[test]
    fn forged_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer stolen"));
        h.insert("proxy-authorization", HeaderValue::from_static("Basic x"));
        h.insert("impersonate-user", HeaderValue::from_static("admin"));
        h.append(
            "impersonate-group",
            HeaderValue::from_static("system:masters"),
        );
        h.insert("impersonate-uid", HeaderValue::from_static("0"));
        h.insert("impersonate-extra-scopes", HeaderValue::from_static("all"));
        h.insert("x-remote-user", HeaderValue::from_static("admin"));
        h.insert("x-remote-extra-foo", HeaderValue::from_static("bar"));
        h.insert("cookie", HeaderValue::from_static("session=1"));
        h.insert("accept", HeaderValue::from_static("application/json"));
        apply(&mut h, &agent(), "sess-1");
        assert!(h.get("authorization").is_none());
        assert!(h.get("proxy-authorization").is_none());
        assert!(h.get("impersonate-uid").is_none());
        assert!(h.get("impersonate-extra-scopes").is_none());
        assert!(h.get("x-remote-user").is_none());
        assert!(h.get("x-remote-extra-foo").is_none());
        assert!(h.get("cookie").is_none());
        assert_eq!(h.get("accept").unwrap(), "application/json");
        assert_eq!(
            h.get("impersonate-user").unwrap(),
            "system:serviceaccount:dev:copilot"
        );
        let groups: Vec<_> = h
            .get_all("impersonate-group")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        assert_eq!(
            groups,
            [
                "system:serviceaccounts",
                "system:serviceaccounts:dev",
                "agents"
            ]
        );
        assert_eq!(h.get(EXTRA_SESSION).unwrap(), "sess-1");
        assert_eq!(h.get(EXTRA_ON_BEHALF_OF).unwrap(), "alice@example.com");
    }

    #[test]
    fn humans_by_email_else_issuer_subject() {
        let mut id = Identity {
            issuer: "corp".into(),
            subject: "1234".into(),
            email: Some("bob@example.com".into()),
            groups: vec!["sre".into()],
            ..Default::default()
        };
        assert_eq!(
            impersonation_for(&id),
            Impersonation {
                user: "bob@example.com".into(),
                groups: vec!["sre".into()]
            }
        );
        id.email = None;
        assert_eq!(impersonation_for(&id).user, "corp:1234");
        // An agent without kube facts is not turned into a service account.
        id.kind = Kind::Agent;
        assert_eq!(impersonation_for(&id).user, "corp:1234");
    }

    #[test]
    fn odd_values_are_encoded_not_injected() {
        let id = Identity {
            issuer: "corp".into(),
            subject: "évil\r\nimpersonate-user: admin".into(),
            ..Default::default()
        };
        let mut h = HeaderMap::new();
        apply(&mut h, &id, "");
        let v = h.get("impersonate-user").unwrap().to_str().unwrap();
        assert!(!v.contains('\r') && !v.contains('\n'), "{v}");
        assert!(v.starts_with("corp:%C3%A9vil%0D%0A"), "{v}");
        assert!(h.get(EXTRA_SESSION).is_none());
    }
}
