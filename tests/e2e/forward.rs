//! Port forwarding through the bastion with real OpenSSH: `ssh -L` to a real
//! PostgreSQL queried with `psql`, `ssh -J` to a real `sshd` trusting the
//! bastion's user CA, and every refusal (unknown name, port mismatch,
//! garbage host, refused/hanging target, metadata address behind a DNS name,
//! the bastion's own port, no `permit-port-forwarding`, the per-connection
//! cap) seen through `ssh` and in the `forwards` audit table.
//!
//! DNS for the metadata case: the test names `metadata.test` in the
//! bastion's `[forward] hosts` table (consulted before DNS, answers checked
//! like DNS answers) — no /etc/hosts edits, no resolver of our own.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use sallyport::audit::Store;
use sallyport::audit::forwards::ForwardRow;

use crate::support::targets::{Hanging, Postgres, Sshd, echo_server, refused_port};
use crate::support::{
    Proc, Server, ServerOpts, User, free_port, policies, run_cmd, ssh_base_args, wait_for,
    wait_port,
};

/// Policy (docs/policy.md format) letting operator-signed identities forward
/// to the test targets. Protected addresses are *not* named, so they stay
/// denied even though the names are allowed.
fn policy() -> String {
    policies::local_role(
        "forwarders",
        "port_forwarding = true\n",
        r#"[role.exec]
allow = ["echo *"]
[role.forward]
allow = ["testdb:*", "jump:*", "echo:*", "refused:*", "hanging:*", "metadata.test:*", "localhost:*"]
"#,
    )
}
fn forwards(s: &Server) -> Vec<ForwardRow> {
    Store::open(&s.db_path())
        .unwrap()
        .list_forwards(100_000)
        .unwrap()
}

/// Wait until a forwards row matching `f` exists (rows are written by the
/// server's forward task just after the client sees the outcome).
fn wait_row(s: &Server, what: &str, f: impl Fn(&ForwardRow) -> bool) -> ForwardRow {
    wait_for(Duration::from_secs(20), || {
        forwards(s).into_iter().find(|r| f(r))
    })
    .unwrap_or_else(|| panic!("no forwards row: {what}\n{:#?}\n{}", forwards(s), s.log()))
}

/// `ssh -W host:port` through the bastion: a stdio forward, the simplest
/// way to make OpenSSH open exactly one direct-tcpip channel.
/// Runs at LogLevel VERBOSE so the client prints the open failure reason
/// (`open failed: administratively prohibited` / `connect failed`).
fn ssh_w(s: &Server, u: &User, target: &str, stdin: &[u8]) -> crate::support::Run {
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
    .args(["-W", target]);
    run_cmd(cmd, Some(stdin), Duration::from_secs(60), s.log())
}

fn start(extra: &str) -> Server {
    Server::start_with(ServerOpts {
        config_extra: extra.to_string(),
        policies: vec![("forward.toml".into(), policy())],
        ..Default::default()
    })
}

fn forwarder(s: &Server, name: &str) -> User {
    s.user(name, &["--permit-port-forwarding"])
}

#[test]
fn harness_targets_work_without_the_bastion() {
    // Postgres answers psql directly; sshd accepts a CA-signed cert. This
    // proves the targets before blaming the bastion in the tests below.
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start(dir.path());
    let r = run_cmd(
        psql(pg.port, "select 40 + 2"),
        None,
        Duration::from_secs(30),
        pg.proc.log(),
    )
    .success();
    assert_eq!(r.stdout().trim(), "42");

    let ca = dir.path().join("ca");
    crate::support::keygen(&ca);
    let ca_pub = std::fs::read_to_string(format!("{}.pub", ca.display())).unwrap();
    let sshd = Sshd::start(dir.path(), &ca_pub);
    let key = dir.path().join("id");
    crate::support::keygen(&key);
    let st = Command::new("ssh-keygen")
        .args(["-q", "-s"])
        .arg(&ca)
        .args(["-I", "test", "-n", "root", "-V", "-5m:+10m"])
        .arg(format!("{}.pub", key.display()))
        .status()
        .unwrap();
    assert!(st.success());
    let kh = dir.path().join("kh");
    std::fs::write(&kh, format!("{}\n", sshd.known_hosts_line("127.0.0.1"))).unwrap();
    let mut c = Command::new("ssh");
    c.args([
        "-F",
        "/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
    ])
    .arg("-o")
    .arg(format!("UserKnownHostsFile={}", kh.display()))
    .arg("-i")
    .arg(&key)
    .arg("-p")
    .arg(sshd.port.to_string())
    .arg("root@127.0.0.1")
    .arg("echo direct-ok");
    let r = run_cmd(c, None, Duration::from_secs(30), sshd.proc.log()).success();
    assert_eq!(r.stdout().trim(), "direct-ok");
}

fn psql(port: u16, sql: &str) -> Command {
    let mut c = Command::new("psql");
    c.args([
        "-X",
        "-A",
        "-t",
        "-h",
        "127.0.0.1",
        "-U",
        "postgres",
        "-d",
        "postgres",
    ])
    .arg("-p")
    .arg(port.to_string())
    .arg("-c")
    .arg(sql)
    .env("PGCONNECT_TIMEOUT", "15");
    c
}

#[test]
fn psql_through_ssh_l_to_a_named_target() {
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start(dir.path());
    let s = start(&format!("[targets]\ntestdb = \"127.0.0.1:{}\"\n", pg.port));
    let u = forwarder(&s, "alice");
    let lport = free_port();
    let mut cmd = s.ssh(
        &u,
        &[
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-L",
            &format!("{lport}:testdb:{}", pg.port),
        ],
    );
    cmd.stdin(std::process::Stdio::null());
    let tunnel = Proc::spawn("ssh-L", cmd, s.dir.path());
    assert!(
        wait_port(lport, Duration::from_secs(30)),
        "ssh -L did not listen\n{}\n{}",
        tunnel.log(),
        s.log()
    );
    let r = run_cmd(
        psql(lport, "select 'through-' || (40 + 2)"),
        None,
        Duration::from_secs(60),
        format!("{}\n{}", tunnel.log(), s.log()),
    )
    .success();
    assert_eq!(r.stdout().trim(), "through-42");
    // wait_port's probe was a forward too (0 bytes); find psql's.
    let row = wait_row(&s, "closed psql forward", |r| {
        r.target == format!("testdb:{}", pg.port) && r.ended_at.is_some() && r.bytes_down > 0
    });
    assert_eq!(row.decision, "allow");
    assert_eq!(row.kind, "local");
    assert_eq!(row.subject.as_deref(), Some("alice"));
    assert_eq!(
        row.resolved.as_deref(),
        Some(format!("127.0.0.1:{}", pg.port).as_str())
    );
    assert!(row.reason.contains("forwarders"), "{row:?}");
    assert!(row.bytes_up > 0 && row.bytes_down > 0, "{row:?}");
    assert!(row.end_reason.is_some());
}

#[test]
fn ssh_j_login_to_a_real_sshd() {
    let dir = tempfile::tempdir().unwrap();
    // The bastion names the target's port; the target trusts the bastion's
    // user CA (TrustedUserCAKeys), so: pick the port, start the bastion,
    // then sshd.
    let sshd_port = free_port();
    let s = start(&format!("[targets]\njump = \"127.0.0.1:{sshd_port}\"\n"));
    let show = s.cli(&["ca", "show", "--json"]).success();
    let v: serde_json::Value = serde_json::from_str(&show.stdout()).unwrap();
    let sshd = Sshd::start_on(dir.path(), v["user_ca"].as_str().unwrap(), sshd_port);
    let u = s.user(
        "alice",
        &["--permit-port-forwarding", "--principal", "root"],
    );
    let kh = s.dir.path().join("kh_jump");
    let bastion_kh = std::fs::read_to_string(&s.known_hosts).unwrap();
    std::fs::write(
        &kh,
        format!("{bastion_kh}{}\n", sshd.known_hosts_line("jump")),
    )
    .unwrap();
    let cfg = s.dir.path().join("ssh_config");
    std::fs::write(
        &cfg,
        format!(
            "Host bastion\n  HostName 127.0.0.1\n  Port {bp}\n  User alice\n\
             Host jump\n  User root\n  Port {jp}\n\
             Host *\n  IdentityFile {key}\n  CertificateFile {cert}\n  IdentitiesOnly yes\n\
             \x20 UserKnownHostsFile {kh}\n  GlobalKnownHostsFile /dev/null\n  StrictHostKeyChecking yes\n\
             \x20 BatchMode yes\n  ConnectTimeout 15\n  LogLevel ERROR\n",
            bp = s.ssh_port,
            jp = sshd.port,
            key = u.key.display(),
            cert = u.cert.display(),
            kh = kh.display()
        ),
    )
    .unwrap();
    let mut c = Command::new("ssh");
    c.arg("-F")
        .arg(&cfg)
        .args(["-J", "bastion", "jump", "echo via-jump; id -un"]);
    let r = run_cmd(
        c,
        None,
        Duration::from_secs(60),
        format!("{}\n{}", sshd.proc.log(), s.log()),
    )
    .success();
    assert_eq!(r.stdout(), "via-jump\nroot\n");
    let row = wait_row(&s, "jump forward", |r| {
        r.target == format!("jump:{}", sshd.port) && r.ended_at.is_some()
    });
    assert_eq!(row.decision, "allow");
    assert!(row.bytes_up > 0 && row.bytes_down > 0, "{row:?}");
}

#[test]
fn certificate_without_permit_port_forwarding_is_denied() {
    let s = start(&format!("[targets]\necho = \"{}\"\n", echo_server()));
    let u = s.user("bob", &[]);
    let port = s_port_of(&s, "echo");
    let r = ssh_w(&s, &u, &format!("echo:{port}"), b"hello").failure();
    assert!(
        r.stderr().contains("administratively prohibited"),
        "{}",
        r.explain()
    );
    let row = wait_row(&s, "denied forward", |r| r.target == format!("echo:{port}"));
    assert_eq!(row.decision, "deny");
    assert_eq!(row.reason, "certificate lacks permit-port-forwarding");
    assert_eq!(row.end_reason.as_deref(), Some("denied"));
    assert_eq!((row.bytes_up, row.bytes_down), (0, 0));
}

/// Port of a named target in the server's config.
fn s_port_of(s: &Server, name: &str) -> u16 {
    let text = std::fs::read_to_string(&s.config).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{name} =")))
        .unwrap();
    line.trim_end_matches('"')
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn refusals_through_real_ssh_are_clean_and_audited() {
    // These refusals come before or regardless of a policy allow, so they
    // hold with the default-deny placeholder policy too.
    let s = start("[targets]\ntestdb = \"127.0.0.1:5432\"\n");
    let u = forwarder(&s, "carol");
    let cases: &[(&str, &str)] = &[
        ("nosuchdb:5432", "unknown target"),
        ("testdb:1", "is port 5432, not 1"),
        ("bad!host.example:22", "invalid host"),
        ("does-not-exist.invalid:22", "resolv"),
    ];
    for (target, why) in cases {
        let r = ssh_w(&s, &u, target, b"x").failure();
        assert!(
            r.stderr().contains("administratively prohibited"),
            "{target}: {}",
            r.explain()
        );
        let row = wait_row(&s, target, |r| &r.target == target);
        assert_eq!(row.decision, "deny", "{row:?}");
        assert!(row.reason.contains(why), "{target}: {row:?}");
    }
    // The connection-level machinery is still fine: a session still works.
    let r = s.run_ssh(&u, &["echo", "still-ok"], None).success();
    assert_eq!(r.stdout().trim(), "still-ok");
}

#[test]
fn unreachable_and_protected_targets_are_refused_and_audited() {
    let hanging = Hanging::start();
    let refused = refused_port();
    let s = start(&format!(
        "[targets]\nrefused = \"127.0.0.1:{refused}\"\nhanging = \"{}\"\n\
         [forward]\nconnect_timeout = \"2s\"\nhosts = {{ \"metadata.test\" = \"169.254.169.254\" }}\n",
        hanging.addr
    ));
    let u = forwarder(&s, "dave");
    let own = s.ssh_port;
    let api = s.api_port;
    let cases: Vec<(String, &str, &str)> = vec![
        (format!("refused:{refused}"), "connect failed", "refused"),
        (
            format!("hanging:{}", hanging.addr.port()),
            "connect failed",
            "timed out",
        ),
        (
            "metadata.test:80".into(),
            "administratively prohibited",
            "169.254.169.254:80: link-local/metadata",
        ),
        (
            format!("localhost:{own}"),
            "administratively prohibited",
            "bastion's own listen port",
        ),
        (
            format!("localhost:{api}"),
            "administratively prohibited",
            "bastion's own listen port",
        ),
    ];
    for (target, client_sees, audit) in &cases {
        let r = ssh_w(&s, &u, target, b"x").failure();
        assert!(
            r.stderr().contains(client_sees),
            "{target}: {}",
            r.explain()
        );
        let row = wait_row(&s, target, |r| &r.target == target);
        let text = format!(
            "{} {}",
            row.reason,
            row.end_reason.clone().unwrap_or_default()
        );
        assert!(text.contains(audit), "{target}: {row:?}");
        assert_eq!((row.bytes_up, row.bytes_down), (0, 0));
    }
}

#[test]
fn a_thousand_channel_opens_on_one_connection() {
    // 1,000 direct-tcpip opens on ONE connection (one `ssh -L`, 1,000 local
    // TCP connections): each is refused cleanly and audited, the connection
    // survives, and another session keeps working meanwhile.
    let s = start("");
    let u = forwarder(&s, "erin");
    let lport = free_port();
    let mut cmd = s.ssh(&u, &["-N", "-L", &format!("{lport}:nosuchdb:5432")]);
    cmd.stdin(std::process::Stdio::null());
    let mut tunnel = Proc::spawn("ssh-L", cmd, s.dir.path());
    assert!(
        wait_port(lport, Duration::from_secs(30)),
        "{}",
        tunnel.log()
    );
    // wait_port itself opened one channel.
    let mut refused = 0;
    for i in 0..1000 {
        let mut c = TcpStream::connect(("127.0.0.1", lport)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let _ = c.write_all(b"x");
        let mut b = [0u8; 1];
        // ssh closes the local socket when the open fails.
        match c.read(&mut b) {
            Ok(0) | Err(_) => refused += 1,
            Ok(_) => panic!("open {i} got data from a target that must not exist"),
        }
        if i == 500 {
            let r = s.run_ssh(&u, &["echo", "meanwhile"], None).success();
            assert_eq!(r.stdout().trim(), "meanwhile");
        }
    }
    assert_eq!(refused, 1000);
    assert!(
        tunnel.wait_timeout(Duration::from_millis(10)).is_none(),
        "ssh -L died\n{}",
        tunnel.log()
    );
    let rows = wait_for(Duration::from_secs(30), || {
        let r: Vec<_> = forwards(&s)
            .into_iter()
            .filter(|r| r.target == "nosuchdb:5432")
            .collect();
        (r.len() >= 1001).then_some(r)
    })
    .unwrap_or_else(|| panic!("not all opens audited: {}", forwards(&s).len()));
    assert!(
        rows.iter()
            .all(|r| r.decision == "deny" && r.reason.contains("unknown target"))
    );
    let conns: std::collections::HashSet<_> =
        rows.iter().map(|r| r.connection_id.clone()).collect();
    assert_eq!(conns.len(), 1, "opens spread over several connections");
}

#[test]
fn forward_cap_per_connection() {
    let echo = echo_server();
    let s = start(&format!(
        "[targets]\necho = \"{echo}\"\n[forward]\nmax_per_connection = 4\n"
    ));
    let u = forwarder(&s, "frank");
    let lport = free_port();
    let mut cmd = s.ssh(&u, &["-N", "-L", &format!("{lport}:echo:{}", echo.port())]);
    cmd.stdin(std::process::Stdio::null());
    let tunnel = Proc::spawn("ssh-L", cmd, s.dir.path());
    assert!(
        wait_port(lport, Duration::from_secs(30)),
        "{}",
        tunnel.log()
    );
    // wait_port's probe connection was itself a forward: let the bastion
    // close it first, or it would hold one of the 4 slots under load.
    let idle = wait_for(Duration::from_secs(20), || {
        let open = crate::support::query_db(
            &s.db_path(),
            "SELECT count(*) FROM forwards WHERE decision = 'allow' AND ended_at IS NULL",
        );
        (open[0][0] == "0").then_some(())
    });
    assert!(idle.is_some(), "probe forward never closed\n{}", s.log());
    // Hold 4 working forwards open.
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut c = TcpStream::connect(("127.0.0.1", lport)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        c.write_all(b"ping").unwrap();
        let mut b = [0u8; 4];
        c.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"ping");
        held.push(c);
    }
    // The fifth is refused (RESOURCE_SHORTAGE) and audited.
    let mut c = TcpStream::connect(("127.0.0.1", lport)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = c.write_all(b"ping");
    let mut b = [0u8; 4];
    assert!(matches!(c.read(&mut b), Ok(0) | Err(_)));
    wait_row(&s, "cap refusal", |r| {
        r.reason.contains("too many forwards")
    });
    // Closing one frees a slot.
    drop(held.pop());
    let ok = wait_for(Duration::from_secs(20), || {
        let mut c = TcpStream::connect(("127.0.0.1", lport)).ok()?;
        c.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        c.write_all(b"pong").ok()?;
        let mut b = [0u8; 4];
        c.read_exact(&mut b).ok()?;
        (&b == b"pong").then_some(())
    });
    assert!(ok.is_some(), "slot never freed\n{}", s.log());
}

#[test]
fn bulk_data_both_ways_is_exact_and_half_close_is_relayed() {
    // 8 MiB through `ssh -W` to an echo server: the bastion batches queued
    // channel data into vectored writes and sends target reads back as
    // owned buffers; every byte must arrive in order both ways. stdin's
    // EOF reaches the target as a TCP half-close (the echo server only
    // shuts its side after reading EOF), and the target's EOF reaches ssh,
    // which then exits: both directions of RFC 4254 §5.3.
    let echo = echo_server();
    let s = start(&format!("[targets]\necho = \"{echo}\"\n"));
    let u = forwarder(&s, "bulk");
    let mut x: u32 = 0x9e37_79b9;
    let data: Vec<u8> = (0..8 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    let r = ssh_w(&s, &u, &format!("echo:{}", echo.port()), &data).success();
    assert!(
        r.output.stdout == data,
        "echoed bytes differ ({} of {} back)",
        r.output.stdout.len(),
        data.len()
    );
    let row = wait_row(&s, "bulk forward closed", |r| {
        r.target == format!("echo:{}", echo.port()) && r.ended_at.is_some()
    });
    assert_eq!(
        (row.bytes_up, row.bytes_down),
        (8 << 20, 8 << 20),
        "{row:?}"
    );
    assert_eq!(row.end_reason.as_deref(), Some("completed"), "{row:?}");
}
