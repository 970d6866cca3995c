//! The russh [`Handler`] for one connection: a thin adapter. Authentication
//! runs the certificate verifier (`ca::verify`) or the break-glass key list
//! and audits every attempt; channel and global requests are answered here
//! (refusals audited as `request-denied` events), and a shell/exec request
//! hands the channel to its own session task ([`super::session`]). Bytes,
//! EOF, resizes and signals for a running channel are forwarded to that task,
//! so nothing here waits on a child or on a policy approval.
//!
//! The `Channel<Msg>` russh hands to `channel_open_session` is dropped at
//! once: russh then delivers everything through these callbacks only (a
//! half-consumed channel would stall the connection once its buffer fills).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use russh::keys::ssh_key::{Certificate, HashAlg};
use russh::server::{Auth, ChannelOpenHandle, Handler, Msg, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, ChannelOpenFailure, Pty};
use tokio::sync::watch;

use super::Shared;
use super::session::{self, Control, Ctl, Input, PtyReq, Request};
use crate::audit::connections::AuthAttempt;
use crate::audit::events::Event;
use crate::ca::verify::{Context, VerifiedCert, verify_user_cert};
use crate::identity::Identity;

/// What the accept loop learns about authentication attempts it cannot see.
#[derive(Debug, Default)]
pub struct AuthProbe {
    attempts: AtomicU32,
    last_user: Mutex<String>,
}

impl AuthProbe {
    pub fn attempts(&self) -> u32 {
        self.attempts.load(Ordering::Relaxed)
    }
    pub fn last_user(&self) -> String {
        match self.last_user.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
    fn set_user(&self, u: &str) {
        match self.last_user.lock() {
            Ok(mut g) => *g = u.to_string(),
            Err(p) => *p.into_inner() = u.to_string(),
        }
    }
}

/// The authenticated caller of this connection.
#[derive(Debug, Clone)]
pub struct Authed {
    /// Login name the client asked for (a certificate principal).
    pub user: String,
    pub identity: Identity,
    /// Present for certificate logins; break-glass keys carry no options.
    pub cert: Option<VerifiedCert>,
}

impl Authed {
    pub fn permit_pty(&self) -> bool {
        self.cert.as_ref().is_none_or(|c| c.permit_pty)
    }
    pub fn force_command(&self) -> Option<&str> {
        self.cert.as_ref().and_then(|c| c.force_command.as_deref())
    }
}

/// `env` requests accepted so far on a channel.
type EnvList = Vec<(String, String)>;

enum Chan {
    /// Opened; collecting pty-req and env before shell/exec.
    Pending {
        pty: Option<PtyReq>,
        env: Vec<(String, String)>,
    },
    Running(Control),
    /// Refused or finished; further requests are refused.
    Done,
}

/// One connection's handler.
pub struct ConnHandler {
    shared: Arc<Shared>,
    conn_id: String,
    peer: SocketAddr,
    authed: Option<Authed>,
    authed_tx: watch::Sender<bool>,
    running: watch::Sender<usize>,
    probe: Arc<AuthProbe>,
    channels: HashMap<ChannelId, Chan>,
    /// Session channels opened so far on this connection (MaxSessions-like).
    opened: u32,
    /// The connection's span (peer, id, user): russh runs this handler in a
    /// task of its own, which does not inherit the accept loop's span.
    span: tracing::Span,
}

impl ConnHandler {
    pub fn new(
        shared: Arc<Shared>,
        conn_id: String,
        peer: SocketAddr,
        authed_tx: watch::Sender<bool>,
        running: watch::Sender<usize>,
        probe: Arc<AuthProbe>,
        span: tracing::Span,
    ) -> Self {
        Self {
            span,
            shared,
            conn_id,
            peer,
            authed: None,
            authed_tx,
            running,
            probe,
            channels: HashMap::new(),
            opened: 0,
        }
    }

    fn attempt(&self, a: AuthAttempt<'_>) {
        let _g = self.span.enter();
        self.probe.attempts.fetch_add(1, Ordering::Relaxed);
        let verdict = if a.accepted { "accepted" } else { "REJECTED" };
        tracing::info!(
            user = a.user,
            method = a.method,
            key_id = a.key_id.unwrap_or(""),
            serial = a.serial.unwrap_or(0),
            fingerprint = a.fingerprint.unwrap_or(""),
            "authentication {verdict}: {}",
            a.reason
        );
        if let Err(e) = self.shared.store.record_auth_attempt(&a) {
            tracing::error!(error = %e, "audit: cannot record authentication attempt");
        }
    }

    /// Record a refused request and log it.
    fn denied(&self, detail: &str, reason: &str) {
        let _g = self.span.enter();
        let subject = self.authed.as_ref().map(|a| a.identity.subject.as_str());
        tracing::info!(
            subject = subject.unwrap_or(""),
            "request denied: {detail}: {reason}"
        );
        if let Err(e) = self.shared.store.record_event(&Event {
            connection_id: Some(&self.conn_id),
            kind: "request-denied",
            subject,
            detail,
            decision: Some("deny"),
            reason: Some(reason),
            ..Default::default()
        }) {
            tracing::error!(error = %e, "audit: cannot record event");
        }
    }

    fn accept_login(&mut self, authed: Authed) {
        let key_id = authed.cert.as_ref().map(|c| c.key_id.as_str());
        let serial = authed.cert.as_ref().map(|c| c.serial);
        if let Err(e) = self.shared.store.connection_authenticated(
            &self.conn_id,
            &authed.user,
            &authed.identity,
            key_id,
            serial,
        ) {
            tracing::error!(error = %e, "audit: cannot record login");
        }
        self.span.record("user", authed.user.as_str());
        self.authed = Some(authed);
    }

    fn pending_mut(&mut self, ch: ChannelId) -> Option<(&mut Option<PtyReq>, &mut EnvList)> {
        match self.channels.get_mut(&ch) {
            Some(Chan::Pending { pty, env }) => Some((pty, env)),
            _ => None,
        }
    }

    /// Start a shell or exec on `ch`, replying success or failure.
    fn start(
        &mut self,
        ch: ChannelId,
        command: Option<String>,
        session: &mut Session,
    ) -> Result<(), russh::Error> {
        let Some(authed) = self.authed.clone() else {
            return session.channel_failure(ch);
        };
        let (pty, env) = match self.channels.insert(ch, Chan::Done) {
            Some(Chan::Pending { pty, env }) => (pty, env),
            other => {
                // A second shell/exec on the same channel (RFC 4254 §6.5 allows one).
                if let Some(o) = other {
                    self.channels.insert(ch, o);
                }
                return session.channel_failure(ch);
            }
        };
        let req = Request {
            span: self.span.clone(),
            conn_id: self.conn_id.clone(),
            channel: ch,
            authed,
            requested: command,
            pty,
            env,
        };
        match session::start(&self.shared, req, session.handle(), self.running.clone()) {
            Ok(control) => {
                self.channels.insert(ch, Chan::Running(control));
                session.channel_success(ch)
            }
            Err(session::Refused::Failure) => session.channel_failure(ch),
            Err(session::Refused::Denied(message)) => {
                // Accept, explain on stderr, exit 126, close: the client
                // sees why instead of a bare "exec request failed".
                session.channel_success(ch)?;
                session.extended_data(ch, 1, bytes::Bytes::from(message))?;
                session.exit_status_request(ch, session::EXIT_DENIED)?;
                session.eof(ch)?;
                session.close(ch)
            }
        }
    }
}

impl Handler for ConnHandler {
    type Error = russh::Error;

    async fn auth_none(&mut self, user: &str) -> Result<Auth, Self::Error> {
        self.probe.set_user(user);
        Ok(Auth::reject())
    }

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        _offer: russh::server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        // Accept every offer so the signature is checked; the decision is
        // taken in auth_publickey / auth_openssh_certificate.
        self.probe.set_user(user);
        Ok(Auth::Accept)
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let fp = key.public_key.fingerprint(HashAlg::Sha256).to_string();
        let peer = self.peer.to_string();
        let found = self
            .shared
            .breakglass
            .iter()
            .find(|k| k.key.key_data() == key.public_key.key_data())
            .cloned();
        let Some(bg) = found else {
            let reason = if self.shared.breakglass.is_empty() {
                "plain public keys are not accepted (no break-glass authorized_keys file); use a certificate"
            } else {
                "plain public key not in the break-glass authorized_keys file"
            };
            self.attempt(AuthAttempt {
                connection_id: &self.conn_id,
                peer: &peer,
                user,
                method: "publickey",
                fingerprint: Some(&fp),
                accepted: false,
                reason,
                ..Default::default()
            });
            return Ok(Auth::reject());
        };
        self.attempt(AuthAttempt {
            connection_id: &self.conn_id,
            peer: &peer,
            user,
            method: "publickey",
            fingerprint: Some(&fp),
            key_id: Some(&bg.name),
            accepted: true,
            reason: "break-glass key",
            ..Default::default()
        });
        self.span.in_scope(|| {
            tracing::warn!(user, key = %bg.name, "BREAK-GLASS login with a plain key");
        });
        self.accept_login(Authed {
            user: user.to_string(),
            identity: Identity {
                issuer: "breakglass".into(),
                subject: bg.name.clone(),
                ..Default::default()
            },
            cert: None,
        });
        Ok(Auth::Accept)
    }

    async fn auth_openssh_certificate(
        &mut self,
        user: &str,
        certificate: &Certificate,
    ) -> Result<Auth, Self::Error> {
        let peer = self.peer.to_string();
        let cas = [self.shared.keys.user_ca_public().clone()];
        let ctx = Context {
            trusted_cas: &cas,
            login: user,
            peer: self.peer.ip(),
            now: crate::ca::keys::unix_now(),
            skew: self.shared.config.ssh.clock_skew.as_secs(),
        };
        let store = self.shared.store.clone();
        let fp = russh::keys::ssh_key::PublicKey::from(certificate.public_key().clone())
            .fingerprint(HashAlg::Sha256)
            .to_string();
        match verify_user_cert(certificate, &ctx, |serial, key_id, id| {
            store.revocation_reason(serial, key_id, &id.subject)
        }) {
            Ok(v) => {
                self.attempt(AuthAttempt {
                    connection_id: &self.conn_id,
                    peer: &peer,
                    user,
                    method: "certificate",
                    fingerprint: Some(&v.fingerprint),
                    key_id: Some(&v.key_id),
                    serial: Some(v.serial),
                    accepted: true,
                    reason: &format!("certificate for {}", v.identity.display()),
                });
                self.accept_login(Authed {
                    user: user.to_string(),
                    identity: v.identity.clone(),
                    cert: Some(v),
                });
                Ok(Auth::Accept)
            }
            Err(rej) => {
                self.attempt(AuthAttempt {
                    connection_id: &self.conn_id,
                    peer: &peer,
                    user,
                    method: "certificate",
                    fingerprint: Some(&fp),
                    key_id: Some(certificate.key_id()),
                    serial: Some(certificate.serial()),
                    accepted: false,
                    reason: &rej.to_string(),
                });
                Ok(Auth::reject())
            }
        }
    }

    async fn auth_succeeded(&mut self, _session: &mut Session) -> Result<(), Self::Error> {
        let _ = self.authed_tx.send(true);
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let id = channel.id();
        drop(channel);
        if self.authed.is_none() {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        let max = self.shared.config.ssh.max_channels;
        let live = self
            .channels
            .values()
            .filter(|c| !matches!(c, Chan::Done))
            .count() as u32;
        if live >= max {
            self.denied(
                "session channel",
                &format!("more than {max} session channels on one connection (ssh.max_channels)"),
            );
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        }
        self.opened += 1;
        self.channels.insert(
            id,
            Chan::Pending {
                pty: None,
                env: Vec::new(),
            },
        );
        reply.accept().await;
        Ok(())
    }

    async fn channel_open_x11(
        &mut self,
        channel: Channel<Msg>,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        drop(channel);
        self.denied("x11 channel", "X11 forwarding is not offered");
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        drop(channel);
        // Until the tunnel module is wired in, no forwarding at all: users
        // bypassed recording through -L to a target's sshd (warpgate #950).
        self.denied(
            &format!("direct-tcpip {host_to_connect}:{port_to_connect}"),
            "port forwarding is not enabled on this bastion",
        );
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn channel_open_forwarded_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        drop(channel);
        self.denied(
            &format!("forwarded-tcpip {host_to_connect}:{port_to_connect}"),
            "clients may not open forwarded-tcpip channels",
        );
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn channel_open_direct_streamlocal(
        &mut self,
        channel: Channel<Msg>,
        socket_path: &str,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        drop(channel);
        self.denied(
            &format!("direct-streamlocal {socket_path}"),
            "unix socket forwarding is not offered",
        );
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        col_width: u32,
        row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if !self.authed.as_ref().is_some_and(|a| a.permit_pty()) {
            self.denied("pty-req", "the certificate lacks permit-pty");
            return session.channel_failure(channel);
        }
        let Some((pty, _)) = self.pending_mut(channel) else {
            return session.channel_failure(channel);
        };
        *pty = Some(PtyReq {
            term: term.to_string(),
            cols: col_width,
            rows: row_height,
        });
        session.channel_success(channel)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        variable_name: &str,
        variable_value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if !self.shared.env_allow.is_match(variable_name) {
            self.denied(&format!("env {variable_name}"), "name not in ssh.env_allow");
            return session.channel_failure(channel);
        }
        let Some((_, env)) = self.pending_mut(channel) else {
            return session.channel_failure(channel);
        };
        if env.len() >= 64 {
            return session.channel_failure(channel);
        }
        env.push((variable_name.to_string(), variable_value.to_string()));
        session.channel_success(channel)
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.denied("x11-req", "X11 forwarding is not offered");
        session.channel_failure(channel)
    }

    async fn agent_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.denied(
            "auth-agent-req@openssh.com",
            "agent forwarding is not offered (the bastion never holds client keys)",
        );
        session.channel_failure(channel)?;
        Ok(false)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.denied(
            &format!("subsystem {name}"),
            "subsystems (sftp included) are not offered; file transfers would bypass recording",
        );
        self.channels.insert(channel, Chan::Done);
        session.channel_failure(channel)
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.start(channel, None, session)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let cmd = String::from_utf8_lossy(data).into_owned();
        self.start(channel, Some(cmd), session)
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        col_width: u32,
        row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        match self.channels.get_mut(&channel) {
            Some(Chan::Running(c)) => c.ctl(Ctl::Resize(col_width, row_height)),
            Some(Chan::Pending { pty: Some(p), .. }) => {
                p.cols = col_width;
                p.rows = row_height;
            }
            _ => {}
        }
        Ok(())
    }

    async fn signal(
        &mut self,
        channel: ChannelId,
        signal: russh::Sig,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(Chan::Running(c)) = self.channels.get(&channel) {
            c.ctl(Ctl::Signal(super::sig_name(&signal)));
        }
        Ok(())
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(Chan::Running(c)) = self.channels.get(&channel) {
            c.input(Input::Data(bytes::Bytes::copy_from_slice(data)))
                .await;
        }
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(Chan::Running(c)) = self.channels.get(&channel) {
            c.input(Input::Eof).await;
        }
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(Chan::Running(c)) = self.channels.remove(&channel) {
            c.ctl(Ctl::ClientClosed);
        }
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.denied(
            &format!("tcpip-forward {address}:{port}"),
            "remote port forwarding (ssh -R) is not offered",
        );
        Ok(false)
    }

    async fn streamlocal_forward(
        &mut self,
        socket_path: &str,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.denied(
            &format!("streamlocal-forward {socket_path}"),
            "remote unix socket forwarding is not offered",
        );
        Ok(false)
    }
}

impl Drop for ConnHandler {
    fn drop(&mut self) {
        // The connection is gone: end what still runs (children get SIGHUP).
        for (_, c) in self.channels.drain() {
            if let Chan::Running(c) = c {
                c.ctl(Ctl::ClientClosed);
            }
        }
    }
}
