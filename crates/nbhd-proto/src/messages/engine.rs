//! The messages engine: deliveries over whichever path works, receipts, deduplication and
//! authenticated XEP-0174 streams, sans-IO (DESIGN.md §4.2, §4.3).
//!
//! A delivery starts on the path [`Paths::plan`] picks: TCP first, the courier (a signed frame
//! on the neighborhood multicast channel) added when no receipt came within max(250 ms,
//! 3 × RTT), straight to the courier while unicast is known broken. The first receipt wins and
//! cancels the rest; the deadline cancels everything. Receivers deduplicate by (sender, stanza
//! id), so a message that came both ways is shown once, and always answer with a receipt on the
//! path it came by.
//!
//! Streams between nbhd peers are authenticated right after the header: each side sends a fresh
//! nonce, each signs the other's (with both keys, under a domain prefix), and stanzas count only
//! once the peer's proof verifies against the key its presence announced.
//!
//! The driver owns sockets: it carries out [`Action`]s and reports what happens with the
//! `handle_*` calls. Not yet here (issue 4 continues): relay through a third peer, legacy
//! XEP-0174 peers, persistence of seen ids across restarts, the probes' wire traffic.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::stanza::{self, Activity, Stanza, StanzaError};
use super::xml::{self, Element, StreamError, StreamEvent, StreamParser};
use crate::frame::{self, Kind};
use crate::identity::{self, Identity, Signature};
use crate::paths::{Paths, Via};

pub const NS_AUTH: &str = "urn:nbhd:auth:0";
/// Relay requests and relayed stanzas (the stanza itself inside XEP-0297 `<forwarded>`).
pub const NS_RELAY: &str = "urn:nbhd:relay:0";
pub const NS_FORWARD: &str = "urn:xmpp:forward:0";
/// A delivery the courier has not carried within this is also handed to a relay.
pub const RELAY_AFTER: Duration = Duration::from_secs(1);
pub const AUTH_DOMAIN: &[u8] = b"nbhd stream auth v0\0";
/// The courier retransmits with backoff from this, doubling, until the receipt or the deadline.
pub const COURIER_RETRY_FIRST: Duration = Duration::from_millis(250);
pub const COURIER_RETRY_MAX: Duration = Duration::from_secs(4);
/// A probe without a reply by then is lost.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How far back "probes you sent me" are counted in an observation.
pub const OBSERVATION_WINDOW: Duration = Duration::from_secs(60);
/// After this many lost probes in a row the peer is asked, by courier, what it saw.
pub const ASK_AFTER_LOST: u32 = 2;
/// A connect that has not completed by then is a failure (the kernel would wait ~127 s).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// After our `</stream:stream>`, how long we wait for the peer's before closing anyway.
pub const STREAM_END_WAIT: Duration = Duration::from_secs(2);
/// A legacy peer's stream broke before it took a stanza: open another after this.
pub const LEGACY_RETRY: Duration = Duration::from_secs(1);

pub type ConnId = u64;

/// What the driver must do.
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
    /// Send a path probe (or its reply) by unicast UDP.
    Probe {
        addr: SocketAddr,
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
        /// The peer that carried it, when it came through a relay.
        relayed_by: Option<String>,
    },
    /// A stanza, frame or stream we would not take: a bad signature, a stream error, a stanza
    /// we cannot read. Counted in [`Messages::stats`] by `reason`, so the driver can log it
    /// (rate-limited) without losing count.
    Dropped {
        from: String,
        reason: &'static str,
        detail: String,
    },
}

/// A peer as presence announced it.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub id: String,
    pub key: [u8; 32],
    pub instance: String,
    pub addr: SocketAddr,
    /// Where its path probes go (TXT `probe`), if it announced one.
    pub probe_addr: Option<SocketAddr>,
    /// A plain XEP-0174 client (no `nbhd=1`): no stream authentication (its source address is
    /// checked instead), no courier, no relay, and no receipts to count on.
    pub legacy: bool,
}

/// Counters for `nbhd stats`: what the engine dropped, by reason.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub dropped: BTreeMap<&'static str, u64>,
}

struct Conn {
    peer: Option<String>,
    parser: StreamParser,
    /// Our stream header went out (so an end may follow it).
    header_sent: bool,
    /// We sent `</stream:stream>` at this time and wait for the peer's (RFC 6120 §4.4).
    ending: Option<Instant>,
    outgoing: bool,
    our_nonce: [u8; 16],
    authenticated: bool,
    /// Stanzas waiting for authentication.
    queue: Vec<Vec<u8>>,
    /// The remote address (accepted streams), to check legacy peers by.
    remote: Option<SocketAddr>,
    opened: Instant,
}

struct Delivery {
    peer: String,
    stanza: Element,
    started: Instant,
    deadline: Instant,
    courier_at: Option<Instant>,
    courier_retry: Duration,
    frame_id: u64,
    /// The stream it was written to, if it went by TCP.
    tcp_conn: Option<ConnId>,
    /// When to hand it to a relay, and whether that was done.
    relay_at: Option<Instant>,
    relayed: bool,
    /// A legacy peer's stream broke before it took the stanza: when to open another.
    legacy_retry_at: Option<Instant>,
}

pub struct Messages {
    me: Identity,
    my_instance: String,
    peers: BTreeMap<String, PeerInfo>,
    conns: BTreeMap<ConnId, Conn>,
    next_conn: ConnId,
    deliveries: BTreeMap<String, Delivery>,
    seen: HashSet<(String, String)>,
    pub paths: Paths,
    /// Probes sent, by sequence: (peer, when).
    probes_out: BTreeMap<u64, (String, Instant)>,
    /// When each peer's probes reached us.
    probes_in: BTreeMap<String, Vec<Instant>>,
    /// When we last asked each peer for its observations.
    asked: BTreeMap<String, Instant>,
    /// When we last probed each peer.
    probed: BTreeMap<String, Instant>,
    actions: VecDeque<Action>,
    events: VecDeque<Event>,
    rng: SmallRng,
    /// While handling a relayed stanza: who relayed it.
    relayed_by: Option<String>,
    stats: Stats,
}

impl Messages {
    pub fn new(me: Identity, my_instance: &str, seed: u64) -> Messages {
        Messages {
            me,
            my_instance: my_instance.to_string(),
            peers: BTreeMap::new(),
            conns: BTreeMap::new(),
            next_conn: 1,
            deliveries: BTreeMap::new(),
            seen: HashSet::new(),
            paths: Paths::new(seed ^ 0x5a5a),
            probes_out: BTreeMap::new(),
            probes_in: BTreeMap::new(),
            asked: BTreeMap::new(),
            probed: BTreeMap::new(),
            actions: VecDeque::new(),
            events: VecDeque::new(),
            rng: SmallRng::seed_from_u64(seed),
            relayed_by: None,
            stats: Stats::default(),
        }
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Counts and reports something we would not take.
    fn drop_input(&mut self, from: &str, reason: &'static str, detail: String) {
        *self.stats.dropped.entry(reason).or_default() += 1;
        self.events.push_back(Event::Dropped {
            from: from.to_string(),
            reason,
            detail,
        });
    }

    pub fn set_peer(&mut self, p: PeerInfo) {
        self.peers.insert(p.id.clone(), p);
    }

    /// A (sender, stanza id) already received before a restart: not shown again.
    pub fn mark_seen(&mut self, sender: &str, id: &str) {
        self.seen.insert((sender.to_string(), id.to_string()));
    }

    pub fn remove_peer(&mut self, id: &str) {
        self.peers.remove(id);
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn new_id(&mut self) -> String {
        format!("{:016x}", self.rng.gen::<u64>())
    }

    /// Sends a chat message; its id, or None if the peer is unknown.
    pub fn send(
        &mut self,
        now: Instant,
        peer: &str,
        body: &str,
        timeout: Duration,
    ) -> Option<String> {
        let id = self.new_id();
        let s = Stanza::Chat {
            id: Some(id.clone()),
            body: body.to_string(),
            receipt_requested: true,
        };
        self.start(now, peer, &id, s, timeout).then_some(id)
    }

    /// Sends a signed invitation.
    pub fn invite(
        &mut self,
        now: Instant,
        peer: &str,
        activity: Activity,
        reason: &str,
        timeout: Duration,
    ) -> Option<String> {
        let key = self.peers.get(peer)?.key;
        let id = self.new_id();
        let sig = stanza::sign_invitation(&self.me, &key, &id, &activity, reason);
        let s = Stanza::Invitation {
            id: id.clone(),
            activity,
            reason: reason.to_string(),
            signature: Some(sig),
        };
        self.start(now, peer, &id, s, timeout).then_some(id)
    }

    fn start(&mut self, now: Instant, peer: &str, id: &str, s: Stanza, timeout: Duration) -> bool {
        let Some(info) = self.peers.get(peer).cloned() else {
            return false;
        };
        let element = s.to_element(&self.my_instance, &info.instance);
        let (first, courier_after) = self.paths.plan(now, peer);
        self.paths.want(now, peer, now + timeout);
        let mut d = Delivery {
            peer: peer.to_string(),
            stanza: element,
            started: now,
            deadline: now + timeout,
            courier_at: None,
            courier_retry: COURIER_RETRY_FIRST,
            frame_id: self.rng.gen(),
            tcp_conn: None,
            relay_at: None,
            relayed: false,
            legacy_retry_at: None,
        };
        if info.legacy {
            // Its one stream, whoever opened it; no courier, relay or receipt (DESIGN.md §4.2).
            let (conn, sent) = self.send_on_stream(now, &info, d.stanza.to_stanza_bytes());
            d.tcp_conn = Some(conn);
            self.deliveries.insert(id.to_string(), d);
            if sent {
                self.legacy_delivered(now, conn);
            }
            return true;
        }
        match first {
            Via::Tcp => {
                d.courier_at = courier_after.map(|a| now + a);
                let bytes = d.stanza.to_stanza_bytes();
                d.tcp_conn = Some(self.send_on_stream(now, &info, bytes).0);
                self.deliveries.insert(id.to_string(), d);
            }
            Via::Courier | Via::Relay => {
                d.courier_at = Some(now);
                if first == Via::Relay {
                    d.relay_at = Some(now);
                }
                self.deliveries.insert(id.to_string(), d);
                self.drive_courier(now);
            }
        }
        true
    }

    /// Writes to the peer's stream, opening one if needed: the stream's id, and whether the
    /// bytes went out now (false: queued until the stream is open). To an nbhd peer, on our own
    /// outgoing stream, whose opening is our evidence that unicast works; to a legacy peer, on
    /// its one stream whoever opened it (Pidgin keeps one per buddy and drops the older when a
    /// second arrives, so replying on a new connection would cut the one it uses).
    fn send_on_stream(&mut self, now: Instant, info: &PeerInfo, bytes: Vec<u8>) -> (ConnId, bool) {
        let usable = |c: &Conn| {
            c.ending.is_none() && c.peer.as_deref() == Some(&info.id) && (c.outgoing || info.legacy)
        };
        let open = self
            .conns
            .iter()
            .find(|(_, c)| usable(c) && c.authenticated)
            .map(|(id, _)| *id);
        let pending = self
            .conns
            .iter()
            .find(|(_, c)| usable(c) && c.outgoing)
            .map(|(id, _)| *id);
        match (open, pending) {
            (Some(conn), _) => {
                self.actions.push_back(Action::Send { conn, bytes });
                (conn, true)
            }
            (None, Some(conn)) => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.queue.push(bytes);
                }
                (conn, false)
            }
            (None, None) => {
                let conn = self.next_conn;
                self.next_conn += 1;
                let nonce: [u8; 16] = self.rng.gen();
                self.conns.insert(
                    conn,
                    Conn {
                        peer: Some(info.id.clone()),
                        parser: StreamParser::new(),
                        header_sent: false,
                        ending: None,
                        outgoing: true,
                        our_nonce: nonce,
                        authenticated: false,
                        queue: vec![bytes],
                        opened: now,
                        remote: Some(info.addr),
                    },
                );
                self.actions.push_back(Action::Connect {
                    conn,
                    addr: info.addr,
                });
                (conn, false)
            }
        }
    }

    /// The driver's connect completed.
    pub fn handle_connected(&mut self, now: Instant, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.header_sent = true;
        let peer = c.peer.clone().unwrap_or_default();
        let nonce = c.our_nonce;
        let to = self
            .peers
            .get(&peer)
            .map(|p| p.instance.clone())
            .unwrap_or_default();
        let mut bytes = xml::stream_header(&self.my_instance, &to);
        if !self.peers.get(&peer).is_some_and(|p| p.legacy) {
            bytes.extend(self.auth_element(&nonce).to_stanza_bytes());
        }
        self.actions.push_back(Action::Send { conn, bytes });
        let _ = now;
    }

    /// The driver accepted an incoming connection.
    pub fn handle_accepted(&mut self, now: Instant, conn: ConnId, remote: SocketAddr) {
        let nonce: [u8; 16] = self.rng.gen();
        self.conns.insert(
            conn,
            Conn {
                peer: None,
                parser: StreamParser::new(),
                header_sent: false,
                ending: None,
                outgoing: false,
                our_nonce: nonce,
                authenticated: false,
                queue: Vec::new(),
                opened: now,
                remote: Some(remote),
            },
        );
    }

    /// Accepted connections are numbered by the driver from this value up, ours below it.
    pub const ACCEPTED_BASE: ConnId = 1 << 40;

    fn auth_element(&self, nonce: &[u8; 16]) -> Element {
        Element::new(NS_AUTH, "auth")
            .attr("key", &URL_SAFE_NO_PAD.encode(self.me.public()))
            .attr("nonce", &URL_SAFE_NO_PAD.encode(nonce))
    }

    /// A connect failed or timed out, or an established stream broke.
    pub fn handle_closed(&mut self, now: Instant, conn: ConnId, failed: bool) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        if let Some(peer) = c.peer {
            if self.peers.get(&peer).is_some_and(|p| p.legacy) {
                self.legacy_stream_lost(now, conn);
                if failed || !c.authenticated {
                    self.paths.on_tcp_failed(now, &peer);
                }
                return;
            }
            if failed || !c.authenticated {
                self.paths.on_tcp_failed(now, &peer);
                // Whatever waited for this stream goes by courier at once.
                for d in self.deliveries.values_mut().filter(|d| d.peer == peer) {
                    d.courier_at = Some(d.courier_at.map_or(now, |t| t.min(now)));
                }
                self.drive_courier(now);
            }
        }
    }

    /// Bytes from a stream.
    pub fn handle_data(&mut self, now: Instant, conn: ConnId, bytes: &[u8]) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if let Err(e) = c.parser.feed(bytes) {
            self.stream_error(conn, e);
            return;
        }
        let mut evs = Vec::new();
        while let Some(ev) = c.parser.poll_event() {
            evs.push(ev);
        }
        for ev in evs {
            match ev {
                StreamEvent::Header(attrs) => self.on_header(now, conn, &attrs),
                StreamEvent::Stanza(e) => self.on_stream_stanza(now, conn, e),
                StreamEvent::End => {
                    // RFC 6120 §4.4: answered with our own end (unless we ended first), then
                    // the close.
                    self.end_stream(now, conn);
                    if self.conns.remove(&conn).is_some() {
                        self.actions.push_back(Action::Close { conn });
                    }
                    return;
                }
            }
            if !self.conns.contains_key(&conn) {
                return;
            }
        }
    }

    /// The peer's stream header. Legacy peers are known by the instance they claim and the
    /// address they connect from (DESIGN.md §4.2); nbhd peers authenticate next.
    fn on_header(&mut self, now: Instant, conn: ConnId, attrs: &[(String, String)]) {
        let from = attrs
            .iter()
            .find(|(k, _)| k == "from")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let c = self.conns.get(&conn).expect("present");
        let (outgoing, remote, nonce) = (c.outgoing, c.remote, c.our_nonce);
        let legacy = self
            .peers
            .values()
            .find(|p| p.legacy && p.instance == from)
            .cloned();
        if outgoing {
            // A legacy peer's answering header opens the stream: no authentication to wait for.
            let peer = c.peer.clone().unwrap_or_default();
            if self.peers.get(&peer).is_some_and(|p| p.legacy) {
                let c = self.conns.get_mut(&conn).expect("present");
                c.authenticated = true;
                let queued = std::mem::take(&mut c.queue);
                self.paths.on_tcp_ok(now, &peer, None);
                for bytes in queued {
                    self.actions.push_back(Action::Send { conn, bytes });
                }
                self.legacy_delivered(now, conn);
            }
            return;
        }
        match legacy {
            Some(p) if remote.is_some_and(|r| r.ip() == p.addr.ip()) => {
                let c = self.conns.get_mut(&conn).expect("present");
                c.peer = Some(p.id.clone());
                c.authenticated = true;
                c.header_sent = true;
                let out = xml::stream_header(&self.my_instance, &from);
                self.actions.push_back(Action::Send { conn, bytes: out });
                // Its handshake reached us and ours it: TCP works both ways.
                self.paths.on_tcp_ok(now, &p.id, None);
                // One stream per legacy peer, the newest, as Pidgin keeps it: what waited on
                // an older one moves here.
                let older: Vec<ConnId> = self
                    .conns
                    .iter()
                    .filter(|(id, c)| **id != conn && c.peer.as_deref() == Some(&p.id))
                    .map(|(id, _)| *id)
                    .collect();
                for old in older {
                    let queued = self
                        .conns
                        .get_mut(&old)
                        .map(|c| std::mem::take(&mut c.queue))
                        .unwrap_or_default();
                    for bytes in queued {
                        self.actions.push_back(Action::Send { conn, bytes });
                    }
                    for d in self.deliveries.values_mut() {
                        if d.tcp_conn == Some(old) {
                            d.tcp_conn = Some(conn);
                        }
                    }
                    self.end_stream(now, old);
                }
                self.legacy_delivered(now, conn);
            }
            Some(_) => self.stream_error(
                conn,
                StreamError::PolicyViolation(format!("{from} does not connect from its address")),
            ),
            None => {
                // An nbhd peer (or a stranger): our header and nonce, then authentication.
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.header_sent = true;
                }
                let mut out = xml::stream_header(&self.my_instance, &from);
                out.extend(self.auth_element(&nonce).to_stanza_bytes());
                self.actions.push_back(Action::Send { conn, bytes: out });
            }
        }
    }

    /// Legacy clients send no receipts: a stanza the open stream took is as delivered as it
    /// gets (XEP-0174 has nothing more).
    fn legacy_delivered(&mut self, now: Instant, conn: ConnId) {
        let done: Vec<String> = self
            .deliveries
            .iter()
            .filter(|(_, d)| d.tcp_conn == Some(conn))
            .map(|(id, _)| id.clone())
            .collect();
        for id in done {
            let d = self.deliveries.remove(&id).expect("listed");
            self.events.push_back(Event::Delivered {
                id,
                peer: d.peer,
                via: Via::Tcp,
                latency: now - d.started,
                receipt: false,
            });
        }
    }

    /// A legacy peer's stream is gone before it took what waited on it: try a new stream in a
    /// moment, until the delivery's deadline.
    fn legacy_stream_lost(&mut self, now: Instant, conn: ConnId) {
        for d in self.deliveries.values_mut() {
            if d.tcp_conn == Some(conn) {
                d.tcp_conn = None;
                d.legacy_retry_at = Some(now + LEGACY_RETRY);
            }
        }
    }

    fn drive_legacy_retries(&mut self, now: Instant) {
        let due: Vec<String> = self
            .deliveries
            .iter()
            .filter(|(_, d)| d.legacy_retry_at.is_some_and(|t| t <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            let d = self.deliveries.get_mut(&id).expect("listed");
            d.legacy_retry_at = None;
            let (peer, bytes) = (d.peer.clone(), d.stanza.to_stanza_bytes());
            let Some(info) = self.peers.get(&peer).cloned() else {
                continue;
            };
            let (conn, sent) = self.send_on_stream(now, &info, bytes);
            if let Some(d) = self.deliveries.get_mut(&id) {
                d.tcp_conn = Some(conn);
            }
            if sent {
                self.legacy_delivered(now, conn);
            }
        }
    }

    /// Ends a stream as RFC 6120 §4.4 says: `</stream:stream>`, then nothing more from us
    /// until the peer's own end (or its close, or [`STREAM_END_WAIT`]), and only then the
    /// TCP close. Closing at once makes libpurple log "closed without stream end": our FIN
    /// overtakes its reading of our end tag.
    fn end_stream(&mut self, now: Instant, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.ending.is_some() {
            return;
        }
        let peer = c.peer.clone();
        if c.header_sent {
            c.ending = Some(now);
            self.actions.push_back(Action::Send {
                conn,
                bytes: xml::STREAM_END.to_vec(),
            });
        } else {
            self.conns.remove(&conn);
            self.actions.push_back(Action::Close { conn });
        }
        if peer.is_some_and(|p| self.peers.get(&p).is_some_and(|p| p.legacy)) {
            self.legacy_stream_lost(now, conn);
        }
    }

    /// Shutting down: every stream ends with `</stream:stream>`, so no peer sees a reset. The
    /// driver keeps feeding stream input until [`Messages::has_streams`] says none is left (or
    /// its own patience ends).
    pub fn close(&mut self, now: Instant) {
        let conns: Vec<ConnId> = self.conns.keys().copied().collect();
        for conn in conns {
            self.end_stream(now, conn);
        }
    }

    /// True while some stream is open or ending.
    pub fn has_streams(&self) -> bool {
        !self.conns.is_empty()
    }

    fn stream_error(&mut self, conn: ConnId, e: StreamError) {
        let from = self
            .conns
            .get(&conn)
            .and_then(|c| c.peer.clone().or_else(|| c.remote.map(|r| r.to_string())))
            .unwrap_or_else(|| "unknown peer".into());
        self.drop_input(&from, "stream-error", e.to_string());
        self.actions.push_back(Action::Send {
            conn,
            bytes: e.to_bytes(),
        });
        self.actions.push_back(Action::Close { conn });
        self.conns.remove(&conn);
    }

    fn on_stream_stanza(&mut self, now: Instant, conn: ConnId, e: Element) {
        if e.ns == NS_AUTH {
            self.on_auth(now, conn, e);
            return;
        }
        let (authenticated, peer) = {
            let c = &self.conns[&conn];
            (c.authenticated, c.peer.clone())
        };
        let Some(peer) = peer.filter(|_| authenticated) else {
            self.stream_error(
                conn,
                StreamError::PolicyViolation("stanza before authentication".into()),
            );
            return;
        };
        if let Some(r) = e.get_child(NS_RELAY, "relay") {
            self.forward_for(now, &peer, r);
            return;
        }
        if let Some(r) = e.get_child(NS_RELAY, "relayed") {
            let origin = r.get_attr("from").unwrap_or("").to_string();
            let inner = r.get_child(NS_FORWARD, "forwarded").and_then(|f| {
                f.children.iter().find_map(|c| match c {
                    xml::Node::Element(e) => Some(e.clone()),
                    _ => None,
                })
            });
            if let (true, Some(inner)) = (self.peers.contains_key(&origin), inner) {
                self.on_stanza_relayed(now, &origin, inner, &peer);
            }
            return;
        }
        self.on_stanza(now, &peer, e, Via::Tcp, Some(conn));
    }

    /// We relay: `from` asked us to carry a stanza to another peer over our own stream.
    fn forward_for(&mut self, now: Instant, from: &str, request: &Element) {
        let to = request.get_attr("to").unwrap_or("");
        // Never to a legacy peer: it could not tell a relayed stanza from ours.
        let Some(target) = self
            .peers
            .get(to)
            .cloned()
            .filter(|t| t.id != from && !t.legacy)
        else {
            return;
        };
        let Some(inner) = request.get_child(NS_FORWARD, "forwarded") else {
            return;
        };
        let wrapped = Element::new(xml::NS_CLIENT, "message")
            .attr("type", "normal")
            .attr("from", &self.my_instance)
            .attr("to", &target.instance)
            .child(
                Element::new(NS_RELAY, "relayed")
                    .attr("from", from)
                    .child(inner.clone()),
            );
        self.send_on_stream(now, &target, wrapped.to_stanza_bytes());
    }

    /// Asks `relay` to carry `stanza` to `to`.
    fn relay_via(&mut self, now: Instant, relay: &str, to: &str, stanza: &Element) {
        let Some(info) = self.peers.get(relay).cloned() else {
            return;
        };
        let id = self.new_id();
        let request = Element::new(xml::NS_CLIENT, "message")
            .attr("type", "normal")
            .attr("id", &id)
            .attr("from", &self.my_instance)
            .attr("to", &info.instance)
            .child(
                Element::new(NS_RELAY, "relay")
                    .attr("to", to)
                    .child(Element::new(NS_FORWARD, "forwarded").child(stanza.clone())),
            );
        self.send_on_stream(now, &info, request.to_stanza_bytes());
    }

    /// A stanza from `origin` that `relayer` carried: only what `origin` signed is believed.
    fn on_stanza_relayed(&mut self, now: Instant, origin: &str, e: Element, relayer: &str) {
        match Stanza::from_element(&e) {
            Ok(Stanza::Receipt { of }) => self.on_receipt(now, origin, &of, Via::Relay),
            Ok(Stanza::Invitation { .. }) => {
                self.relayed_by = Some(relayer.to_string());
                self.on_stanza(now, origin, e, Via::Relay, None);
                self.relayed_by = None;
            }
            Ok(Stanza::Chat { .. }) => self.drop_input(
                origin,
                "relayed-chat",
                format!("unsigned chat relayed by {relayer}: a relay could have forged it"),
            ),
            Ok(Stanza::Typing) => {}
            Err(e) => self.drop_input(origin, "malformed-stanza", format!("relayed: {e:?}")),
        }
    }

    /// Hands deliveries that neither TCP nor the courier carried in time to a relay: a peer
    /// whose TCP path works, which forwards over its own stream (DESIGN.md §4.3).
    fn drive_relay(&mut self, now: Instant) {
        let due: Vec<String> = self
            .deliveries
            .iter()
            .filter(|(_, d)| !d.relayed && d.relay_at.is_some_and(|t| t <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            let d = self.deliveries.get_mut(&id).expect("listed");
            d.relayed = true;
            let (target, stanza) = (d.peer.clone(), d.stanza.clone());
            let mut candidates: Vec<&String> = self
                .peers
                .values()
                .filter(|p| p.id != target && !p.legacy)
                .map(|p| &p.id)
                .collect();
            // Peers whose TCP path is known to work first.
            candidates.sort_by_key(|p| self.paths.state(now, p) != crate::paths::PathState::Up);
            if let Some(relay) = candidates.first().map(|p| p.to_string()) {
                self.relay_via(now, &relay, &target, &stanza);
            }
        }
    }

    fn on_auth(&mut self, now: Instant, conn: ConnId, e: Element) {
        match e.name.as_str() {
            "auth" => {
                let key = e
                    .get_attr("key")
                    .and_then(|k| URL_SAFE_NO_PAD.decode(k).ok())
                    .and_then(|k| <[u8; 32]>::try_from(k).ok());
                let nonce = e
                    .get_attr("nonce")
                    .and_then(|n| URL_SAFE_NO_PAD.decode(n).ok());
                let (Some(key), Some(nonce)) = (key, nonce) else {
                    self.stream_error(conn, StreamError::NotWellFormed("bad auth element".into()));
                    return;
                };
                // The key must be one presence announced; for our own connects, the one we meant.
                let Some(peer) = self
                    .peers
                    .values()
                    .find(|p| p.key == key)
                    .map(|p| p.id.clone())
                else {
                    self.stream_error(conn, StreamError::PolicyViolation("unknown key".into()));
                    return;
                };
                let c = self.conns.get_mut(&conn).expect("present");
                if c.peer.as_ref().is_some_and(|p| *p != peer) {
                    self.stream_error(
                        conn,
                        StreamError::PolicyViolation("key of another peer".into()),
                    );
                    return;
                }
                c.peer = Some(peer);
                let mut msg = AUTH_DOMAIN.to_vec();
                msg.extend_from_slice(&nonce);
                msg.extend_from_slice(&key);
                msg.extend_from_slice(&self.me.public());
                let sig = URL_SAFE_NO_PAD.encode(self.me.sign(&msg).to_bytes());
                let proof = Element::new(NS_AUTH, "proof").attr("sig", &sig);
                self.actions.push_back(Action::Send {
                    conn,
                    bytes: proof.to_stanza_bytes(),
                });
            }
            "proof" => {
                let c = &self.conns[&conn];
                let Some(peer) = c.peer.clone() else {
                    self.stream_error(
                        conn,
                        StreamError::PolicyViolation("proof before auth".into()),
                    );
                    return;
                };
                let Some(key) = self.peers.get(&peer).map(|p| p.key) else {
                    return;
                };
                let mut msg = AUTH_DOMAIN.to_vec();
                msg.extend_from_slice(&c.our_nonce);
                msg.extend_from_slice(&self.me.public());
                msg.extend_from_slice(&key);
                let ok = e
                    .get_attr("sig")
                    .and_then(|s| URL_SAFE_NO_PAD.decode(s).ok())
                    .and_then(|s| Signature::from_slice(&s).ok())
                    .is_some_and(|sig| identity::verify_key(&key, &msg, &sig));
                if !ok {
                    self.stream_error(
                        conn,
                        StreamError::PolicyViolation("authentication failed".into()),
                    );
                    return;
                }
                let c = self.conns.get_mut(&conn).expect("present");
                c.authenticated = true;
                let rtt = now.saturating_duration_since(c.opened);
                let queued: Vec<Vec<u8>> = std::mem::take(&mut c.queue);
                if c.outgoing {
                    self.paths.on_tcp_ok(now, &peer, Some(rtt));
                }
                for bytes in queued {
                    self.actions.push_back(Action::Send { conn, bytes });
                }
            }
            _ => {}
        }
    }

    /// A stanza from an authenticated peer, by TCP or courier.
    fn on_stanza(&mut self, now: Instant, peer: &str, e: Element, via: Via, conn: Option<ConnId>) {
        // XEP-0184 §5: a receipt answers only a stanza that asked for one (legacy clients
        // never ask, and would not know what to do with the answer).
        let wants_receipt = e.get_child(stanza::NS_RECEIPTS, "request").is_some();
        let s = match Stanza::from_element(&e) {
            Ok(s) => s,
            Err(StanzaError::Unsupported(what)) => {
                return self.drop_input(peer, "unsupported-stanza", what)
            }
            Err(StanzaError::Malformed(why)) => {
                return self.drop_input(peer, "malformed-stanza", why.to_string())
            }
        };
        match s {
            Stanza::Receipt { of } => self.on_receipt(now, peer, &of, via),
            Stanza::Typing => {}
            Stanza::Chat { id, body, .. } => {
                let legacy = self.peers.get(peer).is_some_and(|p| p.legacy);
                let id = match id {
                    Some(id) => id,
                    // libpurple sets no id. The message is still one a person typed: a local id
                    // names it (random, not a hash of the text: the same words twice are two
                    // messages). nbhd peers always set one, and their receipts need it.
                    None if legacy => format!("local-{}", self.new_id()),
                    None => {
                        return self.drop_input(
                            peer,
                            "chat-without-id",
                            "an nbhd peer's chat message carries no id".into(),
                        )
                    }
                };
                if wants_receipt {
                    self.send_receipt(now, peer, &id, via, conn);
                }
                if self.seen.insert((peer.to_string(), id.clone())) {
                    self.events.push_back(Event::Message {
                        from: peer.to_string(),
                        id,
                        body,
                        via,
                    });
                }
            }
            Stanza::Invitation {
                id,
                activity,
                reason,
                signature,
            } => {
                let key = self.peers.get(peer).map(|p| p.key);
                let valid = match (key, signature) {
                    (Some(k), Some(sig)) => stanza::verify_invitation(
                        &k,
                        &self.me.public(),
                        &id,
                        &activity,
                        &reason,
                        &sig,
                    ),
                    _ => false,
                };
                if !valid {
                    return self.drop_input(
                        peer,
                        "bad-signature",
                        "invitation unsigned or badly signed".into(),
                    );
                }
                if wants_receipt {
                    self.send_receipt(now, peer, &id, via, conn);
                }
                if self.seen.insert((peer.to_string(), id.clone())) {
                    self.events.push_back(Event::Invitation {
                        from: peer.to_string(),
                        id,
                        activity,
                        reason,
                        via,
                        relayed_by: self.relayed_by.clone(),
                    });
                }
            }
        }
    }

    fn send_receipt(&mut self, now: Instant, peer: &str, id: &str, via: Via, conn: Option<ConnId>) {
        let Some(info) = self.peers.get(peer).cloned() else {
            return;
        };
        let receipt =
            Stanza::Receipt { of: id.to_string() }.to_element(&self.my_instance, &info.instance);
        match (via, conn) {
            (Via::Tcp, Some(conn)) => self.actions.push_back(Action::Send {
                conn,
                bytes: receipt.to_stanza_bytes(),
            }),
            (Via::Relay, _) => {
                // Back the way it came: through the relay.
                if let Some(relay) = self.relayed_by.clone() {
                    self.relay_via(now, &relay, peer, &receipt);
                }
            }
            _ => {
                let frame_id = self.rng.gen();
                self.courier_frame(
                    Kind::CourierReceipt,
                    &info.key,
                    frame_id,
                    receipt.to_stanza_bytes(),
                )
            }
        }
    }

    fn on_receipt(&mut self, now: Instant, peer: &str, of: &str, via: Via) {
        let Some(d) = self.deliveries.get(of) else {
            return;
        };
        if d.peer != peer {
            return; // a receipt is bound to (stanza id, sender, recipient)
        }
        let d = self.deliveries.remove(of).expect("present");
        match via {
            Via::Tcp => self.paths.on_tcp_ok(now, peer, None),
            Via::Relay => self.paths.on_relay_only(now, peer),
            _ => {
                self.paths.on_courier_receipt(now, peer);
                // It was written to a stream that did not deliver it: a stream that stops
                // acknowledging is a failure too (DESIGN.md §4.3). Drop it; the next delivery
                // connects afresh, and that tells the truth about unicast.
                if let Some(conn) = d
                    .tcp_conn
                    .filter(|c| self.conns.get(c).is_some_and(|c| c.authenticated))
                {
                    self.actions.push_back(Action::Close { conn });
                    self.handle_closed(now, conn, true);
                }
            }
        }
        self.events.push_back(Event::Delivered {
            id: of.to_string(),
            peer: peer.to_string(),
            via,
            latency: now - d.started,
            receipt: true,
        });
    }

    fn courier_frame(&mut self, kind: Kind, to: &[u8; 32], id: u64, payload: Vec<u8>) {
        let repr = frame::Repr {
            kind,
            sender: self.me.public(),
            recipient: *to,
            id,
            payload,
        };
        if let Ok(bytes) = repr.emit(&self.me) {
            self.actions.push_back(Action::Courier { bytes });
        }
    }

    /// A datagram from the neighborhood channel.
    pub fn handle_courier(&mut self, now: Instant, bytes: &[u8]) -> Result<(), frame::Error> {
        let f = frame::Repr::parse(bytes).inspect_err(|e| {
            self.drop_input("courier channel", "bad-frame", e.to_string());
        })?;
        if f.recipient != self.me.public() || f.sender == self.me.public() {
            return Ok(()); // for someone else, or our own echo
        }
        let Some(peer) = self
            .peers
            .values()
            .find(|p| p.key == f.sender)
            .map(|p| p.id.clone())
        else {
            return Ok(()); // a stranger: presence has not told us of it yet
        };
        self.paths.on_multicast_heard(now, &peer);
        if f.kind == Kind::Observation {
            self.on_observation(now, &peer, &f.payload);
            return Ok(());
        }
        if !matches!(f.kind, Kind::Courier | Kind::CourierReceipt) {
            return Ok(());
        }
        let mut p = StreamParser::new();
        let mut wrapped = xml::stream_header("", "");
        wrapped.extend_from_slice(&f.payload);
        if p.feed(&wrapped).is_err() {
            self.drop_input(
                &peer,
                "malformed-stanza",
                "courier payload is not a stanza".into(),
            );
            return Err(frame::Error::Malformed("courier payload is not a stanza"));
        }
        while let Some(ev) = p.poll_event() {
            if let StreamEvent::Stanza(e) = ev {
                self.on_stanza(now, &peer, e, Via::Courier, None);
            }
        }
        Ok(())
    }

    // ---- path probes and observations (DESIGN.md §4.3) ----

    fn send_probe(&mut self, now: Instant, peer: &str) {
        let Some((key, addr)) = self
            .peers
            .get(peer)
            .and_then(|p| p.probe_addr.map(|a| (p.key, a)))
        else {
            return;
        };
        let seq: u64 = self.rng.gen();
        let repr = frame::Repr {
            kind: Kind::Probe,
            sender: self.me.public(),
            recipient: key,
            id: seq,
            payload: Vec::new(),
        };
        if let Ok(bytes) = repr.emit(&self.me) {
            self.probes_out.insert(seq, (peer.to_string(), now));
            self.probed.insert(peer.to_string(), now);
            self.actions.push_back(Action::Probe { addr, bytes });
        }
    }

    /// A datagram on our probe port.
    pub fn handle_probe(
        &mut self,
        now: Instant,
        src: SocketAddr,
        bytes: &[u8],
    ) -> Result<(), frame::Error> {
        let f = frame::Repr::parse(bytes).inspect_err(|e| {
            self.drop_input(&src.to_string(), "bad-frame", e.to_string());
        })?;
        if f.recipient != self.me.public() {
            return Ok(());
        }
        let Some(peer) = self
            .peers
            .values()
            .find(|p| p.key == f.sender)
            .map(|p| p.id.clone())
        else {
            return Ok(());
        };
        match f.kind {
            Kind::Probe => {
                self.paths.on_probe_received(now, &peer);
                let seen = self.probes_in.entry(peer).or_default();
                seen.retain(|t| now.saturating_duration_since(*t) < OBSERVATION_WINDOW);
                seen.push(now);
                let reply = frame::Repr {
                    kind: Kind::ProbeReply,
                    sender: self.me.public(),
                    recipient: f.sender,
                    id: f.id,
                    payload: Vec::new(),
                };
                if let Ok(bytes) = reply.emit(&self.me) {
                    self.actions.push_back(Action::Probe { addr: src, bytes });
                }
            }
            Kind::ProbeReply => {
                if let Some((p, sent)) = self.probes_out.remove(&f.id) {
                    if p == peer {
                        self.paths.on_probe_reply(now, &peer, now - sent);
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Observation payload: flags (bit 0: please answer), then u32 probes received from the
    /// recipient within [`OBSERVATION_WINDOW`].
    fn send_observation(&mut self, now: Instant, peer: &str, request: bool) {
        let Some(key) = self.peers.get(peer).map(|p| p.key) else {
            return;
        };
        let count = self.probes_in.get(peer).map_or(0, |v| {
            v.iter()
                .filter(|t| now.saturating_duration_since(**t) < OBSERVATION_WINDOW)
                .count()
        }) as u32;
        let mut payload = vec![u8::from(request)];
        payload.extend_from_slice(&count.to_be_bytes());
        let id = self.rng.gen();
        self.courier_frame(Kind::Observation, &key, id, payload);
    }

    fn on_observation(&mut self, now: Instant, peer: &str, payload: &[u8]) {
        let (Some(&flags), Some(count)) = (payload.first(), payload.get(1..5)) else {
            return;
        };
        let count = u32::from_be_bytes(count.try_into().expect("four bytes"));
        // Its count of our probes only means something if we probed it lately.
        let probed = self
            .probed
            .get(peer)
            .is_some_and(|t| now.saturating_duration_since(*t) < OBSERVATION_WINDOW);
        if probed {
            let o = crate::paths::Observation {
                our_unicast_arrives: Some(count > 0),
                our_multicast_arrives: Some(true),
            };
            self.paths.on_observation(now, peer, o);
        }
        if flags & 1 != 0 {
            // It asks: tell it what we saw, and probe it so it learns whether ours arrive.
            // Two probes, so that two lost ones let us ask it in turn.
            self.send_observation(now, peer, false);
            self.send_probe(now, peer);
            self.send_probe(now, peer);
        }
    }

    fn drive_probes(&mut self, now: Instant) {
        let lost: Vec<u64> = self
            .probes_out
            .iter()
            .filter(|(_, (_, t))| now.saturating_duration_since(*t) >= PROBE_TIMEOUT)
            .map(|(s, _)| *s)
            .collect();
        for seq in lost {
            let (peer, _) = self.probes_out.remove(&seq).expect("listed");
            self.paths.on_probe_lost(now, &peer);
            let ask = self.paths.unanswered_probes(&peer) >= ASK_AFTER_LOST
                && self
                    .asked
                    .get(&peer)
                    .is_none_or(|t| now.saturating_duration_since(*t) >= PROBE_TIMEOUT * 10);
            if ask {
                self.asked.insert(peer.clone(), now);
                self.send_observation(now, &peer, true);
            }
        }
        for peer in self.paths.due_probes(now) {
            self.send_probe(now, &peer);
        }
    }

    fn drive_courier(&mut self, now: Instant) {
        let due: Vec<String> = self
            .deliveries
            .iter()
            .filter(|(_, d)| d.courier_at.is_some_and(|t| t <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            let d = self.deliveries.get_mut(&id).expect("listed");
            let Some(key) = self.peers.get(&d.peer).map(|p| p.key) else {
                continue;
            };
            let payload = d.stanza.to_stanza_bytes();
            let frame_id = d.frame_id;
            d.relay_at.get_or_insert(now + RELAY_AFTER);
            d.courier_at = Some(now + d.courier_retry);
            d.courier_retry = (d.courier_retry * 2).min(COURIER_RETRY_MAX);
            self.courier_frame(Kind::Courier, &key, frame_id, payload);
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let d = self
            .deliveries
            .values()
            .flat_map(|d| {
                [
                    Some(d.deadline),
                    d.courier_at,
                    d.relay_at.filter(|_| !d.relayed),
                    d.legacy_retry_at,
                ]
            })
            .flatten()
            .min();
        let c = self
            .conns
            .values()
            .filter(|c| !c.authenticated && c.outgoing)
            .map(|c| c.opened + CONNECT_TIMEOUT)
            .min();
        let p = self
            .probes_out
            .values()
            .map(|(_, t)| *t + PROBE_TIMEOUT)
            .min();
        let e = self
            .conns
            .values()
            .filter_map(|c| c.ending.map(|t| t + STREAM_END_WAIT))
            .min();
        [d, c, p, e, self.paths.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let expired: Vec<String> = self
            .deliveries
            .iter()
            .filter(|(_, d)| d.deadline <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            let d = self.deliveries.remove(&id).expect("listed");
            self.events.push_back(Event::Failed { id, peer: d.peer });
        }
        let stalled: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.outgoing && !c.authenticated && c.opened + CONNECT_TIMEOUT <= now)
            .map(|(id, _)| *id)
            .collect();
        for conn in stalled {
            self.actions.push_back(Action::Close { conn });
            self.handle_closed(now, conn, true);
        }
        let unanswered: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.ending.is_some_and(|t| t + STREAM_END_WAIT <= now))
            .map(|(id, _)| *id)
            .collect();
        for conn in unanswered {
            self.conns.remove(&conn);
            self.actions.push_back(Action::Close { conn });
        }
        self.drive_courier(now);
        self.drive_relay(now);
        self.drive_probes(now);
        self.drive_legacy_retries(now);
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod engine_tests;
