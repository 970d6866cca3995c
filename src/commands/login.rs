//! `sallyport login`: get a short-lived SSH certificate from a sallyport
//! server — through the OIDC device authorization flow (RFC 8628) for people,
//! or a token file (a projected service-account token) for pods — and write
//! what `ssh` needs: an Ed25519 key (created once), the certificate, a
//! known_hosts file trusting the bastion's host CA, and an ssh_config block so
//! `ssh -F <out>/ssh_config bastion` just works, plus a kubeconfig for the
//! bastion's Kubernetes API proxy and the one `ssh -L` command that opens it.
//! `--renew` re-issues only when two thirds of the certificate's life passed;
//! `--watch` keeps doing that.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use russh::keys::ssh_key::{Algorithm, Certificate, LineEnding, PrivateKey};

use super::Global;
use crate::api::{CertificateResponse, LoginConfig, LoginIssuer};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// URL of the sallyport API, e.g. https://bastion.example.com:8022.
    #[arg(long, env = "SALLYPORT_SERVER", value_name = "URL")]
    pub server: String,
    /// Read the bearer token from this file (e.g. a projected service-account
    /// token) instead of the device flow. Re-read at every renewal.
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// Which configured OIDC issuer to use for the device flow (default: the first with a client id).
    #[arg(long, value_name = "ALIAS")]
    pub issuer: Option<String>,
    /// Where key, certificate, known_hosts and ssh_config go (default ~/.ssh/sallyport).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Ask for this principal only (must be one policy grants).
    #[arg(long)]
    pub principal: Option<String>,
    /// SSH host name of the bastion for ssh_config (default: the host of --server).
    #[arg(long, value_name = "HOST")]
    pub ssh_host: Option<String>,
    /// SSH port of the bastion (default: what the server reports).
    #[arg(long, value_name = "PORT")]
    pub ssh_port: Option<u16>,
    /// PEM CA bundle to trust for the server's TLS certificate.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Only get a new certificate when the current one is missing or past two thirds of its life.
    #[arg(long)]
    pub renew: bool,
    /// Local port of the Kubernetes API forward the written kubeconfig points at.
    #[arg(long, value_name = "PORT", default_value_t = 6443)]
    pub kube_port: u16,
    /// Keep running, renewing before expiry (for long-running agents; needs --token-file).
    #[arg(long)]
    pub watch: bool,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Files `login` manages.
struct Paths {
    key: PathBuf,
    cert: PathBuf,
    known_hosts: PathBuf,
    ssh_config: PathBuf,
    kubeconfig: PathBuf,
}

impl Paths {
    fn new(dir: &Path) -> Self {
        Self {
            key: dir.join("id_ed25519"),
            cert: dir.join("id_ed25519-cert.pub"),
            known_hosts: dir.join("known_hosts"),
            ssh_config: dir.join("ssh_config"),
            kubeconfig: dir.join("kubeconfig"),
        }
    }
}

pub async fn run(_g: &Global, a: Args) -> anyhow::Result<ExitCode> {
    if a.watch && a.token_file.is_none() {
        bail!("--watch needs --token-file (the device flow needs a person each time)");
    }
    let out = match &a.out {
        Some(d) => d.clone(),
        None => {
            let home = std::env::var_os("HOME").context("HOME is not set; pass --out DIR")?;
            PathBuf::from(home).join(".ssh").join("sallyport")
        }
    };
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let paths = Paths::new(&out);
    let server = url::Url::parse(&a.server)
        .with_context(|| format!("--server {:?} is not a URL", a.server))?;
    let http = http_client(a.ca_file.as_deref())?;

    loop {
        if (a.renew || a.watch)
            && let Some(at) = renew_point(&paths.cert)
            && crate::ca::keys::unix_now() < at
        {
            if !a.watch {
                eprintln!(
                    "certificate {} is still fresh; not renewing",
                    paths.cert.display()
                );
                return Ok(ExitCode::SUCCESS);
            }
            sleep_until(at).await;
            continue;
        }
        match login_once(&a, &server, &http, &paths).await {
            Ok(()) => {
                if !a.watch {
                    return Ok(ExitCode::SUCCESS);
                }
            }
            Err(e) if a.watch => {
                eprintln!("sallyport login: renewal failed, retrying in 30s: {e:#}");
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn sleep_until(unix: u64) {
    let now = crate::ca::keys::unix_now();
    tokio::time::sleep(Duration::from_secs(unix.saturating_sub(now).max(1))).await;
}

/// Two thirds into the life of the certificate at `path`, if it is readable.
fn renew_point(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let c = Certificate::from_openssh(text.trim()).ok()?;
    let life = c.valid_before().saturating_sub(c.valid_after());
    Some(c.valid_after().saturating_add(life / 3 * 2))
}

fn http_client(ca_file: Option<&Path>) -> anyhow::Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(10));
    if let Some(p) = ca_file {
        let pem = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
        for c in reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("{}: not PEM certificates", p.display()))?
        {
            b = b.add_root_certificate(c);
        }
    }
    b.build().context("cannot build the HTTP client")
}

/// One complete login: token, key, certificate, files.
async fn login_once(
    a: &Args,
    server: &url::Url,
    http: &reqwest::Client,
    paths: &Paths,
) -> anyhow::Result<()> {
    let cfg: LoginConfig = get_json(http, &server.join("v1/login-config")?).await?;
    let token = match &a.token_file {
        Some(p) => std::fs::read_to_string(p)
            .with_context(|| format!("cannot read token file {}", p.display()))?
            .trim()
            .to_string(),
        None => device_flow(a, http, &cfg).await?,
    };
    let key = load_or_create_key(&paths.key)?;
    let body = serde_json::json!({
        "public_key": key.public_key().to_openssh()?,
        "principal": a.principal,
    });
    let resp = http
        .post(server.join("v1/certificates")?)
        .bearer_auth(&token)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("cannot reach {server}"))?;
    let status = resp.status();
    let text = resp
        .text()
        .await
        .context("cannot read the server's answer")?;
    if !status.is_success() {
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        bail!(
            "the server refused a certificate ({status}): {}: {}",
            v["error"].as_str().unwrap_or("error"),
            v["message"].as_str().unwrap_or(&text)
        );
    }
    let issued: CertificateResponse =
        serde_json::from_str(&text).context("the server's answer is not a certificate")?;
    write_private(&paths.cert, format!("{}\n", issued.certificate).as_bytes())?;

    let host = match &a.ssh_host {
        Some(h) => h.clone(),
        None => server.host_str().unwrap_or("localhost").to_string(),
    };
    let port = a.ssh_port.or(cfg.ssh_port).unwrap_or(22);
    let pattern = if port == 22 {
        host.clone()
    } else {
        format!("[{host}]:{port}")
    };
    let ca_key = issued
        .known_hosts
        .strip_prefix("@cert-authority * ")
        .unwrap_or(&issued.known_hosts);
    write_file(
        &paths.known_hosts,
        format!("@cert-authority {pattern} {ca_key}\n").as_bytes(),
        0o644,
    )?;
    let user = issued
        .principals
        .first()
        .cloned()
        .unwrap_or_else(|| "sallyport".into());
    let config = ssh_config(&host, port, &user, paths);
    write_file(&paths.ssh_config, config.as_bytes(), 0o644)?;
    let kube_forward = write_kubeconfig(&cfg, &issued, a.kube_port, paths)?;

    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "certificate": paths.cert,
                "identity_file": paths.key,
                "known_hosts": paths.known_hosts,
                "ssh_config": paths.ssh_config,
                "kubeconfig": paths.kubeconfig,
                "kube_forward": kube_forward,
                "serial": issued.serial,
                "key_id": issued.key_id,
                "principals": issued.principals,
                "valid_after": issued.valid_after,
                "valid_before": issued.valid_before,
            })
        );
    } else {
        eprintln!(
            "certificate {} (serial {}, principals {}) valid for {}",
            paths.cert.display(),
            issued.serial,
            issued.principals.join(","),
            humantime::format_duration(Duration::from_secs(
                issued
                    .valid_before
                    .saturating_sub(crate::ca::keys::unix_now())
            ))
        );
        eprintln!("ssh_config written to {}:", paths.ssh_config.display());
        println!("{config}");
        eprintln!(
            "connect with: ssh -F {} bastion",
            paths.ssh_config.display()
        );
        eprintln!(
            "Kubernetes API: start `{kube_forward}`, then use --kubeconfig {} (or KUBECONFIG)",
            paths.kubeconfig.display()
        );
    }
    Ok(())
}

/// Write `<out>/kubeconfig` for the bastion's Kubernetes API proxy (no
/// credentials in it: the bastion authenticates upstream and impersonates the
/// certificate's identity) and return the `ssh -L` command that opens the
/// forward it expects. An agent's certificate names its namespace, which
/// becomes the context's default.
fn write_kubeconfig(
    cfg: &LoginConfig,
    issued: &CertificateResponse,
    local_port: u16,
    paths: &Paths,
) -> anyhow::Result<String> {
    use crate::tunnel::kubeapi::kubeconfig::kubeconfig;
    let namespace = Certificate::from_openssh(&issued.certificate)
        .ok()
        .and_then(|c| {
            let ext = c.extensions().get(crate::identity::CERT_EXTENSION)?;
            serde_json::from_str::<crate::identity::Identity>(ext).ok()
        })
        .and_then(|id| id.kube)
        .map(|k| k.namespace);
    write_file(
        &paths.kubeconfig,
        kubeconfig(local_port, namespace.as_deref()).as_bytes(),
        0o600,
    )?;
    let target = cfg.kube_api_target.as_deref().unwrap_or("kubernetes");
    let ssh_config = paths.ssh_config.display().to_string();
    Ok(kube_forward_command(&ssh_config, local_port, target))
}

/// `ssh -F <config> -N -L <port>:<target>:443 bastion`; a target pinned to
/// another port (`[kube] api_target = "kubernetes:6443"`) keeps its port.
fn kube_forward_command(ssh_config: &str, local_port: u16, target: &str) -> String {
    use crate::tunnel::kubeapi::kubeconfig::ssh_forward_command;
    match target.rsplit_once(':') {
        Some((host, port)) if port != "443" && port.parse::<u16>().is_ok() => format!(
            "ssh -F {} -N -L {local_port}:{}:{port} bastion",
            shell_words::quote(ssh_config),
            shell_words::quote(host)
        ),
        Some((host, "443")) => ssh_forward_command(Some(ssh_config), "bastion", local_port, host),
        _ => ssh_forward_command(Some(ssh_config), "bastion", local_port, target),
    }
}
fn ssh_config(host: &str, port: u16, user: &str, p: &Paths) -> String {
    format!(
        "# Written by `sallyport login`; include it from ~/.ssh/config with\n\
         #   Include {cfg}\n\
         Host bastion\n\
         \x20   HostName {host}\n\
         \x20   Port {port}\n\
         \x20   User {user}\n\
         \x20   IdentityFile {key}\n\
         \x20   CertificateFile {cert}\n\
         \x20   IdentitiesOnly yes\n\
         \x20   UserKnownHostsFile {kh}\n\
         \x20   StrictHostKeyChecking yes\n\
         \n\
         # Reach everything else through the bastion (uncomment to use):\n\
         # Host * !bastion\n\
         #     ProxyJump bastion\n\
         #     IdentityFile {key}\n\
         #     CertificateFile {cert}\n",
        cfg = p.ssh_config.display(),
        key = p.key.display(),
        cert = p.cert.display(),
        kh = p.known_hosts.display(),
    )
}

async fn get_json<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    url: &url::Url,
) -> anyhow::Result<T> {
    let resp = http
        .get(url.clone())
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let status = resp.status();
    if !status.is_success() {
        bail!("GET {url}: HTTP {status}");
    }
    resp.json()
        .await
        .with_context(|| format!("GET {url}: unexpected answer"))
}

fn pick_issuer<'a>(a: &Args, cfg: &'a LoginConfig) -> anyhow::Result<&'a LoginIssuer> {
    let found = match &a.issuer {
        Some(alias) => cfg.issuers.iter().find(|i| &i.alias == alias),
        None => cfg
            .issuers
            .iter()
            .find(|i| i.kind == "oidc" && i.client_id.is_some()),
    };
    found.with_context(|| {
        format!(
            "no OIDC issuer with a client id for the device flow (server offers: {}); use --token-file",
            cfg.issuers
                .iter()
                .map(|i| i.alias.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

/// RFC 8628 device authorization grant; returns the ID token.
async fn device_flow(
    a: &Args,
    http: &reqwest::Client,
    cfg: &LoginConfig,
) -> anyhow::Result<String> {
    let iss = pick_issuer(a, cfg)?;
    let client_id = iss.client_id.clone().unwrap_or_default();
    let (Some(dev_ep), Some(tok_ep)) = (&iss.device_authorization_endpoint, &iss.token_endpoint)
    else {
        bail!(
            "issuer {} offers no device authorization endpoint (or the server could not reach it)",
            iss.alias
        );
    };
    let resp = http
        .post(dev_ep)
        .form(&[
            ("client_id", client_id.as_str()),
            ("scope", &iss.scopes.join(" ")),
        ])
        .send()
        .await
        .with_context(|| format!("cannot reach {dev_ep}"))?;
    let status = resp.status();
    let v: serde_json::Value = resp
        .json()
        .await
        .with_context(|| format!("{dev_ep}: unexpected answer"))?;
    if !status.is_success() {
        bail!("device authorization refused ({status}): {v}");
    }
    let device_code = v["device_code"]
        .as_str()
        .context("device authorization answer has no device_code")?
        .to_string();
    let user_code = v["user_code"].as_str().unwrap_or_default();
    let uri = v["verification_uri"].as_str().unwrap_or_default();
    // RFC 8628 §3.2: interval defaults to 5 seconds.
    let mut interval = v["interval"].as_u64().unwrap_or(5).max(1);
    let expires_in = v["expires_in"].as_u64().unwrap_or(600);
    eprintln!("To sign in, open {uri} and enter the code {user_code}");
    if let Some(c) = v["verification_uri_complete"].as_str() {
        eprintln!("(or open {c})");
    }
    let deadline = crate::ca::keys::unix_now() + expires_in;
    loop {
        tokio::time::sleep(Duration::from_secs(interval)).await;
        if crate::ca::keys::unix_now() > deadline {
            bail!("the device code expired before the sign-in was approved; run login again");
        }
        let resp = http
            .post(tok_ep)
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("device_code", device_code.as_str()),
                ("client_id", client_id.as_str()),
            ])
            .send()
            .await
            .with_context(|| format!("cannot reach {tok_ep}"))?;
        let ok = resp.status().is_success();
        let v: serde_json::Value = resp.json().await.unwrap_or_default();
        if ok {
            return v["id_token"]
                .as_str()
                .or_else(|| v["access_token"].as_str())
                .map(str::to_string)
                .context("token answer has neither id_token nor access_token");
        }
        match v["error"].as_str().unwrap_or_default() {
            "authorization_pending" => {}
            // RFC 8628 §3.5: slow_down adds 5 seconds to the interval for good.
            "slow_down" => interval += 5,
            "access_denied" => bail!("the sign-in was denied"),
            "expired_token" => bail!("the device code expired; run login again"),
            other => bail!("token endpoint error: {other}: {v}"),
        }
    }
}

fn load_or_create_key(path: &Path) -> anyhow::Result<PrivateKey> {
    if path.exists() {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        return PrivateKey::from_openssh(text.as_bytes())
            .with_context(|| format!("{} is not an OpenSSH private key", path.display()));
    }
    let mut key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)?;
    key.set_comment("sallyport login");
    write_private(path, key.to_openssh(LineEnding::LF)?.as_bytes())?;
    write_file(
        &PathBuf::from(format!("{}.pub", path.display())),
        format!("{}\n", key.public_key().to_openssh()?).as_bytes(),
        0o644,
    )?;
    Ok(key)
}

fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    write_file(path, data, 0o600)
}

/// Write atomically (temp file + rename) with `mode`.
fn write_file(path: &Path, data: &[u8], mode: u32) -> anyhow::Result<()> {
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(data)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.sync_all().ok();
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_forward_command_keeps_a_pinned_port() {
        assert_eq!(
            kube_forward_command("/o/ssh_config", 6443, "kubernetes"),
            "ssh -F /o/ssh_config -N -L 6443:kubernetes:443 bastion"
        );
        assert_eq!(
            kube_forward_command("/o/ssh_config", 7000, "kubernetes:443"),
            "ssh -F /o/ssh_config -N -L 7000:kubernetes:443 bastion"
        );
        assert_eq!(
            kube_forward_command("/a b/ssh_config", 6443, "k8s-api:6443"),
            "ssh -F '/a b/ssh_config' -N -L 6443:k8s-api:6443 bastion"
        );
    }
}
