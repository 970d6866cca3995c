//! The Kubernetes API proxy and approvals wired into SSH forwarding, end
//! to end: real OpenSSH `ssh -N -L PORT:kubernetes:443` to the real
//! `sallyport serve` (configured with a kubeconfig pointing at the **test
//! Kubernetes API server** from `support::kubeapi_http` — no real API server
//! can run here), real `kubectl` with a credential-less kubeconfig, and
//! `sallyport approvals list --json | approve` deciding forward and kube
//! requests that policy puts under `approve`.

use std::process::Command;
use std::time::Duration;

use sallyport::audit::Store;
use sallyport::audit::kube::KubeRequestRecord;

use crate::support::kubeapi_http::{BASTION_TOKEN, TestKubeApi};
use crate::support::targets::echo_server;
use crate::support::{
    Proc, Run, Server, ServerOpts, User, free_port, run_cmd, ssh_base_args, wait_for, wait_port,
};

/// alice: kube rules, approvals wait up to a minute. carol: the same rules
/// but approvals time out after 2 s. dave: a role without kube rules.
const POLICY: &str = r#"
[[role]]
name = "kube-users"
[role.match]
issuer = ["local"]
subject = ["alice", "carol"]
[role.grant]
port_forwarding = true
[role.forward]
approve = ["echo:*"]
[role.kube]
allow = [
  { verbs = ["get", "list", "watch"], resources = ["pods", "pods/log"], namespaces = ["dev"] },
  { verbs = ["create"], resources = ["pods/exec"], namespaces = ["dev"] },
]
deny = [{ verbs = ["*"], resources = ["secrets"] }]
approve = [{ verbs = ["delete"], resources = ["pods"], namespaces = ["dev"] }]
[role.exec]
allow = ["touch *", "printf-split *"]
deny = ["touch denied*"]
[role.mask]
live = true

[[role]]
name = "patient"
[role.match]
subject = ["alice"]
[role.grant]
approval_timeout = "60s"

[[role]]
name = "hasty"
[role.match]
subject = ["carol"]
[role.grant]
approval_timeout = "2s"

[[role]]
name = "no-kube"
[role.match]
subject = ["dave"]
[role.grant]
port_forwarding = true
shell = false
exec = true
[role.exec]
allow = ["echo *"]
[role.forward]
allow = ["echo:*"]
remote = ["127.0.0.1:*"]
"#;

struct Env {
    /// Keeps the test API server running.
    _rt: tokio::runtime::Runtime,
    api: TestKubeApi,
    server: Server,
}

fn start() -> Env {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let api = TestKubeApi::start(&rt);
    let kdir = tempfile::tempdir().unwrap();
    let kubeconfig = api.bastion_kubeconfig(kdir.path());
    // The kubeconfig must outlive the tempdir handle: keep it next to the server.
    let kc_text = std::fs::read_to_string(&kubeconfig).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("bastion-kubeconfig.yaml");
    std::fs::write(&kc, kc_text).unwrap();
    let echo = echo_server();
    let server = Server::start_in(
        dir,
        ServerOpts {
            config_extra: format!(
                "[kube]\nkubeconfig = {:?}\napi_target = \"kubernetes:443\"\n\n[targets]\necho = \"{echo}\"\n",
                kc.display().to_string()
            ),
            policies: vec![("kube.toml".into(), POLICY.into())],
            ..Default::default()
        },
    );
    Env {
        _rt: rt,
        api,
        server,
    }
}

/// `ssh -N -L PORT:kubernetes:443` in the background, waiting until the
/// local port listens.
fn tunnel(s: &Server, u: &User) -> (Proc, u16) {
    let port = free_port();
    let mut cmd = Command::new("ssh");
    cmd.args(ssh_base_args(&s.known_hosts, u))
        .args(["-o", "ExitOnForwardFailure=yes", "-N", "-L"])
        .arg(format!("127.0.0.1:{port}:kubernetes:443"))
        .arg("-p")
        .arg(s.ssh_port.to_string())
        .arg(format!("{}@127.0.0.1", u.name));
    let p = Proc::spawn(&format!("ssh-L-{}", u.name), cmd, s.dir.path());
    assert!(
        wait_port(port, Duration::from_secs(30)),
        "tunnel did not listen\n{}\n{}",
        p.log(),
        s.log()
    );
    (p, port)
}

/// kubectl with the kubeconfig `sallyport login` writes: no credentials.
fn kubectl_cmd(s: &Server, port: u16, args: &[&str]) -> Command {
    let kc = s.dir.path().join(format!("client-kubeconfig-{port}.yaml"));
    std::fs::write(
        &kc,
        sallyport::tunnel::kubeapi::kubeconfig::kubeconfig(port, Some("dev")),
    )
    .unwrap();
    let mut cmd = Command::new("kubectl");
    cmd.env("KUBECONFIG", &kc)
        .env("HOME", s.dir.path())
        .arg("--cache-dir")
        .arg(s.dir.path().join(format!("kube-cache-{port}")))
        .args(["--request-timeout", "0"])
        .args(args);
    cmd
}

fn kubectl(s: &Server, port: u16, args: &[&str]) -> Run {
    run_cmd(
        kubectl_cmd(s, port, args),
        None,
        Duration::from_secs(90),
        s.log(),
    )
}

fn kube_rows(s: &Server) -> Vec<KubeRequestRecord> {
    Store::open(&s.db_path())
        .unwrap()
        .list_kube_requests(1000)
        .unwrap()
}

fn kube_row(s: &Server, what: &str, f: impl Fn(&KubeRequestRecord) -> bool) -> KubeRequestRecord {
    wait_for(Duration::from_secs(20), || {
        kube_rows(s).into_iter().find(|r| f(r))
    })
    .unwrap_or_else(|| panic!("no kube row: {what}\n{:#?}\n{}", kube_rows(s), s.log()))
}

fn forwards(s: &Server) -> Vec<sallyport::audit::forwards::ForwardRow> {
    Store::open(&s.db_path())
        .unwrap()
        .list_forwards(1000)
        .unwrap()
}

/// Wait for one pending approval of `kind` (via the CLI, as an operator
/// would) and return its JSON.
fn pending(s: &Server, kind: &str) -> serde_json::Value {
    wait_for(Duration::from_secs(30), || {
        let r = s.cli(&["approvals", "list", "--json"]).success();
        let v: serde_json::Value = serde_json::from_str(&r.stdout()).unwrap();
        v.as_array()
            .and_then(|a| a.iter().find(|x| x["kind"] == kind).cloned())
    })
    .unwrap_or_else(|| panic!("no pending {kind} approval\n{}", s.log()))
}

#[test]
fn kubewire_identity_without_kube_rules_or_permit_cannot_open_the_api_target() {
    let e = start();
    let s = &e.server;
    // dave matches a role, but it has no [role.kube] rules.
    let dave = s.user("dave", &["--permit-port-forwarding"]);
    // alice has kube rules but her certificate lacks permit-port-forwarding.
    let alice = s.user("alice", &[]);
    for (u, why) in [
        (
            &dave,
            "no matching role has [role.kube] allow or approve rules",
        ),
        (&alice, "certificate lacks permit-port-forwarding"),
    ] {
        let mut cmd = Command::new("ssh");
        cmd.args(ssh_base_args(&s.known_hosts, u).into_iter().map(|a| {
            if a == "LogLevel=ERROR" {
                "LogLevel=VERBOSE".to_string()
            } else {
                a
            }
        }))
        .arg("-p")
        .arg(s.ssh_port.to_string())
        .arg(format!("{}@127.0.0.1", u.name))
        .args(["-W", "kubernetes:443"]);
        let r = run_cmd(
            cmd,
            Some(b"GET /api HTTP/1.1\r\nHost: x\r\n\r\n"),
            Duration::from_secs(60),
            s.log(),
        )
        .failure();
        assert!(
            r.stderr().contains("administratively prohibited"),
            "{}",
            r.explain()
        );
        let row = wait_for(Duration::from_secs(20), || {
            forwards(s).into_iter().find(|f| {
                f.subject.as_deref() == Some(u.name.as_str()) && f.target == "kubernetes:443"
            })
        })
        .unwrap_or_else(|| panic!("no forwards row for {}\n{}", u.name, s.log()));
        assert_eq!(row.decision, "deny");
        assert!(row.reason.contains(why), "{row:?}");
    }
    assert!(e.api.requests().is_empty(), "{:#?}", e.api.requests());
}

#[test]
fn kubewire_kubectl_through_ssh_l_is_impersonated_denied_readably_and_audited() {
    let e = start();
    let s = &e.server;
    let alice = s.user("alice", &["--permit-port-forwarding"]);
    let (mut ssh, port) = tunnel(s, &alice);

    let r = kubectl(s, port, &["get", "pods", "-o", "name"]).success();
    assert!(r.stdout().contains("pod/web-1"), "{}", r.explain());
    let list = e.api.requests_to("/api/v1/namespaces/dev/pods");
    assert_eq!(list.len(), 1, "{}", r.explain());
    assert_eq!(list[0].header_all("impersonate-user"), ["local:alice"]);
    for seen in e.api.requests() {
        assert_eq!(
            seen.header_all("authorization"),
            [format!("Bearer {BASTION_TOKEN}")],
            "{seen:?}"
        );
        assert_eq!(
            seen.header_all("impersonate-user"),
            ["local:alice"],
            "{seen:?}"
        );
        // The session extra is the SSH connection id the audit rows carry.
        assert!(
            seen.header("impersonate-extra-sallyport-session")
                .is_some_and(|v| !v.is_empty()),
            "{seen:?}"
        );
    }

    let r = kubectl(s, port, &["get", "secret", "db"]).failure();
    assert!(
        r.stderr().contains(
            "Error from server (Forbidden): sallyport: get secrets \"db\" in namespace \"dev\" denied by"
        ),
        "{}",
        r.explain()
    );
    assert!(
        e.api
            .requests_to("/api/v1/namespaces/dev/secrets")
            .is_empty(),
        "a denied request reached the API server"
    );

    let listed = kube_row(s, "list pods", |r| {
        r.row.verb == "list" && r.row.resource.as_deref() == Some("pods")
    });
    assert_eq!(listed.row.subject.as_deref(), Some("alice"));
    assert_eq!(listed.row.decision, "allow");
    assert_eq!(listed.row.status, Some(200));
    let secret = kube_row(s, "get secret", |r| {
        r.row.resource.as_deref() == Some("secrets")
    });
    assert_eq!(secret.row.subject.as_deref(), Some("alice"));
    assert_eq!(secret.row.decision, "deny");
    assert_eq!(secret.row.status, Some(403));
    assert!(secret.row.secret_read);
    // Rows carry the SSH connection id, the same one the API server saw.
    let conn = secret.row.connection_id.clone().unwrap_or_default();
    assert!(!conn.is_empty());
    assert_eq!(
        list[0]
            .header("impersonate-extra-sallyport-session")
            .as_deref(),
        Some(conn.as_str())
    );
    let conns = crate::support::query_db(
        &s.db_path(),
        &format!("SELECT user FROM connections WHERE id = '{conn}'"),
    );
    assert_eq!(conns, vec![vec!["alice".to_string()]], "{}", s.log());

    // The channel itself is a forwards row, closed with byte counts.
    ssh.kill();
    let ch = wait_for(Duration::from_secs(20), || {
        forwards(s)
            .into_iter()
            .find(|f| f.target == "kubernetes:443" && f.ended_at.is_some())
    })
    .unwrap_or_else(|| panic!("no closed forwards row\n{:#?}\n{}", forwards(s), s.log()));
    assert_eq!(ch.decision, "allow");
    assert_eq!(ch.resolved.as_deref(), Some("kube-api-proxy"));
    assert!(ch.reason.contains("role 'kube-users'"), "{ch:?}");
    assert!(ch.bytes_up > 0 && ch.bytes_down > 0, "{ch:?}");
}

#[test]
fn kubewire_kube_delete_waits_for_an_approval_or_times_out() {
    let e = start();
    let s = &e.server;
    let alice = s.user("alice", &["--permit-port-forwarding"]);
    let (_ssh, port) = tunnel(s, &alice);
    let mut del = kubectl_cmd(s, port, &["delete", "pod", "web-1", "--wait=false"]);
    let out = s.dir.path().join("delete.out");
    del.stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(s.dir.path().join("delete.err")).unwrap());
    let mut child = del.spawn().unwrap();

    let req = pending(s, "kube");
    assert_eq!(req["subject"], "alice");
    assert_eq!(req["request"], "delete pods \"web-1\" in namespace \"dev\"");
    assert!(
        req["reason"].as_str().unwrap().contains("kube.approve"),
        "{req}"
    );
    assert!(
        e.api.requests().iter().all(|r| r.method != "DELETE"),
        "DELETE went upstream before approval"
    );
    let id = req["id"].as_str().unwrap();
    s.cli(&["approvals", "approve", id, "--as", "bob"])
        .success();
    let st = wait_for(Duration::from_secs(60), || child.try_wait().ok().flatten());
    if st.is_none() {
        let _ = child.kill();
    }
    assert!(
        st.is_some_and(|st| st.success()),
        "kubectl delete failed: {}\n{}",
        std::fs::read_to_string(s.dir.path().join("delete.err")).unwrap_or_default(),
        s.log()
    );
    assert!(std::fs::read_to_string(&out).unwrap().contains("web-1"));
    assert_eq!(
        e.api
            .requests()
            .iter()
            .filter(|r| r.method == "DELETE")
            .count(),
        1
    );
    let row = kube_row(s, "approved delete", |r| r.row.verb == "delete");
    assert_eq!(row.row.decision, "approve");
    assert!(row.row.reason.ends_with("(approved)"), "{row:?}");

    // carol's grant gives approvals 2 s: nobody decides, the delete is refused.
    let carol = s.user("carol", &["--permit-port-forwarding"]);
    let (_ssh2, port2) = tunnel(s, &carol);
    let r = kubectl(s, port2, &["delete", "pod", "web-2", "--wait=false"]).failure();
    assert!(
        r.stderr().contains("Error from server (Forbidden)")
            && r.stderr().contains("needs approval")
            && r.stderr().contains("timed out"),
        "{}",
        r.explain()
    );
    assert_eq!(
        e.api
            .requests()
            .iter()
            .filter(|r| r.method == "DELETE")
            .count(),
        1,
        "the timed-out delete reached the API server"
    );
    let all = s.cli(&["approvals", "list", "--all", "--json"]).success();
    let all: serde_json::Value = serde_json::from_str(&all.stdout()).unwrap();
    let carols = all
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["subject"] == "carol")
        .cloned()
        .unwrap_or_else(|| panic!("{all}"));
    assert_eq!(carols["status"], "expired", "{carols}");
    assert_eq!(carols["kind"], "kube");
}

#[test]
fn kubewire_forward_under_approve_opens_only_after_approval() {
    let e = start();
    let s = &e.server;
    let alice = s.user("alice", &["--permit-port-forwarding"]);
    // The named target's port must match what the client asks for.
    let cfg = std::fs::read_to_string(&s.config).unwrap();
    let echo_port = cfg
        .lines()
        .find_map(|l| l.strip_prefix("echo = \"127.0.0.1:"))
        .and_then(|p| p.strip_suffix('"'))
        .unwrap()
        .to_string();
    // ssh -W echo: the channel open waits for the approval; stdin is
    // buffered by ssh meanwhile and echoed once the forward opens.
    let cmd = s.ssh(&alice, &["-W", &format!("echo:{echo_port}")]);
    let handle = std::thread::spawn(move || {
        run_cmd(
            cmd,
            Some(b"approved bytes\n"),
            Duration::from_secs(90),
            String::new(),
        )
    });
    let req = pending(s, "forward");
    assert_eq!(req["subject"], "alice");
    assert_eq!(req["request"], format!("forward to echo:{echo_port}"));
    assert!(
        forwards(s)
            .iter()
            .all(|f| !(f.target.starts_with("echo:") && f.decision != "deny")),
        "forward opened before approval: {:#?}",
        forwards(s)
    );
    s.cli(&[
        "approvals",
        "approve",
        req["id"].as_str().unwrap(),
        "--as",
        "bob",
    ])
    .success();
    let r = handle.join().unwrap();
    assert_eq!(
        r.stdout(),
        "approved bytes\n",
        "{}\n{}",
        r.explain(),
        s.log()
    );
    let row = wait_for(Duration::from_secs(20), || {
        forwards(s)
            .into_iter()
            .find(|f| f.target.starts_with("echo:") && f.subject.as_deref() == Some("alice"))
    })
    .unwrap();
    assert_eq!(row.decision, "approve");
    assert!(row.reason.ends_with("(approved)"), "{row:?}");

    // carol: 2 s approval timeout, nobody decides → refused, audited.
    let carol = s.user("carol", &["--permit-port-forwarding"]);
    let mut cmd = Command::new("ssh");
    cmd.args(ssh_base_args(&s.known_hosts, &carol).into_iter().map(|a| {
        if a == "LogLevel=ERROR" {
            "LogLevel=VERBOSE".to_string()
        } else {
            a
        }
    }))
    .arg("-p")
    .arg(s.ssh_port.to_string())
    .arg("carol@127.0.0.1")
    .args(["-W", &format!("echo:{echo_port}")]);
    let r = run_cmd(cmd, Some(b"x"), Duration::from_secs(60), s.log()).failure();
    assert!(
        r.stderr().contains("administratively prohibited"),
        "{}",
        r.explain()
    );
    let row = wait_for(Duration::from_secs(20), || {
        forwards(s)
            .into_iter()
            .find(|f| f.subject.as_deref() == Some("carol"))
    })
    .unwrap();
    assert_eq!(row.decision, "approve");
    assert!(row.reason.contains("timed out"), "{row:?}");
    assert_eq!(row.end_reason.as_deref(), Some("denied"), "{row:?}");
}

#[test]
fn kubewire_remote_agent_and_x11_requests_are_decided_by_policy_and_audited() {
    let e = start();
    let s = &e.server;
    let alice = s.user("alice", &["--permit-port-forwarding"]);
    let dave = s.user("dave", &["--permit-port-forwarding"]);
    let rport = free_port();
    for u in [&alice, &dave] {
        // ssh -R: alice has no forward.remote rule; dave's allows the bind
        // address, but this server does not carry -R yet: refused either way.
        let mut cmd = s.ssh(
            u,
            &[
                "-o",
                "ExitOnForwardFailure=yes",
                "-R",
                &format!("127.0.0.1:{rport}:127.0.0.1:9"),
                "echo should-not-run",
            ],
        );
        cmd.env("DISPLAY", ":99");
        let r = run_cmd(cmd, None, Duration::from_secs(60), s.log()).failure();
        assert!(
            r.stderr().contains("remote port forwarding failed"),
            "{}",
            r.explain()
        );
    }
    // Agent and X11 forwarding requested on a session: refused, the
    // command still runs.
    let sock = s.dir.path().join("agent.sock");
    let mut agent_cmd = Command::new("ssh-agent");
    agent_cmd.arg("-D").arg("-a").arg(&sock);
    let _agent = Proc::spawn("ssh-agent", agent_cmd, s.dir.path());
    assert!(wait_for(Duration::from_secs(10), || sock.exists().then_some(())).is_some());
    let mut cmd = s.ssh(&dave, &["-A", "-X", "echo ok"]);
    cmd.env("SSH_AUTH_SOCK", &sock).env("DISPLAY", ":99");
    let r = run_cmd(cmd, None, Duration::from_secs(60), s.log()).success();
    assert_eq!(r.stdout(), "ok\n", "{}", r.explain());

    let rows = wait_for(Duration::from_secs(20), || {
        let f = forwards(s);
        (f.iter().filter(|r| r.kind != "local").count() >= 4).then_some(f)
    })
    .unwrap_or_else(|| panic!("{:#?}\n{}", forwards(s), s.log()));
    let find = |who: &str, kind: &str| {
        rows.iter()
            .find(|r| r.subject.as_deref() == Some(who) && r.kind == kind)
            .unwrap_or_else(|| panic!("no {kind} row for {who}: {rows:#?}"))
    };
    let a = find("alice", "remote");
    assert_eq!(a.target, format!("127.0.0.1:{rport}"));
    assert_eq!(a.decision, "deny");
    assert!(a.reason.contains("no forward.remote rule"), "{a:?}");
    let d = find("dave", "remote");
    assert_eq!(d.decision, "allow");
    assert!(d.reason.contains("forward.remote '127.0.0.1:*'"), "{d:?}");
    let ag = find("dave", "agent");
    assert_eq!(ag.decision, "deny");
    // `ca sign` certificates carry neither permit-agent-forwarding nor
    // permit-X11-forwarding: refused before policy, like OpenSSH does.
    assert_eq!(ag.reason, "certificate lacks permit-agent-forwarding");
    let x = find("dave", "x11");
    assert_eq!(x.decision, "deny");
    assert_eq!(x.reason, "certificate lacks permit-X11-forwarding");
    // The policy-allowed -R that was still refused is an event with why.
    let ev = crate::support::query_db(
        &s.db_path(),
        "SELECT detail, reason FROM events WHERE kind = 'request-denied' AND subject = 'dave'",
    );
    assert!(
        ev.iter()
            .any(|r| r[0] == format!("tcpip-forward 127.0.0.1:{rport}")
                && r[1].contains("does not implement")),
        "{ev:?}"
    );
}

#[test]
fn kubewire_kubectl_exec_through_ssh_l_is_policed_masked_and_recorded() {
    let e = start();
    let s = &e.server;
    let alice = s.user("alice", &["--permit-port-forwarding"]);
    let (_ssh, port) = tunnel(s, &alice);

    // The policy in force (PolicyHandle) decides the argv.
    kubectl(s, port, &["exec", "web-1", "--", "touch", "through-ssh"]).success();
    assert!(e.api.pod_dir().join("through-ssh").exists(), "{}", s.log());
    let r = kubectl(
        s,
        port,
        &["exec", "web-1", "--", "sh", "-c", "touch denied-ssh"],
    )
    .failure();
    assert!(
        r.stderr().contains("exec.deny 'touch denied*'"),
        "{}",
        r.explain()
    );
    assert!(!e.api.pod_dir().join("denied-ssh").exists());
    assert_eq!(
        e.api
            .requests_to("/api/v1/namespaces/dev/pods/web-1/exec")
            .len(),
        1,
        "only the allowed exec reached the API server"
    );
    let blocked = crate::support::query_db(
        &s.db_path(),
        "SELECT subject, detail, decision FROM events WHERE kind = 'command-blocked'",
    );
    assert!(
        blocked.contains(&vec![
            "alice".to_string(),
            "kubectl exec dev/web-1: sh -c touch denied-ssh".to_string(),
            "deny".to_string()
        ]),
        "{blocked:?}"
    );

    // The grant's masking (live) applies to what kubectl shows, even when
    // the secret arrives in two frames, and to the recording.
    let secret = "ghp_0123456789abcdefghijABCDEFGHIJ012345";
    let (a, b) = secret.split_at(12);
    let r = kubectl(
        s,
        port,
        &["exec", "web-1", "--", "printf-split", a, &format!("{b}\\n")],
    )
    .success();
    assert_eq!(r.stdout(), "[MASKED:github-token]\n", "{}", r.explain());
    let row = kube_row(s, "exec printf-split", |r| {
        r.row.subresource.as_deref() == Some("exec") && r.row.path.contains("printf-split")
    });
    let cast = std::path::PathBuf::from(row.row.recording.clone().expect("recorded"));
    let replay = crate::support::asciinema_cat(&cast).unwrap();
    assert!(replay.contains("[MASKED:github-token]"), "{replay}");
    assert!(!replay.contains(&b[4..]), "{replay}");
}
