//! Shared activities: reliable, ordered, persistent group messaging over multicast, sealed with
//! the activity's key (DESIGN.md §4.4). Clique's ideas (telepathy-salut) without its limits: no
//! member cap, no per-member vector in every packet, history for late joiners, encryption.
//!
//! - [`wire`]: the sealed frame (data, nack, session, join, leave).
//! - [`seal`]: a private activity's key sealed to one invitee.
//! - [`signed`]: posts signed by their posters (the key proves membership, not authorship).
//! - `askers`: who asked us to repair what, and the credit for asking again.
//! - [`group`]: one activity's state machine: per-sender sequence numbers, NACKs after a short
//!   random delay with suppression, repair by any member that holds the data, compact session
//!   messages (each sender's high-water mark) when something changed and rarely otherwise,
//!   fragmentation of posts up to 1 MiB, membership.
//!
//! Persistence goes through the driver, like everything that must survive: a post of ours is
//! stored before it is sent (so a restarted sender continues its sequence and never reuses a
//! number, and what `nbhd post` confirmed is never lost), and a post received is stored before
//! it counts. What the engine needs back from the store (old posts, to repair a late joiner)
//! it asks for with [`Activities::poll_load`].

mod askers;
pub mod group;
pub mod seal;
pub mod signed;
pub mod wire;

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::Rng;

use crate::drops::DropReason;
use crate::identity::Identity;
use group::Group;
pub use wire::ActivityId;

/// Largest post: a bigger one is a usage error (DESIGN.md §6).
pub const MAX_POST: usize = 1 << 20;
/// Own posts queued behind the one being stored (each is stored before it is sent).
pub const MAX_QUEUED_POSTS: usize = 65536;
/// ... and at most this many bytes of them (sixty-four 1 MiB posts).
pub const MAX_QUEUED_BYTES: usize = 64 << 20;

/// What an activity is, as its members and invitations know it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActivityInfo {
    pub id: ActivityId,
    pub name: String,
    pub kind: String,
    pub private: bool,
    pub key: [u8; 32],
    pub group: Ipv4Addr,
    pub port: u16,
}

impl ActivityInfo {
    pub fn new(
        id: ActivityId,
        name: &str,
        kind: &str,
        private: bool,
        key: [u8; 32],
    ) -> ActivityInfo {
        let (group, port) = group_of(&id);
        ActivityInfo {
            id,
            name: name.to_string(),
            kind: kind.to_string(),
            private,
            key,
            group,
            port,
        }
    }
}

/// One multicast group per activity, in 239.255.0.0/16 (organisation-local scope), and a port,
/// both from the id (DESIGN.md §4.4). Two activities may meet on one group: frames carry the
/// activity id and the key, so neither reads the other's.
pub fn group_of(id: &ActivityId) -> (Ipv4Addr, u16) {
    let b = id.0;
    let (mut x, y) = (b[0], b[1]);
    // Not the courier's group (239.255.110.98), not 239.255.0.x.
    if x == 110 || x == 0 {
        x ^= 0x80;
    }
    let port = 20000 + u16::from_be_bytes([b[2], b[3]]) % 20000;
    (Ipv4Addr::new(239, 255, x, y), port)
}

/// A post, as stored and as shown in the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Post {
    pub activity: ActivityId,
    pub sender: [u8; 32],
    pub nick: String,
    /// Per-sender post sequence, from 1.
    pub seq: u64,
    /// Its first packet's sequence (its fragments are the next ones).
    pub first_pkt: u64,
    pub frags: u16,
    pub lamport: u64,
    /// When its sender posted it (Unix ms, the sender's clock).
    pub at_ms: u64,
    /// Bytes rather than text.
    pub bytes: bool,
    pub body: Vec<u8>,
    /// Its poster's signature ([`signed`]), checked on every copy, repair and history.
    pub sig: [u8; 64],
}

/// What must be stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    /// An activity we created or joined (or left: `joined` false), with what we know of it.
    Activity {
        info: ActivityInfo,
        joined: bool,
    },
    Post(Post),
}

/// Posts the engine needs back from the store: those of `sender` whose packets meet
/// `first..=last`, to repair them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Load {
    pub activity: ActivityId,
    pub sender: [u8; 32],
    pub first: u64,
    pub last: u64,
}

/// Open or close an activity's multicast channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChannelChange {
    Open {
        id: ActivityId,
        group: Ipv4Addr,
        port: u16,
    },
    Close {
        id: ActivityId,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Our post (the `request` [`Activities::post`] returned) is stored, numbered, and sent.
    Posted { request: u64, post: Post },
    /// Our post could not be stored: it was not sent, and took no number.
    PostFailed {
        activity: ActivityId,
        request: u64,
        why: String,
    },
    /// A post received and stored, in per-sender order.
    Received(Post),
    Member {
        activity: ActivityId,
        key: [u8; 32],
        nick: String,
        change: MemberChange,
    },
    Dropped {
        activity: ActivityId,
        reason: DropReason,
        detail: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberChange {
    Joined,
    Left,
    /// Not heard for [`group::MEMBER_SILENCE`].
    Silent,
}

/// Counters for `nbhd stats`.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub frames_in: u64,
    pub frames_out: u64,
    pub data_out: u64,
    pub repairs_out: u64,
    pub nacks_out: u64,
    pub sessions_out: u64,
    pub duplicates: u64,
    pub dropped: BTreeMap<DropReason, u64>,
    /// Live packets that went missing and came later (repaired), and for the last
    /// [`REPAIR_SAMPLES`] of them how long after the gap was seen: the repair latency.
    pub repaired: u64,
    pub repair_latency: VecDeque<Duration>,
}

/// How many repair latencies [`Stats`] keeps.
pub const REPAIR_SAMPLES: usize = 4096;

impl Stats {
    fn repair_took(&mut self, d: Duration) {
        self.repaired += 1;
        if self.repair_latency.len() == REPAIR_SAMPLES {
            self.repair_latency.pop_front();
        }
        self.repair_latency.push_back(d);
    }
}

/// What an activity is to `nbhd activities`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub info: ActivityInfo,
    pub joined: bool,
    /// Members heard from lately (ourselves included when joined).
    pub members: usize,
}

/// What a restarted engine knows from its store.
#[derive(Clone, Debug, Default)]
pub struct Restored {
    pub activities: Vec<(ActivityInfo, bool)>,
    /// Per activity and sender (ourselves included): the last post stored, as
    /// (post seq, its last packet seq, its Lamport time).
    pub heads: Vec<(ActivityId, [u8; 32], u64, u64, u64)>,
}

pub struct Activities {
    me: Identity,
    /// An instant and the wall clock then (Unix microseconds).
    clock: (Instant, u64),
    /// Keys of the peers presence lists (unflagged): never evicted from a full table for a
    /// stranger's key.
    known: HashSet<[u8; 32]>,
    nick: String,
    groups: BTreeMap<ActivityId, Group>,
    /// Public activities others advertise, not (or not yet) joined.
    advertised: BTreeMap<ActivityId, ActivityInfo>,
    next_token: u64,
    writes: VecDeque<(u64, Write)>,
    /// Which group waits for each write's confirmation.
    waiting: BTreeMap<u64, ActivityId>,
    loads: VecDeque<(u64, Load)>,
    transmits: VecDeque<(ActivityId, Vec<u8>)>,
    channels: VecDeque<ChannelChange>,
    events: VecDeque<Event>,
    /// A CSPRNG (from the driver's entropy): it draws keys, ids and every frame's nonce.
    rng: StdRng,
    stats: Stats,
}

/// What a group asks of the engine around it while it handles an input.
pub(crate) struct Out<'a> {
    pub me: &'a Identity,
    /// Keys of the peers the Node knows (see [`Activities::set_known_peers`]).
    pub known: &'a HashSet<[u8; 32]>,
    /// The wall clock now, in Unix microseconds (control frames' counters).
    pub unix_us: u64,
    pub nick: &'a str,
    pub rng: &'a mut StdRng,
    pub next_token: &'a mut u64,
    pub writes: &'a mut VecDeque<(u64, Write)>,
    pub waiting: &'a mut BTreeMap<u64, ActivityId>,
    pub loads: &'a mut VecDeque<(u64, Load)>,
    pub transmits: &'a mut VecDeque<(ActivityId, Vec<u8>)>,
    pub events: &'a mut VecDeque<Event>,
    pub stats: &'a mut Stats,
}

impl Activities {
    pub fn new(
        me: Identity,
        nick: &str,
        rng: StdRng,
        restored: Restored,
        now: Instant,
        unix_ms: u64,
    ) -> Activities {
        let mut a = Activities {
            me,
            clock: (now, unix_ms.saturating_mul(1000)),
            known: HashSet::new(),
            nick: nick.to_string(),
            groups: BTreeMap::new(),
            advertised: BTreeMap::new(),
            next_token: 1,
            writes: VecDeque::new(),
            waiting: BTreeMap::new(),
            loads: VecDeque::new(),
            transmits: VecDeque::new(),
            channels: VecDeque::new(),
            events: VecDeque::new(),
            rng,
            stats: Stats::default(),
        };
        let me = a.me.public();
        for (info, joined) in restored.activities {
            let mut g = Group::new(info, me, now);
            for (id, sender, seq, last_pkt, lamport) in &restored.heads {
                if *id == g.info.id {
                    g.restore_head(*sender, *seq, *last_pkt, *lamport);
                }
            }
            if joined {
                a.channels.push_back(ChannelChange::Open {
                    id: g.info.id,
                    group: g.info.group,
                    port: g.info.port,
                });
            }
            let id = g.info.id;
            a.groups.insert(id, g);
            if joined {
                a.with(id, now, |g, out| g.join(now, out, false));
            }
        }
        a
    }

    /// Runs `f` on a group with the engine's outputs at hand.
    fn with<R>(
        &mut self,
        id: ActivityId,
        now: Instant,
        f: impl FnOnce(&mut Group, &mut Out) -> R,
    ) -> Option<R> {
        let unix_us = self.unix_us(now);
        let g = self.groups.get_mut(&id)?;
        let mut out = Out {
            me: &self.me,
            known: &self.known,
            unix_us,
            nick: &self.nick,
            rng: &mut self.rng,
            next_token: &mut self.next_token,
            writes: &mut self.writes,
            waiting: &mut self.waiting,
            loads: &mut self.loads,
            transmits: &mut self.transmits,
            events: &mut self.events,
            stats: &mut self.stats,
        };
        Some(f(g, &mut out))
    }

    /// The wall clock at `now`, in Unix microseconds, from the one the driver gave at start.
    fn unix_us(&self, now: Instant) -> u64 {
        let (at, unix_us) = self.clock;
        unix_us.saturating_add(now.saturating_duration_since(at).as_micros() as u64)
    }

    /// The keys of the peers the Node knows now.
    pub fn set_known_peers(&mut self, keys: HashSet<[u8; 32]>) {
        self.known = keys;
    }

    pub fn set_nick(&mut self, nick: &str) {
        self.nick = nick.to_string();
    }

    /// Its bounded tables, summed over activities: (name, entries now, bound per activity).
    pub fn tables(&self) -> Vec<(&'static str, usize, usize)> {
        let (mut members, mut held, mut bytes, mut askers) = (0, 0, 0, 0);
        for g in self.groups.values() {
            members += g.member_count();
            held += g.held_packets();
            bytes += g.held_bytes();
            askers += g.asker_count();
        }
        vec![
            ("activity-members", members, group::MAX_SENDERS),
            ("activity-held-packets", held, group::MAX_BUFFER),
            ("activity-held-bytes", bytes, group::MAX_HELD_BYTES),
            ("activity-askers", askers, askers::MAX_ASKERS),
        ]
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Every activity we know: joined, created, or advertised by a peer.
    pub fn summaries(&self, now: Instant) -> Vec<Summary> {
        let mut out: Vec<Summary> = self
            .groups
            .values()
            .map(|g| Summary {
                info: g.info.clone(),
                joined: g.joined,
                members: g.members(now),
            })
            .collect();
        for info in self.advertised.values() {
            if !self.groups.contains_key(&info.id) {
                out.push(Summary {
                    info: info.clone(),
                    joined: false,
                    members: 0,
                });
            }
        }
        out
    }

    /// Every activity we know of (ours and advertised), for resolving what a person typed.
    pub fn infos(&self) -> Vec<&ActivityInfo> {
        let mut v: Vec<&ActivityInfo> = self.groups.values().map(|g| &g.info).collect();
        v.extend(
            self.advertised
                .values()
                .filter(|a| !self.groups.contains_key(&a.id)),
        );
        v
    }

    pub fn info(&self, id: &ActivityId) -> Option<&ActivityInfo> {
        self.groups
            .get(id)
            .map(|g| &g.info)
            .or_else(|| self.advertised.get(id))
    }

    pub fn is_joined(&self, id: &ActivityId) -> bool {
        self.groups.get(id).is_some_and(|g| g.joined)
    }

    /// Public activities we joined: what presence advertises for us.
    pub fn public_joined(&self) -> Vec<&ActivityInfo> {
        self.groups
            .values()
            .filter(|g| g.joined && !g.info.private)
            .map(|g| &g.info)
            .collect()
    }

    /// What peers advertise now (replaces what we knew from them).
    pub fn set_advertised(&mut self, infos: Vec<ActivityInfo>) {
        self.advertised = infos.into_iter().map(|i| (i.id, i)).collect();
    }

    /// Creates an activity, with us as its first member.
    pub fn create(&mut self, now: Instant, name: &str, kind: &str, private: bool) -> ActivityInfo {
        let id = ActivityId(self.rng.gen());
        let key: [u8; 32] = self.rng.gen();
        let info = ActivityInfo::new(id, name, kind, private, key);
        self.join(now, info.clone());
        info
    }

    /// Joins (or rejoins) an activity whose key we have.
    pub fn join(&mut self, now: Instant, info: ActivityInfo) {
        let id = info.id;
        let me = self.me.public();
        let fresh = match self.groups.get(&id) {
            Some(g) if g.joined => return,
            Some(_) => false,
            None => true,
        };
        if fresh {
            self.groups.insert(id, Group::new(info.clone(), me, now));
        }
        self.channels.push_back(ChannelChange::Open {
            id,
            group: info.group,
            port: info.port,
        });
        self.with(id, now, |g, out| g.join(now, out, true));
    }

    pub fn leave(&mut self, now: Instant, id: &ActivityId) -> bool {
        let left = self
            .with(*id, now, |g, out| g.leave(now, out))
            .unwrap_or(false);
        if left {
            self.channels.push_back(ChannelChange::Close { id: *id });
        }
        left
    }

    /// Posts to a joined activity: a request number; [`Event::Posted`] (or `PostFailed`) with
    /// it says when the post is stored, under which seq, and sent.
    pub fn post(
        &mut self,
        now: Instant,
        id: &ActivityId,
        body: Vec<u8>,
        bytes: bool,
        at_ms: u64,
    ) -> Result<u64, PostError> {
        if body.len() > MAX_POST {
            return Err(PostError::TooLarge);
        }
        self.with(*id, now, |g, out| g.post(now, out, body, bytes, at_ms))
            .ok_or(PostError::NotJoined)?
    }

    pub fn handle_datagram(&mut self, now: Instant, bytes: &[u8]) {
        self.stats.frames_in += 1;
        let Ok(p) = wire::Packet::new_checked(bytes) else {
            *self.stats.dropped.entry(DropReason::BadFrame).or_default() += 1;
            return;
        };
        let id = p.activity();
        if !self.groups.get(&id).is_some_and(|g| g.joined) {
            // Another activity sharing the group, or one we left: not ours to read.
            return;
        }
        self.with(id, now, |g, out| g.handle_frame(now, out, bytes));
    }

    pub fn handle_persisted(&mut self, now: Instant, token: u64) {
        if let Some(id) = self.waiting.remove(&token) {
            self.with(id, now, |g, out| g.persisted(now, out, token, true, ""));
        }
    }

    pub fn handle_persist_failed(&mut self, now: Instant, token: u64, why: &str) {
        if let Some(id) = self.waiting.remove(&token) {
            self.with(id, now, |g, out| g.persisted(now, out, token, false, why));
        }
    }

    /// The posts a [`Load`] asked for.
    pub fn handle_loaded(&mut self, now: Instant, load: &Load, posts: Vec<Post>) {
        self.with(load.activity, now, |g, out| g.loaded(now, out, load, posts));
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let ids: Vec<ActivityId> = self.groups.keys().copied().collect();
        for id in ids {
            self.with(id, now, |g, out| g.handle_timeout(now, out));
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.groups.values().filter_map(|g| g.poll_timeout()).min()
    }

    pub fn poll_transmit(&mut self) -> Option<(ActivityId, Vec<u8>)> {
        self.transmits.pop_front()
    }

    pub fn poll_write(&mut self) -> Option<(u64, Write)> {
        self.writes.pop_front()
    }

    pub fn poll_load(&mut self) -> Option<(u64, Load)> {
        self.loads.pop_front()
    }

    pub fn poll_channel(&mut self) -> Option<ChannelChange> {
        self.channels.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PostError {
    NotJoined,
    TooLarge,
    /// Too many posts wait to be stored.
    Busy,
}

impl std::fmt::Display for PostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PostError::NotJoined => write!(f, "not a member of that activity (nbhd join it first)"),
            PostError::TooLarge => write!(f, "a post is at most {MAX_POST} bytes"),
            PostError::Busy => write!(f, "too many posts wait to be stored; try again"),
        }
    }
}

#[cfg(test)]
mod tests;
