//! Server configuration. A TOML file (every key optional; no file at all means
//! the embedded defaults) is parsed with unknown keys rejected into [`RawConfig`],
//! then [`RawConfig::validate`] turns it into the typed [`Config`] the server
//! uses, with errors that name the key and the fix.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Default data directory, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "./sallyport-data";
/// SSH channel window (russh's default; OpenSSH uses 2 MiB too).
pub const DEFAULT_WINDOW: u32 = 2 * 1024 * 1024;
/// Largest channel data packet accepted. 256 KiB (OpenSSH's own ceiling)
/// rather than russh's 32 KiB: fewer, larger packets cost less CPU per
/// forwarded byte (bench/forward-vs-sshd.sh, -L aes128-gcm: CPU 1.15x ->
/// 0.99x of sshd's in one run). The window stays at 2 MiB: a bigger one
/// did not help consistently and buffers more per channel.
pub const DEFAULT_MAX_PACKET: u32 = 256 * 1024;
/// Per-channel message buffer (russh's default).
pub const DEFAULT_CHANNEL_BUFFER: u32 = 100;

/// Configuration errors, each naming where and what to change.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// TOML syntax error or unknown/mistyped key.
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// A value that parses but makes no sense.
    #[error("{path}: `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

fn d<T: Default>() -> T {
    T::default()
}

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Where keys, the audit database and recordings live.
    pub data_dir: Option<PathBuf>,
    #[serde(default = "d")]
    pub ssh: RawSsh,
    #[serde(default = "d")]
    pub recording: RawRecording,
    #[serde(default = "d")]
    pub api: RawApi,
    #[serde(default = "d")]
    pub policy: RawPolicy,
    /// OIDC and Kubernetes token issuers.
    #[serde(default = "d")]
    pub issuers: Vec<RawIssuer>,
    /// Named forwarding targets: `name = "host:port"`.
    #[serde(default = "d")]
    pub targets: BTreeMap<String, String>,
    #[serde(default = "d")]
    pub kube: RawKube,
    /// Port forwarding (direct-tcpip) limits and name overrides.
    #[serde(default = "d")]
    pub forward: RawForward,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawForward {
    /// TCP connect timeout for forward targets.
    pub connect_timeout: Option<String>,
    /// DNS lookup timeout for forward targets.
    pub resolve_timeout: Option<String>,
    /// Forward channels open at once on one connection (further opens are refused).
    pub max_per_connection: Option<u32>,
    /// Static name -> IP table consulted before DNS (like /etc/hosts, for this
    /// bastion only). The addresses are checked like DNS answers.
    pub hosts: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSsh {
    pub listen: Option<String>,
    /// Like OpenSSH LoginGraceTime: drop connections not authenticated in time.
    pub login_grace_time: Option<String>,
    /// Cap on connections not yet authenticated (like MaxStartups).
    pub max_unauthenticated: Option<u32>,
    /// New connections per source IP per minute (burst = the same number).
    pub per_source_per_minute: Option<u32>,
    /// Concurrent unauthenticated connections per source IP.
    pub per_source_max_unauthenticated: Option<u32>,
    pub max_auth_tries: Option<u32>,
    pub keepalive_interval: Option<String>,
    pub inactivity_timeout: Option<String>,
    /// Session channels per connection (like MaxSessions).
    pub max_channels: Option<u32>,
    /// Allowed clock skew when checking certificate validity windows.
    pub clock_skew: Option<String>,
    /// OS account sessions run as (default: the account running sallyport).
    pub run_as: Option<String>,
    /// Client `env` requests accepted (glob names).
    pub env_allow: Option<Vec<String>>,
    /// Login shell for sessions.
    pub shell: Option<PathBuf>,
    /// Validity of the host certificate (renewed before expiry).
    pub host_cert_validity: Option<String>,
    /// SSH channel window advertised to clients, bytes (flow control).
    pub window_size: Option<u32>,
    /// Largest channel data packet accepted from clients, bytes.
    pub max_packet_size: Option<u32>,
    /// Messages buffered per channel between the connection and its task.
    pub channel_buffer: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRecording {
    /// Recordings folder (default `<data_dir>/recordings`).
    pub dir: Option<PathBuf>,
    /// Record client input ("i" events) for every session, whatever policy says.
    pub input: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApi {
    /// `host:port`, or `"off"`.
    pub listen: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP on a non-loopback address (not recommended).
    pub allow_plain_http: Option<bool>,
    /// Public URL clients use (printed by `login`, put in ssh_config).
    pub public_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    /// Policy directory (default `<data_dir>/policies`, seeded with the
    /// embedded default policy on first start).
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIssuer {
    /// Short name used in key ids and policy (`oidc:<alias>:<subject>`).
    pub alias: String,
    /// Issuer URL (must equal the token `iss`).
    pub url: String,
    /// `oidc` (people) or `kubernetes` (service-account tokens).
    #[serde(default)]
    pub kind: Option<String>,
    /// Accepted audiences.
    pub audience: Vec<String>,
    /// OAuth client id the CLI uses for the device flow.
    pub client_id: Option<String>,
    pub scopes: Option<Vec<String>>,
    /// CA bundle for the issuer's TLS.
    pub ca_file: Option<PathBuf>,
    /// Bearer token file for the discovery/JWKS calls (Kubernetes issuers).
    pub token_file: Option<PathBuf>,
    /// Confirm Kubernetes tokens with a TokenReview.
    pub token_review: Option<bool>,
    /// Claim holding groups.
    pub groups_claim: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKube {
    /// Path of a kubeconfig; absent = in-cluster config when running in a pod.
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    /// Target name of the Kubernetes API proxy (`ssh -L 6443:kubernetes:443`).
    pub api_target: Option<String>,
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub ssh: SshConfig,
    pub recording: RecordingConfig,
    pub api: ApiConfig,
    pub policy_dir: PathBuf,
    /// True when `policy_dir` was not configured (seed it with the default).
    pub policy_dir_is_default: bool,
    pub issuers: Vec<IssuerConfig>,
    pub targets: BTreeMap<String, String>,
    pub kube: KubeConfig,
    pub forward: ForwardConfig,
}

/// Port-forwarding settings (`[forward]`).
#[derive(Debug, Clone)]
pub struct ForwardConfig {
    pub connect_timeout: Duration,
    pub resolve_timeout: Duration,
    pub max_per_connection: u32,
    pub hosts: BTreeMap<String, std::net::IpAddr>,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            resolve_timeout: Duration::from_secs(5),
            max_per_connection: 64,
            hosts: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SshConfig {
    pub listen: SocketAddr,
    pub login_grace_time: Duration,
    pub max_unauthenticated: u32,
    pub per_source_per_minute: u32,
    pub per_source_max_unauthenticated: u32,
    pub max_auth_tries: u32,
    pub keepalive_interval: Duration,
    pub inactivity_timeout: Duration,
    pub max_channels: u32,
    pub clock_skew: Duration,
    pub run_as: Option<String>,
    pub env_allow: Vec<String>,
    pub shell: Option<PathBuf>,
    pub host_cert_validity: Duration,
    pub window_size: u32,
    pub max_packet_size: u32,
    pub channel_buffer: u32,
}

#[derive(Debug, Clone)]
pub struct RecordingConfig {
    pub dir: PathBuf,
    pub input: bool,
}

#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// `None` = API off.
    pub listen: Option<SocketAddr>,
    pub tls: Option<(PathBuf, PathBuf)>,
    pub allow_plain_http: bool,
    pub public_url: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssuerKind {
    Oidc,
    Kubernetes,
}

#[derive(Debug, Clone)]
pub struct IssuerConfig {
    pub alias: String,
    pub url: String,
    pub kind: IssuerKind,
    pub audience: Vec<String>,
    pub client_id: Option<String>,
    pub scopes: Vec<String>,
    pub ca_file: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
    pub token_review: bool,
    pub groups_claim: String,
}

#[derive(Debug, Clone, Default)]
pub struct KubeConfig {
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    pub api_target: String,
}

impl Config {
    /// Load `path` (or embedded defaults when `None`), with `data_dir_override`
    /// (flag or `SALLYPORT_DATA_DIR`) taking precedence over the file.
    pub fn load(path: Option<&Path>, data_dir_override: Option<PathBuf>) -> Result<Self, Error> {
        let (raw, shown) = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| Error::Read {
                    path: p.to_path_buf(),
                    source,
                })?;
                (parse(&text, p)?, p.to_path_buf())
            }
            None => (RawConfig::default(), PathBuf::from("<embedded defaults>")),
        };
        raw.validate(&shown, data_dir_override)
    }
}

/// Parse TOML text; errors carry line and column.
pub fn parse(text: &str, path: &Path) -> Result<RawConfig, Error> {
    toml::from_str(text).map_err(|e| {
        let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
        Error::Parse {
            path: path.to_path_buf(),
            line,
            column,
            message: e.message().to_string(),
        }
    })
}

/// 1-based line and column of byte `offset` in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or("");
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, column)
}

/// Parse a duration like `60s`, `15m`, `1h 30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("`{s}` is not a duration ({e}); write e.g. \"60s\", \"15m\", \"1h\""))
}

impl RawConfig {
    /// Check every value and fill defaults.
    pub fn validate(
        self,
        path: &Path,
        data_dir_override: Option<PathBuf>,
    ) -> Result<Config, Error> {
        let invalid = |key: &str, message: String| Error::Invalid {
            path: path.to_path_buf(),
            key: key.to_string(),
            message,
        };
        let dur = |key: &str, v: &Option<String>, default: Duration| -> Result<Duration, Error> {
            match v {
                None => Ok(default),
                Some(s) => parse_duration(s).map_err(|m| invalid(key, m)),
            }
        };
        let addr = |key: &str, v: &str| -> Result<SocketAddr, Error> {
            v.parse::<SocketAddr>().map_err(|e| {
                invalid(key, format!("`{v}` is not an address ({e}); write e.g. \"127.0.0.1:2222\" or \"[::]:2222\""))
            })
        };

        let data_dir = data_dir_override
            .or(self.data_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));

        let s = &self.ssh;
        let positive = |key: &str, v: Option<u32>, default: u32| -> Result<u32, Error> {
            match v {
                Some(0) => Err(invalid(key, "must be at least 1".into())),
                Some(n) => Ok(n),
                None => Ok(default),
            }
        };
        let bounded = |key: &str,
                       v: Option<u32>,
                       default: u32,
                       range: std::ops::RangeInclusive<u32>|
         -> Result<u32, Error> {
            match v {
                Some(n) if !range.contains(&n) => Err(invalid(
                    key,
                    format!(
                        "{n} is out of range; use {} to {} (default {default})",
                        range.start(),
                        range.end()
                    ),
                )),
                Some(n) => Ok(n),
                None => Ok(default),
            }
        };
        let ssh = SshConfig {
            listen: addr(
                "ssh.listen",
                s.listen.as_deref().unwrap_or("127.0.0.1:2222"),
            )?,
            login_grace_time: dur(
                "ssh.login_grace_time",
                &s.login_grace_time,
                Duration::from_secs(60),
            )?,
            max_unauthenticated: positive("ssh.max_unauthenticated", s.max_unauthenticated, 64)?,
            per_source_per_minute: positive(
                "ssh.per_source_per_minute",
                s.per_source_per_minute,
                600,
            )?,
            per_source_max_unauthenticated: positive(
                "ssh.per_source_max_unauthenticated",
                s.per_source_max_unauthenticated,
                16,
            )?,
            max_auth_tries: positive("ssh.max_auth_tries", s.max_auth_tries, 6)?,
            keepalive_interval: dur(
                "ssh.keepalive_interval",
                &s.keepalive_interval,
                Duration::from_secs(30),
            )?,
            inactivity_timeout: dur(
                "ssh.inactivity_timeout",
                &s.inactivity_timeout,
                Duration::from_secs(3600),
            )?,
            max_channels: positive("ssh.max_channels", s.max_channels, 10)?,
            clock_skew: dur("ssh.clock_skew", &s.clock_skew, Duration::from_secs(60))?,
            run_as: s.run_as.clone(),
            env_allow: s.env_allow.clone().unwrap_or_else(|| {
                vec![
                    "LANG".into(),
                    "LC_*".into(),
                    "TZ".into(),
                    "COLORTERM".into(),
                ]
            }),
            shell: s.shell.clone(),
            host_cert_validity: dur(
                "ssh.host_cert_validity",
                &s.host_cert_validity,
                Duration::from_secs(30 * 24 * 3600),
            )?,
            // Defaults chosen by bench/forward-vs-sshd.sh (README, Benchmarks).
            window_size: bounded(
                "ssh.window_size",
                s.window_size,
                DEFAULT_WINDOW,
                32 * 1024..=64 * 1024 * 1024,
            )?,
            // RFC 4254 §5.2: at least 32768 must be accepted; OpenSSH caps
            // its own at 256 KiB (CHAN_SES_PACKET_DEFAULT is 32 KiB).
            max_packet_size: bounded(
                "ssh.max_packet_size",
                s.max_packet_size,
                DEFAULT_MAX_PACKET,
                32 * 1024..=256 * 1024,
            )?,
            channel_buffer: bounded(
                "ssh.channel_buffer",
                s.channel_buffer,
                DEFAULT_CHANNEL_BUFFER,
                1..=10_000,
            )?,
        };
        if ssh.clock_skew > Duration::from_secs(600) {
            return Err(invalid("ssh.clock_skew", "at most 10m".into()));
        }

        let recording = RecordingConfig {
            dir: self
                .recording
                .dir
                .clone()
                .unwrap_or_else(|| data_dir.join("recordings")),
            input: self.recording.input.unwrap_or(false),
        };

        let api_listen = match self.api.listen.as_deref() {
            Some("off") => None,
            Some(v) => Some(addr("api.listen", v)?),
            None => Some(addr("api.listen", "127.0.0.1:8022")?),
        };
        let tls = match (&self.api.tls_cert, &self.api.tls_key) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            (None, None) => None,
            _ => {
                return Err(invalid(
                    "api.tls_cert",
                    "set both api.tls_cert and api.tls_key, or neither".into(),
                ));
            }
        };
        let allow_plain_http = self.api.allow_plain_http.unwrap_or(false);
        if let Some(a) = api_listen
            && tls.is_none()
            && !a.ip().is_loopback()
            && !allow_plain_http
        {
            return Err(invalid(
                "api.listen",
                format!(
                    "{a} is not loopback and no TLS is configured; set api.tls_cert and api.tls_key, \
                     or api.allow_plain_http = true behind a TLS-terminating proxy"
                ),
            ));
        }
        let api = ApiConfig {
            listen: api_listen,
            tls,
            allow_plain_http,
            public_url: self.api.public_url.clone(),
        };

        let mut issuers = Vec::new();
        for (i, r) in self.issuers.into_iter().enumerate() {
            let key = |k: &str| format!("issuers[{i}].{k}");
            let kind = match r.kind.as_deref() {
                None | Some("oidc") => IssuerKind::Oidc,
                Some("kubernetes") => IssuerKind::Kubernetes,
                Some(other) => {
                    return Err(invalid(
                        &key("kind"),
                        format!("`{other}`: write \"oidc\" or \"kubernetes\""),
                    ));
                }
            };
            if r.alias.is_empty()
                || !r
                    .alias
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(invalid(
                    &key("alias"),
                    "use letters, digits, '-' and '_' only".into(),
                ));
            }
            if issuers.iter().any(|x: &IssuerConfig| x.alias == r.alias) {
                return Err(invalid(
                    &key("alias"),
                    format!("`{}` is used twice", r.alias),
                ));
            }
            if url::Url::parse(&r.url).is_err() {
                return Err(invalid(&key("url"), format!("`{}` is not a URL", r.url)));
            }
            if r.audience.is_empty() {
                return Err(invalid(
                    &key("audience"),
                    "name at least one accepted audience".into(),
                ));
            }
            issuers.push(IssuerConfig {
                alias: r.alias,
                url: r.url,
                kind,
                audience: r.audience,
                client_id: r.client_id,
                scopes: r
                    .scopes
                    .unwrap_or_else(|| vec!["openid".into(), "email".into(), "profile".into()]),
                ca_file: r.ca_file,
                token_file: r.token_file,
                token_review: r.token_review.unwrap_or(false),
                groups_claim: r.groups_claim.unwrap_or_else(|| "groups".into()),
            });
        }

        for (name, target) in &self.targets {
            if name.is_empty()
                || name.contains(|c: char| c.is_whitespace() || c == ':' || c.is_control())
            {
                return Err(invalid(
                    &format!("targets.{name}"),
                    "target names may not contain ':', spaces or control characters".into(),
                ));
            }
            let ok = target
                .rsplit_once(':')
                .map(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0))
                .unwrap_or(false);
            if !ok {
                return Err(invalid(
                    &format!("targets.{name}"),
                    format!("`{target}`: write \"host:port\" with a port from 1 to 65535"),
                ));
            }
        }

        let kube = KubeConfig {
            kubeconfig: self.kube.kubeconfig,
            context: self.kube.context,
            api_target: self.kube.api_target.unwrap_or_else(|| "kubernetes".into()),
        };

        let fw = &self.forward;
        let fdef = ForwardConfig::default();
        let mut hosts = BTreeMap::new();
        for (name, ip) in fw.hosts.iter().flatten() {
            let ip = ip.parse::<std::net::IpAddr>().map_err(|e| {
                invalid(
                    &format!("forward.hosts.{name}"),
                    format!("`{ip}` is not an IP address ({e})"),
                )
            })?;
            hosts.insert(name.to_ascii_lowercase(), ip);
        }
        let forward = ForwardConfig {
            connect_timeout: dur(
                "forward.connect_timeout",
                &fw.connect_timeout,
                fdef.connect_timeout,
            )?,
            resolve_timeout: dur(
                "forward.resolve_timeout",
                &fw.resolve_timeout,
                fdef.resolve_timeout,
            )?,
            max_per_connection: positive(
                "forward.max_per_connection",
                fw.max_per_connection,
                fdef.max_per_connection,
            )?,
            hosts,
        };

        let (policy_dir, policy_dir_is_default) = match self.policy.dir {
            Some(p) => (p, false),
            None => (data_dir.join("policies"), true),
        };

        Ok(Config {
            data_dir,
            ssh,
            recording,
            api,
            policy_dir,
            policy_dir_is_default,
            issuers,
            targets: self.targets,
            kube,
            forward,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(s: &str) -> Result<Config, Error> {
        let p = Path::new("test.toml");
        parse(s, p)?.validate(p, None)
    }

    #[test]
    fn embedded_defaults() {
        let c = Config::load(None, None).unwrap();
        assert_eq!(c.ssh.listen.to_string(), "127.0.0.1:2222");
        assert_eq!(c.ssh.login_grace_time, Duration::from_secs(60));
        assert_eq!(c.ssh.max_auth_tries, 6);
        assert_eq!(
            c.api.listen.map(|a| a.to_string()).as_deref(),
            Some("127.0.0.1:8022")
        );
        assert!(c.policy_dir_is_default);
    }

    #[test]
    fn unknown_key_names_line_and_column() {
        let err = load_str("[ssh]\nlisten = \"127.0.0.1:1\"\nlistn = 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("test.toml:3:1:"), "{err}");
        assert!(err.contains("listn"), "{err}");
    }

    #[test]
    fn bad_duration_names_key_and_fix() {
        let err = load_str("[ssh]\nlogin_grace_time = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("ssh.login_grace_time"), "{err}");
        assert!(err.contains("60s"), "{err}");
    }

    #[test]
    fn flow_control_defaults_and_ranges() {
        let c = load_str("").unwrap();
        assert_eq!(c.ssh.window_size, DEFAULT_WINDOW);
        assert_eq!(c.ssh.max_packet_size, 256 * 1024);
        assert_eq!(c.ssh.channel_buffer, DEFAULT_CHANNEL_BUFFER);
        let c = load_str("[ssh]\nwindow_size = 8388608\nmax_packet_size = 32768\n").unwrap();
        assert_eq!((c.ssh.window_size, c.ssh.max_packet_size), (8 << 20, 32768));
        for (key, bad) in [
            ("window_size", "1024"),
            ("window_size", "4294967295"),
            ("max_packet_size", "1000"),
            ("max_packet_size", "1048576"),
            ("channel_buffer", "0"),
        ] {
            let err = load_str(&format!("[ssh]\n{key} = {bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("ssh.{key}")), "{err}");
            assert!(err.contains("out of range; use"), "{err}");
        }
    }

    #[test]
    fn plain_http_off_loopback_refused() {
        let err = load_str("[api]\nlisten = \"0.0.0.0:8022\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("api.listen"), "{err}");
        load_str("[api]\nlisten = \"0.0.0.0:8022\"\nallow_plain_http = true\n").unwrap();
    }

    #[test]
    fn bad_target_refused() {
        let err = load_str("[targets]\nprod-db = \"db\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("targets.prod-db"), "{err}");
        load_str("[targets]\nprod-db = \"db.example:5432\"\n").unwrap();
    }
}
