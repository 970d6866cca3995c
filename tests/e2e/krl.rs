//! Revocation: `sallyport cert revoke` by serial, key id and subject, `cert
//! list`, and `sallyport ca krl` producing an OpenSSH KRL that `ssh-keygen
//! -Q` reads and a real sshd's `RevokedKeys` enforces at the next connection.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

use crate::login::Sshd;
use crate::oidc::{Api, Idp, keypair};

struct Holder {
    key: PathBuf,
    cert: PathBuf,
    serial: u64,
}

fn issue(idp: &Idp, api: &Api, dir: &Path, sub: &str) -> Holder {
    let (key, line) = keypair(dir, sub);
    let (s, v) = api.request(
        &idp.mint(json!({"claims": {"sub": sub}})),
        json!({"public_key": line}),
    );
    assert_eq!(s, 200, "{v}");
    let cert = PathBuf::from(format!("{}-cert.pub", key.display()));
    std::fs::write(&cert, format!("{}\n", v["certificate"].as_str().unwrap())).unwrap();
    Holder {
        key,
        cert,
        serial: v["serial"].as_u64().unwrap(),
    }
}

fn query(krl: &Path, cert: &Path) -> (bool, String) {
    let out = Command::new("ssh-keygen")
        .arg("-Q")
        .arg("-f")
        .arg(krl)
        .arg(cert)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (text.contains("REVOKED"), text)
}

#[test]
fn revoke_by_serial_key_id_subject_krl_and_sshd_next_connection() {
    let idp = Idp::start();
    let api = Api::start(&idp);
    let work = tempfile::tempdir().unwrap();
    let d = work.path();
    let krl = d.join("revoked.krl");
    api.cli(&["ca", "krl", "-o", krl.to_str().unwrap()])
        .success();
    let sshd = Sshd::start(&api, &["alice", "bob", "carol", "dave"], Some(&krl));
    let known_hosts = d.join("known_hosts");
    std::fs::write(
        &known_hosts,
        format!("{}\n", api.keys.known_hosts_line("[127.0.0.1]:*").unwrap()),
    )
    .unwrap();
    let alice = issue(&idp, &api, d, "alice");
    let bob = issue(&idp, &api, d, "bob");
    let carol = issue(&idp, &api, d, "carol");
    let dave = issue(&idp, &api, d, "dave");

    // Before any revocation: empty KRL, everyone gets in.
    for h in [&alice, &bob, &carol, &dave] {
        assert!(!query(&krl, &h.cert).0);
    }
    sshd.ssh(&known_hosts, &alice.key, &alice.cert, "true")
        .success();

    api.cli(&[
        "cert",
        "revoke",
        "--serial",
        &alice.serial.to_string(),
        "--reason",
        "lost laptop",
    ])
    .success();
    api.cli(&["cert", "revoke", "--key-id", "oidc:corp:bob"])
        .success();
    api.cli(&["cert", "revoke", "--subject", "carol", "--reason", "left"])
        .success();
    // Naming two targets at once is refused by the CLI.
    api.cli(&["cert", "revoke", "--serial", "1", "--subject", "x"])
        .failure();
    api.cli(&["ca", "krl", "-o", krl.to_str().unwrap()])
        .success();

    for (who, h) in [("alice", &alice), ("bob", &bob), ("carol", &carol)] {
        let (revoked, text) = query(&krl, &h.cert);
        assert!(revoked, "{who} should be revoked: {text}");
    }
    let (revoked, text) = query(&krl, &dave.cert);
    assert!(!revoked, "dave is not revoked: {text}");

    // sshd reads RevokedKeys at each authentication: alice's next connection fails.
    sshd.ssh(&known_hosts, &alice.key, &alice.cert, "true")
        .failure();
    sshd.ssh(&known_hosts, &carol.key, &carol.cert, "true")
        .failure();
    sshd.ssh(&known_hosts, &dave.key, &dave.cert, "true")
        .success();

    // The bastion's own check (what the SSH server calls at every login).
    assert!(
        api.store
            .revocation_reason(alice.serial, "oidc:corp:alice", "alice")
            .unwrap()
            .contains("lost laptop")
    );
    assert!(
        api.store
            .revocation_reason(dave.serial, "oidc:corp:dave", "dave")
            .is_none()
    );

    let r = api.cli(&["cert", "list", "--json"]).success();
    let list: serde_json::Value = serde_json::from_str(&r.stdout()).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 4);
    for c in list {
        let revoked = !c["revoked"].is_null();
        assert_eq!(revoked, c["subject"] != "dave", "{c}");
    }
}
