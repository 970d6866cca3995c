//! Policy reload and what is already open (issue 4, point 2): the real
//! server's policy file is rewritten and the server sent SIGHUP (its file
//! watcher may reload too), while real OpenSSH clients hold a shell (`ssh
//! -tt` in tmux), an exec, or an `ssh -L` forward open. Sessions whose
//! grant is gone end with a message, a recording marker and an audit row;
//! sessions still allowed keep working and pick up new limits; a broken file
//! changes nothing; forwards are checked per channel open only.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use crate::support::targets::echo_server;
use crate::support::*;

/// alice: shell, exec, forwarding to the echo target.
fn policy() -> String {
    policies::local_role(
        "ops",
        "port_forwarding = true\n",
        "[role.exec]\nallow = [\"*\"]\n[role.forward]\nallow = [\"echo:*\"]\n",
    )
}
const WAIT: Duration = Duration::from_secs(30);

fn start(policy: &str, config_extra: &str) -> Server {
    Server::start_with(ServerOpts {
        policies: vec![("p.toml".into(), policy.into())],
        config_extra: config_extra.into(),
        ..Default::default()
    })
}

/// Good reloads so far, from the server log ("policy reloaded", not the
/// sessions' "policy reloaded: ..." lines).
fn reloads(s: &Server) -> usize {
    let log = s.log();
    log.matches("policy reloaded").count() - log.matches("policy reloaded:").count()
}

/// Refused reloads so far.
fn refusals(s: &Server) -> usize {
    s.log().matches("policy reload refused").count()
}

/// Rewrite the policy file and SIGHUP the server; wait until `count` says
/// a reload happened (the file watcher may get there first).
fn set_policy(s: &Server, text: &str, count: fn(&Server) -> usize) {
    let before = count(s);
    std::fs::write(s.dir.path().join("policies").join("p.toml"), text).unwrap();
    s.proc.signal("HUP");
    wait_for(WAIT, || (count(s) > before).then_some(()))
        .unwrap_or_else(|| panic!("policy never reloaded\n{}", s.log()));
}

fn ssh_tt(s: &Server, u: &User) -> Tmux {
    // The pane outlives ssh so its last words can be read.
    let line = format!("{}; sleep 600", shell_line(&s.ssh(u, &["-tt"])));
    Tmux::start(s.dir.path(), 120, 30, &line)
}

/// The shell in `t` runs a command (its output, not the typed line, is
/// what the pane must show).
fn shell_works(s: &Server, t: &Tmux, tag: &str) {
    t.line(&format!("echo ok-{tag}-$((40+2))"));
    let want = format!("ok-{tag}-42");
    t.wait_for(WAIT, |p| p.contains(&want))
        .unwrap_or_else(|p| panic!("shell did not answer {want}\n{p}\n{}", s.log()));
}

fn session_rows(s: &Server) -> Vec<serde_json::Value> {
    s.sessions_json().as_array().cloned().unwrap_or_default()
}

fn ended_session(s: &Server, kind: &str) -> serde_json::Value {
    wait_for(WAIT, || {
        session_rows(s)
            .into_iter()
            .find(|r| r["kind"] == kind && r["ended_at"].is_string())
    })
    .unwrap_or_else(|| panic!("no ended {kind} session\n{}", s.log()))
}

fn events(s: &Server, kind: &str) -> Vec<Vec<String>> {
    query_db(
        &s.db_path(),
        &format!("SELECT session_id, detail, decision, reason FROM events WHERE kind = '{kind}'"),
    )
}

fn markers(recording: &str) -> Vec<String> {
    let (_, evs) = parse_cast(Path::new(recording));
    evs.into_iter()
        .filter(|(_, k, _)| k == "m")
        .map(|(_, _, d)| d)
        .collect()
}

fn killed(row: &serde_json::Value) -> bool {
    ["HUP", "KILL"].contains(&row["exit_signal"].as_str().unwrap_or(""))
}

#[test]
fn reload_removing_shell_ends_an_open_shell() {
    let s = start(&policy(), "");
    let u = s.user("alice", &[]);
    let t = ssh_tt(&s, &u);
    shell_works(&s, &t, "before");

    set_policy(
        &s,
        &policy().replace("shell = true", "shell = false"),
        reloads,
    );

    let why = "sallyport: session ended: policy reloaded: interactive shells are no longer allowed";
    t.wait_for(WAIT, |p| p.contains(why))
        .unwrap_or_else(|p| panic!("no end message on the terminal\n{p}\n{}", s.log()));
    let row = ended_session(&s, "shell");
    let reason = row["end_reason"].as_str().unwrap_or("");
    assert!(
        reason.starts_with("policy reloaded: interactive shells are no longer allowed")
            && reason.contains("role 'ops'"),
        "{row:#}"
    );
    assert!(killed(&row), "{row:#}");
    // The audit row names the new policy's rule.
    let ev = events(&s, "session-revoked");
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0][0], row["id"].as_str().unwrap());
    assert_eq!(
        ev[0][1],
        "policy reloaded: interactive shells are no longer allowed"
    );
    assert_eq!(ev[0][2], "deny");
    assert!(
        ev[0][3].contains("p.toml:") && ev[0][3].contains("role 'ops'"),
        "{ev:?}"
    );
    // The recording says so, and still plays.
    let rec = row["recording"].as_str().unwrap();
    let m = markers(rec);
    assert!(
        m.iter()
            .any(|m| m.starts_with("session ended: policy reloaded: interactive shells")),
        "{m:?}"
    );
    asciinema_cat(Path::new(rec)).unwrap();
    // New connections get the new policy: no shell, exec still fine.
    let r = s.run_ssh(&u, &[], Some(b"")).failure();
    assert!(
        r.stderr().contains("interactive shells are not allowed"),
        "{}",
        r.explain()
    );
    let r = s.run_ssh(&u, &["echo exec-$((1+1))"], None).success();
    assert_eq!(r.stdout().trim(), "exec-2");
}

#[test]
fn reload_denying_a_running_command_ends_it() {
    let s = start(&policy(), "");
    let u = s.user("alice", &[]);
    let mut client = Proc::spawn("ssh-exec", s.ssh(&u, &["sleep 300"]), s.dir.path());
    wait_for(WAIT, || {
        session_rows(&s)
            .into_iter()
            .find(|r| r["command"] == "sleep 300")
    })
    .unwrap_or_else(|| panic!("exec never started\n{}", s.log()));

    set_policy(
        &s,
        &policy().replace("allow = [\"*\"]", "allow = [\"*\"]\ndeny = [\"sleep *\"]"),
        reloads,
    );

    assert!(
        client.wait_timeout(WAIT).is_some(),
        "ssh still running\n{}\n{}",
        client.log(),
        s.log()
    );
    let out = client.log();
    assert!(
        out.contains("sallyport: session ended: policy reloaded: the command is now denied (")
            && out.contains("p.toml:14 role 'ops' exec.deny 'sleep *')"),
        "{out}\n{}",
        s.log()
    );
    let row = ended_session(&s, "exec");
    assert!(killed(&row), "{row:#}");
    let ev = events(&s, "session-revoked");
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert!(ev[0][3].contains("exec.deny 'sleep *'"), "{ev:?}");
}

#[test]
fn reload_that_keeps_access_leaves_the_session_working_and_applies_new_limits() {
    let s = start(&policy(), "");
    let u = s.user("alice", &[]);
    let t = ssh_tt(&s, &u);
    shell_works(&s, &t, "before");

    // Another role and new limits: alice keeps her shell.
    let more = format!(
        "{}\n[[role]]\nname = \"viewers\"\n[role.match]\nsubject = [\"bob\"]\n[role.grant]\nexec = true\n",
        policy().replace("pty = true", "pty = true\nmax_duration = \"9h\"")
    );
    set_policy(&s, &more, reloads);
    wait_for(WAIT, || {
        s.log()
            .contains("policy reloaded: session still allowed")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("session did not re-check\n{}", s.log()));
    shell_works(&s, &t, "after");
    assert!(session_rows(&s).iter().all(|r| r["ended_at"].is_null()));
    assert!(events(&s, "session-revoked").is_empty());

    // A shorter max duration is picked up: this session is older than 1s.
    set_policy(
        &s,
        &more.replace("max_duration = \"9h\"", "max_duration = \"1s\""),
        reloads,
    );
    t.wait_for(WAIT, |p| {
        p.contains("sallyport: session ended: max duration 1s reached")
    })
    .unwrap_or_else(|p| panic!("max duration not applied\n{p}\n{}", s.log()));
    let row = ended_session(&s, "shell");
    assert!(killed(&row), "{row:#}");
    assert!(
        row["end_reason"]
            .as_str()
            .unwrap_or("")
            .starts_with("max duration 1s reached"),
        "{row:#}"
    );
    let ev = events(&s, "session-limit");
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert!(ev[0][3].contains("role 'ops'"), "{ev:?}");
    let m = markers(row["recording"].as_str().unwrap());
    assert!(
        m.iter()
            .any(|m| m.starts_with("session ended: max duration")),
        "{m:?}"
    );
}

#[test]
fn idle_timeout_ends_a_quiet_session() {
    let s = start(
        &policy().replace("pty = true", "pty = true\nidle_timeout = \"2s\""),
        "",
    );
    let u = s.user("alice", &[]);
    let r = s.run_ssh(&u, &["sleep 300"], None);
    assert!(
        r.stderr()
            .contains("sallyport: session ended: idle for 2s (")
            && r.stderr().contains("p.toml:2 role 'ops')"),
        "{}",
        r.explain()
    );
    let row = ended_session(&s, "exec");
    assert!(killed(&row), "{row:#}");
    assert_eq!(events(&s, "session-limit").len(), 1);
}

#[test]
fn output_keeps_a_session_from_going_idle() {
    let s = start(
        &policy().replace("pty = true", "pty = true\nidle_timeout = \"3s\""),
        "",
    );
    let u = s.user("alice", &[]);
    // Runs well past the idle timeout, printing every 0.3 s.
    let r = s
        .run_ssh(
            &u,
            &["for i in $(seq 1 20); do echo tick-$i; sleep 0.3; done"],
            None,
        )
        .success();
    assert!(r.stdout().contains("tick-20"), "{}", r.explain());
    assert!(events(&s, "session-limit").is_empty());
}

#[test]
fn broken_policy_file_ends_nothing() {
    let s = start(&policy(), "");
    let u = s.user("alice", &[]);
    let t = ssh_tt(&s, &u);
    shell_works(&s, &t, "before");

    set_policy(&s, "[[role]]\nname = \"x\"\nshell = tru\n", refusals);
    assert!(
        s.log().contains("previous policy stays in force"),
        "{}",
        s.log()
    );
    shell_works(&s, &t, "after");
    assert!(session_rows(&s).iter().all(|r| r["ended_at"].is_null()));
    assert!(events(&s, "session-revoked").is_empty());
    // New sessions still get the old (good) policy.
    let r = s.run_ssh(&u, &["echo new-$((2+2))"], None).success();
    assert_eq!(r.stdout().trim(), "new-4");
}

fn echo_round_trip(c: &mut TcpStream, msg: &[u8]) -> bool {
    if c.write_all(msg).is_err() {
        return false;
    }
    let mut b = vec![0u8; msg.len()];
    c.read_exact(&mut b).is_ok() && b == msg
}

#[test]
fn open_forward_survives_a_reload_that_denies_it_new_channels_are_refused() {
    let echo = echo_server();
    let s = start(&policy(), &format!("[targets]\necho = \"{echo}\"\n"));
    let u = s.user("alice", &["--permit-port-forwarding"]);
    let lport = free_port();
    let mut cmd = s.ssh(&u, &["-N", "-L", &format!("{lport}:echo:{}", echo.port())]);
    cmd.stdin(std::process::Stdio::null());
    let tunnel = Proc::spawn("ssh-L", cmd, s.dir.path());
    assert!(wait_port(lport, WAIT), "{}", tunnel.log());
    let mut held = TcpStream::connect(("127.0.0.1", lport)).unwrap();
    held.set_read_timeout(Some(WAIT)).unwrap();
    assert!(echo_round_trip(&mut held, b"before"), "{}", s.log());

    set_policy(
        &s,
        &policy().replace("allow = [\"echo:*\"]", "deny = [\"echo:*\"]"),
        reloads,
    );

    // A new channel to the same target is refused and audited...
    let mut fresh = TcpStream::connect(("127.0.0.1", lport)).unwrap();
    fresh.set_read_timeout(Some(WAIT)).unwrap();
    assert!(!echo_round_trip(&mut fresh, b"new"), "a new forward passed");
    let denied = wait_for(WAIT, || {
        let rows = query_db(
            &s.db_path(),
            "SELECT reason FROM forwards WHERE decision = 'deny'",
        );
        rows.into_iter().next()
    })
    .unwrap_or_else(|| panic!("no denied forward row\n{}", s.log()));
    assert!(denied[0].contains("forward.deny 'echo:*'"), "{denied:?}");
    // ... while the one already open still relays.
    assert!(echo_round_trip(&mut held, b"after"), "{}", s.log());
    // (wait_port's probe was a forward too: it closes on its own.)
    let one_open = wait_for(WAIT, || {
        let open = query_db(
            &s.db_path(),
            "SELECT count(*) FROM forwards WHERE decision = 'allow' AND ended_at IS NULL",
        );
        (open[0][0] == "1").then_some(())
    });
    assert!(one_open.is_some(), "{}", s.log());
}

#[test]
fn new_masking_rules_apply_to_an_open_sessions_later_output() {
    let s = start(&policy(), "");
    let u = s.user("alice", &[]);
    let t = ssh_tt(&s, &u);
    // The typed line never matches the rule (`$(...)`); only the output can.
    let print = "echo acme_$(echo abcd1234)-$((1+1))";
    t.line(print);
    t.wait_for(WAIT, |p| p.contains("acme_abcd1234-2"))
        .unwrap_or_else(|p| panic!("no raw output before the reload\n{p}\n{}", s.log()));

    let masked = policy().replace(
        "[role.exec]",
        "[role.mask]\nlive = true\ncustom = [{ name = \"acme\", regex = \"acme_[a-z0-9]{8}\" }]\n[role.exec]",
    );
    set_policy(&s, &masked, reloads);
    wait_for(WAIT, || {
        s.log()
            .contains("policy reloaded: session still allowed")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("session did not re-check\n{}", s.log()));
    t.line(&print.replace("1+1", "2+2"));
    let pane = t
        .wait_for(WAIT, |p| p.contains("[MASKED:acme]-4"))
        .unwrap_or_else(|p| panic!("new rule not applied on screen\n{p}\n{}", s.log()));
    assert!(!pane.contains("acme_abcd1234-4"), "{pane}");
    t.line("exit");
    let row = ended_session(&s, "shell");
    let rec = asciinema_cat(Path::new(row["recording"].as_str().unwrap())).unwrap();
    assert!(rec.contains("[MASKED:acme]-4"), "{rec}");
    assert!(!rec.contains("acme_abcd1234-4"), "{rec}");
    let hits = query_db(
        &s.db_path(),
        "SELECT detector FROM mask_hits WHERE detector = 'acme'",
    );
    assert!(!hits.is_empty(), "{}", s.log());
}

#[test]
fn reload_withdrawing_the_login_principal_ends_the_session() {
    let s = start(&policy(), "");
    let u = s.user("alice", &[]);
    let t = ssh_tt(&s, &u);
    shell_works(&s, &t, "before");
    // alice keeps her role, shell and exec, but may now log in as ops-alice only.
    set_policy(&s, &policy().replace("{subject}", "ops-{subject}"), reloads);
    let why =
        "sallyport: session ended: policy reloaded: login 'alice' is no longer a granted principal";
    t.wait_for(WAIT, |p| p.contains(why))
        .unwrap_or_else(|p| panic!("no end message on the terminal\n{p}\n{}", s.log()));
    let row = ended_session(&s, "shell");
    assert!(killed(&row), "{row:#}");
    let ev = events(&s, "session-revoked");
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert!(ev[0][3].contains("role 'ops'"), "{ev:?}");
}

#[test]
fn an_exec_approved_after_a_reload_that_denies_it_never_runs() {
    let s = start(
        &policy().replace(
            "allow = [\"*\"]\n",
            "allow = [\"*\"]\napprove = [\"touch *needs-ok*\"]\n",
        ),
        "",
    );
    let u = s.user("alice", &[]);
    let file = s.dir.path().join("needs-ok-1");
    let mut client = Proc::spawn(
        "ssh-approve",
        s.ssh(&u, &[&format!("touch {}", file.display())]),
        s.dir.path(),
    );
    let id = wait_for(WAIT, || {
        let rows = query_db(
            &s.db_path(),
            "SELECT id FROM approvals WHERE status = 'pending'",
        );
        rows.into_iter().next().map(|r| r[0].clone())
    })
    .unwrap_or_else(|| panic!("no pending approval\n{}", s.log()));

    set_policy(
        &s,
        &policy().replace(
            "allow = [\"*\"]\n",
            "allow = [\"*\"]\ndeny = [\"touch *\"]\n",
        ),
        reloads,
    );
    s.cli(&["approvals", "approve", &id, "--as", "bob"])
        .success();

    let st = client
        .wait_timeout(WAIT)
        .unwrap_or_else(|| panic!("ssh still running\n{}", s.log()));
    assert_eq!(st.code(), Some(126), "{}", client.log());
    let out = client.log();
    assert!(
        out.contains("sallyport: blocked: policy reloaded: the command is now denied (")
            && out.contains("exec.deny 'touch *'"),
        "{out}"
    );
    assert!(!file.exists(), "the command ran");
    let ev = query_db(
        &s.db_path(),
        "SELECT reason FROM events WHERE kind = 'command-blocked'",
    );
    assert!(
        ev.iter().any(|r| r[0].starts_with("policy reloaded:")),
        "{ev:?}"
    );
}

#[test]
fn max_sessions_caps_open_sessions_per_identity_and_frees_the_slot_on_close() {
    let s = start(
        &policy().replace("pty = true", "pty = true\nmax_sessions = 1"),
        "",
    );
    let u = s.user("alice", &[]);
    // One session held open.
    let mut held = Proc::spawn("held", s.ssh(&u, &["sleep 300"]), s.dir.path());
    wait_for(WAIT, || {
        session_rows(&s)
            .into_iter()
            .find(|r| r["kind"] == "exec" && !r["ended_at"].is_string())
    })
    .unwrap_or_else(|| panic!("the held session never started\n{}", s.log()));
    // The second is refused, says why, and is audited; nothing runs.
    let side = s.dir.path().join("second-ran");
    let r = s.run_ssh(&u, &[&format!("touch {}", side.display())], None);
    assert_ne!(r.code(), Some(0), "{}", r.explain());
    assert!(
        r.stderr().contains("too many open sessions") && r.stderr().contains("max_sessions = 1"),
        "{}",
        r.explain()
    );
    assert!(!side.exists(), "the refused session ran");
    let ev = events(&s, "session-limit");
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0][2], "deny");
    assert!(ev[0][3].contains("p.toml:2 role 'ops'"), "{ev:?}");
    // Closing the held session gives the slot back.
    held.kill();
    ended_session(&s, "exec");
    let r = wait_for(WAIT, || {
        let r = s.run_ssh(&u, &[&format!("touch {}", side.display())], None);
        (r.code() == Some(0)).then_some(r)
    })
    .unwrap_or_else(|| panic!("the slot was never given back\n{}", s.log()));
    assert!(side.exists(), "{}", r.explain());
}
