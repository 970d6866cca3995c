//! CA and host key files under `<data_dir>/keys`, created on first start:
//! `user_ca` (signs user certificates), `host_ca` (signs the bastion's host
//! certificate), `ssh_host_ed25519_key` and its `-cert.pub`. Private keys are
//! written 0600 in a 0700 directory; a CA key readable by group or others is
//! refused, like sshd refuses such host keys.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use russh::keys::ssh_key::{Algorithm, Certificate, LineEnding, PrivateKey, PublicKey};

use super::{Error, sign};

/// The bastion's keys, loaded or created.
#[derive(Clone)]
pub struct CaKeys {
    pub dir: PathBuf,
    pub user_ca: PrivateKey,
    pub host_ca: PrivateKey,
    pub host_key: PrivateKey,
    pub host_cert: Certificate,
}

impl std::fmt::Debug for CaKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaKeys")
            .field("dir", &self.dir)
            .field("user_ca", &"MASKED")
            .field("host_ca", &"MASKED")
            .field("host_key", &"MASKED")
            .finish()
    }
}

pub const USER_CA: &str = "user_ca";
pub const HOST_CA: &str = "host_ca";
pub const HOST_KEY: &str = "ssh_host_ed25519_key";
pub const HOST_CERT: &str = "ssh_host_ed25519_key-cert.pub";

impl CaKeys {
    /// Load the keys in `dir`, creating what is missing, and (re)sign the host
    /// certificate when it is missing, not ours, or past two thirds of its life.
    pub fn load_or_create(
        dir: &Path,
        host_cert_validity: Duration,
        host_names: &[String],
    ) -> Result<Self, Error> {
        create_private_dir(dir)?;
        let user_ca = load_or_generate(&dir.join(USER_CA), "sallyport user CA")?;
        let host_ca = load_or_generate(&dir.join(HOST_CA), "sallyport host CA")?;
        let host_key = load_or_generate(&dir.join(HOST_KEY), "sallyport host key")?;
        let cert_path = dir.join(HOST_CERT);
        let host_cert = match fs::read_to_string(&cert_path) {
            Ok(text) => Certificate::from_openssh(text.trim())
                .ok()
                .filter(|c| host_cert_fresh(c, &host_ca, &host_key)),
            Err(_) => None,
        };
        let host_cert = match host_cert {
            Some(c) => c,
            None => {
                let c = sign::sign_host(
                    &host_ca,
                    host_key.public_key(),
                    host_names,
                    host_cert_validity,
                )?;
                write_public(&cert_path, &c.to_openssh()?)?;
                tracing::info!(path = %cert_path.display(), "signed a new host certificate");
                c
            }
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            user_ca,
            host_ca,
            host_key,
            host_cert,
        })
    }

    /// Load existing keys without creating anything (for CLI commands that
    /// must not invent a CA, e.g. `ca show` against a wrong data dir).
    pub fn load_existing(dir: &Path) -> Result<Self, Error> {
        let user_ca = load_private(&dir.join(USER_CA))?;
        let host_ca = load_private(&dir.join(HOST_CA))?;
        let host_key = load_private(&dir.join(HOST_KEY))?;
        let cert_path = dir.join(HOST_CERT);
        let text = fs::read_to_string(&cert_path).map_err(|e| file_err(&cert_path, e))?;
        let host_cert = Certificate::from_openssh(text.trim())?;
        Ok(Self {
            dir: dir.to_path_buf(),
            user_ca,
            host_ca,
            host_key,
            host_cert,
        })
    }

    /// The user CA public key, one line, as sshd's TrustedUserCAKeys takes it.
    pub fn user_ca_line(&self) -> Result<String, Error> {
        Ok(self.user_ca.public_key().to_openssh()?)
    }

    /// A known_hosts line trusting the host CA for `pattern` (e.g. `*`).
    pub fn known_hosts_line(&self, pattern: &str) -> Result<String, Error> {
        Ok(format!(
            "@cert-authority {pattern} {}",
            self.host_ca.public_key().to_openssh()?
        ))
    }

    /// Public key of the user CA.
    pub fn user_ca_public(&self) -> &PublicKey {
        self.user_ca.public_key()
    }
}

/// Host names the host certificate is valid for by default.
pub fn default_host_names(listen: &std::net::SocketAddr) -> Vec<String> {
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let ip = listen.ip();
    if !ip.is_unspecified() && !names.contains(&ip.to_string()) {
        names.push(ip.to_string());
    }
    if let Ok(h) = nix::unistd::gethostname()
        && let Some(h) = h.to_str()
        && !h.is_empty()
        && !names.iter().any(|n| n == h)
    {
        names.push(h.to_string());
    }
    names
}

/// When a host certificate is due for renewal: two thirds into its life as
/// signed, i.e. counted from its signing time, not from the back-dated
/// `valid_after` ([`sign::HOST_CERT_BACKDATE_SECS`]) — otherwise a short
/// validity would be "due" the moment it was signed. The server's renewal
/// task and [`CaKeys::load_or_create`] both decide with this.
pub fn host_cert_renew_at(c: &Certificate) -> u64 {
    let signed = c
        .valid_after()
        .saturating_add(sign::HOST_CERT_BACKDATE_SECS)
        .min(c.valid_before());
    let life = c.valid_before().saturating_sub(signed);
    signed.saturating_add(life / 3 * 2)
}

fn host_cert_fresh(c: &Certificate, host_ca: &PrivateKey, host_key: &PrivateKey) -> bool {
    c.signature_key() == host_ca.public_key().key_data()
        && c.public_key() == host_key.public_key().key_data()
        && c.verify_signature().is_ok()
        && unix_now() < host_cert_renew_at(c)
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn file_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

fn create_private_dir(dir: &Path) -> Result<(), Error> {
    if !dir.exists() {
        fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| file_err(dir, e))?;
    }
    Ok(())
}

/// Refuse a private key file readable or writable by group or others.
pub fn check_private_mode(path: &Path) -> Result<(), Error> {
    let meta = fs::metadata(path).map_err(|e| file_err(path, e))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Error::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

fn load_private(path: &Path) -> Result<PrivateKey, Error> {
    check_private_mode(path)?;
    let text = fs::read_to_string(path).map_err(|e| file_err(path, e))?;
    PrivateKey::from_openssh(text.as_bytes())
        .map_err(|e| file_err(path, format!("not an OpenSSH private key: {e}")))
}

fn load_or_generate(path: &Path, comment: &str) -> Result<PrivateKey, Error> {
    if path.exists() {
        return load_private(path);
    }
    let mut key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)?;
    key.set_comment(comment);
    let pem = key.to_openssh(LineEnding::LF)?;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| file_err(path, e))?;
    f.write_all(pem.as_bytes()).map_err(|e| file_err(path, e))?;
    f.sync_all().map_err(|e| file_err(path, e))?;
    let pub_path = PathBuf::from(format!("{}.pub", path.display()));
    write_public(&pub_path, &key.public_key().to_openssh()?)?;
    tracing::info!(path = %path.display(), "created {comment}");
    Ok(key)
}

fn write_public(path: &Path, line: &str) -> Result<(), Error> {
    let tmp = PathBuf::from(format!("{}.tmp", path.display()));
    fs::write(&tmp, format!("{line}\n")).map_err(|e| file_err(&tmp, e))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)).map_err(|e| file_err(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| file_err(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_then_reloads_same_keys() {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("keys");
        let a =
            CaKeys::load_or_create(&k, Duration::from_secs(3600), &["localhost".into()]).unwrap();
        let mode = fs::metadata(k.join(USER_CA)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b =
            CaKeys::load_or_create(&k, Duration::from_secs(3600), &["localhost".into()]).unwrap();
        assert_eq!(a.user_ca.public_key(), b.user_ca.public_key());
        assert_eq!(a.host_cert.serial(), b.host_cert.serial());
        assert!(a.user_ca_line().unwrap().starts_with("ssh-ed25519 "));
        assert!(
            a.known_hosts_line("*")
                .unwrap()
                .starts_with("@cert-authority * ssh-ed25519 ")
        );
    }

    #[test]
    fn refuses_group_readable_ca_key() {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("keys");
        CaKeys::load_or_create(&k, Duration::from_secs(3600), &[]).unwrap();
        fs::set_permissions(k.join(USER_CA), fs::Permissions::from_mode(0o640)).unwrap();
        let err = CaKeys::load_or_create(&k, Duration::from_secs(3600), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }
}
