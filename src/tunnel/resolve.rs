//! Target resolution: what a `direct-tcpip` host/port means. Validates the
//! host string, maps named targets from `[targets]`, recognises the
//! Kubernetes forms `<pod>.<namespace>.pod` and `<service>.<namespace>.svc`,
//! resolves DNS names itself (with a timeout, after the `[forward] hosts`
//! table) and flags resolved addresses that are never reached implicitly:
//! link-local/metadata, unspecified, multicast/broadcast, and the bastion's
//! own listen ports on loopback.
//!
//! Named targets: the port the client sends must equal the named target's
//! port (`ssh -L 5432:prod-db:5432`); a different port is refused rather than
//! silently mapped, so a name never reaches a port nobody wrote down.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// Longest host string accepted (a DNS name is at most 253 octets).
pub const MAX_HOST_LEN: usize = 253;

/// Why a target could not be resolved. Messages are shown to the client's
/// audit row and logs; they never include secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Empty, too long, or containing bytes no host name has.
    #[error("invalid host {host:?}: {why}")]
    BadHost { host: String, why: &'static str },
    /// Port 0 or above 65535.
    #[error("invalid port {0}: use 1-65535")]
    BadPort(u32),
    /// A single-label name that is not a configured target.
    #[error("unknown target {0:?}: not a named target")]
    UnknownTarget(String),
    /// A named target asked for with another port than its own.
    #[error("target {name:?} is port {expected}, not {requested}")]
    NamedPortMismatch {
        name: String,
        expected: u16,
        requested: u16,
    },
    /// A configured target value that does not parse (config validation
    /// normally catches this).
    #[error("named target {name:?} has an invalid value {value:?}")]
    BadNamedTarget { name: String, value: String },
    /// DNS gave no answer in time.
    #[error("resolving {0:?} timed out")]
    ResolveTimeout(String),
    /// DNS failed or returned nothing.
    #[error("cannot resolve {host:?}: {why}")]
    Resolve { host: String, why: String },
}

/// Where a forward goes, before connecting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A TCP host (IP literal or DNS name) and port.
    Tcp { host: String, port: u16 },
    /// A pod, reached through the Kubernetes API port-forward.
    Pod {
        namespace: String,
        name: String,
        port: u16,
    },
    /// A service: a ready endpoint's pod, through the API port-forward.
    Service {
        namespace: String,
        name: String,
        port: u16,
    },
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Target::Tcp { host, port } => write!(f, "{host}:{port}"),
            Target::Pod {
                namespace,
                name,
                port,
            } => write!(f, "pod {namespace}/{name}:{port}"),
            Target::Service {
                namespace,
                name,
                port,
            } => write!(f, "service {namespace}/{name}:{port}"),
        }
    }
}

/// A parsed request: what the client wrote and what it means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// Host as the client wrote it (what policy matches).
    pub host: String,
    pub port: u16,
    /// The configured name, when the host was a named target.
    pub named: Option<String>,
    pub target: Target,
}

impl Parsed {
    /// `host:port` as requested, for the audit row.
    pub fn requested(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Check a host string as received in a `direct-tcpip` request.
pub fn validate_host(host: &str) -> Result<(), Error> {
    let bad = |why| {
        Err(Error::BadHost {
            // Keep the audit text bounded and printable.
            host: host.chars().take(80).collect(),
            why,
        })
    };
    if host.is_empty() {
        return bad("empty");
    }
    if host.len() > MAX_HOST_LEN {
        return bad("longer than 253 bytes");
    }
    if host.contains('\0') {
        return bad("contains NUL");
    }
    if host.chars().any(|c| c.is_control()) {
        return bad("contains control characters");
    }
    if host.chars().any(char::is_whitespace) {
        return bad("contains spaces");
    }
    if host.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    if !host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
    {
        return bad("only letters, digits, '-', '_' and '.' are allowed in names");
    }
    if host.starts_with('.') || host.starts_with('-') || host.contains("..") {
        return bad("malformed name");
    }
    if host.trim_end_matches('.').split('.').any(|l| l.len() > 63) {
        return bad("a label is longer than 63 bytes");
    }
    Ok(())
}

/// Check the port of a request (RFC 4254 carries it as a uint32).
pub fn validate_port(port: u32) -> Result<u16, Error> {
    match u16::try_from(port) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(Error::BadPort(port)),
    }
}

fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Classify a host (already validated) without consulting named targets.
fn classify(host: &str, port: u16) -> Target {
    let labels: Vec<&str> = host.split('.').collect();
    if let [name, namespace, kind] = labels.as_slice()
        && is_dns1123_label(name)
        && is_dns1123_label(namespace)
    {
        match *kind {
            "pod" => {
                return Target::Pod {
                    namespace: (*namespace).to_string(),
                    name: (*name).to_string(),
                    port,
                };
            }
            "svc" => {
                return Target::Service {
                    namespace: (*namespace).to_string(),
                    name: (*name).to_string(),
                    port,
                };
            }
            _ => {}
        }
    }
    Target::Tcp {
        host: host.trim_end_matches('.').to_string(),
        port,
    }
}

/// Split `host:port` (IPv6 in brackets) from a named target's value.
fn split_host_port(v: &str) -> Option<(String, u16)> {
    let (h, p) = v.rsplit_once(':')?;
    let h = h
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(h);
    let p = p.parse::<u16>().ok().filter(|p| *p != 0)?;
    (!h.is_empty()).then(|| (h.to_string(), p))
}

/// Parse what the client asked for. `targets` is the `[targets]` table.
pub fn parse(host: &str, port: u32, targets: &BTreeMap<String, String>) -> Result<Parsed, Error> {
    validate_host(host)?;
    let port = validate_port(port)?;
    if let Some(value) = targets.get(host) {
        let Some((th, tp)) = split_host_port(value) else {
            return Err(Error::BadNamedTarget {
                name: host.to_string(),
                value: value.clone(),
            });
        };
        validate_host(&th).map_err(|_| Error::BadNamedTarget {
            name: host.to_string(),
            value: value.clone(),
        })?;
        if tp != port {
            return Err(Error::NamedPortMismatch {
                name: host.to_string(),
                expected: tp,
                requested: port,
            });
        }
        return Ok(Parsed {
            host: host.to_string(),
            port,
            named: Some(host.to_string()),
            target: classify(&th, tp),
        });
    }
    // Single-label names other than `localhost` are taken as target names:
    // resolving them through search domains would reach whatever the
    // bastion's resolv.conf happens to complete them to.
    if host.parse::<IpAddr>().is_err()
        && !host.trim_end_matches('.').contains('.')
        && !host.eq_ignore_ascii_case("localhost")
    {
        return Err(Error::UnknownTarget(host.to_string()));
    }
    Ok(Parsed {
        host: host.to_string(),
        port,
        named: None,
        target: classify(host, port),
    })
}

/// Resolve a TCP host to addresses: IP literals as is, then the static
/// `hosts` table, then DNS (bounded by `timeout`).
pub async fn lookup(
    host: &str,
    port: u16,
    hosts: &BTreeMap<String, IpAddr>,
    timeout: Duration,
) -> Result<Vec<SocketAddr>, Error> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    if let Some(ip) = hosts.get(&host.to_ascii_lowercase()) {
        return Ok(vec![SocketAddr::new(*ip, port)]);
    }
    let fut = tokio::net::lookup_host((host.to_string(), port));
    let addrs: Vec<SocketAddr> = match tokio::time::timeout(timeout, fut).await {
        Err(_) => return Err(Error::ResolveTimeout(host.to_string())),
        Ok(Err(e)) => {
            return Err(Error::Resolve {
                host: host.to_string(),
                why: e.to_string(),
            });
        }
        Ok(Ok(it)) => it.collect(),
    };
    if addrs.is_empty() {
        return Err(Error::Resolve {
            host: host.to_string(),
            why: "no addresses".into(),
        });
    }
    Ok(addrs)
}

/// The AWS IMDS IPv6 endpoint (fd00:ec2::254).
const EC2_METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x254);

/// Why an address must not be reached unless policy names it explicitly,
/// or `None`. `own` are the bastion's listen addresses (SSH, API).
pub fn protected(addr: SocketAddr, own: &[SocketAddr]) -> Option<&'static str> {
    let ip = match addr.ip() {
        // An IPv4-mapped IPv6 address reaches the IPv4 host: judge that.
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    let why = match ip {
        IpAddr::V4(v4) => protected_v4(v4),
        IpAddr::V6(v6) => protected_v6(v6),
    };
    if why.is_some() {
        return why;
    }
    for o in own {
        if o.port() != addr.port() {
            continue;
        }
        // A wildcard listener answers on every local address; loopback is the
        // one we can name for sure. A specific listener: exactly that address.
        if ip.is_loopback() || o.ip() == ip {
            return Some("the bastion's own listen port");
        }
    }
    None
}

fn protected_v4(ip: Ipv4Addr) -> Option<&'static str> {
    if ip.is_link_local() {
        Some("link-local/metadata address (169.254.0.0/16)")
    } else if ip.is_unspecified() || ip.octets()[0] == 0 {
        Some("unspecified address (0.0.0.0/8)")
    } else if ip.is_broadcast() {
        Some("broadcast address")
    } else if ip.is_multicast() {
        Some("multicast address")
    } else {
        None
    }
}

fn protected_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if ip == EC2_METADATA_V6 {
        Some("metadata address (fd00:ec2::254)")
    } else if ip.is_unicast_link_local() {
        Some("link-local address (fe80::/10)")
    } else if ip.is_unspecified() {
        Some("unspecified address (::)")
    } else if ip.is_multicast() {
        Some("multicast address")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets() -> BTreeMap<String, String> {
        let mut t = BTreeMap::new();
        t.insert(
            "prod-db".to_string(),
            "postgres.prod.svc.cluster.local:5432".to_string(),
        );
        t.insert("web-1".to_string(), "10.0.3.4:22".to_string());
        t.insert("cache".to_string(), "redis.data.svc:6379".to_string());
        t.insert("v6".to_string(), "[::1]:8080".to_string());
        t
    }

    #[test]
    fn garbage_hosts_are_rejected() {
        let t = targets();
        for h in [
            "",
            "a\0b",
            "a b",
            "a\nb",
            "a\tb",
            "host/x",
            "user@host",
            "-x.example",
            "a..b",
            ".a",
            "ex%ample.com",
            "\u{7f}x.com",
        ] {
            assert!(
                matches!(parse(h, 22, &t), Err(Error::BadHost { .. })),
                "{h:?} was accepted"
            );
        }
        let long = "a.".repeat(200);
        assert!(matches!(parse(&long, 22, &t), Err(Error::BadHost { .. })));
        let label = format!("{}.com", "a".repeat(64));
        assert!(matches!(parse(&label, 22, &t), Err(Error::BadHost { .. })));
    }

    #[test]
    fn bad_ports_are_rejected() {
        let t = targets();
        assert_eq!(parse("web-1", 0, &t), Err(Error::BadPort(0)));
        assert_eq!(parse("10.0.0.1", 65536, &t), Err(Error::BadPort(65536)));
        assert_eq!(
            parse("10.0.0.1", u32::MAX, &t),
            Err(Error::BadPort(u32::MAX))
        );
    }

    #[test]
    fn unknown_single_label_is_unknown_target() {
        assert_eq!(
            parse("nosuchdb", 5432, &targets()),
            Err(Error::UnknownTarget("nosuchdb".into()))
        );
    }

    #[test]
    fn named_target_port_must_match() {
        let t = targets();
        assert_eq!(
            parse("prod-db", 9999, &t),
            Err(Error::NamedPortMismatch {
                name: "prod-db".into(),
                expected: 5432,
                requested: 9999
            })
        );
        let p = parse("prod-db", 5432, &t).unwrap();
        assert_eq!(p.named.as_deref(), Some("prod-db"));
        assert_eq!(p.host, "prod-db");
        // The full cluster DNS name goes through DNS, not the API.
        assert_eq!(
            p.target,
            Target::Tcp {
                host: "postgres.prod.svc.cluster.local".into(),
                port: 5432
            }
        );
        let c = parse("cache", 6379, &t).unwrap();
        assert_eq!(
            c.target,
            Target::Service {
                namespace: "data".into(),
                name: "redis".into(),
                port: 6379
            }
        );
        let v6 = parse("v6", 8080, &t).unwrap();
        assert_eq!(
            v6.target,
            Target::Tcp {
                host: "::1".into(),
                port: 8080
            }
        );
    }

    #[test]
    fn kubernetes_forms() {
        let t = targets();
        assert_eq!(
            parse("web-0.dev.pod", 8080, &t).unwrap().target,
            Target::Pod {
                namespace: "dev".into(),
                name: "web-0".into(),
                port: 8080
            }
        );
        assert_eq!(
            parse("api.prod.svc", 443, &t).unwrap().target,
            Target::Service {
                namespace: "prod".into(),
                name: "api".into(),
                port: 443
            }
        );
        // Upper case is not a valid pod name: treated as a DNS name.
        assert!(matches!(
            parse("Web.dev.pod", 80, &t).unwrap().target,
            Target::Tcp { .. }
        ));
    }

    #[test]
    fn raw_hosts_and_literals() {
        let t = targets();
        assert_eq!(
            parse("10.1.2.3", 22, &t).unwrap().target,
            Target::Tcp {
                host: "10.1.2.3".into(),
                port: 22
            }
        );
        assert_eq!(parse("::1", 22, &t).unwrap().requested(), "[::1]:22");
        assert!(parse("localhost", 5432, &t).is_ok());
        assert!(parse("db.example.com", 5432, &t).is_ok());
    }

    #[test]
    fn protected_addresses() {
        let own: Vec<SocketAddr> = vec![
            "127.0.0.1:2222".parse().unwrap(),
            "0.0.0.0:8022".parse().unwrap(),
        ];
        let p = |s: &str| protected(s.parse().unwrap(), &own);
        assert!(p("169.254.169.254:80").is_some());
        assert!(p("[::ffff:169.254.169.254]:80").is_some());
        assert!(p("[fd00:ec2::254]:80").is_some());
        assert!(p("[fe80::1]:22").is_some());
        assert!(p("0.0.0.0:22").is_some());
        assert!(p("[::]:22").is_some());
        assert!(p("255.255.255.255:22").is_some());
        assert!(p("224.0.0.1:22").is_some());
        assert!(p("[ff02::1]:22").is_some());
        assert!(p("127.0.0.1:2222").is_some());
        assert!(p("127.0.0.5:8022").is_some());
        assert!(p("[::1]:2222").is_some());
        assert!(p("[::ffff:127.0.0.1]:2222").is_some());
        // Other loopback ports and ordinary addresses are policy's business.
        assert!(p("127.0.0.1:5432").is_none());
        assert!(p("10.0.0.1:2222").is_none());
        assert!(p("8.8.8.8:53").is_none());
        assert!(p("[2001:db8::1]:22").is_none());
    }

    #[tokio::test]
    async fn lookup_uses_literals_hosts_table_then_dns() {
        let mut hosts = BTreeMap::new();
        hosts.insert(
            "metadata.test".to_string(),
            "169.254.169.254".parse::<IpAddr>().unwrap(),
        );
        let d = Duration::from_secs(5);
        let a = lookup("Metadata.TEST", 80, &hosts, d).await.unwrap();
        assert_eq!(a, vec!["169.254.169.254:80".parse().unwrap()]);
        let a = lookup("10.0.0.1", 22, &hosts, d).await.unwrap();
        assert_eq!(a, vec!["10.0.0.1:22".parse().unwrap()]);
        let a = lookup("localhost", 22, &hosts, d).await.unwrap();
        assert!(a.iter().all(|s| s.ip().is_loopback()), "{a:?}");
        assert!(matches!(
            lookup("does-not-exist.invalid", 22, &hosts, d).await,
            Err(Error::Resolve { .. } | Error::ResolveTimeout(_))
        ));
    }
}
