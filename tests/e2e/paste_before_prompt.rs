//! A multi-line paste that reaches the line guard before the shell has drawn
//! its first prompt (issue 5: "multi-line pastes are checked line by line").
//! Real OpenSSH (`ssh -tt`) in tmux, a real bash with sallyport's rcfile.
//!
//! "Before the first prompt" is made certain rather than raced: the session
//! shell is a `bash` wrapper that waits for a gate file before it becomes
//! bash (like a slow `/etc/profile` would), so the paste is sent and handled
//! while nothing has drawn a prompt or asked for bracketed paste yet. Only
//! once the guard has refused the denied line is the gate opened; the
//! terminal still holds what was typed ahead, and bash runs it.
//!
//! Each pasted line must be checked on its own: the allowed lines before the
//! denied one run and are audited `command-allowed` one by one, the denied
//! line never runs (its side-effect file stays absent), and nothing after it
//! runs either (a paste stops at its first refused line).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::*;

/// Everything allowed but `touch *blocked*`.
fn policy() -> String {
    policies::local_role(
        "lines",
        "",
        "[role.exec]\nallow = [\"*\"]\ndeny = [\"touch *blocked*\"]\n",
    )
}

const T: Duration = Duration::from_secs(30);

/// A server whose session shell is a gated bash (see the module doc); the
/// gate files live in `<dir>/gate`.
fn start_gated() -> (Server, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("gate");
    let bin = dir.path().join("slowshell");
    std::fs::create_dir_all(&gate).unwrap();
    std::fs::create_dir_all(&bin).unwrap();
    // Named `bash` so the session starts it with sallyport's rcfile.
    let wrapper = bin.join("bash");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\n: > '{g}/started'\nwhile [ ! -e '{g}/go' ]; do sleep 0.05; done\nexec /bin/bash \"$@\"\n",
            g = gate.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let s = Server::start_in(
        dir,
        ServerOpts {
            policies: vec![("lines.toml".into(), policy())],
            ssh_extra: format!("shell = {:?}", wrapper.display().to_string()),
            ..Default::default()
        },
    );
    (s, gate)
}

/// `ssh -tt` in tmux, returned once the session's shell process runs (so
/// the client is connected, its terminal raw) but before bash exists.
fn connect(s: &Server, gate: &Path) -> Tmux {
    let u = s.user("alice", &[]);
    let tmux = Tmux::start(s.dir.path(), 160, 50, &shell_line(&s.ssh(&u, &["-tt"])));
    wait_for(T, || gate.join("started").exists().then_some(()))
        .unwrap_or_else(|| panic!("the session shell never started\n{}", s.log()));
    tmux
}

/// Four side-effect files, one per pasted line: allowed, allowed, denied,
/// allowed.
fn files(s: &Server) -> [PathBuf; 4] {
    let d = s.dir.path().join("scratch");
    std::fs::create_dir_all(&d).unwrap();
    [
        d.join("early-1"),
        d.join("early-2"),
        d.join("blocked-early-3"),
        d.join("early-4"),
    ]
}

fn paste_text(f: &[PathBuf; 4], eol: &str) -> String {
    f.iter()
        .map(|p| format!("touch {}{eol}", p.display()))
        .collect()
}

/// Hex arguments for `tmux send-keys -H` (exact bytes to the terminal).
fn hex(bytes: &[u8]) -> Vec<String> {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// After the refusal: open the gate, let bash run what the terminal holds,
/// and check files and the audit log.
fn open_gate_and_check(s: &Server, tmux: &Tmux, gate: &Path, f: &[PathBuf; 4]) {
    // The guard answered the denied line before any prompt existed.
    let screen = tmux
        .wait_for(T, |t| t.contains("sallyport: blocked:"))
        .unwrap_or_else(|t| panic!("the denied line was not refused:\n{t}\n{}", s.log()));
    assert!(screen.contains("blocked-early-3"), "{screen}");
    std::fs::write(gate.join("go"), "").unwrap();
    // The shell starts and runs the lines typed ahead of it.
    tmux.line("echo ready-$((40+2))-after");
    tmux.wait_for(T, |t| {
        t.lines().any(|l| l.trim_end().ends_with("ready-42-after"))
    })
    .unwrap_or_else(|t| panic!("shell not usable:\n{t}\n{}", s.log()));
    assert!(
        f[0].exists() && f[1].exists(),
        "the allowed lines before the denied one did not run\n{}\n{}",
        tmux.capture(),
        s.log()
    );
    assert!(!f[2].exists(), "the denied pasted line ran");
    assert!(!f[3].exists(), "a line pasted after the denied one ran");

    tmux.line("exit");
    let sess = wait_for(T, || {
        let v = s.sessions_json();
        let sess = v.as_array()?.first()?.clone();
        sess["ended_at"].is_string().then_some(sess)
    })
    .unwrap_or_else(|| panic!("session never ended\n{}", s.log()));
    let rows = query_db(
        &s.db_path(),
        &format!(
            "SELECT kind, detail FROM events WHERE session_id = '{}'
             AND kind LIKE 'command-%' AND detail LIKE '%early-%' ORDER BY id",
            sess["id"].as_str().unwrap()
        ),
    );
    let want: Vec<Vec<String>> = vec![
        vec![
            "command-allowed".into(),
            format!("touch {}", f[0].display()),
        ],
        vec![
            "command-allowed".into(),
            format!("touch {}", f[1].display()),
        ],
        vec![
            "command-blocked".into(),
            format!("touch {}", f[2].display()),
        ],
    ];
    assert_eq!(rows, want, "each pasted line is checked and audited alone");
    assert!(!f[2].exists() && !f[3].exists());
}

#[test]
fn bracketed_paste_before_the_first_prompt_is_checked_line_by_line() {
    let (s, gate) = start_gated();
    let f = files(&s);
    let tmux = connect(&s, &gate);
    // What a client sends for a paste in bracketed-paste mode, CR line ends
    // (terminals send Enter as CR), in one write.
    let mut bytes = b"\x1b[200~".to_vec();
    bytes.extend_from_slice(paste_text(&f, "\r").as_bytes());
    bytes.extend_from_slice(b"\x1b[201~");
    let mut args = vec![
        "send-keys".to_string(),
        "-t".into(),
        "t".into(),
        "-H".into(),
    ];
    args.extend(hex(&bytes));
    tmux.run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    open_gate_and_check(&s, &tmux, &gate, &f);
}

#[test]
fn plain_paste_before_the_first_prompt_is_checked_line_by_line() {
    // No shell has asked for bracketed paste yet, so the terminal sends the
    // pasted lines as typed keys: four lines and four Enters in one chunk.
    let (s, gate) = start_gated();
    let f = files(&s);
    let tmux = connect(&s, &gate);
    tmux.run(&["set-buffer", "-b", "p", &paste_text(&f, "\n")]);
    // Without -p: no brackets (tmux turns the line ends into CR, as a
    // terminal does).
    tmux.run(&["paste-buffer", "-b", "p", "-t", "t"]);
    open_gate_and_check(&s, &tmux, &gate, &f);
}
