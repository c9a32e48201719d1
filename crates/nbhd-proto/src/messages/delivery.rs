//! Deliveries and what is received (DESIGN.md §4.2, §4.3).
//!
//! Sending: a delivery starts on the path [`Paths::plan`] picks. TCP first, with the courier (a
//! signed frame on the neighborhood multicast channel) added when no receipt came within
//! max(250 ms, 3 × RTT); straight to the courier while unicast is known broken, or first with TCP
//! racing behind after the courier won. The courier sends again after the measured courier round
//! trip (doubling), two copies once loss was seen, and a relay (a third peer with working TCP,
//! XEP-0297 style) joins if the courier has not delivered within [`RELAY_AFTER`]. The first
//! receipt wins and cancels the rest; the deadline cancels everything. A legacy XEP-0174 peer
//! gets the stanza on its one stream and nothing else (it sends no receipts).
//!
//! Receiving: stanzas are deduplicated by (sender, stanza id) across paths and restarts. What is
//! new becomes a store write ([`Messages::poll_write`]); only once the driver confirms it
//! ([`Messages::handle_persisted`]) does its receipt go out (XEP-0184, and only if asked) and
//! the user see it, so a crash or a full disk in between never acknowledges what is lost.

use std::time::{Duration, Instant};

use rand::Rng;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use super::sealed::{self, Purpose};
use super::stanza::{self, Activity, Stanza, StanzaError};
use super::xml::{self, Element};
use super::{Action, ConnId, Event, Messages, PeerInfo, Received};
use crate::drops::DropReason;
use crate::frame::{self, Kind};
use crate::paths::{PathState, Paths, Via};

/// Relay requests and relayed stanzas (the stanza sealed from its origin to its recipient
/// inside `<sealed>`: the relay reads nothing and can change or make up nothing).
pub const NS_RELAY: &str = "urn:nbhd:relay:0";
/// A delivery the courier has not carried within this is also handed to a relay.
pub const RELAY_AFTER: Duration = Duration::from_millis(200);
/// A legacy peer's stream broke before it took a stanza: open another after this.
pub const LEGACY_RETRY: Duration = Duration::from_secs(1);
/// How often a courier delivery looks for a peer that went away meanwhile.
pub const PEER_GONE_RETRY: Duration = Duration::from_millis(500);

pub(super) struct Delivery {
    pub(super) peer: String,
    stanza: Element,
    started: Instant,
    deadline: Instant,
    /// When the courier sends (again), and how many copies it sent so far.
    courier_at: Option<Instant>,
    courier_attempts: u32,
    courier_first: Option<Instant>,
    frame_id: u64,
    /// The stream it was written to, if it went by TCP.
    pub(super) tcp_conn: Option<ConnId>,
    /// When to hand it to a relay, and whether that was done.
    relay_at: Option<Instant>,
    relayed: bool,
    /// A legacy peer's stream broke before it took the stanza: when to open another.
    legacy_retry_at: Option<Instant>,
}

/// Where the receipt of something received goes, once it is stored.
#[derive(Clone, Debug)]
enum ReceiptRoute {
    Stream(ConnId),
    Courier,
    Relay(String),
}

/// Received, handed to the store, waiting for its confirmation.
pub(super) struct Inbound {
    key: (String, String),
    received: Received,
    /// Receipts owed (one per copy that asked, by the way each came).
    routes: Vec<ReceiptRoute>,
}

impl Messages {
    /// Sends a chat message; its id, or None if the peer is unknown.
    pub fn send(
        &mut self,
        now: Instant,
        peer: &str,
        body: &str,
        timeout: Duration,
        paths: &mut Paths,
    ) -> Option<String> {
        let legacy = self.peers.get(peer)?.legacy;
        let id = self.new_id();
        let s = Stanza::Chat {
            id: Some(id.clone()),
            body: body.to_string(),
            // A legacy client never answers one (XEP-0184 is not in XEP-0174).
            receipt_requested: !legacy,
        };
        self.start(now, peer, &id, s, timeout, paths).then_some(id)
    }

    /// Sends a signed invitation.
    pub fn invite(
        &mut self,
        now: Instant,
        peer: &str,
        activity: Activity,
        reason: &str,
        timeout: Duration,
        paths: &mut Paths,
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
        self.start(now, peer, &id, s, timeout, paths).then_some(id)
    }

    fn start(
        &mut self,
        now: Instant,
        peer: &str,
        id: &str,
        s: Stanza,
        timeout: Duration,
        paths: &mut Paths,
    ) -> bool {
        let Some(info) = self.peers.get(peer).cloned() else {
            return false;
        };
        let element = s.to_element(&self.my_instance, &info.instance);
        let mut d = Delivery {
            peer: peer.to_string(),
            stanza: element,
            started: now,
            deadline: now + timeout,
            courier_at: None,
            courier_attempts: 0,
            courier_first: None,
            frame_id: self.rng.gen(),
            tcp_conn: None,
            relay_at: None,
            relayed: false,
            legacy_retry_at: None,
        };
        let bytes = d.stanza.to_stanza_bytes();
        if info.legacy {
            // Its one stream, whoever opened it; no courier, relay or receipt (DESIGN.md §4.2).
            let (conn, sent) = self.send_on_stream(now, &info, bytes);
            d.tcp_conn = Some(conn);
            self.deliveries.insert(id.to_string(), d);
            if sent {
                self.legacy_delivered(now, conn);
            }
            return true;
        }
        let plan = paths.plan(now, peer);
        paths.want(now, peer, now + timeout);
        match plan.first {
            Via::Tcp => {
                d.courier_at = plan.courier_after.map(|a| now + a);
                d.tcp_conn = Some(self.send_on_stream(now, &info, bytes).0);
            }
            Via::Courier | Via::Relay => {
                d.courier_at = Some(now);
                if plan.first == Via::Relay {
                    d.relay_at = Some(now);
                }
                if plan.tcp_too {
                    d.tcp_conn = Some(self.send_on_stream(now, &info, bytes).0);
                }
            }
        }
        self.deliveries.insert(id.to_string(), d);
        self.drive_courier(now, paths);
        self.drive_relay(now, paths);
        true
    }

    /// A peer's stream failed: whatever waited on it goes by courier at once.
    pub(super) fn stream_lost(&mut self, now: Instant, peer: &str, paths: &mut Paths) {
        for d in self.deliveries.values_mut().filter(|d| d.peer == peer) {
            d.courier_at = Some(d.courier_at.map_or(now, |t| t.min(now)));
        }
        self.drive_courier(now, paths);
    }

    pub(super) fn move_deliveries(&mut self, from: ConnId, to: ConnId) {
        for d in self.deliveries.values_mut() {
            if d.tcp_conn == Some(from) {
                d.tcp_conn = Some(to);
            }
        }
    }

    /// Legacy clients send no receipts: a stanza the open stream took is as delivered as it
    /// gets (XEP-0174 has nothing more).
    pub(super) fn legacy_delivered(&mut self, now: Instant, conn: ConnId) {
        let done: Vec<String> = self
            .deliveries
            .iter()
            .filter(|(_, d)| d.tcp_conn == Some(conn))
            .map(|(id, _)| id.clone())
            .collect();
        for id in done {
            if let Some(d) = self.deliveries.remove(&id) {
                self.events.push_back(Event::Delivered {
                    id,
                    peer: d.peer,
                    via: Via::Tcp,
                    latency: now - d.started,
                    receipt: false,
                });
            }
        }
    }

    /// A legacy peer's stream is gone before it took what waited on it: try a new stream in a
    /// moment, until the delivery's deadline.
    pub(super) fn legacy_stream_lost(&mut self, now: Instant, conn: ConnId) {
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
            let Some(d) = self.deliveries.get_mut(&id) else {
                continue;
            };
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

    /// A stanza from an authenticated peer, by TCP, courier or relay. `relayed_by` names the
    /// relay for a stanza that came through one.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_stanza(
        &mut self,
        now: Instant,
        peer: &str,
        e: Element,
        via: Via,
        conn: Option<ConnId>,
        relayed_by: Option<&str>,
        paths: &mut Paths,
    ) {
        // XEP-0184 §5: a receipt answers only a stanza that asked for one (legacy clients
        // never ask, and would not know what to do with the answer).
        let wants_receipt = e.get_child(stanza::NS_RECEIPTS, "request").is_some();
        let s = match Stanza::from_element(&e) {
            Ok(s) => s,
            Err(StanzaError::Unsupported(what)) => {
                return self.drop_input(peer, DropReason::UnsupportedStanza, what)
            }
            Err(StanzaError::Malformed(why)) => {
                return self.drop_input(peer, DropReason::MalformedStanza, why.to_string())
            }
        };
        let route = match (via, conn, relayed_by) {
            (Via::Relay, _, Some(relay)) => ReceiptRoute::Relay(relay.to_string()),
            (Via::Tcp, Some(conn), _) => ReceiptRoute::Stream(conn),
            _ => ReceiptRoute::Courier,
        };
        let route = wants_receipt.then_some(route);
        match s {
            Stanza::Receipt { of } => self.on_receipt(now, peer, &of, via, paths),
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
                            DropReason::ChatWithoutId,
                            "an nbhd peer's chat message carries no id".into(),
                        )
                    }
                };
                let received = Received::Message {
                    from: peer.to_string(),
                    id: id.clone(),
                    body,
                    via,
                };
                self.receive(now, peer, &id, received, route);
            }
            Stanza::Invitation {
                id,
                activity,
                reason,
                signature,
            } => {
                let key = self.peers.get(peer).filter(|p| !p.legacy).map(|p| p.key);
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
                        DropReason::BadSignature,
                        "invitation unsigned or badly signed".into(),
                    );
                }
                let received = Received::Invitation {
                    from: peer.to_string(),
                    id: id.clone(),
                    activity,
                    reason,
                    via,
                    relayed_by: relayed_by.map(str::to_string),
                };
                self.receive(now, peer, &id, received, route);
            }
        }
    }

    /// Something new (or a copy of something) from `peer`: stored once, acknowledged always.
    fn receive(
        &mut self,
        now: Instant,
        peer: &str,
        id: &str,
        received: Received,
        route: Option<ReceiptRoute>,
    ) {
        let key = (peer.to_string(), id.to_string());
        if self.seen.contains(&key) {
            // Stored before (a copy by another path, or after a restart): acknowledged again.
            if let Some(route) = route {
                self.send_receipt(now, peer, id, &route);
            }
            return;
        }
        if let Some(token) = self.inbound_keys.get(&key) {
            // Its store write is on its way: this copy's receipt goes with the first's.
            if let (Some(route), Some(pending)) = (route, self.inbound.get_mut(token)) {
                pending.routes.push(route);
            }
            return;
        }
        let token = self.next_token;
        self.next_token += 1;
        self.inbound_keys.insert(key.clone(), token);
        self.writes.push_back((token, received.clone()));
        self.inbound.insert(
            token,
            Inbound {
                key,
                received,
                routes: route.into_iter().collect(),
            },
        );
    }

    /// The store holds what `token` named: now it counts, its receipts go out, the user sees it.
    pub fn handle_persisted(&mut self, now: Instant, token: u64) {
        let Some(inbound) = self.inbound.remove(&token) else {
            return;
        };
        self.inbound_keys.remove(&inbound.key);
        let (peer, id) = inbound.key.clone();
        self.seen.insert(inbound.key);
        for route in &inbound.routes {
            self.send_receipt(now, &peer, &id, route);
        }
        self.events.push_back(match inbound.received {
            Received::Message {
                from,
                id,
                body,
                via,
            } => Event::Message {
                from,
                id,
                body,
                via,
            },
            Received::Invitation {
                from,
                id,
                activity,
                reason,
                via,
                relayed_by,
            } => Event::Invitation {
                from,
                id,
                activity,
                reason,
                via,
                relayed_by,
            },
        });
    }

    /// The store could not take what `token` named: no receipt, nothing shown; the sender's
    /// retransmission will offer it again.
    pub fn handle_persist_failed(&mut self, _now: Instant, token: u64, why: &str) {
        let Some(inbound) = self.inbound.remove(&token) else {
            return;
        };
        self.inbound_keys.remove(&inbound.key);
        let (peer, id) = inbound.key;
        self.drop_input(
            &peer,
            DropReason::StoreFailed,
            format!("{id} not stored ({why}): not acknowledged"),
        );
    }

    fn send_receipt(&mut self, now: Instant, peer: &str, id: &str, route: &ReceiptRoute) {
        let Some(info) = self.peers.get(peer).cloned() else {
            return;
        };
        let receipt =
            Stanza::Receipt { of: id.to_string() }.to_element(&self.my_instance, &info.instance);
        match route {
            ReceiptRoute::Stream(conn) => self.send_stanzas(*conn, receipt.to_stanza_bytes()),
            // Back the way it came: through the relay.
            ReceiptRoute::Relay(relay) => self.relay_via(now, relay, peer, &receipt),
            ReceiptRoute::Courier => {
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

    fn on_receipt(&mut self, now: Instant, peer: &str, of: &str, via: Via, paths: &mut Paths) {
        if self.deliveries.get(of).is_none_or(|d| d.peer != peer) {
            return; // a receipt is bound to (stanza id, sender, recipient)
        }
        let Some(d) = self.deliveries.remove(of) else {
            return;
        };
        match via {
            Via::Tcp => paths.on_tcp_ok(now, peer, None),
            Via::Relay => paths.on_relay_only(now, peer),
            Via::Courier => {
                // Karn: only a frame sent once times the round trip.
                let rtt = (d.courier_attempts == 1)
                    .then(|| d.courier_first.map(|t| now - t))
                    .flatten();
                paths.on_courier_receipt(now, peer, rtt);
                if let Some(conn) = d.tcp_conn {
                    // TCP had it first (or alongside) and did not deliver: that is evidence.
                    paths.on_courier_win(now, peer);
                    // A stream that stops acknowledging is a failure too (DESIGN.md §4.3): drop
                    // it; the next TCP attempt connects afresh, and that tells the truth.
                    if self.open_outgoing(conn) {
                        self.actions.push_back(Action::Close { conn });
                        self.conns.remove(&conn);
                    }
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

    /// A courier frame to `to` carrying `stanza` sealed to it: the frame's signature says who
    /// sent it, the seal that nobody else on the link reads it.
    fn courier_frame(&mut self, kind: Kind, to: &[u8; 32], id: u64, stanza: Vec<u8>) {
        let me = self.me.public();
        let Ok(payload) = self.pairs.get(&self.me, to).and_then(|shared| {
            sealed::seal_shared(&shared, &me, to, Purpose::Courier, self.rng.gen(), &stanza)
        }) else {
            return;
        };
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

    /// A courier frame (or its receipt) from `peer`, already verified by the Node.
    pub fn handle_courier(&mut self, now: Instant, peer: &str, f: &frame::Repr, paths: &mut Paths) {
        let me = self.me.public();
        let opened = self.pairs.get(&self.me, &f.sender).and_then(|shared| {
            sealed::open_shared(&shared, &f.sender, &me, Purpose::Courier, &f.payload)
        });
        let Ok(stanza) = opened else {
            return self.drop_input(
                peer,
                DropReason::Unsealable,
                "a courier frame not sealed to us by its sender".into(),
            );
        };
        let Ok(stanzas) = xml::parse_stanzas(&stanza) else {
            return self.drop_input(
                peer,
                DropReason::MalformedStanza,
                "courier payload is not a stanza".into(),
            );
        };
        for e in stanzas {
            self.on_stanza(now, peer, e, Via::Courier, None, None, paths);
        }
    }

    fn drive_courier(&mut self, now: Instant, paths: &mut Paths) {
        let due: Vec<String> = self
            .deliveries
            .iter()
            .filter(|(_, d)| d.courier_at.is_some_and(|t| t <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            let Some(d) = self.deliveries.get_mut(&id) else {
                continue;
            };
            let Some(key) = self.peers.get(&d.peer).map(|p| p.key) else {
                // Gone (a goodbye, an expiry): look again later, until it is back or the
                // deadline ends the delivery; a due timer left as it is would wake us at once.
                d.courier_at = Some(now + PEER_GONE_RETRY);
                continue;
            };
            if d.courier_attempts > 0 {
                paths.on_courier_retransmit(now, &d.peer);
            }
            let copies = paths.courier_copies(now, &d.peer);
            d.courier_at = Some(now + paths.courier_rto(&d.peer, d.courier_attempts));
            d.courier_attempts += 1;
            d.courier_first.get_or_insert(now);
            d.relay_at.get_or_insert(now + RELAY_AFTER);
            let (payload, frame_id) = (d.stanza.to_stanza_bytes(), d.frame_id);
            for _ in 0..copies {
                self.courier_frame(Kind::Courier, &key, frame_id, payload.clone());
            }
        }
    }

    /// Hands deliveries that neither TCP nor the courier carried in time to a relay: a peer
    /// whose TCP path works, which forwards over its own stream (DESIGN.md §4.3).
    fn drive_relay(&mut self, now: Instant, paths: &Paths) {
        let due: Vec<String> = self
            .deliveries
            .iter()
            .filter(|(_, d)| !d.relayed && d.relay_at.is_some_and(|t| t <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            let Some(d) = self.deliveries.get_mut(&id) else {
                continue;
            };
            d.relayed = true;
            let (target, stanza) = (d.peer.clone(), d.stanza.clone());
            let mut candidates: Vec<&String> = self
                .peers
                .values()
                .filter(|p| p.id != target && !p.legacy)
                .map(|p| &p.id)
                .collect();
            // Peers whose TCP path is known to work first.
            candidates.sort_by_key(|p| paths.state(now, p) != PathState::Up);
            if let Some(relay) = candidates.first().map(|p| p.to_string()) {
                self.relay_via(now, &relay, &target, &stanza);
            }
        }
    }

    /// We relay: `from` asked us to carry a stanza to another peer over our own stream.
    pub(super) fn forward_for(&mut self, now: Instant, from: &str, request: &Element) {
        let to = request.get_attr("to").unwrap_or("");
        // Never to a legacy peer: it could not tell a relayed stanza from ours.
        let target = self
            .peers
            .get(to)
            .cloned()
            .filter(|t| t.id != from && !t.legacy);
        let inner = request.get_child(NS_RELAY, "sealed");
        let (Some(target), Some(inner)) = (target, inner) else {
            return self.drop_input(
                from,
                DropReason::RelayRefused,
                format!(
                    "relay request towards {to:?}: not an nbhd peer we know, or nothing to forward"
                ),
            );
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

    /// Asks `relay` to carry `stanza` to `to`, sealed to it.
    fn relay_via(&mut self, now: Instant, relay: &str, to: &str, stanza: &Element) {
        let (Some(info), Some(target)) = (
            self.peers.get(relay).cloned(),
            self.peers.get(to).map(|t| t.key),
        ) else {
            return;
        };
        let me = self.me.public();
        let nonce = self.rng.gen();
        let Ok(boxed) = self.pairs.get(&self.me, &target).and_then(|shared| {
            let plain = stanza.to_stanza_bytes();
            sealed::seal_shared(&shared, &me, &target, Purpose::Relay, nonce, &plain)
        }) else {
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
                    .child(Element::new(NS_RELAY, "sealed").text(&STANDARD.encode(boxed))),
            );
        self.send_on_stream(now, &info, request.to_stanza_bytes());
    }

    /// A `<relayed>` stanza `relayer` carried for its origin: only what the origin sealed to
    /// us is believed (a receipt, a chat, an invitation alike).
    pub(super) fn on_relayed(
        &mut self,
        now: Instant,
        relayer: &str,
        e: &Element,
        paths: &mut Paths,
    ) {
        let Some(r) = e.get_child(NS_RELAY, "relayed") else {
            return;
        };
        let origin = r.get_attr("from").unwrap_or("").to_string();
        let key = self
            .peers
            .get(&origin)
            .filter(|p| !p.legacy && p.id != relayer)
            .map(|p| p.key);
        let Some(key) = key else {
            return self.drop_input(
                relayer,
                DropReason::RelayRefused,
                format!("relayed stanza from {origin:?}: not an nbhd peer we know"),
            );
        };
        let me = self.me.public();
        let shared = self.pairs.get(&self.me, &key).ok();
        let opened = r
            .get_child(NS_RELAY, "sealed")
            .and_then(|b| STANDARD.decode(b.text_content().trim()).ok())
            .zip(shared)
            .and_then(|(b, shared)| {
                sealed::open_shared(&shared, &key, &me, Purpose::Relay, &b).ok()
            });
        let Some(bytes) = opened else {
            return self.drop_input(
                &origin,
                DropReason::Unsealable,
                format!("relayed by {relayer}: not sealed to us by {origin}"),
            );
        };
        let inner = xml::parse_stanzas(&bytes)
            .ok()
            .and_then(|s| s.into_iter().next());
        let Some(inner) = inner else {
            return self.drop_input(
                &origin,
                DropReason::MalformedStanza,
                format!("relayed by {relayer}: not a stanza inside"),
            );
        };
        self.on_stanza(now, &origin, inner, Via::Relay, None, Some(relayer), paths);
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
        [d, self.streams_timeout()].into_iter().flatten().min()
    }

    pub fn handle_timeout(&mut self, now: Instant, paths: &mut Paths) {
        let expired: Vec<String> = self
            .deliveries
            .iter()
            .filter(|(_, d)| d.deadline <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            if let Some(d) = self.deliveries.remove(&id) {
                self.events.push_back(Event::Failed { id, peer: d.peer });
            }
        }
        self.drive_streams(now, paths);
        self.drive_courier(now, paths);
        self.drive_relay(now, paths);
        self.drive_legacy_retries(now);
    }

    /// The peer whose frames carry `key`, if presence told us of it.
    pub fn peer_id_by_key(&self, key: &[u8; 32]) -> Option<String> {
        self.peer_by_key(key).map(|p| p.id.clone())
    }

    /// Peers we may message, for the node's bookkeeping.
    pub fn peer(&self, id: &str) -> Option<&PeerInfo> {
        self.peers.get(id)
    }
}
