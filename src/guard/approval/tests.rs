//! Approval tests: decisions, no self-approval, expiry, withdrawal, scale.

use super::*;

fn ident(sub: &str) -> Identity {
    Identity {
        issuer: "corp".into(),
        subject: sub.into(),
        ..Identity::default()
    }
}

fn req(sub: &str, timeout: Duration) -> Request {
    Request {
        requester: ident(sub),
        kind: Kind::Exec,
        text: "kubectl delete ns staging".into(),
        session_id: Some("sess-1".into()),
        reason: "policies/a.toml:3 role 'dev' exec approve 'kubectl delete *'".into(),
        timeout,
    }
}

fn operator(name: &str) -> Approver {
    Approver {
        identity: Identity {
            issuer: "local".into(),
            subject: name.into(),
            ..Identity::default()
        },
        local_operator: true,
    }
}

#[test]
fn ids_are_short_and_readable() {
    let id = new_id();
    assert!(id.starts_with("apr-") && id.len() == 10, "{id}");
    assert_ne!(new_id(), new_id());
}

#[test]
fn self_approval_is_refused_and_audited() {
    let s = Store::in_memory().unwrap();
    let row = create(&s, &req("alice", Duration::from_secs(60))).unwrap();
    let err = decide(
        &s,
        &Policy::default(),
        &row.id,
        &operator("alice"),
        true,
        None,
    )
    .unwrap_err();
    assert!(matches!(err, Error::SelfApproval(_)), "{err}");
    assert_eq!(s.approval(&row.id).unwrap().unwrap().status, "pending");
    let n: i64 = s
        .lock()
        .query_row(
            "SELECT count(*) FROM events WHERE kind = 'approval-self-refused'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 1);
}

#[test]
fn remote_approver_needs_policy() {
    let s = Store::in_memory().unwrap();
    let row = create(&s, &req("alice", Duration::from_secs(60))).unwrap();
    let bob = Approver {
        identity: ident("bob"),
        local_operator: false,
    };
    // The placeholder policy names no approvers: refused.
    let err = decide(&s, &Policy::default(), &row.id, &bob, true, None).unwrap_err();
    assert!(matches!(err, Error::NotAllowed { .. }), "{err}");
    assert_eq!(s.approval(&row.id).unwrap().unwrap().status, "pending");
}

#[test]
fn decided_once_only() {
    let s = Store::in_memory().unwrap();
    let row = create(&s, &req("alice", Duration::from_secs(60))).unwrap();
    let o = decide(
        &s,
        &Policy::default(),
        &row.id,
        &operator("bob"),
        false,
        Some("not today"),
    )
    .unwrap();
    assert_eq!(
        o,
        Outcome::Denied {
            by: "local:bob".into(),
            reason: Some("not today".into())
        }
    );
    let err = decide(
        &s,
        &Policy::default(),
        &row.id,
        &operator("carol"),
        true,
        None,
    )
    .unwrap_err();
    assert!(matches!(err, Error::Closed { .. }), "{err}");
    assert!(matches!(
        decide(
            &s,
            &Policy::default(),
            "apr-nope",
            &operator("bob"),
            true,
            None
        ),
        Err(Error::NotFound(_))
    ));
}

#[tokio::test]
async fn wait_sees_an_approval_from_elsewhere() {
    let s = Store::in_memory().unwrap();
    let row = create(&s, &req("alice", Duration::from_secs(60))).unwrap();
    let s2 = s.clone();
    let id = row.id.clone();
    let approver = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        decide(&s2, &Policy::default(), &id, &operator("bob"), true, None)
    });
    let o = wait(&s, &row.id, Duration::from_secs(30), std::future::pending())
        .await
        .unwrap();
    assert_eq!(
        o,
        Outcome::Approved {
            by: "local:bob".into()
        }
    );
    assert!(approver.await.unwrap().is_ok());
}

#[tokio::test]
async fn timeout_expires_the_request() {
    let s = Store::in_memory().unwrap();
    let row = create(&s, &req("alice", Duration::from_secs(300))).unwrap();
    // The session's own deadline (shorter here) expires the request.
    let o = wait(
        &s,
        &row.id,
        Duration::from_millis(600),
        std::future::pending(),
    )
    .await
    .unwrap();
    assert_eq!(o, Outcome::Expired);
    assert_eq!(s.approval(&row.id).unwrap().unwrap().status, "expired");
    // Too late to approve now.
    assert!(
        decide(
            &s,
            &Policy::default(),
            &row.id,
            &operator("bob"),
            true,
            None
        )
        .is_err()
    );
}

#[tokio::test]
async fn cancel_withdraws() {
    let s = Store::in_memory().unwrap();
    let row = create(&s, &req("alice", Duration::from_secs(60))).unwrap();
    let o = wait(&s, &row.id, Duration::from_secs(60), async {})
        .await
        .unwrap();
    assert_eq!(o, Outcome::Withdrawn);
    assert_eq!(s.approval(&row.id).unwrap().unwrap().status, "withdrawn");
}

#[test]
fn expired_by_clock_cannot_be_approved() {
    let s = Store::in_memory().unwrap();
    let row = create(&s, &req("alice", Duration::ZERO)).unwrap();
    let err = decide(
        &s,
        &Policy::default(),
        &row.id,
        &operator("bob"),
        true,
        None,
    )
    .unwrap_err();
    assert!(matches!(err, Error::Expired(_)), "{err}");
    assert_eq!(s.approval(&row.id).unwrap().unwrap().status, "expired");
}

#[test]
fn ten_thousand_pending_stay_fast() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("audit.db")).unwrap();
    {
        let mut conn = s.lock();
        let tx = conn.transaction().unwrap();
        for i in 0..10_000 {
            tx.execute(
                "INSERT INTO approvals (id, created_at, requester, subject, kind, request, reason, status, expires_at)
                 VALUES (?1, ?2, '{}', 'alice', 'exec', 'x', 'r', 'pending', '2999-01-01T00:00:00.000Z')",
                rusqlite::params![format!("apr-{i:06}"), format!("2026-01-01T00:00:{:02}.{:03}Z", i / 1000, i % 1000)],
            )
            .unwrap();
        }
        tx.commit().unwrap();
    }
    // Paging walks all of them, 500 at a time.
    let mut seen = 0;
    let mut after: Option<(String, String)> = None;
    loop {
        let page = s
            .list_approvals(
                Some("pending"),
                after.as_ref().map(|(a, b)| (a.as_str(), b.as_str())),
                500,
            )
            .unwrap();
        if page.is_empty() {
            break;
        }
        seen += page.len();
        after = page.last().map(|r| (r.created_at.clone(), r.id.clone()));
    }
    assert_eq!(seen, 10_000);
    // Lookups and listing use indexes, not scans.
    let plan: Vec<String> = s
        .lock()
        .prepare("EXPLAIN QUERY PLAN SELECT id FROM approvals WHERE status = 'pending' AND (created_at, id) > ('', '') ORDER BY created_at, id LIMIT 50")
        .unwrap()
        .query_map([], |r| r.get::<_, String>(3))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(
        plan.iter().any(|p| p.contains("approvals_status_created")),
        "{plan:?}"
    );
    // And a new request among them still works end to end.
    let row = create(&s, &req("alice", Duration::from_secs(60))).unwrap();
    decide(
        &s,
        &Policy::default(),
        &row.id,
        &operator("bob"),
        true,
        None,
    )
    .unwrap();
}
