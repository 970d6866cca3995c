//! `sallyport ca` against a data dir without keys: `show`, `sign` and `krl`
//! refuse with the file they looked for and how to create it, and create
//! nothing; `ca init` creates the keys once and leaves them alone after.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::{Run, bin, keygen, run_cmd};

fn sallyport(data: &Path, args: &[&str]) -> Run {
    let mut cmd = Command::new(bin());
    cmd.arg("--data-dir").arg(data).args(args);
    cmd.env_remove("SALLYPORT_CONFIG")
        .env_remove("SALLYPORT_DATA_DIR");
    run_cmd(cmd, None, Duration::from_secs(60), String::new())
}

#[test]
fn ca_commands_without_keys_fail_clearly_and_create_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let key = tmp.path().join("id_x");
    keygen(&key);
    let pubkey = format!("{}.pub", key.display());
    let krl = tmp.path().join("krl").display().to_string();
    let user_ca = data.join("keys").join("user_ca");
    for args in [
        vec!["ca", "show"],
        vec![
            "ca",
            "sign",
            "--public-key",
            &pubkey,
            "--principal",
            "x",
            "--identity",
            "x",
        ],
        vec!["ca", "krl", "-o", &krl],
    ] {
        let r = sallyport(&data, &args).failure();
        let err = r.stderr();
        assert!(
            err.contains(&user_ca.display().to_string()) && err.contains("sallyport ca init"),
            "{args:?}\n{}",
            r.explain()
        );
        assert!(!user_ca.exists(), "{args:?} created a CA key");
    }
    assert!(!Path::new(&format!("{}-cert.pub", key.display())).exists());

    let first = sallyport(&data, &["ca", "init"]).success();
    assert!(first.stderr().contains("created"), "{}", first.explain());
    let line = first.stdout();
    assert!(line.starts_with("ssh-ed25519 "), "{}", first.explain());
    let again = sallyport(&data, &["ca", "init"]).success();
    assert!(
        again.stderr().contains("already present"),
        "{}",
        again.explain()
    );
    assert_eq!(again.stdout(), line, "ca init replaced the CA");
    let shown = sallyport(&data, &["ca", "show"]).success();
    assert!(shown.stdout().contains(line.trim()), "{}", shown.explain());
}
