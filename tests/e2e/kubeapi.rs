//! The Kubernetes API proxy (`sallyport::tunnel::kubeapi`) driven by the
//! real `kubectl`, in front of the test Kubernetes API server from
//! `support::kubeapi_http` (no real API server can run here). The proxy is
//! served on a local TCP port exactly as the SSH layer serves it inside a
//! `direct-tcpip` channel: an accept loop calling `serve_connection`.
//!
//! Policies are written in the docs/policy.md format and evaluated by the
//! real engine (`Policy::load_dir`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use sallyport::audit::Store;
use sallyport::audit::kube::KubeRequestRecord;
use sallyport::identity::{Identity, KubeIdentity};
use sallyport::policy::{Policy, PolicyHandle};
use sallyport::tunnel::kubeapi::{
    self, ApprovalError, ApprovalRequest, Approver, KubeAuthorizer, KubeProxyContext, Limits,
    MaskFn, Upstream, serve_connection,
};

use crate::support::kubeapi_http::{BASTION_TOKEN, TestKubeApi};
use crate::support::{Run, run_cmd, wait_for};

/// The token kubectl is given: it must never reach the API server.
const CLIENT_TOKEN: &str = "client-own-token-must-not-pass";

/// The policy every test here uses (docs/policy.md format).
const POLICY: &str = r#"
[[role]]
name = "copilot-agents"

[role.match]
kind = "agent"
namespace = ["dev"]
service_account = ["copilot"]

[role.kube]
allow = [
  { verbs = ["get", "list", "watch"], resources = ["pods", "pods/log"], namespaces = ["dev"] },
  { verbs = ["create"], resources = ["pods/exec"], namespaces = ["dev"] },
]
deny = [{ verbs = ["*"], resources = ["secrets"] }]
approve = [{ verbs = ["delete"], resources = ["pods"], namespaces = ["dev"] }]

# Commands run in pods through `kubectl exec` (argv and typed lines).
[role.exec]
allow = ["cat", "sh", "echo *", "touch *", "printf-split *", "exit"]
deny = ["rm -rf *", "touch denied*"]
approve = ["touch approved*"]

[role.mask]
live = true
"#;

/// The real policy engine over a directory holding `POLICY`.
fn policy_engine(dir: &std::path::Path) -> Arc<dyn KubeAuthorizer> {
    let pdir = dir.join("policies");
    std::fs::create_dir_all(&pdir).unwrap();
    std::fs::write(pdir.join("copilot.toml"), POLICY).unwrap();
    Arc::new(PolicyHandle::new(Policy::load_dir(&pdir).unwrap()))
}

/// An approver standing in for a human: answers `answer`, remembers the ask.
struct TestApprover {
    answer: bool,
    asked: Arc<std::sync::Mutex<Vec<ApprovalRequest>>>,
}

impl Approver for TestApprover {
    fn request(&self, req: ApprovalRequest) -> BoxFuture<'static, Result<bool, ApprovalError>> {
        self.asked.lock().unwrap().push(req);
        let a = self.answer;
        Box::pin(async move { Ok(a) })
    }
}

fn agent() -> Identity {
    Identity {
        issuer: "cluster".into(),
        subject: "system:serviceaccount:dev:copilot".into(),
        kind: sallyport::identity::Kind::Agent,
        groups: vec!["agents".into()],
        kube: Some(KubeIdentity {
            namespace: "dev".into(),
            service_account: "copilot".into(),
            pod: Some("copilot-0".into()),
        }),
        on_behalf_of: Some("alice@example.com".into()),
        ..Default::default()
    }
}

struct Proxy {
    /// Keeps the proxy and the test API server running.
    _rt: tokio::runtime::Runtime,
    api: TestKubeApi,
    port: u16,
    dir: tempfile::TempDir,
    store: Store,
    kubeconfig: PathBuf,
    asked: Arc<std::sync::Mutex<Vec<ApprovalRequest>>>,
}

impl Proxy {
    fn start(approve: Option<bool>, limits: Limits) -> Proxy {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let api = TestKubeApi::start(&rt);
        let cfg = sallyport::config::KubeConfig {
            kubeconfig: Some(api.bastion_kubeconfig(dir.path())),
            context: None,
            api_target: "kubernetes:443".into(),
        };
        // The production constructor: kubeconfig -> kube::Client.
        let upstream = rt.block_on(Upstream::from_config(&cfg)).unwrap();
        let store = Store::open(&dir.path().join("audit.db")).unwrap();
        let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
        let approver: Option<Arc<dyn Approver>> = approve.map(|answer| {
            Arc::new(TestApprover {
                answer,
                asked: asked.clone(),
            }) as Arc<dyn Approver>
        });
        // The built-in detectors, as `api_target` wires them.
        let masker = sallyport::mask::Masker::builtin().unwrap();
        let mask: MaskFn = Arc::new(move |b: &[u8]| masker.mask(b).bytes);
        let ctx = KubeProxyContext {
            identity: Arc::new(agent()),
            session_id: "sess-e2e-1".into(),
            authorizer: policy_engine(dir.path()),
            approver,
            approval_timeout: Duration::from_secs(20),
            audit: Some(store.clone()),
            mask,
            upstream,
            limits,
            recording_dir: Some(dir.path().join("recordings")),
        };
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        rt.spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(serve_connection(s, ctx.clone()));
            }
        });
        // The kubeconfig `sallyport login` writes: no credentials at all.
        let kubeconfig = dir.path().join("client-kubeconfig.yaml");
        std::fs::write(
            &kubeconfig,
            kubeapi::kubeconfig::kubeconfig(port, Some("dev")),
        )
        .unwrap();
        Proxy {
            _rt: rt,
            api,
            port,
            dir,
            store,
            kubeconfig,
            asked,
        }
    }

    fn kubectl_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("kubectl");
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", self.dir.path())
            .arg("--cache-dir")
            .arg(self.dir.path().join("kube-cache"))
            // Credentials and a claimed identity of the client's own, to
            // prove they never pass. (kubectl 1.32 does not send bearer
            // tokens to a plain-http server at all; the raw-request test
            // covers `Authorization`. It does send `--as`.)
            .args([
                "--token",
                CLIENT_TOKEN,
                "--as",
                "admin",
                "--as-group",
                "system:masters",
            ])
            .args(args);
        cmd
    }

    fn kubectl(&self, args: &[&str], stdin: Option<&[u8]>) -> Run {
        run_cmd(
            self.kubectl_cmd(args),
            stdin,
            Duration::from_secs(60),
            self.context(),
        )
    }

    fn context(&self) -> String {
        format!(
            "--- upstream saw ---\n{:#?}\n--- audit ---\n{:#?}",
            self.api.requests(),
            self.store.list_kube_requests(50).unwrap_or_default()
        )
    }

    /// Audit rows matching `f`, waiting for them (rows land when a response
    /// body finishes, possibly just after the client exits).
    fn audited(&self, f: impl Fn(&KubeRequestRecord) -> bool) -> Vec<KubeRequestRecord> {
        wait_for(Duration::from_secs(10), || {
            let rows: Vec<_> = self
                .store
                .list_kube_requests(1000)
                .unwrap()
                .into_iter()
                .filter(|r| f(r))
                .collect();
            (!rows.is_empty()).then_some(rows)
        })
        .unwrap_or_else(|| panic!("no matching audit row\n{}", self.context()))
    }

    /// Send raw bytes, read the whole answer (the proxy closes after errors
    /// and after `Connection: close`).
    fn raw(&self, bytes: &[u8]) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let _ = s.write_all(bytes);
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

#[test]
fn kubeapi_get_secret_is_denied_with_a_readable_status() {
    let p = Proxy::start(None, Limits::default());
    let r = p
        .kubectl(&["get", "secret", "db", "-o", "json"], None)
        .failure();
    let err = r.stderr();
    assert!(
        err.contains("Error from server (Forbidden): sallyport: get secrets \"db\" in namespace \"dev\" denied by"),
        "{}",
        r.explain()
    );
    assert!(!r.stdout().contains("aHVudGVyMg"), "{}", r.explain());
    // Discovery went upstream as the agent, never as the claimed admin.
    let seen = p.api.requests();
    assert!(!seen.is_empty(), "{}", r.explain());
    for s in &seen {
        assert_eq!(
            s.header_all("authorization"),
            [format!("Bearer {BASTION_TOKEN}")],
            "{s:?}"
        );
        assert_eq!(
            s.header_all("impersonate-user"),
            ["system:serviceaccount:dev:copilot"],
            "{s:?}"
        );
        assert!(
            !s.header_all("impersonate-group")
                .iter()
                .any(|g| g == "system:masters"),
            "{s:?}"
        );
    }
    // Nothing that policy denied was forwarded.
    assert!(
        p.api
            .requests_to("/api/v1/namespaces/dev/secrets")
            .is_empty(),
        "{}",
        r.explain()
    );
    let rows = p.audited(|r| r.row.resource.as_deref() == Some("secrets"));
    let row = &rows[0].row;
    assert_eq!(row.decision, "deny");
    assert_eq!(row.status, Some(403));
    assert!(row.secret_read, "secret reads are flagged even when denied");
    assert_eq!(row.verb, "get");
    assert_eq!(row.namespace.as_deref(), Some("dev"));
    assert_eq!(row.name.as_deref(), Some("db"));
    assert_eq!(row.connection_id.as_deref(), Some("sess-e2e-1"));
}

#[test]
fn kubeapi_bad_requests_get_clean_errors_are_audited_and_never_forwarded() {
    let p = Proxy::start(
        None,
        Limits {
            max_head_bytes: 16 * 1024,
            ..Limits::default()
        },
    );
    // Encoded traversal, plain traversal, absolute-form target.
    for (req, why) in [
        (
            "GET /api/v1/namespaces/%2e%2e/secrets HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            "percent-encoded",
        ),
        (
            "GET /api/v1/namespaces/dev/../kube-system/secrets HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            "not normalised",
        ),
        (
            "GET /api/v1/namespaces/dev/pods/%2fetc HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            "percent-encoded",
        ),
        (
            "GET http://evil.example/api/v1/namespaces/dev/pods HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            "start with",
        ),
    ] {
        let out = p.raw(req.as_bytes());
        assert!(out.starts_with("HTTP/1.1 400"), "{req:?} -> {out}");
        assert!(
            out.contains(r#""kind":"Status""#) && out.contains(r#""reason":"BadRequest""#),
            "{out}"
        );
        assert!(out.contains(why), "{req:?} -> {out}");
    }
    // Malformed HTTP and a huge header: hyper answers 400 / 431 and closes.
    let out = p.raw(b"HELLO THERE\r\n\x00\x01\r\n\r\n");
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    let huge = format!(
        "GET /api/v1/namespaces/dev/pods HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let out = p.raw(huge.as_bytes());
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    let many: String = (0..300).map(|i| format!("X-H{i}: v\r\n")).collect();
    let out = p.raw(format!("GET /api HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes());
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");

    assert!(p.api.requests().is_empty(), "{}", p.context());
    let rows = p.audited(|r| r.row.verb == "invalid");
    assert!(
        wait_for(Duration::from_secs(10), || {
            let n = p
                .store
                .list_kube_requests(100)
                .unwrap()
                .iter()
                .filter(|r| r.row.verb == "invalid" && r.row.decision == "deny")
                .count();
            (n == 7).then_some(())
        })
        .is_some(),
        "expected 7 audited bad requests, first: {rows:?}\n{}",
        p.context()
    );
    let statuses: Vec<_> = p
        .store
        .list_kube_requests(100)
        .unwrap()
        .into_iter()
        .map(|r| r.row.status)
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == Some(400)).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == Some(431)).count(),
        2,
        "{statuses:?}"
    );
}

#[test]
fn kubeapi_non_resource_paths_are_refused_discovery_is_served() {
    let p = Proxy::start(None, Limits::default());
    let out = p.raw(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    let out = p.raw(b"GET /version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("v1.32.0-sallyport-test"), "{out}");
    let seen = p.api.requests();
    assert_eq!(seen.len(), 1, "{seen:#?}");
    // Even discovery goes upstream as the caller, with the bastion's token.
    assert_eq!(
        seen[0].header("impersonate-user").as_deref(),
        Some("system:serviceaccount:dev:copilot")
    );
    assert_eq!(
        seen[0].header("authorization"),
        Some(format!("Bearer {BASTION_TOKEN}"))
    );
}

#[test]
fn kubeapi_kubectl_get_pods_is_impersonated_and_client_credentials_stripped() {
    let p = Proxy::start(None, Limits::default());
    // kubectl is given its own token and asks to impersonate an admin.
    let r = p
        .kubectl(
            &[
                "get",
                "pods",
                "-o",
                "name",
                "--as",
                "admin",
                "--as-group",
                "system:masters",
            ],
            None,
        )
        .success();
    assert!(r.stdout().contains("pod/web-1"), "{}", r.explain());
    assert!(r.stdout().contains("pod/web-2"), "{}", r.explain());
    let list = p.api.requests_to("/api/v1/namespaces/dev/pods");
    assert_eq!(list.len(), 1, "{}", r.explain());
    let seen = &list[0];
    assert_eq!(
        seen.header_all("impersonate-user"),
        ["system:serviceaccount:dev:copilot"]
    );
    assert_eq!(
        seen.header_all("impersonate-group"),
        [
            "system:serviceaccounts",
            "system:serviceaccounts:dev",
            "agents"
        ]
    );
    assert_eq!(
        seen.header("impersonate-extra-sallyport-on-behalf-of")
            .as_deref(),
        Some("alice@example.com")
    );
    assert_eq!(
        seen.header("impersonate-extra-sallyport-session")
            .as_deref(),
        Some("sess-e2e-1")
    );
    // On every request: only the bastion's token, never the client's or admin.
    for s in p.api.requests() {
        assert_eq!(
            s.header_all("authorization"),
            [format!("Bearer {BASTION_TOKEN}")],
            "{s:?}"
        );
        for (k, v) in &s.headers {
            assert!(!v.contains(CLIENT_TOKEN), "{k}: {v}");
            assert!(
                !(k.starts_with("impersonate") && (v == "admin" || v == "system:masters")),
                "{k}: {v}"
            );
        }
    }
    let rows = p.audited(|r| r.row.verb == "list" && r.row.resource.as_deref() == Some("pods"));
    assert_eq!(rows[0].row.decision, "allow");
    assert_eq!(rows[0].row.status, Some(200));
    assert!(rows[0].row.bytes_out > 0);
    assert!(!rows[0].row.secret_read);
}

#[test]
fn kubeapi_forged_headers_in_raw_requests_are_stripped() {
    let p = Proxy::start(None, Limits::default());
    let out = p.raw(
        b"GET /api/v1/namespaces/dev/pods HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer stolen-admin-token\r\nImpersonate-User: admin\r\nImpersonate-Group: system:masters\r\nImpersonate-Uid: 0\r\nImpersonate-Extra-sallyport-on-behalf-of: mallory\r\nX-Remote-User: admin\r\nX-Remote-Group: system:masters\r\nProxy-Authorization: Basic eDp5\r\nConnection: close\r\n\r\n",
    );
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let seen = p.api.requests_to("/api/v1/namespaces/dev/pods");
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(
        s.header_all("authorization"),
        [format!("Bearer {BASTION_TOKEN}")]
    );
    assert_eq!(
        s.header_all("impersonate-user"),
        ["system:serviceaccount:dev:copilot"]
    );
    assert!(
        !s.header_all("impersonate-group")
            .contains(&"system:masters".to_string())
    );
    assert!(s.header("impersonate-uid").is_none());
    assert_eq!(
        s.header_all("impersonate-extra-sallyport-on-behalf-of"),
        ["alice@example.com"]
    );
    assert!(s.header("x-remote-user").is_none() && s.header("x-remote-group").is_none());
    assert!(s.header("proxy-authorization").is_none());
}

#[test]
fn kubeapi_kubectl_logs_follow_streams_through() {
    let p = Proxy::start(None, Limits::default());
    let mut cmd = p.kubectl_cmd(&["logs", "-f", "web-1"]);
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(l) = line else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    // The test API server holds the second line until released: the first
    // line can only arrive here if the proxy streams.
    let first = rx.recv_timeout(Duration::from_secs(30));
    if first.is_err() {
        let _ = child.kill();
    }
    assert_eq!(first.as_deref(), Ok("web-1: first line"), "{}", p.context());
    p.api.release_logs();
    let second = rx.recv_timeout(Duration::from_secs(30));
    assert_eq!(
        second.as_deref(),
        Ok("web-1: second line"),
        "{}",
        p.context()
    );
    let status = wait_for(Duration::from_secs(30), || child.try_wait().ok().flatten());
    assert!(status.is_some_and(|s| s.success()), "{}", p.context());
    let rows = p.audited(|r| r.row.subresource.as_deref() == Some("log"));
    assert_eq!(rows[0].row.verb, "get");
    assert!(rows[0].row.path.contains("follow=true"));
    assert_eq!(
        rows[0].row.bytes_out,
        "web-1: first line\nweb-1: second line\n".len() as u64
    );
}

#[test]
fn kubeapi_kubectl_exec_upgrade_passes_through() {
    let p = Proxy::start(None, Limits::default());
    let r = p
        .kubectl(
            &["exec", "-i", "web-1", "--", "cat"],
            Some(b"hello through the bastion\n"),
        )
        .success();
    assert_eq!(r.stdout(), "hello through the bastion\n", "{}", r.explain());
    let exec = p.api.requests_to("/api/v1/namespaces/dev/pods/web-1/exec");
    assert_eq!(exec.len(), 1, "{}", r.explain());
    assert_eq!(
        exec[0].header_all("impersonate-user"),
        ["system:serviceaccount:dev:copilot"]
    );
    let rows = p.audited(|r| r.row.subresource.as_deref() == Some("exec"));
    assert_eq!(rows[0].row.verb, "create");
    assert_eq!(rows[0].row.status, Some(101));
    assert!(
        rows[0].row.bytes_in > 0 && rows[0].row.bytes_out > 0,
        "{rows:?}"
    );
    // Recorded like a local session: the real asciinema replays it.
    let cast = PathBuf::from(rows[0].row.recording.clone().expect("recording audited"));
    let replay = crate::support::asciinema_cat(&cast).unwrap();
    assert!(replay.contains("hello through the bastion"), "{replay}");
    let text = std::fs::read_to_string(&cast).unwrap();
    assert!(
        text.contains(r#""i", "hello through the bastion\n""#),
        "{text}"
    );
    assert!(
        text.contains("kubectl exec dev/web-1 by system:serviceaccount:dev:copilot"),
        "{text}"
    );
}

#[test]
fn kubeapi_delete_waits_for_approval() {
    // Refused by the approver: nothing reaches the API server.
    let p = Proxy::start(Some(false), Limits::default());
    let r = p
        .kubectl(&["delete", "pod", "web-1", "--wait=false"], None)
        .failure();
    assert!(r.stderr().contains("Error from server (Forbidden): sallyport: delete pods \"web-1\" in namespace \"dev\" needs approval"), "{}", r.explain());
    assert!(
        p.api.requests().iter().all(|s| s.method != "DELETE"),
        "{}",
        r.explain()
    );
    assert_eq!(p.asked.lock().unwrap().len(), 1);
    let rows = p.audited(|r| r.row.verb == "delete");
    assert_eq!(rows[0].row.decision, "deny");

    // Approved: the request is released upstream.
    let p = Proxy::start(Some(true), Limits::default());
    let r = p
        .kubectl(&["delete", "pod", "web-1", "--wait=false"], None)
        .success();
    assert!(r.stdout().contains("web-1"), "{}", r.explain());
    assert_eq!(
        p.api
            .requests()
            .iter()
            .filter(|s| s.method == "DELETE")
            .count(),
        1
    );
    let asked = p.asked.lock().unwrap().clone();
    assert_eq!(
        asked[0].request,
        "delete pods \"web-1\" in namespace \"dev\""
    );
    assert_eq!(
        asked[0].requester.subject,
        "system:serviceaccount:dev:copilot"
    );
    let rows = p.audited(|r| r.row.verb == "delete");
    assert_eq!(rows[0].row.decision, "approve");
    assert!(rows[0].row.reason.ends_with("(approved)"));

    // Write bodies are stored masked.
    let body = r#"{"kind":"DeleteOptions","apiVersion":"v1","note":"password=hunter2"}"#;
    let out = p.raw(
        format!(
            "DELETE /api/v1/namespaces/dev/pods/web-2 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let rows = p.audited(|r| r.row.name.as_deref() == Some("web-2"));
    let stored = rows[0].row.body.clone().unwrap_or_default();
    assert!(stored.contains("[MASKED:password-assignment]"), "{stored}");
    assert!(!stored.contains("hunter2"), "{stored}");
    assert_eq!(rows[0].row.bytes_in, body.len() as u64);
}

#[test]
fn kubeapi_kubectl_exec_it_with_a_tty_is_recorded() {
    let p = Proxy::start(None, Limits::default());
    // A real terminal for kubectl (`script` allocates a pty); Ctrl-D makes
    // the test server end the session like a shell would.
    let kubectl = format!("{:?}", p.kubectl_cmd(&["exec", "-it", "web-1", "--", "sh"]));
    let mut cmd = Command::new("script");
    cmd.arg("-qec")
        .arg(format!(
            "stty cols 100 rows 30; {}",
            kubectl.replace('"', "'")
        ))
        .arg("/dev/null")
        .env("KUBECONFIG", &p.kubeconfig)
        .env("HOME", p.dir.path());
    let r = run_cmd(
        cmd,
        Some(b"echo tty works\rexit\r"),
        Duration::from_secs(60),
        p.context(),
    );
    let rows = p.audited(|r| r.row.subresource.as_deref() == Some("exec"));
    assert_eq!(rows[0].row.status, Some(101), "{}", r.explain());
    assert!(rows[0].row.path.contains("tty=true"), "{rows:?}");
    let cast = PathBuf::from(rows[0].row.recording.clone().unwrap());
    let text = std::fs::read_to_string(&cast).unwrap();
    let events: Vec<(String, String)> = text
        .lines()
        .skip(1)
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| {
            (
                v[1].as_str().unwrap().to_string(),
                v[2].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let has = |kind: &str, what: &str| events.iter().any(|(k, t)| k == kind && t.contains(what));
    // The masker may hold back a tail that could start a secret, so one
    // line can span events: look at each stream as a whole.
    let all = |kind: &str| -> String {
        events
            .iter()
            .filter(|(k, _)| k == kind)
            .map(|(_, t)| t.as_str())
            .collect()
    };
    assert!(
        all("i").contains("echo tty works"),
        "{text}\n{}",
        r.explain()
    );
    assert!(all("o").contains("echo tty works"), "{text}");
    // The echo of the typed line and the command's output.
    assert!(all("o").matches("tty works").count() >= 2, "{text}");
    // kubectl sends the terminal size first (channel 4): a resize event.
    assert!(has("r", "100x30"), "{text}");
    assert!(has("m", "Success"), "{text}");
    assert!(text.contains(r#""TERM":"xterm""#), "{text}");
}

/// Lines of an asciicast as (kind, text).
fn cast_events(cast: &std::path::Path) -> Vec<(String, String)> {
    std::fs::read_to_string(cast)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| {
            (
                v[1].as_str().unwrap().to_string(),
                v[2].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn kubeapi_exec_of_a_denied_command_never_reaches_the_pod() {
    let p = Proxy::start(None, Limits::default());
    let r = p
        .kubectl(&["exec", "web-1", "--", "rm", "-rf", "/x"], None)
        .failure();
    assert!(
        r.stderr().contains("Error from server (Forbidden): sallyport: create pods/exec \"web-1\" in namespace \"dev\" (command: rm -rf /x) denied by"),
        "{}",
        r.explain()
    );
    assert!(
        r.stderr().contains("exec.deny 'rm -rf *'"),
        "{}",
        r.explain()
    );
    // Hidden in `sh -c` after an allowed command: denied too.
    let r = p
        .kubectl(
            &[
                "exec",
                "web-1",
                "--",
                "sh",
                "-c",
                "touch ok-1; touch denied-1",
            ],
            None,
        )
        .failure();
    assert!(
        r.stderr().contains("exec.deny 'touch denied*'"),
        "{}",
        r.explain()
    );
    assert!(
        p.api
            .requests_to("/api/v1/namespaces/dev/pods/web-1/exec")
            .is_empty(),
        "{}",
        r.explain()
    );
    assert!(!p.api.pod_dir().join("ok-1").exists());
    // (kubectl retries a refused WebSocket upgrade over SPDY: both refused.)
    let rows = p.audited(|r| r.row.subresource.as_deref() == Some("exec"));
    assert!(rows.len() >= 2, "{rows:?}");
    assert!(
        rows.iter()
            .all(|r| r.row.decision == "deny" && r.row.status == Some(403))
    );
    let ev = p.store.list_events(Some("command-blocked"), 10).unwrap();
    let details: Vec<&str> = ev.iter().map(|e| e.detail.as_str()).collect();
    assert!(
        details.contains(&"kubectl exec dev/web-1: rm -rf /x"),
        "{details:?}"
    );
    assert!(
        details.contains(&"kubectl exec dev/web-1: sh -c touch ok-1; touch denied-1"),
        "{details:?}"
    );
}

#[test]
fn kubeapi_exec_of_an_allowed_command_runs_and_approval_gated_waits() {
    let p = Proxy::start(Some(true), Limits::default());
    p.kubectl(&["exec", "web-1", "--", "touch", "made-by-exec"], None)
        .success();
    assert!(p.api.pod_dir().join("made-by-exec").exists());
    let r = p
        .kubectl(&["exec", "web-1", "--", "echo", "hello", "pod"], None)
        .success();
    assert_eq!(r.stdout(), "hello pod\n", "{}", r.explain());
    // Under `approve`: the (test) approver is asked with the command.
    p.kubectl(&["exec", "web-1", "--", "touch", "approved-1"], None)
        .success();
    assert!(p.api.pod_dir().join("approved-1").exists());
    let asked = p.asked.lock().unwrap().clone();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert!(
        asked[0].request.ends_with("(command: touch approved-1)"),
        "{asked:?}"
    );
    assert!(
        asked[0].reason.contains("exec.approve 'touch approved*'"),
        "{asked:?}"
    );

    // Refused by the approver: never runs.
    let p = Proxy::start(Some(false), Limits::default());
    let r = p
        .kubectl(&["exec", "web-1", "--", "touch", "approved-2"], None)
        .failure();
    assert!(r.stderr().contains("needs approval"), "{}", r.explain());
    assert!(!p.api.pod_dir().join("approved-2").exists());
    assert!(
        p.api
            .requests_to("/api/v1/namespaces/dev/pods/web-1/exec")
            .is_empty()
    );
}

#[test]
fn kubeapi_secret_split_across_frames_is_masked_for_kubectl_and_in_the_recording() {
    let p = Proxy::start(None, Limits::default());
    let secret = "ghp_0123456789abcdefghijABCDEFGHIJ012345";
    let (a, b) = secret.split_at(9);
    // The test server sends the two halves as two stdout frames.
    let r = p
        .kubectl(
            &[
                "exec",
                "web-1",
                "--",
                "printf-split",
                &format!("token: {a}"),
                &format!("{b}\\n"),
            ],
            None,
        )
        .success();
    assert!(!r.stdout().contains(b), "{}", r.explain());
    assert_eq!(
        r.stdout(),
        "token: [MASKED:github-token]\n",
        "{}",
        r.explain()
    );
    let rows =
        p.audited(|r| r.row.subresource.as_deref() == Some("exec") && r.row.recording.is_some());
    let cast = PathBuf::from(rows[0].row.recording.clone().unwrap());
    let replay = crate::support::asciinema_cat(&cast).unwrap();
    assert!(replay.contains("token: [MASKED:github-token]"), "{replay}");
    // (The header's command holds the test's own split argv: events only.)
    let events = cast_events(&cast);
    assert!(!events.iter().any(|(_, t)| t.contains(b)), "{events:?}");
    // The audit row keeps the command masked too.
    let r = p
        .kubectl(&["exec", "web-1", "--", "echo", secret], None)
        .success();
    assert_eq!(r.stdout(), "[MASKED:github-token]\n", "{}", r.explain());
    for row in p.store.list_kube_requests(50).unwrap() {
        assert!(!row.row.path.contains(&secret[4..]), "{:?}", row.row.path);
    }
}

#[test]
fn kubeapi_exec_it_shell_denied_typed_line_never_reaches_the_shell() {
    let p = Proxy::start(None, Limits::default());
    let kubectl = format!("{:?}", p.kubectl_cmd(&["exec", "-it", "web-1", "--", "sh"]));
    let mut cmd = Command::new("script");
    cmd.arg("-qec")
        .arg(format!(
            "stty cols 100 rows 30; {}",
            kubectl.replace('"', "'")
        ))
        .arg("/dev/null")
        .env("KUBECONFIG", &p.kubeconfig)
        .env("HOME", p.dir.path());
    let r = run_cmd(
        cmd,
        Some(b"touch allowed-1\rtouch denied-1\recho secret ghp_0123456789abcdefghijABCDEFGHIJ012345\rexit\r"),
        Duration::from_secs(60),
        p.context(),
    );
    let pod = p.api.pod_dir();
    assert!(
        wait_for(Duration::from_secs(10), || pod
            .join("allowed-1")
            .exists()
            .then_some(()))
        .is_some(),
        "{}",
        r.explain()
    );
    assert!(!pod.join("denied-1").exists(), "{}", r.explain());
    let out = r.stdout();
    assert!(out.contains("sallyport: blocked by"), "{}", r.explain());
    assert!(out.contains("exec.deny 'touch denied*'"), "{}", r.explain());
    // Live masking in the terminal: the pod's echo of the typed line and
    // its output. (The one clear copy is the client terminal's own echo of
    // the scripted input, typed before kubectl switched it to raw mode.)
    assert_eq!(
        out.matches("ABCDEFGHIJ012345").count(),
        1,
        "{}",
        r.explain()
    );
    assert!(
        out.contains("echo secret [MASKED:github-token]"),
        "{}",
        r.explain()
    );
    assert!(
        out.matches("[MASKED:github-token]").count() >= 2,
        "{}",
        r.explain()
    );
    let rows = p.audited(|r| r.row.subresource.as_deref() == Some("exec"));
    let cast = PathBuf::from(rows[0].row.recording.clone().unwrap());
    let events = cast_events(&cast);
    assert!(
        events
            .iter()
            .any(|(k, t)| k == "m" && t.starts_with("blocked: touch denied-1")),
        "{events:?}"
    );
    assert!(
        !events.iter().any(|(_, t)| t.contains("ABCDEFGHIJ012345")),
        "{events:?}"
    );
    let ev = p.store.list_events(Some("command-blocked"), 10).unwrap();
    assert!(
        ev.iter()
            .any(|e| e.detail == "kubectl exec dev/web-1: touch denied-1"),
        "{ev:?}"
    );
    let ok = p.store.list_events(Some("command-allowed"), 10).unwrap();
    assert!(
        ok.iter()
            .any(|e| e.detail == "kubectl exec dev/web-1: touch allowed-1"),
        "{ok:?}"
    );
}

#[test]
fn kubeapi_exec_i_shell_without_tty_drops_denied_lines() {
    let p = Proxy::start(None, Limits::default());
    let r = p
        .kubectl(
            &["exec", "-i", "web-1", "--", "sh"],
            Some(b"touch piped-1\ntouch denied-2\ntouch piped-2\n"),
        )
        .success();
    let pod = p.api.pod_dir();
    assert!(pod.join("piped-1").exists(), "{}", r.explain());
    assert!(pod.join("piped-2").exists(), "{}", r.explain());
    assert!(!pod.join("denied-2").exists(), "{}", r.explain());
    assert!(
        r.stderr().contains("sallyport: blocked by"),
        "{}",
        r.explain()
    );
}

#[test]
fn kubeapi_exec_over_spdy_is_refused_because_it_cannot_be_read() {
    let p = Proxy::start(None, Limits::default());
    // kubectl's switch back to the SPDY/3.1 stream protocol.
    let mut cmd = p.kubectl_cmd(&["exec", "-i", "web-1", "--", "sh"]);
    cmd.env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false");
    let r = run_cmd(
        cmd,
        Some(b"touch via-spdy\n"),
        Duration::from_secs(60),
        p.context(),
    )
    .failure();
    assert!(
        r.stderr().contains("need the WebSocket stream protocol"),
        "{}",
        r.explain()
    );
    assert!(!p.api.pod_dir().join("via-spdy").exists());
    assert!(
        p.api
            .requests_to("/api/v1/namespaces/dev/pods/web-1/exec")
            .is_empty(),
        "{}",
        r.explain()
    );
    let rows = p.audited(|r| r.row.subresource.as_deref() == Some("exec"));
    assert!(
        rows.iter()
            .all(|r| r.row.decision == "deny" && r.row.status == Some(400)),
        "{rows:?}"
    );
}
