//! The checks a presented user certificate must pass before a login, beyond
//! the signature and validity window russh checks: signed by *our* user CA, a
//! user (not host) certificate, a non-empty principal list naming the login,
//! the validity window (with bounded clock skew, re-checked here), critical
//! options (`source-address` enforced, `force-command` honoured, anything else
//! rejected — PROTOCOL.certkeys says unknown critical options must fail), and
//! revocation. Each failure is a [`Rejection`] whose text goes to the log and
//! the audit row. The cases follow OpenSSH's regress/cert-userkey.sh.

use std::net::IpAddr;

use ipnet::IpNet;
use russh::keys::ssh_key::certificate::CertType;
use russh::keys::ssh_key::{Certificate, HashAlg, PublicKey};

use crate::identity::{CERT_EXTENSION, Identity};

/// What a certificate that passed grants this connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCert {
    pub identity: Identity,
    pub serial: u64,
    pub key_id: String,
    pub principals: Vec<String>,
    pub valid_before: u64,
    pub force_command: Option<String>,
    pub permit_pty: bool,
    pub permit_port_forwarding: bool,
    pub permit_agent_forwarding: bool,
    pub permit_x11_forwarding: bool,
    /// SHA256 fingerprint of the certified key.
    pub fingerprint: String,
}

/// Why a certificate was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("certificate signed by an unknown CA ({0})")]
    UnknownCa(String),
    #[error("certificate signature is invalid")]
    BadSignature,
    #[error("host certificate presented as a user certificate")]
    NotUserCert,
    #[error("certificate has no principals (refusing a certificate valid for every user)")]
    NoPrincipals,
    #[error("login name {login:?} is not among the certificate principals {principals:?}")]
    WrongPrincipal {
        login: String,
        principals: Vec<String>,
    },
    #[error("certificate is not valid yet (valid from {valid_after}, now {now})")]
    NotYetValid { valid_after: u64, now: u64 },
    #[error("certificate expired (valid until {valid_before}, now {now})")]
    Expired { valid_before: u64, now: u64 },
    #[error("unknown critical option {0:?}")]
    UnknownCriticalOption(String),
    #[error("source-address {allowed:?} does not allow {peer}")]
    SourceAddress { allowed: String, peer: IpAddr },
    #[error("malformed source-address {0:?}")]
    BadSourceAddress(String),
    #[error("malformed {CERT_EXTENSION} extension: {0}")]
    BadIdentity(String),
    #[error("certificate revoked: {0}")]
    Revoked(String),
}

/// Inputs of the check that are not in the certificate.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    /// Trusted user CA keys.
    pub trusted_cas: &'a [PublicKey],
    pub login: &'a str,
    pub peer: IpAddr,
    pub now: u64,
    /// Allowed clock skew, seconds.
    pub skew: u64,
}

/// Run every check on `cert`. `revoked` answers whether a (serial, key id,
/// subject) is revoked, with the reason.
pub fn verify_user_cert(
    cert: &Certificate,
    ctx: &Context<'_>,
    revoked: impl Fn(u64, &str, &Identity) -> Option<String>,
) -> Result<VerifiedCert, Rejection> {
    let signer = cert.signature_key();
    if !ctx.trusted_cas.iter().any(|ca| ca.key_data() == signer) {
        let fp = PublicKey::from(signer.clone()).fingerprint(HashAlg::Sha256);
        return Err(Rejection::UnknownCa(fp.to_string()));
    }
    if cert.verify_signature().is_err() {
        return Err(Rejection::BadSignature);
    }
    if cert.cert_type() != CertType::User {
        return Err(Rejection::NotUserCert);
    }
    if cert.valid_principals().is_empty() {
        return Err(Rejection::NoPrincipals);
    }
    if !cert.valid_principals().iter().any(|p| p == ctx.login) {
        return Err(Rejection::WrongPrincipal {
            login: ctx.login.to_string(),
            principals: cert.valid_principals().to_vec(),
        });
    }
    if cert.valid_after() > ctx.now.saturating_add(ctx.skew) {
        return Err(Rejection::NotYetValid {
            valid_after: cert.valid_after(),
            now: ctx.now,
        });
    }
    if cert.valid_before() <= ctx.now.saturating_sub(ctx.skew) {
        return Err(Rejection::Expired {
            valid_before: cert.valid_before(),
            now: ctx.now,
        });
    }
    let mut force_command = None;
    for (name, value) in cert.critical_options().iter() {
        match name.as_str() {
            "force-command" => force_command = Some(value.clone()),
            "source-address" => check_source_address(value, ctx.peer)?,
            // OpenSSH's "verify-required" asks for FIDO user verification,
            // which this server cannot check: refuse rather than ignore.
            other => return Err(Rejection::UnknownCriticalOption(other.to_string())),
        }
    }
    let identity = match cert.extensions().get(CERT_EXTENSION) {
        Some(json) => serde_json::from_str::<Identity>(json)
            .map_err(|e| Rejection::BadIdentity(e.to_string()))?,
        // A certificate minted elsewhere by our CA (e.g. with ssh-keygen -s):
        // the key id is the only name it carries.
        None => Identity {
            issuer: "local".into(),
            subject: cert.key_id().to_string(),
            ..Default::default()
        },
    };
    if identity.subject.is_empty() {
        return Err(Rejection::BadIdentity("empty subject".into()));
    }
    if let Some(why) = revoked(cert.serial(), cert.key_id(), &identity) {
        return Err(Rejection::Revoked(why));
    }
    let ext = cert.extensions();
    Ok(VerifiedCert {
        serial: cert.serial(),
        key_id: cert.key_id().to_string(),
        principals: cert.valid_principals().to_vec(),
        valid_before: cert.valid_before(),
        force_command,
        permit_pty: ext.contains_key("permit-pty"),
        permit_port_forwarding: ext.contains_key("permit-port-forwarding"),
        permit_agent_forwarding: ext.contains_key("permit-agent-forwarding"),
        permit_x11_forwarding: ext.contains_key("permit-X11-forwarding"),
        fingerprint: PublicKey::from(cert.public_key().clone())
            .fingerprint(HashAlg::Sha256)
            .to_string(),
        identity,
    })
}

/// `source-address`: comma-separated addresses or CIDR blocks (sshd's
/// `match_addr_list`); the peer must be in one of them.
pub fn check_source_address(list: &str, peer: IpAddr) -> Result<(), Rejection> {
    // A v4 client on a dual-stack socket shows up as ::ffff:a.b.c.d; match
    // both spellings, like sshd does after ipv64_normalise_mapped().
    let mapped = match peer {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    let mut any = false;
    for item in list.split(',') {
        let item = item.trim();
        if item.is_empty() {
            return Err(Rejection::BadSourceAddress(list.to_string()));
        }
        let net: IpNet = match item.parse::<IpNet>() {
            Ok(n) => n,
            Err(_) => match item.parse::<IpAddr>() {
                Ok(a) => IpNet::from(a),
                Err(_) => return Err(Rejection::BadSourceAddress(list.to_string())),
            },
        };
        any = true;
        if net.contains(&peer) || net.contains(&mapped) {
            return Ok(());
        }
    }
    if !any {
        return Err(Rejection::BadSourceAddress(list.to_string()));
    }
    Err(Rejection::SourceAddress {
        allowed: list.to_string(),
        peer: mapped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::sign::{UserCertRequest, sign_host, sign_user};
    use russh::keys::ssh_key::certificate::Builder;
    use russh::keys::ssh_key::{Algorithm, PrivateKey};
    use std::time::Duration;

    fn key() -> PrivateKey {
        PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap()
    }

    struct Fixture {
        ca: PrivateKey,
        user: PrivateKey,
        cas: Vec<PublicKey>,
    }

    fn fixture() -> Fixture {
        let ca = key();
        let cas = vec![ca.public_key().clone()];
        Fixture {
            ca,
            user: key(),
            cas,
        }
    }

    fn req(f: &Fixture) -> UserCertRequest {
        let id = Identity {
            issuer: "local".into(),
            subject: "alice".into(),
            ..Default::default()
        };
        UserCertRequest::new(
            f.user.public_key().clone(),
            id,
            vec!["alice".into()],
            Duration::from_secs(900),
        )
    }

    fn ctx<'a>(f: &'a Fixture, login: &'a str) -> Context<'a> {
        Context {
            trusted_cas: &f.cas,
            login,
            peer: "127.0.0.1".parse().unwrap(),
            now: crate::ca::keys::unix_now(),
            skew: 60,
        }
    }

    fn never(_: u64, _: &str, _: &Identity) -> Option<String> {
        None
    }

    #[test]
    fn rejects_other_ca() {
        let f = fixture();
        let other = key();
        let c = sign_user(&other, &req(&f)).unwrap();
        assert!(matches!(
            verify_user_cert(&c, &ctx(&f, "alice"), never),
            Err(Rejection::UnknownCa(_))
        ));
    }

    #[test]
    fn rejects_host_cert() {
        let f = fixture();
        let c = sign_host(
            &f.ca,
            f.user.public_key(),
            &["alice".into()],
            Duration::from_secs(600),
        )
        .unwrap();
        assert_eq!(
            verify_user_cert(&c, &ctx(&f, "alice"), never),
            Err(Rejection::NotUserCert)
        );
    }

    #[test]
    fn rejects_wrong_principal() {
        let f = fixture();
        let c = sign_user(&f.ca, &req(&f)).unwrap();
        assert!(matches!(
            verify_user_cert(&c, &ctx(&f, "root"), never),
            Err(Rejection::WrongPrincipal { .. })
        ));
    }

    #[test]
    fn rejects_empty_principals() {
        let f = fixture();
        let now = crate::ca::keys::unix_now();
        let mut b = Builder::new(
            [7u8; 32],
            f.user.public_key().key_data().clone(),
            now - 60,
            now + 600,
        )
        .unwrap();
        b.cert_type(CertType::User).unwrap();
        b.key_id("x").unwrap();
        b.all_principals_valid().unwrap();
        let c = b.sign(&f.ca).unwrap();
        assert_eq!(
            verify_user_cert(&c, &ctx(&f, "alice"), never),
            Err(Rejection::NoPrincipals)
        );
    }

    #[test]
    fn rejects_expired_and_future_beyond_skew() {
        let f = fixture();
        let now = crate::ca::keys::unix_now();
        let mut r = req(&f);
        r.valid_after = now - 7200;
        r.valid_before = now - 3600;
        let c = sign_user(&f.ca, &r).unwrap();
        assert!(matches!(
            verify_user_cert(&c, &ctx(&f, "alice"), never),
            Err(Rejection::Expired { .. })
        ));
        r.valid_after = now + 3600;
        r.valid_before = now + 7200;
        let c = sign_user(&f.ca, &r).unwrap();
        assert!(matches!(
            verify_user_cert(&c, &ctx(&f, "alice"), never),
            Err(Rejection::NotYetValid { .. })
        ));
        // Within the skew: accepted.
        r.valid_after = now + 30;
        let c = sign_user(&f.ca, &r).unwrap();
        verify_user_cert(&c, &ctx(&f, "alice"), never).unwrap();
    }

    #[test]
    fn rejects_unknown_critical_option() {
        let f = fixture();
        let now = crate::ca::keys::unix_now();
        let mut b = Builder::new(
            [7u8; 32],
            f.user.public_key().key_data().clone(),
            now - 60,
            now + 600,
        )
        .unwrap();
        b.cert_type(CertType::User).unwrap();
        b.key_id("x").unwrap();
        b.valid_principal("alice").unwrap();
        b.critical_option("no-such-option@example.com", "").unwrap();
        let c = b.sign(&f.ca).unwrap();
        assert_eq!(
            verify_user_cert(&c, &ctx(&f, "alice"), never),
            Err(Rejection::UnknownCriticalOption(
                "no-such-option@example.com".into()
            ))
        );
    }

    #[test]
    fn source_address() {
        let f = fixture();
        let mut r = req(&f);
        r.source_address = Some("10.0.0.0/8,192.168.1.1".into());
        let c = sign_user(&f.ca, &r).unwrap();
        assert!(matches!(
            verify_user_cert(&c, &ctx(&f, "alice"), never),
            Err(Rejection::SourceAddress { .. })
        ));
        r.source_address = Some("127.0.0.0/8".into());
        let c = sign_user(&f.ca, &r).unwrap();
        verify_user_cert(&c, &ctx(&f, "alice"), never).unwrap();
        r.source_address = Some("not-an-address".into());
        let c = sign_user(&f.ca, &r).unwrap();
        assert!(matches!(
            verify_user_cert(&c, &ctx(&f, "alice"), never),
            Err(Rejection::BadSourceAddress(_))
        ));
        assert!(
            check_source_address("::ffff:127.0.0.1", "::ffff:127.0.0.1".parse().unwrap()).is_ok()
        );
        assert!(check_source_address("127.0.0.1", "::ffff:127.0.0.1".parse().unwrap()).is_ok());
    }

    #[test]
    fn force_command_and_extensions() {
        let f = fixture();
        let mut r = req(&f);
        r.force_command = Some("uptime".into());
        r.permit_port_forwarding = true;
        let c = sign_user(&f.ca, &r).unwrap();
        let v = verify_user_cert(&c, &ctx(&f, "alice"), never).unwrap();
        assert_eq!(v.force_command.as_deref(), Some("uptime"));
        assert!(v.permit_port_forwarding && v.permit_pty && !v.permit_agent_forwarding);
        assert_eq!(v.identity.subject, "alice");
    }

    #[test]
    fn revoked() {
        let f = fixture();
        let c = sign_user(&f.ca, &req(&f)).unwrap();
        let serial = c.serial();
        let r = verify_user_cert(&c, &ctx(&f, "alice"), |s, _, _| {
            (s == serial).then(|| format!("serial {s}"))
        });
        assert!(matches!(r, Err(Rejection::Revoked(_))));
    }

    #[test]
    fn bad_identity_extension() {
        let f = fixture();
        let now = crate::ca::keys::unix_now();
        let mut b = Builder::new(
            [7u8; 32],
            f.user.public_key().key_data().clone(),
            now - 60,
            now + 600,
        )
        .unwrap();
        b.cert_type(CertType::User).unwrap();
        b.key_id("x").unwrap();
        b.valid_principal("alice").unwrap();
        b.extension(CERT_EXTENSION, "{not json").unwrap();
        let c = b.sign(&f.ca).unwrap();
        assert!(matches!(
            verify_user_cert(&c, &ctx(&f, "alice"), never),
            Err(Rejection::BadIdentity(_))
        ));
    }
}
