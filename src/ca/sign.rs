//! Building and signing certificates. User certificates carry the caller's
//! [`Identity`] as the `identity@sallyport` extension and a readable key id;
//! host certificates name the bastion's host names.

use std::time::Duration;

use russh::keys::ssh_key::certificate::{Builder, CertType};
use russh::keys::ssh_key::{Certificate, PrivateKey, PublicKey};

use super::Error;
use super::keys::unix_now;
use crate::identity::{CERT_EXTENSION, Identity};

/// Everything a user certificate says.
#[derive(Debug, Clone)]
pub struct UserCertRequest {
    pub public_key: PublicKey,
    pub identity: Identity,
    /// Defaults to `identity.key_id()` when empty.
    pub key_id: String,
    pub principals: Vec<String>,
    pub serial: u64,
    pub valid_after: u64,
    pub valid_before: u64,
    pub permit_pty: bool,
    pub permit_port_forwarding: bool,
    pub permit_agent_forwarding: bool,
    pub permit_x11_forwarding: bool,
    pub force_command: Option<String>,
    /// Comma-separated CIDR list (OpenSSH `source-address`).
    pub source_address: Option<String>,
}

impl UserCertRequest {
    /// A request valid from one minute ago (clock skew) for `ttl`.
    pub fn new(
        public_key: PublicKey,
        identity: Identity,
        principals: Vec<String>,
        ttl: Duration,
    ) -> Self {
        let now = unix_now();
        Self {
            public_key,
            key_id: identity.key_id(),
            identity,
            principals,
            serial: random_serial(),
            valid_after: now.saturating_sub(60),
            valid_before: now.saturating_add(ttl.as_secs()),
            permit_pty: true,
            permit_port_forwarding: false,
            permit_agent_forwarding: false,
            permit_x11_forwarding: false,
            force_command: None,
            source_address: None,
        }
    }
}

/// A random, non-zero 63-bit serial (fits SQLite's signed INTEGER).
pub fn random_serial() -> u64 {
    loop {
        let s = rand::random::<u64>() >> 1;
        if s != 0 {
            return s;
        }
    }
}

fn nonce() -> [u8; 32] {
    rand::random()
}

/// Sign a user certificate with `ca`.
pub fn sign_user(ca: &PrivateKey, req: &UserCertRequest) -> Result<Certificate, Error> {
    if req.principals.is_empty() {
        return Err(Error::Request(
            "a user certificate needs at least one principal".into(),
        ));
    }
    if req.valid_before <= req.valid_after {
        return Err(Error::Request(
            "valid_before must be after valid_after".into(),
        ));
    }
    let identity =
        serde_json::to_string(&req.identity).map_err(|e| Error::Request(e.to_string()))?;
    let mut b = Builder::new(
        nonce(),
        req.public_key.key_data().clone(),
        req.valid_after,
        req.valid_before,
    )?;
    b.serial(req.serial)?;
    b.cert_type(CertType::User)?;
    b.key_id(if req.key_id.is_empty() {
        req.identity.key_id()
    } else {
        req.key_id.clone()
    })?;
    for p in &req.principals {
        b.valid_principal(p.clone())?;
    }
    if let Some(fc) = &req.force_command {
        b.critical_option("force-command", fc.clone())?;
    }
    if let Some(sa) = &req.source_address {
        b.critical_option("source-address", sa.clone())?;
    }
    b.extension(CERT_EXTENSION, identity)?;
    if req.permit_agent_forwarding {
        b.extension("permit-agent-forwarding", "")?;
    }
    if req.permit_port_forwarding {
        b.extension("permit-port-forwarding", "")?;
    }
    if req.permit_pty {
        b.extension("permit-pty", "")?;
    }
    if req.permit_x11_forwarding {
        b.extension("permit-X11-forwarding", "")?;
    }
    b.comment(req.key_id.clone())?;
    Ok(b.sign(ca)?)
}

/// How far a host certificate's `valid_after` is back-dated, so clients
/// whose clock runs a little behind still accept it.
pub const HOST_CERT_BACKDATE_SECS: u64 = 300;

/// Sign the bastion's host certificate.
pub fn sign_host(
    ca: &PrivateKey,
    host_key: &PublicKey,
    names: &[String],
    validity: Duration,
) -> Result<Certificate, Error> {
    let now = unix_now();
    let mut b = Builder::new(
        nonce(),
        host_key.key_data().clone(),
        now.saturating_sub(HOST_CERT_BACKDATE_SECS),
        now.saturating_add(validity.as_secs()),
    )?;
    b.serial(random_serial())?;
    b.cert_type(CertType::Host)?;
    b.key_id("sallyport-host")?;
    if names.is_empty() {
        b.all_principals_valid()?;
    }
    for n in names {
        b.valid_principal(n.clone())?;
    }
    Ok(b.sign(ca)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use russh::keys::ssh_key::Algorithm;

    #[test]
    fn user_cert_fields() {
        let ca = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
        let user = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
        let id = Identity {
            issuer: "local".into(),
            subject: "alice".into(),
            ..Default::default()
        };
        let req = UserCertRequest::new(
            user.public_key().clone(),
            id.clone(),
            vec!["alice".into()],
            Duration::from_secs(900),
        );
        let c = sign_user(&ca, &req).unwrap();
        assert_eq!(c.cert_type(), CertType::User);
        assert_eq!(c.key_id(), "oidc:local:alice");
        assert_eq!(c.valid_principals(), ["alice".to_string()]);
        assert!(c.extensions().contains_key("permit-pty"));
        let got: Identity =
            serde_json::from_str(c.extensions().get(CERT_EXTENSION).unwrap()).unwrap();
        assert_eq!(got, id);
        c.verify_signature().unwrap();
    }

    #[test]
    fn refuses_no_principals() {
        let ca = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
        let req = UserCertRequest::new(
            ca.public_key().clone(),
            Identity::default(),
            vec![],
            Duration::from_secs(60),
        );
        assert!(sign_user(&ca, &req).is_err());
    }
}
