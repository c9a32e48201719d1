//! The Node's values as the contract's rows and events (DESIGN.md §6): built in one place, so
//! the control socket, the HTTP API and the CLI agree.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use nbhd_proto::activity::{MemberChange, Post, Summary};
use nbhd_proto::node::{self, Peer};
use nbhd_proto::paths::Diagnosis;

use crate::contract::{
    ActivityRow, ActivitySummary, DoctorRow, Event, InvitationRow, LogRow, PeerRow, EVENT_BODY_MAX,
};

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Milliseconds for JSON, to the hundredth: a delivery on a LAN takes well under one.
pub fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 100_000.0).round() / 100.0
}

/// `last_seen_ms` is how long ago we last heard any of the peer's records.
pub fn peer(p: &Peer, now: Instant, impostor: bool) -> PeerRow {
    PeerRow {
        id: p.id.clone(),
        nick: p.nick.clone(),
        instance: p.instance.clone(),
        addrs: p.addrs.iter().map(|a| a.to_string()).collect(),
        port: p.port,
        status: p.status.clone(),
        msg: p.msg.clone(),
        legacy: p.legacy,
        last_seen_ms: now.saturating_duration_since(p.last_seen).as_millis() as u64,
        impostor,
    }
}

/// A post as `nbhd log` shows it: text, or bytes in base64.
pub fn log_row(p: &Post) -> LogRow {
    let (text, bytes) = if p.bytes {
        (None, Some(STANDARD.encode(&p.body)))
    } else {
        (Some(String::from_utf8_lossy(&p.body).to_string()), None)
    };
    LogRow {
        sender: URL_SAFE_NO_PAD.encode(p.sender),
        nick: p.nick.clone(),
        seq: p.seq,
        lamport: p.lamport,
        text,
        bytes,
        at: p.at_ms,
        size: p.body.len(),
    }
}

pub fn activity(s: &Summary) -> ActivitySummary {
    ActivitySummary {
        id: s.info.id.to_hex(),
        name: s.info.name.clone(),
        kind: s.info.kind.clone(),
        members: s.members,
        joined: s.joined,
        private: s.info.private,
    }
}

pub fn doctor(p: &Peer, d: &Diagnosis) -> DoctorRow {
    DoctorRow {
        peer: p.id.clone(),
        nick: p.nick.clone(),
        state: d.state.as_str().into(),
        path: d.path.as_str().into(),
        unicast_out: d.unicast_out.as_str().into(),
        unicast_in: d.unicast_in.as_str().into(),
        multicast_out: d.multicast_out.as_str().into(),
        multicast_in: d.multicast_in.as_str().into(),
        diagnosis: d.text.clone(),
    }
}

/// The event people follow for a Node event, if it is one they follow; `impostor` says which
/// peers announce a nick first seen with another key, or a key another instance holds.
pub fn event(e: &node::Event, now: Instant, impostor: impl Fn(&Peer) -> bool) -> Option<Event> {
    let at = unix_ms();
    Some(match e {
        node::Event::PeerUp(p) => Event::PeerUp {
            at,
            peer: peer(p, now, impostor(p)),
        },
        node::Event::PeerDown(p) => Event::PeerDown {
            at,
            peer: peer(p, now, impostor(p)),
        },
        node::Event::PeerChanged(p) => Event::PeerChanged {
            at,
            peer: peer(p, now, impostor(p)),
        },
        node::Event::Posted { post, .. } | node::Event::Entry(post) => {
            let mut entry = log_row(post);
            if entry.size > EVENT_BODY_MAX {
                (entry.text, entry.bytes) = (None, None);
            }
            Event::Post {
                at,
                activity: post.activity.to_hex(),
                entry,
            }
        }
        node::Event::Member {
            activity,
            peer,
            nick,
            change,
        } => Event::Member {
            at,
            activity: activity.to_hex(),
            peer: peer.clone(),
            nick: nick.clone(),
            change: match change {
                MemberChange::Joined => "joined",
                MemberChange::Left => "left",
                MemberChange::Silent => "silent",
            }
            .into(),
        },
        node::Event::Message {
            from,
            from_nick,
            id,
            text,
            via,
        } => Event::Message {
            at,
            verified: nbhd_proto::identity::is_peer_id(from),
            from: from.clone(),
            from_nick: from_nick.clone(),
            id: id.clone(),
            text: text.clone(),
            via: via.as_str().into(),
        },
        node::Event::Invitation {
            from,
            from_nick,
            id,
            activity,
            reason,
            via,
            relayed_by,
        } => Event::Invitation {
            at,
            invitation: InvitationRow {
                id: id.clone(),
                from: from.clone(),
                from_nick: from_nick.clone(),
                activity: ActivityRow {
                    id: activity.id.clone(),
                    name: activity.name.clone(),
                    kind: activity.kind.clone(),
                },
                reason: reason.clone(),
                via: via.as_str().into(),
                relayed_by: relayed_by.clone(),
                received_at: at,
            },
        },
        node::Event::PathChanged {
            peer,
            nick,
            diagnosis,
        } => Event::PathChanged {
            at,
            peer: peer.clone(),
            nick: nick.clone(),
            state: diagnosis.state.as_str().into(),
            path: diagnosis.path.as_str().into(),
            diagnosis: diagnosis.text.clone(),
        },
        node::Event::Renamed { .. }
        | node::Event::Announced { .. }
        | node::Event::Delivered { .. }
        | node::Event::Failed { .. }
        | node::Event::Dropped { .. }
        | node::Event::PostFailed { .. } => return None,
    })
}
