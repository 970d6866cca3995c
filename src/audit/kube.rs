//! Kubernetes API requests that went through (or were stopped by) the kube
//! API proxy: one `kube_requests` row per HTTP request, written when the
//! response (or the upgraded stream) has finished, so byte counts are final.

use rusqlite::params;

use super::{Error, Store, now_rfc3339};

/// One proxied (or refused) Kubernetes API request.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct KubeRequestRow {
    pub connection_id: Option<String>,
    pub subject: Option<String>,
    /// Identity JSON.
    pub identity: Option<String>,
    /// Kubernetes verb, or `invalid` / `discovery` / `non-resource`.
    pub verb: String,
    pub api_group: Option<String>,
    pub resource: Option<String>,
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// Path and query as received (the query may hold label selectors, never
    /// credentials: those travel in headers, which are not stored).
    pub path: String,
    /// `allow` | `approve` | `deny`.
    pub decision: String,
    pub reason: String,
    /// HTTP status returned to the client (101 for upgraded streams).
    pub status: Option<u16>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Until the response head (streams keep flowing after it).
    pub latency_ms: Option<u64>,
    pub secret_read: bool,
    /// Masked request body of writes.
    pub body: Option<String>,
    /// Asciicast recording of an exec/attach stream.
    pub recording: Option<String>,
}

/// A row as read back.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KubeRequestRecord {
    pub id: i64,
    pub at: String,
    #[serde(flatten)]
    pub row: KubeRequestRow,
}

impl Store {
    /// Append one kube request row.
    pub fn record_kube_request(&self, r: &KubeRequestRow) -> Result<(), Error> {
        self.lock().execute(
            "INSERT INTO kube_requests (at, connection_id, subject, identity, verb, api_group,
                resource, subresource, namespace, name, path, decision, reason, status,
                bytes_in, bytes_out, latency_ms, secret_read, body, recording)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)",
            params![
                now_rfc3339(),
                r.connection_id,
                r.subject,
                r.identity,
                r.verb,
                r.api_group,
                r.resource,
                r.subresource,
                r.namespace,
                r.name,
                r.path,
                r.decision,
                r.reason,
                r.status,
                r.bytes_in as i64,
                r.bytes_out as i64,
                r.latency_ms.map(|v| v as i64),
                r.secret_read,
                r.body,
                r.recording,
            ],
        )?;
        Ok(())
    }

    /// Most recent kube requests first.
    pub fn list_kube_requests(&self, limit: u32) -> Result<Vec<KubeRequestRecord>, Error> {
        let conn = self.lock();
        let mut st = conn.prepare(
            "SELECT id, at, connection_id, subject, identity, verb, api_group, resource,
                    subresource, namespace, name, path, decision, reason, status, bytes_in,
                    bytes_out, latency_ms, secret_read, body, recording
             FROM kube_requests ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = st.query_map(params![limit], |r| {
            Ok(KubeRequestRecord {
                id: r.get(0)?,
                at: r.get(1)?,
                row: KubeRequestRow {
                    connection_id: r.get(2)?,
                    subject: r.get(3)?,
                    identity: r.get(4)?,
                    verb: r.get(5)?,
                    api_group: r.get(6)?,
                    resource: r.get(7)?,
                    subresource: r.get(8)?,
                    namespace: r.get(9)?,
                    name: r.get(10)?,
                    path: r.get(11)?,
                    decision: r.get(12)?,
                    reason: r.get(13)?,
                    status: r.get(14)?,
                    bytes_in: r.get::<_, i64>(15)?.max(0) as u64,
                    bytes_out: r.get::<_, i64>(16)?.max(0) as u64,
                    latency_ms: r.get::<_, Option<i64>>(17)?.map(|v| v.max(0) as u64),
                    secret_read: r.get(18)?,
                    body: r.get(19)?,
                    recording: r.get(20)?,
                },
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
    fn insert_and_list() {
        let s = Store::in_memory().unwrap();
        let row = KubeRequestRow {
            subject: Some("copilot".into()),
            verb: "get".into(),
            resource: Some("secrets".into()),
            namespace: Some("dev".into()),
            name: Some("db".into()),
            path: "/api/v1/namespaces/dev/secrets/db".into(),
            decision: "deny".into(),
            reason: "p.toml:3 role 'agents' kube.deny 'secrets'".into(),
            status: Some(403),
            secret_read: true,
            ..Default::default()
        };
        s.record_kube_request(&row).unwrap();
        let l = s.list_kube_requests(10).unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].row, row);
        let n: i64 = s
            .lock()
            .query_row(
                "SELECT count(*) FROM kube_requests WHERE secret_read = 1",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 1);
    }
}
