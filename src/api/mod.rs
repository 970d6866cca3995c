//! The HTTP API served by `sallyport serve`: `POST /v1/certificates`,
//! `GET /v1/ca`, `GET /v1/login-config`, `GET /healthz`.
//!
//! Every error is a JSON `{"error": code, "message": why}` with a 4xx status
//! for anything the caller sent (a 5xx only when we or the IdP failed), and
//! every certificate request — granted or not — is a row in `api_requests`.
//! Certificate requests are rate-limited per source IP (before any work) and
//! per token subject (after verification). Bodies are capped at
//! [`MAX_BODY`]. Plain HTTP or TLS (rustls) over one accept loop that owns
//! each connection in its own task, so one bad client cannot stall others.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};

use crate::ca::issue::{CertIssuer, IssueRequest};
use crate::config::IssuerKind;
use crate::identity::oidc::Verifier;

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// Errors starting the API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// TLS certificate or key unusable.
    #[error("API TLS: {0}")]
    Tls(String),
    /// An issuer's CA bundle or token file is unusable.
    #[error("issuers: {0}")]
    Issuers(String),
    /// Cannot bind or accept.
    #[error("API listener: {0}")]
    Io(#[from] std::io::Error),
}

/// Rate limits of the certificate endpoint.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Requests per minute per source IP (burst the same).
    pub per_ip_per_minute: u32,
    /// Requests per minute per token subject (burst the same).
    pub per_subject_per_minute: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            per_ip_per_minute: 300,
            per_subject_per_minute: 30,
        }
    }
}

/// Everything the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct State {
    pub verifier: Verifier,
    pub issuer: CertIssuer,
    /// SSH address of the bastion, told to `sallyport login` for ssh_config.
    pub ssh_listen: Option<SocketAddr>,
    /// `[kube] api_target`, told to `sallyport login` for the kubeconfig.
    pub kube_api_target: Option<String>,
    by_ip: Arc<DefaultKeyedRateLimiter<IpAddr>>,
    by_subject: Arc<DefaultKeyedRateLimiter<String>>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("verifier", &self.verifier)
            .field("ssh_listen", &self.ssh_listen)
            .finish_non_exhaustive()
    }
}

fn quota(per_minute: u32) -> Quota {
    let n = NonZeroU32::new(per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
    Quota::per_minute(n).allow_burst(n)
}

impl State {
    pub fn new(
        verifier: Verifier,
        issuer: CertIssuer,
        ssh_listen: Option<SocketAddr>,
        limits: Limits,
    ) -> Self {
        Self {
            verifier,
            issuer,
            ssh_listen,
            kube_api_target: None,
            by_ip: Arc::new(RateLimiter::keyed(quota(limits.per_ip_per_minute))),
            by_subject: Arc::new(RateLimiter::keyed(quota(limits.per_subject_per_minute))),
        }
    }

    /// Tell `sallyport login` the Kubernetes API proxy's target name.
    pub fn with_kube_api_target(mut self, target: impl Into<String>) -> Self {
        self.kube_api_target = Some(target.into());
        self
    }
}

/// An API failure: status, machine code, human message.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(ErrorBody {
                error: self.code,
                message: &self.message,
            }),
        )
            .into_response()
    }
}

/// Body of `POST /v1/certificates`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateRequest {
    /// OpenSSH public key line.
    pub public_key: String,
    /// A second token naming the human an agent acts for.
    #[serde(default)]
    pub on_behalf_of_token: Option<String>,
    /// One of the principals policy grants.
    #[serde(default)]
    pub principal: Option<String>,
}

/// Answer of `POST /v1/certificates`.
#[derive(Debug, Serialize, Deserialize)]
pub struct CertificateResponse {
    pub certificate: String,
    pub serial: u64,
    pub valid_after: u64,
    pub valid_before: u64,
    pub key_id: String,
    pub principals: Vec<String>,
    /// `@cert-authority * <host CA>` for known_hosts.
    pub known_hosts: String,
    /// User CA public key (TrustedUserCAKeys line).
    pub user_ca: String,
}

/// One issuer as `sallyport login` needs it.
#[derive(Debug, Serialize, Deserialize)]
pub struct LoginIssuer {
    pub alias: String,
    pub issuer: String,
    pub kind: String,
    pub client_id: Option<String>,
    pub scopes: Vec<String>,
    pub device_authorization_endpoint: Option<String>,
    pub token_endpoint: Option<String>,
}

/// Answer of `GET /v1/login-config`.
#[derive(Debug, Serialize, Deserialize)]
pub struct LoginConfig {
    pub issuers: Vec<LoginIssuer>,
    /// SSH port of the bastion.
    pub ssh_port: Option<u16>,
    /// Target name of the Kubernetes API proxy (`ssh -L 6443:<this>:443`).
    #[serde(default)]
    pub kube_api_target: Option<String>,
    pub known_hosts: String,
    pub user_ca: String,
}

/// The router (without connection info; [`serve`] adds it per connection).
pub fn router(state: State) -> Router {
    Router::new()
        .route("/v1/certificates", post(certificates))
        .route("/v1/ca", get(ca))
        .route("/v1/login-config", get(login_config))
        .route(
            "/healthz",
            get(|| async { axum::Json(serde_json::json!({"ok": true})) }),
        )
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "wrong HTTP method for this endpoint",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

fn audit(
    state: &State,
    peer: &SocketAddr,
    subject: Option<&str>,
    status: StatusCode,
    reason: &str,
) {
    if let Err(e) = state.issuer.store().record_api_request(
        &peer.ip().to_string(),
        "POST /v1/certificates",
        subject,
        status.as_u16(),
        reason,
    ) {
        tracing::error!(error = %e, "cannot audit API request");
    }
}

async fn certificates(
    AxState(state): AxState<State>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let mut subject = None;
    let r = issue(&state, peer, &headers, body, &mut subject).await;
    match r {
        Ok(resp) => {
            audit(
                &state,
                &peer,
                subject.as_deref(),
                StatusCode::OK,
                &format!("issued serial {}", resp.serial),
            );
            axum::Json(resp).into_response()
        }
        Err(e) => {
            tracing::info!(peer = %peer, code = e.code, message = %e.message, "certificate request refused");
            audit(
                &state,
                &peer,
                subject.as_deref(),
                e.status,
                &format!("{}: {}", e.code, e.message),
            );
            e.into_response()
        }
    }
}

async fn issue(
    state: &State,
    peer: SocketAddr,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    subject: &mut Option<String>,
) -> Result<CertificateResponse, ApiError> {
    if state.by_ip.check_key(&peer.ip()).is_err() {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many certificate requests from this address; retry in a minute",
        ));
    }
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("request body larger than {MAX_BODY} bytes"),
            )
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_body", e.body_text())
        }
    })?;
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing_token",
                "send `Authorization: Bearer <token>` (an OIDC ID token or a service-account token)",
            )
        })?;
    let req: CertificateRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_json",
            format!("body must be JSON {{\"public_key\": \"ssh-ed25519 AAAA...\"}}: {e}"),
        )
    })?;
    let verified = state.verifier.verify(token).await.map_err(verify_error)?;
    *subject = Some(verified.identity.key_id());
    if state
        .by_subject
        .check_key(&verified.identity.key_id())
        .is_err()
    {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many certificate requests for this identity; retry in a minute",
        ));
    }
    let on_behalf_of = match &req.on_behalf_of_token {
        None => None,
        Some(t) => Some(state.verifier.verify(t).await.map_err(|e| {
            let mut a = verify_error(e);
            a.message = format!("on_behalf_of_token: {}", a.message);
            a
        })?),
    };
    let issue_req = IssueRequest {
        public_key: req.public_key,
        token: verified,
        on_behalf_of,
        principal: req.principal,
        source: Some(peer.ip().to_string()),
    };
    // Signing and the SQLite insert are short but blocking.
    let issuer = state.issuer.clone();
    let issued = tokio::task::spawn_blocking(move || issuer.issue(&issue_req))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
        .map_err(|e| {
            let status =
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            ApiError::new(status, e.code(), e.to_string())
        })?;
    let keys = state.issuer.keys();
    Ok(CertificateResponse {
        certificate: issued.certificate,
        serial: issued.serial,
        valid_after: issued.valid_after,
        valid_before: issued.valid_before,
        key_id: issued.key_id,
        principals: issued.principals,
        known_hosts: keys.known_hosts_line("*").unwrap_or_default(),
        user_ca: keys.user_ca_line().unwrap_or_default(),
    })
}

fn verify_error(e: crate::identity::oidc::Error) -> ApiError {
    let status = if e.is_upstream() {
        StatusCode::BAD_GATEWAY
    } else {
        StatusCode::UNAUTHORIZED
    };
    ApiError::new(status, e.code(), e.to_string())
}

async fn ca(AxState(state): AxState<State>) -> Response {
    let keys = state.issuer.keys();
    match (keys.user_ca_line(), keys.known_hosts_line("*")) {
        (Ok(user_ca), Ok(known_hosts)) => axum::Json(serde_json::json!({
            "user_ca": user_ca,
            "known_hosts": known_hosts,
        }))
        .into_response(),
        _ => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "cannot encode CA keys",
        )
        .into_response(),
    }
}

async fn login_config(AxState(state): AxState<State>) -> Response {
    let mut issuers = Vec::new();
    for cfg in state.verifier.issuers() {
        let (device, token) = match cfg.kind {
            IssuerKind::Oidc => match state.verifier.discovery(&cfg.alias).await {
                Ok(d) => (d.device_authorization_endpoint, d.token_endpoint),
                Err(e) => {
                    tracing::warn!(issuer = %cfg.alias, error = %e, "discovery failed for login-config");
                    (None, None)
                }
            },
            IssuerKind::Kubernetes => (None, None),
        };
        issuers.push(LoginIssuer {
            alias: cfg.alias.clone(),
            issuer: cfg.url.clone(),
            kind: match cfg.kind {
                IssuerKind::Oidc => "oidc".into(),
                IssuerKind::Kubernetes => "kubernetes".into(),
            },
            client_id: cfg.client_id.clone(),
            scopes: cfg.scopes.clone(),
            device_authorization_endpoint: device,
            token_endpoint: token,
        });
    }
    let keys = state.issuer.keys();
    axum::Json(LoginConfig {
        issuers,
        ssh_port: state.ssh_listen.map(|a| a.port()),
        kube_api_target: state.kube_api_target.clone(),
        known_hosts: keys.known_hosts_line("*").unwrap_or_default(),
        user_ca: keys.user_ca_line().unwrap_or_default(),
    })
    .into_response()
}

/// Load a rustls server config from PEM files.
pub fn tls_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, Error> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|e| Error::Tls(format!("cannot read {}: {e}", p.display())))
    };
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| Error::Tls(format!("{}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(Error::Tls(format!("{}: no certificate", cert.display())));
    }
    let key_der = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| Error::Tls(format!("{}: {e}", key.display())))?
        .ok_or_else(|| Error::Tls(format!("{}: no private key", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| Error::Tls(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Serve plain HTTP on `listener` until `shutdown` completes.
pub async fn serve(
    state: State,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) {
    serve_inner(state, listener, None, shutdown).await
}

/// Serve HTTPS on `listener` until `shutdown` completes.
pub async fn serve_tls(
    state: State,
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    serve_inner(state, listener, Some(tls), shutdown).await
}

async fn serve_inner(
    state: State,
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let app = router(state);
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "API accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let app = app.clone().layer(axum::Extension(ConnectInfo(peer)));
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let service = hyper_util::service::TowerToHyperService::new(app);
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            let r = match acceptor {
                None => {
                    builder
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await
                }
                Some(acc) => {
                    let tls =
                        match tokio::time::timeout(Duration::from_secs(10), acc.accept(stream))
                            .await
                        {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(peer = %peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => return,
                        };
                    builder
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await
                }
            };
            if let Err(e) = r {
                tracing::debug!(peer = %peer, error = %e, "API connection ended with an error");
            }
        });
    }
}

/// Start the API the config asks for: bind, pick TLS or plain, spawn. Returns
/// the bound address and the task (`None` when `api.listen = "off"`).
pub async fn start(
    cfg: &crate::config::Config,
    keys: Arc<crate::ca::CaKeys>,
    store: crate::audit::Store,
    policy: crate::policy::PolicyHandle,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Option<(SocketAddr, tokio::task::JoinHandle<()>)>, Error> {
    let Some(addr) = cfg.api.listen else {
        return Ok(None);
    };
    let verifier = Verifier::new(&cfg.issuers).map_err(|e| Error::Issuers(e.to_string()))?;
    let issuer = CertIssuer::new(keys, store, policy);
    let state = State::new(verifier, issuer, Some(cfg.ssh.listen), Limits::default())
        .with_kube_api_target(cfg.kube.api_target.clone());
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let task = match &cfg.api.tls {
        Some((c, k)) => {
            let tls = tls_config(c, k)?;
            tokio::spawn(serve_tls(state, listener, tls, shutdown))
        }
        None => tokio::spawn(serve(state, listener, shutdown)),
    };
    tracing::info!(addr = %bound, tls = cfg.api.tls.is_some(), "API listening");
    Ok(Some((bound, task)))
}
