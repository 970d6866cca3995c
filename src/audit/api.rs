//! HTTP API requests (`api_requests`: every request, failures with their
//! reason) and the revocation queries `ca krl` and `cert revoke` need.

use rusqlite::params;

use super::{Error, Store, now_rfc3339};

/// One audited API request.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ApiRequest {
    pub at: String,
    pub peer: String,
    pub route: String,
    pub subject: Option<String>,
    pub status: u16,
    pub reason: String,
}

/// Everything revoked, for a KRL.
#[derive(Debug, Clone, Default)]
pub struct Revoked {
    pub serials: Vec<u64>,
    pub key_ids: Vec<String>,
    pub subjects: Vec<String>,
}

impl Store {
    /// Record one API request and its outcome.
    pub fn record_api_request(
        &self,
        peer: &str,
        route: &str,
        subject: Option<&str>,
        status: u16,
        reason: &str,
    ) -> Result<(), Error> {
        self.lock().execute(
            "INSERT INTO api_requests (at, peer, route, subject, status, reason) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![now_rfc3339(), peer, route, subject, status, reason],
        )?;
        Ok(())
    }

    /// Latest API requests, newest first.
    pub fn list_api_requests(&self, limit: u32) -> Result<Vec<ApiRequest>, Error> {
        let conn = self.lock();
        let mut st = conn.prepare(
            "SELECT at, peer, route, subject, status, reason FROM api_requests ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = st.query_map(params![limit], |r| {
            Ok(ApiRequest {
                at: r.get(0)?,
                peer: r.get(1)?,
                route: r.get(2)?,
                subject: r.get(3)?,
                status: r.get::<_, i64>(4)? as u16,
                reason: r.get(5)?,
            })
        })?;
        let mut out = Vec::new();
        for r in rows {
            out.push(r?);
        }
        Ok(out)
    }

    /// All revocations, with subjects expanded to the key ids issued to them.
    pub fn revoked(&self) -> Result<Revoked, Error> {
        let conn = self.lock();
        let mut out = Revoked::default();
        let mut st = conn.prepare("SELECT serial, key_id, subject FROM revocations")?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, Option<i64>>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, Option<String>>(2)?,
            ))
        })?;
        for r in rows {
            match r? {
                (Some(s), _, _) => out.serials.push(s as u64),
                (_, Some(k), _) => out.key_ids.push(k),
                (_, _, Some(s)) => out.subjects.push(s),
                _ => {}
            }
        }
        drop(st);
        let mut st = conn.prepare("SELECT DISTINCT key_id FROM certificates WHERE subject = ?1")?;
        let mut extra = Vec::new();
        for s in &out.subjects {
            let rows = st.query_map(params![s], |r| r.get::<_, String>(0))?;
            for k in rows {
                extra.push(k?);
            }
        }
        out.key_ids.extend(extra);
        Ok(out)
    }

    /// How many issued certificates a revocation target covers.
    pub fn count_matching_certificates(
        &self,
        target: &super::certs::RevokeTarget,
    ) -> Result<u64, Error> {
        use super::certs::RevokeTarget as T;
        let conn = self.lock();
        let n: i64 = match target {
            T::Serial(s) => conn.query_row(
                "SELECT COUNT(*) FROM certificates WHERE serial = ?1",
                params![*s as i64],
                |r| r.get(0),
            )?,
            T::KeyId(k) => conn.query_row(
                "SELECT COUNT(*) FROM certificates WHERE key_id = ?1",
                params![k],
                |r| r.get(0),
            )?,
            T::Subject(s) => conn.query_row(
                "SELECT COUNT(*) FROM certificates WHERE subject = ?1",
                params![s],
                |r| r.get(0),
            )?,
        };
        Ok(n as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::certs::RevokeTarget;
    use crate::identity::Identity;

    #[test]
    fn api_requests_and_revoked() {
        let s = Store::in_memory().unwrap();
        s.record_api_request("127.0.0.1", "/v1/certificates", None, 401, "bad_signature")
            .unwrap();
        let l = s.list_api_requests(10).unwrap();
        assert_eq!((l[0].status, l[0].reason.as_str()), (401, "bad_signature"));
        let id = Identity {
            issuer: "corp".into(),
            subject: "bob".into(),
            ..Default::default()
        };
        s.record_certificate(
            9,
            &id,
            "oidc:corp:bob",
            &["bob".into()],
            0,
            1,
            "f",
            None,
            None,
            None,
        )
        .unwrap();
        s.revoke(&RevokeTarget::Serial(5), None).unwrap();
        s.revoke(&RevokeTarget::KeyId("oidc:x:y".into()), None)
            .unwrap();
        s.revoke(&RevokeTarget::Subject("bob".into()), None)
            .unwrap();
        let r = s.revoked().unwrap();
        assert_eq!(r.serials, vec![5]);
        assert_eq!(
            r.key_ids,
            vec!["oidc:x:y".to_string(), "oidc:corp:bob".to_string()]
        );
        assert_eq!(
            s.count_matching_certificates(&RevokeTarget::Subject("bob".into()))
                .unwrap(),
            1
        );
    }
}
