//! The mDNS decoder on arbitrary bytes: never a panic; what decodes re-encodes and decodes again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nbhd_proto::presence::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Message::parse(data) {
        let bytes = m.emit();
        if !bytes.is_empty() {
            let _ = Message::parse(&bytes);
        }
    }
});
