//! From `sallyport login` to a session on sallyport's OWN SSH server: one
//! `sallyport serve` runs the HTTP API and the bastion together (with the
//! test IdP as its issuers and `support::policies::OIDC` as its policy dir); the
//! real CLI logs in (device flow for a person, a projected service-account
//! token file for an agent), real `ssh -F <written ssh_config> bastion` gets
//! in with the issued certificate, strict host checking against the host CA
//! line login wrote; the session row carries the OIDC identity; and `cert
//! revoke` refuses the very next connection, with an audited reason.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::oidc::Idp;
use crate::support::{self, Proc, Server, ServerOpts, policies};

/// `sallyport serve` trusting the test IdP, under the OIDC test policy.
fn server(idp: &Idp, work: &Path) -> Server {
    Server::start_with(ServerOpts {
        config_extra: idp.issuers_toml(work),
        policies: vec![("oidc.toml".into(), policies::OIDC.into())],
        ..Default::default()
    })
}

fn login_cmd(s: &Server, out: &Path) -> Command {
    let mut c = Command::new(support::bin());
    c.args(["login", "--json", "--server"])
        .arg(format!("http://127.0.0.1:{}", s.api_port))
        .arg("--out")
        .arg(out);
    // login needs no server config: everything comes from /v1/login-config.
    c.env_remove("SALLYPORT_CONFIG")
        .env_remove("SALLYPORT_DATA_DIR")
        .env_remove("SALLYPORT_SERVER");
    c
}

/// `ssh -F <out>/ssh_config bastion CMD`, nothing else on the command line:
/// user, key, certificate, host, port and host CA all come from the file.
fn ssh_bastion(s: &Server, out: &Path, cmd: &str) -> support::Run {
    let mut c = Command::new("ssh");
    c.arg("-F")
        .arg(out.join("ssh_config"))
        .args(["-o", "BatchMode=yes", "bastion", cmd]);
    support::run_cmd(c, None, Duration::from_secs(60), s.log())
}

/// auth_attempts rows for a certificate serial, newest first: (result, reason).
fn attempts(s: &Server, serial: u64) -> Vec<(String, String)> {
    support::query_db(
        &s.db_path(),
        &format!(
            "SELECT result, reason FROM auth_attempts WHERE serial = {} ORDER BY id DESC",
            serial as i64
        ),
    )
    .into_iter()
    .map(|r| (r[0].clone(), r[1].clone()))
    .collect()
}

/// The newest session whose command is `cmd`.
fn session_for(s: &Server, cmd: &str) -> Value {
    let all = s.sessions_json();
    all.as_array()
        .unwrap()
        .iter()
        .find(|r| r["command"] == cmd)
        .cloned()
        .unwrap_or_else(|| panic!("no session for {cmd:?}: {all:#}\n{}", s.log()))
}

#[test]
fn device_flow_login_ssh_into_sallyport_then_revoke_refuses_next_connection() {
    let idp = Idp::start();
    let work = tempfile::tempdir().unwrap();
    let s = server(&idp, work.path());
    let out = work.path().join("alice");

    // Negative first: an identity no role matches gets no certificate, and
    // the refusal (reason from the policy engine) is in the audit log.
    let tf = work.path().join("nobody-token");
    std::fs::write(&tf, idp.mint(json!({"claims": {"sub": "@@@"}}))).unwrap();
    let mut c = login_cmd(&s, &out);
    c.arg("--token-file").arg(&tf);
    let r = support::run_cmd(c, None, Duration::from_secs(60), s.log()).failure();
    assert!(
        r.stderr().contains("policy_denied") && r.stderr().contains("no role matched"),
        "{}",
        r.explain()
    );
    assert!(!out.join("id_ed25519-cert.pub").exists());
    let denied = support::query_db(
        &s.db_path(),
        "SELECT status, reason FROM api_requests WHERE status = 403",
    );
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert!(denied[0][1].starts_with("policy_denied"), "{denied:?}");

    // The device flow: the CLI prints the verification URL and user code; a
    // person would approve in the browser, the test approves at the IdP.
    let mut login = Proc::spawn("login", login_cmd(&s, &out), work.path());
    let code = support::wait_for(Duration::from_secs(30), || {
        let err = std::fs::read_to_string(&login.stderr).ok()?;
        let i = err.find("enter the code ")?;
        err[i + 15..].split_whitespace().next().map(str::to_string)
    })
    .unwrap_or_else(|| panic!("no user code printed\n{}", login.log()));
    idp.post(
        "/test/approve",
        json!({"user_code": code, "sub": "alice", "email": "alice@example.com", "groups": ["sre"]}),
    );
    let st = login
        .wait_timeout(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("login did not finish\n{}", login.log()));
    assert!(st.success(), "{}\n{}", login.log(), s.log());
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&login.stdout).unwrap()).unwrap();
    assert_eq!(v["key_id"], "oidc:corp:alice");
    assert_eq!(v["principals"], json!(["alice"]));
    let serial = v["serial"].as_u64().unwrap();
    // The ssh_config points at the bastion's SSH port (from /v1/login-config)
    // and known_hosts trusts its host CA for exactly that host:port.
    let cfg = std::fs::read_to_string(out.join("ssh_config")).unwrap();
    assert!(cfg.contains(&format!("Port {}", s.ssh_port)), "{cfg}");
    let kh = std::fs::read_to_string(out.join("known_hosts")).unwrap();
    assert!(
        kh.starts_with(&format!("@cert-authority [127.0.0.1]:{} ", s.ssh_port)),
        "{kh}"
    );

    let r = ssh_bastion(&s, &out, "echo ok").success();
    assert_eq!(r.stdout().trim(), "ok", "{}", r.explain());

    // The session row carries the OIDC identity from the certificate.
    let row = session_for(&s, "echo ok");
    assert_eq!(row["user"], "alice", "{row:#}");
    assert_eq!(row["subject"], "alice", "{row:#}");
    assert_eq!(row["identity"]["issuer"], "corp", "{row:#}");
    assert_eq!(row["identity"]["email"], "alice@example.com", "{row:#}");
    assert_eq!(row["identity"]["groups"], json!(["sre"]), "{row:#}");
    assert_eq!(row["identity"]["kind"], "human", "{row:#}");
    assert_eq!(row["exit_status"], 0, "{row:#}");
    assert_eq!(attempts(&s, serial)[0].0, "accepted");

    // Revoke that certificate: the very next connection is refused, and the
    // auth_attempts row says why.
    s.cli(&[
        "cert",
        "revoke",
        "--serial",
        &serial.to_string(),
        "--reason",
        "lost laptop",
    ])
    .success();
    let r = ssh_bastion(&s, &out, "echo after-revoke").failure();
    assert!(!r.stdout().contains("after-revoke"), "{}", r.explain());
    let rows = attempts(&s, serial);
    assert_eq!(rows[0].0, "rejected", "{rows:?}");
    assert!(
        rows[0].1.contains("revoked") && rows[0].1.contains("lost laptop"),
        "{rows:?}"
    );
    assert!(
        s.sessions_json()
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["command"] != "echo after-revoke")
    );
}

#[test]
fn agent_token_file_login_kubeconfig_ssh_and_revoke_by_key_id() {
    let idp = Idp::start();
    let work = tempfile::tempdir().unwrap();
    let s = server(&idp, work.path());
    let out = work.path().join("agent");
    // A projected service-account token of the test cluster, acting for
    // alice (RFC 8693 `act`): the agents' role accepts delegation. It lives
    // an hour, so the 10-minute agent cap (not the token's own expiry,
    // which also caps a certificate) sets the TTL checked below.
    let tf = work.path().join("sa-token");
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    std::fs::write(
        &tf,
        idp.mint(json!({"kubernetes": true, "claims": {
            "exp": exp,
            "sub": "system:serviceaccount:dev:copilot",
            "kubernetes.io": {"namespace": "dev", "serviceaccount": {"name": "copilot", "uid": "1"},
                              "pod": {"name": "copilot-7d9", "uid": "2"}},
            "act": {"sub": "alice@example.com"},
        }})),
    )
    .unwrap();
    let mut c = login_cmd(&s, &out);
    c.arg("--token-file").arg(&tf);
    let r = support::run_cmd(c, None, Duration::from_secs(60), s.log()).success();
    let v: Value = serde_json::from_str(&r.stdout()).unwrap();
    assert_eq!(
        v["key_id"],
        "oidc:cluster:system:serviceaccount:dev:copilot"
    );
    assert_eq!(v["principals"], json!(["copilot"]));
    // Agents get 10 minutes (no role sets cert_ttl).
    assert_eq!(
        v["valid_before"].as_u64().unwrap() - v["valid_after"].as_u64().unwrap(),
        600 + 60
    );

    // The kubeconfig for the Kubernetes API proxy parses with kubectl,
    // points at the local end of the printed forward, defaults to the
    // agent's namespace and carries no credentials.
    let kc = PathBuf::from(v["kubeconfig"].as_str().unwrap());
    assert_eq!(kc, out.join("kubeconfig"));
    let ssh_config = out.join("ssh_config");
    assert_eq!(
        v["kube_forward"].as_str().unwrap(),
        format!(
            "ssh -F {} -N -L 6443:kubernetes:443 bastion",
            ssh_config.display()
        )
    );
    let mut c = Command::new("kubectl");
    c.args(["config", "view", "-o", "json", "--kubeconfig"])
        .arg(&kc);
    let r = support::run_cmd(c, None, Duration::from_secs(30), String::new()).success();
    let k: Value = serde_json::from_str(&r.stdout()).unwrap();
    assert_eq!(k["current-context"], "sallyport", "{k:#}");
    assert_eq!(
        k["clusters"][0]["cluster"]["server"], "http://127.0.0.1:6443",
        "{k:#}"
    );
    assert_eq!(k["contexts"][0]["context"]["namespace"], "dev", "{k:#}");
    assert_eq!(k["users"][0]["user"], json!({}), "{k:#}");

    let r = ssh_bastion(&s, &out, "echo agent-ok").success();
    assert_eq!(r.stdout().trim(), "agent-ok");
    let row = session_for(&s, "echo agent-ok");
    assert_eq!(row["user"], "copilot", "{row:#}");
    assert_eq!(row["identity"]["kind"], "agent", "{row:#}");
    assert_eq!(row["identity"]["kube"]["namespace"], "dev", "{row:#}");
    assert_eq!(row["on_behalf_of"], "alice@example.com", "{row:#}");

    // Revoke by key id (every certificate of this service account).
    s.cli(&[
        "cert",
        "revoke",
        "--key-id",
        "oidc:cluster:system:serviceaccount:dev:copilot",
    ])
    .success();
    ssh_bastion(&s, &out, "echo after-revoke").failure();
    let serial = v["serial"].as_u64().unwrap();
    let rows = attempts(&s, serial);
    assert_eq!(rows[0].0, "rejected", "{rows:?}");
    assert!(rows[0].1.contains("revoked"), "{rows:?}");
}
