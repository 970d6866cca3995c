//! Forward rows (`forwards` table): one per `direct-tcpip` channel (and per
//! denied `-R`/agent/X11/streamlocal request), opened with the decision and
//! closed once with bytes each way and how it ended. Denials are written
//! already closed.

use rusqlite::params;

use super::{Error, Store, now_rfc3339};

/// A forward as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ForwardRow {
    pub id: String,
    pub connection_id: String,
    pub subject: Option<String>,
    pub kind: String,
    pub target: String,
    pub resolved: Option<String>,
    pub decision: String,
    pub reason: String,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub end_reason: Option<String>,
}

/// What is known when a forward is decided.
#[derive(Debug, Clone)]
pub struct NewForward<'a> {
    pub connection_id: &'a str,
    pub subject: Option<&'a str>,
    /// `local`, `remote`, `agent`, `x11`, `streamlocal`.
    pub kind: &'a str,
    /// As requested, `host:port`.
    pub target: &'a str,
    pub resolved: Option<&'a str>,
    /// `allow`, `approve` or `deny`.
    pub decision: &'a str,
    pub reason: &'a str,
}

impl Store {
    /// Record an allowed forward as open; returns its id.
    pub fn forward_open(&self, f: &NewForward<'_>) -> Result<String, Error> {
        let id = uuid::Uuid::now_v7().to_string();
        self.lock().execute(
            "INSERT INTO forwards (id, connection_id, subject, kind, target, resolved, decision, reason, started_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![id, f.connection_id, f.subject, f.kind, f.target, f.resolved, f.decision, f.reason, now_rfc3339()],
        )?;
        Ok(id)
    }

    /// Record a forward that never opened (denied, or failed to connect),
    /// closed at once with `end_reason`.
    pub fn forward_refused(&self, f: &NewForward<'_>, end_reason: &str) -> Result<String, Error> {
        let id = uuid::Uuid::now_v7().to_string();
        let now = now_rfc3339();
        self.lock().execute(
            "INSERT INTO forwards (id, connection_id, subject, kind, target, resolved, decision, reason,
                started_at, ended_at, end_reason)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9, ?10)",
            params![id, f.connection_id, f.subject, f.kind, f.target, f.resolved, f.decision, f.reason, now, end_reason],
        )?;
        Ok(id)
    }

    /// Close an open forward with its byte counts and end reason.
    pub fn forward_close(
        &self,
        id: &str,
        resolved: Option<&str>,
        bytes_up: u64,
        bytes_down: u64,
        end_reason: &str,
    ) -> Result<(), Error> {
        self.lock().execute(
            "UPDATE forwards SET ended_at = ?2, bytes_up = ?3, bytes_down = ?4, end_reason = ?5,
                resolved = COALESCE(?6, resolved)
             WHERE id = ?1 AND ended_at IS NULL",
            params![
                id,
                now_rfc3339(),
                bytes_up as i64,
                bytes_down as i64,
                end_reason,
                resolved
            ],
        )?;
        Ok(())
    }

    /// Forwards, newest first.
    pub fn list_forwards(&self, limit: u32) -> Result<Vec<ForwardRow>, Error> {
        let conn = self.lock();
        let mut st = conn.prepare(
            "SELECT id, connection_id, subject, kind, target, resolved, decision, reason, started_at,
                    ended_at, bytes_up, bytes_down, end_reason
             FROM forwards ORDER BY started_at DESC, id DESC LIMIT ?1",
        )?;
        let rows = st.query_map(params![limit], |r| {
            Ok(ForwardRow {
                id: r.get(0)?,
                connection_id: r.get(1)?,
                subject: r.get(2)?,
                kind: r.get(3)?,
                target: r.get(4)?,
                resolved: r.get(5)?,
                decision: r.get(6)?,
                reason: r.get(7)?,
                started_at: r.get(8)?,
                ended_at: r.get(9)?,
                bytes_up: r.get::<_, i64>(10)? as u64,
                bytes_down: r.get::<_, i64>(11)? as u64,
                end_reason: r.get(12)?,
            })
        })?;
        let mut out = Vec::new();
        for r in rows {
            out.push(r?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_close_refuse_list() {
        let s = Store::in_memory().unwrap();
        let nf = NewForward {
            connection_id: "c1",
            subject: Some("alice"),
            kind: "local",
            target: "prod-db:5432",
            resolved: Some("10.0.0.5:5432"),
            decision: "allow",
            reason: "p.toml:3 role 'dba' forward.allow 'prod-db:5432'",
        };
        let id = s.forward_open(&nf).unwrap();
        s.forward_close(&id, None, 10, 20, "completed").unwrap();
        // Closing twice keeps the first facts.
        s.forward_close(&id, None, 99, 99, "again").unwrap();
        let denied = NewForward {
            decision: "deny",
            reason: "no role matched (default deny)",
            resolved: None,
            ..nf.clone()
        };
        s.forward_refused(&denied, "denied").unwrap();
        let rows = s.list_forwards(10).unwrap();
        assert_eq!(rows.len(), 2);
        let open = rows.iter().find(|r| r.id == id).unwrap();
        assert_eq!((open.bytes_up, open.bytes_down), (10, 20));
        assert_eq!(open.end_reason.as_deref(), Some("completed"));
        assert!(open.ended_at.is_some());
        let d = rows.iter().find(|r| r.id != id).unwrap();
        assert_eq!(d.decision, "deny");
        assert_eq!(d.end_reason.as_deref(), Some("denied"));
        assert_eq!(d.ended_at.as_deref(), Some(d.started_at.as_str()));
    }
}
