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
pub mod wire;

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use cache::{Cache, Insert};
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
    /// The peer id: the base64url public key for nbhd peers, the instance name for legacy ones.
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
    until: Instant,
    query: Message,
}

#[derive(Debug)]
struct Link {
    addrs: Vec<Ipv4Addr>,
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
    /// The latest time any input carried; stamps what we send.
    now: Instant,
}

impl Presence {
    pub fn new(config: Config, now: Instant) -> Presence {
        Presence {
            now,
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

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// True once every interface has finished announcing.
    pub fn is_announced(&self) -> bool {
        !self.links.is_empty() && self.links.values().all(|l| l.state == LinkState::Ready)
    }

    /// Adds an interface, or updates its addresses; (re)claims our names there (RFC 6762 §8).
    pub fn set_interface(&mut self, now: Instant, iface: IfaceId, addrs: Vec<Ipv4Addr>) {
        self.now = self.now.max(now);
        if self.closed {
            return;
        }
        let probe_at = now + self.random_ms(0, PROBE_WAIT_MAX.as_millis() as u64);
        let browse_at = now + self.random_ms(BROWSE_FIRST_MS.0, BROWSE_FIRST_MS.1);
        match self.links.get_mut(&iface) {
            Some(link) if link.addrs == addrs => {}
            Some(link) => {
                link.addrs = addrs;
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

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
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
                *self.stats.dropped.entry("bad-source-port").or_default() += 1;
                return Err(WireError::Ignored("response from a port other than 5353"));
            }
            self.stats.responses_in += 1;
            self.handle_response(now, iface, msg);
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
        self.drive_cache(now);
        self.send_due_queries(now);
    }

    // ---- claiming our names: probing and announcing (RFC 6762 §8) ----

    fn drive_claim(&mut self, now: Instant, iface: IfaceId) {
        let Some(link) = self.links.get(&iface) else {
            return;
        };
        match link.state {
            LinkState::Probing { sent, at } if at <= now => {
                if sent < PROBE_COUNT {
                    let probe = self.probe_message(iface, sent == 0);
                    self.set_state(
                        iface,
                        LinkState::Probing {
                            sent: sent + 1,
                            at: now + PROBE_INTERVAL,
                        },
                    );
                    self.send_split(iface, Destination::Multicast, probe);
                } else {
                    self.set_state(iface, LinkState::Announcing { sent: 0, at: now });
                    self.drive_claim(now, iface);
                }
            }
            LinkState::Announcing { sent, at } if at <= now => {
                let mut msg = Message::response();
                msg.answers = self.own_records(iface);
                self.note_multicast(now, iface, &msg.answers);
                self.send_split(iface, Destination::Multicast, msg);
                if sent + 1 < ANNOUNCE_COUNT {
                    self.set_state(
                        iface,
                        LinkState::Announcing {
                            sent: sent + 1,
                            at: now + ANNOUNCE_INTERVAL,
                        },
                    );
                } else {
                    self.set_state(iface, LinkState::Ready);
                    self.events.push_back(Event::Announced {
                        iface,
                        instance: self.instance_label.clone(),
                    });
                }
            }
            _ => {}
        }
    }

    /// When our records on a link need saying again: at [`REANNOUNCE_PERCENT`] of the TTL since
    /// each was last multicast. The owner speaking once costs one packet; every observer's
    /// refresh (RFC 6762 §5.2, at 80 % and later) would cost a query and its answer. Observers
    /// still query, and still drop us, if we fall silent.
    fn reannounce_at(&self, link: &Link) -> Option<Instant> {
        if link.state != LinkState::Ready || !self.config.reannounce {
            return None;
        }
        link.last_multicast
            .iter()
            .map(|((_, data), at)| {
                let ttl = match data {
                    RecordData::Srv { .. } | RecordData::A(_) | RecordData::Aaaa(_) => {
                        self.config.host_ttl
                    }
                    _ => self.config.other_ttl,
                };
                *at + Duration::from_secs(ttl as u64) * REANNOUNCE_PERCENT / 100
            })
            .min()
    }

    fn drive_reannounce(&mut self, now: Instant, iface: IfaceId) {
        let Some(link) = self.links.get(&iface) else {
            return;
        };
        if self.reannounce_at(link).is_none_or(|t| t > now) {
            return;
        }
        // Everything due within a few percent more goes in the same packet.
        let batch = REANNOUNCE_PERCENT - REANNOUNCE_BATCH_PERCENT;
        let records: Vec<Record> = self
            .own_records(iface)
            .into_iter()
            .filter(|r| {
                let last = link.last_multicast.get(&(r.name.clone(), r.data.clone()));
                last.is_none_or(|at| *at + Duration::from_secs(r.ttl as u64) * batch / 100 <= now)
            })
            .collect();
        if records.is_empty() {
            return;
        }
        self.note_multicast(now, iface, &records);
        let msg = Message {
            answers: records,
            ..Message::response()
        };
        self.send_split(iface, Destination::Multicast, msg);
    }

    fn set_state(&mut self, iface: IfaceId, state: LinkState) {
        if let Some(l) = self.links.get_mut(&iface) {
            l.state = state;
        }
    }

    /// RFC 6762 §8.1: ANY questions for each unique name, our proposed records in Authority.
    fn probe_message(&self, iface: IfaceId, first: bool) -> Message {
        let mut msg = Message::query();
        for name in [self.instance_name(), self.host_name()] {
            msg.questions.push(Question {
                name,
                qtype: TYPE_ANY,
                unicast: first,
            });
        }
        msg.authority = self
            .own_records(iface)
            .into_iter()
            .filter(|r| self.is_unique(r))
            .collect();
        for r in &mut msg.authority {
            r.cache_flush = false;
        }
        msg
    }

    /// Another host holds one of our names: rename and claim again (RFC 6762 §9).
    fn conflict(&mut self, now: Instant, instance_taken: bool) {
        self.stats.conflicts += 1;
        if instance_taken {
            self.instance_renames += 1;
            // RFC 6763 §9-style renaming: "nick@host (2)", "(3)", ...
            self.instance_label =
                format!("{} ({})", self.config.instance, self.instance_renames + 1);
        } else {
            self.hostname_renames += 1;
            self.hostname_label = format!("{}-{}", self.config.hostname, self.hostname_renames + 1);
        }
        self.events.push_back(Event::Renamed {
            instance: self.instance_label.clone(),
            hostname: self.hostname_label.clone(),
        });
        self.conflict_times.push_back(now);
        while self
            .conflict_times
            .front()
            .is_some_and(|t| *t + CONFLICT_WINDOW < now)
        {
            self.conflict_times.pop_front();
        }
        let delay = if self.conflict_times.len() >= CONFLICT_BURST {
            CONFLICT_BACKOFF
        } else {
            self.random_ms(0, PROBE_WAIT_MAX.as_millis() as u64)
        };
        for link in self.links.values_mut() {
            link.state = LinkState::Probing {
                sent: 0,
                at: now + delay,
            };
            link.pending = None;
        }
    }

    // ---- our records ----

    /// Every record we own on `iface`: PTRs (shared), SRV, TXT and addresses (unique).
    fn own_records(&self, iface: IfaceId) -> Vec<Record> {
        let inst = self.instance_name();
        let host = self.host_name();
        let (ht, ot) = (self.config.host_ttl, self.config.other_ttl);
        let txt = self
            .config
            .txt
            .iter()
            .map(|(k, v)| format!("{k}={v}").into_bytes())
            .collect();
        let mut out = vec![
            Record::new(
                self.services_meta.clone(),
                ot,
                RecordData::Ptr(self.service.clone()),
            ),
            Record::new(self.service.clone(), ot, RecordData::Ptr(inst.clone())),
            Record::new(
                inst.clone(),
                ht,
                RecordData::Srv {
                    priority: 0,
                    weight: 0,
                    port: self.config.port,
                    target: host.clone(),
                },
            ),
            Record::new(inst, ot, RecordData::Txt(txt)),
        ];
        // RFC 6762 §15: on each interface, only that interface's addresses.
        if let Some(link) = self.links.get(&iface) {
            for a in &link.addrs {
                out.push(Record::new(host.clone(), ht, RecordData::A(*a)));
            }
        }
        for r in &mut out {
            r.cache_flush = self.is_unique(r);
        }
        out
    }

    fn is_unique(&self, r: &Record) -> bool {
        r.rtype() != TYPE_PTR
    }

    fn is_own_name(&self, name: &Name) -> bool {
        *name == self.instance_name() || *name == self.host_name()
    }

    fn all_own_addrs(&self) -> Vec<Ipv4Addr> {
        self.links
            .values()
            .flat_map(|l| l.addrs.iter().copied())
            .collect()
    }

    // ---- responding (RFC 6762 §6, §7) ----

    fn handle_query(&mut self, now: Instant, iface: IfaceId, src: SocketAddr, msg: Message) {
        self.observe_query(now, iface, &msg);
        if !msg.authority.is_empty() {
            self.tie_break(now, iface, &msg);
        }
        let link = self
            .links
            .get_mut(&iface)
            .expect("checked by handle_packet");
        // RFC 6762 §7.2: known answers continued in further packets from the same querier.
        if let Some(w) = link.tc_waits.iter_mut().find(|w| w.src == src) {
            if msg.questions.is_empty() {
                w.query.answers.extend(msg.answers);
                if msg.truncated {
                    let extra =
                        Duration::from_millis(self.rng.gen_range(TC_WAIT_MS.0..=TC_WAIT_MS.1));
                    w.until = now + extra;
                } else {
                    w.until = now;
                }
                return;
            }
        }
        if msg.truncated {
            let until =
                now + Duration::from_millis(self.rng.gen_range(TC_WAIT_MS.0..=TC_WAIT_MS.1));
            let link = self
                .links
                .get_mut(&iface)
                .expect("checked by handle_packet");
            link.tc_waits.push(TcWait {
                src,
                until,
                query: msg,
            });
            return;
        }
        self.answer_query(now, iface, src, &msg, true);
    }

    /// The lexicographic tie-break of simultaneous probes (RFC 6762 §8.2).
    fn tie_break(&mut self, now: Instant, iface: IfaceId, msg: &Message) {
        let Some(LinkState::Probing { .. }) = self.links.get(&iface).map(|l| l.state) else {
            return;
        };
        let ours_all = self.probe_message(iface, false).authority;
        for name in [self.instance_name(), self.host_name()] {
            let key = |rs: &[Record]| {
                let mut v: Vec<(u16, Vec<u8>)> = rs
                    .iter()
                    .filter(|r| r.name == name)
                    .map(|r| (r.rtype(), r.data.wire_bytes()))
                    .collect();
                v.sort();
                v
            };
            let theirs = key(&msg.authority);
            if theirs.is_empty() {
                continue;
            }
            let ours = key(&ours_all);
            if theirs > ours {
                // We lose: wait a second and probe again; the winner will then defend the name.
                self.set_state(
                    iface,
                    LinkState::Probing {
                        sent: 0,
                        at: now + PROBE_DEFER,
                    },
                );
                return;
            }
        }
    }

    fn answer_query(
        &mut self,
        now: Instant,
        iface: IfaceId,
        src: SocketAddr,
        msg: &Message,
        delay_shared: bool,
    ) {
        let Some(link) = self.links.get(&iface) else {
            return;
        };
        if matches!(link.state, LinkState::Probing { .. }) {
            return; // not ours yet (RFC 6762 §8.1)
        }
        let own = self.own_records(iface);
        let known = |r: &Record| {
            msg.answers
                .iter()
                .any(|k| k.same_record(r) && k.ttl >= r.ttl / 2)
        };
        let mut answers: Vec<Record> = Vec::new();
        for q in &msg.questions {
            for r in own.iter().filter(|r| q.matches(r)) {
                // RFC 6762 §7.1: known-answer suppression.
                if !known(r) && !answers.iter().any(|a| a.same_record(r)) {
                    answers.push(r.clone());
                }
            }
        }
        if answers.is_empty() {
            return;
        }
        // RFC 6763 §12: the records a querier will want next travel as additionals.
        let mut additional: Vec<Record> = Vec::new();
        let add = |r: &Record, answers: &[Record], additional: &mut Vec<Record>| {
            if !known(r)
                && !answers.iter().any(|a| a.same_record(r))
                && !additional.iter().any(|a| a.same_record(r))
            {
                additional.push(r.clone());
            }
        };
        let inst = self.instance_name();
        let host = self.host_name();
        for a in answers.clone() {
            let want: Vec<&Record> = match a.rtype() {
                TYPE_PTR if a.name == self.service => own
                    .iter()
                    .filter(|r| r.name == inst || r.name == host)
                    .collect(),
                TYPE_SRV => own.iter().filter(|r| r.name == host).collect(),
                _ => Vec::new(),
            };
            for r in want {
                add(r, &answers, &mut additional);
            }
        }
        if src.port() != MDNS_PORT {
            // RFC 6762 §6.7: a legacy unicast query gets a plain DNS answer straight back.
            let mut reply = Message::response();
            reply.id = msg.id;
            reply.questions = msg.questions.clone();
            for r in answers.iter_mut().chain(additional.iter_mut()) {
                r.ttl = r.ttl.min(LEGACY_UNICAST_TTL);
                r.cache_flush = false;
            }
            reply.answers = answers;
            reply.additional = additional;
            self.send_split(iface, Destination::Unicast(src), reply);
            return;
        }
        let probe_defense = !msg.authority.is_empty();
        let shared = answers.iter().any(|r| !self.is_unique(r));
        // RFC 6762 §6: unique answers go at once, shared ones after 20-120 ms so others'
        // identical answers can suppress ours.
        let at = if shared && delay_shared && !probe_defense {
            now + self.random_ms(SHARED_DELAY_MS.0, SHARED_DELAY_MS.1)
        } else {
            now
        };
        let link = self.links.get_mut(&iface).expect("checked above");
        match &mut link.pending {
            Some(p) => {
                p.at = p.at.min(at);
                p.probe_defense |= probe_defense;
                for r in answers {
                    if !p.answers.iter().any(|a| a.same_record(&r)) {
                        p.answers.push(r);
                    }
                }
                for r in additional {
                    if !p.additional.iter().any(|a| a.same_record(&r)) {
                        p.additional.push(r);
                    }
                }
            }
            None => {
                link.pending = Some(PendingResponse {
                    at,
                    answers,
                    additional,
                    probe_defense,
                })
            }
        }
        if at <= now {
            self.flush_pending(now, iface);
        }
    }

    fn flush_pending(&mut self, now: Instant, iface: IfaceId) {
        let Some(link) = self.links.get_mut(&iface) else {
            return;
        };
        if link.pending.as_ref().is_none_or(|p| p.at > now) {
            return;
        }
        let p = link.pending.take().expect("checked above");
        let limit = if p.probe_defense {
            PROBE_DEFENSE_RATE_LIMIT
        } else {
            RATE_LIMIT
        };
        // RFC 6762 §6: a record is multicast at most once a second (a quarter second when
        // defending a name against a probe).
        let answers: Vec<Record> = p
            .answers
            .into_iter()
            .filter(|r| {
                link.last_multicast
                    .get(&(r.name.clone(), r.data.clone()))
                    .is_none_or(|t| *t + limit <= now)
            })
            .collect();
        if answers.is_empty() {
            return;
        }
        let additional = p
            .additional
            .into_iter()
            .filter(|r| !answers.iter().any(|a| a.same_record(r)))
            .collect();
        self.note_multicast(now, iface, &answers);
        let msg = Message {
            answers,
            additional,
            ..Message::response()
        };
        self.send_split(iface, Destination::Multicast, msg);
    }

    fn note_multicast(&mut self, now: Instant, iface: IfaceId, records: &[Record]) {
        if let Some(link) = self.links.get_mut(&iface) {
            for r in records {
                link.last_multicast
                    .insert((r.name.clone(), r.data.clone()), now);
            }
        }
    }

    /// What a query from someone else tells us about our own plans and our cache.
    fn observe_query(&mut self, now: Instant, iface: IfaceId, msg: &Message) {
        for q in &msg.questions {
            // RFC 6762 §10.5 (POOF): two or more queries for a record within ten seconds, and
            // no answer within ten seconds, condemn it. A query just after the record was heard
            // does not count: its owner holds the answer back (the 1 s rate limit of §6).
            for e in self.cache.entries_mut() {
                if e.iface == iface
                    && q.matches(&e.record)
                    && e.received + RATE_LIMIT <= now
                    && !msg.answers.iter().any(|k| k.same_record(&e.record))
                {
                    e.poof = Some(match e.poof {
                        Some((n, first)) if now < first + cache::POOF_WINDOW => (n + 1, first),
                        _ => (1, now),
                    });
                }
            }
            if q.unicast {
                continue;
            }
            // RFC 6762 §7.3: duplicate question suppression. Someone asked what we were about to
            // ask, and their known answers hold nothing we would not list ourselves, so every
            // answer we want will answer them too, and reach us. Our own records count as known:
            // we never need an answer about ourselves. (Requiring the reverse, ours within
            // theirs, never suppresses anything among peers that all know each other, since no
            // host lists its own record: bench/presence showed every node browsing alone.)
            let ours_known = self.known_answers(now, iface, &q.name, q.qtype);
            let own = self.own_records(iface);
            let covered = msg.answers.iter().filter(|a| q.matches(a)).all(|a| {
                ours_known.iter().any(|k| k.same_record(a)) || own.iter().any(|o| o.same_record(a))
            });
            let mut postponed = Vec::new();
            self.queries.retain(|p| {
                let same = p.iface == iface && p.name == q.name && p.qtype == q.qtype;
                if !same || !covered || p.at <= now {
                    return true;
                }
                if p.kind == QueryKind::Browse {
                    postponed.push(p.clone());
                }
                false
            });
            for p in postponed {
                self.reschedule_browse(now, p);
            }
        }
    }

    // ---- learning from responses (RFC 6762 §9, §10) ----

    fn handle_response(&mut self, now: Instant, iface: IfaceId, msg: Message) {
        let records: Vec<Record> = msg.answers.into_iter().chain(msg.additional).collect();
        // §9: conflicts. Identical records are our own (or a faithful copy); different data under
        // one of our unique names is someone else claiming it.
        let own = self.own_records(iface);
        let own_addrs = self.all_own_addrs();
        let inst = self.instance_name();
        let host = self.host_name();
        for r in &records {
            let clash = if r.name == inst {
                matches!(r.rtype(), TYPE_SRV | TYPE_TXT) && !own.iter().any(|o| o.same_record(r))
            } else if r.name == host {
                match &r.data {
                    RecordData::A(a) => !own_addrs.contains(a),
                    RecordData::Aaaa(_) => true,
                    _ => false,
                }
            } else {
                false
            };
            if clash && r.ttl > 0 {
                self.conflict(now, r.name == inst);
                break;
            }
        }
        // §7.4: duplicate answer suppression.
        if let Some(p) = self.links.get_mut(&iface).and_then(|l| l.pending.as_mut()) {
            p.answers.retain(|mine| {
                !records
                    .iter()
                    .any(|r| r.same_record(mine) && r.ttl >= mine.ttl)
            });
        }
        let mut changed = false;
        for r in &records {
            if self.is_own_name(&r.name) || !self.is_relevant(r) {
                continue;
            }
            match self.cache.insert(now, iface, r, &mut self.rng) {
                Insert::New | Insert::Goodbye => changed = true,
                Insert::Refreshed => changed = true, // last_seen moves
                Insert::Full => *self.stats.dropped.entry("cache-full").or_default() += 1,
                Insert::Ignored => {}
            }
            if r.ttl > 0 {
                // An answer arrived: nothing more to resolve for it.
                self.queries.retain(|q| {
                    !(q.iface == iface
                        && q.name == r.name
                        && (q.qtype == r.rtype() || q.qtype == TYPE_ANY)
                        && q.kind != QueryKind::Browse)
                });
            }
        }
        if changed {
            self.update_peers();
            self.plan_resolves(now);
        }
    }

    /// Records presence keeps: service PTRs, instance SRV/TXT, and addresses.
    fn is_relevant(&self, r: &Record) -> bool {
        match r.rtype() {
            TYPE_PTR => r.name == self.service,
            TYPE_SRV | TYPE_TXT => r.name.parent() == self.service,
            TYPE_A | TYPE_AAAA => true,
            _ => false,
        }
    }

    /// Records still in use, worth refreshing before they expire (RFC 6762 §5.2).
    fn in_use(&self, r: &Record) -> bool {
        match r.rtype() {
            TYPE_PTR | TYPE_SRV | TYPE_TXT => true,
            TYPE_A | TYPE_AAAA => self.cache.entries().iter().any(
                |e| matches!(&e.record.data, RecordData::Srv { target, .. } if *target == r.name),
            ),
            _ => false,
        }
    }

    fn drive_cache(&mut self, now: Instant) {
        if self.cache.expire(now) {
            self.update_peers();
        }
        let mut due: Vec<(IfaceId, Name, u16)> = Vec::new();
        let in_use: Vec<bool> = self
            .cache
            .entries()
            .iter()
            .map(|e| self.in_use(&e.record))
            .collect();
        // The names whose refresh is due now, and the host names their SRVs point at: one peer's
        // SRV and address records are refreshed together, in one query, rather than each on its
        // own jitter a second or two apart.
        let mut peers_due: Vec<(IfaceId, Name)> = Vec::new();
        for (e, used) in self.cache.entries().iter().zip(&in_use) {
            if *used && e.refresh_at.is_some_and(|t| t <= now) {
                peers_due.push((e.iface, e.record.name.clone()));
                if let RecordData::Srv { target, .. } = &e.record.data {
                    peers_due.push((e.iface, target.clone()));
                }
                for srv in self.cache.entries() {
                    if matches!(&srv.record.data, RecordData::Srv { target, .. } if *target == e.record.name)
                    {
                        peers_due.push((e.iface, srv.record.name.clone()));
                    }
                }
            }
        }
        for (e, used) in self.cache.entries_mut().zip(in_use) {
            let Some(at) = e.refresh_at else { continue };
            let soon =
                now + Duration::from_secs(e.record.ttl as u64) * REFRESH_COALESCE_PERCENT / 100;
            let with_peer = at <= soon
                && peers_due
                    .iter()
                    .any(|(i, n)| *i == e.iface && *n == e.record.name);
            if at <= now || with_peer {
                if used {
                    due.push((e.iface, e.record.name.clone(), e.record.rtype()));
                }
                Cache::advance_refresh(e, &mut self.rng);
            }
        }
        for (iface, name, qtype) in due {
            self.plan_query(iface, name, qtype, now, QueryKind::Refresh);
        }
    }

    /// After new PTRs or SRVs: ask once for what is missing to make a peer.
    fn plan_resolves(&mut self, now: Instant) {
        let mut wanted: Vec<(IfaceId, Name, u16)> = Vec::new();
        for e in self.cache.entries() {
            match &e.record.data {
                RecordData::Ptr(inst) if e.record.name == self.service => {
                    for t in [TYPE_SRV, TYPE_TXT] {
                        if self.cache.find(inst, t).next().is_none() {
                            wanted.push((e.iface, inst.clone(), t));
                        }
                    }
                }
                RecordData::Srv { target, .. }
                    if self.cache.find(target, TYPE_A).next().is_none()
                        && self.cache.find(target, TYPE_AAAA).next().is_none() =>
                {
                    wanted.push((e.iface, target.clone(), TYPE_A));
                }
                _ => {}
            }
        }
        for (iface, name, qtype) in wanted {
            let at = now + self.random_ms(SHARED_DELAY_MS.0, SHARED_DELAY_MS.1);
            self.plan_query(iface, name, qtype, at, QueryKind::Resolve { attempt: 0 });
        }
    }

    fn update_peers(&mut self) {
        let mut now_peers: BTreeMap<Name, Peer> = BTreeMap::new();
        let entries = self.cache.entries();
        for e in entries {
            let RecordData::Srv { port, target, .. } = &e.record.data else {
                continue;
            };
            if e.record.name.parent() != self.service || now_peers.contains_key(&e.record.name) {
                continue;
            }
            let Some(txt) = entries
                .iter()
                .find(|t| t.record.name == e.record.name && t.record.rtype() == TYPE_TXT)
            else {
                continue;
            };
            let mut addrs: Vec<IpAddr> = Vec::new();
            let mut last_seen = e.received.max(txt.received);
            for a in entries.iter().filter(|a| a.record.name == *target) {
                let ip = match a.record.data {
                    RecordData::A(ip) => IpAddr::V4(ip),
                    RecordData::Aaaa(ip) => IpAddr::V6(ip),
                    _ => continue,
                };
                if !addrs.contains(&ip) {
                    addrs.push(ip);
                }
                last_seen = last_seen.max(a.received);
            }
            if addrs.is_empty() {
                continue;
            }
            addrs.sort();
            let pairs = match &txt.record.data {
                RecordData::Txt(s) => RecordData::txt_pairs(s),
                _ => Vec::new(),
            };
            let get = |k: &str| pairs.iter().find(|(kk, _)| kk == k).map(|(_, v)| v.clone());
            let instance = e.record.name.first_label().to_string();
            let legacy = get("nbhd").as_deref() != Some("1");
            let key = if legacy {
                None
            } else {
                get("key").filter(|k| !k.is_empty())
            };
            // XEP-0174 §4: `nick`, else the person's name from `1st` and `last` (libpurple
            // publishes only those), else the instance's local part.
            let full_name = [get("1st"), get("last")]
                .into_iter()
                .flatten()
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            let nick = get("nick")
                .filter(|n| !n.trim().is_empty())
                .or(Some(full_name).filter(|n| !n.is_empty()))
                .unwrap_or_else(|| instance.split('@').next().unwrap_or(&instance).to_string());
            now_peers.insert(
                e.record.name.clone(),
                Peer {
                    id: key.clone().unwrap_or_else(|| instance.clone()),
                    instance,
                    nick,
                    host: target.to_string(),
                    addrs,
                    port: *port,
                    status: get("status").unwrap_or_else(|| "avail".into()),
                    msg: get("msg").unwrap_or_default(),
                    legacy,
                    key,
                    txt: pairs,
                    last_seen,
                },
            );
        }
        for (name, old) in &self.peers {
            if !now_peers.contains_key(name) {
                self.events.push_back(Event::PeerDown(old.clone()));
            }
        }
        for (name, new) in &now_peers {
            match self.peers.get(name) {
                None => self.events.push_back(Event::PeerUp(new.clone())),
                Some(old) if !old.same_content(new) => {
                    self.events.push_back(Event::PeerChanged(new.clone()))
                }
                Some(_) => {}
            }
        }
        self.peers = now_peers;
    }

    // ---- querying (RFC 6762 §5) ----

    fn plan_query(&mut self, iface: IfaceId, name: Name, qtype: u16, at: Instant, kind: QueryKind) {
        if self
            .queries
            .iter()
            .any(|q| q.iface == iface && q.name == name && q.qtype == qtype)
        {
            return;
        }
        self.queries.push(PlannedQuery {
            iface,
            name,
            qtype,
            at,
            kind,
        });
    }

    fn reschedule_browse(&mut self, now: Instant, mut q: PlannedQuery) {
        if let Some(link) = self.links.get_mut(&q.iface) {
            q.at = now + link.browse_interval;
            // RFC 6762 §5.2: intervals at least double, up to an hour.
            link.browse_interval = (link.browse_interval * 2).min(BROWSE_MAX_INTERVAL);
            self.queries.push(q);
        }
    }

    /// Cached answers to a question that still have more than half their TTL (RFC 6762 §7.1).
    fn known_answers(&self, now: Instant, iface: IfaceId, name: &Name, qtype: u16) -> Vec<Record> {
        if qtype != TYPE_PTR {
            return Vec::new(); // refreshes and resolves want the answer even if we hold it
        }
        self.cache
            .entries()
            .iter()
            .filter(|e| e.iface == iface && e.record.name == *name && e.record.rtype() == qtype)
            .filter_map(|e| {
                let left = e.expires.saturating_duration_since(now).as_secs() as u32;
                (left > e.record.ttl / 2).then(|| Record {
                    ttl: left,
                    cache_flush: false,
                    ..e.record.clone()
                })
            })
            .collect()
    }

    fn send_due_queries(&mut self, now: Instant) {
        if !self.queries.iter().any(|q| q.at <= now) {
            return;
        }
        let (due, keep): (Vec<PlannedQuery>, Vec<PlannedQuery>) =
            self.queries.drain(..).partition(|q| q.at <= now);
        self.queries = keep;
        let mut by_iface: BTreeMap<IfaceId, Vec<PlannedQuery>> = BTreeMap::new();
        for q in due {
            by_iface.entry(q.iface).or_default().push(q);
        }
        for (iface, qs) in by_iface {
            let mut msg = Message::query();
            for q in &qs {
                msg.questions.push(Question {
                    name: q.name.clone(),
                    qtype: q.qtype,
                    unicast: false,
                });
                for k in self.known_answers(now, iface, &q.name, q.qtype) {
                    if !msg.answers.iter().any(|a| a.same_record(&k)) {
                        msg.answers.push(k);
                    }
                }
            }
            self.send_split(iface, Destination::Multicast, msg);
            for q in qs {
                match q.kind {
                    QueryKind::Browse => self.reschedule_browse(now, q),
                    QueryKind::Resolve { attempt } if attempt + 1 < RESOLVE_ATTEMPTS => {
                        let at = now + Duration::from_secs(1 << attempt);
                        self.queries.push(PlannedQuery {
                            at,
                            kind: QueryKind::Resolve {
                                attempt: attempt + 1,
                            },
                            ..q
                        });
                    }
                    QueryKind::Reconfirm { sent } if sent + 1 < RECONFIRM_QUERIES => {
                        let at = now + RECONFIRM_SPACING;
                        self.queries.push(PlannedQuery {
                            at,
                            kind: QueryKind::Reconfirm { sent: sent + 1 },
                            ..q
                        });
                    }
                    _ => {}
                }
            }
        }
    }

    // ---- output ----

    /// Sends a message, split over several datagrams when it is too big: responses are cut
    /// between records; queries carry their questions first and continue their known answers in
    /// further packets with TC set on all but the last (RFC 6762 §7.2).
    fn send_split(&mut self, iface: IfaceId, destination: Destination, msg: Message) {
        if msg.wire_len() <= TARGET_MESSAGE {
            self.push_transmit(iface, destination, &msg);
            return;
        }
        let mut parts: Vec<Message> = Vec::new();
        let mut cur = Message {
            answers: Vec::new(),
            additional: Vec::new(),
            ..msg.clone()
        };
        let head = cur.wire_len();
        let fill = |cur: &mut Message, r: Record, additional: bool, parts: &mut Vec<Message>| {
            if cur.wire_len() + r.wire_len() > TARGET_MESSAGE && cur.wire_len() > head.min(12) {
                let fresh = Message {
                    id: cur.id,
                    response: cur.response,
                    // continuation packets of a query carry no questions (RFC 6762 §7.2)
                    questions: if cur.response {
                        cur.questions.clone()
                    } else {
                        Vec::new()
                    },
                    ..Message::default()
                };
                parts.push(std::mem::replace(cur, fresh));
            }
            if additional {
                cur.additional.push(r);
            } else {
                cur.answers.push(r);
            }
        };
        for r in msg.answers {
            fill(&mut cur, r, false, &mut parts);
        }
        for r in msg.additional {
            fill(&mut cur, r, true, &mut parts);
        }
        parts.push(cur);
        let n = parts.len();
        for (i, mut p) in parts.into_iter().enumerate() {
            if !p.response && i + 1 < n {
                p.truncated = true;
            }
            self.push_transmit(iface, destination.clone(), &p);
        }
    }

    fn push_transmit(&mut self, iface: IfaceId, destination: Destination, msg: &Message) {
        let payload = msg.emit();
        if payload.is_empty() {
            return;
        }
        self.stats.packets_out += 1;
        self.stats.bytes_out += payload.len() as u64;
        if destination == Destination::Multicast {
            self.sent_recently
                .push_back((digest(&payload), iface, self.now));
        }
        self.transmits.push_back(Transmit {
            iface,
            destination,
            payload,
        });
    }

    fn random_ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.rng.gen_range(lo..=hi))
    }
}

fn digest(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
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
