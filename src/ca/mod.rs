//! The certificate authority: user and host CA keys (created on first start,
//! 0600, refused when readable by others), certificate signing, verification of
//! presented user certificates (everything russh does not check), revocation and
//! KRL export.
//!
//! - [`keys`]: the key files under `<data_dir>/keys` and their permissions.
//! - [`sign`]: building and signing user and host certificates.
//! - [`verify`]: the checks a presented user certificate must pass.
//! - [`issue`]: certificates for verified tokens (policy, TTL cap, audit); host cert renewal.
//! - [`krl`]: OpenSSH KRL export.

pub mod issue;
pub mod keys;
pub mod krl;
pub mod sign;
pub mod verify;

pub use keys::CaKeys;

/// Errors of the CA.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A key or certificate file could not be read or written.
    #[error("{path}: {message}")]
    File {
        path: std::path::PathBuf,
        message: String,
    },
    /// A CA key file may be read by group or others.
    #[error(
        "{path} is readable by group or others (mode {mode:o}); a CA key must be private: run `chmod 600 {path}`"
    )]
    Permissions { path: std::path::PathBuf, mode: u32 },
    /// The SSH key library refused an operation.
    #[error("{0}")]
    Key(String),
    /// A certificate request that makes no sense.
    #[error("{0}")]
    Request(String),
}

impl From<russh::keys::ssh_key::Error> for Error {
    fn from(e: russh::keys::ssh_key::Error) -> Self {
        Error::Key(e.to_string())
    }
}
