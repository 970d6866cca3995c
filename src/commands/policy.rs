//! `sallyport policy`: `check` lints policy files and prints every problem
//! with file:line:column; `test` answers what-if questions ("may this
//! identity run this command / open this forward / make this kube request
//! / get a certificate?") with the decision and the rule that made it.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use russh::keys::ssh_key::Certificate;
use serde_json::json;

use super::Global;
use crate::guard::CommandLine;
use crate::identity::{CERT_EXTENSION, Identity, Kind, KubeIdentity};
use crate::policy::{self, Decision, ForwardKind, ForwardRequest, KubeRequest, Policy, load};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Check policy files: print every error with file:line:column; exit 1 if any.
    ///
    /// Example: sallyport policy check ./policies
    Check(CheckArgs),
    /// Ask what policy decides for an identity and a request, and which rule decided.
    ///
    /// Example: sallyport policy test --subject alice --groups sre --exec 'kubectl delete pod x'
    Test(TestArgs),
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Policy directories or files (default: the configured policy dir).
    #[arg(value_name = "DIR|FILE")]
    pub paths: Vec<PathBuf>,
    /// Print JSON: {"ok", "files", "roles", "errors": [{file, line, column, message}]}.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("who").required(true).args(["identity", "subject"])))]
#[command(group(clap::ArgGroup::new("question").required(true).args(["exec", "forward", "kube", "issue", "session", "approve_for"])))]
pub struct TestArgs {
    /// Policy directory or file (default: the configured policy dir).
    #[arg(long, value_name = "DIR|FILE")]
    pub policy: Option<PathBuf>,

    /// The identity: a JSON `Identity` or an OpenSSH certificate issued by sallyport.
    #[arg(long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// Identity subject (instead of --identity).
    #[arg(long, value_name = "S")]
    pub subject: Option<String>,
    /// Issuer alias of the identity.
    #[arg(long, value_name = "I", default_value = "local", requires = "subject")]
    pub issuer: String,
    /// Groups (repeatable, or several after one flag).
    #[arg(long, value_name = "G", num_args = 1.., requires = "subject")]
    pub groups: Vec<String>,
    #[arg(long, requires = "subject")]
    pub email: Option<String>,
    /// human or agent.
    #[arg(long, value_parser = ["human", "agent"], default_value = "human", requires = "subject")]
    pub kind: String,
    /// Kubernetes namespace of an agent.
    #[arg(long, value_name = "NS", requires_all = ["subject", "service_account"])]
    pub namespace: Option<String>,
    /// Kubernetes service account of an agent.
    #[arg(long, value_name = "SA", requires_all = ["subject", "namespace"])]
    pub service_account: Option<String>,
    /// The human an agent acts for.
    #[arg(long, value_name = "WHO", requires = "subject")]
    pub on_behalf_of: Option<String>,

    /// May this command run (exec, or a line typed in a shell)?
    #[arg(long, value_name = "CMD")]
    pub exec: Option<String>,
    /// May this forward (`ssh -L`/`-J`) be opened?
    #[arg(long, value_name = "HOST:PORT")]
    pub forward: Option<String>,
    /// Addresses the target resolves to, for CIDR rules (repeatable).
    #[arg(long, value_name = "IP", requires = "forward")]
    pub resolved: Vec<IpAddr>,
    /// May this Kubernetes API request pass? NS `-` = cluster-scoped.
    #[arg(long, num_args = 3..=4, value_names = ["VERB", "RESOURCE", "NS", "NAME"])]
    pub kube: Option<Vec<String>>,
    /// API group of the --kube request ("" = core).
    #[arg(long, default_value = "", requires = "kube")]
    pub api_group: String,
    /// What certificate would this identity get?
    #[arg(long)]
    pub issue: bool,
    /// What may sessions of this identity do?
    #[arg(long)]
    pub session: bool,
    /// May this identity approve a request made by SUBJECT (issuer local)?
    #[arg(long, value_name = "SUBJECT")]
    pub approve_for: Option<String>,

    /// Exit 1 unless the verdict is this (for policy tests in CI).
    #[arg(long, value_parser = ["allow", "approve", "deny"])]
    pub expect: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(g: &Global, cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Check(a) => check(g, a),
        Command::Test(a) => test(g, a),
    }
}

/// Where the policy comes from: explicit paths, the configured dir, or
/// (default dir not seeded yet) the embedded default.
enum Source {
    Files(Vec<(PathBuf, String)>),
    Embedded(PathBuf),
}

fn source(g: &Global, paths: &[PathBuf]) -> anyhow::Result<Result<Source, policy::Error>> {
    if paths.is_empty() {
        let cfg = g.load_config()?;
        let dir = cfg.policy_dir;
        let files = if dir.is_dir() {
            match load::read_dir(&dir) {
                Ok(f) => f,
                Err(e) => return Ok(Err(e)),
            }
        } else {
            Vec::new()
        };
        if files.is_empty() {
            if cfg.policy_dir_is_default {
                return Ok(Ok(Source::Embedded(dir)));
            }
            return Ok(Err(policy::Error::NoFiles(dir)));
        }
        return Ok(Ok(Source::Files(files)));
    }
    let mut files = Vec::new();
    for p in paths {
        let got = if p.is_dir() {
            load::read_dir(p).and_then(|f| {
                if f.is_empty() {
                    Err(policy::Error::NoFiles(p.clone()))
                } else {
                    Ok(f)
                }
            })
        } else {
            load::read_files(std::slice::from_ref(p))
        };
        match got {
            Ok(f) => files.extend(f),
            Err(e) => return Ok(Err(e)),
        }
    }
    Ok(Ok(Source::Files(files)))
}

fn compile(src: &Source) -> Result<Policy, Vec<load::Diagnostic>> {
    match src {
        Source::Files(files) => load::compile(files),
        Source::Embedded(_) => {
            load::compile_str(policy::EMBEDDED_NAME, policy::default_policy_text())
        }
    }
}

fn check(g: &Global, a: CheckArgs) -> anyhow::Result<ExitCode> {
    let src = match source(g, &a.paths)? {
        Ok(s) => s,
        Err(e) => {
            if a.json {
                println!(
                    "{}",
                    json!({ "ok": false, "files": [], "roles": [], "errors": [{ "message": e.to_string() }] })
                );
            } else {
                eprintln!("error: {e}");
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    let files: Vec<String> = match &src {
        Source::Files(f) => f.iter().map(|(p, _)| p.display().to_string()).collect(),
        Source::Embedded(_) => vec![policy::EMBEDDED_NAME.to_string()],
    };
    let result = compile(&src);
    if a.json {
        let (ok, roles, errors, warnings) = match &result {
            Ok(p) => (true, p.role_names(), Vec::new(), p.warnings().to_vec()),
            Err(d) => (false, Vec::new(), d.clone(), Vec::new()),
        };
        println!(
            "{}",
            json!({ "ok": ok, "files": files, "roles": roles, "errors": errors, "warnings": warnings })
        );
    } else {
        match &result {
            Ok(p) => {
                for w in p.warnings() {
                    println!("{}:{}:{}: warning: {}", w.file, w.line, w.column, w.message);
                }
                if let Source::Embedded(dir) = &src {
                    println!(
                        "{} has no policy files yet; `serve` will write the embedded default there",
                        dir.display()
                    );
                }
                println!(
                    "ok: {} role(s) in {} file(s): {}",
                    p.role_names().len(),
                    files.len(),
                    p.role_names().join(", ")
                );
            }
            Err(diags) => {
                for d in diags {
                    println!("{d}");
                }
                eprintln!(
                    "{} error(s) in {} file(s); nothing was loaded",
                    diags.len(),
                    files.len()
                );
            }
        }
    }
    Ok(if result.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Build the [`CommandLine`] for `--exec`: the same parser the sessions
/// use, so `policy test` answers exactly what a session would decide.
pub fn command_line(cmd: &str) -> CommandLine {
    crate::guard::parse::parse(cmd)
}

fn identity_from_file(path: &Path) -> anyhow::Result<Identity> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read identity file {}", path.display()))?;
    if let Ok(id) = serde_json::from_str::<Identity>(&text) {
        return Ok(id);
    }
    let cert = Certificate::from_openssh(text.trim()).with_context(|| {
        format!(
            "{}: neither a JSON identity ({{\"issuer\": ..., \"subject\": ...}}) nor an OpenSSH certificate",
            path.display()
        )
    })?;
    let ext = cert.extensions().get(CERT_EXTENSION).with_context(|| {
        format!(
            "{}: certificate has no {CERT_EXTENSION} extension (not issued by sallyport)",
            path.display()
        )
    })?;
    serde_json::from_str(ext)
        .with_context(|| format!("{}: malformed {CERT_EXTENSION} extension", path.display()))
}

fn identity(a: &TestArgs) -> anyhow::Result<Identity> {
    if let Some(p) = &a.identity {
        return identity_from_file(p);
    }
    let Some(subject) = a.subject.clone() else {
        bail!("give --identity FILE or --subject S");
    };
    let groups = a
        .groups
        .iter()
        .flat_map(|g| g.split(','))
        .filter(|g| !g.is_empty())
        .map(String::from)
        .collect();
    let kube = match (&a.namespace, &a.service_account) {
        (Some(ns), Some(sa)) => Some(KubeIdentity {
            namespace: ns.clone(),
            service_account: sa.clone(),
            pod: None,
        }),
        _ => None,
    };
    Ok(Identity {
        issuer: a.issuer.clone(),
        subject,
        email: a.email.clone(),
        groups,
        kind: if a.kind == "agent" {
            Kind::Agent
        } else {
            Kind::Human
        },
        kube,
        on_behalf_of: a.on_behalf_of.clone(),
    })
}

fn parse_target(s: &str) -> anyhow::Result<(String, u16)> {
    let Some((host, port)) = s.rsplit_once(':') else {
        bail!("--forward {s:?}: write HOST:PORT, e.g. prod-db:5432");
    };
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .with_context(|| format!("--forward {s:?}: port must be 1-65535"))?;
    Ok((host.to_string(), port))
}

fn test(g: &Global, a: TestArgs) -> anyhow::Result<ExitCode> {
    let paths: Vec<PathBuf> = a.policy.iter().cloned().collect();
    let src = source(g, &paths)?.context("cannot load the policy")?;
    let policy = match compile(&src) {
        Ok(p) => p,
        Err(diags) => {
            for d in &diags {
                eprintln!("{d}");
            }
            bail!(
                "the policy has {} error(s); fix them first (sallyport policy check)",
                diags.len()
            );
        }
    };
    let id = identity(&a)?;
    let roles: Vec<serde_json::Value> = policy
        .matching(&id)
        .iter()
        .map(
            |r| json!({ "name": r.name, "file": r.origin.file.to_string(), "line": r.origin.line }),
        )
        .collect();

    let (question, decision, detail): (serde_json::Value, Decision, serde_json::Value) =
        if let Some(c) = &a.exec {
            let cl = command_line(c);
            let d = policy.exec(&id, &cl);
            (
                json!({ "exec": c, "simple": cl.simple, "opaque": cl.opaque }),
                d,
                json!(null),
            )
        } else if let Some(t) = &a.forward {
            let (host, port) = parse_target(t)?;
            let mut resolved = a.resolved.clone();
            if resolved.is_empty()
                && let Ok(ip) = host.parse::<IpAddr>()
            {
                resolved.push(ip);
            }
            let req = ForwardRequest {
                kind: ForwardKind::Local,
                host,
                port,
                resolved,
            };
            let d = policy.forward(&id, &req);
            (
                json!({ "forward": t, "resolved": req.resolved }),
                d,
                json!(null),
            )
        } else if let Some(k) = &a.kube {
            let get = |i: usize| k.get(i).cloned().unwrap_or_default();
            let res = get(1);
            let (resource, subresource) = match res.split_once('/') {
                Some((r, s)) => (r.to_string(), Some(s.to_string())),
                None => (res.clone(), None),
            };
            let ns = get(2);
            let req = KubeRequest {
                verb: get(0),
                api_group: a.api_group.clone(),
                resource,
                subresource,
                namespace: (ns != "-" && !ns.is_empty()).then_some(ns),
                name: k.get(3).cloned(),
            };
            let d = policy.kube(&id, &req);
            (json!({ "kube": req }), d, json!(null))
        } else if a.issue {
            match policy.issue(&id) {
                Ok(gr) => (
                    json!("issue"),
                    Decision::allow(gr.reason.clone()),
                    json!({
                        "principals": gr.principals,
                        "ttl_seconds": gr.ttl.as_secs(),
                        "ttl": humantime::format_duration(gr.ttl).to_string(),
                        "permit_pty": gr.permit_pty,
                        "permit_port_forwarding": gr.permit_port_forwarding,
                        "allow_on_behalf_of": gr.allow_on_behalf_of,
                    }),
                ),
                Err(d) => (json!("issue"), d, json!(null)),
            }
        } else if a.session {
            let s = policy.session(&id);
            let verdict = if s.shell || s.exec {
                Decision::allow(s.reason.clone())
            } else {
                Decision::deny(s.reason.clone())
            };
            let secs = |d: Option<std::time::Duration>| d.map(|d| d.as_secs());
            (
                json!("session"),
                verdict,
                json!({
                    "shell": s.shell,
                    "exec": s.exec,
                    "record_input": s.record_input,
                    "mask_live": s.mask_live,
                    "mask_detectors": s.mask_detectors,
                    "mask_custom": s.mask_custom.iter().map(|(n, _)| n).collect::<Vec<_>>(),
                    "strict": s.strict,
                    "max_duration_seconds": secs(s.max_duration),
                    "idle_timeout_seconds": secs(s.idle_timeout),
                    "max_sessions": s.max_sessions,
                    "approval_timeout_seconds": s.approval_timeout.as_secs(),
                }),
            )
        } else if let Some(req) = &a.approve_for {
            let requester = Identity {
                issuer: "local".into(),
                subject: req.clone(),
                ..Default::default()
            };
            (
                json!({ "approve_for": req }),
                policy.can_approve(&id, &requester),
                json!(null),
            )
        } else {
            bail!(
                "ask one question: --exec, --forward, --kube, --issue, --session or --approve-for"
            );
        };

    if a.json {
        println!(
            "{}",
            json!({
                "identity": id,
                "roles": roles,
                "question": question,
                "verdict": decision.verdict,
                "reason": decision.reason,
                "detail": detail,
            })
        );
    } else {
        println!("{}: {}", decision.verdict, decision.reason);
        println!("identity: {} kind={}", id.display(), id.kind);
        if roles.is_empty() {
            println!("matching roles: none");
        } else {
            let names: Vec<String> = policy.matching(&id).iter().map(|r| r.label()).collect();
            println!("matching roles: {}", names.join(", "));
        }
        if let serde_json::Value::Object(m) = &detail {
            for (k, v) in m {
                println!("{k}: {v}");
            }
        }
    }
    let ok = match a.expect.as_deref() {
        None => true,
        Some(want) => decision.verdict.to_string() == want,
    };
    if !ok {
        eprintln!(
            "expected {}, got {}",
            a.expect.as_deref().unwrap_or_default(),
            decision.verdict
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_splits_simple_commands() {
        let c = command_line("ls -la; /bin/rm -rf / && echo 'a b' | wc -l");
        assert_eq!(
            c.simple,
            vec![
                vec!["ls", "-la"],
                vec!["rm", "-rf", "/"],
                vec!["echo", "a b"],
                vec!["wc", "-l"],
            ]
        );
        assert!(c.opaque.is_empty());
        let c = command_line("echo 'unbalanced");
        assert!(!c.opaque.is_empty(), "{c:?}");
        // The guard's parser sees through `sh -c` too.
        let c = command_line("sh -c 'rm -rf /tmp/x'");
        assert!(
            c.simple
                .iter()
                .any(|s| s.first().map(String::as_str) == Some("rm"))
        );
    }

    #[test]
    fn forward_targets() {
        assert_eq!(parse_target("db:5432").unwrap(), ("db".into(), 5432));
        assert_eq!(parse_target("[::1]:22").unwrap(), ("::1".into(), 22));
        assert!(parse_target("db").is_err());
        assert!(parse_target("db:0").is_err());
    }
}
