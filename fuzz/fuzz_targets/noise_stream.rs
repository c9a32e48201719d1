//! The secure channel of streams between nbhd peers (`messages::noise`), from both sides of the
//! handshake: arbitrary handshake messages to a responder and to an initiator that waits for
//! the second message, arbitrary `<c>` contents on an open channel, and arbitrary plaintext
//! sealed by a genuine peer (what a peer holding a key can put inside, into the inner stream
//! parser). Never a panic; a channel that failed stays failed.
//!
//! Input: one byte of mode, then the bytes that mode uses.
#![no_main]

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use nbhd_proto::identity::Identity;
use nbhd_proto::messages::noise::{SecureChannel, Step, NS_NOISE};
use nbhd_proto::messages::xml::{parse_stanzas, Element};

fn element(name: &str, text: &str) -> Element {
    Element::new(NS_NOISE, name).text(text)
}

/// The `<handshake>` inside our own bytes.
fn parse(bytes: &[u8]) -> Vec<Element> {
    parse_stanzas(bytes).expect("our own bytes parse")
}

/// A genuine, open pair: (initiator, responder).
fn pair(a: &Identity, b: &Identity) -> (SecureChannel, SecureChannel) {
    let (mut i, m1) = SecureChannel::initiator(a, "a", "b", [1; 32]).expect("initiator");
    let mut r = SecureChannel::responder(b, "a", "b", [2; 32]).expect("responder");
    let Ok(Step::Reply(m2)) = r.on_handshake(&parse(&m1)[0]) else {
        panic!("the responder answers");
    };
    let Ok(Step::Done { reply: Some(m3), .. }) = i.on_handshake(&parse(&m2)[0]) else {
        panic!("the initiator finishes");
    };
    assert!(matches!(r.on_handshake(&parse(&m3)[0]), Ok(Step::Done { .. })));
    (i, r)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let a = Identity::from_secret([1; 32]);
    let b = Identity::from_secret([2; 32]);
    let text = String::from_utf8_lossy(rest);
    match mode % 4 {
        // Handshake messages to a responder: base64 text, or raw bytes encoded for it.
        0 => {
            let mut r = SecureChannel::responder(&b, "a", "b", [2; 32]).expect("responder");
            for chunk in rest.split(|&c| c == 0) {
                let e = element("handshake", &STANDARD.encode(chunk));
                if r.on_handshake(&e).is_err() {
                    assert!(r.on_handshake(&e).is_err(), "a failed channel stays failed");
                    break;
                }
            }
            let _ = r.open(&element("c", &text));
        }
        // An initiator waiting for the responder's answer.
        1 => {
            let (mut i, _) = SecureChannel::initiator(&a, "a", "b", [1; 32]).expect("initiator");
            let _ = i.on_handshake(&element("handshake", &STANDARD.encode(rest)));
            let _ = i.on_handshake(&element("handshake", &text));
            assert!(i.seal(b"x").is_none() || i.is_open());
        }
        // Arbitrary `<c>` contents on an open channel.
        2 => {
            let (_, mut r) = pair(&a, &b);
            let _ = r.open(&element("c", &text));
            let _ = r.open(&element("c", &STANDARD.encode(rest)));
        }
        // Arbitrary plaintext sealed by a genuine peer, cut at zero bytes into messages.
        _ => {
            let (mut i, mut r) = pair(&a, &b);
            for chunk in rest.split(|&c| c == 0) {
                let sealed = i.seal(chunk).expect("open");
                for e in parse(&sealed) {
                    if r.open(&e).is_err() {
                        return;
                    }
                }
            }
        }
    }
});
