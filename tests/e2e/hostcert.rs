//! The bastion's host certificate is renewed while the server runs: the
//! renewal task re-signs it two thirds into its life, writes the new
//! `-cert.pub`, and connections accepted afterwards are offered the new
//! certificate (seen with `ssh-keyscan -c`), which clients trusting the host
//! CA (`@cert-authority`, StrictHostKeyChecking=yes) accept without a change
//! — also after the first certificate has expired.

use std::process::Command;
use std::time::Duration;

use russh::keys::ssh_key::Certificate;

use crate::support::{self, Server, ServerOpts};

/// The host certificate `ssh-keyscan -c` is offered on `port`.
fn presented(port: u16) -> Option<Certificate> {
    let out = Command::new("ssh-keyscan")
        .args([
            "-c",
            "-t",
            "ed25519",
            "-T",
            "10",
            "-p",
            &port.to_string(),
            "127.0.0.1",
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "ssh-ed25519-cert-v01@openssh.com AAAA..." (the host name, when
    // printed, comes first).
    let line = text.lines().find(|l| l.contains("-cert-v01@openssh.com"))?;
    let at = line.find("ssh-ed25519-cert-v01@openssh.com")?;
    Certificate::from_openssh(line[at..].trim()).ok()
}

fn on_disk(s: &Server) -> Certificate {
    let p = s
        .data_dir
        .join("keys")
        .join("ssh_host_ed25519_key-cert.pub");
    Certificate::from_openssh(std::fs::read_to_string(p).unwrap().trim()).unwrap()
}

#[test]
fn host_cert_renewed_while_running_and_new_connections_get_it() {
    // A very short validity so renewal happens during the test (renewed
    // every ~6 s); operators use days (default 30 days).
    let s = Server::start_with(ServerOpts {
        // Every ssh-keyscan below is a connection: lift the per-source rate.
        ssh_extra: "host_cert_validity = \"9s\"\nper_source_per_minute = 100000\n".into(),
        ..Default::default()
    });
    let alice = s.user("alice", &[]);
    let first =
        presented(s.ssh_port).unwrap_or_else(|| panic!("no host certificate offered\n{}", s.log()));
    let r = s.run_ssh(&alice, &["echo", "before"], None).success();
    assert_eq!(r.stdout().trim(), "before");

    // Wait for the renewal task to write a new certificate, then for the
    // server to offer one other than the first (serials are random).
    let renewed = support::wait_for(Duration::from_secs(60), || {
        if on_disk(&s).serial() == first.serial() {
            return None;
        }
        let c = presented(s.ssh_port)?;
        (c.serial() != first.serial()).then_some(c)
    })
    .unwrap_or_else(|| panic!("host certificate never renewed\n{}", s.log()));
    assert!(renewed.valid_before() > first.valid_before());
    assert_eq!(renewed.public_key(), first.public_key(), "same host key");
    assert_eq!(
        renewed.signature_key(),
        first.signature_key(),
        "same host CA"
    );
    assert!(
        s.log().contains("renewed the host certificate"),
        "{}",
        s.log()
    );

    // Once the first certificate has expired, a client with strict host
    // checking against the host CA still connects: it is offered a fresh one.
    support::wait_for(Duration::from_secs(60), || {
        (sallyport::ca::keys::unix_now() > first.valid_before()).then_some(())
    })
    .unwrap();
    let r = s.run_ssh(&alice, &["echo", "after"], None).success();
    assert_eq!(r.stdout().trim(), "after");
    let now = presented(s.ssh_port).unwrap();
    assert!(now.valid_before() > sallyport::ca::keys::unix_now());
    // What is offered is what the renewal task wrote (or an even newer one).
    let disk = on_disk(&s);
    assert!(disk.valid_before() >= now.valid_before());
}
