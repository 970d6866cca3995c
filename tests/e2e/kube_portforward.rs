//! Kubernetes pod and service forwards through the production code path
//! (`tunnel::resolve::parse` → `tunnel::connect::target` →
//! `tunnel::relay::relay`) against the test API server in
//! `support::kubeapi`, which speaks the real WebSocket port-forward protocol.
//! No real cluster can run in this sandbox; the "container ports" are local
//! TCP servers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use sallyport::config::KubeConfig;
use sallyport::tunnel::connect::{self, Kube};
use sallyport::tunnel::relay::{self, EndReason};
use sallyport::tunnel::resolve;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::kubeapi::{KubeApi, TOKEN};

/// A TCP echo server (the "container"): echoes until EOF, then closes.
async fn echo_server() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

fn kube_for(api: &KubeApi) -> Kube {
    let mut k = Kube::new(KubeConfig {
        kubeconfig: Some(api.kubeconfig.clone()),
        context: None,
        api_target: "kubernetes".into(),
    });
    k.pod_check_interval = Duration::from_millis(100);
    k
}

async fn open(kube: &Kube, host: &str, port: u32) -> Result<connect::Connected, connect::Error> {
    let parsed = resolve::parse(host, port, &BTreeMap::new()).unwrap();
    connect::target(kube, &parsed.target, &[], Duration::from_secs(5)).await
}

/// Relay one "SSH channel" (a duplex pipe) to the connected target in the
/// background; returns the client end and the relay's join handle.
fn spawn_relay(
    c: connect::Connected,
) -> (
    tokio::io::DuplexStream,
    tokio::task::JoinHandle<relay::Outcome>,
) {
    let (client, channel_side) = tokio::io::duplex(64 * 1024);
    let h = tokio::spawn(relay::relay_with(channel_side, c.stream, c.ended, c.relay));
    (client, h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_forward_relays_bytes_with_bastion_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start(dir.path());
    let echo = echo_server().await;
    api.add_pod("dev", "web-0", "10.1.0.5", &[(8080, echo)]);
    let kube = kube_for(&api);

    let c = open(&kube, "web-0.dev.pod", 8080).await.unwrap();
    assert_eq!(c.resolved, "pod dev/web-0:8080 (10.1.0.5)");
    let (client, relay) = spawn_relay(c);
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let p2 = payload.clone();
    let writer = tokio::spawn(async move {
        let (mut r, mut w) = tokio::io::split(client);
        let wr = async {
            w.write_all(&p2).await.unwrap();
            w.shutdown().await.unwrap();
        };
        let mut back = Vec::new();
        let rd = r.read_to_end(&mut back);
        let (_, n) = tokio::join!(wr, rd);
        n.unwrap();
        back
    });
    let back = tokio::time::timeout(Duration::from_secs(30), writer)
        .await
        .expect("echo through the port-forward did not finish")
        .unwrap();
    assert_eq!(back.len(), payload.len());
    assert!(back == payload, "echoed bytes differ");
    let out = tokio::time::timeout(Duration::from_secs(30), relay)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.reason, EndReason::Completed, "{out:?}");
    assert_eq!(out.bytes_up, payload.len() as u64, "{out:?}");
    assert_eq!(out.bytes_down, payload.len() as u64, "{out:?}");

    // The API server saw the bastion's own token, and a port-forward upgrade.
    let auths = api.authorizations();
    assert!(!auths.is_empty());
    assert!(
        auths.iter().all(|a| a == &format!("Bearer {TOKEN}")),
        "{auths:?}"
    );
    assert!(
        api.requests().iter().any(|r| r
            .starts_with("GET /api/v1/namespaces/dev/pods/web-0/portforward?")
            && r.contains("ports=8080")),
        "{:?}",
        api.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_pod_is_a_clean_error() {
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start(dir.path());
    let kube = kube_for(&api);
    match open(&kube, "ghost.dev.pod", 80).await {
        Err(connect::Error::PodNotFound(p)) => assert_eq!(p, "dev/ghost"),
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("forwarded to a pod that does not exist"),
    }
    // Never asked for a port-forward of a pod it could not find.
    assert!(!api.requests().iter().any(|r| r.contains("/portforward")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_pod_port_ends_the_stream_with_the_kubelet_error() {
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start(dir.path());
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    api.add_pod("dev", "web-0", "10.1.0.5", &[(9999, closed)]);
    let kube = kube_for(&api);
    let c = open(&kube, "web-0.dev.pod", 9999).await.unwrap();
    let (client, relay) = spawn_relay(c);
    let out = tokio::time::timeout(Duration::from_secs(30), relay)
        .await
        .expect("relay did not end on a closed pod port")
        .unwrap();
    match &out.reason {
        EndReason::Gone(why) => assert!(why.contains("connection refused"), "{why}"),
        // The WebSocket close may race the error message.
        EndReason::Completed | EndReason::Target(_) => {}
        other => panic!("unexpected end: {other:?}"),
    }
    assert_eq!(out.bytes_down, 0);
    drop(client);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_does_not_outlive_its_pod() {
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start(dir.path());
    let echo = echo_server().await;
    api.add_pod("dev", "web-0", "10.1.0.5", &[(8080, echo)]);
    let kube = kube_for(&api);
    let c = open(&kube, "web-0.dev.pod", 8080).await.unwrap();
    let (mut client, relay) = spawn_relay(c);
    client.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    client.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    // The pod goes away; the (test) API server keeps the stream open, so
    // only the bastion's own pod check can end it.
    api.delete_pod("dev", "web-0");
    let out = tokio::time::timeout(Duration::from_secs(30), relay)
        .await
        .expect("forward outlived its pod")
        .unwrap();
    assert_eq!(out.reason, EndReason::Gone("pod web-0 is gone".into()));
    assert_eq!((out.bytes_up, out.bytes_down), (4, 4));
    // The client side sees the stream end.
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut rest)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_forward_picks_a_ready_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start(dir.path());
    let echo = echo_server().await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    // db-0 is not ready (and its port would refuse); db-1 is.
    api.add_pod("data", "db-0", "10.2.0.1", &[(15432, closed)]);
    api.set_ready("data", "db-0", false);
    api.add_pod("data", "db-1", "10.2.0.2", &[(15432, echo)]);
    api.add_service(
        "data",
        "pg",
        &[("postgres", 5432, 15432)],
        &["db-0", "db-1"],
    );
    let kube = kube_for(&api);

    for slices in [true, false] {
        api.state.lock().unwrap().no_endpointslices = !slices;
        let c = open(&kube, "pg.data.svc", 5432).await.unwrap();
        assert_eq!(
            c.resolved, "service data/pg:5432 -> pod data/db-1:15432 (10.2.0.2)",
            "slices={slices}"
        );
        let (mut client, _relay) = spawn_relay(c);
        client.write_all(b"select 1").await.unwrap();
        let mut buf = [0u8; 8];
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"select 1");
    }
    assert!(
        api.requests()
            .iter()
            .any(|r| r.starts_with("GET /api/v1/namespaces/data/endpoints/pg")),
        "Endpoints fallback never used: {:?}",
        api.requests()
    );

    // A port the service does not have, and a service that does not exist.
    match open(&kube, "pg.data.svc", 5433).await {
        Err(connect::Error::ServicePort { port: 5433, .. }) => {}
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("forwarded to a port the service does not have"),
    }
    match open(&kube, "nope.data.svc", 5432).await {
        Err(connect::Error::ServiceNotFound(_)) => {}
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("forwarded to a missing service"),
    }
    // No ready endpoint at all.
    api.set_ready("data", "db-1", false);
    match open(&kube, "pg.data.svc", 5432).await {
        Err(connect::Error::NoReadyEndpoint(_)) => {}
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("forwarded with no ready endpoint"),
    }
}
