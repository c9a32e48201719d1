//! The signed frame decoder (courier, receipts, probes, observations) and the observation
//! payload codec on arbitrary bytes: never a panic; a frame made from the input round-trips;
//! and nothing altered verifies: every frame built here, with any one byte flipped, is refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nbhd_proto::frame::{Kind, Packet, Repr, MAX_PAYLOAD};
use nbhd_proto::identity::Identity;
use nbhd_proto::paths::probe::ObservationRepr;

const KINDS: [Kind; 5] = [
    Kind::Courier,
    Kind::CourierReceipt,
    Kind::Probe,
    Kind::ProbeReply,
    Kind::Observation,
];

fuzz_target!(|data: &[u8]| {
    // Raw input: parsed or refused, never a panic; what parses is consistent with its view.
    if let Ok(p) = Packet::new_checked(data) {
        let _ = (p.kind(), p.sender(), p.recipient(), p.id(), p.payload());
        if Repr::parse(data).is_ok() {
            assert!(p.verify(), "parse accepted a frame that does not verify");
        }
    }
    if let Ok(o) = ObservationRepr::parse(data) {
        assert_eq!(o.emit(), data, "an observation is its bytes");
    }
    // A frame built from the input: it round-trips, and no flipped byte gets through.
    let Some((&k, rest)) = data.split_first() else {
        return;
    };
    let me = Identity::from_secret([k; 32]);
    let r = Repr {
        kind: KINDS[k as usize % KINDS.len()],
        sender: me.public(),
        recipient: [k.wrapping_add(1); 32],
        id: u64::from(k) << 8 | rest.len() as u64,
        payload: rest[..rest.len().min(MAX_PAYLOAD)].to_vec(),
    };
    let bytes = r.emit(&me).expect("a payload within MAX_PAYLOAD emits");
    assert_eq!(Repr::parse(&bytes).as_ref(), Ok(&r));
    let at = (usize::from(k) * 7919 + rest.len()) % bytes.len();
    let mask = rest.first().copied().filter(|m| *m != 0).unwrap_or(0x5a);
    let mut flipped = bytes.clone();
    flipped[at] ^= mask;
    assert!(
        Repr::parse(&flipped).is_err(),
        "flipping byte {at} with {mask:#04x} went unnoticed"
    );
});
