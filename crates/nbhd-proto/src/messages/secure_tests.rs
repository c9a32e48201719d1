//! Streams between nbhd peers as an attacker sees them: two real messages engines joined by a
//! wire the test controls, so it can record, replay, redirect and inject bytes. Each test is a
//! way someone without bob's key might try to be bob on alice's stream (issue 15, attack 1).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::SeedableRng;

use super::noise::{SecureChannel, Step};
use super::xml::{self, StreamEvent, StreamParser};
use super::*;
use crate::drops::DropReason;
use crate::identity::Identity;
use crate::paths::Paths;

const ALICE: &str = "alice@lab";
const BOB: &str = "bob@lab";
const ACCEPTED: ConnId = Messages::ACCEPTED_BASE;

fn addr(last: u8) -> SocketAddr {
    SocketAddr::new([10, 0, 0, last].into(), 5298)
}

fn info(id: &Identity, instance: &str, last: u8) -> PeerInfo {
    PeerInfo {
        id: id.peer_id(),
        key: id.public(),
        instance: instance.into(),
        addr: addr(last),
        addrs: vec![addr(last).ip()],
        legacy: false,
    }
}

struct Side {
    id: Identity,
    m: Messages,
    paths: Paths,
}

fn side(secret: u8, instance: &str) -> Side {
    side_drawing(secret, instance, secret.into())
}

/// A side whose CSPRNG is seeded with `entropy` (a restart draws new entropy from the OS).
fn side_drawing(secret: u8, instance: &str, entropy: u64) -> Side {
    let id = Identity::from_secret([secret; 32]);
    let m = Messages::new(
        id.clone(),
        instance,
        rand::rngs::StdRng::seed_from_u64(entropy),
    );
    let paths = Paths::new(id.clone(), secret.into());
    Side { id, m, paths }
}

/// Alice and bob, each knowing the other from presence.
fn alice_and_bob() -> (Side, Side) {
    let (mut a, mut b) = (side(1, ALICE), side(2, BOB));
    a.m.set_peer(info(&b.id, BOB, 2));
    b.m.set_peer(info(&a.id, ALICE, 1));
    (a, b)
}

/// Everything `s` asked for, its store writes confirmed.
fn drain(s: &mut Side, now: Instant) -> (Vec<Action>, Vec<Event>) {
    while let Some((token, _)) = s.m.poll_write() {
        s.m.handle_persisted(now, token);
    }
    let actions = std::iter::from_fn(|| s.m.poll_action()).collect();
    let events = std::iter::from_fn(|| s.m.poll_event()).collect();
    (actions, events)
}

/// `b`'s connect to `a` (here bob's to alice), carried faithfully until both are quiet.
/// Returns every byte `b` sent on it, and `a`'s events.
fn carry(now: Instant, a: &mut Side, b: &mut Side) -> (Vec<Vec<u8>>, Vec<Event>) {
    let mut from_bob = Vec::new();
    let mut alice_events = Vec::new();
    let mut bob_conn = None;
    loop {
        let (actions, _) = drain(b, now);
        let mut quiet = actions.is_empty();
        for act in actions {
            match act {
                Action::Connect { conn, .. } => {
                    bob_conn = Some(conn);
                    a.m.handle_accepted(now, ACCEPTED, SocketAddr::new(addr(2).ip(), 40000));
                    b.m.handle_connected(now, conn);
                }
                Action::Send { bytes, .. } => {
                    from_bob.push(bytes.clone());
                    a.m.handle_data(now, ACCEPTED, &bytes, &mut a.paths);
                }
                _ => {}
            }
        }
        let (actions, events) = drain(a, now);
        alice_events.extend(events);
        quiet &= actions.is_empty();
        for act in actions {
            if let (Action::Send { bytes, .. }, Some(conn)) = (act, bob_conn) {
                b.m.handle_data(now, conn, &bytes, &mut b.paths);
            }
        }
        if quiet {
            return (from_bob, alice_events);
        }
    }
}

/// Every byte the actions send, in order.
fn sent_bytes(actions: &[Action]) -> Vec<u8> {
    actions
        .iter()
        .filter_map(|x| match x {
            Action::Send { bytes, .. } => Some(bytes.as_slice()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .concat()
}

fn chats(events: &[Event]) -> Vec<(String, String)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Message { from, body, .. } => Some((from.clone(), body.clone())),
            _ => None,
        })
        .collect()
}

fn stream_errors(s: &Side) -> u64 {
    s.m.stats()
        .dropped
        .get(&DropReason::StreamError)
        .copied()
        .unwrap_or(0)
}

const T: Duration = Duration::from_secs(10);

#[test]
fn a_genuine_stream_carries_bobs_chat_encrypted_and_alice_knows_it_is_his() {
    let now = Instant::now();
    let (mut a, mut b) = alice_and_bob();
    b.m.send(now, &a.id.peer_id(), "secret words", T, &mut b.paths)
        .expect("alice is known");
    let (wire, events) = carry(now, &mut a, &mut b);
    assert_eq!(
        chats(&events),
        vec![(b.id.peer_id(), "secret words".to_string())]
    );
    let on_the_wire: Vec<u8> = wire.concat();
    let text = String::from_utf8_lossy(&on_the_wire);
    assert!(!text.contains("secret words"), "in clear: {text}");
    assert!(text.contains("urn:nbhd:noise:0"), "{text}");
}

#[test]
fn a_recorded_stream_replayed_on_a_new_connection_is_refused() {
    let now = Instant::now();
    let (mut a, mut b) = alice_and_bob();
    b.m.send(now, &a.id.peer_id(), "once", T, &mut b.paths);
    let (wire, events) = carry(now, &mut a, &mut b);
    assert_eq!(chats(&events).len(), 1);
    // Someone who captured every byte bob sent plays them to alice again, from bob's address,
    // on a new connection, and to alice restarted.
    let mut fresh_alice = side_drawing(1, ALICE, 1001);
    fresh_alice.m.set_peer(info(&b.id, BOB, 2));
    for (alice, conn) in [(&mut a, ACCEPTED + 1), (&mut fresh_alice, ACCEPTED)] {
        alice
            .m
            .handle_accepted(now, conn, SocketAddr::new(addr(2).ip(), 40001));
        for bytes in &wire {
            alice.m.handle_data(now, conn, bytes, &mut alice.paths);
        }
        let (_, events) = drain(alice, now);
        assert!(chats(&events).is_empty(), "replayed: {events:?}");
        assert!(stream_errors(alice) >= 1, "{:?}", alice.m.stats().dropped);
    }
}

#[test]
fn a_chat_in_clear_after_bobs_header_is_refused() {
    let now = Instant::now();
    let (mut a, b) = alice_and_bob();
    a.m.handle_accepted(now, ACCEPTED, SocketAddr::new(addr(3).ip(), 40000));
    let mut bytes = xml::stream_header(BOB, ALICE);
    bytes.extend_from_slice(
        b"<message type='chat' id='x'><body>forged</body><request xmlns='urn:xmpp:receipts'/></message>",
    );
    a.m.handle_data(now, ACCEPTED, &bytes, &mut a.paths);
    let (actions, events) = drain(&mut a, now);
    assert!(chats(&events).is_empty(), "{events:?}");
    assert!(
        actions.contains(&Action::Close { conn: ACCEPTED }),
        "{actions:?}"
    );
    assert_eq!(stream_errors(&a), 1);
    let _ = b;
}

#[test]
fn a_key_holder_that_names_itself_bob_is_still_itself_or_nobody() {
    let now = Instant::now();
    let (mut a, b) = alice_and_bob();
    // Mallory holds a key of its own (anyone can make one) and completes a real handshake,
    // with bob's instance in its header: alice does not know its key, so the stream ends.
    let mallory = Identity::from_secret([9; 32]);
    let run = |a: &mut Side, conn: ConnId| -> Vec<Event> {
        a.m.handle_accepted(now, conn, SocketAddr::new(addr(3).ip(), 40000));
        let (mut hs, first) = SecureChannel::initiator(&mallory, BOB, ALICE, [7; 32]).unwrap();
        let mut bytes = xml::stream_header(BOB, ALICE);
        bytes.extend(first);
        a.m.handle_data(now, conn, &bytes, &mut a.paths);
        let (actions, _) = drain(a, now);
        let mut p = StreamParser::new();
        for act in actions {
            if let Action::Send { bytes, .. } = act {
                let _ = p.feed(&bytes);
            }
        }
        let second = std::iter::from_fn(|| p.poll_event()).find_map(|e| match e {
            StreamEvent::Stanza(s) if s.name == "handshake" => Some(s),
            _ => None,
        });
        let Step::Done {
            reply: Some(third), ..
        } = hs.on_handshake(&second.expect("alice answers")).unwrap()
        else {
            panic!("mallory finishes");
        };
        let mut rest = third;
        rest.extend(
            hs.seal(b"<message type='chat' id='m'><body>as bob</body></message>")
                .unwrap(),
        );
        a.m.handle_data(now, conn, &rest, &mut a.paths);
        drain(a, now).1
    };
    let events = run(&mut a, ACCEPTED);
    assert!(chats(&events).is_empty(), "{events:?}");
    assert_eq!(stream_errors(&a), 1, "{:?}", a.m.stats().dropped);
    // Once its presence is known, its chats are its own, never bob's.
    a.m.set_peer(info(&mallory, "mallory@lab", 3));
    let events = run(&mut a, ACCEPTED + 1);
    assert_eq!(
        chats(&events),
        vec![(mallory.peer_id(), "as bob".to_string())]
    );
    assert_ne!(mallory.peer_id(), b.id.peer_id());
}

#[test]
fn a_connect_to_bobs_address_answered_by_another_key_sends_nothing() {
    let now = Instant::now();
    let (mut a, b) = alice_and_bob();
    // Whoever answers at bob's address (a host that took it over, or one whose presence moved
    // bob's route to itself) holds another key: alice's chat never leaves her in its reach.
    let mut mallory = side(9, BOB);
    mallory.m.set_peer(info(&a.id, ALICE, 1));
    a.m.send(now, &b.id.peer_id(), "for bob only", T, &mut a.paths);
    let (wire, _) = carry(now, &mut mallory, &mut a);
    let text = String::from_utf8_lossy(&wire.concat()).to_string();
    assert!(!text.contains("for bob only"), "{text}");
    assert!(stream_errors(&a) >= 1, "{:?}", a.m.stats().dropped);
    let (_, mallory_events) = drain(&mut mallory, now);
    assert!(chats(&mallory_events).is_empty());
}

/// Issue 15, attack 2: anyone who saw a stanza id on the courier could tell alice, through a
/// stream of its own, that bob relayed his receipt for it; her retransmissions stopped and the
/// message was lost. A relayed receipt now counts only if bob sealed it to her.
#[test]
fn a_receipt_relayed_in_bobs_name_but_not_sealed_by_him_is_not_believed() {
    let now = Instant::now();
    let (mut a, b) = alice_and_bob();
    let mut carol = side(3, "carol@lab");
    carol.m.set_peer(info(&a.id, ALICE, 1));
    a.m.set_peer(info(&carol.id, "carol@lab", 3));
    // Alice's message to bob is on its way (its connect is left hanging).
    let id =
        a.m.send(now, &b.id.peer_id(), "to bob", T, &mut a.paths)
            .expect("bob is known");
    let _ = drain(&mut a, now);
    let receipt = super::stanza::Stanza::Receipt { of: id.clone() }.to_element(BOB, ALICE);
    let forged = [
        // Bob's receipt as the old protocol carried it: in clear inside <forwarded>.
        xml::Element::new(xml::NS_CLIENT, "message")
            .attr("type", "normal")
            .child(
                xml::Element::new(super::delivery::NS_RELAY, "relayed")
                    .attr("from", &b.id.peer_id())
                    .child(
                        xml::Element::new("urn:xmpp:forward:0", "forwarded").child(receipt.clone()),
                    ),
            ),
        // Sealed, but by carol, not by bob.
        xml::Element::new(xml::NS_CLIENT, "message")
            .attr("type", "normal")
            .child(
                xml::Element::new(super::delivery::NS_RELAY, "relayed")
                    .attr("from", &b.id.peer_id())
                    .child(
                        xml::Element::new(super::delivery::NS_RELAY, "sealed").text(
                            &base64::Engine::encode(
                                &base64::engine::general_purpose::STANDARD,
                                super::sealed::seal(
                                    &carol.id,
                                    &a.id.public(),
                                    super::sealed::Purpose::Relay,
                                    [4; 24],
                                    &receipt.to_stanza_bytes(),
                                )
                                .unwrap(),
                            ),
                        ),
                    ),
            ),
    ];
    let carol_info = info(&a.id, ALICE, 1);
    for stanza in &forged {
        carol
            .m
            .send_on_stream(now, &carol_info, stanza.to_stanza_bytes());
    }
    let (_, events) = carry(now, &mut a, &mut carol);
    assert!(
        !events.iter().any(|e| matches!(e, Event::Delivered { .. })),
        "alice was told bob has it: {events:?}"
    );
    let refused = a.m.stats().dropped.get(&DropReason::Unsealable).copied();
    assert_eq!(refused, Some(2), "{:?}", a.m.stats().dropped);
}

/// The end of an encrypted stream is sealed too: ours goes inside the channel, and one in clear
/// (anyone on the path could write it) breaks the stream instead of ending it cleanly.
#[test]
fn an_encrypted_stream_ends_inside_the_channel_and_a_clear_end_is_a_break() {
    let now = Instant::now();
    let (mut a, mut b) = alice_and_bob();
    b.m.send(now, &a.id.peer_id(), "hello", T, &mut b.paths);
    let _ = carry(now, &mut a, &mut b);
    // Alice ends her side: no `</stream:stream>` in clear.
    a.m.close(now);
    let (actions, _) = drain(&mut a, now);
    let sent = sent_bytes(&actions);
    let text = String::from_utf8_lossy(&sent);
    assert!(!text.contains("</stream:stream>"), "{text}");
    assert!(text.contains("urn:nbhd:noise:0"), "{text}");
    // On a fresh pair, a clear end injected into bob's stream to alice breaks it: alice closes
    // it as a failure (its stanzas would go by the courier), not as an end.
    let (mut a, mut b) = alice_and_bob();
    b.m.send(now, &a.id.peer_id(), "hello", T, &mut b.paths);
    let _ = carry(now, &mut a, &mut b);
    a.m.handle_data(now, ACCEPTED, xml::STREAM_END, &mut a.paths);
    let (actions, _) = drain(&mut a, now);
    assert!(
        actions.contains(&Action::Close { conn: ACCEPTED }),
        "{actions:?}"
    );
    let replied = sent_bytes(&actions);
    assert!(replied.is_empty(), "no end answered in kind: {replied:?}");
}
