//! Connections and authentication attempts: one `connections` row per TCP
//! connection (opened on accept, filled in on authentication, closed with an
//! end reason), one `auth_attempts` row per credential the server judged.

use rusqlite::params;

use super::{Error, Store, now_rfc3339};
use crate::identity::Identity;

/// One authentication attempt as the audit log keeps it.
#[derive(Debug, Clone, Default)]
pub struct AuthAttempt<'a> {
    pub connection_id: &'a str,
    pub peer: &'a str,
    pub user: &'a str,
    /// `certificate`, `publickey`, `none`.
    pub method: &'a str,
    pub fingerprint: Option<&'a str>,
    pub key_id: Option<&'a str>,
    pub serial: Option<u64>,
    pub accepted: bool,
    pub reason: &'a str,
}

/// An `auth_attempts` row read back.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AuthAttemptRow {
    pub at: String,
    pub connection_id: Option<String>,
    pub peer: String,
    pub user: String,
    pub method: String,
    pub fingerprint: Option<String>,
    pub key_id: Option<String>,
    pub serial: Option<i64>,
    pub result: String,
    pub reason: String,
}

impl Store {
    /// A TCP connection was accepted.
    pub fn connection_opened(&self, id: &str, peer: &str) -> Result<(), Error> {
        self.lock().execute(
            "INSERT INTO connections (id, peer, started_at) VALUES (?1, ?2, ?3)",
            params![id, peer, now_rfc3339()],
        )?;
        Ok(())
    }

    /// The connection authenticated as `user` with this identity.
    pub fn connection_authenticated(
        &self,
        id: &str,
        user: &str,
        identity: &Identity,
        key_id: Option<&str>,
        serial: Option<u64>,
    ) -> Result<(), Error> {
        let json = serde_json::to_string(identity).unwrap_or_default();
        self.lock().execute(
            "UPDATE connections SET user = ?2, identity = ?3, key_id = ?4, serial = ?5 WHERE id = ?1",
            params![id, user, json, key_id, serial.map(|s| s as i64)],
        )?;
        Ok(())
    }

    /// The connection ended (first end reason wins).
    pub fn connection_closed(&self, id: &str, reason: &str) -> Result<(), Error> {
        self.lock().execute(
            "UPDATE connections SET ended_at = ?2, end_reason = ?3 WHERE id = ?1 AND ended_at IS NULL",
            params![id, now_rfc3339(), reason],
        )?;
        Ok(())
    }

    /// Record one authentication attempt.
    pub fn record_auth_attempt(&self, a: &AuthAttempt<'_>) -> Result<(), Error> {
        self.lock().execute(
            "INSERT INTO auth_attempts (at, connection_id, peer, user, method, fingerprint, key_id,
                serial, result, reason) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                now_rfc3339(),
                a.connection_id,
                a.peer,
                a.user,
                a.method,
                a.fingerprint,
                a.key_id,
                a.serial.map(|s| s as i64),
                if a.accepted { "accepted" } else { "rejected" },
                a.reason
            ],
        )?;
        Ok(())
    }

    /// Authentication attempts, newest first.
    pub fn list_auth_attempts(&self, limit: u32) -> Result<Vec<AuthAttemptRow>, Error> {
        let conn = self.lock();
        let mut st = conn.prepare(
            "SELECT at, connection_id, peer, user, method, fingerprint, key_id, serial, result, reason
             FROM auth_attempts ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = st.query_map(params![limit], |r| {
            Ok(AuthAttemptRow {
                at: r.get(0)?,
                connection_id: r.get(1)?,
                peer: r.get(2)?,
                user: r.get(3)?,
                method: r.get(4)?,
                fingerprint: r.get(5)?,
                key_id: r.get(6)?,
                serial: r.get(7)?,
                result: r.get(8)?,
                reason: r.get(9)?,
            })
        })?;
        rows.collect::<Result<Vec<_>, _>>().map_err(Error::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_lifecycle_and_attempts() {
        let s = Store::in_memory().unwrap();
        s.connection_opened("c1", "127.0.0.1:5000").unwrap();
        s.record_auth_attempt(&AuthAttempt {
            connection_id: "c1",
            peer: "127.0.0.1:5000",
            user: "alice",
            method: "certificate",
            serial: Some(7),
            accepted: false,
            reason: "expired",
            ..Default::default()
        })
        .unwrap();
        let id = Identity {
            issuer: "local".into(),
            subject: "alice".into(),
            ..Default::default()
        };
        s.connection_authenticated("c1", "alice", &id, Some("k"), Some(7))
            .unwrap();
        s.connection_closed("c1", "client closed").unwrap();
        s.connection_closed("c1", "later reason ignored").unwrap();
        let reason: String = s
            .lock()
            .query_row(
                "SELECT end_reason FROM connections WHERE id='c1'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(reason, "client closed");
        let a = s.list_auth_attempts(10).unwrap();
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].result, "rejected");
        assert_eq!(a[0].serial, Some(7));
    }
}
