//! The Node: presence, paths and messages composed once, and the only thing a driver talks to
//! (DESIGN.md §3). The daemon maps its channels to sockets and its streams to tasks; the
//! simulator (and every engine test, through [`crate::vnet`]) maps them to a modelled medium.
//! A protocol decision in a driver is a bug: if a driver needs one, it is an input or an output
//! missing here.
//!
//! Inputs: [`Node::handle_datagram`] (tagged with its [`Channel`]), [`Node::handle_stream`],
//! [`Node::handle_command`], [`Node::handle_interfaces`], [`Node::handle_send_error`],
//! [`Node::handle_timeout`], and [`Node::handle_persisted`] / [`Node::handle_persist_failed`]
//! for the store writes it asked for. Outputs: [`Node::poll_transmit`], [`Node::poll_stream`],
//! [`Node::poll_store`], [`Node::poll_event`], [`Node::poll_timeout`].
//!
//! What the Node owns beyond its engines is the glue between them: a peer presence found
//! becomes a messages peer and a paths contact (its key decoded once, its probe port read from
//! TXT `probe`); a rename reaches messages; multicast heard from a peer (its own mDNS records,
//! any valid frame it signed) is path evidence for that peer, attributed by content; a local
//! send error is evidence for the peer it was for; path states that change become events.

mod commands;
mod glue;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::activity::{self, Activities, ActivityInfo, ChannelChange, Load, MemberChange, Post};
use crate::drops::DropReason;
use crate::identity::Identity;
use crate::messages::stanza::Activity;
use crate::messages::{self, Messages};
use crate::paths::{Diagnosis, PathState, Paths, Via};
use crate::presence::{self, Presence};

pub use crate::activity::ActivityId;
pub use crate::messages::ConnId;
pub use crate::presence::{Destination, IfaceAddr, IfaceId, Peer};

/// The neighborhood channel: a group and port of our own, not mDNS's (DESIGN.md §4.3).
pub const COURIER_GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 110, 98);
pub const COURIER_PORT: u16 = 7641;

/// Which socket a datagram came in on, or goes out of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    /// mDNS/DNS-SD, 224.0.0.251:5353.
    Mdns,
    /// The neighborhood channel ([`COURIER_GROUP`]:[`COURIER_PORT`]): courier frames, their
    /// receipts, path observations.
    Courier,
    /// Unicast path probes, on the port we announce in TXT `probe`.
    Probe,
    /// An activity's own multicast group and port (see [`Node::poll_channel`]).
    Activity(ActivityId),
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Mdns => "mdns",
            Channel::Courier => "courier",
            Channel::Probe => "probe",
            Channel::Activity(_) => "activity",
        }
    }
}

/// A datagram to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub channel: Channel,
    /// The interface to send it out of; None: every interface (the courier's frames).
    pub iface: Option<IfaceId>,
    /// Multicast goes to the channel's group.
    pub destination: Destination,
    pub payload: Vec<u8>,
}

/// What happened to a stream, as the driver saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamInput {
    /// An incoming connection (ids from [`Node::ACCEPTED_BASE`] up, chosen by the driver).
    Accepted {
        conn: ConnId,
        remote: SocketAddr,
    },
    /// Our [`StreamAction::Connect`] completed.
    Connected {
        conn: ConnId,
    },
    Data {
        conn: ConnId,
        bytes: Vec<u8>,
    },
    /// The connect failed (`failed`), or the stream ended or broke.
    Closed {
        conn: ConnId,
        failed: bool,
    },
}

/// What the driver must do with streams.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamAction {
    Connect { conn: ConnId, addr: SocketAddr },
    Send { conn: ConnId, bytes: Vec<u8> },
    Close { conn: ConnId },
}

/// A local send error, as evidence (DESIGN.md §4.3: EPERM, ENETUNREACH count too).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendError {
    /// Refused here (a firewall: EPERM), or no route (ENETUNREACH, EHOSTUNREACH).
    Refused,
    Other,
}

/// What the Node is, where it listens, and its seed.
#[derive(Clone, Debug)]
pub struct Config {
    pub secret: [u8; 32],
    pub nick: String,
    /// The machine's host name: the instance is `nick@host` (XEP-0174 §4).
    pub host: String,
    /// Our mDNS host name label; None: `nbhd-<first 8 hex of the key>` (DESIGN.md §4.1).
    pub hostname: Option<String>,
    /// `avail`, `away` or `dnd`.
    pub status: String,
    pub msg: String,
    /// Our XEP-0174 stream listener (`port.p2pj`).
    pub p2pj_port: u16,
    /// Our probe socket (TXT `probe`).
    pub probe_port: u16,
    /// TTL of every record we announce; None: RFC 6762's defaults.
    pub record_ttl: Option<u32>,
    /// Seeds what only needs to look random to the protocols (jitter, frame ids).
    pub seed: u64,
    /// 32 bytes from the OS's CSPRNG: seeds what must be unpredictable to others (activity
    /// keys and ids, frame nonces, the ephemeral halves that seal keys to invitees).
    pub entropy: [u8; 32],
    /// The wall clock when the Node is made (Unix ms): activities' control frames carry
    /// counters that must keep growing across our restarts.
    pub unix_ms: u64,
}

/// A CSPRNG for one use of [`Config::entropy`], told apart by `label`.
pub fn secret_rng(entropy: &[u8; 32], label: &[u8]) -> StdRng {
    use sha2::{Digest, Sha256};
    StdRng::from_seed(
        Sha256::new()
            .chain_update(entropy)
            .chain_update(label)
            .finalize()
            .into(),
    )
}

/// What a Node restarts from: what its store holds.
#[derive(Clone, Debug, Default)]
pub struct Restored {
    /// (sender, stanza id) of everything received and stored.
    pub seen: Vec<(String, String)>,
    /// Activities created or joined, and the last post of each sender in each.
    pub activities: activity::Restored,
    /// Trust on first use: the key first seen for each nick (DESIGN.md §4.4).
    pub pins: Vec<(String, [u8; 32])>,
    /// Invitations received that carry an activity: (invitation id, the inviter's peer id, the
    /// activity as invited).
    pub invited: Vec<(String, String, Activity)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// A 1:1 chat message to the peer with this id.
    Send {
        peer: String,
        text: String,
        timeout: Duration,
    },
    /// An invitation to `activity`: one we know (its id or name), which the invitation then
    /// carries with its key sealed to the invitee, or just a name.
    Invite {
        peer: String,
        activity: String,
        timeout: Duration,
    },
    /// A new activity, with us its first member.
    Share {
        name: String,
        kind: String,
        private: bool,
    },
    /// Join an activity: its id, its name, or the id of an invitation to it.
    Join {
        activity: String,
    },
    Leave {
        activity: String,
    },
    /// A post (text, or bytes when `bytes`), stamped with the poster's wall clock.
    Post {
        activity: String,
        body: Vec<u8>,
        bytes: bool,
        at_ms: u64,
    },
}

/// What a command started or did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A delivery: its answer is the `Delivered` or `Failed` event with this id.
    Delivery(String),
    /// An activity created, joined or left.
    Activity { info: ActivityInfo, joined: bool },
    /// A post on its way to the store: its answer is `Posted` or `PostFailed` with this request.
    Posting { activity: ActivityId, request: u64 },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandError {
    /// PEER was empty or blank: a usage error.
    EmptyPeer,
    NoSuchPeer(String),
    /// Several peers match; their `instance (id prefix)`.
    Ambiguous(String, Vec<String>),
    /// The peer is known but cannot be sent this (a legacy peer cannot verify an invitation).
    Refused(String),
    /// No activity (or invitation to one) matches.
    NoSuchActivity(String),
    /// A bad argument (a post over 1 MiB, an empty name).
    Usage(String),
}

impl std::fmt::Display for CommandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CommandError::EmptyPeer => write!(
                f,
                "PEER must not be empty (a nick, an instance name or a prefix of a peer id)"
            ),
            CommandError::NoSuchPeer(q) => write!(f, "no peer matches {q:?} (see nbhd peers)"),
            CommandError::Ambiguous(q, c) => write!(f, "{q:?} is ambiguous: {}", c.join(", ")),
            CommandError::Refused(why) => write!(f, "{why}"),
            CommandError::NoSuchActivity(q) => {
                write!(f, "no activity or invitation matches {q:?} (see nbhd activities, nbhd invitations)")
            }
            CommandError::Usage(why) => write!(f, "{why}"),
        }
    }
}

impl std::error::Error for CommandError {}

/// What must be stored; confirmed with [`Node::handle_persisted`] (or
/// [`Node::handle_persist_failed`]) by its `token`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreWrite {
    pub token: u64,
    pub record: Record,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// A 1:1 message, received (`via` set) or sent by us (`via` None until delivered).
    Message {
        id: String,
        from: String,
        to: String,
        from_nick: String,
        to_nick: String,
        text: String,
        via: Option<Via>,
    },
    /// A message we sent reached its peer.
    Delivered { id: String, via: Via },
    Invitation {
        id: String,
        from: String,
        from_nick: String,
        activity: Activity,
        reason: String,
        via: Via,
        relayed_by: Option<String>,
    },
    /// An activity created or joined (or left).
    Activity { info: ActivityInfo, joined: bool },
    /// A post, ours or a member's, in per-sender order.
    Post(Post),
    /// The key first seen for a nick (trust on first use).
    Pin { nick: String, key: [u8; 32] },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    PeerUp(Peer),
    PeerDown(Peer),
    PeerChanged(Peer),
    /// Our names were taken by someone else; we now claim these (RFC 6762 §9).
    Renamed {
        instance: String,
        hostname: String,
    },
    /// Our names are ours on this interface.
    Announced {
        iface: IfaceId,
        instance: String,
    },
    /// A chat message, stored (and acknowledged).
    Message {
        from: String,
        from_nick: String,
        id: String,
        text: String,
        via: Via,
    },
    /// An invitation, stored (and acknowledged).
    Invitation {
        from: String,
        from_nick: String,
        id: String,
        activity: Activity,
        reason: String,
        via: Via,
        relayed_by: Option<String>,
    },
    Delivered {
        id: String,
        peer: String,
        via: Via,
        latency: Duration,
        receipt: bool,
    },
    Failed {
        id: String,
        peer: String,
    },
    /// A peer's path state moved.
    PathChanged {
        peer: String,
        nick: String,
        diagnosis: Diagnosis,
    },
    /// Our post is stored, numbered, and sent (the answer to [`Outcome::Posting`]).
    Posted {
        request: u64,
        post: Post,
    },
    PostFailed {
        activity: ActivityId,
        request: u64,
        why: String,
    },
    /// A member's post, stored, in per-sender order (ours are `Posted`).
    Entry(Post),
    /// A member joined, left or fell silent.
    Member {
        activity: ActivityId,
        peer: String,
        nick: String,
        change: MemberChange,
    },
    /// Something from the network we would not take; `count` of this reason so far (so a
    /// driver can log the first few and then one in many).
    Dropped {
        /// The channel it came on (`mdns`, `courier`, `probe`), or `messages` for streams and
        /// stanzas.
        source: &'static str,
        from: String,
        reason: String,
        detail: String,
        count: u64,
    },
}

/// `nbhd status`'s view of us.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub id: String,
    pub instance: String,
    /// Our mDNS host name, with `.local`.
    pub hostname: String,
    pub announced: bool,
}

/// Counters for `nbhd stats`.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub mdns: presence::Stats,
    pub messages: messages::Stats,
    /// Datagrams in, per channel.
    pub datagrams_in: BTreeMap<Channel, u64>,
    /// What the Node itself dropped, per channel and reason.
    pub dropped: BTreeMap<(Channel, DropReason), u64>,
    pub activity: activity::Stats,
}

/// Where a store write came from, to route its confirmation.
enum Owner {
    Messages(u64),
    Activities(u64),
    /// Written for the record only (what we sent): nothing waits on it.
    Node,
}

pub struct Node {
    me: Identity,
    config: Config,
    presence: Presence,
    paths: Paths,
    messages: Messages,
    ifaces: BTreeMap<IfaceId, Vec<IfaceAddr>>,
    /// The last path state published per peer, for `PathChanged`.
    path_states: HashMap<String, PathState>,
    next_token: u64,
    owners: HashMap<u64, Owner>,
    transmits: VecDeque<Transmit>,
    streams: VecDeque<StreamAction>,
    writes: VecDeque<StoreWrite>,
    events: VecDeque<Event>,
    stats: Stats,
    /// Messages we sent that wait for delivery (whose path is stored when it comes).
    sent: HashSet<String>,
    activities: Activities,
    /// Our TXT without what we advertise of activities.
    base_txt: Vec<(String, String)>,
    /// What each peer advertises (public activities, from its TXT `act*`).
    advertised_by: BTreeMap<String, Vec<ActivityInfo>>,
    /// Activities invited to, by invitation id, their keys unsealed.
    invited: BTreeMap<String, ActivityInfo>,
    /// Trust on first use: nick → the key first seen with it.
    pins: HashMap<String, [u8; 32]>,
    /// ... and a legacy peer's nick → its instance's pin (not stored), oldest first.
    legacy_pins: HashMap<String, [u8; 32]>,
    legacy_pin_order: VecDeque<String>,
    /// Peers announcing a pinned nick with another key (by peer id).
    impostors: HashSet<String>,
    /// Each instance's peer id now: a new id for an instance replaces the old one.
    ids_by_instance: HashMap<String, String>,
    /// The instance whose address carries each nbhd key's route (the first to announce it).
    routes: HashMap<String, String>,
    /// Instances announcing a key another instance holds: flagged, routed nowhere.
    key_conflicts: HashSet<String>,
    /// Store reads in flight for the activities engine.
    loads: HashMap<u64, Load>,
    load_queue: VecDeque<(u64, Load)>,
    /// For what must be unpredictable to others (a sealing key's ephemeral half).
    /// A CSPRNG: what it draws must be unpredictable (a sealing key's ephemeral half).
    rng: StdRng,
}

impl Node {
    /// Accepted connections are numbered by the driver from this value up.
    pub const ACCEPTED_BASE: ConnId = Messages::ACCEPTED_BASE;

    pub fn new(config: Config, restored: Restored, now: Instant) -> Node {
        let me = Identity::from_secret(config.secret);
        let nick: String = config.nick.chars().take(40).collect();
        let instance: String = format!("{nick}@{}", config.host).chars().take(63).collect();
        let hostname = config
            .hostname
            .clone()
            .unwrap_or_else(|| me.hostname_label());
        let hostname = hostname.trim_end_matches(".local").to_string();
        let mut txt = presence::xep0174_txt(
            config.p2pj_port,
            &nick,
            &config.status,
            &config.msg,
            &me.peer_id(),
        );
        txt.push(("probe".into(), config.probe_port.to_string()));
        let base_txt = txt.clone();
        let presence = Presence::new(
            presence::Config {
                instance,
                hostname,
                port: config.p2pj_port,
                txt,
                host_ttl: config.record_ttl.unwrap_or(presence::DEFAULT_HOST_TTL),
                other_ttl: config.record_ttl.unwrap_or(presence::DEFAULT_OTHER_TTL),
                reannounce: true,
                seed: config.seed,
                signer: Some(me.clone()),
            },
            now,
        );
        let mut messages = Messages::new(
            me.clone(),
            presence.instance(),
            secret_rng(&config.entropy, b"messages"),
        );
        for (sender, id) in &restored.seen {
            messages.mark_seen(sender, id);
        }
        let activities = Activities::new(
            me.clone(),
            &nick,
            secret_rng(&config.entropy, b"activities"),
            restored.activities,
            now,
            config.unix_ms,
        );
        let invited = restored
            .invited
            .iter()
            .filter_map(|(inv, from, a)| glue::unseal(&me, from, a).map(|info| (inv.clone(), info)))
            .collect();
        let rng = secret_rng(&config.entropy, b"node");
        let mut node = Node {
            paths: Paths::new(me.clone(), config.seed ^ 0x7061),
            me,
            config,
            presence,
            messages,
            ifaces: BTreeMap::new(),
            path_states: HashMap::new(),
            next_token: 1,
            owners: HashMap::new(),
            transmits: VecDeque::new(),
            streams: VecDeque::new(),
            writes: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
            sent: HashSet::new(),
            activities,
            base_txt,
            advertised_by: BTreeMap::new(),
            invited,
            // Pins stored before skeletons are read under their skeleton; the first wins.
            pins: {
                let mut pins = HashMap::new();
                for (nick, key) in restored.pins.into_iter().take(glue::MAX_PINS) {
                    pins.entry(glue::pin_name(&nick)).or_insert(key);
                }
                pins
            },
            legacy_pins: HashMap::new(),
            legacy_pin_order: VecDeque::new(),
            impostors: HashSet::new(),
            ids_by_instance: HashMap::new(),
            routes: HashMap::new(),
            key_conflicts: HashSet::new(),
            loads: HashMap::new(),
            load_queue: VecDeque::new(),
            rng,
        };
        node.advertise(now);
        node.after(now);
        node
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_stream(&mut self) -> Option<StreamAction> {
        self.streams.pop_front()
    }

    pub fn poll_store(&mut self) -> Option<StoreWrite> {
        self.writes.pop_front()
    }

    /// An activity's channel to open (join its group) or close.
    pub fn poll_channel(&mut self) -> Option<ChannelChange> {
        self.activities.poll_channel()
    }

    /// Posts to read back from the store (to repair them for a member), answered with
    /// [`Node::handle_loaded`].
    pub fn poll_load(&mut self) -> Option<(u64, Load)> {
        self.load_queue.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.presence.poll_timeout(),
            self.paths.poll_timeout(),
            self.messages.poll_timeout(),
            self.activities.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    pub fn id(&self) -> String {
        self.me.peer_id()
    }

    pub fn nick(&self) -> &str {
        &self.config.nick
    }

    pub fn status(&self) -> Status {
        Status {
            id: self.me.peer_id(),
            instance: self.presence.instance().to_string(),
            hostname: format!("{}.local", self.presence.hostname()),
            announced: self.presence.is_announced(),
        }
    }

    /// The peers seen now, never ourselves.
    pub fn peers(&self) -> impl Iterator<Item = &Peer> {
        self.presence.peers()
    }

    /// `nbhd doctor`: one row per peer (legacy peers too).
    pub fn doctor(&self, now: Instant) -> Vec<(Peer, Diagnosis)> {
        self.presence
            .peers()
            .map(|p| (p.clone(), self.diagnose(now, p)))
            .collect()
    }

    pub fn stats(&self) -> Stats {
        Stats {
            mdns: self.presence.stats().clone(),
            messages: self.messages.stats().clone(),
            activity: self.activities.stats().clone(),
            ..self.stats.clone()
        }
    }

    /// Every bounded table of every engine: (name, entries now, bound). What happens past a
    /// bound is counted in the engine's drops.
    pub fn tables(&self) -> Vec<(&'static str, usize, usize)> {
        let (cache, cache_max) = self.presence.cache_size();
        let mut t = vec![
            ("mdns-cache", cache, cache_max),
            ("pins", self.pins.len(), glue::MAX_PINS),
            ("legacy-pins", self.legacy_pins.len(), glue::MAX_LEGACY_PINS),
        ];
        t.extend(self.messages.tables());
        t.extend(self.activities.tables());
        t
    }

    /// Every activity we know: created, joined, advertised by a peer, or invited to.
    pub fn activities(&self, now: Instant) -> Vec<activity::Summary> {
        let mut all = self.activities.summaries(now);
        for info in self.invited.values() {
            if !all.iter().any(|s| s.info.id == info.id) {
                all.push(activity::Summary {
                    info: info.clone(),
                    joined: false,
                    members: 0,
                });
            }
        }
        all
    }

    /// An activity from what a person typed: its id, else its name, else the id of an
    /// invitation to it.
    pub fn resolve_activity(&self, q: &str) -> Result<ActivityInfo, CommandError> {
        let q = q.trim();
        if q.is_empty() {
            return Err(CommandError::Usage("ACTIVITY must not be empty".into()));
        }
        let mut all: Vec<&ActivityInfo> = self.activities.infos();
        for info in self.invited.values() {
            if !all.iter().any(|a| a.id == info.id) {
                all.push(info);
            }
        }
        let lower = q.to_ascii_lowercase();
        let by_id: Vec<&&ActivityInfo> = all.iter().filter(|a| a.id.to_hex() == lower).collect();
        let pick: Vec<&&ActivityInfo> = if by_id.is_empty() {
            all.iter().filter(|a| a.name == q).collect()
        } else {
            by_id
        };
        match pick.as_slice() {
            [one] => Ok((**one).clone()),
            // An invitation's id last: the inviter chose it, and must not be able to shadow an
            // activity's id or name with it.
            [] => match self.invited.get(q) {
                Some(info) => Ok(info.clone()),
                None => Err(CommandError::NoSuchActivity(q.to_string())),
            },
            many => Err(CommandError::Ambiguous(
                q.to_string(),
                many.iter()
                    .map(|a| format!("{} ({})", a.name, a.id))
                    .collect(),
            )),
        }
    }

    /// A peer announcing a nick first seen with another key (trust on first use), or a key
    /// another instance announced first.
    pub fn is_impostor(&self, p: &Peer) -> bool {
        self.impostors.contains(&p.id) || self.key_conflicts.contains(&p.instance)
    }

    /// True while a stream is open or ending (the driver waits for them at shutdown).
    pub fn has_streams(&self) -> bool {
        self.messages.has_streams()
    }

    /// PEER as DESIGN.md §6 has it: a nick, an instance name or a prefix of a peer id (for a
    /// legacy peer, whose id is `legacy:` and its instance, a prefix of its instance too).
    pub fn resolve_peer(&self, q: &str) -> Result<String, CommandError> {
        let q = q.trim();
        if q.is_empty() {
            return Err(CommandError::EmptyPeer);
        }
        let peers: Vec<&Peer> = self.presence.peers().collect();
        let exact: Vec<&&Peer> = peers
            .iter()
            .filter(|p| p.id == q || p.instance == q || p.nick == q)
            .collect();
        let pick = if exact.is_empty() {
            peers
                .iter()
                .filter(|p| p.id.starts_with(q) || (p.legacy && p.instance.starts_with(q)))
                .collect()
        } else {
            exact
        };
        match pick.as_slice() {
            [one] => Ok(one.id.clone()),
            [] => Err(CommandError::NoSuchPeer(q.to_string())),
            many => Err(CommandError::Ambiguous(
                q.to_string(),
                many.iter()
                    .map(|p| {
                        // A legacy peer's id holds its instance name: cut at a character.
                        let short: String = p.id.chars().take(12).collect();
                        format!("{} ({short})", p.instance)
                    })
                    .collect(),
            )),
        }
    }

    /// The interfaces we serve now and their IPv4 addresses, each with its prefix length (the
    /// on-link check of RFC 6762 §11). A change after the first set is a network change: what
    /// we knew of paths is forgotten (DESIGN.md §4.3).
    pub fn handle_interfaces(&mut self, now: Instant, ifaces: Vec<(IfaceId, Vec<IfaceAddr>)>) {
        let had = !self.ifaces.is_empty();
        let new: BTreeMap<IfaceId, Vec<IfaceAddr>> =
            ifaces.into_iter().filter(|(_, a)| !a.is_empty()).collect();
        if new == self.ifaces {
            return;
        }
        for iface in self.ifaces.keys() {
            if !new.contains_key(iface) {
                self.presence.remove_interface(*iface);
            }
        }
        for (iface, addrs) in &new {
            if self.ifaces.get(iface) != Some(addrs) {
                self.presence.set_interface(now, *iface, addrs.clone());
            }
        }
        self.ifaces = new;
        if had {
            self.paths.network_changed();
        }
        self.after(now);
    }

    /// The interfaces we serve.
    pub fn interfaces(&self) -> &BTreeMap<IfaceId, Vec<IfaceAddr>> {
        &self.ifaces
    }

    pub fn handle_datagram(
        &mut self,
        now: Instant,
        channel: Channel,
        iface: IfaceId,
        src: SocketAddr,
        bytes: &[u8],
    ) {
        *self.stats.datagrams_in.entry(channel).or_default() += 1;
        if !self.ifaces.contains_key(&iface) {
            self.drop(
                channel,
                &src.to_string(),
                DropReason::ForeignInterface,
                String::new(),
            );
            return;
        }
        match channel {
            Channel::Mdns => {
                if !self.on_mdns(now, iface, src, bytes) {
                    return; // dropped: nothing changed, nothing to carry out
                }
            }
            Channel::Courier => self.on_courier(now, src, bytes),
            Channel::Probe => self.on_probe(now, src, bytes),
            Channel::Activity(_) => self.activities.handle_datagram(now, bytes),
        }
        self.after(now);
    }

    pub fn handle_stream(&mut self, now: Instant, input: StreamInput) {
        let paths = &mut self.paths;
        match input {
            StreamInput::Accepted { conn, remote } => {
                self.messages.handle_accepted(now, conn, remote)
            }
            StreamInput::Connected { conn } => self.messages.handle_connected(now, conn),
            StreamInput::Data { conn, bytes } => {
                self.messages.handle_data(now, conn, &bytes, paths)
            }
            StreamInput::Closed { conn, failed } => {
                self.messages.handle_closed(now, conn, failed, paths)
            }
        }
        self.after(now);
    }

    /// Carries out a command: a delivery started, an activity shared, joined or left, a post on
    /// its way to the store ([`Outcome`] says which, and what answer to wait for).
    pub fn handle_command(&mut self, now: Instant, cmd: Command) -> Result<Outcome, CommandError> {
        let r = self.command(now, cmd);
        self.after(now);
        r
    }

    /// Posts the store gave back for the [`Load`] `token` asked for.
    pub fn handle_loaded(&mut self, now: Instant, token: u64, posts: Vec<Post>) {
        if let Some(load) = self.loads.remove(&token) {
            self.activities.handle_loaded(now, &load, posts);
        }
        self.after(now);
    }

    /// A datagram we tried to send to `dst` on `channel` failed locally.
    pub fn handle_send_error(
        &mut self,
        now: Instant,
        channel: Channel,
        dst: SocketAddr,
        e: SendError,
    ) {
        if e != SendError::Refused || channel != Channel::Probe {
            return;
        }
        if let Some(peer) = self.paths.peer_at_probe_addr(dst).map(str::to_string) {
            self.paths.on_local_send_error(now, &peer);
        }
        self.after(now);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.presence.handle_timeout(now);
        self.paths.handle_timeout(now);
        self.messages.handle_timeout(now, &mut self.paths);
        self.activities.handle_timeout(now);
        self.after(now);
    }

    pub fn handle_persisted(&mut self, now: Instant, token: u64) {
        match self.owners.remove(&token) {
            Some(Owner::Messages(local)) => self.messages.handle_persisted(now, local),
            Some(Owner::Activities(local)) => self.activities.handle_persisted(now, local),
            Some(Owner::Node) | None => {}
        }
        self.after(now);
    }

    pub fn handle_persist_failed(&mut self, now: Instant, token: u64, why: &str) {
        match self.owners.remove(&token) {
            Some(Owner::Messages(local)) => self.messages.handle_persist_failed(now, local, why),
            Some(Owner::Activities(local)) => {
                self.activities.handle_persist_failed(now, local, why)
            }
            Some(Owner::Node) | None => {}
        }
        self.after(now);
    }

    /// Shutting down: goodbyes for our records, `</stream:stream>` on every stream.
    pub fn close(&mut self, now: Instant) {
        self.presence.close(now);
        self.messages.close(now);
        self.after(now);
    }
}
