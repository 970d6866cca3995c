//! Module-level tests of the proxy with a policy double (the real engine is
//! exercised by tests/e2e/kubeapi.rs): a recording upstream on 127.0.0.1,
//! the proxy served over an in-memory duplex stream, a hyper client on the
//! other end.

use std::sync::Mutex;

use http_body_util::Empty;
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::identity::{Kind, KubeIdentity};

const BASTION_TOKEN: &str = "bastion-token-unit";

type Seen = Arc<Mutex<Vec<(String, String, HeaderMap)>>>;

/// Upstream that records requests; answers 200 JSON, or 101 + raw echo for
/// upgrade requests.
async fn upstream() -> (u16, Seen) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let seen: Seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let seen = s2.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                    let seen = seen.clone();
                    async move {
                        seen.lock().unwrap().push((
                            req.method().to_string(),
                            req.uri().to_string(),
                            req.headers().clone(),
                        ));
                        if is_upgrade(req.headers()) {
                            let on = hyper::upgrade::on(&mut req);
                            tokio::spawn(async move {
                                if let Ok(up) = on.await {
                                    let mut io = TokioIo::new(up);
                                    let mut buf = [0u8; 64];
                                    while let Ok(n) = io.read(&mut buf).await {
                                        if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                                            break;
                                        }
                                    }
                                }
                            });
                            let mut r = Response::new(full(Bytes::new()));
                            *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                            // Mirror the protocol asked for (first offered subprotocol).
                            if let Some(u) = req.headers().get(header::UPGRADE) {
                                r.headers_mut().insert(header::UPGRADE, u.clone());
                            }
                            if let Some(p) = req
                                .headers()
                                .get(header::SEC_WEBSOCKET_PROTOCOL)
                                .and_then(|v| v.to_str().ok())
                                .and_then(|v| v.split(',').next())
                                .and_then(|v| HeaderValue::from_str(v.trim()).ok())
                            {
                                r.headers_mut().insert(header::SEC_WEBSOCKET_PROTOCOL, p);
                            }
                            r.headers_mut()
                                .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
                            return Ok::<_, Infallible>(r);
                        }
                        Ok(Response::new(full(r#"{"kind":"PodList","items":[]}"#)))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    (port, seen)
}

/// Answers every question with the same decision; masking not live, not strict.
struct Double(Decision);
impl KubeAuthorizer for Double {
    fn kube(&self, _id: &Identity, _req: &KubeRequest) -> Decision {
        self.0.clone()
    }
    fn exec(&self, _id: &Identity, _cmd: &CommandLine) -> Decision {
        self.0.clone()
    }
    fn session(&self, _id: &Identity) -> SessionGrant {
        SessionGrant {
            mask_live: false,
            strict: false,
            ..SessionGrant::none()
        }
    }
}

/// Kube rules allow; exec rules deny `rm` commands, want approval for
/// `touch`, allow the rest; `strict` as given.
struct ExecRules {
    strict: bool,
}
impl KubeAuthorizer for ExecRules {
    fn kube(&self, _id: &Identity, _req: &KubeRequest) -> Decision {
        Decision::allow("t.toml:1 role 'r' kube.allow")
    }
    fn exec(&self, _id: &Identity, cmd: &CommandLine) -> Decision {
        if cmd
            .simple
            .iter()
            .any(|a| a.first().is_some_and(|p| p == "rm"))
        {
            Decision::deny("t.toml:2 role 'r' exec.deny 'rm *'")
        } else if cmd
            .simple
            .iter()
            .any(|a| a.first().is_some_and(|p| p == "touch"))
        {
            Decision::approve("t.toml:3 role 'r' exec.approve 'touch *'")
        } else {
            Decision::allow("t.toml:4 role 'r' exec.allow '*'")
        }
    }
    fn session(&self, _id: &Identity) -> SessionGrant {
        SessionGrant {
            mask_live: false,
            strict: self.strict,
            ..SessionGrant::none()
        }
    }
}

struct FixedApprover(Option<bool>);
impl Approver for FixedApprover {
    fn request(&self, _req: ApprovalRequest) -> BoxFuture<'static, Result<bool, ApprovalError>> {
        let a = self.0;
        Box::pin(async move {
            match a {
                Some(v) => Ok(v),
                // Never answers: the proxy's timeout must end the wait.
                None => futures::future::pending().await,
            }
        })
    }
}

async fn ctx(
    port: u16,
    decision: Decision,
    approver: Option<Arc<dyn Approver>>,
) -> (KubeProxyContext, audit::Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kc.yaml");
    std::fs::write(
        &kc,
        format!("apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster:\n    server: http://127.0.0.1:{port}\ncontexts:\n- name: t\n  context:\n    cluster: t\n    user: b\ncurrent-context: t\nusers:\n- name: b\n  user:\n    token: {BASTION_TOKEN}\n"),
    )
    .unwrap();
    let upstream = Upstream::from_config(&crate::config::KubeConfig {
        kubeconfig: Some(kc),
        context: None,
        api_target: "kubernetes:443".into(),
    })
    .await
    .unwrap();
    let store = audit::Store::in_memory().unwrap();
    let ctx = KubeProxyContext {
        identity: Arc::new(Identity {
            issuer: "cluster".into(),
            subject: "system:serviceaccount:dev:copilot".into(),
            kind: Kind::Agent,
            kube: Some(KubeIdentity {
                namespace: "dev".into(),
                service_account: "copilot".into(),
                pod: None,
            }),
            ..Default::default()
        }),
        session_id: "s-1".into(),
        authorizer: Arc::new(Double(decision)),
        approver,
        approval_timeout: Duration::from_secs(5),
        audit: Some(store.clone()),
        mask: Arc::new(|b: &[u8]| b.to_vec()),
        upstream,
        limits: Limits {
            max_body_bytes: 1024,
            ..Limits::default()
        },
        recording_dir: None,
    };
    (ctx, store, dir)
}

/// Serve `ctx` on a duplex stream; return a hyper client sender for it.
async fn client(ctx: KubeProxyContext) -> hyper::client::conn::http1::SendRequest<ProxyBody> {
    let (a, b) = tokio::io::duplex(64 * 1024);
    tokio::spawn(serve_connection(a, ctx));
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(b))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    send
}

fn get(path: &str) -> Request<ProxyBody> {
    let mut r = Request::new(Empty::new().map_err(|n| match n {}).boxed_unsync());
    *r.uri_mut() = path.parse().unwrap();
    r.headers_mut()
        .insert(header::HOST, HeaderValue::from_static("127.0.0.1:6443"));
    r
}

async fn body_text(r: Response<Incoming>) -> String {
    String::from_utf8_lossy(&r.into_body().collect().await.unwrap().to_bytes()).into_owned()
}

async fn rows(store: &audit::Store, n: usize) -> Vec<KubeRequestRow> {
    for _ in 0..200 {
        let rows = store.list_kube_requests(100).unwrap();
        if rows.len() >= n {
            return rows.into_iter().map(|r| r.row).collect();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("expected {n} audit rows");
}

#[tokio::test]
async fn denied_requests_never_reach_upstream_and_get_a_status() {
    let (port, seen) = upstream().await;
    let (ctx, store, _d) = ctx(
        port,
        Decision::deny("t.toml:3 role 'r' kube.deny 'secrets'"),
        None,
    )
    .await;
    let mut c = client(ctx).await;
    let res = c
        .send_request(get("/api/v1/namespaces/dev/secrets/db"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let v: serde_json::Value = serde_json::from_str(&body_text(res).await).unwrap();
    assert_eq!(v["kind"], "Status");
    assert_eq!(v["reason"], "Forbidden");
    assert_eq!(v["code"], 403);
    assert_eq!(
        v["message"],
        "sallyport: get secrets \"db\" in namespace \"dev\" denied by t.toml:3 role 'r' kube.deny 'secrets'"
    );
    assert!(seen.lock().unwrap().is_empty());
    let r = rows(&store, 1).await;
    assert!(r[0].secret_read);
    assert_eq!(r[0].decision, "deny");
}

#[tokio::test]
async fn allowed_requests_are_impersonated_with_bastion_credentials() {
    let (port, seen) = upstream().await;
    let (ctx, store, _d) = ctx(port, Decision::allow("allow rule"), None).await;
    let mut c = client(ctx).await;
    let mut req = get("/api/v1/namespaces/dev/pods?limit=500");
    let h = req.headers_mut();
    h.insert(
        header::AUTHORIZATION,
        HeaderValue::from_static("Bearer client"),
    );
    h.insert("impersonate-user", HeaderValue::from_static("admin"));
    let res = c.send_request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(body_text(res).await.contains("PodList"));
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let (m, uri, h) = &seen[0];
    assert_eq!(
        (m.as_str(), uri.as_str()),
        ("GET", "/api/v1/namespaces/dev/pods?limit=500")
    );
    let auth: Vec<_> = h.get_all(header::AUTHORIZATION).iter().collect();
    assert_eq!(auth, [format!("Bearer {BASTION_TOKEN}").as_str()]);
    let users: Vec<_> = h.get_all("impersonate-user").iter().collect();
    assert_eq!(users, ["system:serviceaccount:dev:copilot"]);
    assert_eq!(h.get(headers::EXTRA_SESSION).unwrap(), "s-1");
    let r = rows(&store, 1).await;
    assert_eq!((r[0].verb.as_str(), r[0].status), ("list", Some(200)));
    assert_eq!(
        r[0].bytes_out,
        r#"{"kind":"PodList","items":[]}"#.len() as u64
    );
}

#[tokio::test]
async fn approval_gates_requests() {
    let (port, seen) = upstream().await;
    for (approver, expect, why) in [
        (None, StatusCode::FORBIDDEN, "no approver is configured"),
        (Some(false), StatusCode::FORBIDDEN, "not approved"),
        (Some(true), StatusCode::OK, ""),
    ] {
        let a = approver.map(|v| Arc::new(FixedApprover(Some(v))) as Arc<dyn Approver>);
        let (ctx, store, _d) = ctx(port, Decision::approve("approve rule"), a).await;
        let mut c = client(ctx).await;
        let mut req = get("/api/v1/namespaces/prod/pods/web");
        *req.method_mut() = hyper::Method::DELETE;
        let res = c.send_request(req).await.unwrap();
        assert_eq!(res.status(), expect, "{approver:?}");
        let text = body_text(res).await;
        assert!(text.contains(why), "{text}");
        let r = rows(&store, 1).await;
        if expect == StatusCode::OK {
            assert_eq!(r[0].decision, "approve");
            assert_eq!(r[0].reason, "approve rule (approved)");
        } else {
            assert_eq!(r[0].decision, "deny");
            assert!(text.contains("needs approval (approve rule)"), "{text}");
        }
    }
    // Only the approved one went through.
    assert_eq!(seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn unanswered_approval_times_out_as_denied() {
    let (port, seen) = upstream().await;
    let (mut ctx, _store, _d) = ctx(
        port,
        Decision::approve("approve rule"),
        Some(Arc::new(FixedApprover(None))),
    )
    .await;
    ctx.approval_timeout = Duration::from_millis(50);
    let mut c = client(ctx).await;
    let res = c
        .send_request(get("/api/v1/namespaces/prod/pods/web"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert!(body_text(res).await.contains("approval timed out"));
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn oversized_bodies_are_refused() {
    let (port, seen) = upstream().await;
    let (ctx, store, _d) = ctx(port, Decision::allow("allow"), None).await;
    let mut c = client(ctx).await;
    let mut req = Request::new(full(vec![b'x'; 4096]));
    *req.method_mut() = hyper::Method::POST;
    *req.uri_mut() = "/api/v1/namespaces/dev/configmaps".parse().unwrap();
    let res = c.send_request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(seen.lock().unwrap().is_empty());
    assert_eq!(rows(&store, 1).await[0].status, Some(413));
}

#[tokio::test]
async fn upgrades_are_spliced_both_ways() {
    let (port, seen) = upstream().await;
    let (ctx, store, _d) = ctx(port, Decision::allow("allow"), None).await;
    let mut c = client(ctx).await;
    // Not recorded, not a shell, masking not live: SPDY may pass unread.
    let mut req = get("/api/v1/namespaces/dev/pods/web/exec?command=cat&stdin=true");
    *req.method_mut() = hyper::Method::POST;
    req.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    req.headers_mut()
        .insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
    req.headers_mut().insert(
        "x-stream-protocol-version",
        HeaderValue::from_static("v4.channel.k8s.io"),
    );
    let res = c.send_request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
    let up = hyper::upgrade::on(res).await.unwrap();
    let mut io = TokioIo::new(up);
    io.write_all(b"ping through the splice").await.unwrap();
    let mut buf = vec![0u8; 23];
    io.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping through the splice");
    drop(io);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen[0].2.get("x-stream-protocol-version").unwrap(),
        "v4.channel.k8s.io"
    );
    assert_eq!(seen[0].2.get(header::UPGRADE).unwrap(), "SPDY/3.1");
    let r = rows(&store, 1).await;
    assert_eq!((r[0].verb.as_str(), r[0].status), ("create", Some(101)));
    assert_eq!((r[0].bytes_in, r[0].bytes_out), (23, 23));
}

#[tokio::test]
async fn unreachable_upstream_is_a_clean_502() {
    // A port nothing listens on (bound, then released).
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (ctx, store, _d) = ctx(port, Decision::allow("allow"), None).await;
    let mut c = client(ctx).await;
    let res = c
        .send_request(get("/api/v1/namespaces/dev/pods"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    assert!(
        body_text(res)
            .await
            .contains("Kubernetes API server unreachable")
    );
    assert_eq!(rows(&store, 1).await[0].status, Some(502));
}

fn ws_frame(payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut v = vec![
        0x82,
        if mask.is_some() { 0x80 } else { 0 } | payload.len() as u8,
    ];
    match mask {
        Some(k) => {
            v.extend_from_slice(&k);
            v.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => v.extend_from_slice(payload),
    }
    v
}

#[tokio::test]
async fn recorded_exec_refuses_spdy() {
    let (port, seen) = upstream().await;
    let (mut ctx, store, d) = ctx(port, Decision::allow("allow"), None).await;
    ctx.recording_dir = Some(d.path().join("rec"));
    let mut c = client(ctx).await;
    let mut req = get("/api/v1/namespaces/dev/pods/web/exec?command=sh");
    *req.method_mut() = hyper::Method::POST;
    req.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    req.headers_mut()
        .insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
    let res = c.send_request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(body_text(res).await.contains("WebSocket"));
    assert!(seen.lock().unwrap().is_empty());
    assert_eq!(rows(&store, 1).await[0].decision, "deny");
}

#[tokio::test]
async fn websocket_exec_is_recorded() {
    let (port, _seen) = upstream().await;
    let (mut ctx, store, d) = ctx(port, Decision::allow("allow"), None).await;
    ctx.recording_dir = Some(d.path().join("rec"));
    let mut c = client(ctx).await;
    let mut req = get("/api/v1/namespaces/dev/pods/web/exec?command=bash&command=-i&tty=true");
    let h = req.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static("v5.channel.k8s.io, v4.channel.k8s.io"),
    );
    let res = c.send_request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
    let mut io = TokioIo::new(hyper::upgrade::on(res).await.unwrap());
    // stdin from the client, then a frame the echoing upstream returns as
    // stdout (channel 1) to the client.
    let stdin = ws_frame(b"\x00whoami\r", Some([7, 7, 7, 7]));
    let stdout = ws_frame(b"\x01root\r\n", Some([3, 1, 4, 1]));
    io.write_all(&stdin).await.unwrap();
    io.write_all(&stdout).await.unwrap();
    // Both come back, re-framed (unmasked, as server frames are).
    let mut reader = stream::FrameReader::default();
    let mut frames = Vec::new();
    let mut buf = [0u8; 256];
    while frames.len() < 2 {
        let n = io.read(&mut buf).await.unwrap();
        assert!(n > 0);
        frames.extend(reader.push(&buf[..n]).unwrap());
    }
    assert_eq!(frames[1].payload, b"\x01root\r\n");
    drop(io);
    let r = rows(&store, 1).await;
    let path = r[0].recording.clone().expect("recording path audited");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(r#""command":"bash -i""#), "{text}");
    assert!(text.contains(r#""i", "whoami\r""#), "{text}");
    assert!(text.contains(r#""o", "root\r\n""#), "{text}");
}

#[tokio::test]
async fn api_target_matching() {
    let (port, _seen) = upstream().await;
    let (c, _store, _d) = ctx(port, Decision::allow("a"), None).await;
    let mut p = KubeProxy {
        api_target: "kubernetes".into(),
        upstream: c.upstream.clone(),
        authorizer: c.authorizer.clone(),
        approver: None,
        audit: None,
        mask: c.mask.clone(),
        limits: Limits::default(),
        recording_dir: None,
    };
    assert!(p.is_api_target("kubernetes", 443));
    assert!(p.is_api_target("Kubernetes", 6443));
    assert!(!p.is_api_target("kubernetes.evil", 443));
    assert!(!p.is_api_target("kube", 443));
    p.api_target = "kubernetes:443".into();
    assert!(p.is_api_target("kubernetes", 443));
    assert!(!p.is_api_target("kubernetes", 80));
    let ctx = p.context(Identity::default(), "conn-9", Duration::from_secs(7));
    assert_eq!(ctx.session_id, "conn-9");
    assert_eq!(ctx.approval_timeout, Duration::from_secs(7));
}

#[tokio::test]
async fn unrecordable_exec_does_not_run() {
    let (port, seen) = upstream().await;
    let (mut ctx, store, d) = ctx(port, Decision::allow("allow"), None).await;
    // A regular file where the recordings directory should be.
    let blocker = d.path().join("not-a-dir");
    std::fs::write(&blocker, b"x").unwrap();
    ctx.recording_dir = Some(blocker);
    let mut c = client(ctx).await;
    let mut req = get("/api/v1/namespaces/dev/pods/web/exec?command=sh");
    let h = req.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static("v5.channel.k8s.io"),
    );
    let res = c.send_request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(body_text(res).await.contains("cannot be recorded"));
    assert!(seen.lock().unwrap().is_empty());
    let r = rows(&store, 1).await;
    assert_eq!(r[0].status, Some(500));
    assert!(r[0].reason.contains("recording failed"), "{}", r[0].reason);
}

#[tokio::test]
async fn unknown_stream_protocol_is_refused_when_recording() {
    let (port, _seen) = upstream().await;
    let (mut ctx, store, d) = ctx(port, Decision::allow("allow"), None).await;
    ctx.recording_dir = Some(d.path().join("rec"));
    let mut c = client(ctx).await;
    let mut req = get("/api/v1/namespaces/dev/pods/web/attach");
    let h = req.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    // The (mirroring) upstream picks this unreadable subprotocol.
    h.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static("x-private.example"),
    );
    let res = c.send_request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(rows(&store, 1).await[0].decision, "deny");
}

fn exec_request(query: &str) -> Request<ProxyBody> {
    let mut req = get(&format!("/api/v1/namespaces/dev/pods/web/exec?{query}"));
    let h = req.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static("v5.channel.k8s.io"),
    );
    req
}

#[tokio::test]
async fn exec_argv_denied_by_exec_rules_never_reaches_upstream() {
    let (port, seen) = upstream().await;
    let (mut ctx, store, _d) = ctx(port, Decision::allow("unused"), None).await;
    ctx.authorizer = Arc::new(ExecRules { strict: false });
    let mut c = client(ctx).await;
    // Hidden inside `sh -c`, after an allowed command.
    let res = c
        .send_request(exec_request(
            "command=sh&command=-c&command=echo+hi%3B+rm+-rf+%2Fx&stdout=true",
        ))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let body = body_text(res).await;
    assert!(body.contains(r#""kind":"Status""#), "{body}");
    assert!(
        body.contains(
            "(command: sh -c echo hi; rm -rf /x) denied by t.toml:2 role 'r' exec.deny 'rm *'"
        ),
        "{body}"
    );
    assert!(seen.lock().unwrap().is_empty());
    let r = rows(&store, 1).await;
    assert_eq!((r[0].decision.as_str(), r[0].status), ("deny", Some(403)));
    assert!(r[0].reason.contains("exec.deny"), "{}", r[0].reason);
    let ev = store.list_events(Some("command-blocked"), 10).unwrap();
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(
        ev[0].detail,
        "kubectl exec dev/web: sh -c echo hi; rm -rf /x"
    );
    assert_eq!(ev[0].connection_id.as_deref(), Some("s-1"));
}

#[tokio::test]
async fn exec_argv_under_approve_waits_for_the_approver() {
    // Refused: nothing goes upstream.
    let (port, seen) = upstream().await;
    let (mut ctx, store, _d) = ctx(
        port,
        Decision::allow("unused"),
        Some(Arc::new(FixedApprover(Some(false))) as Arc<dyn Approver>),
    )
    .await;
    ctx.authorizer = Arc::new(ExecRules { strict: false });
    let mut c = client(ctx).await;
    let res = c
        .send_request(exec_request("command=touch&command=%2Fdata%2Fready"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    assert!(body_text(res).await.contains("needs approval"));
    assert!(seen.lock().unwrap().is_empty());
    assert_eq!(rows(&store, 1).await[0].decision, "deny");

    // Approved: forwarded.
    let (mut ctx, store, _d) = ctx_for(port, Some(true)).await;
    ctx.authorizer = Arc::new(ExecRules { strict: false });
    let mut c = client(ctx).await;
    let res = c
        .send_request(exec_request("command=touch&command=%2Fdata%2Fready"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(seen.lock().unwrap().len(), 1);
    drop(res);
    let r = rows(&store, 1).await;
    assert_eq!(r[0].decision, "approve");
    assert!(r[0].reason.contains("(approved)"), "{}", r[0].reason);
}

async fn ctx_for(
    port: u16,
    answer: Option<bool>,
) -> (KubeProxyContext, audit::Store, tempfile::TempDir) {
    ctx(
        port,
        Decision::allow("unused"),
        Some(Arc::new(FixedApprover(answer)) as Arc<dyn Approver>),
    )
    .await
}

#[tokio::test]
async fn typed_lines_are_checked_and_unsure_ones_denied_when_strict() {
    use crate::guard::line::{Certainty, Submitted};
    use exec::{LineCheck, LineOutcome};
    let (port, _seen) = upstream().await;
    let (mut ctx, store, _d) = ctx(port, Decision::allow("unused"), None).await;
    let sub = |line: &str, certainty: Certainty| Submitted {
        line: line.into(),
        certainty,
    };
    ctx.authorizer = Arc::new(ExecRules { strict: false });
    let lax = exec::LineChecker::new(ctx.clone(), "dev/web".into());
    assert_eq!(
        lax.check(&sub("ls -l", Certainty::Typed)),
        LineOutcome::Allow
    );
    assert_eq!(lax.check(&sub("   ", Certainty::Typed)), LineOutcome::Allow);
    assert_eq!(
        lax.check(&sub("ls", Certainty::Unsure("Tab".into()))),
        LineOutcome::Allow
    );
    match lax.check(&sub("cd /; rm -rf x", Certainty::Typed)) {
        LineOutcome::Block { reason, shown } => {
            assert!(reason.contains("exec.deny 'rm *'"), "{reason}");
            assert_eq!(shown, "cd /; rm -rf x");
        }
        other => panic!("{other:?}"),
    }
    // Under `approve`: the relay holds the line and asks; no approver
    // configured here, so the answer is no (audited).
    match lax.check(&sub("touch x", Certainty::Typed)) {
        LineOutcome::Approve { reason, shown } => {
            assert!(reason.contains("exec.approve 'touch *'"), "{reason}");
            let why = lax.approve(&shown, &reason).await.unwrap_err();
            assert!(why.contains("no approver"), "{why}");
        }
        other => panic!("{other:?}"),
    }
    ctx.authorizer = Arc::new(ExecRules { strict: true });
    let strict = exec::LineChecker::new(ctx, "dev/web".into());
    match strict.check(&sub("ls", Certainty::Unsure("history recall".into()))) {
        LineOutcome::Block { reason, .. } => {
            assert!(
                reason.contains("history recall") && reason.contains("strict"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
    let blocked = store.list_events(Some("command-blocked"), 10).unwrap();
    assert_eq!(blocked.len(), 3, "{blocked:?}");
    assert!(
        blocked
            .iter()
            .any(|e| e.detail == "kubectl exec dev/web: cd /; rm -rf x")
    );
    let allowed = store.list_events(Some("command-allowed"), 10).unwrap();
    assert_eq!(allowed.len(), 2, "{allowed:?}");
}

#[tokio::test]
async fn guarded_shell_refuses_spdy_even_unrecorded() {
    // Not recorded, masking not live, but stdin into a shell must be
    // line-checked: SPDY cannot be read, so it is refused before upstream.
    let (port, seen) = upstream().await;
    let (ctx, store, _d) = ctx(port, Decision::allow("allow"), None).await;
    let mut c = client(ctx).await;
    let mut req = get("/api/v1/namespaces/dev/pods/web/exec?command=sh&stdin=true&tty=true");
    *req.method_mut() = hyper::Method::POST;
    req.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    req.headers_mut()
        .insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
    let res = c.send_request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(body_text(res).await.contains("WebSocket"));
    assert!(seen.lock().unwrap().is_empty());
    let r = rows(&store, 1).await;
    assert_eq!(r[0].decision, "deny");
    assert!(
        r[0].reason.contains("WebSocket required"),
        "{}",
        r[0].reason
    );
}

#[tokio::test]
async fn exec_command_in_the_audit_path_is_masked() {
    let (port, _seen) = upstream().await;
    let (mut ctx, store, _d) = ctx(port, Decision::allow("allow"), None).await;
    let masker = crate::mask::Masker::builtin().unwrap();
    ctx.mask = Arc::new(move |b: &[u8]| masker.mask(b).bytes);
    ctx.authorizer = Arc::new(ExecRules { strict: false });
    let mut c = client(ctx).await;
    // Denied (rm), so nothing runs; the row still holds the command.
    let res = c
        .send_request(exec_request(
            "command=rm&command=-rf&command=password%3Dhunter2&stdout=true",
        ))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let body = body_text(res).await;
    assert!(!body.contains("hunter2"), "{body}");
    let r = rows(&store, 1).await;
    assert!(!r[0].path.contains("hunter2"), "{}", r[0].path);
    assert!(r[0].path.contains("MASKED"), "{}", r[0].path);
    let ev = store.list_events(Some("command-blocked"), 10).unwrap();
    assert!(!ev[0].detail.contains("hunter2"), "{ev:?}");
}

#[tokio::test]
async fn typed_line_approval_goes_through_the_approver() {
    use exec::LineCheck;
    let (port, _seen) = upstream().await;
    for (answer, ok) in [(Some(true), true), (Some(false), false)] {
        let (mut ctx, store, _d) = ctx_for(port, answer).await;
        ctx.authorizer = Arc::new(ExecRules { strict: false });
        let c = exec::LineChecker::new(ctx, "dev/web".into());
        let r = c
            .approve("touch x", "t.toml:3 role 'r' exec.approve 'touch *'")
            .await;
        assert_eq!(r.is_ok(), ok, "{r:?}");
        let kind = if ok {
            "command-approved"
        } else {
            "command-blocked"
        };
        let ev = store.list_events(Some(kind), 10).unwrap();
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert_eq!(ev[0].detail, "kubectl exec dev/web: touch x");
    }
    // An approver that never answers: the grant's timeout refuses.
    let (mut ctx, _store, _d) = ctx_for(port, None).await;
    ctx.approval_timeout = Duration::from_millis(50);
    let c = exec::LineChecker::new(ctx, "dev/web".into());
    let why = c.approve("touch x", "r").await.unwrap_err();
    assert!(why.contains("timed out"), "{why}");
}
