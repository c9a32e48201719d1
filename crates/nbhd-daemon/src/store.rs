//! The SQLite store (DESIGN.md §5): one file in the data dir, WAL mode. It keeps the node's
//! identity, the invitations and 1:1 messages received (and the messages sent), and the ids
//! already seen so a copy after a restart is not shown twice.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension};

use crate::error::DaemonError;

pub struct Store {
    conn: Connection,
}

/// A row of `nbhd messages`: peer ids (ours for what we sent), the nicks they had then.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMessage {
    pub id: String,
    pub from: String,
    pub to: String,
    pub from_nick: String,
    pub to_nick: String,
    pub text: String,
    pub via: Option<String>,
    pub at_ms: u64,
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
             CREATE TABLE IF NOT EXISTS messages (
                 sender TEXT NOT NULL,
                 id TEXT NOT NULL,
                 recipient TEXT NOT NULL,
                 sender_nick TEXT NOT NULL,
                 recipient_nick TEXT NOT NULL,
                 text TEXT NOT NULL,
                 via TEXT,
                 at_ms INTEGER NOT NULL,
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

    /// Keeps a 1:1 message sent or received; `via` is None until a sent one is delivered.
    pub fn add_message(&self, m: &StoredMessage) -> Result<(), DaemonError> {
        self.conn
            .execute(
                "INSERT OR IGNORE INTO messages (sender, id, recipient, sender_nick, recipient_nick, text, via, at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                rusqlite::params![m.from, m.id, m.to, m.from_nick, m.to_nick, m.text, m.via, m.at_ms as i64],
            )
            .map_err(|e| DaemonError::other("store: message", e))?;
        Ok(())
    }

    /// A message we sent was delivered over `via`.
    pub fn set_message_via(&self, sender: &str, id: &str, via: &str) -> Result<(), DaemonError> {
        self.conn
            .execute(
                "UPDATE messages SET via = ?3 WHERE sender = ?1 AND id = ?2",
                rusqlite::params![sender, id, via],
            )
            .map_err(|e| DaemonError::other("store: message", e))?;
        Ok(())
    }

    /// 1:1 messages oldest first; with `peer`, only those from or to it.
    pub fn messages(&self, peer: Option<&str>) -> Result<Vec<StoredMessage>, DaemonError> {
        let ctx = |e: rusqlite::Error| DaemonError::other("store: messages", e);
        let mut st = self
            .conn
            .prepare(
                "SELECT id, sender, recipient, sender_nick, recipient_nick, text, via, at_ms FROM messages
                 WHERE ?1 IS NULL OR sender = ?1 OR recipient = ?1 ORDER BY at_ms, rowid",
            )
            .map_err(ctx)?;
        let rows = st
            .query_map([peer], |r| {
                Ok(StoredMessage {
                    id: r.get(0)?,
                    from: r.get(1)?,
                    to: r.get(2)?,
                    from_nick: r.get(3)?,
                    to_nick: r.get(4)?,
                    text: r.get(5)?,
                    via: r.get(6)?,
                    at_ms: r.get::<_, i64>(7)? as u64,
                })
            })
            .map_err(ctx)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(ctx)
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
