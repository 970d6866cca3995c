//! `sallyport ca`: create the CA keys, show the CA public keys (for sshd's
//! TrustedUserCAKeys and clients' known_hosts), sign a user certificate by
//! hand, export a KRL. Only `init` (and `serve`) create keys; the others
//! load existing ones, so a wrong data dir is an error rather than a new CA.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use russh::keys::ssh_key::{HashAlg, PublicKey};

use super::{Global, open_ca, open_store};
use crate::ca::sign::{UserCertRequest, sign_user};
use crate::identity::{Identity, Kind};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create the CA and host keys in the data dir if they do not exist yet
    /// (`serve` does the same on its first start), and print the public lines.
    Init,
    /// Print the user CA public key (a TrustedUserCAKeys line) and a
    /// `@cert-authority` known_hosts line for the host CA.
    Show(ShowArgs),
    /// Sign a user certificate for a public key, recorded in the audit log.
    ///
    /// Example: sallyport ca sign --public-key ~/.ssh/id_ed25519.pub --principal alice --identity alice --ttl 15m
    Sign(SignArgs),
    /// Write an OpenSSH KRL of every revoked certificate (for sshd's RevokedKeys
    /// on targets, and `ssh-keygen -Q`).
    ///
    /// Example: sallyport ca krl -o /etc/ssh/sallyport.krl
    Krl(KrlArgs),
}

#[derive(Debug, clap::Args)]
pub struct KrlArgs {
    /// Where to write the KRL (replaced atomically).
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// Host pattern for the known_hosts line.
    #[arg(long, default_value = "*")]
    pub hosts: String,
    /// Print JSON: {"user_ca": ..., "known_hosts": ...}.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct SignArgs {
    /// The OpenSSH public key to certify (e.g. ~/.ssh/id_ed25519.pub).
    #[arg(long, value_name = "FILE")]
    pub public_key: PathBuf,
    /// Login name the certificate is valid for (repeat for several).
    #[arg(long = "principal", value_name = "NAME", required = true)]
    pub principals: Vec<String>,
    /// Identity subject recorded in the certificate (key id `oidc:local:<ID>`).
    #[arg(long, value_name = "ID")]
    pub identity: String,
    /// Groups of the identity (repeatable); policy roles match on them.
    #[arg(long = "group", value_name = "GROUP")]
    pub groups: Vec<String>,
    /// Email of the identity.
    #[arg(long)]
    pub email: Option<String>,
    /// human or agent.
    #[arg(long, default_value = "human", value_parser = ["human", "agent"])]
    pub kind: String,
    /// The human an agent acts for.
    #[arg(long, value_name = "WHO")]
    pub on_behalf_of: Option<String>,
    /// Lifetime, e.g. 15m, 1h.
    #[arg(long, default_value = "15m", value_parser = crate::config::parse_duration)]
    pub ttl: std::time::Duration,
    /// Force this command for every session (critical option force-command).
    #[arg(long, value_name = "CMD")]
    pub force_command: Option<String>,
    /// Only accept from these addresses/CIDRs, comma-separated (critical option source-address).
    #[arg(long, value_name = "CIDRS")]
    pub source_address: Option<String>,
    /// Allow port forwarding (`ssh -L`, `ssh -J`).
    #[arg(long)]
    pub permit_port_forwarding: bool,
    /// Do not allow a pty.
    #[arg(long)]
    pub no_pty: bool,
    /// Write the certificate here (default: <public key without .pub>-cert.pub).
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Print JSON describing the certificate.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(g: &Global, cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Init => init(g),
        Command::Show(a) => show(g, a),
        Command::Sign(a) => sign(g, a),
        Command::Krl(a) => krl(g, a),
    }
}

/// The CA keys of the configured data dir, which must exist: signing with
/// (or showing) a CA made up on the spot would only fail later, at sshd.
fn existing_ca(cfg: &crate::config::Config) -> anyhow::Result<crate::ca::CaKeys> {
    let dir = cfg.data_dir.join("keys");
    let user_ca = dir.join(crate::ca::keys::USER_CA);
    if !user_ca.exists() {
        anyhow::bail!(
            "no CA keys: {} does not exist; run `sallyport ca init` (or start `sallyport serve` once) with this configuration to create them, or point --config / --data-dir at the server's data dir",
            user_ca.display()
        );
    }
    crate::ca::CaKeys::load_existing(&dir)
        .with_context(|| format!("cannot load the CA keys in {}", dir.display()))
}

fn init(g: &Global) -> anyhow::Result<ExitCode> {
    let cfg = g.load_config()?;
    let dir = cfg.data_dir.join("keys");
    let existed = dir.join(crate::ca::keys::USER_CA).exists();
    let keys = open_ca(&cfg)?;
    if existed {
        eprintln!("CA keys already present in {} (unchanged)", dir.display());
    } else {
        eprintln!("created CA and host keys in {}", dir.display());
    }
    println!("{}", keys.user_ca_line()?);
    Ok(ExitCode::SUCCESS)
}

fn show(g: &Global, a: ShowArgs) -> anyhow::Result<ExitCode> {
    let cfg = g.load_config()?;
    let keys = existing_ca(&cfg)?;
    let user = keys.user_ca_line()?;
    let hosts = keys.known_hosts_line(&a.hosts)?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({ "user_ca": user, "known_hosts": hosts })
        );
    } else {
        println!("# user CA (sshd_config: TrustedUserCAKeys <file with this line>)");
        println!("{user}");
        println!("# host CA (known_hosts)");
        println!("{hosts}");
    }
    Ok(ExitCode::SUCCESS)
}

fn sign(g: &Global, a: SignArgs) -> anyhow::Result<ExitCode> {
    let cfg = g.load_config()?;
    let text = std::fs::read_to_string(&a.public_key)
        .with_context(|| format!("cannot read public key {}", a.public_key.display()))?;
    let public = PublicKey::from_openssh(text.trim()).with_context(|| {
        format!(
            "{}: not an OpenSSH public key (expected e.g. `ssh-ed25519 AAAA... comment`)",
            a.public_key.display()
        )
    })?;
    let keys = existing_ca(&cfg)?;
    let store = open_store(&cfg)?;
    let identity = Identity {
        issuer: "local".into(),
        subject: a.identity.clone(),
        email: a.email.clone(),
        groups: a.groups.clone(),
        kind: if a.kind == "agent" {
            Kind::Agent
        } else {
            Kind::Human
        },
        kube: None,
        on_behalf_of: a.on_behalf_of.clone(),
    };
    let mut req = UserCertRequest::new(
        public.clone(),
        identity.clone(),
        a.principals.clone(),
        a.ttl,
    );
    req.permit_pty = !a.no_pty;
    req.permit_port_forwarding = a.permit_port_forwarding;
    req.force_command = a.force_command.clone();
    req.source_address = a.source_address.clone();
    if let Some(sa) = &req.source_address {
        crate::ca::verify::check_source_address(sa, "0.0.0.0".parse()?)
            .or_else(|e| match e {
                crate::ca::verify::Rejection::SourceAddress { .. } => Ok(()),
                other => Err(other),
            })
            .with_context(|| {
                format!("--source-address {sa:?}: write addresses or CIDRs, comma-separated")
            })?;
    }
    let cert = sign_user(&keys.user_ca, &req)?;
    let fingerprint = public.fingerprint(HashAlg::Sha256).to_string();
    store.record_certificate(
        req.serial,
        &identity,
        cert.key_id(),
        &req.principals,
        req.valid_after,
        req.valid_before,
        &fingerprint,
        None,
        None,
        Some("cli"),
    )?;
    let out = a.output.clone().unwrap_or_else(|| {
        let s = a.public_key.display().to_string();
        PathBuf::from(format!("{}-cert.pub", s.strip_suffix(".pub").unwrap_or(&s)))
    });
    let line = cert.to_openssh()?;
    let mut f =
        std::fs::File::create(&out).with_context(|| format!("cannot write {}", out.display()))?;
    writeln!(f, "{line}").with_context(|| format!("cannot write {}", out.display()))?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "certificate": out,
                "serial": req.serial,
                "key_id": cert.key_id(),
                "principals": req.principals,
                "valid_after": req.valid_after,
                "valid_before": req.valid_before,
                "fingerprint": fingerprint,
            })
        );
    } else {
        eprintln!(
            "signed certificate serial {} key id {:?} for {} valid {} -> {}",
            req.serial,
            cert.key_id(),
            req.principals.join(","),
            humantime::format_duration(a.ttl),
            out.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn krl(g: &Global, a: KrlArgs) -> anyhow::Result<ExitCode> {
    let cfg = g.load_config()?;
    let keys = existing_ca(&cfg)?;
    let store = open_store(&cfg)?;
    let revoked = store.revoked().context("cannot read revocations")?;
    let now = crate::ca::keys::unix_now();
    let contents = crate::ca::krl::KrlContents {
        serials: revoked.serials.clone(),
        key_ids: revoked.key_ids.clone(),
    };
    let bytes = crate::ca::krl::encode(keys.user_ca_public(), &contents, now, now, "sallyport")?;
    let tmp = PathBuf::from(format!("{}.tmp", a.output.display()));
    std::fs::write(&tmp, &bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &a.output)
        .with_context(|| format!("cannot write {}", a.output.display()))?;
    eprintln!(
        "wrote {} ({} serial(s), {} key id(s))",
        a.output.display(),
        contents.serials.len(),
        contents.key_ids.len()
    );
    Ok(ExitCode::SUCCESS)
}
