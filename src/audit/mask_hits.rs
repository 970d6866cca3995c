//! Masking hits (which detector masked what, where in which stream; never the
//! secret) and the generic `events` rows other guards write.

use rusqlite::params;

use super::{Error, Store, now_rfc3339};
use crate::mask::Hit;

/// Rows per multi-row INSERT (5 parameters each, well under SQLite's
/// variable limit).
const ROWS_PER_INSERT: usize = 64;

/// The full-batch statement's text, built once.
static FULL_INSERT: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| insert_sql(ROWS_PER_INSERT));

fn insert_sql(rows: usize) -> String {
    let mut sql =
        String::from("INSERT INTO mask_hits (at, session_id, source, detector, offset) VALUES ");
    for i in 0..rows {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str("(?,?,?,?,?)");
    }
    sql
}

fn hit_params<'a>(
    hits: &'a [Hit],
    at: &'a str,
    session_id: Option<&'a str>,
    source: &'a str,
) -> impl Iterator<Item = rusqlite::types::ToSqlOutput<'a>> + 'a {
    use rusqlite::types::{ToSqlOutput, Value, ValueRef};
    hits.iter().flat_map(move |h| {
        [
            ToSqlOutput::Borrowed(ValueRef::Text(at.as_bytes())),
            match session_id {
                Some(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
                None => ToSqlOutput::Owned(Value::Null),
            },
            ToSqlOutput::Borrowed(ValueRef::Text(source.as_bytes())),
            ToSqlOutput::Borrowed(ValueRef::Text(h.detector.as_bytes())),
            ToSqlOutput::Owned(Value::Integer(i64::try_from(h.offset).unwrap_or(i64::MAX))),
        ]
    })
}

impl Store {
    /// Record masking hits of one stream. `source`: output | input | command | kube-body.
    pub fn record_mask_hits(
        &self,
        session_id: Option<&str>,
        source: &str,
        hits: &[Hit],
    ) -> Result<(), Error> {
        if hits.is_empty() {
            return Ok(());
        }
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        {
            let at = now_rfc3339();
            // Secret-dense output yields thousands of hits per read: rows
            // go in as multi-row INSERTs of ROWS_PER_INSERT (one statement
            // step per batch instead of per row; measured on bench/masking.sh
            // dense text, where per-row inserts were most of the bastion's CPU).
            let mut full = tx.prepare_cached(&FULL_INSERT)?;
            let mut chunks = hits.chunks_exact(ROWS_PER_INSERT);
            for chunk in &mut chunks {
                full.execute(rusqlite::params_from_iter(hit_params(
                    chunk, &at, session_id, source,
                )))?;
            }
            let rest = chunks.remainder();
            if !rest.is_empty() {
                let mut st = tx.prepare_cached(&insert_sql(rest.len()))?;
                st.execute(rusqlite::params_from_iter(hit_params(
                    rest, &at, session_id, source,
                )))?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Masking hits of a session: (at, source, detector, offset).
    pub fn mask_hits(&self, session_id: &str) -> Result<Vec<(String, String, String, i64)>, Error> {
        let conn = self.lock();
        let mut st = conn.prepare_cached(
            "SELECT at, source, detector, offset FROM mask_hits WHERE session_id = ?1 ORDER BY id",
        )?;
        let rows = st
            .query_map(params![session_id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Record a notable event from its parts (`detail` must already be
    /// masked); see [`super::events::Event`].
    #[allow(clippy::too_many_arguments)]
    pub fn record_event_parts(
        &self,
        connection_id: Option<&str>,
        session_id: Option<&str>,
        kind: &str,
        subject: Option<&str>,
        detail: &str,
        decision: Option<&str>,
        reason: Option<&str>,
    ) -> Result<(), Error> {
        self.record_event(&super::events::Event {
            connection_id,
            session_id,
            kind,
            subject,
            detail,
            decision,
            reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn hits_round_trip_without_secrets() {
        let s = Store::in_memory().unwrap();
        let m = crate::mask::Masker::builtin().unwrap();
        let out = m.mask(b"x DB_PASSWORD=hunter2xyz\n");
        s.record_mask_hits(Some("sess-1"), "output", &out.hits)
            .unwrap();
        s.record_mask_hits(Some("sess-1"), "output", &[]).unwrap();
        let rows = s.mask_hits("sess-1").unwrap();
        assert_eq!(rows.len(), 1);
        let (_, source, det, off) = rows.first().cloned().unwrap();
        assert_eq!(
            (source.as_str(), det.as_str(), off),
            ("output", "password-assignment", 14)
        );
        let _ = Hit {
            detector: Arc::from("x"),
            offset: 0,
        };
    }

    #[test]
    fn many_hits_go_in_batches_in_order() {
        // 3 full multi-row INSERTs and a remainder, for two sources.
        let s = Store::in_memory().unwrap();
        let n = 3 * ROWS_PER_INSERT + 7;
        let hits: Vec<Hit> = (0..n)
            .map(|i| Hit {
                detector: Arc::from(if i % 2 == 0 { "jwt" } else { "github-token" }),
                offset: i as u64 * 10,
            })
            .collect();
        s.record_mask_hits(Some("sess-2"), "output", &hits).unwrap();
        s.record_mask_hits(Some("sess-2"), "stderr", &hits[..1])
            .unwrap();
        let rows = s.mask_hits("sess-2").unwrap();
        assert_eq!(rows.len(), n + 1);
        for (i, (_, source, det, off)) in rows.iter().take(n).enumerate() {
            assert_eq!(source, "output");
            assert_eq!(det, if i % 2 == 0 { "jwt" } else { "github-token" });
            assert_eq!(*off, i as i64 * 10);
        }
        let last = rows.last().unwrap();
        assert_eq!((last.1.as_str(), last.3), ("stderr", 0));
        // No session (kube bodies): NULL, not the text "None".
        s.record_mask_hits(None, "kube-body", &hits[..2]).unwrap();
        let nulls = s
            .lock()
            .query_row(
                "SELECT count(*) FROM mask_hits WHERE session_id IS NULL",
                [],
                |r| r.get::<_, i64>(0),
            )
            .unwrap();
        assert_eq!(nulls, 2);
    }
}
