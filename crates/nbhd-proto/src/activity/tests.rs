//! Shared activities on whole Nodes over the shared virtual network: posts stored and then
//! sent, received and stored in per-sender order, gaps found and repaired under loss, history
//! for late joiners over multicast alone, crashes, private activities, trust on first use.
//! A member's log is what its store holds, in the one total order (`vnet::Store::log`).

use std::time::{Duration, Instant};

use super::*;
use crate::node::{
    Command, CommandError, Config, Event as NodeEvent, Node, Outcome, Record, Restored,
};
use crate::vnet::{Store, Vnet, IFACE, P2PJ_PORT, PROBE_PORT};

const NICKS: [&str; 12] = [
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory",
    "oscar",
];

fn config(i: usize) -> Config {
    Config {
        secret: [i as u8 + 1; 32],
        nick: NICKS[i].to_string(),
        host: "lab".into(),
        hostname: None,
        status: "avail".into(),
        msg: String::new(),
        p2pj_port: P2PJ_PORT,
        probe_port: PROBE_PORT,
        record_ttl: None,
        seed: 500 + i as u64,
        entropy: [0x80 + i as u8; 32],
        unix_ms: 1_800_000_000_000,
    }
}

fn start(config: Config, restored: Restored, ip: std::net::Ipv4Addr, now: Instant) -> Node {
    let mut n = Node::new(config, restored, now);
    n.handle_interfaces(
        now,
        vec![(IFACE, vec![crate::node::IfaceAddr::new(ip, 24)])],
    );
    n
}

fn restart(net: &mut Vnet<Node>, i: usize) {
    net.restart(i, |ip, now, store: &Store| {
        start(config(i), store.restored(), ip, now)
    });
}

/// `n` nodes that have found each other.
fn net(n: usize, seed: u64) -> Vnet<Node> {
    let mut net = Vnet::new(seed);
    for i in 0..n {
        net.add(|ip, now| start(config(i), Restored::default(), ip, now));
    }
    let found = net.run_until_true(Duration::from_secs(15), |net| {
        (0..n).all(|i| net.host(i).peers().count() == n - 1)
    });
    assert!(found.is_some(), "discovery");
    net
}

fn command(net: &mut Vnet<Node>, i: usize, cmd: Command) -> Result<Outcome, CommandError> {
    net.with(i, |n, now| n.handle_command(now, cmd))
}

fn share(net: &mut Vnet<Node>, i: usize, name: &str, private: bool) -> ActivityInfo {
    match command(
        net,
        i,
        Command::Share {
            name: name.into(),
            kind: "chat".into(),
            private,
        },
    ) {
        Ok(Outcome::Activity { info, joined: true }) => info,
        other => panic!("{other:?}"),
    }
}

fn join(net: &mut Vnet<Node>, i: usize, what: &str) -> Result<ActivityInfo, CommandError> {
    command(
        net,
        i,
        Command::Join {
            activity: what.into(),
        },
    )
    .map(|o| match o {
        Outcome::Activity { info, .. } => info,
        other => panic!("{other:?}"),
    })
}

fn post(net: &mut Vnet<Node>, i: usize, a: &ActivityInfo, text: &str) -> u64 {
    match command(
        net,
        i,
        Command::Post {
            activity: a.id.to_hex(),
            body: text.as_bytes().to_vec(),
            bytes: false,
            at_ms: 1_800_000_000_000,
        },
    ) {
        Ok(Outcome::Posting { request, .. }) => request,
        other => panic!("{other:?}"),
    }
}

/// The texts of a member's log, in its order.
fn log(net: &Vnet<Node>, i: usize, a: &ActivityInfo) -> Vec<String> {
    net.stores[i]
        .log(a.id)
        .iter()
        .map(|p| String::from_utf8_lossy(&p.body).to_string())
        .collect()
}

/// (sender, seq) of a member's log, in its order.
fn keys(net: &Vnet<Node>, i: usize, a: &ActivityInfo) -> Vec<([u8; 32], u64, u64)> {
    net.stores[i]
        .log(a.id)
        .iter()
        .map(|p| (p.sender, p.seq, p.lamport))
        .collect()
}

/// No gap, no duplicate: each sender's seqs are exactly 1..=n.
fn complete(keys: &[([u8; 32], u64, u64)]) -> bool {
    let mut by: BTreeMap<[u8; 32], Vec<u64>> = BTreeMap::new();
    for (s, seq, _) in keys {
        by.entry(*s).or_default().push(*seq);
    }
    by.values().all(|v| {
        let mut v = v.clone();
        v.sort();
        v == (1..=v.len() as u64).collect::<Vec<_>>()
    })
}

fn frames_from(net: &Vnet<Node>, i: usize, since: Instant) -> usize {
    net.sent
        .iter()
        .filter(|s| {
            s.from == i && s.at >= since && matches!(s.channel, crate::node::Channel::Activity(_))
        })
        .count()
}

#[test]
fn a_shared_activity_is_advertised_joined_by_name_and_carries_posts_both_ways_in_order() {
    let mut net = net(2, 1);
    let a = share(&mut net, 0, "chess", false);
    // Bob learns it from alice's TXT, and joins it by its name.
    net.run_until_true(Duration::from_secs(5), |net| {
        net.host(1)
            .activities(net.now)
            .iter()
            .any(|s| s.info.id == a.id)
    })
    .expect("advertised");
    let joined = join(&mut net, 1, "chess").expect("joined");
    assert_eq!(joined.key, a.key, "the advertised key");
    net.run_for(Duration::from_millis(200));
    for k in 0..10 {
        post(&mut net, 0, &a, &format!("alice {k}"));
    }
    post(&mut net, 1, &a, "bob 0");
    net.run_for(Duration::from_secs(2));
    assert_eq!(log(&net, 0, &a), log(&net, 1, &a));
    assert_eq!(log(&net, 1, &a).len(), 11);
    let alices: Vec<String> = log(&net, 1, &a)
        .into_iter()
        .filter(|t| t.starts_with("alice"))
        .collect();
    assert_eq!(
        alices,
        (0..10).map(|k| format!("alice {k}")).collect::<Vec<_>>(),
        "per-sender order"
    );
    // One total order, by Lamport time then sender: bob's post, made before he had any of
    // alice's, has her first post's Lamport time and sorts by key beside it.
    let lamports: Vec<u64> = keys(&net, 1, &a).iter().map(|k| k.2).collect();
    assert!(lamports.windows(2).all(|w| w[0] <= w[1]), "{lamports:?}");
    assert!(complete(&keys(&net, 1, &a)));
    // Ours are answered as stored, with their numbers.
    let posted: Vec<u64> = net
        .events_of(0)
        .filter_map(|e| match e {
            NodeEvent::Posted { post, .. } => Some(post.seq),
            _ => None,
        })
        .collect();
    assert_eq!(posted, (1..=10).collect::<Vec<_>>());
    let members: Vec<usize> = (0..2)
        .map(|i| {
            net.host(i)
                .activities(net.now)
                .iter()
                .find(|s| s.info.id == a.id)
                .unwrap()
                .members
        })
        .collect();
    assert_eq!(members, vec![2, 2]);
}

/// The acceptance scenario, on the virtual network: 4 members, 20 % of every packet lost on
/// every host, two senders posting as fast as they can; every log ends identical and complete.
#[test]
fn four_members_under_twenty_percent_loss_end_with_identical_complete_logs() {
    let mut net = net(4, 2);
    let a = share(&mut net, 0, "loss", false);
    net.run_for(Duration::from_secs(2));
    for i in 1..4 {
        join(&mut net, i, &a.id.to_hex()).expect("join");
    }
    net.run_for(Duration::from_millis(200));
    for h in 0..4 {
        net.loss.insert(h, 0.2);
    }
    for k in 0..300 {
        post(&mut net, 0, &a, &format!("a{k}"));
        post(&mut net, 1, &a, &format!("b{k}"));
        net.run_for(Duration::from_micros(500));
    }
    let last = net.now;
    let done = net.run_until_true(Duration::from_secs(10), |net| {
        (0..4).all(|i| net.stores[i].log(a.id).len() == 600)
    });
    let lens: Vec<usize> = (0..4).map(|i| log(&net, i, &a).len()).collect();
    assert!(done.is_some(), "logs after 10 s: {lens:?}");
    eprintln!(
        "all 4 logs complete {:?} after the last post",
        net.now - last
    );
    for i in 1..4 {
        assert_eq!(keys(&net, i, &a), keys(&net, 0, &a), "member {i} differs");
    }
    assert!(complete(&keys(&net, 0, &a)));
    let stats = net.host(2).stats().activity;
    assert!(stats.dropped.is_empty(), "{:?}", stats.dropped);
    let mut lat: Vec<Duration> = stats.repair_latency.iter().copied().collect();
    lat.sort();
    assert!(
        stats.repaired > 0 && !lat.is_empty(),
        "20% loss, nothing repaired?"
    );
    eprintln!(
        "repair latency at 20% loss: {} repaired, p50 {:?}, p99 {:?}",
        stats.repaired,
        lat[lat.len() / 2],
        lat[lat.len() * 99 / 100]
    );
}

/// A fifth member joins after everything was posted and gets the whole history, by multicast
/// alone: unicast from it to everyone and back is black-holed (the seed, everywhere).
#[test]
fn a_late_joiner_gets_the_whole_history_with_unicast_black_holed_both_ways() {
    let mut net = net(5, 3);
    let a = share(&mut net, 0, "history", false);
    net.run_for(Duration::from_secs(2));
    for i in 1..4 {
        join(&mut net, i, &a.id.to_hex()).expect("join");
    }
    net.run_for(Duration::from_millis(200));
    for k in 0..400 {
        post(&mut net, k % 4, &a, &format!("p{k}"));
    }
    net.run_for(Duration::from_secs(3));
    assert_eq!(log(&net, 3, &a).len(), 400);
    for other in 0..4 {
        net.unicast_drop.insert((4, other));
        net.unicast_drop.insert((other, 4));
    }
    let t = net.now;
    join(&mut net, 4, "history").expect("the late joiner knows it from presence");
    let got = net.run_until_true(Duration::from_secs(20), |net| {
        net.stores[4].log(a.id).len() == 400
    });
    assert!(got.is_some(), "history: {} of 400", log(&net, 4, &a).len());
    eprintln!(
        "a late joiner had 400 posts {:?} after joining",
        net.now - t
    );
    assert_eq!(keys(&net, 4, &a), keys(&net, 0, &a));
}

/// A repair is the original packet again, whoever sends it: a late joiner whose only source
/// is a member that is not the poster stores each post under its poster, once.
#[test]
fn history_repaired_by_a_member_other_than_its_poster_keeps_its_poster() {
    let mut net = net(3, 9);
    let a = share(&mut net, 0, "relay", false);
    net.run_for(Duration::from_secs(2));
    join(&mut net, 1, "relay").expect("join");
    net.run_for(Duration::from_millis(200));
    for k in 0..30 {
        post(&mut net, 0, &a, &format!("a{k}"));
    }
    net.run_for(Duration::from_secs(2));
    assert_eq!(log(&net, 1, &a).len(), 30);
    // Alice is gone: bob alone holds her posts.
    net.crash(0);
    join(&mut net, 2, &a.id.to_hex()).expect("carol knows it from presence");
    let got = net.run_until_true(Duration::from_secs(20), |net| {
        net.stores[2].log(a.id).len() >= 30
    });
    assert!(got.is_some(), "history: {} of 30", log(&net, 2, &a).len());
    net.run_for(Duration::from_secs(1));
    assert_eq!(keys(&net, 2, &a), keys(&net, 1, &a));
    let alice = net.stores[1].log(a.id)[0].sender;
    assert!(net.stores[2].log(a.id).iter().all(|p| p.sender == alice));
}

/// A member killed mid-run (its store keeps what it confirmed) restarts and ends with the
/// identical log; a sender killed right after a post was confirmed continues its numbering.
#[test]
fn a_member_killed_mid_run_restarts_and_catches_up_and_a_sender_never_reuses_a_number() {
    let mut net = net(3, 4);
    let a = share(&mut net, 0, "crash", false);
    net.run_for(Duration::from_secs(2));
    for i in 1..3 {
        join(&mut net, i, &a.id.to_hex()).expect("join");
    }
    net.run_for(Duration::from_millis(200));
    for k in 0..100 {
        post(&mut net, 0, &a, &format!("a{k}"));
        post(&mut net, 1, &a, &format!("b{k}"));
        if k == 40 {
            net.crash(2);
        }
        if k == 70 {
            restart(&mut net, 2);
        }
        net.run_for(Duration::from_millis(2));
    }
    // Bob posts once more and dies at once, once it is stored.
    let req = post(&mut net, 1, &a, "last words");
    net.run_until_true(Duration::from_secs(1), |net| {
        net.events_of(1)
            .any(|e| matches!(e, NodeEvent::Posted { request, .. } if *request == req))
    })
    .expect("stored");
    net.crash(1);
    restart(&mut net, 1);
    post(&mut net, 1, &a, "after the restart");
    let done = net.run_until_true(Duration::from_secs(20), |net| {
        (0..3).all(|i| net.stores[i].log(a.id).len() == 202)
    });
    let lens: Vec<usize> = (0..3).map(|i| log(&net, i, &a).len()).collect();
    assert!(done.is_some(), "{lens:?}");
    assert_eq!(keys(&net, 2, &a), keys(&net, 0, &a));
    assert_eq!(keys(&net, 1, &a), keys(&net, 0, &a));
    assert!(
        complete(&keys(&net, 0, &a)),
        "bob's numbers: no reuse, no gap"
    );
    let bob_seqs: Vec<u64> = net.stores[0]
        .log(a.id)
        .iter()
        .filter(|p| p.sender == crate::identity::Identity::from_secret([2; 32]).public())
        .map(|p| p.seq)
        .collect();
    assert_eq!(bob_seqs.len(), 102);
    let texts = log(&net, 0, &a);
    assert!(
        texts.contains(&"last words".to_string()),
        "confirmed, so never lost"
    );
}

/// A post of a full mebibyte is cut into packets and put together again, under loss.
#[test]
fn a_one_mebibyte_post_arrives_whole_under_loss() {
    let mut net = net(2, 5);
    let a = share(&mut net, 0, "big", false);
    net.run_for(Duration::from_secs(2));
    join(&mut net, 1, &a.id.to_hex()).expect("join");
    net.run_for(Duration::from_millis(200));
    net.loss.insert(1, 0.1);
    let body: Vec<u8> = (0..MAX_POST).map(|i| (i * 7 % 251) as u8).collect();
    command(
        &mut net,
        0,
        Command::Post {
            activity: a.id.to_hex(),
            body: body.clone(),
            bytes: true,
            at_ms: 1,
        },
    )
    .expect("posted");
    net.run_until_true(Duration::from_secs(20), |net| {
        !net.stores[1].log(a.id).is_empty()
    })
    .expect("arrived");
    let got = &net.stores[1].log(a.id)[0];
    assert!(got.bytes);
    assert_eq!(got.body, body);
    let too_big = command(
        &mut net,
        0,
        Command::Post {
            activity: a.id.to_hex(),
            body: vec![0; MAX_POST + 1],
            bytes: true,
            at_ms: 1,
        },
    );
    assert!(
        matches!(too_big, Err(CommandError::Usage(_))),
        "{too_big:?}"
    );
}

/// A private activity: never advertised; its key goes to an invitee sealed; a stranger on the
/// link reads nothing of it, and its forged frames are dropped and counted.
#[test]
fn a_private_activity_is_unadvertised_unreadable_to_outsiders_and_their_forgeries_are_dropped() {
    let mut net = net(3, 6);
    let a = share(&mut net, 0, "secret plans", true);
    net.run_for(Duration::from_secs(3));
    assert!(
        !net.host(2)
            .activities(net.now)
            .iter()
            .any(|s| s.info.id == a.id),
        "carol was never told of it"
    );
    let bob = net.host(1).id();
    let inv = match command(
        &mut net,
        0,
        Command::Invite {
            peer: bob,
            activity: "secret plans".into(),
            timeout: Duration::from_secs(5),
        },
    ) {
        Ok(Outcome::Delivery(id)) => id,
        other => panic!("{other:?}"),
    };
    net.run_for(Duration::from_secs(1));
    // The invitation carried the key sealed to bob: he joins by the invitation's id.
    let joined = join(&mut net, 1, &inv).expect("join by invitation");
    assert_eq!(joined.key, a.key);
    net.run_for(Duration::from_millis(200));
    post(&mut net, 0, &a, "the plaintext of a post");
    net.run_for(Duration::from_secs(1));
    assert_eq!(log(&net, 1, &a), vec!["the plaintext of a post"]);
    // Nothing on the medium carries the text in the clear.
    let needle = b"plaintext of a post";
    assert!(!net
        .sent
        .iter()
        .any(|s| s.payload.windows(needle.len()).any(|w| w == needle)));
    // Carol forges a frame for the activity with a key of her own.
    let forged = wire::Repr {
        activity: a.id,
        auth: None,
        sender: crate::identity::Identity::from_secret([3; 32]).public(),
        body: wire::Body::Data(wire::Data {
            pkt: 1,
            post: 1,
            lamport: 1,
            at_ms: 1,
            frag: 0,
            frags: 1,
            bytes: false,
            repair: false,
            sig: [0; 64],
            nick: "carol".into(),
            chunk: b"forged".to_vec(),
        }),
    }
    .emit(&[0x99; 32], &[1; 24])
    .unwrap();
    let carol = std::net::SocketAddr::new(std::net::IpAddr::V4(crate::vnet::addr(2)), a.port);
    net.inject(1, crate::node::Channel::Activity(a.id), carol, &forged);
    assert_eq!(
        net.host(1)
            .stats()
            .activity
            .dropped
            .get(&DropReason::BadTag),
        Some(&1)
    );
    assert_eq!(log(&net, 1, &a).len(), 1);
}

/// Trust on first use: a second "bob" with another key is flagged and gets no private key.
#[test]
fn an_impostor_of_a_pinned_nick_is_flagged_and_never_sent_a_private_key() {
    let mut net = net(2, 7);
    let a = share(&mut net, 0, "private", true);
    let mut mallory = config(10);
    mallory.nick = "bob".into();
    mallory.host = "elsewhere".into();
    let m = net.add(|ip, now| start(mallory, Restored::default(), ip, now));
    net.run_until_true(Duration::from_secs(10), |net| {
        net.host(0).peers().count() == 2
    })
    .expect("alice sees both");
    let impostor = net.host(m).id();
    let row = |id: &str| {
        net.host(0)
            .peers()
            .find(|p| p.id == id)
            .cloned()
            .expect("listed")
    };
    assert!(net.host(0).is_impostor(&row(&impostor)));
    assert!(!net.host(0).is_impostor(&row(&net.host(1).id())));
    let refused = command(
        &mut net,
        0,
        Command::Invite {
            peer: impostor,
            activity: a.id.to_hex(),
            timeout: Duration::from_secs(5),
        },
    );
    assert!(
        matches!(refused, Err(CommandError::Refused(_))),
        "{refused:?}"
    );
    assert!(net.stores[0]
        .records
        .iter()
        .any(|r| matches!(r, Record::Pin { nick, .. } if nick == "bob")));
}

/// The seed's fault between two members changes nothing for the activity: it never needs
/// unicast.
#[test]
fn the_seed_fault_between_two_members_changes_nothing() {
    let mut net = net(3, 8);
    let a = share(&mut net, 0, "seed", false);
    net.run_for(Duration::from_secs(2));
    for i in 1..3 {
        join(&mut net, i, &a.id.to_hex()).expect("join");
    }
    net.unicast_drop.insert((0, 1));
    net.unicast_drop.insert((1, 0));
    for k in 0..50 {
        post(&mut net, k % 3, &a, &format!("s{k}"));
    }
    net.run_until_true(Duration::from_secs(5), |net| {
        (0..3).all(|i| net.stores[i].log(a.id).len() == 50)
    })
    .expect("all logs complete");
    assert_eq!(keys(&net, 1, &a), keys(&net, 0, &a));
}

/// An idle activity costs almost nothing: ten members, ten minutes of silence.
#[test]
fn an_idle_activity_of_ten_members_sends_a_few_packets_a_minute() {
    let mut net = net(10, 9);
    let a = share(&mut net, 0, "idle", false);
    net.run_for(Duration::from_secs(2));
    for i in 1..10 {
        join(&mut net, i, &a.id.to_hex()).expect("join");
    }
    post(&mut net, 0, &a, "hello");
    net.run_for(Duration::from_secs(30));
    let since = net.now;
    // Longer than MEMBER_SILENCE: quiet members must still be heard often enough.
    net.run_for(Duration::from_secs(1800));
    let frames: usize = (0..10).map(|i| frames_from(&net, i, since)).sum();
    let per_minute = frames as f64 / 30.0;
    eprintln!("idle activity, 10 members: {per_minute:.1} packets a minute");
    assert!(per_minute <= 10.0, "{per_minute} packets a minute");
    for i in 0..10 {
        let members = net.host(i).activities(net.now)[0].members;
        assert_eq!(members, 10, "member {i}: nobody taken for gone while quiet");
    }
    let silent = net
        .events
        .iter()
        .filter(|(_, _, e)| {
            matches!(e, NodeEvent::Member { change, .. } if *change == MemberChange::Silent)
        })
        .count();
    assert_eq!(silent, 0, "nobody was ever taken for gone");
}

/// A member that missed the answers to its join (or any session that would have told it what
/// exists) says so in its own sessions, and the others answer: it is not left waiting for
/// their idle session a minute later.
#[test]
fn a_joiner_that_misses_the_answers_to_its_join_learns_from_its_own_next_session() {
    let mut net = net(4, 12);
    let a = share(&mut net, 0, "missed", false);
    net.run_for(Duration::from_secs(2));
    for i in 1..3 {
        join(&mut net, i, "missed").expect("join");
    }
    net.run_for(Duration::from_millis(200));
    for k in 0..100 {
        post(&mut net, k % 3, &a, &format!("p{k}"));
    }
    net.run_for(Duration::from_secs(2));
    assert_eq!(log(&net, 2, &a).len(), 100);
    // Every answer to dave's join is lost.
    for m in 0..3 {
        net.multicast_drop.insert((m, 3));
    }
    let t = net.now;
    join(&mut net, 3, "missed").expect("join");
    net.run_for(Duration::from_millis(100));
    assert!(log(&net, 3, &a).is_empty());
    net.multicast_drop.clear();
    let got = net.run_until_true(Duration::from_secs(5), |net| {
        net.stores[3].log(a.id).len() == 100
    });
    assert!(
        got.is_some(),
        "dave has {} of 100 posts 5 s after his join",
        log(&net, 3, &a).len()
    );
    eprintln!("the joiner had everything {:?} after joining", net.now - t);
    assert_eq!(keys(&net, 3, &a), keys(&net, 0, &a));
}

/// A member whose disk refuses writes counts nothing as received (and says so in its drop
/// counters); once the disk is back, what it missed is asked for again and stored in order.
#[test]
fn a_member_whose_store_fails_for_a_while_ends_with_the_complete_log() {
    let mut net = net(3, 13);
    let a = share(&mut net, 0, "disk", false);
    net.run_for(Duration::from_secs(2));
    for i in 1..3 {
        join(&mut net, i, "disk").expect("join");
    }
    net.run_for(Duration::from_millis(200));
    net.stores[2].failing = true;
    for k in 0..50 {
        post(&mut net, 0, &a, &format!("p{k}"));
        net.run_for(Duration::from_millis(1));
    }
    net.run_for(Duration::from_secs(1));
    assert!(log(&net, 2, &a).is_empty());
    let failed = net.host(2).stats().activity.dropped[&DropReason::StoreFailed];
    assert!(failed > 0);
    net.stores[2].failing = false;
    let got = net.run_until_true(Duration::from_secs(10), |net| {
        net.stores[2].log(a.id).len() == 50
    });
    assert!(
        got.is_some(),
        "{} of 50 after the disk came back",
        log(&net, 2, &a).len()
    );
    assert_eq!(keys(&net, 2, &a), keys(&net, 1, &a));
    assert!(complete(&keys(&net, 2, &a)));
}

/// A key holder's signed post at the top of the Lamport range moves nobody's clock there: the
/// next posts still reach everyone, numbered far below it (issue 15, attack 3: one such post
/// capped everyone's clock).
#[test]
fn a_post_at_the_top_of_the_lamport_range_does_not_stop_the_next_ones() {
    let mut net = net(2, 14);
    let a = share(&mut net, 0, "top", false);
    net.run_for(Duration::from_secs(2));
    join(&mut net, 1, "top").expect("join");
    net.run_for(Duration::from_millis(200));
    let mallory = crate::identity::Identity::from_secret([9; 32]);
    let frame = signed_frame(&a, &mallory, &mallory, 1, wire::MAX_SEQ - 1, b"top");
    let src = std::net::SocketAddr::new(std::net::IpAddr::V4([10, 0, 0, 99].into()), a.port);
    for i in 0..2 {
        net.inject(i, crate::node::Channel::Activity(a.id), src, &frame);
    }
    net.run_for(Duration::from_millis(100));
    post(&mut net, 1, &a, "after");
    post(&mut net, 0, &a, "and again");
    let both = net.run_until_true(Duration::from_secs(5), |net| {
        (0..2).all(|i| net.stores[i].log(a.id).len() == 3)
    });
    assert!(
        both.is_some(),
        "{:?} / {:?}",
        log(&net, 0, &a),
        log(&net, 1, &a)
    );
    assert_eq!(keys(&net, 0, &a), keys(&net, 1, &a));
    for i in 0..2 {
        let after = net.stores[i]
            .log(a.id)
            .into_iter()
            .filter(|p| p.body != b"top")
            .map(|p| p.lamport)
            .max();
        assert!(
            after.is_some_and(|l| l <= group::MAX_LAMPORT_JUMP + 10),
            "clock moved to {after:?}"
        );
    }
}

/// Frames captured and sent again (no key needed) are dropped and counted, whatever their
/// kind: data, session or join.
#[test]
fn replayed_frames_are_dropped_and_counted() {
    let mut net = net(2, 15);
    let a = share(&mut net, 0, "replay", false);
    net.run_for(Duration::from_secs(2));
    join(&mut net, 1, "replay").expect("join");
    // What alice sends from here on, bob has received once.
    let joined = net.now;
    net.run_for(Duration::from_millis(200));
    post(&mut net, 0, &a, "once");
    net.run_for(Duration::from_secs(3));
    let captured: Vec<Vec<u8>> = net
        .sent
        .iter()
        .filter(|s| s.at > joined && s.from == 0)
        .filter(|s| s.channel == crate::node::Channel::Activity(a.id))
        .map(|s| s.payload.clone())
        .collect();
    assert!(captured.len() >= 3, "a join, the post, sessions");
    let before = net
        .host(1)
        .stats()
        .activity
        .dropped
        .get(&DropReason::Replayed)
        .copied();
    let src = std::net::SocketAddr::new(std::net::IpAddr::V4([10, 0, 0, 99].into()), a.port);
    for f in &captured {
        net.inject(1, crate::node::Channel::Activity(a.id), src, f);
    }
    net.run_for(Duration::from_millis(100));
    let after = net.host(1).stats().activity.dropped[&DropReason::Replayed];
    assert_eq!(after - before.unwrap_or(0), captured.len() as u64);
    assert_eq!(log(&net, 1, &a), vec!["once"]);
}

/// A newcomer hears from every member at once (each answers its join), not at their idle
/// sessions a minute later.
#[test]
fn a_newcomer_counts_every_member_within_a_second() {
    let mut net = net(4, 16);
    let a = share(&mut net, 0, "roll", false);
    net.run_for(Duration::from_secs(2));
    for i in 1..3 {
        join(&mut net, i, "roll").expect("join");
        // Long enough for the quick sessions after a change to be over.
        net.run_for(Duration::from_secs(5));
    }
    join(&mut net, 3, &a.id.to_hex()).expect("join");
    let all = net.run_until_true(Duration::from_secs(1), |net| {
        net.host(3).activities(net.now)[0].members == 4
    });
    assert!(
        all.is_some(),
        "{} members",
        net.host(3).activities(net.now)[0].members
    );
}

/// A data frame of one-fragment post number `seq` in `sender`'s name, signed by `signer`, sealed
/// with the activity's key (what any member can send).
fn signed_frame(
    a: &ActivityInfo,
    sender: &crate::identity::Identity,
    signer: &crate::identity::Identity,
    seq: u64,
    lamport: u64,
    body: &[u8],
) -> Vec<u8> {
    let mut post = Post {
        activity: a.id,
        sender: sender.public(),
        nick: "someone".into(),
        seq,
        first_pkt: seq,
        frags: 1,
        lamport,
        at_ms: 1,
        bytes: false,
        body: body.to_vec(),
        sig: [0; 64],
    };
    post.sig = signer.sign(&signed::signed_bytes(&post)).to_bytes();
    let d = group::fragments(&post, false).remove(0);
    wire::Repr {
        activity: a.id,
        sender: sender.public(),
        body: wire::Body::Data(d),
        auth: None,
    }
    .emit(&a.key, &nonce_for(seq))
    .unwrap()
}

/// A nonce of its own for each `n`.
fn nonce_for(n: u64) -> [u8; 24] {
    let mut nonce = [0x4e; 24];
    nonce[..8].copy_from_slice(&n.to_be_bytes());
    nonce
}

/// Issue 15, attack 3: a member posts in another's name, first; the victim's real post was then
/// dropped as a duplicate. Now the forgery is dropped and counted, and the real post arrives.
#[test]
fn a_member_cannot_post_as_another_and_the_real_post_still_arrives() {
    let mut net = net(3, 15);
    let a = share(&mut net, 0, "chat", false);
    net.run_for(Duration::from_secs(2));
    join(&mut net, 1, "chat").expect("bob joins");
    join(&mut net, 2, "chat").expect("carol joins");
    net.run_for(Duration::from_millis(300));
    let alice = crate::identity::Identity::from_secret(config(0).secret);
    let carol = crate::identity::Identity::from_secret(config(2).secret);
    // Carol, a member, sends alice's post 1 before alice does, signed by herself.
    let forged = signed_frame(&a, &alice, &carol, 1, 1, b"forged by carol");
    let src = std::net::SocketAddr::new(std::net::IpAddr::V4(crate::vnet::addr(2)), a.port);
    net.inject(1, crate::node::Channel::Activity(a.id), src, &forged);
    net.run_for(Duration::from_millis(100));
    assert!(log(&net, 1, &a).is_empty(), "{:?}", log(&net, 1, &a));
    assert_eq!(
        net.host(1)
            .stats()
            .activity
            .dropped
            .get(&DropReason::BadSignature),
        Some(&1)
    );
    post(&mut net, 0, &a, "alice's own");
    let got = net.run_until_true(Duration::from_secs(5), |net| {
        log(net, 1, &a) == vec!["alice's own"]
    });
    assert!(got.is_some(), "{:?}", log(&net, 1, &a));
}

/// What a member shows of `a`'s table `name`: (entries now, bound).
fn table(net: &Vnet<Node>, i: usize, name: &str) -> (usize, usize) {
    net.host(i)
        .tables()
        .into_iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, now, bound)| (now, bound))
        .expect("a table of that name")
}

/// Issue 15, attack 4: keys are free, and the members table never shrank, so a host inventing
/// thousands of them locked a real newcomer out. Now a full table forgets a stranger, never a
/// peer presence lists.
#[test]
fn a_stranger_with_thousands_of_keys_cannot_lock_a_peer_out_of_an_activity() {
    let mut net = net(3, 16);
    let a = share(&mut net, 0, "open", false);
    net.run_for(Duration::from_secs(2));
    let src = std::net::SocketAddr::new(std::net::IpAddr::V4([10, 0, 0, 99].into()), a.port);
    for n in 0..group::MAX_SENDERS as u32 + 10 {
        let mut secret = [7u8; 32];
        secret[..4].copy_from_slice(&n.to_be_bytes());
        let sybil = crate::identity::Identity::from_secret(secret);
        let mut nonce = [0u8; 24];
        nonce[..4].copy_from_slice(&n.to_be_bytes());
        let body = wire::Body::Join {
            nick: format!("sybil{n}"),
        };
        let join = wire::Repr {
            activity: a.id,
            sender: sybil.public(),
            auth: signed::sign_control(&sybil, &a.id, &body, 1),
            body,
        }
        .emit(&a.key, &nonce)
        .unwrap();
        net.inject(0, crate::node::Channel::Activity(a.id), src, &join);
    }
    net.run_for(Duration::from_millis(100));
    assert_eq!(table(&net, 0, "activity-members").0, group::MAX_SENDERS);
    join(&mut net, 2, "open").expect("carol joins");
    net.run_for(Duration::from_millis(300));
    post(&mut net, 2, &a, "carol is here");
    let got = net.run_until_true(Duration::from_secs(5), |net| {
        log(net, 0, &a) == vec!["carol is here"]
    });
    assert!(got.is_some(), "{:?}", log(&net, 0, &a));
}

/// Issue 15, attack 4: one sender's packets held out of order (a gap before them) were bounded
/// only in count (4,096 per sender, of 4,096 senders). Now in bytes too, per sender and in all.
#[test]
fn one_sender_cannot_make_a_member_hold_more_than_its_byte_quota() {
    let mut net = net(2, 17);
    let a = share(&mut net, 0, "big", false);
    net.run_for(Duration::from_secs(2));
    let mallory = crate::identity::Identity::from_secret([9; 32]);
    let src = std::net::SocketAddr::new(std::net::IpAddr::V4([10, 0, 0, 99].into()), a.port);
    // Posts 2, 3 and 4 of a megabyte each, post 1 never sent: all held, waiting for it.
    let mut n = 0u32;
    let mut first_pkt = 1 + wire::MAX_FRAGS as u64;
    for seq in 2..=4 {
        let post = Post {
            activity: a.id,
            sender: mallory.public(),
            nick: "mallory".into(),
            seq,
            first_pkt,
            frags: wire::MAX_FRAGS,
            lamport: seq,
            at_ms: 1,
            bytes: true,
            body: vec![0x55; MAX_POST],
            sig: [0; 64],
        };
        first_pkt += wire::MAX_FRAGS as u64;
        for d in group::fragments(&post, false) {
            n += 1;
            let mut nonce = [1u8; 24];
            nonce[..4].copy_from_slice(&n.to_be_bytes());
            let frame = wire::Repr {
                activity: a.id,
                sender: mallory.public(),
                body: wire::Body::Data(d),
                auth: None,
            }
            .emit(&a.key, &nonce)
            .unwrap();
            net.inject(0, crate::node::Channel::Activity(a.id), src, &frame);
        }
    }
    let (held, bound) = table(&net, 0, "activity-held-bytes");
    assert!(held <= group::MAX_SENDER_BYTES, "{held} bytes held");
    assert!(held >= MAX_POST, "it holds what fits: {held}");
    assert_eq!(bound, group::MAX_HELD_BYTES);
    let full = net
        .host(0)
        .stats()
        .activity
        .dropped
        .get(&DropReason::TableFull)
        .copied()
        .unwrap_or(0);
    assert!(full > 0, "the rest refused and counted");
}

/// Members of `a` that host `i` counts (itself included).
fn members(net: &Vnet<Node>, i: usize, a: &ActivityInfo) -> usize {
    net.host(i)
        .activities(net.now)
        .iter()
        .find(|s| s.info.id == a.id)
        .map_or(0, |s| s.members)
}

/// Issue 15, attack 4: control frames were remembered by nonce for the last 8,192 frames only,
/// so a captured Leave replayed after that removed a member who was there. Now each member's
/// control frames carry a growing, signed counter: an old one is refused however late, and a
/// member cannot make one in another's name.
#[test]
fn a_captured_leave_replayed_after_thousands_of_frames_removes_nobody() {
    let mut net = net(3, 18);
    let a = share(&mut net, 0, "room", false);
    net.run_for(Duration::from_secs(2));
    join(&mut net, 1, "room").expect("bob joins");
    net.run_for(Duration::from_millis(300));
    let since = net.sent.len();
    command(
        &mut net,
        1,
        Command::Leave {
            activity: a.id.to_hex(),
        },
    )
    .expect("bob leaves");
    net.run_for(Duration::from_millis(300));
    let bob = crate::identity::Identity::from_secret(config(1).secret).public();
    let leave = net.sent[since..]
        .iter()
        .find(|s| {
            s.from == 1
                && wire::Repr::parse(&s.payload, &a.key)
                    .is_ok_and(|r| r.sender == bob && r.body == wire::Body::Leave)
        })
        .map(|s| s.payload.clone())
        .expect("bob's leave was sent");
    join(&mut net, 1, "room").expect("bob is back");
    net.run_for(Duration::from_millis(300));
    assert_eq!(members(&net, 0, &a), 2);
    // More than the replay window of frames since (a member's one-fragment posts).
    let carol = crate::identity::Identity::from_secret(config(2).secret);
    let src = std::net::SocketAddr::new(std::net::IpAddr::V4(crate::vnet::addr(2)), a.port);
    for seq in 1..=group::REPLAY_WINDOW as u64 + 10 {
        let frame = signed_frame(&a, &carol, &carol, seq, seq, b"x");
        net.inject(0, crate::node::Channel::Activity(a.id), src, &frame);
    }
    let before = net
        .host(0)
        .stats()
        .activity
        .dropped
        .get(&DropReason::Replayed)
        .copied()
        .unwrap_or(0);
    net.inject(0, crate::node::Channel::Activity(a.id), src, &leave);
    assert_eq!(
        members(&net, 0, &a),
        3,
        "bob (and carol, who posted) still there"
    );
    let after = net.host(0).stats().activity.dropped[&DropReason::Replayed];
    assert_eq!(after, before + 1);
    // Carol, a member, cannot make a leave in bob's name either.
    let forged = wire::Repr {
        activity: a.id,
        sender: bob,
        auth: signed::sign_control(&carol, &a.id, &wire::Body::Leave, u64::MAX - 1),
        body: wire::Body::Leave,
    }
    .emit(&a.key, &[0xee; 24])
    .unwrap();
    net.inject(0, crate::node::Channel::Activity(a.id), src, &forged);
    assert_eq!(members(&net, 0, &a), 3);
}

/// Issue 15, attack 4: a 148-byte NACK drew up to 256 repairs, again every 20 ms (about 2,000
/// times its size). A member asking for the same 256 posts every 20 ms for a minute now draws
/// them once, then about a byte for each byte it sends: at most twice its NACKs' bytes in all,
/// counting everything alice sends meanwhile.
#[test]
fn a_member_repeating_a_nack_draws_at_most_twice_its_bytes() {
    let mut net = net(1, 19);
    let a = share(&mut net, 0, "history", false);
    net.run_for(Duration::from_secs(2));
    for i in 0..256 {
        let text = format!("{i:04} {}", "x".repeat(1000));
        post(&mut net, 0, &a, &text);
        net.run_for(Duration::from_millis(5));
    }
    net.run_for(Duration::from_secs(2));
    let alice = crate::identity::Identity::from_secret(config(0).secret).public();
    let mallory = crate::identity::Identity::from_secret([9; 32]);
    let src = std::net::SocketAddr::new(std::net::IpAddr::V4([10, 0, 0, 99].into()), a.port);
    let since = net.sent.len();
    let mut asked = 0usize;
    for n in 1..=3000u64 {
        let body = wire::Body::Nack(vec![(alice, vec![(1, 256)])]);
        let frame = wire::Repr {
            activity: a.id,
            sender: mallory.public(),
            auth: signed::sign_control(&mallory, &a.id, &body, n),
            body,
        }
        .emit(&a.key, &nonce_for(n))
        .unwrap();
        asked += frame.len();
        net.inject(0, crate::node::Channel::Activity(a.id), src, &frame);
        net.run_for(Duration::from_millis(20));
    }
    let sent: usize = net.sent[since..]
        .iter()
        .filter(|s| s.from == 0 && matches!(s.channel, crate::node::Channel::Activity(_)))
        .map(|s| s.payload.len())
        .sum();
    let ratio = sent as f64 / asked as f64;
    eprintln!("FIGURE a repeated NACK for 60 s: {asked} bytes asked, {sent} sent ({ratio:.2}x)");
    assert!(ratio <= 2.0, "{ratio:.2}x");
    assert!(sent >= 256 * 1000, "the history went out once: {sent}");
}

/// Our TXT is signed now (`sig=`, 90 bytes more): with the most public activities advertised,
/// names and types at their longest, every mDNS datagram we send still fits a 1400-byte MTU.
#[test]
fn the_signed_announcement_with_every_activity_advertised_fits_one_datagram() {
    let mut net = net(2, 20);
    for n in 0..6 {
        let name = format!("{n}{}", "é".repeat(49)); // 99 bytes
        let r = command(
            &mut net,
            0,
            Command::Share {
                name,
                kind: "t".repeat(32),
                private: false,
            },
        );
        assert!(r.is_ok(), "{r:?}");
    }
    let since = net.sent.len();
    net.run_for(Duration::from_secs(3));
    let largest = net.sent[since..]
        .iter()
        .filter(|s| s.from == 0 && s.channel == crate::node::Channel::Mdns)
        .map(|s| s.payload.len())
        .max()
        .expect("announced");
    eprintln!("FIGURE the largest mDNS datagram: {largest} bytes");
    assert!(largest <= 1400, "{largest}");
    // And bob, who got them, lists them (the signature verified).
    let seen = net.host(1).activities(net.now).len();
    assert!(seen >= 4, "bob sees {seen}");
}
