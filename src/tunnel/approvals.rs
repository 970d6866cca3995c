//! The approvals engine behind the tunnel: [`DbApprover`] implements both
//! [`super::ForwardApprover`] (a `direct-tcpip` target under `approve`) and
//! [`super::kubeapi::Approver`] (a Kubernetes API request under `approve`)
//! with [`crate::guard::approval`]: a pending row in the audit database
//! (requester identity, kind `forward`/`kube`, connection id, policy reason,
//! the grant's `approval_timeout`), then a wait that an operator ends with
//! `sallyport approvals approve|deny ID`.
//!
//! The request is withdrawn when the SSH connection ends (the `cancel`
//! token) and, because the kube proxy puts its own timeout around the wait,
//! whenever the waiting future is dropped before a decision: a request
//! never stays `pending` after nobody waits for it.

use std::time::Duration;

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::audit::Store;
use crate::guard::approval::{self, Kind, Outcome, Request};
use crate::identity::Identity;
use crate::policy::PolicyHandle;

use super::kubeapi::{ApprovalError, ApprovalRequest, Approver};

/// Both approver traits, backed by the audit database.
#[derive(Clone)]
pub struct DbApprover {
    store: Store,
    policy: PolicyHandle,
    /// Cancelled when the connection this approver serves has ended
    /// (never cancelled for a server-wide instance).
    cancel: CancellationToken,
}

impl std::fmt::Debug for DbApprover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbApprover")
            .field("cancelled", &self.cancel.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl DbApprover {
    pub fn new(store: Store, policy: PolicyHandle) -> Self {
        Self {
            store,
            policy,
            cancel: CancellationToken::new(),
        }
    }

    /// The same approver, withdrawing its requests when `cancel` fires
    /// (one SSH connection's lifetime).
    pub fn for_connection(&self, cancel: CancellationToken) -> Self {
        Self {
            store: self.store.clone(),
            policy: self.policy.clone(),
            cancel,
        }
    }

    /// How long `identity` may wait: the grant's `approval_timeout`.
    pub fn timeout_for(&self, identity: &Identity) -> Duration {
        self.policy.current().session(identity).approval_timeout
    }

    /// Create the request and wait for its outcome. `Ok(true)` = approved.
    async fn ask(
        store: Store,
        req: Request,
        cancel: CancellationToken,
        extra: Option<CancellationToken>,
    ) -> Result<bool, String> {
        let timeout = req.timeout;
        let row = approval::create(&store, &req).map_err(|e| e.to_string())?;
        tracing::info!(
            id = %row.id,
            kind = %row.kind,
            request = %row.request,
            subject = %row.subject,
            "approval requested; decide with `sallyport approvals approve|deny {}`",
            row.id
        );
        let mut guard = WithdrawOnDrop {
            store: store.clone(),
            id: row.id.clone(),
            deadline: tokio::time::Instant::now() + timeout,
            armed: true,
        };
        let stop = async move {
            match extra {
                Some(x) => tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = x.cancelled() => {}
                },
                None => cancel.cancelled().await,
            }
        };
        let outcome = approval::wait(&store, &row.id, timeout, stop).await;
        guard.armed = false;
        match outcome.map_err(|e| e.to_string())? {
            Outcome::Approved { by } => {
                tracing::info!(id = %row.id, %by, "approval granted");
                Ok(true)
            }
            Outcome::Denied { by, reason } => {
                tracing::info!(id = %row.id, %by, reason = reason.as_deref().unwrap_or(""), "approval denied");
                Ok(false)
            }
            Outcome::Expired => Err(format!("approval {} timed out", row.id)),
            Outcome::Withdrawn => Err(format!("approval {} withdrawn", row.id)),
        }
    }
}

/// Closes a still-pending request when the waiting future is dropped
/// (connection gone, or the caller's own timeout fired first).
struct WithdrawOnDrop {
    store: Store,
    id: String,
    deadline: tokio::time::Instant,
    armed: bool,
}

impl Drop for WithdrawOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let status = if tokio::time::Instant::now() >= self.deadline {
            "expired"
        } else {
            "withdrawn"
        };
        if let Err(e) = self.store.close_approval(&self.id, status, None, None) {
            tracing::warn!(id = %self.id, error = %e, "cannot close abandoned approval request");
        }
    }
}

impl super::ForwardApprover for DbApprover {
    fn approve<'a>(
        &'a self,
        identity: &'a Identity,
        connection_id: &'a str,
        target: &'a str,
        reason: &'a str,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, Result<bool, String>> {
        let req = Request {
            requester: identity.clone(),
            kind: Kind::Forward,
            // A target is `host:port` as the client wrote it: nothing to mask.
            text: format!("forward to {target}"),
            session_id: Some(connection_id.to_string()),
            reason: reason.to_string(),
            timeout: self.timeout_for(identity),
        };
        Box::pin(Self::ask(
            self.store.clone(),
            req,
            self.cancel.clone(),
            Some(cancel),
        ))
    }
}

impl Approver for DbApprover {
    fn request(&self, req: ApprovalRequest) -> BoxFuture<'static, Result<bool, ApprovalError>> {
        let r = Request {
            requester: req.requester,
            kind: Kind::Kube,
            // Already masked by the proxy.
            text: req.request,
            session_id: Some(req.session_id).filter(|s| !s.is_empty()),
            reason: req.reason,
            timeout: req.timeout,
        };
        let store = self.store.clone();
        let cancel = self.cancel.clone();
        Box::pin(async move {
            Self::ask(store, r, cancel, None)
                .await
                .map_err(ApprovalError)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;
    use crate::tunnel::ForwardApprover;

    fn alice() -> Identity {
        Identity {
            issuer: "local".into(),
            subject: "alice".into(),
            ..Default::default()
        }
    }

    fn approver() -> (Store, DbApprover) {
        let store = Store::in_memory().unwrap();
        let policy = PolicyHandle::new(
            Policy::from_toml(
                "t.toml",
                "[[role]]\nname = \"r\"\n[role.match]\nsubject = [\"*\"]\n[role.grant]\napproval_timeout = \"7s\"\n",
            )
            .unwrap(),
        );
        (store.clone(), DbApprover::new(store, policy))
    }

    fn pending(store: &Store) -> Vec<crate::audit::approvals::ApprovalRow> {
        store.list_approvals(Some("pending"), None, 10).unwrap()
    }

    #[tokio::test]
    async fn forward_request_carries_requester_kind_connection_and_grant_timeout() {
        let (store, a) = approver();
        assert_eq!(a.timeout_for(&alice()), Duration::from_secs(7));
        let id = alice();
        let cancel = CancellationToken::new();
        let fut = a.approve(&id, "conn-1", "prod-db:5432", "rule x", cancel.clone());
        let s2 = store.clone();
        let decider = async move {
            let row = loop {
                if let Some(r) = pending(&s2).into_iter().next() {
                    break r;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            assert_eq!(row.kind, "forward");
            assert_eq!(row.subject, "alice");
            assert_eq!(row.session_id.as_deref(), Some("conn-1"));
            assert_eq!(row.request, "forward to prod-db:5432");
            assert_eq!(row.reason, "rule x");
            let bob = approval::Approver {
                identity: Identity {
                    issuer: "local".into(),
                    subject: "bob".into(),
                    ..Default::default()
                },
                local_operator: true,
            };
            approval::decide(&s2, &Policy::empty(), &row.id, &bob, true, None).unwrap();
        };
        let (r, ()) = tokio::join!(fut, decider);
        assert_eq!(r, Ok(true));
    }

    #[tokio::test]
    async fn connection_end_withdraws_and_dropping_the_wait_closes_the_row() {
        let (store, a) = approver();
        // Cancelled connection: withdrawn, not approved.
        let conn = CancellationToken::new();
        let per_conn = a.for_connection(conn.clone());
        conn.cancel();
        let r = ForwardApprover::approve(
            &per_conn,
            &alice(),
            "c",
            "x:1",
            "r",
            CancellationToken::new(),
        )
        .await;
        assert!(r.unwrap_err().contains("withdrawn"));
        assert!(pending(&store).is_empty());
        // Kube: the proxy's own timeout drops the future; the row is closed.
        let fut = a.request(ApprovalRequest {
            requester: alice(),
            session_id: "c2".into(),
            request: "delete pods \"web\" in namespace \"dev\"".into(),
            reason: "r".into(),
            timeout: Duration::from_secs(60),
        });
        let _ = tokio::time::timeout(Duration::from_millis(300), fut).await;
        assert!(pending(&store).is_empty());
        let all = store.list_approvals(None, None, 10).unwrap();
        let kube = all.iter().find(|r| r.kind == "kube").unwrap();
        assert_eq!(kube.status, "withdrawn");
        assert_eq!(kube.session_id.as_deref(), Some("c2"));
    }
}
