//! The interactive line guard, through real OpenSSH (`ssh -tt`) in tmux and
//! a real bash started with sallyport's rcfile: a denied line never runs —
//! typed, recalled from history, completed with Tab, or the second line of
//! a bracketed paste — and the user sees why; an approval-gated line runs
//! only once approved, and Ctrl-C withdraws it; a strict role refuses
//! lines with hidden control characters; the shell stays usable after
//! every refusal. Side effects are files in a scratch directory; every
//! wait polls the pane, a file or the audit database (no timing asserts).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::*;

const POLICY: &str = r#"
[[role]]
name = "lines"
[role.match]
issuer = "local"
[role.grant]
principals = ["{subject}"]
shell = true
exec = true
approval_timeout = "60s"
[role.exec]
allow = ["*"]
deny = ["touch *blocked*"]
approve = ["touch *needs-ok*"]
"#;

const T: Duration = Duration::from_secs(30);

fn start(strict: bool) -> Server {
    let mut policy = POLICY.to_string();
    if strict {
        policy = policy.replace("shell = true", "shell = true\nstrict = true");
    }
    Server::start_with(ServerOpts {
        policies: vec![("lines.toml".into(), policy)],
        ..Default::default()
    })
}

/// A scratch directory for side-effect files.
fn scratch(s: &Server) -> PathBuf {
    let d = s.dir.path().join("scratch");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// An interactive `ssh -tt` session in tmux, waited on until the shell
/// answers (its prompt marks are up by then).
fn shell(s: &Server) -> Tmux {
    let u = s.user("alice", &[]);
    let tmux = Tmux::start(s.dir.path(), 160, 50, &shell_line(&s.ssh(&u, &["-tt"])));
    ready(s, &tmux, "0");
    tmux
}

/// Run a harmless line and wait for its output: the shell is at a prompt
/// and usable. `tag` makes the expected output unique in the pane.
fn ready(s: &Server, tmux: &Tmux, tag: &str) {
    tmux.line(&format!("echo ready-$((40+2))-{tag}"));
    let want = format!("ready-42-{tag}");
    // The output line; a prompt may precede it when the shell read keys
    // the terminal echoed before the shell started.
    tmux.wait_for(T, |t| t.lines().any(|l| l.trim_end().ends_with(&want)))
        .unwrap_or_else(|t| panic!("shell not usable ({tag}):\n{t}\n{}", s.log()));
}

/// Wait until the pane shows `needle` `n` times.
fn wait_shown(s: &Server, tmux: &Tmux, needle: &str, n: usize) -> String {
    tmux.wait_for(T, |t| t.matches(needle).count() >= n)
        .unwrap_or_else(|t| panic!("{needle:?} not shown {n}x:\n{t}\n{}", s.log()))
}

fn db(s: &Server, sql: &str) -> Vec<Vec<String>> {
    query_db(&s.db_path(), sql)
}

/// Exit the shell and return the ended session row (JSON).
fn finish(s: &Server, tmux: &Tmux) -> serde_json::Value {
    tmux.line("exit");
    wait_for(T, || {
        let v = s.sessions_json();
        let sess = v.as_array()?.first()?.clone();
        sess["ended_at"].is_string().then_some(sess)
    })
    .unwrap_or_else(|| panic!("session never ended\n{}", s.log()))
}

fn markers(sess: &serde_json::Value) -> Vec<String> {
    let (_, events) = parse_cast(Path::new(sess["recording"].as_str().unwrap()));
    events
        .into_iter()
        .filter(|(_, k, _)| k == "m")
        .map(|(_, _, d)| d)
        .collect()
}

/// The id of the pending approval whose request contains `needle`.
fn pending_id(s: &Server, needle: &str) -> String {
    wait_for(T, || {
        let r = s.cli(&["approvals", "list", "--json"]).success();
        let v: serde_json::Value = serde_json::from_str(&r.stdout()).ok()?;
        v.as_array()?
            .iter()
            .find(|a| a["request"].as_str().is_some_and(|t| t.contains(needle)))
            .and_then(|a| a["id"].as_str().map(String::from))
    })
    .unwrap_or_else(|| panic!("no pending approval for {needle}\n{}", s.log()))
}

#[test]
fn denied_typed_line_never_runs_and_the_shell_stays_usable() {
    let s = start(false);
    let dir = scratch(&s);
    let tmux = shell(&s);
    let blocked = dir.join("blocked-1");
    tmux.line(&format!("touch {}", blocked.display()));
    let screen = wait_shown(&s, &tmux, "sallyport: blocked:", 1);
    assert!(screen.contains("touch *blocked*"), "{screen}");
    ready(&s, &tmux, "after-block");
    assert!(!blocked.exists(), "the denied line ran");
    // Allowed lines run normally, and are audited as commands.
    let ok = dir.join("fine-1");
    tmux.line(&format!("touch {}", ok.display()));
    wait_for(T, || ok.exists().then_some(()))
        .unwrap_or_else(|| panic!("allowed line did not run\n{}", s.log()));
    let sess = finish(&s, &tmux);
    assert!(!blocked.exists());
    let id = sess["id"].as_str().unwrap();
    let rows = db(
        &s,
        &format!(
            "SELECT kind, detail, decision, reason FROM events WHERE session_id = '{id}'
             AND kind LIKE 'command-%' ORDER BY id"
        ),
    );
    let blocked_rows: Vec<_> = rows.iter().filter(|r| r[0] == "command-blocked").collect();
    assert_eq!(blocked_rows.len(), 1, "{rows:?}");
    assert_eq!(blocked_rows[0][1], format!("touch {}", blocked.display()));
    assert_eq!(blocked_rows[0][2], "deny");
    assert!(blocked_rows[0][3].contains("touch *blocked*"), "{rows:?}");
    assert!(
        rows.iter().any(|r| r[0] == "command-allowed"
            && r[1] == format!("touch {}", ok.display())
            && r[3].contains("read from the screen")),
        "allowed line not audited (or not read from the screen): {rows:?}"
    );
    let m = markers(&sess);
    assert!(
        m.iter()
            .any(|l| l.starts_with("blocked: touch ") && l.contains("touch *blocked*")),
        "{m:?}"
    );
    let played = asciinema_cat(Path::new(sess["recording"].as_str().unwrap())).unwrap();
    assert!(played.contains("sallyport: blocked: touch "), "{played}");
}

#[test]
fn denied_line_recalled_from_history_or_completed_with_tab_never_runs() {
    let s = start(false);
    let dir = scratch(&s);
    let tmux = shell(&s);

    // History: an allowed line that contains the denied one, recalled with
    // Up and edited at its start (Ctrl-A, Delete x5 removes "echo ").
    let hist = dir.join("blocked-hist");
    tmux.line(&format!("echo touch {}", hist.display()));
    wait_shown(&s, &tmux, &format!("\ntouch {}", hist.display()), 1);
    tmux.keys(&["Up", "C-a", "DC", "DC", "DC", "DC", "DC", "Enter"]);
    wait_shown(&s, &tmux, "sallyport: blocked:", 1);
    ready(&s, &tmux, "after-history");
    assert!(!hist.exists(), "the line recalled from history ran");

    // Tab: the typed text does not match the deny rule; the completed
    // path does. Tab, the last key and Enter go out together, so the line
    // is read only after the shell has drawn the completion.
    std::fs::create_dir_all(dir.join("blockedzone")).unwrap();
    let target = dir.join("blockedzone").join("x");
    tmux.run(&[
        "send-keys",
        "-t",
        "t",
        "-l",
        &format!("touch {}/blocke", dir.display()),
    ]);
    tmux.keys(&["Tab", "x", "Enter"]);
    let screen = wait_shown(&s, &tmux, "sallyport: blocked:", 2);
    assert!(screen.contains("blockedzone/x"), "{screen}");
    ready(&s, &tmux, "after-tab");
    assert!(!target.exists(), "the Tab-completed line ran");

    let sess = finish(&s, &tmux);
    let id = sess["id"].as_str().unwrap();
    let details: Vec<String> = db(
        &s,
        &format!(
            "SELECT detail FROM events WHERE session_id = '{id}' AND kind = 'command-blocked' ORDER BY id"
        ),
    )
    .into_iter()
    .map(|r| r[0].clone())
    .collect();
    assert_eq!(
        details,
        vec![
            format!("touch {}", hist.display()),
            format!("touch {}", target.display())
        ]
    );
}

#[test]
fn multi_line_paste_runs_up_to_the_first_denied_line() {
    let s = start(false);
    let dir = scratch(&s);
    let tmux = shell(&s);
    let (one, two, three) = (
        dir.join("paste-1"),
        dir.join("blocked-paste-2"),
        dir.join("paste-3"),
    );
    let text = format!(
        "touch {}\ntouch {}\ntouch {}\n",
        one.display(),
        two.display(),
        three.display()
    );
    // Paste at a prompt (a paste typed ahead of the prompt is checked
    // too, but may be refused whole).
    tmux.wait_for(T, |t| {
        t.lines()
            .rfind(|l| !l.trim().is_empty())
            .is_some_and(|l| l.trim_end().ends_with(['#', '$']))
    })
    .unwrap_or_else(|t| panic!("no prompt:\n{t}"));
    tmux.run(&["set-buffer", "-b", "p", &text]);
    // -p: bracketed, as the shell asked for it.
    tmux.run(&["paste-buffer", "-p", "-b", "p", "-t", "t"]);
    let screen = wait_shown(&s, &tmux, "sallyport: blocked:", 1);
    assert!(screen.contains("blocked-paste-2"), "{screen}");
    ready(&s, &tmux, "after-paste");
    assert!(
        one.exists(),
        "the first pasted line did not run\n{screen}\n{}",
        s.log()
    );
    assert!(!two.exists(), "the denied pasted line ran");
    assert!(!three.exists(), "a line after the denied one ran");
    finish(&s, &tmux);
}

#[test]
fn approval_gated_line_runs_once_approved_and_not_otherwise() {
    let s = start(false);
    let dir = scratch(&s);
    let tmux = shell(&s);

    // Approved by someone else: runs.
    let f1 = dir.join("needs-ok-1");
    tmux.line(&format!("touch {}", f1.display()));
    let id1 = pending_id(&s, "needs-ok-1");
    wait_shown(&s, &tmux, &format!("waiting for approval {id1}"), 1);
    assert!(!f1.exists(), "ran before approval");
    s.cli(&["approvals", "approve", &id1, "--as", "alice"])
        .failure();
    s.cli(&["approvals", "approve", &id1, "--as", "bob"])
        .success();
    wait_for(T, || f1.exists().then_some(()))
        .unwrap_or_else(|| panic!("approved line did not run\n{}", s.log()));
    ready(&s, &tmux, "after-approve");

    // Denied by the approver: never runs, the reason is shown.
    let f2 = dir.join("needs-ok-2");
    tmux.line(&format!("touch {}", f2.display()));
    let id2 = pending_id(&s, "needs-ok-2");
    s.cli(&[
        "approvals",
        "deny",
        &id2,
        "--as",
        "bob",
        "--reason",
        "not now",
    ])
    .success();
    wait_shown(&s, &tmux, "denied by local:bob: not now", 1);
    ready(&s, &tmux, "after-deny");
    assert!(!f2.exists());

    // Ctrl-C while waiting withdraws the request.
    let f3 = dir.join("needs-ok-3");
    tmux.line(&format!("touch {}", f3.display()));
    let id3 = pending_id(&s, "needs-ok-3");
    wait_shown(&s, &tmux, &format!("waiting for approval {id3}"), 1);
    tmux.keys(&["C-c"]);
    wait_shown(&s, &tmux, &format!("approval {id3} withdrawn"), 1);
    let st = db(
        &s,
        &format!("SELECT status FROM approvals WHERE id = '{id3}'"),
    );
    assert_eq!(st[0][0], "withdrawn");
    s.cli(&["approvals", "approve", &id3, "--as", "bob"])
        .failure();
    ready(&s, &tmux, "after-withdraw");
    assert!(!f3.exists());

    let sess = finish(&s, &tmux);
    let m = markers(&sess);
    assert!(
        m.iter().any(|l| l.starts_with("approved by local:bob")),
        "{m:?}"
    );
    let kinds: Vec<String> = db(
        &s,
        &format!(
            "SELECT kind FROM events WHERE session_id = '{}' AND kind LIKE 'command-%' AND detail LIKE '%needs-ok%' ORDER BY id",
            sess["id"].as_str().unwrap()
        ),
    )
    .into_iter()
    .map(|r| r[0].clone())
    .collect();
    assert_eq!(
        kinds,
        ["command-approved", "command-blocked", "command-blocked"],
        "{kinds:?}"
    );
    let kinds_of_approvals = db(&s, "SELECT kind FROM approvals ORDER BY created_at");
    assert!(
        kinds_of_approvals.iter().all(|r| r[0] == "line"),
        "{kinds_of_approvals:?}"
    );
}

#[test]
fn strict_role_refuses_hidden_control_characters_but_runs_plain_lines() {
    let s = start(true);
    let dir = scratch(&s);
    let tmux = shell(&s);
    // A plain line is read from the screen with certainty: it runs.
    let ok = dir.join("strict-ok");
    tmux.line(&format!("touch {}", ok.display()));
    wait_for(T, || ok.exists().then_some(()))
        .unwrap_or_else(|| panic!("plain line refused under strict\n{}", s.log()));
    // Ctrl-V ESC puts a raw escape into the line (shown as ^[): what runs
    // is not what the screen shows, so a strict role refuses it.
    let hidden = dir.join("hidden-1");
    tmux.run(&[
        "send-keys",
        "-t",
        "t",
        "-l",
        &format!("touch {} #", hidden.display()),
    ]);
    tmux.keys(&["C-v", "Escape", "Enter"]);
    let screen = wait_shown(&s, &tmux, "sallyport: blocked:", 1);
    assert!(screen.contains("grant.strict"), "{screen}");
    // Invalid UTF-8 typed into the line: no crash, the session goes on.
    tmux.run(&["send-keys", "-t", "t", "-H", "ff", "fe", "c3"]);
    tmux.keys(&["C-u"]);
    ready(&s, &tmux, "after-hostile");
    assert!(!hidden.exists(), "the line with hidden text ran");
    finish(&s, &tmux);
}

#[test]
fn without_bash_lines_are_checked_from_the_typed_keys() {
    // dash: no rcfile, no prompt marks, no bracketed paste.
    let s = Server::start_with(ServerOpts {
        policies: vec![("lines.toml".into(), POLICY.into())],
        ssh_extra: "shell = \"/bin/sh\"".into(),
        ..Default::default()
    });
    let dir = scratch(&s);
    let tmux = shell(&s);
    let blocked = dir.join("blocked-dash");
    // Typed with a correction: the line checked is the edited one.
    tmux.run(&[
        "send-keys",
        "-t",
        "t",
        "-l",
        &format!("touch {}XX", blocked.display()),
    ]);
    tmux.keys(&["BSpace", "BSpace", "Enter"]);
    wait_shown(&s, &tmux, "sallyport: blocked:", 1);
    ready(&s, &tmux, "after-block");
    assert!(!blocked.exists(), "the denied line ran under dash");
    let ok = dir.join("fine-dash");
    tmux.line(&format!("touch {}", ok.display()));
    wait_for(T, || ok.exists().then_some(()))
        .unwrap_or_else(|| panic!("allowed line did not run\n{}", s.log()));
    let sess = finish(&s, &tmux);
    let rows = db(
        &s,
        &format!(
            "SELECT detail, reason FROM events WHERE session_id = '{}' AND kind = 'command-allowed' AND detail LIKE '%fine-dash%'",
            sess["id"].as_str().unwrap()
        ),
    );
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(
        rows[0][1].contains("reconstructed from typed keys"),
        "{rows:?}"
    );
}

#[test]
fn closing_the_client_while_a_line_waits_withdraws_the_request() {
    let s = start(false);
    let dir = scratch(&s);
    let tmux = shell(&s);
    let f = dir.join("needs-ok-close");
    tmux.line(&format!("touch {}", f.display()));
    let id = pending_id(&s, "needs-ok-close");
    drop(tmux); // kills tmux and with it the ssh client
    let status = wait_for(T, || {
        let st = db(
            &s,
            &format!("SELECT status FROM approvals WHERE id = '{id}'"),
        );
        let st = st.first()?.first()?.clone();
        (st != "pending").then_some(st)
    });
    assert_eq!(status.as_deref(), Some("withdrawn"), "{}", s.log());
    s.cli(&["approvals", "approve", &id, "--as", "bob"])
        .failure();
    assert!(!f.exists());
}

#[test]
fn a_line_typed_while_the_shell_waits_without_a_prompt_is_audited_but_not_a_secret() {
    // `wait` is a builtin: the shell itself holds the terminal for 12 s
    // and draws no prompt. A line typed meanwhile is the shell's next
    // command (it runs once `wait` returns); the guard waits 5 s for a
    // prompt, then lets it through — and it must still be audited, since
    // nothing may run unrecorded. With echo off (`read -s`, a builtin too)
    // the typed keys are a secret and must not reach the audit log.
    let s = start(false);
    let dir = scratch(&s);
    let tmux = shell(&s);
    let ahead = dir.join("typed-ahead");
    tmux.line("sleep 12 & wait");
    tmux.line(&format!("touch {}", ahead.display()));
    wait_for(Duration::from_secs(60), || ahead.exists().then_some(()))
        .unwrap_or_else(|| panic!("the typed-ahead line never ran\n{}", s.log()));
    ready(&s, &tmux, "after-wait");

    tmux.line("read -s -t 20 v; echo got-${#v}");
    // The prompt of `read` draws nothing; give the builtin a moment to
    // switch echo off before typing.
    std::thread::sleep(Duration::from_millis(500));
    tmux.line("hunter2-secret");
    wait_shown(&s, &tmux, "got-14", 1);
    ready(&s, &tmux, "after-read");

    let sess = finish(&s, &tmux);
    let id = sess["id"].as_str().unwrap();
    let rows = db(
        &s,
        &format!("SELECT kind, detail, reason FROM events WHERE session_id = '{id}' ORDER BY id"),
    );
    assert!(
        rows.iter()
            .any(|r| r[0] == "command-allowed" && r[1] == format!("touch {}", ahead.display())),
        "the typed-ahead line ran without an audit row: {rows:?}"
    );
    assert!(
        !rows.iter().any(|r| r.iter().any(|c| c.contains("hunter2"))),
        "keys typed with echo off reached the audit log: {rows:?}"
    );
}
