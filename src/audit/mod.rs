//! The audit store: an embedded SQLite database (WAL) with versioned
//! migrations. Every decision the bastion takes lands here: connections, auth
//! attempts, sessions, events (denials, blocks, approvals), masking hits,
//! issued and revoked certificates, forwards, Kubernetes requests.
//!
//! [`Store`] is cheap to clone; all writers share one connection behind a
//! mutex (SQLite serialises writers anyway). Inserts and queries for each
//! concern live in their own submodule as `impl Store` blocks.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::Connection;

pub mod api;
pub mod approvals;
pub mod certs;
pub mod connections;
pub mod events;
pub mod forwards;
pub mod kube;
pub mod mask_hits;
pub mod sessions;

/// Migrations in order; the schema version is the number applied.
const MIGRATIONS: &[(&str, &str)] = &[
    ("0001_init", include_str!("migrations/0001_init.sql")),
    (
        "0002_kube_recording",
        include_str!("migrations/0002_kube_recording.sql"),
    ),
    (
        "0003_maskguard_approvals",
        include_str!("migrations/0003_maskguard_approvals.sql"),
    ),
    (
        "0004_sessmask_hits",
        include_str!("migrations/0004_sessmask_hits.sql"),
    ),
];

/// Errors from the audit store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database could not be opened, migrated, read or written.
    #[error("audit database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The database was written by a newer sallyport.
    #[error(
        "audit database schema version {found} is newer than this binary knows ({known}); upgrade sallyport"
    )]
    TooNew { found: i64, known: i64 },
}

/// Handle to the audit database.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Open (creating if needed) and migrate the database at `path`.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let conn = Connection::open(path)?;
        Self::init(conn)
    }

    /// An in-memory store, for tests and `policy test`.
    pub fn in_memory() -> Result<Self, Error> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(mut conn: Connection) -> Result<Self, Error> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        migrate(&mut conn)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Lock the connection. A panic while holding the lock cannot leave SQLite
    /// in a torn state (statements are atomic), so poisoning is ignored.
    pub fn lock(&self) -> MutexGuard<'_, Connection> {
        match self.conn.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Schema version currently applied.
    pub fn schema_version(&self) -> Result<i64, Error> {
        Ok(self
            .lock()
            .pragma_query_value(None, "user_version", |r| r.get(0))?)
    }
}

fn migrate(conn: &mut Connection) -> Result<(), Error> {
    let current: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let known = MIGRATIONS.len() as i64;
    if current > known {
        return Err(Error::TooNew {
            found: current,
            known,
        });
    }
    for (i, (_name, sql)) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

/// Current time as RFC 3339 UTC with milliseconds, the format of every `*_at` column.
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| now.unix_timestamp().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_fresh_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.db");
        let s = Store::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
        drop(s);
        let s = Store::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
    }

    #[test]
    fn refuses_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.db");
        {
            let c = Connection::open(&path).unwrap();
            c.pragma_update(None, "user_version", 99).unwrap();
        }
        assert!(matches!(
            Store::open(&path),
            Err(Error::TooNew { found: 99, .. })
        ));
    }
}
