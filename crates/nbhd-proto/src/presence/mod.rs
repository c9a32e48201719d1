//! Presence: a sans-IO mDNS/DNS-SD responder and querier for XEP-0174 `_presence._tcp` peers.
//!
//! The engine owns our own records (service PTRs, SRV, TXT, the address records of our own host
//! name), claims them with probing and announcements, answers queries for them, and keeps a cache
//! of other peers' records from which it derives the peer table. It follows RFC 6762/6763 to the
//! letter where that keeps traffic low: known-answer suppression, duplicate question and answer
//! suppression, and one shared, jittered refresh per record instead of a query per peer (which is
//! what made Avahi used by Salut grow as N²).
//!
//! It does no I/O and reads no clock: drivers feed it datagrams with [`Presence::handle_packet`]
//! and time with [`Presence::handle_timeout`], and drain [`Presence::poll_transmit`],
//! [`Presence::poll_event`] and [`Presence::poll_timeout`]. Randomness comes from the seed in
//! [`Config`], so one seed replays a run exactly.

mod cache;
mod claim;
mod peers;
mod querier;
mod rate;
mod responder;
pub mod signed;
mod split;
pub mod wire;

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use cache::{Cache, Insert};
pub use peers::legacy_id;
pub use wire::{Message, Name, Question, Record, RecordData, WireError};
use wire::{TARGET_MESSAGE, TYPE_A, TYPE_AAAA, TYPE_ANY, TYPE_PTR, TYPE_SRV, TYPE_TXT};

/// The mDNS port and IPv4 group (RFC 6762 §3).
pub const MDNS_PORT: u16 = 5353;
pub const MDNS_GROUP_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 251);
/// XEP-0174 §4: the link-local messaging service type.
pub const SERVICE_TYPE: &str = "_presence._tcp.local";
/// RFC 6763 §9: the meta-query that lists service types.
pub const SERVICES_META: &str = "_services._dns-sd._udp.local";

/// RFC 6762 §10: host-name-bearing records (SRV, A) live 120 s, the others 75 minutes.
pub const DEFAULT_HOST_TTL: u32 = 120;
pub const DEFAULT_OTHER_TTL: u32 = 4500;

const PROBE_WAIT_MAX: Duration = Duration::from_millis(250); // RFC 6762 §8.1, initial random delay
const PROBE_INTERVAL: Duration = Duration::from_millis(250); // RFC 6762 §8.1
const PROBE_COUNT: u8 = 3; // RFC 6762 §8.1
const PROBE_DEFER: Duration = Duration::from_secs(1); // RFC 6762 §8.2, the loser of a tie-break
const CONFLICT_BURST: usize = 15; // RFC 6762 §8.1: fifteen conflicts in ten seconds ...
const CONFLICT_WINDOW: Duration = Duration::from_secs(10);
const CONFLICT_BACKOFF: Duration = Duration::from_secs(5); // ... and we wait five seconds.
const ANNOUNCE_COUNT: u8 = 2; // RFC 6762 §8.3: at least two
const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(1); // RFC 6762 §8.3
const SHARED_DELAY_MS: (u64, u64) = (20, 120); // RFC 6762 §6
const TC_WAIT_MS: (u64, u64) = (400, 500); // RFC 6762 §7.2
/// Truncated queries waiting for their known answers on one link, the known answers one of
/// them may gather (bytes on the wire), and how long one may keep waiting however many
/// continuations come: past the first bound a truncated query is answered at once (RFC 6762
/// §7.2's wait is a SHOULD; without the rest of its known answers it costs a packet more, not
/// memory); the others bound what a querier that keeps sending continuations can make us hold.
const MAX_TC_WAITS: usize = 64;
const MAX_KNOWN_ANSWER_BYTES: usize = 64 * 1024;
const MAX_TC_WAIT: Duration = Duration::from_secs(2);
const RATE_LIMIT: Duration = Duration::from_secs(1); // RFC 6762 §6: once a second per record
const PROBE_DEFENSE_RATE_LIMIT: Duration = Duration::from_millis(250); // RFC 6762 §6
const LEGACY_UNICAST_TTL: u32 = 10; // RFC 6762 §6.7
const BROWSE_FIRST_MS: (u64, u64) = (20, 120); // RFC 6762 §5.2
const BROWSE_MAX_INTERVAL: Duration = Duration::from_secs(3600); // RFC 6762 §5.2
const RESOLVE_ATTEMPTS: u8 = 3;
/// The owner says its records again at this share of their TTL, before observers' refresh
/// queries (80 % and later, RFC 6762 §5.2) would have to ask for them.
const REANNOUNCE_PERCENT: u32 = 75;
/// Records due within this many percent more of their TTL join the same re-announcement.
const REANNOUNCE_BATCH_PERCENT: u32 = 5;
/// A record whose refresh falls within this share of its TTL is refreshed with its peer's other
/// records that are due now.
const REFRESH_COALESCE_PERCENT: u32 = 5;
const RECONFIRM_QUERIES: u8 = 2; // RFC 6762 §10.4: "two or more queries"
const RECONFIRM_SPACING: Duration = Duration::from_secs(2);
/// How long a packet we sent is remembered, to recognise it when multicast loopback returns it.
const OWN_ECHO_WINDOW: Duration = Duration::from_secs(5);

/// A network interface, as the driver numbers it (the OS interface index).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IfaceId(pub u32);

/// What we announce. TXT keys are given in order, as `key=value` (XEP-0174 §4).
#[derive(Clone, Debug)]
pub struct Config {
    /// XEP-0174 instance name, `nick@host`.
    pub instance: String,
    /// Our own host name label (without `.local`), `nbhd-<8 hex of key>` (DESIGN §4.1).
    pub hostname: String,
    /// The port of our XEP-0174 stream listener (`port.p2pj`, SRV port).
    pub port: u16,
    pub txt: Vec<(String, String)>,
    pub host_ttl: u32,
    pub other_ttl: u32,
    pub seed: u64,
    /// Say our records again before observers would refresh them (one packet instead of a
    /// query and its answer per record lifetime). Off: plain RFC 6762, observers ask.
    pub reannounce: bool,
    /// The identity our TXT `key=` names: it signs our records ([`signed`]). None: unsigned
    /// (a legacy-shaped responder, in tests).
    pub signer: Option<crate::identity::Identity>,
}

/// Where a datagram goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// The mDNS group on the transmit's interface.
    Multicast,
    /// A legacy unicast querier (RFC 6762 §6.7).
    Unicast(SocketAddr),
}

#[derive(Clone, Debug)]
pub struct Transmit {
    pub iface: IfaceId,
    pub destination: Destination,
    pub payload: Vec<u8>,
}

/// A peer as presence knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// The peer id: the base64url public key for nbhd peers, `legacy:` and the instance name
    /// for legacy ones.
    pub id: String,
    pub instance: String,
    pub nick: String,
    /// SRV target host name.
    pub host: String,
    pub addrs: Vec<IpAddr>,
    pub port: u16,
    pub status: String,
    pub msg: String,
    /// No `nbhd=1` in TXT: a plain XEP-0174 client (Pidgin, Salut, ...).
    pub legacy: bool,
    pub key: Option<String>,
    /// Its key signed its records (TXT `sig=`, see [`signed`]): the key is its holder's.
    pub signed: bool,
    pub txt: Vec<(String, String)>,
    /// When we last heard any of its records.
    pub last_seen: Instant,
}

impl Peer {
    fn same_content(&self, other: &Peer) -> bool {
        Peer {
            last_seen: other.last_seen,
            ..self.clone()
        } == *other
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    PeerUp(Peer),
    PeerChanged(Peer),
    PeerDown(Peer),
    /// Our names were taken by someone else; we now probe for these (RFC 6762 §9).
    Renamed {
        instance: String,
        hostname: String,
    },
    /// Probing and announcing finished on an interface: our names are ours there.
    Announced {
        iface: IfaceId,
        instance: String,
    },
}

/// Counters a driver can show; dropped input is counted by reason.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    pub own_echoes: u64,
    pub queries_in: u64,
    pub responses_in: u64,
    pub conflicts: u64,
    pub dropped: BTreeMap<&'static str, u64>,
}

impl Stats {
    pub fn dropped_total(&self) -> u64 {
        self.dropped.values().sum()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LinkState {
    Probing { sent: u8, at: Instant },
    Announcing { sent: u8, at: Instant },
    Ready,
}

#[derive(Debug)]
struct PendingResponse {
    at: Instant,
    answers: Vec<Record>,
    additional: Vec<Record>,
    probe_defense: bool,
}

#[derive(Debug)]
struct TcWait {
    src: SocketAddr,
    /// When its query came, and when it is answered.
    started: Instant,
    until: Instant,
    query: Message,
    /// The known answers' size on the wire.
    bytes: usize,
}

#[derive(Debug)]
struct Link {
    addrs: Vec<Ipv4Addr>,
    /// The subnets those addresses are on: responses from anywhere else are not from this link.
    subnets: Vec<IfaceAddr>,
    state: LinkState,
    last_multicast: HashMap<(Name, RecordData), Instant>,
    pending: Option<PendingResponse>,
    tc_waits: Vec<TcWait>,
    browse_interval: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum QueryKind {
    Browse,
    Resolve { attempt: u8 },
    Refresh,
    Reconfirm { sent: u8 },
}

#[derive(Clone, Debug)]
struct PlannedQuery {
    iface: IfaceId,
    name: Name,
    qtype: u16,
    at: Instant,
    kind: QueryKind,
}

/// The presence engine. See the module documentation.
pub struct Presence {
    config: Config,
    rng: SmallRng,
    service: Name,
    services_meta: Name,
    instance_label: String,
    hostname_label: String,
    instance_renames: u32,
    hostname_renames: u32,
    links: BTreeMap<IfaceId, Link>,
    cache: Cache,
    queries: Vec<PlannedQuery>,
    peers: BTreeMap<Name, Peer>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    sent_recently: VecDeque<(u64, IfaceId, Instant)>,
    conflict_times: VecDeque<Instant>,
    stats: Stats,
    closed: bool,
    /// Instances whose own records arrived since [`Presence::take_heard`] last asked: their
    /// multicast reaches us (path evidence the Node attributes by content, not by address).
    heard: Vec<String>,
    /// The latest time any input carried; stamps what we send.
    now: Instant,
    rates: rate::SourceRates,
    /// When the peer table was last derived, and whether the cache changed since (see
    /// `peers_changed`).
    peers_built: Option<Instant>,
    peers_dirty: bool,
    /// Instances whose records their key signed: the signature and the bytes it covered (a
    /// repeat of them is not checked again), at most [`MAX_PROVEN`].
    proven: HashMap<Name, (String, Vec<u8>)>,
    verify_budget: signed::VerifyBudget,
    /// Our signature, and the bytes it covers (made again when they change).
    own_sig: std::cell::RefCell<Option<(Vec<u8>, String)>>,
}

/// The peer table is derived from the cache at most this often while it keeps changing (the
/// first change after a quiet spell is seen at once).
pub const PEERS_EVERY: Duration = Duration::from_millis(50);

/// Instances remembered as proven (the reserved share of the cache holds about 250).
pub const MAX_PROVEN: usize = 1024;

impl Presence {
    pub fn new(config: Config, now: Instant) -> Presence {
        Presence {
            now,
            rates: rate::SourceRates::default(),
            rng: SmallRng::seed_from_u64(config.seed),
            service: Name::dotted(SERVICE_TYPE),
            services_meta: Name::dotted(SERVICES_META),
            instance_label: config.instance.clone(),
            hostname_label: config.hostname.clone(),
            instance_renames: 0,
            hostname_renames: 0,
            links: BTreeMap::new(),
            cache: Cache::default(),
            queries: Vec::new(),
            peers: BTreeMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            sent_recently: VecDeque::new(),
            conflict_times: VecDeque::new(),
            stats: Stats::default(),
            closed: false,
            heard: Vec::new(),
            peers_built: None,
            peers_dirty: false,
            proven: HashMap::new(),
            verify_budget: signed::VerifyBudget::default(),
            own_sig: std::cell::RefCell::new(None),
            config,
        }
    }

    /// Our instance name now (it changes after a conflict).
    pub fn instance(&self) -> &str {
        &self.instance_label
    }

    /// Our host name label now (without `.local`).
    pub fn hostname(&self) -> &str {
        &self.hostname_label
    }

    pub fn instance_name(&self) -> Name {
        Name::child(&self.instance_label, &self.service)
    }

    pub fn host_name(&self) -> Name {
        Name::from_labels([self.hostname_label.clone(), "local".to_string()])
    }

    pub fn peers(&self) -> impl Iterator<Item = &Peer> {
        self.peers.values()
    }

    /// (records in the cache, its bound).
    pub fn cache_size(&self) -> (usize, usize) {
        (self.cache.entries().len(), cache::MAX_ENTRIES)
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// True once every interface has finished announcing.
    pub fn is_announced(&self) -> bool {
        !self.links.is_empty() && self.links.values().all(|l| l.state == LinkState::Ready)
    }

    /// Adds an interface, or updates its addresses; (re)claims our names there (RFC 6762 §8).
    pub fn set_interface(&mut self, now: Instant, iface: IfaceId, subnets: Vec<IfaceAddr>) {
        let addrs: Vec<Ipv4Addr> = subnets.iter().map(|s| s.addr).collect();
        self.now = self.now.max(now);
        if self.closed {
            return;
        }
        let probe_at = now + self.random_ms(0, PROBE_WAIT_MAX.as_millis() as u64);
        let browse_at = now + self.random_ms(BROWSE_FIRST_MS.0, BROWSE_FIRST_MS.1);
        match self.links.get_mut(&iface) {
            Some(link) if link.subnets == subnets => {}
            Some(link) if link.addrs == addrs => link.subnets = subnets,
            Some(link) => {
                link.addrs = addrs;
                link.subnets = subnets;
                link.state = LinkState::Probing {
                    sent: 0,
                    at: probe_at,
                };
            }
            None => {
                self.links.insert(
                    iface,
                    Link {
                        addrs,
                        subnets,
                        state: LinkState::Probing {
                            sent: 0,
                            at: probe_at,
                        },
                        last_multicast: HashMap::new(),
                        pending: None,
                        tc_waits: Vec::new(),
                        browse_interval: Duration::from_secs(1),
                    },
                );
                let service = self.service.clone();
                self.plan_query(iface, service, TYPE_PTR, browse_at, QueryKind::Browse);
            }
        }
    }

    /// Our TXT record changed (XEP-0174 §4: status, message, what we advertise): the new one is
    /// announced on every interface where our names are ours (RFC 6762 §8.4), with the
    /// cache-flush bit, so observers replace the old one.
    pub fn set_txt(&mut self, now: Instant, txt: Vec<(String, String)>) {
        self.now = self.now.max(now);
        if self.closed || txt == self.config.txt {
            return;
        }
        self.config.txt = txt;
        for link in self.links.values_mut() {
            if link.state == LinkState::Ready {
                link.state = LinkState::Announcing { sent: 0, at: now };
            }
        }
    }

    /// Forgets an interface and everything heard on it.
    pub fn remove_interface(&mut self, iface: IfaceId) {
        self.links.remove(&iface);
        self.cache.remove_iface(iface);
        self.queries.retain(|q| q.iface != iface);
        self.update_peers();
    }

    /// RFC 6762 §10.4: asks again for a peer's records because a path to it failed; if its owner
    /// does not answer within ten seconds, the peer goes down.
    pub fn reconfirm(&mut self, now: Instant, instance: &str) {
        self.now = self.now.max(now);
        let inst = Name::child(instance, &self.service);
        let mut targets: Vec<(IfaceId, Name, u16)> = Vec::new();
        for e in self.cache.entries_mut() {
            if e.record.name == inst && e.record.rtype() == TYPE_SRV {
                e.reconfirm = Some(now);
                targets.push((e.iface, e.record.name.clone(), TYPE_SRV));
                if let RecordData::Srv { target, .. } = &e.record.data {
                    targets.push((e.iface, target.clone(), TYPE_A));
                }
            }
        }
        for e in self.cache.entries_mut() {
            if targets
                .iter()
                .any(|(i, n, t)| *t == TYPE_A && *i == e.iface && *n == e.record.name)
                && e.record.rtype() == TYPE_A
            {
                e.reconfirm = Some(now);
            }
        }
        for (iface, name, qtype) in targets {
            self.plan_query(iface, name, qtype, now, QueryKind::Reconfirm { sent: 0 });
        }
    }

    /// Sends goodbyes (TTL 0) for all our records on every interface (RFC 6762 §10.1). Goodbyes
    /// are never held back by the rate limit. The engine stays silent afterwards.
    pub fn close(&mut self, now: Instant) {
        self.now = self.now.max(now);
        if self.closed {
            return;
        }
        let ifaces: Vec<IfaceId> = self.links.keys().copied().collect();
        for iface in ifaces {
            let state = self.links[&iface].state;
            if matches!(state, LinkState::Probing { .. }) {
                continue; // nothing was claimed here, so nothing to withdraw
            }
            let mut msg = Message::response();
            msg.answers = self.own_records(iface);
            for r in &mut msg.answers {
                r.ttl = 0;
            }
            self.send_split(iface, Destination::Multicast, msg);
        }
        self.closed = true;
        self.queries.clear();
        for link in self.links.values_mut() {
            link.pending = None;
            link.tc_waits.clear();
            link.state = LinkState::Ready;
        }
    }

    /// Instances heard from since the last call (see the field's comment), each once.
    pub fn take_heard(&mut self) -> Vec<String> {
        let mut h = std::mem::take(&mut self.heard);
        h.sort();
        h.dedup();
        h
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// True while something waits to be polled out (a transmit or an event).
    pub fn has_output(&self) -> bool {
        !self.transmits.is_empty() || !self.events.is_empty()
    }

    /// The peer announced under `instance`, if we list one.
    pub fn peer_by_instance(&self, instance: &str) -> Option<&Peer> {
        self.peers.get(&Name::child(instance, &self.service))
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next moment [`Presence::handle_timeout`] has work to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed {
            return None;
        }
        let mut t: Option<Instant> = None;
        let mut take = |x: Instant| t = Some(t.map_or(x, |t: Instant| t.min(x)));
        for link in self.links.values() {
            match link.state {
                LinkState::Probing { at, .. } | LinkState::Announcing { at, .. } => take(at),
                LinkState::Ready => {}
            }
            if let Some(at) = self.reannounce_at(link) {
                take(at);
            }
            if let Some(p) = &link.pending {
                take(p.at);
            }
            for w in &link.tc_waits {
                take(w.until);
            }
        }
        for q in &self.queries {
            take(q.at);
        }
        if let Some(c) = self.cache.next_deadline() {
            take(c);
        }
        if let (true, Some(at)) = (self.peers_dirty, self.peers_built) {
            take(at + PEERS_EVERY);
        }
        t
    }

    /// Feeds one datagram received on `iface` from `src`. Errors are returned (and counted) so the
    /// driver can log them; the engine is unaffected by any input.
    pub fn handle_packet(
        &mut self,
        now: Instant,
        iface: IfaceId,
        src: SocketAddr,
        bytes: &[u8],
    ) -> Result<(), WireError> {
        self.now = self.now.max(now);
        self.stats.packets_in += 1;
        self.stats.bytes_in += bytes.len() as u64;
        if self.closed || !self.links.contains_key(&iface) {
            return Ok(());
        }
        if self.is_own_echo(now, iface, src, bytes) {
            self.stats.own_echoes += 1;
            return Ok(());
        }
        if !self.rates.admit(now, src.ip()) {
            let e = WireError::Refused {
                kind: "source-rate",
                why: "over its source's packet rate",
            };
            *self.stats.dropped.entry(e.kind()).or_default() += 1;
            return Err(e);
        }
        // The QR bit (RFC 1035 §4.1.1), read before parsing: a response from off the link
        // costs no parse.
        let response = bytes.get(2).is_some_and(|b| b & 0x80 != 0);
        if response && !self.on_link(iface, src.ip()) {
            // RFC 6762 §11: a response from an address on none of the interface's subnets
            // did not come from this link (a forged source, or a router leaking it).
            let e = WireError::Refused {
                kind: "off-link",
                why: "a response from an address on none of the interface's subnets",
            };
            *self.stats.dropped.entry(e.kind()).or_default() += 1;
            return Err(e);
        }
        let msg = match Message::parse(bytes) {
            Ok(m) => m,
            Err(e) => {
                *self.stats.dropped.entry(e.kind()).or_default() += 1;
                return Err(e);
            }
        };
        if msg.response {
            // RFC 6762 §11: responses from a port other than 5353 are not mDNS responses.
            if src.port() != MDNS_PORT {
                let e = WireError::Refused {
                    kind: "bad-source-port",
                    why: "a response from a port other than 5353",
                };
                *self.stats.dropped.entry(e.kind()).or_default() += 1;
                return Err(e);
            }
            self.stats.responses_in += 1;
            self.handle_response(now, iface, src.ip(), msg);
        } else {
            self.stats.queries_in += 1;
            self.handle_query(now, iface, src, msg);
        }
        Ok(())
    }

    /// Our own multicast, back through loopback. Recognised by content (DESIGN §4.1: several
    /// responders may share one address), but only from one of our addresses and only once per
    /// packet sent: another host's byte-identical query (every browser sends the same one) must
    /// still be answered.
    fn is_own_echo(&mut self, now: Instant, iface: IfaceId, src: SocketAddr, bytes: &[u8]) -> bool {
        self.sent_recently
            .retain(|(_, _, at)| *at + OWN_ECHO_WINDOW > now);
        let from_us = match (src.ip(), self.links.get(&iface)) {
            (IpAddr::V4(ip), Some(link)) => link.addrs.contains(&ip),
            _ => false,
        };
        if !from_us {
            return false;
        }
        let d = digest(bytes);
        match self
            .sent_recently
            .iter()
            .position(|(dd, i, _)| *dd == d && *i == iface)
        {
            Some(pos) => {
                self.sent_recently.remove(pos);
                true
            }
            None => false,
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = self.now.max(now);
        if self.closed {
            return;
        }
        let ifaces: Vec<IfaceId> = self.links.keys().copied().collect();
        for iface in ifaces {
            self.drive_claim(now, iface);
            self.drive_reannounce(now, iface);
            // Known-answer waits whose time is up (RFC 6762 §7.2).
            let due: Vec<TcWait> = {
                let link = self.links.get_mut(&iface).expect("iface listed above");
                let (due, keep) = link.tc_waits.drain(..).partition(|w| w.until <= now);
                link.tc_waits = keep;
                due
            };
            for w in due {
                // The 400-500 ms wait stands in for the shared-answer delay (RFC 6762 §7.2).
                self.answer_query(now, iface, w.src, &w.query, false);
            }
            self.flush_pending(now, iface);
        }
        if self.peers_dirty {
            self.peers_changed(now);
        }
        self.drive_cache(now);
        self.send_due_queries(now);
    }
}

fn digest(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// An address of an interface we serve, with its prefix length: the subnet it is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IfaceAddr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl IfaceAddr {
    pub fn new(addr: Ipv4Addr, prefix: u8) -> IfaceAddr {
        IfaceAddr {
            addr,
            prefix: prefix.min(32),
        }
    }

    /// True if `ip` is on this subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0);
        u32::from(ip) & mask == u32::from(self.addr) & mask
    }
}

impl Presence {
    /// RFC 6762 §11: is `ip` on one of `iface`'s subnets? An interface whose addresses are
    /// all /31 or /32 (point-to-point, some VPNs) has no subnet to check against: everything
    /// is taken. (IPv6 sources: not checked here; the IPv6 issue brings link-local scopes.)
    fn on_link(&self, iface: IfaceId, ip: IpAddr) -> bool {
        let Some(link) = self.links.get(&iface) else {
            return false;
        };
        match ip {
            IpAddr::V4(v4) => {
                link.subnets.iter().all(|s| s.prefix >= 31)
                    || link.subnets.iter().any(|s| s.contains(v4))
            }
            IpAddr::V6(_) => true,
        }
    }
}

/// XEP-0174 §4 TXT keys, plus ours (DESIGN §4.1).
pub fn xep0174_txt(
    port: u16,
    nick: &str,
    status: &str,
    msg: &str,
    key: &str,
) -> Vec<(String, String)> {
    vec![
        ("txtvers".into(), "1".into()),
        ("port.p2pj".into(), port.to_string()),
        ("nick".into(), nick.into()),
        ("1st".into(), nick.into()),
        ("last".into(), String::new()),
        ("status".into(), status.into()),
        ("msg".into(), msg.into()),
        ("nbhd".into(), "1".into()),
        ("key".into(), key.into()),
    ]
}

#[cfg(test)]
mod tests;
