//! The Kubernetes API proxy: serves HTTP/1.1 inside any byte stream (an SSH
//! `direct-tcpip` channel to the configured API target, or a TCP socket in
//! tests) and forwards each request to the real API server as the caller.
//!
//! Per request: the path is checked and classified ([`request`]), policy
//! decides (`allow` / `approve` held until an [`Approver`] answers / `deny`
//! answered with a Kubernetes `Status` 403 kubectl prints readably), the
//! client's credentials and claimed identities are stripped and impersonation
//! headers set from the certificate identity ([`headers`]), the bastion's own
//! credentials are added by the upstream `kube::Client`, and one audit row is
//! written when the response (or upgraded stream) ends. Watches and
//! `logs -f` stream through unbuffered; `exec` / `attach` / `port-forward`
//! upgrades (SPDY/3.1 or WebSocket) are spliced after the 101. An `exec`'s
//! argv is checked against `[role.exec]` before it goes upstream ([`exec`]);
//! `exec`/`attach` WebSocket streams go through a frame relay that records,
//! masks and checks typed lines ([`stream`]).
//!
//! Plain HTTP inside the stream, not TLS: the SSH channel already encrypts
//! and authenticates both ends, the client listens on its own loopback
//! (`ssh -L 6443:kubernetes:443`), and kubectl needs no CA file for
//! `http://127.0.0.1:6443`. See docs/agents.md.

pub mod exec;
pub mod headers;
pub mod kubeconfig;
pub mod request;
pub mod stream;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full, Limited, combinators::UnsyncBoxBody};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, info, warn};

use crate::audit::{self, kube::KubeRequestRow};
use crate::guard::CommandLine;
use crate::identity::Identity;
use crate::policy::{Decision, KubeRequest, Policy, PolicyHandle, SessionGrant, Verdict};
use request::{Classified, resource_label};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Response body type served to the client.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;
/// Masking callback for request bodies kept in the audit log
/// (`mask::Masker::mask` once wired; identity in tests).
pub type MaskFn = Arc<dyn Fn(&[u8]) -> Vec<u8> + Send + Sync>;

/// Errors setting up the proxy (per-request problems become HTTP answers).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kubeconfig could not be read or used.
    #[error("kubeconfig {path}: {message}")]
    Kubeconfig { path: String, message: String },
    /// No kubeconfig configured and not running in a pod.
    #[error("no [kube] kubeconfig configured and no in-cluster service account: {0}")]
    InCluster(String),
    /// The upstream client could not be built (TLS settings, auth plugin).
    #[error("Kubernetes API client: {0}")]
    Client(String),
}

/// Error from an approval backend (counts as "not approved").
#[derive(Debug, thiserror::Error)]
#[error("approval failed: {0}")]
pub struct ApprovalError(pub String);

/// The policy questions the proxy asks. [`PolicyHandle`] (the policy in
/// force at each call, so typed lines follow reloads) and [`Policy`]
/// implement it; unit tests use doubles.
pub trait KubeAuthorizer: Send + Sync {
    /// `[role.kube]`: may this request go upstream?
    fn kube(&self, id: &Identity, req: &KubeRequest) -> Decision;
    /// `[role.exec]`: may this command run in a pod (exec argv, typed
    /// lines)? A double that does not answer denies.
    fn exec(&self, _id: &Identity, _cmd: &CommandLine) -> Decision {
        Decision::deny("no exec policy")
    }
    /// The grant (masking, `strict`) for streams. A double that does not
    /// answer gets the most restrictive grant.
    fn session(&self, _id: &Identity) -> SessionGrant {
        SessionGrant::none()
    }
}

impl KubeAuthorizer for PolicyHandle {
    fn kube(&self, id: &Identity, req: &KubeRequest) -> Decision {
        self.current().kube(id, req)
    }
    fn exec(&self, id: &Identity, cmd: &CommandLine) -> Decision {
        self.current().exec(id, cmd)
    }
    fn session(&self, id: &Identity) -> SessionGrant {
        self.current().session(id)
    }
}

impl KubeAuthorizer for Policy {
    fn kube(&self, id: &Identity, req: &KubeRequest) -> Decision {
        Policy::kube(self, id, req)
    }
    fn exec(&self, id: &Identity, cmd: &CommandLine) -> Decision {
        Policy::exec(self, id, cmd)
    }
    fn session(&self, id: &Identity) -> SessionGrant {
        Policy::session(self, id)
    }
}

/// One request waiting for a human decision.
#[derive(Debug, Clone)]
pub struct ApprovalRequest {
    pub requester: Identity,
    pub session_id: String,
    /// Readable, masked: `delete pods "web" in namespace "prod"`.
    pub request: String,
    /// The policy rule that asked for approval.
    pub reason: String,
    pub timeout: Duration,
}

/// Where approval-gated requests go (the approvals library implements it;
/// the lead plugs it in). `Ok(true)` = approved; anything else = refused.
pub trait Approver: Send + Sync {
    fn request(&self, req: ApprovalRequest) -> BoxFuture<'static, Result<bool, ApprovalError>>;
}

/// Resource limits per connection/request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Read buffer for the request head: a head larger than this gets 431.
    pub max_head_bytes: usize,
    /// Header count limit (more → 431).
    pub max_headers: usize,
    /// Request bodies above this get 413 (etcd's own object limit is 1.5 MiB).
    pub max_body_bytes: usize,
    /// Time to send a complete request head.
    pub header_read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_head_bytes: 64 * 1024,
            max_headers: 100,
            max_body_bytes: 4 * 1024 * 1024,
            header_read_timeout: Duration::from_secs(30),
        }
    }
}

/// The upstream API server, reached with the bastion's own credentials.
#[derive(Clone)]
pub struct Upstream {
    client: kube::Client,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").finish_non_exhaustive()
    }
}

impl Upstream {
    /// Use an existing client (its auth and TLS settings apply).
    pub fn from_client(client: kube::Client) -> Self {
        Self { client }
    }

    /// Build from the `[kube]` config: a kubeconfig (and context) when given,
    /// else the in-cluster service account.
    pub async fn from_config(cfg: &crate::config::KubeConfig) -> Result<Self, Error> {
        // Both rustls providers are compiled in (kube asks for ring, other
        // crates bring aws-lc-rs), so rustls cannot pick one by itself; an
        // error here only means one is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut config = match &cfg.kubeconfig {
            Some(path) => {
                let shown = path.display().to_string();
                let kc =
                    kube::config::Kubeconfig::read_from(path).map_err(|e| Error::Kubeconfig {
                        path: shown.clone(),
                        message: e.to_string(),
                    })?;
                let opts = kube::config::KubeConfigOptions {
                    context: cfg.context.clone(),
                    ..Default::default()
                };
                kube::Config::from_custom_kubeconfig(kc, &opts)
                    .await
                    .map_err(|e| Error::Kubeconfig {
                        path: shown,
                        message: e.to_string(),
                    })?
            }
            None => kube::Config::incluster().map_err(|e| Error::InCluster(e.to_string()))?,
        };
        // Watches and `logs -f` stay open for as long as the client wants.
        config.read_timeout = None;
        let client = kube::Client::try_from(config).map_err(|e| Error::Client(e.to_string()))?;
        Ok(Self { client })
    }
}

/// Everything one proxied connection needs. Cheap to clone.
#[derive(Clone)]
pub struct KubeProxyContext {
    /// The caller, from its certificate.
    pub identity: Arc<Identity>,
    /// Bastion connection/session id: audit `connection_id` and
    /// `Impersonate-Extra-sallyport-session`.
    pub session_id: String,
    pub authorizer: Arc<dyn KubeAuthorizer>,
    /// `None`: approval-gated requests are refused.
    pub approver: Option<Arc<dyn Approver>>,
    pub approval_timeout: Duration,
    /// `None`: no audit (tests of the HTTP behaviour only).
    pub audit: Option<audit::Store>,
    /// Applied to write bodies before they are stored.
    pub mask: MaskFn,
    pub upstream: Upstream,
    pub limits: Limits,
    /// Record `exec`/`attach` streams as asciicast files under this
    /// directory (`None`: not recorded). When set, a stream that cannot be
    /// recorded (SPDY, unknown subprotocol, file error) is refused.
    pub recording_dir: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for KubeProxyContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeProxyContext")
            .field("identity", &self.identity.display())
            .field("session_id", &self.session_id)
            .field("approver", &self.approver.is_some())
            .field("limits", &self.limits)
            .field("recording_dir", &self.recording_dir)
            .finish_non_exhaustive()
    }
}

/// What every proxied connection shares, built once when the server starts;
/// [`KubeProxy::context`] makes the per-connection [`KubeProxyContext`].
///
/// Wiring (SSH `direct-tcpip`): when [`KubeProxy::is_api_target`] says the
/// requested host is the API target, skip TCP resolution and run
/// `serve_connection(channel.into_stream(), proxy.context(identity, conn_id, timeout))`
/// in its own task; policy is applied per HTTP request inside.
#[derive(Clone)]
pub struct KubeProxy {
    /// `[kube] api_target` (`kubernetes`, or `kubernetes:443` to pin the port).
    pub api_target: String,
    pub upstream: Upstream,
    pub authorizer: Arc<dyn KubeAuthorizer>,
    pub approver: Option<Arc<dyn Approver>>,
    pub audit: Option<audit::Store>,
    pub mask: MaskFn,
    pub limits: Limits,
    pub recording_dir: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for KubeProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeProxy")
            .field("api_target", &self.api_target)
            .field("recording_dir", &self.recording_dir)
            .finish_non_exhaustive()
    }
}

impl KubeProxy {
    /// Is `host:port` (as the client wrote it in `ssh -L`) the API target?
    /// A target written without a port matches any port.
    pub fn is_api_target(&self, host: &str, port: u32) -> bool {
        matches_api_target(&self.api_target, host, port)
    }

    /// The context for one authenticated connection.
    pub fn context(
        &self,
        identity: Identity,
        session_id: impl Into<String>,
        approval_timeout: Duration,
    ) -> KubeProxyContext {
        KubeProxyContext {
            identity: Arc::new(identity),
            session_id: session_id.into(),
            authorizer: self.authorizer.clone(),
            approver: self.approver.clone(),
            approval_timeout,
            audit: self.audit.clone(),
            mask: self.mask.clone(),
            upstream: self.upstream.clone(),
            limits: self.limits,
            recording_dir: self.recording_dir.clone(),
        }
    }
}

/// Is `host:port` the API target `api_target` (`kubernetes`, or
/// `kubernetes:443` to pin the port)? A target without a port matches any port.
pub fn matches_api_target(api_target: &str, host: &str, port: u32) -> bool {
    match api_target.rsplit_once(':') {
        Some((h, p)) => h.eq_ignore_ascii_case(host) && p == port.to_string(),
        None => api_target.eq_ignore_ascii_case(host),
    }
}

/// Serve HTTP/1.1 on `stream` until the client closes it. Never fails: bad
/// requests get HTTP errors, a broken stream just ends the connection (and
/// malformed HTTP is audited).
pub async fn serve_connection<S>(stream: S, ctx: KubeProxyContext)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(stream);
    let svc_ctx = ctx.clone();
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let ctx = svc_ctx.clone();
        async move { Ok::<_, Infallible>(handle(ctx, req).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .max_buf_size(ctx.limits.max_head_bytes.max(8192))
        .max_headers(ctx.limits.max_headers)
        .timer(TokioTimer::new())
        .header_read_timeout(ctx.limits.header_read_timeout);
    let conn = builder.serve_connection(io, svc).with_upgrades();
    if let Err(e) = conn.await {
        // hyper has already answered parse errors (400, or 431 for heads over
        // the limits) before closing; record them.
        let status = if e.is_parse_too_large() {
            Some(431)
        } else if e.is_parse() {
            Some(400)
        } else {
            None
        };
        if status.is_some() || e.is_timeout() {
            warn!(session = %ctx.session_id, error = %e, "kube proxy: malformed HTTP");
            let mut row = base_row(&ctx, "invalid", "<unparsed>");
            row.decision = Verdict::Deny.to_string();
            row.reason = format!("malformed HTTP: {e}");
            row.status = status;
            write_audit(&ctx, &row);
        } else {
            debug!(session = %ctx.session_id, error = %e, "kube proxy connection ended");
        }
    }
}

fn base_row(ctx: &KubeProxyContext, verb: &str, path: &str) -> KubeRequestRow {
    KubeRequestRow {
        connection_id: Some(ctx.session_id.clone()).filter(|s| !s.is_empty()),
        subject: Some(ctx.identity.subject.clone()),
        identity: serde_json::to_string(&*ctx.identity).ok(),
        verb: verb.to_string(),
        path: path.to_string(),
        ..Default::default()
    }
}

fn write_audit(ctx: &KubeProxyContext, row: &KubeRequestRow) {
    if let Some(store) = &ctx.audit
        && let Err(e) = store.record_kube_request(row)
    {
        warn!(error = %e, "kube proxy: audit write failed");
    }
}

/// A Kubernetes `Status` object as the apiserver sends it for failures.
pub fn status_body(code: StatusCode, reason: &str, message: &str) -> String {
    serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    })
    .to_string()
}

fn full(b: impl Into<Bytes>) -> ProxyBody {
    Full::new(b.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn status_response(code: StatusCode, reason: &str, message: &str) -> Response<ProxyBody> {
    let mut res = Response::new(full(status_body(code, reason, message)));
    *res.status_mut() = code;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

/// `get secrets "db" in namespace "dev"`, as kubectl users read it.
pub fn describe(req: &KubeRequest) -> String {
    let mut s = format!("{} {}", req.verb, resource_label(req));
    if !req.api_group.is_empty() {
        s.push('.');
        s.push_str(&req.api_group);
    }
    if let Some(n) = &req.name {
        s.push_str(&format!(" {n:?}"));
    }
    match &req.namespace {
        Some(ns) => s.push_str(&format!(" in namespace {ns:?}")),
        None => s.push_str(" (cluster scope)"),
    }
    s
}

fn is_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE)
        && h.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str()
                .unwrap_or("")
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        })
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) are not forwarded, except the
/// `Connection: Upgrade` / `Upgrade` pair of an upgrade we do pass through.
fn drop_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<String> = h
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| {
            v.to_str()
                .unwrap_or("")
                .split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .filter(|t| !(t.is_empty() || (keep_upgrade && t == "upgrade")))
        .collect();
    for n in named {
        h.remove(n.as_str());
    }
    for n in [
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
    ] {
        h.remove(n);
    }
    if !keep_upgrade {
        h.remove(header::CONNECTION);
        h.remove(header::UPGRADE);
    }
}

/// Answer one request.
async fn handle(ctx: KubeProxyContext, mut req: Request<Incoming>) -> Response<ProxyBody> {
    let start = Instant::now();
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let shown_path = match &query {
        Some(q) => format!("{path}?{q}"),
        None => path.clone(),
    };
    let mut row = base_row(&ctx, "invalid", &shown_path);

    // Absolute-form targets (`GET http://other/...`) would let a client name
    // another host; kubectl never sends them.
    let classified = if req.uri().scheme().is_some() || req.uri().authority().is_some() {
        Err(request::PathError::NotAbsolute)
    } else {
        request::classify(&method, &path, query.as_deref())
    };
    let classified = match classified {
        Ok(c) => c,
        Err(e) => {
            row.decision = Verdict::Deny.to_string();
            row.reason = format!("bad request: {e}");
            row.status = Some(400);
            write_audit(&ctx, &row);
            return status_response(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!("sallyport: {e}"),
            );
        }
    };

    let (decision, kreq) = match classified {
        Classified::Discovery => {
            row.verb = "discovery".into();
            (
                Decision::allow("sallyport: API discovery (read-only, non-resource)"),
                None,
            )
        }
        Classified::NonResource => {
            row.verb = "non-resource".into();
            (
                Decision::deny("sallyport: non-resource path not served through the bastion"),
                None,
            )
        }
        Classified::Resource(k) => {
            row.verb = k.verb.clone();
            row.api_group = Some(k.api_group.clone());
            row.resource = Some(k.resource.clone());
            row.subresource = k.subresource.clone();
            row.namespace = k.namespace.clone();
            row.name = k.name.clone();
            row.secret_read = k.api_group.is_empty()
                && k.resource == "secrets"
                && matches!(k.verb.as_str(), "get" | "list" | "watch");
            (ctx.authorizer.kube(&ctx.identity, &k), Some(k))
        }
    };
    // exec/attach: what the stream asks for; for exec, the argv is checked
    // against `[role.exec]` before anything goes upstream (issue 6, point 4).
    let stream_sub = kreq
        .as_ref()
        .filter(|k| k.resource == "pods")
        .and_then(|k| k.subresource.as_deref())
        .filter(|s| matches!(*s, "exec" | "attach"))
        .map(str::to_string);
    let opts = exec::StreamOptions::from_query(query.as_deref());
    let mut exec_shown = None;
    let decision = if stream_sub.as_deref() == Some("exec") {
        let shown = exec::shown(&ctx.mask, &opts.argv.join(" "));
        row.path = format!("{path}?{}", masked_query(&ctx.mask, query.as_deref()));
        exec_shown = Some(shown);
        let d = if decision.verdict == Verdict::Deny {
            decision
        } else {
            exec::combine(
                decision,
                exec::decide_argv(&*ctx.authorizer, &ctx.identity, &opts.argv),
            )
        };
        // Strict reasons may quote the command.
        Decision {
            reason: exec::shown(&ctx.mask, &d.reason),
            ..d
        }
    } else {
        decision
    };
    row.decision = decision.verdict.to_string();
    row.reason = decision.reason.clone();
    let target = kreq
        .as_ref()
        .map(|k| {
            format!(
                "{}/{}",
                k.namespace.as_deref().unwrap_or_default(),
                k.name.as_deref().unwrap_or_default()
            )
        })
        .unwrap_or_default();
    let what = match (&kreq, &exec_shown) {
        (Some(k), Some(cmd)) => format!("{} (command: {cmd})", describe(k)),
        (Some(k), None) => describe(k),
        _ => format!("{method} {path}"),
    };

    match decision.verdict {
        Verdict::Allow => {}
        Verdict::Deny => {
            info!(session = %ctx.session_id, who = %ctx.identity.display(), %what, reason = %decision.reason, "kube request denied");
            row.status = Some(403);
            write_audit(&ctx, &row);
            if let Some(cmd) = &exec_shown {
                exec_event(&ctx, &target, cmd, "deny", &decision.reason);
            }
            return status_response(
                StatusCode::FORBIDDEN,
                "Forbidden",
                &format!("sallyport: {what} denied by {}", decision.reason),
            );
        }
        Verdict::Approve => {
            let approved = match &ctx.approver {
                None => Err("no approver is configured".to_string()),
                Some(a) => {
                    let masked = String::from_utf8_lossy(&(ctx.mask)(what.as_bytes())).into_owned();
                    let ask = ApprovalRequest {
                        requester: (*ctx.identity).clone(),
                        session_id: ctx.session_id.clone(),
                        request: masked,
                        reason: decision.reason.clone(),
                        timeout: ctx.approval_timeout,
                    };
                    info!(session = %ctx.session_id, %what, "kube request waiting for approval");
                    // The approver expires the request itself at
                    // `approval_timeout` (status `expired`); this outer
                    // limit is only a backstop. Were it equal, it could fire
                    // first (it starts before the request row is written)
                    // and the request would read `withdrawn`.
                    let backstop = ctx.approval_timeout + Duration::from_secs(10);
                    match tokio::time::timeout(backstop, a.request(ask)).await {
                        Ok(Ok(true)) => Ok(()),
                        Ok(Ok(false)) => Err("not approved".to_string()),
                        Ok(Err(e)) => Err(e.to_string()),
                        Err(_) => Err("approval timed out".to_string()),
                    }
                }
            };
            match approved {
                Ok(()) => row.reason = format!("{} (approved)", decision.reason),
                Err(why) => {
                    row.decision = Verdict::Deny.to_string();
                    row.reason = format!("{} ({why})", decision.reason);
                    row.status = Some(403);
                    write_audit(&ctx, &row);
                    if let Some(cmd) = &exec_shown {
                        exec_event(&ctx, &target, cmd, "deny", &row.reason);
                    }
                    return status_response(
                        StatusCode::FORBIDDEN,
                        "Forbidden",
                        &format!(
                            "sallyport: {what} needs approval ({}): {why}",
                            decision.reason
                        ),
                    );
                }
            }
        }
    }

    // Allowed (or approved): forward.
    let upgrade = is_upgrade(req.headers());
    let mut plan: Option<StreamPlan> = None;
    if let (true, Some(sub)) = (upgrade, stream_sub.as_deref()) {
        match stream_plan(
            &ctx,
            &req,
            sub,
            &opts,
            kreq.as_ref(),
            query.as_deref(),
            &target,
        ) {
            Ok(p) => {
                if let Some((path, _)) = p.as_ref().and_then(|p| p.recording.as_ref()) {
                    row.recording = Some(path.display().to_string());
                }
                plan = p;
            }
            Err(refusal) => {
                row.decision = Verdict::Deny.to_string();
                row.reason = format!("{} ({})", row.reason, refusal.audit);
                row.status = Some(refusal.code.as_u16());
                write_audit(&ctx, &row);
                return status_response(refusal.code, refusal.reason, refusal.message);
            }
        }
    }
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, ctx.limits.max_body_bytes)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            let too_large = e
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            let (code, reason) = if too_large {
                (StatusCode::PAYLOAD_TOO_LARGE, "RequestEntityTooLarge")
            } else {
                (StatusCode::BAD_REQUEST, "BadRequest")
            };
            row.decision = Verdict::Deny.to_string();
            row.reason = format!("request body: {e}");
            row.status = Some(code.as_u16());
            write_audit(&ctx, &row);
            return status_response(code, reason, &format!("sallyport: request body: {e}"));
        }
    };
    row.bytes_in = body.len() as u64;
    if !body.is_empty() && !matches!(method.as_str(), "GET" | "HEAD") {
        row.body = Some(String::from_utf8_lossy(&(ctx.mask)(&body)).into_owned());
    }

    let mut headers = parts.headers;
    drop_hop_by_hop(&mut headers, upgrade);
    headers.remove(header::HOST);
    headers.remove(header::CONTENT_LENGTH);
    let removed = headers::apply(&mut headers, &ctx.identity, &ctx.session_id);
    if !removed.is_empty() {
        info!(session = %ctx.session_id, removed = ?removed, "kube proxy: stripped client credential/identity headers");
    }
    let mut up = Request::new(kube::client::Body::from(body));
    *up.method_mut() = parts.method;
    *up.uri_mut() = match shown_path.parse() {
        Ok(u) => u,
        Err(_) => {
            row.status = Some(400);
            write_audit(&ctx, &row);
            return status_response(StatusCode::BAD_REQUEST, "BadRequest", "sallyport: bad URI");
        }
    };
    *up.headers_mut() = headers;

    let mut res = match ctx.upstream.client.send(up).await {
        Ok(r) => r,
        Err(e) => {
            warn!(session = %ctx.session_id, error = %e, "kube proxy: upstream failed");
            row.status = Some(502);
            row.latency_ms = Some(start.elapsed().as_millis() as u64);
            write_audit(&ctx, &row);
            return status_response(
                StatusCode::BAD_GATEWAY,
                "InternalError",
                &format!("sallyport: Kubernetes API server unreachable: {e}"),
            );
        }
    };
    row.status = Some(res.status().as_u16());
    row.latency_ms = Some(start.elapsed().as_millis() as u64);
    debug!(session = %ctx.session_id, %what, status = res.status().as_u16(), "kube request forwarded");

    if let Some(client_upgrade) = client_upgrade
        && res.status() == StatusCode::SWITCHING_PROTOCOLS
    {
        let upstream_upgrade = hyper::upgrade::on(&mut res);
        let relay = match plan {
            None => None,
            Some(p) => match (stream::response_encoding(res.headers()), p.required) {
                (Some(enc), _) => Some(p.into_relay(enc)),
                (None, false) => None,
                (None, true) => {
                    row.status = Some(502);
                    row.decision = Verdict::Deny.to_string();
                    row.reason = format!("{} (unreadable stream protocol)", row.reason);
                    write_audit(&ctx, &row);
                    return status_response(
                        StatusCode::BAD_GATEWAY,
                        "InternalError",
                        "sallyport: the API server chose a stream protocol sallyport cannot record or check",
                    );
                }
            },
        };
        let mut out = Response::new(full(Bytes::new()));
        *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        *out.headers_mut() = res.headers().clone();
        let ctx2 = ctx.clone();
        tokio::spawn(async move {
            splice(ctx2, row, client_upgrade, upstream_upgrade, relay).await;
        });
        return out;
    }

    let (parts, body) = res.into_parts();
    let mut headers = parts.headers;
    drop_hop_by_hop(&mut headers, false);
    let counted = CountingBody {
        inner: body.map_err(|e| Box::new(e) as BoxError).boxed_unsync(),
        bytes: 0,
        audit: Some((ctx, row)),
    };
    let mut out = Response::new(counted.boxed_unsync());
    *out.status_mut() = parts.status;
    *out.headers_mut() = headers;
    out
}

/// Open the asciicast file for an exec/attach stream.
fn start_recording(
    ctx: &KubeProxyContext,
    dir: &std::path::Path,
    kreq: Option<&KubeRequest>,
    query: Option<&str>,
) -> Result<(std::path::PathBuf, crate::record::Recorder), crate::record::Error> {
    let command: Vec<String> = url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.into_owned())
        .collect();
    let tty = url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .any(|(k, v)| k == "tty" && (v == "true" || v == "1"));
    let (ns, pod, sub) = kreq
        .map(|k| {
            (
                k.namespace.clone().unwrap_or_default(),
                k.name.clone().unwrap_or_default(),
                k.subresource.clone().unwrap_or_default(),
            )
        })
        .unwrap_or_default();
    let id = format!("{}-kube-{}", ctx.session_id, uuid::Uuid::now_v7());
    let path = crate::record::recording_path(dir, &id);
    let mut env = std::collections::BTreeMap::new();
    env.insert(
        "TERM".to_string(),
        if tty { "xterm" } else { "dumb" }.to_string(),
    );
    let header = crate::record::Header {
        width: 80,
        height: 24,
        timestamp: time::OffsetDateTime::now_utc().unix_timestamp(),
        title: format!(
            "kubectl {sub} {ns}/{pod} by {} [{}]",
            ctx.identity.display(),
            ctx.session_id
        ),
        env,
        command: (!command.is_empty()).then(|| {
            String::from_utf8_lossy(&(ctx.mask)(command.join(" ").as_bytes())).into_owned()
        }),
    };
    let rec = crate::record::Recorder::create(&path, &header)?;
    Ok((path, rec))
}

/// Why an exec/attach stream is refused before it goes upstream.
struct Refusal {
    code: StatusCode,
    reason: &'static str,
    message: &'static str,
    /// Appended to the audit row's reason.
    audit: String,
}

/// How an exec/attach stream will be relayed.
struct StreamPlan {
    /// Recorded, guarded or masked live: a stream protocol the relay cannot
    /// read refuses the session instead of passing it through unread.
    required: bool,
    recording: Option<(std::path::PathBuf, crate::record::Recorder)>,
    masker: crate::mask::Masker,
    live: bool,
    guard: Option<(stream::GuardMode, exec::SharedChecker)>,
    mask: MaskFn,
}

impl StreamPlan {
    fn into_relay(self, enc: stream::Encoding) -> stream::RelayConfig {
        stream::RelayConfig {
            enc,
            recorder: self
                .recording
                .map(|(_, r)| Arc::new(std::sync::Mutex::new(r))),
            masker: self.masker,
            live: self.live,
            mask: self.mask,
            guard: self.guard,
        }
    }
}

/// Decide how an exec/attach upgrade is relayed: the grant's masking (at
/// the time of the request), whether typed lines are guarded (stdin into
/// an interactive shell, or any attach with stdin: the attached process
/// may be one), and the recording. `Ok(None)`: an unread pass-through is
/// acceptable (nothing to record, guard or mask).
fn stream_plan(
    ctx: &KubeProxyContext,
    req: &Request<Incoming>,
    sub: &str,
    opts: &exec::StreamOptions,
    kreq: Option<&KubeRequest>,
    query: Option<&str>,
    target: &str,
) -> Result<Option<StreamPlan>, Refusal> {
    let websocket = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let grant = ctx.authorizer.session(&ctx.identity);
    let masker = crate::mask::Masker::new(&crate::mask::MaskConfig::from_grant(&grant)).map_err(
        |e| Refusal {
            code: StatusCode::INTERNAL_SERVER_ERROR,
            reason: "InternalError",
            message: "sallyport: the masking rules for this session cannot be used, so it does not run",
            audit: format!("masking: {e}"),
        },
    )?;
    let guard_mode = (opts.stdin && (sub == "attach" || exec::is_interactive_shell(&opts.argv)))
        .then_some(if opts.tty {
            stream::GuardMode::Tty
        } else {
            stream::GuardMode::Lines
        });
    let required = ctx.recording_dir.is_some() || guard_mode.is_some() || grant.mask_live;
    if !websocket {
        if !required {
            return Ok(None);
        }
        // SPDY/3.1 multiplexes zlib-compressed streams the relay cannot
        // read; kubectl >= 1.30 speaks WebSocket first anyway.
        return Err(Refusal {
            code: StatusCode::BAD_REQUEST,
            reason: "BadRequest",
            message: "sallyport: exec/attach sessions are recorded and checked and need the WebSocket stream protocol (kubectl 1.30 or newer)",
            audit: "exec/attach is recorded and checked: WebSocket required".into(),
        });
    }
    let recording = match &ctx.recording_dir {
        None => None,
        Some(dir) => match start_recording(ctx, dir, kreq, query) {
            Ok(r) => Some(r),
            Err(e) => {
                warn!(session = %ctx.session_id, error = %e, "kube proxy: cannot record exec stream");
                return Err(Refusal {
                    code: StatusCode::INTERNAL_SERVER_ERROR,
                    reason: "InternalError",
                    message: "sallyport: this session cannot be recorded, so it does not run",
                    audit: format!("recording failed: {e}"),
                });
            }
        },
    };
    Ok(Some(StreamPlan {
        required,
        recording,
        masker,
        live: grant.mask_live,
        guard: guard_mode.map(|m| {
            (
                m,
                Arc::new(exec::LineChecker::new(ctx.clone(), target.to_string()))
                    as exec::SharedChecker,
            )
        }),
        mask: ctx.mask.clone(),
    }))
}

/// The query with `command=` values masked (they are stored in the audit row).
fn masked_query(mask: &MaskFn, query: Option<&str>) -> String {
    let mut out = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if k == "command" {
            out.append_pair(&k, &String::from_utf8_lossy(&mask(v.as_bytes())));
        } else {
            out.append_pair(&k, &v);
        }
    }
    out.finish()
}

/// An `events` row for an exec request refused by policy.
fn exec_event(ctx: &KubeProxyContext, target: &str, cmd: &str, decision: &str, reason: &str) {
    exec::record_event(
        ctx,
        crate::audit::events::Event {
            connection_id: Some(ctx.session_id.as_str()).filter(|s| !s.is_empty()),
            session_id: None,
            kind: "command-blocked",
            subject: Some(&ctx.identity.subject),
            detail: &format!("kubectl exec {target}: {cmd}"),
            decision: Some(decision),
            reason: Some(reason),
        },
    );
}

type Half = Pin<Box<dyn std::future::Future<Output = std::io::Result<u64>> + Send>>;

/// Copy both ways between the two upgraded connections (through the
/// exec relay when there is one), then audit. A relay error (unreadable
/// frame, failed recording write) ends the stream.
async fn splice(
    ctx: KubeProxyContext,
    mut row: KubeRequestRow,
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    relay: Option<stream::RelayConfig>,
) {
    let rec = relay.as_ref().and_then(|r| r.recorder.clone());
    match futures::future::try_join(client, upstream).await {
        Ok((c, u)) => {
            let (cr, cw) = tokio::io::split(TokioIo::new(c));
            let (ur, uw) = tokio::io::split(TokioIo::new(u));
            let (mut up, mut down): (Half, Half) = match relay {
                Some(cfg) => {
                    let (a, b) = stream::relay(cfg, cr, cw, ur, uw);
                    (Box::pin(a), Box::pin(b))
                }
                None => (
                    Box::pin(stream::copy_plain(cr, uw)),
                    Box::pin(stream::copy_plain(ur, cw)),
                ),
            };
            let (mut up_done, mut down_done) = (None, None);
            // Both halves run until each side closes; an error on either
            // (including a failed recording write) ends the whole stream.
            while up_done.is_none() || down_done.is_none() {
                tokio::select! {
                    r = &mut up, if up_done.is_none() => {
                        let failed = r.is_err();
                        up_done = Some(r);
                        if failed { break; }
                    }
                    r = &mut down, if down_done.is_none() => {
                        let failed = r.is_err();
                        down_done = Some(r);
                        if failed { break; }
                    }
                }
            }
            for (r, dir) in [(&up_done, "up"), (&down_done, "down")] {
                match r {
                    Some(Ok(n)) if dir == "up" => row.bytes_in += n,
                    Some(Ok(n)) => row.bytes_out += n,
                    Some(Err(e)) => {
                        debug!(session = %ctx.session_id, error = %e, dir, "kube proxy: upgraded stream ended");
                        row.reason = format!("{} (stream {dir}: {e})", row.reason);
                    }
                    None => {}
                }
            }
        }
        Err(e) => {
            warn!(session = %ctx.session_id, error = %e, "kube proxy: upgrade failed");
            row.reason = format!("{} (upgrade failed: {e})", row.reason);
        }
    }
    if let Some(rec) = rec
        && let Ok(m) = Arc::try_unwrap(rec)
    {
        let rec = match m.into_inner() {
            Ok(r) => r,
            Err(p) => p.into_inner(),
        };
        if let Err(e) = rec.finish() {
            warn!(session = %ctx.session_id, error = %e, "kube proxy: recording not finished cleanly");
        }
    }
    write_audit(&ctx, &row);
}

/// Response body that counts bytes sent and writes the audit row once the
/// body is finished or dropped (client gone mid-watch).
struct CountingBody {
    inner: ProxyBody,
    bytes: u64,
    audit: Option<(KubeProxyContext, KubeRequestRow)>,
}

impl Body for CountingBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &polled
            && let Some(d) = f.data_ref()
        {
            self.bytes += d.len() as u64;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for CountingBody {
    fn drop(&mut self) {
        if let Some((ctx, mut row)) = self.audit.take() {
            row.bytes_out = self.bytes;
            write_audit(&ctx, &row);
        }
    }
}

#[cfg(test)]
mod tests;
