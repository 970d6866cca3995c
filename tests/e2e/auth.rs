//! Authentication with the real OpenSSH client and certificates made by the
//! real `ssh-keygen`: each bad certificate is refused and leaves an audit row
//! (cases after OpenSSH regress/cert-userkey.sh); a good one gets in.

use std::path::PathBuf;

use crate::support::*;

fn user_ca(s: &Server) -> PathBuf {
    s.data_dir.join("keys").join("user_ca")
}

/// Try to log in as `login`; it must fail, and the newest auth_attempts row
/// must be a rejection whose reason contains `reason`.
#[track_caller]
fn assert_rejected(s: &Server, u: &User, login: &str, reason: &str) {
    let mut u = u.clone();
    u.name = login.to_string();
    let authed_q = "SELECT id FROM connections WHERE user IS NOT NULL";
    let authed_before = query_db(&s.db_path(), authed_q).len();
    let r = s.run_ssh(&u, &["echo in"], None);
    assert_ne!(r.code(), Some(0), "login must fail\n{}", r.explain());
    assert!(!r.stdout().contains("in"));
    // The row is written when the attempt is judged or, for certificates
    // russh refuses itself, when the connection ends: poll. (The client
    // also offers the bare key after its certificate; that has its own row.)
    let rows = wait_for(std::time::Duration::from_secs(10), || {
        let rows = query_db(
            &s.db_path(),
            "SELECT result, reason, user, method FROM auth_attempts ORDER BY id DESC",
        );
        // Match the login too: an earlier attempt's row (another user) may
        // carry the same reason while this one is still being written.
        rows.into_iter()
            .find(|r| r[1].contains(reason) && r[2] == login)
    })
    .unwrap_or_else(|| {
        panic!(
            "no rejection row containing {reason:?}: {:?}\n{}",
            query_db(
                &s.db_path(),
                "SELECT result, reason, user FROM auth_attempts"
            ),
            s.log()
        )
    });
    assert_eq!(rows[0], "rejected", "{rows:?}");
    assert_eq!(rows[2], login, "{rows:?}");
    assert_eq!(
        query_db(&s.db_path(), authed_q).len(),
        authed_before,
        "a connection authenticated"
    );
}

#[test]
fn wrong_principal_is_rejected() {
    let s = Server::start();
    let u = s.user("alice", &[]);
    assert_rejected(&s, &u, "root", "not among the certificate principals");
}

#[test]
fn certificate_of_another_ca_is_rejected() {
    let s = Server::start();
    let other = s.dir.path().join("other_ca");
    keygen(&other);
    let u = user_signed_by(s.dir.path(), "alice", &other, &[]);
    assert_rejected(&s, &u, "alice", "unknown CA");
}

#[test]
fn host_certificate_as_user_certificate_is_rejected() {
    let s = Server::start();
    let u = user_signed_by(s.dir.path(), "alice", &user_ca(&s), &["-h"]);
    // OpenSSH's client does not even offer a host certificate for user
    // authentication (it falls back to the bare key); ca::verify's unit test
    // covers a client that does. The login still fails and is audited.
    assert_rejected(&s, &u, "alice", "not authenticated");
}

#[test]
fn unknown_critical_option_is_rejected() {
    let s = Server::start();
    let u = user_signed_by(
        s.dir.path(),
        "alice",
        &user_ca(&s),
        &["-O", "critical:foo@example.com=bar"],
    );
    assert_rejected(&s, &u, "alice", "unknown critical option");
}

#[test]
fn source_address_elsewhere_is_rejected() {
    let s = Server::start();
    let u = user_signed_by(
        s.dir.path(),
        "alice",
        &user_ca(&s),
        &["-O", "source-address=10.9.9.9/32"],
    );
    assert_rejected(&s, &u, "alice", "source-address");
}

#[test]
fn expired_and_not_yet_valid_certificates_are_rejected() {
    let s = Server::start();
    // russh refuses these before our verifier sees them; the connection's
    // end still leaves a rejected row naming the login.
    let u = user_signed_by(s.dir.path(), "alice", &user_ca(&s), &["-V", "-2h:-1h"]);
    assert_rejected(&s, &u, "alice", "not authenticated");
    let u = user_signed_by(s.dir.path(), "bob", &user_ca(&s), &["-V", "+1h:+2h"]);
    assert_rejected(&s, &u, "bob", "not authenticated");
}

#[test]
fn plain_key_without_breakglass_file_is_rejected() {
    let s = Server::start();
    let key = s.dir.path().join("plain");
    keygen(&key);
    let u = User {
        name: "alice".into(),
        key,
        // No certificate: only the plain key is offered.
        cert: s.dir.path().join("absent-cert.pub"),
    };
    assert_rejected(&s, &u, "alice", "plain public keys are not accepted");
}

#[test]
fn revoked_certificate_is_rejected() {
    let s = Server::start();
    let u = s.user("alice", &["--json"]);
    let serial = query_db(&s.db_path(), "SELECT serial FROM certificates")[0][0].clone();
    s.run_ssh(&u, &["true"], None).success();
    let c = rusqlite::Connection::open(s.db_path()).unwrap();
    c.execute(
        "INSERT INTO revocations (at, serial, reason) VALUES ('2026-01-01T00:00:00Z', ?1, 'lost laptop')",
        [serial.parse::<i64>().unwrap()],
    )
    .unwrap();
    drop(c);
    assert_rejected(&s, &u, "alice", "revoked");
}

#[test]
fn good_certificate_logs_in_and_pty_needs_permit_pty() {
    let s = Server::start();
    let u = s.user("alice", &[]);
    let r = s.run_ssh(&u, &["echo in"], None).success();
    assert_eq!(r.stdout(), "in\n");
    let rows = query_db(
        &s.db_path(),
        "SELECT result, method, key_id FROM auth_attempts WHERE result = 'accepted'",
    );
    assert_eq!(
        rows,
        vec![vec![
            "accepted".to_string(),
            "certificate".into(),
            "oidc:local:alice".into()
        ]]
    );

    // Without permit-pty: the pty request is refused (and audited); with
    // -tt OpenSSH treats that as fatal.
    let np = s.user("nopty", &["--no-pty"]);
    let r = s.run_ssh(&np, &["-tt", "echo ran"], None);
    assert!(
        r.stderr().contains("PTY allocation request failed"),
        "{}",
        r.explain()
    );
    assert!(!r.stdout().contains("ran"), "{}", r.explain());
    // Without a pty request the same certificate runs commands.
    let r = s.run_ssh(&np, &["echo ran"], None).success();
    assert_eq!(r.stdout(), "ran\n");
    let ev = query_db(
        &s.db_path(),
        "SELECT detail FROM events WHERE kind = 'request-denied' AND detail = 'pty-req'",
    );
    assert_eq!(ev.len(), 1, "{ev:?}");
}

#[test]
fn force_command_replaces_the_request() {
    let s = Server::start();
    let u = s.user(
        "alice",
        &["--force-command", "echo forced:$SSH_ORIGINAL_COMMAND"],
    );
    let r = s.run_ssh(&u, &["echo asked"], None).success();
    assert_eq!(r.stdout(), "forced:echo asked\n", "{}", r.explain());
}

#[test]
fn breakglass_key_logs_in_and_policy_still_applies() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("admin");
    keygen(&key);
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let line = std::fs::read_to_string(format!("{}.pub", key.display())).unwrap();
    // keygen writes the comment "test".
    std::fs::write(data.join("authorized_keys"), line).unwrap();
    let s = Server::start_in(dir, ServerOpts::default());
    let u = User {
        name: "ops".into(),
        key,
        cert: s.dir.path().join("absent-cert.pub"),
    };
    // The placeholder policy grants nothing to the breakglass issuer: the
    // login succeeds, the command is refused with the rule named, exit 126.
    let r = s.run_ssh(&u, &["echo hi"], None);
    assert_eq!(r.code(), Some(126), "{}", r.explain());
    assert!(r.stderr().contains("not allowed"), "{}", r.explain());
    assert!(r.stderr().contains("default deny"), "{}", r.explain());
    assert_eq!(r.stdout(), "");
    let rows = query_db(
        &s.db_path(),
        "SELECT result, method, key_id FROM auth_attempts WHERE result = 'accepted'",
    );
    assert_eq!(
        rows,
        vec![vec![
            "accepted".to_string(),
            "publickey".into(),
            "test".into()
        ]]
    );
    let ident = query_db(
        &s.db_path(),
        "SELECT identity FROM connections WHERE user = 'ops'",
    );
    assert!(
        ident[0][0].contains("\"issuer\":\"breakglass\""),
        "{ident:?}"
    );
    let ev = query_db(
        &s.db_path(),
        "SELECT detail, decision FROM events WHERE kind = 'command-blocked'",
    );
    assert_eq!(ev, vec![vec!["echo hi".to_string(), "deny".into()]]);
}
