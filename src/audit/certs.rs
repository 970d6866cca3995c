//! Issued certificates and revocations.

use rusqlite::{OptionalExtension, params};

use super::{Error, Store, now_rfc3339};
use crate::identity::Identity;

/// One issued certificate as recorded at issuance.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IssuedCert {
    pub serial: u64,
    pub issued_at: String,
    pub key_id: String,
    pub subject: String,
    pub issuer: String,
    pub identity: serde_json::Value,
    pub principals: Vec<String>,
    pub valid_after: String,
    pub valid_before: String,
    pub fingerprint: String,
    pub token_jti: Option<String>,
    pub token_iat: Option<i64>,
    pub source: Option<String>,
    /// Filled by listings: the revocation reason, if any.
    pub revoked: Option<String>,
}

/// What to revoke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeTarget {
    Serial(u64),
    KeyId(String),
    Subject(String),
}

fn unix_to_rfc3339(t: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t as i64)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| t.to_string())
}

impl Store {
    /// Record an issued certificate.
    #[allow(clippy::too_many_arguments)]
    pub fn record_certificate(
        &self,
        serial: u64,
        identity: &Identity,
        key_id: &str,
        principals: &[String],
        valid_after: u64,
        valid_before: u64,
        fingerprint: &str,
        token_jti: Option<&str>,
        token_iat: Option<i64>,
        source: Option<&str>,
    ) -> Result<(), Error> {
        let id_json = serde_json::to_string(identity).unwrap_or_default();
        let principals = serde_json::to_string(principals).unwrap_or_default();
        self.lock().execute(
            "INSERT INTO certificates (serial, issued_at, key_id, subject, issuer, identity, principals,
                valid_after, valid_before, fingerprint, token_jti, token_iat, source)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            params![
                serial as i64,
                now_rfc3339(),
                key_id,
                identity.subject,
                identity.issuer,
                id_json,
                principals,
                unix_to_rfc3339(valid_after),
                unix_to_rfc3339(valid_before),
                fingerprint,
                token_jti,
                token_iat,
                source
            ],
        )?;
        Ok(())
    }

    /// Record a revocation.
    pub fn revoke(&self, target: &RevokeTarget, reason: Option<&str>) -> Result<(), Error> {
        let (serial, key_id, subject) = match target {
            RevokeTarget::Serial(s) => (Some(*s as i64), None, None),
            RevokeTarget::KeyId(k) => (None, Some(k.as_str()), None),
            RevokeTarget::Subject(s) => (None, None, Some(s.as_str())),
        };
        self.lock().execute(
            "INSERT INTO revocations (at, serial, key_id, subject, reason) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![now_rfc3339(), serial, key_id, subject, reason],
        )?;
        Ok(())
    }

    /// Is a certificate with this serial / key id / subject revoked? Returns
    /// the reason. Errors count as revoked (fail closed).
    pub fn revocation_reason(&self, serial: u64, key_id: &str, subject: &str) -> Option<String> {
        type Row = (Option<i64>, Option<String>, Option<String>, Option<String>);
        let r: Result<Option<Row>, _> = self
            .lock()
            .query_row(
                "SELECT serial, key_id, subject, reason FROM revocations
                 WHERE serial = ?1 OR key_id = ?2 OR subject = ?3 LIMIT 1",
                params![serial as i64, key_id, subject],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional();
        match r {
            Ok(None) => None,
            Ok(Some((s, k, sub, reason))) => {
                let what = match (s, k, sub) {
                    (Some(s), _, _) => format!("serial {s}"),
                    (_, Some(k), _) => format!("key id {k}"),
                    (_, _, Some(sub)) => format!("subject {sub}"),
                    _ => "revocation entry".to_string(),
                };
                Some(match reason {
                    Some(r) if !r.is_empty() => format!("{what} ({r})"),
                    _ => what,
                })
            }
            Err(e) => Some(format!("revocation check failed: {e}")),
        }
    }

    /// Issued certificates, newest first.
    pub fn list_certificates(&self, limit: u32) -> Result<Vec<IssuedCert>, Error> {
        let conn = self.lock();
        let mut st = conn.prepare(
            "SELECT serial, issued_at, key_id, subject, issuer, identity, principals, valid_after,
                    valid_before, fingerprint, token_jti, token_iat, source
             FROM certificates ORDER BY issued_at DESC LIMIT ?1",
        )?;
        let rows = st.query_map(params![limit], |r| {
            let identity: String = r.get(5)?;
            let principals: String = r.get(6)?;
            Ok(IssuedCert {
                serial: r.get::<_, i64>(0)? as u64,
                issued_at: r.get(1)?,
                key_id: r.get(2)?,
                subject: r.get(3)?,
                issuer: r.get(4)?,
                identity: serde_json::from_str(&identity).unwrap_or(serde_json::Value::Null),
                principals: serde_json::from_str(&principals).unwrap_or_default(),
                valid_after: r.get(7)?,
                valid_before: r.get(8)?,
                fingerprint: r.get(9)?,
                token_jti: r.get(10)?,
                token_iat: r.get(11)?,
                source: r.get(12)?,
                revoked: None,
            })
        })?;
        let mut out = Vec::new();
        for r in rows {
            out.push(r?);
        }
        drop(st);
        drop(conn);
        for c in &mut out {
            c.revoked = self.revocation_reason(c.serial, &c.key_id, &c.subject);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_list_revoke() {
        let s = Store::in_memory().unwrap();
        let id = Identity {
            issuer: "local".into(),
            subject: "alice".into(),
            ..Default::default()
        };
        s.record_certificate(
            42,
            &id,
            "oidc:local:alice",
            &["alice".into()],
            0,
            100,
            "SHA256:x",
            None,
            None,
            Some("cli"),
        )
        .unwrap();
        assert_eq!(s.revocation_reason(42, "oidc:local:alice", "alice"), None);
        s.revoke(&RevokeTarget::Serial(42), Some("lost laptop"))
            .unwrap();
        assert_eq!(
            s.revocation_reason(42, "k", "bob").as_deref(),
            Some("serial 42 (lost laptop)")
        );
        s.revoke(&RevokeTarget::Subject("bob".into()), None)
            .unwrap();
        assert_eq!(
            s.revocation_reason(1, "k", "bob").as_deref(),
            Some("subject bob")
        );
        let l = s.list_certificates(10).unwrap();
        assert_eq!(l.len(), 1);
        assert!(l[0].revoked.is_some());
    }
}
