//! The virtual network: hosts on one shared link, a virtual clock and a seed. Every engine test
//! runs on it (presence's RFC behaviours with bare [`Presence`] engines, everything else with
//! whole [`Node`]s), and the simulator grows from it.
//!
//! The medium: every host has one interface ([`IFACE`]) and the address 10.0.0.(i+1). Multicast
//! reaches every live host, the sender too (multicast loopback), after [`Vnet::latency`];
//! unicast reaches the host that has the address. Faults are per direction: a unicast black hole
//! (the seed's: A→B unicast vanishes while multicast flows), a multicast one, and random loss of
//! what a host receives, drawn from the seed. TCP is modelled as a link per connection: it
//! opens only where unicast flows both ways (the handshake needs both), carries bytes in order,
//! and stalls for good in a direction that starts dropping (as a real stream whose segments
//! vanish does until it times out).
//!
//! A host may be crashed (dropped, its streams closed by its kernel) and restarted from its
//! store: each host has one, in memory, that holds only writes the vnet confirmed. A store can
//! be told to fail, or to crash its host at the next write, before the confirmation.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet};
use std::fmt::Debug;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::activity::{group_of, ActivityId, ChannelChange, Load, Post};
use crate::messages::streams::TCP_USER_TIMEOUT;
use crate::node::{
    Channel, ConnId, Node, Record, StoreWrite, StreamAction, StreamInput, Transmit, COURIER_PORT,
};
use crate::presence::{self, Destination, IfaceId, Presence, MDNS_PORT};

/// The one interface of every host.
pub const IFACE: IfaceId = IfaceId(1);
/// Every host's probe port.
pub const PROBE_PORT: u16 = 5299;
/// Every host's XEP-0174 port.
pub const P2PJ_PORT: u16 = 5298;

/// Host `i`'s address.
pub fn addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, i as u8 + 1)
}

/// What the vnet drives: a Node, or a bare engine that speaks on some of the channels.
pub trait Host {
    type Event: Clone + Debug;
    fn handle_datagram(
        &mut self,
        now: Instant,
        channel: Channel,
        iface: IfaceId,
        src: SocketAddr,
        bytes: &[u8],
    );
    fn handle_stream(&mut self, _now: Instant, _input: StreamInput) {}
    fn handle_timeout(&mut self, now: Instant);
    fn poll_timeout(&self) -> Option<Instant>;
    fn poll_transmit(&mut self) -> Option<Transmit>;
    fn poll_stream(&mut self) -> Option<StreamAction> {
        None
    }
    fn poll_event(&mut self) -> Option<Self::Event>;
    fn poll_store(&mut self) -> Option<StoreWrite> {
        None
    }
    fn handle_persisted(&mut self, _now: Instant, _token: u64) {}
    fn handle_persist_failed(&mut self, _now: Instant, _token: u64, _why: &str) {}
    fn poll_channel(&mut self) -> Option<ChannelChange> {
        None
    }
    fn poll_load(&mut self) -> Option<(u64, Load)> {
        None
    }
    fn handle_loaded(&mut self, _now: Instant, _token: u64, _posts: Vec<Post>) {}
}

impl Host for Node {
    type Event = crate::node::Event;
    fn handle_datagram(
        &mut self,
        now: Instant,
        channel: Channel,
        iface: IfaceId,
        src: SocketAddr,
        bytes: &[u8],
    ) {
        Node::handle_datagram(self, now, channel, iface, src, bytes)
    }
    fn handle_stream(&mut self, now: Instant, input: StreamInput) {
        Node::handle_stream(self, now, input)
    }
    fn handle_timeout(&mut self, now: Instant) {
        Node::handle_timeout(self, now)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        Node::poll_timeout(self)
    }
    fn poll_transmit(&mut self) -> Option<Transmit> {
        Node::poll_transmit(self)
    }
    fn poll_stream(&mut self) -> Option<StreamAction> {
        Node::poll_stream(self)
    }
    fn poll_event(&mut self) -> Option<Self::Event> {
        Node::poll_event(self)
    }
    fn poll_store(&mut self) -> Option<StoreWrite> {
        Node::poll_store(self)
    }
    fn handle_persisted(&mut self, now: Instant, token: u64) {
        Node::handle_persisted(self, now, token)
    }
    fn handle_persist_failed(&mut self, now: Instant, token: u64, why: &str) {
        Node::handle_persist_failed(self, now, token, why)
    }
    fn poll_channel(&mut self) -> Option<ChannelChange> {
        Node::poll_channel(self)
    }
    fn poll_load(&mut self) -> Option<(u64, Load)> {
        Node::poll_load(self)
    }
    fn handle_loaded(&mut self, now: Instant, token: u64, posts: Vec<Post>) {
        Node::handle_loaded(self, now, token, posts)
    }
}

/// A bare presence engine on the mDNS channel.
impl Host for Presence {
    type Event = presence::Event;
    fn handle_datagram(
        &mut self,
        now: Instant,
        channel: Channel,
        iface: IfaceId,
        src: SocketAddr,
        bytes: &[u8],
    ) {
        if channel == Channel::Mdns {
            let _ = self.handle_packet(now, iface, src, bytes);
        }
    }
    fn handle_timeout(&mut self, now: Instant) {
        Presence::handle_timeout(self, now)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        Presence::poll_timeout(self)
    }
    fn poll_transmit(&mut self) -> Option<Transmit> {
        Presence::poll_transmit(self).map(|t| Transmit {
            channel: Channel::Mdns,
            iface: Some(t.iface),
            destination: t.destination,
            payload: t.payload,
        })
    }
    fn poll_event(&mut self) -> Option<Self::Event> {
        Presence::poll_event(self)
    }
}

/// A datagram that went on the medium.
#[derive(Clone, Debug)]
pub struct Sent {
    pub at: Instant,
    pub from: usize,
    pub channel: Channel,
    pub destination: Destination,
    pub payload: Vec<u8>,
}

/// A host's store: what it wrote and the vnet confirmed, in order.
#[derive(Clone, Debug, Default)]
pub struct Store {
    pub records: Vec<Record>,
    /// Refuse writes (a full disk).
    pub failing: bool,
    /// Crash the host at its next write, before confirming it.
    pub crash_at_next_write: bool,
}

impl Store {
    /// What a Node restarts from.
    pub fn restored(&self) -> crate::node::Restored {
        let seen = self
            .records
            .iter()
            .filter_map(|r| match r {
                Record::Message { id, from, via, .. } if via.is_some() => {
                    Some((from.clone(), id.clone()))
                }
                Record::Invitation { id, from, .. } => Some((from.clone(), id.clone())),
                _ => None,
            })
            .collect();
        let mut activities: BTreeMap<ActivityId, (crate::activity::ActivityInfo, bool)> =
            BTreeMap::new();
        let mut heads: BTreeMap<(ActivityId, [u8; 32]), (u64, u64, u64)> = BTreeMap::new();
        let mut pins = Vec::new();
        let mut invited = Vec::new();
        for r in &self.records {
            match r {
                Record::Activity { info, joined } => {
                    activities.insert(info.id, (info.clone(), *joined));
                }
                Record::Post(p) => {
                    let last = p.first_pkt + u64::from(p.frags) - 1;
                    let head = heads.entry((p.activity, p.sender)).or_default();
                    if p.seq > head.0 {
                        *head = (p.seq, last, p.lamport);
                    }
                }
                Record::Pin { nick, key } => pins.push((nick.clone(), *key)),
                Record::Invitation {
                    id, from, activity, ..
                } if !activity.key.is_empty() => {
                    invited.push((id.clone(), from.clone(), activity.clone()))
                }
                _ => {}
            }
        }
        crate::node::Restored {
            seen,
            activities: crate::activity::Restored {
                activities: activities.into_values().collect(),
                heads: heads
                    .into_iter()
                    .map(|((a, s), (seq, last, lamport))| (a, s, seq, last, lamport))
                    .collect(),
            },
            pins,
            invited,
        }
    }

    /// The stored posts of `sender` in `activity` whose packets meet `first..=last`.
    pub fn load(&self, load: &Load) -> Vec<Post> {
        self.records
            .iter()
            .filter_map(|r| match r {
                Record::Post(p)
                    if p.activity == load.activity
                        && p.sender == load.sender
                        && p.first_pkt <= load.last
                        && p.first_pkt + u64::from(p.frags) > load.first =>
                {
                    Some(p.clone())
                }
                _ => None,
            })
            .collect()
    }

    /// An activity's log as `nbhd log` shows it: every post, in the one total order (Lamport
    /// time, then sender).
    pub fn log(&self, activity: ActivityId) -> Vec<Post> {
        let mut posts: Vec<Post> = self
            .records
            .iter()
            .filter_map(|r| match r {
                Record::Post(p) if p.activity == activity => Some(p.clone()),
                _ => None,
            })
            .collect();
        posts.sort_by_key(|p| (p.lamport, p.sender, p.seq));
        posts
    }
}

enum Arrival {
    Datagram {
        channel: Channel,
        src: SocketAddr,
        payload: Vec<u8>,
    },
    Stream(StreamInput),
}

struct Link {
    peer: usize,
    peer_conn: ConnId,
    /// This direction dropped a segment: nothing more gets through.
    stalled: bool,
}

pub struct Vnet<H: Host> {
    pub now: Instant,
    pub t0: Instant,
    pub latency: Duration,
    hosts: Vec<Option<H>>,
    pub stores: Vec<Store>,
    rng: SmallRng,
    /// (from, to): unicast from `from` to `to` vanishes.
    pub unicast_drop: HashSet<(usize, usize)>,
    /// (from, to): multicast from `from` to `to` vanishes.
    pub multicast_drop: HashSet<(usize, usize)>,
    /// Per host: the share of datagrams it receives that are lost.
    pub loss: HashMap<usize, f64>,
    flight: BinaryHeap<Reverse<(Instant, u64, usize)>>,
    arrivals: HashMap<u64, Arrival>,
    seq: u64,
    links: BTreeMap<(usize, ConnId), Link>,
    /// Per receiving (host, connection): the last bytes in flight to it, and when they land.
    /// Writes that land together are read together, as TCP delivers a byte stream: a reader
    /// sees a stream's opening and the stanzas behind it in one read.
    in_flight: HashMap<(usize, ConnId), (Instant, u64)>,
    next_accept: Vec<ConnId>,
    /// Every datagram sent, in order.
    pub sent: Vec<Sent>,
    /// Every write to a stream: (when, host, its connection, the bytes).
    pub stream_sent: Vec<(Instant, usize, ConnId, Vec<u8>)>,
    /// Per host, the activity groups it joined.
    channels: Vec<BTreeSet<ActivityId>>,
    /// Every event, with when and where.
    pub events: Vec<(Instant, usize, H::Event)>,
}

impl<H: Host> Vnet<H> {
    pub fn new(seed: u64) -> Vnet<H> {
        let t0 = Instant::now();
        Vnet {
            now: t0,
            t0,
            latency: Duration::from_millis(1),
            hosts: Vec::new(),
            stores: Vec::new(),
            rng: SmallRng::seed_from_u64(seed),
            unicast_drop: HashSet::new(),
            multicast_drop: HashSet::new(),
            loss: HashMap::new(),
            flight: BinaryHeap::new(),
            arrivals: HashMap::new(),
            seq: 0,
            links: BTreeMap::new(),
            in_flight: HashMap::new(),
            next_accept: Vec::new(),
            sent: Vec::new(),
            stream_sent: Vec::new(),
            channels: Vec::new(),
            events: Vec::new(),
        }
    }

    /// Adds a host built by `make` (given its address and the time); its index.
    pub fn add(&mut self, make: impl FnOnce(Ipv4Addr, Instant) -> H) -> usize {
        let i = self.hosts.len();
        self.hosts.push(Some(make(addr(i), self.now)));
        self.stores.push(Store::default());
        self.channels.push(BTreeSet::new());
        self.next_accept.push(Node::ACCEPTED_BASE);
        self.drain();
        i
    }

    pub fn host(&self, i: usize) -> &H {
        self.hosts[i].as_ref().expect("a live host")
    }

    pub fn host_mut(&mut self, i: usize) -> &mut H {
        self.hosts[i].as_mut().expect("a live host")
    }

    pub fn is_up(&self, i: usize) -> bool {
        self.hosts[i].is_some()
    }

    /// Runs `f` on host `i` at the current time, then carries out what it asked for.
    pub fn with<R>(&mut self, i: usize, f: impl FnOnce(&mut H, Instant) -> R) -> R {
        let now = self.now;
        let r = f(self.host_mut(i), now);
        self.drain();
        r
    }

    /// Kills host `i` (as `kill -9` would): its streams are closed by its kernel, what is in
    /// flight to it is lost, its store keeps what was confirmed.
    pub fn crash(&mut self, i: usize) {
        self.hosts[i] = None;
        self.channels[i].clear();
        // What was on its way to it dies with it (a restarted host does not get it).
        for Reverse((_, seq, to)) in self.flight.iter() {
            if *to == i {
                self.arrivals.remove(seq);
            }
        }
        let mine: Vec<(usize, ConnId)> = self
            .links
            .keys()
            .filter(|(h, _)| *h == i)
            .copied()
            .collect();
        for key in mine {
            if let Some(l) = self.links.remove(&key) {
                self.links.remove(&(l.peer, l.peer_conn));
                self.schedule(
                    l.peer,
                    self.latency,
                    Arrival::Stream(StreamInput::Closed {
                        conn: l.peer_conn,
                        failed: false,
                    }),
                );
            }
        }
    }

    /// Brings host `i` back, built by `make` from its store.
    pub fn restart(&mut self, i: usize, make: impl FnOnce(Ipv4Addr, Instant, &Store) -> H) {
        let h = make(addr(i), self.now, &self.stores[i]);
        self.hosts[i] = Some(h);
        self.drain();
    }

    /// Delivers a datagram from outside the engines (a host nobody here wrote) to host `to`.
    pub fn inject(&mut self, to: usize, channel: Channel, src: SocketAddr, payload: &[u8]) {
        let now = self.now;
        if let Some(h) = self.hosts[to].as_mut() {
            h.handle_datagram(now, channel, IFACE, src, payload);
        }
        self.drain();
    }

    fn schedule(&mut self, to: usize, after: Duration, a: Arrival) {
        self.seq += 1;
        self.arrivals.insert(self.seq, a);
        self.flight.push(Reverse((self.now + after, self.seq, to)));
    }

    fn port(channel: Channel) -> u16 {
        match channel {
            Channel::Mdns => MDNS_PORT,
            Channel::Courier => COURIER_PORT,
            Channel::Probe => PROBE_PORT,
            Channel::Activity(id) => group_of(&id).1,
        }
    }

    fn host_at(&self, ip: IpAddr) -> Option<usize> {
        (0..self.hosts.len()).find(|i| IpAddr::V4(addr(*i)) == ip)
    }

    fn lost(&mut self, to: usize) -> bool {
        let p = self.loss.get(&to).copied().unwrap_or(0.0);
        p > 0.0 && self.rng.gen_bool(p.min(1.0))
    }

    fn unicast_ok(&self, a: usize, b: usize) -> bool {
        !self.unicast_drop.contains(&(a, b))
    }

    /// Carries out everything every host asked for, until none asks for more.
    pub fn drain(&mut self) {
        loop {
            let mut busy = false;
            for i in 0..self.hosts.len() {
                busy |= self.drain_host(i);
            }
            if !busy {
                break;
            }
        }
    }

    fn drain_host(&mut self, i: usize) -> bool {
        let now = self.now;
        let mut busy = false;
        while let Some(t) = self.hosts[i].as_mut().and_then(|h| h.poll_transmit()) {
            busy = true;
            self.transmit(i, t);
        }
        while let Some(a) = self.hosts[i].as_mut().and_then(|h| h.poll_stream()) {
            busy = true;
            self.stream(i, a);
        }
        while let Some(w) = self.hosts[i].as_mut().and_then(|h| h.poll_store()) {
            busy = true;
            let store = &mut self.stores[i];
            if store.crash_at_next_write {
                store.crash_at_next_write = false;
                self.crash(i);
                return true;
            }
            let failing = store.failing;
            if !failing {
                store.records.push(w.record);
            }
            if let Some(h) = self.hosts[i].as_mut() {
                if failing {
                    h.handle_persist_failed(now, w.token, "disk full");
                } else {
                    h.handle_persisted(now, w.token);
                }
            }
        }
        while let Some(c) = self.hosts[i].as_mut().and_then(|h| h.poll_channel()) {
            busy = true;
            match c {
                ChannelChange::Open { id, .. } => self.channels[i].insert(id),
                ChannelChange::Close { id } => self.channels[i].remove(&id),
            };
        }
        while let Some((token, load)) = self.hosts[i].as_mut().and_then(|h| h.poll_load()) {
            busy = true;
            let posts = self.stores[i].load(&load);
            if let Some(h) = self.hosts[i].as_mut() {
                h.handle_loaded(now, token, posts);
            }
        }
        while let Some(e) = self.hosts[i].as_mut().and_then(|h| h.poll_event()) {
            busy = true;
            self.events.push((now, i, e));
        }
        busy
    }

    fn transmit(&mut self, from: usize, t: Transmit) {
        self.sent.push(Sent {
            at: self.now,
            from,
            channel: t.channel,
            destination: t.destination.clone(),
            payload: t.payload.clone(),
        });
        let src = SocketAddr::new(IpAddr::V4(addr(from)), Self::port(t.channel));
        let arrival = |payload: Vec<u8>| Arrival::Datagram {
            channel: t.channel,
            src,
            payload,
        };
        match &t.destination {
            Destination::Multicast => {
                for to in 0..self.hosts.len() {
                    if self.multicast_drop.contains(&(from, to)) || (to != from && self.lost(to)) {
                        continue;
                    }
                    // An activity's group reaches only the hosts that joined it.
                    if let Channel::Activity(id) = t.channel {
                        if !self.channels[to].contains(&id) {
                            continue;
                        }
                    }
                    let a = arrival(t.payload.clone());
                    self.schedule(to, self.latency, a);
                }
            }
            Destination::Unicast(dst) => {
                let Some(to) = self.host_at(dst.ip()) else {
                    return;
                };
                if self.unicast_ok(from, to) && !self.lost(to) {
                    let a = arrival(t.payload.clone());
                    self.schedule(to, self.latency, a);
                }
            }
        }
    }

    fn stream(&mut self, from: usize, a: StreamAction) {
        match a {
            StreamAction::Connect { conn, addr: dst } => {
                let Some(to) = self.host_at(dst.ip()) else {
                    return;
                };
                if !(self.unicast_ok(from, to) && self.unicast_ok(to, from) && self.is_up(to)) {
                    return; // SYNs vanish; the engine's connect timeout decides
                }
                let acc = self.next_accept[to];
                self.next_accept[to] += 1;
                self.links.insert(
                    (from, conn),
                    Link {
                        peer: to,
                        peer_conn: acc,
                        stalled: false,
                    },
                );
                self.links.insert(
                    (to, acc),
                    Link {
                        peer: from,
                        peer_conn: conn,
                        stalled: false,
                    },
                );
                let remote = SocketAddr::new(IpAddr::V4(addr(from)), 40000 + conn as u16);
                self.schedule(
                    to,
                    self.latency,
                    Arrival::Stream(StreamInput::Accepted { conn: acc, remote }),
                );
                self.schedule(
                    from,
                    self.latency * 2,
                    Arrival::Stream(StreamInput::Connected { conn }),
                );
            }
            StreamAction::Send { conn, bytes } => {
                self.stream_sent.push((self.now, from, conn, bytes.clone()));
                let Some((to, peer_conn, stalled)) = self
                    .links
                    .get(&(from, conn))
                    .map(|l| (l.peer, l.peer_conn, l.stalled))
                else {
                    return;
                };
                if stalled || !self.unicast_ok(from, to) {
                    if !stalled {
                        if let Some(l) = self.links.get_mut(&(from, conn)) {
                            l.stalled = true;
                        }
                        self.schedule(
                            from,
                            TCP_USER_TIMEOUT,
                            Arrival::Stream(StreamInput::Closed { conn, failed: true }),
                        );
                    }
                    return;
                }
                let at = self.now + self.latency;
                if let Some((when, seq)) = self.in_flight.get(&(to, peer_conn)) {
                    if *when == at {
                        if let Some(Arrival::Stream(StreamInput::Data { bytes: b, .. })) =
                            self.arrivals.get_mut(seq)
                        {
                            b.extend_from_slice(&bytes);
                            return;
                        }
                    }
                }
                self.schedule(
                    to,
                    self.latency,
                    Arrival::Stream(StreamInput::Data {
                        conn: peer_conn,
                        bytes,
                    }),
                );
                self.in_flight.insert((to, peer_conn), (at, self.seq));
            }
            StreamAction::Close { conn } => {
                if let Some(l) = self.links.remove(&(from, conn)) {
                    self.links.remove(&(l.peer, l.peer_conn));
                    if !l.stalled && self.unicast_ok(from, l.peer) {
                        self.schedule(
                            l.peer,
                            self.latency,
                            Arrival::Stream(StreamInput::Closed {
                                conn: l.peer_conn,
                                failed: false,
                            }),
                        );
                    }
                }
            }
        }
    }

    /// Runs the network until `end`: datagrams and stream bytes arrive, timers fire.
    pub fn run_until(&mut self, end: Instant) {
        self.drain();
        loop {
            let next_timer = self
                .hosts
                .iter()
                .flatten()
                .filter_map(|h| h.poll_timeout())
                .min();
            let next_arrival = self.flight.peek().map(|Reverse((t, _, _))| *t);
            let Some(next) = [next_timer, next_arrival].into_iter().flatten().min() else {
                break;
            };
            if next > end {
                break;
            }
            self.now = self.now.max(next);
            let now = self.now;
            while let Some(Reverse((t, seq, to))) = self.flight.peek().copied() {
                if t > now {
                    break;
                }
                self.flight.pop();
                let Some(a) = self.arrivals.remove(&seq) else {
                    continue;
                };
                let Some(h) = self.hosts[to].as_mut() else {
                    continue;
                };
                match a {
                    Arrival::Datagram {
                        channel,
                        src,
                        payload,
                    } => h.handle_datagram(now, channel, IFACE, src, &payload),
                    Arrival::Stream(input) => h.handle_stream(now, input),
                }
                self.drain_host(to);
            }
            for i in 0..self.hosts.len() {
                let due = self.hosts[i]
                    .as_ref()
                    .and_then(|h| h.poll_timeout())
                    .is_some_and(|t| t <= now);
                if due {
                    if let Some(h) = self.hosts[i].as_mut() {
                        h.handle_timeout(now);
                    }
                }
            }
            self.drain();
        }
        self.now = self.now.max(end);
    }

    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        self.run_until(end);
    }

    /// Runs until `cond` holds (checked after every step) or `limit` passes; how long it took.
    pub fn run_until_true(
        &mut self,
        limit: Duration,
        mut cond: impl FnMut(&Self) -> bool,
    ) -> Option<Duration> {
        let start = self.now;
        let end = start + limit;
        // Each step moves time on, or handles what is due now; a bound keeps an engine that
        // never clears its timer from spinning here forever.
        for _ in 0..10_000_000 {
            if self.now >= end {
                break;
            }
            if cond(self) {
                return Some(self.now - start);
            }
            let next_timer = self
                .hosts
                .iter()
                .flatten()
                .filter_map(|h| h.poll_timeout())
                .min();
            let next_arrival = self.flight.peek().map(|Reverse((t, _, _))| *t);
            let step = [next_timer, next_arrival]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(end)
                .clamp(self.now, end);
            self.run_until(step);
            if step == end {
                break;
            }
        }
        cond(self).then(|| self.now - start)
    }

    /// The events of host `i`.
    pub fn events_of(&self, i: usize) -> impl Iterator<Item = &H::Event> {
        self.events
            .iter()
            .filter(move |(_, h, _)| *h == i)
            .map(|(_, _, e)| e)
    }
}
