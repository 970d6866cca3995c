//! Recordings and the `sessions` command: what the client saw is what
//! `asciinema cat` replays; `sessions list/show` report the sessions just run.

use std::path::Path;

use crate::support::*;

#[test]
fn recording_reproduces_client_output_and_sessions_lists_it() {
    let s = Server::start();
    let u = s.user("alice", &[]);
    let r = s.run_ssh(
        &u,
        &["printf 'line one\\nline two\\n'; printf 'ünïcødé ✓\\n'; exit 3"],
        None,
    );
    assert_eq!(r.code(), Some(3), "{}", r.explain());
    s.run_ssh(&u, &["true"], None).success();

    let v = s.sessions_json();
    let list = v.as_array().unwrap();
    assert_eq!(list.len(), 2, "{v:#}");
    // Newest first.
    assert_eq!(list[0]["command"], "true");
    assert_eq!(list[0]["exit_status"], 0);
    let first = &list[1];
    assert_eq!(first["exit_status"], 3);
    assert_eq!(first["kind"], "exec");
    assert_eq!(first["subject"], "alice");
    assert_eq!(first["user"], "alice");
    assert_eq!(first["end_reason"], "exited");
    assert_eq!(
        first["bytes_out"].as_i64().unwrap() as usize,
        r.stdout().len()
    );
    let rec = first["recording"].as_str().unwrap();
    assert!(rec.ends_with(&format!("{}.cast", first["id"].as_str().unwrap())));

    // The file: asciicast v2, title names identity and session, "o" events.
    let (header, events) = parse_cast(Path::new(rec));
    assert_eq!(header["version"], 2);
    let title = header["title"].as_str().unwrap();
    assert!(
        title.contains("alice") && title.contains(first["id"].as_str().unwrap()),
        "{title}"
    );
    assert!(events.iter().all(|(_, k, _)| k == "o"), "{events:?}");
    let joined: String = events.iter().map(|(_, _, d)| d.as_str()).collect();
    assert_eq!(joined, r.stdout());
    // And the real tool agrees.
    assert_eq!(asciinema_cat(Path::new(rec)).unwrap(), r.stdout());

    // show: all columns plus events, by id prefix.
    let id = first["id"].as_str().unwrap();
    let shown = s.cli(&["sessions", "show", &id[..30], "--json"]).success();
    let sv: serde_json::Value = serde_json::from_str(&shown.stdout()).unwrap();
    assert_eq!(sv["session"]["id"], id);
    assert!(sv["events"].is_array());
    let table = s.cli(&["sessions", "list"]).success().stdout();
    assert!(table.contains(id) && table.contains("exec"), "{table}");
    // play, piped (no terminal): prints what the client saw.
    let played = s.cli(&["sessions", "play", id]).success();
    assert_eq!(played.stdout(), r.stdout());
    s.cli(&["sessions", "show", "does-not-exist"]).failure();
}

#[test]
fn unrecordable_session_is_refused_and_audited() {
    let s = Server::start();
    let u = s.user("alice", &[]);
    let rec_dir = s.data_dir.join("recordings");
    // A file where the day directory should go: creating the recording fails.
    let day = time::OffsetDateTime::now_utc();
    let day = format!(
        "{:04}-{:02}-{:02}",
        day.year(),
        u8::from(day.month()),
        day.day()
    );
    std::fs::write(rec_dir.join(&day), b"not a dir").unwrap();
    let r = s.run_ssh(&u, &["echo should-not-run"], None);
    assert_ne!(r.code(), Some(0), "{}", r.explain());
    assert!(!r.stdout().contains("should-not-run"));
    let rows = query_db(
        &s.db_path(),
        "SELECT kind, decision FROM events WHERE kind = 'recording-failed'",
    );
    assert_eq!(rows.len(), 1, "{rows:?}\n{}", s.log());
    assert_eq!(query_db(&s.db_path(), "SELECT id FROM sessions").len(), 0);
}
