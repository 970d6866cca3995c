//! The `approvals` table: pending just-in-time approval requests and their
//! decisions. A row is inserted `pending` and closed once (approved, denied,
//! expired, withdrawn) by a conditional update, so two deciders racing cannot
//! both win. Timestamps use a fixed-width UTC format so that SQL string
//! comparison orders them.

use rusqlite::{OptionalExtension, params};

use super::{Error, Store};

/// Fixed-width RFC 3339 UTC (`2026-11-28T17:46:01.123Z`): sorts as text.
pub fn fixed_rfc3339(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&fmt)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// One approval request as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ApprovalRow {
    pub id: String,
    pub created_at: String,
    /// Identity JSON of the requester.
    pub requester: String,
    pub subject: String,
    pub on_behalf_of: Option<String>,
    pub session_id: Option<String>,
    /// exec | line | forward | kube
    pub kind: String,
    /// Masked command or target.
    pub request: String,
    /// The policy rule that asked for approval.
    pub reason: String,
    /// pending | approved | denied | expired | withdrawn
    pub status: String,
    pub decided_at: Option<String>,
    pub decided_by: Option<String>,
    pub decision_note: Option<String>,
    pub expires_at: String,
}

const COLUMNS: &str = "id, created_at, requester, subject, on_behalf_of, session_id, kind, request, reason, status, decided_at, decided_by, decision_note, expires_at";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ApprovalRow> {
    Ok(ApprovalRow {
        id: r.get(0)?,
        created_at: r.get(1)?,
        requester: r.get(2)?,
        subject: r.get(3)?,
        on_behalf_of: r.get(4)?,
        session_id: r.get(5)?,
        kind: r.get(6)?,
        request: r.get(7)?,
        reason: r.get(8)?,
        status: r.get(9)?,
        decided_at: r.get(10)?,
        decided_by: r.get(11)?,
        decision_note: r.get(12)?,
        expires_at: r.get(13)?,
    })
}

impl Store {
    /// Insert a new pending request (`row.status` is ignored: always `pending`).
    pub fn insert_approval(&self, a: &ApprovalRow) -> Result<(), Error> {
        self.lock().execute(
            &format!("INSERT INTO approvals ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 'pending', NULL, NULL, NULL, ?10)"),
            params![
                a.id,
                a.created_at,
                a.requester,
                a.subject,
                a.on_behalf_of,
                a.session_id,
                a.kind,
                a.request,
                a.reason,
                a.expires_at
            ],
        )?;
        Ok(())
    }

    /// One request by id.
    pub fn approval(&self, id: &str) -> Result<Option<ApprovalRow>, Error> {
        let conn = self.lock();
        let mut st =
            conn.prepare_cached(&format!("SELECT {COLUMNS} FROM approvals WHERE id = ?1"))?;
        Ok(st.query_row(params![id], row).optional()?)
    }

    /// A page of requests, oldest first: `status` filters (None = all),
    /// `after` is the `(created_at, id)` of the last row of the previous page.
    pub fn list_approvals(
        &self,
        status: Option<&str>,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<ApprovalRow>, Error> {
        let (ac, ai) = after.unwrap_or(("", ""));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let conn = self.lock();
        let rows = if let Some(s) = status {
            let mut st = conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM approvals WHERE status = ?1 AND (created_at, id) > (?2, ?3)
                 ORDER BY created_at, id LIMIT ?4"
            ))?;
            st.query_map(params![s, ac, ai, limit], row)?
                .collect::<Result<Vec<_>, _>>()?
        } else {
            let mut st = conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM approvals WHERE (created_at, id) > (?1, ?2)
                 ORDER BY created_at, id LIMIT ?3"
            ))?;
            st.query_map(params![ac, ai, limit], row)?
                .collect::<Result<Vec<_>, _>>()?
        };
        Ok(rows)
    }

    /// Every request a session made, oldest first.
    pub fn session_approvals(&self, session_id: &str) -> Result<Vec<ApprovalRow>, Error> {
        let conn = self.lock();
        let mut st = conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM approvals WHERE session_id = ?1 ORDER BY created_at, id"
        ))?;
        let rows = st
            .query_map(params![session_id], row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Close a pending request. Returns false when it was no longer pending
    /// (someone else decided first, or it expired or was withdrawn).
    pub fn close_approval(
        &self,
        id: &str,
        status: &str,
        decided_by: Option<&str>,
        note: Option<&str>,
    ) -> Result<bool, Error> {
        let now = fixed_rfc3339(time::OffsetDateTime::now_utc());
        let n = self.lock().execute(
            "UPDATE approvals SET status = ?2, decided_at = ?3, decided_by = ?4, decision_note = ?5
             WHERE id = ?1 AND status = 'pending'",
            params![id, status, now, decided_by, note],
        )?;
        Ok(n == 1)
    }

    /// Mark every pending request whose time is up as `expired`; returns how many.
    pub fn expire_due_approvals(&self) -> Result<usize, Error> {
        let now = fixed_rfc3339(time::OffsetDateTime::now_utc());
        Ok(self.lock().execute(
            "UPDATE approvals SET status = 'expired', decided_at = ?1
             WHERE status = 'pending' AND expires_at <= ?1",
            params![now],
        )?)
    }
}
