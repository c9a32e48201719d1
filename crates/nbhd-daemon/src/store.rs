//! The SQLite store (DESIGN.md §5): one file in the data dir, WAL mode, typed tables.
//!
//! It keeps the node's identity, the invitations and 1:1 messages received, the messages sent
//! (with the path that delivered them), the ids of messages received before messages were kept
//! (so a copy after a restart is acknowledged but not shown twice), the activities we created or
//! joined with every post in them, and the nicks pinned on first use. The Node asks for every
//! write it needs ([`nbhd_proto::node::StoreWrite`]) and counts nothing as received before
//! [`Store::apply_all`] confirmed it; it asks for old posts back to repair them for others.
//!
//! The schema is versioned with `PRAGMA user_version` and migrated forward on open, each step in
//! a transaction: version 0 is the first release's (invitations kept as JSON rows), 1 typed the
//! invitations and added messages, 2 added activities, posts and pins, 3 the posts' signatures.

use std::path::Path;

use nbhd_proto::activity::{ActivityId, ActivityInfo, Load, Post};
use nbhd_proto::messages::stanza::Activity;
use nbhd_proto::messages::MAX_SEEN;
use nbhd_proto::node::{Record, Restored};
use nbhd_proto::paths::Via;
use rusqlite::{Connection, OptionalExtension, Transaction};

use crate::contract::{ActivityRow, InvitationRow, MessageRow};
use crate::datadir;
use crate::error::DaemonError;

/// Messages received before a restart whose ids are still remembered (without their text: the
/// first release kept only ids) are recognised for this long.
const SEEN_KEPT_MS: i64 = 7 * 24 * 3600 * 1000;

/// The schema migrations, in order: step `i` takes a store from version `i` to `i + 1`.
const MIGRATIONS: &[fn(&Transaction) -> rusqlite::Result<()>] = &[to_v1, to_v2, to_v3];

pub struct Store {
    conn: Connection,
}

/// Version 0 → 1: invitations get typed columns (the JSON rows are read once, here), and
/// 1:1 messages get their table.
fn to_v1(tx: &Transaction) -> rusqlite::Result<()> {
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS identity (
             id INTEGER PRIMARY KEY CHECK (id = 1),
             secret BLOB NOT NULL,
             created_ms INTEGER NOT NULL
         );
         CREATE TABLE IF NOT EXISTS seen (
             sender TEXT NOT NULL,
             id TEXT NOT NULL,
             at_ms INTEGER NOT NULL,
             PRIMARY KEY (sender, id)
         );
         CREATE TABLE invitations_v1 (
             sender TEXT NOT NULL,
             id TEXT NOT NULL,
             sender_nick TEXT NOT NULL,
             activity_id TEXT NOT NULL,
             activity_name TEXT NOT NULL,
             activity_type TEXT NOT NULL,
             reason TEXT NOT NULL,
             via TEXT NOT NULL,
             relayed_by TEXT,
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
         );",
    )?;
    let had_json_rows: bool = tx
        .query_row(
            "SELECT COUNT(*) FROM pragma_table_info('invitations') WHERE name = 'row'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)?;
    if had_json_rows {
        tx.execute_batch(
            "INSERT OR IGNORE INTO invitations_v1
                 SELECT sender, id,
                        COALESCE(json_extract(row, '$.from_nick'), ''),
                        COALESCE(json_extract(row, '$.activity.id'), ''),
                        COALESCE(json_extract(row, '$.activity.name'), ''),
                        COALESCE(json_extract(row, '$.activity.type'), ''),
                        COALESCE(json_extract(row, '$.reason'), ''),
                        COALESCE(json_extract(row, '$.via'), ''),
                        json_extract(row, '$.relayed_by'),
                        received_ms
                 FROM invitations;
             DROP TABLE invitations;",
        )?;
    } else {
        tx.execute_batch("DROP TABLE IF EXISTS invitations;")?;
    }
    tx.execute_batch("ALTER TABLE invitations_v1 RENAME TO invitations;")
}

/// Version 1 → 2: shared activities (their posts, one row each, in the order every member
/// shows them: Lamport time, then sender), trust-on-first-use pins, and what an invitation's
/// activity needs to be joined from it.
fn to_v2(tx: &Transaction) -> rusqlite::Result<()> {
    tx.execute_batch(
        "ALTER TABLE invitations ADD COLUMN activity_group TEXT NOT NULL DEFAULT '';
         ALTER TABLE invitations ADD COLUMN activity_port INTEGER NOT NULL DEFAULT 0;
         ALTER TABLE invitations ADD COLUMN activity_key TEXT NOT NULL DEFAULT '';
         ALTER TABLE invitations ADD COLUMN activity_private INTEGER NOT NULL DEFAULT 0;
         CREATE TABLE activities (
             id TEXT PRIMARY KEY,
             name TEXT NOT NULL,
             kind TEXT NOT NULL,
             private INTEGER NOT NULL,
             key BLOB NOT NULL,
             joined INTEGER NOT NULL,
             updated_ms INTEGER NOT NULL
         );
         CREATE TABLE posts (
             activity TEXT NOT NULL,
             sender BLOB NOT NULL,
             seq INTEGER NOT NULL,
             first_pkt INTEGER NOT NULL,
             frags INTEGER NOT NULL,
             lamport INTEGER NOT NULL,
             nick TEXT NOT NULL,
             bytes INTEGER NOT NULL,
             body BLOB NOT NULL,
             at_ms INTEGER NOT NULL,
             PRIMARY KEY (activity, sender, seq)
         );
         CREATE INDEX posts_in_order ON posts (activity, lamport, sender);
         CREATE TABLE pins (
             nick TEXT PRIMARY KEY,
             key BLOB NOT NULL,
             first_ms INTEGER NOT NULL
         );",
    )
}

/// Version 2 → 3: every post keeps its poster's signature, so a repair or a late joiner's history
/// from this store is believed. Posts stored before (unsigned) keep an empty one: shown here,
/// never repaired to others, who would refuse them.
fn to_v3(tx: &Transaction) -> rusqlite::Result<()> {
    tx.execute_batch("ALTER TABLE posts ADD COLUMN sig BLOB NOT NULL DEFAULT x'';")
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, DaemonError> {
        let ctx = |e: rusqlite::Error| DaemonError::other(&format!("store {}", path.display()), e);
        let private = |e: std::io::Error| DaemonError::other("store", e);
        // The store holds the identity key, activity keys and messages: its owner's only.
        // SQLite would create it 0644; created here 0600, its `-wal` and `-shm` follow the
        // mode of the store (SQLite gives them the store's), and ones left wider are narrowed.
        datadir::create_private(path).map_err(private)?;
        for suffix in ["-wal", "-shm"] {
            datadir::tighten(&datadir::sidecar(path, suffix), datadir::FILE_MODE)
                .map_err(private)?;
        }
        let mut conn = Connection::open(path).map_err(ctx)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(ctx)?;
        // Every commit reaches the disk before it counts: a receipt, a `nbhd post` exit 0, a
        // post counted as received all follow their commit, and must survive a power cut, not
        // only a crash of the process (which NORMAL would). Group commits keep it cheap.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(ctx)?;
        let version: usize = conn
            .pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))
            .map_err(ctx)? as usize;
        if version > MIGRATIONS.len() {
            return Err(DaemonError::Other(format!(
                "store {} was written by a newer nbhd (schema {version}, this one knows {}): use that nbhd, or another --data-dir",
                path.display(),
                MIGRATIONS.len()
            )));
        }
        for (i, step) in MIGRATIONS.iter().enumerate().skip(version) {
            let tx = conn.transaction().map_err(ctx)?;
            step(&tx).map_err(ctx)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)
                .map_err(ctx)?;
            tx.commit().map_err(ctx)?;
            tracing::info!(store = %path.display(), from = i, to = i + 1, "store schema migrated");
        }
        Ok(Store { conn })
    }

    /// Carries out a write the Node asked for, stamped with the wall clock (`at_ms`).
    pub fn apply(&self, me: &str, record: &Record, at_ms: u64) -> Result<(), DaemonError> {
        apply_one(&self.conn, me, record, at_ms)
    }

    /// Carries out writes in one transaction (a group commit): each one's own result, and
    /// none of them counts if the commit fails.
    pub fn apply_all(
        &mut self,
        me: &str,
        records: &[&Record],
        at_ms: u64,
    ) -> Vec<Result<(), DaemonError>> {
        let ctx = |e: rusqlite::Error| DaemonError::other("store", e);
        let mut tx = match self.conn.transaction() {
            Ok(tx) => tx,
            Err(e) => {
                let msg = e.to_string();
                return records
                    .iter()
                    .map(|_| Err(DaemonError::Other(format!("store: {msg}"))))
                    .collect();
            }
        };
        let mut results: Vec<Result<(), DaemonError>> = records
            .iter()
            .map(|r| {
                // Each write in its own savepoint: one that fails takes only itself back.
                let sp = tx.savepoint().map_err(ctx)?;
                apply_one(&sp, me, r, at_ms)?;
                sp.commit().map_err(ctx)
            })
            .collect();
        if let Err(e) = tx.commit() {
            let msg = e.to_string();
            for r in results.iter_mut() {
                *r = Err(DaemonError::Other(format!("store: commit failed: {msg}")));
            }
        }
        results
    }
}

/// One write, on a connection or inside a transaction.
fn apply_one(conn: &Connection, me: &str, record: &Record, at_ms: u64) -> Result<(), DaemonError> {
    let ctx = |e: rusqlite::Error| DaemonError::other("store", e);
    let at = at_ms as i64;
    match record {
        Record::Message {
            id,
            from,
            to,
            from_nick,
            to_nick,
            text,
            via,
        } => conn.execute(
            "INSERT OR IGNORE INTO messages (sender, id, recipient, sender_nick, recipient_nick, text, via, at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            rusqlite::params![from, id, to, from_nick, to_nick, text, via.map(Via::as_str), at],
        ),
        Record::Delivered { id, via } => conn.execute(
            "UPDATE messages SET via = ?3 WHERE sender = ?1 AND id = ?2",
            rusqlite::params![me, id, via.as_str()],
        ),
        Record::Invitation {
            id,
            from,
            from_nick,
            activity,
            reason,
            via,
            relayed_by,
        } => conn.execute(
            "INSERT OR IGNORE INTO invitations (sender, id, sender_nick, activity_id, activity_name, activity_type, reason, via, relayed_by, received_ms,
                                                activity_group, activity_port, activity_key, activity_private)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            rusqlite::params![
                from, id, from_nick, activity.id, activity.name, activity.kind, reason, via.as_str(), relayed_by, at,
                activity.group, activity.port, activity.key, activity.private
            ],
        ),
        Record::Activity { info, joined } => conn.execute(
            "INSERT OR REPLACE INTO activities (id, name, kind, private, key, joined, updated_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            rusqlite::params![info.id.to_hex(), info.name, info.kind, info.private, &info.key[..], joined, at],
        ),
        Record::Post(p) => conn.execute(
            "INSERT OR IGNORE INTO posts (activity, sender, seq, first_pkt, frags, lamport, nick, bytes, body, at_ms, sig)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            rusqlite::params![
                p.activity.to_hex(), &p.sender[..], p.seq as i64, p.first_pkt as i64, p.frags, p.lamport as i64,
                p.nick, p.bytes, p.body, p.at_ms as i64, &p.sig[..]
            ],
        ),
        Record::Pin { nick, key } => conn.execute(
            "INSERT OR IGNORE INTO pins (nick, key, first_ms) VALUES (?1, ?2, ?3)",
            rusqlite::params![nick, &key[..], at],
        ),
    }
    .map(|_| ())
    .map_err(ctx)
}

fn key32(v: Vec<u8>) -> rusqlite::Result<[u8; 32]> {
    <[u8; 32]>::try_from(v.as_slice()).map_err(|_| rusqlite::Error::InvalidQuery)
}

fn post_row(r: &rusqlite::Row) -> rusqlite::Result<Post> {
    let activity: String = r.get(0)?;
    Ok(Post {
        activity: ActivityId::from_hex(&activity).ok_or(rusqlite::Error::InvalidQuery)?,
        sender: key32(r.get(1)?)?,
        seq: r.get::<_, i64>(2)? as u64,
        first_pkt: r.get::<_, i64>(3)? as u64,
        frags: r.get(4)?,
        lamport: r.get::<_, i64>(5)? as u64,
        nick: r.get(6)?,
        bytes: r.get(7)?,
        body: r.get(8)?,
        at_ms: r.get::<_, i64>(9)? as u64,
        // Empty for a post stored before signatures: all zeros, which no key verifies.
        sig: <[u8; 64]>::try_from(r.get::<_, Vec<u8>>(10)?.as_slice()).unwrap_or([0; 64]),
    })
}

const POST_COLUMNS: &str =
    "activity, sender, seq, first_pkt, frags, lamport, nick, bytes, body, at_ms, sig";

impl Store {
    /// What a Node restarts from: every (sender, stanza id) received and kept. Legacy peers'
    /// local ids are left out: they are made up here and can never come again.
    pub fn restored(&self, now_ms: u64) -> Result<Restored, DaemonError> {
        let ctx = |e: rusqlite::Error| DaemonError::other("store: seen ids", e);
        let mut st = self
            .conn
            .prepare(
                "SELECT sender, id, MAX(t) AS t FROM (
                     SELECT sender, id, at_ms AS t FROM seen WHERE at_ms >= ?1
                     UNION ALL SELECT sender, id, received_ms FROM invitations
                     UNION ALL SELECT sender, id, at_ms FROM messages
                         WHERE via IS NOT NULL AND id NOT LIKE 'local-%')
                 GROUP BY sender, id ORDER BY t DESC LIMIT ?2",
            )
            .map_err(ctx)?;
        let rows = st
            .query_map(
                rusqlite::params![now_ms as i64 - SEEN_KEPT_MS, MAX_SEEN as i64],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
            )
            .map_err(ctx)?;
        // The newest that the Node keeps in memory, oldest first as they came: the Node's
        // bound drops from the front. Older copies still meet their rows here.
        let mut seen = rows.collect::<Result<Vec<_>, _>>().map_err(ctx)?;
        seen.reverse();
        drop(st);
        let ctx = |e: rusqlite::Error| DaemonError::other("store: activities", e);
        let mut st = self
            .conn
            .prepare("SELECT id, name, kind, private, key, joined FROM activities")
            .map_err(ctx)?;
        let activities = st
            .query_map([], |r| {
                let id: String = r.get(0)?;
                let id = ActivityId::from_hex(&id).ok_or(rusqlite::Error::InvalidQuery)?;
                let info = ActivityInfo::new(
                    id,
                    &r.get::<_, String>(1)?,
                    &r.get::<_, String>(2)?,
                    r.get(3)?,
                    key32(r.get(4)?)?,
                );
                Ok((info, r.get::<_, bool>(5)?))
            })
            .map_err(ctx)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(ctx)?;
        drop(st);
        // Each sender's head in each activity: the last post of its unbroken run from seq 1.
        // Posts are stored in order, but one write of a group commit may fail while the next
        // succeeds: a post past a hole is not the head (the hole is fetched again).
        let mut st = self
            .conn
            .prepare(
                "SELECT activity, sender, seq, first_pkt + frags - 1, lamport FROM posts
                 ORDER BY activity, sender, seq",
            )
            .map_err(ctx)?;
        let mut rows = st.query([]).map_err(ctx)?;
        let mut heads: Vec<(ActivityId, [u8; 32], u64, u64, u64)> = Vec::new();
        let mut broken = false;
        while let Some(r) = rows.next().map_err(ctx)? {
            let id: String = r.get(0).map_err(ctx)?;
            let activity = ActivityId::from_hex(&id)
                .ok_or_else(|| DaemonError::Other(format!("store: bad activity id {id:?}")))?;
            let sender = key32(r.get(1).map_err(ctx)?).map_err(ctx)?;
            let (seq, last_pkt, lamport) = (
                r.get::<_, i64>(2).map_err(ctx)? as u64,
                r.get::<_, i64>(3).map_err(ctx)? as u64,
                r.get::<_, i64>(4).map_err(ctx)? as u64,
            );
            match heads.last_mut() {
                Some(h) if h.0 == activity && h.1 == sender => {
                    if !broken && seq == h.2 + 1 {
                        (h.2, h.3, h.4) = (seq, last_pkt, lamport);
                    } else {
                        broken = true;
                    }
                }
                _ => {
                    broken = seq != 1;
                    if !broken {
                        heads.push((activity, sender, seq, last_pkt, lamport));
                    }
                }
            }
        }
        drop(rows);
        drop(st);
        let mut st = self
            .conn
            .prepare("SELECT nick, key FROM pins")
            .map_err(ctx)?;
        let pins = st
            .query_map([], |r| Ok((r.get::<_, String>(0)?, key32(r.get(1)?)?)))
            .map_err(ctx)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(ctx)?;
        drop(st);
        let mut st = self
            .conn
            .prepare(
                "SELECT id, sender, activity_id, activity_name, activity_type, activity_group, activity_port, activity_key, activity_private
                 FROM invitations WHERE activity_key != ''",
            )
            .map_err(ctx)?;
        let invited = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    Activity {
                        id: r.get(2)?,
                        name: r.get(3)?,
                        kind: r.get(4)?,
                        group: r.get(5)?,
                        port: r.get(6)?,
                        key: r.get(7)?,
                        private: r.get(8)?,
                    },
                ))
            })
            .map_err(ctx)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(ctx)?;
        Ok(Restored {
            seen,
            activities: nbhd_proto::activity::Restored { activities, heads },
            pins,
            invited,
        })
    }

    /// Posts of `load.sender` in `load.activity` whose packets meet `load.first..=load.last`.
    pub fn load(&self, load: &Load) -> Result<Vec<Post>, DaemonError> {
        let ctx = |e: rusqlite::Error| DaemonError::other("store: posts", e);
        let mut st = self
            .conn
            .prepare(&format!(
                "SELECT {POST_COLUMNS} FROM posts WHERE activity = ?1 AND sender = ?2
                 AND first_pkt <= ?4 AND first_pkt + frags > ?3 ORDER BY seq"
            ))
            .map_err(ctx)?;
        let rows = st
            .query_map(
                rusqlite::params![
                    load.activity.to_hex(),
                    &load.sender[..],
                    load.first as i64,
                    load.last as i64
                ],
                post_row,
            )
            .map_err(ctx)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(ctx)
    }

    /// An activity's log: every post, in the one order every member shows (Lamport time, then
    /// sender, DESIGN.md §4.4).
    pub fn log(&self, activity: &ActivityId) -> Result<Vec<Post>, DaemonError> {
        let ctx = |e: rusqlite::Error| DaemonError::other("store: posts", e);
        let mut st = self
            .conn
            .prepare(&format!(
                "SELECT {POST_COLUMNS} FROM posts WHERE activity = ?1 ORDER BY lamport, sender, seq"
            ))
            .map_err(ctx)?;
        let rows = st.query_map([activity.to_hex()], post_row).map_err(ctx)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(ctx)
    }

    /// Invitations received, oldest first.
    pub fn invitations(&self) -> Result<Vec<InvitationRow>, DaemonError> {
        let ctx = |e: rusqlite::Error| DaemonError::other("store: invitations", e);
        let mut st = self
            .conn
            .prepare(
                "SELECT id, sender, sender_nick, activity_id, activity_name, activity_type, reason, via, relayed_by, received_ms
                 FROM invitations ORDER BY received_ms, rowid",
            )
            .map_err(ctx)?;
        let rows = st
            .query_map([], |r| {
                Ok(InvitationRow {
                    id: r.get(0)?,
                    from: r.get(1)?,
                    from_nick: r.get(2)?,
                    activity: ActivityRow {
                        id: r.get(3)?,
                        name: r.get(4)?,
                        kind: r.get(5)?,
                    },
                    reason: r.get(6)?,
                    via: r.get(7)?,
                    relayed_by: r.get(8)?,
                    received_at: r.get::<_, i64>(9)? as u64,
                })
            })
            .map_err(ctx)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(ctx)
    }

    /// 1:1 messages oldest first; with `peer`, only those from or to that peer id.
    pub fn messages(&self, peer: Option<&str>) -> Result<Vec<MessageRow>, DaemonError> {
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
                let from: String = r.get(1)?;
                Ok(MessageRow {
                    id: r.get(0)?,
                    verified: nbhd_proto::identity::is_peer_id(&from),
                    from,
                    to: r.get(2)?,
                    from_nick: r.get(3)?,
                    to_nick: r.get(4)?,
                    text: r.get(5)?,
                    via: r.get(6)?,
                    at: r.get::<_, i64>(7)? as u64,
                })
            })
            .map_err(ctx)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(ctx)
    }

    /// Peer ids that wrote with us under this nick (a peer that is gone still has its messages).
    pub fn peers_named(&self, nick: &str) -> Result<Vec<String>, DaemonError> {
        let ctx = |e: rusqlite::Error| DaemonError::other("store: messages", e);
        let mut st = self
            .conn
            .prepare(
                "SELECT sender FROM messages WHERE sender = ?1 OR sender_nick = ?1
                 UNION SELECT recipient FROM messages WHERE recipient = ?1 OR recipient_nick = ?1",
            )
            .map_err(ctx)?;
        let rows = st
            .query_map([nick], |r| r.get::<_, String>(0))
            .map_err(ctx)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(ctx)
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
        self.conn
            .execute(
                "INSERT INTO identity (id, secret, created_ms) VALUES (1, ?1, ?2)",
                rusqlite::params![&secret[..], crate::view::unix_ms() as i64],
            )
            .map_err(ctx)?;
        Ok(secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nbhd_proto::messages::stanza::Activity;

    fn temp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("nbhd-store-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d.join("nbhd.db")
    }

    /// A store as the first release left it (its own DDL and row format), with one invitation
    /// and one seen message id.
    #[test]
    fn a_store_written_by_the_first_release_opens_migrated_and_keeps_its_invitations() {
        let path = temp("v0");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE seen (sender TEXT NOT NULL, id TEXT NOT NULL, at_ms INTEGER NOT NULL, PRIMARY KEY (sender, id));
                 CREATE TABLE invitations (sender TEXT NOT NULL, id TEXT NOT NULL, row TEXT NOT NULL, received_ms INTEGER NOT NULL, PRIMARY KEY (sender, id));
                 CREATE TABLE identity (id INTEGER PRIMARY KEY CHECK (id = 1), secret BLOB NOT NULL, created_ms INTEGER NOT NULL);",
            )
            .unwrap();
            let row = serde_json::json!({
                "id": "inv1", "from": "alicekey", "from_nick": "alice",
                "activity": {"id": "Chess club", "name": "Chess club", "type": "activity"},
                "reason": "", "via": "courier", "relayed_by": null, "received_at": 1_700_000_000_000u64,
            });
            c.execute(
                "INSERT INTO invitations VALUES ('alicekey', 'inv1', ?1, 1700000000000)",
                [row.to_string()],
            )
            .unwrap();
            c.execute(
                "INSERT INTO seen VALUES ('bobkey', 'm1', ?1)",
                [crate::view::unix_ms() as i64],
            )
            .unwrap();
            c.execute("INSERT INTO identity VALUES (1, ?1, 1)", [&[7u8; 32][..]])
                .unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(
            s.invitations().unwrap(),
            vec![InvitationRow {
                id: "inv1".into(),
                from: "alicekey".into(),
                from_nick: "alice".into(),
                activity: ActivityRow {
                    id: "Chess club".into(),
                    name: "Chess club".into(),
                    kind: "activity".into()
                },
                reason: String::new(),
                via: "courier".into(),
                relayed_by: None,
                received_at: 1_700_000_000_000,
            }]
        );
        assert_eq!(
            s.identity_secret().unwrap(),
            [7; 32],
            "the identity survives"
        );
        let seen = s.restored(crate::view::unix_ms()).unwrap().seen;
        assert!(seen.contains(&("bobkey".into(), "m1".into())));
        assert!(seen.contains(&("alicekey".into(), "inv1".into())));
        drop(s);
        // Opening again changes nothing (already at the newest version).
        let s = Store::open(&path).unwrap();
        assert_eq!(s.invitations().unwrap().len(), 1);
    }

    /// The real thing: `tests/fixtures/store-first-release.db` was written by the first release
    /// (commit 1002c0f) as bob, after alice invited him to "Chess club" and sent him a message.
    #[test]
    fn the_first_releases_own_store_file_opens_and_keeps_its_invitation_and_seen_id() {
        let path = temp("fixture");
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-first-release.db"),
            &path,
        )
        .unwrap();
        let s = Store::open(&path).unwrap();
        let alice = "Jvupb4a39v0lbuUwhaTdeYExSdEFCNk48XyAHD-Jy70";
        let inv = s.invitations().unwrap();
        assert_eq!(inv.len(), 1);
        assert_eq!(
            (
                inv[0].from.as_str(),
                inv[0].from_nick.as_str(),
                inv[0].activity.name.as_str(),
                inv[0].via.as_str(),
                inv[0].received_at
            ),
            (alice, "alice", "Chess club", "tcp", 1_796_175_198_740)
        );
        // Its message id is still known a day later (the message itself was never kept then).
        let seen = s
            .restored(1_796_175_198_746 + 24 * 3600 * 1000)
            .unwrap()
            .seen;
        assert!(seen.contains(&(alice.to_string(), "bfeff542e1e0a06c".to_string())));
        assert!(seen.contains(&(alice.to_string(), "0454a92bd1fa978c".to_string())));
    }

    #[test]
    fn a_store_from_a_newer_nbhd_is_refused_with_a_clear_error() {
        let path = temp("newer");
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        let e = Store::open(&path).err().expect("refused").to_string();
        assert!(e.contains("newer nbhd"), "{e}");
    }

    #[test]
    fn messages_are_kept_in_order_filtered_by_peer_and_once_each() {
        let s = Store::open(&temp("messages")).unwrap();
        let msg = |id: &str, from: &str, to: &str, text: &str, via: Option<Via>| Record::Message {
            id: id.into(),
            from: from.into(),
            to: to.into(),
            from_nick: from.to_uppercase(),
            to_nick: to.to_uppercase(),
            text: text.into(),
            via,
        };
        s.apply("me", &msg("m1", "me", "bob", "hi bob", None), 10)
            .unwrap();
        s.apply(
            "me",
            &msg("m2", "carol", "me", "hi from carol", Some(Via::Courier)),
            20,
        )
        .unwrap();
        s.apply(
            "me",
            &msg("m2", "carol", "me", "the same again", Some(Via::Tcp)),
            30,
        )
        .unwrap();
        s.apply(
            "me",
            &Record::Delivered {
                id: "m1".into(),
                via: Via::Tcp,
            },
            40,
        )
        .unwrap();
        s.apply(
            "me",
            &msg("local-1", "frank", "me", "no id", Some(Via::Tcp)),
            50,
        )
        .unwrap();
        let all = s.messages(None).unwrap();
        assert_eq!(
            all.iter()
                .map(|m| (m.id.as_str(), m.via.as_deref()))
                .collect::<Vec<_>>(),
            vec![
                ("m1", Some("tcp")),
                ("m2", Some("courier")),
                ("local-1", Some("tcp"))
            ]
        );
        assert_eq!(
            all[1].text, "hi from carol",
            "a copy is not a second message"
        );
        let bob = s.messages(Some("bob")).unwrap();
        assert_eq!(bob.len(), 1);
        assert_eq!(
            (bob[0].from_nick.as_str(), bob[0].to_nick.as_str()),
            ("ME", "BOB")
        );
        assert_eq!(s.peers_named("CAROL").unwrap(), vec!["carol".to_string()]);
        // Only a sender whose id is an identity's key is verified: a legacy client's
        // instance is not, whatever it is called.
        let key = "A".repeat(42) + "E";
        s.apply("me", &msg("k1", &key, "me", "signed", Some(Via::Tcp)), 60)
            .unwrap();
        s.apply(
            "me",
            &msg("l1", "legacy:frank@box", "me", "plain", Some(Via::Tcp)),
            70,
        )
        .unwrap();
        let verified: Vec<(String, bool)> = s
            .messages(None)
            .unwrap()
            .into_iter()
            .filter(|m| m.id == "k1" || m.id == "l1")
            .map(|m| (m.id, m.verified))
            .collect();
        assert_eq!(verified, vec![("k1".into(), true), ("l1".into(), false)]);
        let seen = s.restored(100).unwrap().seen;
        assert!(seen.contains(&("carol".into(), "m2".into())));
        assert!(!seen.iter().any(|(_, id)| id.starts_with("local-")));
        s.apply(
            "me",
            &Record::Invitation {
                id: "i1".into(),
                from: "carol".into(),
                from_nick: "CAROL".into(),
                activity: Activity {
                    id: "go".into(),
                    name: "go".into(),
                    kind: "activity".into(),
                    ..Activity::default()
                },
                reason: "join".into(),
                via: Via::Relay,
                relayed_by: Some("dave".into()),
            },
            60,
        )
        .unwrap();
        let inv = s.invitations().unwrap();
        assert_eq!(inv[0].relayed_by.as_deref(), Some("dave"));
        assert_eq!(inv[0].received_at, 60);
    }

    /// A group commit whose write of post 3 failed while post 4's succeeded leaves a hole: the
    /// sender's head is post 2, so the restarted engine fetches 3 (and 4) again.
    #[test]
    fn a_senders_head_is_the_end_of_its_unbroken_run() {
        let mut s = Store::open(&temp("heads")).unwrap();
        let activity = ActivityId([1; 16]);
        let post = |sender: u8, seq: u64| {
            Record::Post(Post {
                activity,
                sender: [sender; 32],
                nick: "n".into(),
                seq,
                first_pkt: 10 * seq,
                frags: 2,
                lamport: 100 + seq,
                at_ms: 1,
                bytes: false,
                body: b"x".to_vec(),
                sig: [seq as u8; 64],
            })
        };
        let records = [post(7, 1), post(7, 2), post(7, 4), post(8, 2), post(9, 1)];
        let refs: Vec<&Record> = records.iter().collect();
        assert!(s.apply_all("me", &refs, 1).iter().all(Result::is_ok));
        // Each post comes back with its signature, for repairs and history.
        let back = s.log(&activity).unwrap();
        assert_eq!(back.len(), 5);
        assert!(back.iter().all(|p| p.sig == [p.seq as u8; 64]), "{back:?}");
        let mut heads = s.restored(1).unwrap().activities.heads;
        heads.sort();
        assert_eq!(
            heads,
            vec![
                (activity, [7; 32], 2, 21, 102),
                (activity, [9; 32], 1, 11, 101),
            ],
            "sender 8 has no seq 1: no head at all"
        );
    }

    #[test]
    fn the_seen_ids_restored_are_the_newest_oldest_first_each_once() {
        let mut s = Store::open(&temp("seen-newest")).unwrap();
        let now = 10_000_000_000u64;
        let tx = s.conn.transaction().unwrap();
        for k in 0..MAX_SEEN as u64 + 10 {
            tx.execute(
                "INSERT INTO seen VALUES ('bob', ?1, ?2)",
                rusqlite::params![format!("m{k}"), (now - 1_000_000 + k) as i64],
            )
            .unwrap();
        }
        // The newest id is also a stored message: it comes back once.
        tx.execute(
            "INSERT INTO messages VALUES ('bob', ?1, 'me', 'BOB', 'ME', 'hi', 'tcp', ?2)",
            rusqlite::params![format!("m{}", MAX_SEEN + 9), now as i64],
        )
        .unwrap();
        tx.commit().unwrap();
        let seen = s.restored(now).unwrap().seen;
        assert_eq!(seen.len(), MAX_SEEN);
        assert_eq!(seen.first().unwrap().1, "m10", "the ten oldest left out");
        assert_eq!(seen.last().unwrap().1, format!("m{}", MAX_SEEN + 9));
    }
}
