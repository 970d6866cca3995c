//! The validated policy model: [`Role`]s as the loader built them from the
//! files, each rule remembering the file and line it came from so a
//! decision can name it. Nothing here can be invalid: every pattern is
//! compiled, every duration parsed; evaluation lives in `eval.rs`.

use std::sync::Arc;
use std::time::Duration;

use crate::identity::{Identity, Kind};

use super::pattern::{Pattern, TargetPattern, any_match};

/// Where something was written: file (as shown to the user) and 1-based line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: Arc<str>,
    pub line: usize,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// One rule and where it came from. `text` is what the file says (the
/// pattern string, or the inline table for kube rules).
#[derive(Debug, Clone)]
pub struct Rule<T> {
    pub origin: Origin,
    pub text: String,
    pub pat: T,
}

/// The three lists every rule section has.
#[derive(Debug, Clone)]
pub struct Rules<T> {
    pub allow: Vec<Rule<T>>,
    pub deny: Vec<Rule<T>>,
    pub approve: Vec<Rule<T>>,
}

impl<T> Default for Rules<T> {
    fn default() -> Self {
        Self {
            allow: Vec::new(),
            deny: Vec::new(),
            approve: Vec::new(),
        }
    }
}

/// Which identities a role applies to. Every field given must match (AND);
/// a list matches when any entry does (OR). `None` = not constrained.
#[derive(Debug, Clone, Default)]
pub struct Match {
    pub issuer: Option<Vec<Pattern>>,
    pub subject: Option<Vec<Pattern>>,
    pub email: Option<Vec<Pattern>>,
    pub groups: Option<Vec<Pattern>>,
    pub kind: Option<Kind>,
    pub namespace: Option<Vec<Pattern>>,
    /// Matched against the service-account name, or against
    /// `namespace/name` when the pattern contains a `/`.
    pub service_account: Option<Vec<Pattern>>,
}

impl Match {
    pub fn matches(&self, id: &Identity) -> bool {
        let field = |pats: &Option<Vec<Pattern>>, value: Option<&str>| match pats {
            None => true,
            Some(p) => value.is_some_and(|v| any_match(p, v)),
        };
        if let Some(k) = self.kind
            && k != id.kind
        {
            return false;
        }
        let kube = id.kube.as_ref();
        field(&self.issuer, Some(&id.issuer))
            && field(&self.subject, Some(&id.subject))
            && field(&self.email, id.email.as_deref())
            && match &self.groups {
                None => true,
                Some(p) => id.groups.iter().any(|g| any_match(p, g)),
            }
            && field(&self.namespace, kube.map(|k| k.namespace.as_str()))
            && match (&self.service_account, kube) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(p), Some(k)) => {
                    let full = format!("{}/{}", k.namespace, k.service_account);
                    p.iter().any(|pat| {
                        if pat.text().contains('/') {
                            pat.is_match(&full)
                        } else {
                            pat.is_match(&k.service_account)
                        }
                    })
                }
            }
    }
}

/// One piece of a principal template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Literal(String),
    Subject,
    EmailLocal,
    ServiceAccount,
}

/// A login-principal template such as `{subject}` or `agent-{service_account}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub text: String,
    pub pieces: Vec<Piece>,
}

/// Longest login name we produce: the traditional `useradd` limit, which is
/// also what most NSS modules accept.
pub const MAX_LOGIN_LEN: usize = 32;

impl Template {
    /// Expand for `id`, sanitised to a valid login name; `None` when a
    /// placeholder has no value (no email, not an agent) or nothing is left.
    pub fn expand(&self, id: &Identity) -> Option<String> {
        let mut out = String::new();
        for p in &self.pieces {
            match p {
                Piece::Literal(s) => out.push_str(s),
                Piece::Subject => out.push_str(&id.subject),
                Piece::EmailLocal => {
                    let email = id.email.as_deref()?;
                    out.push_str(email.split('@').next().unwrap_or(email));
                }
                Piece::ServiceAccount => out.push_str(&id.kube.as_ref()?.service_account),
            }
        }
        sanitize_login(&out)
    }
}

/// Turn arbitrary text (an OIDC subject like `auth0|5f3a`, an email local
/// part) into a portable login name: lowercase `[a-z0-9._-]`, other
/// characters replaced by `_`, no leading `-` (it would read as an option),
/// at most [`MAX_LOGIN_LEN`] characters. `None` when nothing usable remains.
pub fn sanitize_login(s: &str) -> Option<String> {
    let mut out: String = s
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let trimmed = out.trim_start_matches(['-', '.']).len();
    out.drain(..out.len() - trimmed);
    out.truncate(MAX_LOGIN_LEN);
    if out.is_empty() || out.chars().all(|c| c == '_') {
        None
    } else {
        Some(out)
    }
}

/// What a role grants besides rules.
#[derive(Debug, Clone, Default)]
pub struct Grant {
    pub principals: Vec<Template>,
    pub cert_ttl: Option<Duration>,
    pub shell: bool,
    pub exec: bool,
    pub pty: bool,
    pub port_forwarding: bool,
    pub on_behalf_of: bool,
    /// Where `approver = true` was written, when it was.
    pub approver: Option<Origin>,
    pub record_input: bool,
    /// Where `strict = true` was written, when it was.
    pub strict: Option<Origin>,
    pub max_duration: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub max_sessions: Option<u32>,
    pub approval_timeout: Option<Duration>,
}

/// Masking settings of a role.
#[derive(Debug, Clone)]
pub struct Mask {
    pub live: bool,
    /// Built-in detector names; empty = all.
    pub detectors: Vec<String>,
    pub custom: Vec<(String, String)>,
}

impl Default for Mask {
    fn default() -> Self {
        Self {
            live: true,
            detectors: Vec::new(),
            custom: Vec::new(),
        }
    }
}

/// Forward rules of a role.
#[derive(Debug, Clone, Default)]
pub struct Forward {
    /// `ssh -L` / `ssh -J` targets.
    pub rules: Rules<TargetPattern>,
    /// `ssh -R` bind addresses allowed (tcpip-forward).
    pub remote: Vec<Rule<TargetPattern>>,
    /// Agent forwarding allowed (where `agent = true` was written).
    pub agent: Option<Origin>,
    /// X11 forwarding allowed (where `x11 = true` was written).
    pub x11: Option<Origin>,
}

/// One Kubernetes API rule. `None` fields match everything; `namespaces`
/// given means the rule only covers namespaced requests in them, `names`
/// given means only requests for a named object.
#[derive(Debug, Clone)]
pub struct KubeRule {
    pub verbs: Vec<Pattern>,
    pub api_groups: Option<Vec<Pattern>>,
    /// Matched against `resource` or `resource/subresource`.
    pub resources: Vec<Pattern>,
    pub namespaces: Option<Vec<Pattern>>,
    pub names: Option<Vec<Pattern>>,
}

/// A role: who it matches and what it grants.
#[derive(Debug, Clone)]
pub struct Role {
    pub name: String,
    pub description: Option<String>,
    /// Where `[[role]]` was written.
    pub origin: Origin,
    pub matcher: Match,
    pub grant: Grant,
    pub mask: Mask,
    pub exec: Rules<Pattern>,
    pub forward: Forward,
    pub kube: Rules<KubeRule>,
}

impl Role {
    /// `policies/sre.toml:3 role 'sre'`
    pub fn label(&self) -> String {
        format!("{} role '{}'", self.origin, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_login_names() {
        assert_eq!(sanitize_login("Alice").as_deref(), Some("alice"));
        assert_eq!(sanitize_login("auth0|5f3a").as_deref(), Some("auth0_5f3a"));
        assert_eq!(sanitize_login("--rm").as_deref(), Some("rm"));
        assert_eq!(sanitize_login("a b;c").as_deref(), Some("a_b_c"));
        assert_eq!(sanitize_login("ünï").as_deref(), Some("_n_"));
        assert_eq!(sanitize_login("").as_deref(), None);
        assert_eq!(sanitize_login("@@").as_deref(), None);
        assert_eq!(sanitize_login(&"x".repeat(40)).map(|s| s.len()), Some(32));
    }

    proptest::proptest! {
        /// Whatever a token's subject holds, a principal is a portable login name.
        #[test]
        fn sanitized_logins_are_portable(s in "\\PC{0,64}") {
            if let Some(login) = sanitize_login(&s) {
                proptest::prop_assert!(login.len() <= MAX_LOGIN_LEN);
                proptest::prop_assert!(!login.starts_with('-') && !login.starts_with('.'));
                proptest::prop_assert!(login
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c)));
            }
        }
    }
}
