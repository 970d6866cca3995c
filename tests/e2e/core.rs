//! The bastion's SSH core with real OpenSSH clients: exec status, stdout vs
//! stderr, stdin piping, pty resize, refused requests, pre-auth deadline and
//! hostile connections, graceful shutdown and SIGKILL.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::support::*;

fn grace_server(grace: &str) -> Server {
    Server::start_with(ServerOpts {
        ssh_extra: format!("login_grace_time = \"{grace}\"\n"),
        ..Default::default()
    })
}

#[test]
fn exec_status_stdout_stderr_and_stdin() {
    let s = Server::start();
    let u = s.user("alice", &[]);
    let r = s.run_ssh(&u, &["echo out; echo err >&2; exit 7"], None);
    assert_eq!(r.code(), Some(7), "{}", r.explain());
    assert_eq!(r.stdout(), "out\n", "{}", r.explain());
    assert_eq!(r.stderr(), "err\n", "{}", r.explain());

    let r = s.run_ssh(&u, &["wc", "-c"], Some(b"x\n")).success();
    assert_eq!(r.stdout().trim(), "2", "{}", r.explain());

    // Every AEAD cipher OpenSSH offers is accepted.
    for c in [
        "aes128-gcm@openssh.com",
        "aes256-gcm@openssh.com",
        "chacha20-poly1305@openssh.com",
    ] {
        let r = s.run_ssh(&u, &["-c", c, "echo", c], None).success();
        assert_eq!(r.stdout().trim(), c);
    }

    // Environment is built from scratch and names the session.
    let r = s
        .run_ssh(&u, &["echo $SALLYPORT_SESSION_ID; env | wc -l"], None)
        .success();
    let out = r.stdout();
    let mut lines = out.lines();
    let sid = lines.next().unwrap().to_string();
    assert_eq!(sid.len(), 36, "{}", r.explain());
    let nvars: usize = lines.next().unwrap().trim().parse().unwrap();
    assert!(
        nvars < 15,
        "environment not built from scratch:\n{}",
        r.explain()
    );
}

#[test]
fn refused_requests_are_audited() {
    let s = Server::start();
    let u = s.user("alice", &[]);
    // sftp subsystem: refused.
    let r = s.run_ssh(&u, &["-s", "sftp"], None);
    assert_ne!(r.code(), Some(0), "{}", r.explain());
    // Agent forwarding and -L: refused but the session itself runs.
    // ssh only asks for agent forwarding when it has an agent to forward.
    let sock = s.dir.path().join("agent.sock");
    let mut agent_cmd = std::process::Command::new("ssh-agent");
    agent_cmd.arg("-D").arg("-a").arg(&sock);
    let _agent = Proc::spawn("ssh-agent", agent_cmd, s.dir.path());
    assert!(wait_for(Duration::from_secs(10), || sock.exists().then_some(())).is_some());
    let mut cmd = s.ssh(&u, &["-A", "echo ok"]);
    cmd.env("SSH_AUTH_SOCK", &sock);
    let r = run_cmd(cmd, None, Duration::from_secs(60), s.log()).success();
    assert_eq!(r.stdout(), "ok\n");
    let r = s.run_ssh(&u, &["-W", "127.0.0.1:22"], None);
    assert_ne!(r.code(), Some(0), "{}", r.explain());
    let rows = query_db(
        &s.db_path(),
        "SELECT detail, reason FROM events WHERE kind = 'request-denied' ORDER BY id",
    );
    let details: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert!(details.contains(&"subsystem sftp"), "{rows:?}\n{}", s.log());
    assert!(
        details.contains(&"auth-agent-req@openssh.com"),
        "{rows:?}\n{}",
        s.log()
    );
    assert!(
        details
            .iter()
            .any(|d| d.starts_with("direct-tcpip 127.0.0.1:22")),
        "{rows:?}"
    );
    assert!(
        rows.iter().all(|r| !r[1].is_empty()),
        "every denial has a reason: {rows:?}"
    );
}

#[test]
fn silent_garbage_and_half_open_clients_are_dropped_while_others_are_served() {
    let s = grace_server("2s");
    let u = s.user("alice", &[]);
    // Never sends a version string.
    let mut silent = TcpStream::connect(("127.0.0.1", s.ssh_port)).unwrap();
    // Sends a version, then stops mid-handshake (half-open).
    let mut half = TcpStream::connect(("127.0.0.1", s.ssh_port)).unwrap();
    half.write_all(b"SSH-2.0-halfopen_1.0\r\n").unwrap();
    // Sends garbage instead of a version.
    let mut garbage = TcpStream::connect(("127.0.0.1", s.ssh_port)).unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\x01\x02\xff")
        .unwrap();

    // Meanwhile the bastion serves a real client.
    let r = s.run_ssh(&u, &["echo still-serving"], None).success();
    assert_eq!(r.stdout(), "still-serving\n");

    for (name, sock) in [
        ("silent", &mut silent),
        ("half-open", &mut half),
        ("garbage", &mut garbage),
    ] {
        sock.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut buf = Vec::new();
        // read_to_end returns once the server closed the connection; a
        // timeout error here means it was never dropped.
        let res = sock.read_to_end(&mut buf);
        assert!(
            res.is_ok(),
            "{name} connection not dropped: {res:?}\n{}",
            s.log()
        );
        assert!(
            String::from_utf8_lossy(&buf).starts_with("SSH-2.0-sallyport"),
            "{name}: server version string expected, got {buf:?}"
        );
    }
    let closed = wait_for(Duration::from_secs(10), || {
        let rows = query_db(
            &s.db_path(),
            "SELECT end_reason FROM connections WHERE user IS NULL AND ended_at IS NOT NULL",
        );
        (rows.len() >= 3).then_some(rows)
    })
    .unwrap_or_else(|| panic!("connections not closed in the audit log\n{}", s.log()));
    assert!(
        closed.iter().any(|r| r[0].contains("login grace time")),
        "{closed:?}"
    );
    // And still serving afterwards.
    s.run_ssh(&u, &["true"], None).success();
}

#[test]
fn pty_resize_reaches_the_shell_and_the_recording() {
    let s = Server::start();
    let u = s.user("alice", &[]);
    let dir = s.dir.path();
    let tmux_sock = dir.join("tmux.sock");
    let tmux = |args: &[&str]| {
        let st = std::process::Command::new("tmux")
            .arg("-S")
            .arg(&tmux_sock)
            .args(args)
            .status()
            .unwrap();
        assert!(st.success(), "tmux {args:?} failed");
    };
    let ssh_line = {
        let cmd = s.ssh(&u, &["-tt"]);
        let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
        parts.extend(cmd.get_args().map(|a| format!("'{}'", a.to_string_lossy())));
        parts.join(" ")
    };
    tmux(&[
        "new-session",
        "-d",
        "-s",
        "t",
        "-x",
        "100",
        "-y",
        "30",
        &ssh_line,
    ]);
    let size1 = dir.join("size1");
    let size2 = dir.join("size2");
    let read = |p: &std::path::Path| {
        wait_for(Duration::from_secs(30), || {
            std::fs::read_to_string(p)
                .ok()
                .filter(|t| t.ends_with('\n'))
        })
        .unwrap_or_else(|| panic!("{} never written\n{}", p.display(), s.log()))
    };
    tmux(&[
        "send-keys",
        "-t",
        "t",
        &format!("stty size > {}", size1.display()),
        "Enter",
    ]);
    assert_eq!(read(&size1).trim(), "30 100");
    tmux(&["resize-window", "-t", "t", "-x", "120", "-y", "40"]);
    // Retry until the resize has reached the pty (no timing assumptions).
    let got = wait_for(Duration::from_secs(30), || {
        let _ = std::fs::remove_file(&size2);
        tmux(&[
            "send-keys",
            "-t",
            "t",
            &format!("stty size > {}", size2.display()),
            "Enter",
        ]);
        let t = read(&size2);
        (t.trim() == "40 120").then_some(t)
    });
    assert!(got.is_some(), "resize not seen by the shell\n{}", s.log());
    tmux(&["send-keys", "-t", "t", "exit", "Enter"]);
    let _ = wait_for(Duration::from_secs(30), || {
        let v = s.sessions_json();
        v[0]["ended_at"].is_string().then_some(())
    });
    let _ = std::process::Command::new("tmux")
        .arg("-S")
        .arg(&tmux_sock)
        .arg("kill-server")
        .status();
    let v = s.sessions_json();
    let sess = &v[0];
    assert_eq!(sess["kind"], "shell", "{v:#}");
    assert_eq!(sess["pty"], true);
    let (header, events) = parse_cast(std::path::Path::new(sess["recording"].as_str().unwrap()));
    assert_eq!(header["version"], 2);
    assert_eq!(header["width"], 100);
    assert_eq!(header["height"], 30);
    assert!(
        events.iter().any(|(_, k, d)| k == "r" && d == "120x40"),
        "no r event 120x40 in {events:?}"
    );
    assert!(events.iter().any(|(_, k, _)| k == "o"));
}

#[test]
fn graceful_sigterm_ends_sessions_and_closes_rows() {
    let mut s = Server::start();
    let u = s.user("alice", &[]);
    let client = Proc::spawn(
        "ssh-long",
        s.ssh(&u, &["echo started; sleep 120"]),
        s.dir.path(),
    );
    wait_for(Duration::from_secs(30), || {
        std::fs::read_to_string(&client.stdout)
            .ok()
            .filter(|t| t.contains("started"))
    })
    .unwrap_or_else(|| panic!("session did not start\n{}\n{}", client.log(), s.log()));
    s.proc.signal("TERM");
    let st = s
        .proc
        .wait_timeout(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("server did not exit on SIGTERM\n{}", s.log()));
    assert!(st.success(), "exit status {st:?}\n{}", s.log());
    let rows = query_db(
        &s.db_path(),
        "SELECT ended_at, end_reason, exit_signal FROM sessions",
    );
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(!rows[0][0].is_empty(), "session row not closed: {rows:?}");
    assert_eq!(rows[0][1], "server shutdown", "{rows:?}");
    let conns = query_db(
        &s.db_path(),
        "SELECT end_reason FROM connections WHERE user = 'alice'",
    );
    assert_eq!(conns, vec![vec!["server shutdown".to_string()]]);
}

#[test]
fn sigkilled_server_leaves_a_readable_recording() {
    let mut s = Server::start();
    let u = s.user("alice", &[]);
    let client = Proc::spawn(
        "ssh-long",
        s.ssh(&u, &["echo before-the-crash; sleep 120"]),
        s.dir.path(),
    );
    let rec = wait_for(Duration::from_secs(30), || {
        let v = s.sessions_json();
        let p = v[0]["recording"].as_str()?.to_string();
        std::fs::read_to_string(&p)
            .ok()
            .filter(|t| t.contains("before-the-crash"))
            .map(|_| p)
    })
    .unwrap_or_else(|| panic!("no recording\n{}\n{}", client.log(), s.log()));
    s.proc.signal("KILL");
    s.proc.wait_timeout(Duration::from_secs(10));
    let out = asciinema_cat(std::path::Path::new(&rec)).unwrap();
    assert_eq!(out, "before-the-crash\n");
}

/// Read until the server closes; the bytes it sent.
fn read_until_closed(sock: &mut TcpStream) -> Vec<u8> {
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut buf = Vec::new();
    sock.read_to_end(&mut buf)
        .expect("server did not close the connection");
    buf
}

#[test]
fn per_source_unauthenticated_cap_refuses_then_recovers() {
    let s = Server::start_with(ServerOpts {
        ssh_extra: "per_source_max_unauthenticated = 2\nlogin_grace_time = \"60s\"\n".into(),
        ..Default::default()
    });
    let u = s.user("alice", &[]);
    let a = TcpStream::connect(("127.0.0.1", s.ssh_port)).unwrap();
    let b = TcpStream::connect(("127.0.0.1", s.ssh_port)).unwrap();
    // Both slots are taken once the server has sent its version string.
    for mut c in [&a, &b] {
        let mut v = [0u8; 8];
        c.read_exact(&mut v).unwrap();
        assert_eq!(&v, b"SSH-2.0-");
    }
    let mut third = TcpStream::connect(("127.0.0.1", s.ssh_port)).unwrap();
    assert!(
        read_until_closed(&mut third).is_empty(),
        "third unauthenticated connection from one source must be refused before the handshake"
    );
    s.run_ssh(&u, &["true"], None).failure();
    drop(a);
    drop(b);
    let ok = wait_for(Duration::from_secs(30), || {
        s.run_ssh(&u, &["echo back"], None)
            .output
            .status
            .success()
            .then_some(())
    });
    assert!(ok.is_some(), "slots not released\n{}", s.log());
}

#[test]
fn per_source_rate_limit_refuses_bursts() {
    let s = Server::start_with(ServerOpts {
        ssh_extra: "per_source_per_minute = 3\n".into(),
        ..Default::default()
    });
    // The harness's own readiness probe used one; these use the rest.
    let mut refused = 0;
    for _ in 0..5 {
        let mut c = TcpStream::connect(("127.0.0.1", s.ssh_port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut v = [0u8; 1];
        match c.read(&mut v) {
            Ok(0) => refused += 1,
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert!(
        refused >= 2,
        "expected refusals past 3/min, got {refused}\n{}",
        s.log()
    );
    assert!(s.log().contains("connections per minute"), "{}", s.log());
}

#[test]
fn killed_client_ends_the_session_and_its_processes() {
    let s = Server::start();
    let u = s.user("alice", &[]);
    let pidfile = s.dir.path().join("child.pid");
    let mut client = Proc::spawn(
        "ssh-sleep",
        s.ssh(
            &u,
            &[&format!("echo $$ > {}; exec sleep 300", pidfile.display())],
        ),
        s.dir.path(),
    );
    let pid = wait_for(Duration::from_secs(30), || {
        std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
    })
    .unwrap_or_else(|| panic!("child never started\n{}", s.log()));
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    client.kill();
    let gone = wait_for(Duration::from_secs(30), || {
        (!std::path::Path::new(&format!("/proc/{pid}/stat")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|t| t.contains(") Z "))
                .unwrap_or(true))
        .then_some(())
    });
    assert!(
        gone.is_some(),
        "session child {pid} outlived its client\n{}",
        s.log()
    );
    let ended = wait_for(Duration::from_secs(30), || {
        let v = s.sessions_json();
        v[0]["ended_at"].is_string().then(|| v[0].clone())
    })
    .unwrap_or_else(|| panic!("session row not closed\n{}", s.log()));
    // Hung up (HUP, then KILL if it resisted).
    assert!(
        ["HUP", "KILL"].contains(&ended["exit_signal"].as_str().unwrap_or("")),
        "{ended:#}"
    );
    assert_eq!(
        ended["end_reason"], "client closed the channel",
        "{ended:#}"
    );
}

#[test]
fn session_channels_per_connection_are_capped() {
    let s = Server::start_with(ServerOpts {
        ssh_extra: "max_channels = 1\n".into(),
        ..Default::default()
    });
    let u = s.user("alice", &[]);
    // One multiplexed connection (ControlMaster), sessions as its channels.
    let ctl = s.dir.path().join("mux.sock");
    let mux = |extra: &[&str]| {
        let mut args = vec!["-S".to_string(), ctl.display().to_string()];
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    };
    let master_args = mux(&["-M", "-N"]);
    let master_refs: Vec<&str> = master_args.iter().map(String::as_str).collect();
    let _master = Proc::spawn("ssh-master", s.ssh(&u, &master_refs), s.dir.path());
    assert!(wait_for(Duration::from_secs(30), || ctl.exists().then_some(())).is_some());
    let long_args = mux(&["echo first; sleep 300"]);
    let long_refs: Vec<&str> = long_args.iter().map(String::as_str).collect();
    let first = Proc::spawn("ssh-first", s.ssh(&u, &long_refs), s.dir.path());
    wait_for(Duration::from_secs(30), || {
        std::fs::read_to_string(&first.stdout)
            .ok()
            .filter(|t| t.contains("first"))
    })
    .unwrap_or_else(|| panic!("first session did not start\n{}", s.log()));
    let second_args = mux(&["echo second"]);
    let second_refs: Vec<&str> = second_args.iter().map(String::as_str).collect();
    // The master refuses the channel; OpenSSH's mux client then falls back
    // to a connection of its own, where the session is the first channel.
    s.run_ssh(&u, &second_refs, None).success();
    let ev = query_db(
        &s.db_path(),
        "SELECT reason FROM events WHERE kind = 'request-denied' AND detail = 'session channel'",
    );
    assert_eq!(ev.len(), 1, "{ev:?}\n{}", s.log());
    assert!(ev[0][0].contains("ssh.max_channels"), "{ev:?}");
    let conns = query_db(
        &s.db_path(),
        "SELECT connection_id FROM sessions ORDER BY started_at",
    );
    assert_eq!(conns.len(), 2, "{conns:?}");
    assert_ne!(
        conns[0], conns[1],
        "the capped connection ran a second session"
    );
}

#[test]
fn large_stdin_round_trips_through_cat() {
    // Input and output at once through one connection: the handler must not
    // wait on a child that is itself waiting for its output to be read.
    let s = Server::start();
    let u = s.user("alice", &[]);
    let data: Vec<u8> = (0..20 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let r = s.run_ssh(&u, &["cat"], Some(&data)).success();
    assert_eq!(r.output.stdout.len(), data.len());
    assert!(r.output.stdout == data, "bytes differ");
    let v = s.sessions_json();
    assert_eq!(v[0]["bytes_in"].as_u64(), Some(data.len() as u64));
    assert_eq!(v[0]["bytes_out"].as_u64(), Some(data.len() as u64));
}

#[test]
fn sessions_run_as_the_configured_account() {
    if !nix::unistd::getuid().is_root() {
        eprintln!("skipped: needs root to switch accounts");
        return;
    }
    let s = Server::start_with(ServerOpts {
        ssh_extra: "run_as = \"nobody\"\n".into(),
        ..Default::default()
    });
    let u = s.user("alice", &[]);
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let want = format!("{} {}", nobody.uid, nobody.gid);
    // Without a pty (pipes) and with one (setpriv under the pty).
    let r = s
        .run_ssh(&u, &["echo $(id -u) $(id -g) $USER"], None)
        .success();
    assert_eq!(
        r.stdout().trim(),
        format!("{want} nobody"),
        "{}",
        r.explain()
    );
    let r = s
        .run_ssh(&u, &["-tt", "echo $(id -u) $(id -g) $(id -G)"], None)
        .success();
    assert_eq!(
        r.stdout().trim(),
        format!("{want} {}", nobody.gid),
        "{}",
        r.explain()
    );
}
