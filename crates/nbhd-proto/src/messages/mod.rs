//! Messages: 1:1 chat and invitations between peers, over whichever path works, sans-IO
//! (DESIGN.md §4.2, §4.3).
//!
//! - [`xml`]: the XEP-0174 stream codec (bytes, however cut, into header, stanzas, end).
//! - [`stanza`]: the chat, receipt and signed invitation stanzas.
//! - [`streams`]: the streams themselves: opening, the secure channel right after the header,
//!   legacy XEP-0174 peers' plain streams, ends.
//! - [`noise`]: that secure channel: a Noise XX handshake bound to both identities and both
//!   roles, then every stanza encrypted.
//! - [`sealed`]: what travels through third parties (the courier, a relay), sealed from one
//!   identity to the other.
//! - [`delivery`]: deliveries raced over TCP, the courier and a relay as [`crate::paths::Paths::plan`] says,
//!   receipts bound to (stanza id, sender, recipient), deduplication, and what is received
//!   becoming a store write that must be confirmed before its receipt goes out.
//!
//! The engine owns no socket and no path evidence: the Node hands it the paths engine on every
//! call that may consult or inform it, carries out its [`Action`]s, and persists what it polls
//! out with [`Messages::poll_write`].

pub mod delivery;
pub mod noise;
pub mod sealed;
pub mod stanza;
pub mod streams;
pub mod xml;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::Rng;

use crate::drops::DropReason;
use crate::identity::Identity;
use crate::paths::Via;
use delivery::{Delivery, Inbound};
use stanza::Activity;
use streams::Conn;

pub type ConnId = u64;

/// What the driver must do with streams and the courier channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Connect {
        conn: ConnId,
        addr: SocketAddr,
    },
    Send {
        conn: ConnId,
        bytes: Vec<u8>,
    },
    Close {
        conn: ConnId,
    },
    /// Send a frame on the neighborhood multicast channel.
    Courier {
        bytes: Vec<u8>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Delivered {
        id: String,
        peer: String,
        via: Via,
        latency: Duration,
        /// The peer's receipt came back. False for a legacy XEP-0174 peer, which sends none: its
        /// open stream took the stanza, and that is all anyone can know.
        receipt: bool,
    },
    Failed {
        id: String,
        peer: String,
    },
    /// A chat message, now stored (its receipt went out with this event).
    Message {
        from: String,
        id: String,
        body: String,
        via: Via,
    },
    /// An invitation, now stored.
    Invitation {
        from: String,
        id: String,
        activity: Activity,
        reason: String,
        via: Via,
        /// The peer that carried it, when it came through a relay.
        relayed_by: Option<String>,
    },
    /// A stanza, frame or stream we would not take: a bad signature, a stream error, a stanza
    /// we cannot read. Counted in [`Messages::stats`] by `reason`, so the driver can log it
    /// (rate-limited) without losing count.
    Dropped {
        from: String,
        reason: DropReason,
        detail: String,
    },
}

/// What was received and must be stored before it counts (and before its receipt goes out).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Received {
    Message {
        from: String,
        id: String,
        body: String,
        via: Via,
    },
    Invitation {
        from: String,
        id: String,
        activity: Activity,
        reason: String,
        via: Via,
        relayed_by: Option<String>,
    },
}

/// A peer as presence announced it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    pub id: String,
    pub key: [u8; 32],
    pub instance: String,
    /// Where we connect to it (its first address, its port) ...
    pub addr: SocketAddr,
    /// ... and every address it announced: a legacy peer is known by its source address, and
    /// a host with several (Wi-Fi and Ethernet, a second address) may connect from any.
    pub addrs: Vec<IpAddr>,
    /// A plain XEP-0174 client (no `nbhd=1`): no stream authentication (its source address is
    /// checked instead), no courier, no relay, and no receipts to count on.
    pub legacy: bool,
}

/// Counters for `nbhd stats`: what the engine dropped, by reason.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub dropped: BTreeMap<DropReason, u64>,
}

pub struct Messages {
    me: Identity,
    my_instance: String,
    peers: BTreeMap<String, PeerInfo>,
    conns: BTreeMap<ConnId, Conn>,
    next_conn: ConnId,
    deliveries: BTreeMap<String, Delivery>,
    /// (sender, stanza id) of everything received and stored: shown once, acknowledged always.
    seen: Seen,
    /// Received, handed to the store, not yet confirmed: by write token, and by (sender, id).
    inbound: BTreeMap<u64, Inbound>,
    inbound_keys: HashMap<(String, String), u64>,
    next_token: u64,
    writes: VecDeque<(u64, Received)>,
    actions: VecDeque<Action>,
    events: VecDeque<Event>,
    /// A CSPRNG seeded by the driver from the OS: stanza ids and the handshakes' ephemeral keys
    /// must be unpredictable to others.
    rng: StdRng,
    stats: Stats,
    /// X25519 agreements with peers, for what is sealed to them (courier, relay).
    pairs: sealed::Pairs,
}

/// Stanza ids remembered in memory, the newest; the store keeps them a week (older copies of
/// a stanza still meet its row there and are not stored twice).
pub const MAX_SEEN: usize = 65536;

/// The (sender, stanza id) received and stored lately, at most [`MAX_SEEN`].
#[derive(Default)]
struct Seen {
    set: HashSet<(String, String)>,
    order: VecDeque<(String, String)>,
}

impl Seen {
    fn insert(&mut self, key: (String, String)) {
        if self.set.insert(key.clone()) {
            self.order.push_back(key);
            while self.order.len() > MAX_SEEN {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }

    fn contains(&self, key: &(String, String)) -> bool {
        self.set.contains(key)
    }

    fn len(&self) -> usize {
        self.set.len()
    }
}

impl Messages {
    /// Accepted connections are numbered by the driver from this value up, ours below it.
    pub const ACCEPTED_BASE: ConnId = 1 << 40;

    pub fn new(me: Identity, my_instance: &str, rng: StdRng) -> Messages {
        Messages {
            me,
            my_instance: my_instance.to_string(),
            peers: BTreeMap::new(),
            conns: BTreeMap::new(),
            next_conn: 1,
            deliveries: BTreeMap::new(),
            seen: Seen::default(),
            inbound: BTreeMap::new(),
            inbound_keys: HashMap::new(),
            next_token: 1,
            writes: VecDeque::new(),
            actions: VecDeque::new(),
            events: VecDeque::new(),
            rng,
            stats: Stats::default(),
            pairs: sealed::Pairs::default(),
        }
    }

    /// Its bounded tables: (name, entries now, bound).
    pub fn tables(&self) -> Vec<(&'static str, usize, usize)> {
        vec![
            ("seen-ids", self.seen.len(), MAX_SEEN),
            ("streams", self.conns.len(), streams::MAX_STREAMS),
        ]
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Our instance name changed (a presence conflict renamed us): stream headers and stanzas
    /// carry the new one from now on.
    pub fn set_instance(&mut self, instance: &str) {
        self.my_instance = instance.to_string();
    }

    pub fn set_peer(&mut self, p: PeerInfo) {
        self.peers.insert(p.id.clone(), p);
    }

    pub fn remove_peer(&mut self, id: &str) {
        self.peers.remove(id);
    }

    /// The peer whose key this is.
    pub fn peer_by_key(&self, key: &[u8; 32]) -> Option<&PeerInfo> {
        self.peers.values().find(|p| !p.legacy && p.key == *key)
    }

    /// A (sender, stanza id) the store already holds (from before a restart): not shown again,
    /// still acknowledged.
    pub fn mark_seen(&mut self, sender: &str, id: &str) {
        self.seen.insert((sender.to_string(), id.to_string()));
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// What must be stored, with its token for [`Messages::handle_persisted`].
    pub fn poll_write(&mut self) -> Option<(u64, Received)> {
        self.writes.pop_front()
    }

    fn new_id(&mut self) -> String {
        format!("{:016x}", self.rng.gen::<u64>())
    }

    /// Counts and reports something we would not take.
    fn drop_input(&mut self, from: &str, reason: DropReason, detail: String) {
        *self.stats.dropped.entry(reason).or_default() += 1;
        self.events.push_back(Event::Dropped {
            from: from.to_string(),
            reason,
            detail,
        });
    }
}

#[cfg(test)]
mod secure_tests;
#[cfg(test)]
mod tests;
