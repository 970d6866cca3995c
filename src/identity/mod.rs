//! Who is on the other end. An [`Identity`] is built when a certificate is
//! issued (from a verified OIDC or Kubernetes token, or by an operator with
//! `ca sign`), travels inside the certificate as the `identity@sallyport`
//! extension (JSON), and is recovered by the SSH server from the certificate
//! alone. Token verification (discovery, JWKS cache) lives in submodules.

use serde::{Deserialize, Serialize};

pub mod kube;
pub mod oidc;

/// Name of the certificate extension that carries the JSON-encoded [`Identity`].
pub const CERT_EXTENSION: &str = "identity@sallyport";

/// Human engineer or automated agent (a pod with a service-account token).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    #[default]
    Human,
    Agent,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Human => "human",
            Kind::Agent => "agent",
        })
    }
}

/// Kubernetes service-account facts taken from a projected token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct KubeIdentity {
    pub namespace: String,
    pub service_account: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
}

/// The identity of the caller of one authenticated connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Identity {
    /// Issuer alias from the config (`local` for operator-signed certificates,
    /// `breakglass` for the plain-key admin file).
    pub issuer: String,
    /// Token subject (or the `--identity` given to `ca sign`).
    pub subject: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    #[serde(default)]
    pub kind: Kind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kube: Option<KubeIdentity>,
    /// The human an agent acts for (RFC 8693 `act`, or a second token), when
    /// policy accepted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_behalf_of: Option<String>,
}

impl Identity {
    /// Readable certificate key id: `oidc:<issuer-alias>:<subject>`.
    pub fn key_id(&self) -> String {
        format!("oidc:{}:{}", self.issuer, self.subject)
    }

    /// Short form for logs and recording titles: `subject (issuer)` plus the
    /// principal acted for.
    pub fn display(&self) -> String {
        match &self.on_behalf_of {
            Some(h) => format!("{} ({}) on behalf of {h}", self.subject, self.issuer),
            None => format!("{} ({})", self.subject, self.issuer),
        }
    }
}
