//! The Kubernetes API target (`[kube] api_target`, e.g. `ssh -L
//! 6443:kubernetes:443 bastion`) as the tunnel sees it: which `direct-tcpip`
//! requests name it, whether an identity may open such a channel at all,
//! and the one [`KubeProxy`] the server shares, built on first use (the
//! upstream client needs a kubeconfig or an in-cluster service account; a
//! bastion that never serves the API target never needs either).
//!
//! Access rule (docs/policy.md "Kubernetes API target"): the channel needs
//! the certificate's `permit-port-forwarding` and a matching role with at
//! least one `[role.kube]` allow or approve rule; no `[role.forward]` rule is
//! needed or consulted, because every HTTP request inside the channel is
//! decided by the kube rules anyway, and two places to grant the same access
//! would drift apart.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use tokio_util::sync::CancellationToken;

use super::approvals::DbApprover;
use super::kubeapi::{self, KubeProxy, KubeProxyContext, Limits, MaskFn, Upstream};
use crate::audit::Store;
use crate::config::{Config, KubeConfig};
use crate::identity::Identity;
use crate::policy::{Decision, PolicyHandle};

/// Server-wide state of the API target.
pub struct KubeApiTarget {
    api_target: String,
    config: KubeConfig,
    recording_dir: std::path::PathBuf,
    policy: PolicyHandle,
    audit: Store,
    approver: DbApprover,
    proxy: tokio::sync::OnceCell<KubeProxy>,
}

impl std::fmt::Debug for KubeApiTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeApiTarget")
            .field("api_target", &self.api_target)
            .field("built", &self.proxy.initialized())
            .finish_non_exhaustive()
    }
}

impl KubeApiTarget {
    pub fn new(config: &Config, policy: PolicyHandle, audit: Store) -> Self {
        Self {
            api_target: config.kube.api_target.clone(),
            config: config.kube.clone(),
            recording_dir: config.recording.dir.clone(),
            approver: DbApprover::new(audit.clone(), policy.clone()),
            policy,
            audit,
            proxy: tokio::sync::OnceCell::new(),
        }
    }

    /// Does the client's `host:port` name the API target?
    pub fn matches(&self, host: &str, port: u32) -> bool {
        kubeapi::matches_api_target(&self.api_target, host, port)
    }

    /// May `identity` open an API-target channel? Allow names the role
    /// whose kube rules make it possible.
    pub fn admit(&self, identity: &Identity) -> Decision {
        let policy = self.policy.current();
        let roles = policy.matching(identity);
        if let Some(r) = roles
            .iter()
            .find(|r| !r.kube.allow.is_empty() || !r.kube.approve.is_empty())
        {
            return Decision::allow(format!(
                "{} has [role.kube] rules (Kubernetes API proxy: each request checked by them)",
                r.label()
            ));
        }
        if roles.is_empty() {
            Decision::deny("no role matched (default deny)")
        } else {
            Decision::deny(format!(
                "Kubernetes API target: no matching role has [role.kube] allow or approve rules (roles {})",
                roles
                    .iter()
                    .map(|r| r.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }
    }

    /// The shared proxy, built on first use (a failure is retried next time).
    async fn proxy(&self) -> Result<&KubeProxy, kubeapi::Error> {
        self.proxy
            .get_or_try_init(|| async {
                let upstream = Upstream::from_config(&self.config).await?;
                tracing::info!(api_target = %self.api_target, "Kubernetes API proxy ready");
                Ok(KubeProxy {
                    api_target: self.api_target.clone(),
                    upstream,
                    authorizer: Arc::new(self.policy.clone()),
                    approver: Some(Arc::new(self.approver.clone())),
                    audit: Some(self.audit.clone()),
                    mask: builtin_mask(),
                    limits: Limits::default(),
                    recording_dir: Some(self.recording_dir.clone()),
                })
            })
            .await
    }

    /// The per-connection proxy context: the caller's identity, the
    /// connection id, the grant's approval timeout and masking rules, an
    /// approver that withdraws when the connection ends.
    pub async fn context(
        &self,
        identity: &Identity,
        connection_id: &str,
        closed: CancellationToken,
    ) -> Result<KubeProxyContext, kubeapi::Error> {
        let proxy = self.proxy().await?;
        let grant = self.policy.current().session(identity);
        let timeout: Duration = grant.approval_timeout;
        let mut ctx = proxy.context(identity.clone(), connection_id, timeout);
        ctx.approver = Some(Arc::new(self.approver.for_connection(closed)));
        match crate::mask::Masker::new(&crate::mask::MaskConfig::from_grant(&grant)) {
            Ok(m) => ctx.mask = Arc::new(move |b: &[u8]| m.mask(b).bytes),
            Err(e) => {
                tracing::warn!(error = %e, "policy masking rules unusable; built-in detectors only")
            }
        }
        Ok(ctx)
    }
}

/// A stream that counts bytes read (client → bastion, "up") and written
/// ("down"), for the channel's `forwards` row.
pub struct Counted<S> {
    inner: S,
    counts: Counts,
}

/// The shared counters of a [`Counted`] stream.
#[derive(Debug, Clone, Default)]
pub struct Counts {
    up: Arc<std::sync::atomic::AtomicU64>,
    down: Arc<std::sync::atomic::AtomicU64>,
}

impl Counts {
    /// `(up, down)` so far.
    pub fn get(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.up.load(Relaxed), self.down.load(Relaxed))
    }
}

impl<S> Counted<S> {
    pub fn new(inner: S) -> (Self, Counts) {
        let counts = Counts::default();
        (
            Self {
                inner,
                counts: counts.clone(),
            },
            counts,
        )
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before) as u64;
        self.counts
            .up
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.counts
                .down
                .fetch_add(*n as u64, std::sync::atomic::Ordering::Relaxed);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// All built-in detectors; used when the grant's own rules cannot compile.
fn builtin_mask() -> MaskFn {
    match crate::mask::Masker::builtin() {
        Ok(m) => Arc::new(move |b: &[u8]| m.mask(b).bytes),
        Err(e) => {
            // Cannot happen with the shipped detectors (mask tests compile
            // them); refuse to store bodies unmasked.
            tracing::error!(error = %e, "built-in masker failed; kube bodies are not stored");
            Arc::new(|_: &[u8]| b"[body not stored: masker unavailable]".to_vec())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;

    fn target(policy: &str) -> KubeApiTarget {
        let p = std::path::Path::new("t.toml");
        let cfg = crate::config::parse("[kube]\napi_target = \"kubernetes:443\"\n", p)
            .unwrap()
            .validate(p, None)
            .unwrap();
        KubeApiTarget::new(
            &cfg,
            PolicyHandle::new(Policy::from_toml("p.toml", policy).unwrap()),
            Store::in_memory().unwrap(),
        )
    }

    fn id(subject: &str) -> Identity {
        Identity {
            issuer: "local".into(),
            subject: subject.into(),
            ..Default::default()
        }
    }

    #[test]
    fn only_roles_with_kube_rules_open_the_api_target() {
        let t = target(
            r#"
[[role]]
name = "viewers"
[role.match]
subject = ["alice"]
[role.kube]
allow = [{ verbs = ["get"], resources = ["pods"] }]

[[role]]
name = "shell-only"
[role.match]
subject = ["bob", "alice"]
[role.kube]
deny = [{ verbs = ["*"], resources = ["secrets"] }]
"#,
        );
        assert!(t.matches("kubernetes", 443));
        assert!(t.matches("KUBERNETES", 443));
        assert!(!t.matches("kubernetes", 6443));
        assert!(!t.matches("kubernetes.default", 443));
        let a = t.admit(&id("alice"));
        assert!(a.is_allow(), "{a:?}");
        assert!(a.reason.contains("role 'viewers'"), "{}", a.reason);
        // A deny-only kube section grants nothing.
        let b = t.admit(&id("bob"));
        assert!(!b.is_allow());
        assert!(b.reason.contains("shell-only"), "{}", b.reason);
        let c = t.admit(&id("carol"));
        assert_eq!(c.reason, "no role matched (default deny)");
    }

    #[tokio::test]
    async fn missing_kube_credentials_fail_cleanly_and_are_retried() {
        let t = target(
            "[[role]]\nname = \"r\"\n[role.match]\nsubject = [\"*\"]\n[role.kube]\nallow = [{ verbs = [\"get\"], resources = [\"pods\"] }]\n",
        );
        // No kubeconfig and (in the test environment) no in-cluster account.
        if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
            return;
        }
        for _ in 0..2 {
            let e = t
                .context(&id("alice"), "c1", CancellationToken::new())
                .await
                .unwrap_err();
            assert!(e.to_string().contains("in-cluster"), "{e}");
        }
        assert!(!t.proxy.initialized());
    }
}
