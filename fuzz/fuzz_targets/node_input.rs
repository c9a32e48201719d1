//! A whole Node fed arbitrary input: stream bytes on accepted and opened connections (a legacy
//! XEP-0174 peer's, which needs no authentication, and an nbhd peer's), courier frames signed by
//! a peer it knows and sealed to it (so arbitrary stanzas reach the messages engine), probes, observations, raw
//! datagrams on every channel, activity frames sealed with the activity's key around arbitrary
//! bodies (what a member, or anyone an invitation reached, can send), commands (activities'
//! too), store confirmations, failures and reads, and time. Never a panic, whatever arrives.
//!
//! The peers are announced once by a handmade mDNS response, as on a real link. Then the input
//! is a list of operations: one byte of opcode, one of argument, two of length, then that many
//! bytes.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use nbhd_proto::frame::{self, Kind};
use nbhd_proto::identity::Identity;
use nbhd_proto::messages::sealed::{self, Purpose, OVERHEAD};
use nbhd_proto::activity::signed;
use nbhd_proto::activity::wire::{Body, Kind as ActivityKind, Repr as ActivityRepr};
use nbhd_proto::node::{Channel, Command, Config, IfaceAddr, IfaceId, Node, Restored, StreamInput};
use nbhd_proto::presence::wire::{Message, Name, Record, RecordData};
use nbhd_proto::presence::{signed as presence_signed, xep0174_txt, SERVICE_TYPE};

const IF: IfaceId = IfaceId(1);

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, last)
}

/// A response announcing `instance` at 10.0.0.`last` with `txt`.
fn announce(instance: &str, host: &str, last: u8, txt: Vec<(String, String)>) -> Vec<u8> {
    let svc = Name::dotted(SERVICE_TYPE);
    let inst = Name::child(instance, &svc);
    let target = Name::dotted(host);
    let mut m = Message::response();
    m.answers.push(Record::new(svc, 4500, RecordData::Ptr(inst.clone())));
    m.answers.push(Record::new(
        inst.clone(),
        120,
        RecordData::Srv {
            priority: 0,
            weight: 0,
            port: 5298,
            target: target.clone(),
        },
    ));
    let txt = txt
        .into_iter()
        .map(|(k, v)| format!("{k}={v}").into_bytes())
        .collect();
    m.answers.push(Record::new(inst, 4500, RecordData::Txt(txt)));
    m.answers
        .push(Record::new(target, 120, RecordData::A(ip(last))));
    m.emit()
}

fuzz_target!(|data: &[u8]| {
    let t0 = Instant::now();
    let mut now = t0;
    let mut counter = 0u64;
    let me = Identity::from_secret([1; 32]);
    let peer = Identity::from_secret([2; 32]);
    let mut node = Node::new(
        Config {
            secret: [1; 32],
            nick: "fuzz".into(),
            host: "lab".into(),
            hostname: None,
            status: "avail".into(),
            msg: String::new(),
            p2pj_port: 5298,
            probe_port: 5299,
            record_ttl: None,
            seed: 1,
            entropy: [5; 32],
            unix_ms: 1_800_000_000_000,
        },
        Restored::default(),
        now,
    );
    node.handle_interfaces(now, vec![(IF, vec![IfaceAddr::new(ip(1), 24)])]);
    let mdns = |last: u8| SocketAddr::new(IpAddr::V4(ip(last)), 5353);
    let mut txt = xep0174_txt(5298, "peer", "avail", "", &peer.peer_id());
    txt.push(("probe".into(), "5299".into()));
    // Signed by its key, as an nbhd peer's records are: an unsigned one is routed nowhere.
    let sig = presence_signed::sign(&peer, "peer@lab", &Name::dotted("p.local"), 5298, &txt);
    txt.push((presence_signed::SIG_KEY.into(), sig));
    node.handle_datagram(now, Channel::Mdns, IF, mdns(2), &announce("peer@lab", "p.local", 2, txt));
    node.handle_datagram(
        now,
        Channel::Mdns,
        IF,
        mdns(3),
        &announce(
            "frank@box",
            "box.local",
            3,
            vec![("txtvers".into(), "1".into()), ("1st".into(), "Frank".into())],
        ),
    );
    let peer_id = peer.peer_id();
    let mut rest = data;
    while rest.len() >= 4 {
        let (op, arg) = (rest[0], rest[1]);
        let len = u16::from_be_bytes([rest[2], rest[3]]) as usize;
        let take = len.min(rest.len() - 4);
        let bytes = &rest[4..4 + take];
        rest = &rest[4 + take..];
        let conn = Node::ACCEPTED_BASE + u64::from(arg % 4);
        let from = |last: u8| SocketAddr::new(IpAddr::V4(ip(last)), 40000 + u16::from(arg));
        match op % 16 {
            0 => node.handle_stream(
                now,
                StreamInput::Accepted {
                    conn,
                    remote: from(2 + arg % 2),
                },
            ),
            1 => node.handle_stream(
                now,
                StreamInput::Data {
                    conn,
                    bytes: bytes.to_vec(),
                },
            ),
            2 => node.handle_stream(
                now,
                StreamInput::Closed {
                    conn,
                    failed: arg % 2 == 0,
                },
            ),
            3 | 4 => {
                // A courier frame (or observation, or probe) the peer signed, to us.
                let kind = [
                    Kind::Courier,
                    Kind::CourierReceipt,
                    Kind::Observation,
                    Kind::Probe,
                    Kind::ProbeReply,
                ][usize::from(arg) % 5];
                let mut payload = bytes[..bytes.len().min(frame::MAX_PAYLOAD - OVERHEAD)].to_vec();
                // A courier stanza or receipt is sealed to us by its sender (half the time, so
                // unsealable payloads are tried too).
                if matches!(kind, Kind::Courier | Kind::CourierReceipt) && arg & 0x80 == 0 {
                    payload = sealed::seal(&peer, &me.public(), Purpose::Courier, [arg; 24], &payload)
                        .expect("a valid key");
                }
                let f = frame::Repr {
                    kind,
                    sender: peer.public(),
                    recipient: me.public(),
                    id: u64::from(arg),
                    payload,
                };
                if let Ok(b) = f.emit(&peer) {
                    let channel = if op % 12 == 3 { Channel::Courier } else { Channel::Probe };
                    node.handle_datagram(now, channel, IF, from(2), &b);
                }
            }
            5 => {
                let channel = [Channel::Mdns, Channel::Courier, Channel::Probe][usize::from(arg) % 3];
                node.handle_datagram(now, channel, IfaceId(u32::from(arg % 2) + 1), from(4), bytes);
            }
            6 => {
                let text = String::from_utf8_lossy(bytes).to_string();
                let target = if arg % 2 == 0 { peer_id.clone() } else { "frank@box".into() };
                let _ = node.handle_command(
                    now,
                    Command::Send {
                        peer: target,
                        text,
                        timeout: Duration::from_secs(u64::from(arg % 30) + 1),
                    },
                );
            }
            7 => {
                let _ = node.handle_command(
                    now,
                    Command::Invite {
                        peer: peer_id.clone(),
                        activity: String::from_utf8_lossy(bytes).to_string(),
                        timeout: Duration::from_secs(5),
                    },
                );
            }
            8 => now += Duration::from_millis(u64::from(arg) * 37),
            9 => {
                if let Some(t) = node.poll_timeout() {
                    now = now.max(t);
                }
                node.handle_timeout(now);
            }
            10 => node.handle_stream(now, StreamInput::Connected { conn: u64::from(arg % 4) + 1 }),
            12 => {
                let _ = node.handle_command(
                    now,
                    Command::Share {
                        name: String::from_utf8_lossy(bytes).to_string(),
                        kind: "game".into(),
                        private: arg % 2 == 0,
                    },
                );
            }
            13 => {
                if let Some(a) = node.activities(now).first() {
                    let _ = node.handle_command(
                        now,
                        Command::Post {
                            activity: a.info.id.to_hex(),
                            body: bytes.to_vec(),
                            bytes: arg % 2 == 0,
                            at_ms: u64::from(arg),
                        },
                    );
                }
            }
            14 => {
                // A frame on an activity's channel: sealed with its key around a fuzzed body
                // from a fuzzed sender, or raw bytes.
                if let Some(a) = node.activities(now).first().map(|a| a.info.clone()) {
                    let kinds = [
                        ActivityKind::Data,
                        ActivityKind::Nack,
                        ActivityKind::Session,
                        ActivityKind::Join,
                        ActivityKind::Leave,
                    ];
                    let kind = kinds[usize::from(arg) % kinds.len()];
                    // Control frames signed by the peer (a member) with a growing counter, so
                    // they reach the group; or in a stranger's name, unsigned.
                    counter += 1;
                    let frame = Body::parse(kind, bytes)
                        .ok()
                        .and_then(|body| {
                            let (sender, auth) = if arg % 2 == 0 && kind.is_control() {
                                (peer.public(), signed::sign_control(&peer, &a.id, &body, counter))
                            } else {
                                ([arg % 3; 32], None)
                            };
                            ActivityRepr {
                                activity: a.id,
                                sender,
                                body,
                                auth,
                            }
                            .emit(&a.key, &[arg; 24])
                            .ok()
                        })
                        .unwrap_or_else(|| bytes.to_vec());
                    node.handle_datagram(now, Channel::Activity(a.id), IF, from(5), &frame);
                }
            }
            15 => {
                let q = String::from_utf8_lossy(bytes).to_string();
                match arg % 3 {
                    0 => drop(node.handle_command(now, Command::Join { activity: q })),
                    1 => drop(node.handle_command(now, Command::Leave { activity: q })),
                    _ => drop(node.resolve_activity(&q)),
                }
            }
            _ => {
                let _ = node.resolve_peer(&String::from_utf8_lossy(bytes));
                let _ = node.doctor(now);
            }
        }
        // The driver's side: store writes confirmed (or refused, by the input's choice).
        while let Some(w) = node.poll_store() {
            if arg % 5 == 0 {
                node.handle_persist_failed(now, w.token, "fuzz");
            } else {
                node.handle_persisted(now, w.token);
            }
        }
        // Store reads (for repairs) answered with nothing, as a store that lost them would.
        while let Some((token, _)) = node.poll_load() {
            node.handle_loaded(now, token, Vec::new());
        }
        while node.poll_channel().is_some() {}
        while node.poll_transmit().is_some() {}
        while node.poll_stream().is_some() {}
        while node.poll_event().is_some() {}
    }
    node.close(now);
    node.handle_timeout(now + Duration::from_secs(600));
});
