//! Secret masking in sessions through real OpenSSH: a `live` policy masks
//! what the client sees and the recording (read back with `asciinema cat`);
//! a non-live one masks only the recording; secrets split across reads and
//! a PEM block split across an idle gap stay masked; pty shells are masked
//! too; every hit is audited (detector and offset, never the secret) and
//! listed by `sessions show`; commands are stored masked; a policy whose
//! masking cannot be compiled refuses the session.

use std::path::Path;
use std::time::Duration;

use crate::support::*;

const AWS: &str = "AKIAIOSFODNN7EXAMPLE";
const GH: &str = "ghp_a1B2a1B2a1B2a1B2a1B2a1B2a1B2a1B2a1B2";
const PG_PW: &str = "s3cr3tpw";
const PEM_BODY: [&str; 2] = [
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW",
    "QyNTUxOQAAACDbsl/9f6v1+UX3Q2Tlrp8cm/Bzo1d==",
];

/// The secrets file: one secret per line, each with readable context.
fn secrets_text() -> String {
    format!(
        "aws key {AWS} here\n\
         remote token {GH} ok\n\
         DATABASE_URL=postgres://app:{PG_PW}@db.prod:5432/app\n\
         -----BEGIN OPENSSH PRIVATE KEY-----\n{}\n{}\n-----END OPENSSH PRIVATE KEY-----\n\
         done\n",
        PEM_BODY[0], PEM_BODY[1]
    )
}

/// Every secret value that must never show where masking applies.
fn secret_values() -> Vec<&'static str> {
    vec![AWS, GH, &GH[4..], PG_PW, PEM_BODY[0], PEM_BODY[1]]
}

#[track_caller]
fn assert_masked(what: &str, text: &str, context: &str) {
    for s in secret_values() {
        assert!(
            !text.contains(s),
            "{what} shows secret {s:?}:\n{text}\n{context}"
        );
    }
}

fn policy(live: bool, extra_mask: &str) -> String {
    policies::local_role(
        "maskers",
        "",
        &format!(
            r#"[role.mask]
live = {live}
detectors = ["all"]
{extra_mask}
[role.exec]
allow = ["*"]
deny = ["curl *"]
"#
        ),
    )
}

fn server(live: bool) -> Server {
    Server::start_with(ServerOpts {
        policies: vec![("mask.toml".into(), policy(live, ""))],
        ..Default::default()
    })
}

/// The newest session row.
fn last_session(s: &Server) -> serde_json::Value {
    s.sessions_json()[0].clone()
}

fn recording_text(sess: &serde_json::Value) -> String {
    asciinema_cat(Path::new(sess["recording"].as_str().unwrap())).unwrap()
}

#[test]
fn live_policy_masks_cat_output_recording_and_audits_hits() {
    let s = server(true);
    let u = s.user("alice", &[]);
    let file = s.dir.path().join("secrets.txt");
    let text = secrets_text();
    std::fs::write(&file, &text).unwrap();

    let r = s
        .run_ssh(&u, &[&format!("cat {}", file.display())], None)
        .success();
    let out = r.stdout();
    assert_masked("client output (live)", &out, &r.explain());
    for d in [
        "aws-access-key-id",
        "github-token",
        "connection-string-password",
        "private-key",
    ] {
        assert!(
            out.contains(&format!("[MASKED:{d}]")),
            "no {d} marker:\n{out}"
        );
    }
    // Only the secrets went: the context around them is intact.
    assert!(
        out.contains("aws key [MASKED:aws-access-key-id] here\n"),
        "{out}"
    );
    assert!(
        out.contains("postgres://app:[MASKED:connection-string-password]@db.prod:5432/app\n"),
        "{out}"
    );
    assert!(out.ends_with("done\n"), "{out}");

    // The recording, read back by the real asciinema, is what the client saw.
    let sess = last_session(&s);
    let rec = recording_text(&sess);
    assert_masked("recording", &rec, &s.log());
    assert_eq!(rec, out);

    // One audit row per secret, at the secret's byte offset, no secret text.
    let id = sess["id"].as_str().unwrap();
    let rows = query_db(
        &s.db_path(),
        &format!(
            "SELECT source, detector, offset, at, session_id FROM mask_hits WHERE session_id = '{id}' ORDER BY offset"
        ),
    );
    let got: Vec<(String, String, usize)> = rows
        .iter()
        .map(|r| (r[0].clone(), r[1].clone(), r[2].parse().unwrap()))
        .collect();
    let at = |needle: &str| text.find(needle).unwrap();
    assert_eq!(
        got,
        vec![
            ("output".into(), "aws-access-key-id".into(), at(AWS)),
            ("output".into(), "github-token".into(), at(GH)),
            (
                "output".into(),
                "connection-string-password".into(),
                at(PG_PW)
            ),
            ("output".into(), "private-key".into(), at("-----BEGIN")),
        ],
        "{}",
        s.log()
    );
    let all_hits = query_db(&s.db_path(), "SELECT * FROM mask_hits");
    assert_masked("mask_hits table", &format!("{all_hits:?}"), "");
    assert_eq!(sess["mask_hits"], 4, "{sess:#}");
    // Nothing secret in the server log either.
    assert_masked("server log", &s.log(), "");

    // sessions show --json lists the hits (detector, offset, time).
    let shown = s.cli(&["sessions", "show", id, "--json"]).success();
    let v: serde_json::Value = serde_json::from_str(&shown.stdout()).unwrap();
    let hits = v["mask_hits"].as_array().unwrap();
    assert_eq!(hits.len(), 4, "{v:#}");
    assert_eq!(hits[0]["detector"], "aws-access-key-id");
    assert_eq!(hits[0]["source"], "output");
    assert_eq!(hits[0]["offset"], at(AWS));
    assert!(hits.iter().all(|h| h["at"].is_string()), "{v:#}");
    assert!(v["approvals"].as_array().unwrap().is_empty(), "{v:#}");
    assert!(v["blocked"].as_array().unwrap().is_empty(), "{v:#}");
    assert_masked("sessions show --json", &shown.stdout(), "");
    // And the human form.
    let table = s.cli(&["sessions", "show", id]).success().stdout();
    assert!(
        table.contains("masking hits:") && table.contains("github-token at byte"),
        "{table}"
    );
}

#[test]
fn non_live_policy_client_sees_raw_recording_stays_masked() {
    let s = server(false);
    let u = s.user("alice", &[]);
    let file = s.dir.path().join("secrets.txt");
    let text = secrets_text();
    std::fs::write(&file, &text).unwrap();

    let r = s
        .run_ssh(&u, &[&format!("cat {}", file.display())], None)
        .success();
    // Not live: the client gets the bytes as they are, all of them.
    assert_eq!(r.stdout(), text);
    let sess = last_session(&s);
    let rec = recording_text(&sess);
    assert_masked("recording (non-live)", &rec, &s.log());
    assert!(rec.contains("[MASKED:github-token]"), "{rec}");
    assert!(rec.ends_with("done\n"), "{rec}");
    assert_eq!(sess["mask_hits"], 4, "{sess:#}");
    // bytes_out counts what the child wrote.
    assert_eq!(sess["bytes_out"], text.len());
}

#[test]
fn secret_split_across_reads_is_masked() {
    let s = server(true);
    let u = s.user("alice", &[]);
    // The token written in small pieces back to back (separate write(2)s,
    // so the server reads them in several chunks), for many lines: the
    // masker holds back a possible secret's start until the next read.
    let pieces: Vec<String> = GH
        .as_bytes()
        .chunks(7)
        .map(|c| format!("printf '%s' '{}'", std::str::from_utf8(c).unwrap()))
        .collect();
    let script = format!(
        "for i in 1 2 3 4 5 6 7 8 9 10; do printf 'line %s ' $i; {}; printf ' end\\n'; done",
        pieces.join("; ")
    );
    let r = s.run_ssh(&u, &[&script], None).success();
    let out = r.stdout();
    assert_masked("client output", &out, &r.explain());
    assert_eq!(
        out.matches("[MASKED:github-token] end\n").count(),
        10,
        "{out}"
    );
    let sess = last_session(&s);
    let rec = recording_text(&sess);
    assert_masked("recording", &rec, &s.log());
    assert_eq!(rec, out);
    assert_eq!(sess["mask_hits"], 10, "{sess:#}");
}

#[test]
fn pem_block_split_across_an_idle_gap_is_masked() {
    let s = server(true);
    let u = s.user("alice", &[]);
    // The output goes idle (the masker flushes) in the middle of the key
    // body; the "inside a key block" state survives the flush.
    let script = format!(
        "printf -- '-----BEGIN OPENSSH PRIVATE KEY-----\\n{}\\n'; sleep 0.5; \
         printf '{}\\n-----END OPENSSH PRIVATE KEY-----\\nafter\\n'",
        PEM_BODY[0], PEM_BODY[1]
    );
    let r = s.run_ssh(&u, &[&script], None).success();
    let out = r.stdout();
    assert_masked("client output", &out, &r.explain());
    assert!(out.starts_with("[MASKED:private-key]"), "{out}");
    assert!(out.ends_with("after\n"), "{out}");
    let rec = recording_text(&last_session(&s));
    assert_masked("recording", &rec, &s.log());
    assert_eq!(rec, out);
}

#[test]
fn pty_shell_output_is_masked_on_screen_and_in_the_recording() {
    let s = server(true);
    let u = s.user("alice", &[]);
    let file = s.dir.path().join("secrets.txt");
    std::fs::write(&file, secrets_text()).unwrap();
    let tmux = Tmux::start(s.dir.path(), 120, 40, &shell_line(&s.ssh(&u, &["-tt"])));
    tmux.line(&format!("cat {}; echo cat-finished", file.display()));
    let screen = tmux
        .wait_for(Duration::from_secs(30), |t| {
            t.lines().any(|l| l.trim() == "cat-finished")
        })
        .unwrap_or_else(|t| panic!("cat never finished:\n{t}\n{}", s.log()));
    assert_masked("terminal", &screen, &s.log());
    assert!(screen.contains("[MASKED:github-token]"), "{screen}");
    assert!(screen.contains("[MASKED:private-key]"), "{screen}");
    tmux.line("exit");
    let sess = wait_for(Duration::from_secs(30), || {
        let v = last_session(&s);
        v["ended_at"].is_string().then_some(v)
    })
    .unwrap_or_else(|| panic!("session never ended\n{}", s.log()));
    assert_eq!(sess["pty"], true);
    let rec = recording_text(&sess);
    assert_masked("pty recording", &rec, &s.log());
    assert!(rec.contains("[MASKED:aws-access-key-id]"), "{rec}");
    assert_eq!(sess["mask_hits"], 4, "{sess:#}");
}

#[test]
fn exec_command_is_audited_masked() {
    let s = server(true);
    let u = s.user("alice", &[]);
    // Allowed: the secret is in the command line itself.
    let cmd = format!("echo {GH} | wc -c");
    let r = s.run_ssh(&u, &[&cmd], None).success();
    assert_eq!(r.stdout().trim(), (GH.len() + 1).to_string());
    let sess = last_session(&s);
    let stored = sess["command"].as_str().unwrap();
    assert_eq!(stored, "echo [MASKED:github-token] | wc -c");
    let (header, _) = parse_cast(Path::new(sess["recording"].as_str().unwrap()));
    assert_eq!(header["command"], stored);
    let id = sess["id"].as_str().unwrap();
    let rows = query_db(
        &s.db_path(),
        &format!("SELECT source, detector, offset FROM mask_hits WHERE session_id = '{id}'"),
    );
    assert_eq!(
        rows,
        vec![vec![
            "command".to_string(),
            "github-token".into(),
            "5".into()
        ]]
    );
    assert_eq!(sess["mask_hits"], 1);

    // Denied: the audit event names the command, masked.
    let denied = format!("curl -H 'Authorization: token {GH}' https://example.invalid");
    let r = s.run_ssh(&u, &[&denied], None);
    assert_eq!(r.code(), Some(126), "{}", r.explain());
    let ev = query_db(
        &s.db_path(),
        "SELECT detail FROM events WHERE kind = 'command-blocked'",
    );
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_masked("blocked event", &ev[0][0], &s.log());
    assert!(ev[0][0].starts_with("curl -H"), "{ev:?}");
    assert_masked("server log", &s.log(), "");
    assert_masked(
        "sessions list",
        &s.cli(&["sessions", "list", "--json"]).success().stdout(),
        "",
    );
}

#[test]
fn unusable_masking_rule_refuses_the_session() {
    // The policy loader accepts this rule (it only compiles the regex); the
    // masker refuses the name. The session must not run unmasked.
    let s = Server::start_with(ServerOpts {
        policies: vec![(
            "mask.toml".into(),
            policy(
                true,
                r#"custom = [{ name = "acme token", regex = "acme_[a-z0-9]{8}" }]"#,
            ),
        )],
        ..Default::default()
    });
    let u = s.user("alice", &[]);
    let marker = s.dir.path().join("ran");
    let r = s.run_ssh(&u, &[&format!("touch {}", marker.display())], None);
    assert_eq!(r.code(), Some(126), "{}", r.explain());
    assert!(r.stderr().contains("masking rules"), "{}", r.explain());
    assert!(r.stderr().contains("acme token"), "{}", r.explain());
    assert!(!marker.exists(), "the command ran");
    let ev = query_db(
        &s.db_path(),
        "SELECT decision, detail FROM events WHERE kind = 'mask-config-failed'",
    );
    assert_eq!(ev.len(), 1, "{ev:?}\n{}", s.log());
    assert_eq!(ev[0][0], "deny");
    assert_eq!(query_db(&s.db_path(), "SELECT id FROM sessions").len(), 0);
}

#[test]
fn held_back_output_reaches_the_client_when_output_goes_idle() {
    let s = server(true);
    let u = s.user("alice", &[]);
    // "gh" could be the start of a GitHub token, so the masker holds it
    // back; the output then idles (no EOF for a minute): the idle flush
    // must release it rather than wait for more output.
    let mut client = Proc::spawn(
        "ssh-idle",
        s.ssh(&u, &["printf 'waiting gh'; sleep 60"]),
        s.dir.path(),
    );
    let seen = wait_for(Duration::from_secs(30), || {
        std::fs::read_to_string(&client.stdout)
            .ok()
            .filter(|t| t == "waiting gh")
    });
    assert!(
        seen.is_some(),
        "held-back bytes never flushed\n{}\n{}",
        client.log(),
        s.log()
    );
    client.kill();
}

#[test]
fn stderr_of_an_exec_is_masked_as_its_own_stream() {
    let s = server(true);
    let u = s.user("alice", &[]);
    // The same token half on stdout, whole on stderr: each stream is
    // masked on its own (the stdout half is not a secret and stays).
    let half = &GH[..12];
    let r = s
        .run_ssh(
            &u,
            &[&format!("printf '{half}\\n'; printf 'err {GH}\\n' >&2")],
            None,
        )
        .success();
    assert_eq!(r.stdout(), format!("{half}\n"));
    assert_eq!(r.stderr(), "err [MASKED:github-token]\n", "{}", r.explain());
    let sess = last_session(&s);
    let id = sess["id"].as_str().unwrap();
    let rows = query_db(
        &s.db_path(),
        &format!("SELECT source, detector, offset FROM mask_hits WHERE session_id = '{id}'"),
    );
    // The token is in the command line too (masked in `sessions.command`).
    let cmd_at = sess["command"]
        .as_str()
        .unwrap()
        .find("[MASKED:github-token]")
        .unwrap();
    let row = |a: &str, b: &str, c: usize| vec![a.to_string(), b.to_string(), c.to_string()];
    assert_eq!(
        rows,
        vec![
            row("command", "github-token", cmd_at),
            row("stderr", "github-token", 4)
        ]
    );
    let rec = recording_text(&sess);
    // Both streams are recorded (their order may shift by what each
    // masker held back until the end of the output).
    assert!(rec.contains("[MASKED:github-token]\n"), "{rec}");
    assert!(rec.contains(&format!("{half}\n")), "{rec}");
    assert_masked("recording", &rec, "");
}
