//! XEP-0174 streams: opening them (one of ours per nbhd peer, one per legacy peer whoever opened
//! it), the authentication right after the header, the legacy peers' plain streams, stream
//! errors, and ends (RFC 6120 §4.4: `</stream:stream>` answered in kind, the close after).
//!
//! Between nbhd peers, each side sends a fresh nonce with its key; each signs the other's nonce
//! with both keys under [`AUTH_DOMAIN`], and stanzas count only once the peer's proof verifies
//! against the key its presence announced, so a forged `from` is caught. A legacy peer is known
//! by the instance it claims and the address it connects from (DESIGN.md §4.2).
//!
//! What arrives on a stream is handed to [`super::delivery`]; nothing here decides a path.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::Rng;

use super::delivery::NS_RELAY;
use super::xml::{self, Element, StreamError, StreamEvent, StreamParser};
use super::{Action, ConnId, Messages, PeerInfo};
use crate::drops::DropReason;
use crate::identity::{self, Signature};
use crate::paths::{Paths, Via};

pub const NS_AUTH: &str = "urn:nbhd:auth:0";
pub const AUTH_DOMAIN: &[u8] = b"nbhd stream auth v0\0";
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
    our_nonce: [u8; 16],
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
    fn new(now: Instant, outgoing: bool, nonce: [u8; 16], remote: SocketAddr) -> Conn {
        Conn {
            peer: None,
            parser: StreamParser::new(),
            header_sent: false,
            ending: None,
            outgoing,
            our_nonce: nonce,
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
                let mut c = Conn::new(now, true, self.rng.gen(), info.addr);
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

    /// The driver's connect completed: our header (and, to an nbhd peer, our nonce).
    pub fn handle_connected(&mut self, _now: Instant, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            // We gave up on it (a timeout, a newer legacy stream) before it connected.
            self.actions.push_back(Action::Close { conn });
            return;
        };
        c.header_sent = true;
        let peer = c.peer.clone().unwrap_or_default();
        let nonce = c.our_nonce;
        let info = self.peers.get(&peer);
        let to = info.map(|p| p.instance.clone()).unwrap_or_default();
        let legacy = info.is_some_and(|p| p.legacy);
        let mut bytes = xml::stream_header(&self.my_instance, &to);
        if !legacy {
            bytes.extend(self.auth_element(&nonce).to_stanza_bytes());
        }
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
        let nonce = self.rng.gen();
        self.conns
            .insert(conn, Conn::new(now, false, nonce, remote));
    }

    fn auth_element(&self, nonce: &[u8; 16]) -> Element {
        Element::new(NS_AUTH, "auth")
            .attr("key", &URL_SAFE_NO_PAD.encode(self.me.public()))
            .attr("nonce", &URL_SAFE_NO_PAD.encode(nonce))
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
        let (outgoing, remote, nonce, peer) = (c.outgoing, c.remote, c.our_nonce, c.peer.clone());
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
            self.actions.push_back(Action::Send { conn, bytes });
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
                self.actions.push_back(Action::Send { conn, bytes });
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

    /// Sends an RFC 6120 stream error and closes; counted and reported as a drop.
    pub(super) fn stream_error(&mut self, conn: ConnId, e: StreamError) {
        let from = self
            .conns
            .get(&conn)
            .and_then(|c| c.peer.clone().or_else(|| c.remote.map(|r| r.to_string())))
            .unwrap_or_else(|| "unknown peer".into());
        self.drop_input(&from, DropReason::StreamError, e.to_string());
        self.actions.push_back(Action::Send {
            conn,
            bytes: e.to_bytes(),
        });
        self.actions.push_back(Action::Close { conn });
        self.conns.remove(&conn);
    }

    fn on_stream_stanza(&mut self, now: Instant, conn: ConnId, e: Element, paths: &mut Paths) {
        if e.ns == NS_AUTH {
            self.on_auth(now, conn, e, paths);
            return;
        }
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

    fn on_auth(&mut self, now: Instant, conn: ConnId, e: Element, paths: &mut Paths) {
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
                let Some(peer) = self.peer_by_key(&key).map(|p| p.id.clone()) else {
                    self.stream_error(conn, StreamError::PolicyViolation("unknown key".into()));
                    return;
                };
                let Some(c) = self.conns.get_mut(&conn) else {
                    return;
                };
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
                let Some((peer, our_nonce)) = self
                    .conns
                    .get(&conn)
                    .and_then(|c| c.peer.clone().map(|p| (p, c.our_nonce)))
                else {
                    self.stream_error(
                        conn,
                        StreamError::PolicyViolation("proof before auth".into()),
                    );
                    return;
                };
                let Some(key) = self.peers.get(&peer).map(|p| p.key) else {
                    self.stream_error(
                        conn,
                        StreamError::PolicyViolation("the peer went away".into()),
                    );
                    return;
                };
                let mut msg = AUTH_DOMAIN.to_vec();
                msg.extend_from_slice(&our_nonce);
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
                let outgoing = self.conns.get(&conn).is_some_and(|c| c.outgoing);
                if outgoing {
                    self.open_stream(now, conn, &peer, paths);
                } else if let Some(c) = self.conns.get_mut(&conn) {
                    // Their handshake: evidence for them, not for our direction of unicast.
                    c.authenticated = true;
                }
            }
            other => self.stream_error(
                conn,
                StreamError::PolicyViolation(format!("unknown {NS_AUTH} element {other:?}")),
            ),
        }
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
