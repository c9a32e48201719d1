//! The signed frame decoder (courier and probes) on arbitrary bytes: never a panic, and nothing
//! unsigned is ever accepted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nbhd_proto::frame::{Packet, Repr};

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Packet::new_checked(data) {
        let _ = (p.kind(), p.sender(), p.recipient(), p.id(), p.payload());
    }
    // A random buffer that verifies would be a forged signature.
    assert!(Repr::parse(data).is_err() || data.len() >= 146);
});
