//! Token verification and certificate issuance through the HTTP API, against
//! the test OpenID provider running as its own process. The API runs
//! in-process on 127.0.0.1:0 (the production `api::serve`); every bad input
//! must get a 4xx JSON error naming the reason and an `api_requests` row.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use sallyport::api::{Limits, State};
use sallyport::audit::Store;
use sallyport::ca::CaKeys;
use sallyport::ca::issue::CertIssuer;
use sallyport::config::{IssuerConfig, IssuerKind};
use sallyport::identity::oidc::Verifier;
use sallyport::policy::{Policy, PolicyHandle};
use serde_json::{Value, json};

use crate::support::{self, Proc, policies};

/// The test IdP process.
pub struct Idp {
    pub proc: Proc,
    pub base: String,
    pub k8s_bearer: String,
    _dir: tempfile::TempDir,
}

impl Idp {
    pub fn start() -> Idp {
        let dir = tempfile::tempdir().unwrap();
        let bearer = format!("bastion-sa-token-{}", support::free_port());
        let mut cmd = Command::new(support::idp_bin());
        cmd.args(["--port", "0", "--k8s-bearer", &bearer]);
        let proc = Proc::spawn("idp", cmd, dir.path());
        let port = support::wait_for(Duration::from_secs(30), || {
            let out = std::fs::read_to_string(&proc.stdout).ok()?;
            out.lines()
                .find_map(|l| l.strip_prefix("LISTENING "))
                .and_then(|p| p.trim().parse::<u16>().ok())
        })
        .unwrap_or_else(|| panic!("IdP did not start\n{}", proc.log()));
        Idp {
            proc,
            base: format!("http://127.0.0.1:{port}"),
            k8s_bearer: bearer,
            _dir: dir,
        }
    }

    pub fn post(&self, path: &str, body: Value) -> Value {
        let out = Command::new("curl")
            .args([
                "-sS",
                "-f",
                "-X",
                "POST",
                "-H",
                "content-type: application/json",
            ])
            .arg("--data-binary")
            .arg(body.to_string())
            .arg(format!("{}{path}", self.base))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "IdP {path} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.proc.log()
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn get(&self, path: &str) -> Value {
        let out = Command::new("curl")
            .args(["-sS", "-f"])
            .arg(format!("{}{path}", self.base))
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Mint a token (see the IdP's `/test/mint`).
    pub fn mint(&self, spec: Value) -> String {
        self.post("/test/mint", spec)["token"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub fn jwks_fetches(&self) -> u64 {
        self.get("/test/jwks_fetches")["jwks_fetches"]
            .as_u64()
            .unwrap()
    }

    /// The issuers block for a sallyport config (and the token file it names).
    pub fn issuers(&self, dir: &Path) -> Vec<IssuerConfig> {
        let tf = dir.join("bastion-token");
        std::fs::write(&tf, &self.k8s_bearer).unwrap();
        vec![
            IssuerConfig {
                alias: "corp".into(),
                url: self.base.clone(),
                kind: IssuerKind::Oidc,
                audience: vec!["sallyport-cli".into()],
                client_id: Some("sallyport-cli".into()),
                scopes: vec!["openid".into(), "email".into()],
                ca_file: None,
                token_file: None,
                token_review: false,
                groups_claim: "groups".into(),
            },
            IssuerConfig {
                alias: "cluster".into(),
                url: format!("{}/k8s", self.base),
                kind: IssuerKind::Kubernetes,
                audience: vec!["sallyport".into()],
                client_id: None,
                scopes: vec![],
                ca_file: None,
                token_file: Some(tf),
                token_review: false,
                groups_claim: "groups".into(),
            },
        ]
    }
}

impl Idp {
    /// The same issuers as [`Idp::issuers`], as `[[issuers]]` tables for a
    /// `sallyport serve` config file.
    pub fn issuers_toml(&self, dir: &Path) -> String {
        let mut out = String::new();
        for i in self.issuers(dir) {
            let q = |s: &str| serde_json::Value::from(s).to_string();
            let list = |v: &[String]| {
                format!(
                    "[{}]",
                    v.iter().map(|s| q(s)).collect::<Vec<_>>().join(", ")
                )
            };
            out.push_str("\n[[issuers]]\n");
            out.push_str(&format!("alias = {}\nurl = {}\n", q(&i.alias), q(&i.url)));
            let kind = match i.kind {
                IssuerKind::Oidc => "oidc",
                IssuerKind::Kubernetes => "kubernetes",
            };
            out.push_str(&format!(
                "kind = {}\naudience = {}\n",
                q(kind),
                list(&i.audience)
            ));
            if let Some(c) = &i.client_id {
                out.push_str(&format!(
                    "client_id = {}\nscopes = {}\n",
                    q(c),
                    list(&i.scopes)
                ));
            }
            if let Some(t) = &i.token_file {
                out.push_str(&format!("token_file = {}\n", q(&t.display().to_string())));
            }
        }
        out
    }
}

/// The API served in-process, plus a config file for CLI commands on the
/// same data dir.
pub struct Api {
    pub rt: tokio::runtime::Runtime,
    pub port: u16,
    pub scheme: &'static str,
    pub _dir: tempfile::TempDir,
    pub config: PathBuf,
    pub store: Store,
    pub keys: Arc<CaKeys>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Api {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

impl Api {
    pub fn start(idp: &Idp) -> Api {
        Self::start_with(idp, Limits::default(), Duration::ZERO, None)
    }

    pub fn start_with(idp: &Idp, limits: Limits, cooldown: Duration, ssh_port: Option<u16>) -> Api {
        Self::start_full(idp, limits, cooldown, ssh_port, None, policies::OIDC)
    }

    /// Serve under another policy text (docs/policy.md format).
    pub fn start_with_policy(idp: &Idp, policy: &str) -> Api {
        Self::start_full(idp, Limits::default(), Duration::ZERO, None, None, policy)
    }

    /// Serve HTTPS with this PEM certificate and key.
    pub fn start_tls(idp: &Idp, cert: &Path, key: &Path) -> Api {
        Self::start_full(
            idp,
            Limits::default(),
            Duration::ZERO,
            None,
            Some((cert.to_path_buf(), key.to_path_buf())),
            policies::OIDC,
        )
    }

    fn start_full(
        idp: &Idp,
        limits: Limits,
        cooldown: Duration,
        ssh_port: Option<u16>,
        tls: Option<(PathBuf, PathBuf)>,
        policy: &str,
    ) -> Api {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let keys = Arc::new(
            CaKeys::load_or_create(
                &data.join("keys"),
                Duration::from_secs(3600),
                &["localhost".into(), "127.0.0.1".into()],
            )
            .unwrap(),
        );
        let store = Store::open(&data.join("audit.db")).unwrap();
        let issuers = idp.issuers(dir.path());
        let config = dir.path().join("sallyport.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = {:?}\n[api]\nlisten = \"off\"\n",
                data.display().to_string()
            ),
        )
        .unwrap();
        let verifier = Verifier::new(&issuers)
            .unwrap()
            .with_refetch_cooldown(cooldown);
        let policy = Policy::from_toml("oidc-test.toml", policy).unwrap();
        let issuer = CertIssuer::new(keys.clone(), store.clone(), PolicyHandle::new(policy));
        let ssh = ssh_port.map(|p| std::net::SocketAddr::from(([127, 0, 0, 1], p)));
        let state = State::new(verifier, issuer, ssh, limits);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async move {
            let _ = rx.await;
        };
        match &tls {
            None => {
                rt.spawn(sallyport::api::serve(state, listener, shutdown));
            }
            Some((c, k)) => {
                let cfg = sallyport::api::tls_config(c, k).unwrap();
                rt.spawn(sallyport::api::serve_tls(state, listener, cfg, shutdown));
            }
        }
        Api {
            rt,
            port,
            scheme: if tls.is_some() { "https" } else { "http" },
            _dir: dir,
            config,
            store,
            keys,
            stop: Some(tx),
        }
    }

    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.port)
    }

    /// POST /v1/certificates with a raw body; returns (status, JSON body).
    pub fn post_raw(&self, token: Option<&str>, body: Vec<u8>) -> (u16, Value) {
        let url = format!("{}/v1/certificates", self.url());
        let token = token.map(str::to_string);
        self.rt.block_on(async move {
            let mut r = reqwest::Client::new()
                .post(url)
                .header("content-type", "application/json")
                .body(body);
            if let Some(t) = token {
                r = r.bearer_auth(t);
            }
            let resp = r.send().await.unwrap();
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap();
            let v = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {status} {text}"));
            (status, v)
        })
    }

    pub fn request(&self, token: &str, body: Value) -> (u16, Value) {
        self.post_raw(Some(token), body.to_string().into_bytes())
    }

    pub fn get(&self, path: &str) -> Value {
        let url = format!("{}{path}", self.url());
        self.rt
            .block_on(async move { reqwest::get(url).await.unwrap().json().await.unwrap() })
    }

    /// Run a sallyport CLI command on this data dir.
    pub fn cli(&self, args: &[&str]) -> support::Run {
        let mut cmd = Command::new(support::bin());
        cmd.arg("--config").arg(&self.config).args(args);
        cmd.env_remove("SALLYPORT_DATA_DIR")
            .env_remove("SALLYPORT_CONFIG");
        support::run_cmd(cmd, None, Duration::from_secs(60), String::new())
    }
}

/// A fresh Ed25519 key pair on disk; returns (private key path, public line).
pub fn keypair(dir: &Path, name: &str) -> (PathBuf, String) {
    let p = dir.join(name);
    support::keygen(&p);
    let line = std::fs::read_to_string(format!("{}.pub", p.display())).unwrap();
    (p, line.trim().to_string())
}

/// `ssh-keygen -L` of a certificate line.
pub fn keygen_l(dir: &Path, cert: &str) -> String {
    let f = dir.join(format!("show-{}-cert.pub", support::free_port()));
    std::fs::write(&f, format!("{cert}\n")).unwrap();
    let out = Command::new("ssh-keygen")
        .arg("-L")
        .arg("-f")
        .arg(&f)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn bad_inputs_get_4xx_json_reason_and_audit_row() {
    let idp = Idp::start();
    let api = Api::start(&idp);
    let dir = tempfile::tempdir().unwrap();
    let (_k, good_key) = keypair(dir.path(), "good");
    let now = sallyport::ca::keys::unix_now() as i64;

    // A key rotated out before the bastion ever saw it: unknown after refetch.
    let rotated = idp.post("/test/add_key", json!({"alg": "RS256"}))["kid"]
        .as_str()
        .unwrap()
        .to_string();
    let rotated_token = idp.mint(json!({"key": rotated}));
    idp.post("/test/remove_key", json!({"kid": rotated}));

    let body = json!({ "public_key": good_key });
    let token_cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "alg none",
            idp.mint(json!({"alg": "none"})),
            401,
            "disallowed_alg",
        ),
        (
            "HS256 keyed with the RSA public key",
            idp.mint(json!({"alg": "HS256"})),
            401,
            "disallowed_alg",
        ),
        (
            "wrong iss",
            idp.mint(json!({"claims": {"iss": "https://evil.example.com"}})),
            401,
            "wrong_issuer",
        ),
        (
            "wrong aud",
            idp.mint(json!({"claims": {"aud": "someone-else"}})),
            401,
            "wrong_audience",
        ),
        (
            "expired beyond skew",
            idp.mint(json!({"claims": {"iat": now - 900, "exp": now - 120}})),
            401,
            "token_expired",
        ),
        (
            "nbf in the future",
            idp.mint(json!({"claims": {"nbf": now + 600}})),
            401,
            "token_not_yet_valid",
        ),
        (
            "iat in the future",
            idp.mint(json!({"claims": {"iat": now + 600, "exp": now + 1200}})),
            401,
            "token_issued_in_future",
        ),
        (
            "bad signature",
            idp.mint(json!({"tamper": true})),
            401,
            "bad_signature",
        ),
        (
            "unknown kid",
            idp.mint(json!({"kid": "no-such-kid"})),
            401,
            "unknown_kid",
        ),
        (
            "key rotated out of the JWKS",
            rotated_token,
            401,
            "unknown_kid",
        ),
        (
            "not a JWT",
            "definitely-not-a-jwt".into(),
            401,
            "malformed_token",
        ),
        (
            "identity no policy matches",
            idp.mint(json!({"claims": {"sub": "@@@"}})),
            403,
            "policy_denied",
        ),
        (
            "Kubernetes issuer token without kubernetes.io claims",
            idp.mint(json!({"kubernetes": true})),
            401,
            "bad_claim",
        ),
    ];
    let mut expected_rows = 0;
    for (what, token, status, code) in &token_cases {
        let (s, v) = api.request(token, body.clone());
        assert_eq!(
            (s, v["error"].as_str()),
            (*status, Some(*code)),
            "{what}: {v}"
        );
        assert!(
            v["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {v}"
        );
        expected_rows += 1;
    }

    let good = idp.mint(json!({}));
    let cert = {
        let (s, v) = api.request(&good, body.clone());
        assert_eq!(s, 200, "{v}");
        expected_rows += 1;
        v["certificate"].as_str().unwrap().to_string()
    };
    let rsa1024 = dir.path().join("rsa1024");
    assert!(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "rsa", "-b", "1024", "-N", "", "-f"])
            .arg(&rsa1024)
            .status()
            .unwrap()
            .success()
    );
    let dsa = dir.path().join("dsa");
    assert!(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "dsa", "-N", "", "-f"])
            .arg(&dsa)
            .status()
            .unwrap()
            .success()
    );
    let read_pub = |p: &Path| std::fs::read_to_string(format!("{}.pub", p.display())).unwrap();
    let key_cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "malformed key",
            "ssh-ed25519 AAAA!!!".into(),
            400,
            "malformed_public_key",
        ),
        ("empty key", "".into(), 400, "malformed_public_key"),
        ("RSA 1024", read_pub(&rsa1024), 400, "weak_public_key"),
        ("DSA", read_pub(&dsa), 400, "weak_public_key"),
        (
            "certificate instead of key",
            cert,
            400,
            "certificate_not_key",
        ),
    ];
    for (what, key, status, code) in &key_cases {
        let (s, v) = api.request(&good, json!({ "public_key": key }));
        assert_eq!(
            (s, v["error"].as_str()),
            (*status, Some(*code)),
            "{what}: {v}"
        );
        expected_rows += 1;
    }
    type RawCase<'a> = (&'a str, Option<&'a str>, Vec<u8>, u16, &'a str);
    let raw_cases: Vec<RawCase> = vec![
        (
            "no token",
            None,
            body.to_string().into_bytes(),
            401,
            "missing_token",
        ),
        (
            "oversized body",
            Some(&good),
            vec![b' '; 200 * 1024],
            413,
            "body_too_large",
        ),
        ("not JSON", Some(&good), b"{nope".to_vec(), 400, "bad_json"),
        (
            "unknown field",
            Some(&good),
            json!({"public_key": good_key, "ttl": "10y"})
                .to_string()
                .into_bytes(),
            400,
            "bad_json",
        ),
    ];
    for (what, token, raw, status, code) in raw_cases {
        let (s, v) = api.post_raw(token, raw);
        assert_eq!(
            (s, v["error"].as_str()),
            (status, Some(code)),
            "{what}: {v}"
        );
        expected_rows += 1;
    }

    // Every request is in the audit log, failures with their reason code.
    let rows = api.store.list_api_requests(1000).unwrap();
    assert_eq!(rows.len(), expected_rows, "{rows:#?}");
    for (what, _, status, code) in token_cases.iter().chain(key_cases.iter()) {
        assert!(
            rows.iter()
                .any(|r| r.status == *status && r.reason.starts_with(code)),
            "{what}: no audit row with {status} {code}: {rows:#?}"
        );
    }
    assert!(rows.iter().all(|r| r.status < 500), "{rows:#?}");
}

#[test]
fn es256_eddsa_and_rotated_in_key_accepted_with_one_refetch() {
    let idp = Idp::start();
    let api = Api::start(&idp);
    let dir = tempfile::tempdir().unwrap();
    let (_k, key) = keypair(dir.path(), "k");
    for alg in ["RS256", "ES256", "EdDSA"] {
        let (s, v) = api.request(&idp.mint(json!({"alg": alg})), json!({"public_key": key}));
        assert_eq!(s, 200, "{alg}: {v}");
    }
    let before = idp.jwks_fetches();
    assert_eq!(before, 1, "three algorithms, one JWKS download");
    // A key added after the cache was filled: one refetch, then accepted.
    let kid = idp.post("/test/add_key", json!({"alg": "ES256"}))["kid"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, v) = api.request(
        &idp.mint(json!({"alg": "ES256", "key": kid})),
        json!({"public_key": key}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(idp.jwks_fetches(), before + 1);
}

#[test]
fn unknown_kids_refetch_at_most_once_per_cooldown() {
    let idp = Idp::start();
    let api = Api::start_with(&idp, Limits::default(), Duration::from_secs(3600), None);
    let dir = tempfile::tempdir().unwrap();
    let (_k, key) = keypair(dir.path(), "k");
    let (s, _) = api.request(&idp.mint(json!({})), json!({"public_key": key}));
    assert_eq!(s, 200);
    let before = idp.jwks_fetches();
    for i in 0..10 {
        let (s, v) = api.request(
            &idp.mint(json!({"kid": format!("bogus-{i}")})),
            json!({"public_key": key}),
        );
        assert_eq!((s, v["error"].as_str()), (401, Some("unknown_kid")));
    }
    assert_eq!(
        idp.jwks_fetches(),
        before,
        "cooldown must stop refetch floods"
    );
}

#[test]
fn rate_limited_per_source_ip_and_audited() {
    let idp = Idp::start();
    let limits = Limits {
        per_ip_per_minute: 3,
        per_subject_per_minute: 100,
    };
    let api = Api::start_with(&idp, limits, Duration::ZERO, None);
    let statuses: Vec<u16> = (0..5)
        .map(|_| api.request("not-a-token", json!({"public_key": "x"})).0)
        .collect();
    assert_eq!(statuses, vec![401, 401, 401, 429, 429]);
    let (_, v) = api.request("not-a-token", json!({"public_key": "x"}));
    assert_eq!(v["error"], "rate_limited");
    let rows = api.store.list_api_requests(100).unwrap();
    assert_eq!(rows.iter().filter(|r| r.status == 429).count(), 3);
}

#[test]
fn rate_limited_per_subject() {
    let idp = Idp::start();
    let limits = Limits {
        per_ip_per_minute: 100,
        per_subject_per_minute: 2,
    };
    let api = Api::start_with(&idp, limits, Duration::ZERO, None);
    let dir = tempfile::tempdir().unwrap();
    let (_k, key) = keypair(dir.path(), "k");
    let token = idp.mint(json!({"claims": {"sub": "carol"}}));
    let s: Vec<u16> = (0..3)
        .map(|_| api.request(&token, json!({"public_key": key})).0)
        .collect();
    assert_eq!(s, vec![200, 200, 429]);
    // Another subject from the same address is not affected.
    let other = idp.mint(json!({"claims": {"sub": "dave"}}));
    assert_eq!(api.request(&other, json!({"public_key": key})).0, 200);
}

#[test]
fn cert_fields_identity_extension_and_ttl_cap() {
    let idp = Idp::start();
    let api = Api::start(&idp);
    let dir = tempfile::tempdir().unwrap();
    let (_k, key) = keypair(dir.path(), "k");
    let now = sallyport::ca::keys::unix_now() as i64;
    // The token ends in 5 minutes: the 15-minute human TTL is capped to it.
    let token = idp.mint(json!({"claims": {
        "sub": "alice", "email": "alice@example.com", "groups": ["sre", "dev"],
        "exp": now + 300, "jti": "token-jti-1"
    }}));
    let (s, v) = api.request(&token, json!({"public_key": key}));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["valid_before"].as_i64(), Some(now + 300));
    assert!(v["valid_after"].as_i64().unwrap() <= now - 59);
    assert_eq!(v["key_id"], "oidc:corp:alice");
    assert!(
        v["known_hosts"]
            .as_str()
            .unwrap()
            .starts_with("@cert-authority * ")
    );
    assert_eq!(
        v["user_ca"].as_str().unwrap(),
        api.keys.user_ca_line().unwrap()
    );
    let shown = keygen_l(dir.path(), v["certificate"].as_str().unwrap());
    assert!(
        shown.contains("Type: ssh-ed25519-cert-v01@openssh.com user certificate"),
        "{shown}"
    );
    assert!(shown.contains("Key ID: \"oidc:corp:alice\""), "{shown}");
    assert!(
        shown.contains(&format!("Serial: {}", v["serial"])),
        "{shown}"
    );
    assert!(shown.contains("identity@sallyport"), "{shown}");
    assert!(shown.contains("permit-pty"), "{shown}");
    assert!(!shown.contains("permit-port-forwarding"), "{shown}");
    let principals = shown.split("Principals:").nth(1).unwrap();
    assert!(principals.trim_start().starts_with("alice"), "{shown}");
    // The identity extension as the SSH server reads it.
    let cert = russh::keys::ssh_key::Certificate::from_openssh(v["certificate"].as_str().unwrap())
        .unwrap();
    let id: sallyport::identity::Identity =
        serde_json::from_str(cert.extensions().get("identity@sallyport").unwrap()).unwrap();
    assert_eq!(id.email.as_deref(), Some("alice@example.com"));
    assert_eq!(id.groups, vec!["sre".to_string(), "dev".to_string()]);
    assert_eq!(id.kind, sallyport::identity::Kind::Human);
    // Recorded with the token's jti and the requester's address.
    let rec = api.store.list_certificates(10).unwrap();
    assert_eq!(rec[0].serial, v["serial"].as_u64().unwrap());
    assert_eq!(rec[0].token_jti.as_deref(), Some("token-jti-1"));
    assert_eq!(rec[0].source.as_deref(), Some("127.0.0.1"));
    assert!(rec[0].fingerprint.starts_with("SHA256:"));

    // A long-lived token: capped by policy instead (no role sets cert_ttl
    // for alice: the 15-minute default for people).
    let (_, v) = api.request(
        &idp.mint(json!({"claims": {"exp": now + 86400}})),
        json!({"public_key": key}),
    );
    let life = v["valid_before"].as_i64().unwrap() - now;
    assert!((899..=901).contains(&life), "{v}");
    // A contractor: the role's `cert_ttl = "5m"` caps the certificate.
    let (s, v) = api.request(
        &idp.mint(
            json!({"claims": {"sub": "carl", "groups": ["contractors"], "exp": now + 86400}}),
        ),
        json!({"public_key": key}),
    );
    assert_eq!(s, 200, "{v}");
    let life = v["valid_before"].as_i64().unwrap() - now;
    assert!((299..=301).contains(&life), "{v}");
}

#[test]
fn no_matching_role_or_default_policy_refuses_with_audit_row() {
    let idp = Idp::start();
    // The shipped default policy grants only operator-signed identities: an
    // OIDC user gets a 403 naming the policy reason, audited.
    let api = Api::start_with_policy(&idp, sallyport::policy::default_policy_text());
    let dir = tempfile::tempdir().unwrap();
    let (_k, key) = keypair(dir.path(), "k");
    let (s, v) = api.request(&idp.mint(json!({})), json!({"public_key": key}));
    assert_eq!(
        (s, v["error"].as_str()),
        (403, Some("policy_denied")),
        "{v}"
    );
    assert!(
        v["message"].as_str().unwrap().contains("no role matched"),
        "{v}"
    );
    // A role that matches but yields no principal (no email claim for
    // {email_local}): refused too, never a certificate valid for every login.
    let api2 = Api::start_with_policy(
        &idp,
        r#"
[[role]]
name = "by-email"
match = { issuer = "corp" }
grant = { principals = ["{email_local}"] }
"#,
    );
    let (s, v) = api2.request(&idp.mint(json!({})), json!({"public_key": key}));
    assert_eq!(
        (s, v["error"].as_str()),
        (403, Some("policy_denied")),
        "{v}"
    );
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("no login principal"),
        "{v}"
    );
    let (s, v) = api2.request(
        &idp.mint(json!({"claims": {"email": "Alice.Smith@example.com"}})),
        json!({"public_key": key}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["principals"], json!(["alice.smith"]));
    for a in [&api, &api2] {
        let rows = a.store.list_api_requests(100).unwrap();
        assert_eq!(
            rows.iter()
                .filter(|r| r.status == 403 && r.reason.starts_with("policy_denied"))
                .count(),
            1,
            "{rows:#?}"
        );
        assert!(rows.iter().all(|r| r.status < 500), "{rows:#?}");
    }
    assert!(api.store.list_certificates(10).unwrap().is_empty());
}

#[test]
fn kubernetes_service_account_token_and_delegation() {
    let idp = Idp::start();
    let api = Api::start(&idp);
    let dir = tempfile::tempdir().unwrap();
    let (_k, key) = keypair(dir.path(), "k");
    let sa = |extra: Value| {
        let mut claims = json!({
            "sub": "system:serviceaccount:dev:copilot",
            "kubernetes.io": {"namespace": "dev", "serviceaccount": {"name": "copilot", "uid": "1"},
                              "pod": {"name": "copilot-7d9", "uid": "2"}},
        });
        for (k, v) in extra.as_object().unwrap() {
            claims[k] = v.clone();
        }
        idp.mint(json!({"kubernetes": true, "claims": claims}))
    };
    // An hour-long token, so the agents' 10-minute cap (not the token's own
    // expiry, which also caps a certificate) sets the TTL checked below.
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let (s, v) = api.request(&sa(json!({ "exp": exp })), json!({"public_key": key}));
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["key_id"],
        "oidc:cluster:system:serviceaccount:dev:copilot"
    );
    // The agents' role grants `{service_account}` as login principal.
    assert_eq!(v["principals"], json!(["copilot"]), "{v}");
    let cert = russh::keys::ssh_key::Certificate::from_openssh(v["certificate"].as_str().unwrap())
        .unwrap();
    let id: sallyport::identity::Identity =
        serde_json::from_str(cert.extensions().get("identity@sallyport").unwrap()).unwrap();
    assert_eq!(id.kind, sallyport::identity::Kind::Agent);
    let k = id.kube.unwrap();
    assert_eq!(
        (
            k.namespace.as_str(),
            k.service_account.as_str(),
            k.pod.as_deref()
        ),
        ("dev", "copilot", Some("copilot-7d9"))
    );
    assert_eq!(
        v["valid_before"].as_u64().unwrap() - v["valid_after"].as_u64().unwrap(),
        660
    );

    // RFC 8693 `act`: the agent acts for alice; policy accepts delegation for agents.
    let (s, v) = api.request(
        &sa(json!({"act": {"sub": "alice@example.com"}})),
        json!({"public_key": key}),
    );
    assert_eq!(s, 200, "{v}");
    // ssh-keygen shows the extension's wire bytes in hex.
    let shown = keygen_l(dir.path(), v["certificate"].as_str().unwrap());
    assert!(
        shown.contains(&hex::encode("\"on_behalf_of\":\"alice@example.com\"")),
        "{shown}"
    );
    // A second token naming the human.
    let human = idp.mint(json!({"claims": {"sub": "bob", "email": "bob@example.com"}}));
    let (s, v) = api.request(
        &sa(json!({})),
        json!({"public_key": key, "on_behalf_of_token": human}),
    );
    assert_eq!(s, 200, "{v}");
    let cert = russh::keys::ssh_key::Certificate::from_openssh(v["certificate"].as_str().unwrap())
        .unwrap();
    let id: sallyport::identity::Identity =
        serde_json::from_str(cert.extensions().get("identity@sallyport").unwrap()).unwrap();
    assert_eq!(id.on_behalf_of.as_deref(), Some("bob@example.com"));
    // A bad second token is refused, naming which token was bad.
    let (s, v) = api.request(
        &sa(json!({})),
        json!({"public_key": key, "on_behalf_of_token": idp.mint(json!({"tamper": true}))}),
    );
    assert_eq!(
        (s, v["error"].as_str()),
        (401, Some("bad_signature")),
        "{v}"
    );
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("on_behalf_of_token")
    );
    // Humans may not delegate: only the agents' role sets `on_behalf_of`.
    let (s, v) = api.request(
        &idp.mint(json!({"claims": {"act": {"sub": "eve"}}})),
        json!({"public_key": key}),
    );
    assert_eq!(
        (s, v["error"].as_str()),
        (403, Some("delegation_denied")),
        "{v}"
    );
}

#[test]
fn kubernetes_discovery_needs_the_bastion_token() {
    let idp = Idp::start();
    let dir = tempfile::tempdir().unwrap();
    let mut issuers = idp.issuers(dir.path());
    // Without the bastion's bearer token the cluster refuses discovery: a 502
    // naming the issuer, not a 500 and not an accepted token.
    issuers[1].token_file = None;
    let v = Verifier::new(&issuers).unwrap();
    let token = idp.mint(json!({"kubernetes": true, "claims": {
        "kubernetes.io": {"namespace": "dev", "serviceaccount": {"name": "x"}}}}));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let e = rt.block_on(v.verify(&token)).unwrap_err();
    assert_eq!(e.code(), "issuer_unavailable", "{e}");
    assert!(e.to_string().contains("401"), "{e}");
}

#[test]
fn ca_login_config_and_health_endpoints() {
    let idp = Idp::start();
    let api = Api::start_with(&idp, Limits::default(), Duration::ZERO, Some(2222));
    assert_eq!(api.get("/healthz")["ok"], true);
    let ca = api.get("/v1/ca");
    assert_eq!(
        ca["user_ca"].as_str().unwrap(),
        api.keys.user_ca_line().unwrap()
    );
    let lc = api.get("/v1/login-config");
    assert_eq!(lc["ssh_port"], 2222);
    let corp = &lc["issuers"][0];
    assert_eq!(corp["alias"], "corp");
    assert_eq!(corp["client_id"], "sallyport-cli");
    assert_eq!(
        corp["device_authorization_endpoint"].as_str(),
        Some(format!("{}/device/code", idp.base).as_str())
    );
    assert_eq!(lc["issuers"][1]["kind"], "kubernetes");
    let nf = api.get("/v1/nope");
    assert_eq!(nf["error"], "not_found");
    let na = api.get("/v1/certificates");
    assert_eq!(na["error"], "method_not_allowed");
}
