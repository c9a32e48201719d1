//! Two (or three) engines wired by a modelled network on a virtual clock: TCP only where unicast
//! flows both ways, the courier wherever multicast flows.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::*;
use crate::identity::Identity;
use crate::messages::stanza::Activity;
use crate::paths::{Health, Via};

const LATENCY: Duration = Duration::from_millis(1);

struct Net {
    now: Instant,
    t0: Instant,
    nodes: Vec<Messages>,
    /// (from, to) pairs whose unicast is dropped.
    unicast_drop: HashSet<(usize, usize)>,
    /// (from, to) pairs whose multicast is dropped.
    multicast_drop: HashSet<(usize, usize)>,
    /// conn id at a node → (other node, its conn id)
    links: BTreeMap<(usize, ConnId), (usize, ConnId)>,
    next_accept: ConnId,
    inflight: Vec<(Instant, usize, Delivery)>,
    events: Vec<(Instant, usize, Event)>,
    courier_frames: usize,
}

enum Delivery {
    Connected(ConnId),
    Data(ConnId, Vec<u8>),
    Closed(ConnId),
    Courier(Vec<u8>),
    Probe(SocketAddr, Vec<u8>),
}

fn addr(i: usize) -> SocketAddr {
    format!("10.0.0.{}:5298", i + 1).parse().unwrap()
}

fn probe_addr(i: usize) -> SocketAddr {
    format!("10.0.0.{}:5299", i + 1).parse().unwrap()
}

impl Net {
    fn new(n: usize) -> Net {
        let ids: Vec<Identity> = (0..n)
            .map(|i| Identity::from_secret([i as u8 + 1; 32]))
            .collect();
        let mut nodes: Vec<Messages> = (0..n)
            .map(|i| {
                Messages::new(
                    Identity::from_secret([i as u8 + 1; 32]),
                    &format!("n{i}@lab"),
                    i as u64,
                )
            })
            .collect();
        for (i, node) in nodes.iter_mut().enumerate() {
            for (j, id) in ids.iter().enumerate() {
                if i != j {
                    node.set_peer(PeerInfo {
                        id: format!("n{j}"),
                        key: id.public(),
                        instance: format!("n{j}@lab"),
                        addr: addr(j),
                        probe_addr: Some(probe_addr(j)),
                        legacy: false,
                    });
                }
            }
        }
        let t0 = Instant::now();
        Net {
            now: t0,
            t0,
            nodes,
            unicast_drop: HashSet::new(),
            multicast_drop: HashSet::new(),
            links: BTreeMap::new(),
            next_accept: Messages::ACCEPTED_BASE,
            inflight: Vec::new(),
            events: Vec::new(),
            courier_frames: 0,
        }
    }

    fn unicast_ok(&self, a: usize, b: usize) -> bool {
        !self.unicast_drop.contains(&(a, b)) && !self.unicast_drop.contains(&(b, a))
    }

    fn drain(&mut self) {
        for i in 0..self.nodes.len() {
            while let Some(a) = self.nodes[i].poll_action() {
                if std::env::var("ENGINE_DEBUG").is_ok() {
                    match &a {
                        Action::Send { conn, bytes } => eprintln!(
                            "{:?} n{i} send {conn}: {}",
                            self.now - self.t0,
                            String::from_utf8_lossy(bytes)
                        ),
                        other => eprintln!("{:?} n{i} {:?}", self.now - self.t0, other),
                    }
                }
                match a {
                    Action::Connect { conn, addr: to } => {
                        let j = (0..self.nodes.len()).find(|j| addr(*j) == to).unwrap();
                        if self.unicast_ok(i, j) {
                            let acc = self.next_accept;
                            self.next_accept += 1;
                            self.links.insert((i, conn), (j, acc));
                            self.links.insert((j, acc), (i, conn));
                            self.nodes[j].handle_accepted(self.now, acc, addr(i));
                            self.inflight.push((
                                self.now + 2 * LATENCY,
                                i,
                                Delivery::Connected(conn),
                            ));
                        }
                        // else: SYNs vanish; the engine's connect timeout decides.
                    }
                    Action::Send { conn, bytes } => {
                        if let Some((j, c)) = self.links.get(&(i, conn)).copied() {
                            if self.unicast_ok(i, j) {
                                self.inflight.push((
                                    self.now + LATENCY,
                                    j,
                                    Delivery::Data(c, bytes),
                                ));
                            }
                        }
                    }
                    Action::Close { conn } => {
                        if let Some((j, c)) = self.links.remove(&(i, conn)) {
                            self.links.remove(&(j, c));
                            self.inflight
                                .push((self.now + LATENCY, j, Delivery::Closed(c)));
                        }
                    }
                    Action::Probe { addr: to, bytes } => {
                        let j = (0..self.nodes.len())
                            .find(|j| probe_addr(*j) == to || addr(*j).ip() == to.ip())
                            .unwrap();
                        if !self.unicast_drop.contains(&(i, j)) {
                            self.inflight.push((
                                self.now + LATENCY,
                                j,
                                Delivery::Probe(probe_addr(i), bytes),
                            ));
                        }
                    }
                    Action::Courier { bytes } => {
                        self.courier_frames += 1;
                        for j in 0..self.nodes.len() {
                            if j != i && !self.multicast_drop.contains(&(i, j)) {
                                self.inflight.push((
                                    self.now + LATENCY,
                                    j,
                                    Delivery::Courier(bytes.clone()),
                                ));
                            }
                        }
                    }
                }
            }
            while let Some(e) = self.nodes[i].poll_event() {
                self.events.push((self.now, i, e));
            }
        }
    }

    fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            self.drain();
            let t_timer = self.nodes.iter().filter_map(|n| n.poll_timeout()).min();
            let t_flight = self.inflight.iter().map(|f| f.0).min();
            let Some(next) = [t_timer, t_flight].into_iter().flatten().min() else {
                break;
            };
            if next > end {
                break;
            }
            self.now = self.now.max(next);
            let now = self.now;
            let (due, keep): (Vec<_>, Vec<_>) = self.inflight.drain(..).partition(|f| f.0 <= now);
            self.inflight = keep;
            for (_, j, d) in due {
                match d {
                    Delivery::Connected(c) => self.nodes[j].handle_connected(now, c),
                    Delivery::Data(c, b) => self.nodes[j].handle_data(now, c, &b),
                    Delivery::Closed(c) => self.nodes[j].handle_closed(now, c, false),
                    Delivery::Probe(src, b) => {
                        let _ = self.nodes[j].handle_probe(now, src, &b);
                    }
                    Delivery::Courier(b) => {
                        let _ = self.nodes[j].handle_courier(now, &b);
                    }
                }
            }
            for n in &mut self.nodes {
                if n.poll_timeout().is_some_and(|t| t <= now) {
                    n.handle_timeout(now);
                }
            }
        }
        self.drain();
        self.now = end;
    }

    fn delivered(&self, id: &str) -> Option<(Via, Duration)> {
        self.events.iter().find_map(|(_, _, e)| match e {
            Event::Delivered {
                id: i,
                via,
                latency,
                ..
            } if i == id => Some((*via, *latency)),
            _ => None,
        })
    }

    fn received(&self, at: usize) -> Vec<String> {
        self.events
            .iter()
            .filter(|(_, n, _)| *n == at)
            .filter_map(|(_, _, e)| match e {
                Event::Message { body, .. } => Some(body.clone()),
                Event::Invitation { activity, .. } => Some(format!("invitation:{}", activity.name)),
                _ => None,
            })
            .collect()
    }
}

/// A courier frame from n0 to n1 carrying a chat stanza, signed by n0.
fn courier_chat_n0_to_n1(id: Option<String>, body: &str) -> Vec<u8> {
    let chat = super::super::stanza::Stanza::Chat {
        id,
        body: body.into(),
        receipt_requested: true,
    }
    .to_element("n0@lab", "n1@lab");
    let f = crate::frame::Repr {
        kind: crate::frame::Kind::Courier,
        sender: Identity::from_secret([1; 32]).public(),
        recipient: Identity::from_secret([2; 32]).public(),
        id: 7,
        payload: chat.to_stanza_bytes(),
    };
    f.emit(&Identity::from_secret([1; 32])).unwrap()
}

#[test]
fn a_healthy_path_delivers_over_tcp_with_no_courier_frame() {
    let mut net = Net::new(2);
    let now = net.now;
    let id = net.nodes[0]
        .send(now, "n1", "hello", Duration::from_secs(10))
        .unwrap();
    net.run_for(Duration::from_secs(2));
    if std::env::var("ENGINE_DEBUG").is_ok() {
        eprintln!("{:#?}", net.events);
    }
    let (via, latency) = net.delivered(&id).expect("delivered");
    assert_eq!(via, Via::Tcp);
    assert!(latency < Duration::from_millis(250));
    assert_eq!(net.received(1), vec!["hello"]);
    assert_eq!(net.courier_frames, 0);
    // A second message reuses the authenticated stream.
    let now = net.now;
    let id2 = net.nodes[0]
        .send(now, "n1", "again", Duration::from_secs(10))
        .unwrap();
    net.run_for(Duration::from_secs(1));
    assert_eq!(net.delivered(&id2).unwrap().0, Via::Tcp);
}

#[test]
fn the_seed_black_hole_delivers_by_courier_fast_and_once() {
    let mut net = Net::new(3);
    net.unicast_drop.insert((0, 1));
    let mut ids = Vec::new();
    for k in 0..20 {
        let now = net.now;
        ids.push(
            net.nodes[0]
                .invite(
                    now,
                    "n1",
                    Activity {
                        name: format!("act{k}"),
                        ..Activity::default()
                    },
                    "",
                    Duration::from_secs(30),
                )
                .unwrap(),
        );
        net.run_for(Duration::from_secs(2));
    }
    for id in &ids {
        let (via, latency) = net
            .delivered(id)
            .unwrap_or_else(|| panic!("{id} not delivered"));
        assert_eq!(via, Via::Courier);
        assert!(latency < Duration::from_secs(1), "{latency:?}");
    }
    let got = net.received(1);
    assert_eq!(got.len(), 20, "each exactly once: {got:?}");
    // Meanwhile n0 to n2 still uses TCP.
    let now = net.now;
    let id = net.nodes[0]
        .send(now, "n2", "hi", Duration::from_secs(5))
        .unwrap();
    net.run_for(Duration::from_secs(1));
    assert_eq!(net.delivered(&id).unwrap().0, Via::Tcp);
}

#[test]
fn a_badly_signed_invitation_is_refused_and_a_stranger_cannot_talk() {
    let mut net = Net::new(2);
    // n0 believes n1's key is someone else's: n1's auth then fails at n0.
    let fake = Identity::from_secret([99; 32]).public();
    net.nodes[0].set_peer(PeerInfo {
        id: "n1".into(),
        key: fake,
        instance: "n1@lab".into(),
        addr: addr(1),
        probe_addr: None,
        legacy: false,
    });
    let now = net.now;
    let _ = net.nodes[0].send(now, "n1", "hello?", Duration::from_secs(3));
    net.run_for(Duration::from_secs(4));
    assert!(net.received(1).is_empty());
    assert!(net
        .events
        .iter()
        .any(|(_, _, e)| matches!(e, Event::Dropped { .. } | Event::Failed { .. })));
}

#[test]
fn a_deadline_cancels_every_path() {
    let mut net = Net::new(2);
    net.unicast_drop.insert((0, 1));
    // Multicast dead too: nothing can carry it.
    let now = net.now;
    net.nodes[1].remove_peer("n0"); // n1 ignores n0's frames as a stranger's
    let id = net.nodes[0]
        .send(now, "n1", "lost", Duration::from_secs(2))
        .unwrap();
    net.run_for(Duration::from_secs(5));
    assert!(net
        .events
        .iter()
        .any(|(_, _, e)| matches!(e, Event::Failed { id: i, .. } if *i == id)));
    let frames_then = net.courier_frames;
    net.run_for(Duration::from_secs(10));
    assert_eq!(
        net.courier_frames, frames_then,
        "no retransmission after the deadline"
    );
    let _ = net.t0;
}

#[test]
fn a_stream_that_stops_delivering_is_dropped_and_the_peer_is_no_longer_up() {
    let mut net = Net::new(2);
    let now = net.now;
    let id = net.nodes[0]
        .send(now, "n1", "before", Duration::from_secs(5))
        .unwrap();
    net.run_for(Duration::from_secs(1));
    assert_eq!(net.delivered(&id).unwrap().0, Via::Tcp);
    // The path breaks under an established stream.
    net.unicast_drop.insert((0, 1));
    let now = net.now;
    let id = net.nodes[0]
        .send(now, "n1", "during", Duration::from_secs(5))
        .unwrap();
    net.run_for(Duration::from_secs(2));
    assert_eq!(net.delivered(&id).unwrap().0, Via::Courier);
    let now = net.now;
    assert_ne!(
        net.nodes[0].paths.state(now, "n1"),
        crate::paths::PathState::Up
    );
}

#[test]
fn probes_and_observations_name_the_broken_direction_on_both_sides() {
    let mut net = Net::new(2);
    net.unicast_drop.insert((0, 1));
    let now = net.now;
    // Something is heard by multicast both ways (presence would tell the driver so).
    net.nodes[0].paths.on_multicast_heard(now, "n1");
    net.nodes[1].paths.on_multicast_heard(now, "n0");
    let id = net.nodes[0]
        .send(now, "n1", "hi", Duration::from_secs(10))
        .unwrap();
    net.run_for(Duration::from_secs(40));
    assert_eq!(net.delivered(&id).unwrap().0, Via::Courier);
    let now = net.now;
    let a = net.nodes[0].paths.diagnose(now, "n1", "bob");
    assert_eq!(a.state, crate::paths::PathState::UnicastBroken, "{a:?}");
    assert_eq!(
        (a.unicast_out, a.unicast_in),
        (Health::Broken, Health::Ok),
        "{a:?}"
    );
    assert_eq!(
        (a.multicast_out, a.multicast_in),
        (Health::Ok, Health::Ok),
        "{a:?}"
    );
    assert!(
        a.text
            .starts_with("unicast from you to bob is dropped on the way"),
        "{}",
        a.text
    );
    let b = net.nodes[1].paths.diagnose(now, "n0", "alice");
    assert_eq!(
        (b.unicast_out, b.unicast_in),
        (Health::Ok, Health::Broken),
        "{b:?}"
    );
    assert_eq!(b.state, crate::paths::PathState::UnicastBroken, "{b:?}");
    // Sticky: the next delivery goes straight by courier.
    assert_eq!(net.nodes[0].paths.plan(now, "n1").0, Via::Courier);
}

#[test]
fn with_neither_tcp_nor_courier_an_invitation_goes_through_a_relay() {
    let mut net = Net::new(3);
    net.unicast_drop.insert((0, 1));
    net.multicast_drop.insert((0, 1));
    let now = net.now;
    let id = net.nodes[0]
        .invite(
            now,
            "n1",
            Activity {
                name: "chess".into(),
                ..Activity::default()
            },
            "",
            Duration::from_secs(10),
        )
        .unwrap();
    net.run_for(Duration::from_secs(5));
    let (via, latency) = net.delivered(&id).expect("delivered");
    assert_eq!(via, Via::Relay);
    assert!(latency < Duration::from_secs(2), "{latency:?}");
    let relayed_by = net.events.iter().find_map(|(_, n, e)| match e {
        Event::Invitation { relayed_by, .. } if *n == 1 => Some(relayed_by.clone()),
        _ => None,
    });
    assert_eq!(relayed_by, Some(Some("n2".to_string())));
    // Sticky: the next one goes to the relay at once.
    assert_eq!(net.nodes[0].paths.plan(net.now, "n1").0, Via::Relay);
    let now = net.now;
    let id2 = net.nodes[0]
        .invite(
            now,
            "n1",
            Activity {
                name: "go".into(),
                ..Activity::default()
            },
            "",
            Duration::from_secs(10),
        )
        .unwrap();
    net.run_for(Duration::from_secs(3));
    assert_eq!(net.delivered(&id2).unwrap().0, Via::Relay);
}

#[test]
fn a_relay_cannot_forge_a_chat_message() {
    let mut net = Net::new(3);
    net.unicast_drop.insert((0, 1));
    net.multicast_drop.insert((0, 1));
    let now = net.now;
    let _ = net.nodes[0].send(now, "n1", "unsigned", Duration::from_secs(4));
    net.run_for(Duration::from_secs(5));
    assert!(net.received(1).is_empty(), "a relayed chat is not believed");
    assert!(net.events.iter().any(|(_, n, e)| *n == 1
        && matches!(
            e,
            Event::Dropped {
                reason: "relayed-chat",
                ..
            }
        )));
}

#[test]
fn ids_seen_before_a_restart_are_not_shown_again_but_still_get_a_receipt() {
    let mut net = Net::new(2);
    let now = net.now;
    let id = net.nodes[0]
        .send(now, "n1", "once", Duration::from_secs(5))
        .unwrap();
    net.run_for(Duration::from_secs(1));
    assert_eq!(net.received(1), vec!["once"]);
    // n1 restarts: a fresh engine, told what its store had seen.
    let mut fresh = Messages::new(Identity::from_secret([2; 32]), "n1@lab", 77);
    fresh.set_peer(PeerInfo {
        id: "n0".into(),
        key: Identity::from_secret([1; 32]).public(),
        instance: "n0@lab".into(),
        addr: addr(0),
        probe_addr: Some(probe_addr(0)),
        legacy: false,
    });
    fresh.mark_seen("n0", &id);
    net.nodes[1] = fresh;
    net.events.clear();
    // The same stanza again (a late courier copy, say) is acknowledged but not shown.
    let bytes = courier_chat_n0_to_n1(Some(id.clone()), "once");
    let now = net.now;
    net.nodes[1].handle_courier(now, &bytes).unwrap();
    net.drain();
    assert!(net.received(1).is_empty());
}

/// One engine and a legacy XEP-0174 client scripted byte for byte as finch 2.14 (libpurple's
/// Bonjour protocol) behaves on the wire.
mod legacy {
    use super::*;

    const FRANK: &str = "frank@frankhost";
    /// finch's stream header: double quotes, an encoding, a newline, no version.
    const HEADER: &[u8] = b"<?xml version=\"1.0\" encoding=\"UTF-8\" ?>\n<stream:stream xmlns=\"jabber:client\" xmlns:stream=\"http://etherx.jabber.org/streams\" from=\"frank@frankhost\" to=\"alice@vm\">";
    const CHAT: &[u8] = b"<message to='alice@vm' from='frank@frankhost' type='chat'><body>same words</body><html xmlns='http://www.w3.org/1999/xhtml'><body><font>same words</font></body></html><x xmlns='jabber:x:event'><composing/></x></message>";
    const TYPING: &[u8] = b"<message to='alice@vm' from='frank@frankhost' type='chat'><x xmlns='jabber:x:event'><composing/><id/></x></message>";

    fn frank_addr() -> SocketAddr {
        "10.0.0.2:5298".parse().unwrap()
    }

    fn alice() -> Messages {
        let mut m = Messages::new(Identity::from_secret([1; 32]), "alice@vm", 1);
        m.set_peer(PeerInfo {
            id: FRANK.into(),
            key: [0; 32],
            instance: FRANK.into(),
            addr: frank_addr(),
            probe_addr: None,
            legacy: true,
        });
        m
    }

    fn drain(m: &mut Messages) -> (Vec<Action>, Vec<Event>) {
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
    fn accepted(m: &mut Messages, now: Instant, conn: ConnId) {
        m.handle_accepted(now, conn, "10.0.0.2:40574".parse().unwrap());
        m.handle_data(now, conn, HEADER);
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
        let mut m = alice();
        let conn = Messages::ACCEPTED_BASE;
        accepted(&mut m, now, conn);
        m.handle_data(now, conn, CHAT);
        m.handle_data(now, conn, TYPING);
        m.handle_data(now, conn, CHAT);
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
        let mut m = alice();
        let conn = Messages::ACCEPTED_BASE;
        accepted(&mut m, now, conn);
        let id = m
            .send(now, FRANK, "hi frank", Duration::from_secs(5))
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
        let mut m = alice();
        let first = Messages::ACCEPTED_BASE;
        let second = first + 1;
        accepted(&mut m, now, first);
        m.handle_accepted(now, second, "10.0.0.2:40575".parse().unwrap());
        m.handle_data(now, second, HEADER);
        let (actions, _) = drain(&mut m);
        assert!(actions.contains(&Action::Send {
            conn: first,
            bytes: xml::STREAM_END.to_vec()
        }));
        m.handle_data(now, first, b"</stream:stream>");
        assert_eq!(drain(&mut m).0, vec![Action::Close { conn: first }]);
        m.send(now, FRANK, "on the new one", Duration::from_secs(5));
        let (actions, _) = drain(&mut m);
        assert!(actions
            .iter()
            .any(|a| matches!(a, Action::Send { conn, .. } if *conn == second)));
    }

    #[test]
    fn a_stream_end_is_answered_with_a_stream_end_and_shutdown_ends_every_stream() {
        let now = Instant::now();
        let mut m = alice();
        let conn = Messages::ACCEPTED_BASE;
        accepted(&mut m, now, conn);
        m.handle_data(now, conn, b"</stream:stream>");
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
            let mut m = alice();
            accepted(&mut m, now, conn);
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
                m.handle_data(now, conn, b"</stream:stream>");
            } else {
                assert_eq!(m.poll_timeout(), Some(now + STREAM_END_WAIT));
                m.handle_timeout(now + STREAM_END_WAIT);
            }
            assert_eq!(drain(&mut m).0, vec![Action::Close { conn }]);
            assert!(!m.has_streams());
        }
    }

    #[test]
    fn a_message_from_a_legacy_peer_is_delivered_on_a_new_stream_after_a_broken_one() {
        let now = Instant::now();
        let mut m = alice();
        let id = m
            .send(now, FRANK, "persist", Duration::from_secs(10))
            .unwrap();
        let (actions, _) = drain(&mut m);
        let Some(Action::Connect { conn, .. }) = actions.first().cloned() else {
            panic!("{actions:?}")
        };
        m.handle_closed(now, conn, true);
        let later = now + LEGACY_RETRY;
        m.handle_timeout(later);
        let (actions, _) = drain(&mut m);
        let Some(Action::Connect { conn: again, .. }) = actions.first().cloned() else {
            panic!("a new connection after {LEGACY_RETRY:?}: {actions:?}")
        };
        m.handle_connected(later, again);
        m.handle_data(later, again, HEADER);
        let (actions, events) = drain(&mut m);
        assert!(sent_text(&actions).contains("persist"));
        assert!(
            matches!(&events[..], [Event::Delivered { id: i, receipt: false, .. }] if *i == id)
        );
    }
}

#[test]
fn a_chat_without_id_from_an_nbhd_peer_is_dropped_and_counted() {
    let mut net = Net::new(2);
    let bytes = courier_chat_n0_to_n1(None, "who am I");
    let now = net.now;
    net.nodes[1].handle_courier(now, &bytes).unwrap();
    net.drain();
    assert!(net.received(1).is_empty());
    assert_eq!(
        net.nodes[1].stats().dropped.get("chat-without-id"),
        Some(&1)
    );
    assert!(net.events.iter().any(|(_, n, e)| *n == 1
        && matches!(
            e,
            Event::Dropped {
                reason: "chat-without-id",
                ..
            }
        )));
}
