//! Session channels (`sessions` table): one row per shell or exec channel,
//! inserted when the channel starts and closed once with its end facts (exit
//! status or signal, bytes in/out, end reason). Queries back the
//! `sallyport sessions` command.

use rusqlite::{OptionalExtension, params};

use super::{Error, Store, now_rfc3339};
use crate::identity::Identity;

/// Facts known when a session starts.
#[derive(Debug, Clone)]
pub struct SessionStart<'a> {
    pub id: &'a str,
    pub connection_id: &'a str,
    pub channel: u32,
    pub user: &'a str,
    pub identity: &'a Identity,
    /// `shell` or `exec`.
    pub kind: &'a str,
    /// The command (masked by the caller).
    pub command: Option<&'a str>,
    pub pty: bool,
    pub term: Option<&'a str>,
    pub cols: Option<u32>,
    pub rows: Option<u32>,
    pub recording: Option<&'a str>,
}

/// Facts known when a session ends.
#[derive(Debug, Clone, Default)]
pub struct SessionEnd<'a> {
    pub exit_status: Option<u32>,
    pub exit_signal: Option<&'a str>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub reason: &'a str,
    /// Secrets masked (output and command); the hits are in `mask_hits`.
    pub mask_hits: u64,
}

/// A `sessions` row read back.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SessionRow {
    pub id: String,
    pub connection_id: String,
    pub channel: i64,
    pub user: String,
    pub identity: serde_json::Value,
    pub subject: String,
    pub on_behalf_of: Option<String>,
    pub kind: String,
    pub command: Option<String>,
    pub pty: bool,
    pub term: Option<String>,
    pub cols: Option<i64>,
    pub rows: Option<i64>,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub exit_status: Option<i64>,
    pub exit_signal: Option<String>,
    pub bytes_in: i64,
    pub bytes_out: i64,
    pub recording: Option<String>,
    pub end_reason: Option<String>,
    /// Secrets masked in the session (set when it ends).
    pub mask_hits: i64,
}

const COLS: &str =
    "id, connection_id, channel, user, identity, subject, on_behalf_of, kind, command,
    pty, term, cols, rows, started_at, ended_at, exit_status, exit_signal, bytes_in, bytes_out,
    recording, end_reason, mask_hits";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SessionRow> {
    let identity: String = r.get(4)?;
    Ok(SessionRow {
        id: r.get(0)?,
        connection_id: r.get(1)?,
        channel: r.get(2)?,
        user: r.get(3)?,
        identity: serde_json::from_str(&identity).unwrap_or(serde_json::Value::Null),
        subject: r.get(5)?,
        on_behalf_of: r.get(6)?,
        kind: r.get(7)?,
        command: r.get(8)?,
        pty: r.get::<_, i64>(9)? != 0,
        term: r.get(10)?,
        cols: r.get(11)?,
        rows: r.get(12)?,
        started_at: r.get(13)?,
        ended_at: r.get(14)?,
        exit_status: r.get(15)?,
        exit_signal: r.get(16)?,
        bytes_in: r.get(17)?,
        bytes_out: r.get(18)?,
        recording: r.get(19)?,
        end_reason: r.get(20)?,
        mask_hits: r.get(21)?,
    })
}

impl Store {
    /// A session channel started.
    pub fn session_started(&self, s: &SessionStart<'_>) -> Result<(), Error> {
        let json = serde_json::to_string(s.identity).unwrap_or_default();
        self.lock().execute(
            "INSERT INTO sessions (id, connection_id, channel, user, identity, subject, on_behalf_of,
                kind, command, pty, term, cols, rows, started_at, recording)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
            params![
                s.id,
                s.connection_id,
                s.channel,
                s.user,
                json,
                s.identity.subject,
                s.identity.on_behalf_of,
                s.kind,
                s.command,
                s.pty as i64,
                s.term,
                s.cols,
                s.rows,
                now_rfc3339(),
                s.recording
            ],
        )?;
        Ok(())
    }

    /// Latest pty size of a session (window-change).
    pub fn session_resized(&self, id: &str, cols: u32, rows: u32) -> Result<(), Error> {
        self.lock().execute(
            "UPDATE sessions SET cols = ?2, rows = ?3 WHERE id = ?1",
            params![id, cols, rows],
        )?;
        Ok(())
    }

    /// A session ended (first end wins).
    pub fn session_ended(&self, id: &str, e: &SessionEnd<'_>) -> Result<(), Error> {
        self.lock().execute(
            "UPDATE sessions SET ended_at = ?2, exit_status = ?3, exit_signal = ?4, bytes_in = ?5,
                bytes_out = ?6, end_reason = ?7, mask_hits = ?8 WHERE id = ?1 AND ended_at IS NULL",
            params![
                id,
                now_rfc3339(),
                e.exit_status,
                e.exit_signal,
                e.bytes_in as i64,
                e.bytes_out as i64,
                e.reason,
                i64::try_from(e.mask_hits).unwrap_or(i64::MAX)
            ],
        )?;
        Ok(())
    }

    /// Close every session still open (after a crash, on startup): their
    /// end is unknown but they are certainly not running any more.
    pub fn close_orphan_sessions(&self, reason: &str) -> Result<usize, Error> {
        let n = self.lock().execute(
            "UPDATE sessions SET ended_at = ?1, end_reason = ?2 WHERE ended_at IS NULL",
            params![now_rfc3339(), reason],
        )?;
        self.lock().execute(
            "UPDATE connections SET ended_at = ?1, end_reason = ?2 WHERE ended_at IS NULL",
            params![now_rfc3339(), reason],
        )?;
        Ok(n)
    }

    /// Sessions, newest first.
    pub fn list_sessions(&self, limit: u32) -> Result<Vec<SessionRow>, Error> {
        let conn = self.lock();
        let mut st = conn.prepare(&format!(
            "SELECT {COLS} FROM sessions ORDER BY started_at DESC, rowid DESC LIMIT ?1"
        ))?;
        let rows = st.query_map(params![limit], row)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(Error::from)
    }

    /// One session by id, or by a unique id prefix.
    pub fn get_session(&self, id: &str) -> Result<Option<SessionRow>, Error> {
        let conn = self.lock();
        let exact = conn
            .query_row(
                &format!("SELECT {COLS} FROM sessions WHERE id = ?1"),
                params![id],
                row,
            )
            .optional()?;
        if exact.is_some() {
            return Ok(exact);
        }
        let mut st = conn.prepare(&format!(
            "SELECT {COLS} FROM sessions WHERE id LIKE ?1 || '%' LIMIT 2"
        ))?;
        let mut found = st
            .query_map(params![id], row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(if found.len() == 1 { found.pop() } else { None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_end_list_get() {
        let s = Store::in_memory().unwrap();
        let id = Identity {
            issuer: "local".into(),
            subject: "alice".into(),
            ..Default::default()
        };
        s.session_started(&SessionStart {
            id: "0190abcd-1",
            connection_id: "c",
            channel: 0,
            user: "alice",
            identity: &id,
            kind: "exec",
            command: Some("true"),
            pty: false,
            term: None,
            cols: None,
            rows: None,
            recording: Some("/tmp/x.cast"),
        })
        .unwrap();
        assert_eq!(s.list_sessions(10).unwrap()[0].ended_at, None);
        s.session_ended(
            "0190abcd-1",
            &SessionEnd {
                exit_status: Some(3),
                bytes_out: 10,
                reason: "exited",
                mask_hits: 2,
                ..Default::default()
            },
        )
        .unwrap();
        let r = s.get_session("0190abcd").unwrap().unwrap();
        assert_eq!(r.exit_status, Some(3));
        assert_eq!(r.bytes_out, 10);
        assert_eq!(r.mask_hits, 2);
        assert_eq!(r.subject, "alice");
        assert!(s.get_session("nope").unwrap().is_none());
        assert_eq!(s.close_orphan_sessions("crash").unwrap(), 0);
    }
}
