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
            "CREATE TABLE IF NOT EXISTS seen (
                 sender TEXT NOT NULL,
                 id TEXT NOT NULL,
                 at_ms INTEGER NOT NULL,
                 PRIMARY KEY (sender, id)
             );
             CREATE TABLE IF NOT EXISTS invitations (
                 sender TEXT NOT NULL,
                 id TEXT NOT NULL,
                 row TEXT NOT NULL,
                 received_ms INTEGER NOT NULL,
                 PRIMARY KEY (sender, id)
             );
             CREATE TABLE IF NOT EXISTS identity (
                 id INTEGER PRIMARY KEY CHECK (id = 1),
                 secret BLOB NOT NULL,
                 created_ms INTEGER NOT NULL
             );",
        )
        .map_err(ctx)?;
        Ok(Store { conn })
    }

    /// Keeps an invitation; one received twice (by two paths, or again after a restart) is kept
    /// once.
    pub fn add_invitation(
        &self,
        sender: &str,
        id: &str,
        row: &serde_json::Value,
    ) -> Result<(), DaemonError> {
        self.conn
            .execute(
                "INSERT OR IGNORE INTO invitations (sender, id, row, received_ms) VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![sender, id, row.to_string(), row["received_at"].as_i64().unwrap_or(0)],
            )
            .map_err(|e| DaemonError::other("store: invitation", e))?;
        Ok(())
    }

    /// Remembers a received message id, so a copy arriving after a restart is not shown again.
    pub fn add_seen(&self, sender: &str, id: &str) -> Result<(), DaemonError> {
        let now = crate::view::unix_ms() as i64;
        self.conn
            .execute(
                "INSERT OR IGNORE INTO seen (sender, id, at_ms) VALUES (?1, ?2, ?3)",
                rusqlite::params![sender, id, now],
            )
            .map_err(|e| DaemonError::other("store: seen", e))?;
        Ok(())
    }

    /// Every (sender, stanza id) already received: messages of the last week and all invitations.
    pub fn seen_ids(&self) -> Result<Vec<(String, String)>, DaemonError> {
        let ctx = |e: rusqlite::Error| DaemonError::other("store: seen", e);
        let week_ago = crate::view::unix_ms() as i64 - 7 * 24 * 3600 * 1000;
        let mut st = self
            .conn
            .prepare("SELECT sender, id FROM seen WHERE at_ms >= ?1 UNION SELECT sender, id FROM invitations")
            .map_err(ctx)?;
        let rows = st
            .query_map([week_ago], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })
            .map_err(ctx)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(ctx)
    }

    /// Invitations received, oldest first.
    pub fn invitations(&self) -> Result<Vec<serde_json::Value>, DaemonError> {
        let ctx = |e: rusqlite::Error| DaemonError::other("store: invitations", e);
        let mut st = self
            .conn
            .prepare("SELECT row FROM invitations ORDER BY received_ms, rowid")
            .map_err(ctx)?;
        let rows = st.query_map([], |r| r.get::<_, String>(0)).map_err(ctx)?;
        let mut out = Vec::new();
        for r in rows {
            if let Ok(v) = serde_json::from_str(&r.map_err(ctx)?) {
                out.push(v);
            }
        }
        Ok(out)
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
