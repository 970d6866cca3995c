//! `sallyport login` end to end: the real binary against the API (served
//! in-process) and the test IdP process, then real `ssh` into a real `sshd`
//! that trusts the user CA (TrustedUserCAKeys) and presents a host
//! certificate from our host CA, so the written ssh_config and known_hosts
//! work with StrictHostKeyChecking.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::oidc::{Api, Idp};
use crate::support::{self, Proc};

/// A real OpenSSH server on a free port.
pub struct Sshd {
    pub proc: Proc,
    pub port: u16,
    pub _dir: tempfile::TempDir,
}

fn whoami() -> String {
    let out = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl Sshd {
    /// sshd trusting `api`'s user CA, accepting `principals` for any local
    /// user, with a host certificate from `api`'s host CA and optionally a KRL.
    pub fn start(api: &Api, principals: &[&str], krl: Option<&Path>) -> Sshd {
        std::fs::create_dir_all("/run/sshd").ok();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let hostkey = d.join("ssh_host_ed25519_key");
        support::keygen(&hostkey);
        let host_ca = api.keys.dir.join("host_ca");
        let st = Command::new("ssh-keygen")
            .args(["-q", "-s"])
            .arg(&host_ca)
            .args([
                "-h",
                "-I",
                "target",
                "-n",
                "127.0.0.1,localhost",
                "-V",
                "-5m:+1h",
            ])
            .arg(format!("{}.pub", hostkey.display()))
            .status()
            .unwrap();
        assert!(st.success());
        std::fs::write(
            d.join("user_ca.pub"),
            format!("{}\n", api.keys.user_ca_line().unwrap()),
        )
        .unwrap();
        std::fs::write(d.join("principals"), principals.join("\n") + "\n").unwrap();
        let port = support::free_port();
        let mut cfg = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nHostCertificate {hk}-cert.pub\n\
             TrustedUserCAKeys {d}/user_ca.pub\nAuthorizedPrincipalsFile {d}/principals\n\
             AuthorizedKeysFile none\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             UsePAM no\nStrictModes no\nPermitRootLogin yes\nPidFile none\nLogLevel VERBOSE\n",
            hk = hostkey.display(),
            d = d.display()
        );
        if let Some(k) = krl {
            cfg.push_str(&format!("RevokedKeys {}\n", k.display()));
        }
        let cfg_path = d.join("sshd_config");
        std::fs::write(&cfg_path, cfg).unwrap();
        let mut cmd = Command::new("/usr/sbin/sshd");
        cmd.arg("-D").arg("-e").arg("-f").arg(&cfg_path);
        let proc = Proc::spawn("sshd", cmd, d);
        assert!(
            support::wait_port(port, Duration::from_secs(20)),
            "sshd did not start\n{}",
            proc.log()
        );
        Sshd {
            proc,
            port,
            _dir: dir,
        }
    }

    /// `ssh` to this sshd with a key and certificate, strict host checking
    /// against `known_hosts`.
    pub fn ssh(&self, known_hosts: &Path, key: &Path, cert: &Path, cmd: &str) -> support::Run {
        let mut c = Command::new("ssh");
        c.args([
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
        ])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .args([
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
        ])
        .arg("-i")
        .arg(key)
        .arg("-o")
        .arg(format!("CertificateFile={}", cert.display()))
        .args(["-p", &self.port.to_string()])
        .arg(format!("{}@127.0.0.1", whoami()))
        .arg(cmd);
        support::run_cmd(c, None, Duration::from_secs(30), self.proc.log())
    }
}

fn login_cmd(api: &Api, out: &Path, ssh_port: u16) -> Command {
    let mut c = Command::new(support::bin());
    c.args(["login", "--server", &api.url(), "--json"])
        .arg("--out")
        .arg(out)
        .args(["--ssh-port", &ssh_port.to_string()]);
    c.env_remove("SALLYPORT_CONFIG")
        .env_remove("SALLYPORT_DATA_DIR");
    c
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn token_file_login_then_ssh_into_sshd_with_issued_cert() {
    let idp = Idp::start();
    let api = Api::start(&idp);
    let sshd = Sshd::start(&api, &["alice"], None);
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("sallyport");

    // Negative first: an expired token gets no certificate and a clear reason.
    let now = sallyport::ca::keys::unix_now() as i64;
    let tf = work.path().join("token");
    std::fs::write(
        &tf,
        idp.mint(json!({"claims": {"iat": now - 900, "exp": now - 300}})),
    )
    .unwrap();
    let mut c = login_cmd(&api, &out, sshd.port);
    c.arg("--token-file").arg(&tf);
    let r = support::run_cmd(c, None, Duration::from_secs(60), String::new()).failure();
    assert!(r.stderr().contains("token_expired"), "{}", r.explain());
    assert!(!out.join("id_ed25519-cert.pub").exists());

    std::fs::write(&tf, idp.mint(json!({"claims": {"sub": "alice"}}))).unwrap();
    let mut c = login_cmd(&api, &out, sshd.port);
    c.arg("--token-file").arg(&tf);
    let r = support::run_cmd(c, None, Duration::from_secs(60), String::new()).success();
    let v: serde_json::Value = serde_json::from_str(&r.stdout()).unwrap();
    assert_eq!(v["key_id"], "oidc:corp:alice");
    let key = PathBuf::from(v["identity_file"].as_str().unwrap());
    let cert = PathBuf::from(v["certificate"].as_str().unwrap());
    assert_eq!(mode(&key), 0o600);
    assert_eq!(mode(&cert), 0o600);
    let shown = Command::new("ssh-keygen")
        .arg("-L")
        .arg("-f")
        .arg(&cert)
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains("Key ID: \"oidc:corp:alice\""), "{shown}");
    let kh = std::fs::read_to_string(out.join("known_hosts")).unwrap();
    assert!(
        kh.starts_with(&format!(
            "@cert-authority [127.0.0.1]:{} ssh-ed25519 ",
            sshd.port
        )),
        "{kh}"
    );
    let cfg = std::fs::read_to_string(out.join("ssh_config")).unwrap();
    for needle in [
        "Host bastion",
        "CertificateFile",
        "UserKnownHostsFile",
        "# Host * !bastion",
        "ProxyJump bastion",
    ] {
        assert!(cfg.contains(needle), "{needle}: {cfg}");
    }

    // Real sshd with TrustedUserCAKeys accepts the certificate; strict host
    // checking passes through the @cert-authority line login wrote.
    let r = sshd
        .ssh(&out.join("known_hosts"), &key, &cert, "echo certified-ok")
        .success();
    assert_eq!(r.stdout().trim(), "certified-ok");
    // And through the written ssh_config (login name overridden: the
    // principal `alice` is accepted for the local account).
    let mut c = Command::new("ssh");
    c.arg("-F").arg(out.join("ssh_config")).args([
        "-o",
        "BatchMode=yes",
        "-l",
        &whoami(),
        "bastion",
        "echo via-config",
    ]);
    let r = support::run_cmd(c, None, Duration::from_secs(30), sshd.proc.log()).success();
    assert_eq!(r.stdout().trim(), "via-config");

    // --renew: the certificate is fresh, nothing is re-issued.
    let before = std::fs::read_to_string(&cert).unwrap();
    let mut c = login_cmd(&api, &out, sshd.port);
    c.arg("--token-file").arg(&tf).arg("--renew");
    let r = support::run_cmd(c, None, Duration::from_secs(60), String::new()).success();
    assert!(r.stderr().contains("still fresh"), "{}", r.explain());
    assert_eq!(std::fs::read_to_string(&cert).unwrap(), before);
    assert_eq!(api.store.list_certificates(10).unwrap().len(), 1);
}

#[test]
fn device_flow_login_then_ssh_bastion_via_written_config() {
    let idp = Idp::start();
    let api = Api::start(&idp);
    let me = whoami();
    let sshd = Sshd::start(&api, &[&me], None);
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("sallyport");
    let login = Proc::spawn("login", login_cmd(&api, &out, sshd.port), work.path());
    let mut login = login;
    // The CLI prints the verification URL and user code; a person would type
    // it in the browser, the test approves it at the IdP.
    let code = support::wait_for(Duration::from_secs(30), || {
        let err = std::fs::read_to_string(&login.stderr).ok()?;
        let i = err.find("enter the code ")?;
        err[i + 15..].split_whitespace().next().map(str::to_string)
    })
    .unwrap_or_else(|| panic!("no user code printed\n{}", login.log()));
    let err = std::fs::read_to_string(&login.stderr).unwrap();
    assert!(err.contains(&format!("open {}/device", idp.base)), "{err}");
    idp.post(
        "/test/approve",
        json!({"user_code": code, "sub": me, "email": "ops@example.com", "groups": ["sre"]}),
    );
    let st = login
        .wait_timeout(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("login did not finish\n{}", login.log()));
    assert!(st.success(), "{}", login.log());
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&login.stdout).unwrap()).unwrap();
    assert_eq!(v["key_id"], format!("oidc:corp:{me}"));
    // `ssh -F <out>/ssh_config bastion` just works: user, key, cert, host CA.
    let mut c = Command::new("ssh");
    c.arg("-F")
        .arg(out.join("ssh_config"))
        .args(["-o", "BatchMode=yes", "bastion", "id -un"]);
    let r = support::run_cmd(c, None, Duration::from_secs(30), sshd.proc.log()).success();
    assert_eq!(r.stdout().trim(), me);
    let rec = api.store.list_certificates(10).unwrap();
    assert_eq!(rec[0].identity["email"], "ops@example.com");
    assert_eq!(rec[0].identity["groups"], json!(["sre"]));
}

#[test]
fn login_over_tls_trusting_a_ca_file() {
    let idp = Idp::start();
    let work = tempfile::tempdir().unwrap();
    let d = work.path();
    let (ca, cert, key) = (d.join("ca.crt"), d.join("api.crt"), d.join("api.key"));
    std::fs::write(
        d.join("ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    for args in [
        vec![
            "req",
            "-x509",
            "-days",
            "1",
            "-subj",
            "/CN=sallyport test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ],
        vec![
            "req",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "api.key",
            "-out",
            "api.csr",
        ],
        vec![
            "x509",
            "-req",
            "-in",
            "api.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "ext",
            "-out",
            "api.crt",
        ],
    ] {
        let mut c = Command::new("openssl");
        c.current_dir(d).arg(args[0]);
        if args[0] == "req" {
            c.args(ec);
        }
        let st = c.args(&args[1..]).output().unwrap();
        assert!(
            st.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&st.stderr)
        );
    }
    let api = Api::start_tls(&idp, &cert, &key);
    assert!(api.url().starts_with("https://"));
    let tf = work.path().join("token");
    std::fs::write(&tf, idp.mint(json!({"claims": {"sub": "alice"}}))).unwrap();
    let out = work.path().join("out");
    // Without trusting the API's certificate: refused, nothing written.
    let mut c = login_cmd(&api, &out, 22);
    c.arg("--token-file").arg(&tf);
    support::run_cmd(c, None, Duration::from_secs(60), String::new()).failure();
    assert!(!out.join("id_ed25519-cert.pub").exists());
    let mut c = login_cmd(&api, &out, 22);
    c.arg("--token-file").arg(&tf).arg("--ca-file").arg(&ca);
    let r = support::run_cmd(c, None, Duration::from_secs(60), String::new()).success();
    let v: serde_json::Value = serde_json::from_str(&r.stdout()).unwrap();
    assert_eq!(v["key_id"], "oidc:corp:alice");
}
