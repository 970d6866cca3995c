//! Loading policy files: every `*.toml` in the policy directory (sorted by
//! name), parsed into a spanned TOML tree and walked key by key so that
//! *every* mistake is reported, each as a [`Diagnostic`] with
//! `file:line:column` and what to write instead (unknown keys get a "did you
//! mean"). Only a set of files with no diagnostic at all becomes a
//! [`Policy`]. Also seeds the default policy dir with the embedded
//! `policies/default.toml`.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::identity::Kind;

use super::model::{
    Forward, Grant, KubeRule, Mask, Match, Origin, Piece, Role, Rule, Rules, Template,
};
use super::pattern::{Pattern, TargetPattern};
use super::{Error, Policy};

/// Names of the built-in secret detectors a role may list in
/// `[role.mask] detectors` (besides `"all"`).
pub const KNOWN_DETECTORS: &[&str] = &[
    "aws",
    "github",
    "gitlab",
    "slack",
    "stripe",
    "gcp",
    "jwt",
    "private-key",
    "password",
    "connection-string",
];

/// Kubernetes API verbs a kube rule may name (globs are accepted too).
pub const KNOWN_VERBS: &[&str] = &[
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
    "proxy",
    "impersonate",
    "bind",
    "escalate",
    "use",
    "approve",
    "sign",
];

/// Longest certificate lifetime a role may grant: short-lived certificates
/// are the point of the CA; anything longer is almost surely a typo.
pub const MAX_CERT_TTL: Duration = Duration::from_secs(24 * 3600);

/// Name of the file written into an empty default policy dir.
pub const DEFAULT_FILE_NAME: &str = "default.toml";

/// One problem in a policy file, located precisely.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

/// The `*.toml` files of `dir`, sorted by name, with their text. Hidden
/// files are skipped (a Kubernetes ConfigMap mount keeps its real files in
/// `..data/`, and the visible names are symlinks into it, which we follow).
pub fn read_dir(dir: &Path) -> Result<Vec<(PathBuf, String)>, Error> {
    let io = |source| Error::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_none_or(|n| n.starts_with('.'));
        if hidden || path.extension().is_none_or(|e| e != "toml") || !path.is_file() {
            continue;
        }
        paths.push(path);
    }
    paths.sort();
    read_files(&paths)
}

/// Read the given files.
pub fn read_files(paths: &[PathBuf]) -> Result<Vec<(PathBuf, String)>, Error> {
    paths
        .iter()
        .map(|p| {
            std::fs::read_to_string(p)
                .map(|t| (p.clone(), t))
                .map_err(|source| Error::Io {
                    path: p.clone(),
                    source,
                })
        })
        .collect()
}

/// Load every policy file in `dir`. No files is an error: an empty policy
/// denies everything, which is never what a configured directory meant.
pub fn load_dir(dir: &Path) -> Result<Policy, Error> {
    let files = read_dir(dir)?;
    if files.is_empty() {
        return Err(Error::NoFiles(dir.to_path_buf()));
    }
    compile(&files).map_err(Error::Invalid)
}

/// Build a policy from (path, text) pairs; every diagnostic of every file
/// when anything is wrong, sorted by file and position.
pub fn compile(files: &[(PathBuf, String)]) -> Result<Policy, Vec<Diagnostic>> {
    let mut diags = Vec::new();
    let mut warnings = Vec::new();
    let mut roles: Vec<Role> = Vec::new();
    for (path, text) in files {
        let file: Arc<str> = Arc::from(path.display().to_string());
        let mut cx = FileCx {
            file: Arc::clone(&file),
            text,
            diags: Vec::new(),
            warnings: Vec::new(),
        };
        let parsed = cx.parse();
        // Duplicate names are only known across files, so check here.
        for (role, name_span) in parsed {
            if let Some(first) = roles.iter().find(|r| r.name == role.name) {
                cx.err(
                    name_span,
                    format!(
                        "duplicate role name '{}' (first defined at {}); role names must be unique across all files",
                        role.name, first.origin
                    ),
                );
            } else {
                roles.push(role);
            }
        }
        diags.extend(cx.diags);
        warnings.extend(cx.warnings);
    }
    if diags.is_empty() {
        Ok(Policy::from_roles(
            roles,
            files.iter().map(|(p, _)| p.clone()).collect(),
            warnings,
        ))
    } else {
        Err(diags)
    }
}

/// Parse one policy text (for tests and `policy test` with inline text).
pub fn compile_str(name: &str, text: &str) -> Result<Policy, Vec<Diagnostic>> {
    compile(&[(PathBuf::from(name), text.to_string())])
}

/// When `dir` is the default policy dir and holds no `*.toml` file, create it
/// and write the embedded default policy, so `serve` with no configuration
/// starts with a safe policy. A configured dir is never written to.
pub fn ensure_dir(dir: &Path, is_default: bool) -> Result<(), Error> {
    if !is_default {
        return Ok(());
    }
    let io = |source| Error::Io {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    if read_dir(dir)?.is_empty() {
        let path = dir.join(DEFAULT_FILE_NAME);
        std::fs::write(&path, super::default_policy_text())
            .map_err(|source| Error::Io { path, source })?;
        tracing::info!(path = %dir.join(DEFAULT_FILE_NAME).display(), "wrote the default policy");
    }
    Ok(())
}

type Val<'i> = Spanned<DeValue<'i>>;

/// Walks one file, collecting diagnostics.
struct FileCx<'a> {
    file: Arc<str>,
    text: &'a str,
    diags: Vec<Diagnostic>,
    /// Legal but probably not what was meant; reported, never fatal.
    warnings: Vec<Diagnostic>,
}

/// Edit distance, for "did you mean" on unknown keys and values.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev.get(j).copied().unwrap_or(0) + usize::from(ca != *cb);
            let del = prev.get(j + 1).copied().unwrap_or(0) + 1;
            let ins = cur.get(j).copied().unwrap_or(0) + 1;
            cur.push(sub.min(del).min(ins));
        }
        prev = cur;
    }
    prev.last().copied().unwrap_or(0)
}

/// `"; did you mean 'allow'?"` or `"; expected one of: a, b"`.
fn suggest(got: &str, known: &[&str]) -> String {
    let best = known
        .iter()
        .map(|k| (distance(got, k), *k))
        .min_by_key(|(d, _)| *d);
    match best {
        Some((d, k)) if d <= 2.max(got.chars().count() / 3) => format!("; did you mean '{k}'?"),
        _ => format!("; expected one of: {}", known.join(", ")),
    }
}

fn type_name(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

const ROLE_KEYS: &[&str] = &[
    "name",
    "description",
    "match",
    "grant",
    "mask",
    "exec",
    "forward",
    "kube",
];
const MATCH_KEYS: &[&str] = &[
    "issuer",
    "subject",
    "email",
    "groups",
    "kind",
    "namespace",
    "service_account",
];
const GRANT_KEYS: &[&str] = &[
    "principals",
    "cert_ttl",
    "shell",
    "exec",
    "pty",
    "port_forwarding",
    "on_behalf_of",
    "approver",
    "record_input",
    "strict",
    "max_duration",
    "idle_timeout",
    "max_sessions",
    "approval_timeout",
];
const MASK_KEYS: &[&str] = &["live", "detectors", "custom"];
const CUSTOM_KEYS: &[&str] = &["name", "regex"];
const RULE_KEYS: &[&str] = &["allow", "deny", "approve"];
const FORWARD_KEYS: &[&str] = &["allow", "deny", "approve", "remote", "agent", "x11"];
const KUBE_RULE_KEYS: &[&str] = &["verbs", "resources", "api_groups", "namespaces", "names"];

impl FileCx<'_> {
    fn err(&mut self, span: Range<usize>, message: impl Into<String>) {
        let (line, column) = crate::config::line_col(self.text, span.start);
        self.diags.push(Diagnostic {
            file: self.file.to_string(),
            line,
            column,
            message: message.into(),
        });
    }

    fn warn(&mut self, span: Range<usize>, message: impl Into<String>) {
        let (line, column) = crate::config::line_col(self.text, span.start);
        self.warnings.push(Diagnostic {
            file: self.file.to_string(),
            line,
            column,
            message: message.into(),
        });
    }

    fn origin(&self, span: &Range<usize>) -> Origin {
        Origin {
            file: Arc::clone(&self.file),
            line: crate::config::line_col(self.text, span.start).0,
        }
    }

    /// Syntax, then structure. Returns each role with the span of its name.
    fn parse(&mut self) -> Vec<(Role, Range<usize>)> {
        let text = self.text;
        let (doc, errors) = DeTable::parse_recoverable(text);
        if !errors.is_empty() {
            // A recovered tree after a syntax error is partial; walking it
            // would add confusing follow-on errors.
            // Several complaints about one spot read better as one line.
            let mut merged: Vec<(usize, String)> = Vec::new();
            for e in errors {
                let at = e.span().map(|s| s.start).unwrap_or(0);
                let msg = e.message().trim().to_string();
                match merged.iter_mut().find(|(p, _)| *p == at) {
                    Some((_, m)) => {
                        m.push_str("; ");
                        m.push_str(&msg);
                    }
                    None => merged.push((at, msg)),
                }
            }
            for (at, msg) in merged {
                self.err(at..at, format!("TOML syntax: {msg}"));
            }
            return Vec::new();
        }
        let doc = doc.into_inner();
        let mut roles = Vec::new();
        for (k, v) in doc.iter() {
            if k.get_ref() != "role" {
                self.err(
                    k.span(),
                    format!(
                        "unknown top-level key '{}'; policy files hold only [[role]] tables{}",
                        k.get_ref(),
                        if distance(k.get_ref(), "role") <= 2 {
                            "; did you mean [[role]]?"
                        } else {
                            ""
                        }
                    ),
                );
                continue;
            }
            let DeValue::Array(arr) = v.get_ref() else {
                self.err(
                    v.span(),
                    "write roles as [[role]] (an array of tables), not [role]",
                );
                continue;
            };
            for item in arr.iter() {
                let DeValue::Table(t) = item.get_ref() else {
                    self.err(
                        item.span(),
                        format!(
                            "each role must be a table, found {}",
                            type_name(item.get_ref())
                        ),
                    );
                    continue;
                };
                if let Some(r) = self.role(t, item.span()) {
                    roles.push(r);
                }
            }
        }
        if roles.is_empty() && self.diags.is_empty() {
            self.err(0..0, "no [[role]] in this file; add one or delete the file");
        }
        roles
    }

    fn unknown_keys(&mut self, t: &DeTable<'_>, section: &str, known: &[&str]) {
        for k in t.keys() {
            if !known.contains(&k.get_ref().as_ref()) {
                let msg = format!(
                    "unknown key '{}' in {section}{}",
                    k.get_ref(),
                    suggest(k.get_ref(), known)
                );
                self.err(k.span(), msg);
            }
        }
    }

    fn string<'t>(
        &mut self,
        t: &'t DeTable<'_>,
        key: &str,
        section: &str,
    ) -> Option<(&'t str, Range<usize>)> {
        let v = t.get(key)?;
        match v.get_ref() {
            DeValue::String(s) => Some((s.as_ref(), v.span())),
            other => {
                self.err(
                    v.span(),
                    format!(
                        "'{key}' in {section} must be a string, found {}",
                        type_name(other)
                    ),
                );
                None
            }
        }
    }

    fn boolean(
        &mut self,
        t: &DeTable<'_>,
        key: &str,
        section: &str,
    ) -> Option<(bool, Range<usize>)> {
        let v = t.get(key)?;
        match v.get_ref() {
            DeValue::Boolean(b) => Some((*b, v.span())),
            other => {
                self.err(
                    v.span(),
                    format!(
                        "'{key}' in {section} must be true or false, found {}",
                        type_name(other)
                    ),
                );
                None
            }
        }
    }

    fn table<'t, 'i>(
        &mut self,
        t: &'t DeTable<'i>,
        key: &str,
        section: &str,
    ) -> Option<&'t DeTable<'i>> {
        let v = t.get(key)?;
        match v.get_ref() {
            DeValue::Table(inner) => Some(inner),
            other => {
                self.err(
                    v.span(),
                    format!(
                        "'{key}' must be a table ([{section}.{key}] or {key} = {{ ... }}), found {}",
                        type_name(other)
                    ),
                );
                None
            }
        }
    }

    /// A list of strings (a single string is accepted as a list of one),
    /// each with its span.
    fn strings(
        &mut self,
        t: &DeTable<'_>,
        key: &str,
        section: &str,
    ) -> Option<Vec<(String, Range<usize>)>> {
        let v = t.get(key)?;
        self.strings_of(v, key, section)
    }

    fn strings_of(
        &mut self,
        v: &Val<'_>,
        key: &str,
        section: &str,
    ) -> Option<Vec<(String, Range<usize>)>> {
        match v.get_ref() {
            DeValue::String(s) => Some(vec![(s.to_string(), v.span())]),
            DeValue::Array(items) => {
                let mut out = Vec::new();
                for item in items.iter() {
                    match item.get_ref() {
                        DeValue::String(s) => out.push((s.to_string(), item.span())),
                        other => self.err(
                            item.span(),
                            format!(
                                "'{key}' in {section} must list strings, found {}",
                                type_name(other)
                            ),
                        ),
                    }
                }
                Some(out)
            }
            other => {
                self.err(
                    v.span(),
                    format!(
                        "'{key}' in {section} must be a list of strings, found {}",
                        type_name(other)
                    ),
                );
                None
            }
        }
    }

    fn patterns(
        &mut self,
        t: &DeTable<'_>,
        key: &str,
        section: &str,
        ci: bool,
    ) -> Option<Vec<Pattern>> {
        let items = self.strings(t, key, section)?;
        Some(self.compile_patterns(items, key, section, ci))
    }

    fn compile_patterns(
        &mut self,
        items: Vec<(String, Range<usize>)>,
        key: &str,
        section: &str,
        ci: bool,
    ) -> Vec<Pattern> {
        let mut out = Vec::new();
        for (s, span) in items {
            match Pattern::parse(&s, ci) {
                Ok(p) => out.push(p),
                Err(m) => self.err(span, format!("{m} (in {section} {key})")),
            }
        }
        out
    }

    fn duration(&mut self, t: &DeTable<'_>, key: &str, section: &str) -> Option<Duration> {
        let (s, span) = self.string(t, key, section)?;
        match crate::config::parse_duration(s) {
            Ok(d) if d.is_zero() => {
                self.err(span, format!("'{key}' must be longer than zero"));
                None
            }
            Ok(d) => Some(d),
            Err(m) => {
                self.err(span, format!("bad duration for '{key}': {m}"));
                None
            }
        }
    }

    fn role(&mut self, t: &DeTable<'_>, span: Range<usize>) -> Option<(Role, Range<usize>)> {
        let before = self.diags.len();
        self.unknown_keys(t, "[[role]]", ROLE_KEYS);
        let name = self.string(t, "name", "[[role]]");
        if name.is_none() && !t.contains_key("name") {
            self.err(span.clone(), "role has no name; add name = \"...\"");
        }
        let (name, name_span) = match name {
            Some((n, s)) => (n.to_string(), s),
            None => (String::new(), span.clone()),
        };
        if !name.is_empty()
            && !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            self.err(
                name_span.clone(),
                format!("role name '{name}' may only use letters, digits, '-', '_' and '.'"),
            );
        } else if name.is_empty() && t.contains_key("name") {
            self.err(name_span.clone(), "role name is empty");
        }
        let description = self
            .string(t, "description", "[[role]]")
            .map(|(s, _)| s.to_string());

        let matcher = match self.table(t, "match", "role") {
            Some(m) => {
                let mspan = t.get("match").map(|v| v.span()).unwrap_or(span.clone());
                self.matcher(m, mspan)
            }
            None => {
                if !t.contains_key("match") {
                    self.err(
                        span.clone(),
                        format!(
                            "role '{name}' has no [role.match]; add one (e.g. issuer = [\"local\"]), or subject = [\"*\"] to match everyone on purpose"
                        ),
                    );
                }
                Match::default()
            }
        };
        let grant = match self.table(t, "grant", "role") {
            Some(g) => self.grant(g),
            None => Grant::default(),
        };
        let mask = match self.table(t, "mask", "role") {
            Some(m) => self.mask(m),
            None => Mask::default(),
        };
        let exec = match self.table(t, "exec", "role") {
            Some(e) => self.exec(e),
            None => Rules::default(),
        };
        let forward = match self.table(t, "forward", "role") {
            Some(f) => self.forward(f),
            None => Forward::default(),
        };
        let kube = match self.table(t, "kube", "role") {
            Some(k) => self.kube(k),
            None => Rules::default(),
        };
        if self.diags.len() != before {
            return None;
        }
        // Typed shell lines and exec commands both go through [role.exec].
        if (grant.shell || grant.exec) && exec.allow.is_empty() {
            self.warn(
                span.clone(),
                format!(
                    "role '{name}' grants shell/exec but its [role.exec] allows no command; unless another matching role does, every command is denied (add allow = [\"*\"] and deny rules)"
                ),
            );
        }
        if grant.port_forwarding
            && forward.rules.allow.is_empty()
            && forward.rules.approve.is_empty()
        {
            self.warn(
                span.clone(),
                format!(
                    "role '{name}' grants port_forwarding but its [role.forward] allows no target; unless another matching role does, every forward is denied"
                ),
            );
        }
        Some((
            Role {
                name,
                description,
                origin: self.origin(&span),
                matcher,
                grant,
                mask,
                exec,
                forward,
                kube,
            },
            name_span,
        ))
    }

    fn matcher(&mut self, t: &DeTable<'_>, span: Range<usize>) -> Match {
        const S: &str = "[role.match]";
        self.unknown_keys(t, S, MATCH_KEYS);
        let kind = self.string(t, "kind", S).and_then(|(k, span)| match k {
            "human" => Some(Kind::Human),
            "agent" => Some(Kind::Agent),
            other => {
                self.err(
                    span,
                    format!("kind '{other}' in {S}: write \"human\" or \"agent\""),
                );
                None
            }
        });
        let m = Match {
            issuer: self.patterns(t, "issuer", S, false),
            subject: self.patterns(t, "subject", S, false),
            email: self.patterns(t, "email", S, true),
            groups: self.patterns(t, "groups", S, false),
            kind,
            namespace: self.patterns(t, "namespace", S, false),
            service_account: self.patterns(t, "service_account", S, false),
        };
        if t.is_empty() {
            // An empty match would silently match everyone.
            self.err(
                span,
                "[role.match] is empty; name at least one field (subject = [\"*\"] matches everyone on purpose)",
            );
        }
        m
    }

    fn grant(&mut self, t: &DeTable<'_>) -> Grant {
        const S: &str = "[role.grant]";
        self.unknown_keys(t, S, GRANT_KEYS);
        let mut principals = Vec::new();
        for (text, span) in self.strings(t, "principals", S).unwrap_or_default() {
            match parse_template(&text) {
                Ok(pieces) => principals.push(Template { text, pieces }),
                Err(m) => self.err(span, m),
            }
        }
        let cert_ttl = self.duration(t, "cert_ttl", S);
        if let (Some(ttl), Some(v)) = (cert_ttl, t.get("cert_ttl"))
            && ttl > MAX_CERT_TTL
        {
            self.err(
                v.span(),
                format!(
                    "cert_ttl {} is longer than the {} maximum; certificates are meant to be short-lived",
                    humantime::format_duration(ttl),
                    humantime::format_duration(MAX_CERT_TTL)
                ),
            );
        }
        let flag = |cx: &mut Self, key: &str| cx.boolean(t, key, S).map(|(b, _)| b);
        let shell = flag(self, "shell").unwrap_or(false);
        let pty = flag(self, "pty").unwrap_or(shell);
        let located = |cx: &mut Self, key: &str| match cx.boolean(t, key, S) {
            Some((true, span)) => Some(cx.origin(&span)),
            _ => None,
        };
        let approver = located(self, "approver");
        let strict = located(self, "strict");
        let max_sessions = match t.get("max_sessions") {
            None => None,
            Some(v) => match v.get_ref() {
                DeValue::Integer(i) => match i.as_str().parse::<u32>() {
                    Ok(n) if n >= 1 && i.radix() == 10 => Some(n),
                    _ => {
                        self.err(
                            v.span(),
                            "max_sessions must be a whole number from 1 to 4294967295",
                        );
                        None
                    }
                },
                other => {
                    self.err(
                        v.span(),
                        format!("max_sessions must be a number, found {}", type_name(other)),
                    );
                    None
                }
            },
        };
        Grant {
            principals,
            cert_ttl,
            shell,
            exec: flag(self, "exec").unwrap_or(false),
            pty,
            port_forwarding: flag(self, "port_forwarding").unwrap_or(false),
            on_behalf_of: flag(self, "on_behalf_of").unwrap_or(false),
            approver,
            record_input: flag(self, "record_input").unwrap_or(false),
            strict,
            max_duration: self.duration(t, "max_duration", S),
            idle_timeout: self.duration(t, "idle_timeout", S),
            max_sessions,
            approval_timeout: self.duration(t, "approval_timeout", S),
        }
    }

    fn mask(&mut self, t: &DeTable<'_>) -> Mask {
        const S: &str = "[role.mask]";
        self.unknown_keys(t, S, MASK_KEYS);
        let live = self.boolean(t, "live", S).map(|(b, _)| b).unwrap_or(true);
        let mut detectors = Vec::new();
        let mut all = false;
        for (d, span) in self.strings(t, "detectors", S).unwrap_or_default() {
            if d == "all" {
                all = true;
            } else if KNOWN_DETECTORS.contains(&d.as_str()) {
                detectors.push(d);
            } else {
                let mut known = vec!["all"];
                known.extend_from_slice(KNOWN_DETECTORS);
                self.err(
                    span,
                    format!("unknown detector '{d}' in {S}{}", suggest(&d, &known)),
                );
            }
        }
        if all {
            detectors.clear();
        }
        let mut custom = Vec::new();
        if let Some(v) = t.get("custom") {
            match v.get_ref() {
                DeValue::Array(items) => {
                    for item in items.iter() {
                        let DeValue::Table(ct) = item.get_ref() else {
                            self.err(
                                item.span(),
                                "each custom mask rule is a table: { name = \"...\", regex = \"...\" }",
                            );
                            continue;
                        };
                        self.unknown_keys(ct, "[role.mask] custom", CUSTOM_KEYS);
                        let name = self.string(ct, "name", "[role.mask] custom");
                        let regex = self.string(ct, "regex", "[role.mask] custom");
                        match (name, regex) {
                            (Some((n, nspan)), Some((r, rspan))) => {
                                if n.is_empty() {
                                    self.err(nspan, "custom mask rule name is empty");
                                } else if let Err(e) = regex::Regex::new(r) {
                                    self.err(
                                        rspan,
                                        format!(
                                            "bad regex in custom mask rule '{n}': {}",
                                            super::pattern::regex_error(&e)
                                        ),
                                    );
                                } else {
                                    custom.push((n.to_string(), r.to_string()));
                                }
                            }
                            _ => {
                                if !ct.contains_key("name") || !ct.contains_key("regex") {
                                    self.err(
                                        item.span(),
                                        "custom mask rule needs both name and regex",
                                    );
                                }
                            }
                        }
                    }
                }
                other => self.err(
                    v.span(),
                    format!(
                        "custom in {S} must be a list of {{ name, regex }} tables, found {}",
                        type_name(other)
                    ),
                ),
            }
        }
        Mask {
            live,
            detectors,
            custom,
        }
    }

    fn rule_list<T>(
        &mut self,
        t: &DeTable<'_>,
        key: &str,
        section: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Vec<Rule<T>> {
        let mut out = Vec::new();
        for (s, span) in self.strings(t, key, section).unwrap_or_default() {
            match parse(&s) {
                Ok(pat) => out.push(Rule {
                    origin: self.origin(&span),
                    text: s,
                    pat,
                }),
                Err(m) => self.err(span, format!("{m} (in {section} {key})")),
            }
        }
        out
    }

    fn exec(&mut self, t: &DeTable<'_>) -> Rules<Pattern> {
        const S: &str = "[role.exec]";
        self.unknown_keys(t, S, RULE_KEYS);
        let p = |s: &str| Pattern::parse(s, false);
        Rules {
            allow: self.rule_list(t, "allow", S, p),
            deny: self.rule_list(t, "deny", S, p),
            approve: self.rule_list(t, "approve", S, p),
        }
    }

    fn forward(&mut self, t: &DeTable<'_>) -> Forward {
        const S: &str = "[role.forward]";
        self.unknown_keys(t, S, FORWARD_KEYS);
        let p = TargetPattern::parse;
        let located = |cx: &mut Self, key: &str| match cx.boolean(t, key, S) {
            Some((true, span)) => Some(cx.origin(&span)),
            _ => None,
        };
        Forward {
            rules: Rules {
                allow: self.rule_list(t, "allow", S, p),
                deny: self.rule_list(t, "deny", S, p),
                approve: self.rule_list(t, "approve", S, p),
            },
            remote: self.rule_list(t, "remote", S, p),
            agent: located(self, "agent"),
            x11: located(self, "x11"),
        }
    }

    fn kube(&mut self, t: &DeTable<'_>) -> Rules<KubeRule> {
        const S: &str = "[role.kube]";
        self.unknown_keys(t, S, RULE_KEYS);
        Rules {
            allow: self.kube_rules(t, "allow"),
            deny: self.kube_rules(t, "deny"),
            approve: self.kube_rules(t, "approve"),
        }
    }

    fn kube_rules(&mut self, t: &DeTable<'_>, key: &str) -> Vec<Rule<KubeRule>> {
        let section = format!("[role.kube] {key}");
        let Some(v) = t.get(key) else {
            return Vec::new();
        };
        let DeValue::Array(items) = v.get_ref() else {
            self.err(
                v.span(),
                format!(
                    "{section} must be a list of tables like {{ verbs = [\"get\"], resources = [\"pods\"] }}, found {}",
                    type_name(v.get_ref())
                ),
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for item in items.iter() {
            let DeValue::Table(rt) = item.get_ref() else {
                self.err(
                    item.span(),
                    format!(
                        "each rule in {section} is a table like {{ verbs = [\"get\"], resources = [\"pods\"] }}, found {}",
                        type_name(item.get_ref())
                    ),
                );
                continue;
            };
            let before = self.diags.len();
            self.unknown_keys(rt, &section, KUBE_RULE_KEYS);
            for required in ["verbs", "resources"] {
                if !rt.contains_key(required) {
                    self.err(
                        item.span(),
                        format!("kube rule in {section} has no '{required}'; add e.g. {required} = [\"*\"]"),
                    );
                }
            }
            let verbs = self.strings(rt, "verbs", &section).unwrap_or_default();
            for (verb, span) in &verbs {
                let globby = verb.contains(['*', '?', '[', '{']) || verb.starts_with("re:");
                if !globby && !KNOWN_VERBS.contains(&verb.as_str()) {
                    self.err(
                        span.clone(),
                        format!(
                            "unknown Kubernetes verb '{verb}' in {section}{}",
                            suggest(verb, KNOWN_VERBS)
                        ),
                    );
                }
            }
            let verbs = self.compile_patterns(verbs, "verbs", &section, false);
            let resources = self
                .patterns(rt, "resources", &section, false)
                .unwrap_or_default();
            let rule = KubeRule {
                verbs,
                api_groups: self.strings(rt, "api_groups", &section).map(|groups| {
                    // "" is the core group (pods, services): keep it exact.
                    let (core, named): (Vec<_>, Vec<_>) =
                        groups.into_iter().partition(|(g, _)| g.is_empty());
                    let mut pats = self.compile_patterns(named, "api_groups", &section, false);
                    if !core.is_empty() {
                        pats.push(Pattern::empty_only());
                    }
                    pats
                }),
                resources,
                namespaces: self.patterns(rt, "namespaces", &section, false),
                names: self.patterns(rt, "names", &section, false),
            };
            if self.diags.len() == before {
                let span = item.span();
                let text = self
                    .text
                    .get(span.clone())
                    .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
                    .unwrap_or_default();
                out.push(Rule {
                    origin: self.origin(&span),
                    text,
                    pat: rule,
                });
            }
        }
        out
    }
}

/// Parse `agent-{service_account}` into pieces; literal parts must already
/// be valid login-name characters.
fn parse_template(text: &str) -> Result<Vec<Piece>, String> {
    const HELP: &str = "use {subject}, {email_local} or {service_account}";
    let mut pieces = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('{') {
            let Some(end) = after.find('}') else {
                return Err(format!("unclosed '{{' in principal '{text}'; {HELP}"));
            };
            let name = after.get(..end).unwrap_or("");
            pieces.push(match name {
                "subject" => Piece::Subject,
                "email_local" => Piece::EmailLocal,
                "service_account" => Piece::ServiceAccount,
                other => {
                    return Err(format!(
                        "unknown placeholder '{{{other}}}' in principal '{text}'; {HELP}"
                    ));
                }
            });
            rest = after.get(end + 1..).unwrap_or("");
        } else {
            let end = rest.find('{').unwrap_or(rest.len());
            let lit = rest.get(..end).unwrap_or("");
            if let Some(bad) = lit
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || "._-".contains(*c)))
            {
                return Err(format!(
                    "principal '{text}' contains '{bad}', which is not valid in a login name; use letters, digits, '.', '_' and '-'"
                ));
            }
            pieces.push(Piece::Literal(lit.to_string()));
            rest = rest.get(end..).unwrap_or("");
        }
    }
    if pieces.is_empty() {
        return Err("empty principal; write e.g. \"{subject}\"".into());
    }
    Ok(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diags(text: &str) -> Vec<Diagnostic> {
        compile_str("t.toml", text).err().unwrap_or_default()
    }

    const OK: &str = r#"
[[role]]
name = "ops"
[role.match]
issuer = ["local"]
[role.grant]
shell = true
[role.exec]
allow = ["*"]
"#;

    #[test]
    fn minimal_role_loads() {
        let p = compile_str("t.toml", OK).unwrap();
        assert_eq!(p.role_names(), vec!["ops".to_string()]);
    }

    #[test]
    fn unknown_key_has_line_column_and_suggestion() {
        let d = diags(&OK.replace("allow = [", "allw = ["));
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!((d[0].line, d[0].column), (9, 1), "{d:?}");
        assert!(
            d[0].message
                .contains("unknown key 'allw' in [role.exec]; did you mean 'allow'?"),
            "{d:?}"
        );
        assert_eq!(
            d[0].to_string().split(": ").next(),
            Some("t.toml:9:1"),
            "{d:?}"
        );
    }

    #[test]
    fn every_error_is_reported() {
        let text = OK
            .replace("allow = [\"*\"]", "allow = [\"re:(\"]\ndeny = [\"[x\"]")
            .replace("shell = true", "shell = \"yes\"\ncert_ttl = \"soon\"");
        let d = diags(&text);
        assert_eq!(d.len(), 4, "{d:#?}");
    }

    #[test]
    fn duplicate_role_across_files() {
        let files = vec![
            (PathBuf::from("a.toml"), OK.to_string()),
            (PathBuf::from("b.toml"), OK.to_string()),
        ];
        let d = compile(&files).unwrap_err();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].file, "b.toml");
        assert_eq!(d[0].line, 3);
        assert!(d[0].message.contains("first defined at a.toml:2"), "{d:?}");
    }

    #[test]
    fn warnings_do_not_fail_the_load() {
        let text = OK.replace("allow = [\"*\"]", "deny = [\"x\"]");
        let p = compile_str("t.toml", &text).unwrap();
        assert_eq!(p.warnings().len(), 1, "{:?}", p.warnings());
        assert_eq!(p.warnings()[0].line, 2);
        assert!(p.warnings()[0].message.contains("allows no command"));
        assert!(compile_str("t.toml", OK).unwrap().warnings().is_empty());
    }

    #[test]
    fn templates() {
        assert!(parse_template("{subject}").is_ok());
        assert!(parse_template("agent-{service_account}").is_ok());
        assert!(
            parse_template("{nope}")
                .unwrap_err()
                .contains("unknown placeholder")
        );
        assert!(parse_template("{subject").unwrap_err().contains("unclosed"));
        assert!(
            parse_template("a b")
                .unwrap_err()
                .contains("not valid in a login")
        );
    }

    #[test]
    fn suggestions() {
        assert_eq!(suggest("allw", RULE_KEYS), "; did you mean 'allow'?");
        assert!(suggest("zzzzzzzz", RULE_KEYS).starts_with("; expected one of"));
    }

    #[test]
    fn ensure_dir_seeds_only_the_default_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let configured = tmp.path().join("configured");
        ensure_dir(&configured, false).unwrap();
        assert!(!configured.exists());
        let dflt = tmp.path().join("default");
        ensure_dir(&dflt, true).unwrap();
        let text = std::fs::read_to_string(dflt.join(DEFAULT_FILE_NAME)).unwrap();
        assert_eq!(text, super::super::default_policy_text());
        // A second call leaves an edited file alone.
        std::fs::write(dflt.join(DEFAULT_FILE_NAME), OK).unwrap();
        ensure_dir(&dflt, true).unwrap();
        assert_eq!(
            std::fs::read_to_string(dflt.join(DEFAULT_FILE_NAME)).unwrap(),
            OK
        );
        load_dir(&dflt).unwrap();
        let empty = tmp.path().join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        assert!(matches!(load_dir(&empty), Err(Error::NoFiles(_))));
    }
}
