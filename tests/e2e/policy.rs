//! `sallyport policy check` and `sallyport policy test` through the real
//! binary: every invalid fixture fails at the line its `# expect:` comment
//! names, every shipped and valid policy passes, and what-if decisions
//! (deny over allow, approve over allow, default deny, strict opaque, CIDR
//! forwards, kube secrets) come with the rule that made them. Reload is
//! covered in-process by `policy::watch` tests (this branch has no `serve`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::{Run, bin, keygen, run_cmd};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Run `sallyport <args>` with no config and a throwaway data dir.
fn sallyport(data: &Path, args: &[&str]) -> Run {
    let mut cmd = Command::new(bin());
    cmd.arg("--data-dir").arg(data).args(args);
    cmd.env_remove("SALLYPORT_CONFIG")
        .env_remove("SALLYPORT_DATA_DIR");
    run_cmd(cmd, None, Duration::from_secs(60), String::new())
}

fn json(r: &Run) -> serde_json::Value {
    serde_json::from_str(&r.stdout()).unwrap_or_else(|e| panic!("not JSON ({e})\n{}", r.explain()))
}

/// `# expect: <line>:<col> <message substring>` in a fixture.
fn expectation(text: &str) -> Option<(u64, u64, String)> {
    let rest = text.lines().find_map(|l| l.strip_prefix("# expect: "))?;
    let (pos, msg) = rest.split_once(' ')?;
    let (line, col) = pos.split_once(':')?;
    Some((line.parse().ok()?, col.parse().ok()?, msg.to_string()))
}

#[test]
fn policy_check_fails_every_invalid_fixture_at_its_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = root().join("testdata/policies/invalid");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    cases.sort();
    let mut checked = 0;
    for case in &cases {
        // The expectation lives in the case file, or in one file of a case dir.
        let files: Vec<PathBuf> = if case.is_dir() {
            let mut f: Vec<PathBuf> = std::fs::read_dir(case)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            f.sort();
            f
        } else {
            vec![case.clone()]
        };
        let (file, (line, col, msg)) = files
            .iter()
            .find_map(|f| expectation(&std::fs::read_to_string(f).unwrap()).map(|e| (f, e)))
            .unwrap_or_else(|| panic!("{}: no '# expect:' comment", case.display()));

        let r = sallyport(
            tmp.path(),
            &["policy", "check", "--json", case.to_str().unwrap()],
        );
        assert_eq!(r.code(), Some(1), "{}\n{}", case.display(), r.explain());
        let v = json(&r);
        assert_eq!(v["ok"], false, "{}", r.explain());
        let errors = v["errors"].as_array().unwrap();
        assert_eq!(errors.len(), 1, "{}", r.explain());
        let e = &errors[0];
        assert_eq!(e["file"], file.display().to_string(), "{}", r.explain());
        assert_eq!(
            (e["line"].as_u64(), e["column"].as_u64()),
            (Some(line), Some(col)),
            "{}",
            r.explain()
        );
        assert!(
            e["message"].as_str().unwrap().contains(&msg),
            "want {msg:?}\n{}",
            r.explain()
        );

        // The text form says the same, as file:line:column: message.
        let t = sallyport(tmp.path(), &["policy", "check", case.to_str().unwrap()]).failure();
        let want = format!("{}:{line}:{col}: ", file.display());
        assert!(
            t.stdout().starts_with(&want),
            "want {want:?}\n{}",
            t.explain()
        );
        checked += 1;
    }
    assert!(checked >= 25, "only {checked} invalid fixtures checked");
}

#[test]
fn policy_check_reports_every_error_not_just_the_first() {
    let tmp = tempfile::tempdir().unwrap();
    let inv = root().join("testdata/policies/invalid");
    let files = [
        "bad-glob.toml",
        "bad-port.toml",
        "wrong-type.toml",
        "unknown-key-exec.toml",
    ];
    let mut args = vec!["policy".to_string(), "check".to_string()];
    args.extend(files.iter().map(|f| inv.join(f).display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = sallyport(tmp.path(), &args).failure();
    let lines: Vec<String> = r.stdout().lines().map(String::from).collect();
    assert_eq!(lines.len(), files.len(), "{}", r.explain());
    for f in files {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&inv.join(f).display().to_string())),
            "{f} missing\n{}",
            r.explain()
        );
    }
    assert!(r.stderr().contains("4 error(s)"), "{}", r.explain());
}

#[test]
fn policy_check_passes_shipped_and_valid_policies() {
    let tmp = tempfile::tempdir().unwrap();
    let shipped = root().join("policies");
    let r = sallyport(
        tmp.path(),
        &["policy", "check", "--json", shipped.to_str().unwrap()],
    )
    .success();
    let v = json(&r);
    assert_eq!(v["ok"], true, "{}", r.explain());
    let roles: Vec<&str> = v["roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    for name in ["operators", "copilot-agents", "sre"] {
        assert!(roles.contains(&name), "{name}: {}", r.explain());
    }
    assert_eq!(v["files"].as_array().unwrap().len(), 3, "{}", r.explain());
    assert_eq!(
        v["warnings"].as_array().unwrap().len(),
        0,
        "{}",
        r.explain()
    );

    let valid = root().join("testdata/policies/valid");
    let mut n = 0;
    for e in std::fs::read_dir(&valid).unwrap() {
        let p = e.unwrap().path();
        let r = sallyport(tmp.path(), &["policy", "check", p.to_str().unwrap()]).success();
        assert!(
            r.stdout().lines().any(|l| l.starts_with("ok: ")),
            "{}",
            r.explain()
        );
        // Warnings are printed with file:line:column but do not fail the check.
        if p.ends_with("inline-and-strings.toml") {
            let want = format!(
                "{}:8:1: warning: role 'agents' grants shell/exec",
                p.display()
            );
            assert!(r.stdout().contains(&want), "want {want:?}\n{}", r.explain());
        }
        n += 1;
    }
    assert!(n >= 4, "only {n} valid fixtures");

    // No argument and no config: the default dir is not seeded by `check`,
    // which checks the embedded default instead.
    let r = sallyport(tmp.path(), &["policy", "check"]).success();
    assert!(r.stdout().contains("operators"), "{}", r.explain());
    assert!(!tmp.path().join("policies").exists());

    // An empty directory is an error, not a silent deny-all.
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let r = sallyport(tmp.path(), &["policy", "check", empty.to_str().unwrap()]).failure();
    assert!(r.stderr().contains("no *.toml files"), "{}", r.explain());
}

/// `policy test --json` against `dir`; returns (verdict, reason, whole JSON).
fn what_if(data: &Path, dir: &Path, args: &[&str]) -> (String, String, serde_json::Value) {
    let mut a = vec![
        "policy",
        "test",
        "--json",
        "--policy",
        dir.to_str().unwrap(),
    ];
    a.extend_from_slice(args);
    let r = sallyport(data, &a).success();
    let v = json(&r);
    (
        v["verdict"].as_str().unwrap().to_string(),
        v["reason"].as_str().unwrap().to_string(),
        v,
    )
}

#[test]
fn policy_test_decisions_name_their_rule() {
    let tmp = tempfile::tempdir().unwrap();
    let shipped = root().join("policies");
    let d = tmp.path();

    // Deny wins over allow = ["*"]: the deny rule and its line are named.
    let (v, why, _) = what_if(
        d,
        &shipped,
        &["--subject", "alice", "--exec", "ls -la && rm -rf /"],
    );
    assert_eq!(v, "deny");
    assert!(
        why.starts_with(&format!("{}/default.toml:", shipped.display()))
            && why.contains("role 'operators' exec.deny"),
        "{why}"
    );
    let (v, why, _) = what_if(d, &shipped, &["--subject", "alice", "--exec", "ls -la"]);
    assert_eq!(
        (v.as_str(), why.contains("exec.allow '*'")),
        ("allow", true),
        "{why}"
    );

    // Approve wins over allow: sre may forward anywhere, prod-* needs approval.
    let sre = ["--issuer", "corp", "--subject", "sam", "--groups", "sre"];
    let mut a = sre.to_vec();
    a.extend(["--forward", "prod-db:5432"]);
    let (v, why, _) = what_if(d, &shipped, &a);
    assert_eq!(v, "approve", "{why}");
    assert!(
        why.contains("role 'sre' forward.approve 'prod-*:*'"),
        "{why}"
    );

    // No role matches: default deny.
    let (v, why, j) = what_if(
        d,
        &shipped,
        &["--issuer", "corp", "--subject", "eve", "--exec", "ls"],
    );
    assert_eq!(
        (v.as_str(), why.as_str()),
        ("deny", "no role matched (default deny)")
    );
    assert_eq!(j["roles"].as_array().unwrap().len(), 0);

    // Strict agents: a line the parser cannot see into is denied.
    let agent = [
        "--issuer",
        "k8s",
        "--subject",
        "system:serviceaccount:dev-a:copilot",
        "--kind",
        "agent",
        "--namespace",
        "dev-a",
        "--service-account",
        "copilot",
    ];
    let mut a = agent.to_vec();
    a.extend(["--exec", "git log 'unbalanced"]);
    let (v, why, _) = what_if(d, &shipped, &a);
    assert_eq!(v, "deny");
    assert!(why.contains("grant.strict"), "{why}");
    let mut a = agent.to_vec();
    a.extend(["--exec", "git log --oneline"]);
    assert_eq!(what_if(d, &shipped, &a).0, "allow");

    // Kube: secrets denied even though get in dev-* is allowed.
    let mut a = agent.to_vec();
    a.extend(["--kube", "get", "secrets", "dev-a", "db-password"]);
    let (v, why, _) = what_if(d, &shipped, &a);
    assert_eq!(v, "deny");
    assert!(
        why.contains("kube.deny") && why.contains("secrets"),
        "{why}"
    );
    let mut a = agent.to_vec();
    a.extend(["--kube", "get", "pods/log", "dev-a", "web-1"]);
    assert_eq!(what_if(d, &shipped, &a).0, "allow");
    let mut a = agent.to_vec();
    a.extend(["--kube", "delete", "pods", "dev-a", "web-1"]);
    assert_eq!(what_if(d, &shipped, &a).0, "approve");

    // Metadata addresses stay denied under sre's "*:*".
    let mut a = sre.to_vec();
    a.extend(["--forward", "169.254.169.254:80"]);
    let (v, why, _) = what_if(d, &shipped, &a);
    assert_eq!(v, "deny");
    assert!(why.contains("forward.deny '169.254.0.0/16:*'"), "{why}");
}

#[test]
fn policy_test_cidr_forward_checks_resolved_addresses() {
    let tmp = tempfile::tempdir().unwrap();
    let pdir = tmp.path().join("p");
    std::fs::create_dir_all(&pdir).unwrap();
    std::fs::write(
        pdir.join("net.toml"),
        "[[role]]\nname = \"net\"\n[role.match]\nissuer = [\"local\"]\n[role.forward]\nallow = [\"10.0.0.0/8:22\"]\n",
    )
    .unwrap();
    let d = tmp.path();
    let base = ["--subject", "alice", "--forward", "web-1:22"];
    let mut a = base.to_vec();
    a.extend(["--resolved", "10.0.3.4"]);
    let (v, why, _) = what_if(d, &pdir, &a);
    assert_eq!(v, "allow");
    assert_eq!(
        why,
        format!(
            "{}:6 role 'net' forward.allow '10.0.0.0/8:22'",
            pdir.join("net.toml").display()
        )
    );
    let mut a = base.to_vec();
    a.extend(["--resolved", "10.0.3.4", "--resolved", "192.168.1.1"]);
    assert_eq!(
        what_if(d, &pdir, &a).0,
        "deny",
        "one address outside the net"
    );
    assert_eq!(what_if(d, &pdir, &base).0, "deny", "unresolved name");
    assert_eq!(
        what_if(
            d,
            &pdir,
            &["--subject", "alice", "--forward", "10.1.1.1:22"]
        )
        .0,
        "allow"
    );

    // --expect turns a verdict into an exit code for CI.
    let mut a = vec!["policy", "test", "--policy", pdir.to_str().unwrap()];
    a.extend([
        "--subject",
        "alice",
        "--forward",
        "10.1.1.1:2222",
        "--expect",
        "allow",
    ]);
    let r = sallyport(d, &a).failure();
    assert!(
        r.stderr().contains("expected allow, got deny"),
        "{}",
        r.explain()
    );
}

#[test]
fn policy_test_reads_the_identity_from_a_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("id_agent");
    keygen(&key);
    let pubkey = format!("{}.pub", key.display());
    // `ca sign` never creates a CA as a side effect.
    sallyport(tmp.path(), &["ca", "init"]).success();
    sallyport(
        tmp.path(),
        &[
            "ca",
            "sign",
            "--public-key",
            &pubkey,
            "--principal",
            "sam",
            "--identity",
            "sam",
            "--group",
            "sre",
            "--ttl",
            "5m",
        ],
    )
    .success();
    let cert = format!("{}-cert.pub", key.display());
    let shipped = root().join("policies");
    // The certificate's identity (issuer local, human, group sre) matches
    // both the operators and the sre role.
    let (v, _, j) = what_if(tmp.path(), &shipped, &["--identity", &cert, "--session"]);
    assert_eq!(v, "allow");
    assert_eq!(j["identity"]["subject"], "sam");
    let roles: Vec<&str> = j["roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(roles, vec!["operators", "sre"], "{j}");
    assert_eq!(j["detail"]["shell"], true);
    // sre's approver right comes with the certificate's groups.
    let (v, why, _) = what_if(
        tmp.path(),
        &shipped,
        &["--identity", &cert, "--approve-for", "dana"],
    );
    assert_eq!(v, "allow", "{why}");
    let (v, why, _) = what_if(
        tmp.path(),
        &shipped,
        &["--identity", &cert, "--approve-for", "sam"],
    );
    assert_eq!(
        (v.as_str(), why.as_str()),
        ("deny", "self-approval is not allowed")
    );

    // A plain public key is not an identity.
    let mut a = vec!["policy", "test", "--policy", shipped.to_str().unwrap()];
    a.extend(["--identity", &pubkey, "--session"]);
    let r = sallyport(tmp.path(), &a).failure();
    assert!(
        r.stderr().contains("nor an OpenSSH certificate"),
        "{}",
        r.explain()
    );
}
