//! Whole Nodes on the shared virtual network: presence finds the peers, messages and paths
//! carry and diagnose, the store is written and confirmed; nothing is wired by hand. Faults are
//! the vnet's: the seed's one-way unicast black hole, multicast loss, random loss, a failing
//! store, a crash at the worst moment.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use super::*;
use crate::frame;
use crate::identity::Identity;
use crate::messages::sealed::{self, Purpose};
use crate::messages::stanza::Stanza;
use crate::paths::Health;
use crate::vnet::{self, Store, Vnet, IFACE, P2PJ_PORT, PROBE_PORT};

const NICKS: [&str; 4] = ["alice", "bob", "carol", "dave"];

fn secret(i: usize) -> [u8; 32] {
    [i as u8 + 1; 32]
}

fn config(i: usize) -> Config {
    Config {
        secret: secret(i),
        nick: NICKS[i].to_string(),
        host: "lab".into(),
        hostname: None,
        status: "avail".into(),
        msg: String::new(),
        p2pj_port: P2PJ_PORT,
        probe_port: PROBE_PORT,
        record_ttl: None,
        seed: 100 + i as u64,
        entropy: [0x40 + i as u8; 32],
        unix_ms: 1_800_000_000_000,
    }
}

fn start(config: Config, restored: Restored, ip: Ipv4Addr, now: Instant) -> Node {
    let mut n = Node::new(config, restored, now);
    n.handle_interfaces(now, vec![(IFACE, vec![IfaceAddr::new(ip, 24)])]);
    n
}

/// `n` nodes that have found each other.
fn net(n: usize) -> Vnet<Node> {
    let mut net = Vnet::new(7);
    for i in 0..n {
        net.add(|ip, now| start(config(i), Restored::default(), ip, now));
    }
    let found = net.run_until_true(Duration::from_secs(10), |net| {
        (0..n).all(|i| net.host(i).peers().count() == n - 1)
    });
    assert!(found.is_some(), "discovery");
    net
}

fn id(net: &Vnet<Node>, i: usize) -> String {
    net.host(i).id()
}

fn send(net: &mut Vnet<Node>, from: usize, to: usize, text: &str, timeout: Duration) -> String {
    let peer = id(net, to);
    net.with(from, |n, now| {
        n.handle_command(
            now,
            Command::Send {
                peer,
                text: text.into(),
                timeout,
            },
        )
    })
    .map(|o| match o {
        Outcome::Delivery(id) => id,
        other => panic!("{other:?}"),
    })
    .expect("a known peer")
}

fn invite(net: &mut Vnet<Node>, from: usize, to: usize, name: &str, timeout: Duration) -> String {
    let peer = id(net, to);
    net.with(from, |n, now| {
        n.handle_command(
            now,
            Command::Invite {
                peer,
                activity: name.into(),
                timeout,
            },
        )
    })
    .map(|o| match o {
        Outcome::Delivery(id) => id,
        other => panic!("{other:?}"),
    })
    .expect("a known peer")
}

/// When and how `id` was delivered, as its sender saw it.
fn delivered(net: &Vnet<Node>, id: &str) -> Option<(Instant, Via, Duration)> {
    net.events.iter().find_map(|(t, _, e)| match e {
        Event::Delivered {
            id: i,
            via,
            latency,
            ..
        } if i == id => Some((*t, *via, *latency)),
        _ => None,
    })
}

fn failed(net: &Vnet<Node>, id: &str) -> bool {
    net.events
        .iter()
        .any(|(_, _, e)| matches!(e, Event::Failed { id: i, .. } if i == id))
}

/// What host `at` was shown: message texts, and `invitation:NAME`.
fn shown(net: &Vnet<Node>, at: usize) -> Vec<String> {
    net.events_of(at)
        .filter_map(|e| match e {
            Event::Message { text, .. } => Some(text.clone()),
            Event::Invitation { activity, .. } => Some(format!("invitation:{}", activity.name)),
            _ => None,
        })
        .collect()
}

/// Courier frames on the medium since `since`, by sender and kind.
fn frames(net: &Vnet<Node>, from: usize, kind: frame::Kind, since: Instant) -> Vec<frame::Repr> {
    net.sent
        .iter()
        .filter(|s| s.from == from && s.at >= since && s.channel == Channel::Courier)
        .filter_map(|s| frame::Repr::parse(&s.payload).ok())
        .filter(|f| f.kind == kind)
        .collect()
}

fn diagnosis(net: &Vnet<Node>, at: usize, of: usize) -> Diagnosis {
    let peer = id(net, of);
    net.host(at)
        .doctor(net.now)
        .into_iter()
        .find(|(p, _)| p.id == peer)
        .map(|(_, d)| d)
        .expect("a doctor row")
}

fn dropped(net: &Vnet<Node>, at: usize, reason: DropReason) -> u64 {
    let s = net.host(at).stats();
    s.messages.dropped.get(&reason).copied().unwrap_or(0)
        + s.dropped
            .iter()
            .filter(|((_, r), _)| *r == reason)
            .map(|(_, n)| n)
            .sum::<u64>()
}

#[test]
fn a_healthy_path_delivers_over_tcp_with_no_courier_frame() {
    let mut net = net(2);
    let since = net.now;
    let m = send(&mut net, 0, 1, "hello", Duration::from_secs(10));
    net.run_for(Duration::from_secs(2));
    let (_, via, latency) = delivered(&net, &m).expect("delivered");
    assert_eq!(via, Via::Tcp);
    assert!(latency < Duration::from_millis(250), "{latency:?}");
    assert_eq!(shown(&net, 1), vec!["hello"]);
    let m2 = send(&mut net, 0, 1, "again", Duration::from_secs(10));
    net.run_for(Duration::from_secs(1));
    assert_eq!(delivered(&net, &m2).unwrap().1, Via::Tcp);
    assert!(
        frames(&net, 0, frame::Kind::Courier, since).is_empty(),
        "no courier frame on a healthy path"
    );
    // What was received is in the receiver's store; what was sent, with its path, in the sender's.
    assert!(net.stores[1].records.iter().any(
        |r| matches!(r, Record::Message { text, via: Some(Via::Tcp), .. } if text == "hello")
    ));
    assert!(net.stores[0].records.contains(&Record::Delivered {
        id: m,
        via: Via::Tcp
    }));
}

/// A first message far larger than a stream's opening allowance, written behind the opening
/// (the vnet, as TCP, hands both to the reader in one read): the stream is open by then, and
/// the message goes over it.
#[test]
fn a_large_first_message_rides_the_stream_it_opens() {
    use crate::messages::streams::MAX_UNOPENED_BYTES;
    let mut net = net(2);
    let text = "z".repeat(4 * MAX_UNOPENED_BYTES);
    let m = send(&mut net, 0, 1, &text, Duration::from_secs(10));
    net.run_for(Duration::from_secs(2));
    let (_, via, _) = delivered(&net, &m).expect("delivered");
    assert_eq!(via, Via::Tcp);
    assert_eq!(shown(&net, 1), vec![text]);
    assert_eq!(dropped(&net, 1, DropReason::StreamError), 0);
}

#[test]
fn the_seed_black_hole_delivers_by_courier_fast_and_once() {
    let mut net = net(3);
    net.unicast_drop.insert((0, 1));
    let mut ids = Vec::new();
    for k in 0..20 {
        ids.push(invite(
            &mut net,
            0,
            1,
            &format!("act{k}"),
            Duration::from_secs(30),
        ));
        net.run_for(Duration::from_secs(2));
    }
    for m in &ids {
        let (_, via, latency) = delivered(&net, m).unwrap_or_else(|| panic!("{m} not delivered"));
        assert_eq!(via, Via::Courier);
        assert!(latency < Duration::from_secs(1), "{latency:?}");
    }
    assert_eq!(
        shown(&net, 1).len(),
        20,
        "each exactly once: {:?}",
        shown(&net, 1)
    );
    // Meanwhile alice to carol still uses TCP.
    let m = send(&mut net, 0, 2, "hi", Duration::from_secs(5));
    net.run_for(Duration::from_secs(1));
    assert_eq!(delivered(&net, &m).unwrap().1, Via::Tcp);
}

/// A stream to bob is open; then the seed's fault. The first invitation waits for the courier;
/// that win is evidence: from the second on each goes by courier at once, and alice's doctor
/// names the broken direction within a second of the win.
#[test]
fn after_a_courier_win_the_next_deliveries_go_by_courier_at_once() {
    let mut net = net(2);
    let warm = send(&mut net, 0, 1, "warm", Duration::from_secs(5));
    net.run_for(Duration::from_secs(1));
    assert_eq!(delivered(&net, &warm).unwrap().1, Via::Tcp);
    net.unicast_drop.insert((0, 1));
    let first = invite(&mut net, 0, 1, "first", Duration::from_secs(10));
    net.run_until_true(Duration::from_secs(2), |net| {
        delivered(net, &first).is_some()
    });
    let (won_at, via, _) = delivered(&net, &first).expect("first delivered");
    assert_eq!(via, Via::Courier);
    let named = net.run_until_true(Duration::from_secs(1), |net| {
        let d = diagnosis(net, 0, 1);
        d.state == PathState::UnicastBroken
            && (d.unicast_out, d.unicast_in) == (Health::Broken, Health::Ok)
    });
    assert!(
        named.is_some(),
        "doctor within 1 s of the courier win: {:?}",
        diagnosis(&net, 0, 1)
    );
    eprintln!("doctor right {:?} after the courier win", net.now - won_at);
    for k in 2..=10 {
        let m = invite(&mut net, 0, 1, &format!("inv{k}"), Duration::from_secs(10));
        net.run_for(Duration::from_millis(500));
        let (_, via, latency) = delivered(&net, &m).expect("delivered");
        assert_eq!(via, Via::Courier);
        assert!(
            latency <= Duration::from_millis(5),
            "invitation {k}: {latency:?} (the courier goes at once)"
        );
    }
}

/// 20 % of everything every host receives is lost, on top of the seed's black hole: the
/// courier's retransmissions follow the measured round trip and double up once loss is seen.
#[test]
fn under_twenty_percent_loss_and_the_black_hole_every_invitation_arrives_within_a_second() {
    let mut net = net(3);
    net.unicast_drop.insert((0, 1));
    for h in 0..3 {
        net.loss.insert(h, 0.2);
    }
    let mut latencies = Vec::new();
    for k in 0..100 {
        let m = invite(&mut net, 0, 1, &format!("l{k}"), Duration::from_secs(10));
        net.run_until_true(Duration::from_secs(3), |net| delivered(net, &m).is_some());
        let (_, _, latency) = delivered(&net, &m).unwrap_or_else(|| panic!("{m} lost"));
        latencies.push(latency);
        net.run_for(Duration::from_millis(100));
    }
    latencies.sort();
    let worst = *latencies.last().unwrap();
    eprintln!(
        "20 % loss + black hole: p50 {:?} p99 {:?} max {worst:?}",
        latencies[49], latencies[98]
    );
    assert!(worst < Duration::from_secs(1), "{latencies:?}");
    assert_eq!(shown(&net, 1).len(), 100, "each once");
}

/// A courier frame from `by` to `to` carrying `stanza`, sealed and signed as a Node makes it.
fn courier_frame(by: &Identity, to: &Identity, id: u64, stanza: &[u8]) -> Vec<u8> {
    let payload = sealed::seal(by, &to.public(), Purpose::Courier, [3; 24], stanza).unwrap();
    frame::Repr {
        kind: frame::Kind::Courier,
        sender: by.public(),
        recipient: to.public(),
        id,
        payload,
    }
    .emit(by)
    .unwrap()
}

#[test]
fn a_badly_signed_invitation_is_dropped_unacknowledged_and_a_strangers_frame_too() {
    let mut net = net(2);
    let alice = Identity::from_secret(secret(0));
    let bob = Identity::from_secret(secret(1));
    // An invitation that says it is alice's, with a signature over other bytes.
    let forged = Stanza::Invitation {
        id: "inv-forged".into(),
        activity: Activity {
            id: "x".into(),
            name: "x".into(),
            ..Activity::default()
        },
        reason: String::new(),
        signature: Some(crate::messages::stanza::sign_invitation(
            &alice,
            &bob.public(),
            "another-id",
            &Activity::default(),
            "",
        )),
    }
    .to_element("alice@lab", "bob@lab");
    let frame_of = |by: &Identity, stanza: Vec<u8>| courier_frame(by, &bob, 42, &stanza);
    let src = SocketAddr::new(IpAddr::V4(vnet::addr(0)), COURIER_PORT);
    let since = net.now;
    net.inject(
        1,
        Channel::Courier,
        src,
        &frame_of(&alice, forged.to_stanza_bytes()),
    );
    net.run_for(Duration::from_millis(100));
    assert!(shown(&net, 1).is_empty());
    assert_eq!(dropped(&net, 1, DropReason::BadSignature), 1);
    assert!(
        frames(&net, 1, frame::Kind::CourierReceipt, since).is_empty(),
        "no receipt for what was refused"
    );
    // A well-signed chat from a key presence never announced.
    let stranger = Identity::from_secret([99; 32]);
    let chat = Stanza::Chat {
        id: Some("s1".into()),
        body: "hi".into(),
        receipt_requested: true,
    }
    .to_element("x@lab", "bob@lab");
    net.inject(
        1,
        Channel::Courier,
        src,
        &frame_of(&stranger, chat.to_stanza_bytes()),
    );
    net.run_for(Duration::from_millis(100));
    assert!(shown(&net, 1).is_empty());
    assert_eq!(dropped(&net, 1, DropReason::UnknownSender), 1);
}

/// An instance that comes back with another key is a new peer: what its old key signs is
/// no longer taken as it.
#[test]
fn a_peer_that_returns_with_another_key_no_longer_speaks_with_the_old_one() {
    let mut net = net(2);
    let old = Identity::from_secret(secret(1));
    let old_id = id(&net, 1);
    net.crash(1);
    net.restart(1, |ip, now, _| {
        start(
            Config {
                secret: [42; 32],
                ..config(1)
            },
            Restored::default(),
            ip,
            now,
        )
    });
    let new_id = Identity::from_secret([42; 32]).peer_id();
    let changed = net.run_until_true(Duration::from_secs(10), |net| {
        net.host(0).peers().any(|p| p.id == new_id)
    });
    assert!(changed.is_some(), "alice sees bob's new key");
    assert!(net.host(0).peers().all(|p| p.id != old_id));
    // A chat signed with bob's old key, as the courier would carry it.
    let chat = Stanza::Chat {
        id: Some("old-key".into()),
        body: "still me?".into(),
        receipt_requested: true,
    }
    .to_element("bob@lab", "alice@lab");
    let alice = Identity::from_secret(secret(0));
    let bytes = frame::Repr {
        kind: frame::Kind::Courier,
        sender: old.public(),
        recipient: alice.public(),
        id: 7,
        payload: chat.to_stanza_bytes(),
    }
    .emit(&old)
    .unwrap();
    let before = dropped(&net, 0, DropReason::UnknownSender);
    let src = SocketAddr::new(IpAddr::V4(vnet::addr(1)), COURIER_PORT);
    net.inject(0, Channel::Courier, src, &bytes);
    net.run_for(Duration::from_millis(100));
    assert!(shown(&net, 0).is_empty());
    assert_eq!(dropped(&net, 0, DropReason::UnknownSender), before + 1);
}

#[test]
fn a_chat_without_id_from_an_nbhd_peer_is_dropped_and_counted() {
    let mut net = net(2);
    let alice = Identity::from_secret(secret(0));
    let chat = Stanza::Chat {
        id: None,
        body: "who am I".into(),
        receipt_requested: true,
    }
    .to_element("alice@lab", "bob@lab");
    let bob = Identity::from_secret(secret(1));
    let f = courier_frame(&alice, &bob, 7, &chat.to_stanza_bytes());
    let src = SocketAddr::new(IpAddr::V4(vnet::addr(0)), COURIER_PORT);
    net.inject(1, Channel::Courier, src, &f);
    assert!(shown(&net, 1).is_empty());
    assert_eq!(dropped(&net, 1, DropReason::ChatWithoutId), 1);
}

#[test]
fn a_deadline_fails_the_delivery_and_ends_its_courier_retransmissions() {
    let mut net = net(2);
    net.unicast_drop.insert((0, 1));
    net.multicast_drop.insert((0, 1)); // nothing can carry it
    let m = send(&mut net, 0, 1, "lost", Duration::from_secs(2));
    net.run_for(Duration::from_secs(5));
    assert!(failed(&net, &m));
    let frames_then = frames(&net, 0, frame::Kind::Courier, net.t0).len();
    net.run_for(Duration::from_secs(10));
    assert_eq!(
        frames(&net, 0, frame::Kind::Courier, net.t0).len(),
        frames_then,
        "no retransmission after the deadline"
    );
}

/// A delivery whose peer says goodbye while the courier carries it waits (until the peer is
/// back, or its deadline) instead of asking to be woken at once, again and again.
#[test]
fn a_courier_delivery_to_a_peer_that_leaves_does_not_spin() {
    let mut net = net(2);
    net.unicast_drop.insert((0, 1));
    net.unicast_drop.insert((1, 0));
    // Bob takes nothing in: the courier keeps trying.
    net.multicast_drop.insert((0, 1));
    let m = send(&mut net, 0, 1, "are you there", Duration::from_secs(60));
    net.run_for(Duration::from_millis(500));
    assert!(delivered(&net, &m).is_none());
    net.multicast_drop.clear();
    net.with(1, |n, now| n.close(now));
    net.crash(1);
    let gone = net.run_until_true(Duration::from_secs(5), |net| {
        net.host(0).peers().count() == 0
    });
    assert!(gone.is_some(), "alice saw bob's goodbye");
    for _ in 0..3 {
        let next = net.with(0, |n, now| {
            n.handle_timeout(now);
            n.poll_timeout()
        });
        assert!(
            next.is_some_and(|t| t > net.now),
            "alice wants to be woken at {next:?}, now is {:?}",
            net.now
        );
    }
    net.run_for(Duration::from_secs(61));
    assert!(failed(&net, &m), "its deadline still ends the delivery");
}

#[test]
fn a_stream_that_stops_delivering_is_dropped_and_the_peer_is_no_longer_up() {
    let mut net = net(2);
    let m = send(&mut net, 0, 1, "before", Duration::from_secs(5));
    net.run_for(Duration::from_secs(1));
    assert_eq!(delivered(&net, &m).unwrap().1, Via::Tcp);
    assert_eq!(diagnosis(&net, 0, 1).state, PathState::Up);
    net.unicast_drop.insert((0, 1));
    let m = send(&mut net, 0, 1, "during", Duration::from_secs(5));
    net.run_for(Duration::from_secs(2));
    assert_eq!(delivered(&net, &m).unwrap().1, Via::Courier);
    assert_ne!(diagnosis(&net, 0, 1).state, PathState::Up);
    // The stalled stream is closed (the kernel's TCP_USER_TIMEOUT, modelled by the vnet).
    let closed = net.run_until_true(Duration::from_secs(30), |net| !net.host(0).has_streams());
    assert!(closed.is_some(), "alice still holds the stalled stream");
}

#[test]
fn probes_and_observations_name_the_broken_direction_on_both_sides() {
    let mut net = net(2);
    net.unicast_drop.insert((0, 1));
    let m = send(&mut net, 0, 1, "hi", Duration::from_secs(10));
    net.run_for(Duration::from_secs(10));
    assert_eq!(delivered(&net, &m).unwrap().1, Via::Courier);
    let a = diagnosis(&net, 0, 1);
    assert_eq!(a.state, PathState::UnicastBroken, "{a:?}");
    assert_eq!(
        (a.unicast_out, a.unicast_in, a.multicast_out, a.multicast_in),
        (Health::Broken, Health::Ok, Health::Ok, Health::Ok),
        "{a:?}"
    );
    assert!(
        a.text
            .starts_with("unicast from you to bob is dropped on the way"),
        "{}",
        a.text
    );
    let b = diagnosis(&net, 1, 0);
    assert_eq!(
        (b.unicast_out, b.unicast_in),
        (Health::Ok, Health::Broken),
        "{b:?}"
    );
    assert_eq!(b.state, PathState::UnicastBroken, "{b:?}");
    assert!(
        b.text
            .starts_with("unicast from alice to you is dropped on the way"),
        "{}",
        b.text
    );
    // Path changes were published as they happened.
    assert!(net.events_of(0).any(|e| matches!(e,
        Event::PathChanged { nick, diagnosis, .. } if nick == "bob" && diagnosis.state == PathState::UnicastBroken)));
}

#[test]
fn with_neither_tcp_nor_courier_an_invitation_goes_through_a_relay() {
    let mut net = net(3);
    net.unicast_drop.insert((0, 1));
    net.multicast_drop.insert((0, 1));
    let m = invite(&mut net, 0, 1, "chess", Duration::from_secs(10));
    net.run_for(Duration::from_secs(5));
    let (_, via, latency) = delivered(&net, &m).expect("delivered");
    assert_eq!(via, Via::Relay);
    assert!(latency < Duration::from_secs(1), "{latency:?}");
    let carol = id(&net, 2);
    let relayed_by = net.events_of(1).find_map(|e| match e {
        Event::Invitation { relayed_by, .. } => Some(relayed_by.clone()),
        _ => None,
    });
    assert_eq!(relayed_by, Some(Some(carol)));
    let m2 = invite(&mut net, 0, 1, "go", Duration::from_secs(10));
    net.run_for(Duration::from_secs(3));
    assert_eq!(delivered(&net, &m2).unwrap().1, Via::Relay, "sticky");
}

#[test]
fn with_neither_tcp_nor_courier_a_chat_goes_through_a_relay_sealed_to_its_recipient() {
    let mut net = net(3);
    net.unicast_drop.insert((0, 1));
    net.multicast_drop.insert((0, 1));
    let m = send(&mut net, 0, 1, "through carol", Duration::from_secs(4));
    net.run_for(Duration::from_secs(5));
    // Sealed by alice to bob, so the relay could neither read nor forge it: believed.
    assert_eq!(shown(&net, 1), vec!["through carol"]);
    assert_eq!(delivered(&net, &m).expect("delivered").1, Via::Relay);
}

#[test]
fn what_was_stored_before_a_restart_is_acknowledged_again_but_not_shown_again() {
    let mut net = net(2);
    let m = send(&mut net, 0, 1, "once", Duration::from_secs(5));
    net.run_for(Duration::from_secs(1));
    assert_eq!(shown(&net, 1), vec!["once"]);
    net.crash(1);
    net.restart(1, |ip, now, store: &Store| {
        start(config(1), store.restored(), ip, now)
    });
    net.run_for(Duration::from_secs(3));
    let shown_before = shown(&net, 1).len();
    // The same stanza again (a late courier copy, say).
    let alice = Identity::from_secret(secret(0));
    let again = Stanza::Chat {
        id: Some(m.clone()),
        body: "once".into(),
        receipt_requested: true,
    }
    .to_element("alice@lab", "bob@lab");
    let bob = Identity::from_secret(secret(1));
    let f = courier_frame(&alice, &bob, 7, &again.to_stanza_bytes());
    let since = net.now;
    let src = SocketAddr::new(IpAddr::V4(vnet::addr(0)), COURIER_PORT);
    net.inject(1, Channel::Courier, src, &f);
    net.run_for(Duration::from_millis(50));
    assert_eq!(shown(&net, 1).len(), shown_before, "not shown again");
    let receipts = frames(&net, 1, frame::Kind::CourierReceipt, since);
    assert_eq!(receipts.len(), 1, "but acknowledged");
    let receipt = sealed::open(
        &alice,
        &bob.public(),
        Purpose::Courier,
        &receipts[0].payload,
    );
    assert!(String::from_utf8_lossy(&receipt.expect("sealed to alice")).contains(&m));
}

/// The receipt goes out only once the invitation is stored: with a store that refuses writes,
/// nothing is acknowledged (the sender is never told "delivered"); when the store heals, the
/// sender's retransmission is stored, and only then acknowledged.
#[test]
fn a_store_that_fails_holds_the_receipt_back_until_the_invitation_is_stored() {
    let mut net = net(2);
    net.stores[1].failing = true;
    let m = invite(&mut net, 0, 1, "chess", Duration::from_secs(20));
    net.run_for(Duration::from_secs(2));
    assert!(
        delivered(&net, &m).is_none(),
        "told delivered while nothing was stored"
    );
    assert!(shown(&net, 1).is_empty());
    assert!(dropped(&net, 1, DropReason::StoreFailed) >= 1);
    net.stores[1].failing = false;
    let recovered = net.now;
    net.run_until_true(Duration::from_secs(10), |net| delivered(net, &m).is_some());
    let (at, _, _) = delivered(&net, &m).expect("delivered once the store works");
    let stored = net.stores[1]
        .records
        .iter()
        .filter(|r| matches!(r, Record::Invitation { id, .. } if *id == m))
        .count();
    assert_eq!(stored, 1);
    assert_eq!(shown(&net, 1), vec!["invitation:chess"]);
    assert!(at >= recovered, "the receipt came once the store worked");
}

/// The receiver dies between receiving an invitation and storing it (the write was asked for,
/// never confirmed). It was never acknowledged, so the sender keeps trying; the restarted
/// receiver stores it and acknowledges it; it is shown once.
#[test]
fn a_node_that_crashes_before_storing_never_acknowledged_and_gets_it_again() {
    let mut net = net(2);
    net.stores[1].crash_at_next_write = true;
    let m = invite(&mut net, 0, 1, "chess", Duration::from_secs(30));
    net.run_for(Duration::from_millis(500));
    assert!(!net.is_up(1), "crashed at the write");
    assert!(delivered(&net, &m).is_none());
    assert!(
        !net.stores[1]
            .records
            .iter()
            .any(|r| matches!(r, Record::Invitation { .. })),
        "nothing stored of it"
    );
    net.restart(1, |ip, now, store: &Store| {
        start(config(1), store.restored(), ip, now)
    });
    net.run_until_true(Duration::from_secs(20), |net| delivered(net, &m).is_some());
    assert!(delivered(&net, &m).is_some(), "delivered after the restart");
    let stored: Vec<_> = net.stores[1]
        .records
        .iter()
        .filter(|r| matches!(r, Record::Invitation { id, .. } if *id == m))
        .collect();
    assert_eq!(stored.len(), 1);
    assert_eq!(shown(&net, 1), vec!["invitation:chess"]);
}

/// Presence renamed us after a conflict: the streams we open say the new instance name.
#[test]
fn a_rename_reaches_messages() {
    let mut net = Vnet::new(3);
    // Two nodes that both want to be "alice@lab".
    for i in 0..2 {
        net.add(|ip, now| {
            let mut c = config(i);
            c.nick = "alice".into();
            start(c, Restored::default(), ip, now)
        });
    }
    net.add(|ip, now| start(config(2), Restored::default(), ip, now));
    net.run_for(Duration::from_secs(10));
    let renamed = (0..2)
        .find(|i| net.host(*i).status().instance != "alice@lab")
        .expect("one was renamed");
    let instance = net.host(renamed).status().instance;
    assert_eq!(instance, "alice@lab (2)");
    let since = net.now;
    let _ = send(&mut net, renamed, 2, "hi", Duration::from_secs(5));
    net.run_for(Duration::from_secs(1));
    let header = net
        .stream_sent
        .iter()
        .find(|(t, from, _, b)| *t >= since && *from == renamed && b.starts_with(b"<?xml"))
        .map(|(_, _, _, b)| String::from_utf8_lossy(b).to_string())
        .expect("a stream was opened");
    assert!(header.contains(&format!("from='{instance}'")), "{header}");
}

/// Multicast heard is credited to the peer whose records it carried, whatever the source
/// address (several responders may share one address, DESIGN.md §4.1).
#[test]
fn multicast_evidence_is_credited_to_the_records_owner_whatever_address_relays_them() {
    let mut net = net(3);
    // A fresh alice that hears nothing from bob directly ...
    net.multicast_drop.insert((1, 0));
    net.crash(0);
    net.restart(0, |ip, now, store: &Store| {
        start(config(0), store.restored(), ip, now)
    });
    // ... but gets bob's own announcement relayed from carol's address.
    let bobs: Vec<Vec<u8>> = net
        .sent
        .iter()
        .filter(|s| s.from == 1 && s.channel == Channel::Mdns)
        .map(|s| s.payload.clone())
        .filter(|p| {
            crate::presence::Message::parse(p).is_ok_and(|m| m.response && !m.answers.is_empty())
        })
        .collect();
    let carol = SocketAddr::new(IpAddr::V4(vnet::addr(2)), crate::presence::MDNS_PORT);
    net.run_for(Duration::from_secs(2));
    let bob = id(&net, 1);
    assert!(
        net.host(0).peers().all(|p| p.id != bob),
        "alice never heard bob"
    );
    for p in &bobs {
        net.inject(0, Channel::Mdns, carol, p);
    }
    net.run_for(Duration::from_millis(100));
    assert_eq!(
        diagnosis(&net, 0, 1).multicast_in,
        Health::Ok,
        "bob's records: bob's multicast"
    );
}

/// A peer's probes go to the port its TXT `probe` announces, and a local refusal to send there
/// is evidence against that peer only.
#[test]
fn probes_go_to_the_announced_port_and_a_local_refusal_counts_against_that_peer() {
    let mut net = Vnet::new(5);
    net.add(|ip, now| start(config(0), Restored::default(), ip, now));
    net.add(|ip, now| {
        let mut c = config(1);
        c.probe_port = 6001;
        start(c, Restored::default(), ip, now)
    });
    net.add(|ip, now| start(config(2), Restored::default(), ip, now));
    net.run_until_true(Duration::from_secs(10), |net| {
        net.host(0).peers().count() == 2
    });
    net.unicast_drop.insert((0, 1));
    let _ = send(&mut net, 0, 1, "probe me", Duration::from_secs(5));
    net.run_for(Duration::from_secs(2));
    let bob_probe = SocketAddr::new(IpAddr::V4(vnet::addr(1)), 6001);
    assert!(
        net.sent.iter().any(|s| s.from == 0
            && s.channel == Channel::Probe
            && s.destination == Destination::Unicast(bob_probe)),
        "a probe to bob's announced port"
    );
    let carol_probe = SocketAddr::new(IpAddr::V4(vnet::addr(2)), PROBE_PORT);
    net.with(0, |n, now| {
        n.handle_send_error(now, Channel::Probe, carol_probe, SendError::Refused)
    });
    let d = diagnosis(&net, 0, 2);
    assert_eq!(d.unicast_out, Health::Broken, "{d:?}");
    assert_ne!(diagnosis(&net, 0, 1).unicast_in, Health::Broken);
}

#[test]
fn an_empty_or_unknown_peer_is_refused_and_a_unique_one_is_found_by_nick_instance_or_id_prefix() {
    let net = net(3);
    let n = net.host(0);
    assert_eq!(n.resolve_peer("  "), Err(CommandError::EmptyPeer));
    assert!(matches!(
        n.resolve_peer("zed"),
        Err(CommandError::NoSuchPeer(_))
    ));
    assert_eq!(n.resolve_peer("bob"), Ok(id(&net, 1)));
    assert_eq!(n.resolve_peer("carol@lab"), Ok(id(&net, 2)));
    assert_eq!(n.resolve_peer(&id(&net, 1)[..6]), Ok(id(&net, 1)));
}

/// Two legacy XEP-0174 peers (whose ids are their instance names, any UTF-8) with one nick:
/// asking for that nick lists both, cut at a character, never inside one.
#[test]
fn an_ambiguous_peer_lists_the_candidates_even_with_non_ascii_names() {
    use crate::presence::wire::{Message, Name, Record, RecordData};
    let mut net = net(1);
    for (k, instance) in ["aéééééé@one", "aéééééé@two"].iter().enumerate() {
        let service = Name::from_labels([*instance, "_presence", "_tcp", "local"]);
        let host = Name::dotted(&format!("legacy{k}.local"));
        let ip = Ipv4Addr::new(10, 0, 0, 200 + k as u8);
        let mut m = Message::response();
        m.answers = vec![
            Record::new(
                Name::dotted("_presence._tcp.local"),
                4500,
                RecordData::Ptr(service.clone()),
            ),
            Record::new(
                service.clone(),
                120,
                RecordData::Srv {
                    priority: 0,
                    weight: 0,
                    port: 5298,
                    target: host.clone(),
                },
            ),
            Record::new(
                service,
                4500,
                RecordData::Txt(vec![b"txtvers=1".to_vec(), "1st=Zoé".as_bytes().to_vec()]),
            ),
            Record::new(host, 120, RecordData::A(ip)),
        ];
        net.inject(
            0,
            Channel::Mdns,
            SocketAddr::new(IpAddr::V4(ip), 5353),
            &m.emit(),
        );
    }
    net.run_for(Duration::from_secs(2));
    assert_eq!(net.host(0).peers().filter(|p| p.legacy).count(), 2);
    match net.host(0).resolve_peer("Zoé") {
        Err(CommandError::Ambiguous(q, candidates)) => {
            assert_eq!(q, "Zoé");
            assert_eq!(candidates.len(), 2, "{candidates:?}");
            assert!(
                candidates.iter().all(|c| c.starts_with("aéééééé@")),
                "{candidates:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        net.host(0).resolve_peer("aéééééé@two"),
        Ok("legacy:aéééééé@two".to_string())
    );
}

/// An invitation's id is the inviter's choice: one named like an activity (its name or id)
/// does not shadow it for `join`, `post` or `log`.
#[test]
fn an_invitation_id_never_shadows_an_activitys_name_or_id() {
    let mut net = net(1);
    let real = match net.with(0, |n, now| {
        n.handle_command(
            now,
            Command::Share {
                name: "chess".into(),
                kind: "game".into(),
                private: false,
            },
        )
    }) {
        Ok(Outcome::Activity { info, .. }) => info,
        other => panic!("{other:?}"),
    };
    let mut planted = real.clone();
    planted.id = crate::activity::ActivityId([0xee; 16]);
    planted.name = "mallory's".into();
    net.with(0, |n, _| {
        n.invited.insert("chess".into(), planted.clone());
        n.invited.insert(real.id.to_hex(), planted.clone());
        n.invited.insert("inv-1".into(), planted.clone());
    });
    let n = net.host(0);
    assert_eq!(n.resolve_activity("chess").map(|a| a.id), Ok(real.id));
    assert_eq!(
        n.resolve_activity(&real.id.to_hex()).map(|a| a.id),
        Ok(real.id)
    );
    assert_eq!(n.resolve_activity("inv-1").map(|a| a.id), Ok(planted.id));
}

/// An mDNS response announcing `instance` (nick `nick`) at `ip`: an nbhd peer with `key`, its
/// records signed by `signer` if one is given, or a legacy XEP-0174 one without a key.
fn announcement(
    instance: &str,
    nick: &str,
    key: Option<&str>,
    signer: Option<&Identity>,
    ip: Ipv4Addr,
    ttl: u32,
) -> Vec<u8> {
    use crate::presence::wire::{Message, Name, Record, RecordData};
    use crate::presence::{signed, xep0174_txt, SERVICE_TYPE};
    let svc = Name::dotted(SERVICE_TYPE);
    let inst = Name::child(instance, &svc);
    let target = Name::dotted(&format!("h{}.local", ip.octets()[3]));
    let mut txt = xep0174_txt(P2PJ_PORT, nick, "avail", "", key.unwrap_or(""));
    if key.is_none() {
        txt.retain(|(k, _)| k != "key" && k != "nbhd");
    }
    if let Some(me) = signer {
        let sig = signed::sign(me, instance, &target, P2PJ_PORT, &txt);
        txt.push((signed::SIG_KEY.into(), sig));
    }
    let txt = txt
        .into_iter()
        .map(|(k, v)| format!("{k}={v}").into_bytes())
        .collect();
    let mut m = Message::response();
    m.answers
        .push(Record::new(svc, ttl, RecordData::Ptr(inst.clone())));
    m.answers.push(Record::new(
        inst.clone(),
        ttl,
        RecordData::Srv {
            priority: 0,
            weight: 0,
            port: P2PJ_PORT,
            target: target.clone(),
        },
    ));
    m.answers.push(Record::new(inst, ttl, RecordData::Txt(txt)));
    m.answers.push(Record::new(target, ttl, RecordData::A(ip)));
    m.emit()
}

/// Issue 15, attack 1's second half: a host announcing an instance with bob's key moved
/// alice's route to bob to itself, and its goodbye removed bob. Now the first instance keeps
/// the key's route, the second is flagged, and its goodbye takes only itself.
#[test]
fn a_second_instance_announcing_bobs_key_is_flagged_moves_no_route_and_its_goodbye_leaves_bob() {
    let mut net = net(2);
    let bob = Identity::from_secret(secret(1));
    let fake = Ipv4Addr::new(10, 0, 0, 99);
    // mallory@elsewhere at 10.0.0.99, with bob's key in its TXT; it cannot sign as bob, so it
    // signs with a key of its own.
    let mallory = Identity::from_secret([66; 32]);
    let announce = |ttl: u32| {
        announcement(
            "mallory@elsewhere",
            "mallory",
            Some(&bob.peer_id()),
            Some(&mallory),
            fake,
            ttl,
        )
    };
    let src = SocketAddr::new(IpAddr::V4(fake), 5353);
    net.inject(0, Channel::Mdns, src, &announce(120));
    net.run_for(Duration::from_secs(1));
    let rows: Vec<Peer> = net
        .host(0)
        .peers()
        .filter(|p| p.id == bob.peer_id())
        .cloned()
        .collect();
    assert_eq!(rows.len(), 2, "both instances are listed: {rows:?}");
    for p in &rows {
        let flagged = net.host(0).is_impostor(p);
        assert_eq!(flagged, p.instance == "mallory@elsewhere", "{p:?}");
    }
    // Alice's messages still go to bob's own address, over TCP.
    let m = send(&mut net, 0, 1, "to the real bob", Duration::from_secs(5));
    net.run_for(Duration::from_secs(1));
    assert_eq!(delivered(&net, &m).expect("delivered").1, Via::Tcp);
    assert_eq!(shown(&net, 1), vec!["to the real bob"]);
    // Its goodbye takes only itself.
    net.inject(0, Channel::Mdns, src, &announce(0));
    net.run_for(Duration::from_secs(2));
    assert!(net
        .host(0)
        .peers()
        .any(|p| p.id == bob.peer_id() && p.instance != "mallory@elsewhere"));
    let m = send(&mut net, 0, 1, "still there", Duration::from_secs(5));
    net.run_for(Duration::from_secs(1));
    assert_eq!(delivered(&net, &m).expect("delivered").1, Via::Tcp);
}

/// Issue 15: pins matched exact strings and legacy peers were never pinned, so "bоb" (with a
/// Cyrillic o) was another person, and so was an nbhd peer taking a Pidgin user's nick. Now
/// both are flagged, and a private activity's key goes to neither.
#[test]
fn a_lookalike_nick_and_an_nbhd_peer_taking_a_legacy_nick_are_flagged() {
    let mut net = net(2);
    let src = |last: u8| SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)), 5353);
    let lookalike = Identity::from_secret([77; 32]);
    let frank_nbhd = Identity::from_secret([78; 32]);
    let first = [
        announcement(
            "frank@pidgin",
            "frank",
            None,
            None,
            Ipv4Addr::new(10, 0, 0, 97),
            120,
        ),
        announcement(
            "b\u{43e}b@elsewhere",
            "b\u{43e}b",
            Some(&lookalike.peer_id()),
            Some(&lookalike),
            Ipv4Addr::new(10, 0, 0, 98),
            120,
        ),
    ];
    net.inject(0, Channel::Mdns, src(97), &first[0]);
    net.run_for(Duration::from_millis(500));
    net.inject(0, Channel::Mdns, src(98), &first[1]);
    net.inject(
        0,
        Channel::Mdns,
        src(99),
        &announcement(
            "frank@laptop",
            "frank",
            Some(&frank_nbhd.peer_id()),
            Some(&frank_nbhd),
            Ipv4Addr::new(10, 0, 0, 99),
            120,
        ),
    );
    net.run_for(Duration::from_secs(1));
    let flagged = |instance: &str| {
        let p = net
            .host(0)
            .peers()
            .find(|p| p.instance == instance)
            .cloned()
            .unwrap_or_else(|| panic!("{instance} listed"));
        net.host(0).is_impostor(&p)
    };
    assert!(!flagged("bob@lab"), "the first bob is bob");
    assert!(
        flagged("b\u{43e}b@elsewhere"),
        "a bob that only looks like him"
    );
    assert!(
        !flagged("frank@pidgin"),
        "the first frank is the Pidgin user"
    );
    assert!(flagged("frank@laptop"), "an nbhd peer taking his nick");
}

/// A legacy peer's id was its instance name: a host announcing a legacy instance named like
/// bob's key took bob's place (his route, his messages). Legacy ids live under `legacy:` now.
#[test]
fn a_legacy_instance_named_like_bobs_key_is_never_taken_for_bob() {
    let mut net = net(2);
    let bob = Identity::from_secret(secret(1)).peer_id();
    let fake = Ipv4Addr::new(10, 0, 0, 96);
    let src = SocketAddr::new(IpAddr::V4(fake), 5353);
    net.inject(
        0,
        Channel::Mdns,
        src,
        &announcement(&bob, "bob", None, None, fake, 120),
    );
    net.run_for(Duration::from_secs(1));
    let ids: Vec<(String, bool)> = net
        .host(0)
        .peers()
        .map(|p| (p.id.clone(), p.legacy))
        .collect();
    assert!(ids.contains(&(bob.clone(), false)), "{ids:?}");
    assert!(ids.contains(&(format!("legacy:{bob}"), true)), "{ids:?}");
    let m = send(&mut net, 0, 1, "to the real bob", Duration::from_secs(5));
    net.run_for(Duration::from_secs(1));
    assert_eq!(delivered(&net, &m).expect("delivered").1, Via::Tcp);
    assert_eq!(shown(&net, 1), vec!["to the real bob"]);
}

/// Issue 15 (review): another host's goodbye for bob's records removed bob, and its cache-flush
/// address record for bob's host name moved alice's route to bob onto itself. A goodbye or a
/// flush counts only from the host that brought the record, and a peer's address is the one
/// its own source gave.
#[test]
fn another_hosts_goodbye_or_flush_for_bobs_records_changes_nothing() {
    use crate::presence::wire::{Message, Name, Record, RecordData};
    use crate::presence::SERVICE_TYPE;
    let mut net = net(2);
    let bob = Identity::from_secret(secret(1));
    let target = Name::dotted(&format!("{}.local", bob.hostname_label()));
    let inst = Name::child("bob@lab", &Name::dotted(SERVICE_TYPE));
    let mut m = Message::response();
    m.answers.push(Record::new(
        inst,
        0,
        RecordData::Srv {
            priority: 0,
            weight: 0,
            port: P2PJ_PORT,
            target: target.clone(),
        },
    ));
    let mut a = Record::new(target, 120, RecordData::A(Ipv4Addr::new(10, 0, 0, 77)));
    a.cache_flush = true;
    m.answers.push(a);
    let src = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 77)), 5353);
    net.run_for(Duration::from_secs(2)); // past the one-second flush grace of bob's records
    net.inject(0, Channel::Mdns, src, &m.emit());
    net.run_for(Duration::from_secs(3));
    let row = net
        .host(0)
        .peers()
        .find(|p| p.id == bob.peer_id())
        .cloned()
        .expect("bob still listed");
    assert_eq!(row.addrs, vec![IpAddr::V4(vnet::addr(1))], "{row:?}");
    let m = send(&mut net, 0, 1, "still bob's", Duration::from_secs(5));
    net.run_for(Duration::from_secs(1));
    assert_eq!(delivered(&net, &m).expect("delivered").1, Via::Tcp);
}
