//! The JSON shapes of the CLI contract (DESIGN.md §6), built in one place so the control socket,
//! the HTTP API and the CLI agree.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use nbhd_proto::presence::{Event, Peer};

use crate::store::StoredMessage;
use serde_json::{json, Value};

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `{id, nick, instance, addrs, port, status, msg, legacy, last_seen_ms}`; `last_seen_ms` is how
/// long ago (milliseconds) we last heard any of the peer's records.
pub fn peer(p: &Peer, now: Instant) -> Value {
    json!({
        "id": p.id,
        "nick": p.nick,
        "instance": p.instance,
        "addrs": p.addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "port": p.port,
        "status": p.status,
        "msg": p.msg,
        "legacy": p.legacy,
        "last_seen_ms": now.saturating_duration_since(p.last_seen).as_millis() as u64,
    })
}

/// `{type, at, ...}` with `at` in Unix milliseconds; None for engine events users do not follow.
pub fn event(e: &Event, now: Instant) -> Option<Value> {
    let (kind, p) = match e {
        Event::PeerUp(p) => ("peer-up", p),
        Event::PeerDown(p) => ("peer-down", p),
        Event::PeerChanged(p) => ("peer-changed", p),
        _ => return None,
    };
    Some(json!({ "type": kind, "at": unix_ms(), "peer": peer(p, now) }))
}

/// A row of `nbhd messages`: `{id, from, to, text, via, at}` plus the nicks of both ends.
pub fn message(m: &StoredMessage) -> Value {
    json!({
        "id": m.id,
        "from": m.from,
        "to": m.to,
        "from_nick": m.from_nick,
        "to_nick": m.to_nick,
        "text": m.text,
        "via": m.via,
        "at": m.at_ms,
    })
}
