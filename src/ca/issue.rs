//! Issuing user certificates for verified tokens: public-key checks, policy
//! (principals, TTL, extensions, delegation), TTL capping by the token's own
//! `exp`, signing, and the audit record (serial, identity, token jti/iat, key
//! fingerprint, source IP). Also the periodic host-certificate renewal the
//! server spawns.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use russh::keys::ssh_key::{Algorithm, HashAlg, PublicKey};

use super::keys::unix_now;
use super::sign::{UserCertRequest, sign_user};
use super::{CaKeys, Error};
use crate::audit::Store;
use crate::identity::oidc::VerifiedToken;
use crate::policy::PolicyHandle;

/// Smallest RSA modulus we certify (NIST SP 800-131A; OpenSSH refuses < 1024
/// and warns below 2048).
pub const MIN_RSA_BITS: usize = 2048;

/// Why a certificate was not issued. [`IssueError::code`] and
/// [`IssueError::status`] shape the API answer.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// Not an OpenSSH public key line.
    #[error("public_key is not an OpenSSH public key: {0}")]
    MalformedKey(String),
    /// A certificate where a plain key was expected.
    #[error("public_key is a certificate; send the plain public key (e.g. id_ed25519.pub)")]
    CertificateNotKey,
    /// RSA below [`MIN_RSA_BITS`], or DSA.
    #[error("public_key is too weak: {0}")]
    WeakKey(String),
    /// No policy role grants this identity a certificate.
    #[error("policy denies a certificate: {0}")]
    PolicyDenied(String),
    /// Requested principal not among those policy grants.
    #[error("principal {requested:?} is not allowed (allowed: {allowed:?})")]
    PrincipalNotAllowed {
        requested: String,
        allowed: Vec<String>,
    },
    /// Delegation requested but policy does not accept it for this identity.
    #[error("acting on behalf of {0:?} is not allowed by policy")]
    DelegationDenied(String),
    /// The token ends too soon for any certificate.
    #[error("the token expires now; get a fresh one")]
    TokenEndsNow,
    /// Signing or recording failed (our fault).
    #[error("internal error: {0}")]
    Internal(String),
}

impl IssueError {
    pub fn code(&self) -> &'static str {
        match self {
            IssueError::MalformedKey(_) => "malformed_public_key",
            IssueError::CertificateNotKey => "certificate_not_key",
            IssueError::WeakKey(_) => "weak_public_key",
            IssueError::PolicyDenied(_) => "policy_denied",
            IssueError::PrincipalNotAllowed { .. } => "principal_not_allowed",
            IssueError::DelegationDenied(_) => "delegation_denied",
            IssueError::TokenEndsNow => "token_expired",
            IssueError::Internal(_) => "internal",
        }
    }

    /// HTTP status for this error.
    pub fn status(&self) -> u16 {
        match self {
            IssueError::MalformedKey(_)
            | IssueError::CertificateNotKey
            | IssueError::WeakKey(_) => 400,
            IssueError::TokenEndsNow => 401,
            IssueError::PolicyDenied(_)
            | IssueError::PrincipalNotAllowed { .. }
            | IssueError::DelegationDenied(_) => 403,
            IssueError::Internal(_) => 500,
        }
    }
}

impl From<Error> for IssueError {
    fn from(e: Error) -> Self {
        IssueError::Internal(e.to_string())
    }
}

/// Parse and vet a public key sent for certification.
pub fn parse_public_key(text: &str) -> Result<PublicKey, IssueError> {
    let text = text.trim();
    if text.len() > 16 * 1024 {
        return Err(IssueError::MalformedKey("longer than 16 KiB".into()));
    }
    let first = text.split_whitespace().next().unwrap_or_default();
    if first.contains("-cert-v01@openssh.com") {
        return Err(IssueError::CertificateNotKey);
    }
    let key = PublicKey::from_openssh(text).map_err(|e| IssueError::MalformedKey(e.to_string()))?;
    match key.algorithm() {
        Algorithm::Dsa => Err(IssueError::WeakKey(
            "DSA keys are obsolete (OpenSSH disabled them in 7.0)".into(),
        )),
        Algorithm::Rsa { .. } => {
            let bits = key
                .key_data()
                .rsa()
                .map(|r| r.key_size() as usize)
                .unwrap_or(0);
            if bits < MIN_RSA_BITS {
                Err(IssueError::WeakKey(format!(
                    "RSA key has {bits} bits; at least {MIN_RSA_BITS} required"
                )))
            } else {
                Ok(key)
            }
        }
        Algorithm::Ed25519
        | Algorithm::Ecdsa { .. }
        | Algorithm::SkEd25519
        | Algorithm::SkEcdsaSha2NistP256 => Ok(key),
        other => Err(IssueError::MalformedKey(format!(
            "key type {other} is not supported"
        ))),
    }
}

/// A certificate request after token verification.
#[derive(Debug, Clone)]
pub struct IssueRequest {
    /// OpenSSH public key line.
    pub public_key: String,
    pub token: VerifiedToken,
    /// A second verified token naming the human an agent acts for.
    pub on_behalf_of: Option<VerifiedToken>,
    /// One principal out of those policy grants (default: all of them).
    pub principal: Option<String>,
    /// Requester IP, recorded.
    pub source: Option<String>,
}

/// An issued certificate.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Issued {
    /// OpenSSH certificate line (`ssh-ed25519-cert-v01@openssh.com AAAA...`).
    pub certificate: String,
    pub serial: u64,
    pub valid_after: u64,
    pub valid_before: u64,
    pub key_id: String,
    pub principals: Vec<String>,
}

/// Signs user certificates for verified identities. Cheap to clone.
#[derive(Clone, Debug)]
pub struct CertIssuer {
    keys: Arc<CaKeys>,
    store: Store,
    policy: PolicyHandle,
}

impl CertIssuer {
    pub fn new(keys: Arc<CaKeys>, store: Store, policy: PolicyHandle) -> Self {
        Self {
            keys,
            store,
            policy,
        }
    }

    pub fn keys(&self) -> &CaKeys {
        &self.keys
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Issue a certificate: policy, delegation, TTL cap, sign, record.
    pub fn issue(&self, req: &IssueRequest) -> Result<Issued, IssueError> {
        let public = parse_public_key(&req.public_key)?;
        let mut identity = req.token.identity.clone();
        let policy = self.policy.current();
        let grant = policy
            .issue(&identity)
            .map_err(|d| IssueError::PolicyDenied(d.reason))?;

        // Delegation (RFC 8693 `act`, or a second token): only when policy says.
        let delegate = match (&req.on_behalf_of, &req.token.act_subject) {
            (Some(t), _) => Some(match &t.identity.email {
                Some(e) => e.clone(),
                None => t.identity.subject.clone(),
            }),
            (None, Some(a)) => Some(a.clone()),
            (None, None) => None,
        };
        if let Some(who) = delegate {
            if !grant.allow_on_behalf_of {
                return Err(IssueError::DelegationDenied(who));
            }
            identity.on_behalf_of = Some(who);
        }

        let principals = match &req.principal {
            None => grant.principals.clone(),
            Some(p) if grant.principals.contains(p) => vec![p.clone()],
            Some(p) => {
                return Err(IssueError::PrincipalNotAllowed {
                    requested: p.clone(),
                    allowed: grant.principals.clone(),
                });
            }
        };

        let now = unix_now();
        // Never past the policy TTL, nor past the token's own end (nor the
        // second token's): a certificate must not outlive the proof it came from.
        let mut ends = now.saturating_add(grant.ttl.as_secs());
        for exp in std::iter::once(req.token.exp).chain(req.on_behalf_of.as_ref().map(|t| t.exp)) {
            ends = ends.min(u64::try_from(exp).unwrap_or(0));
        }
        if ends <= now {
            return Err(IssueError::TokenEndsNow);
        }
        let mut cert_req = UserCertRequest::new(
            public.clone(),
            identity.clone(),
            principals.clone(),
            Duration::from_secs(ends - now),
        );
        cert_req.valid_before = ends;
        cert_req.permit_pty = grant.permit_pty;
        cert_req.permit_port_forwarding = grant.permit_port_forwarding;
        let cert = sign_user(&self.keys.user_ca, &cert_req)?;
        let fingerprint = public.fingerprint(HashAlg::Sha256).to_string();
        self.store
            .record_certificate(
                cert_req.serial,
                &identity,
                cert.key_id(),
                &principals,
                cert_req.valid_after,
                cert_req.valid_before,
                &fingerprint,
                req.token.jti.as_deref(),
                req.token.iat,
                req.source.as_deref(),
            )
            .map_err(|e| IssueError::Internal(e.to_string()))?;
        tracing::info!(
            serial = cert_req.serial,
            key_id = cert.key_id(),
            principals = ?principals,
            valid_before = cert_req.valid_before,
            reason = %grant.reason,
            "issued user certificate"
        );
        Ok(Issued {
            certificate: cert
                .to_openssh()
                .map_err(|e| IssueError::Internal(e.to_string()))?,
            serial: cert_req.serial,
            valid_after: cert_req.valid_after,
            valid_before: cert_req.valid_before,
            key_id: cert.key_id().to_string(),
            principals,
        })
    }
}

/// When the host certificate should be renewed: two thirds into its life
/// (see [`super::keys::host_cert_renew_at`]).
pub fn host_cert_renew_at(keys: &CaKeys) -> u64 {
    super::keys::host_cert_renew_at(&keys.host_cert)
}

/// How long the renewal task sleeps before it looks again at `keys` at time
/// `now`: until the renewal point, at least [`MIN_RENEW_WAIT`] so a host
/// certificate that cannot be made fresh (validity shorter than a second,
/// a clock far off) never turns the task into a busy loop.
pub fn host_cert_renew_wait(keys: &CaKeys, now: u64) -> Duration {
    Duration::from_secs(host_cert_renew_at(keys).saturating_sub(now)).max(MIN_RENEW_WAIT)
}

/// Shortest sleep of the host-certificate renewal task.
pub const MIN_RENEW_WAIT: Duration = Duration::from_secs(1);

/// Keep the bastion's host certificate fresh: sleep until two thirds of its
/// life passed, re-sign it (through [`CaKeys::load_or_create`], which writes
/// the new `-cert.pub`), and hand the new keys to `on_renew` (the SSH server
/// swaps its host certificate). Returns when `shutdown` completes. Errors are
/// logged and retried after a minute; they never stop the server.
pub async fn renew_host_cert(
    dir: PathBuf,
    validity: Duration,
    host_names: Vec<String>,
    mut current: CaKeys,
    on_renew: impl Fn(CaKeys) + Send,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let wait = host_cert_renew_wait(&current, unix_now());
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(wait) => {}
        }
        match CaKeys::load_or_create(&dir, validity, &host_names) {
            Ok(k) if k.host_cert.serial() != current.host_cert.serial() => {
                tracing::info!(
                    serial = k.host_cert.serial(),
                    "renewed the host certificate"
                );
                on_renew(k.clone());
                current = k;
            }
            Ok(k) => current = k,
            Err(e) => {
                tracing::error!(error = %e, "cannot renew the host certificate; retrying in 60s");
                tokio::select! {
                    _ = &mut shutdown => return,
                    _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Identity, Kind};
    use russh::keys::ssh_key::{Certificate, PrivateKey};

    /// Policy for the unit tests (docs/policy.md format): people of the
    /// `corp` issuer whose subject starts with a letter get their subject as
    /// principal and the default TTL; `contractors` get 5 minutes; agents may
    /// act on behalf of someone. Nothing matches subjects like `@@@`.
    const POLICY: &str = r#"
[[role]]
name = "corp-people"
[role.match]
issuer = ["corp"]
kind = "human"
subject = ["[a-z]*"]
[role.grant]
principals = ["{subject}"]
pty = true

[[role]]
name = "contractors"
[role.match]
issuer = ["corp"]
groups = ["contractors"]
[role.grant]
principals = ["{subject}"]
cert_ttl = "5m"

[[role]]
name = "corp-agents"
[role.match]
issuer = ["corp"]
kind = "agent"
[role.grant]
principals = ["{subject}"]
on_behalf_of = true
"#;

    fn issuer_with(policy: &str) -> (tempfile::TempDir, CertIssuer) {
        let dir = tempfile::tempdir().unwrap();
        let keys =
            CaKeys::load_or_create(&dir.path().join("k"), Duration::from_secs(3600), &[]).unwrap();
        let store = Store::in_memory().unwrap();
        let policy = crate::policy::Policy::from_toml("issue-test.toml", policy).unwrap();
        (
            dir,
            CertIssuer::new(Arc::new(keys), store, PolicyHandle::new(policy)),
        )
    }

    fn issuer() -> (tempfile::TempDir, CertIssuer) {
        issuer_with(POLICY)
    }

    fn token(sub: &str, kind: Kind, exp_in: i64) -> VerifiedToken {
        VerifiedToken {
            identity: Identity {
                issuer: "corp".into(),
                subject: sub.into(),
                kind,
                ..Default::default()
            },
            jti: Some("j1".into()),
            iat: Some(unix_now() as i64),
            exp: unix_now() as i64 + exp_in,
            act_subject: None,
        }
    }

    fn ed_pub() -> String {
        PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)
            .unwrap()
            .public_key()
            .to_openssh()
            .unwrap()
    }

    fn req(t: VerifiedToken) -> IssueRequest {
        IssueRequest {
            public_key: ed_pub(),
            token: t,
            on_behalf_of: None,
            principal: None,
            source: Some("127.0.0.1".into()),
        }
    }

    #[test]
    fn rejects_bad_keys() {
        assert_eq!(
            parse_public_key("ssh-ed25519 !!!").unwrap_err().code(),
            "malformed_public_key"
        );
        assert_eq!(
            parse_public_key("").unwrap_err().code(),
            "malformed_public_key"
        );
        let (_d, iss) = issuer();
        let issued = iss.issue(&req(token("alice", Kind::Human, 3600))).unwrap();
        assert_eq!(
            parse_public_key(&issued.certificate).unwrap_err().code(),
            "certificate_not_key"
        );
    }

    #[test]
    fn issues_with_identity_ttl_and_audit() {
        let (_d, iss) = issuer();
        let i = iss
            .issue(&req(token("alice@corp", Kind::Human, 3600)))
            .unwrap();
        let c = Certificate::from_openssh(&i.certificate).unwrap();
        assert_eq!(c.key_id(), "oidc:corp:alice@corp");
        // The policy engine sanitises `{subject}` into a login name.
        assert_eq!(c.valid_principals(), ["alice_corp".to_string()]);
        // No role sets cert_ttl: the 15-minute default for people (+1 min back-dating).
        assert_eq!(c.valid_before() - c.valid_after(), 900 + 60);
        assert!(c.extensions().contains_key("identity@sallyport"));
        assert!(c.extensions().contains_key("permit-pty"));
        assert!(!c.extensions().contains_key("permit-port-forwarding"));
        let l = iss.store().list_certificates(10).unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].serial, i.serial);
        assert_eq!(l[0].token_jti.as_deref(), Some("j1"));
        assert_eq!(l[0].source.as_deref(), Some("127.0.0.1"));
    }

    #[test]
    fn ttl_capped_by_token_exp_and_agent_default() {
        let (_d, iss) = issuer();
        let t = token("alice", Kind::Human, 120);
        let exp = t.exp as u64;
        let i = iss.issue(&req(t)).unwrap();
        assert_eq!(i.valid_before, exp);
        // No role sets cert_ttl for agents: their 10-minute default.
        let i = iss.issue(&req(token("bot", Kind::Agent, 3600))).unwrap();
        assert_eq!(i.valid_before - i.valid_after, 600 + 60);
        // A role's cert_ttl caps a long-lived token (roles without one do not lift it).
        let mut t = token("carl", Kind::Human, 86400);
        t.identity.groups = vec!["contractors".into()];
        let i = iss.issue(&req(t)).unwrap();
        assert_eq!(i.valid_before - i.valid_after, 300 + 60);
        assert_eq!(
            iss.issue(&req(token("alice", Kind::Human, -5)))
                .unwrap_err()
                .code(),
            "token_expired"
        );
    }

    #[test]
    fn delegation_only_when_policy_allows() {
        let (_d, iss) = issuer();
        let mut t = token("alice", Kind::Human, 3600);
        t.act_subject = Some("bob".into());
        assert_eq!(iss.issue(&req(t)).unwrap_err().code(), "delegation_denied");
        let mut t = token("bot", Kind::Agent, 3600);
        t.act_subject = Some("bob".into());
        let i = iss.issue(&req(t)).unwrap();
        let c = Certificate::from_openssh(&i.certificate).unwrap();
        let id: Identity =
            serde_json::from_str(c.extensions().get("identity@sallyport").unwrap()).unwrap();
        assert_eq!(id.on_behalf_of.as_deref(), Some("bob"));
    }

    #[test]
    fn ttl_capped_by_token_even_when_policy_allows_longer() {
        let (_d, iss) = issuer_with(
            r#"
[[role]]
name = "long"
match = { issuer = "corp" }
grant = { principals = ["{subject}"], cert_ttl = "2h" }
"#,
        );
        let i = iss.issue(&req(token("alice", Kind::Human, 86400))).unwrap();
        assert_eq!(i.valid_before - i.valid_after, 7200 + 60);
        let t = token("alice", Kind::Human, 1800);
        let exp = t.exp as u64;
        assert_eq!(iss.issue(&req(t)).unwrap().valid_before, exp);
    }

    #[test]
    fn policy_denial_and_principal_choice() {
        let (_d, iss) = issuer();
        // No role matches: refused with the engine's reason, nothing recorded.
        let e = iss
            .issue(&req(token("@@@", Kind::Human, 3600)))
            .unwrap_err();
        assert_eq!(e.code(), "policy_denied");
        assert_eq!(e.status(), 403);
        assert!(e.to_string().contains("no role matched"), "{e}");
        let mut other = token("alice", Kind::Human, 3600);
        other.identity.issuer = "elsewhere".into();
        assert_eq!(iss.issue(&req(other)).unwrap_err().code(), "policy_denied");
        assert!(iss.store().list_certificates(10).unwrap().is_empty());
        let mut r = req(token("alice", Kind::Human, 3600));
        r.principal = Some("root".into());
        assert_eq!(iss.issue(&r).unwrap_err().code(), "principal_not_allowed");
        r.principal = Some("alice".into());
        assert_eq!(iss.issue(&r).unwrap().principals, vec!["alice".to_string()]);
    }

    #[test]
    fn default_policy_and_missing_principal_deny() {
        // The shipped default policy grants only operator (`local`) identities.
        let dir = tempfile::tempdir().unwrap();
        let keys =
            CaKeys::load_or_create(&dir.path().join("k"), Duration::from_secs(3600), &[]).unwrap();
        let iss = CertIssuer::new(
            Arc::new(keys),
            Store::in_memory().unwrap(),
            PolicyHandle::default(),
        );
        assert_eq!(
            iss.issue(&req(token("alice", Kind::Human, 3600)))
                .unwrap_err()
                .code(),
            "policy_denied"
        );
        // A role whose principal template has no value for this identity
        // (no email): never a certificate without principals.
        let (_d, iss) = issuer_with(
            r#"
[[role]]
name = "by-email"
match = { issuer = "corp" }
grant = { principals = ["{email_local}"] }
"#,
        );
        let e = iss
            .issue(&req(token("alice", Kind::Human, 3600)))
            .unwrap_err();
        assert_eq!(e.code(), "policy_denied");
        assert!(e.to_string().contains("no login principal"), "{e}");
        let mut t = token("alice", Kind::Human, 3600);
        t.identity.email = Some("Alice.B@example.com".into());
        assert_eq!(
            iss.issue(&req(t)).unwrap().principals,
            vec!["alice.b".to_string()]
        );
    }

    #[tokio::test]
    async fn host_cert_renewed_by_the_task() {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("k");
        // A 1-second validity is two thirds through its life within a
        // second of signing: the task re-signs.
        let first = CaKeys::load_or_create(&k, Duration::from_secs(1), &[]).unwrap();
        let first_serial = first.host_cert.serial();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(renew_host_cert(
            k.clone(),
            Duration::from_secs(1),
            vec![],
            first,
            move |keys| {
                let _ = tx.send(keys.host_cert.serial());
            },
            async move {
                let _ = stop_rx.await;
            },
        ));
        let renewed = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_ne!(renewed, first_serial);
        let on_disk = CaKeys::load_existing(&k).unwrap();
        assert_eq!(on_disk.host_cert.serial(), renewed);
        stop_tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .unwrap()
            .unwrap();
    }

    #[test]
    fn host_cert_renewal_point() {
        let (_d, iss) = issuer();
        let at = host_cert_renew_at(iss.keys());
        let c = &iss.keys().host_cert;
        assert!(at > c.valid_after() && at < c.valid_before());
    }

    /// CaKeys whose host certificate is valid for `validity` from now
    /// (back-dated as sign_host does).
    fn keys_valid_for(validity: Duration) -> (tempfile::TempDir, CaKeys) {
        let dir = tempfile::tempdir().unwrap();
        let k = CaKeys::load_or_create(&dir.path().join("k"), validity, &[]).unwrap();
        (dir, k)
    }

    #[test]
    fn host_cert_renewal_decision() {
        // 30 days: renewed 20 days after signing, not 20 days minus the
        // 5-minute back-dating, and waits that long.
        let (_d, k) = keys_valid_for(Duration::from_secs(30 * 86400));
        let signed = k.host_cert.valid_after() + crate::ca::sign::HOST_CERT_BACKDATE_SECS;
        assert_eq!(host_cert_renew_at(&k), signed + 20 * 86400);
        assert_eq!(
            host_cert_renew_wait(&k, signed),
            Duration::from_secs(20 * 86400)
        );
        assert_eq!(
            host_cert_renew_wait(&k, signed + 20 * 86400 - 5),
            Duration::from_secs(5)
        );
        // Due or overdue (even expired): look again after the minimum wait.
        for now in [signed + 20 * 86400, signed + 40 * 86400] {
            assert_eq!(host_cert_renew_wait(&k, now), MIN_RENEW_WAIT);
        }
        // A short validity is not "due" at once because of the back-dating:
        // 9 minutes -> renewed 6 minutes after signing.
        let (_d, k) = keys_valid_for(Duration::from_secs(9 * 60));
        let signed = k.host_cert.valid_after() + crate::ca::sign::HOST_CERT_BACKDATE_SECS;
        assert_eq!(host_cert_renew_at(&k), signed + 6 * 60);
        // And load_or_create agrees: a fresh certificate is kept, not re-signed.
        let again = CaKeys::load_or_create(&k.dir, Duration::from_secs(9 * 60), &[]).unwrap();
        assert_eq!(again.host_cert.serial(), k.host_cert.serial());
    }
}
