//! The paths engine driven by hand through its public inputs, on a virtual clock: evidence in,
//! states, plans, probes and diagnoses out. End-to-end behaviour (two nodes, a black hole) is in
//! the Node's tests on the shared virtual network.

use super::probe::{ObservationRepr, ANSWER_DELAY, PROBE_TIMEOUT};
use super::*;
use crate::frame::{self, Kind};

const BOB: &str = "bob-key";

fn me() -> Identity {
    Identity::from_secret([1; 32])
}

fn bob() -> Identity {
    Identity::from_secret([2; 32])
}

fn bob_probe_addr() -> SocketAddr {
    "10.0.0.2:5299".parse().unwrap()
}

/// Paths that know bob's key and probe port.
fn paths() -> Paths {
    let mut p = Paths::new(me(), 7);
    p.set_contact(
        BOB,
        Contact {
            key: bob().public(),
            probe_addr: Some(bob_probe_addr()),
        },
    );
    p
}

/// A frame from bob to us.
fn from_bob(kind: Kind, id: u64, payload: Vec<u8>) -> frame::Repr {
    frame::Repr {
        kind,
        sender: bob().public(),
        recipient: me().public(),
        id,
        payload,
    }
}

/// What the engine wants sent, parsed: (kind, frame id, payload) with where it goes.
fn sent(p: &mut Paths) -> Vec<(Kind, u64, Vec<u8>, bool)> {
    let mut out = Vec::new();
    while let Some(t) = p.poll_transmit() {
        let (bytes, courier) = match t {
            PathsTransmit::Probe { addr, bytes } => {
                assert_eq!(addr, bob_probe_addr());
                (bytes, false)
            }
            PathsTransmit::Courier { bytes } => (bytes, true),
        };
        let f = frame::Repr::parse(&bytes).expect("we send valid frames");
        out.push((f.kind, f.id, f.payload, courier));
    }
    out
}

fn observation(request: bool, probes_heard: u32) -> Vec<u8> {
    ObservationRepr {
        request,
        probes_heard,
    }
    .emit()
}

#[test]
fn a_handshake_means_up_and_tcp_first_with_the_courier_after_250ms() {
    let t = Instant::now();
    let mut p = paths();
    assert_eq!(p.state(t, BOB), PathState::Unknown);
    p.on_tcp_ok(t, BOB, Some(Duration::from_millis(2)));
    assert_eq!(p.state(t, BOB), PathState::Up);
    assert_eq!(
        p.plan(t, BOB),
        Plan {
            first: Via::Tcp,
            courier_after: Some(COURIER_AFTER_MIN),
            tcp_too: false
        }
    );
    // A slow path: three RTTs.
    for _ in 0..40 {
        p.on_tcp_ok(t, BOB, Some(Duration::from_millis(200)));
    }
    let after = p.plan(t, BOB).courier_after.unwrap();
    assert!(after > Duration::from_millis(550), "{after:?}");
    assert!(p.diagnose(t, BOB, "bob").text.is_empty());
}

/// The seed: our unicast to bob dies, bob's to us arrives, multicast flows both ways.
#[test]
fn the_seed_one_way_black_hole_is_named_and_delivery_goes_by_courier() {
    let t = Instant::now();
    let mut p = paths();
    p.on_multicast_heard(t, BOB);
    p.on_tcp_failed(t, BOB);
    assert_eq!(p.state(t, BOB), PathState::Suspect);
    let out = sent(&mut p);
    assert!(
        matches!(
            out[..],
            [(Kind::Probe, _, _, false), (Kind::Observation, _, _, true)]
        ),
        "a probe and a question at once to find out: {out:?}"
    );
    // Our probe dies on the way. Bob says so (none of ours arrived), and his own probe reaches us.
    let answer = t + ANSWER_DELAY;
    p.handle_probe(
        answer,
        bob_probe_addr(),
        BOB,
        &from_bob(Kind::Probe, 9, vec![]),
    );
    assert!(
        matches!(sent(&mut p)[..], [(Kind::ProbeReply, 9, _, false)]),
        "bob's probe is answered"
    );
    p.handle_observation(answer, BOB, &observation(false, 0))
        .unwrap();
    p.on_courier_receipt(answer, BOB, Some(Duration::from_millis(1)));
    assert_eq!(p.state(answer, BOB), PathState::UnicastBroken);
    assert_eq!(
        p.plan(answer, BOB),
        Plan {
            first: Via::Courier,
            courier_after: None,
            tcp_too: false
        },
        "sticky: straight to the courier"
    );
    let d = p.diagnose(answer, BOB, "bob");
    assert_eq!(
        (d.unicast_out, d.unicast_in, d.multicast_out, d.multicast_in),
        (Health::Broken, Health::Ok, Health::Ok, Health::Ok)
    );
    assert_eq!(
        d.text,
        "unicast from you to bob is dropped on the way (your probes never arrive; bob's reach you), so TCP is impossible both ways; multicast works both ways; messages go by courier"
    );
}

/// The other end of the seed: our probes reach bob, his replies (and probes) to us die.
#[test]
fn the_mirror_image_from_the_other_side() {
    let t = Instant::now();
    let mut p = paths();
    p.on_multicast_heard(t, BOB);
    p.on_tcp_failed(t, BOB);
    assert_eq!(sent(&mut p).len(), 2, "probe and question");
    // Bob says our probe arrived; his reply to it never comes.
    p.handle_observation(t + ANSWER_DELAY, BOB, &observation(false, 1))
        .unwrap();
    let lost = t + PROBE_TIMEOUT;
    assert_eq!(p.poll_timeout(), Some(lost));
    p.handle_timeout(lost);
    let d = p.diagnose(lost, BOB, "bob");
    assert_eq!((d.unicast_out, d.unicast_in), (Health::Ok, Health::Broken));
    assert_eq!(d.state, PathState::UnicastBroken);
    assert!(
        d.text
            .starts_with("unicast from bob to you is dropped on the way"),
        "{}",
        d.text
    );
}

#[test]
fn a_courier_win_puts_the_courier_first_and_asks_which_direction_at_once() {
    let t = Instant::now();
    let mut p = paths();
    p.on_tcp_ok(t, BOB, Some(Duration::from_millis(1)));
    let win = t + Duration::from_millis(250);
    p.on_courier_win(win, BOB);
    assert_eq!(
        p.plan(win, BOB),
        Plan {
            first: Via::Courier,
            courier_after: None,
            tcp_too: true
        },
        "the courier first, TCP racing behind"
    );
    let out = sent(&mut p);
    assert!(
        matches!(
            out[..],
            [(Kind::Probe, _, _, false), (Kind::Observation, _, _, true)]
        ) && out[1].2 == observation(true, 0),
        "the probe, then the question: {out:?}"
    );
    // Bob answers ANSWER_DELAY later: none of our probes came; his own two probes reach us.
    let answer = win + ANSWER_DELAY;
    p.handle_probe(
        answer,
        bob_probe_addr(),
        BOB,
        &from_bob(Kind::Probe, 1, vec![]),
    );
    p.handle_observation(answer, BOB, &observation(false, 0))
        .unwrap();
    let d = p.diagnose(answer, BOB, "bob");
    assert_eq!(d.state, PathState::UnicastBroken, "{d:?}");
    assert_eq!((d.unicast_out, d.unicast_in), (Health::Broken, Health::Ok));
    assert_eq!(p.plan(answer, BOB).first, Via::Courier);
    assert!(!p.plan(answer, BOB).tcp_too, "known broken: sticky");
}

#[test]
fn asked_what_it_saw_it_probes_back_and_answers_after_the_askers_probe_had_time() {
    let t = Instant::now();
    let mut p = paths();
    // Bob probes us, then asks.
    p.handle_probe(t, bob_probe_addr(), BOB, &from_bob(Kind::Probe, 3, vec![]));
    let _reply = sent(&mut p);
    p.handle_observation(t, BOB, &observation(true, 0)).unwrap();
    let out = sent(&mut p);
    assert_eq!(
        out.iter()
            .filter(|(k, _, _, c)| *k == Kind::Probe && !c)
            .count(),
        2,
        "two probes back at once: {out:?}"
    );
    assert!(!out.iter().any(|(k, ..)| *k == Kind::Observation));
    assert_eq!(p.poll_timeout(), Some(t + ANSWER_DELAY));
    p.handle_timeout(t + ANSWER_DELAY);
    let answer: Vec<_> = sent(&mut p)
        .into_iter()
        .filter(|(k, ..)| *k == Kind::Observation)
        .collect();
    assert_eq!(answer.len(), 1);
    assert_eq!(answer[0].2, observation(false, 1), "his one probe arrived");
}

#[test]
fn healing_a_reply_puts_tcp_back_first() {
    let t = Instant::now();
    let mut p = paths();
    p.on_multicast_heard(t, BOB);
    p.on_local_send_error(t, BOB);
    assert_eq!(p.plan(t, BOB).first, Via::Courier);
    let later = t + Duration::from_secs(12);
    p.want(t, BOB, later);
    p.handle_timeout(p.poll_timeout().unwrap());
    let probe = sent(&mut p)
        .into_iter()
        .find(|(k, ..)| *k == Kind::Probe)
        .expect("probing while traffic wants bob");
    p.handle_probe(
        later,
        bob_probe_addr(),
        BOB,
        &from_bob(Kind::ProbeReply, probe.1, vec![]),
    );
    assert_eq!(p.state(later, BOB), PathState::Up);
    assert_eq!(p.plan(later, BOB).first, Via::Tcp);
}

#[test]
fn probes_every_10_to_15s_while_wanted_else_back_off_to_10_minutes_and_stay_armed() {
    let t0 = Instant::now();
    let mut p = paths();
    p.on_multicast_heard(t0, BOB);
    p.on_local_send_error(t0, BOB);
    p.want(t0, BOB, t0 + Duration::from_secs(60));
    let mut t = t0;
    let mut probes_at = Vec::new();
    while t < t0 + Duration::from_secs(3600) {
        t = p.poll_timeout().unwrap();
        p.handle_timeout(t);
        for (kind, id, ..) in sent(&mut p) {
            if kind == Kind::Probe {
                probes_at.push(t);
                // Bob answers: the schedule, not a loss, decides the next probe.
                p.handle_probe(
                    t,
                    bob_probe_addr(),
                    BOB,
                    &from_bob(Kind::ProbeReply, id, vec![]),
                );
            }
        }
    }
    let gaps: Vec<Duration> = probes_at.windows(2).map(|w| w[1] - w[0]).collect();
    let busy: Vec<_> = gaps.iter().take_while(|g| **g <= PROBE_BUSY.1).collect();
    assert!(busy.len() >= 3, "{gaps:?}");
    assert!(busy.iter().all(|g| **g >= PROBE_BUSY.0), "{gaps:?}");
    let idle: Vec<_> = gaps[busy.len()..].to_vec();
    assert_eq!(idle[0], PROBE_IDLE_FIRST);
    assert!(idle.windows(2).all(|w| w[1] >= w[0]));
    assert_eq!(*idle.last().unwrap(), PROBE_IDLE_MAX, "never gives up");
}

#[test]
fn a_relay_only_peer_is_planned_through_the_relay_and_a_network_change_forgets_all() {
    let t = Instant::now();
    let mut p = paths();
    p.on_local_send_error(t, BOB);
    p.on_relay_only(t, BOB);
    assert_eq!(p.plan(t, BOB).first, Via::Relay);
    p.network_changed();
    assert_eq!(p.state(t, BOB), PathState::Unknown);
    assert_eq!(p.plan(t, BOB).first, Via::Tcp);
}

#[test]
fn old_evidence_expires() {
    let t = Instant::now();
    let mut p = paths();
    p.on_multicast_heard(t, BOB);
    p.on_local_send_error(t, BOB);
    assert_eq!(p.state(t, BOB), PathState::UnicastBroken);
    assert_eq!(
        p.state(t + EVIDENCE_TTL + Duration::from_secs(1), BOB),
        PathState::Unknown
    );
}

#[test]
fn the_courier_waits_four_round_trips_doubling_and_sends_two_copies_once_loss_was_seen() {
    let t = Instant::now();
    let mut p = paths();
    assert_eq!(p.courier_rto(BOB, 0), COURIER_RTO_INITIAL);
    for _ in 0..40 {
        p.on_courier_receipt(t, BOB, Some(Duration::from_millis(5)));
    }
    assert_eq!(p.courier_rto(BOB, 0), Duration::from_millis(20));
    assert_eq!(p.courier_rto(BOB, 1), Duration::from_millis(40));
    assert_eq!(p.courier_rto(BOB, 10), COURIER_RTO_MAX);
    p.on_courier_receipt(t, BOB, Some(Duration::from_micros(300)));
    for _ in 0..40 {
        p.on_courier_receipt(t, BOB, Some(Duration::from_micros(300)));
    }
    assert_eq!(
        p.courier_rto(BOB, 0),
        COURIER_RTO_MIN,
        "never below the floor"
    );
    assert_eq!(
        p.courier_copies(t, BOB),
        1,
        "no extra frame on a clean path"
    );
    p.on_courier_retransmit(t, BOB);
    assert_eq!(p.courier_copies(t, BOB), 2);
    assert_eq!(
        p.courier_copies(t + EVIDENCE_TTL, BOB),
        1,
        "forgotten with the evidence"
    );
}

#[test]
fn a_legacy_peer_is_up_after_a_stream_and_suspect_after_a_failed_connect() {
    let t = Instant::now();
    let mut p = paths();
    let d = p.diagnose_legacy(t, "frank@box", "Frank");
    assert_eq!((d.state, d.path), (PathState::Unknown, Via::Tcp));
    p.on_tcp_ok(t, "frank@box", None);
    let d = p.diagnose_legacy(t, "frank@box", "Frank");
    assert_eq!(d.state, PathState::Up);
    assert_eq!(
        (d.unicast_out, d.unicast_in, d.multicast_out, d.multicast_in),
        (Health::Ok, Health::Ok, Health::Unknown, Health::Unknown)
    );
    let later = t + Duration::from_secs(30);
    p.on_tcp_failed(later, "frank@box");
    let d = p.diagnose_legacy(later, "frank@box", "Frank");
    assert_eq!(d.state, PathState::Suspect);
    assert!(d.text.contains("TCP is its only path"), "{}", d.text);
    p.on_tcp_ok(later + Duration::from_secs(1), "frank@box", None);
    let d = p.diagnose_legacy(later + Duration::from_secs(1), "frank@box", "Frank");
    assert_eq!(
        d.state,
        PathState::Up,
        "a stream after the failure heals it"
    );
}

/// A flood (or replay) of one peer's questions is answered once a second, not once each: we
/// are nobody's probe cannon.
#[test]
fn a_flood_of_questions_is_answered_once_a_second() {
    let t = Instant::now();
    let mut p = paths();
    for k in 0..100u64 {
        p.handle_observation(t + Duration::from_millis(k), BOB, &observation(true, 0))
            .unwrap();
    }
    p.handle_timeout(t + Duration::from_millis(200));
    let out = sent(&mut p);
    let probes = out
        .iter()
        .filter(|(k, _, _, c)| *k == Kind::Probe && !c)
        .count();
    let answers = out.iter().filter(|(k, ..)| *k == Kind::Observation).count();
    assert_eq!((probes, answers), (2, 1), "{out:?}");
    // A second later, a question is answered again.
    p.handle_observation(t + Duration::from_millis(1100), BOB, &observation(true, 0))
        .unwrap();
    let probes = sent(&mut p)
        .iter()
        .filter(|(k, _, _, c)| *k == Kind::Probe && !c)
        .count();
    assert_eq!(probes, 2);
}

/// An answer nobody asked for (a replay of an old one) says nothing of our unicast.
#[test]
fn an_answer_to_no_recent_question_is_not_evidence() {
    let t = Instant::now();
    let mut p = paths();
    p.send_probe(t, BOB);
    let _ = sent(&mut p);
    p.handle_observation(t + Duration::from_millis(30), BOB, &observation(false, 0))
        .unwrap();
    assert_ne!(
        p.diagnose(t + Duration::from_millis(30), BOB, "bob")
            .unicast_out,
        Health::Broken
    );
}
