//! The activity frame decoder (DESIGN.md §4.4) and the sealed-key opener on arbitrary bytes:
//! never a panic. The opened body, which any holder of an activity's key can fill with
//! anything, is fuzzed directly: what parses emits back to the same bytes, a frame sealed
//! around it round-trips, and no flipped byte of that frame opens.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nbhd_proto::activity::seal;
use nbhd_proto::activity::wire::{ActivityId, Body, ControlAuth, Kind, Packet, Repr, MAX_FRAME};
use nbhd_proto::identity::Identity;

const KEY: [u8; 32] = [7; 32];
const KINDS: [Kind; 5] = [Kind::Data, Kind::Nack, Kind::Session, Kind::Join, Kind::Leave];

fuzz_target!(|data: &[u8]| {
    // A datagram off the wire: refused or parsed, never a panic.
    if let Ok(p) = Packet::new_checked(data) {
        let _ = (p.kind(), p.activity(), p.sender(), p.open(&KEY));
    }
    let _ = Repr::parse(data, &KEY);
    let _ = seal::open(&Identity::from_secret([3; 32]), data, &[1; 48]);

    // The body a member sealed: whatever it holds.
    let Some((&k, plain)) = data.split_first() else {
        return;
    };
    let kind = KINDS[usize::from(k) % KINDS.len()];
    let Ok(body) = Body::parse(kind, plain) else {
        return;
    };
    assert_eq!(body.kind(), kind);
    assert_eq!(body.emit().as_deref(), Ok(plain), "a body is its bytes");
    let auth = kind.is_control().then_some(ControlAuth {
        counter: u64::from(k),
        sig: [k; 64],
    });
    let r = Repr {
        activity: ActivityId([k; 16]),
        sender: [k.wrapping_add(1); 32],
        body,
        auth,
    };
    let Ok(bytes) = r.emit(&KEY, &[k; 24]) else {
        // Only a frame over MAX_FRAME may be refused.
        return;
    };
    assert!(bytes.len() <= MAX_FRAME);
    assert_eq!(Repr::parse(&bytes, &KEY).as_ref(), Ok(&r));
    let at = (usize::from(k) * 7919 + plain.len()) % bytes.len();
    let mut flipped = bytes.clone();
    flipped[at] ^= 0x01 | k;
    assert!(
        Repr::parse(&flipped, &KEY).is_err(),
        "flipping byte {at} went unnoticed"
    );
    assert!(Repr::parse(&bytes, &[8; 32]).is_err(), "another key opens it");
});
