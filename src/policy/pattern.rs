//! The matchers policy rules are made of: [`Pattern`] (a glob, or a regex
//! with the `re:` prefix) for identity fields, commands and Kubernetes
//! fields, and [`TargetPattern`] (`host:port`, where host is a glob or a
//! CIDR and port is `*`, a number, a range or a glob) for forwards. Parsing
//! returns a message saying what to write instead; the loader adds file:line.

use std::net::IpAddr;

use globset::{GlobBuilder, GlobMatcher};
use ipnet::IpNet;
use regex::Regex;

/// A glob (globset syntax, `*` crosses spaces and `/`) or, with the `re:`
/// prefix, a regex (unanchored: write `^`/`$` yourself).
#[derive(Debug, Clone)]
pub enum Pattern {
    Glob {
        text: String,
        matcher: GlobMatcher,
    },
    Regex {
        text: String,
        regex: Regex,
    },
    /// Exactly this text (used for the empty core API group).
    Exact {
        text: String,
    },
}

/// Upper bound on compiled regex size, so a policy file cannot make every
/// evaluation slow (the regex crate is linear-time, but big programs cost).
const REGEX_SIZE_LIMIT: usize = 1 << 20;

impl Pattern {
    /// Parse a glob, or a regex when prefixed with `re:`. Globs compare
    /// case-insensitively when `case_insensitive` (hosts, emails).
    pub fn parse(s: &str, case_insensitive: bool) -> Result<Self, String> {
        if let Some(re) = s.strip_prefix("re:") {
            if re.is_empty() {
                return Err("empty regex after 're:'; write e.g. \"re:^git (status|log)\"".into());
            }
            let regex = regex::RegexBuilder::new(re)
                .case_insensitive(case_insensitive)
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map_err(|e| format!("bad regex '{re}': {}", regex_error(&e)))?;
            return Ok(Pattern::Regex {
                text: s.to_string(),
                regex,
            });
        }
        if s.is_empty() {
            return Err("empty pattern; write \"*\" to match anything".into());
        }
        let glob = GlobBuilder::new(s)
            // `*` must cross spaces and `/`: argv is joined with spaces and
            // paths are ordinary text here, not file-system paths.
            .literal_separator(false)
            .backslash_escape(true)
            .case_insensitive(case_insensitive)
            .build()
            .map_err(|e| {
                let kind = e.kind().to_string();
                if kind.contains("escape") {
                    format!("bad glob '{s}': {kind}")
                } else {
                    format!(
                        "bad glob '{s}': {kind}; escape a literal '*', '?', '[' or '{{' with a backslash"
                    )
                }
            })?;
        Ok(Pattern::Glob {
            text: s.to_string(),
            matcher: glob.compile_matcher(),
        })
    }

    /// Matches only the empty string: the Kubernetes core API group `""`.
    pub fn empty_only() -> Self {
        Pattern::Exact {
            text: String::new(),
        }
    }

    /// The pattern as written in the policy file.
    pub fn text(&self) -> &str {
        match self {
            Pattern::Glob { text, .. } | Pattern::Regex { text, .. } | Pattern::Exact { text } => {
                text
            }
        }
    }

    pub fn is_match(&self, s: &str) -> bool {
        match self {
            Pattern::Glob { matcher, .. } => matcher.is_match(s),
            Pattern::Regex { regex, .. } => regex.is_match(s),
            Pattern::Exact { text } => text == s,
        }
    }

    /// True when the pattern matches anything at all (`*`): used to tell a
    /// rule that names an address explicitly from a catch-all.
    pub fn is_catch_all(&self) -> bool {
        matches!(self, Pattern::Glob { text, .. } if text.chars().all(|c| c == '*'))
    }
}

/// The useful part of a regex error (its last line, without `error: `).
pub fn regex_error(e: &regex::Error) -> String {
    let text = e.to_string();
    let last = text.lines().last().unwrap_or("invalid regex").trim();
    last.strip_prefix("error: ").unwrap_or(last).to_string()
}

/// Does any of `pats` match `s`?
pub fn any_match(pats: &[Pattern], s: &str) -> bool {
    pats.iter().any(|p| p.is_match(s))
}

/// Host half of a forward target pattern.
#[derive(Debug, Clone)]
pub enum HostPattern {
    /// An address or CIDR: matched against a literal IP the client wrote and
    /// against every address the bastion resolved.
    Net(IpNet),
    /// A glob over the host as the client wrote it (case-insensitive).
    Name(Pattern),
}

/// Port half of a forward target pattern.
#[derive(Debug, Clone)]
pub enum PortPattern {
    Any,
    Range(u16, u16),
    Glob(Pattern),
}

impl PortPattern {
    pub fn is_match(&self, port: u16) -> bool {
        match self {
            PortPattern::Any => true,
            PortPattern::Range(lo, hi) => (*lo..=*hi).contains(&port),
            PortPattern::Glob(p) => p.is_match(&port.to_string()),
        }
    }
}

/// A forward target rule: `prod-db:5432`, `*.dev.pod:*`, `10.0.0.0/8:22`,
/// `[fd00::/8]:8000-8100`.
#[derive(Debug, Clone)]
pub struct TargetPattern {
    pub text: String,
    pub host: HostPattern,
    pub port: PortPattern,
}

/// How a target rule should treat resolved addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrMode {
    /// Deny/approve rules: any resolved address inside the net is enough.
    Any,
    /// Allow rules: every resolved address must be inside the net, so a name
    /// that also resolves somewhere else is not waved through.
    All,
}

const PORT_HELP: &str = "write a port from 1 to 65535, a range like 8000-8100, or *";

impl TargetPattern {
    pub fn parse(s: &str) -> Result<Self, String> {
        let Some((host, port)) = s.rsplit_once(':') else {
            return Err(format!(
                "target '{s}' has no port; write host:port, e.g. \"{s}:5432\" or \"{s}:*\""
            ));
        };
        let port = parse_port(port)?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() {
            return Err(format!(
                "target '{s}' has no host; write e.g. \"*:{}\" for any host",
                s.rsplit_once(':').map(|(_, p)| p).unwrap_or("*")
            ));
        }
        let host = if host.contains('/') {
            let net: IpNet = host.parse().map_err(|e| {
                format!("bad CIDR '{host}' ({e}); write e.g. \"10.0.0.0/8\" or \"fd00::/8\"")
            })?;
            if net.addr() != net.network() {
                return Err(format!(
                    "CIDR '{host}' has host bits set; write \"{}\"",
                    net.trunc()
                ));
            }
            HostPattern::Net(net)
        } else if let Ok(ip) = host.parse::<IpAddr>() {
            HostPattern::Net(IpNet::from(ip))
        } else {
            if host.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(format!(
                    "target host '{host}' contains spaces or control characters"
                ));
            }
            HostPattern::Name(Pattern::parse(host, true)?)
        };
        Ok(TargetPattern {
            text: s.to_string(),
            host,
            port,
        })
    }

    /// Does this rule cover `host:port` (as written) resolved to `resolved`?
    pub fn is_match(&self, host: &str, port: u16, resolved: &[IpAddr], mode: AddrMode) -> bool {
        if !self.port.is_match(port) {
            return false;
        }
        match &self.host {
            HostPattern::Name(p) => p.is_match(host),
            HostPattern::Net(net) => {
                let written = host
                    .strip_prefix('[')
                    .and_then(|h| h.strip_suffix(']'))
                    .unwrap_or(host)
                    .parse::<IpAddr>()
                    .ok();
                if let Some(ip) = written
                    && net.contains(&ip.to_canonical())
                {
                    // A literal address the client wrote is what gets
                    // dialled; for allow rules it must also agree with what
                    // was resolved.
                    return match mode {
                        AddrMode::Any => true,
                        AddrMode::All => resolved.iter().all(|r| net.contains(&r.to_canonical())),
                    };
                }
                if resolved.is_empty() {
                    return false;
                }
                let inside = |r: &IpAddr| net.contains(&r.to_canonical());
                match mode {
                    AddrMode::Any => resolved.iter().any(inside),
                    AddrMode::All => resolved.iter().all(inside),
                }
            }
        }
    }

    /// True when the rule names a specific address range (not `0.0.0.0/0`)
    /// that contains `ip`: the tunnel lets otherwise-forbidden addresses
    /// (metadata, loopback) through only when a rule names them like this.
    pub fn names_address(&self, ip: IpAddr, port: u16) -> bool {
        match &self.host {
            HostPattern::Net(net) => {
                net.prefix_len() > 0 && net.contains(&ip.to_canonical()) && self.port.is_match(port)
            }
            HostPattern::Name(_) => false,
        }
    }
}

fn parse_port(p: &str) -> Result<PortPattern, String> {
    let num = |s: &str| -> Result<u16, String> {
        match s.parse::<u16>() {
            Ok(0) | Err(_) => Err(format!("bad port '{p}'; {PORT_HELP}")),
            Ok(n) => Ok(n),
        }
    };
    if p == "*" {
        return Ok(PortPattern::Any);
    }
    if p.chars().all(|c| c.is_ascii_digit()) && !p.is_empty() {
        let n = num(p)?;
        return Ok(PortPattern::Range(n, n));
    }
    if let Some((lo, hi)) = p.split_once('-') {
        let (lo, hi) = (num(lo)?, num(hi)?);
        if lo > hi {
            return Err(format!(
                "port range '{p}' is backwards; write \"{hi}-{lo}\""
            ));
        }
        return Ok(PortPattern::Range(lo, hi));
    }
    if !p.is_empty() && p.chars().all(|c| c.is_ascii_digit() || "*?[]".contains(c)) {
        return Ok(PortPattern::Glob(Pattern::parse(p, false)?));
    }
    Err(format!("bad port '{p}'; {PORT_HELP}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn glob_star_crosses_spaces_and_slashes() {
        let p = Pattern::parse("rm -rf /*", false).unwrap();
        assert!(p.is_match("rm -rf /"));
        assert!(p.is_match("rm -rf /usr/lib things"));
        assert!(!p.is_match("rm -r /"));
        assert!(!p.is_match("sudo rm -rf /"));
    }

    #[test]
    fn regex_prefix_and_errors() {
        let p = Pattern::parse("re:^curl .*", false).unwrap();
        assert!(p.is_match("curl http://x"));
        assert!(!p.is_match("xcurl"));
        assert!(
            Pattern::parse("re:(", false)
                .unwrap_err()
                .contains("bad regex")
        );
        assert!(
            Pattern::parse("re:", false)
                .unwrap_err()
                .contains("empty regex")
        );
        assert!(
            Pattern::parse("[a", false)
                .unwrap_err()
                .contains("bad glob")
        );
        assert!(Pattern::parse("", false).is_err());
    }

    #[test]
    fn target_parse_errors() {
        for (bad, want) in [
            ("prod-db", "no port"),
            ("prod-db:0", "bad port"),
            ("prod-db:70000", "bad port"),
            ("prod-db:90-80", "backwards"),
            ("prod-db:http", "bad port"),
            ("10.0.0.0/33:22", "bad CIDR"),
            ("10.0.0.1/8:22", "host bits"),
            (":22", "no host"),
        ] {
            let e = TargetPattern::parse(bad).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn target_matching() {
        let t = TargetPattern::parse("10.0.0.0/8:22").unwrap();
        assert!(t.is_match("web-1", 22, &[ip("10.1.2.3")], AddrMode::All));
        assert!(t.is_match("10.1.2.3", 22, &[ip("10.1.2.3")], AddrMode::All));
        assert!(!t.is_match("web-1", 23, &[ip("10.1.2.3")], AddrMode::All));
        // One address outside the net: not allowed, but a deny still hits.
        let mixed = [ip("10.1.2.3"), ip("192.168.1.1")];
        assert!(!t.is_match("web-1", 22, &mixed, AddrMode::All));
        assert!(t.is_match("web-1", 22, &mixed, AddrMode::Any));
        // IPv4-mapped IPv6 is the same address.
        assert!(t.is_match("x", 22, &[ip("::ffff:10.0.0.1")], AddrMode::All));
        // Unresolved names never match a CIDR.
        assert!(!t.is_match("web-1", 22, &[], AddrMode::Any));

        let n = TargetPattern::parse("*.dev.pod:*").unwrap();
        assert!(n.is_match("web.DEV.pod", 8080, &[], AddrMode::All));
        assert!(!n.is_match("web.prod.pod", 8080, &[], AddrMode::All));

        let r = TargetPattern::parse("[fd00::/8]:8000-8100").unwrap();
        assert!(r.is_match("x", 8050, &[ip("fd00::1")], AddrMode::All));
        assert!(!r.is_match("x", 8101, &[ip("fd00::1")], AddrMode::All));

        let g = TargetPattern::parse("db:54*").unwrap();
        assert!(g.is_match("db", 5432, &[], AddrMode::All));
        assert!(!g.is_match("db", 6432, &[], AddrMode::All));
    }

    #[test]
    fn names_address_only_for_specific_nets() {
        let meta = TargetPattern::parse("169.254.169.254:80").unwrap();
        assert!(meta.names_address(ip("169.254.169.254"), 80));
        assert!(!meta.names_address(ip("169.254.169.254"), 81));
        let all = TargetPattern::parse("0.0.0.0/0:*").unwrap();
        assert!(!all.names_address(ip("169.254.169.254"), 80));
        let name = TargetPattern::parse("*:*").unwrap();
        assert!(!name.names_address(ip("127.0.0.1"), 22));
    }
}
