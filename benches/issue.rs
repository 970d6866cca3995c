//! Certificate issuance throughput and latency: `CertIssuer::issue` (policy,
//! TTL cap, Ed25519 signing, and the audit row persisted to a file-backed
//! SQLite database in WAL mode), sequentially, as the API handler runs it
//! after token verification. Run with `cargo bench --bench issue`; prints
//! certificates/s and p50/p99/max latency. Goal: >= 2,000/s, p99 <= 5 ms.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use russh::keys::ssh_key::{Algorithm, PrivateKey};
use sallyport::audit::Store;
use sallyport::ca::CaKeys;
use sallyport::ca::issue::{CertIssuer, IssueRequest};
use sallyport::identity::oidc::VerifiedToken;
use sallyport::identity::{Identity, Kind};
use sallyport::policy::{Policy, PolicyHandle};

/// The policy issuance runs under (docs/policy.md format): the corp IdP's
/// people get their subject as principal, with the `sre` group's grants on
/// top — two matching roles, as a real deployment would evaluate.
const POLICY: &str = r#"
[[role]]
name = "corp-people"
[role.match]
issuer = ["corp"]
kind = "human"
[role.grant]
principals = ["{subject}"]
pty = true

[[role]]
name = "sre"
[role.match]
issuer = ["corp"]
groups = ["sre"]
[role.grant]
principals = ["{email_local}"]
cert_ttl = "30m"
port_forwarding = true
"#;

fn main() {
    let n: usize = std::env::var("ISSUE_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let dir = tempfile::tempdir().unwrap();
    let keys =
        CaKeys::load_or_create(&dir.path().join("keys"), Duration::from_secs(3600), &[]).unwrap();
    let store = Store::open(&dir.path().join("audit.db")).unwrap();
    let policy = PolicyHandle::new(Policy::from_toml("bench.toml", POLICY).unwrap());
    let issuer = CertIssuer::new(Arc::new(keys), store.clone(), policy);
    let pubkey = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)
        .unwrap()
        .public_key()
        .to_openssh()
        .unwrap();
    let now = sallyport::ca::keys::unix_now() as i64;
    let req = |i: usize| IssueRequest {
        public_key: pubkey.clone(),
        token: VerifiedToken {
            identity: Identity {
                issuer: "corp".into(),
                subject: format!("user{}", i % 100),
                email: Some(format!("user{}@example.com", i % 100)),
                groups: vec!["sre".into()],
                kind: Kind::Human,
                ..Default::default()
            },
            jti: Some(format!("jti-{i}")),
            iat: Some(now),
            exp: now + 3600,
            act_subject: None,
        },
        on_behalf_of: None,
        principal: None,
        source: Some("10.0.0.1".into()),
    };
    for i in 0..200 {
        issuer.issue(&req(i)).unwrap();
    }
    let mut lat = Vec::with_capacity(n);
    let cpu0 = cpu_time();
    let start = Instant::now();
    for i in 0..n {
        let r = req(i);
        let t = Instant::now();
        issuer.issue(&r).unwrap();
        lat.push(t.elapsed());
    }
    let total = start.elapsed();
    let cpu = cpu_time().saturating_sub(cpu0);
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    let rows = store.list_certificates(u32::MAX).unwrap().len();
    assert_eq!(
        rows,
        n + 200,
        "every certificate must be in the audit store"
    );
    println!(
        "issue: {n} certificates in {:.2?} = {:.0}/s; latency p50 {:.2?} p99 {:.2?} max {:.2?} (audit rows: {rows})",
        total,
        n as f64 / total.as_secs_f64(),
        pct(0.50),
        pct(0.99),
        lat[lat.len() - 1],
    );
    // On a shared, loaded machine wall-clock figures mostly measure waiting
    // for a CPU; CPU time per certificate is the capacity of one core.
    println!(
        "issue: CPU {:.2?} per certificate = {:.0}/s per core",
        cpu / n as u32,
        n as f64 / cpu.as_secs_f64()
    );
}

/// User + system CPU time of this process.
fn cpu_time() -> Duration {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    #[allow(unsafe_code)]
    let ru = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr());
        ru.assume_init()
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}
