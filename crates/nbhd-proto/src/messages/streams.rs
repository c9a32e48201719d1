//! XEP-0174 streams: opening them (one of ours per nbhd peer, one per legacy peer whoever opened
//! it), the secure channel right after the header, the legacy peers' plain streams, stream
//! errors, and ends (RFC 6120 §4.4: `</stream:stream>` answered in kind, the close after).
//!
//! Between nbhd peers, a Noise XX handshake ([`super::noise`]) follows the stream header, and
//! stanzas flow only inside it, encrypted, once the peer proved the key its presence announced
//! (ours when we connected to it; a known peer's when it connected to us). Nothing in clear is
//! taken from such a stream, so no reflection, relay or injection gives anyone a stream in
//! someone else's name. A legacy peer is known by the instance it claims and the address it
//! connects from (DESIGN.md §4.2), and its stream stays plain.
//!
//! What arrives on a stream is handed to [`super::delivery`]; nothing here decides a path.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::Rng;

use super::delivery::NS_RELAY;
use super::noise::{SecureChannel, Step, NS_NOISE};
use super::xml::{self, Element, StreamError, StreamEvent, StreamParser};
use super::{Action, ConnId, Messages, PeerInfo};
use crate::drops::DropReason;
use crate::paths::{Paths, Via};
/// A connect that has not completed by then is a failure (the kernel would wait ~127 s).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A stream whose sent data stays unacknowledged this long fails (the driver sets it as the
/// socket's `TCP_USER_TIMEOUT`; the kernel would retransmit for ~15 minutes).
pub const TCP_USER_TIMEOUT: Duration = Duration::from_secs(5);
/// A stream accepted from someone must be open (authenticated, or a legacy peer's header
/// answered) this soon: connections opened and left idle are closed.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Streams at once, in total ...
pub const MAX_STREAMS: usize = 256;
/// ... and accepted from one address (a peer needs one; a few more while one replaces another).
pub const MAX_STREAMS_PER_ADDRESS: usize = 8;
/// Bytes a stream may send before it is open: a header and an authentication stanza take a
/// few hundred; a stanza may take [`xml::MAX_STANZA`] only once we know who sends it, or 256
/// strangers could make us hold 256 MiB.
pub const MAX_UNOPENED_BYTES: usize = 16 * 1024;
/// After our `</stream:stream>`, how long we wait for the peer's before closing anyway.
pub const STREAM_END_WAIT: Duration = Duration::from_secs(2);

pub(super) struct Conn {
    pub(super) peer: Option<String>,
    parser: StreamParser,
    /// Our stream header went out (so an end may follow it).
    header_sent: bool,
    /// We sent `</stream:stream>` at this time and wait for the peer's (RFC 6120 §4.4).
    ending: Option<Instant>,
    pub(super) outgoing: bool,
    /// Between nbhd peers: the Noise channel, from the header on.
    secure: Option<SecureChannel>,
    /// Open: the secure channel's handshake ended, or a legacy peer's header came.
    pub(super) authenticated: bool,
    /// Stanzas waiting for the stream to open.
    queue: Vec<Vec<u8>>,
    /// Bytes received while not open (bounded by [`MAX_UNOPENED_BYTES`]).
    unopened_bytes: usize,
    /// The remote address, to check legacy peers by.
    remote: Option<SocketAddr>,
    opened: Instant,
}

impl Conn {
    /// Its secure channel is open: everything it carries is sealed.
    fn is_sealed(&self) -> bool {
        self.secure.as_ref().is_some_and(SecureChannel::is_open)
    }

    fn new(now: Instant, outgoing: bool, remote: SocketAddr) -> Conn {
        Conn {
            peer: None,
            parser: StreamParser::new(),
            header_sent: false,
            ending: None,
            outgoing,
            secure: None,
            authenticated: false,
            queue: Vec::new(),
            unopened_bytes: 0,
            remote: Some(remote),
            opened: now,
        }
    }
}

impl Messages {
    /// Writes to the peer's stream, opening one if needed: the stream's id, and whether the
    /// bytes went out now (false: queued until the stream is open). To an nbhd peer, on our own
    /// outgoing stream, whose opening is our evidence that unicast works; to a legacy peer, on
    /// its one stream whoever opened it (Pidgin keeps one per buddy and drops the older when a
    /// second arrives, so replying on a new connection would cut the one it uses).
    pub(super) fn send_on_stream(
        &mut self,
        now: Instant,
        info: &PeerInfo,
        bytes: Vec<u8>,
    ) -> (ConnId, bool) {
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
                self.send_stanzas(conn, bytes);
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
                let mut c = Conn::new(now, true, info.addr);
                c.peer = Some(info.id.clone());
                c.queue.push(bytes);
                self.conns.insert(conn, c);
                self.actions.push_back(Action::Connect {
                    conn,
                    addr: info.addr,
                });
                (conn, false)
            }
        }
    }

    /// The driver's connect completed: our header (and, to an nbhd peer, the handshake's
    /// first message).
    pub fn handle_connected(&mut self, _now: Instant, conn: ConnId) {
        let Some(peer) = self
            .conns
            .get(&conn)
            .map(|c| c.peer.clone().unwrap_or_default())
        else {
            // We gave up on it (a timeout, a newer legacy stream) before it connected.
            self.actions.push_back(Action::Close { conn });
            return;
        };
        let info = self.peers.get(&peer);
        let to = info.map(|p| p.instance.clone()).unwrap_or_default();
        let legacy = info.is_some_and(|p| p.legacy);
        let mut bytes = xml::stream_header(&self.my_instance, &to);
        let mut secure = None;
        if !legacy {
            let seed = self.rng.gen();
            match SecureChannel::initiator(&self.me, &self.my_instance, &to, seed) {
                Ok((channel, first)) => {
                    bytes.extend(first);
                    secure = Some(channel);
                }
                Err(e) => {
                    self.stream_error(conn, StreamError::PolicyViolation(e.to_string()));
                    return;
                }
            }
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.header_sent = true;
            c.secure = secure;
        }
        self.actions.push_back(Action::Send { conn, bytes });
    }

    /// Stanza bytes onto an open stream: inside the secure channel between nbhd peers, as
    /// they are to a legacy peer.
    pub(super) fn send_stanzas(&mut self, conn: ConnId, bytes: Vec<u8>) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let bytes = match &mut c.secure {
            Some(channel) => match channel.seal(&bytes) {
                Some(sealed) => sealed,
                // Not open yet: nothing of ours goes out in clear on an nbhd stream.
                None => return c.queue.push(bytes),
            },
            None => bytes,
        };
        self.actions.push_back(Action::Send { conn, bytes });
    }

    /// The driver accepted an incoming connection (ids from [`Messages::ACCEPTED_BASE`] up).
    pub fn handle_accepted(&mut self, now: Instant, conn: ConnId, remote: SocketAddr) {
        let from_there = self
            .conns
            .values()
            .filter(|c| !c.outgoing && c.remote.is_some_and(|r| r.ip() == remote.ip()))
            .count();
        if self.conns.len() >= MAX_STREAMS || from_there >= MAX_STREAMS_PER_ADDRESS {
            self.actions.push_back(Action::Close { conn });
            return self.drop_input(
                &remote.to_string(),
                DropReason::TableFull,
                format!(
                    "a stream over the limits ({MAX_STREAMS} in all, {MAX_STREAMS_PER_ADDRESS} from one address): closed"
                ),
            );
        }
        self.conns.insert(conn, Conn::new(now, false, remote));
    }

    /// A connect failed or timed out, or an established stream broke or ended.
    pub fn handle_closed(&mut self, now: Instant, conn: ConnId, failed: bool, paths: &mut Paths) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        let Some(peer) = c.peer else {
            return;
        };
        let legacy = self.peers.get(&peer).is_some_and(|p| p.legacy);
        if legacy {
            self.legacy_stream_lost(now, conn);
        }
        if (failed || !c.authenticated) && c.ending.is_none() {
            paths.on_tcp_failed(now, &peer);
            if !legacy {
                self.stream_lost(now, &peer, paths);
            }
        }
    }

    /// Bytes from a stream.
    pub fn handle_data(&mut self, now: Instant, conn: ConnId, bytes: &[u8], paths: &mut Paths) {
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
                StreamEvent::Header(attrs) => self.on_header(now, conn, &attrs, paths),
                StreamEvent::Stanza(e) => self.on_stream_stanza(now, conn, e, paths),
                StreamEvent::End if self.conns.get(&conn).is_some_and(Conn::is_sealed) => {
                    // An end in clear on an encrypted stream is not the peer's word: anyone
                    // on the path could have written it. The stream is broken, not ended.
                    self.actions.push_back(Action::Close { conn });
                    self.handle_closed(now, conn, true, paths);
                    return;
                }
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
        // Counted once the bytes are handled: a read that carries the stream's opening (the
        // authentication proof) and stanzas after it is an open stream's read.
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if !c.authenticated {
            c.unopened_bytes += bytes.len();
            if c.unopened_bytes > MAX_UNOPENED_BYTES {
                let e = StreamError::PolicyViolation(format!(
                    "more than {MAX_UNOPENED_BYTES} bytes before the stream opened"
                ));
                self.stream_error(conn, e);
            }
        }
    }

    /// The peer's stream header. Legacy peers are known by the instance they claim and the
    /// address they connect from (DESIGN.md §4.2); nbhd peers authenticate next.
    fn on_header(
        &mut self,
        now: Instant,
        conn: ConnId,
        attrs: &[(String, String)],
        paths: &mut Paths,
    ) {
        let from = attrs
            .iter()
            .find(|(k, _)| k == "from")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let (outgoing, remote, peer) = (c.outgoing, c.remote, c.peer.clone());
        if outgoing {
            // A legacy peer's answering header opens the stream: no authentication to wait for.
            let peer = peer.unwrap_or_default();
            if self.peers.get(&peer).is_some_and(|p| p.legacy) {
                self.open_stream(now, conn, &peer, paths);
                self.legacy_delivered(now, conn);
            }
            return;
        }
        let legacy = self
            .peers
            .values()
            .find(|p| p.legacy && p.instance == from)
            .cloned();
        match legacy {
            Some(p) if remote.is_some_and(|r| p.addrs.contains(&r.ip())) => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.peer = Some(p.id.clone());
                    c.header_sent = true;
                }
                let out = xml::stream_header(&self.my_instance, &from);
                self.actions.push_back(Action::Send { conn, bytes: out });
                self.open_stream(now, conn, &p.id, paths);
                self.replace_older_legacy_streams(now, conn, &p.id);
                self.legacy_delivered(now, conn);
            }
            Some(_) => self.stream_error(
                conn,
                StreamError::PolicyViolation(format!("{from} does not connect from its address")),
            ),
            None => {
                // An nbhd peer (or a stranger): our header, then the handshake it starts, bound
                // to its header's names.
                let to = attrs
                    .iter()
                    .find(|(k, _)| k == "to")
                    .map(|(_, v)| v.as_str())
                    .unwrap_or_default();
                let seed = self.rng.gen();
                let channel = match SecureChannel::responder(&self.me, &from, to, seed) {
                    Ok(channel) => channel,
                    Err(e) => {
                        return self.stream_error(conn, StreamError::PolicyViolation(e.to_string()))
                    }
                };
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.header_sent = true;
                    c.secure = Some(channel);
                }
                let out = xml::stream_header(&self.my_instance, &from);
                self.actions.push_back(Action::Send { conn, bytes: out });
            }
        }
    }

    /// The stream is open (authenticated, or a legacy peer's header came): what waited goes
    /// out, and a handshake we started (or a legacy peer's) is evidence that TCP works both ways.
    fn open_stream(&mut self, now: Instant, conn: ConnId, peer: &str, paths: &mut Paths) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.authenticated = true;
        let queued = std::mem::take(&mut c.queue);
        let rtt = c.outgoing.then(|| now.saturating_duration_since(c.opened));
        paths.on_tcp_ok(now, peer, rtt);
        for bytes in queued {
            self.send_stanzas(conn, bytes);
        }
    }

    /// One stream per legacy peer, the newest, as Pidgin keeps it: what waited on an older one
    /// moves to `conn`, and the older ends.
    fn replace_older_legacy_streams(&mut self, now: Instant, conn: ConnId, peer: &str) {
        let older: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(id, c)| **id != conn && c.peer.as_deref() == Some(peer))
            .map(|(id, _)| *id)
            .collect();
        for old in older {
            let queued = self
                .conns
                .get_mut(&old)
                .map(|c| std::mem::take(&mut c.queue))
                .unwrap_or_default();
            for bytes in queued {
                self.send_stanzas(conn, bytes);
            }
            self.move_deliveries(old, conn);
            self.end_stream(now, old);
        }
    }

    /// Ends a stream as RFC 6120 §4.4 says: `</stream:stream>`, then nothing more from us
    /// until the peer's own end (or its close, or [`STREAM_END_WAIT`]), and only then the
    /// TCP close. Closing at once makes libpurple log "closed without stream end": our FIN
    /// overtakes its reading of our end tag.
    pub(super) fn end_stream(&mut self, now: Instant, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.ending.is_some() {
            return;
        }
        let peer = c.peer.clone();
        if c.header_sent {
            c.ending = Some(now);
            // Inside the secure channel once it is open: only an end the peer sealed is its
            // word (one in clear could be anyone's).
            let bytes = c
                .secure
                .as_mut()
                .and_then(|s| s.seal(xml::STREAM_END))
                .unwrap_or_else(|| xml::STREAM_END.to_vec());
            self.actions.push_back(Action::Send { conn, bytes });
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

    /// Who is at the other end of `conn`, for the log: its peer id, else its address.
    fn conn_name(&self, conn: ConnId) -> String {
        self.conns
            .get(&conn)
            .and_then(|c| c.peer.clone().or_else(|| c.remote.map(|r| r.to_string())))
            .unwrap_or_else(|| "unknown peer".into())
    }

    /// Sends an RFC 6120 stream error and closes; counted and reported as a drop.
    pub(super) fn stream_error(&mut self, conn: ConnId, e: StreamError) {
        let from = self.conn_name(conn);
        self.drop_input(&from, DropReason::StreamError, e.to_string());
        self.actions.push_back(Action::Send {
            conn,
            bytes: e.to_bytes(),
        });
        self.actions.push_back(Action::Close { conn });
        self.conns.remove(&conn);
    }

    fn on_stream_stanza(&mut self, now: Instant, conn: ConnId, e: Element, paths: &mut Paths) {
        let secure = self.conns.get(&conn).is_some_and(|c| c.secure.is_some());
        if !secure {
            return self.on_open_stanza(now, conn, e, paths);
        }
        match (e.ns.as_str(), e.name.as_str()) {
            (NS_NOISE, "handshake") => self.on_handshake(now, conn, &e, paths),
            (NS_NOISE, "c") => self.on_sealed(now, conn, &e, paths),
            // The peer's stream error (ours to it failed its checks): its end follows.
            (xml::NS_STREAMS, "error") => {
                let from = self.conn_name(conn);
                let condition = e.children.iter().find_map(|c| match c {
                    xml::Node::Element(c) => Some(c.name.clone()),
                    _ => None,
                });
                self.drop_input(
                    &from,
                    DropReason::StreamError,
                    format!(
                        "the peer sent a stream error: {}",
                        condition.unwrap_or_default()
                    ),
                );
            }
            (ns, name) => self.stream_error(
                conn,
                StreamError::PolicyViolation(format!(
                    "{{{ns}}}{name} in clear on an nbhd stream: only the secure channel's elements"
                )),
            ),
        }
    }

    /// A handshake message: answered, and once the peer proved its key, the stream is open
    /// if that key is the one we meant (our connect) or a peer's presence announced (theirs).
    fn on_handshake(&mut self, now: Instant, conn: ConnId, e: &Element, paths: &mut Paths) {
        let Some(channel) = self.conns.get_mut(&conn).and_then(|c| c.secure.as_mut()) else {
            return;
        };
        let step = match channel.on_handshake(e) {
            Ok(step) => step,
            Err(err) => {
                return self.stream_error(conn, StreamError::PolicyViolation(err.to_string()))
            }
        };
        let (peer_key, reply) = match step {
            Step::Reply(bytes) => {
                return self.actions.push_back(Action::Send { conn, bytes });
            }
            Step::Done { peer_key, reply } => (peer_key, reply),
        };
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let (outgoing, meant) = (c.outgoing, c.peer.clone());
        let peer = if outgoing {
            // The peer we connected to, and no other, whoever answers at its address.
            meant.filter(|p| self.peers.get(p).is_some_and(|i| i.key == peer_key))
        } else {
            self.peer_by_key(&peer_key).map(|p| p.id.clone())
        };
        let Some(peer) = peer else {
            let why = if outgoing {
                "the key proven is not the one its presence announced"
            } else {
                "a key no presence announced"
            };
            return self.stream_error(conn, StreamError::PolicyViolation(why.into()));
        };
        if let Some(bytes) = reply {
            self.actions.push_back(Action::Send { conn, bytes });
        }
        if outgoing {
            self.open_stream(now, conn, &peer, paths);
        } else if let Some(c) = self.conns.get_mut(&conn) {
            // Their handshake: evidence for them, not for our direction of unicast.
            c.peer = Some(peer);
            c.authenticated = true;
        }
    }

    /// Encrypted stanzas: what they complete is handled as any open stream's stanzas.
    fn on_sealed(&mut self, now: Instant, conn: ConnId, e: &Element, paths: &mut Paths) {
        let Some(channel) = self.conns.get_mut(&conn).and_then(|c| c.secure.as_mut()) else {
            return;
        };
        let events = match channel.open(e) {
            Ok(events) => events,
            Err(err) => {
                return self.stream_error(conn, StreamError::PolicyViolation(err.to_string()))
            }
        };
        for ev in events {
            match ev {
                StreamEvent::Stanza(s) => self.on_open_stanza(now, conn, s, paths),
                StreamEvent::End => {
                    self.end_stream(now, conn);
                    if self.conns.remove(&conn).is_some() {
                        self.actions.push_back(Action::Close { conn });
                    }
                }
                StreamEvent::Header(_) => {}
            }
            if !self.conns.contains_key(&conn) {
                return;
            }
        }
    }

    /// A stanza on an open stream: a legacy peer's in clear, or an nbhd peer's out of the
    /// secure channel.
    fn on_open_stanza(&mut self, now: Instant, conn: ConnId, e: Element, paths: &mut Paths) {
        let peer = self
            .conns
            .get(&conn)
            .filter(|c| c.authenticated)
            .and_then(|c| c.peer.clone());
        let Some(peer) = peer else {
            self.stream_error(
                conn,
                StreamError::PolicyViolation("stanza before authentication".into()),
            );
            return;
        };
        let legacy = self.peers.get(&peer).is_some_and(|p| p.legacy);
        if legacy {
            // Its stream carries: TCP to it works (its only path, so its only evidence).
            paths.on_tcp_ok(now, &peer, None);
        } else {
            if let Some(r) = e.get_child(NS_RELAY, "relay") {
                self.forward_for(now, &peer, r);
                return;
            }
            if e.get_child(NS_RELAY, "relayed").is_some() {
                self.on_relayed(now, &peer, &e, paths);
                return;
            }
        }
        self.on_stanza(now, &peer, e, Via::Tcp, Some(conn), None, paths);
    }

    /// Streams whose connect hangs are failures; ends the peer never answered are closed.
    pub(super) fn drive_streams(&mut self, now: Instant, paths: &mut Paths) {
        let stalled: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.outgoing
                    && !c.authenticated
                    && c.ending.is_none()
                    && c.opened + CONNECT_TIMEOUT <= now
            })
            .map(|(id, _)| *id)
            .collect();
        for conn in stalled {
            self.actions.push_back(Action::Close { conn });
            self.handle_closed(now, conn, true, paths);
        }
        let idle: Vec<(ConnId, String)> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                !c.outgoing
                    && !c.authenticated
                    && c.ending.is_none()
                    && c.opened + HANDSHAKE_TIMEOUT <= now
            })
            .map(|(id, c)| (*id, c.remote.map_or("?".into(), |r| r.to_string())))
            .collect();
        for (conn, from) in idle {
            self.conns.remove(&conn);
            self.actions.push_back(Action::Close { conn });
            self.drop_input(
                &from,
                DropReason::HandshakeTimeout,
                format!("a stream not open {HANDSHAKE_TIMEOUT:?} after it was accepted: closed"),
            );
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
    }

    pub(super) fn streams_timeout(&self) -> Option<Instant> {
        self.conns
            .values()
            .filter_map(|c| {
                if let Some(t) = c.ending {
                    Some(t + STREAM_END_WAIT)
                } else if c.outgoing && !c.authenticated {
                    Some(c.opened + CONNECT_TIMEOUT)
                } else if !c.authenticated {
                    Some(c.opened + HANDSHAKE_TIMEOUT)
                } else {
                    None
                }
            })
            .min()
    }

    /// The stream we opened to `peer` and that took a stanza, if one is authenticated.
    pub(super) fn open_outgoing(&self, conn: ConnId) -> bool {
        self.conns
            .get(&conn)
            .is_some_and(|c| c.authenticated && c.outgoing)
    }
}
