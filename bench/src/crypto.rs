//! What trust costs (issue 15): the cryptography each message, post and control frame now
//! carries, timed in this process on this machine, so bench/invite and bench/activity print it
//! beside their latencies and rates.

use std::time::Instant;

use nbhd_proto::activity::wire::Body;
use nbhd_proto::activity::{signed, ActivityId, Post};
use nbhd_proto::identity::Identity;
use nbhd_proto::messages::noise::{SecureChannel, Step};
use nbhd_proto::messages::sealed::{self, Purpose};
use nbhd_proto::messages::xml::parse_stanzas;

/// Microseconds per call of `f`, over `n` calls.
fn us(n: u32, mut f: impl FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    t.elapsed().as_secs_f64() * 1e6 / f64::from(n)
}

fn elements(bytes: &[u8]) -> Vec<nbhd_proto::messages::xml::Element> {
    parse_stanzas(bytes).expect("our own bytes parse")
}

/// A stream's two channels, `a` connecting to `b`, through the whole handshake.
fn pair(a: &Identity, b: &Identity) -> (SecureChannel, SecureChannel) {
    let (mut i, m1) = SecureChannel::initiator(a, "a", "b", [1; 32]).expect("initiator");
    let mut r = SecureChannel::responder(b, "a", "b", [2; 32]).expect("responder");
    let Ok(Step::Reply(m2)) = r.on_handshake(&elements(&m1)[0]) else {
        panic!("the responder answers")
    };
    let Ok(Step::Done {
        reply: Some(m3), ..
    }) = i.on_handshake(&elements(&m2)[0])
    else {
        panic!("the initiator finishes")
    };
    let _ = r.on_handshake(&elements(&m3)[0]);
    (i, r)
}

/// The costs, one line each, ready to print.
pub fn costs() -> Vec<String> {
    let (a, b) = (
        Identity::from_secret([1; 32]),
        Identity::from_secret([2; 32]),
    );
    let handshake = us(200, || drop(pair(&a, &b)));
    let (mut i, mut r) = pair(&a, &b);
    let stanza = vec![b'x'; 300];
    let stream = us(5000, || {
        let c = i.seal(&stanza).expect("open");
        for e in elements(&c) {
            let _ = r.open(&e);
        }
    });
    let courier = us(2000, || {
        let s = sealed::seal(&a, &b.public(), Purpose::Courier, [3; 24], &stanza).expect("seal");
        let _ = sealed::open(&b, &a.public(), Purpose::Courier, &s);
    });
    // As the messages engine does it: the agreement with a peer made once and kept.
    let (ab, ba) = (
        sealed::shared(&a, &b.public()).expect("agree"),
        sealed::shared(&b, &a.public()).expect("agree"),
    );
    let (ka, kb) = (a.public(), b.public());
    let courier_kept = us(5000, || {
        let s =
            sealed::seal_shared(&ab, &ka, &kb, Purpose::Courier, [3; 24], &stanza).expect("seal");
        let _ = sealed::open_shared(&ba, &ka, &kb, Purpose::Courier, &s);
    });
    let mut post = Post {
        activity: ActivityId([1; 16]),
        sender: a.public(),
        nick: "a".into(),
        seq: 1,
        first_pkt: 1,
        frags: 1,
        lamport: 1,
        at_ms: 1,
        bytes: false,
        body: vec![b'p'; 1024],
        sig: [0; 64],
    };
    let sign = us(2000, || signed::sign(&a, &mut post));
    let verify = us(2000, || assert!(signed::verify(&post)));
    let body = Body::Session(vec![([5; 32], 9)]);
    let control = us(2000, || {
        let auth = signed::sign_control(&a, &ActivityId([1; 16]), &body, 7).expect("sign");
        let r = nbhd_proto::activity::wire::Repr {
            activity: ActivityId([1; 16]),
            sender: a.public(),
            body: body.clone(),
            auth: Some(auth),
        };
        assert!(signed::verify_control(&r));
    });
    vec![
        format!("stream handshake (Noise XX, both sides): {handshake:.0} us, once per stream"),
        format!("a 300-byte stanza sealed and opened on a stream: {stream:.1} us"),
        format!("a 300-byte stanza sealed to its recipient and opened (courier, relay): {courier_kept:.1} us ({courier:.1} us the first time, with the X25519 agreements)"),
        format!("a 1 KiB post signed: {sign:.1} us; verified: {verify:.1} us"),
        format!("a control frame signed and verified: {control:.1} us"),
    ]
}
