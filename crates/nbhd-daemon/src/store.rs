//! The SQLite store (DESIGN.md §5): one file in the data dir, WAL mode. For now it keeps the
//! node's identity; messages and activity logs join it with their engines.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension};

use crate::error::DaemonError;

pub struct Store {
    conn: Connection,
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, DaemonError> {
        let ctx = |e: rusqlite::Error| DaemonError::other(&format!("store {}", path.display()), e);
        let conn = Connection::open(path).map_err(ctx)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(ctx)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(ctx)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS identity (
                 id INTEGER PRIMARY KEY CHECK (id = 1),
                 secret BLOB NOT NULL,
                 created_ms INTEGER NOT NULL
             );",
        )
        .map_err(ctx)?;
        Ok(Store { conn })
    }

    /// The node's ed25519 secret, created from the OS's randomness on first run.
    pub fn identity_secret(&self) -> Result<[u8; 32], DaemonError> {
        let ctx = |e: rusqlite::Error| DaemonError::other("store: identity", e);
        let existing: Option<Vec<u8>> = self
            .conn
            .query_row("SELECT secret FROM identity WHERE id = 1", [], |r| r.get(0))
            .optional()
            .map_err(ctx)?;
        if let Some(s) = existing {
            return <[u8; 32]>::try_from(s.as_slice())
                .map_err(|_| DaemonError::Other("store: identity secret is not 32 bytes".into()));
        }
        let mut secret = [0u8; 32];
        getrandom::getrandom(&mut secret).map_err(|e| DaemonError::other("OS randomness", e))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        self.conn
            .execute(
                "INSERT INTO identity (id, secret, created_ms) VALUES (1, ?1, ?2)",
                rusqlite::params![&secret[..], now],
            )
            .map_err(ctx)?;
        Ok(secret)
    }
}
