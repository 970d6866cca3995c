//! The SSH server: accept loop (pre-auth deadline, unauthenticated-connection
//! cap, per-source limits), a thin russh handler, and one task per connection
//! that owns the session state.
//!
//! - [`accept`]: the TCP accept loop and every limit applied before a
//!   connection has authenticated (like sshd's LoginGraceTime, MaxStartups,
//!   PerSourceMaxStartups and PerSourcePenalties).
//! - [`handler`]: the russh [`russh::server::Handler`] — authentication
//!   (certificates through `ca::verify`, break-glass plain keys), channel
//!   and global requests, each refusal audited.
//! - [`masking`]: a session's secret masking (from its policy grant) and
//!   the per-channel output masker behind the output seam.
//! - [`reload`]: what a running session holds from policy, re-checked when
//!   the policy is reloaded; the session limits (max duration, idle).
//! - [`lineguard`]: the interactive line guard of pty shells: every line is
//!   checked with policy before its Enter reaches the shell.
//! - [`session`]: one task per shell/exec channel that pumps bytes between
//!   the child and the client through the two seams the masker and the
//!   command guard plug into ([`session::OutputSeam`], [`session::InputSeam`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use globset::GlobSet;
use russh::keys::ssh_key::{Certificate, PublicKey};
use tokio_util::sync::CancellationToken;

use crate::audit::Store;
use crate::ca::CaKeys;
use crate::config::Config;
use crate::policy::PolicyHandle;
use crate::shell::Account;

pub mod accept;
pub mod handler;
pub mod limits;
pub mod lineguard;
pub mod masking;
pub mod reload;
pub mod session;

/// Errors of the SSH server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The listening socket could not be bound or failed.
    #[error("ssh listener {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// `ssh.env_allow` holds a bad glob.
    #[error("ssh.env_allow: {0}")]
    EnvGlob(#[from] globset::Error),
    /// `<data_dir>/authorized_keys` cannot be read or parsed.
    #[error("{path}:{line}: {message}")]
    AuthorizedKeys {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// A break-glass key from `<data_dir>/authorized_keys`.
#[derive(Debug, Clone)]
pub struct BreakGlassKey {
    pub key: PublicKey,
    /// Key comment, or the fingerprint when there is none.
    pub name: String,
}

/// Everything connections share. Cheap to clone behind an `Arc`.
#[derive(Debug)]
pub struct Shared {
    pub config: Config,
    /// CA and host keys as loaded at start. The host certificate in use is
    /// the one in [`Shared::russh_config`] (renewed while running).
    pub keys: CaKeys,
    pub store: Store,
    pub policy: PolicyHandle,
    /// The OS account sessions run as.
    pub account: Account,
    /// Shell for sessions.
    pub shell: PathBuf,
    pub env_allow: GlobSet,
    pub breakglass: Vec<BreakGlassKey>,
    /// Cancelled on SIGINT/SIGTERM: stop accepting, end sessions.
    pub shutdown: CancellationToken,
    /// direct-tcpip forwards (`ssh -L`, `ssh -J`): targets, policy, audit.
    pub forwarder: Arc<crate::tunnel::Forwarder>,
    /// The russh configuration new connections get, replaced whole when the
    /// host certificate is renewed ([`Shared::set_host_cert`]); russh's
    /// `Config` is immutable once handed to a connection, so each accepted
    /// connection takes the one current at that moment.
    live: RwLock<Arc<russh::server::Config>>,
    /// Open shell/exec sessions per identity (policy `max_sessions`).
    pub sessions: limits::SessionCount,
}

impl Shared {
    /// Assemble the shared state, reading the break-glass key file.
    pub fn new(
        config: Config,
        keys: CaKeys,
        store: Store,
        policy: PolicyHandle,
        account: Account,
        shutdown: CancellationToken,
    ) -> Result<Self, Error> {
        let mut b = globset::GlobSetBuilder::new();
        for g in &config.ssh.env_allow {
            b.add(globset::Glob::new(g)?);
        }
        let env_allow = b.build()?;
        let breakglass = load_authorized_keys(&config.data_dir.join("authorized_keys"))?;
        let shell = crate::shell::pick_shell(config.ssh.shell.as_deref(), &account);
        // Forward targets under `approve` wait for `sallyport approvals`.
        let approver = crate::tunnel::approvals::DbApprover::new(store.clone(), policy.clone());
        let forwarder = crate::tunnel::Forwarder::with_approver(
            &config,
            policy.clone(),
            store.clone(),
            Arc::new(approver),
        );
        let live = RwLock::new(Arc::new(build_russh_config(
            &config,
            &keys,
            keys.host_cert.clone(),
        )));
        Ok(Self {
            sessions: limits::SessionCount::default(),
            config,
            keys,
            store,
            policy,
            account,
            shell,
            env_allow,
            breakglass,
            shutdown,
            forwarder,
            live,
        })
    }

    /// The russh server configuration for a connection accepted now: host
    /// key and current host certificate, publickey only, limits from `[ssh]`.
    pub fn russh_config(&self) -> Arc<russh::server::Config> {
        match self.live.read() {
            Ok(g) => Arc::clone(&g),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Present `cert` (a renewed host certificate for the same host key) on
    /// connections accepted from now on; open connections keep theirs.
    pub fn set_host_cert(&self, cert: Certificate) {
        let new = Arc::new(build_russh_config(&self.config, &self.keys, cert));
        match self.live.write() {
            Ok(mut g) => *g = new,
            Err(poisoned) => *poisoned.into_inner() = new,
        }
    }
}

/// Build the russh server configuration: host key and `host_cert`,
/// publickey only, limits from `[ssh]`.
fn build_russh_config(
    config: &Config,
    keys: &CaKeys,
    host_cert: Certificate,
) -> russh::server::Config {
    let s = &config.ssh;
    let mut methods = russh::MethodSet::empty();
    methods.push(russh::MethodKind::PublicKey);
    russh::server::Config {
        server_id: russh::SshId::Standard(
            format!("SSH-2.0-sallyport_{}", env!("CARGO_PKG_VERSION")).into(),
        ),
        methods,
        auth_rejection_time: Duration::from_millis(300),
        // OpenSSH probes with "none" first; no need to make that slow.
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![keys.host_key.clone()],
        certificates: vec![host_cert],
        max_auth_attempts: s.max_auth_tries as usize,
        inactivity_timeout: Some(s.inactivity_timeout),
        keepalive_interval: Some(s.keepalive_interval),
        keepalive_max: 3,
        nodelay: true,
        window_size: s.window_size,
        maximum_packet_size: s.max_packet_size,
        channel_buffer_size: s.channel_buffer as usize,
        preferred: russh::Preferred {
            cipher: std::borrow::Cow::Borrowed(CIPHERS),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Ciphers offered, AEAD first. russh's default list leaves out
/// aes128-gcm, which OpenSSH clients may be configured to require.
const CIPHERS: &[russh::cipher::Name] = &[
    russh::cipher::CHACHA20_POLY1305,
    russh::cipher::AES_256_GCM,
    russh::cipher::AES_128_GCM,
    russh::cipher::AES_256_CTR,
    russh::cipher::AES_192_CTR,
    russh::cipher::AES_128_CTR,
];

/// Parse an OpenSSH authorized_keys file of plain keys (no options). A
/// missing file means break-glass access is off.
pub fn load_authorized_keys(path: &std::path::Path) -> Result<Vec<BreakGlassKey>, Error> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(Error::AuthorizedKeys {
                path: path.to_path_buf(),
                line: 0,
                message: e.to_string(),
            });
        }
    };
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = PublicKey::from_openssh(line).map_err(|e| Error::AuthorizedKeys {
            path: path.to_path_buf(),
            line: i + 1,
            message: format!("not a plain OpenSSH public key (options are not supported): {e}"),
        })?;
        let name = if key.comment().is_empty() {
            key.fingerprint(russh::keys::ssh_key::HashAlg::Sha256)
                .to_string()
        } else {
            key.comment().to_string()
        };
        keys.push(BreakGlassKey { key, name });
    }
    Ok(keys)
}

/// Run the SSH server on `listener` until `shared.shutdown` is cancelled and
/// every connection has ended.
pub async fn serve(shared: Arc<Shared>, listener: tokio::net::TcpListener) -> Result<(), Error> {
    accept::run(shared, listener).await
}

/// RFC 4254 §6.10 signal name of a russh signal.
pub fn sig_name(s: &russh::Sig) -> String {
    match s {
        russh::Sig::ABRT => "ABRT".into(),
        russh::Sig::ALRM => "ALRM".into(),
        russh::Sig::FPE => "FPE".into(),
        russh::Sig::HUP => "HUP".into(),
        russh::Sig::ILL => "ILL".into(),
        russh::Sig::INT => "INT".into(),
        russh::Sig::KILL => "KILL".into(),
        russh::Sig::PIPE => "PIPE".into(),
        russh::Sig::QUIT => "QUIT".into(),
        russh::Sig::SEGV => "SEGV".into(),
        russh::Sig::TERM => "TERM".into(),
        russh::Sig::USR1 => "USR1".into(),
        russh::Sig::Custom(c) => c.clone(),
    }
}

/// The russh signal for an RFC 4254 name.
pub fn sig_from_name(n: &str) -> russh::Sig {
    match n {
        "ABRT" => russh::Sig::ABRT,
        "ALRM" => russh::Sig::ALRM,
        "FPE" => russh::Sig::FPE,
        "HUP" => russh::Sig::HUP,
        "ILL" => russh::Sig::ILL,
        "INT" => russh::Sig::INT,
        "KILL" => russh::Sig::KILL,
        "PIPE" => russh::Sig::PIPE,
        "QUIT" => russh::Sig::QUIT,
        "SEGV" => russh::Sig::SEGV,
        "TERM" => russh::Sig::TERM,
        "USR1" => russh::Sig::USR1,
        x => russh::Sig::Custom(x.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorized_keys_missing_is_off_and_bad_line_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("authorized_keys");
        assert!(load_authorized_keys(&p).unwrap().is_empty());
        std::fs::write(
            &p,
            "# admins\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEhL0gK0M3p3Lx6Gl0nqzU6f0m3W0e8b1yD2X5xq9Jt0 ops@example\n",
        )
        .unwrap();
        let k = load_authorized_keys(&p).unwrap();
        assert_eq!(k.len(), 1);
        assert_eq!(k[0].name, "ops@example");
        std::fs::write(&p, "\nno-pty ssh-ed25519 AAAA\n").unwrap();
        let e = load_authorized_keys(&p).unwrap_err().to_string();
        assert!(e.contains(":2:"), "{e}");
    }

    #[test]
    fn renewed_host_cert_is_used_by_new_connections_only() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config::load(None, Some(dir.path().to_path_buf())).unwrap();
        let keys = CaKeys::load_or_create(
            &dir.path().join("keys"),
            std::time::Duration::from_secs(3600),
            &[],
        )
        .unwrap();
        let first = keys.host_cert.clone();
        let shared = Shared::new(
            cfg,
            keys.clone(),
            Store::in_memory().unwrap(),
            PolicyHandle::default(),
            Account::lookup(None).unwrap(),
            CancellationToken::new(),
        )
        .unwrap();
        let before = shared.russh_config();
        assert_eq!(before.certificates, vec![first.clone()]);
        let renewed = crate::ca::sign::sign_host(
            &keys.host_ca,
            keys.host_key.public_key(),
            &[],
            std::time::Duration::from_secs(7200),
        )
        .unwrap();
        shared.set_host_cert(renewed.clone());
        let after = shared.russh_config();
        assert_eq!(after.certificates, vec![renewed]);
        // Same host key; a connection that took the old config keeps it.
        assert_eq!(after.keys.len(), 1);
        assert_eq!(
            after.keys[0].public_key(),
            shared.keys.host_key.public_key()
        );
        assert_eq!(before.certificates, vec![first]);
    }

    #[test]
    fn signal_names_round_trip() {
        for n in ["INT", "TERM", "HUP", "KILL", "USR2"] {
            assert_eq!(sig_name(&sig_from_name(n)), n);
        }
    }
}
