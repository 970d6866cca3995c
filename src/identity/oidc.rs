//! Token verification for every configured issuer (OIDC providers and
//! Kubernetes service-account issuers). Discovery and the JWKS are fetched over
//! HTTP(S) (per-issuer CA bundle and, for Kubernetes, the bastion's own bearer
//! token), cached, and refetched when a token names an unknown `kid` — at most
//! once per cooldown and one fetch per issuer at a time, so a flood of bogus
//! kids cannot turn the bastion into a JWKS-fetching amplifier.
//!
//! Signatures, `iss`, `aud` and `exp` are checked by openidconnect's
//! `IdTokenVerifier` (nonce disabled: these are bearer tokens presented to an
//! API, not ID tokens returned to a browser flow); the header `alg` is checked
//! first against RS256/ES256/EdDSA, and `nbf`/`iat` here, all with at most
//! [`MAX_SKEW`] of clock skew.

use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use openidconnect::core::{CoreIdToken, CoreJsonWebKeySet, CoreJwsSigningAlgorithm};
use openidconnect::{ClientId, IdTokenVerifier, IssuerUrl, Nonce};
use serde::Deserialize;

use super::{Identity, Kind, KubeIdentity};
use crate::config::{IssuerConfig, IssuerKind};

/// Allowed clock skew for `exp`, `nbf` and `iat`.
pub const MAX_SKEW: Duration = Duration::from_secs(60);
/// Minimum time between two JWKS refetches of one issuer triggered by unknown kids.
pub const DEFAULT_REFETCH_COOLDOWN: Duration = Duration::from_secs(10);
/// A cached JWKS older than this is refreshed on next use.
const JWKS_MAX_AGE: Duration = Duration::from_secs(3600);
/// Tokens larger than this are refused before any parsing.
const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Why a token was refused. [`Error::code`] is the machine-readable reason the
/// API returns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not three base64url parts with JSON header and payload.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// `alg` is not RS256, ES256 or EdDSA (this catches `none` and HS256).
    #[error("token algorithm {0:?} is not allowed (RS256, ES256, EdDSA only)")]
    DisallowedAlg(String),
    /// `iss` names no configured issuer.
    #[error("token issuer {0:?} is not a configured issuer")]
    UnknownIssuer(String),
    /// `aud` has none of the issuer's accepted audiences.
    #[error("token audience does not match: {0}")]
    WrongAudience(String),
    /// `exp` passed (beyond the skew).
    #[error("token expired: {0}")]
    Expired(String),
    /// `nbf` in the future (beyond the skew).
    #[error("token not valid yet (nbf {nbf}, now {now})")]
    NotYetValid { nbf: i64, now: i64 },
    /// `iat` in the future (beyond the skew).
    #[error("token issued in the future (iat {iat}, now {now})")]
    IssuedInFuture { iat: i64, now: i64 },
    /// No key with the token's `kid` in the issuer's JWKS, even after a refetch.
    #[error("no key {0:?} in the issuer's JWKS (unknown or rotated out)")]
    UnknownKid(String),
    /// The signature does not verify.
    #[error("bad token signature: {0}")]
    BadSignature(String),
    /// A required claim is missing or has the wrong shape.
    #[error("token claim {0}")]
    BadClaim(String),
    /// The issuer's discovery document or JWKS could not be fetched.
    #[error("issuer {alias}: {message}")]
    Upstream { alias: String, message: String },
    /// The Kubernetes TokenReview said no.
    #[error("TokenReview rejected the token: {0}")]
    TokenReview(String),
}

impl Error {
    /// Stable machine-readable code for API responses and the audit log.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Malformed(_) => "malformed_token",
            Error::DisallowedAlg(_) => "disallowed_alg",
            Error::UnknownIssuer(_) => "wrong_issuer",
            Error::WrongAudience(_) => "wrong_audience",
            Error::Expired(_) => "token_expired",
            Error::NotYetValid { .. } => "token_not_yet_valid",
            Error::IssuedInFuture { .. } => "token_issued_in_future",
            Error::UnknownKid(_) => "unknown_kid",
            Error::BadSignature(_) => "bad_signature",
            Error::BadClaim(_) => "bad_claim",
            Error::Upstream { .. } => "issuer_unavailable",
            Error::TokenReview(_) => "token_review_failed",
        }
    }

    /// True when the fault is ours or the issuer's, not the caller's.
    pub fn is_upstream(&self) -> bool {
        matches!(self, Error::Upstream { .. })
    }
}

/// A verified token, reduced to what issuance needs.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    pub identity: Identity,
    pub jti: Option<String>,
    pub iat: Option<i64>,
    pub exp: i64,
    /// RFC 8693 `act.sub`: the party acting (for us: the human an agent acts for).
    pub act_subject: Option<String>,
}

/// The discovery fields we use.
#[derive(Debug, Clone, Deserialize)]
pub struct Discovery {
    pub issuer: String,
    pub jwks_uri: String,
    #[serde(default)]
    pub token_endpoint: Option<String>,
    #[serde(default)]
    pub device_authorization_endpoint: Option<String>,
}

#[derive(Default)]
struct Cache {
    discovery: Option<Discovery>,
    jwks: Option<Arc<CoreJsonWebKeySet>>,
    fetched_at: Option<Instant>,
}

/// One issuer: its config, HTTP client and cached keys.
struct IssuerState {
    cfg: IssuerConfig,
    http: reqwest::Client,
    /// Bearer token for discovery/JWKS (Kubernetes issuers).
    bearer: Option<String>,
    cache: RwLock<Cache>,
    /// Held while fetching: one fetch per issuer at a time.
    fetch_lock: tokio::sync::Mutex<()>,
}

/// Verifies tokens of all configured issuers. Cheap to clone.
#[derive(Clone)]
pub struct Verifier {
    issuers: Arc<Vec<IssuerState>>,
    cooldown: Duration,
    kube: Option<kube::Client>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field(
                "issuers",
                &self
                    .issuers
                    .iter()
                    .map(|i| &i.cfg.alias)
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Unverified JOSE header fields we look at before verification.
#[derive(Deserialize)]
struct RawHeader {
    alg: Option<String>,
    kid: Option<String>,
}

/// Claims read from the payload (after the signature verified).
#[derive(Deserialize, Default)]
struct RawClaims {
    iss: Option<String>,
    sub: Option<String>,
    exp: Option<serde_json::Value>,
    nbf: Option<serde_json::Value>,
    iat: Option<serde_json::Value>,
    jti: Option<String>,
    email: Option<String>,
    act: Option<serde_json::Value>,
    #[serde(rename = "kubernetes.io")]
    kubernetes: Option<KubeClaims>,
    #[serde(flatten)]
    rest: serde_json::Map<String, serde_json::Value>,
}

#[derive(Deserialize)]
struct KubeClaims {
    namespace: Option<String>,
    serviceaccount: Option<NameClaim>,
    pod: Option<NameClaim>,
}

#[derive(Deserialize)]
struct NameClaim {
    name: Option<String>,
}

fn num(v: &Option<serde_json::Value>) -> Option<i64> {
    v.as_ref().and_then(|v| {
        v.as_i64()
            .or_else(|| v.as_f64().map(|f| f as i64))
            .or_else(|| v.as_u64().map(|u| u as i64))
    })
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn decode_part<T: serde::de::DeserializeOwned>(part: &str, what: &str) -> Result<T, Error> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|e| Error::Malformed(format!("{what} is not base64url: {e}")))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Malformed(format!("{what} is not JSON: {e}")))
}

impl Verifier {
    /// Build a verifier for `issuers`. Reads CA bundles and token files now,
    /// so a broken config fails at start, not at the first login.
    pub fn new(issuers: &[IssuerConfig]) -> Result<Self, Error> {
        let mut out = Vec::new();
        for cfg in issuers {
            let upstream = |m: String| Error::Upstream {
                alias: cfg.alias.clone(),
                message: m,
            };
            let mut b = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .connect_timeout(Duration::from_secs(5))
                // Discovery must not be redirected elsewhere (issuer mix-up).
                .redirect(reqwest::redirect::Policy::none());
            if let Some(ca) = &cfg.ca_file {
                let pem = std::fs::read(ca)
                    .map_err(|e| upstream(format!("cannot read ca_file {}: {e}", ca.display())))?;
                let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                    upstream(format!(
                        "ca_file {}: not PEM certificates: {e}",
                        ca.display()
                    ))
                })?;
                for c in certs {
                    b = b.add_root_certificate(c);
                }
            }
            let http = b
                .build()
                .map_err(|e| upstream(format!("HTTP client: {e}")))?;
            let bearer = match &cfg.token_file {
                Some(p) => Some(
                    std::fs::read_to_string(p)
                        .map_err(|e| {
                            upstream(format!("cannot read token_file {}: {e}", p.display()))
                        })?
                        .trim()
                        .to_string(),
                ),
                None => None,
            };
            out.push(IssuerState {
                cfg: cfg.clone(),
                http,
                bearer,
                cache: RwLock::new(Cache::default()),
                fetch_lock: tokio::sync::Mutex::new(()),
            });
        }
        Ok(Self {
            issuers: Arc::new(out),
            cooldown: DEFAULT_REFETCH_COOLDOWN,
            kube: None,
        })
    }

    /// Change the refetch cooldown (tests use a short one).
    pub fn with_refetch_cooldown(mut self, d: Duration) -> Self {
        self.cooldown = d;
        self
    }

    /// Kubernetes client for TokenReview (issuers with `token_review = true`).
    pub fn with_kube_client(mut self, client: kube::Client) -> Self {
        self.kube = Some(client);
        self
    }

    /// Configured issuers.
    pub fn issuers(&self) -> impl Iterator<Item = &IssuerConfig> {
        self.issuers.iter().map(|i| &i.cfg)
    }

    /// Discovery document of issuer `alias` (fetched if not cached).
    pub async fn discovery(&self, alias: &str) -> Result<Discovery, Error> {
        let st = self
            .issuers
            .iter()
            .find(|i| i.cfg.alias == alias)
            .ok_or_else(|| Error::UnknownIssuer(alias.to_string()))?;
        if let Some(d) = read_cache(st).discovery.clone() {
            return Ok(d);
        }
        self.refresh(st, None).await?;
        read_cache(st)
            .discovery
            .clone()
            .ok_or_else(|| Error::Upstream {
                alias: alias.to_string(),
                message: "no discovery document".into(),
            })
    }

    /// Verify `token` against the issuer its `iss` names.
    pub async fn verify(&self, token: &str) -> Result<VerifiedToken, Error> {
        let token = token.trim();
        if token.len() > MAX_TOKEN_LEN {
            return Err(Error::Malformed(format!(
                "longer than {MAX_TOKEN_LEN} bytes"
            )));
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(_sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Error::Malformed(
                "a JWT has three dot-separated parts".into(),
            ));
        };
        let header: RawHeader = decode_part(h, "header")?;
        let alg = header.alg.unwrap_or_default();
        if !matches!(alg.as_str(), "RS256" | "ES256" | "EdDSA") {
            return Err(Error::DisallowedAlg(alg));
        }
        let unverified: RawClaims = decode_part(p, "payload")?;
        let iss = unverified
            .iss
            .clone()
            .ok_or_else(|| Error::BadClaim("iss is missing".into()))?;
        let st = self
            .issuers
            .iter()
            .find(|i| i.cfg.url.trim_end_matches('/') == iss.trim_end_matches('/'))
            .ok_or_else(|| Error::UnknownIssuer(iss.clone()))?;

        let jwks = self.keys_for(st, header.kid.as_deref()).await?;
        let claims = verify_with(st, &jwks, token, &iss)?;
        let now = now_secs();
        let skew = MAX_SKEW.as_secs() as i64;
        if let Some(nbf) = num(&claims.nbf)
            && nbf > now + skew
        {
            return Err(Error::NotYetValid { nbf, now });
        }
        let iat = num(&claims.iat);
        if let Some(iat) = iat
            && iat > now + skew
        {
            return Err(Error::IssuedInFuture { iat, now });
        }
        let exp = num(&claims.exp).ok_or_else(|| Error::BadClaim("exp is missing".into()))?;
        let identity = identity_from(&st.cfg, &claims)?;
        if st.cfg.kind == IssuerKind::Kubernetes && st.cfg.token_review {
            super::kube::token_review(self.kube.as_ref(), token, &st.cfg.audience).await?;
        }
        let act_subject = claims
            .act
            .as_ref()
            .and_then(|a| a.get("sub"))
            .and_then(|s| s.as_str())
            .map(str::to_string);
        Ok(VerifiedToken {
            identity,
            jti: claims.jti.clone(),
            iat,
            exp,
            act_subject,
        })
    }

    /// The JWKS to verify a token with `kid`: the cached one, or a fresh one
    /// when the kid is unknown (subject to the cooldown) or the cache is old.
    async fn keys_for(
        &self,
        st: &IssuerState,
        kid: Option<&str>,
    ) -> Result<Arc<CoreJsonWebKeySet>, Error> {
        let (jwks, fetched_at) = {
            let c = read_cache(st);
            (c.jwks.clone(), c.fetched_at)
        };
        let stale = fetched_at.is_none_or(|t| t.elapsed() > JWKS_MAX_AGE);
        match (jwks, kid) {
            (Some(j), Some(kid)) if !stale && has_kid(&j, kid) => return Ok(j),
            (Some(j), None) if !stale => return Ok(j),
            _ => {}
        }
        self.refresh(st, kid).await?;
        let j = read_cache(st).jwks.clone().ok_or_else(|| Error::Upstream {
            alias: st.cfg.alias.clone(),
            message: "no JWKS".into(),
        })?;
        if let Some(kid) = kid
            && !has_kid(&j, kid)
        {
            return Err(Error::UnknownKid(kid.to_string()));
        }
        Ok(j)
    }

    /// Fetch discovery + JWKS, one fetch per issuer at a time. When `kid` is
    /// given and another task just fetched (or the cooldown has not passed),
    /// no new fetch happens.
    async fn refresh(&self, st: &IssuerState, kid: Option<&str>) -> Result<(), Error> {
        let _guard = st.fetch_lock.lock().await;
        {
            let c = read_cache(st);
            if let Some(t) = c.fetched_at
                && t.elapsed() <= JWKS_MAX_AGE
            {
                // Someone fetched while we waited and now knows the kid.
                if let (Some(j), Some(kid)) = (&c.jwks, kid)
                    && has_kid(j, kid)
                {
                    return Ok(());
                }
                if kid.is_none() && c.jwks.is_some() {
                    return Ok(());
                }
                if t.elapsed() < self.cooldown {
                    tracing::debug!(issuer = %st.cfg.alias, "JWKS refetch skipped (cooldown)");
                    return Ok(());
                }
            }
        }
        let (discovery, jwks) = fetch(st).await?;
        tracing::info!(issuer = %st.cfg.alias, keys = jwks.keys().len(), "fetched JWKS");
        let mut c = match st.cache.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        c.discovery = Some(discovery);
        c.jwks = Some(Arc::new(jwks));
        c.fetched_at = Some(Instant::now());
        Ok(())
    }
}

fn read_cache(st: &IssuerState) -> std::sync::RwLockReadGuard<'_, Cache> {
    match st.cache.read() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn has_kid(jwks: &CoreJsonWebKeySet, kid: &str) -> bool {
    use openidconnect::JsonWebKey;
    jwks.keys()
        .iter()
        .any(|k| k.key_id().is_some_and(|id| id.as_str() == kid))
}

async fn get_json<T: serde::de::DeserializeOwned>(st: &IssuerState, url: &str) -> Result<T, Error> {
    let upstream = |m: String| Error::Upstream {
        alias: st.cfg.alias.clone(),
        message: m,
    };
    let mut req = st.http.get(url).header("accept", "application/json");
    if let Some(t) = &st.bearer {
        req = req.bearer_auth(t);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| upstream(format!("GET {url}: {e}")))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(upstream(format!("GET {url}: HTTP {status}")));
    }
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| upstream(format!("GET {url}: {e}")))?;
    serde_json::from_slice(&bytes).map_err(|e| upstream(format!("GET {url}: bad JSON: {e}")))
}

async fn fetch(st: &IssuerState) -> Result<(Discovery, CoreJsonWebKeySet), Error> {
    let base = st.cfg.url.trim_end_matches('/');
    let d: Discovery = get_json(st, &format!("{base}/.well-known/openid-configuration")).await?;
    // OpenID Connect Discovery 1.0 §4.3: the issuer in the document must be
    // exactly the one we asked for.
    if d.issuer.trim_end_matches('/') != base {
        return Err(Error::Upstream {
            alias: st.cfg.alias.clone(),
            message: format!(
                "discovery names issuer {:?}, expected {:?}",
                d.issuer, st.cfg.url
            ),
        });
    }
    let jwks: CoreJsonWebKeySet = get_json(st, &d.jwks_uri).await?;
    Ok((d, jwks))
}

/// Signature, `iss`, `aud`, `exp` through openidconnect; then read the claims.
fn verify_with(
    st: &IssuerState,
    jwks: &CoreJsonWebKeySet,
    token: &str,
    iss: &str,
) -> Result<RawClaims, Error> {
    use openidconnect::ClaimsVerificationError as C;
    use openidconnect::SignatureVerificationError as S;
    let id_token = CoreIdToken::from_str(token)
        .map_err(|e| Error::Malformed(format!("not a JWT with the required claims: {e}")))?;
    let audiences = st.cfg.audience.clone();
    // openidconnect compares `aud` with one client id; we accept any of the
    // issuer's audiences, so check here and give the verifier the one found.
    let token_aud: Vec<String> = {
        let parts: Vec<&str> = token.split('.').collect();
        let v: serde_json::Value = parts
            .get(1)
            .map(|p| decode_part(p, "payload"))
            .transpose()?
            .unwrap_or_default();
        match &v["aud"] {
            serde_json::Value::String(s) => vec![s.clone()],
            serde_json::Value::Array(a) => a
                .iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        }
    };
    let Some(matched) = token_aud.iter().find(|a| audiences.contains(a)).cloned() else {
        return Err(Error::WrongAudience(format!(
            "token has {token_aud:?}, issuer {} accepts {audiences:?}",
            st.cfg.alias
        )));
    };
    let issuer_url = IssuerUrl::new(iss.to_string())
        .map_err(|e| Error::BadClaim(format!("iss is not a URL: {e}")))?;
    let verifier =
        IdTokenVerifier::new_public_client(ClientId::new(matched), issuer_url, jwks.clone())
            .set_allowed_algs([
                CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
                CoreJwsSigningAlgorithm::EcdsaP256Sha256,
                CoreJwsSigningAlgorithm::EdDsa,
            ])
            // Other audiences in the token are fine when they are also ours.
            .set_other_audience_verifier_fn(move |a| audiences.iter().any(|x| x == a.as_str()))
            // `exp` with skew: pretend it is `skew` earlier.
            .set_time_fn(|| (std::time::SystemTime::now() - MAX_SKEW).into());
    let no_nonce = |_: Option<&Nonce>| Ok(());
    id_token.claims(&verifier, no_nonce).map_err(|e| match e {
        C::Expired(m) => Error::Expired(m),
        C::InvalidAudience(m) => Error::WrongAudience(m),
        C::InvalidIssuer(m) => Error::UnknownIssuer(m),
        C::SignatureVerification(S::NoMatchingKey) => {
            Error::UnknownKid("(no key matches the token)".into())
        }
        C::SignatureVerification(S::DisallowedAlg(m)) => Error::DisallowedAlg(m),
        C::SignatureVerification(S::UnsupportedAlg(m)) => Error::DisallowedAlg(m),
        C::SignatureVerification(S::AmbiguousKeyId(m)) => Error::UnknownKid(m),
        C::SignatureVerification(other) => Error::BadSignature(other.to_string()),
        other => Error::BadClaim(other.to_string()),
    })?;
    // The payload is authentic now; read the claims we need from it.
    let p = token.split('.').nth(1).unwrap_or_default();
    decode_part(p, "payload")
}

/// Build the [`Identity`] from verified claims.
fn identity_from(cfg: &IssuerConfig, c: &RawClaims) -> Result<Identity, Error> {
    let subject = c
        .sub
        .clone()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Error::BadClaim("sub is missing".into()))?;
    let groups = match c.rest.get(&cfg.groups_claim) {
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|g| g.as_str().map(str::to_string))
            .collect(),
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    };
    let mut id = Identity {
        issuer: cfg.alias.clone(),
        subject,
        email: c.email.clone(),
        groups,
        kind: Kind::Human,
        kube: None,
        on_behalf_of: None,
    };
    if cfg.kind == IssuerKind::Kubernetes {
        let k = c.kubernetes.as_ref().ok_or_else(|| {
            Error::BadClaim("kubernetes.io is missing (not a service-account token)".into())
        })?;
        let namespace = k
            .namespace
            .clone()
            .ok_or_else(|| Error::BadClaim("kubernetes.io.namespace is missing".into()))?;
        let service_account = k
            .serviceaccount
            .as_ref()
            .and_then(|s| s.name.clone())
            .ok_or_else(|| {
                Error::BadClaim("kubernetes.io.serviceaccount.name is missing".into())
            })?;
        id.kind = Kind::Agent;
        id.kube = Some(KubeIdentity {
            namespace,
            service_account,
            pod: k.pod.as_ref().and_then(|p| p.name.clone()),
        });
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(kind: IssuerKind) -> IssuerConfig {
        IssuerConfig {
            alias: "corp".into(),
            url: "http://127.0.0.1:1".into(),
            kind,
            audience: vec!["sallyport".into()],
            client_id: None,
            scopes: vec![],
            ca_file: None,
            token_file: None,
            token_review: false,
            groups_claim: "groups".into(),
        }
    }

    fn jwt(header: serde_json::Value, payload: serde_json::Value) -> String {
        format!(
            "{}.{}.c2ln",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(payload.to_string())
        )
    }

    #[tokio::test]
    async fn rejects_before_any_fetch() {
        // The issuer URL points nowhere: each of these must be refused without
        // touching the network.
        let v = Verifier::new(&[cfg(IssuerKind::Oidc)]).unwrap();
        let p = serde_json::json!({"iss": "http://127.0.0.1:1", "sub": "a"});
        for (token, code) in [
            ("abc".to_string(), "malformed_token"),
            ("a.b.c.d".to_string(), "malformed_token"),
            (
                jwt(serde_json::json!({"alg": "none"}), p.clone()),
                "disallowed_alg",
            ),
            (
                jwt(serde_json::json!({"alg": "HS256"}), p.clone()),
                "disallowed_alg",
            ),
            (jwt(serde_json::json!({}), p.clone()), "disallowed_alg"),
            (
                jwt(
                    serde_json::json!({"alg": "RS256"}),
                    serde_json::json!({"iss": "https://evil.example", "sub": "a"}),
                ),
                "wrong_issuer",
            ),
            ("x".repeat(MAX_TOKEN_LEN + 1), "malformed_token"),
        ] {
            let e = v.verify(&token).await.unwrap_err();
            assert_eq!(e.code(), code, "{token:.40}: {e}");
        }
    }

    #[test]
    fn kube_identity_from_claims() {
        let c: RawClaims = serde_json::from_value(serde_json::json!({
            "sub": "system:serviceaccount:dev:copilot",
            "kubernetes.io": {"namespace": "dev", "serviceaccount": {"name": "copilot", "uid": "x"},
                               "pod": {"name": "copilot-0", "uid": "y"}},
        }))
        .unwrap();
        let id = identity_from(&cfg(IssuerKind::Kubernetes), &c).unwrap();
        assert_eq!(id.kind, Kind::Agent);
        let k = id.kube.unwrap();
        assert_eq!(
            (
                k.namespace.as_str(),
                k.service_account.as_str(),
                k.pod.as_deref()
            ),
            ("dev", "copilot", Some("copilot-0"))
        );
        // A Kubernetes issuer's token without the claims is no agent identity.
        let c: RawClaims = serde_json::from_value(serde_json::json!({"sub": "x"})).unwrap();
        assert_eq!(
            identity_from(&cfg(IssuerKind::Kubernetes), &c)
                .unwrap_err()
                .code(),
            "bad_claim"
        );
    }

    #[test]
    fn groups_claim_shapes() {
        let c: RawClaims =
            serde_json::from_value(serde_json::json!({"sub": "a", "groups": ["sre", 3, "dev"]}))
                .unwrap();
        let id = identity_from(&cfg(IssuerKind::Oidc), &c).unwrap();
        assert_eq!(id.groups, vec!["sre".to_string(), "dev".to_string()]);
        assert_eq!(id.kind, Kind::Human);
    }
}
