//! The messages engine alone, with a legacy XEP-0174 client scripted byte for byte as finch 2.14
//! (libpurple's Bonjour protocol) behaves on the wire. Everything between nbhd peers is tested
//! on whole Nodes (`node/tests.rs`), where presence and paths are real.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::delivery::LEGACY_RETRY;
use super::streams::STREAM_END_WAIT;
use super::*;
use crate::identity::Identity;
use crate::paths::Paths;

const FRANK: &str = "frank@frankhost";
/// finch's stream header: double quotes, an encoding, a newline, no version.
const HEADER: &[u8] = b"<?xml version=\"1.0\" encoding=\"UTF-8\" ?>\n<stream:stream xmlns=\"jabber:client\" xmlns:stream=\"http://etherx.jabber.org/streams\" from=\"frank@frankhost\" to=\"alice@vm\">";
const CHAT: &[u8] = b"<message to='alice@vm' from='frank@frankhost' type='chat'><body>same words</body><html xmlns='http://www.w3.org/1999/xhtml'><body><font>same words</font></body></html><x xmlns='jabber:x:event'><composing/></x></message>";
const TYPING: &[u8] = b"<message to='alice@vm' from='frank@frankhost' type='chat'><x xmlns='jabber:x:event'><composing/><id/></x></message>";

fn frank_addr() -> SocketAddr {
    "10.0.0.2:5298".parse().unwrap()
}

/// Frank's host has a second address (Ethernet beside Wi-Fi), announced too.
fn frank_second_addr() -> IpAddr {
    "10.0.1.2".parse().unwrap()
}

fn alice() -> (Messages, Paths) {
    let me = Identity::from_secret([1; 32]);
    let mut m = Messages::new(me.clone(), "alice@vm", rand::SeedableRng::seed_from_u64(1));
    m.set_peer(PeerInfo {
        id: FRANK.into(),
        key: [0; 32],
        instance: FRANK.into(),
        addr: frank_addr(),
        addrs: vec![frank_addr().ip(), frank_second_addr()],
        legacy: true,
    });
    (m, Paths::new(me, 2))
}

/// What the engine asked for and reported, with every store write confirmed (a store that
/// takes everything).
fn drain(m: &mut Messages) -> (Vec<Action>, Vec<Event>) {
    while let Some((token, _)) = m.poll_write() {
        m.handle_persisted(Instant::now(), token);
    }
    let mut a = Vec::new();
    while let Some(x) = m.poll_action() {
        a.push(x);
    }
    let mut e = Vec::new();
    while let Some(x) = m.poll_event() {
        e.push(x);
    }
    (a, e)
}

fn sent_text(actions: &[Action]) -> String {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { bytes, .. } => Some(String::from_utf8_lossy(bytes).to_string()),
            _ => None,
        })
        .collect()
}

/// Frank connects from his address and opens his stream; alice answers with her header.
fn accepted(m: &mut Messages, paths: &mut Paths, now: Instant, conn: ConnId) {
    m.handle_accepted(now, conn, "10.0.0.2:40574".parse().unwrap());
    m.handle_data(now, conn, HEADER, paths);
    let (actions, events) = drain(m);
    assert!(
        sent_text(&actions).contains("<stream:stream"),
        "{actions:?}"
    );
    assert!(events.is_empty(), "{events:?}");
}

#[test]
fn libpurple_chats_without_id_are_each_taken_once_with_no_receipt_and_typing_is_ignored() {
    let now = Instant::now();
    let (mut m, mut paths) = alice();
    let conn = Messages::ACCEPTED_BASE;
    accepted(&mut m, &mut paths, now, conn);
    m.handle_data(now, conn, CHAT, &mut paths);
    m.handle_data(now, conn, TYPING, &mut paths);
    m.handle_data(now, conn, CHAT, &mut paths);
    let (actions, events) = drain(&mut m);
    let ids: Vec<&String> = events
        .iter()
        .map(|e| match e {
            Event::Message { from, id, body, .. } => {
                assert_eq!((from.as_str(), body.as_str()), (FRANK, "same words"));
                id
            }
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(ids.len(), 2, "the same words twice are two messages");
    assert_ne!(ids[0], ids[1]);
    assert!(ids.iter().all(|i| i.starts_with("local-")), "{ids:?}");
    assert!(
        !sent_text(&actions).contains("received"),
        "no receipt was asked for: {actions:?}"
    );
    assert!(m.stats().dropped.is_empty(), "{:?}", m.stats().dropped);
}

#[test]
fn a_reply_goes_on_the_stream_the_legacy_peer_opened_and_counts_without_receipt() {
    let now = Instant::now();
    let (mut m, mut paths) = alice();
    let conn = Messages::ACCEPTED_BASE;
    accepted(&mut m, &mut paths, now, conn);
    let id = m
        .send(now, FRANK, "hi frank", Duration::from_secs(5), &mut paths)
        .unwrap();
    let (actions, events) = drain(&mut m);
    assert!(
        !actions.iter().any(|a| matches!(a, Action::Connect { .. })),
        "no second connection: {actions:?}"
    );
    assert!(actions.iter().any(
        |a| matches!(a, Action::Send { conn: c, bytes } if *c == conn
            && String::from_utf8_lossy(bytes).contains("hi frank"))
    ));
    assert!(
        matches!(&events[..], [Event::Delivered { id: i, via: Via::Tcp, receipt: false, .. }] if *i == id),
        "{events:?}"
    );
}

#[test]
fn a_second_stream_from_a_legacy_peer_replaces_the_first_politely() {
    let now = Instant::now();
    let (mut m, mut paths) = alice();
    let first = Messages::ACCEPTED_BASE;
    let second = first + 1;
    accepted(&mut m, &mut paths, now, first);
    m.handle_accepted(now, second, "10.0.0.2:40575".parse().unwrap());
    m.handle_data(now, second, HEADER, &mut paths);
    let (actions, _) = drain(&mut m);
    assert!(actions.contains(&Action::Send {
        conn: first,
        bytes: xml::STREAM_END.to_vec()
    }));
    m.handle_data(now, first, b"</stream:stream>", &mut paths);
    assert_eq!(drain(&mut m).0, vec![Action::Close { conn: first }]);
    m.send(
        now,
        FRANK,
        "on the new one",
        Duration::from_secs(5),
        &mut paths,
    );
    let (actions, _) = drain(&mut m);
    assert!(actions
        .iter()
        .any(|a| matches!(a, Action::Send { conn, .. } if *conn == second)));
}

#[test]
fn a_stream_end_is_answered_in_kind_and_at_shutdown_we_end_first_and_close_after() {
    let now = Instant::now();
    let (mut m, mut paths) = alice();
    let conn = Messages::ACCEPTED_BASE;
    accepted(&mut m, &mut paths, now, conn);
    m.handle_data(now, conn, b"</stream:stream>", &mut paths);
    let (actions, _) = drain(&mut m);
    assert_eq!(
        actions,
        vec![
            Action::Send {
                conn,
                bytes: xml::STREAM_END.to_vec()
            },
            Action::Close { conn }
        ]
    );
    // At shutdown we end first, and close once the peer has answered in kind (RFC 6120
    // §4.4), or after STREAM_END_WAIT if it never does.
    for answers in [true, false] {
        let (mut m, mut paths) = alice();
        accepted(&mut m, &mut paths, now, conn);
        m.close(now);
        let (actions, _) = drain(&mut m);
        assert_eq!(
            actions,
            vec![Action::Send {
                conn,
                bytes: xml::STREAM_END.to_vec()
            }]
        );
        assert!(m.has_streams());
        if answers {
            m.handle_data(now, conn, b"</stream:stream>", &mut paths);
        } else {
            assert_eq!(m.poll_timeout(), Some(now + STREAM_END_WAIT));
            m.handle_timeout(now + STREAM_END_WAIT, &mut paths);
        }
        assert_eq!(drain(&mut m).0, vec![Action::Close { conn }]);
        assert!(!m.has_streams());
    }
}

#[test]
fn a_message_to_a_legacy_peer_is_retried_on_a_new_connection_after_a_failed_connect() {
    let now = Instant::now();
    let (mut m, mut paths) = alice();
    let id = m
        .send(now, FRANK, "persist", Duration::from_secs(10), &mut paths)
        .unwrap();
    let (actions, _) = drain(&mut m);
    let Some(Action::Connect { conn, .. }) = actions.first().cloned() else {
        panic!("{actions:?}")
    };
    m.handle_closed(now, conn, true, &mut paths);
    let later = now + LEGACY_RETRY;
    m.handle_timeout(later, &mut paths);
    let (actions, _) = drain(&mut m);
    let Some(Action::Connect { conn: again, .. }) = actions.first().cloned() else {
        panic!("a new connection after {LEGACY_RETRY:?}: {actions:?}")
    };
    m.handle_connected(later, again);
    m.handle_data(later, again, HEADER, &mut paths);
    let (actions, events) = drain(&mut m);
    assert!(sent_text(&actions).contains("persist"));
    assert!(matches!(&events[..], [Event::Delivered { id: i, receipt: false, .. }] if *i == id));
}

/// Connections opened to our XEP-0174 port and left idle: at most a few from one address are
/// kept, none past the handshake timeout, each refused or closed one counted.
#[test]
fn idle_connections_are_bounded_per_address_and_closed_after_the_handshake_timeout() {
    use super::streams::{HANDSHAKE_TIMEOUT, MAX_STREAMS_PER_ADDRESS};
    let (mut m, mut paths) = alice();
    let t = Instant::now();
    let flooder: SocketAddr = "10.0.0.66:40000".parse().unwrap();
    for k in 0..20u64 {
        m.handle_accepted(t, Messages::ACCEPTED_BASE + k, flooder);
    }
    // Frank, from another address, still gets in.
    m.handle_accepted(t, Messages::ACCEPTED_BASE + 100, frank_addr());
    let (actions, _) = drain(&mut m);
    let closed: Vec<ConnId> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Close { conn } => Some(*conn),
            _ => None,
        })
        .collect();
    assert_eq!(closed.len(), 20 - MAX_STREAMS_PER_ADDRESS);
    assert!(!closed.contains(&(Messages::ACCEPTED_BASE + 100)));
    assert_eq!(
        m.stats().dropped[&DropReason::TableFull],
        (20 - MAX_STREAMS_PER_ADDRESS) as u64
    );
    // Nothing said on them: all closed at the handshake timeout, Frank's too.
    assert_eq!(m.poll_timeout(), Some(t + HANDSHAKE_TIMEOUT));
    m.handle_timeout(t + HANDSHAKE_TIMEOUT, &mut paths);
    let (actions, _) = drain(&mut m);
    let closed = actions
        .iter()
        .filter(|a| matches!(a, Action::Close { .. }))
        .count();
    assert_eq!(closed, MAX_STREAMS_PER_ADDRESS + 1);
    assert_eq!(
        m.stats().dropped[&DropReason::HandshakeTimeout],
        MAX_STREAMS_PER_ADDRESS as u64 + 1
    );
}

/// A stream that never opens may not make us hold much: past MAX_UNOPENED_BYTES it is closed
/// and counted; an open one (frank's) sends a stanza far larger.
#[test]
fn a_stream_that_never_opens_is_closed_past_a_few_kilobytes_and_an_open_one_is_not() {
    use super::streams::MAX_UNOPENED_BYTES;
    let now = Instant::now();
    let (mut m, mut paths) = alice();
    let stranger = Messages::ACCEPTED_BASE + 7;
    m.handle_accepted(now, stranger, "10.0.0.66:40000".parse().unwrap());
    let header = b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' from='mallory@x' to='alice@vm'>";
    m.handle_data(now, stranger, header, &mut paths);
    let (actions, _) = drain(&mut m);
    assert!(
        sent_text(&actions).contains("<stream:stream"),
        "answered, to authenticate next"
    );
    // A stanza that never ends, before authenticating.
    m.handle_data(now, stranger, b"<message><body>", &mut paths);
    let chunk = [b'x'; 1024];
    let mut fed = 0;
    let closed_at = loop {
        m.handle_data(now, stranger, &chunk, &mut paths);
        fed += chunk.len();
        let (actions, _) = drain(&mut m);
        if actions
            .iter()
            .any(|a| matches!(a, Action::Close { conn } if *conn == stranger))
        {
            break fed;
        }
        assert!(fed < 10 * MAX_UNOPENED_BYTES, "never closed");
    };
    assert!(
        closed_at <= MAX_UNOPENED_BYTES + chunk.len(),
        "closed after {closed_at} bytes"
    );
    assert_eq!(m.stats().dropped[&DropReason::StreamError], 1);
    // Frank's stream is open: a 100 KiB chat is one message.
    let conn = Messages::ACCEPTED_BASE;
    accepted(&mut m, &mut paths, now, conn);
    let text = "y".repeat(100 * 1024);
    let chat = format!(
        "<message to='alice@vm' from='frank@frankhost' type='chat'><body>{text}</body></message>"
    );
    for part in chat.as_bytes().chunks(1024) {
        m.handle_data(now, conn, part, &mut paths);
    }
    let (actions, events) = drain(&mut m);
    assert!(!actions.iter().any(|a| matches!(a, Action::Close { .. })));
    assert!(
        matches!(&events[..], [Event::Message { body, .. }] if body.len() == text.len()),
        "{}",
        events.len()
    );
}

/// A legacy peer connecting from its second announced address is frank, not a stranger; from
/// an address it never announced, it is refused.
#[test]
fn a_legacy_peer_may_connect_from_any_address_it_announced() {
    let now = Instant::now();
    let (mut m, mut paths) = alice();
    let conn = Messages::ACCEPTED_BASE;
    m.handle_accepted(now, conn, SocketAddr::new(frank_second_addr(), 40575));
    m.handle_data(now, conn, HEADER, &mut paths);
    m.handle_data(now, conn, CHAT, &mut paths);
    let (_, events) = drain(&mut m);
    assert!(
        matches!(&events[..], [Event::Message { from, .. }] if from == FRANK),
        "{events:?}"
    );
    let other = Messages::ACCEPTED_BASE + 1;
    m.handle_accepted(now, other, "10.0.0.99:40576".parse().unwrap());
    m.handle_data(now, other, HEADER, &mut paths);
    let (actions, _) = drain(&mut m);
    assert!(actions
        .iter()
        .any(|a| matches!(a, Action::Close { conn } if *conn == other)));
}
