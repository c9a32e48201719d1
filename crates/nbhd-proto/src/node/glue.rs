//! What the Node does between its engines: routing each channel's datagrams, turning presence's
//! peers into messages peers and paths contacts, attributing evidence, and draining every
//! engine's outputs into the Node's own after each input.

use std::net::SocketAddr;
use std::time::Instant;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use super::*;
use crate::activity::seal;
use crate::frame::{self, Kind};
use crate::messages::{Action, PeerInfo, Received};
use crate::paths::{Contact, PathsTransmit};

/// TXT keys advertising a public activity: `act1`, `act2`, ... (RFC 6763 §6.4: one key once).
const ACT_KEY: &str = "act";
/// At most this many advertised: each entry is up to ~215 bytes (id, key, a 32-byte type, a
/// 100-byte name), and our TXT record, with the rest of the announcement, must stay within one
/// 1400-byte datagram.
const MAX_ADVERTISED: usize = 4;

/// Nicks pinned at most (a flood of names cannot grow the table, or the store, for ever).
pub const MAX_PINS: usize = 4096;
/// Legacy peers' nicks pinned at most (in memory).
pub const MAX_LEGACY_PINS: usize = 1024;

/// The name a nick is pinned under: its UTS #39 skeleton, lower-cased, so that nicks a person
/// cannot tell apart ("bob", "Bob", "bоb" with a Cyrillic o, "b\u{200b}ob") pin as one.
pub(super) fn pin_name(nick: &str) -> String {
    let lower = nick.to_lowercase();
    unicode_security::skeleton(&lower)
        .flat_map(char::to_lowercase)
        .collect()
}

/// What a legacy peer (no key) is pinned to: its instance name, hashed to a key's size, under
/// a domain no ed25519 key can share.
pub(super) fn legacy_pin(instance: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::new()
        .chain_update(b"nbhd legacy pin\0")
        .chain_update(instance.as_bytes())
        .finalize()
        .into()
}

/// An activity `inviter` (a peer id) invited us to, its key unsealed with ours; None if it
/// carries none we can open (sealed to another, or for another activity or inviter).
pub(super) fn unseal(me: &Identity, inviter: &str, a: &Activity) -> Option<ActivityInfo> {
    let id = ActivityId::from_hex(&a.id)?;
    let inviter = <[u8; 32]>::try_from(URL_SAFE_NO_PAD.decode(inviter).ok()?).ok()?;
    let sealed = URL_SAFE_NO_PAD.decode(&a.key).ok()?;
    let key = seal::open(me, &sealed, &seal::binding(&id, &inviter)).ok()?;
    Some(ActivityInfo::new(id, &a.name, &a.kind, a.private, key))
}

/// A public activity as its TXT value says it: `<id hex>,<key base64url>,<type>,<name>`.
fn advertised(value: &str) -> Option<ActivityInfo> {
    let mut parts = value.splitn(4, ',');
    let id = ActivityId::from_hex(parts.next()?)?;
    let key = URL_SAFE_NO_PAD.decode(parts.next()?).ok()?;
    let key = <[u8; 32]>::try_from(key.as_slice()).ok()?;
    let kind = parts.next()?;
    let name = parts.next()?;
    Some(ActivityInfo::new(id, name, kind, false, key))
}

impl Node {
    /// False when presence dropped the datagram (nothing else to do: under a flood, most).
    pub(super) fn on_mdns(
        &mut self,
        now: Instant,
        iface: IfaceId,
        src: SocketAddr,
        bytes: &[u8],
    ) -> bool {
        if let Err(e) = self.presence.handle_packet(now, iface, src, bytes) {
            let count = self
                .presence
                .stats()
                .dropped
                .get(e.kind())
                .copied()
                .unwrap_or(0);
            // Counted always; told (for the log) for the first few and then one in a hundred,
            // so that a flood costs no allocation per packet.
            if count <= 10 || count.is_multiple_of(100) {
                self.events.push_back(Event::Dropped {
                    source: Channel::Mdns.as_str(),
                    from: src.to_string(),
                    reason: e.kind().to_string(),
                    detail: e.to_string(),
                    count,
                });
            }
            return false;
        }
        // Its own records came: its multicast reaches us.
        let mut heard = false;
        for instance in self.presence.take_heard() {
            let id = self
                .presence
                .peer_by_instance(&instance)
                .filter(|p| !p.legacy)
                .map(|p| p.id.clone());
            if let Some(id) = id {
                self.paths.on_multicast_heard(now, &id);
                heard = true;
            }
        }
        // A response that changed nothing (under a flood of forgeries, nearly all) asks for
        // nothing more: the other engines had no input, and walking every peer for path
        // changes after each such datagram is what a flood would make us do 10,000 times a
        // second.
        heard || self.presence.has_output()
    }

    /// Parses and checks a frame on the courier or probe channel: the frame and its sender's
    /// peer id, or None (counted) when it is not ours to take.
    fn frame_for_us(
        &mut self,
        channel: Channel,
        src: SocketAddr,
        bytes: &[u8],
    ) -> Option<(frame::Repr, String)> {
        // Addressed to someone else on the shared channel, or our own echo: not ours, and not
        // worth a signature check (every node hears every courier frame).
        if let Ok(p) = frame::Packet::new_checked(bytes) {
            if p.recipient() != self.me.public() || p.sender() == self.me.public() {
                return None;
            }
            // A key presence never announced is refused before its signature is checked: a
            // flood of frames from made-up keys costs a lookup each, not a verification.
            if self.messages.peer_id_by_key(&p.sender()).is_none() {
                let who = URL_SAFE_NO_PAD.encode(p.sender());
                self.drop(
                    channel,
                    &src.to_string(),
                    DropReason::UnknownSender,
                    format!("frame from key {who} that presence has not announced"),
                );
                return None;
            }
        }
        let f = match frame::Repr::parse(bytes) {
            Ok(f) => f,
            Err(e) => {
                self.drop(
                    channel,
                    &src.to_string(),
                    DropReason::BadFrame,
                    e.to_string(),
                );
                return None;
            }
        };
        // Known: checked above on the same bytes (Repr::parse takes only what new_checked does).
        let peer = self.messages.peer_id_by_key(&f.sender);
        debug_assert!(peer.is_some(), "a parsed frame passed new_checked");
        let peer = peer?;
        Some((f, peer))
    }

    pub(super) fn on_courier(&mut self, now: Instant, src: SocketAddr, bytes: &[u8]) {
        let Some((f, peer)) = self.frame_for_us(Channel::Courier, src, bytes) else {
            return;
        };
        // A frame it signed came by multicast.
        self.paths.on_multicast_heard(now, &peer);
        match f.kind {
            Kind::Observation => {
                if let Err(e) = self.paths.handle_observation(now, &peer, &f.payload) {
                    self.drop(Channel::Courier, &peer, DropReason::BadFrame, e.to_string());
                }
            }
            Kind::Courier | Kind::CourierReceipt => {
                self.messages
                    .handle_courier(now, &peer, &f, &mut self.paths)
            }
            Kind::Probe | Kind::ProbeReply => self.drop(
                Channel::Courier,
                &peer,
                DropReason::BadFrame,
                "a probe on the courier channel".into(),
            ),
        }
    }

    pub(super) fn on_probe(&mut self, now: Instant, src: SocketAddr, bytes: &[u8]) {
        let Some((f, peer)) = self.frame_for_us(Channel::Probe, src, bytes) else {
            return;
        };
        match f.kind {
            Kind::Probe | Kind::ProbeReply => self.paths.handle_probe(now, src, &peer, &f),
            other => self.drop(
                Channel::Probe,
                &peer,
                DropReason::BadFrame,
                format!("a {other:?} frame on the probe channel"),
            ),
        }
    }

    pub(super) fn drop(
        &mut self,
        channel: Channel,
        from: &str,
        reason: DropReason,
        detail: String,
    ) {
        let count = self.stats.dropped.entry((channel, reason)).or_default();
        *count += 1;
        let count = *count;
        // Counted always; told (for the log) for the first few and then one in a hundred.
        if count > 10 && !count.is_multiple_of(100) {
            return;
        }
        self.events.push_back(Event::Dropped {
            source: channel.as_str(),
            from: from.to_string(),
            reason: reason.as_str().to_string(),
            detail,
            count,
        });
    }

    pub(super) fn nick_of(&self, id: &str) -> String {
        self.presence
            .peers()
            .find(|p| p.id == id)
            .map(|p| p.nick.clone())
            .unwrap_or_default()
    }

    pub(super) fn diagnose(&self, now: Instant, p: &Peer) -> Diagnosis {
        if p.legacy {
            self.paths.diagnose_legacy(now, &p.id, &p.nick)
        } else {
            self.paths.diagnose(now, &p.id, &p.nick)
        }
    }

    pub(super) fn write(&mut self, owner: Owner, record: Record) {
        let token = self.next_token;
        self.next_token += 1;
        self.owners.insert(token, owner);
        self.writes.push_back(StoreWrite { token, record });
    }

    /// Our TXT: the XEP-0174 keys and ours, and the public activities we are in (private ones
    /// are never advertised).
    pub(super) fn advertise(&mut self, now: Instant) {
        let mut txt = self.base_txt.clone();
        for (i, a) in self
            .activities
            .public_joined()
            .into_iter()
            .take(MAX_ADVERTISED)
            .enumerate()
        {
            txt.push((
                format!("{ACT_KEY}{}", i + 1),
                format!(
                    "{},{},{},{}",
                    a.id,
                    URL_SAFE_NO_PAD.encode(a.key),
                    a.kind,
                    a.name
                ),
            ));
        }
        self.presence.set_txt(now, txt);
    }

    /// Trust on first use (DESIGN.md §4.4): the first key seen for a nick is pinned (and
    /// stored); the same nick, or one that looks the same ([`pin_name`]), with another key is
    /// flagged, not merged. A legacy peer, which has no key, is pinned by its instance name
    /// ([`legacy_pin`]): an nbhd peer taking a Pidgin user's nick is flagged, and the reverse.
    /// At most [`MAX_PINS`]: past that a new nick is not pinned (and not flagged). A legacy
    /// peer's pin is kept in memory only, at most [`MAX_LEGACY_PINS`], the oldest going first:
    /// anyone can announce legacy instances by the thousand, and they must not fill the store.
    fn pin(&mut self, p: &Peer, key: [u8; 32]) {
        let name = pin_name(&p.nick);
        let pinned = self.pins.get(&name).or_else(|| self.legacy_pins.get(&name));
        match pinned {
            Some(pinned) if *pinned != key => {
                self.impostors.insert(p.id.clone());
            }
            Some(_) => {
                self.impostors.remove(&p.id);
            }
            None if p.legacy => {
                if self.legacy_pins.len() >= MAX_LEGACY_PINS {
                    if let Some(old) = self.legacy_pin_order.pop_front() {
                        self.legacy_pins.remove(&old);
                    }
                }
                self.legacy_pins.insert(name.clone(), key);
                self.legacy_pin_order.push_back(name);
            }
            None if self.pins.len() >= MAX_PINS => {}
            None => {
                self.pins.insert(name.clone(), key);
                self.write(Owner::Node, Record::Pin { nick: name, key });
            }
        }
    }

    /// What every peer advertises, merged, for the activities engine.
    fn refresh_advertised(&mut self) {
        let all: Vec<ActivityInfo> = self.advertised_by.values().flatten().cloned().collect();
        self.activities.set_advertised(all);
    }

    /// A peer presence found, as messages and paths need it: nbhd peers with their key
    /// (decoded once here) and probe port (TXT `probe`), legacy XEP-0174 peers as such.
    fn sync_peer(&mut self, p: &Peer) {
        // The same instance under another id (a new key, or a legacy peer that became an nbhd
        // one): the old id goes, and with it the trust in its key.
        if let Some(old) = self
            .ids_by_instance
            .insert(p.instance.clone(), p.id.clone())
        {
            if old != p.id {
                self.forget_peer(&old);
            }
        }
        // A key is believed once its holder proved it: an nbhd instance whose records its key
        // did not sign is listed, flagged, and routed nowhere (anyone can write key=).
        if !p.legacy && !p.signed {
            self.key_conflicts.insert(p.instance.clone());
            return;
        }
        // One route per key: the instance that announced it first keeps it while it is here. A
        // second instance announcing the same key (from another address, or the same) is
        // flagged and moves nothing: announcing someone's key is free, proving it is not
        // (issue 15: a host announcing bob's key moved alice's connects to itself).
        if !p.legacy {
            let holder = self.routes.get(&p.id).cloned();
            match holder {
                Some(holder) if holder != p.instance && self.still_announced(&holder, &p.id) => {
                    self.key_conflicts.insert(p.instance.clone());
                    return;
                }
                _ => {
                    self.routes.insert(p.id.clone(), p.instance.clone());
                    self.key_conflicts.remove(&p.instance);
                }
            }
        }
        let Some(ip) = p.addrs.first() else { return };
        let key = p
            .key
            .as_deref()
            .and_then(|k| URL_SAFE_NO_PAD.decode(k).ok())
            .and_then(|k| <[u8; 32]>::try_from(k).ok());
        if key.is_none() && !p.legacy {
            return; // announces nbhd=1 but no usable key: nothing we could verify
        }
        let key = key.unwrap_or([0; 32]);
        self.messages.set_peer(PeerInfo {
            id: p.id.clone(),
            key,
            instance: p.instance.clone(),
            addr: SocketAddr::new(*ip, p.port),
            addrs: p.addrs.clone(),
            legacy: p.legacy,
        });
        if p.legacy {
            self.pin(p, legacy_pin(&p.instance));
        } else {
            let probe_addr = p
                .txt
                .iter()
                .find(|(k, _)| k == "probe")
                .and_then(|(_, v)| v.parse::<u16>().ok())
                .map(|port| SocketAddr::new(*ip, port));
            self.paths.set_contact(&p.id, Contact { key, probe_addr });
            self.pin(p, key);
            let acts: Vec<ActivityInfo> = p
                .txt
                .iter()
                .filter(|(k, _)| k.starts_with(ACT_KEY))
                .filter_map(|(_, v)| advertised(v))
                .take(MAX_ADVERTISED)
                .collect();
            self.advertised_by.insert(p.id.clone(), acts);
            self.refresh_advertised();
            self.refresh_known_peers();
        }
    }

    /// The keys of the peers we know, for the activities' full tables.
    fn refresh_known_peers(&mut self) {
        let keys = self
            .routes
            .keys()
            .filter_map(|id| self.messages.peer(id))
            .map(|p| p.key)
            .collect();
        self.activities.set_known_peers(keys);
    }

    /// True while presence lists `instance` with the key `id`.
    fn still_announced(&self, instance: &str, id: &str) -> bool {
        self.presence
            .peers()
            .any(|q| q.instance == instance && q.id == id)
    }

    /// An instance went (its goodbye, its records expired): what it announced goes, and only
    /// that. The key's route goes only with the instance that held it; another instance
    /// announcing the same key may then take it (and must prove it on every stream).
    fn peer_down(&mut self, p: &Peer) {
        self.ids_by_instance.remove(&p.instance);
        self.key_conflicts.remove(&p.instance);
        if !p.legacy && self.routes.get(&p.id).is_some_and(|i| *i != p.instance) {
            return;
        }
        self.routes.remove(&p.id);
        self.forget_peer(&p.id);
        let next = self
            .presence
            .peers()
            .find(|q| q.id == p.id && q.instance != p.instance)
            .cloned();
        if let Some(next) = next {
            self.sync_peer(&next);
        }
    }

    /// Everything the engines keep about a peer id, forgotten.
    fn forget_peer(&mut self, id: &str) {
        self.messages.remove_peer(id);
        self.paths.forget(id);
        self.path_states.remove(id);
        self.impostors.remove(id);
        if self.advertised_by.remove(id).is_some() {
            self.refresh_advertised();
        }
        self.refresh_known_peers();
    }

    /// Drains every engine into the Node's outputs, and publishes path changes.
    pub(super) fn after(&mut self, now: Instant) {
        while let Some(t) = self.presence.poll_transmit() {
            self.transmits.push_back(Transmit {
                channel: Channel::Mdns,
                iface: Some(t.iface),
                destination: t.destination,
                payload: t.payload,
            });
        }
        while let Some(e) = self.presence.poll_event() {
            match &e {
                presence::Event::PeerUp(p) | presence::Event::PeerChanged(p) => self.sync_peer(p),
                presence::Event::PeerDown(p) => self.peer_down(p),
                presence::Event::Renamed { instance, .. } => self.messages.set_instance(instance),
                presence::Event::Announced { .. } => {}
            }
            self.events.push_back(match e {
                presence::Event::PeerUp(p) => Event::PeerUp(p),
                presence::Event::PeerDown(p) => Event::PeerDown(p),
                presence::Event::PeerChanged(p) => Event::PeerChanged(p),
                presence::Event::Renamed { instance, hostname } => {
                    Event::Renamed { instance, hostname }
                }
                presence::Event::Announced { iface, instance } => {
                    Event::Announced { iface, instance }
                }
            });
        }
        self.drain_messages();
        self.drain_activities();
        while let Some(t) = self.paths.poll_transmit() {
            self.transmits.push_back(match t {
                PathsTransmit::Probe { addr, bytes } => Transmit {
                    channel: Channel::Probe,
                    iface: None,
                    destination: Destination::Unicast(addr),
                    payload: bytes,
                },
                PathsTransmit::Courier { bytes } => courier(bytes),
            });
        }
        self.publish_path_changes(now);
    }

    fn drain_messages(&mut self) {
        while let Some(a) = self.messages.poll_action() {
            match a {
                Action::Connect { conn, addr } => {
                    self.streams.push_back(StreamAction::Connect { conn, addr })
                }
                Action::Send { conn, bytes } => {
                    self.streams.push_back(StreamAction::Send { conn, bytes })
                }
                Action::Close { conn } => self.streams.push_back(StreamAction::Close { conn }),
                Action::Courier { bytes } => self.transmits.push_back(courier(bytes)),
            }
        }
        while let Some((local, received)) = self.messages.poll_write() {
            let record = match received {
                Received::Message {
                    from,
                    id,
                    body,
                    via,
                } => Record::Message {
                    id,
                    from_nick: self.nick_of(&from),
                    from,
                    to: self.me.peer_id(),
                    to_nick: self.config.nick.clone(),
                    text: body,
                    via: Some(via),
                },
                Received::Invitation {
                    from,
                    id,
                    activity,
                    reason,
                    via,
                    relayed_by,
                } => Record::Invitation {
                    id,
                    from_nick: self.nick_of(&from),
                    from,
                    activity,
                    reason,
                    via,
                    relayed_by,
                },
            };
            self.write(Owner::Messages(local), record);
        }
        while let Some(e) = self.messages.poll_event() {
            let e = match e {
                messages::Event::Delivered {
                    id,
                    peer,
                    via,
                    latency,
                    receipt,
                } => {
                    if self.sent.remove(&id) {
                        self.write(
                            Owner::Node,
                            Record::Delivered {
                                id: id.clone(),
                                via,
                            },
                        );
                    }
                    Event::Delivered {
                        id,
                        peer,
                        via,
                        latency,
                        receipt,
                    }
                }
                messages::Event::Failed { id, peer } => {
                    self.sent.remove(&id);
                    Event::Failed { id, peer }
                }
                messages::Event::Message {
                    from,
                    id,
                    body,
                    via,
                } => Event::Message {
                    from_nick: self.nick_of(&from),
                    from,
                    id,
                    text: body,
                    via,
                },
                messages::Event::Invitation {
                    from,
                    id,
                    activity,
                    reason,
                    via,
                    relayed_by,
                } => {
                    if let Some(info) = unseal(&self.me, &from, &activity) {
                        self.invited.insert(id.clone(), info);
                    }
                    Event::Invitation {
                        from_nick: self.nick_of(&from),
                        from,
                        id,
                        activity,
                        reason,
                        via,
                        relayed_by,
                    }
                }
                messages::Event::Dropped {
                    from,
                    reason,
                    detail,
                } => Event::Dropped {
                    source: "messages",
                    count: self
                        .messages
                        .stats()
                        .dropped
                        .get(&reason)
                        .copied()
                        .unwrap_or(0),
                    from,
                    reason: reason.as_str().to_string(),
                    detail,
                },
            };
            self.events.push_back(e);
        }
    }

    fn drain_activities(&mut self) {
        while let Some((id, bytes)) = self.activities.poll_transmit() {
            self.transmits.push_back(Transmit {
                channel: Channel::Activity(id),
                iface: None,
                destination: Destination::Multicast,
                payload: bytes,
            });
        }
        while let Some((local, w)) = self.activities.poll_write() {
            let record = match w {
                activity::Write::Activity { info, joined } => Record::Activity { info, joined },
                activity::Write::Post(p) => Record::Post(p),
            };
            self.write(Owner::Activities(local), record);
        }
        while let Some((local, load)) = self.activities.poll_load() {
            let token = self.next_token;
            self.next_token += 1;
            self.loads.insert(token, load.clone());
            self.load_queue.push_back((token, load));
            let _ = local;
        }
        while let Some(e) = self.activities.poll_event() {
            let e = match e {
                activity::Event::Posted { request, post } => Event::Posted { request, post },
                activity::Event::PostFailed {
                    activity,
                    request,
                    why,
                } => Event::PostFailed {
                    activity,
                    request,
                    why,
                },
                activity::Event::Received(post) => Event::Entry(post),
                activity::Event::Member {
                    activity,
                    key,
                    nick,
                    change,
                } => Event::Member {
                    activity,
                    peer: URL_SAFE_NO_PAD.encode(key),
                    nick,
                    change,
                },
                activity::Event::Dropped {
                    activity,
                    reason,
                    detail,
                } => {
                    let count = self
                        .activities
                        .stats()
                        .dropped
                        .get(&reason)
                        .copied()
                        .unwrap_or(0);
                    Event::Dropped {
                        source: "activity",
                        from: activity.to_hex(),
                        reason: reason.as_str().to_string(),
                        detail,
                        count,
                    }
                }
            };
            self.events.push_back(e);
        }
    }

    /// `PathChanged`: a peer's path state moved (a new peer in `unknown` is no change).
    fn publish_path_changes(&mut self, now: Instant) {
        let changed: Vec<(String, String, Diagnosis)> = self
            .presence
            .peers()
            .filter_map(|p| {
                let d = self.diagnose(now, p);
                let before = self.path_states.get(&p.id).copied();
                let same =
                    before == Some(d.state) || (before.is_none() && d.state == PathState::Unknown);
                (!same).then(|| (p.id.clone(), p.nick.clone(), d))
            })
            .collect();
        for (peer, nick, diagnosis) in changed {
            self.path_states.insert(peer.clone(), diagnosis.state);
            self.events.push_back(Event::PathChanged {
                peer,
                nick,
                diagnosis,
            });
        }
    }
}

fn courier(bytes: Vec<u8>) -> Transmit {
    Transmit {
        channel: Channel::Courier,
        iface: None,
        destination: Destination::Multicast,
        payload: bytes,
    }
}
