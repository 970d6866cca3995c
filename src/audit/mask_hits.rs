//! Masking hits (which detector masked what, where in which stream; never the
//! secret) and the generic `events` rows other guards write.

use rusqlite::params;

use super::{Error, Store, now_rfc3339};
use crate::mask::Hit;

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
            let mut st = tx.prepare_cached(
                "INSERT INTO mask_hits (at, session_id, source, detector, offset) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            let at = now_rfc3339();
            for h in hits {
                st.execute(params![
                    at,
                    session_id,
                    source,
                    &*h.detector,
                    i64::try_from(h.offset).unwrap_or(i64::MAX)
                ])?;
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
}
