//! The accept loop and the limits applied before authentication, modelled on
//! sshd: a pre-auth deadline (LoginGraceTime — also covers clients that never
//! send a version string, since the deadline wraps the whole handshake), a
//! global cap on unauthenticated connections (MaxStartups), a per-source
//! concurrent cap and a per-source connection rate (PerSourceMaxStartups,
//! PerSourcePenalties) with `governor`. We drive `russh::server::run_stream`
//! ourselves because `Server::run_on_socket`'s `new_client` cannot refuse a
//! connection. Each connection runs in its own task with a tracing span;
//! its failure is logged and never reaches another connection.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tracing::Instrument;

use super::handler::ConnHandler;
use super::{Error, Shared};

/// How long shutdown waits for sessions to send their exit status before the
/// connections are cut.
const SHUTDOWN_SESSION_GRACE: Duration = Duration::from_secs(5);

/// Unauthenticated connections per source IP, released on drop.
#[derive(Clone, Default)]
struct PerSource {
    counts: Arc<Mutex<HashMap<IpAddr, u32>>>,
}

struct PerSourceGuard {
    ip: IpAddr,
    counts: Arc<Mutex<HashMap<IpAddr, u32>>>,
}

impl PerSource {
    fn try_acquire(&self, ip: IpAddr, max: u32) -> Option<PerSourceGuard> {
        let mut m = match self.counts.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let n = m.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(PerSourceGuard {
            ip,
            counts: Arc::clone(&self.counts),
        })
    }
}

impl Drop for PerSourceGuard {
    fn drop(&mut self) {
        let mut m = match self.counts.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some(n) = m.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// Permits a connection holds until it authenticates.
struct PreAuth {
    _global: OwnedSemaphorePermit,
    _source: PerSourceGuard,
}

/// Run the accept loop until shutdown, then wait for every connection.
pub async fn run(shared: Arc<Shared>, listener: TcpListener) -> Result<(), Error> {
    let cfg = &shared.config.ssh;
    let unauth = Arc::new(Semaphore::new(cfg.max_unauthenticated as usize));
    let per_source = PerSource::default();
    let rate = NonZeroU32::new(cfg.per_source_per_minute).unwrap_or(NonZeroU32::MIN);
    let limiter: Arc<DefaultKeyedRateLimiter<IpAddr>> =
        Arc::new(RateLimiter::keyed(Quota::per_minute(rate)));
    // Every connection task holds a clone; recv() returns None once all ended.
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let mut accepted: u64 = 0;
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: log, back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        accepted += 1;
        if accepted.is_multiple_of(1024) {
            limiter.retain_recent();
        }
        let ip = peer.ip();
        if limiter.check_key(&ip).is_err() {
            tracing::warn!(%peer, "refused: more than {} connections per minute from {ip}", cfg.per_source_per_minute);
            continue;
        }
        let Ok(global) = Arc::clone(&unauth).try_acquire_owned() else {
            tracing::warn!(%peer, "refused: {} unauthenticated connections already open (ssh.max_unauthenticated)", cfg.max_unauthenticated);
            continue;
        };
        let Some(source) = per_source.try_acquire(ip, cfg.per_source_max_unauthenticated) else {
            tracing::warn!(%peer, "refused: {} unauthenticated connections from {ip} already open (ssh.per_source_max_unauthenticated)", cfg.per_source_max_unauthenticated);
            continue;
        };
        let conn_id = uuid::Uuid::now_v7().to_string();
        let span = tracing::info_span!("conn", id = %conn_id, %peer, user = tracing::field::Empty);
        let shared = Arc::clone(&shared);
        // Taken per connection: a renewed host certificate applies from the
        // next accepted connection on.
        let russh_config = shared.russh_config();
        let done = done_tx.clone();
        tokio::spawn(
            async move {
                let pre = PreAuth {
                    _global: global,
                    _source: source,
                };
                connection(shared, russh_config, tcp, peer, conn_id, pre).await;
                drop(done);
            }
            .instrument(span),
        );
    }
    drop(done_tx);
    tracing::info!("no longer accepting connections; waiting for open connections to end");
    let _ = done_rx.recv().await;
    Ok(())
}

async fn connection(
    shared: Arc<Shared>,
    russh_config: Arc<russh::server::Config>,
    tcp: TcpStream,
    peer: SocketAddr,
    conn_id: String,
    pre: PreAuth,
) {
    // A duplicate of the socket lets us cut the connection from outside
    // russh (deadline, shutdown) even while it waits on a stalled peer.
    let (tcp, killer) = match split_killer(tcp) {
        Ok(x) => x,
        Err(e) => {
            tracing::warn!(error = %e, "cannot set up connection");
            return;
        }
    };
    if let Err(e) = shared.store.connection_opened(&conn_id, &peer.to_string()) {
        tracing::error!(error = %e, "audit: cannot record connection; refusing it");
        return;
    }
    let grace = shared.config.ssh.login_grace_time;
    let deadline = tokio::time::Instant::now() + grace;
    let (authed_tx, mut authed_rx) = watch::channel(false);
    let (running_tx, mut running_rx) = watch::channel(0usize);
    let probe = Arc::new(super::handler::AuthProbe::default());
    let handler = ConnHandler::new(
        Arc::clone(&shared),
        conn_id.clone(),
        peer,
        authed_tx,
        running_tx,
        Arc::clone(&probe),
        tracing::Span::current(),
    );
    let store = shared.store.clone();
    let started = tokio::time::timeout_at(
        deadline,
        russh::server::run_stream(russh_config, tcp, handler),
    )
    .await;
    let session = match started {
        Err(_) => {
            tracing::info!(
                "dropped: no SSH version string before the login grace time ({grace:?})"
            );
            let _ =
                store.connection_closed(&conn_id, "login grace time exceeded (no version string)");
            return;
        }
        Ok(Err(e)) => {
            tracing::info!(error = %e, "handshake failed");
            let _ = store.connection_closed(&conn_id, &format!("handshake failed: {e}"));
            return;
        }
        Ok(Ok(s)) => s,
    };
    let handle = session.handle();
    tokio::pin!(session);
    let mut pre = Some(pre);
    let mut end_reason: Option<String> = None;
    loop {
        let authed = *authed_rx.borrow();
        if authed {
            // Authenticated: free the pre-auth slots for others.
            pre.take();
        }
        tokio::select! {
            r = &mut session => {
                match r {
                    Ok(()) => tracing::info!("connection closed"),
                    // Most clients just drop TCP after their last channel closes.
                    Err(russh::Error::IO(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                        tracing::info!("connection closed by the client");
                    }
                    Err(e) => {
                        tracing::info!(error = %e, "connection ended");
                        if end_reason.is_none() {
                            end_reason = Some(format!("error: {e}"));
                        }
                    }
                }
                break;
            }
            _ = tokio::time::sleep_until(deadline), if !authed => {
                tracing::info!("dropped: not authenticated within the login grace time ({grace:?})");
                end_reason = Some("login grace time exceeded".into());
                let _ = killer.shutdown(std::net::Shutdown::Both);
                // Give russh a moment to notice; it will end on the dead socket.
                let _ = tokio::time::timeout(Duration::from_secs(2), &mut session).await;
                break;
            }
            r = authed_rx.changed(), if !authed => {
                if r.is_err() {
                    // Handler gone: the session is ending; wait for it.
                    let _ = (&mut session).await;
                    break;
                }
            }
            _ = shared.shutdown.cancelled() => {
                end_reason = Some("server shutdown".into());
                // Sessions see the same token: they kill their children and
                // send exit-status and close. Wait for that, then hang up.
                let _ = tokio::time::timeout(
                    SHUTDOWN_SESSION_GRACE,
                    running_rx.wait_for(|n| *n == 0),
                )
                .await;
                let _ = handle
                    .disconnect(russh::Disconnect::ByApplication, "server shutting down".into(), String::new())
                    .await;
                if tokio::time::timeout(Duration::from_secs(2), &mut session).await.is_err() {
                    let _ = killer.shutdown(std::net::Shutdown::Both);
                    let _ = tokio::time::timeout(Duration::from_secs(1), &mut session).await;
                }
                break;
            }
        }
    }
    let authed = *authed_rx.borrow();
    let reason = end_reason.unwrap_or_else(|| {
        if authed {
            "client closed".into()
        } else {
            "client closed before authenticating".into()
        }
    });
    if !authed {
        // russh refuses expired, not-yet-valid and badly signed certificates
        // before the handler sees them, so the verifier never wrote a row for
        // those: this closing row makes every failed login visible.
        let _ = store.record_auth_attempt(&crate::audit::connections::AuthAttempt {
            connection_id: &conn_id,
            peer: &peer.to_string(),
            user: &probe.last_user(),
            method: "publickey",
            accepted: false,
            reason: &format!(
                "not authenticated: {reason} ({} credential(s) judged by sallyport; \
                 certificates outside their validity window are refused inside russh)",
                probe.attempts()
            ),
            ..Default::default()
        });
    }
    let _ = store.connection_closed(&conn_id, &reason);
}

/// Split a tokio stream into itself and a std duplicate whose `shutdown`
/// cuts the connection.
fn split_killer(tcp: TcpStream) -> std::io::Result<(TcpStream, std::net::TcpStream)> {
    let std = tcp.into_std()?;
    let killer = std.try_clone()?;
    let tcp = TcpStream::from_std(std)?;
    Ok((tcp, killer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_source_cap_and_release() {
        let p = PerSource::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let a = p.try_acquire(ip, 2).unwrap();
        let _b = p.try_acquire(ip, 2).unwrap();
        assert!(p.try_acquire(ip, 2).is_none());
        assert!(p.try_acquire("10.0.0.2".parse().unwrap(), 2).is_some());
        drop(a);
        assert!(p.try_acquire(ip, 2).is_some());
    }
}
