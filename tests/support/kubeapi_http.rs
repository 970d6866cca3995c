//! A **test Kubernetes API server** for the kube API proxy tests. No real
//! API server (kube-apiserver + etcd) can run on the test machines, so this
//! speaks just enough of the real HTTP/JSON API for `kubectl` (discovery,
//! pods list/get/delete, secrets get, `pods/log` with `follow=true`
//! streaming, `pods/exec` over the WebSocket `v5.channel.k8s.io` protocol)
//! and **records every request's method, path and headers**, so tests can
//! prove what the bastion forwarded (impersonation headers, the bastion's own
//! token) and what it did not (the client's `Authorization`, forged
//! `Impersonate-*`, denied requests).
//!
//! `pods/exec` runs a few commands for real, in a per-server "pod
//! directory" ([`TestKubeApi::pod_dir`]) so tests can look for side-effect
//! files: `sh` (with `tty=true` inside a real pty via `script`, so the
//! terminal echoes and `\r` ends a line), `sh -c ...`, `touch`, `echo`;
//! `printf-split A B` (a test stand-in) writes A and B as two separate
//! stdout frames; `cat` echoes stdin until it closes or carries Ctrl-D.
//! Anything else answers "command not found" on stderr: nothing outside
//! that list is ever run, whatever reaches the server.
#![allow(dead_code)]

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The token the bastion uses upstream (written into its kubeconfig).
pub const BASTION_TOKEN: &str = "bastion-sa-token-7f3k";

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// One request as received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl Seen {
    /// All values of header `name` (lowercase).
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.header_all(name).into_iter().next()
    }
}

#[derive(Clone)]
struct State {
    seen: Arc<Mutex<Vec<Seen>>>,
    log_gate: Arc<tokio::sync::Notify>,
    pod_dir: PathBuf,
}

/// A running test API server (plain HTTP on 127.0.0.1).
pub struct TestKubeApi {
    pub port: u16,
    state: State,
    _pod_dir: tempfile::TempDir,
}

impl TestKubeApi {
    /// Bind 127.0.0.1:0 and serve on `rt`.
    pub fn start(rt: &tokio::runtime::Runtime) -> TestKubeApi {
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let pod_dir = tempfile::tempdir().unwrap();
        let state = State {
            seen: Arc::new(Mutex::new(Vec::new())),
            log_gate: Arc::new(tokio::sync::Notify::new()),
            pod_dir: pod_dir.path().to_path_buf(),
        };
        let st = state.clone();
        rt.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(route(st, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        TestKubeApi {
            port,
            state,
            _pod_dir: pod_dir,
        }
    }

    /// The working directory of commands exec'd "in the pod".
    pub fn pod_dir(&self) -> &Path {
        &self.state.pod_dir
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Requests whose path starts with `prefix`.
    pub fn requests_to(&self, prefix: &str) -> Vec<Seen> {
        self.requests()
            .into_iter()
            .filter(|s| s.path.starts_with(prefix))
            .collect()
    }

    /// Let a following `pods/log` stream send its second line and end.
    pub fn release_logs(&self) {
        self.state.log_gate.notify_one();
    }

    /// A kubeconfig for the *bastion* to reach this server with its own token.
    pub fn bastion_kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("bastion-kubeconfig.yaml");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: http://127.0.0.1:{}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: bastion\ncurrent-context: test\nusers:\n- name: bastion\n  user:\n    token: {BASTION_TOKEN}\n",
                self.port
            ),
        )
        .unwrap();
        path
    }
}

fn json(code: StatusCode, v: serde_json::Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())).boxed_unsync());
    *r.status_mut() = code;
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

fn pod(ns: &str, name: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"),
                     "resourceVersion": "1", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"containers": [{"name": "app", "image": "busybox"}]},
        "status": {"phase": "Running"}
    })
}

fn not_found(what: &str) -> Response<Body> {
    json(
        StatusCode::NOT_FOUND,
        serde_json::json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
            "message": format!("test API server: {what} not found"),"reason":"NotFound","code":404}),
    )
}

async fn route(st: State, mut req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    st.seen.lock().unwrap().push(Seen {
        method: req.method().to_string(),
        path: pq.clone(),
        headers: req
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
            .collect(),
    });
    let method = req.method().as_str().to_string();
    let parts: Vec<&str> = path.split('/').skip(1).collect();
    match (method.as_str(), parts.as_slice()) {
        ("GET", ["api"]) => json(
            StatusCode::OK,
            serde_json::json!({"kind":"APIVersions","versions":["v1"],
                "serverAddressByClientCIDRs":[{"clientCIDR":"0.0.0.0/0","serverAddress":"127.0.0.1:6443"}]}),
        ),
        ("GET", ["apis"]) => json(
            StatusCode::OK,
            serde_json::json!({"kind":"APIGroupList","apiVersion":"v1","groups":[]}),
        ),
        ("GET", ["version"]) => json(
            StatusCode::OK,
            serde_json::json!({"major":"1","minor":"32","gitVersion":"v1.32.0-sallyport-test",
                "platform":"linux/amd64"}),
        ),
        ("GET", ["api", "v1"]) => {
            let r = |name: &str, kind: &str, verbs: &[&str]| {
                serde_json::json!({"name": name, "singularName": "", "namespaced": true,
                    "kind": kind, "verbs": verbs})
            };
            json(
                StatusCode::OK,
                serde_json::json!({"kind":"APIResourceList","groupVersion":"v1","resources":[
                    r("pods","Pod",&["create","delete","deletecollection","get","list","patch","update","watch"]),
                    r("pods/log","Pod",&["get"]),
                    r("pods/exec","PodExecOptions",&["create","get"]),
                    r("secrets","Secret",&["create","delete","get","list","patch","update","watch"]),
                ]}),
            )
        }
        ("GET", ["api", "v1", "namespaces", ns, "pods"]) => json(
            StatusCode::OK,
            serde_json::json!({"apiVersion":"v1","kind":"PodList","metadata":{"resourceVersion":"1"},
                "items":[pod(ns, "web-1"), pod(ns, "web-2")]}),
        ),
        ("GET", ["api", "v1", "namespaces", ns, "pods", name]) => {
            json(StatusCode::OK, pod(ns, name))
        }
        ("DELETE", ["api", "v1", "namespaces", ns, "pods", name]) => {
            json(StatusCode::OK, pod(ns, name))
        }
        ("GET", ["api", "v1", "namespaces", ns, "secrets", name]) => json(
            StatusCode::OK,
            serde_json::json!({"apiVersion":"v1","kind":"Secret",
                "metadata":{"name":name,"namespace":ns},"data":{"password":"aHVudGVyMg=="}}),
        ),
        ("GET", ["api", "v1", "namespaces", _ns, "pods", name, "log"]) => {
            let follow = pq.contains("follow=true");
            let gate = st.log_gate.clone();
            let name = name.to_string();
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
            tokio::spawn(async move {
                let _ = tx
                    .send(Ok(Frame::data(Bytes::from(format!(
                        "{name}: first line\n"
                    )))))
                    .await;
                if follow {
                    // Only after the test has seen the first line through the
                    // proxy: proves the proxy streams instead of buffering.
                    gate.notified().await;
                }
                let _ = tx
                    .send(Ok(Frame::data(Bytes::from(format!(
                        "{name}: second line\n"
                    )))))
                    .await;
            });
            let stream =
                futures::stream::unfold(
                    rx,
                    |mut rx| async move { rx.recv().await.map(|f| (f, rx)) },
                );
            let mut r = Response::new(StreamBody::new(stream).boxed_unsync());
            r.headers_mut()
                .insert("content-type", "text/plain".parse().unwrap());
            r
        }
        (_, ["api", "v1", "namespaces", _ns, "pods", _name, "exec"]) => {
            let query = req.uri().query().unwrap_or("").to_string();
            websocket_exec(&mut req, &query, st.pod_dir.clone()).unwrap_or_else(|| {
                json(
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({"kind":"Status","apiVersion":"v1","status":"Failure",
                        "message":"test API server: exec needs a v5.channel.k8s.io WebSocket upgrade",
                        "reason":"BadRequest","code":400}),
                )
            })
        }
        _ => not_found(&format!("{method} {path}")),
    }
}

/// Accept a WebSocket `v5.channel.k8s.io` exec and run it (see the module doc).
fn websocket_exec(
    req: &mut Request<Incoming>,
    query: &str,
    pod_dir: PathBuf,
) -> Option<Response<Body>> {
    let h = req.headers();
    let upgrade = h.get("upgrade")?.to_str().ok()?;
    if !upgrade.eq_ignore_ascii_case("websocket") {
        return None;
    }
    let key = h.get("sec-websocket-key")?.to_str().ok()?.to_string();
    let protocols = h.get_all("sec-websocket-protocol").iter().any(|v| {
        v.to_str()
            .unwrap_or("")
            .split(',')
            .any(|p| p.trim() == "v5.channel.k8s.io")
    });
    if !protocols {
        return None;
    }
    let mut argv = Vec::new();
    let mut tty = false;
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "command" => argv.push(v.into_owned()),
            "tty" => tty = v == "true",
            _ => {}
        }
    }
    let on = hyper::upgrade::on(req);
    tokio::spawn(async move {
        if let Ok(up) = on.await {
            let io = TokioIo::new(up);
            if argv == ["cat"] {
                let _ = echo(io).await;
            } else {
                let _ = run(io, argv, tty, pod_dir).await;
            }
        }
    });
    let mut r = Response::new(Full::new(Bytes::new()).boxed_unsync());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let hm = r.headers_mut();
    hm.insert("upgrade", "websocket".parse().unwrap());
    hm.insert("connection", "Upgrade".parse().unwrap());
    hm.insert("sec-websocket-accept", ws_accept(&key).parse().unwrap());
    hm.insert(
        "sec-websocket-protocol",
        "v5.channel.k8s.io".parse().unwrap(),
    );
    Some(r)
}

async fn write_frame<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    opcode: u8,
    payload: &[u8],
) -> std::io::Result<()> {
    let mut head = vec![0x80 | opcode];
    if payload.len() < 126 {
        head.push(payload.len() as u8);
    } else if payload.len() <= 0xffff {
        head.push(126);
        head.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    } else {
        head.push(127);
        head.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    }
    w.write_all(&head).await?;
    w.write_all(payload).await?;
    w.flush().await
}

async fn read_frame<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> std::io::Result<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    r.read_exact(&mut h).await?;
    let opcode = h[0] & 0x0f;
    let masked = h[1] & 0x80 != 0;
    let mut len = u64::from(h[1] & 0x7f);
    if len == 126 {
        let mut b = [0u8; 2];
        r.read_exact(&mut b).await?;
        len = u64::from(u16::from_be_bytes(b));
    } else if len == 127 {
        let mut b = [0u8; 8];
        r.read_exact(&mut b).await?;
        len = u64::from_be_bytes(b);
    }
    let mut mask = [0u8; 4];
    if masked {
        r.read_exact(&mut mask).await?;
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload).await?;
    if masked {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }
    Ok((opcode, payload))
}

/// Channel 0 (stdin) → channel 1 (stdout); on the v5 stdin close signal
/// (`[255, 0]`) report success on channel 3 and close.
async fn echo<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
) -> std::io::Result<()> {
    loop {
        let (op, payload) = read_frame(&mut s).await?;
        match op {
            1 | 2 => match payload.first() {
                Some(0) => {
                    // Ctrl-D (as a tty sends it) ends the session like a shell would.
                    let data = &payload[1..];
                    let (text, eot) = match data.iter().position(|b| *b == 4) {
                        Some(i) => (&data[..i], true),
                        None => (data, false),
                    };
                    if !text.is_empty() {
                        let mut out = vec![1u8];
                        out.extend_from_slice(text);
                        write_frame(&mut s, 2, &out).await?;
                    }
                    if eot {
                        let mut status = vec![3u8];
                        status.extend_from_slice(br#"{"metadata":{},"status":"Success"}"#);
                        write_frame(&mut s, 2, &status).await?;
                        write_frame(&mut s, 8, &1000u16.to_be_bytes()).await?;
                        return Ok(());
                    }
                }
                Some(255) if payload.get(1) == Some(&0) => {
                    let mut status = vec![3u8];
                    status.extend_from_slice(br#"{"metadata":{},"status":"Success"}"#);
                    write_frame(&mut s, 2, &status).await?;
                    write_frame(&mut s, 8, &1000u16.to_be_bytes()).await?;
                    return Ok(());
                }
                _ => {}
            },
            8 => {
                write_frame(&mut s, 8, &1000u16.to_be_bytes()).await?;
                return Ok(());
            }
            9 => write_frame(&mut s, 10, &payload).await?,
            _ => {}
        }
    }
}

async fn status(
    w: &mut (impl tokio::io::AsyncWrite + Unpin),
    code: Option<i32>,
) -> std::io::Result<()> {
    let mut status = vec![3u8];
    match code {
        Some(0) => status.extend_from_slice(br#"{"metadata":{},"status":"Success"}"#),
        c => status.extend_from_slice(
            serde_json::json!({"metadata":{},"status":"Failure",
                "message": format!("command terminated with non-zero exit code: {}", c.unwrap_or(-1)),
                "reason":"NonZeroExitCode",
                "details":{"causes":[{"reason":"ExitCode","message": c.unwrap_or(-1).to_string()}]}})
            .to_string()
            .as_bytes(),
        ),
    }
    write_frame(w, 2, &status).await?;
    write_frame(w, 8, &1000u16.to_be_bytes()).await
}

/// Run the allowed test commands for real: stdin channel → child stdin,
/// child stdout/stderr → channels 1/2, exit → status on channel 3.
async fn run<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static>(
    s: S,
    argv: Vec<String>,
    tty: bool,
    pod_dir: PathBuf,
) -> std::io::Result<()> {
    let (mut r, w) = tokio::io::split(s);
    let w = Arc::new(tokio::sync::Mutex::new(w));
    async fn send_to<W: tokio::io::AsyncWrite + Unpin>(
        w: &tokio::sync::Mutex<W>,
        ch: u8,
        data: Vec<u8>,
    ) -> std::io::Result<()> {
        let mut m = vec![ch];
        m.extend_from_slice(&data);
        write_frame(&mut *w.lock().await, 2, &m).await
    }
    let send = |ch: u8, data: Vec<u8>| send_to(&w, ch, data);
    let prog = argv.first().map(String::as_str).unwrap_or("");
    if prog == "printf-split" {
        for part in argv.iter().skip(1) {
            send(1, part.replace("\\n", "\n").into_bytes()).await?;
        }
        return status(&mut *w.lock().await, Some(0)).await;
    }
    let mut cmd = match (prog, argv.len(), tty) {
        ("sh", 1, true) => {
            // A real terminal for the shell, as a kubelet gives it.
            let mut c = tokio::process::Command::new("script");
            c.args(["-qfc", "sh", "/dev/null"]);
            c
        }
        ("sh" | "touch" | "echo", _, _) => {
            let mut c = tokio::process::Command::new(prog);
            c.args(&argv[1..]);
            c
        }
        _ => {
            send(
                2,
                format!("test API server: {prog}: command not found\n").into_bytes(),
            )
            .await?;
            return status(&mut *w.lock().await, Some(127)).await;
        }
    };
    cmd.current_dir(&pod_dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PS1", "$ ")
        .env("TERM", "xterm")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    let mut stdin = child.stdin.take();
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let pump = |mut src: Box<dyn tokio::io::AsyncRead + Unpin + Send>, ch: u8| {
        let w = w.clone();
        async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match src.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if send_to(&w, ch, buf[..n].to_vec()).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    };
    let out_task = tokio::spawn(pump(Box::new(out), 1));
    let err_task = tokio::spawn(pump(Box::new(err), 2));
    let input = async {
        loop {
            let Ok((op, payload)) = read_frame(&mut r).await else {
                break;
            };
            match (op, payload.first()) {
                (1 | 2, Some(0)) => {
                    if let Some(i) = stdin.as_mut()
                        && i.write_all(&payload[1..]).await.is_err()
                    {
                        stdin = None;
                    }
                }
                // v5: the client closed stdin.
                (1 | 2, Some(255)) if payload.get(1) == Some(&0) => stdin = None,
                (8, _) => break,
                _ => {}
            }
        }
    };
    tokio::select! {
        _ = input => {}
        _ = child.wait() => {}
    }
    // End of input: the child sees EOF (the client is gone or said so).
    stdin = None;
    let _ = &stdin;
    let code = child.wait().await.ok().and_then(|s| s.code());
    let _ = out_task.await;
    let _ = err_task.await;
    status(&mut *w.lock().await, code).await
}

/// `Sec-WebSocket-Accept` (RFC 6455 §4.2.2): base64(SHA-1(key + GUID)).
pub fn ws_accept(key: &str) -> String {
    use base64::Engine as _;
    let digest = sha1(format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11").as_bytes());
    base64::engine::general_purpose::STANDARD.encode(digest)
}

/// SHA-1 (FIPS 180-4), only for the WebSocket handshake above: no sha1
/// crate is a dependency.
pub fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0];
    let mut msg = data.to_vec();
    let bit_len = (data.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bit_len.to_be_bytes());
    for chunk in msg.chunks(64) {
        let mut w = [0u32; 80];
        for i in 0..16 {
            w[i] = u32::from_be_bytes([
                chunk[4 * i],
                chunk[4 * i + 1],
                chunk[4 * i + 2],
                chunk[4 * i + 3],
            ]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A827999),
                20..=39 => (b ^ c ^ d, 0x6ED9EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1BBCDC),
                _ => (b ^ c ^ d, 0xCA62C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        h[0] = h[0].wrapping_add(a);
        h[1] = h[1].wrapping_add(b);
        h[2] = h[2].wrapping_add(c);
        h[3] = h[3].wrapping_add(d);
        h[4] = h[4].wrapping_add(e);
    }
    let mut out = [0u8; 20];
    for (i, v) in h.iter().enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&v.to_be_bytes());
    }
    out
}
