//! A test Kubernetes API server for the port-forward path. No real cluster
//! (kube-apiserver, kubelet, container runtime) can run in this sandbox, so
//! this stands in for one: plain HTTP on a free loopback port, a kubeconfig
//! pointing at it, and just the API the bastion uses for pod/service
//! forwards:
//!
//! - `GET /api/v1/namespaces/{ns}/pods/{name}` (and 404 `Status` when absent)
//! - `GET /api/v1/namespaces/{ns}/services/{name}`
//! - `GET /apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices?labelSelector=kubernetes.io/service-name=S`
//! - `GET /api/v1/namespaces/{ns}/endpoints/{name}`
//! - `GET /api/v1/namespaces/{ns}/pods/{name}/portforward?ports=P`, upgraded
//!   to WebSocket with subprotocol `v4.channel.k8s.io`, framed like the real
//!   API server: every binary message starts with a channel byte (port i:
//!   data channel 2i, error channel 2i+1); the first message on each channel
//!   is the port number, little-endian u16; then data; an error message on
//!   the error channel when the pod's port refuses. Bytes are relayed to a
//!   local TCP port standing in for the container port.
//!
//! Every request's `Authorization` header is recorded so tests can prove the
//! bastion used its own credentials.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

/// Bearer token the generated kubeconfig carries.
pub const TOKEN: &str = "bastion-sa-token";

/// A pod: its IP, uid, phase and where each container port really is.
#[derive(Debug, Clone)]
pub struct FakePod {
    pub ip: String,
    pub uid: String,
    pub phase: String,
    pub ready: bool,
    pub ports: HashMap<u16, SocketAddr>,
}

/// A service: (port name, port, target port) and the pods behind it.
#[derive(Debug, Clone)]
pub struct FakeService {
    pub ports: Vec<(String, u16, u16)>,
    pub pods: Vec<String>,
}

#[derive(Default)]
pub struct State {
    pub pods: HashMap<(String, String), FakePod>,
    pub services: HashMap<(String, String), FakeService>,
    /// Answer 404 for EndpointSlices (an old cluster), forcing the
    /// Endpoints fallback.
    pub no_endpointslices: bool,
    /// `METHOD path?query` of every request.
    pub requests: Vec<String>,
    /// Authorization header values seen.
    pub authorizations: Vec<String>,
}

/// The running server.
pub struct KubeApi {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<State>>,
    pub kubeconfig: PathBuf,
    /// Dropped with the server: stops the serving thread.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl KubeApi {
    /// Start on a free port, served by a thread with its own runtime (so it
    /// can be used from sync and async tests alike); writes `dir/kubeconfig`.
    pub fn start(dir: &Path) -> KubeApi {
        let state = Arc::new(Mutex::new(State::default()));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let st = Arc::clone(&state);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let accept = async {
                    loop {
                        let Ok((sock, _)) = listener.accept().await else {
                            continue;
                        };
                        let st = Arc::clone(&st);
                        tokio::spawn(async move {
                            let svc =
                                hyper::service::service_fn(move |req| handle(Arc::clone(&st), req));
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(sock), svc)
                                .with_upgrades()
                                .await;
                        });
                    }
                };
                tokio::select! {
                    _ = accept => {}
                    _ = stop_rx => {}
                }
            });
            rt.shutdown_background();
        });
        let kubeconfig = dir.join("kubeconfig");
        let kc = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": {"server": format!("http://{addr}")}}],
            "users": [{"name": "bastion", "user": {"token": TOKEN}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "bastion"}}],
            "current-context": "test"
        });
        std::fs::write(&kubeconfig, serde_json::to_vec_pretty(&kc).unwrap()).unwrap();
        KubeApi {
            addr,
            state,
            kubeconfig,
            _stop: stop_tx,
        }
    }

    /// Add (or replace) a running, ready pod whose `port` is `target`.
    pub fn add_pod(&self, ns: &str, name: &str, ip: &str, ports: &[(u16, SocketAddr)]) {
        let pod = FakePod {
            ip: ip.to_string(),
            uid: format!("uid-{name}-{}", self.state.lock().unwrap().requests.len()),
            phase: "Running".into(),
            ready: true,
            ports: ports.iter().copied().collect(),
        };
        self.state
            .lock()
            .unwrap()
            .pods
            .insert((ns.into(), name.into()), pod);
    }

    pub fn set_ready(&self, ns: &str, name: &str, ready: bool) {
        if let Some(p) = self
            .state
            .lock()
            .unwrap()
            .pods
            .get_mut(&(ns.into(), name.into()))
        {
            p.ready = ready;
        }
    }

    pub fn delete_pod(&self, ns: &str, name: &str) {
        self.state
            .lock()
            .unwrap()
            .pods
            .remove(&(ns.into(), name.into()));
    }

    pub fn add_service(&self, ns: &str, name: &str, ports: &[(&str, u16, u16)], pods: &[&str]) {
        self.state.lock().unwrap().services.insert(
            (ns.into(), name.into()),
            FakeService {
                ports: ports
                    .iter()
                    .map(|(n, p, t)| (n.to_string(), *p, *t))
                    .collect(),
                pods: pods.iter().map(|s| s.to_string()).collect(),
            },
        );
    }

    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn authorizations(&self) -> Vec<String> {
        self.state.lock().unwrap().authorizations.clone()
    }
}

type Resp = Response<Full<Bytes>>;

fn json_resp(code: StatusCode, v: Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(serde_json::to_vec(&v).unwrap())));
    *r.status_mut() = code;
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

fn not_found(kind: &str, name: &str) -> Resp {
    json_resp(
        StatusCode::NOT_FOUND,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": format!("{kind} \"{name}\" not found"), "reason": "NotFound",
               "details": {"name": name, "kind": kind}, "code": 404}),
    )
}

fn pod_json(ns: &str, name: &str, p: &FakePod) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "uid": p.uid},
        "spec": {"containers": [{"name": "main", "image": "example"}]},
        "status": {"phase": p.phase, "podIP": p.ip,
                   "conditions": [{"type": "Ready", "status": if p.ready {"True"} else {"False"}}]}
    })
}

async fn handle(st: Arc<Mutex<State>>, req: Request<Incoming>) -> Result<Resp, hyper::Error> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    {
        let mut s = st.lock().unwrap();
        s.requests.push(format!("{} {path}?{query}", req.method()));
        if let Some(a) = req.headers().get("authorization") {
            s.authorizations
                .push(a.to_str().unwrap_or("<binary>").to_string());
        }
    }
    let seg: Vec<&str> = path.trim_matches('/').split('/').collect();
    let resp = match seg.as_slice() {
        ["api", "v1", "namespaces", ns, "pods", name] => {
            let s = st.lock().unwrap();
            match s.pods.get(&(ns.to_string(), name.to_string())) {
                Some(p) => json_resp(StatusCode::OK, pod_json(ns, name, p)),
                None => not_found("pods", name),
            }
        }
        ["api", "v1", "namespaces", ns, "services", name] => {
            let s = st.lock().unwrap();
            match s.services.get(&(ns.to_string(), name.to_string())) {
                Some(svc) => json_resp(
                    StatusCode::OK,
                    json!({"apiVersion": "v1", "kind": "Service",
                       "metadata": {"name": name, "namespace": ns},
                       "spec": {"ports": svc.ports.iter().map(|(n, p, t)|
                           json!({"name": n, "port": p, "targetPort": t, "protocol": "TCP"})).collect::<Vec<_>>()}}),
                ),
                None => not_found("services", name),
            }
        }
        [
            "apis",
            "discovery.k8s.io",
            "v1",
            "namespaces",
            ns,
            "endpointslices",
        ] => {
            let s = st.lock().unwrap();
            if s.no_endpointslices {
                not_found("endpointslices", "")
            } else {
                let svc_name = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("labelSelector="))
                    .map(|v| v.replace("%3D", "=").replace("%2F", "/"))
                    .and_then(|v| {
                        v.strip_prefix("kubernetes.io/service-name=")
                            .map(str::to_string)
                    })
                    .unwrap_or_default();
                let items: Vec<Value> = s
                    .services
                    .get(&(ns.to_string(), svc_name.clone()))
                    .map(|svc| {
                        vec![json!({
                            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                            "metadata": {"name": format!("{svc_name}-abcde"), "namespace": ns,
                                         "labels": {"kubernetes.io/service-name": svc_name}},
                            "addressType": "IPv4",
                            "endpoints": svc.pods.iter().filter_map(|pn| {
                                s.pods.get(&(ns.to_string(), pn.clone())).map(|p| json!({
                                    "addresses": [p.ip], "conditions": {"ready": p.ready},
                                    "targetRef": {"kind": "Pod", "name": pn, "namespace": ns}}))
                            }).collect::<Vec<_>>(),
                            "ports": svc.ports.iter().map(|(n, _, t)|
                                json!({"name": n, "port": t, "protocol": "TCP"})).collect::<Vec<_>>()
                        })]
                    })
                    .unwrap_or_default();
                json_resp(
                    StatusCode::OK,
                    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSliceList",
                           "metadata": {"resourceVersion": "1"}, "items": items}),
                )
            }
        }
        ["api", "v1", "namespaces", ns, "endpoints", name] => {
            let s = st.lock().unwrap();
            match s.services.get(&(ns.to_string(), name.to_string())) {
                Some(svc) => {
                    let (ready, not_ready): (Vec<_>, Vec<_>) = svc
                        .pods
                        .iter()
                        .filter_map(|pn| s.pods.get(&(ns.to_string(), pn.clone())).map(|p| (pn, p)))
                        .partition(|(_, p)| p.ready);
                    let addr = |(pn, p): &(&String, &FakePod)| json!({"ip": p.ip, "targetRef": {"kind": "Pod", "name": pn, "namespace": ns}});
                    json_resp(
                        StatusCode::OK,
                        json!({"apiVersion": "v1", "kind": "Endpoints",
                        "metadata": {"name": name, "namespace": ns},
                        "subsets": [{
                            "addresses": ready.iter().map(addr).collect::<Vec<_>>(),
                            "notReadyAddresses": not_ready.iter().map(addr).collect::<Vec<_>>(),
                            "ports": svc.ports.iter().map(|(n, _, t)| json!({"name": n, "port": t})).collect::<Vec<_>>()
                        }]}),
                    )
                }
                None => not_found("endpoints", name),
            }
        }
        ["api", "v1", "namespaces", ns, "pods", name, "portforward"] => {
            portforward(&st, ns, name, &query, req)
        }
        _ => not_found("path", &path),
    };
    Ok(resp)
}

fn portforward(
    st: &Arc<Mutex<State>>,
    ns: &str,
    name: &str,
    query: &str,
    req: Request<Incoming>,
) -> Resp {
    let pod = st
        .lock()
        .unwrap()
        .pods
        .get(&(ns.to_string(), name.to_string()))
        .cloned();
    let Some(pod) = pod else {
        return not_found("pods", name);
    };
    let Some(port) = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("ports="))
        .and_then(|p| p.parse::<u16>().ok())
    else {
        return json_resp(
            StatusCode::BAD_REQUEST,
            json!({"kind": "Status", "code": 400, "message": "one numeric port"}),
        );
    };
    let protocols = req
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return json_resp(
            StatusCode::BAD_REQUEST,
            json!({"kind": "Status", "code": 400, "message": "websocket upgrade required"}),
        );
    };
    if !protocols
        .split(',')
        .any(|p| p.trim() == "v4.channel.k8s.io")
    {
        return json_resp(
            StatusCode::BAD_REQUEST,
            json!({"kind": "Status", "code": 400, "message": "unsupported subprotocol"}),
        );
    }
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let target = pod.ports.get(&port).copied();
    tokio::spawn(async move {
        let Ok(upgraded) = hyper::upgrade::on(req).await else {
            return;
        };
        let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        serve_forward(ws, port, target).await;
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert("upgrade", "websocket".parse().unwrap());
    h.insert("connection", "Upgrade".parse().unwrap());
    h.insert("sec-websocket-accept", accept.parse().unwrap());
    h.insert(
        "sec-websocket-protocol",
        "v4.channel.k8s.io".parse().unwrap(),
    );
    r
}

async fn serve_forward<S>(
    ws: tokio_tungstenite::WebSocketStream<S>,
    port: u16,
    target: Option<SocketAddr>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut tx, mut rx) = ws.split();
    let p = port.to_le_bytes();
    // Channel-initialisation frames: data channel 0, error channel 1.
    if tx.send(Message::binary(vec![0, p[0], p[1]])).await.is_err()
        || tx.send(Message::binary(vec![1, p[0], p[1]])).await.is_err()
    {
        return;
    }
    let conn = match target {
        Some(t) => tokio::net::TcpStream::connect(t).await.ok(),
        None => None,
    };
    let Some(conn) = conn else {
        // What the kubelet says when nothing listens on the pod's port.
        let mut msg = vec![1u8];
        msg.extend_from_slice(
            format!("error forwarding port {port} to pod: failed to connect to localhost:{port} inside namespace: connection refused").as_bytes(),
        );
        let _ = tx.send(Message::binary(msg)).await;
        let _ = tx.send(Message::Close(None)).await;
        return;
    };
    let (mut tr, mut tw) = conn.into_split();
    let to_pod = async move {
        while let Some(Ok(m)) = rx.next().await {
            match m {
                Message::Binary(b) if b.first() == Some(&0) && b.len() > 1 => {
                    let ok = tw.write_all(&b[1..]).await.is_ok();
                    if !ok {
                        break;
                    }
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = tw.shutdown().await;
    };
    let from_pod = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match tr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let mut m = Vec::with_capacity(n + 1);
                    m.push(0);
                    m.extend_from_slice(&buf[..n]);
                    if tx.send(Message::binary(m)).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = tx.send(Message::Close(None)).await;
    };
    futures::join!(to_pod, from_pod);
}
