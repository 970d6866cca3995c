//! `sallyport approvals` against a real audit database, decided from another
//! process while a session-side waiter polls: approve, deny, no
//! self-approval, no second decision.

use std::process::Command;
use std::time::Duration;

use sallyport::audit::Store;
use sallyport::guard::approval::{self, Kind, Outcome, Request};
use sallyport::identity::Identity;

use crate::support::{Run, bin, run_cmd};

fn cli(data: &std::path::Path, args: &[&str]) -> Run {
    let mut cmd = Command::new(bin());
    cmd.arg("--data-dir").arg(data).args(args);
    cmd.env_remove("SALLYPORT_CONFIG");
    run_cmd(cmd, None, Duration::from_secs(60), String::new())
}

fn request(store: &Store, text: &str) -> String {
    approval::create(
        store,
        &Request {
            requester: Identity {
                issuer: "corp".into(),
                subject: "alice".into(),
                on_behalf_of: None,
                ..Identity::default()
            },
            kind: Kind::Exec,
            text: text.into(),
            session_id: Some("sess-e2e".into()),
            reason: "role 'dev' exec approve 'kubectl delete *'".into(),
            timeout: Duration::from_secs(120),
        },
    )
    .unwrap()
    .id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_cli_decides_for_a_waiting_session() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    // Let the CLI create the database first (migrations), then share it.
    cli(&data, &["approvals", "list"]).success();
    let store = Store::open(&data.join("audit.db")).unwrap();
    let id = request(&store, "kubectl delete ns staging");

    let listed = cli(&data, &["approvals", "list"]).success();
    assert!(listed.stdout().contains(&id), "{}", listed.explain());
    let json: serde_json::Value = serde_json::from_str(
        &cli(&data, &["approvals", "list", "--json"])
            .success()
            .stdout(),
    )
    .unwrap();
    assert_eq!(json[0]["id"], id.as_str());
    assert_eq!(json[0]["status"], "pending");

    // The requester cannot approve their own request.
    let own = cli(&data, &["approvals", "approve", &id, "--as", "alice"]).failure();
    assert!(own.stderr().contains("self-approval"), "{}", own.explain());

    let waiter = {
        let store = store.clone();
        let id = id.clone();
        tokio::spawn(async move {
            approval::wait(&store, &id, Duration::from_secs(60), std::future::pending()).await
        })
    };
    let ok = cli(
        &data,
        &[
            "approvals",
            "approve",
            &id,
            "--as",
            "bob",
            "--reason",
            "ticket 42",
        ],
    )
    .success();
    assert!(
        ok.stdout().contains("approved by local:bob"),
        "{}",
        ok.explain()
    );
    assert_eq!(
        waiter.await.unwrap().unwrap(),
        Outcome::Approved {
            by: "local:bob".into()
        }
    );
    // Decided once only.
    cli(&data, &["approvals", "deny", &id, "--as", "carol"]).failure();

    // A denial reaches the waiter with its reason.
    let id2 = request(&store, "kubectl delete ns prod");
    let waiter = {
        let store = store.clone();
        let id2 = id2.clone();
        tokio::spawn(async move {
            approval::wait(
                &store,
                &id2,
                Duration::from_secs(60),
                std::future::pending(),
            )
            .await
        })
    };
    cli(
        &data,
        &[
            "approvals",
            "deny",
            &id2,
            "--as",
            "bob",
            "--reason",
            "not in prod",
        ],
    )
    .success();
    assert_eq!(
        waiter.await.unwrap().unwrap(),
        Outcome::Denied {
            by: "local:bob".into(),
            reason: Some("not in prod".into())
        }
    );
    let all = cli(&data, &["approvals", "list", "--all", "--json"]).success();
    let all: serde_json::Value = serde_json::from_str(&all.stdout()).unwrap();
    assert_eq!(all.as_array().map(Vec::len), Some(2));
    assert!(
        cli(&data, &["approvals", "list"])
            .success()
            .stdout()
            .contains("no pending")
    );
}
