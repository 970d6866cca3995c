//! Command blocking and approvals in sessions, through real OpenSSH: a
//! denied exec never runs (its side-effect file stays absent) and exits 126,
//! however it is hidden (`sh -c`, `$(..)`, absolute path, `env`); an exec
//! that needs approval runs only after `sallyport approvals approve`, and a
//! denied or timed-out one never does; recordings carry "m" markers and the
//! audit log the decisions. Bad input (1 MB command, invalid UTF-8) is
//! refused cleanly without disturbing other sessions.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::support::*;

fn policy() -> String {
    policies::local_role(
        "guarded",
        "approval_timeout = \"4s\"\n",
        r#"[role.exec]
allow = ["*"]
deny = ["touch *blocked*", "re:^rm( |$)"]
approve = ["touch *needs-ok*"]
"#,
    )
}
fn start() -> Server {
    Server::start_with(ServerOpts {
        policies: vec![("guard.toml".into(), policy())],
        ..Default::default()
    })
}

/// A directory for side-effect files, readable by the session account (us).
fn scratch(s: &Server) -> PathBuf {
    let d = s.dir.path().join("scratch");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Rows of `sql` against the server's audit DB.
fn db(s: &Server, sql: &str) -> Vec<Vec<String>> {
    query_db(&s.db_path(), sql)
}

/// The "m" events of the recording of the session with this command prefix.
fn markers_of(s: &Server, session_id: &str) -> Vec<String> {
    let rows = db(
        s,
        &format!("SELECT recording FROM sessions WHERE id = '{session_id}'"),
    );
    let rec = rows.first().and_then(|r| r.first()).cloned().unwrap();
    let (_, events) = parse_cast(Path::new(&rec));
    events
        .into_iter()
        .filter(|(_, k, _)| k == "m")
        .map(|(_, _, d)| d)
        .collect()
}

#[test]
fn denied_exec_never_runs_however_it_is_hidden() {
    let s = start();
    let u = s.user("alice", &[]);
    let dir = scratch(&s);
    let cases: Vec<(String, PathBuf)> = (0..6)
        .map(|i| {
            let f = dir.join(format!("blocked-{i}"));
            let p = f.display().to_string();
            let cmd = match i {
                0 => format!("touch {p}"),
                1 => format!("sh -c 'touch {p}'"),
                2 => format!("echo $(touch {p})"),
                3 => format!("/usr/bin/touch {p}"),
                4 => format!("env X=1 touch {p}"),
                _ => format!("true && bash -c \"echo hi; touch {p}\""),
            };
            (cmd, f)
        })
        .collect();
    for (cmd, file) in &cases {
        let r = s.run_ssh(&u, &[cmd], None);
        assert_eq!(r.code(), Some(126), "{cmd}\n{}", r.explain());
        assert!(
            r.stderr().contains("sallyport: blocked by") && r.stderr().contains("touch *blocked*"),
            "{cmd}\n{}",
            r.explain()
        );
        assert!(!file.exists(), "{cmd} ran: {}", file.display());
    }
    // The same command outside the deny rule runs (the test can see side effects).
    let ok = dir.join("fine");
    s.run_ssh(&u, &[&format!("touch {}", ok.display())], None)
        .success();
    assert!(ok.exists());

    // Audit: one blocked session row and one command-blocked event per case,
    // each recording holding a "blocked" marker.
    let rows = db(
        &s,
        "SELECT s.id, e.detail, e.reason FROM sessions s JOIN events e ON e.session_id = s.id
         WHERE e.kind = 'command-blocked' AND s.exit_status = 126 ORDER BY s.started_at",
    );
    assert_eq!(rows.len(), cases.len(), "{rows:?}");
    for (row, (cmd, _)) in rows.iter().zip(&cases) {
        assert_eq!(&row[1], cmd);
        assert!(row[2].contains("touch *blocked*"), "{row:?}");
        let m = markers_of(&s, &row[0]);
        assert!(
            m.iter()
                .any(|l| l.starts_with("blocked: ") && l.contains("touch *blocked*")),
            "{m:?}"
        );
    }
}

/// Start `ssh alice@bastion CMD` in the background.
fn spawn_ssh(s: &Server, u: &User, cmd: &str) -> std::process::Child {
    s.ssh(u, &[cmd])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The id of the one pending approval request whose text contains `needle`.
fn pending_id(s: &Server, needle: &str) -> String {
    wait_for(Duration::from_secs(30), || {
        let r = s.cli(&["approvals", "list", "--json"]).success();
        let v: serde_json::Value = serde_json::from_str(&r.stdout()).ok()?;
        v.as_array()?
            .iter()
            .find(|a| a["request"].as_str().is_some_and(|t| t.contains(needle)))
            .and_then(|a| a["id"].as_str().map(String::from))
    })
    .unwrap_or_else(|| panic!("no pending approval for {needle}\n{}", s.log()))
}

fn finish(child: std::process::Child) -> (Option<i32>, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn approved_exec_runs_denied_and_expired_do_not() {
    let s = start();
    let u = s.user("alice", &[]);
    let dir = scratch(&s);

    // Approved: runs after the approver acts, with a marker naming them.
    let f1 = dir.join("needs-ok-1");
    let c1 = spawn_ssh(&s, &u, &format!("touch {} && echo done", f1.display()));
    let id1 = pending_id(&s, "needs-ok-1");
    assert!(!f1.exists(), "ran before approval");
    // Self-approval is refused; the request stays pending.
    s.cli(&["approvals", "approve", &id1, "--as", "alice"])
        .failure();
    s.cli(&["approvals", "approve", &id1, "--as", "bob"])
        .success();
    let (code, err) = finish(c1);
    assert_eq!(code, Some(0), "{err}\n{}", s.log());
    assert!(
        err.contains(&format!("waiting for approval {id1}"))
            && err.contains(&format!("sallyport approvals approve {id1}")),
        "{err}"
    );
    assert!(f1.exists());
    let sid = db(
        &s,
        &format!("SELECT session_id FROM approvals WHERE id = '{id1}'"),
    )[0][0]
        .clone();
    let m = markers_of(&s, &sid);
    assert!(
        m.iter()
            .any(|l| l.contains(&format!("waiting for approval {id1}"))),
        "{m:?}"
    );
    assert!(
        m.iter().any(|l| l.starts_with("approved by local:bob")),
        "{m:?}"
    );

    // Denied by an approver: never runs, 126, the reason reaches the user.
    let f2 = dir.join("needs-ok-2");
    let c2 = spawn_ssh(&s, &u, &format!("touch {}", f2.display()));
    let id2 = pending_id(&s, "needs-ok-2");
    s.cli(&[
        "approvals",
        "deny",
        &id2,
        "--as",
        "bob",
        "--reason",
        "not today",
    ])
    .success();
    let (code, err) = finish(c2);
    assert_eq!(code, Some(126), "{err}");
    assert!(err.contains("denied by local:bob: not today"), "{err}");
    assert!(!f2.exists());

    // Nobody decides within approval_timeout (4 s): expired = denied.
    let f3 = dir.join("needs-ok-3");
    let c3 = spawn_ssh(&s, &u, &format!("touch {}", f3.display()));
    let id3 = pending_id(&s, "needs-ok-3");
    let (code, err) = finish(c3);
    assert_eq!(code, Some(126), "{err}");
    assert!(err.contains(&format!("approval {id3} expired")), "{err}");
    assert!(!f3.exists());
    let st = db(
        &s,
        &format!("SELECT status FROM approvals WHERE id = '{id3}'"),
    );
    assert_eq!(st[0][0], "expired");
    // Blocked sessions are audited with their reason.
    let ev = db(
        &s,
        "SELECT reason FROM events WHERE kind = 'command-blocked' ORDER BY id",
    );
    assert_eq!(ev.len(), 2, "{ev:?}");
}

#[test]
fn closing_the_client_withdraws_a_pending_approval() {
    let s = start();
    let u = s.user("alice", &[]);
    let f = scratch(&s).join("needs-ok-w");
    let mut c = spawn_ssh(&s, &u, &format!("touch {}", f.display()));
    let id = pending_id(&s, "needs-ok-w");
    c.kill().unwrap();
    let _ = c.wait();
    let status = wait_for(Duration::from_secs(30), || {
        let st = db(
            &s,
            &format!("SELECT status FROM approvals WHERE id = '{id}'"),
        );
        let st = st.first()?.first()?.clone();
        (st != "pending").then_some(st)
    });
    assert_eq!(status.as_deref(), Some("withdrawn"), "{}", s.log());
    // Approving it now does nothing: it is closed.
    s.cli(&["approvals", "approve", &id, "--as", "bob"])
        .failure();
    assert!(!f.exists());
}

#[test]
fn huge_and_invalid_utf8_commands_are_refused_cleanly() {
    let s = start();
    let u = s.user("alice", &[]);
    let f = scratch(&s).join("blocked-big");
    // 1 MB: a denied command at the end of a long harmless prefix.
    // 18 arguments of 60 kB (one argv string may not exceed 128 KiB); ssh
    // joins them with spaces into one exec request of more than 1 MiB.
    let target = f.display().to_string();
    let chunk = "true; ".repeat(10_000);
    let mut args: Vec<&str> = vec![chunk.as_str(); 18];
    args.extend(["touch", target.as_str()]);
    assert!(args.iter().map(|a| a.len() + 1).sum::<usize>() > 1 << 20);
    let r = s.run_ssh(&u, &args, None);
    assert_ne!(r.code(), Some(0), "{}", r.explain());
    assert!(!f.exists());

    // Invalid UTF-8 in the exec request: OpenSSH passes the bytes through.
    let mut cmd = s.ssh(&u, &[]);
    {
        use std::os::unix::ffi::OsStrExt;
        cmd.arg(std::ffi::OsStr::from_bytes(b"rm -f /nonexistent\xff\xfe"));
    }
    let r = run_cmd(cmd, None, Duration::from_secs(60), s.log());
    assert_eq!(r.code(), Some(126), "{}", r.explain());

    // The server still serves others.
    let r = s.run_ssh(&u, &["echo still-here"], None).success();
    assert_eq!(r.stdout().trim(), "still-here");
}
