//! Policy tests: the shipped policies and fixture files load (or fail at
//! the expected file:line:column), and evaluation follows the rules: deny
//! wins, then approve, then allow, no match = deny, with exact reasons.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use super::load;
use super::*;
use crate::identity::{Identity, Kind, KubeIdentity};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn local(subject: &str) -> Identity {
    Identity {
        issuer: "local".into(),
        subject: subject.into(),
        ..Default::default()
    }
}

fn oidc(subject: &str, groups: &[&str]) -> Identity {
    Identity {
        issuer: "corp".into(),
        subject: subject.into(),
        email: Some(format!("{subject}@example.com")),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        ..Default::default()
    }
}

fn agent(ns: &str, sa: &str) -> Identity {
    Identity {
        issuer: "k8s".into(),
        subject: format!("system:serviceaccount:{ns}:{sa}"),
        kind: Kind::Agent,
        kube: Some(KubeIdentity {
            namespace: ns.into(),
            service_account: sa.into(),
            pod: None,
        }),
        ..Default::default()
    }
}

/// A command line the way the guard would hand it over (simple split on
/// the usual operators; enough for these tests).
fn cmd(line: &str) -> CommandLine {
    let simple = line
        .split(['|', ';', '&'])
        .map(|s| s.split_whitespace().map(String::from).collect::<Vec<_>>())
        .filter(|a| !a.is_empty())
        .collect();
    CommandLine {
        raw: line.into(),
        simple,
        opaque: Vec::new(),
    }
}

fn shipped() -> Policy {
    Policy::load_dir(&root().join("policies")).unwrap()
}

fn fwd(host: &str, port: u16, resolved: &[&str]) -> ForwardRequest {
    ForwardRequest {
        kind: ForwardKind::Local,
        host: host.into(),
        port,
        resolved: resolved
            .iter()
            .map(|r| r.parse::<IpAddr>().unwrap())
            .collect(),
    }
}

fn kreq(verb: &str, resource: &str, ns: Option<&str>, name: Option<&str>) -> KubeRequest {
    let (resource, sub) = match resource.split_once('/') {
        Some((r, s)) => (r.to_string(), Some(s.to_string())),
        None => (resource.to_string(), None),
    };
    KubeRequest {
        verb: verb.into(),
        api_group: String::new(),
        resource,
        subresource: sub,
        namespace: ns.map(String::from),
        name: name.map(String::from),
    }
}

// ---- loading: shipped files and fixtures --------------------------------

#[test]
fn load_for_serve_seeds_the_default_dir_once() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = crate::config::Config::load(None, Some(tmp.path().to_path_buf())).unwrap();
    assert!(cfg.policy_dir_is_default);
    let (handle, dir) = load_for_serve(&cfg).unwrap();
    assert_eq!(dir, tmp.path().join("policies"));
    assert!(dir.join(load::DEFAULT_FILE_NAME).is_file());
    assert!(handle.current().session(&local("op")).shell);
    assert_eq!(handle.generation(), 0);
    // A configured dir that is empty is an error, not a silent deny-all.
    let mut cfg2 = cfg.clone();
    cfg2.policy_dir = tmp.path().join("configured");
    cfg2.policy_dir_is_default = false;
    std::fs::create_dir_all(&cfg2.policy_dir).unwrap();
    assert!(matches!(load_for_serve(&cfg2), Err(Error::NoFiles(_))));
}

#[test]
fn embedded_default_is_the_shipped_file_and_loads() {
    let on_disk = std::fs::read_to_string(root().join("policies/default.toml")).unwrap();
    assert_eq!(on_disk, default_policy_text());
    let p = Policy::default();
    assert_eq!(p.role_names(), vec!["operators".to_string()]);
}

#[test]
fn every_shipped_policy_loads_alone_and_together() {
    let dir = root().join("policies");
    let files = load::read_dir(&dir).unwrap();
    assert!(
        files.len() >= 3,
        "expected the three shipped policies: {files:?}"
    );
    for f in &files {
        load::compile(std::slice::from_ref(f))
            .unwrap_or_else(|d| panic!("{}: {d:#?}", f.0.display()));
    }
    let p = shipped();
    for name in ["operators", "copilot-agents", "sre"] {
        assert!(p.role_names().contains(&name.to_string()), "{name}");
    }
}

#[test]
fn every_valid_fixture_loads() {
    let dir = root().join("testdata/policies/valid");
    let files = load::read_dir(&dir).unwrap();
    assert!(files.len() >= 4, "valid fixtures missing: {files:?}");
    for f in &files {
        let p = load::compile(std::slice::from_ref(f))
            .unwrap_or_else(|d| panic!("{}: {d:#?}", f.0.display()));
        assert!(!p.role_names().is_empty(), "{}", f.0.display());
    }
}

/// `# expect: <line>:<col> <substring>` comments of a fixture file.
pub(crate) fn expectations(text: &str) -> Vec<(usize, usize, String)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# expect: "))
        .map(|rest| {
            let (pos, msg) = rest.split_once(' ').unwrap();
            let (line, col) = pos.split_once(':').unwrap();
            (line.parse().unwrap(), col.parse().unwrap(), msg.to_string())
        })
        .collect()
}

/// Each invalid fixture (a file, or a directory of files for mistakes that
/// span files) fails with exactly the expected diagnostic.
#[test]
fn every_invalid_fixture_fails_at_the_expected_place() {
    let dir = root().join("testdata/policies/invalid");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    cases.sort();
    let mut checked = 0;
    let mut failures = Vec::new();
    for case in &cases {
        let files = if case.is_dir() {
            load::read_dir(case).unwrap()
        } else {
            load::read_files(std::slice::from_ref(case)).unwrap()
        };
        let mut want: Vec<(String, usize, usize, String)> = Vec::new();
        for (path, text) in &files {
            for (l, c, m) in expectations(text) {
                want.push((path.display().to_string(), l, c, m));
            }
        }
        assert_eq!(
            want.len(),
            1,
            "{}: one '# expect:' per case",
            case.display()
        );
        let (file, line, col, msg) = &want[0];
        match load::compile(&files) {
            Ok(_) => failures.push(format!("{}: loaded but must fail", case.display())),
            Err(diags) => {
                let ok = diags.len() == 1
                    && diags[0].file == *file
                    && (diags[0].line, diags[0].column) == (*line, *col)
                    && diags[0].message.contains(msg.as_str());
                if !ok {
                    failures.push(format!(
                        "{}: want {line}:{col} {msg:?}, got {:#?}",
                        case.display(),
                        diags
                    ));
                }
            }
        }
        checked += 1;
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(checked >= 25, "only {checked} invalid fixtures checked");
}

#[test]
fn all_errors_across_files_are_reported() {
    let dir = root().join("testdata/policies/invalid");
    let files = load::read_files(&[
        dir.join("bad-glob.toml"),
        dir.join("bad-port.toml"),
        dir.join("wrong-type.toml"),
    ])
    .unwrap();
    let e = load::compile(&files).unwrap_err();
    assert_eq!(e.len(), 3, "{e:#?}");
    let text = Error::Invalid(e).to_string();
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(matches!(
        Policy::load_dir(Path::new("/nonexistent/policies")),
        Err(Error::Io { .. })
    ));
}

// ---- evaluation ---------------------------------------------------------

const T: &str = r#"
[[role]]
name = "dev"
[role.match]
groups = ["dev"]
[role.grant]
principals = ["{email_local}"]
cert_ttl = "30m"
shell = true
exec = true
[role.exec]
allow = ["*"]
deny = ["rm -rf /*"]
approve = ["kubectl delete *"]
[role.forward]
allow = ["10.0.0.0/8:22", "*.dev.pod:*", "db:5432"]
deny = ["10.9.0.0/16:*"]
approve = ["prod-*:5432"]

[[role]]
name = "sre"
[role.match]
groups = ["sre"]
[role.grant]
principals = ["{subject}"]
cert_ttl = "2h"
approver = true
port_forwarding = true
max_duration = "4h"
[role.exec]
allow = ["rm -rf /tmp/*"]
"#;

fn t() -> Policy {
    Policy::from_toml("t.toml", T).unwrap()
}

#[test]
fn no_role_means_deny_everything() {
    let p = t();
    let nobody = oidc("eve", &["guests"]);
    assert_eq!(p.exec(&nobody, &cmd("ls")), Decision::deny(eval::NO_ROLE));
    assert_eq!(
        p.forward(&nobody, &fwd("db", 5432, &[])),
        Decision::deny(eval::NO_ROLE)
    );
    assert_eq!(
        p.kube(&nobody, &kreq("get", "pods", Some("a"), None)),
        Decision::deny(eval::NO_ROLE)
    );
    assert_eq!(p.issue(&nobody), Err(Decision::deny(eval::NO_ROLE)));
    assert_eq!(p.session(&nobody), SessionGrant::none());
    assert!(!Policy::empty().exec(&local("root"), &cmd("ls")).is_allow());
}

#[test]
fn deny_wins_over_allow_with_exact_reason() {
    let p = t();
    let dev = oidc("dana", &["dev"]);
    let d = p.exec(&dev, &cmd("rm -rf /etc"));
    assert_eq!(d.verdict, Verdict::Deny);
    assert_eq!(d.reason, "t.toml:13 role 'dev' exec.deny 'rm -rf /*'");
    // Another role allowing it explicitly does not beat the deny.
    let both = oidc("sam", &["dev", "sre"]);
    let d = p.exec(&both, &cmd("rm -rf /tmp/x"));
    assert_eq!(d.verdict, Verdict::Deny, "{d:?}");
    let d = p.exec(&dev, &cmd("ls -la"));
    assert_eq!(d, Decision::allow("t.toml:12 role 'dev' exec.allow '*'"));
}

#[test]
fn approve_wins_over_allow_and_every_simple_command_counts() {
    let p = t();
    let dev = oidc("dana", &["dev"]);
    let d = p.exec(&dev, &cmd("kubectl delete pod web-1"));
    assert_eq!(
        d,
        Decision::approve("t.toml:14 role 'dev' exec.approve 'kubectl delete *'")
    );
    // One approve among allows: approve; one deny anywhere: deny.
    assert_eq!(
        p.exec(&dev, &cmd("ls; kubectl delete pod x")).verdict,
        Verdict::Approve
    );
    let d = p.exec(&dev, &cmd("kubectl delete pod x && rm -rf /"));
    assert_eq!(d.verdict, Verdict::Deny);
    assert!(d.reason.contains("exec.deny"), "{d:?}");
    // A role without a matching allow rule: denied with the roles named.
    let sre = oidc("sam", &["sre"]);
    let d = p.exec(&sre, &cmd("ls"));
    assert_eq!(d, Decision::deny("no exec rule allows 'ls' (roles 'sre')"));
}

#[test]
fn strict_roles_deny_opaque_constructs() {
    let p = shipped();
    let a = agent("dev-a", "copilot");
    let mut c = cmd("git status");
    assert!(p.exec(&a, &c).is_allow(), "{:?}", p.exec(&a, &c));
    c.opaque.push("eval \"$X\"".into());
    let d = p.exec(&a, &c);
    assert_eq!(d.verdict, Verdict::Deny);
    assert!(
        d.reason.contains("copilot-agents.toml:")
            && d.reason
                .contains("grant.strict: cannot check inside 'eval \"$X\"'"),
        "{d:?}"
    );
    // Operators are not strict: opaque parts are not denied by themselves.
    let mut c = cmd("echo hi");
    c.opaque.push("eval x".into());
    assert!(p.exec(&local("op"), &c).is_allow());
}

#[test]
fn default_policy_keeps_operator_shells_and_denies_destruction() {
    let p = Policy::default();
    let op = local("alice");
    let g = p.session(&op);
    assert!(g.shell && g.exec && g.mask_live, "{g:?}");
    assert!(g.reason.contains("role 'operators'"), "{g:?}");
    for ok in [
        "ls -la",
        "echo hello",
        "rm -rf /tmp/build",
        "cat /etc/hostname",
        "sh -c true",
    ] {
        assert!(
            p.exec(&op, &cmd(ok)).is_allow(),
            "{ok}: {:?}",
            p.exec(&op, &cmd(ok))
        );
    }
    for bad in [
        "rm -rf /",
        "rm -rf /*",
        "rm -r -f /",
        "rm --recursive --force /",
        "rm -rf --no-preserve-root /",
        "rm -Rf ~",
        "chmod -R 777 /",
        "mkfs.ext4 /dev/sda1",
        "dd if=/dev/zero of=/dev/sda bs=1M",
        "shutdown -h now",
        "reboot",
    ] {
        let d = p.exec(&op, &cmd(bad));
        assert_eq!(d.verdict, Verdict::Deny, "{bad}: {d:?}");
        assert!(d.reason.contains("exec.deny"), "{bad}: {d:?}");
    }
    // No forwarding at all; no issuing to anyone but operators.
    assert!(!p.forward(&op, &fwd("db", 5432, &[])).is_allow());
    assert!(!p.session(&oidc("bob", &["sre"])).shell);
    assert!(!p.session(&agent("dev-a", "copilot")).exec);
    let g = p.issue(&op).unwrap();
    assert_eq!(g.principals, vec!["alice".to_string()]);
    assert!(!g.permit_port_forwarding);
}

#[test]
fn forward_by_name_cidr_and_resolved_address() {
    let p = t();
    let dev = oidc("dana", &["dev"]);
    // CIDR rule against the resolved address.
    let d = p.forward(&dev, &fwd("web-1", 22, &["10.0.3.4"]));
    assert_eq!(
        d,
        Decision::allow("t.toml:16 role 'dev' forward.allow '10.0.0.0/8:22'")
    );
    assert!(
        p.forward(&dev, &fwd("10.1.1.1", 22, &["10.1.1.1"]))
            .is_allow()
    );
    // Wrong port, outside the net, or one resolved address outside: deny.
    assert!(
        !p.forward(&dev, &fwd("web-1", 2222, &["10.0.3.4"]))
            .is_allow()
    );
    assert!(
        !p.forward(&dev, &fwd("web-1", 22, &["192.168.0.4"]))
            .is_allow()
    );
    assert!(
        !p.forward(&dev, &fwd("web-1", 22, &["10.0.0.4", "192.168.0.4"]))
            .is_allow()
    );
    // A name allowed by glob that resolves into a denied net: deny wins.
    let d = p.forward(&dev, &fwd("x.dev.pod", 80, &["10.9.1.1"]));
    assert_eq!(d.verdict, Verdict::Deny);
    assert!(d.reason.contains("forward.deny '10.9.0.0/16:*'"), "{d:?}");
    assert!(p.forward(&dev, &fwd("x.dev.pod", 80, &[])).is_allow());
    assert_eq!(
        p.forward(&dev, &fwd("prod-main", 5432, &[])).verdict,
        Verdict::Approve
    );
    // A trailing dot or other case is the same name.
    assert_eq!(
        p.forward(&dev, &fwd("Prod-Main.", 5432, &[])).verdict,
        Verdict::Approve
    );
    let d = p.forward(&dev, &fwd("elsewhere", 5432, &[]));
    assert_eq!(
        d,
        Decision::deny("no forward rule allows 'elsewhere:5432' (roles 'dev')")
    );
    // Garbage hosts, remote/agent/x11/streamlocal without a grant.
    assert!(!p.forward(&dev, &fwd("db\0", 5432, &[])).is_allow());
    for kind in [
        ForwardKind::Remote,
        ForwardKind::Agent,
        ForwardKind::X11,
        ForwardKind::Streamlocal,
    ] {
        let mut r = fwd("db", 5432, &[]);
        r.kind = kind;
        assert!(!p.forward(&dev, &r).is_allow(), "{kind:?}");
    }
    // Metadata is denied even for SREs with "*:*".
    let s = shipped();
    let sre = oidc("sam", &["sre"]);
    assert!(
        s.forward(&sre, &fwd("anything", 443, &["10.0.0.1"]))
            .is_allow()
    );
    assert!(
        !s.forward(&sre, &fwd("meta.internal", 80, &["169.254.169.254"]))
            .is_allow()
    );
    assert_eq!(
        s.forward(&sre, &fwd("prod-db", 5432, &[])).verdict,
        Verdict::Approve
    );
}

#[test]
fn forward_names_address_only_for_explicit_rules() {
    let p = Policy::from_toml(
        "f.toml",
        "[[role]]\nname = \"r\"\n[role.match]\nissuer = [\"local\"]\n[role.forward]\nallow = [\"*:*\", \"127.0.0.1:5432\"]\n",
    )
    .unwrap();
    let op = local("a");
    let lo: IpAddr = "127.0.0.1".parse().unwrap();
    assert!(p.forward_names_address(&op, lo, 5432).is_some());
    assert!(p.forward_names_address(&op, lo, 22).is_none());
    assert!(p.forward_names_address(&oidc("x", &[]), lo, 5432).is_none());
}

#[test]
fn kube_rules_for_agents() {
    let p = shipped();
    let a = agent("dev-a", "copilot");
    assert!(
        p.kube(&a, &kreq("get", "pods", Some("dev-a"), None))
            .is_allow()
    );
    assert!(
        p.kube(&a, &kreq("get", "pods/log", Some("dev-a"), Some("web")))
            .is_allow()
    );
    assert!(
        p.kube(&a, &kreq("watch", "deployments", Some("dev-b"), None))
            .is_allow()
    );
    for (verb, res, ns) in [
        ("get", "secrets", Some("dev-a")),
        ("list", "secrets", None),
        ("create", "pods/exec", Some("dev-a")),
    ] {
        let d = p.kube(&a, &kreq(verb, res, ns, Some("x")));
        assert_eq!(d.verdict, Verdict::Deny, "{verb} {res}: {d:?}");
        assert!(d.reason.contains("kube.deny"), "{d:?}");
    }
    let d = p.kube(&a, &kreq("delete", "pods", Some("dev-a"), Some("web-1")));
    assert_eq!(d.verdict, Verdict::Approve, "{d:?}");
    // Other namespaces, writes: no rule.
    let d = p.kube(&a, &kreq("get", "pods", Some("prod"), None));
    assert_eq!(d.verdict, Verdict::Deny);
    assert!(
        d.reason
            .starts_with("no kube rule allows 'get pods in prod'"),
        "{d:?}"
    );
    assert!(
        !p.kube(&a, &kreq("patch", "deployments", Some("dev-a"), Some("w")))
            .is_allow()
    );
    // An agent outside the matched namespaces or service accounts: nothing.
    assert_eq!(
        p.kube(
            &agent("prod", "copilot"),
            &kreq("get", "pods", Some("dev-a"), None)
        ),
        Decision::deny(eval::NO_ROLE)
    );
    assert_eq!(
        p.kube(
            &agent("dev-a", "builder"),
            &kreq("get", "pods", Some("dev-a"), None)
        ),
        Decision::deny(eval::NO_ROLE)
    );
    // SRE: everything, prod writes need approval.
    let sre = oidc("sam", &["sre"]);
    assert!(
        p.kube(&sre, &kreq("get", "secrets", Some("prod"), None))
            .is_allow()
    );
    assert_eq!(
        p.kube(&sre, &kreq("delete", "pods", Some("prod"), Some("x")))
            .verdict,
        Verdict::Approve
    );
}

#[test]
fn kube_namespaces_and_names_narrow_rules() {
    let p = Policy::from_toml(
        "k.toml",
        r#"
[[role]]
name = "k"
[role.match]
issuer = ["local"]
[role.kube]
allow = [
  { verbs = ["get"], resources = ["nodes"] },
  { verbs = ["get"], resources = ["configmaps"], namespaces = ["app"], names = ["web-*"] },
]
"#,
    )
    .unwrap();
    let op = local("a");
    assert!(
        p.kube(&op, &kreq("get", "nodes", None, Some("n1")))
            .is_allow()
    );
    assert!(
        p.kube(
            &op,
            &kreq("get", "configmaps", Some("app"), Some("web-cfg"))
        )
        .is_allow()
    );
    assert!(
        !p.kube(&op, &kreq("get", "configmaps", Some("app"), Some("db-cfg")))
            .is_allow()
    );
    // A list has no name, so a names-restricted rule does not cover it.
    assert!(
        !p.kube(&op, &kreq("list", "configmaps", Some("app"), None))
            .is_allow()
    );
    assert!(
        !p.kube(&op, &kreq("get", "configmaps", None, Some("web-cfg")))
            .is_allow()
    );
}

#[test]
fn issue_grants_union_of_roles() {
    let p = t();
    let both = oidc("Sam.O'Neil", &["dev", "sre"]);
    let g = p.issue(&both).unwrap();
    // {email_local} from dev, {subject} from sre: sanitised, deduplicated.
    assert_eq!(g.principals, vec!["sam.o_neil".to_string()]);
    assert_eq!(g.ttl, std::time::Duration::from_secs(7200));
    assert!(g.permit_port_forwarding);
    assert!(g.reason.contains("role 'dev'") && g.reason.contains("role 'sre'"));
    let dev = oidc("dana", &["dev"]);
    assert_eq!(
        p.issue(&dev).unwrap().ttl,
        std::time::Duration::from_secs(1800)
    );
    // No email, no {email_local}: no principal, no certificate.
    let mut noemail = dev.clone();
    noemail.email = None;
    let e = p.issue(&noemail).unwrap_err();
    assert!(e.reason.contains("no login principal"), "{e:?}");

    let s = shipped();
    let a = agent("dev-a", "copilot-7");
    let g = s.issue(&a).unwrap();
    assert_eq!(g.principals, vec!["agent-copilot-7".to_string()]);
    assert_eq!(g.ttl, std::time::Duration::from_secs(600));
    assert!(g.allow_on_behalf_of && !g.permit_pty);
}

#[test]
fn approvals() {
    let p = t();
    let sre = oidc("sam", &["sre"]);
    let dev = oidc("dana", &["dev"]);
    assert!(p.can_approve(&sre, &dev).is_allow());
    assert_eq!(
        p.can_approve(&sre, &dev).reason,
        "t.toml:27 role 'sre' grant.approver"
    );
    assert_eq!(
        p.can_approve(&sre, &sre),
        Decision::deny("self-approval is not allowed")
    );
    assert!(!p.can_approve(&dev, &sre).is_allow());
    let mut bot = sre.clone();
    bot.kind = Kind::Agent;
    bot.subject = "bot".into();
    assert!(!p.can_approve(&bot, &dev).is_allow());
    let mut proxy = sre.clone();
    proxy.subject = "helper".into();
    proxy.on_behalf_of = Some("dana".into());
    assert!(!p.can_approve(&proxy, &dev).is_allow());
}

#[test]
fn session_grant_merges_roles() {
    let p = shipped();
    let sre = oidc("sam", &["sre"]);
    let g = p.session(&sre);
    assert!(
        g.shell && g.exec && g.record_input && !g.mask_live && !g.strict,
        "{g:?}"
    );
    assert_eq!(g.max_sessions, Some(20));
    let a = agent("agents", "copilot");
    let g = p.session(&a);
    assert!(!g.shell && g.exec && g.strict && g.mask_live, "{g:?}");
    assert_eq!(g.idle_timeout, Some(std::time::Duration::from_secs(600)));
}

#[test]
fn copilot_exec_rules() {
    let p = shipped();
    let a = agent("dev-a", "copilot");
    for ok in ["git status", "kubectl get pods -n dev-a", "ls"] {
        assert!(
            p.exec(&a, &cmd(ok)).is_allow(),
            "{ok}: {:?}",
            p.exec(&a, &cmd(ok))
        );
    }
    for bad in [
        "curl http://evil",
        "kubectl get secrets -n dev-a",
        "kubectl get secret/db -n dev-a",
        "kubectl exec -it web -- sh",
        "bash",
        "rm -rf build",
    ] {
        assert_eq!(p.exec(&a, &cmd(bad)).verdict, Verdict::Deny, "{bad}");
    }
    assert_eq!(
        p.exec(&a, &cmd("kubectl delete pod web-1")).verdict,
        Verdict::Approve
    );
}
