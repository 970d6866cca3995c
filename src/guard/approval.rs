//! Just-in-time approvals: a session that policy answers `approve` creates a
//! pending request in the audit database and [`wait`]s; an approver decides
//! from another process (`sallyport approvals approve|deny`, the HTTP API)
//! through [`decide`]. The database is the only channel between them, so the
//! waiter polls it. Nobody approves their own request; a request nobody
//! decides in time is `expired` (= denied); the requester's Ctrl-C withdraws it.

use std::future::Future;
use std::time::Duration;

use crate::audit::Store;
use crate::audit::approvals::{ApprovalRow, fixed_rfc3339};
use crate::identity::Identity;
use crate::policy::Policy;

/// How often a waiting session looks at the database.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Errors creating, waiting on or deciding a request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] crate::audit::Error),
    #[error("no approval request `{0}`")]
    NotFound(String),
    /// Already approved, denied, expired or withdrawn.
    #[error("approval request `{id}` is already {status}")]
    Closed { id: String, status: String },
    #[error("approval request `{0}` has expired")]
    Expired(String),
    /// The approver is the requester.
    #[error("self-approval is not allowed: `{0}` made this request")]
    SelfApproval(String),
    /// Policy does not let this identity approve this requester.
    #[error("`{who}` may not decide this request: {reason}")]
    NotAllowed { who: String, reason: String },
}

/// What is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Exec,
    Line,
    Forward,
    Kube,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Exec => "exec",
            Kind::Line => "line",
            Kind::Forward => "forward",
            Kind::Kube => "kube",
        }
    }
}

/// A request to create.
#[derive(Debug, Clone)]
pub struct Request {
    pub requester: Identity,
    pub kind: Kind,
    /// The command or target, ALREADY MASKED by the caller.
    pub text: String,
    pub session_id: Option<String>,
    /// The policy rule that asked for approval.
    pub reason: String,
    /// How long it may stay pending (policy `approval_timeout`).
    pub timeout: Duration,
}

/// How a request ended, as the waiting session sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum Outcome {
    Approved { by: String },
    Denied { by: String, reason: Option<String> },
    Expired,
    Withdrawn,
}

/// A short readable id: `apr-` and 6 characters without look-alikes.
pub fn new_id() -> String {
    const ALPHABET: &[u8] = b"23456789abcdefghjkmnpqrstuvwxyz";
    let tail: String = (0..6)
        .map(|_| {
            let i = rand::random_range(0..ALPHABET.len());
            char::from(ALPHABET.get(i).copied().unwrap_or(b'x'))
        })
        .collect();
    format!("apr-{tail}")
}

/// Store a new pending request; returns its row (id, expiry).
pub fn create(store: &Store, req: &Request) -> Result<ApprovalRow, Error> {
    let now = time::OffsetDateTime::now_utc();
    let expires = now + req.timeout;
    let mut last_err = None;
    // Ids are short; on the rare collision, draw again.
    for _ in 0..5 {
        let row = ApprovalRow {
            id: new_id(),
            created_at: fixed_rfc3339(now),
            requester: serde_json::to_string(&req.requester).unwrap_or_default(),
            subject: req.requester.subject.clone(),
            on_behalf_of: req.requester.on_behalf_of.clone(),
            session_id: req.session_id.clone(),
            kind: req.kind.as_str().to_string(),
            request: req.text.clone(),
            reason: req.reason.clone(),
            status: "pending".into(),
            decided_at: None,
            decided_by: None,
            decision_note: None,
            expires_at: fixed_rfc3339(expires),
        };
        match store.insert_approval(&row) {
            Ok(()) => {
                let _ = store.record_event_parts(
                    None,
                    row.session_id.as_deref(),
                    "approval-requested",
                    Some(&row.subject),
                    &format!("{} {} {}", row.id, row.kind, row.request),
                    Some("approve"),
                    Some(&row.reason),
                );
                return Ok(row);
            }
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.map_or_else(|| Error::NotFound("(new)".into()), Error::from))
}

fn outcome_of(row: &ApprovalRow) -> Option<Outcome> {
    let by = row.decided_by.clone().unwrap_or_default();
    match row.status.as_str() {
        "approved" => Some(Outcome::Approved { by }),
        "denied" => Some(Outcome::Denied {
            by,
            reason: row.decision_note.clone(),
        }),
        "expired" => Some(Outcome::Expired),
        "withdrawn" => Some(Outcome::Withdrawn),
        _ => None,
    }
}

/// Wait for a decision on `id`. `cancel` resolving (the user pressed Ctrl-C,
/// the session closed) withdraws the request. At `timeout` the request is
/// marked `expired`. A decision that lands at the same moment wins over both
/// (the close is conditional on `pending`).
pub async fn wait<C: Future<Output = ()>>(
    store: &Store,
    id: &str,
    timeout: Duration,
    cancel: C,
) -> Result<Outcome, Error> {
    let deadline = tokio::time::Instant::now() + timeout;
    tokio::pin!(cancel);
    loop {
        let row = store
            .approval(id)?
            .ok_or_else(|| Error::NotFound(id.to_string()))?;
        if let Some(o) = outcome_of(&row) {
            return Ok(o);
        }
        let tick = tokio::time::sleep(POLL_INTERVAL);
        tokio::select! {
            _ = &mut cancel => return close_or_read(store, id, "withdrawn", Outcome::Withdrawn),
            _ = tokio::time::sleep_until(deadline) => return close_or_read(store, id, "expired", Outcome::Expired),
            _ = tick => {}
        }
    }
}

fn close_or_read(store: &Store, id: &str, status: &str, mine: Outcome) -> Result<Outcome, Error> {
    if store.close_approval(id, status, None, None)? {
        let _ = store.record_event_parts(
            None,
            None,
            &format!("approval-{status}"),
            None,
            id,
            None,
            None,
        );
        return Ok(mine);
    }
    let row = store
        .approval(id)?
        .ok_or_else(|| Error::NotFound(id.to_string()))?;
    Ok(outcome_of(&row).unwrap_or(mine))
}

/// Who decides, and how they were authorised.
#[derive(Debug, Clone)]
pub struct Approver {
    pub identity: Identity,
    /// A local operator of this bastion (the CLI run on the server with
    /// access to its audit database): such a person can already rewrite
    /// policy and the database, so policy's approver list is not consulted
    /// for them. Self-approval is still refused.
    pub local_operator: bool,
}

impl Approver {
    /// `local:<name>` style label stored in `decided_by`.
    pub fn label(&self) -> String {
        format!("{}:{}", self.identity.issuer, self.identity.subject)
    }
}

/// Approve (`approve = true`) or deny a pending request.
pub fn decide(
    store: &Store,
    policy: &Policy,
    id: &str,
    approver: &Approver,
    approve: bool,
    note: Option<&str>,
) -> Result<Outcome, Error> {
    let row = store
        .approval(id)?
        .ok_or_else(|| Error::NotFound(id.to_string()))?;
    if row.status != "pending" {
        return Err(Error::Closed {
            id: id.to_string(),
            status: row.status,
        });
    }
    if row.expires_at <= fixed_rfc3339(time::OffsetDateTime::now_utc()) {
        let _ = store.close_approval(id, "expired", None, None);
        return Err(Error::Expired(id.to_string()));
    }
    let requester: Identity = serde_json::from_str(&row.requester).unwrap_or_else(|_| Identity {
        subject: row.subject.clone(),
        ..Identity::default()
    });
    let who = approver.label();
    let refuse = |kind: &str, reason: &str| {
        let _ = store.record_event_parts(
            None,
            row.session_id.as_deref(),
            kind,
            Some(&approver.identity.subject),
            &format!("{id} by {who}"),
            Some("deny"),
            Some(reason),
        );
    };
    // No self-approval, whatever the issuer: the same subject is the same person.
    if approver.identity.subject == requester.subject {
        refuse("approval-self-refused", "self-approval is not allowed");
        return Err(Error::SelfApproval(requester.subject));
    }
    if !approver.local_operator {
        let d = policy.can_approve(&approver.identity, &requester);
        if !d.is_allow() {
            refuse("approval-refused", &d.reason);
            return Err(Error::NotAllowed {
                who,
                reason: d.reason,
            });
        }
    }
    let status = if approve { "approved" } else { "denied" };
    if !store.close_approval(id, status, Some(&who), note)? {
        let now = store
            .approval(id)?
            .map_or_else(|| "gone".to_string(), |r| r.status);
        return Err(Error::Closed {
            id: id.to_string(),
            status: now,
        });
    }
    let _ = store.record_event_parts(
        None,
        row.session_id.as_deref(),
        &format!("approval-{status}"),
        Some(&approver.identity.subject),
        &format!("{id} {} {}", row.kind, row.request),
        Some(if approve { "allow" } else { "deny" }),
        note,
    );
    Ok(if approve {
        Outcome::Approved { by: who }
    } else {
        Outcome::Denied {
            by: who,
            reason: note.map(str::to_string),
        }
    })
}

#[cfg(test)]
mod tests;
