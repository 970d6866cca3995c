//! Notable things inside a connection or session (`events` table): denied
//! requests (agent, X11, `-R`, subsystems, direct-tcpip), refused env names,
//! blocked commands, recording failures.

use rusqlite::params;

use super::{Error, Store, now_rfc3339};

/// One event to record.
#[derive(Debug, Clone, Default)]
pub struct Event<'a> {
    pub connection_id: Option<&'a str>,
    pub session_id: Option<&'a str>,
    /// e.g. `request-denied`, `command-blocked`, `recording-failed`.
    pub kind: &'a str,
    pub subject: Option<&'a str>,
    /// What happened (already masked by the caller when it holds user text).
    pub detail: &'a str,
    pub decision: Option<&'a str>,
    pub reason: Option<&'a str>,
}

/// An `events` row read back.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EventRow {
    pub id: i64,
    pub at: String,
    pub connection_id: Option<String>,
    pub session_id: Option<String>,
    pub kind: String,
    pub subject: Option<String>,
    pub detail: String,
    pub decision: Option<String>,
    pub reason: Option<String>,
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<EventRow> {
    Ok(EventRow {
        id: r.get(0)?,
        at: r.get(1)?,
        connection_id: r.get(2)?,
        session_id: r.get(3)?,
        kind: r.get(4)?,
        subject: r.get(5)?,
        detail: r.get(6)?,
        decision: r.get(7)?,
        reason: r.get(8)?,
    })
}

const COLS: &str = "id, at, connection_id, session_id, kind, subject, detail, decision, reason";

impl Store {
    /// Record an event.
    pub fn record_event(&self, e: &Event<'_>) -> Result<(), Error> {
        self.lock().execute(
            "INSERT INTO events (at, connection_id, session_id, kind, subject, detail, decision, reason)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                now_rfc3339(),
                e.connection_id,
                e.session_id,
                e.kind,
                e.subject,
                e.detail,
                e.decision,
                e.reason
            ],
        )?;
        Ok(())
    }

    /// Events of one session, oldest first.
    pub fn session_events(&self, session_id: &str) -> Result<Vec<EventRow>, Error> {
        let conn = self.lock();
        let mut st = conn.prepare(&format!(
            "SELECT {COLS} FROM events WHERE session_id = ?1 ORDER BY id"
        ))?;
        let rows = st.query_map(params![session_id], row)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(Error::from)
    }

    /// Events of one connection (including its sessions'), oldest first.
    pub fn connection_events(&self, connection_id: &str) -> Result<Vec<EventRow>, Error> {
        let conn = self.lock();
        let mut st = conn.prepare(&format!(
            "SELECT {COLS} FROM events WHERE connection_id = ?1 ORDER BY id"
        ))?;
        let rows = st.query_map(params![connection_id], row)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(Error::from)
    }

    /// Latest events of a kind (all kinds when `None`), newest first.
    pub fn list_events(&self, kind: Option<&str>, limit: u32) -> Result<Vec<EventRow>, Error> {
        let conn = self.lock();
        let mut st = conn.prepare(&format!(
            "SELECT {COLS} FROM events WHERE (?1 IS NULL OR kind = ?1) ORDER BY id DESC LIMIT ?2"
        ))?;
        let rows = st.query_map(params![kind, limit], row)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(Error::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_and_query() {
        let s = Store::in_memory().unwrap();
        s.record_event(&Event {
            connection_id: Some("c"),
            session_id: Some("s"),
            kind: "request-denied",
            detail: "subsystem sftp",
            decision: Some("deny"),
            reason: Some("subsystems are not offered"),
            ..Default::default()
        })
        .unwrap();
        s.record_event(&Event {
            connection_id: Some("c"),
            kind: "request-denied",
            detail: "agent forwarding",
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.session_events("s").unwrap().len(), 1);
        assert_eq!(s.connection_events("c").unwrap().len(), 2);
        assert_eq!(s.list_events(Some("request-denied"), 10).unwrap().len(), 2);
        assert_eq!(s.list_events(Some("other"), 10).unwrap().len(), 0);
    }
}
