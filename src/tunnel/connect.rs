//! Connecting to a resolved target: TCP (connect timeout, `TCP_NODELAY`,
//! addresses tried in order) and Kubernetes pods through the API server's
//! port-forward (`kube::Api::<Pod>::portforward`, WebSocket), services by
//! picking a ready endpoint (EndpointSlices, falling back to Endpoints).
//!
//! A Kubernetes forward must not outlive its pod: [`Connected::ended`] is a
//! future that resolves with a reason when the port-forward reports an error
//! (port closed) or the pod is gone/not running (polled), and the relay stops
//! on it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::config::KubeConfig;

/// Anything the relay can copy to and from.
pub trait Duplex: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Duplex for T {}

/// A boxed target stream.
pub type BoxStream = Box<dyn Duplex>;

/// Errors while connecting. Each names the target.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The target did not answer within the connect timeout.
    #[error("connecting to {0} timed out")]
    Timeout(String),
    /// The target actively refused.
    #[error("{0} refused the connection")]
    Refused(String),
    /// Any other socket error.
    #[error("connecting to {addr}: {source}")]
    Io {
        addr: String,
        source: std::io::Error,
    },
    /// No Kubernetes client could be built (kubeconfig, in-cluster).
    #[error("kubernetes client: {0}")]
    KubeClient(String),
    /// The pod does not exist.
    #[error("pod {0} not found")]
    PodNotFound(String),
    /// The pod exists but is not running.
    #[error("pod {pod} is not running (phase {phase})")]
    PodNotRunning { pod: String, phase: String },
    /// The service does not exist or has no such port.
    #[error("service {0} not found")]
    ServiceNotFound(String),
    #[error("service {service} has no port {port}")]
    ServicePort { service: String, port: u16 },
    /// No ready pod behind the service.
    #[error("service {0} has no ready endpoint")]
    NoReadyEndpoint(String),
    /// The API server refused or failed a request.
    #[error("kubernetes API: {0}")]
    Kube(String),
}

/// A connected target.
pub struct Connected {
    pub stream: BoxStream,
    /// What was actually reached (`127.0.0.1:5432`, `pod dev/web-0:8080 (10.1.2.3)`).
    pub resolved: String,
    /// Resolves with a reason when the target is gone (Kubernetes forwards);
    /// `None` for plain TCP, whose end shows up as EOF or an error.
    pub ended: Option<BoxFuture<'static, String>>,
    /// Relay options: Kubernetes port-forwards cannot half-close.
    pub relay: crate::tunnel::relay::Options,
}

/// How long a Kubernetes forward waits for the pod's reply after the
/// client's EOF before closing (the v4 port-forward has no half-close).
pub const KUBE_EOF_LINGER: Duration = Duration::from_secs(1);

/// Connect to the first address that answers, within `timeout` overall.
pub async fn tcp(addrs: &[SocketAddr], timeout: Duration) -> Result<Connected, Error> {
    let shown = addrs
        .first()
        .map(|a| a.to_string())
        .unwrap_or_else(|| "<no address>".into());
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = Error::Timeout(shown);
    for addr in addrs {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            break;
        }
        match tokio::time::timeout(left, TcpStream::connect(addr)).await {
            Err(_) => last = Error::Timeout(addr.to_string()),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                last = Error::Refused(addr.to_string())
            }
            Ok(Err(source)) => {
                last = Error::Io {
                    addr: addr.to_string(),
                    source,
                }
            }
            Ok(Ok(s)) => {
                // Interactive protocols (ssh -J, psql) suffer from Nagle;
                // bulk transfers fill segments anyway.
                let _ = s.set_nodelay(true);
                return Ok(Connected {
                    stream: Box::new(s),
                    resolved: addr.to_string(),
                    ended: None,
                    relay: Default::default(),
                });
            }
        }
    }
    Err(last)
}

/// Connect to a parsed target: TCP to `addrs` (already resolved and
/// checked), or a Kubernetes pod/service through `kube`.
pub async fn target(
    kube: &Kube,
    target: &crate::tunnel::resolve::Target,
    addrs: &[SocketAddr],
    timeout: Duration,
) -> Result<Connected, Error> {
    use crate::tunnel::resolve::Target;
    match target {
        Target::Tcp { .. } => tcp(addrs, timeout).await,
        Target::Pod {
            namespace,
            name,
            port,
        } => kube.pod(namespace, name, *port).await,
        Target::Service {
            namespace,
            name,
            port,
        } => kube.service(namespace, name, *port).await,
    }
}

/// Lazily built Kubernetes client (the bastion's own credentials).
pub struct Kube {
    config: KubeConfig,
    client: tokio::sync::OnceCell<kube::Client>,
    /// How often a forwarded pod is checked for existence.
    pub pod_check_interval: Duration,
}

impl std::fmt::Debug for Kube {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kube")
            .field("kubeconfig", &self.config.kubeconfig)
            .field("context", &self.config.context)
            .finish_non_exhaustive()
    }
}

impl Kube {
    pub fn new(config: KubeConfig) -> Self {
        Self {
            config,
            client: tokio::sync::OnceCell::new(),
            pod_check_interval: Duration::from_secs(5),
        }
    }

    async fn build(&self) -> Result<kube::Client, Error> {
        // Both rustls backends are in the dependency tree, so rustls cannot
        // pick one itself; ring is what kube's `ring` feature asks for. An
        // already installed provider (e.g. by `serve`) wins.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let cfg = match &self.config.kubeconfig {
            Some(path) => from_kubeconfig(path, self.config.context.clone()).await?,
            None => kube::Config::incluster().map_err(|e| {
                Error::KubeClient(format!(
                    "no [kube] kubeconfig configured and not running in a pod ({e})"
                ))
            })?,
        };
        kube::Client::try_from(cfg).map_err(|e| Error::KubeClient(e.to_string()))
    }

    /// The client, built on first use.
    pub async fn client(&self) -> Result<kube::Client, Error> {
        self.client.get_or_try_init(|| self.build()).await.cloned()
    }

    /// Port-forward to `port` of pod `namespace/name`.
    pub async fn pod(&self, namespace: &str, name: &str, port: u16) -> Result<Connected, Error> {
        let client = self.client().await?;
        let pods: Api<Pod> = Api::namespaced(client, namespace);
        let shown = format!("{namespace}/{name}");
        let pod = pods
            .get_opt(name)
            .await
            .map_err(|e| Error::Kube(e.to_string()))?
            .ok_or_else(|| Error::PodNotFound(shown.clone()))?;
        let phase = pod_phase(&pod);
        if phase != "Running" || pod.metadata.deletion_timestamp.is_some() {
            return Err(Error::PodNotRunning { pod: shown, phase });
        }
        let ip = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .unwrap_or_default();
        let mut pf = pods
            .portforward(name, &[port])
            .await
            .map_err(|e| Error::Kube(e.to_string()))?;
        let stream = pf
            .take_stream(port)
            .ok_or_else(|| Error::Kube("port-forward returned no stream".into()))?;
        let errors = pf.take_error(port);
        let interval = self.pod_check_interval;
        let uid = pod.metadata.uid.clone();
        let name = name.to_string();
        let ended = async move {
            // Keep the forwarder alive as long as the relay waits on us; abort
            // its task when we are dropped (relay over).
            let _guard = AbortOnDrop(pf);
            let error = async move {
                match errors {
                    Some(e) => match e.await {
                        Some(msg) => format!("port-forward error: {}", msg.trim()),
                        None => "port-forward stream ended".to_string(),
                    },
                    None => futures::future::pending().await,
                }
            };
            let gone = watch_pod(pods, name, uid, interval);
            futures::pin_mut!(error, gone);
            match futures::future::select(error, gone).await {
                futures::future::Either::Left((r, _)) | futures::future::Either::Right((r, _)) => r,
            }
        }
        .boxed();
        let resolved = if ip.is_empty() {
            format!("pod {shown}:{port}")
        } else {
            format!("pod {shown}:{port} ({ip})")
        };
        Ok(Connected {
            stream: Box::new(stream),
            resolved,
            ended: Some(ended),
            relay: crate::tunnel::relay::Options {
                eof_linger: Some(KUBE_EOF_LINGER),
            },
        })
    }

    /// Port-forward to a ready pod behind service `namespace/name` port `port`.
    pub async fn service(
        &self,
        namespace: &str,
        name: &str,
        port: u16,
    ) -> Result<Connected, Error> {
        let client = self.client().await?;
        let shown = format!("{namespace}/{name}");
        let svcs: Api<Service> = Api::namespaced(client.clone(), namespace);
        let svc = svcs
            .get_opt(name)
            .await
            .map_err(|e| Error::Kube(e.to_string()))?
            .ok_or_else(|| Error::ServiceNotFound(shown.clone()))?;
        let sport = svc
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .and_then(|ps| ps.iter().find(|p| p.port == i32::from(port)))
            .ok_or_else(|| Error::ServicePort {
                service: shown.clone(),
                port,
            })?;
        let port_name = sport.name.clone();
        let (pod, target_port) = match ready_from_slices(&client, namespace, name, &port_name).await
        {
            Ok(Some(found)) => found,
            // EndpointSlices unreadable (old cluster, RBAC): the Endpoints API.
            Ok(None) | Err(_) => ready_from_endpoints(&client, namespace, name, &port_name)
                .await?
                .ok_or_else(|| Error::NoReadyEndpoint(shown.clone()))?,
        };
        let mut c = self.pod(namespace, &pod, target_port).await?;
        c.resolved = format!("service {shown}:{port} -> {}", c.resolved);
        Ok(c)
    }
}

async fn from_kubeconfig(path: &PathBuf, context: Option<String>) -> Result<kube::Config, Error> {
    let kc = kube::config::Kubeconfig::read_from(path)
        .map_err(|e| Error::KubeClient(format!("{}: {e}", path.display())))?;
    let opts = kube::config::KubeConfigOptions {
        context,
        ..Default::default()
    };
    kube::Config::from_custom_kubeconfig(kc, &opts)
        .await
        .map_err(|e| Error::KubeClient(format!("{}: {e}", path.display())))
}

fn pod_phase(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_else(|| "Unknown".into())
}

/// Resolves when the pod is deleted, replaced (new uid) or stops running.
async fn watch_pod(
    pods: Api<Pod>,
    name: String,
    uid: Option<String>,
    interval: Duration,
) -> String {
    let mut failures = 0u32;
    loop {
        tokio::time::sleep(interval).await;
        match pods.get_opt(&name).await {
            Ok(None) => return format!("pod {name} is gone"),
            Ok(Some(p)) if p.metadata.uid != uid => return format!("pod {name} was replaced"),
            Ok(Some(p)) if p.metadata.deletion_timestamp.is_some() => {
                return format!("pod {name} is terminating");
            }
            Ok(Some(p)) if pod_phase(&p) != "Running" => {
                return format!("pod {name} is {}", pod_phase(&p));
            }
            Ok(Some(_)) => failures = 0,
            // A flaky API server alone does not end a forward, a dead one does.
            Err(e) => {
                failures += 1;
                if failures >= 3 {
                    return format!("cannot check pod {name}: {e}");
                }
            }
        }
    }
}

/// Picks (pod, port) from EndpointSlices. `Ok(None)` = no slices.
async fn ready_from_slices(
    client: &kube::Client,
    namespace: &str,
    service: &str,
    port_name: &Option<String>,
) -> Result<Option<(String, u16)>, Error> {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), namespace);
    let lp = ListParams::default().labels(&format!("kubernetes.io/service-name={service}"));
    let list = api
        .list(&lp)
        .await
        .map_err(|e| Error::Kube(e.to_string()))?;
    if list.items.is_empty() {
        return Ok(None);
    }
    for slice in &list.items {
        let Some(port) = slice
            .ports
            .iter()
            .flatten()
            .find(|p| &p.name == port_name || port_name.is_none())
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        for ep in slice.endpoints.iter().flatten() {
            let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            let pod = ep
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| r.name.clone());
            if let (true, Some(pod)) = (ready, pod) {
                return Ok(Some((pod, port)));
            }
        }
    }
    Ok(None)
}

/// Picks (pod, port) from the Endpoints object.
async fn ready_from_endpoints(
    client: &kube::Client,
    namespace: &str,
    service: &str,
    port_name: &Option<String>,
) -> Result<Option<(String, u16)>, Error> {
    let api: Api<Endpoints> = Api::namespaced(client.clone(), namespace);
    let Some(eps) = api
        .get_opt(service)
        .await
        .map_err(|e| Error::Kube(e.to_string()))?
    else {
        return Ok(None);
    };
    for subset in eps.subsets.iter().flatten() {
        let Some(port) = subset
            .ports
            .iter()
            .flatten()
            .find(|p| &p.name == port_name || port_name.is_none())
            .and_then(|p| u16::try_from(p.port).ok())
        else {
            continue;
        };
        // `addresses` holds only ready endpoints (notReadyAddresses the rest).
        for a in subset.addresses.iter().flatten() {
            if let Some(r) = &a.target_ref
                && r.kind.as_deref() == Some("Pod")
                && let Some(pod) = &r.name
            {
                return Ok(Some((pod.clone(), port)));
            }
        }
    }
    Ok(None)
}

struct AbortOnDrop(kube::api::Portforwarder);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refused_is_a_clean_error() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        match tcp(&[addr], Duration::from_secs(5)).await {
            Err(Error::Refused(a)) => assert_eq!(a, addr.to_string()),
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("connected to a closed port"),
        }
    }

    /// A listener whose accept queue is full: further SYNs are dropped, so
    /// connecting hangs (what a firewalled or wedged target looks like).
    async fn hanging_listener() -> (tokio::net::TcpListener, SocketAddr, Vec<TcpStream>) {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let l = sock.listen(0).unwrap();
        let addr = l.local_addr().unwrap();
        let mut fill = Vec::new();
        for _ in 0..64 {
            match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
                Ok(Ok(s)) => fill.push(s),
                _ => return (l, addr, fill),
            }
        }
        panic!("accept queue never filled");
    }

    #[tokio::test]
    async fn hanging_target_times_out() {
        let (_l, addr, _fill) = hanging_listener().await;
        match tcp(&[addr], Duration::from_millis(300)).await {
            Err(Error::Timeout(a)) => assert_eq!(a, addr.to_string()),
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("connected to a full accept queue"),
        }
    }

    #[tokio::test]
    async fn connects_and_falls_through_dead_addresses() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let good = l.local_addr().unwrap();
        let dead = {
            let d = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            d.local_addr().unwrap()
        };
        let c = tcp(&[dead, good], Duration::from_secs(5)).await.unwrap();
        assert_eq!(c.resolved, good.to_string());
        assert!(c.ended.is_none());
    }
}
